"""Flow: pretrain (stage 2) on the shards of a finished download."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from cerebro_core.config import load_config
from cerebro_core.data.shardset import default_output, load_manifest
from cerebro_core.home import resolve
from cerebro_core.storage import Storage
from cerebro_core.model.publish import ModelVersion
from tasks.pretrain import pretrain_task


@flow(name="pretrain", description="open_clip model from random weights on webdataset shards (torchrun)")
def pretrain_flow(
    config: str | None = "configs/demo.yaml", overrides: list[str] | None = None, shards: str | None = None
) -> Optional[ModelVersion]:
    cfg = load_config(config, overrides or [])
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, shards or default_output(cfg.download, resolve(cfg).storage_root, cfg.name))
    return pretrain_task(cfg, manifest)
