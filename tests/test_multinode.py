"""The cluster shape (``compute.*``) for real: `cerebro pretrain` and `cerebro index` as 2 "nodes"
(two processes, c10d rendezvous on 127.0.0.1, gloo), a node whose peer never comes or dies, and
the embedding job on 2 gloo processes equal to 1 process for index and for adapt's labelling."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import CEREBRO, REPO, free_port, indexed_home, shardset_for

MODEL = "cerebro-tiny-vit-32"
TRAIN = ["train.batch_size=10", "train.epochs=2", "train.warmup_steps=2", "train.val_fraction=0.0",
         "train.workers=0", "train.log_every_steps=1", "train.checkpoint_every_steps=2", f"train.model={MODEL}",
         "compute.nproc_per_node=1", "compute.rdzv_timeout_s=60", "compute.collective_timeout_s=60"]


def _nodes(port: int, n: int = 2) -> list[list[str]]:
    return [[f"compute.nnodes={n}", f"compute.node_rank={r}", f"compute.rdzv_endpoint=127.0.0.1:{port}"]
            for r in range(n)]


def _start(args: list[str], sets: list[str], log: Path) -> subprocess.Popen:
    cmd = [CEREBRO, *args, "-c", str(REPO / "configs/demo.yaml")]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for q in procs:
                try:
                    os.killpg(q.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise AssertionError(f"nodes still running after {timeout} s (hung)") from None
    return codes


@pytest.fixture
def manifest(pair_shards, tmp_path) -> Path:
    m = tmp_path / "manifest.json"
    m.write_text(shardset_for(pair_shards, "multinode").model_dump_json())
    return m


def test_two_node_pretrain_trains_once_and_publishes_once(manifest, cerebro_home, tmp_path):
    import mlflow

    port = free_port()
    logs = [tmp_path / f"node{r}.log" for r in range(2)]
    # node 1 starts first: c10d ranks by join order, so its worker may well be rank 0
    procs = [_start(["pretrain", "--shards", str(manifest)], TRAIN + sets, log)
             for sets, log in zip(reversed(_nodes(port)), reversed(logs))]
    codes = _finish(procs, timeout=600)
    out = [log.read_text() for log in logs]
    assert codes == [0, 0], out
    assert "registered cerebro-clip v1" in out[0], out[0]
    assert "node 1 of 2: training done; node 0 registers the model" in out[1], out[1]

    uri = f"sqlite:///{cerebro_home}/mlflow.db"  # this test's store (earlier tests set other registry URIs)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name='cerebro-clip'")
    assert len(versions) == 1
    runs = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id],
                              filter_string="tags.stage = 'pretrain'")
    assert len(runs) == 1 and runs[0].info.run_id == versions[0].run_id
    assert runs[0].data.params["compute.world_size"] == "2"
    summary = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=runs[0].info.run_id, artifact_path="training_summary.json", tracking_uri=uri)).read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 20 and summary["step"] == 2 * (140 // 20)
    r0, r1 = summary["shards_by_rank"]
    assert sorted(r0) == sorted(r1) == ["0", "1"]
    for epoch in ("0", "1"):
        a, b = set(r0[epoch]), set(r1[epoch])
        assert a and b and not (a & b), f"epoch {epoch}: the two ranks must read disjoint shards"
    # rank 0's curve is in node 0's run, wherever rank 0 ran: one point per step
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == list(range(1, 15))


def test_a_node_without_its_peer_fails_clearly(manifest, cerebro_home, tmp_path):
    port = free_port()
    log = tmp_path / "node1.log"
    t0 = time.time()
    p = _start(["pretrain", "--shards", str(manifest)], TRAIN + _nodes(port)[1] + ["compute.rdzv_timeout_s=5"], log)
    (code,) = _finish([p], timeout=240)
    out = log.read_text()
    assert code != 0
    assert "a peer node never joined or was lost" in out and "compute.rdzv_timeout_s=5" in out, out[-3000:]
    assert out.count("launch: ") == 1, "a lost peer is not retried"
    assert time.time() - t0 < 200


def test_a_node_whose_peer_dies_mid_training_fails_clearly(manifest, cerebro_home, tmp_path):
    port = free_port()
    logs = [tmp_path / f"node{r}.log" for r in range(2)]
    long = TRAIN + ["train.epochs=500", "train.log_every_steps=1000000"]
    procs = [_start(["pretrain", "--shards", str(manifest)], long + sets, log)
             for sets, log in zip(_nodes(port), logs)]
    ck = cerebro_home / "data" / "demo" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ck.rglob("step-*.pt")):
        time.sleep(0.2)
    assert list(ck.rglob("step-*.pt")), "training never started: " + logs[0].read_text()[-2000:]
    os.killpg(procs[1].pid, signal.SIGKILL)  # node 1, its torchrun and its worker
    (code,) = _finish(procs[:1], timeout=180)
    out = logs[0].read_text()
    assert code != 0
    assert "a peer node never joined or was lost" in out, out[-3000:]
    assert out.count("launch: ") == 1, "a lost peer is not retried (a retry waits for a rendezvous nobody joins)"


def test_two_node_index_equals_one_process(shared_data, cerebro_home, tmp_path):
    """`cerebro index` on 2 nodes: both exit 0, one search version, the same ids, order and
    vectors (within 1e-5) as a 1-process index of the same items."""
    from cerebro_core.config import load_config

    src = tmp_path / "src"
    for cls in ("cat", "deer"):
        (src / cls).mkdir(parents=True)
        for p in sorted((shared_data / "cifar10_animals" / "test" / cls).glob("*.jpg"))[:45]:
            (src / cls / p.name).write_bytes(p.read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    sets = [f"index.sources=[{{name: src, path: {src}}}]", "index.batch_size=16"]
    cfg = load_config(REPO / "configs/demo.yaml", sets)
    _, one = indexed_home(cfg)

    port = free_port()
    logs = [tmp_path / f"node{r}.log" for r in range(2)]
    procs = [_start(["index"], sets + ["compute.nproc_per_node=1", "compute.rdzv_timeout_s=60"] + node, log)
             for node, log in zip(_nodes(port), logs)]
    codes = _finish(procs, timeout=400)
    out = [log.read_text() for log in logs]
    assert codes == [0, 0], out
    assert "node 1 of 2: embedding done; node 0 publishes the index" in out[1]

    import mlflow

    from cerebro_core.search.local_copy import load_searcher

    client = mlflow.MlflowClient()
    assert sorted(int(v.version) for v in client.search_model_versions("name='cerebro-search'")) == [1, 2]

    def bundle(version: str):
        _, s = load_searcher(f"models:/cerebro-search/{version}")
        return s.rows, np.load(s.dir / "vectors.npy").astype(np.float32)

    rows1, v1 = bundle(one.version)
    rows2, v2 = bundle("2")
    assert len(rows1) == 90 and [r["uri"] for r in rows1] == [r["uri"] for r in rows2]
    assert [r["id"] for r in rows1] == [r["id"] for r in rows2]
    np.testing.assert_allclose(v1, v2, atol=1e-5)


def test_embedding_job_on_two_processes_equals_one(shared_data, cerebro_home, tmp_path):
    """The embedding job (what index, reindex and adapt's labelling call) on 2 gloo processes:
    the same ids and order and vectors within 1e-5 as 1 process, and adapt's class probabilities
    from them alike; failures are counted across ranks."""
    import torch

    from cerebro_core.evaluate import probabilities, prompt_class_embeddings
    from cerebro_core.data.vocab import prompts_for
    from cerebro_core.config import ComputeConfig, StorageConfig
    from cerebro_core.data.sources import list_folder
    from cerebro_core.embed import Item
    from cerebro_core.embed_job import embed, load_model
    from cerebro_core.model import checkpoint as ckpt
    from cerebro_core.model.factory import create
    from cerebro_core.storage import Storage

    torch.manual_seed(3)
    weights = str(tmp_path / "model.pt")
    ckpt.save(Storage(), weights, {"model": create(MODEL).model.state_dict(), "model_name": MODEL, "step": 0})
    recs = list_folder(str(shared_data / "cifar10_animals" / "test"), "pool")
    items = [Item(r.path, "pool") for r in recs[::25]]  # 120 images, 6 classes
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    items.insert(7, Item(str(bad), "pool"))
    st = StorageConfig()
    e1 = embed(ComputeConfig(nproc_per_node=1), st, MODEL, weights, items, str(tmp_path / "w1"), batch_size=16)
    lines: list[str] = []
    e2 = embed(ComputeConfig(nproc_per_node=2), st, MODEL, weights, items, str(tmp_path / "w2"), batch_size=16,
               log=lines.append)
    assert any("embedding: 121 items on 2 processes" in line for line in lines), lines[-20:]  # 2 ranks ran
    assert e2.index.tolist() == e1.index.tolist() and len(set(e2.index.tolist())) == 120
    assert not (tmp_path / "w2").exists(), "the merged parts are removed"
    assert len(e1.rows) == 120 and [r["uri"] for r in e1.rows] == [r["uri"] for r in e2.rows]
    assert [r["sha256"] for r in e1.rows] == [r["sha256"] for r in e2.rows]
    assert sum(e1.failures.values()) == sum(e2.failures.values()) == 1
    np.testing.assert_allclose(e1.vectors, e2.vectors, atol=1e-5)
    b = load_model(MODEL, weights, Storage(), "cpu")
    cls = prompt_class_embeddings(b.model, b.tokenizer, prompts_for(["cat", "deer", "dog", "frog", "horse", "bird"],
                                                             ["a photo of a {}."], "names"))
    scale = float(b.model.logit_scale.detach().exp())
    np.testing.assert_allclose(probabilities(e1.vectors, cls, scale), probabilities(e2.vectors, cls, scale), atol=1e-5)


PROBE = """
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(t)
print(f"rank {dist.get_rank()} sum {int(t.item())}", flush=True)
dist.destroy_process_group()
"""


def test_one_node_job_runs_where_the_host_name_does_not_resolve(tmp_path):
    """A container's host name need not resolve to an address of its own (buildah run, some docker
    networks): a one-node torchrun job must still start. It waited for c10d's 300 s timeout and
    failed before --local_addr=127.0.0.1 (here: killed at the 90 s limit)."""
    import shutil

    from cerebro_core.config import ComputeConfig
    from cerebro_core.distributed import torchrun_command

    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.fail("needs util-linux's unshare and root (a UTS namespace with its own host name), as CI has")
    (tmp_path / "probe_dist.py").write_text(PROBE)
    cmd = torchrun_command(ComputeConfig(nproc_per_node=2), "probe_dist", "unused", 2)
    p = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname cerebro-unresolvable-3f8e && exec "$@"', "sh", *cmd],
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr[-2000:]
    # both ranks joined and reduced (their lines may interleave: the two processes share stdout)
    assert sorted(re.findall(r"rank (\d) sum (\d)", p.stdout)) == [("0", "3"), ("1", "3")], p.stdout
