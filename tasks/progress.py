"""Progress reporting for long tasks: a Prefect progress artifact plus a tqdm bar on stderr."""

from __future__ import annotations

import sys
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from tqdm import tqdm


class Progress:
    """Callable ``(done, total)``; throttled to one artifact update per ``every_s`` seconds."""

    def __init__(self, key: str, description: str, unit: str = "shard", every_s: float = 2.0):
        self.key, self.description, self.unit, self.every_s = key, description, unit, every_s
        self._artifact_id = None
        self._last = 0.0
        self._bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.description, unit=self.unit, file=sys.stderr, leave=True)
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()
        pct = 100.0 * done / total if total else 100.0
        now = time.monotonic()
        if self._artifact_id is None:
            self._artifact_id = create_progress_artifact(pct, key=self.key, description=self.description)
            self._last = now
        elif now - self._last >= self.every_s or done >= total:
            update_progress_artifact(self._artifact_id, pct)
            self._last = now

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
