"""A Prefect API for one CLI command, started by it and dying with it.

When ``PREFECT_API_URL`` is unset, Prefect would start its own temporary server
(``SubprocessASGIServer``) on a random port in 8000-8999 — 8000 is ``cerebro serve``'s default —
and stop it from an ``atexit`` hook, which a SIGKILL never runs: the server is then orphaned. This
starts the same server (Prefect's API app in ephemeral mode: no UI, no background services, the
database under ``PREFECT_HOME``) on a port the kernel picks, as a child armed with
``PR_SET_PDEATHSIG``, so it dies with the command however the command ends, and points
``PREFECT_API_URL`` at it. Must run before Prefect is imported.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cerebro_core.procs import pdeathsig


class PrefectApiError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_temporary_api(prefect_home: Path, timeout_s: float = 90.0, attempts: int = 3) -> str:
    """Start the API, wait until it answers, export PREFECT_API_URL; returns the URL.

    Commands sharing one PREFECT_HOME (the nodes of a multi-node job on one machine, parallel
    CLI calls) start one at a time — a lock file is held until the API answers, so their
    database migrations never race — and an API that exits at start-up (exit 3: uvicorn's failed
    start, e.g. a port taken meanwhile) is started again on another port, as Prefect does."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    with open(prefect_home / "temporary-api.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for _ in range(attempts):
                url = _start_once(prefect_home, timeout_s)
                if url:
                    os.environ["PREFECT_API_URL"] = url
                    return url
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    raise PrefectApiError(f"the temporary Prefect API did not start in {attempts} attempts; "
                          f"see {prefect_home / 'temporary-api.log'}")


def _start_once(prefect_home: Path, timeout_s: float) -> str | None:
    port = _free_port()
    log = open(prefect_home / "temporary-api.log", "ab")
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_UI_ENABLED": "0",
           "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=pdeathsig)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    atexit.register(_stop, proc)
                    return url
        except OSError:
            time.sleep(0.2)
    _stop(proc)
    raise PrefectApiError(f"the temporary Prefect API did not answer within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
