"""Stage 4, index: ModelVersion + wildlife sources → SearchVersion (cerebro-search@champion).

Embed every image and video still of ``index.sources`` with a ``cerebro-clip`` version (alias
``index.model_alias``, else the latest), build and tune the FAISS index, tag each item with its
metadata (time, place, camera, species, sequence, near-duplicate: :mod:`.metadata`), write the
search bundle to storage, and publish it as the ``cerebro-search`` pyfunc model.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cerebro_core import tracking
from cerebro_core.config import CerebroConfig
from cerebro_core.data import coco_meta, megadetector
from cerebro_core.data.mirror import folder_error, local_folder
from cerebro_core.distributed import world_size
from cerebro_core.embed import Embedded, Item, scan_folder
from cerebro_core.embed_job import embed, embedding_dir
from cerebro_core.home import resolve
from cerebro_core.ann.store import build_index
from cerebro_core.index.metadata import Species, group_fields, item_fields, vocabulary_of
from cerebro_core.index.publish import SearchVersion, publish, write_bundle
from cerebro_core.index.quality import search_quality
from cerebro_core.model.registry import load_clip
from cerebro_core.storage import Storage, join


class IndexInputError(ValueError):
    pass


def check_inputs(cfg: CerebroConfig) -> None:
    """What the index stage needs, checked without doing its work (nothing is scanned, hashed,
    mirrored or read): the sources and their metadata files, the vocabulary, the evaluation
    folder. IndexInputError naming the key; the CLI runs this before starting Prefect."""
    sources = cfg.index.sources
    if not sources:
        raise IndexInputError("index.sources: no sources configured")
    storage = Storage(cfg.storage)
    for s in sources:
        if s.kind != "folder":
            raise IndexInputError(f"index.sources[{s.name}].kind: only 'folder' sources can be indexed directly "
                                  "(download URL lists first; webdataset sources come with adapt)")
        bad = folder_error(storage, s.path, f"index.sources[{s.name}].path") or next(
            iter(coco_meta.source_file_errors(storage, s, "index.sources")), None)
        if bad:
            raise IndexInputError(bad)
    vocabulary_of(cfg)  # a missing vocabulary file names its key
    ev = cfg.index.evaluation_source
    if ev is not None and not Path(ev.path).is_dir():
        raise IndexInputError(f"index.evaluation_source.path: folder not found: {ev.path}")


def scan_sources(cfg: CerebroConfig, counts: Counter) -> list[Item]:
    """All items of the configured sources (checked first: :func:`check_inputs`). A remote folder
    (``s3://…``) is mirrored under the state dir first (:mod:`cerebro_core.data.mirror`); its
    items name their objects."""
    check_inputs(cfg)
    sources, video_interval = cfg.index.sources, cfg.index.video_frame_interval
    storage = Storage(cfg.storage)
    home = resolve(cfg).home
    folders = {}
    for s in sources:
        try:
            folder = local_folder(storage, s.path, home)
        except FileNotFoundError:
            raise IndexInputError(f"index.sources[{s.name}].path: nothing at {s.path}") from None
        if folder is None:
            raise IndexInputError(f"index.sources[{s.name}].path: folder not found: {s.path}")
        folders[s.name] = str(folder)
    try:  # every source's metadata read before the first image is scanned
        meta = {s.name: coco_meta.for_source(storage, s, counts) for s in sources}
        flags = {s.name: megadetector.for_source(storage, s, counts) for s in sources}
    except FileNotFoundError as exc:
        raise IndexInputError(f"index.{exc}") from None
    items: list[Item] = []
    for s in sources:
        found = scan_folder(folders[s.name], s.name, video_interval, counts, meta[s.name], s.layout, flags[s.name])
        for it in found if s.timezone else []:
            it.extra["timezone"] = s.timezone
        items += found
    return items


def run_stage(
    cfg: CerebroConfig,
    clip_version: Optional[str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    log: Callable[[str], None] = print,
    map_shards: Optional[Callable[[list], list[dict]]] = None,
) -> Optional[SearchVersion]:
    """Embed, build, publish. On a node other than ``compute.node_rank`` 0 the node embeds its
    share of the items and returns None; node 0 merges, builds and publishes. With
    ``index.shards`` > 1 the shard builds go through ``map_shards`` (the task layer maps them on
    its task runner; default: here, in turn)."""
    counts: Counter = Counter()
    items = scan_sources(cfg, counts)  # every input checked first, before any compute
    names = vocabulary_of(cfg)
    ev = cfg.index.evaluation_source
    tracking.configure(cfg)
    mv, clip, model_dir = load_clip(cfg.tracking.model_name, cfg.index.model_alias, clip_version)
    log(f"index: {len(items)} items from {len(cfg.index.sources)} sources with {mv.name} v{mv.version} "
        f"on {world_size(cfg.compute)} process(es)")

    def embed_all() -> Optional[Embedded]:
        return embed(cfg.compute, cfg.storage, clip.name, str(Path(model_dir, "model.pt")), items,
                     embedding_dir(resolve(cfg).storage_root, cfg.name, "index", str(mv.version), items), batch_size=cfg.index.batch_size,
                     log=log, progress=progress, bundle=clip)

    if cfg.compute.node_rank != 0:
        embed_all()
        log(f"index: node {cfg.compute.node_rank} of {cfg.compute.nnodes} done; node 0 builds and publishes")
        return None
    tags = {"clip_version": mv.version, "clip_model": clip.name}
    with tracking.stage_run(cfg, "index", tags=tags):
        for src in cfg.index.sources:
            keys = [f"{it.uri}@{it.video_ts}" if it.video_ts is not None else it.uri for it in items
                    if it.source == src.name]
            tracking.log_dataset(src.name, src.path, tracking.listing_digest(keys), "index", len(keys))
        t0 = time.perf_counter()
        emb = embed_all()
        embed_s = time.perf_counter() - t0
        failures = emb.failures + counts
        vectors = emb.vectors.astype(np.float32)
        work = join(embedding_dir(resolve(cfg).storage_root, cfg.name, "index", str(mv.version), items), "shards")
        species = Species(clip, names, cfg.adapt.templates) if names else None
        # tuned on text queries as well: the vocabulary's prompts through the index's own text tower
        texts = species.cls.numpy().astype(np.float32) if species is not None else None
        index, report = build_index(cfg.index, vectors, Storage(cfg.storage), work, map_shards, texts)
        log(f"index: {report.kind} over {report.n} vectors"
            + (f" in {cfg.index.shards} shards" if cfg.index.shards > 1 else "")
            + f", recall@10 {report.recall_at_10:.3f}"
            + (f" (text queries {report.text_recall_at_10:.3f})" if report.text_recall_at_10 is not None else "")
            + f", p50 {report.latency_p50_ms:.2f} ms")
        item_fields(emb.rows, vectors, species)
        group_fields(emb.rows, index, vectors, cfg.index.sequence_gap_s, cfg.index.duplicate_threshold)
        tracking.log_metrics({
            "items": len(items), "indexed": report.n, "failed": sum(failures.values()),
            "embed_s": embed_s, "images_per_s": report.n / max(embed_s, 1e-9), "build_s": report.build_s,
            "recall_at_10": report.recall_at_10, "search_p50_ms": report.latency_p50_ms,
            **({"text_recall_at_10": report.text_recall_at_10} if report.text_recall_at_10 is not None else {}),
            "search_p99_ms": report.latency_p99_ms, "index_memory_mb": report.memory_mb,
            **{f"failures.{k}": v for k, v in failures.items()},
        })
        tracking.log_params({"index.chosen_kind": report.kind, "index.search_params": report.params,
                             "index.build_params": report.build_params,
                             "compute.world_size": world_size(cfg.compute)})
        quality = search_quality(cfg, clip, str(mv.version))
        if quality:
            tracking.log_metrics(quality)
            log(f"index: species queries on {ev.name}: mAP@10 {quality['search/mAP_at_10']:.3f}, "
                f"P@10 {quality['search/P_at_10']:.3f}"
                + (f" (pretrained v{quality['search/pretrained_version']:.0f}: "
                   f"{quality['search/pretrained_mAP_at_10']:.3f}, {quality['search/pretrained_P_at_10']:.3f})"
                   if "search/pretrained_mAP_at_10" in quality else ""))
        with tempfile.TemporaryDirectory() as td:
            bundle = write_bundle(Path(td, "bundle"), index, report, emb.rows, model_dir,
                                  {"name": mv.name, "version": mv.version, "model": clip.name}, vectors=emb.vectors,
                                  species_vocabulary=names)
            tracking.log_json_artifact({**report.__dict__, "failures": dict(failures)}, "index_report.json")
            sv = publish(cfg, bundle, mv.version, report, expect_hits=report.n > 0,
                         tags={k: round(v, 4) for k, v in (quality or {}).items()})
    log(f"index: published {sv.name} v{sv.version} (alias champion)")
    return sv
