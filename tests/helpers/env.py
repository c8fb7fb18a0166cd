"""Where the tests run and what they share: the repo, the shared data (required in CI), the
``cerebro`` command of this environment, and an isolated state dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]


SHARED = Path(os.environ.get("CEREBRO_SHARED_DATA", REPO.parent / "shared" / "data"))


VENV_BIN = Path(sys.executable).parent


def require_shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared data not found at {p} (expected ../shared/data beside the repo; see its SOURCE.txt files)"
        if os.environ.get("CEREBRO_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " and CEREBRO_REQUIRE_SHARED_DATA=1")
        pytest.skip(msg)
    return p


def seed_prefect_home(prefect_home: Path, db: Path) -> Path:
    prefect_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, prefect_home / "prefect.db")
    return prefect_home


CEREBRO = str(VENV_BIN / "cerebro")


@contextlib.contextmanager
def state_dir(home: Path) -> Iterator[Path]:
    """``CEREBRO_HOME`` set to ``home`` (no tracking URI leaking in from outside) for the block,
    and the environment restored afterwards, whatever happens in it: what a module-scoped fixture
    yields from (``tests/conftest.py``'s ``state_dir``)."""
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("CEREBRO_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home
    finally:
        mp.undo()
