"""Flow: adapt (stage 3)."""

from __future__ import annotations

from prefect import flow

from cerebro_core.adapt.stage import AdaptResult
from cerebro_core.config import load_config
from tasks.adapt import adapt_task


@flow(name="adapt", description="pseudo-label wildlife images and train a student on them, iteratively; keep the best")
def adapt_flow(config: str | None = "configs/demo.yaml", overrides: list[str] | None = None,
               start_version: str | None = None) -> AdaptResult:
    cfg = load_config(config, overrides or [])
    return adapt_task(cfg, start_version)
