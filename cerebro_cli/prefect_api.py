"""A Prefect API for one CLI command, started by it and dying with it.

When ``PREFECT_API_URL`` is unset, Prefect would start its own temporary server
(``SubprocessASGIServer``) on a random port in 8000-8999 — 8000 is ``cerebro serve``'s default —
and stop it from an ``atexit`` hook, which a SIGKILL never runs: the server is then orphaned. This
starts the same server (Prefect's API app in ephemeral mode: no UI, no background services, the
database under ``PREFECT_HOME``) as a child armed with ``PR_SET_PDEATHSIG``, so it dies with the
command however the command ends, and points ``PREFECT_API_URL`` at it. Must run before Prefect is
imported.

The listening socket is bound here and handed to uvicorn (``--fd``): the URL is known at once and
no other process can take the port, so the command goes on importing its flow (Prefect, torch,
MLflow: ~5 s) while the server starts (~5 s), and waits for it only before the flow runs.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from cerebro_core.procs import pdeathsig


class PrefectApiError(RuntimeError):
    pass


class TemporaryApi:
    """A started API: ``url`` at once; ``wait()`` returns when it answers, or raises."""

    def __init__(self, url: str, proc: subprocess.Popen, lock, log: Path, timeout_s: float):
        self.url, self._proc, self._log = url, proc, log
        self._error: str | None = None
        self._thread = threading.Thread(target=self._until_ready, args=(lock, timeout_s), daemon=True)
        self._thread.start()

    def _until_ready(self, lock, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    self._error = f"the temporary Prefect API exited with {self._proc.returncode} at start-up"
                    return
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
                time.sleep(0.1)
            self._error = f"the temporary Prefect API did not answer within {timeout_s:.0f} s"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def wait(self) -> str:
        self._thread.join()
        if self._error:
            _stop(self._proc)
            raise PrefectApiError(f"{self._error}; see {self._log}")
        return self.url


def start_temporary_api(prefect_home: Path, timeout_s: float = 90.0) -> TemporaryApi:
    """Start the API and export PREFECT_API_URL; call ``wait()`` on the result before the flow.

    Commands sharing one PREFECT_HOME (the nodes of a multi-node job on one machine, parallel
    CLI calls) start one at a time: a lock file is held until the API answers, so their database
    migrations never race."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    lock = open(prefect_home / "temporary-api.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # a request made before the server is up waits in the backlog
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
        log_path = prefect_home / "temporary-api.log"
        env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_UI_ENABLED": "0",
               "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
               "--fd", str(sock.fileno()), "--log-level", "error", "--lifespan", "on"]
        with open(log_path, "ab") as log:
            # from the main thread: PR_SET_PDEATHSIG fires when the thread that started the child ends
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    pass_fds=(sock.fileno(),), preexec_fn=pdeathsig)
    except BaseException:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        raise
    finally:
        sock.close()  # the server holds it now: if it dies, a request is refused rather than left waiting
    atexit.register(_stop, proc)  # registered before Prefect's own hooks, so it runs after them
    os.environ["PREFECT_API_URL"] = url
    return TemporaryApi(url, proc, lock, log_path, timeout_s)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
