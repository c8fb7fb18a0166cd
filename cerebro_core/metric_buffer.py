"""Training metrics that survive a tracking outage.

The training loop hands each step's metrics to a :class:`MetricBuffer` and goes on at once: a
sender thread delivers them (with the time they were logged) through
:func:`cerebro_core.tracking.log_metric_points`. While the tracking server is down, points wait in
memory and the sender retries with backoff (1 s doubling to 30 s), for as long as it takes; the
run is never slowed or killed by the server. ``close`` waits (up to ``flush_s``) for what is left
when training ends; whatever still could not be sent is written beside the checkpoints as JSON
lines, and the count is printed. Bounded: past ``max_points`` waiting, the oldest are dropped
(and counted).
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from pathlib import Path
from typing import Optional


class MetricBuffer:
    def __init__(self, run_id: Optional[str], max_points: int = 1_000_000, batch: int = 500):
        self.run_id, self.max_points, self.batch = run_id, max_points, batch
        self._q: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self.dropped = self.sent = self.failures = 0
        self.last_error: Optional[str] = None
        self._thread = None
        if run_id:
            self._thread = threading.Thread(target=self._send_loop, name="cerebro-metrics", daemon=True)
            self._thread.start()

    def __call__(self, metrics: dict, step: int) -> None:
        if not self.run_id:
            return
        ts = int(time.time() * 1000)
        with self._cv:
            for k, v in metrics.items():
                if v is not None:
                    self._q.append((k, float(v), ts, int(step or 0)))
            while len(self._q) > self.max_points:
                self._q.popleft()
                self.dropped += 1
            self._cv.notify()

    def _send_loop(self) -> None:
        from cerebro_core import tracking

        backoff = 1.0
        while True:
            with self._cv:
                while not self._q and not self._closing:
                    self._cv.wait()
                if not self._q and self._closing:
                    return
                points = [self._q[i] for i in range(min(self.batch, len(self._q)))]
            try:
                tracking.log_metric_points(self.run_id, points)
            except Exception as exc:  # the server is down or refusing: keep them, try again
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                with self._cv:
                    if self._closing and time.monotonic() >= self._deadline:
                        return
                    self._cv.wait(timeout=backoff)
                backoff = min(30.0, backoff * 2)
                continue
            backoff = 1.0
            with self._cv:
                for _ in points:
                    self._q.popleft()
                self.sent += len(points)

    def close(self, flush_s: float = 300.0, spill_dir: Optional[str] = None) -> int:
        """Wait up to ``flush_s`` for the rest to be delivered; returns how many were not."""
        if self._thread is None:
            return 0
        with self._cv:
            self._closing, self._deadline = True, time.monotonic() + flush_s
            self._cv.notify_all()
        self._thread.join(timeout=flush_s + 60)
        with self._cv:
            left = list(self._q)
        if left or self.dropped:
            where = ""
            if left and spill_dir and ("://" not in spill_dir or spill_dir.startswith("file://")):
                path = Path(spill_dir.removeprefix("file://"), f"unsent-metrics-{self.run_id}.jsonl")
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("".join(json.dumps(dict(zip(("key", "value", "timestamp", "step"), p))) + "\n"
                                            for p in left))
                    where = f"; written to {path}"
                except OSError:
                    pass
            print(f"cerebro: {len(left)} metric point(s) of run {self.run_id} not delivered to the tracking server "
                  f"({self.last_error}){where}; {self.dropped} dropped while it was away", file=sys.stderr)
        return len(left)
