"""Models and stages for the tests: a registered random CLIP, a state dir indexed over photos,
and reading what an adapt loop wrote (its runs, student, pseudo-labelled shards, probabilities)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from cerebro_core.model import checkpoint as ckpt
from cerebro_core.storage import Storage
from helpers.env import REPO, state_dir


TINY = "cerebro-tiny-vit-32"


def register_random_clip(cfg, stage: str = "pretrain", seed: int = 0):
    """A registered cerebro-clip version with random weights (mechanics only, no training), in the
    state dir ``CEREBRO_HOME`` names."""
    import torch

    from cerebro_core import tracking
    from cerebro_core.model.factory import create
    from cerebro_core.model.publish import publish_model

    torch.manual_seed(seed)
    b = create(TINY)
    home = Path(os.environ["CEREBRO_HOME"])
    url = str(home / f"ck-{seed}" / "step-00000001.pt")
    ckpt.save(Storage(), url, {"model": b.model.state_dict(), "model_name": TINY, "step": 1})
    with tracking.stage_run(cfg, stage) as run:
        return publish_model(cfg, run.info.run_id, url, stage, {}, {})


def indexed_caltech(shared_data: Path, tmp_path_factory, name: str, *overrides: str):
    """A fresh CEREBRO_HOME with a random cerebro-clip and cerebro-search over the 700 Caltech
    photos (``overrides`` on the demo config); yields {cfg, sv, home}."""
    from cerebro_core.config import load_config

    with state_dir(tmp_path_factory.mktemp(name)) as home:
        cfg = load_config(REPO / "configs/demo.yaml", [
            f"index.sources=[{{name: caltech, path: {shared_data}/caltech101_animals}}]", *overrides])
        _, sv = indexed_home(cfg)
        yield {"cfg": cfg, "sv": sv, "home": home}


def dist(a: dict, b: dict) -> float:
    return sum(float((a[k].float() - b[k].float()).norm()) for k in a if a[k].is_floating_point())


def pool_probs(cfg, weights: dict) -> dict[str, np.ndarray]:
    """Class probabilities of one model on the pool, per image sha256, recomputed from its weights."""
    from cerebro_core.data.vocab import prompts_for
    from cerebro_core.evaluate import probabilities, prompt_class_embeddings
    from cerebro_core.embed import embed_items
    from cerebro_core.model.factory import create

    from cerebro_core.adapt.stage import gather

    pool, _, _, classes, _ = gather(cfg)
    prompts = prompts_for(classes, cfg.adapt.templates, cfg.adapt.vocabulary_kind)
    sha = {p.uri: p.sha256 for p in pool}
    b = create(cfg.train.model)
    b.model.load_state_dict(weights)
    b.model.eval()
    e = embed_items(b.model, b.preprocess_val, pool, batch_size=256, workers=0)
    p = probabilities(e.vectors, prompt_class_embeddings(b.model, b.tokenizer, prompts),
                      float(b.model.logit_scale.detach().exp()))
    return dict(zip((sha[r["uri"]] for r in e.rows), p))


def written_labels(run_id: str, where: str) -> dict[str, tuple[int, float]]:
    """(label, score) per image sha256 in the pseudo-labelled shards under ``{run_id}/{where}``."""
    import tarfile

    written = {}
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    for shard in sorted(work.rglob(f"{run_id}/{where}/*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    written[meta["sha256"]] = (meta["label"], meta["score"])
    return written


def latest_adapt(kind: str = "adapt"):
    import mlflow

    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], f"tags.stage = '{kind}'",
                             order_by=["start_time DESC"])[0]
    ck = sorted((Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt").rglob(
        f"{run.info.run_id}/iteration-1/checkpoints/*.pt"))[-1]
    child = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")[0]
    return run, child, ckpt.load(Storage(), str(ck))["model"]


def kill_after_first_checkpoint(job, work: Path, timeout: float = 300) -> list[str]:
    """Run the training ``job`` under torchrun, SIGKILL its whole process group as soon as a
    checkpoint appears in its ``ckpt_dir``; returns the checkpoint names written by then."""
    from cerebro_core.distributed import torchrun_command
    from cerebro_core.train.launch import WORKER

    j = job.model_copy(update={"result_path": str(work / "killed.json")})
    (work / "killed-job.json").write_text(j.model_dump_json())
    cmd = torchrun_command(j.compute, WORKER, str(work / "killed-job.json"), 1)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="2"))
    ck = Path(job.ckpt_dir)
    deadline = time.time() + timeout
    while time.time() < deadline and not list(ck.glob("step-*.pt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return sorted(p.name for p in ck.glob("step-*.pt"))


def indexed_home(cfg, seed: int = 0):
    """Register a random cerebro-clip and index ``cfg``'s sources with it, in the state dir
    ``CEREBRO_HOME`` names; returns (the clip's version, the published search version)."""
    from cerebro_core.index.stage import run_stage

    clip = register_random_clip(cfg, seed=seed)
    return clip, run_stage(cfg, log=lambda s: None)
