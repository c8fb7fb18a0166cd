"""The state dir as a careless user treats it (issue #21, items 1, 7, 10): copied to a new place
and used there, killed with SIGKILL in the middle of a reindex, its tracking database broken — each
through the real `cerebro` CLI, its temporary Prefect API and the embedded MLflow store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CEREBRO, REPO

CONFIG = str(REPO / "configs/demo.yaml")


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME")}
    return dict(env, CEREBRO_HOME=str(home))


def _cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([CEREBRO, *args, "-c", CONFIG], env=_env(home), capture_output=True, text=True,
                          timeout=timeout)


def _photos(shared: Path, dst: Path, kind: str, n: int, offset: int = 0) -> Path:
    dst.mkdir(parents=True)
    for i, p in enumerate(sorted((shared / "cifar10_animals" / "test" / kind).glob("*.jpg"))[offset:offset + n]):
        shutil.copy(p, dst / f"{kind}_{offset + i:03d}.jpg")
    return dst


@pytest.fixture(scope="module")
def home_a(shared_data, tmp_path_factory, migrated_prefect_db):
    """A state dir with a published index over photos kept inside it (as the demo keeps its own)."""
    from helpers import indexed_home, seed_prefect_home, state_dir

    from cerebro_core.config import load_config

    home = tmp_path_factory.mktemp("state") / "home-a"
    seed_prefect_home(home / "prefect", migrated_prefect_db)
    _photos(shared_data, home / "photos", "deer", 20)
    with state_dir(home):  # only while it is built: the tests run commands against it
        indexed_home(load_config(CONFIG, [f"index.sources=[{{name: photos, path: {home / 'photos'}}}]"]))
    return home


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def test_a_copied_state_dir_never_writes_into_the_original(home_a, shared_data, tmp_path):
    home_b = tmp_path / "home-b"
    shutil.copytree(home_a, home_b, symlinks=True)
    before = _snapshot(home_a)
    scrape = _photos(shared_data, tmp_path / "scrape", "horse", 8)
    r = _cli(home_b, "reindex", "--scrape", str(scrape))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"now point to {home_b / 'mlartifacts'}" in r.stderr and "8 new" in r.stdout
    assert _snapshot(home_a) == before  # not one file written or touched in the original
    with sqlite3.connect(home_b / "mlflow.db") as db:
        locations = [u for (u,) in db.execute("select artifact_uri from runs")]
    assert locations and all(u.startswith((home_b / "mlartifacts").as_uri()) for u in locations)
    shutil.rmtree(home_a / "photos")  # the copy needs nothing of the original, its photos included
    shutil.move(home_a, tmp_path / "home-a-moved-away")
    try:
        s = _cli(home_b, "search", "a deer", "-k", "30", "--json")
        assert s.returncode == 0, s.stderr[-2000:]
        hits = json.loads(s.stdout)["results"]
        assert len(hits) == 28 and all(Path(h["uri"]).is_file() for h in hits)
        assert {Path(h["uri"]).parent for h in hits} == {home_b / "photos", scrape}
    finally:
        shutil.move(tmp_path / "home-a-moved-away", home_a)


def _running_runs(home: Path) -> list[str]:
    try:
        with sqlite3.connect(home / "mlflow.db", timeout=1) as db:
            return [r for (r,) in db.execute(
                "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
                "where r.status = 'RUNNING' and t.key = 'stage' and t.value = 'reindex'")]
    except sqlite3.OperationalError:  # locked by the writer: ask again
        return []


def test_sigkill_of_reindex_leaves_no_server_and_the_next_run_cleans_up(home_a, shared_data, tmp_path):
    import psutil

    home = tmp_path / "home-c"
    shutil.copytree(home_a, home, symlinks=True)
    scrape = _photos(shared_data, tmp_path / "scrape", "horse", 6, offset=50)
    proc = subprocess.Popen([CEREBRO, "reindex", "--scrape", str(scrape), "-c", CONFIG], env=_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _running_runs(home):
        time.sleep(0.05)
    assert proc.poll() is None, f"reindex ended with {proc.returncode} before its run started"
    stale = _running_runs(home)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("prefect.server.api.server" in " ".join(c.cmdline()) for c in children)  # its temporary API
    os.kill(proc.pid, signal.SIGKILL)  # the command alone: its children must not outlive it
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, [" ".join(c.cmdline())[:120] for c in alive]

    r = _cli(home, "reindex", "--scrape", str(scrape))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"marked the reindex run {stale[0]} FAILED" in r.stderr and "6 new" in r.stdout
    with sqlite3.connect(home / "mlflow.db") as db:
        status = db.execute("select status from runs where run_uuid = ?", (stale[0],)).fetchone()[0]
        why = db.execute("select value from tags where run_uuid = ? and key = 'cerebro.cleanup'",
                         (stale[0],)).fetchone()[0]
    assert status == "FAILED" and "ended without closing it" in why
    # and in Prefect: the killed command's flow run and its task runs are Crashed, none left running
    with sqlite3.connect(home / "prefect" / "prefect.db") as db:
        flows = db.execute("select id, state_type, tags from flow_run").fetchall()
        killed = [(i, st) for i, st, tags in flows if f"cerebro.pid:{proc.pid}" in (tags or "")]
        unfinished = db.execute("select count(*) from task_run where state_type in ('RUNNING', 'PENDING')").fetchone()
        message = db.execute("select s.message from flow_run f join flow_run_state s on s.id = f.state_id "
                             "where f.state_type = 'CRASHED'").fetchall()
    assert not [f for f in flows if f[1] in ("RUNNING", "PENDING")], flows
    assert len(killed) == 1 and killed[0][1] == "CRASHED" and unfinished == (0,), (flows, unfinished)
    assert any(f"its process {proc.pid}" in (m or "") for (m,) in message), message
    assert "marked the Prefect flow run" in r.stderr


def test_a_broken_tracking_database_is_one_line_not_a_traceback(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "mlflow.db").write_bytes(b"this is not an sqlite database " * 200)
    for args in (("search", "a deer"), ("reindex", "--scrape", str(tmp_path)), ("index",)):
        r = _cli(home, *args, timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr[-1500:])
        assert "is not a readable MLflow database" in r.stderr and len(r.stderr.strip().splitlines()) == 1, args


def test_a_temporary_api_that_cannot_start_is_one_line_and_exit_3(home_a, shared_data, tmp_path):
    """The temporary Prefect API starts while the command imports its flow; when it dies at
    start-up (here its database path is a folder), the command waits for it, says so in one line
    naming the API's log, and exits 3."""
    home = tmp_path / "home-d"
    shutil.copytree(home_a, home, symlinks=True)
    shutil.rmtree(home / "prefect", ignore_errors=True)
    (home / "prefect" / "prefect.db").mkdir(parents=True)
    photos = _photos(shared_data, tmp_path / "photos", "deer", 3)  # an earlier test removes home_a's own
    r = _cli(home, "index", "--set", f"index.sources=[{{name: photos, path: {photos}}}]", timeout=300)
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    log = home / "prefect" / "temporary-api.log"
    last = r.stderr.strip().splitlines()[-1]  # after the note that this state dir was copied
    assert last == f"cerebro: the temporary Prefect API exited with 3 at start-up; see {log}", r.stderr
    assert "Traceback" not in r.stderr
    assert "Application startup failed" in log.read_text()


