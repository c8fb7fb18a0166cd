"""Flow: reindex a new wildlife scrape (scheduled daily and triggered by `cerebro.scrape.landed`)."""

from __future__ import annotations

from prefect import flow

from cerebro_core.config import load_config
from cerebro_core.index.reindex import ReindexResult
from tasks.reindex import reindex_task


@flow(name="reindex", description="embed only what is new in a scrape and publish a new cerebro-search version")
def reindex_flow(scrape: str, config: str | None = "configs/demo.yaml", overrides: list[str] | None = None,
                 source: str = "scrape") -> ReindexResult:
    cfg = load_config(config, overrides or [])
    return reindex_task(cfg, scrape, source)
