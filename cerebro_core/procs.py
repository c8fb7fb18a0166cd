"""Process supervision: one home for how the library runs child processes.

- :func:`pdeathsig` (Linux ``PR_SET_PDEATHSIG``): the calling process dies when its parent does,
  so a killed stage leaves no img2dataset, torchrun or trainer running alone;
- :func:`kill_group`: SIGKILL to a child's whole process group (it was started in its own session);
- :func:`kill_tree`: SIGKILL to a child and all its descendants (a child in the caller's group);
- :func:`run_supervised`: a child that dies with the caller (PDEATHSIG), its output pumped line by
  line to a callback, killed with everything it started if the caller is interrupted. In its own
  session (torchrun: a killed caller's torchrun takes its workers down) or, with
  ``own_session=False``, in the caller's process group, so that a kill of that group also reaches
  grandchildren that arm no PDEATHSIG of their own (img2dataset's worker pool).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Optional


def pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Die (SIGKILL) when the parent process dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux / no libc: nothing to arm
        return


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone: nothing left to kill
        pass
    proc.wait()


def kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        for child in parent.children(recursive=True):
            child.kill()
        parent.kill()
    except psutil.NoSuchProcess:  # already gone: nothing left to kill
        pass
    proc.wait()


def run_supervised(
    cmd: list[str],
    env: dict[str, str],
    on_line: Callable[[str], None],
    keep: Callable[[str], bool] = lambda line: True,
    tail_lines: int = 100,
    tick: Optional[Callable[[], None]] = None,
    tick_s: float = 1.0,
    own_session: bool = True,
) -> tuple[int, list[str]]:
    """Run ``cmd`` to its end; every output line goes to ``on_line``; ``tick`` (progress) is called
    every ``tick_s`` seconds meanwhile; returns (exit code, the last ``tail_lines`` lines that
    ``keep`` accepts)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=own_session, preexec_fn=pdeathsig)
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if keep(line):
                tail.append(line)
                del tail[:-tail_lines]
            on_line(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        while tick is not None and proc.poll() is None:
            tick()
            time.sleep(tick_s)
        rc = proc.wait()
    except BaseException:  # cancelled, timed out, interrupted: nothing it started outlives it
        (kill_group if own_session else kill_tree)(proc)
        raise
    t.join(timeout=5)
    return rc, tail


def parent_gone() -> bool:
    """True when this process was re-parented to init (its parent died before it armed PDEATHSIG)."""
    return os.getppid() == 1