HOLD_DB = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("begin exclusive")  # what a long MLflow write holds
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_locked_tracking_database_is_waited_for_not_called_broken(home_a, tmp_path):
    """Another process holding a write lock on mlflow.db is waited for (tracking.lock_wait_s), then
    named in one line that says the file is not damaged; a lock let go while waiting is no error."""
    from cerebro_core import tracking
    from cerebro_core.home import Endpoints

    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(home_a / "mlflow.db", home / "mlflow.db")
    db = home / "mlflow.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_DB, str(db), "120"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _cli(home, "search", "a deer", "--set", "tracking.lock_wait_s=1", timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        last = r.stderr.strip().splitlines()[-1]
        assert "stayed locked by another process for more than 1 s" in last and "not damaged" in last, last
        assert f"(pid {holder.pid})" in last and "not a readable" not in r.stderr and "move it aside" not in r.stderr
    finally:
        holder.kill()
        holder.wait()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_DB, str(db), "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        ep = Endpoints(home=home, tracking_uri=f"sqlite:///{db}", tracking_source="embedded",
                       artifact_root=str(home / "mlartifacts"), prefect_home=home / "prefect", prefect_api="ephemeral",
                       storage_root=str(home / "data"))
        tracking.check_store(ep, lock_wait_s=60)  # returns once the holder lets go
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
        holder.wait()
