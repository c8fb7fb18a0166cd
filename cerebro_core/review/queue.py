"""Which items a person should verify, and how verifications reach a loaded index.

:func:`propose` picks the items whose label the model is least sure of (the smallest margin
between its top two classes, which index and reindex store per item as ``species_margin``; an
older bundle without it: the lowest top-1 probability), spread so that one review session covers
the collection: at most one item per burst (``sequence_id``) or near-duplicate group, and a
fair share per predicted class and per cluster of the image embeddings (k-means) before any
class or cluster gets more.

:func:`apply` gives a loaded :class:`~cerebro_core.search.searcher.Searcher` the latest
verifications, matched to its items by content hash.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cerebro_core.review.store import Verification

POOL = 4096  # candidates clustered per queue


def clusters(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A k-means cluster per row (FAISS), ``n`` clusters at most."""
    import faiss

    m = len(vectors)
    n = max(1, min(n, m))
    if n == 1:
        return np.zeros(m, dtype=np.int64)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], n, niter=20, seed=seed, verbose=False, min_points_per_centroid=1,
                      max_points_per_centroid=POOL)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0].astype(np.int64)


def propose(uncertainty: np.ndarray, classes: np.ndarray, cluster: np.ndarray, groups: list[np.ndarray],
            k: int) -> list[int]:
    """Up to ``k`` row positions, most uncertain (lowest ``uncertainty``) first, spread as the
    module doc says: no two rows share a key of any of ``groups``; first pass at most
    ceil(k / classes) per class and ceil(k / clusters) per cluster, then the rest by uncertainty."""
    u = np.where(np.isnan(uncertainty), np.inf, uncertainty)
    order = np.argsort(u, kind="stable")
    cap_class = math.ceil(k / max(1, len(np.unique(classes))))
    cap_cluster = math.ceil(k / max(1, len(np.unique(cluster))))
    picked: list[int] = []
    taken: set = set()
    used: list[set] = [set() for _ in groups]
    per_class: dict = {}
    per_cluster: dict = {}
    for capped in (True, False):
        for j in order:
            j = int(j)
            if len(picked) >= k:
                return picked
            if j in taken or any(g[j] in s for g, s in zip(groups, used)):
                continue
            c, cl = classes[j], cluster[j]
            if capped and (per_class.get(c, 0) >= cap_class or per_cluster.get(cl, 0) >= cap_cluster):
                continue
            picked.append(j)
            taken.add(j)
            for g, s in zip(groups, used):
                s.add(g[j])
            per_class[c] = per_class.get(c, 0) + 1
            per_cluster[cl] = per_cluster.get(cl, 0) + 1
    return picked


def review_queue(searcher, k: int, mask: Optional[np.ndarray] = None, ranked: Optional[list[int]] = None) -> list[dict]:
    """The ``k`` items to verify next among the unverified ones (``mask``: those passing the
    filters; ``ranked``: a query's matches, best first), as hits with their ``margin`` and
    ``cluster``."""
    cols = searcher.columns
    keep = ~cols.verified if mask is None else (mask & ~cols.verified)
    cand = np.array([i for i in ranked if keep[i]], dtype=np.int64) if ranked is not None else np.flatnonzero(keep)
    if not len(cand):
        return []
    margin = cols.species_margin if not np.all(np.isnan(cols.species_margin)) else cols.model_species_score
    pick, u, cl = choose(cand, margin, cols.model_species.codes, lambda rows: np.stack(
        [searcher.vector_of(int(i)) for i in rows]), [cols.sequence_key, cols.duplicate_key], k)
    out = []
    for i, ui, c in zip(pick, u, cl):
        h = searcher.hit(int(i), float("nan"))
        h.update(score=None, margin=None if math.isinf(ui) else float(ui), cluster=int(c))
        out.append(h)
    return out


def choose(cand: np.ndarray, margin: np.ndarray, classes: np.ndarray, vectors: Callable[[np.ndarray], np.ndarray],
           groups: list[np.ndarray], k: int) -> tuple[list[int], list[float], list[int]]:
    """The queue's choice among the rows ``cand``: the :data:`POOL` least sure (``margin``), clustered
    (k-means on ``vectors(rows)``), then :func:`propose` spread over predicted ``classes``, clusters and
    ``groups``. Returns (rows, their margins, their clusters), in queue order."""
    u = np.where(np.isnan(margin[cand]), np.inf, margin[cand])
    if len(cand) > POOL:  # the least sure
        cand = cand[np.argsort(u, kind="stable")[:POOL]]
        u = np.where(np.isnan(margin[cand]), np.inf, margin[cand])
    cl = clusters(vectors(cand), min(k, max(1, int(math.sqrt(len(cand))))))
    pick = propose(u, classes[cand], cl, [g[cand] for g in groups], k)
    return [int(cand[j]) for j in pick], [float(u[j]) for j in pick], [int(cl[j]) for j in pick]


def apply(searcher, latest: dict[str, Verification]) -> int:
    """Give ``searcher`` the verifications in ``latest`` (``{sha256: Verification}``) of its items;
    how many of its items are verified."""
    col = searcher.rows.column("sha256")
    by_id: dict[int, dict] = {}
    if col is not None and latest:
        keys = list(latest)
        pos = pc.fill_null(pc.index_in(col.cast(pa.string()), value_set=pa.array(keys, pa.string())), -1)
        pos = pos.to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(pos >= 0):
            v = latest[keys[pos[i]]]
            by_id[int(i)] = {"label": v.label, "reviewer": v.reviewer, "time": v.time}
    searcher.set_verified(by_id)
    return len(by_id)
