"""Building an index and tuning its search setting to a recall target against exact search, with
the measured recall and latency stored beside it (:class:`~cerebro_core.ann.base.IndexReport`).

Vectors are L2-normalised, so inner product is cosine similarity. The id of a vector is its row.
The kinds (:mod:`cerebro_core.ann.kinds`): ``flat`` (exact), ``hnsw``, ``ivf``, ``ivfpq`` and
``ivfpq_disk`` (larger than RAM); each says how it is built and which settings tuning tries.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from cerebro_core.ann.incremental import centroid_distance
from cerebro_core.ann.base import Index, IndexReport, as_f32, exact_topk, latency, recall_at_k, sample_queries
from cerebro_core.ann.kinds import choose_kind


def build_and_tune(
    vectors: np.ndarray, kind: str = "auto", recall_target: float = 0.95, memory_budget_mb: float = 4096,
    n_queries: int = 300, seed: int = 0, text_queries: Optional[np.ndarray] = None,
) -> tuple[Index, IndexReport]:
    """Build the index and pick the cheapest search setting meeting ``recall_target`` (recall@10
    vs exact inner-product search) on image queries and, given ``text_queries`` (normalised text
    embeddings: what users send, far from the image vectors), on those too."""
    n, d = vectors.shape
    k_ = choose_kind(n, d, memory_budget_mb, kind)
    x = as_f32(vectors) if k_.in_ram else vectors
    t0 = time.perf_counter()
    raw, bp, on_gpu = k_.build(x, seed)
    index = Index(k_, raw)
    report = IndexReport(kind=k_.name, n=n, dim=d, build_params=bp, build_s=time.perf_counter() - t0,
                         memory_mb=k_.estimate_mb(n, d), gpu=on_gpu)
    if k_.trained and n:
        report.build_params["centroid_distance"] = centroid_baseline(index, x, seed)  # the drift baseline
    if n:
        tune_report(index, vectors, report, recall_target, text_queries, n_queries, seed, bp)
    return index, report


def tune_report(index, vectors, report: IndexReport, recall_target: float, text_queries: Optional[np.ndarray],
                n_queries: int = 300, seed: int = 0, build_params: Optional[dict] = None) -> None:
    """Tune ``index`` (an :class:`Index` or a sharded one) over ``vectors`` on image queries near
    the data and the given text queries; an exact kind only has its latency measured."""
    queries = sample_queries(vectors, n_queries, seed)
    k = min(10, len(vectors))
    texts = None if text_queries is None or not len(text_queries) else as_f32(text_queries)
    if index.kind.exact:
        _, report.latency_p50_ms, report.latency_p99_ms = latency(index, queries[:100], k)
        report.recall_at_10 = 1.0
        report.text_recall_at_10 = 1.0 if texts is not None else None
        return
    text = (texts, exact_topk(vectors, texts, k)) if texts is not None else None
    tune(index, index.kind.ladders(build_params or {"nlist": 1}), queries, exact_topk(vectors, queries, k), k,
         recall_target, report, text)


def tune(index, ladders: list[list[dict]], queries: np.ndarray, truth: np.ndarray, k: int, recall_target: float,
         report: IndexReport, text: Optional[tuple[np.ndarray, np.ndarray]] = None) -> None:
    """The cheapest setting of ``ladders`` meeting ``recall_target`` against ``truth`` — and, given
    ``text`` (queries, their exact top-k), on the text queries too — set on ``index`` and recorded in
    ``report`` (params, recalls, latency, every setting tried)."""
    chosen = None
    for ladder in ladders:  # each ladder: ever costlier settings of one knob
        prev = -1.0
        for setting in ladder:
            index.set_setting(setting)
            r = recall_at_k(index.search(queries, k)[1], truth, k)
            row = {"param": next(iter(setting.values())), **setting, "recall_at_10": r}
            if text is not None:
                row["text_recall_at_10"] = recall_at_k(index.search(text[0], k)[1], text[1], k)
            _, p50, p99 = latency(index, queries[:100], k)
            report.tuning.append({**row, "p50_ms": p50})
            r = min(r, row.get("text_recall_at_10", r))  # the target holds for both kinds of query
            if r >= recall_target:
                if chosen is None or chosen[2] > p50:
                    chosen = (setting, row, p50, p99)
                break
            if index.kind.stop_on_plateau and r <= prev + 1e-3:
                break  # this knob has plateaued below the target
            prev = r
    if chosen is None:  # the target is out of reach: keep the best recall seen, and say so
        best = max(report.tuning, key=lambda t: min(t["recall_at_10"], t.get("text_recall_at_10", 1.0)))
        setting = {k2: v for k2, v in best.items() if k2 not in ("param", "recall_at_10", "text_recall_at_10", "p50_ms")}
        index.set_setting(setting)
        _, p50, p99 = latency(index, queries[:100], k)
        chosen = (setting, best, p50, p99)
    index.set_setting(chosen[0])
    report.params = dict(chosen[0])
    report.recall_at_10, report.latency_p50_ms, report.latency_p99_ms = chosen[1]["recall_at_10"], chosen[2], chosen[3]
    report.text_recall_at_10 = chosen[1].get("text_recall_at_10")


def measured_recall(index, vectors: np.ndarray, n_queries: int = 200) -> float:
    """recall@10 of ``index`` at its setting, on queries near ``vectors``."""
    if index.kind.exact or len(vectors) == 0:
        return 1.0
    q = sample_queries(vectors, n_queries)
    k = min(10, len(vectors))
    return recall_at_k(index.search(q, k)[1], exact_topk(vectors, q, k), k)


def centroid_baseline(index, x, seed: int = 0) -> float:
    """Mean distance of (a sample of) the indexed vectors to their IVF centroid; 0 for other kinds."""
    pick = np.sort(np.random.default_rng(seed).choice(len(x), size=min(len(x), 20000), replace=False))
    return centroid_distance(index, as_f32(x[pick]))
