"""The index stage as a Prefect task."""

from __future__ import annotations

from typing import Optional

from prefect import get_run_logger, task

from tasks.caching import index_key, retry_unless_peer_lost
from prefect.artifacts import create_table_artifact

from cerebro_core.config import CerebroConfig
from cerebro_core.index import stage as core
from cerebro_core.index.publish import SearchVersion
from tasks.progress import Progress
from tasks.shards import shard_mapper


@task(cache_key_fn=index_key, persist_result=True, result_serializer="json", name="index", retries=1, retry_delay_seconds=30,
      retry_condition_fn=retry_unless_peer_lost, timeout_seconds=24 * 3600,
      description="embed wildlife images + video stills, FAISS index tuned to a recall target, publish cerebro-search")
def index_task(cfg: CerebroConfig, clip_version: str | None = None) -> Optional[SearchVersion]:
    logger = get_run_logger()
    progress = Progress("index-progress", "embed", unit="img")
    try:
        sv = core.run_stage(cfg, clip_version=clip_version, progress=progress, log=logger.info,
                            map_shards=shard_mapper(cfg))
    finally:
        progress.close()
    if sv is None:  # a node other than 0: it embedded its share; node 0 published
        return None
    create_table_artifact(
        key="index-summary",
        table=[{"metric": "version", "value": f"{sv.name} v{sv.version} (champion)"},
               {"metric": "items indexed", "value": sv.n}, {"metric": "index kind", "value": sv.kind},
               {"metric": "recall@10 vs exact", "value": round(sv.recall_at_10, 4)},
               {"metric": "search p50 (ms)", "value": round(sv.latency_p50_ms, 3)},
               {"metric": "cerebro-clip version", "value": sv.clip_version}],
        description=f"Published {sv.model_uri}",
    )
    return sv
