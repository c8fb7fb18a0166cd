"""A sharded index: shards built independently (here in turn; in the flow as Prefect tasks on
a Dask cluster started through prefect-dask) and searched together with the results of one
index: identical top-k for flat shards, recall within 0.01 for IVF shards."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess

import numpy as np
import pytest
from helpers import CEREBRO, REPO, clustered


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    return clustered(n, d, seed, centers=128, dtype=np.float16).astype(np.float32)  # what a bundle stores


def test_plan_covers_every_id_once():
    from cerebro_core.ann.sharded import plan

    assert plan(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert plan(2, 4) == [(0, 1), (1, 2)]
    ranges = plan(1_000_003, 7)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1_000_003
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_two_flat_shards_give_the_top_k_of_one_flat_index(tmp_path):
    import faiss

    from cerebro_core.ann.base import sample_queries
    from cerebro_core.ann.sharded import build_sharded
    from cerebro_core.storage import Storage

    x = _clustered(5000, 48)
    sharded, rep = build_sharded(x, 2, "flat", 0.95, 4096, Storage(), str(tmp_path / "work"))
    assert [s[1:3] for s in sharded.shards] == [(0, 2500), (2500, 5000)] and rep.recall_at_10 == 1.0
    one = faiss.IndexFlatIP(48)
    one.add(x)
    q = sample_queries(x, 100, seed=3)
    D1, I1 = one.search(q, 10)
    D2, I2 = sharded.search(q, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, rtol=0, atol=1e-6)
    ids = np.arange(1, 5000, 3)  # a filter: global ids, split across the shards
    _, I3 = one.search(q, 10, params=faiss.SearchParameters(sel=faiss.IDSelectorBatch(ids)))
    _, I4 = sharded.search(q, 10, ids=ids)
    np.testing.assert_array_equal(I3, I4)
    only_second = np.arange(4000, 4010)  # a filter inside one shard: the other is not searched
    _, I5 = sharded.search(q[:5], 10, ids=only_second)
    assert set(I5.ravel()) == set(only_second.tolist())


def test_ivf_shards_recall_within_a_hundredth_of_one_ivf_index(tmp_path):
    import faiss

    from cerebro_core.ann.base import recall_at_k, sample_queries
    from cerebro_core.ann.sharded import build_sharded
    from cerebro_core.ann.tune import build_and_tune
    from cerebro_core.storage import Storage

    x = _clustered(60_000, 64)
    one, rep1 = build_and_tune(x, "ivf", 0.95, 4096, n_queries=200)
    sharded, rep2 = build_sharded(x, 2, "ivf", 0.95, 4096, Storage(), str(tmp_path / "work"))
    assert rep2.kind == "ivf" and len(rep2.build_params["shards"]) == 2
    q = sample_queries(x, 300, seed=11)  # fresh queries, exact truth
    exact = faiss.IndexFlatIP(64)
    exact.add(x)
    _, truth = exact.search(q, 10)
    assert rep2.recall_at_10 >= 0.95 and set(rep2.params) == {"nprobe"}  # the merged index, tuned
    _, f2 = sharded.search(q, 10)
    assert recall_at_k(f2, truth) >= 0.93
    for nprobe in (rep1.params["nprobe"], rep2.params["nprobe"]):  # the same setting: the same recall ± 0.01
        sharded.set_setting({"nprobe": nprobe})
        one.set_setting({"nprobe": nprobe})
        _, f1 = one.search(q, 10)
        _, f2 = sharded.search(q, 10)
        assert abs(recall_at_k(f1, truth) - recall_at_k(f2, truth)) <= 0.01, nprobe
    # queries far from every cluster, as text queries sit far from image vectors: the merged index is
    # tuned on them as well, and meets the target there too
    far = np.random.default_rng(5).standard_normal((100, 64)).astype(np.float32)
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    _, rep3 = build_sharded(x, 2, "ivf", 0.95, 4096, Storage(), str(tmp_path / "work3"), text_queries=far)
    assert rep3.text_recall_at_10 >= 0.95 and rep3.recall_at_10 >= 0.95
    assert rep3.params["nprobe"] >= rep2.params["nprobe"] and rep2.text_recall_at_10 is None


def test_sharded_index_flow_builds_shards_as_tasks_on_dask(shared_data, tmp_path, migrated_prefect_db):
    """`cerebro index` with index.shards=2 on a local Dask cluster (prefect-dask): the shard
    builds are Prefect task runs, run in the cluster's worker processes, and the published
    sharded bundle answers as exact search over its vectors."""
    from helpers import register_random_clip

    from helpers import seed_prefect_home
    from cerebro_core.config import load_config

    home = tmp_path / "home"
    seed_prefect_home(home / "prefect", migrated_prefect_db)
    photos = tmp_path / "photos"  # 120 of the shared photos (a link out of the folder is not indexed)
    photos.mkdir()
    for i, p in enumerate(sorted((shared_data / "caltech101_animals").rglob("*.jpg"))[:120]):
        shutil.copy(p, photos / f"{i:03d}.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(CEREBRO_HOME=str(home), PREFECT_HOME=str(home / "prefect"))
    sets = [f"index.sources=[{{name: caltech, path: {photos}}}]", "index.shards=2", "index.shard_runner=dask"]
    mp = pytest.MonkeyPatch()
    mp.setenv("CEREBRO_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        register_random_clip(load_config(REPO / "configs/demo.yaml", sets))
        args = [CEREBRO, "index", "-c", str(REPO / "configs/demo.yaml")]
        for s in sets:
            args += ["--set", s]
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-5000:]
        assert "in 2 shards" in out

        with sqlite3.connect(home / "prefect" / "prefect.db") as db:
            runs = db.execute("select name, state_type from task_run where name like 'index-shard-%' "
                              "order by name").fetchall()
        assert runs == [("index-shard-0", "COMPLETED"), ("index-shard-1", "COMPLETED")]

        from cerebro_core.search.local_copy import load_searcher

        _, s = load_searcher("models:/cerebro-search@champion")
        assert len(s.index.shards) == 2 and [e["end"] for e in s.info["shards"]] == [60, 120]
        assert (s.dir / "shards" / "00000" / "index.faiss").exists()
        pids = [sh["pid"] for sh in s.info["build_params"]["shards"]]
        assert len(pids) == 2 and proc.pid not in pids and os.getpid() not in pids  # Dask's worker processes
        v = np.load(s.dir / "vectors.npy").astype(np.float32)
        q = v[[5, 100]]
        want = np.argsort(-(v @ q.T).T, axis=1, kind="stable")[:, :10]
        got = [[h["id"] for h in s.search_vector(row, k=10)] for row in q]
        assert [g[0] for g in got] == [5, 100]
        assert all(len(set(g) & set(w.tolist())) >= 9 for g, w in zip(got, want))  # fp16 near-ties aside
    finally:
        mp.undo()
