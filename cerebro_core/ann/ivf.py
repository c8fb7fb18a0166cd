"""``ivf``: ``IndexIVFFlat``, when HNSW's graph does not fit the memory budget. Trained on a sample
(on every GPU when there are any), tuned on ``nprobe``. :class:`IVFBase` is what the in-RAM IVF
kinds share: ``nlist``, training, the ``nprobe`` ladder, and the lists drift is checked on."""

from __future__ import annotations

import math

from cerebro_core.ann.base import IndexKind, as_f32, faiss_module, gpu_count, training_sample

NPROBE_CANDIDATES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
TRAIN_PER_LIST = 256


def nlist_for(n: int) -> int:
    """4√n lists as a power of two, 16 to 65,536."""
    return int(min(65536, max(16, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))))


def nprobe_ladder(build_params: dict) -> list[int]:
    return [c for c in NPROBE_CANDIDATES if c <= build_params["nlist"]] or [build_params["nlist"]]


class IVFBase(IndexKind):
    trained = True

    def untrained(self, d: int, nlist: int):
        """(the empty, untrained FAISS index, its build params)."""
        raise NotImplementedError

    def train_empty(self, vectors, n: int, seed: int = 0):
        nlist = nlist_for(n)
        raw, bp = self.untrained(vectors.shape[1], nlist)
        raw.train(training_sample(vectors, TRAIN_PER_LIST * nlist, seed))
        return raw, bp

    def ladders(self, build_params: dict) -> list[list[dict]]:
        return [[{"nprobe": c} for c in nprobe_ladder(build_params)]]

    def ivf_params(self, setting: dict, sel=None):
        faiss = faiss_module()
        if "nprobe" not in setting:
            return faiss.SearchParametersIVF(sel=sel) if sel is not None else None
        return faiss.SearchParametersIVF(nprobe=int(setting["nprobe"]), sel=sel)

    def params(self, raw, setting: dict, sel=None):
        return self.ivf_params(setting, sel)

    def ivf(self, raw):
        faiss = faiss_module()
        base = raw.base_index if isinstance(raw, faiss.IndexRefine) else raw
        return faiss.extract_index_ivf(base)


class IVF(IVFBase):
    name = "ivf"

    def estimate_mb(self, n: int, d: int) -> float:
        return n * (d * 4 + 8) / 2**20

    def untrained(self, d: int, nlist: int):
        faiss = faiss_module()
        raw = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        return raw, {"nlist": nlist}

    def build(self, vectors, seed: int = 0):
        if not gpu_count():
            return super().build(vectors, seed)
        faiss = faiss_module()
        x = as_f32(vectors)
        nlist = nlist_for(len(x))
        raw, bp = self.untrained(x.shape[1], nlist)
        on_gpu = faiss.index_cpu_to_all_gpus(raw)
        on_gpu.train(training_sample(x, TRAIN_PER_LIST * nlist, seed))
        on_gpu.add(x)
        return faiss.index_gpu_to_cpu(on_gpu), bp, True
