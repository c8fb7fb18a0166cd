"""The pretrain stage as a Prefect task."""

from __future__ import annotations

import re
from typing import Optional

from prefect import get_run_logger, task

from tasks.caching import pretrain_key, retry_unless_peer_lost
from prefect.artifacts import create_table_artifact

from cerebro_core.config import CerebroConfig
from cerebro_core.data.shardset import ShardSet
from cerebro_core.model.publish import ModelVersion
from cerebro_core.train import pretrain as core
from tasks.progress import Progress

_STEP = re.compile(r"^step (\d+)/(\d+) ")


def step_progress(progress: Progress):
    def on_line(line: str) -> None:
        m = _STEP.match(line)
        if m:
            progress(int(m.group(1)), int(m.group(2)))

    return on_line


@task(
    cache_key_fn=pretrain_key,
    persist_result=True,
    result_serializer="json",
    name="pretrain",
    retries=1,  # resume: auto continues from the newest checkpoint
    retry_delay_seconds=30,
    retry_condition_fn=retry_unless_peer_lost,
    timeout_seconds=7 * 24 * 3600,
    description="CLIP from random weights under torchrun; checkpoints, MLflow metrics, registered model",
)
def pretrain_task(cfg: CerebroConfig, shards: ShardSet) -> Optional[ModelVersion]:
    logger = get_run_logger()
    progress = Progress("pretrain-progress", "pretrain steps", unit="step")
    try:
        mv = core.run_stage(cfg, shards, log=logger.info, on_line=step_progress(progress))
    finally:
        progress.close()
    if mv is None:  # a node other than 0: it trained; node 0 published
        return None
    create_table_artifact(
        table=[{"metric": k, "value": round(v, 4)} for k, v in mv.metrics.items()],
        key="pretrain-metrics",
        description=f"{mv.name} v{mv.version} ({mv.model}) from run {mv.run_id}",
    )
    return mv
