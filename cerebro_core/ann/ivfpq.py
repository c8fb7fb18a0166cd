"""``ivfpq``: ``IndexIVFPQ`` (d/8 sub-quantizers of 8 bits) with an fp16 refinement stage, when
even IVFFlat does not fit the memory budget. Tuned on ``nprobe``; 4 × k candidates re-scored."""

from __future__ import annotations

from cerebro_core.ann.base import faiss_module
from cerebro_core.ann.ivf import IVFBase

K_FACTOR = 4


def pq_m(d: int) -> int:
    """d/8 sub-quantizers, or the nearest count below that divides d."""
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return m


class IVFPQ(IVFBase):
    name = "ivfpq"

    def estimate_mb(self, n: int, d: int) -> float:
        return n * (d // 8 + 8 + d * 2) / 2**20

    def untrained(self, d: int, nlist: int):
        faiss = faiss_module()
        m = pq_m(d)
        ivfpq = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        raw = faiss.IndexRefine(ivfpq, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16,
                                                                   faiss.METRIC_INNER_PRODUCT))
        raw.k_factor = K_FACTOR
        return raw, {"nlist": nlist, "pq_m": m, "refine": "fp16", "k_factor": K_FACTOR}

    def params(self, raw, setting: dict, sel=None):
        faiss = faiss_module()
        base = self.ivf_params(setting, sel)
        if base is None:
            return None
        return faiss.IndexRefineSearchParameters(k_factor=K_FACTOR, base_index_params=base)
