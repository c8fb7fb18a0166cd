"""Re-indexing new wildlife scrapes: incremental, idempotent, crash-safe.

Scrape (folder | s3:// prefix | URL list) + SearchVersion ──reindex──▶ SearchVersion {vK+1}

1. The scrape is materialised as a local folder (S3 objects are copied under the state dir; a
   URL list goes through the download stage and its shards are unpacked) — the search API serves
   indexed files from local paths.
2. Items whose content hash (sha256 of the bytes, so renamed copies match) is already in the
   champion's metadata are duplicates; the rest are embedded with the champion's own CLIP
   weights and added (see :mod:`cerebro_core.ann.incremental`; IVF may decide to retrain).
3. If ``cerebro-clip@champion`` is no longer the model the index was built with, everything is
   re-embedded with the new model (a full rebuild) — embeddings of two models never mix.
4. A new ``cerebro-search`` version is published; ``champion`` moves only after it loads and
   answers a smoke query. Nothing new → no new version (idempotent). A crash at any point leaves
   the previous champion untouched; rerunning completes the work.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from pydantic import BaseModel

from cerebro_core import tracking
from cerebro_core.config import CerebroConfig
from cerebro_core.data.mirror import mirror
from cerebro_core.data import coco_meta, megadetector, sidecar
from cerebro_core.data.paths import safe_join
from cerebro_core.distributed import one_node
from cerebro_core.embed import Item, scan_folder
from cerebro_core.embed_job import embed, embedding_dir
from cerebro_core.home import resolve
from cerebro_core.ann.base import IndexReport
from cerebro_core.ann.incremental import add_or_rebuild
from cerebro_core.ann.store import build_index, load, rebuild_like
from cerebro_core.ann.tune import measured_recall
from cerebro_core.index.metadata import Species, group_fields, item_fields, vocabulary_of
from cerebro_core.index.publish import SearchVersion, publish, write_bundle
from cerebro_core.search.rows import read_rows
from cerebro_core.lease import publish_lease
from cerebro_core.model.registry import load_clip_from_folder
from cerebro_core.storage import Storage, join


class ScrapeError(ValueError):
    pass


class ReindexResult(BaseModel):
    version: Optional[SearchVersion]
    published: bool
    scanned: int
    new: int
    duplicates: int
    failed: int
    failures: dict[str, int] = {}  # by reason: corrupt_image, outside_source, …
    size_before: int
    size_after: int
    full_rebuild: bool
    index_rebuilt: bool
    reason: str
    seconds: float


def materialise(cfg: CerebroConfig, scrape: str, log: Callable[[str], None]) -> Path:
    """A local folder holding the scrape's media."""
    storage = Storage(cfg.storage)
    if scrape.startswith("s3://"):
        if not storage.exists(scrape):
            raise ScrapeError(f"--scrape: nothing at {scrape}")
        dest = resolve(cfg).home / "scrapes" / hashlib.sha256(scrape.encode()).hexdigest()[:16]
        m = mirror(storage, scrape, dest)  # hits name the object by its s3:// URI
        if m.refused:
            log(f"reindex: {m.refused} object(s) under {scrape} not copied: their keys leave the scrape folder")
        return dest
    p = Path(scrape.removeprefix("file://"))
    if not p.exists():
        raise ScrapeError(f"--scrape: no such folder or URL list: {scrape}")
    if p.is_dir():
        return p
    # a URL list: download it (resumable) and unpack the shards' images
    from cerebro_core.data.download import download

    key = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    out = str(resolve(cfg).home / "scrapes" / key / "shards")
    dl_cfg = cfg.download.model_copy(update={"url_list": str(p), "output": out})
    res = download(dl_cfg, storage, out, log=log)
    dest = resolve(cfg).home / "scrapes" / key / "images"
    refused = unpack_images(res.shards, dest)
    if refused:
        log(f"reindex: {refused} shard member(s) not unpacked: not a plain file with a relative name inside the folder")
    return dest


