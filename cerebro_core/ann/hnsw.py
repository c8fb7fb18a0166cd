"""``hnsw``: ``IndexHNSWFlat`` (inner product), sub-millisecond on a CPU; ~(4d + 8M) bytes a vector.
Tuned on ``efSearch``."""

from __future__ import annotations

from cerebro_core.ann.base import IndexKind, as_f32, faiss_module

M = 32
EF_CONSTRUCTION = 80
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class HNSW(IndexKind):
    name = "hnsw"

    def estimate_mb(self, n: int, d: int) -> float:
        return n * (d * 4 + M * 2 * 4 * 1.05) / 2**20

    def build(self, vectors, seed: int = 0):
        faiss = faiss_module()
        x = as_f32(vectors)
        raw = faiss.IndexHNSWFlat(x.shape[1], M, faiss.METRIC_INNER_PRODUCT)
        raw.hnsw.efConstruction = EF_CONSTRUCTION
        raw.add(x)
        return raw, {"M": M, "efConstruction": EF_CONSTRUCTION}, False

    def ladders(self, build_params: dict) -> list[list[dict]]:
        return [[{"efSearch": c} for c in EF_CANDIDATES]]

    def params(self, raw, setting: dict, sel=None):
        faiss = faiss_module()
        if "efSearch" not in setting:
            return faiss.SearchParameters(sel=sel) if sel is not None else None
        return faiss.SearchParametersHNSW(efSearch=int(setting["efSearch"]), sel=sel)
