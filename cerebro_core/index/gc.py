"""`cerebro gc`: delete the parts that no registered search version references.

Every registered version of ``tracking.search_model_name`` (aliased or not, abandoned ones too) is
read for its manifest; a part under that model's parts root that none of them names, and that is
older than ``min_age_s`` (a publish in progress has written parts it has not registered yet), is
garbage. Deleting waits for the publish lock: a publish in progress may reuse old unreferenced parts. A dry run (the default) only reports; ``delete=True`` removes them. A version whose
manifest cannot be read stops the collection before anything is deleted. With them go the bundles
assembled in this machine's cache for versions that hold no alias (a full copy each; any version is
assembled again from its parts when asked for).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cerebro_core import parts, tracking
from cerebro_core.config import CerebroConfig
from cerebro_core.home import cerebro_home, resolve
from cerebro_core.search.local_copy import version_manifest
from cerebro_core.index.publish import parts_root
from cerebro_core.lease import publish_lease
from cerebro_core.storage import Storage


@dataclass
class GcReport:
    versions: int = 0  # registered versions read
    parts: int = 0  # parts in storage
    referenced: int = 0  # of them, named by a registered version
    young: int = 0  # unreferenced, but newer than min_age_s: kept
    garbage: list[str] = field(default_factory=list)  # unreferenced part URLs
    garbage_bytes: int = 0
    deleted: bool = False
    cache_removed: int = 0  # assembled bundles of versions without an alias


def _mtime(info: dict) -> float:
    t = info.get("mtime", info.get("LastModified", info.get("created")))
    return t.timestamp() if hasattr(t, "timestamp") else float(t or 0)


def collect(cfg: CerebroConfig, delete: bool = False, min_age_s: float = 3600,
            log: Callable[[str], None] = lambda s: None) -> GcReport:
    """A deleting collection holds the publish lock (cerebro_core/lease.py) from reading the
    registry to its last deletion: a publish in progress (which may be reusing parts no registered
    version names yet) finishes first, and none starts until it is done."""
    if not delete:
        return _collect(cfg, False, min_age_s)
    with publish_lease(cfg, log=lambda m: log(f"gc: {m}")):
        return _collect(cfg, True, min_age_s)


def _collect(cfg: CerebroConfig, delete: bool, min_age_s: float) -> GcReport:
    ep = resolve(cfg)
    name = cfg.tracking.search_model_name
    keep: set[str] = set()
    digests: set[str] = set()
    rep = GcReport()
    for version, aliases in tracking.versions(ep.tracking_uri, name):
        ref = tracking.version_ref(ep.tracking_uri, name, version=version)
        path = version_manifest(ref, ep.tracking_uri)
        rep.versions += 1
        if path is not None:
            manifest = json.loads(Path(path).read_text())
            keep |= parts.referenced(manifest)
            if aliases:
                digests.add(parts.manifest_digest(manifest)[:32])
    storage = Storage(cfg.storage)
    root = parts_root(cfg)
    fs, base = storage.fs(root)
    found = fs.find(base, detail=True) if fs.exists(base) else {}
    proto = root.split("://", 1)[0] + "://" if "://" in root else ""
    now = time.time()
    for path, info in sorted(found.items()):
        rep.parts += 1
        digest = path.rsplit("/", 1)[-1]
        if digest in keep:
            rep.referenced += 1
        elif now - _mtime(info) < min_age_s:
            rep.young += 1
        else:
            rep.garbage.append(proto + path if proto else path)
            rep.garbage_bytes += int(info.get("size") or 0)
    if delete:
        for url in rep.garbage:
            storage.rm(url)
        cache = cerebro_home() / "cache" / "search" / "bundles"
        for d in sorted(cache.iterdir()) if cache.is_dir() else []:
            if d.is_dir() and not d.name.startswith(".") and d.name not in digests:
                shutil.rmtree(d, ignore_errors=True)
                parts.stamp_path(d).unlink(missing_ok=True)
                rep.cache_removed += 1
        files = cache.parent / "files"  # shared file copies no cached bundle links to any more
        for f in sorted(files.iterdir()) if files.is_dir() else []:
            if f.is_file() and f.stat().st_nlink == 1:
                f.unlink(missing_ok=True)
        rep.deleted = True
    return rep


@dataclass
class VerifyReport:
    parts: int = 0  # parts read and hashed
    bytes_read: int = 0
    corrupt: dict[str, list[str]] = field(default_factory=dict)  # part URL → "vN file" that name it
    repaired: list[str] = field(default_factory=list)  # of them, restored from an intact cached copy
    bundles: int = 0  # cached bundles hashed
    bundles_bad: dict[str, list[str]] = field(default_factory=dict)  # cached bundle → what is wrong (removed)
    seconds: float = 0.0


def _from_cache(cache: Path, digest: str) -> bytes | None:
    """The block ``digest`` cut from an intact cached file that holds it (None if none does)."""
    for st in sorted(cache.glob("*" + parts.STAMP)) if cache.is_dir() else []:
        try:
            manifest = json.loads(st.read_text())["manifest"]
        except (OSError, ValueError, KeyError):
            continue
        first = min(manifest["block_size"], parts.HEAD)
        for rel, f in manifest["files"].items():
            if digest not in f["blocks"]:
                continue
            i = f["blocks"].index(digest)
            off = 0 if i == 0 else first + (i - 1) * manifest["block_size"]
            try:
                with open(cache / st.name[:-len(parts.STAMP)] / rel, "rb") as fh:
                    fh.seek(off)
                    block = fh.read(first if i == 0 else manifest["block_size"])
            except OSError:
                continue
            if hashlib.sha256(block).hexdigest() == digest:
                return block
    return None


def verify(cfg: CerebroConfig, log: Callable[[str], None] = lambda s: None) -> VerifyReport:
    """Read every part and check it against its name; a corrupt one is moved to ``corrupt/`` (never
    reused) and restored from an intact cached copy where one holds its bytes. Every cached bundle
    is hashed whole; one that does not match its manifest is removed (assembled again when next
    opened). Holds the publish lock: it writes parts."""
    t0 = time.perf_counter()
    rep = VerifyReport()
    ep = resolve(cfg)
    name = cfg.tracking.search_model_name
    users: dict[str, list[str]] = {}
    with publish_lease(cfg, log=lambda m: log(f"gc: {m}")):
        for v in tracking.version_numbers(ep.tracking_uri, name):
            path = version_manifest(tracking.version_ref(ep.tracking_uri, name, version=v), ep.tracking_uri)
            if path is not None:
                for rel, f in json.loads(Path(path).read_text())["files"].items():
                    for b in f["blocks"]:
                        users.setdefault(b, []).append(f"v{v} {rel}")
        storage = Storage(cfg.storage)
        root = parts_root(cfg)
        cache = cerebro_home() / "cache" / "search" / "bundles"
        for url in storage.walk_files(root) if storage.exists(root) else []:
            rel = url[len(root):].lstrip("/")
            if rel.startswith("corrupt/") or "/" not in rel:
                continue
            digest = url.rsplit("/", 1)[-1]
            data = storage.read_bytes(url)
            rep.parts += 1
            rep.bytes_read += len(data)
            if hashlib.sha256(data).hexdigest() == digest:
                continue
            where = parts.quarantine(storage, root, digest, data)
            rep.corrupt[url] = users.get(digest, [])
            log(f"gc: corrupt part {url} (named by {', '.join(users.get(digest, [])) or 'no registered version'}): "
                f"moved to {where}")
            good = _from_cache(cache, digest)
            if good is not None:
                storage.write_bytes(url, good)
                rep.repaired.append(url)
                log(f"gc: restored {url} from an intact cached copy")
        for st in sorted(cache.glob("*" + parts.STAMP)) if cache.is_dir() else []:
            dest = cache / st.name[:-len(parts.STAMP)]
            try:
                manifest = json.loads(st.read_text())["manifest"]
            except (OSError, ValueError, KeyError):
                continue
            if not dest.is_dir():
                continue
            rep.bundles += 1
            bad = parts.check(manifest, dest, hashes=True)
            if bad:
                rep.bundles_bad[str(dest)] = list(bad.values())
                for rel in bad:
                    (cache.parent / "files" / manifest["files"][rel]["sha256"]).unlink(missing_ok=True)
                parts.discard(dest)
                st.unlink(missing_ok=True)
                log(f"gc: cached copy {dest} removed ({'; '.join(bad.values())}); assembled again when next opened")
    rep.seconds = time.perf_counter() - t0
    return rep
