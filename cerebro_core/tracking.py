"""The one module that talks to MLflow: runs (nested under a pipeline run), params, metrics,
artifacts, the model registry and aliases.

Embedded default: sqlite under ``$CEREBRO_HOME`` with artifacts beside it; ``MLFLOW_TRACKING_URI``
or ``tracking.uri`` switch to a real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cerebro_core.config import CerebroConfig
from cerebro_core.home import Endpoints, prepare_environment

PARENT_RUN_ENV = "CEREBRO_PARENT_RUN_ID"


def _mlflow():
    import mlflow  # imported lazily: `cerebro info` and light paths stay fast

    return mlflow


def configure(cfg: CerebroConfig) -> Endpoints:
    """Point MLflow at the configured (or embedded) tracking store and make sure the experiment
    exists, with its artifacts under the state dir when the store is the embedded sqlite."""
    ep = prepare_environment(cfg)
    mlflow = _mlflow()
    mlflow.set_tracking_uri(ep.tracking_uri)
    mlflow.set_registry_uri(ep.tracking_uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        artifact_location = None
        if ep.tracking_source == "embedded":
            artifact_location = Path(ep.artifact_root, cfg.tracking.experiment).as_uri()
        try:
            client.create_experiment(cfg.tracking.experiment, artifact_location=artifact_location)
        except Exception:  # created concurrently by another process
            if client.get_experiment_by_name(cfg.tracking.experiment) is None:
                raise
    mlflow.set_experiment(cfg.tracking.experiment)
    return ep


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
    return out


@contextlib.contextmanager
def stage_run(
    cfg: CerebroConfig,
    stage: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    log_config: bool = True,
) -> Iterator[Any]:
    """An MLflow run tagged ``stage=<stage>``, nested under ``parent_run_id`` (or the pipeline run
    named by ``$CEREBRO_PARENT_RUN_ID``) when there is one."""
    configure(cfg)
    mlflow = _mlflow()
    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV)
    all_tags = {"stage": stage, "cerebro.config_name": cfg.name}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    all_tags.update(tags or {})
    with mlflow.start_run(run_name=run_name or stage, tags=all_tags, nested=mlflow.active_run() is not None) as run:
        if log_config:
            log_params(cfg.masked())
        yield run


def log_params(params: dict[str, Any]) -> None:
    mlflow = _mlflow()
    flat = {k: ("" if v is None else str(v)[:6000]) for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items() if v is not None}
    if clean:
        _mlflow().log_metrics(clean, step=step)


def log_json_artifact(obj: Any, name: str, artifact_path: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, name)
        p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        _mlflow().log_artifact(str(p), artifact_path=artifact_path)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    _mlflow().log_artifact(str(path), artifact_path=artifact_path)


def set_tags(tags: dict[str, Any]) -> None:
    _mlflow().set_tags({k: str(v) for k, v in tags.items()})


def client():
    return _mlflow().MlflowClient()


def register_version(
    name: str, source: str, run_id: str, tags: dict[str, Any] | None = None, description: str | None = None
):
    """Register ``source`` (an artifact URI) as a new version of ``name``."""
    c = client()
    try:
        c.get_registered_model(name)
    except Exception:
        with contextlib.suppress(Exception):
            c.create_registered_model(name)
    mv = c.create_model_version(
        name=name,
        source=source,
        run_id=run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
        description=description,
    )
    return mv


def register_logged_model(name: str, model_uri: str, tags: dict[str, Any] | None = None):
    """Register an MLflow logged model (``models:/m-…`` from ``log_model``) as a new version."""
    return _mlflow().register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})


def set_alias(name: str, alias: str, version: str | int) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def get_version_by_alias(name: str, alias: str):
    return client().get_model_version_by_alias(name, alias)


def log_metrics_to_run(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log to a given run without making it active (used by training rank 0)."""
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), 500):
        client().log_batch(run_id, metrics=items[i : i + 500])
