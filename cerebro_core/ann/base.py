"""The protocol every index kind implements (:class:`IndexKind`), and the handle every built or
loaded index is (:class:`Index`): what tuning, search, adding and saving use, whatever the kind.

A kind is one small class in its own file, registered in :mod:`cerebro_core.ann.kinds` under
the name ``index.kind`` gives. It says how to build, train, size, tune (its ladders of ever
costlier search settings), search (FAISS parameters with an ID selector), add to, save and load
its FAISS structure; nothing outside the kind's file branches on its name.
:class:`~cerebro_core.ann.sharded.ShardedIndex` offers the same handle over N shards.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

INDEX_FILE = "index.faiss"


@dataclass
class IndexReport:
    kind: str
    n: int
    dim: int
    params: dict = field(default_factory=dict)  # the search setting chosen (efSearch / nprobe / k_factor)
    build_params: dict = field(default_factory=dict)
    recall_at_10: float = 1.0  # image queries (database vectors, perturbed)
    text_recall_at_10: Optional[float] = None  # text queries (the vocabulary's prompts), when tuned on them
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    build_s: float = 0.0
    memory_mb: float = 0.0
    tuning: list = field(default_factory=list)  # every setting tried: (param, recall, p50 ms)
    gpu: bool = False


def faiss_module():
    import faiss

    return faiss


def gpu_count() -> int:
    f = faiss_module()
    return f.get_num_gpus() if hasattr(f, "get_num_gpus") else 0


def as_f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def training_sample(vectors, size: int, seed: int = 0) -> np.ndarray:
    """Up to ``size`` rows of ``vectors`` (read in row order: a memmap reads only those), as float32."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(vectors), size=min(len(vectors), size), replace=False))
    return as_f32(vectors[pick])


class IndexKind:
    """One FAISS index kind. ``raw`` below is the kind's own structure (a FAISS index, or
    :class:`~cerebro_core.ann.disk.DiskIVFPQ`)."""

    name: ClassVar[str]
    trained: ClassVar[bool] = False  # IVF family: trained once; shards add to copies; drift-checked on add
    exact: ClassVar[bool] = False  # no setting to tune: recall is 1
    needs_vectors: ClassVar[bool] = False  # refined from the bundle's vectors.npy
    in_ram: ClassVar[bool] = True  # built from one float32 copy (else read in chunks: a memmap will do)
    stop_on_plateau: ClassVar[bool] = False  # a ladder stops when recall stops rising

    def estimate_mb(self, n: int, d: int) -> float:
        """Memory the index needs while searching."""
        raise NotImplementedError

    def build(self, vectors, seed: int = 0) -> tuple[object, dict, bool]:
        """(raw index over ``vectors``, build params, built on a GPU). Trained kinds: trained on a
        sample, then everything added."""
        raw, bp = self.train_empty(vectors, len(vectors), seed)
        self.add(raw, vectors)
        return raw, bp, False

    def train_empty(self, vectors, n: int, seed: int = 0) -> tuple[object, dict]:
        """Trained kinds: the index for ``n`` vectors, trained on a sample of ``vectors``, still empty."""
        raise TypeError(f"a {self.name} index is not trained")

    def ladders(self, build_params: dict) -> list[list[dict]]:
        """Ladders of ever costlier search settings, tried in turn by tuning."""
        return []

    def params(self, raw, setting: dict, sel=None):
        """FAISS search parameters for ``setting`` with the ID selector ``sel`` (or None)."""
        return faiss_module().SearchParameters(sel=sel) if sel is not None else None

    def apply(self, raw, setting: dict) -> None:
        """Make ``setting`` the raw index's own default (kinds that keep it on the structure)."""

    def add(self, raw, x) -> None:
        raw.add(as_f32(x))

    def ivf(self, raw):
        """The IVF part (coarse quantizer, lists) for drift checks; None for untrained kinds."""
        return None

    def write(self, raw, folder: Path) -> None:
        faiss_module().write_index(raw, str(Path(folder) / INDEX_FILE))

    def read(self, folder: Path, mmap: bool = True, vectors=None):
        """The raw index saved in ``folder`` (``vectors``: kinds refined from them; default the folder's)."""
        return faiss_module().read_index(str(Path(folder) / INDEX_FILE))


class Index:
    """A built or loaded index of one kind with its search setting (the tuned one by default)."""

    def __init__(self, kind: IndexKind, raw, setting: Optional[dict] = None):
        self.kind, self.raw, self.setting = kind, raw, {}
        self.set_setting(setting or {})

    @property
    def ntotal(self) -> int:
        return int(self.raw.ntotal)

    def set_setting(self, setting: dict) -> None:
        self.setting = dict(setting)
        self.kind.apply(self.raw, self.setting)

    def search(self, q: np.ndarray, k: int, ids: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the top ``k`` at the current setting; ``ids``: only these ids."""
        sel = faiss_module().IDSelectorBatch(np.asarray(ids, dtype=np.int64)) if ids is not None else None
        return self.raw.search(as_f32(q), k, params=self.kind.params(self.raw, self.setting, sel))

    def add(self, x) -> None:
        """New vectors; their ids continue after the existing ones."""
        self.kind.add(self.raw, x)

    def reconstruct(self, i: int) -> np.ndarray:
        return self.raw.reconstruct(int(i))

    def reconstruct_n(self, start: int, n: int) -> np.ndarray:
        """Rows ``start..start+n-1`` as stored (kinds that keep full vectors)."""
        return self.raw.reconstruct_n(int(start), int(n))

    def ivf(self):
        return self.kind.ivf(self.raw)

    def save(self, folder: Path) -> Optional[list[dict]]:
        """``index.faiss`` in ``folder``; returns None (a sharded index returns its shard entries)."""
        self.kind.write(self.raw, folder)
        return None


def sample_queries(vectors, n_queries: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Queries near the data (perturbed database vectors), so recall is measured where it matters."""
    rng = np.random.default_rng(seed)
    q = as_f32(vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)])
    q = q + noise * rng.standard_normal(q.shape).astype(np.float32) / math.sqrt(q.shape[1])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def exact_topk(vectors, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Exact inner-product top-k ids over ``vectors`` read in chunks (no full fp32 copy): a chunk's
    scores stay under ~200 MB whatever the number of queries (10k text prompts: 5,000 rows)."""
    q = as_f32(queries)
    chunk = max(1_000, min(chunk, 50_000_000 // max(len(q), 1)))
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for s in range(0, len(vectors), chunk):
        block = np.asarray(vectors[s:s + chunk], dtype=np.float32)
        sc = q @ block.T
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + s], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def latency(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, float, float]:
    """(ids, p50 ms, p99 ms) of one-query searches at the index's current setting."""
    times, ids = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, found = index.search(q[None, :], k)
        times.append(time.perf_counter() - t0)
        ids.append(found[0])
    t = np.array(times) * 1000
    return np.stack(ids), float(np.percentile(t, 50)), float(np.percentile(t, 99))