def unpack_images(shards: list[str], dest: Path) -> int:
    """Write the shards' images into ``dest``; returns how many members were refused: an absolute
    or ``..`` name, or anything but a regular file (a link, a device)."""
    dest.mkdir(parents=True, exist_ok=True)
    refused = 0
    origins = []
    for shard in shards:
        with tarfile.open(shard) as tf:
            members = tf.getmembers()
            metas = {m.name.rsplit(".", 1)[0]: m for m in members if m.isreg() and m.name.endswith(".json")}
            for m in members:
                if not m.name.lower().endswith((".jpg", ".jpeg", ".png", ".webp")):
                    continue
                target = safe_join(dest, m.name) if m.isreg() else None
                if target is None:
                    refused += 1
                    continue
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tf.extractfile(m).read())
                meta = metas.get(m.name.rsplit(".", 1)[0])
                if meta is not None:  # the sample's URL and the EXIF of the bytes img2dataset downloaded
                    try:
                        fields = sidecar.from_img2dataset(json.loads(tf.extractfile(meta).read()))
                    except ValueError:
                        fields = {}
                    origins.append({"path": target.relative_to(dest).as_posix(), **fields})
    sidecar.write(dest, origins)
    return refused


def _champion_bundle(cfg: CerebroConfig):
    """(the champion's VersionRef, its bundle folder: assembled from its parts, or in place)."""
    from cerebro_core.search.local_copy import bundle_for

    name = cfg.tracking.search_model_name
    uri = resolve(cfg).tracking_uri
    try:
        ref = tracking.version_ref(uri, name, alias="champion")
    except Exception:
        raise ScrapeError(f"no {name}@champion to add to: run `cerebro index` first") from None
    return ref, bundle_for(ref, uri)


def run_reindex(cfg: CerebroConfig, scrape: str, source: str = "scrape",
                log: Callable[[str], None] = print) -> ReindexResult:
    t0 = time.perf_counter()
    tracking.configure(cfg)
    names = vocabulary_of(cfg)  # a missing vocabulary file fails here, before any compute
    folder = materialise(cfg, scrape, log)
    # one publish at a time, from reading the champion to moving its alias: a reindex started
    # while another runs waits, then adds to the version that one published (cerebro_core/lease.py)
    with publish_lease(cfg, log=lambda m: log(f"reindex: {m}")):
        return _reindex(cfg, scrape, source, folder, names, t0, log)


