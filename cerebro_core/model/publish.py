"""Publishing a trained CLIP: the model weights as an MLflow artifact and a new registered
``cerebro-clip`` version — what pretrain and adapt hand to the stages after them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pydantic import BaseModel

from cerebro_core import tracking
from cerebro_core.config import CerebroConfig
from cerebro_core.model import checkpoint as ckpt
from cerebro_core.model.factory import model_config
from cerebro_core.storage import Storage


class ModelVersion(BaseModel):
    """A registered cerebro-clip version: what adapt and index consume."""

    name: str
    version: str
    run_id: str
    model: str
    stage: str
    checkpoint_url: str  # the training checkpoint in storage (for resume / fine-tuning)
    artifact_uri: str  # the published weights (MLflow artifact folder 'model')
    metrics: dict[str, float] = {}


def publish_model(
    cfg: CerebroConfig, run_id: str, checkpoint_url: str, stage: str, tags: dict, metrics: dict
) -> ModelVersion:
    """Log the model weights (model-only checkpoint + architecture JSON) to the active run and
    register a new cerebro-clip version."""
    storage = Storage(cfg.storage)
    state = ckpt.load(storage, checkpoint_url)
    with tempfile.TemporaryDirectory() as td:
        d = Path(td, "model")
        d.mkdir()
        import torch

        torch.save({"model": state["model"], "model_name": state["model_name"]}, d / "model.pt")
        (d / "model_config.json").write_text(
            json.dumps({"model_name": state["model_name"], "arch": model_config(state["model_name"])}, indent=2)
        )
        tracking.log_artifact(d)  # → artifact folder "model"
    artifact_uri = tracking.artifact_uri("model")
    mv = tracking.register_version(
        cfg.tracking.model_name,
        artifact_uri,
        run_id,
        tags={"stage": stage, "model": state["model_name"], "step": state["step"], **tags},
        description=f"{stage} of {state['model_name']} (run {run_id})",
    )
    return ModelVersion(
        name=cfg.tracking.model_name,
        version=str(mv.version),
        run_id=run_id,
        model=state["model_name"],
        stage=stage,
        checkpoint_url=checkpoint_url,
        artifact_uri=artifact_uri,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
    )
