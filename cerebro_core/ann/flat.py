"""``flat``: ``IndexFlatIP``, exact search; the choice up to ``kinds.FLAT_MAX`` vectors."""

from __future__ import annotations

from cerebro_core.ann.base import IndexKind, as_f32, faiss_module


class Flat(IndexKind):
    name = "flat"
    exact = True

    def estimate_mb(self, n: int, d: int) -> float:
        return n * d * 4 / 2**20

    def build(self, vectors, seed: int = 0):
        x = as_f32(vectors)
        raw = faiss_module().IndexFlatIP(x.shape[1])
        raw.add(x)
        return raw, {}, False
