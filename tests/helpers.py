"""Test helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


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
