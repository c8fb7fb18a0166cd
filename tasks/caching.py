"""Cache keys: a stage's result is reused when its config section, the fingerprints of its inputs
(manifest hash, model version, source listing) and the version of the code that stage runs (its
own modules and the library modules they import, ``tasks/code_graph.py``) are unchanged.

Results are persisted as JSON (never pickle) under Prefect's result storage."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tasks import code_graph

CODE_ROOT = code_graph.REPO  # the checkout whose files the keys hash


def path_fingerprint(path: str | None, storage=None) -> str:
    """Cheap fingerprint of a file or folder tree: names, sizes, mtimes; a remote URL (``s3://``):
    its listing's keys, sizes and ETags, so changed content under the same key changes it."""
    if not path:
        return "none"
    if "://" in path and not path.startswith("file://"):
        return _remote_fingerprint(path, storage)
    p = Path(path.removeprefix("file://"))
    if not p.exists():
        return f"missing:{path}"
    if p.is_file():
        st = p.stat()
        return f"{p}:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            h.update(f"{os.path.relpath(os.path.join(root, f), p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _remote_fingerprint(url: str, storage=None) -> str:
    from cerebro_core.storage import Storage

    fs, root = (storage or Storage()).fs(url)
    try:
        found = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
    except FileNotFoundError:
        return f"missing:{url}"
    if not found:
        return f"missing:{url}"
    h = hashlib.sha256()
    for name in sorted(found):
        info = found[name]
        tag = info.get("ETag") or info.get("etag") or info.get("md5") or info.get("LastModified") or info.get("mtime")
        h.update(f"{name[len(root):]}:{info.get('size')}:{tag}".encode())
    return h.hexdigest()[:16]


def _key(stage: str, *parts: Any) -> str:
    code = code_graph.stage_code_version(stage, CODE_ROOT)
    return hashlib.sha256(json.dumps([code, stage, *parts], sort_keys=True, default=str).encode()).hexdigest()


def download_key(context, parameters) -> str:
    cfg = parameters["cfg"]
    from cerebro_core.home import resolve

    return _key("download", cfg.name, cfg.section_hash("download"), resolve(cfg).storage_root,
                path_fingerprint(cfg.download.url_list, _storage(cfg)))


def _storage(cfg):
    from cerebro_core.storage import Storage

    return Storage(cfg.storage)


def compute_part(cfg) -> list:
    """What of the cluster shape changes a result: the world size (global batch) and which node
    this is (only node 0 publishes)."""
    from cerebro_core.distributed import world_size

    return [world_size(cfg.compute), cfg.compute.node_rank]


def pretrain_key(context, parameters) -> str:
    cfg = parameters["cfg"]
    return _key("pretrain", cfg.name, cfg.section_hash("train"), compute_part(cfg), parameters["shards"].manifest_hash)


def retry_unless_peer_lost(task, task_run, state) -> bool:
    """Prefect retry condition: a node whose peers never came (or left) fails at once — a retry
    would wait for a rendezvous that no other node joins."""
    from cerebro_core.distributed import PeerLostError

    try:
        state.result()
    except PeerLostError:
        return False
    except Exception:
        return True
    return True


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect retry condition: an unusable URL list fails at once (a retry reads the same file)."""
    from cerebro_core.data.url_list import DownloadInputError

    try:
        state.result()
    except DownloadInputError:
        return False
    except Exception:
        return True
    return True


def adapt_key(context, parameters) -> str:
    cfg = parameters["cfg"]
    a = cfg.adapt
    st = _storage(cfg)
    sources = [path_fingerprint(s.path, st) for s in a.sources]
    extra = [path_fingerprint(x.path, st) if x else None for x in (a.validation_source, a.test_source)]
    # every student trains with train.* on the pretraining pairs: both matter
    from cerebro_core.adapt.students import AdaptInputError, pretraining_pairs
    from cerebro_core.storage import Storage

    try:
        pairs = pretraining_pairs(cfg, Storage(cfg.storage)).manifest_hash
    except AdaptInputError:
        pairs = "no pairs"  # the stage itself fails with the message
    return _key("adapt", cfg.name, cfg.section_hash("adapt"), cfg.section_hash("train"), compute_part(cfg)[1:],
                parameters.get("start_version"), sources, extra, path_fingerprint(a.vocabulary, st), pairs)


def index_key(context, parameters) -> str:
    cfg = parameters["cfg"]
    return _key("index", cfg.name, cfg.section_hash("index"), compute_part(cfg)[1:], parameters.get("clip_version"),
                [path_fingerprint(s.path, _storage(cfg)) for s in cfg.index.sources])
