"""Collections larger than RAM: the ``ivfpq_disk`` index (memory-mapped lists, exact
refinement from vectors read per row) and the memory-mapped metadata table; ``index.kind:
auto`` picks the disk kind only when no in-RAM kind fits; a forced ``index.kind=ivfpq_disk``
runs index → search → reindex end to end on the shared photos."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import clustered


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    return clustered(n, d, seed, centers=256, dtype=np.float16)  # as a bundle's vectors.npy stores them


def test_auto_picks_the_disk_kind_only_when_nothing_fits_in_ram():
    from cerebro_core.ann.kinds import choose_kind, kind_for

    assert choose_kind(604, 512, 4096).name == "flat"
    assert choose_kind(1_000_000, 512, 4096).name == "hnsw"
    assert choose_kind(3_000_000, 512, 4096).name == "ivfpq"
    assert choose_kind(10_000_000, 512, 4096).name == "ivfpq_disk"
    # what it keeps resident at 10M: its centroids, not the ~10 GB an in-RAM IVF-PQ + refine needs
    assert kind_for("ivfpq_disk").estimate_mb(10_000_000, 512) < 50 < 10_000 < kind_for("ivfpq").estimate_mb(10_000_000, 512)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from cerebro_core.ann.disk import write_vectors
    from cerebro_core.ann.tune import build_and_tune

    x = _clustered(60_000, 64)
    index, rep = build_and_tune(x, "auto", recall_target=0.95, memory_budget_mb=1, n_queries=200)
    d = tmp_path_factory.mktemp("disk-bundle")
    index.save(d)
    write_vectors(d / "vectors.npy", x)
    return {"x": x, "index": index, "rep": rep, "dir": d}


def test_disk_index_meets_the_recall_target_on_fresh_queries(built):
    import faiss

    from cerebro_core.ann.base import recall_at_k, sample_queries

    rep = built["rep"]
    assert rep.kind == "ivfpq_disk" and rep.recall_at_10 >= 0.95
    assert set(rep.params) == {"nprobe", "k_factor"} and rep.build_params["nlist"] == 512
    x = built["x"].astype(np.float32)
    q = sample_queries(x, 200, seed=7)
    exact = faiss.IndexFlatIP(64)
    exact.add(x)
    _, truth = exact.search(q, 10)
    _, found = built["index"].search(q, 10)  # the tuned settings are the index's defaults
    assert recall_at_k(found, truth) >= 0.93


def test_loaded_disk_index_is_memory_mapped_and_answers_alike(built):
    import faiss

    from cerebro_core.ann.disk import VectorFile
    from cerebro_core.ann.store import load

    info = {"kind": "ivfpq_disk", "params": built["rep"].params}
    index = load(built["dir"], info)
    raw = index.raw
    assert isinstance(raw.vectors, VectorFile)  # rows read on demand, nothing mapped or loaded
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(raw.ivf).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only
    assert (raw.nprobe, raw.k_factor) == (built["rep"].params["nprobe"], built["rep"].params["k_factor"])
    q = built["x"][:50].astype(np.float32)
    D1, I1 = built["index"].search(q, 10)
    D2, I2 = index.search(q, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, atol=1e-6)
    assert (I2[:, 0] == np.arange(50)).mean() >= 0.95  # a stored vector finds itself

    # a filter (FAISS ID selector) holds inside the PQ stage: only even ids come back
    _, I3 = index.search(q, 10, ids=np.arange(0, 60_000, 2))
    assert (I3 >= 0).all() and (I3 % 2 == 0).all()


def test_disk_index_takes_new_vectors_when_read_for_writing(built):
    from cerebro_core.ann.store import load

    index = load(built["dir"], {"kind": "ivfpq_disk", "params": built["rep"].params}, mmap=False)
    new = _clustered(100, 64, seed=5)
    index.add(new)
    assert index.ntotal == len(index.raw.vectors) == 60_100
    _, ids = index.search(new.astype(np.float32), 1)
    assert (ids[:, 0] == np.arange(60_000, 60_100)).mean() >= 0.95


def test_metadata_is_a_mapped_table_read_per_row(tmp_path):
    import pyarrow as pa

    from cerebro_core.search.columns import Columns
    from cerebro_core.search.filters import Filters
    from cerebro_core.search.rows import read_rows, write_rows

    n = 200_000
    rows = [{"uri": str(tmp_path / "src" / f"{i:06d}.jpg"), "source_root": str(tmp_path / "src"),
             "source": "a" if i % 3 else "b", "media_type": "image", "camera": f"cam{i % 7}" if i % 5 else None,
             "species": "fox" if i % 4 == 0 else None, "taken_at": f"2026-01-{1 + i % 28:02d}T12:00:00",
             "sequence_id": i // 3 if i % 2 else None} for i in range(n)]
    write_rows(tmp_path, rows, tmp_path / "home")
    before = pa.total_allocated_bytes()
    table_rows = read_rows(tmp_path, tmp_path / "home")
    assert pa.total_allocated_bytes() - before < 1 << 20  # zero-copy: nothing read into memory
    assert len(table_rows) == n
    r = table_rows[123_457]
    assert (r["id"], r["path"], r["uri"], r["source"]) == (123_457, "123457.jpg", rows[123_457]["uri"], "a")
    assert r["camera"] == "cam5" and r["species"] is None and table_rows[-1]["id"] == n - 1

    cols = Columns(table_rows)
    m = cols.mask(Filters(source="b", camera="cam3", species=["fox"]))
    want = [i for i, x in enumerate(rows) if x["source"] == "b" and x["camera"] == "cam3" and x["species"] == "fox"]
    assert np.flatnonzero(m).tolist() == want and want
    m = cols.mask(Filters(date_from="2026-01-27", date_to="2026-01-28"))
    assert int(m.sum()) == sum(1 for i in range(n) if 1 + i % 28 in (27, 28))
    assert cols.facets()["species"] == {"fox": n // 4}
    seq = cols.sequence_key
    assert seq[1] == 0 and seq[3] == seq[5] == 1
    assert len({seq[0], seq[2], seq[4]}) == 3 and min(seq[0], seq[2], seq[4]) > (n - 1) // 3  # none: its own key


@pytest.fixture(scope="module")
def disk_pipeline(shared_data, tmp_path_factory):
    from helpers import indexed_caltech

    yield from indexed_caltech(shared_data, tmp_path_factory, "disk-home", "index.kind=ivfpq_disk")


def test_forced_disk_kind_indexes_searches_and_reindexes(disk_pipeline, shared_data, tmp_path):
    from helpers import make_scrape

    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.index.reindex import run_reindex

    sv = disk_pipeline["sv"]
    assert sv.kind == "ivfpq_disk" and sv.n == 700 and sv.recall_at_10 >= 0.9
    _, s = load_searcher("models:/cerebro-search@champion")
    from cerebro_core.ann.disk import VectorFile

    assert s.kind == "ivfpq_disk" and isinstance(s.index.raw.vectors, VectorFile)
    assert (s.dir / "metadata.arrow").exists() and not (s.dir / "metadata.parquet").exists()
    hits = s.search("a photo of an animal", k=5)
    assert len(hits) == 5 and [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    like = s.search_like(17, k=3)
    assert len(like) == 3 and 17 not in [h["id"] for h in like]

    scrape = make_scrape(shared_data, tmp_path / "scrape", n_new=20, n_copies=5)
    r = run_reindex(disk_pipeline["cfg"], str(tmp_path / "scrape"), log=lambda x: None)
    assert (r.new, r.duplicates, r.size_after) == (20, 5, 720) and not r.full_rebuild
    _, s2 = load_searcher("models:/cerebro-search@champion")
    assert s2.kind == "ivfpq_disk" and s2.index.ntotal == 720
    hit = s2.search_image(scrape["new"][4].read_bytes(), k=1)[0]
    assert hit["uri"].endswith("new_0004.jpg") and hit["source"] == "scrape"
