"""The one package that talks to MLflow (nothing outside it imports mlflow): runs (nested under a
pipeline run), params, metrics, artifacts, the model registry and aliases; :mod:`.search_model`
logs and loads the search pyfunc, whose model-from-code file is :mod:`.search_pyfunc`;
:mod:`.store` checks the embedded sqlite store.

Embedded default: sqlite under ``$CEREBRO_HOME`` with artifacts beside it; ``MLFLOW_TRACKING_URI``
or ``tracking.uri`` switch to a real server. The embedded store is checked before first use
(:func:`check_store`): a file that is not an MLflow database is a one-line error, and a state dir
that was copied or moved is adopted — its recorded artifact locations are rewritten to point into
it, so that nothing is ever written into the state dir it was copied from.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cerebro_core.config import CerebroConfig
from cerebro_core.home import Endpoints, prepare_environment
from cerebro_core.tracking.store import TrackingStoreError, check_store  # noqa: F401  (re-exported)

PARENT_RUN_ENV = "CEREBRO_PARENT_RUN_ID"


def _mlflow():
    import mlflow  # imported lazily: `cerebro info` and light paths stay fast

    return mlflow


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def configure(cfg: CerebroConfig) -> Endpoints:
    """Point MLflow at the configured (or embedded) tracking store and make sure the experiment
    exists, with its artifacts under the state dir when the store is the embedded sqlite."""
    ep = prepare_environment(cfg)
    check_store(ep, cfg.tracking.lock_wait_s)
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
    exp = mlflow.set_experiment(cfg.tracking.experiment)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # MLflow's UI opens it on training runs, not traces
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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
    for m in reap_stale_runs(cfg):
        print(f"cerebro: {m}", file=sys.stderr)
    parent = parent_run_id or os.environ.get(PARENT_RUN_ENV)
    all_tags = {"stage": stage, "cerebro.config_name": cfg.name, "cerebro.host": socket.gethostname(),
                "cerebro.pid": str(os.getpid())}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    all_tags.update(tags or {})
    with mlflow.start_run(run_name=run_name or stage, tags=all_tags, nested=mlflow.active_run() is not None) as run:
        if log_config:
            log_params(cfg.masked())
        yield run


def _alive(pid: int, started_ms: int) -> bool:
    import psutil

    try:  # a pid reused by a process started after the run is not the run's process
        return psutil.Process(pid).create_time() <= started_ms / 1000 + 1
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def reap_stale_runs(cfg: CerebroConfig) -> list[str]:
    """Runs of this experiment still RUNNING whose process on this host is gone (killed with
    SIGKILL, the machine lost power) are marked FAILED, with a ``cerebro.cleanup`` tag saying why;
    a model version such a run registered and never aliased is tagged ``cerebro.abandoned``.
    Returns what was done, one line each."""
    c = client()
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    stale = [r for r in c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
             if r.data.tags.get("cerebro.host") == host and r.data.tags.get("cerebro.pid", "").isdigit()
             and not _alive(int(r.data.tags["cerebro.pid"]), r.info.start_time)]
    out = []
    for r in stale:
        rid, pid, stage = r.info.run_id, r.data.tags["cerebro.pid"], r.data.tags.get("stage", "?")
        why = f"its process {pid} on {host} ended without closing it (killed?)"
        c.set_tag(rid, "cerebro.cleanup", f"marked FAILED by process {os.getpid()}: {why}")
        c.set_terminated(rid, "FAILED")
        out.append(f"marked the {stage} run {rid} FAILED: {why}")
        for mv in c.search_model_versions(f"run_id = '{rid}'"):
            if not mv.aliases:
                note = f"never served: its {stage} run {rid} ended before the smoke test moved an alias to it"
                c.set_model_version_tag(mv.name, mv.version, "cerebro.abandoned", note)
                out.append(f"{mv.name} v{mv.version} tagged cerebro.abandoned: {note}")
    return out


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


def listing_digest(uris: list[str]) -> str:
    """A digest of what a stage read from a source: its item URIs (and video still times), sorted."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(uris)).encode()).hexdigest()


