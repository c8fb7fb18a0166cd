"""Publishing the search model: bundle folder → content-addressed parts in storage + a manifest →
MLflow pyfunc ``cerebro-search`` (its artifact is the manifest) → registered version → smoke
query (assembled from the parts, as a user would load it) → alias ``champion`` moved (only then).
Older versions are kept; a version writes only the parts storage lacks (:mod:`cerebro_core.parts`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel

from cerebro_core import parts, tracking
from cerebro_core.home import cerebro_home, resolve
from cerebro_core.ann.base import IndexReport
from cerebro_core.ann.disk import write_vectors
from cerebro_core.ann.kinds import kind_for
from cerebro_core.search.rows import write_rows
from cerebro_core.lease import publish_lease
from cerebro_core.storage import Storage, join
from cerebro_core.tracking import search_model



class SearchVersion(BaseModel):
    name: str
    version: str
    run_id: str
    model_uri: str
    clip_version: str
    n: int
    kind: str
    recall_at_10: float
    latency_p50_ms: float


def write_bundle(dest: Path, index, report: IndexReport, rows: list[dict], clip_model_dir: Path,
                 clip_ref: dict, vectors: Optional[np.ndarray] = None,
                 species_vocabulary: Optional[list[str]] = None) -> Path:
    """The search bundle folder (see cerebro_core.search.searcher)."""
    dest.mkdir(parents=True, exist_ok=True)
    if kind_for(report.kind).needs_vectors and vectors is None:
        raise ValueError(f"a {report.kind} index is refined from the bundle's vectors: pass them")
    shards = index.save(dest)  # a sharded index: its entries
    write_rows(dest, rows, cerebro_home())
    if vectors is not None:  # kept for incremental re-indexing (no re-embedding of old media)
        write_vectors(dest / "vectors.npy", vectors)
    info = {**report.__dict__, "clip": clip_ref, "species_vocabulary": species_vocabulary,
            **({"shards": shards} if shards else {})}
    (dest / "index.json").write_text(json.dumps(info, indent=2, default=str))
    if (dest / "model").exists():
        shutil.rmtree(dest / "model")
    shutil.copytree(clip_model_dir, dest / "model")
    return dest


def parts_root(cfg) -> str:
    """Where a search model's parts live: one folder per registered model name, so that `cerebro gc`
    of one name never sees another's."""
    return join(resolve(cfg).storage_root, "parts", cfg.tracking.search_model_name)


def store_parts(cfg, bundle_dir: Path, dest: Path) -> Path:
    """The bundle's parts written to storage; its manifest at ``dest``. Logs what was written."""
    manifest, st = parts.pack(bundle_dir, Storage(cfg.storage), parts_root(cfg), cfg.storage.part_size,
                              cerebro_home())
    dest.write_text(json.dumps(manifest, indent=1))
    tracking.log_metrics({"version/bytes_total": st.bytes_total, "version/bytes_written": st.bytes_written,
                          "version/parts_written": st.blocks_written, "version/parts_reused": st.blocks_reused})
    return dest


def publish(cfg, bundle_dir: Path, clip_version: str, report: IndexReport, expect_hits: bool = True,
            tags: Optional[dict] = None) -> SearchVersion:
    """Inside an active MLflow run: store the parts, log the pyfunc (its artifact: the manifest),
    register, smoke-test, move ``champion``."""
    with publish_lease(cfg) as held:  # a caller (reindex) may hold it already: then it is ours
        return _publish(cfg, bundle_dir, clip_version, report, expect_hits, tags, held)


def _publish(cfg, bundle_dir: Path, clip_version: str, report: IndexReport, expect_hits: bool,
             tags: Optional[dict], held) -> SearchVersion:
    manifest = store_parts(cfg, bundle_dir, bundle_dir.parent / "manifest.json")
    model_uri = search_model.log_search_model(manifest, FILTER_PARAMS)
    name = cfg.tracking.search_model_name
    run_id = tracking.active_run_id()
    mv = tracking.register_logged_model(
        name, model_uri,
        tags={"stage": "index", "clip_version": clip_version, "kind": report.kind, "n": report.n,
              "recall_at_10": round(report.recall_at_10, 4),
              **({"text_recall_at_10": round(report.text_recall_at_10, 4)} if report.text_recall_at_10 is not None
                 else {}), **(tags or {})},
    )
    version_uri = f"models:/{name}/{mv.version}"
    hits = search_model.smoke_query(version_uri)  # loads from the registry, as a user would
    if expect_hits and hits == 0:
        raise RuntimeError(f"{version_uri} answered no hits to the smoke query; champion not moved")
    held.check()  # never move the alias on a lease we lost (S3: not renewed in time, taken over)
    tracking.set_alias(name, "champion", mv.version)
    return SearchVersion(name=name, version=str(mv.version), run_id=run_id, model_uri=f"models:/{name}@champion",
                         clip_version=str(clip_version), n=report.n, kind=report.kind,
                         recall_at_10=report.recall_at_10, latency_p50_ms=report.latency_p50_ms)


FILTER_PARAMS = ("source", "media", "species", "min_species_score", "date_from", "date_to", "bbox", "camera",
                 "min_score", "sort", "collapse", "offset", "show_empty", "source_label")
