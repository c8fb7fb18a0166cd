"""Set-up shared by the test modules (no test imports another test module): the adapt tests' CIFAR
splits, reading what a loop wrote (its latest runs and student, its pseudo-labelled shards), and
recomputing a model's pool probabilities independently of the stage, killing a training job at
its first checkpoint, registering a random CLIP. Plain functions; fixtures live in conftest.py."""

from __future__ import annotations

import csv
import threading
import json
import os
import random
import signal
import subprocess
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from cerebro_core.model import checkpoint as ckpt
from cerebro_core.storage import Storage

CLASSES = ["bird", "cat", "deer", "dog", "frog", "horse"]
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


def split(shared: Path, dst: Path, a: int, b: int, shuffle_labels_seed: int | None = None) -> Path:
    rows = list(csv.DictReader((shared / "cifar10_animals" / "labels.csv").open()))
    dst.mkdir(parents=True)
    chosen = []
    for c in CLASSES:
        chosen += sorted((r for r in rows if r["label"] == c), key=lambda r: r["path"])[a:b]
    labels = [r["label"] for r in chosen]
    if shuffle_labels_seed is not None:
        random.Random(shuffle_labels_seed).shuffle(labels)
    with (dst / "labels.csv").open("w") as f:
        f.write("path,label\n")
        for r, lab in zip(chosen, labels):
            name = r["path"].replace("/", "_")
            os.link(shared / "cifar10_animals" / r["path"], dst / name)
            f.write(f"{name},{lab}\n")
    return dst


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


def indexed_caltech(shared_data: Path, tmp_path_factory, name: str, *overrides: str):
    """A fresh CEREBRO_HOME with a random cerebro-clip and cerebro-search over the 700 Caltech
    photos (``overrides`` on the demo config); yields {cfg, sv, home}."""
    import pytest

    from cerebro_core.config import load_config
    from cerebro_core.index.stage import run_stage

    home = tmp_path_factory.mktemp(name)
    mp = pytest.MonkeyPatch()
    mp.setenv("CEREBRO_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs/demo.yaml", [
            f"index.sources=[{{name: caltech, path: {shared_data}/caltech101_animals}}]", *overrides])
        register_random_clip(cfg)
        sv = run_stage(cfg, log=lambda s: None)
        yield {"cfg": cfg, "sv": sv, "home": home}
    finally:
        mp.undo()


def make_scrape(shared: Path, dst: Path, n_new: int, n_copies: int, offset: int = 0) -> dict:
    """A scrape folder: ``n_new`` CIFAR horses, ``n_copies`` renamed copies of Caltech photos, a
    corrupt JPEG and a text file named .png."""
    import shutil

    dst.mkdir(parents=True)
    new = sorted((shared / "cifar10_animals" / "test" / "horse").glob("*.jpg"))[offset:offset + n_new]
    for i, p in enumerate(new):
        shutil.copy(p, dst / f"new_{offset + i:04d}.jpg")
    olds = sorted((shared / "caltech101_animals").rglob("*.jpg"))[:n_copies]
    for i, p in enumerate(olds):
        shutil.copy(p, dst / f"renamed_copy_{i}.jpg")
    (dst / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (dst / "notes.png").write_bytes(b"this is text")
    return {"new": new, "copies": olds}


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, Path] = {}
    blobs: dict[str, tuple[int, str, bytes]] = {}
    delay_s: float = 0.0

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        if self.delay_s:
            time.sleep(self.delay_s)
        if path.startswith("/slow"):
            time.sleep(5)
        extra: dict = {}
        if path in self.blobs:
            status, ctype, body, *more = self.blobs[path]
            extra = more[0] if more else {}
        elif path.startswith("/img/") and path[5:] in self.files:
            status, ctype, body = 200, "image/jpeg", self.files[path[5:]].read_bytes()
        else:
            status, ctype, body = 404, "text/plain", b"not found"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class LoopbackServer:
    def __init__(self, files: dict[str, Path], blobs: dict[str, tuple[int, str, bytes]]):
        handler = type("Handler", (_Handler,), {"files": files, "blobs": blobs})
        self.handler = handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
