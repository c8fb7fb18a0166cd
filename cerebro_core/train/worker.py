"""torchrun entry point: ``python -m torch.distributed.run ... -m cerebro_core.train.worker job.json``."""

from __future__ import annotations

import json
import sys

from cerebro_core.train.loop import TrainJob, train


def main() -> None:
    with open(sys.argv[1]) as f:
        job = TrainJob.model_validate(json.load(f))
    train(job)


if __name__ == "__main__":
    main()
