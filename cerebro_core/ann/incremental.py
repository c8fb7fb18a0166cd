"""Adding vectors to a built index without a rebuild, and knowing when a rebuild is due.

Flat and HNSW indexes take new vectors directly. IVF indexes (and IVF-PQ) add to their trained
lists until a drift check says the coarse quantizer no longer fits the data:
  - the new vectors' mean distance (1 - inner product) to their nearest centroid exceeds the
    trained baseline by ``DRIFT_RATIO``; or
  - the largest inverted list grows beyond ``IMBALANCE_RATIO`` × the mean list size.
Then the index is rebuilt (retrained) over all vectors, and the run says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

DRIFT_RATIO = 1.25
IMBALANCE_RATIO = 20.0


def centroid_distance(index, x: np.ndarray) -> float:
    ivf = index.ivf()
    if ivf is None or len(x) == 0:
        return 0.0
    import faiss

    D, _ = ivf.quantizer.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    if ivf.metric_type == faiss.METRIC_L2:  # unit vectors: |x - c|² = 2 - 2 x·c (c about unit norm)
        return float(np.mean(D[:, 0] / 2))
    return float(np.mean(1.0 - D[:, 0]))


def list_imbalance(index) -> float:
    ivf = index.ivf()
    if ivf is None or ivf.ntotal == 0:
        return 1.0
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    return float(sizes.max() / max(sizes.mean(), 1e-9))


@dataclass
class AddReport:
    added: int
    rebuilt: bool
    reason: str
    seconds: float
    drift: float = 0.0
    baseline: float = 0.0
    imbalance: float = 1.0


def add_or_rebuild(index, old_vectors: np.ndarray, new_vectors: np.ndarray, baseline: float,
                   rebuild_fn) -> tuple[object, AddReport]:
    """Add ``new_vectors`` to ``index`` (an :class:`~cerebro_core.ann.base.Index` or a sharded one;
    ids continue after the existing ones), or rebuild when IVF drift says so.

    ``rebuild_fn(all_vectors) -> index`` builds from scratch; ``baseline`` is the mean centroid
    distance measured when the IVF index was trained."""
    t0 = time.perf_counter()
    x = np.ascontiguousarray(new_vectors, dtype=np.float32)
    if len(x) == 0:
        return index, AddReport(0, False, "nothing new", 0.0)
    if index.kind.trained:
        drift = centroid_distance(index, x)
        if baseline > 0 and drift > DRIFT_RATIO * baseline:
            allv = np.concatenate([old_vectors.astype(np.float32), x])
            new_index = rebuild_fn(allv)
            return new_index, AddReport(len(x), True, f"drift {drift:.4f} > {DRIFT_RATIO} x baseline {baseline:.4f}",
                                        time.perf_counter() - t0, drift, baseline)
        index.add(x)
        imb = list_imbalance(index)
        if imb > IMBALANCE_RATIO:
            allv = np.concatenate([old_vectors.astype(np.float32), x])
            new_index = rebuild_fn(allv)
            return new_index, AddReport(len(x), True, f"list imbalance {imb:.1f} > {IMBALANCE_RATIO}",
                                        time.perf_counter() - t0, drift, baseline, imb)
        return index, AddReport(len(x), False, "added to trained lists", time.perf_counter() - t0, drift, baseline, imb)
    index.add(x)
    return index, AddReport(len(x), False, "added", time.perf_counter() - t0)
