"""A local mirror of a remote folder (``s3://bucket/prefix``), for what reads media by path
(embedding, video stills, EXIF): an index source or a scrape on an object store.

Objects are copied once into ``dest`` and copied again only when their size or ETag changed;
files whose objects are gone are removed. Each file's remote URI goes to the folder's sidecar
(:mod:`cerebro_core.data.sidecar`), so an indexed item names its object, not the copy. A key that
would land outside ``dest`` (``a/../../x.jpg``) is refused and counted.

Copies run ``workers`` at a time (a bounded thread pool: 153k objects are I/O, not CPU). Each
lands under a temporary name and is renamed into place, then recorded in a progress journal
(one line per object, flushed), so a mirror killed half way resumes without copying again what
it finished; the manifest replaces the journal at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cerebro_core.data import sidecar
from cerebro_core.data.paths import safe_join

MANIFEST = "_cerebro_mirror.json"
JOURNAL = "_cerebro_mirror.progress"
WORKERS = 16


@dataclass
class Mirror:
    folder: Path
    copied: int
    kept: int
    removed: int
    refused: int


def _journal(dest: Path) -> dict[str, str]:
    """What an interrupted mirror finished: {rel: tag} from its journal (a torn last line ignored)."""
    out: dict[str, str] = {}
    path = dest / JOURNAL
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rel, tag = json.loads(line)
            except ValueError:
                continue
            out[rel] = tag
    return out


def mirror(storage, url: str, dest: Path, workers: int = WORKERS) -> Mirror:
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
    known.update(_journal(dest))  # finished by a mirror that was interrupted
    now: dict[str, str] = {}
    origins = []
    todo: list[tuple[str, str, Path]] = []
    kept = refused = 0
    for path, info in sorted(listing.items()):
        rel = path[len(root) + 1:]
        target = safe_join(dest, rel)
        if target is None or rel in (MANIFEST, JOURNAL, sidecar.SIDECAR) or rel.endswith(".partial"):
            refused += 1
            continue
        tag = f"{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('mtime')}"
        if known.get(rel) != tag or not target.exists():
            todo.append((path, tag, target))
        else:
            kept += 1
        now[rel] = tag
        origins.append({"path": rel, "origin_uri": proto + path})
    lock = threading.Lock()
    with open(dest / JOURNAL, "a") as journal:

        def copy(job: tuple[str, str, Path]) -> None:
            path, tag, target = job
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(target.name + ".partial")
            storage.get_file(proto + path, part)
            os.replace(part, target)  # a kill leaves a .partial, never a torn file under the real name
            with lock:
                journal.write(json.dumps([path[len(root) + 1:], tag]) + "\n")
                journal.flush()

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(copy, todo))  # the first failure is raised here, after the others finish
    removed = 0
    for rel in sorted(set(known) - set(now)):
        gone = safe_join(dest, rel)
        if gone is not None and gone.exists():
            gone.unlink()
            removed += 1
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(now, indent=0, sort_keys=True))
    tmp.replace(manifest)
    (dest / JOURNAL).unlink(missing_ok=True)  # the manifest now holds what it recorded
    for stale in dest.rglob("*.partial"):  # an interrupted copy of an object that is gone since
        stale.unlink()
    sidecar.write(dest, origins)
    return Mirror(dest, len(todo), kept, removed, refused)


def folder_error(storage, path: str, key: str) -> Optional[str]:
    """What is wrong with a source folder, without copying anything (a remote prefix is listed,
    not mirrored): None when it is there."""
    if "://" in path and not path.startswith("file://"):
        return None if storage.exists(path) else f"{key}: nothing at {path}"
    return None if Path(path.removeprefix("file://")).is_dir() else f"{key}: folder not found: {path}"


def has_image(path: str) -> bool:
    """Whether a local source folder holds an image file anywhere below it (the walk stops at the
    first one). A remote prefix is not listed whole for this: True (its mirror tells)."""
    from cerebro_core.data.sources import IMAGE_SUFFIXES

    if "://" in path and not path.startswith("file://"):
        return True
    return any(Path(f).suffix.lower() in IMAGE_SUFFIXES
               for _, _, files in os.walk(path.removeprefix("file://"), followlinks=False) for f in files)


def local_folder(storage, path: str, home: Path) -> Path | None:
    """A source's folder on this machine: an ``s3://`` prefix mirrored under ``home/mirrors`` (one
    folder per prefix), a local path as it is; None when a local path is not a folder.
    FileNotFoundError when nothing is under a remote prefix."""
    if "://" in path and not path.startswith("file://"):
        return mirror(storage, path, home / "mirrors" / hashlib.sha256(path.encode()).hexdigest()[:16]).folder
    p = Path(path.removeprefix("file://"))
    return p if p.is_dir() else None
