"""The `cerebro` pipeline: download → pretrain → adapt → index, each stage a subflow.

One MLflow parent run per pipeline run; every stage's run nests under it (adapt's iterations
nest under adapt). Each stage's task is cached on its config section, its inputs' fingerprints and
the code version, so a rerun recomputes only what changed or what failed.
"""

from __future__ import annotations

import os
import time

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from cerebro_core import tracking
from cerebro_core.config import load_config
from flows.adapt import adapt_flow
from flows.download import download_flow
from flows.index import index_flow
from flows.pretrain import pretrain_flow


class PipelineParams(BaseModel):
    """What the Prefect UI shows as the run form."""

    config: str = Field("configs/demo.yaml", description="YAML config, relative to the repository root")
    overrides: list[str] = Field(default_factory=list, description="section.key=value overrides, as --set",
                                 max_length=200)
    demo_data: bool = Field(False, description="generate the offline demo data first (configs/demo.yaml)")


@flow(name="cerebro", description="download → pretrain → adapt → index, tracked in MLflow", log_prints=True)
def pipeline_flow(params: PipelineParams = PipelineParams()) -> dict:
    cfg = load_config(params.config, params.overrides)
    if cfg.compute.node_rank != 0:
        raise ValueError(f"compute.node_rank: the pipeline runs on node 0; node {cfg.compute.node_rank} joins its "
                         "pretraining with `cerebro pretrain` (same config and compute.* keys)")
    if params.demo_data:
        from cerebro_core.demo_data import make_demo_data
        from cerebro_core.home import resolve

        make_demo_data(resolve(cfg).home / "demo")
    args = {"config": params.config, "overrides": params.overrides}
    # pretraining spans every node; the stages after it run on node 0's processes
    node0 = {**args, "overrides": [*params.overrides, "compute.nnodes=1", "compute.rdzv_endpoint=null"]}
    timings: dict[str, float] = {}
    with tracking.stage_run(cfg, "pipeline", run_name=f"pipeline {cfg.name}") as run:
        os.environ[tracking.PARENT_RUN_ENV] = run.info.run_id
        try:
            t = time.perf_counter()
            shards = download_flow(**args)
            timings["download"] = time.perf_counter() - t
            t = time.perf_counter()
            clip = pretrain_flow(**args, shards=shards.output)
            timings["pretrain"] = time.perf_counter() - t
            t = time.perf_counter()
            adapted = adapt_flow(**node0, start_version=clip.version)
            timings["adapt"] = time.perf_counter() - t
            t = time.perf_counter()
            search = index_flow(**node0, clip_version=adapted.model.version)
            timings["index"] = time.perf_counter() - t
        finally:
            os.environ.pop(tracking.PARENT_RUN_ENV, None)
        summary = {
            "mlflow_run_id": run.info.run_id,
            "download_success_rate": shards.stats.success_rate,
            "pretrain_final_loss": clip.metrics.get("final_loss"),
            "adapt_best_iteration": adapted.best_iteration,
            "adapt_val_top1": [r.get("val/top1") for r in adapted.iterations],
            "search_version": search.version,
            "index_recall_at_10": search.recall_at_10,
            "index_p50_ms": search.latency_p50_ms,
            "timings_s": timings,
        }
        tracking.log_metrics({f"time.{k}_s": v for k, v in timings.items()})
        tracking.log_json_artifact(summary, "pipeline_summary.json")
    exp = tracking.client().get_experiment_by_name(cfg.tracking.experiment)
    link = f"{os.environ.get('MLFLOW_UI_URL', 'http://127.0.0.1:5000')}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
    rows = "\n".join(f"| {k} | {v:.1f} s |" for k, v in timings.items())
    val = ", ".join("—" if v is None else f"{v:.3f}" for v in summary["adapt_val_top1"])
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=f"""# Cerebro pipeline `{cfg.name}`

| stage | time |
|---|---:|
{rows}

- download: {shards.stats.successes}/{shards.stats.total_rows} images ({shards.stats.success_rate:.1%}), manifest `{shards.manifest_hash}`
- pretrain: `{clip.name}` v{clip.version}, final loss {summary['pretrain_final_loss']}
- adapt: validation top-1 per iteration [{val}], best iteration {adapted.best_iteration} → v{adapted.model.version} (champion)
- index: `{search.name}` v{search.version} (champion), {search.n} items, {search.kind}, recall@10 {search.recall_at_10:.3f}, p50 {search.latency_p50_ms:.2f} ms
- MLflow parent run: [{run.info.run_id}]({link})
""",
        description="pipeline summary",
    )
    return summary
