"""The local state dir and the embedded defaults that live in it.

``$CEREBRO_HOME`` (default ``./.cerebro``) holds the MLflow sqlite database and artifacts, the
Prefect home and the default storage root. ``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL`` and the
config switch to real servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cerebro_core.config import CerebroConfig


def cerebro_home() -> Path:
    return Path(os.environ.get("CEREBRO_HOME", ".cerebro")).expanduser().resolve()


@dataclass(frozen=True)
class Endpoints:
    home: Path
    tracking_uri: str
    tracking_source: str  # "config" | "env" | "embedded"
    artifact_root: str
    prefect_home: Path
    prefect_api: str  # URL or "ephemeral"
    storage_root: str


def resolve(cfg: CerebroConfig) -> Endpoints:
    home = cerebro_home()
    embedded = f"sqlite:///{home / 'mlflow.db'}"
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if cfg.tracking.uri:
        uri, src = cfg.tracking.uri, "config"
    elif env_uri and env_uri != embedded:  # prepare_environment exports the embedded URI itself
        uri, src = env_uri, "env"
    else:
        uri, src = embedded, "embedded"
    prefect_home = Path(os.environ.get("PREFECT_HOME", home / "prefect")).expanduser()
    prefect_api = os.environ.get("PREFECT_API_URL") or "ephemeral"
    storage_root = cfg.storage.root or str(home / "data")
    return Endpoints(
        home=home,
        tracking_uri=uri,
        tracking_source=src,
        artifact_root=str(home / "mlartifacts"),
        prefect_home=prefect_home,
        prefect_api=prefect_api,
        storage_root=storage_root,
    )


def prepare_environment(cfg: CerebroConfig) -> Endpoints:
    """Create the state dir and export the embedded defaults for child processes.

    Sets PREFECT_HOME (if unset) so Prefect's ephemeral API keeps its database under the state
    dir, and MLFLOW_TRACKING_URI so every process (torchrun workers, pyfunc loaders) agrees.
    """
    ep = resolve(cfg)
    ep.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(ep.prefect_home))
    # Offline by default: no telemetry from the embedded server (it also contends for its sqlite).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["MLFLOW_TRACKING_URI"] = ep.tracking_uri
    if "://" not in ep.storage_root:
        Path(ep.storage_root).mkdir(parents=True, exist_ok=True)
    return ep