def _reindex(cfg: CerebroConfig, scrape: str, source: str, folder: Path, names, t0: float,
             log: Callable[[str], None]) -> ReindexResult:
    mv, bundle = _champion_bundle(cfg)
    info = json.loads((bundle / "index.json").read_text())
    rows = read_rows(bundle, resolve(cfg).home)
    old_vectors = np.load(bundle / "vectors.npy", allow_pickle=False) if (bundle / "vectors.npy").exists() else None
    known = {r["sha256"] for r in rows if r.get("sha256")}

    counts: Counter = Counter()
    # a configured source re-indexed: its own metadata JSON, detector output and layout, as index reads them
    src = next((s for s in cfg.index.sources if s.name == source), None)
    storage = Storage(cfg.storage)
    meta, flags = ((coco_meta.for_source(storage, src, counts), megadetector.for_source(storage, src, counts))
                   if src is not None else (None, None))
    items = scan_folder(str(folder), source, cfg.index.video_frame_interval, counts, meta,
                        src.layout if src is not None else None, flags)
    for it in items if src is not None and src.timezone else []:
        it.extra["timezone"] = src.timezone
    new_items: list[Item] = []
    dup = 0
    seen: set[str] = set()
    for it in items:
        if it.sha256 is None:
            try:
                it.sha256 = hashlib.sha256(Path(it.uri).read_bytes()).hexdigest()
            except OSError:
                counts["unreadable"] += 1
                continue
        if it.sha256 in known or it.sha256 in seen:
            dup += 1
            continue
        seen.add(it.sha256)
        new_items.append(it)

    # Which CLIP model is champion now, and is it the one the index was built with?
    from cerebro_core.model.registry import download as download_clip
    from cerebro_core.model.registry import resolve_version

    clip_now = resolve_version(cfg.tracking.model_name, cfg.index.model_alias)
    built_with = str(info.get("clip", {}).get("version"))
    full = str(clip_now.version) != built_with or old_vectors is None
    tags = {"scrape": scrape, "search_version_before": mv.version, "full_rebuild": str(full)}
    shard_work = join(resolve(cfg).storage_root, cfg.name, "reindex-shards", hashlib.sha256(scrape.encode()).hexdigest()[:16])
    with tracking.stage_run(cfg, "reindex", tags=tags):
        if full:
            log(f"reindex: cerebro-clip champion is v{clip_now.version}, index built with v{built_with}: "
                "re-embedding everything")
            model_dir = download_clip(clip_now)
            clip = load_clip_from_folder(model_dir)
            old_items = [Item(r["uri"], r["source"], r["media_type"], r.get("video_ts"), sha256=r.get("sha256"),
                              extra={k: r[k] for k in ("source_root", "camera", "origin_uri", "taken_at", "lat", "lon")
                                     if r.get(k) is not None})
                         for r in rows if Path(r["uri"]).exists()]
            todo = old_items + new_items
        else:
            model_dir = bundle / "model"
            clip = load_clip_from_folder(model_dir)
            todo = new_items
        # one node's processes (compute.nproc_per_node): a reindex is one scheduled worker's job
        emb = embed(one_node(cfg.compute), cfg.storage, clip.name, str(Path(model_dir, "model.pt")), todo,
                    embedding_dir(resolve(cfg).storage_root, cfg.name, "reindex", str(clip_now.version if full else built_with), todo),
                    batch_size=cfg.index.batch_size, log=log, bundle=clip)
        failures = dict(emb.failures + counts)
        failed = sum(failures.values())
        n_new = len([r for r in emb.rows if r["sha256"] not in known])
        result = dict(scanned=len(items), new=n_new, duplicates=dup, failed=failed, size_before=len(rows),
                      full_rebuild=full)
        tracking.log_metrics({f"failures.{k}": v for k, v in failures.items()})
        if not full and len(emb.rows) == 0:
            tracking.log_metrics({**{k: float(v) for k, v in result.items()}, "size_after": len(rows),
                                  "seconds": time.perf_counter() - t0})
            log(f"reindex: nothing new in {scrape} ({dup} duplicates, {failed} failed{_reasons(failures)}); "
                "champion unchanged")
            return ReindexResult(version=None, published=False, size_after=len(rows), index_rebuilt=False,
                                 reason="nothing new", seconds=time.perf_counter() - t0, failures=failures, **result)
        if full:
            vectors = emb.vectors
            all_rows = emb.rows
            index, report = build_index(cfg.index, vectors.astype(np.float32), Storage(cfg.storage), shard_work)
            rebuilt, reason = True, "new CLIP model: full rebuild"
        else:
            index = load(bundle, info, mmap=False)
            baseline = float(info.get("build_params", {}).get("centroid_distance", 0.0))
            index, add = add_or_rebuild(index, old_vectors, emb.vectors, baseline,
                                        lambda allv: rebuild_like(info, allv, cfg.index, Storage(cfg.storage), shard_work))
            vectors = np.concatenate([old_vectors, emb.vectors])
            all_rows = [{k: v for k, v in r.items() if k not in ("id", "path")} for r in rows] + emb.rows
            report = IndexReport(**{k: v for k, v in info.items() if k in IndexReport.__dataclass_fields__})
            report.n = len(all_rows)
            rebuilt, reason = add.rebuilt, add.reason
            report.recall_at_10 = measured_recall(index, vectors.astype(np.float32))
        # the new rows' (a full rebuild: all rows') own metadata; sequences and duplicates over all
        item_fields(emb.rows, emb.vectors, Species(clip, names, cfg.adapt.templates) if names else None)
        group_fields(all_rows, index, vectors.astype(np.float32), cfg.index.sequence_gap_s, cfg.index.duplicate_threshold)
        log(f"reindex: {n_new} new, {dup} duplicates, {failed} failed{_reasons(failures)}; index {reason}; "
            f"{len(rows)} → {len(all_rows)} items")
        tracking.log_metrics({**{k: float(v) for k, v in result.items()}, "size_after": len(all_rows),
                              "index_rebuilt": float(rebuilt), "recall_at_10": report.recall_at_10})
        with tempfile.TemporaryDirectory() as td:
            b = write_bundle(Path(td, "bundle"), index, report, all_rows, model_dir,
                             {"name": cfg.tracking.model_name, "version": str(clip_now.version) if full else built_with,
                              "model": clip.name}, vectors=vectors, species_vocabulary=names)
            sv = publish(cfg, b, str(clip_now.version) if full else built_with, report)
        seconds = time.perf_counter() - t0
        tracking.log_metrics({"seconds": seconds})
    return ReindexResult(version=sv, published=True, size_after=len(all_rows), index_rebuilt=rebuilt, reason=reason,
                         seconds=seconds, failures=failures, **result)


def _reasons(failures: dict[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(failures.items()))})" if failures else ""
