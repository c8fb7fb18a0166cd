"""Flow: index (stage 4): embed, build, publish cerebro-search@champion."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from cerebro_core.config import load_config
from cerebro_core.index.publish import SearchVersion
from tasks.index import index_task


@flow(name="index", description="embed wildlife media with cerebro-clip, build a tuned FAISS index, publish it")
def index_flow(config: str | None = "configs/demo.yaml", overrides: list[str] | None = None,
               clip_version: str | None = None) -> Optional[SearchVersion]:
    cfg = load_config(config, overrides or [])
    return index_task(cfg, clip_version)
