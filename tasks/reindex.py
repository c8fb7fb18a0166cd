"""Re-indexing as a Prefect task."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from cerebro_core.config import CerebroConfig
from cerebro_core.parts import CorruptPart
from cerebro_core.index import reindex as core


def _transient(task, task_run, state) -> bool:
    """No retry for what a retry cannot fix: a corrupt or missing part of the champion (the message
    names it and says what to do: `cerebro gc --verify`)."""
    try:
        state.result()
    except (CorruptPart, FileNotFoundError):
        return False
    except BaseException:
        return True
    return True


@task(name="reindex", result_serializer="json", retries=2, retry_delay_seconds=30, timeout_seconds=24 * 3600,
      retry_condition_fn=_transient,
      description="add the new media of a scrape to cerebro-search (incremental, idempotent)")
def reindex_task(cfg: CerebroConfig, scrape: str, source: str = "scrape") -> core.ReindexResult:
    logger = get_run_logger()
    res = core.run_reindex(cfg, scrape, source=source, log=logger.info)
    create_table_artifact(
        key="reindex-summary",
        table=[{"metric": k, "value": getattr(res, k)} for k in
               ("scanned", "new", "duplicates", "failed", "size_before", "size_after", "full_rebuild",
                "index_rebuilt", "reason", "published")],
        description=f"scrape {scrape}" + (f" -> {res.version.name} v{res.version.version}" if res.version else ""),
    )
    return res
