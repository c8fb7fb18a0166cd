"""The adapt stage as a Prefect task."""

from __future__ import annotations

import math

from prefect import get_run_logger, task

from tasks.caching import adapt_key
from prefect.artifacts import create_table_artifact

from cerebro_core.adapt import stage as core
from cerebro_core.config import CerebroConfig

COLUMNS = ("iteration", "selected", "pseudo_label_precision", "class_entropy", "mean_confidence", "val/top1",
           "val/mean_per_class", "test/top1", "general/text_to_image_R5")


@task(cache_key_fn=adapt_key, persist_result=True, result_serializer="json", name="adapt", retries=0, timeout_seconds=7 * 24 * 3600,
      description="iterations of pseudo-label -> fine-tune, measured; best registered as cerebro-clip@champion")
def adapt_task(cfg: CerebroConfig, start_version: str | None = None) -> core.AdaptResult:
    logger = get_run_logger()
    res = core.run_stage(cfg, start_version=start_version, log=logger.info)
    table = [{c: _cell(r.get(c)) for c in COLUMNS} for r in res.iterations]
    create_table_artifact(table=table, key="adapt-iterations",
                          description=f"best iteration {res.best_iteration} -> {res.model.name} v{res.model.version}")
    return res


def _cell(v):
    """A float rounded; an absent figure (no labels to measure it) is an empty cell, not NaN."""
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 4)
    return v
