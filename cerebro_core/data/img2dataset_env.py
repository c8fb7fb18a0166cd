"""Where img2dataset lives.

img2dataset runs in its own virtual environment (``.venv/img2dataset`` by default), called as a
subprocess: it requires the ``dataclasses==0.6`` backport, whose ``dataclasses.py`` shadows the
standard library and breaks Prefect's server, and pins webdataset<0.3 / pandas<3. Keeping it
apart leaves the main environment clean; the subprocess boundary costs nothing measurable
(benchmarks/download.py).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

ENV_VAR = "CEREBRO_IMG2DATASET_PYTHON"


class Img2DatasetNotFound(RuntimeError):
    pass


def _candidates() -> list[Path]:
    out = []
    if os.environ.get(ENV_VAR):
        out.append(Path(os.environ[ENV_VAR]))
    out.append(Path(sys.prefix) / "img2dataset" / "bin" / "python")
    return out


def img2dataset_python() -> str:
    """The interpreter that can ``import img2dataset``."""
    for c in _candidates():
        if c.exists():
            return str(c)
    if importlib.util.find_spec("img2dataset") is not None:  # e.g. inside the worker image
        return sys.executable
    raise Img2DatasetNotFound(
        "img2dataset environment not found: run `make install` (creates .venv/img2dataset) or set "
        f"{ENV_VAR} to a Python that has img2dataset installed"
    )


def img2dataset_version() -> str | None:
    """Version from the environment's metadata, without starting an interpreter."""
    try:
        py = Path(img2dataset_python())
    except Img2DatasetNotFound:
        return None
    prefix = py.parent.parent
    hits = glob.glob(str(prefix / "lib" / "python*" / "site-packages" / "img2dataset-*.dist-info"))
    if hits:
        return Path(hits[0]).name[len("img2dataset-") : -len(".dist-info")]
    try:
        from importlib.metadata import version

        return version("img2dataset")
    except Exception:
        return None
