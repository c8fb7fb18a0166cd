"""#39 item 1: an index kind is one class behind one protocol, looked up by name. A kind written
here (IVF with 8-bit scalar-quantised lists, which Cerebro does not ship) and registered with one
line is accepted by the config, built and tuned, searched with a filter, saved and loaded, built
in shards and added to with the drift check — with no other code knowing its name."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import REPO, clustered


@pytest.fixture
def sq8(monkeypatch):
    from cerebro_core.ann import kinds
    from cerebro_core.ann.base import faiss_module
    from cerebro_core.ann.ivf import IVFBase

    class IVFSQ8(IVFBase):
        name = "ivfsq8"

        def estimate_mb(self, n: int, d: int) -> float:
            return n * (d + 8) / 2**20

        def untrained(self, d: int, nlist: int):
            faiss = faiss_module()
            raw = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                faiss.METRIC_INNER_PRODUCT)
            return raw, {"nlist": nlist, "sq": "8bit"}

    monkeypatch.setitem(kinds.KINDS, "ivfsq8", IVFSQ8())  # the one registry line
    return "ivfsq8"


def test_a_new_kind_is_one_class_and_one_registry_line(sq8, tmp_path):
    from cerebro_core.ann.base import exact_topk, recall_at_k, sample_queries
    from cerebro_core.ann.incremental import add_or_rebuild
    from cerebro_core.ann.sharded import build_sharded
    from cerebro_core.ann.store import load
    from cerebro_core.ann.tune import build_and_tune
    from cerebro_core.config import ConfigError, load_config
    from cerebro_core.storage import Storage

    assert load_config(REPO / "configs/demo.yaml", [f"index.kind={sq8}"]).index.kind == sq8
    with pytest.raises(ConfigError, match="index.kind: .*unknown index kind 'ivfsq9'"):
        load_config(REPO / "configs/demo.yaml", ["index.kind=ivfsq9"])

    x = clustered(20_000, 32)
    index, rep = build_and_tune(x, sq8, 0.95, 4096, n_queries=200)
    assert rep.kind == sq8 and rep.recall_at_10 >= 0.95 and set(rep.params) == {"nprobe"} and rep.tuning
    q = sample_queries(x, 200, seed=9)
    assert recall_at_k(index.search(q, 10)[1], exact_topk(x, q, 10)) >= 0.93
    evens = np.arange(0, len(x), 2)
    _, only = index.search(q[:20], 10, ids=evens)  # a filter, as an ID selector inside FAISS
    assert (only >= 0).all() and (only % 2 == 0).all()

    index.save(tmp_path)  # saved and loaded by the kind's name, at its tuned setting
    back = load(tmp_path, {"kind": sq8, "params": rep.params})
    assert back.setting == rep.params
    np.testing.assert_array_equal(back.search(q, 10)[1], index.search(q, 10)[1])

    sharded, srep = build_sharded(x, 2, sq8, 0.95, 4096, Storage(), str(tmp_path / "work"))
    assert srep.kind == sq8 and srep.recall_at_10 >= 0.95 and len(sharded.shards) == 2

    same = clustered(500, 32, seed=0)[::-1].copy()  # from the same clusters: added to the lists
    grown, add = add_or_rebuild(index, x, same, rep.build_params["centroid_distance"], lambda v: None)
    assert not add.rebuilt and grown.ntotal == 20_500
