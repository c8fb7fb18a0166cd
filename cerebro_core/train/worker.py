"""torchrun entry point: ``python -m torch.distributed.run ... -m cerebro_core.train.worker job.json``."""

from __future__ import annotations

from pathlib import Path

from cerebro_core.distributed import worker_main
from cerebro_core.train.loop import TrainJob, train


def _run(job_path: str) -> None:
    train(TrainJob.model_validate_json(Path(job_path).read_text()))


if __name__ == "__main__":
    worker_main(_run)
