"""torchrun entry point: ``python -m torch.distributed.run ... -m cerebro_core.train.worker job.json``."""

from __future__ import annotations

import json
import os
import sys

from cerebro_core.data.download import _pdeathsig
from cerebro_core.train.loop import TrainJob, train


def main() -> None:
    # Die with torchrun: the launcher kills torchrun when its caller dies (PR_SET_PDEATHSIG), and
    # torchrun, killed, cannot take its workers down itself.
    _pdeathsig()
    if os.getppid() == 1:  # torchrun died before the line above
        sys.exit(1)
    with open(sys.argv[1]) as f:
        job = TrainJob.model_validate(json.load(f))
    train(job)


if __name__ == "__main__":
    main()
