"""Re-indexing: only new photos are added (renamed copies are duplicates, corrupt files counted),
searching finds them, a second run is a no-op, a SIGKILL during publishing leaves the champion
servable and the rerun completes, a new CLIP champion forces a full re-embed, IVF drift."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, indexed_caltech, make_scrape


@pytest.fixture(scope="module")
def caltech_index(shared_data, tmp_path_factory):
    yield from indexed_caltech(shared_data, tmp_path_factory, "reindex-home")


def test_reindex_adds_only_new_media(caltech_index, shared_data, tmp_path):
    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.index.reindex import run_reindex

    s = make_scrape(shared_data, tmp_path / "scrape", n_new=30, n_copies=10)
    r = run_reindex(caltech_index["cfg"], str(tmp_path / "scrape"), log=lambda x: None)
    assert (r.new, r.duplicates, r.failed) == (30, 10, 2)
    assert r.size_before == 700 and r.size_after == 730 and r.published and not r.full_rebuild
    version, searcher = load_searcher("models:/cerebro-search@champion")
    assert version == r.version.version
    hits = searcher.search_image(s["new"][3].read_bytes(), k=1)
    assert hits[0]["uri"].endswith("new_0003.jpg") and hits[0]["source"] == "scrape"
    shas = [row["sha256"] for row in searcher.rows]
    assert len(shas) == len(set(shas)) == 730
    # sequences and near-duplicates are recomputed over old and new items alike
    assert all(row["sequence_id"] is not None for row in searcher.rows)
    assert len({row["sequence_id"] for row in searcher.rows}) == 730  # no camera, no time: one each
    # idempotent: the same scrape again adds nothing and publishes nothing
    again = run_reindex(caltech_index["cfg"], str(tmp_path / "scrape"), log=lambda x: None)
    assert (again.new, again.duplicates, again.published) == (0, 40, False)


REINDEX_SCRIPT = """
import sys
from cerebro_core.config import load_config
from cerebro_core.index.reindex import run_reindex

if __name__ == "__main__":  # decode workers are spawned: the script must be importable
    cfg = load_config(sys.argv[1], [sys.argv[2]])
    run_reindex(cfg, sys.argv[3], log=print)
