"""The search bundle's item rows as stored, and as used.

Stored (``metadata.arrow``, an uncompressed Arrow IPC file, so that it can be memory-mapped;
bundles from before have ``metadata.parquet``, read into memory): ``uri`` is the item's path relative to ``source_root``, the folder it
was scanned from, and a ``source_root`` inside the state dir is written as ``${CEREBRO_HOME}/…`` —
so a bundle holds no absolute path of the state dir, and a state dir copied or moved elsewhere
still finds its media. Used (:class:`Rows`, what :class:`~cerebro_core.search.searcher.Searcher`
and re-indexing read): ``uri`` is the absolute local path again and ``path`` the relative one, the
only one a response shows. :class:`Rows` reads a row when it is asked for (a hit), not all of them:
10M rows stay a mapped file, not 10M dicts.
Rows without a source root (a bundle from before) keep their absolute ``uri``; their ``path`` is
the file name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

HOME_TOKEN = "${CEREBRO_HOME}"


def _under(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def to_stored(rows: list[dict], home: Path) -> list[dict]:
    out = []
    h = str(home)
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "path"))  # every row every column
    for r in rows:
        r = {k: r.get(k) for k in keys}
        root, uri = r.get("source_root"), r["uri"]
        if root and _under(root, uri):
            r["uri"] = PurePosixPath(Path(os.path.relpath(uri, root))).as_posix()
            r["source_root"] = HOME_TOKEN + root[len(h):] if _under(h, root) else root
        else:
            r["source_root"] = None
        out.append(r)
    return out


def from_stored(rows: list[dict], home: Path) -> list[dict]:
    out = []
    for r in rows:
        r = dict(r)
        root = r.get("source_root")
        if root:
            if root.startswith(HOME_TOKEN):
                root = str(home) + root[len(HOME_TOKEN):]
            r["source_root"], r["path"] = root, r["uri"]
            r["uri"] = os.path.join(root, *PurePosixPath(r["uri"]).parts)
        else:
            r["source_root"], r["path"] = None, Path(r["uri"]).name
        out.append(r)
    return out


def write_rows(dest: Path, rows: list[dict], home: Path) -> Path:
    """``metadata.arrow``: the rows as stored, with their ``id``."""
    stored = to_stored(rows, home)
    table = (pa.Table.from_pylist([{"id": i, **r} for i, r in enumerate(stored)]) if rows
             else pa.table({"id": pa.array([], pa.int64())}))
    path = dest / "metadata.arrow"
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table, max_chunksize=64 * 1024)
    return path


class Rows(Sequence):
    """The bundle's rows, as used (absolute ``uri``, relative ``path``), read per row from the
    memory-mapped table."""

    BATCH = 4096

    def __init__(self, table: pa.Table, home: Path):
        self.table, self.home = table, home

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return from_stored(self.table.slice(i % len(self), 1).to_pylist(), self.home)[0]

    def __iter__(self):
        for s in range(0, len(self), self.BATCH):
            yield from from_stored(self.table.slice(s, self.BATCH).to_pylist(), self.home)

    def column(self, name: str) -> Optional[pa.ChunkedArray]:
        """A stored column (``uri`` relative to its root), or None when no row has it."""
        return self.table.column(name) if name in self.table.column_names else None


def read_rows(bundle_dir: str | Path, home: Path) -> Rows:
    d = Path(bundle_dir)
    if (d / "metadata.arrow").exists():
        table = pa.ipc.open_file(pa.memory_map(str(d / "metadata.arrow"), "r")).read_all()  # zero-copy
    else:
        table = pq.read_table(d / "metadata.parquet")
    return Rows(table, home)
