"""torchrun jobs in the cluster shape of ``compute.*``: the launcher side and the worker side.

Every distributed job (pretraining, adapt's students, embedding for index, reindex and adapt's
labelling) is a JSON job file and a worker module run by ``torchrun``, one process per device:

- launcher (:func:`run_job`): resolves the shape (``nproc_per_node: auto`` = the visible GPUs, or
  1 process on CPU; ``device: cpu`` hides the GPUs), runs torchrun supervised (it dies with the
  caller, each worker dies with torchrun), and returns the job's result. A failure caused by a lost
  or missing peer is reported as such, naming the ``compute`` keys, instead of torchrun's traceback.
- worker (:class:`Dist`): joins the process group with ``compute.collective_timeout_s``; the
  result is broadcast from rank 0 and written by local rank 0 of *every* node to its own node's
  result file — c10d assigns ranks in join order and ignores ``node_rank``, so rank 0 can land on
  any node, and every node's caller must find the result.

Multi-node: the same command on every node, ``compute.nnodes`` > 1, its own ``compute.node_rank``
and ``compute.rdzv_endpoint`` = host:port of node 0. Only node 0's caller owns an MLflow run and
publishes; the other nodes compute and return.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import BaseModel

from cerebro_core.config import ComputeConfig
from cerebro_core.devices import usable_cpus
from cerebro_core.procs import run_supervised

# what NCCL prints when a collective failed or hung: a remote rank died or the network failed
# (ncclRemoteError), a system call or the hardware failed (ncclSystemError), or the watchdog aborted a
# collective that waited past compute.collective_timeout_s
_NCCL_FAILED = ("ncclRemoteError", "ncclSystemError", "ncclInternalError", "ncclUnhandledCudaError",
                "NCCL communicator was aborted", "Watchdog caught collective operation timeout",
                "DistBackendError: NCCL error")
# what torchrun, c10d and gloo print when another node never came or went away
_PEER_LOST = _NCCL_FAILED + ("RendezvousTimeoutError", "RendezvousClosedError", "RendezvousConnectionError", "DistNetworkError",
              "DistStoreError", "Connection closed by peer", "Connection reset by peer", "Connection was likely closed",
              "connection to the C10d store has failed", "timed out", "Timed out", "TimeoutError", "Socket Timeout",
              "Broken pipe")


class PeerLostError(RuntimeError):
    """A node of a multi-node job never joined, or left while the others waited on it."""


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(compute: ComputeConfig, visible: Optional[int] = None) -> str:
    """'cuda' or 'cpu' for this node (``visible``: the CUDA devices this node sees; default: asked)."""
    n = cuda_devices() if visible is None else visible
    if compute.device == "cuda" and n == 0:
        raise ValueError("compute.device: cuda, but this machine has no visible CUDA device")
    return "cpu" if compute.device == "cpu" or n == 0 else "cuda"


def resolve_nproc(compute: ComputeConfig, visible: Optional[int] = None) -> int:
    """Processes on this node: one per visible GPU (``auto``), or ``compute.nproc_per_node``, which
    on CUDA may not exceed the visible GPUs (each process takes the GPU of its local rank: more
    processes than GPUs died in torch with 'invalid device ordinal')."""
    n = cuda_devices() if visible is None else visible
    on_cuda = resolve_device(compute, n) == "cuda"
    if compute.nproc_per_node == "auto":
        return n if on_cuda else 1
    nproc = int(compute.nproc_per_node)
    if on_cuda and nproc > n:
        raise ValueError(f"compute.nproc_per_node: {nproc}, but this machine has {n} visible CUDA device(s) "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): one process per "
                         "GPU; set it to at most that, or to auto")
    return nproc


def world_size(compute: ComputeConfig) -> int:
    return resolve_nproc(compute) * compute.nnodes


def one_node(compute: ComputeConfig) -> ComputeConfig:
    """This node's processes alone (for the jobs one worker runs: reindex, adapt)."""
    return compute.model_copy(update={"nnodes": 1, "node_rank": 0, "rdzv_endpoint": None})


def torchrun_command(compute: ComputeConfig, module: str, job_path: str, nproc: int) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={compute.nnodes}",
           "--max_restarts=0"]
    if compute.nnodes == 1 and not compute.rdzv_endpoint:
        # one node: every process is on this machine, so its processes meet on loopback. Without
        # --local_addr they would meet at this host's name, which inside a container (buildah run,
        # some docker networks) need not resolve to an address here: c10d waited 300 s and failed
        cmd += ["--standalone", "--local_addr=127.0.0.1"]
    else:
        timeout = "join_timeout" if compute.rdzv_backend == "c10d" else "timeout"
        cmd += [f"--rdzv_backend={compute.rdzv_backend}", f"--rdzv_endpoint={compute.rdzv_endpoint}",
                f"--node_rank={compute.node_rank}", "--rdzv_id=cerebro",
                f"--rdzv_conf={timeout}={compute.rdzv_timeout_s}"]
    return cmd + ["-m", module, job_path]