"""


def _versions(home: Path) -> list[int]:
    with sqlite3.connect(home / "mlflow.db") as db:
        return [int(v) for (v,) in db.execute(
            "select version from model_versions where name = 'cerebro-search'").fetchall()]


def test_sigkill_during_publish_keeps_champion(caltech_index, shared_data, tmp_path):
    import mlflow
    import pandas as pd

    from cerebro_core import tracking
    from cerebro_core.index.reindex import run_reindex

    home = caltech_index["home"]
    before = str(tracking.client().get_model_version_by_alias("cerebro-search", "champion").version)
    n_before = len(_versions(home))
    make_scrape(shared_data, tmp_path / "scrape", n_new=12, n_copies=0, offset=100)
    script = tmp_path / "run.py"
    script.write_text(REINDEX_SCRIPT)
    src = f"index.sources=[{{name: caltech, path: {shared_data}/caltech101_animals}}]"
    proc = subprocess.Popen([sys.executable, str(script), str(REPO / "configs/demo.yaml"), src,
                             str(tmp_path / "scrape")], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, CEREBRO_HOME=str(home)))
    deadline = time.time() + 300
    while time.time() < deadline and len(_versions(home)) == n_before and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"reindex exited early with {proc.returncode}"
    os.killpg(proc.pid, signal.SIGKILL)  # registered, not yet smoke-tested and aliased
    proc.wait()
    assert len(_versions(home)) == n_before + 1, "the kill must land between registration and the alias"
    champ = tracking.client().get_model_version_by_alias("cerebro-search", "champion")
    assert str(champ.version) == before
    m = mlflow.pyfunc.load_model("models:/cerebro-search@champion")  # still loadable and answering
    assert len(m.predict(pd.DataFrame({"query": ["a horse"]}), params={"k": 3})) == 3

    orphan = str(max(_versions(home)))  # registered by the killed process, never aliased
    r = run_reindex(caltech_index["cfg"], str(tmp_path / "scrape"), log=lambda x: None)
    assert r.published and r.new == 12
    mv = tracking.client().get_model_version("cerebro-search", orphan)
    assert "ended before the smoke test moved an alias" in mv.tags["cerebro.abandoned"] and not mv.aliases
    killed = tracking.client().get_run(mv.run_id)
    assert killed.info.status == "FAILED" and "ended without closing it" in killed.data.tags["cerebro.cleanup"]
    _, searcher = __import__("cerebro_core.search.local_copy", fromlist=["x"]).load_searcher(
        "models:/cerebro-search@champion")
    shas = [row["sha256"] for row in searcher.rows]
    assert len(shas) == len(set(shas)) == r.size_after  # the new photos exactly once


def test_new_clip_champion_forces_full_reembed(caltech_index, shared_data, tmp_path):
    from helpers import register_random_clip

    from cerebro_core import tracking
    from cerebro_core.index.reindex import run_reindex

    cfg = caltech_index["cfg"]
    clip2 = register_random_clip(cfg, stage="adapt", seed=1)
    tracking.set_alias("cerebro-clip", "champion", clip2.version)
    make_scrape(shared_data, tmp_path / "scrape", n_new=5, n_copies=0, offset=200)
    r = run_reindex(cfg, str(tmp_path / "scrape"), log=lambda x: None)
    assert r.full_rebuild and r.new == 5 and r.size_after == r.size_before + 5
    assert r.version.clip_version == str(clip2.version)


def test_missing_and_empty_scrapes(caltech_index, tmp_path):
    from cerebro_core.index.reindex import ScrapeError, run_reindex

    with pytest.raises(ScrapeError, match="no such folder"):
        run_reindex(caltech_index["cfg"], str(tmp_path / "nope"), log=lambda x: None)
    (tmp_path / "empty").mkdir()
    r = run_reindex(caltech_index["cfg"], str(tmp_path / "empty"), log=lambda x: None)
    assert (r.scanned, r.new, r.published) == (0, 0, False)


def test_ivf_adds_until_drift_then_rebuilds():
    from cerebro_core.ann.tune import build_and_tune
    from cerebro_core.ann.incremental import add_or_rebuild

    rng = np.random.default_rng(0)
    d = 32
    centers = rng.standard_normal((16, d)).astype(np.float32)

    def data(n, c):
        x = c[rng.integers(0, len(c), n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x = data(20000, centers)
    index, rep = build_and_tune(x, "ivf", 0.95, 4096, n_queries=100)
    baseline = rep.build_params["centroid_distance"]
    same = data(1000, centers)
    index, add = add_or_rebuild(index, x, same, baseline, lambda v: None)
    assert not add.rebuilt and index.ntotal == 21000
    far = data(1000, rng.standard_normal((4, d)).astype(np.float32) * 3)  # a new region of the space
    rebuilt = []
    index2, add2 = add_or_rebuild(index, np.concatenate([x, same]), far, baseline,
                                  lambda v: rebuilt.append(len(v)) or "REBUILT")
    assert add2.rebuilt and "drift" in add2.reason and rebuilt == [22000] and index2 == "REBUILT"


def test_two_reindexes_at_once_keep_both_scrapes(caltech_index, shared_data, tmp_path):
    """Two `reindex` processes started together on one state dir (a cron run and a scrape event):
    both succeed and the champion holds both scrapes' photos, each once (the later one waited for
    the publish lock and added to the version the earlier one published)."""
    from cerebro_core.search.local_copy import load_searcher

    home = caltech_index["home"]
    _, s0 = load_searcher("models:/cerebro-search@champion")
    n0 = len(s0.rows)
    scrapes = {"a": make_scrape(shared_data, tmp_path / "a", n_new=4, n_copies=0, offset=150),
               "b": make_scrape(shared_data, tmp_path / "b", n_new=5, n_copies=0, offset=160)}
    script = tmp_path / "run.py"
    script.write_text(REINDEX_SCRIPT)
    src = f"index.sources=[{{name: caltech, path: {shared_data}/caltech101_animals}}]"
    procs = [subprocess.Popen([sys.executable, str(script), str(REPO / "configs/demo.yaml"), src, str(tmp_path / k)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, CEREBRO_HOME=str(home))) for k in scrapes]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    _, s = load_searcher("models:/cerebro-search@champion")
    shas = [row["sha256"] for row in s.rows]
    import hashlib

    for k, sc in scrapes.items():
        want = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sc["new"]}
        assert len(want) == len(sc["new"]) > 3 and want <= set(shas), f"scrape {k}'s photos are not in the champion"
    assert len(shas) == len(set(shas)) == n0 + 9
