"""What reaches a user's terminal: Cerebro's own messages, and the libraries' only with --verbose.

Warnings whose cause is ours are fixed where they arise (the pyfunc's type hints, its declared
signature and input example, artifacts created inside the task's run context). What is left here
is what dependencies emit and we cannot change, silenced by message, plus library INFO logs and
MLflow's artifact progress bars. Child processes (torchrun workers, img2dataset) inherit
``CEREBRO_VERBOSE`` and apply the same policy when they start.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "CEREBRO_VERBOSE"

# (category, message regex): emitted inside dependencies, not by calls of ours that could change
DEPENDENCY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # open_clip's ClipLoss(gather_with_grad=True) calls torch.distributed.nn.all_gather (torch 2.14)
    (FutureWarning, r"torch\.distributed\.nn\.functional\.all_gather is deprecated"),
    # MLflow registers its local artifact repository for both "" and "file" schemes, so a local
    # dataset path always matches two identical sources (it picks the local one, as it should)
    (UserWarning, r"The specified dataset source can be interpreted in multiple ways: "
                  r"LocalArtifactDatasetSource, LocalArtifactDatasetSource\."),
    # MLflow's input-example check compares DataFrame columns with a range (pandas 3)
    (Warning, r"Operation with range is deprecated"),
)
LIBRARY_LOGGERS = ("mlflow", "alembic", "urllib3", "botocore", "s3fs", "httpx", "httpcore", "uvicorn.access",
                   "torch.distributed.elastic", "img2dataset", "distributed")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def apply(verbose_: bool | None = None) -> None:
    """Set the policy for this process (and, through the environment, its children)."""
    if verbose_ is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose_ else "0"
    if verbose():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
        return
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level on import
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask sets its loggers' level on import
    for category, message in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
