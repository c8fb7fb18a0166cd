"""Launch a training job with torchrun, one process per device, as a subprocess.

- ``nproc_per_node: auto`` = the visible CUDA devices, or 1 process on CPU (gloo); an integer
  forces N processes (N gloo processes on CPU for testing DDP).
- Multi-node: ``train.nnodes`` > 1 with ``train.rdzv_endpoint`` (host:port of node 0) and the same
  job on every node; torchrun's c10d rendezvous does the rest.
- The whole torchrun process tree runs in its own session and is killed (SIGKILL to the group) if
  the caller is cancelled or times out; if the caller dies, torchrun dies with it and each worker
  with torchrun (PR_SET_PDEATHSIG at both levels), so no orphaned trainer keeps a GPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Optional

from cerebro_core.config import TrainConfig
from cerebro_core.data.download import _pdeathsig
from cerebro_core.train.loop import TrainJob


def resolve_nproc(hp: TrainConfig) -> int:
    if hp.nproc_per_node != "auto":
        return int(hp.nproc_per_node)
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def torchrun_command(hp: TrainConfig, job_path: str, nproc: int) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={hp.nnodes}"]
    if hp.nnodes == 1 and not hp.rdzv_endpoint:
        cmd.append("--standalone")
    else:
        if not hp.rdzv_endpoint:
            raise ValueError("train.rdzv_endpoint: required when train.nnodes > 1 (host:port of node 0)")
        cmd += [f"--rdzv_backend={hp.rdzv_backend}", f"--rdzv_endpoint={hp.rdzv_endpoint}",
                f"--node_rank={hp.node_rank}", "--rdzv_id=cerebro"]
    cmd += ["-m", "cerebro_core.train.worker", job_path]
    return cmd


def launch(job: TrainJob, log: Callable[[str], None] = print, on_line: Optional[Callable[[str], None]] = None) -> dict:
    """Run the job under torchrun; returns rank 0's summary."""
    nproc = resolve_nproc(job.hp)
    with tempfile.TemporaryDirectory(prefix="cerebro-train-") as td:
        result_path = str(Path(td, "result.json"))
        job = job.model_copy(update={"result_path": result_path})
        job_path = Path(td, "job.json")
        job_path.write_text(job.model_dump_json())
        env = dict(os.environ)
        import torch

        if not torch.cuda.is_available():
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = torchrun_command(job.hp, str(job_path), nproc)
        log("launch: " + " ".join(cmd))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True, preexec_fn=_pdeathsig)
        tail: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                del tail[:-100]
                if line and "No pretrained weights loaded" not in line:
                    log(line)
                if on_line is not None:
                    on_line(line)

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            rc = proc.wait()
        except BaseException:
            kill_group(proc)
            raise
        t.join(timeout=5)
        if rc != 0:
            raise RuntimeError(f"training failed (torchrun exit {rc}):\n" + "\n".join(tail[-40:]))
        with open(result_path) as f:
            return json.load(f)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
