"""An index in N shards: contiguous id ranges, each built and tuned on its own (anywhere: a
shard build reads the vectors from storage and writes its index back), searched together.

A shard holds ids ``start..end-1`` and answers with local ids; :class:`ShardedIndex` searches
every shard, shifts ids by ``start`` and merges by score. A filter's global ids become each
shard's local selection. IVF kinds are trained once, on a sample of all vectors, and every shard
adds its range to a copy of that empty index (FAISS's distributed recipe): the shards share one
coarse quantizer, so at one ``nprobe`` they probe the same lists as one index would. Flat shards
give exactly the top-k of one flat index; HNSW shards are built and tuned on their own. The
merged index is then tuned like one index (one setting for every shard).

How the builds are run is the caller's: ``map_fn(specs) -> results``. The Prefect task layer
maps them as tasks on the configured task runner (threads, or Dask through prefect-dask);
without one they run here, one after another.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cerebro_core.ann.base import INDEX_FILE, Index, IndexReport, faiss_module
from cerebro_core.ann.disk import VectorFile, add_chunks, read_ivf, write_vectors
from cerebro_core.ann.kinds import choose_kind, kind_for
from cerebro_core.ann.tune import build_and_tune, tune_report


@dataclass
class ShardSpec:
    shard: int
    start: int
    end: int
    kind: str
    recall_target: float
    memory_budget_mb: float
    vectors_url: str  # fp16 .npy of all vectors (row = global id)
    out_url: str  # where the shard's index.faiss goes
    seed: int = 0
    trained_url: Optional[str] = None  # IVF kinds: the one trained, empty index every shard adds to


def plan(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ranges of near-equal size covering 0..n-1."""
    edges = np.linspace(0, n, min(shards, max(n, 1)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _local_vectors(storage, url: str, workdir: Path):
    """The vectors file as a memmap: in place when local, else downloaded once into ``workdir``."""
    fs, path = storage.fs(url)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    local = workdir / "vectors.npy"
    storage.get_file(url, local)
    return np.load(local, mmap_mode="r", allow_pickle=False)


def build_shard(spec: ShardSpec, storage) -> dict:
    """Build and tune one shard; its index goes to ``spec.out_url``. Returns its report (JSON)."""
    import os
    import socket

    t0 = time.perf_counter()
    kind = kind_for(spec.kind)
    with tempfile.TemporaryDirectory(prefix="cerebro-shard-") as td:
        x = _local_vectors(storage, spec.vectors_url, Path(td))[spec.start:spec.end]
        if spec.trained_url:  # add this range to the shared trained index
            storage.get_file(spec.trained_url, Path(td) / "trained.faiss")
            raw = read_ivf(Path(td) / "trained.faiss", mmap=False)
            add_chunks(raw, x)
            faiss_module().write_index(raw, str(Path(td) / INDEX_FILE))
            report = IndexReport(kind=spec.kind, n=len(x), dim=x.shape[1], build_s=time.perf_counter() - t0,
                                 memory_mb=kind.estimate_mb(len(x), x.shape[1]))
        else:
            index, report = build_and_tune(x, spec.kind, spec.recall_target, spec.memory_budget_mb, seed=spec.seed)
            index.save(Path(td))
        storage.put_file(Path(td) / INDEX_FILE, spec.out_url)
    return {"shard": spec.shard, "start": spec.start, "end": spec.end, "report": asdict(report),
            "seconds": time.perf_counter() - t0, "host": socket.gethostname(), "pid": os.getpid()}


class ShardedIndex:
    """N shards, each an :class:`~cerebro_core.ann.base.Index` over ids ``start..end-1``; the same
    handle as one index (search with an id filter, a setting, add, save), so nothing outside
    this module knows about shards."""

    def __init__(self, shards: list[tuple[Index, int, int]]):
        self.shards = shards  # (index, start, end) in id order
        self.kind = shards[0][0].kind if shards else kind_for("flat")

    @property
    def ntotal(self) -> int:
        return sum(s[0].ntotal for s in self.shards)

    @property
    def setting(self) -> dict:
        return self.shards[-1][0].setting if self.shards else {}

    def search(self, q: np.ndarray, k: int, ids: Optional[np.ndarray] = None):
        """Top ``k`` over all shards (``ids``: only these global ids), each at its setting."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        Ds, Is = [], []
        for index, start, end in self.shards:
            local = None
            if ids is not None:
                local = ids[(ids >= start) & (ids < end)] - start
                if not len(local):
                    continue
            kk = min(k, index.ntotal)
            if kk <= 0:
                continue
            D, I = index.search(q, kk, ids=local)
            Ds.append(D)
            Is.append(np.where(I >= 0, I + start, -1))
        if not Ds:
            return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
        D, I = np.concatenate(Ds, axis=1), np.concatenate(Is, axis=1)
        D = np.where(I >= 0, D, -np.inf)
        top = np.argsort(-D, axis=1, kind="stable")[:, :k]
        D, I = np.take_along_axis(D, top, 1), np.take_along_axis(I, top, 1)
        if D.shape[1] < k:
            pad = k - D.shape[1]
            D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
        return D.astype(np.float32), I.astype(np.int64)

    def set_setting(self, setting: dict) -> None:
        """One search setting for every shard (what tuning the merged index chooses)."""
        for index, _, _ in self.shards:
            index.set_setting(setting)

    def add(self, x: np.ndarray) -> None:
        """New ids continue after the last shard's end: they go to the last shard."""
        index, start, end = self.shards[-1]
        index.add(x)
        self.shards[-1] = (index, start, end + len(x))

    def ivf(self):
        """The last shard's lists: where new vectors go (the shards share one quantizer)."""
        return self.shards[-1][0].ivf()

    def reconstruct(self, i: int) -> np.ndarray:
        for index, start, end in self.shards:
            if start <= i < end:
                return index.reconstruct(int(i - start))
        raise KeyError(i)

    def save(self, bundle_dir: Path) -> list[dict]:
        """``shards/NNNNN/index.faiss``; returns the entries ``index.json`` lists under ``shards``."""
        (bundle_dir / "shards").mkdir(parents=True, exist_ok=True)
        out = []
        for n, (index, start, end) in enumerate(self.shards):
            d = bundle_dir / "shards" / f"{n:05d}"
            d.mkdir(exist_ok=True)
            index.save(d)
            out.append({"path": f"shards/{n:05d}", "start": start, "end": end, "kind": index.kind.name,
                        "params": index.setting})
        return out

    @classmethod
    def load(cls, bundle_dir: Path, entries: list[dict], mmap: bool = True) -> "ShardedIndex":
        shards, vectors = [], None
        for e in entries:
            kind = kind_for(e["kind"])
            rows = None
            if kind.needs_vectors:  # the shards share the bundle's vectors.npy
                if vectors is None:
                    vectors = (VectorFile(bundle_dir / "vectors.npy") if mmap
                               else np.load(bundle_dir / "vectors.npy", allow_pickle=False))
                rows = vectors[e["start"]:e["end"]]
            shards.append((Index(kind, kind.read(bundle_dir / e["path"], mmap, rows), e["params"]), e["start"], e["end"]))
        return cls(shards)


def build_sharded(vectors: np.ndarray, shards: int, kind: str, recall_target: float, memory_budget_mb: float,
                  storage, work_url: str, map_fn: Optional[Callable[[list[ShardSpec]], list[dict]]] = None,
                  seed: int = 0, text_queries: Optional[np.ndarray] = None) -> tuple[ShardedIndex, IndexReport]:
    """Write ``vectors`` to ``work_url``, build ``shards`` shards through ``map_fn`` (default:
    here, in turn), load them back, and tune the merged index like one index: one setting for
    every shard, the cheapest whose merged recall@10 meets ``recall_target``."""
    n, d = vectors.shape
    k_ = choose_kind(-(-n // shards), d, memory_budget_mb, kind)  # per shard: what one shard needs
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cerebro-shards-") as td:
        write_vectors(Path(td) / "vectors.npy", vectors)
        vectors_url = f"{work_url.rstrip('/')}/vectors.npy"
        storage.put_file(Path(td) / "vectors.npy", vectors_url)
        trained_url, bp = None, {}
        if k_.trained and n:  # one trained, empty index that every shard adds its range to
            trained, bp = k_.train_empty(vectors, n, seed)
            faiss_module().write_index(trained, str(Path(td) / "trained.faiss"))
            trained_url = f"{work_url.rstrip('/')}/trained.faiss"
            storage.put_file(Path(td) / "trained.faiss", trained_url)
        specs = [ShardSpec(i, a, b, k_.name, recall_target, memory_budget_mb, vectors_url,
                           f"{work_url.rstrip('/')}/shard-{i:05d}.faiss", seed, trained_url)
                 for i, (a, b) in enumerate(plan(n, shards))]
        results = sorted((map_fn or (lambda ss: [build_shard(s, storage) for s in ss]))(specs), key=lambda r: r["shard"])
        parts = []
        for r in results:
            sd = Path(td) / f"shard-{r['shard']:05d}"
            sd.mkdir()
            storage.get_file(specs[r["shard"]].out_url, sd / INDEX_FILE)
            raw = k_.read(sd, mmap=False, vectors=vectors[r["start"]:r["end"]])
            parts.append((Index(k_, raw, r["report"]["params"]), r["start"], r["end"]))
    sharded = ShardedIndex(parts)
    report = IndexReport(kind=k_.name, n=n, dim=d, build_s=time.perf_counter() - t0,
                         memory_mb=sum(r["report"]["memory_mb"] for r in results))
    report.build_params = {**bp, "shards": [{k: r[k] for k in ("shard", "start", "end", "seconds", "host", "pid")}
                                      | {"params": r["report"]["params"], "recall_at_10": r["report"]["recall_at_10"],
                                         "build_params": r["report"]["build_params"]} for r in results]}
    if n:  # the merged index, on image and text queries alike
        tune_report(sharded, vectors, report, recall_target, text_queries, seed=seed, build_params=bp)
    return sharded, report
