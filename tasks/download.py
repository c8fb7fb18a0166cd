"""The download stage as a Prefect task."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.caching import download_key, retry_unless_bad_input
from prefect.artifacts import create_table_artifact

from cerebro_core.config import CerebroConfig
from cerebro_core.data import download as core
from tasks.progress import Progress


@task(
    cache_key_fn=download_key,
    persist_result=True,
    result_serializer="json",
    name="download",
    retries=2,  # resumable: a retry continues from the finished shards
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_bad_input,  # a bad URL list: at once
    timeout_seconds=48 * 3600,
    description="img2dataset: URL list -> webdataset shards + manifest, stats to MLflow",
)
def download_task(cfg: CerebroConfig) -> core.ShardSet:
    logger = get_run_logger()
    progress = Progress("download-progress", "download shards")
    try:
        result = core.run_stage(cfg, progress=progress, log=logger.info)
    finally:
        progress.close()
    s = result.stats
    rows = [
        {"metric": "rows in URL list", "value": s.total_rows},
        {"metric": "successes", "value": s.successes},
        {"metric": "failures", "value": s.failures},
        {"metric": "success rate", "value": f"{s.success_rate:.1%}"},
        {"metric": "images/s (this run)", "value": f"{s.images_per_s:.1f}"},
        {"metric": "bytes written", "value": s.bytes_written},
        {"metric": "shards", "value": s.shards},
    ] + [{"metric": f"failure: {k}", "value": v} for k, v in s.failures_by_reason.items()]
    create_table_artifact(
        table=rows, key="download-stats", description=f"Download into {result.output} (manifest {result.manifest_hash})"
    )
    return result
