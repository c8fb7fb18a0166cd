"""Index shard builds as Prefect tasks, mapped on the task runner ``index.shard_runner`` names:
Prefect's thread pool, or Dask through prefect-dask (a local cluster for the run, or a running
scheduler's address). Each task builds one shard from the vectors in storage and writes its
index back (:func:`cerebro_core.ann.sharded.build_shard`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from prefect import task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from cerebro_core.config import CerebroConfig, StorageConfig
from cerebro_core.ann.sharded import ShardSpec, build_shard
from cerebro_core.storage import Storage


@task(name="index-shard", retries=1, retry_delay_seconds=10, result_serializer="json",
      task_run_name="index-shard-{spec[shard]}", description="build and tune one index shard")
def build_shard_task(spec: dict, storage: dict) -> dict:
    return build_shard(ShardSpec(**spec), Storage(StorageConfig.model_validate(storage)))


def task_runner(cfg: CerebroConfig):
    r = cfg.index.shard_runner
    if r.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if r.address:
            return DaskTaskRunner(address=r.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": r.n_workers, "threads_per_worker": r.threads_per_worker,
                                              "processes": True, "dashboard_address": "127.0.0.1:0"})
    return ThreadPoolTaskRunner(max_workers=r.max_workers)


def shard_mapper(cfg: CerebroConfig) -> Callable[[list[ShardSpec]], list[dict]]:
    def map_shards(specs: list[ShardSpec]) -> list[dict]:
        secret = cfg.storage.secret_access_key  # (task run inputs are not stored by Prefect's server)
        storage = {**cfg.storage.model_dump(mode="json"), "secret_access_key": secret.get_secret_value() if secret else None}
        with task_runner(cfg) as runner:
            futures = runner.map(build_shard_task, {"spec": [asdict(s) for s in specs], "storage": unmapped(storage)})
            return [f.result() for f in futures]

    return map_shards
