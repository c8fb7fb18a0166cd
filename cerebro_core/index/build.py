"""FAISS index: chosen by collection size and memory budget, search parameters tuned to a recall
target against exact search, with the measured recall and latency stored beside it.

- ``flat``  — ``IndexFlatIP``: exact; the choice up to ``FLAT_MAX`` vectors.
- ``hnsw``  — ``IndexHNSWFlat`` (inner product): sub-millisecond on a CPU; needs ~(4d + 8M) bytes/vector.
- ``ivf``   — ``IndexIVFFlat``: when HNSW's graph does not fit the budget.
- ``ivfpq`` — ``IndexIVFPQ`` with a flat refinement stage when even IVFFlat does not fit.
- ``ivfpq_disk`` — IVF-PQ with memory-mapped lists, refined from fp16 vectors read per row from disk
  (:mod:`cerebro_core.index.disk`): when no in-RAM kind fits; resident memory ~ its centroids.

Vectors are L2-normalised, so inner product is cosine similarity. The index id of a vector is
its row in the metadata table.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from cerebro_core.index import disk

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
    recall_at_10: float = 1.0  # image queries (database vectors, perturbed)
    text_recall_at_10: Optional[float] = None  # text queries (the vocabulary's prompts), when tuned on them
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
    elif kind == "ivfpq":  # + refine on fp16
        b = n * (d // 8 + 8 + d * 2)
    else:  # ivfpq_disk: what stays resident; codes and vectors are mapped
        return disk.resident_mb(n, d)
    return b / 2**20


def choose_kind(n: int, d: int, memory_budget_mb: float, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if n <= FLAT_MAX:
        return "flat"
    for kind in ("hnsw", "ivf", "ivfpq"):
        if estimate_mb(kind, n, d) <= memory_budget_mb:
            return kind
    return "ivfpq_disk"


def _nlist(n: int) -> int:
    return int(min(65536, max(16, 2 ** round(math.log2(4 * math.sqrt(n))))))


def build(vectors: np.ndarray, kind: str, seed: int = 0):
    """Build (and train) an index of ``kind`` over L2-normalised ``vectors`` (``ivfpq_disk``: an
    array or memmap read in chunks; the other kinds are built from one float32 copy in RAM)."""
    faiss = _faiss()
    if kind == "ivfpq_disk":
        index, bp = disk.build(vectors, seed)
        return index, bp, False
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
    if use_gpu and kind == "ivf":
        index, bp, train = _untrained(x, kind, n, seed)
        gpu_index = faiss.index_cpu_to_all_gpus(index)
        gpu_index.train(train)
        gpu_index.add(x)
        return faiss.index_gpu_to_cpu(gpu_index), bp, True
    index, bp = train_empty(x, kind, n, seed)
    index.add(x)
    return index, bp, False


def _untrained(vectors, kind: str, n: int, seed: int):
    faiss = _faiss()
    d = vectors.shape[1]
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
    pick = rng.choice(len(vectors), size=min(len(vectors), 256 * nlist), replace=False)
    return index, bp, np.ascontiguousarray(vectors[pick], dtype=np.float32)


def train_empty(vectors, kind: str, n: Optional[int] = None, seed: int = 0):
    """An IVF-family index trained on (a sample of) ``vectors``, sized for ``n`` vectors (default:
    as many as given), still empty: shards add their own ranges to copies of it, so that they
    share one coarse quantizer and search as one index. Returns (index, build params)."""
    n = len(vectors) if n is None else n
    if kind == "ivfpq_disk":
        return disk.train_empty(vectors, n, seed)
    index, bp, train = _untrained(vectors, kind, n, seed)
    index.train(train)
    return index, bp


def search_params(index, kind: str, value: Optional[int], sel=None):
    """Parameters for one search (a sharded index takes none: each shard has its own)."""
    from cerebro_core.index.shards import ShardedIndex

    faiss = _faiss()
    if isinstance(index, ShardedIndex):
        return None
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=int(value), sel=sel)
    if kind in ("ivf", "ivfpq_disk"):
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
    n_queries: int = 300, seed: int = 0, text_queries: Optional[np.ndarray] = None,
):
    """Build the index and pick the cheapest search setting meeting ``recall_target`` (recall@10
    vs exact inner-product search) on image queries and, given ``text_queries`` (normalised text
    embeddings: what users send, far from the image vectors), on those too; returns (index, IndexReport)."""
    faiss = _faiss()
    n, d = vectors.shape
    kind = choose_kind(n, d, memory_budget_mb, kind)
    x = vectors if kind == "ivfpq_disk" else np.ascontiguousarray(vectors, dtype=np.float32)
    t0 = time.perf_counter()
    index, bp, on_gpu = build(x, kind, seed)
    build_s = time.perf_counter() - t0
    report = IndexReport(kind=kind, n=n, dim=d, build_params=bp, build_s=build_s,
                         memory_mb=estimate_mb(kind, n, d), gpu=on_gpu)
    if kind == "ivfpq_disk":
        report.build_params["disk_mb"] = round(disk.disk_mb(n, d), 1)
    if kind in ("ivf", "ivfpq", "ivfpq_disk") and n:
        report.build_params["centroid_distance"] = centroid_baseline(index, x, seed)  # the drift baseline
    if n == 0:
        return index, report
    queries = sample_queries(x, n_queries, seed)
    k = min(10, n)
    texts = None if text_queries is None or not len(text_queries) else np.ascontiguousarray(text_queries, np.float32)
    if kind == "ivfpq_disk":
        truth = disk.exact_topk(x, queries, k)
        text_truth = disk.exact_topk(x, texts, k) if texts is not None else None
    else:
        exact = faiss.IndexFlatIP(d)
        exact.add(x)
        _, truth = exact.search(queries, k)
        text_truth = exact.search(texts, k)[1] if texts is not None else None
    if kind == "flat":
        _, p50, p99 = _latency(index, queries[:100], None, k)
        report.recall_at_10, report.latency_p50_ms, report.latency_p99_ms = 1.0, p50, p99
        report.text_recall_at_10 = 1.0 if texts is not None else None
        return index, report
    tune(index, kind, bp, queries, truth, k, recall_target, report,
         text=(texts, text_truth) if texts is not None else None)
    return index, report


def tune(index, kind: str, bp: dict, queries: np.ndarray, truth: np.ndarray, k: int, recall_target: float,
         report: IndexReport, text: Optional[tuple[np.ndarray, np.ndarray]] = None) -> None:
    """The cheapest setting meeting ``recall_target`` against ``truth`` — and, given ``text``
    (queries, their exact top-k), on the text queries too — applied to ``index`` and recorded in
    ``report`` (params, recalls, latency, every candidate tried)."""
    chosen = None
    for ladder in _ladders(kind, bp):  # each ladder: ever costlier settings of one knob
        prev = -1.0
        for setting in ladder:
            params = _apply(index, kind, setting)
            _, found = index.search(queries, k, params=params)
            r = recall_at_k(found, truth, k)
            row = {"param": next(iter(setting.values())), **setting, "recall_at_10": r}
            if text is not None:
                row["text_recall_at_10"] = recall_at_k(index.search(text[0], k, params=params)[1], text[1], k)
            _, p50, p99 = _latency(index, queries[:100], params, k)
            report.tuning.append({**row, "p50_ms": p50})
            r = min(r, row.get("text_recall_at_10", r))  # the target holds for both kinds of query
            if r >= recall_target:
                if chosen is None or chosen[2] > p50:
                    chosen = (setting, row, p50, p99)
                break
            if kind == "ivfpq_disk" and r <= prev + 1e-3:
                break  # this refinement depth has plateaued below the target
            prev = r
    if chosen is None:  # the target is out of reach: keep the best recall we saw, and say so
        best = max(report.tuning, key=lambda t: min(t["recall_at_10"], t.get("text_recall_at_10", 1.0)))
        setting = {k2: v for k2, v in best.items() if k2 not in ("param", "recall_at_10", "text_recall_at_10", "p50_ms")}
        _, p50, p99 = _latency(index, queries[:100], _apply(index, kind, setting), k)
        chosen = (setting, best, p50, p99)
    report.params = dict(chosen[0])
    _apply(index, kind, chosen[0])  # also the default of searches without parameters
    report.recall_at_10, report.latency_p50_ms, report.latency_p99_ms = chosen[1]["recall_at_10"], chosen[2], chosen[3]
    report.text_recall_at_10 = chosen[1].get("text_recall_at_10")


def _ladders(kind: str, bp: dict) -> list[list[dict]]:
    if kind == "hnsw":
        return [[{"efSearch": c} for c in EF_CANDIDATES]]
    nprobes = [c for c in NPROBE_CANDIDATES if c <= bp["nlist"]] or [bp["nlist"]]
    if kind == "ivfpq_disk":  # how many PQ candidates to re-score, and how many lists to probe
        return [[{"nprobe": c, "k_factor": f} for c in nprobes] for f in disk.K_FACTORS]
    return [[{"nprobe": c} for c in nprobes]]


def _apply(index, kind: str, setting: dict):
    """Search parameters for ``setting``; an ``ivfpq_disk`` or sharded index keeps them as its defaults."""
    from cerebro_core.index.shards import ShardedIndex

    if isinstance(index, ShardedIndex):
        index.set_setting(setting)
    elif kind == "ivfpq_disk":
        index.nprobe, index.k_factor = setting["nprobe"], setting["k_factor"]
    return search_params(index, kind, next(iter(setting.values())))


def centroid_baseline(index, x: np.ndarray, seed: int = 0) -> float:
    """Mean distance of (a sample of) the indexed vectors to their IVF centroid; 0 for other kinds."""
    from cerebro_core.index.incremental import centroid_distance

    pick = np.sort(np.random.default_rng(seed).choice(len(x), size=min(len(x), 20000), replace=False))
    return centroid_distance(index, np.asarray(x[pick], dtype=np.float32))


def save(index, bundle_dir: Path) -> Optional[list[dict]]:
    """``index.faiss`` in the bundle (an ``ivfpq_disk`` index's refinement vectors are its
    ``vectors.npy``, written beside it); a sharded index: ``shards/NNNNN/index.faiss``, and the
    entries ``index.json`` lists under ``shards``."""
    from cerebro_core.index.shards import ShardedIndex

    if isinstance(index, ShardedIndex):
        return index.save(bundle_dir)
    if isinstance(index, disk.DiskIVFPQ):
        index.write(bundle_dir / "index.faiss")
    else:
        _faiss().write_index(index, str(bundle_dir / "index.faiss"))


def load(bundle_dir: Path, info: dict, mmap: bool = True):
    """The bundle's index (``info``: its index.json); ``ivfpq_disk`` is memory-mapped unless
    ``mmap=False`` (to add to it), with its tuned settings as defaults."""
    bundle_dir = Path(bundle_dir)
    if info.get("shards"):
        from cerebro_core.index.shards import ShardedIndex

        return ShardedIndex.load(bundle_dir, info["shards"], mmap=mmap)
    if info["kind"] == "ivfpq_disk":
        index = disk.DiskIVFPQ.read(bundle_dir / "index.faiss", bundle_dir / "vectors.npy", mmap=mmap)
        _apply(index, "ivfpq_disk", {"nprobe": index.nprobe, "k_factor": disk.K_FACTOR, **info.get("params", {})})
        return index
    return _faiss().read_index(str(bundle_dir / "index.faiss"))
