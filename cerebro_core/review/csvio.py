"""Verifications in and out as CSV: ``uri,sha256,label,reviewer,time``, so that labels from
another tool (Timelapse, Trapper, a spreadsheet) come in and go out.

Cells are written safely (OWASP, CSV injection): a text cell starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return gets a leading ``'`` so that a spreadsheet shows it as text and
never runs it as a formula; plain numbers ("-2.33") are left alone. Reading takes that ``'`` off
again, so export → import is lossless.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Callable, Iterable, Optional, Sequence

from cerebro_core.review.store import (ReviewError, Verification, check_label, check_reviewer, check_sha256,
                                       normal_time)

COLUMNS = ("uri", "sha256", "label", "reviewer", "time")
RISKY = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value) -> object:
    """``value`` as a CSV cell no spreadsheet evaluates (see the module doc)."""
    if isinstance(value, str) and value.startswith(RISKY) and not NUMBER.fullmatch(value):
        return "'" + value
    return value


def unsafe_cell(value: str) -> str:
    """The inverse of :func:`safe_cell` on a cell read back."""
    return value[1:] if value.startswith("'") and value[1:].startswith(RISKY) else value


def write_csv(records: Iterable[Verification]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)  # RFC 4180: CRLF rows, a cell holding CR or LF quoted
    w.writerow(COLUMNS)
    for v in records:
        w.writerow([safe_cell("" if getattr(v, c) is None else getattr(v, c)) for c in COLUMNS])
    return buf.getvalue()


def read_csv(text: str, vocabulary: Optional[Sequence[str]], sha_of_uri: Callable[[str], Optional[str]],
             default_reviewer: Optional[str] = None) -> list[Verification]:
    """Every row as a verification, or :class:`ReviewError` naming the first bad row (nothing is
    taken from a file with a bad row). A row names its item by ``sha256``, else by ``uri`` (looked
    up with ``sha_of_uri``: the indexed items' names); ``time`` empty: now; ``reviewer`` empty:
    ``default_reviewer``."""
    rows = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    cols = set(rows.fieldnames or ())
    if "label" not in cols or not cols & {"sha256", "uri"}:
        raise ReviewError(f"CSV header must name label and sha256 or uri (columns: {', '.join(COLUMNS)}); "
                          f"got {', '.join(rows.fieldnames or []) or 'none'}")
    out = []
    for n, row in enumerate(rows, 2):
        cell = {k: unsafe_cell((row.get(k) or "").strip()) for k in COLUMNS}
        try:
            if cell["sha256"]:
                sha = check_sha256(cell["sha256"])
            elif cell["uri"]:
                sha = sha_of_uri(cell["uri"])
                if sha is None:
                    raise ReviewError(f"uri: no indexed item {cell['uri'][:120]!r}")
            else:
                raise ReviewError("neither sha256 nor uri")
            out.append(Verification(sha256=sha, label=check_label(cell["label"], vocabulary),
                                    time=normal_time(cell["time"]),
                                    reviewer=check_reviewer(cell["reviewer"] or default_reviewer),
                                    uri=cell["uri"] or None))
        except ReviewError as exc:
            raise ReviewError(f"row {n}: {exc}") from None
    return out
