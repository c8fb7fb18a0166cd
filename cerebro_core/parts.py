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
                if digest in written or _stored_size(storage, url) == len(block):  # a short part: rewritten
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
                "home": str(home),  # the state dir it was published from: a reader with none finds it there
                # where the blocks are, never credentials: those come from the reader's environment
                "storage": {"endpoint_url": opts.endpoint_url, "region": opts.region, "anon": opts.anon}}
    return manifest, stats


def _stored_size(storage: Storage, url: str) -> int:
    try:
        return storage.size(url)
    except FileNotFoundError:
        return -1


class CorruptPart(ValueError):
    """A part whose bytes do not match its name. It has been moved out of the parts root (to
    ``<parts root>/corrupt/``), so no publish reuses it: the next one that holds its content writes
    it again, and ``cerebro gc --verify`` restores it from an intact cached copy when there is one."""


def quarantine(storage: Storage, root: str, digest: str, data: bytes) -> str:
    """Move a corrupt part aside (kept for inspection); returns where it went."""
    url = join(root, "corrupt", digest)
    storage.write_bytes(url, data)
    storage.rm(block_url(root, digest))
    return url


def referenced(manifest: dict) -> set[str]:
    return {b for f in manifest["files"].values() for b in f["blocks"]}


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def storage_for(manifest: dict, storage: Storage | None = None) -> Storage:
    if storage is not None:
        return storage
    return Storage(StorageConfig(**{k: v for k, v in manifest.get("storage", {}).items() if v is not None}))


def _write_file(out: Path, rel: str, f: dict, storage: Storage, root: str) -> None:
    whole = hashlib.sha256()
    with open(out, "wb") as w:
        for digest in f["blocks"]:
            try:
                block = storage.read_bytes(block_url(root, digest))
            except FileNotFoundError:
                raise FileNotFoundError(f"part {digest} of {rel} is not in {root} (deleted by hand, or moved to "
                                        "corrupt/? `cerebro gc --verify` restores parts from an intact cached copy; "
                                        "`cerebro gc` keeps every part a registered version names)") from None
            if hashlib.sha256(block).hexdigest() != digest:
                where = quarantine(storage, root, digest, block)
                raise CorruptPart(f"part {digest} of {rel} does not match its name: moved to {where}, never reused; "
                                  "`cerebro gc --verify` restores it from an intact cached copy if there is one, "
                                  "else publish again (`cerebro index`)")
            whole.update(block)
            w.write(block)
    if whole.hexdigest() != f["sha256"] or out.stat().st_size != f["size"]:
        raise ValueError(f"{rel} assembled from its parts does not match the manifest")


def _stored_file(files: Path, rel: str, f: dict, storage: Storage, root: str) -> Path:
    """``files/<sha256>``: the file's content, assembled from its parts once; every cached bundle
    that holds this content links to it (a new version shares its unchanged files with the last)."""
    p = files / f["sha256"]
    if p.is_file() and p.stat().st_size == f["size"]:
        return p
    files.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=files, prefix=".tmp-")
    os.close(fd)
    try:
        _write_file(Path(tmp), rel, f, storage, root)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


STAMP = ".stamp.json"  # beside a cached bundle: <bundle>.stamp.json, what each file was when assembled


def stamp_path(dest: Path) -> Path:
    return dest.with_name(dest.name + STAMP)


def _stat(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def check(manifest: dict, dest: Path, hashes: bool = False) -> dict[str, str]:
    """What is wrong with the assembled folder ``dest``, by file (empty: nothing). Always: every file is
    there with the manifest's size and as it was stamped when assembled (size, mtime, inode: a
    stat per file); ``hashes``: every file's sha256 too (reads it all). A file whose stat changed
    but whose content still matches its sha256 is stamped again."""
    try:
        stamp = json.loads(stamp_path(dest).read_text())["files"]
    except (OSError, ValueError, KeyError):
        stamp = {}
    bad: dict[str, str] = {}
    restamp = False
    for rel, f in manifest["files"].items():
        p = dest.joinpath(*rel.split("/"))
        try:
            now = _stat(p)
        except OSError:
            bad[rel] = f"{rel} is missing"
            continue
        if now[0] != f["size"]:
            bad[rel] = f"{rel} is {now[0]} bytes, its manifest says {f['size']}"
        elif hashes or stamp.get(rel) != now:
            if file_sha256(p) != f["sha256"]:
                bad[rel] = f"{rel} does not match its sha256"
            else:
                stamp[rel], restamp = now, True
    if restamp and not bad:
        write_stamp(manifest, dest, stamp)
    return bad


def file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_stamp(manifest: dict, dest: Path, files: dict | None = None) -> None:
    files = files or {rel: _stat(dest.joinpath(*rel.split("/"))) for rel in manifest["files"]}
    tmp = stamp_path(dest).with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"manifest": manifest, "files": files}))
    os.replace(tmp, stamp_path(dest))


def discard(dest: Path) -> None:
    """Remove an assembled folder (renamed aside first: a reader sees it whole or not at all)."""
    aside = dest.with_name(f".discard-{dest.name}-{os.getpid()}")
    try:
        os.replace(dest, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def assemble(manifest: dict, dest: Path, home: Path, storage: Storage | None = None,
             files: Path | None = None) -> Path:
    """The folder ``manifest`` describes, at ``dest`` (built beside it, then renamed into place:
    a concurrent reader sees all of it or none). Each file is checked against its sha256. With
    ``files``, each file is a hard link to ``files/<sha256>`` (shared by every folder holding that
    content; a copy where the file system has no hard links)."""
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
            if files is None:
                _write_file(out, rel, f, storage, root)
                continue
            src = _stored_file(files, rel, f, storage, root)
            try:
                os.link(src, out)
            except OSError:
                shutil.copyfile(src, out)
        try:
            os.replace(tmp, dest)
            write_stamp(manifest, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
