"""Stage 2, pretrain: CLIP from random weights on the download stage's shards.

ShardSet ──pretrain──▶ ModelVersion {cerebro-clip vN, checkpoint url, manifest hash}

The stage holds out the last ``val_fraction`` of shards for retrieval evaluation, launches the
training loop under torchrun, and publishes the result: the model weights as an MLflow artifact
and a new registered ``cerebro-clip`` version tagged with the stage and the data manifest hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Optional

from cerebro_core import tracking
from cerebro_core.config import CerebroConfig
from cerebro_core.data.shardset import ShardSet
from cerebro_core.distributed import world_size
from cerebro_core.home import resolve
from cerebro_core.model.publish import ModelVersion, publish_model
from cerebro_core.storage import join
from cerebro_core.train.data import split_shards
from cerebro_core.train.launch import launch
from cerebro_core.train.loop import TrainJob, ZeroShotSpec


# train.* keys that change how a run goes, not the weights it reaches: the checkpoint folder is
# keyed without them, so a run resumed after a crash with any of them changed finds its checkpoints
NOT_IN_WEIGHTS = ("workers", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "compile", "resume",
                  "deterministic", "grad_checkpointing", "zero_shot_source")


def run_key(cfg: CerebroConfig, manifest_hash: str, extra: str = "") -> str:
    """The checkpoint folder's key: the model, data and optimisation, nothing else of train.*."""
    weights = cfg.train.model_dump(mode="json", exclude=set(NOT_IN_WEIGHTS))
    blob = json.dumps([weights, manifest_hash, extra], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def train_job(cfg: CerebroConfig, shards: ShardSet, max_steps: Optional[int] = None) -> TrainJob:
    """The pretraining job of ``cfg`` on ``shards``, checkpointing under ``run_key``'s folder."""
    storage_root = resolve(cfg).storage_root
    train_urls, val_urls, n_train = split_shards(shards, cfg.train.val_fraction)
    ckpt_dir = join(storage_root, cfg.name, "checkpoints", f"pretrain-{run_key(cfg, shards.manifest_hash)}")
    zs = ZeroShotSpec(folder=cfg.train.zero_shot_source) if cfg.train.zero_shot_source else None
    return TrainJob(model=cfg.train.model, hp=cfg.train, compute=cfg.compute, train_shards=train_urls,
                    train_samples=n_train, val_shards=val_urls, zero_shot=zs, storage=cfg.storage, ckpt_dir=ckpt_dir,
                    max_steps=max_steps)


def run_stage(
    cfg: CerebroConfig,
    shards: ShardSet,
    log: Callable[[str], None] = print,
    on_line: Optional[Callable[[str], None]] = None,
    max_steps: Optional[int] = None,
) -> Optional[ModelVersion]:
    """Train and publish. On a node other than ``compute.node_rank`` 0 the node only trains (its
    ranks join node 0's job) and returns None: node 0 owns the MLflow run and the new version."""
    job = train_job(cfg, shards, max_steps)
    train_urls, val_urls, n_train = job.train_shards, job.val_shards, job.train_samples
    ckpt_dir = job.ckpt_dir
    if cfg.compute.node_rank != 0:
        summary = launch(job, log=log, on_line=on_line)
        log(f"pretrain: node {cfg.compute.node_rank} of {cfg.compute.nnodes} done at step {summary['step']}; "
            "node 0 publishes the model")
        return None
    tags = {"manifest_hash": shards.manifest_hash, "train_config_hash": cfg.section_hash("train")}
    with tracking.stage_run(cfg, "pretrain", tags=tags) as run:
        tracking.log_dataset(f"shards {cfg.name}", shards.output, shards.manifest_hash, "training", n_train)
        tracking.log_params({"data.train_shards": len(train_urls), "data.val_shards": len(val_urls),
                             "data.train_samples": n_train, "data.checkpoint_dir": ckpt_dir,
                             "compute.world_size": world_size(cfg.compute), "compute.nnodes": cfg.compute.nnodes})
        summary = launch(job.model_copy(update={"mlflow_run_id": run.info.run_id}), log=log, on_line=on_line)
        final = {"final_loss": summary["final_loss"], "steps": summary["step"],
                 "skipped_samples": summary["skipped_samples"], **summary.get("eval", {})}
        tracking.log_json_artifact({k: v for k, v in summary.items()}, "training_summary.json")
        # the unit of adapt's compute/pretrain_equivalents: samples through forward+backward
        tracking.log_metrics({"compute/train_samples": summary["step"] * summary["global_batch"]})
        return publish_model(cfg, run.info.run_id, summary["checkpoint"], "pretrain", tags, final)
