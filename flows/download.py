"""Flow: download (stage 1)."""

from __future__ import annotations

from prefect import flow

from cerebro_core.config import load_config
from cerebro_core.data.shardset import ShardSet
from tasks.download import download_task


@flow(name="download", description="URL list -> webdataset shards with img2dataset (resumable)")
def download_flow(config: str | None = "configs/demo.yaml", overrides: list[str] | None = None) -> ShardSet:
    cfg = load_config(config, overrides or [])
    return download_task(cfg)
