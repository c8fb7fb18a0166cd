"""Content-addressed parts: a folder stored as fixed-size blocks named by their sha256.

A published search version is not a copy of its bundle: :func:`pack` cuts every file of the
bundle folder into blocks (a first block of at most 64 KiB, where the files' headers are, then
``storage.part_size`` bytes each), writes each block to
``<parts root>/<h[:2]>/<h>`` (``h`` = its sha256) unless a block of that name is already there,
and returns a *manifest*: for each file its size, its sha256 and its blocks' names. The manifest is
all a version stores in MLflow; :func:`assemble` rebuilds the folder from it.

Why fixed-size blocks and not one part per file: what a reindex changes is the tail of its files.
Vectors (``.npy``), a flat index and the Arrow rows grow by appending rows at the end (their
headers, in the first block, change too), so every block before the old end keeps its bytes and
its name; the CLIP weights do not change at all. A reindex of n items therefore writes the blocks
holding the n new rows, the small head block and one partial tail block per file: O(n) bytes
plus at most ``part_size`` + 64 KiB per changed file. HNSW and IVF files change throughout when items are added (their
lists are serialised list by list): for them a version rewrites the index file whole, and
``index.shards`` bounds that to the last shard.

Blocks are never rewritten (same name, same bytes), so a version that is registered stays
loadable for as long as its blocks are kept; :mod:`cerebro_core.index.gc` deletes only blocks no
registered version references.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cerebro_core.config import StorageConfig
from cerebro_core.storage import Storage, join

FORMAT = "cerebro-parts/1"
HEAD = 64 * 1024  # the first block of a file: headers (npy shape, FAISS ntotal, Arrow schema) change alone
HOME_TOKEN = "${CEREBRO_HOME}"  # a parts root inside the state dir is stored relative to it


@dataclass
class PackStats:
    files: int = 0
    bytes_total: int = 0  # the folder's size
    blocks_written: int = 0
    bytes_written: int = 0  # what this version added to storage
    blocks_reused: int = 0


def block_url(root: str, digest: str) -> str:
    return join(root, digest[:2], digest)


def _portable(root: str, home: Path) -> str:
    h = str(home)
    return HOME_TOKEN + root[len(h):] if root == h or root.startswith(h.rstrip(os.sep) + os.sep) else root


def parts_root(manifest: dict, home: Path) -> str:
    root = manifest["parts_root"]
    return str(home) + root[len(HOME_TOKEN):] if root.startswith(HOME_TOKEN) else root


def pack(folder: Path, storage: Storage, root: str, block_size: int, home: Path) -> tuple[dict, PackStats]:
    """Write ``folder``'s blocks that ``root`` lacks; return (manifest, what was written)."""
    folder = Path(folder)
    stats = PackStats()
    files: dict[str, dict] = {}
    written: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        whole = hashlib.sha256()
        blocks = []
        with open(path, "rb") as f:
            size = min(block_size, HEAD)
            while block := f.read(size):
                size = block_size
                whole.update(block)
                digest = hashlib.sha256(block).hexdigest()
                blocks.append(digest)
                url = block_url(root, digest)
                if digest in written or storage.exists(url):
                    stats.blocks_reused += 1
                else:
                    storage.write_bytes(url, block)
                    written.add(digest)
                    stats.blocks_written += 1
                    stats.bytes_written += len(block)
        size = path.stat().st_size
        files[rel] = {"size": size, "sha256": whole.hexdigest(), "blocks": blocks}
        stats.files += 1
        stats.bytes_total += size
    opts = storage.cfg
    manifest = {"format": FORMAT, "parts_root": _portable(root, home), "block_size": block_size, "files": files,
                # where the blocks are, never credentials: those come from the reader's environment
                "storage": {"endpoint_url": opts.endpoint_url, "region": opts.region, "anon": opts.anon}}
    return manifest, stats


def referenced(manifest: dict) -> set[str]:
    return {b for f in manifest["files"].values() for b in f["blocks"]}


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def storage_for(manifest: dict, storage: Storage | None = None) -> Storage:
    if storage is not None:
        return storage
    return Storage(StorageConfig(**{k: v for k, v in manifest.get("storage", {}).items() if v is not None}))


def assemble(manifest: dict, dest: Path, home: Path, storage: Storage | None = None) -> Path:
    """The folder ``manifest`` describes, at ``dest`` (built beside it, then renamed into place:
    a concurrent reader sees all of it or none). Each file is checked against its sha256."""
    if manifest.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} manifest: {manifest.get('format')!r}")
    dest = Path(dest)
    if dest.is_dir():
        return dest
    storage = storage_for(manifest, storage)
    root = parts_root(manifest, home)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".assemble-"))
    try:
        for rel, f in manifest["files"].items():
            out = tmp.joinpath(*rel.split("/"))
            if tmp.resolve() not in out.resolve().parents:
                raise ValueError(f"manifest file name leaves the folder: {rel!r}")
            out.parent.mkdir(parents=True, exist_ok=True)
            whole = hashlib.sha256()
            with open(out, "wb") as w:
                for digest in f["blocks"]:
                    try:
                        block = storage.read_bytes(block_url(root, digest))
                    except FileNotFoundError:
                        raise FileNotFoundError(f"part {digest} of {rel} is not in {root} (deleted by hand? "
                                                "`cerebro gc` keeps every part a registered version names)") from None
                    if hashlib.sha256(block).hexdigest() != digest:
                        raise ValueError(f"part {digest} of {rel} does not match its name")
                    whole.update(block)
                    w.write(block)
            if whole.hexdigest() != f["sha256"] or out.stat().st_size != f["size"]:
                raise ValueError(f"{rel} assembled from its parts does not match the manifest")
        try:
            os.replace(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
