"""The compute a job gets: usable CPUs from affinity and the cgroup quota, the process count against
the visible GPUs, NCCL failures told apart, deterministic mode (issue 35 items 5, 8, 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cerebro_core.config import ComputeConfig
from cerebro_core.devices import cpu_quota, usable_cpus
from cerebro_core.distributed import PeerLostError, failure, resolve_nproc


# NCCL's own lines (torch 2.x ProcessGroupNCCL and NCCL 2.2x) from a lost peer and a hung collective
NCCL_REMOTE = ["torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:317, "
               "remote process exited or there was a network error, NCCL version 2.21.5",
               "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting prematurely."]
NCCL_HANG = ["[rank1]:[E ProcessGroupNCCL.cpp:607] [Rank 1] Watchdog caught collective operation timeout: "
             "WorkNCCL(SeqNum=5, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=1800000) ran for 1800002 "
             "milliseconds before timing out."]


def test_cpu_quota_and_usable_cpus_read_the_cgroup(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(v2) == 1.5
    assert usable_cpus(v2) == min(2, len(os.sched_getaffinity(0)))  # 1.5 CPUs: 2 threads at most
    (v2 / "cpu.max").write_text("100000 100000\n")
    assert usable_cpus(v2) == 1
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(v2) is None and usable_cpus(v2) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path / "v1") == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path / "v1") is None


def test_torchrun_threads_follow_the_affinity_mask():
    """Issue 35 item 9: OMP_NUM_THREADS came from os.cpu_count(), the host's CPUs. Pinned to one
    CPU, the launcher gives its worker one thread."""
    code = ("import os, json; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from cerebro_core.config import ComputeConfig; from cerebro_core.distributed import worker_env; "
            "os.environ.pop('OMP_NUM_THREADS', None); "
            "print(json.dumps([os.cpu_count(), worker_env(ComputeConfig(device='cpu'), 1)['OMP_NUM_THREADS']]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
    assert r.returncode == 0, r.stderr
    host, threads = json.loads(r.stdout)
    assert threads == "1" and host >= 1


def test_more_processes_than_gpus_is_a_clear_error():
    """Issue 35 item 5: nproc_per_node above the visible GPUs failed inside torch with 'invalid
    device ordinal'; now before launch, naming the key."""
    with pytest.raises(ValueError, match=r"compute.nproc_per_node: 8, but this machine has 4 visible CUDA device"):
        resolve_nproc(ComputeConfig(device="cuda", nproc_per_node=8), visible=4)
    assert resolve_nproc(ComputeConfig(device="cuda", nproc_per_node=2), visible=4) == 2
    assert resolve_nproc(ComputeConfig(device="auto"), visible=4) == 4
    assert resolve_nproc(ComputeConfig(device="cpu", nproc_per_node=3), visible=4) == 3  # CPU processes


def test_nccl_failures_are_recognised():
    """Issue 35 item 5: NCCL's ncclRemoteError / watchdog timeouts were retried as generic failures;
    on several nodes they are a lost peer (not retried), on one node a named NCCL failure."""
    two = ComputeConfig(nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400")
    for tail in (NCCL_REMOTE, NCCL_HANG):
        assert isinstance(failure(["step 10/100 loss 3.1"] + tail, two, "training", 1), PeerLostError)
        one = failure(tail, ComputeConfig(), "training", 1)
        assert not isinstance(one, PeerLostError) and "NCCL collective" in str(one)
        assert "compute.collective_timeout_s=1800" in str(one)
    plain = failure(["ValueError: bad"], two, "training", 1)
    assert not isinstance(plain, PeerLostError) and "torchrun exit 1" in str(plain)


def test_deterministic_training_is_strict(pair_shards, tmp_path, monkeypatch):
    """Issue 35 item 8: deterministic mode was warn_only and CUBLAS_WORKSPACE_CONFIG unset, so a
    GPU run left the bit-exact path with a warning. Now an op without a deterministic kernel fails."""
    from cerebro_core.config import TrainConfig
    from cerebro_core.train.loop import TrainJob, train

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    hp = TrainConfig(model="cerebro-tiny-vit-32", batch_size=20, epochs=1, precision="fp32", workers=0,
                     deterministic=True, val_fraction=0.0, warmup_steps=1)
    try:
        train(TrainJob(model=hp.model, hp=hp, train_shards=pair_shards, train_samples=140, max_steps=1,
                       ckpt_dir=str(tmp_path / "ck")))
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
