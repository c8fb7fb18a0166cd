"""FAISS index: chosen by collection size and memory budget, search parameters tuned to a recall
target against exact search, with the measured recall and latency stored beside it.

- ``flat``  — ``IndexFlatIP``: exact; the choice up to ``FLAT_MAX`` vectors.
- ``hnsw``  — ``IndexHNSWFlat`` (inner product): sub-millisecond on a CPU; needs ~(4d + 8M) bytes/vector.
- ``ivf``   — ``IndexIVFFlat``: when HNSW's graph does not fit the budget.
- ``ivfpq`` — ``IndexIVFPQ`` with a flat refinement stage when even IVFFlat does not fit.

Vectors are L2-normalised, so inner product is cosine similarity. The index id of a vector is
its row in the metadata table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

FLAT_MAX = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE_CANDIDATES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


@dataclass
class IndexReport:
    kind: str
    n: int
    dim: int
    params: dict = field(default_factory=dict)  # search parameters chosen (efSearch / nprobe)
    build_params: dict = field(default_factory=dict)
    recall_at_10: float = 1.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    build_s: float = 0.0
    memory_mb: float = 0.0
    tuning: list = field(default_factory=list)  # every candidate tried: (param, recall, p50 ms)
    gpu: bool = False


def _faiss():
    import faiss

    return faiss


def gpu_count() -> int:
    f = _faiss()
    return f.get_num_gpus() if hasattr(f, "get_num_gpus") else 0


def estimate_mb(kind: str, n: int, d: int) -> float:
    if kind == "flat":
        b = n * d * 4
    elif kind == "hnsw":
        b = n * (d * 4 + HNSW_M * 2 * 4 * 1.05)
    elif kind == "ivf":
        b = n * (d * 4 + 8)
    else:  # ivfpq + refine on fp16
        b = n * (d // 8 + 8 + d * 2)
    return b / 2**20


def choose_kind(n: int, d: int, memory_budget_mb: float, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if n <= FLAT_MAX:
        return "flat"
    for kind in ("hnsw", "ivf", "ivfpq"):
        if estimate_mb(kind, n, d) <= memory_budget_mb:
            return kind
    return "ivfpq"


def _nlist(n: int) -> int:
    return int(min(65536, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))


def build(vectors: np.ndarray, kind: str, seed: int = 0):
    """Build (and train) an index of ``kind`` over float32 L2-normalised ``vectors``."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    use_gpu = gpu_count() > 0 and kind in ("flat", "ivf", "ivfpq")
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return index, {}, False
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(x)
        return index, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}, False
    nlist = _nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        bp = {"nlist": nlist}
    else:
        m = max(1, d // 8)
        while d % m:
            m -= 1
        ivfpq = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefine(ivfpq, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16,
                                                                     faiss.METRIC_INNER_PRODUCT))
        index.k_factor = 4
        bp = {"nlist": nlist, "pq_m": m, "refine": "fp16", "k_factor": 4}
    rng = np.random.default_rng(seed)
    train = x[rng.choice(n, size=min(n, 256 * nlist), replace=False)]
    if use_gpu and kind == "ivf":
        gpu_index = faiss.index_cpu_to_all_gpus(index)
        gpu_index.train(train)
        gpu_index.add(x)
        return faiss.index_gpu_to_cpu(gpu_index), bp, True
    index.train(train)
    index.add(x)
    return index, bp, False


def search_params(index, kind: str, value: Optional[int], sel=None):
    faiss = _faiss()
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=int(value), sel=sel)
    if kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=int(value), sel=sel)
    if kind == "ivfpq":
        return faiss.IndexRefineSearchParameters(
            k_factor=4, base_index_params=faiss.SearchParametersIVF(nprobe=int(value), sel=sel))
    return faiss.SearchParameters(sel=sel) if sel is not None else None


def sample_queries(vectors: np.ndarray, n_queries: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Queries near the data (perturbed database vectors), so recall is measured where it matters."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)].astype(np.float32)
    q = q + noise * rng.standard_normal(q.shape).astype(np.float32) / math.sqrt(q.shape[1])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def _latency(index, queries: np.ndarray, params, k: int = 10) -> tuple[np.ndarray, float, float]:
    times, ids = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, I = index.search(q[None, :], k, params=params)
        times.append(time.perf_counter() - t0)
        ids.append(I[0])
    t = np.array(times) * 1000
    return np.stack(ids), float(np.percentile(t, 50)), float(np.percentile(t, 99))


def build_and_tune(
    vectors: np.ndarray, kind: str = "auto", recall_target: float = 0.95, memory_budget_mb: float = 4096,
    n_queries: int = 300, seed: int = 0,
):
    """Build the index and pick the cheapest search setting meeting ``recall_target`` (recall@10
    vs exact inner-product search); returns (index, IndexReport)."""
    faiss = _faiss()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    kind = choose_kind(n, d, memory_budget_mb, kind)
    t0 = time.perf_counter()
    index, bp, on_gpu = build(x, kind, seed)
    build_s = time.perf_counter() - t0
    report = IndexReport(kind=kind, n=n, dim=d, build_params=bp, build_s=build_s,
                         memory_mb=estimate_mb(kind, n, d), gpu=on_gpu)
    if kind in ("ivf", "ivfpq") and n:
        report.build_params["centroid_distance"] = centroid_baseline(index, x, seed)  # the drift baseline
    if n == 0:
        return index, report
    queries = sample_queries(x, n_queries, seed)
    k = min(10, n)
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    _, truth = exact.search(queries, k)
    if kind == "flat":
        _, p50, p99 = _latency(index, queries[:100], None, k)
        report.recall_at_10, report.latency_p50_ms, report.latency_p99_ms = 1.0, p50, p99
        return index, report
    candidates = EF_CANDIDATES if kind == "hnsw" else NPROBE_CANDIDATES
    if kind != "hnsw":
        candidates = [c for c in candidates if c <= bp["nlist"]] or [bp["nlist"]]
    chosen = None
    for c in candidates:
        params = search_params(index, kind, c)
        _, found = index.search(queries, k, params=params)
        r = recall_at_k(found, truth, k)
        _, p50, p99 = _latency(index, queries[:100], params, k)
        report.tuning.append({"param": c, "recall_at_10": r, "p50_ms": p50})
        if r >= recall_target:
            chosen = (c, r, p50, p99)
            break
    if chosen is None:  # the target is out of reach: keep the best recall we saw, and say so
        best = max(report.tuning, key=lambda t: t["recall_at_10"])
        params = search_params(index, kind, best["param"])
        _, p50, p99 = _latency(index, queries[:100], params, k)
        chosen = (best["param"], best["recall_at_10"], p50, p99)
    key = "efSearch" if kind == "hnsw" else "nprobe"
    report.params = {key: chosen[0]}
    report.recall_at_10, report.latency_p50_ms, report.latency_p99_ms = chosen[1], chosen[2], chosen[3]
    return index, report


def centroid_baseline(index, x: np.ndarray, seed: int = 0) -> float:
    """Mean distance of (a sample of) the indexed vectors to their IVF centroid; 0 for other kinds."""
    from cerebro_core.index.incremental import centroid_distance

    sample = x[np.random.default_rng(seed).choice(len(x), size=min(len(x), 20000), replace=False)]
    return centroid_distance(index, sample)


def serialize(index) -> bytes:
    return _faiss().serialize_index(index).tobytes()


def deserialize(data: bytes):
    return _faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8))
