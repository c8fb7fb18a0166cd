"""Progress reporting for long tasks: a Prefect progress artifact plus a tqdm bar on stderr."""

from __future__ import annotations

import contextvars
import sys
import threading
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from tqdm import tqdm


class Progress:
    """Callable ``(done, total)``; throttled to one artifact update per ``every_s`` seconds.

    Create it inside the task: it keeps the task's run context, so calls from another thread (a
    job's output pump) still attach the artifact to that task run. The bar's rate counts from the
    task's start: the average over the whole work (start-up included), never the burst between two
    reports read as a million items a second."""

    def __init__(self, key: str, description: str, unit: str = "shard", every_s: float = 2.0):
        self.key, self.description, self.unit, self.every_s = key, description, unit, every_s
        self._artifact_id = None
        self._last = 0.0
        self._bar: tqdm | None = None
        self._context = contextvars.copy_context()
        self._started = time.time()  # tqdm's clock
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            if self._bar is None:
                self._bar = tqdm(total=total, desc=self.description, unit=self.unit, file=sys.stderr, leave=True,
                                 smoothing=0)
                self._bar.start_t = self._bar.last_print_t = self._started  # the work began with the task
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
            self._context.run(self._artifact, 100.0 * done / total if total else 100.0, done >= total)

    def _artifact(self, pct: float, last: bool) -> None:
        now = time.monotonic()
        if self._artifact_id is None:
            self._artifact_id = create_progress_artifact(pct, key=self.key, description=self.description)
            self._last = now
        elif now - self._last >= self.every_s or last:
            update_progress_artifact(self._artifact_id, pct)
            self._last = now

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
