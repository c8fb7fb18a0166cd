"""The search bundle's item rows as stored, and as used.

Stored (``metadata.parquet``): ``uri`` is the item's path relative to ``source_root``, the folder it
was scanned from, and a ``source_root`` inside the state dir is written as ``${CEREBRO_HOME}/…`` —
so a bundle holds no absolute path of the state dir, and a state dir copied or moved elsewhere
still finds its media. Used (:class:`~cerebro_core.index.search.Searcher`, re-indexing): ``uri``
is the absolute local path again and ``path`` the relative one, the only one a response shows.
Rows without a source root (a bundle from before) keep their absolute ``uri``; their ``path`` is
the file name.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

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


def read_rows(bundle_dir: str | Path, home: Path) -> list[dict]:
    """The bundle's rows, as used (absolute ``uri``, relative ``path``)."""
    return from_stored(pq.read_table(Path(bundle_dir) / "metadata.parquet").to_pylist(), home)