def worker_env(compute: ComputeConfig, nproc: int) -> dict[str, str]:
    env = dict(os.environ)
    if resolve_device(compute) == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # device: cpu hides the GPUs from the workers
        env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // nproc)))
    else:  # NCCL: a collective blocked past the process group's timeout aborts the process (an error
        # torchrun reports) instead of hanging the node (torch's watchdog; also one node)
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    root = str(Path(__file__).resolve().parents[1])  # the folder that holds cerebro_core/
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["CEREBRO_COLLECTIVE_TIMEOUT_S"] = str(compute.collective_timeout_s)
    return env


def run_job(module: str, job: BaseModel, compute: ComputeConfig, log: Callable[[str], None] = print,
            on_line: Optional[Callable[[str], None]] = None, what: str = "job") -> dict:
    """Run ``python -m module job.json`` under torchrun on this node; returns the result that
    rank 0 broadcast (the job model needs a ``result_path`` field)."""
    nproc = resolve_nproc(compute)
    with tempfile.TemporaryDirectory(prefix="cerebro-job-") as td:
        result_path = str(Path(td, "result.json"))
        job = job.model_copy(update={"result_path": result_path})
        job_path = Path(td, "job.json")
        job_path.write_text(job.model_dump_json())
        cmd = torchrun_command(compute, module, str(job_path), nproc)
        log("launch: " + " ".join(cmd))

        def line(text: str) -> None:
            if text and "No pretrained weights loaded" not in text:
                log(text)
            if on_line is not None:
                on_line(text)

        rc, tail = run_supervised(cmd, worker_env(compute, nproc), line)
        if rc != 0:
            raise failure(tail, compute, what, rc)
        with open(result_path) as f:
            return json.load(f)


def failure(tail: list[str], compute: ComputeConfig, what: str, rc: int) -> Exception:
    """The error a failed torchrun job raises, from the last lines it printed: a lost peer on more
    than one node (not retried), a failed or hung NCCL collective on one node, else torchrun's exit."""
    text = "\n".join(tail[-40:])
    if compute.nnodes > 1 and any(s in line for line in tail for s in _PEER_LOST):
        return PeerLostError(
            f"{what} failed on node {compute.node_rank} of {compute.nnodes}: a peer node never joined or "
            f"was lost (rendezvous at compute.rdzv_endpoint={compute.rdzv_endpoint}, waits up to "
            f"compute.rdzv_timeout_s={compute.rdzv_timeout_s} s to join and "
            f"compute.collective_timeout_s={compute.collective_timeout_s} s in a collective). Start the "
            f"same command on every node.\n{text}")
    if any(s in line for line in tail for s in _NCCL_FAILED):
        return RuntimeError(
            f"{what} failed: an NCCL collective between this node's GPU processes failed or waited past "
            f"compute.collective_timeout_s={compute.collective_timeout_s} s (a process or GPU of this node died "
            f"or hung; the lines below name the rank; resume: auto continues from the last checkpoint)\n{text}")
    return RuntimeError(f"{what} failed (torchrun exit {rc}):\n{text}")


class Dist:
    """The worker's view of the job: rank, device, the process group (gloo on CPU, NCCL on CUDA)."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.cuda = torch.cuda.is_available()
        self.device = f"cuda:{self.local_rank}" if self.cuda else "cpu"
        if self.cuda:
            torch.cuda.set_device(self.local_rank)
        if self.world_size > 1 and not dist.is_initialized():
            timeout = datetime.timedelta(seconds=int(os.environ.get("CEREBRO_COLLECTIVE_TIMEOUT_S", "1800")))
            dist.init_process_group(backend="nccl" if self.cuda else "gloo", timeout=timeout)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def finish(self, result: dict, result_path: Optional[str]) -> None:
        """Rank 0's result into every node's result file (local rank 0 writes), then leave."""
        result = self.from_main(result)
        if self.local_rank == 0 and result_path:
            Path(result_path).write_text(json.dumps(result, default=str))
        self.close()

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def worker_main(run: Callable[[str], None]) -> None:
    """A torchrun worker's entry: die with torchrun, then ``run(job_path)``."""
    from cerebro_core import quiet
    from cerebro_core.procs import parent_gone, pdeathsig

    quiet.apply()  # the caller's --verbose travels in the environment
    # the launcher kills torchrun when its caller dies (PR_SET_PDEATHSIG), and torchrun, killed,
    # cannot take its workers down itself
    pdeathsig()
    if parent_gone():  # torchrun died before the line above
        sys.exit(1)
    run(sys.argv[1])
