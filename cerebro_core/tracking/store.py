"""The embedded tracking store (sqlite under ``$CEREBRO_HOME``), checked before first use: a file
that is not an MLflow database is a one-line error, a write lock held by another process is waited
for, and a state dir that was copied or moved is adopted (its recorded artifact locations are
rewritten to point into it). Plain sqlite: MLflow is not imported here."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from pathlib import Path

from cerebro_core.home import Endpoints


class TrackingStoreError(RuntimeError):
    """The embedded tracking database cannot be used; the message says what to do."""


# where MLflow's sqlite store records artifact locations (absolute file:// URIs)
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "source"),
                    ("model_versions", "storage_location"))
_checked: set[str] = set()


def _holders(db: Path) -> str:
    import psutil  # which processes have ``db`` open (for the message when it stays locked)

    found = []
    for p in psutil.process_iter(["pid", "name"]):
        try:
            if p.pid != os.getpid() and any(f.path == str(db) for f in p.open_files()):
                found.append(f"{p.info['name']} (pid {p.pid})")
        except (psutil.Error, OSError):
            continue
    return f": {', '.join(found[:5])}" if found else ""


def check_store(ep: Endpoints, lock_wait_s: float = 120) -> list[str]:
    """Check the embedded store once per process; returns what was adopted (messages, also printed
    to stderr). Raises :class:`TrackingStoreError` for a file that is not a usable MLflow database;
    a write lock held by another process is waited for (``lock_wait_s``), then said to be one."""
    import time

    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            return _check_store(ep, min(30.0, max(lock_wait_s, 0.1)))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                db = ep.home / "mlflow.db"
                raise TrackingStoreError(
                    f"{db} stayed locked by another process for more than {lock_wait_s:g} s ({exc}); the file is "
                    f"not damaged: wait for that process to finish, or stop it, and run again{_holders(db)}") from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def _check_store(ep: Endpoints, timeout_s: float) -> list[str]:
    db = ep.home / "mlflow.db"
    if ep.tracking_source != "embedded" or not db.exists() or str(db) in _checked:
        return []
    hint = (f"move it aside (mv {db} {db}.broken) to start with an empty tracking store, "
            "or restore it from a backup")
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=timeout_s)) as con:
            (ok,) = con.execute("pragma quick_check").fetchone()
            tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
            if ok != "ok":
                raise TrackingStoreError(f"{db} is damaged ({ok}): {hint}")
            if tables and "experiments" not in tables:
                raise TrackingStoreError(f"{db} is an sqlite file but not an MLflow database: {hint}")
            messages = _adopt(con, Path(ep.artifact_root).as_uri(), tables) if tables else []
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise  # held by another process: check_store waits, then says so
        raise TrackingStoreError(f"{db} is not a readable MLflow database ({exc}): {hint}") from None
    except sqlite3.DatabaseError as exc:
        raise TrackingStoreError(f"{db} is not a readable MLflow database ({exc}): {hint}") from None
    _checked.add(str(db))
    for m in messages:
        print(f"cerebro: {m}", file=sys.stderr)
    return messages


def _adopt(con: sqlite3.Connection, here: str, tables: set[str]) -> list[str]:
    """Rewrite artifact locations recorded under another state dir's ``mlartifacts`` to ``here``."""
    olds = {loc[:loc.index("/mlartifacts") + len("/mlartifacts")]
            for (loc,) in con.execute("select artifact_location from experiments")
            if loc and loc.startswith("file://") and "/mlartifacts" in loc}
    messages = []
    for old in sorted(olds - {here}):
        n = 0
        with con:
            for table, col in ARTIFACT_COLUMNS:
                if table in tables:
                    n += con.execute(f"update {table} set {col} = ? || substr({col}, ?) "
                                     f"where substr({col}, 1, ?) = ?",
                                     (here + "/", len(old) + 2, len(old) + 1, old + "/")).rowcount
        messages.append(f"this state dir was copied or moved: {n} artifact locations recorded under "
                        f"{old.removeprefix('file://')} now point to {here.removeprefix('file://')}")
    return messages
