"""Launch a training job with torchrun in the cluster shape of ``compute.*`` (see
:mod:`cerebro_core.distributed`: one process per device, multi-node through c10d, the process tree
dies with the caller)."""

from __future__ import annotations

from typing import Callable, Optional

from cerebro_core.distributed import run_job
from cerebro_core.train.loop import TrainJob

WORKER = "cerebro_core.train.worker"


def launch(job: TrainJob, log: Callable[[str], None] = print, on_line: Optional[Callable[[str], None]] = None) -> dict:
    """Run the job under torchrun; returns rank 0's summary (on every node)."""
    return run_job(WORKER, job, job.compute, log=log, on_line=on_line, what="training")
