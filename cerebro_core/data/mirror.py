"""A local mirror of a remote folder (``s3://bucket/prefix``), for what reads media by path
(embedding, video stills, EXIF): an index source or a scrape on an object store.

Objects are copied once into ``dest`` and copied again only when their size or ETag changed;
files whose objects are gone are removed. Each file's remote URI goes to the folder's sidecar
(:mod:`cerebro_core.data.sidecar`), so an indexed item names its object, not the copy. A key that
would land outside ``dest`` (``a/../../x.jpg``) is refused and counted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cerebro_core.data import sidecar
from cerebro_core.data.paths import safe_join

MANIFEST = "_cerebro_mirror.json"


@dataclass
class Mirror:
    folder: Path
    copied: int
    kept: int
    removed: int
    refused: int


def mirror(storage, url: str, dest: Path) -> Mirror:
    """Bring ``dest`` up to date with the objects under ``url``; FileNotFoundError when there are none."""
    fs, root = storage.fs(url)
    root = root.rstrip("/")
    listing = fs.find(root, detail=True)
    if not listing:
        raise FileNotFoundError(url)
    proto = url.split("://", 1)[0] + "://"
    dest.mkdir(parents=True, exist_ok=True)
    manifest = dest / MANIFEST
    known = json.loads(manifest.read_text()) if manifest.exists() else {}
    now: dict[str, str] = {}
    origins = []
    copied = kept = refused = 0
    for path, info in sorted(listing.items()):
        rel = path[len(root) + 1:]
        target = safe_join(dest, rel)
        if target is None or rel in (MANIFEST, sidecar.SIDECAR):
            refused += 1
            continue
        tag = f"{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('mtime')}"
        if known.get(rel) != tag or not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.get_file(proto + path, target)
            copied += 1
        else:
            kept += 1
        now[rel] = tag
        origins.append({"path": rel, "origin_uri": proto + path})
    removed = 0
    for rel in sorted(set(known) - set(now)):
        gone = safe_join(dest, rel)
        if gone is not None and gone.exists():
            gone.unlink()
            removed += 1
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(now, indent=0, sort_keys=True))
    tmp.replace(manifest)  # last: an interrupted mirror copies again what it had not recorded
    sidecar.write(dest, origins)
    return Mirror(dest, copied, kept, removed, refused)


def local_folder(storage, path: str, home: Path) -> Path | None:
    """A source's folder on this machine: an ``s3://`` prefix mirrored under ``home/mirrors`` (one
    folder per prefix), a local path as it is; None when a local path is not a folder.
    FileNotFoundError when nothing is under a remote prefix."""
    if "://" in path and not path.startswith("file://"):
        return mirror(storage, path, home / "mirrors" / hashlib.sha256(path.encode()).hexdigest()[:16]).folder
    p = Path(path.removeprefix("file://"))
    return p if p.is_dir() else None
