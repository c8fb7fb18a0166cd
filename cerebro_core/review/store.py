"""Verified labels as data: what a person said an item is, append-only, in the storage root.

A verification names an item by its content hash (the ``sha256`` of its bytes that index and
reindex store per row; a video still's is the file's hash with ``@<seconds>``), so it survives a
reindex, a new version, a renamed copy and a moved state dir. Each batch of writes is one small
JSON-lines file ``<storage root>/reviews/verifications/<UTC time>-<random>.jsonl``, written
whole and atomically (:meth:`cerebro_core.storage.Storage.write_bytes`: a local temporary file
fsynced and renamed into place, or one S3 PUT). A writer never rewrites or appends to a file, so
two writers never race, and a batch is acknowledged only once its file is in place: a crash (even
``kill -9``) loses at most the batch being written, never one already acknowledged.

The latest verification of an item wins (by its time, then by file and line).
:func:`verified_labels` is the one call another stage needs: storage root in, ``{sha256: label}``
out.
"""

from __future__ import annotations

import json
import posixpath
import unicodedata
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Iterable, Optional, Sequence

from cerebro_core.storage import Storage, join

SPECIAL = ("empty", "person", "unknown")  # what a reviewer may say besides a species
FOLDER = ("reviews", "verifications")
MAX_REVIEWER = 100
MAX_LABEL = 200


class ReviewError(ValueError):
    """A verification that cannot be taken (unknown label, bad hash, bad time): a 4xx, or exit 2."""


@dataclass(frozen=True)
class Verification:
    sha256: str
    label: str
    time: str  # ISO 8601, UTC
    reviewer: Optional[str] = None
    uri: Optional[str] = None  # the item as its user names it, when known (informative only)

    @property
    def instant(self) -> float:
        return datetime.fromisoformat(self.time).timestamp()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def normal_time(value: Optional[str]) -> str:
    """An ISO 8601 time as UTC ISO 8601 (naive = UTC); empty: now."""
    if value is None or not str(value).strip():
        return now()
    try:
        t = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ReviewError(f"time: not an ISO 8601 date-time: {str(value)[:40]!r}") from None
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _printable(value: str, what: str, limit: int) -> str:
    v = value.strip()
    if len(v) > limit:
        raise ReviewError(f"{what}: longer than {limit} characters")
    if any(unicodedata.category(ch)[0] == "C" for ch in v):
        raise ReviewError(f"{what}: control characters are not allowed")
    return v


def check_label(label: str, vocabulary: Optional[Sequence[str]]) -> str:
    """The label, stripped, if it is one of ``vocabulary`` or :data:`SPECIAL` (any printable label
    when there is no vocabulary at all); else :class:`ReviewError` naming the known ones."""
    v = _printable(str(label or ""), "label", MAX_LABEL)
    if not v:
        raise ReviewError("label: empty")
    if vocabulary and v not in vocabulary and v not in SPECIAL:
        known = ", ".join(list(vocabulary)[:20]) + (" …" if len(vocabulary) > 20 else "")
        raise ReviewError(f"label: unknown {v!r}; known: {known}, or {', '.join(SPECIAL)}")
    return v


def check_reviewer(reviewer: Optional[str]) -> Optional[str]:
    if reviewer is None:
        return None
    return _printable(str(reviewer), "reviewer", MAX_REVIEWER) or None


def check_sha256(value: str) -> str:
    v = str(value or "").strip().lower()
    digest, _, ts = v.partition("@")  # a video still: the file's hash @ its time in seconds
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or (
            ts and not ts.replace(".", "", 1).isdigit()):
        raise ReviewError(f"sha256: not a content hash: {v[:80]!r}")
    return v


def folder(root: str) -> str:
    return join(root, *FOLDER)


def append(root: str, batch: Sequence[Verification], storage: Optional[Storage] = None) -> Optional[str]:
    """Write ``batch`` as one new file under ``root``; returns its URL once it is in place (the
    acknowledgement), None for an empty batch."""
    if not batch:
        return None
    storage = storage or Storage()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    url = join(folder(root), f"{stamp}-{uuid.uuid4().hex[:12]}.jsonl")
    body = "".join(json.dumps({k: v for k, v in asdict(x).items() if v is not None}, sort_keys=True) + "\n"
                   for x in batch)
    storage.write_bytes(url, body.encode("utf-8"))
    return url


def _parse(text: str, name: str) -> Iterable[Verification]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            yield Verification(sha256=d["sha256"], label=d["label"], time=d["time"], reviewer=d.get("reviewer"),
                               uri=d.get("uri"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ReviewError(f"{name} line {n}: not a verification ({exc})") from None


class Log:
    """Every verification under a storage root, read incrementally: :meth:`refresh` reads only the
    batch files it has not seen (another writer's, a `cerebro review import`'s)."""

    def __init__(self, root: str, storage: Optional[Storage] = None):
        self.root, self.storage = root, storage or Storage()
        self.records: list[tuple[float, str, int, Verification]] = []
        self._seen: set[str] = set()

    def refresh(self) -> int:
        """Read the batch files not seen yet; how many verifications were new."""
        new = 0
        for url in self.storage.ls(folder(self.root)):
            name = posixpath.basename(url)
            if name in self._seen or name.startswith(".") or not name.endswith(".jsonl"):
                continue  # a temporary file of a write in progress (or killed) is no batch
            for line, v in enumerate(_parse(self.storage.read_text(url), name)):
                self.records.append((v.instant, name, line, v))
                new += 1
            self._seen.add(name)
        if new:
            self.records.sort(key=lambda r: r[:3])
        return new

    def add(self, batch: Sequence[Verification]) -> Optional[str]:
        """Append ``batch`` (one file) and take it in."""
        url = append(self.root, batch, self.storage)
        if url:
            self.refresh()
        return url

    def all(self) -> list[Verification]:
        """Every verification, oldest first."""
        return [r[3] for r in self.records]

    def latest(self) -> dict[str, Verification]:
        """The latest verification per content hash."""
        out: dict[str, Verification] = {}
        for r in self.records:  # in time order: a later one replaces
            out[r[3].sha256] = r[3]
        return out


def read_log(root: str, storage: Optional[Storage] = None) -> Log:
    log = Log(root, storage)
    log.refresh()
    return log


def verified_labels(root: str, storage: Optional[Storage] = None) -> dict[str, str]:
    """``{sha256: label}``: the latest verified label of every item verified under the storage
    root ``root`` (a local folder or ``s3://bucket/prefix``). Labels are species of the vocabulary
    or one of :data:`SPECIAL` ("empty", "person", "unknown")."""
    return {h: v.label for h, v in read_log(root, storage).latest().items()}