def log_dataset(name: str, uri: str, digest: str, context: str, n: int | None = None) -> None:
    """Record a stage input on the active run as an MLflow dataset (the run page's "Datasets used")."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    try:
        source = resolve_dataset_source(uri)
    except Exception:  # a scheme MLflow has no dataset source for: recorded by its URL
        source = HTTPDatasetSource(uri)
    ds = MetaDataset(source, name=name if n is None else f"{name} ({n:,} items)", digest=digest[:36])
    _mlflow().log_input(ds, context=context)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    _mlflow().log_artifact(str(path), artifact_path=artifact_path)


def set_tags(tags: dict[str, Any]) -> None:
    _mlflow().set_tags({k: str(v) for k, v in tags.items()})


def client():
    return _mlflow().MlflowClient()


def active_run_id() -> str:
    return _mlflow().active_run().info.run_id


def artifact_uri(artifact_path: str) -> str:
    """The URI of ``artifact_path`` in the active run."""
    return _mlflow().get_artifact_uri(artifact_path)


def download_artifacts(uri: str, dst_path: str | None = None) -> Path:
    """A local copy of the artifacts at ``uri`` (``runs:/``, ``models:/``, a file or store URI)."""
    return Path(_mlflow().artifacts.download_artifacts(uri, dst_path=dst_path))


def versions(tracking_uri: str, name: str) -> list[tuple[str, list[str]]]:
    """(version, its aliases) of every registered version of ``name``."""
    c = _mlflow().MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return [(str(mv.version), list(mv.aliases or [])) for mv in c.search_model_versions(f"name = '{name}'")]


def register_version(
    name: str, source: str, run_id: str | None, tags: dict[str, Any] | None = None, description: str | None = None,
    model_id: str | None = None,
):
    """Register ``source`` (an artifact URI, or a logged model's ``models:/m-…`` with its
    ``model_id``) as a new version of ``name``. Through the client: ``mlflow.register_model`` would
    print "Successfully registered model …" on stderr."""
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
        model_id=model_id,
    )
    return mv


def register_logged_model(name: str, model_uri: str, tags: dict[str, Any] | None = None):
    """Register an MLflow logged model (``models:/m-…`` from ``log_model``) as a new version,
    linked to the active run."""
    run = _mlflow().active_run()
    return register_version(name, model_uri, run.info.run_id if run else None, tags,
                            model_id=model_uri.removeprefix("models:/"))


def set_alias(name: str, alias: str, version: str | int) -> None:
    client().set_registered_model_alias(name, alias, str(version))


def get_version_by_alias(name: str, alias: str):
    return client().get_model_version_by_alias(name, alias)


@dataclass(frozen=True)
class VersionRef:
    """A registered version, as the registry records it (versions are immutable; ``run_id`` and
    ``created_ms`` tell one database's v3 from another's)."""

    name: str
    version: str
    run_id: str
    storage_location: str
    created_ms: int


_REF_SQL = ("SELECT mv.version, mv.run_id, mv.storage_location, mv.creation_time FROM model_versions mv {join} "
            "WHERE mv.name = ? AND {where} AND mv.workspace = 'default'")


def version_ref(tracking_uri: str, name: str, alias: str | None = None, version: str | None = None) -> VersionRef:
    """The version that ``alias`` (or the number ``version``) of ``name`` names. A sqlite store is
    read from its file, read-only, without importing MLflow: this is on the cold path of every
    `cerebro search`. Any other store (a server), or a schema this does not know, asks MLflow."""
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///"):]
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
                if alias is not None:
                    sql = _REF_SQL.format(join="JOIN registered_model_aliases a ON a.name = mv.name AND "
                                               "a.version = mv.version AND a.workspace = mv.workspace",
                                          where="a.alias = ?")
                else:
                    sql = _REF_SQL.format(join="", where="mv.version = ?")
                row = con.execute(sql, (name, alias if alias is not None else int(version))).fetchone()
            if row is None:
                what = f"alias {alias!r}" if alias is not None else f"version {version}"
                raise LookupError(f"registered model {name!r} has no {what}")
            return VersionRef(name, str(row[0]), row[1] or "", row[2] or "", int(row[3] or 0))
        except sqlite3.Error:
            pass
    mlflow = _mlflow()
    c = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = c.get_model_version_by_alias(name, alias) if alias is not None else c.get_model_version(name, str(version))
    return VersionRef(name, str(mv.version), mv.run_id or "", getattr(mv, "storage_location", None) or "",
                      int(mv.creation_timestamp or 0))


def download_version(tracking_uri: str, ref: VersionRef, dest: Path) -> Path:
    """The version's model folder, downloaded into ``dest`` (created)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    dest.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(f"models:/{ref.name}/{ref.version}", dst_path=str(dest)))


def log_metrics_to_run(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log to a given run without making it active (used by training rank 0)."""
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), 500):
        client().log_batch(run_id, metrics=items[i : i + 500])


def invalid_parameter(message: str) -> Exception:
    """The error a pyfunc raises for a bad input: MLflow's scoring server answers 400 with ``message``."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message[:500], error_code=INVALID_PARAMETER_VALUE)


def log_metric_points(run_id: str, points: list[tuple[str, float, int, int]]) -> None:
    """(key, value, timestamp ms, step) points, as measured (:mod:`cerebro_core.metric_buffer`)."""
    from mlflow.entities import Metric

    items = [Metric(k, v, ts, step) for k, v, ts, step in points]
    for i in range(0, len(items), 500):
        client().log_batch(run_id, metrics=items[i : i + 500])


def version_numbers(tracking_uri: str, name: str) -> list[str]:  # every registered version, aliased or not
    return [v for v, _ in versions(tracking_uri, name)]
