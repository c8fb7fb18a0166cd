"""Publishing the search model: bundle folder → MLflow pyfunc ``cerebro-search`` → registered
version → smoke query → alias ``champion`` moved (only then). Older versions are kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel

from cerebro_core import tracking
from cerebro_core.home import cerebro_home
from cerebro_core.index.build import IndexReport, save
from cerebro_core.index.rows import write_rows

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CORE_DIR = Path(__file__).resolve().parents[1]


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
    """The search bundle folder (see cerebro_core.index.search)."""
    dest.mkdir(parents=True, exist_ok=True)
    if report.kind == "ivfpq_disk" and vectors is None:
        raise ValueError("an ivfpq_disk index is refined from the bundle's vectors: pass them")
    shards = save(index, dest)
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


def write_vectors(path: Path, vectors, chunk: int = 100_000) -> None:
    """fp16 ``.npy``, written in chunks (``vectors`` may be a memmap larger than RAM)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=tuple(vectors.shape))
    for s in range(0, len(vectors), chunk):
        out[s:s + chunk] = np.asarray(vectors[s:s + chunk], dtype=np.float16)
    out.flush()
    del out


def smoke_query(model_uri: str, query: str = "an animal") -> int:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict(pd.DataFrame({"query": [query]}), params={"k": 3})
    return len(out)


def publish(cfg, bundle_dir: Path, clip_version: str, report: IndexReport, expect_hits: bool = True,
            tags: Optional[dict] = None) -> SearchVersion:
    """Inside an active MLflow run: log the pyfunc, register, smoke-test, move ``champion``."""
    import mlflow
    import pandas as pd

    info = mlflow.pyfunc.log_model(
        name="search",
        python_model=str(PYFUNC_CODE),
        artifacts={"bundle": str(bundle_dir)},
        code_paths=[str(CORE_DIR)],
        signature=_signature(),
        input_example=(pd.DataFrame({"query": ["a red fox leaping into snow"]}), {"k": 3}),
        pip_requirements=_requirements(),
    )
    name = cfg.tracking.search_model_name
    run_id = mlflow.active_run().info.run_id
    mv = tracking.register_logged_model(
        name, info.model_uri,
        tags={"stage": "index", "clip_version": clip_version, "kind": report.kind, "n": report.n,
              "recall_at_10": round(report.recall_at_10, 4), **(tags or {})},
    )
    version_uri = f"models:/{name}/{mv.version}"
    hits = smoke_query(version_uri)  # loads from the registry, as a user would
    if expect_hits and hits == 0:
        raise RuntimeError(f"{version_uri} answered no hits to the smoke query; champion not moved")
    tracking.set_alias(name, "champion", mv.version)
    return SearchVersion(name=name, version=str(mv.version), run_id=run_id, model_uri=f"models:/{name}@champion",
                         clip_version=str(clip_version), n=report.n, kind=report.kind,
                         recall_at_10=report.recall_at_10, latency_p50_ms=report.latency_p50_ms)


FILTER_PARAMS = ("source", "media", "species", "min_species_score", "date_from", "date_to", "bbox", "camera",
                 "min_score", "sort", "collapse", "offset")


def _signature():
    """Declared, not inferred: ids and ranks are longs, and every filter is an optional string."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    out = [ColSpec("string", "query"), ColSpec("long", "rank"), ColSpec("long", "id"), ColSpec("double", "score"),
           ColSpec("string", "uri"), ColSpec("string", "source"), ColSpec("string", "media_type"),
           ColSpec("double", "video_ts", required=False)]
    params = [ParamSpec("k", "long", 10)] + [ParamSpec(n, "string", "") for n in FILTER_PARAMS]
    return ModelSignature(inputs=Schema([ColSpec("string", "query")]), outputs=Schema(out),
                          params=ParamSchema(params))


def _requirements() -> list[str]:
    from importlib.metadata import version

    reqs = []
    for dist in ("torch", "torchvision", "open_clip_torch", "faiss-cpu", "pyarrow", "pillow", "pandas", "mlflow",
                 "pydantic", "fsspec", "webdataset", "av"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except Exception:
            pass
    return reqs
