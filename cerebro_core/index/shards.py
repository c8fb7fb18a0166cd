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

from cerebro_core.index import disk
from cerebro_core.index.build import IndexReport, build_and_tune, estimate_mb, load, save, search_params, train_empty


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

    import faiss

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cerebro-shard-") as td:
        x = _local_vectors(storage, spec.vectors_url, Path(td))[spec.start:spec.end]
        if spec.trained_url:  # add this range to the shared trained index
            storage.get_file(spec.trained_url, Path(td) / "trained.faiss")
            index = disk.read_ivf(Path(td) / "trained.faiss", mmap=False)
            disk.add_chunks(index, x)
            faiss.write_index(index, str(Path(td) / "index.faiss"))
            report = IndexReport(kind=spec.kind, n=len(x), dim=x.shape[1], build_s=time.perf_counter() - t0,
                                 memory_mb=estimate_mb(spec.kind, len(x), x.shape[1]))
        else:
            index, report = build_and_tune(x, spec.kind, spec.recall_target, spec.memory_budget_mb, seed=spec.seed)
            save(index, Path(td))
        storage.put_file(Path(td) / "index.faiss", spec.out_url)
    return {"shard": spec.shard, "start": spec.start, "end": spec.end, "report": asdict(report),
            "seconds": time.perf_counter() - t0, "host": socket.gethostname(), "pid": os.getpid()}


class ShardedIndex:
    def __init__(self, shards: list[tuple[object, int, int, str, dict]]):
        """``shards``: (index, start, end, kind, tuned params) in id order."""
        self.shards = shards

    @property
    def ntotal(self) -> int:
        return sum(int(s[0].ntotal) for s in self.shards)

    def search(self, q: np.ndarray, k: int, params=None, ids: Optional[np.ndarray] = None):
        """Top ``k`` over all shards (``ids``: only these global ids; ``params`` is not used:
        each shard searches with its own tuned setting)."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        Ds, Is = [], []
        for index, start, end, kind, p in self.shards:
            sel = None
            if ids is not None:
                local = ids[(ids >= start) & (ids < end)] - start
                if not len(local):
                    continue
                import faiss

                sel = faiss.IDSelectorBatch(local)
            kk = min(k, int(index.ntotal))
            if kk <= 0:
                continue
            D, I = index.search(q, kk, params=search_params(index, kind, next(iter(p.values()), None), sel=sel))
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
        for n, (index, start, end, kind, _) in enumerate(self.shards):
            if kind == "ivfpq_disk":
                index.nprobe, index.k_factor = setting["nprobe"], setting["k_factor"]
            self.shards[n] = (index, start, end, kind, dict(setting))

    def add(self, x: np.ndarray) -> None:
        """New ids continue after the last shard's end: they go to the last shard."""
        index, start, end, kind, p = self.shards[-1]
        index.add(np.ascontiguousarray(x, dtype=np.float32) if kind != "ivfpq_disk" else x)
        self.shards[-1] = (index, start, end + len(x), kind, p)

    def reconstruct(self, i: int) -> np.ndarray:
        for index, start, end, _, _ in self.shards:
            if start <= i < end:
                return index.reconstruct(int(i - start))
        raise KeyError(i)

    def save(self, bundle_dir: Path) -> list[dict]:
        (bundle_dir / "shards").mkdir(parents=True, exist_ok=True)
        out = []
        for n, (index, start, end, kind, p) in enumerate(self.shards):
            d = bundle_dir / "shards" / f"{n:05d}"
            d.mkdir(exist_ok=True)
            save(index, d)
            out.append({"path": f"shards/{n:05d}", "start": start, "end": end, "kind": kind, "params": p})
        return out

    @classmethod
    def load(cls, bundle_dir: Path, entries: list[dict], mmap: bool = True) -> "ShardedIndex":
        shards = []
        vectors = None
        for e in entries:
            d = bundle_dir / e["path"]
            if e["kind"] == "ivfpq_disk":  # the shards share the bundle's vectors.npy
                if vectors is None:
                    vectors = (disk.VectorFile(bundle_dir / "vectors.npy") if mmap
                               else np.load(bundle_dir / "vectors.npy", allow_pickle=False))
                ivf = disk.read_ivf(d / "index.faiss", mmap)
                index = disk.DiskIVFPQ(ivf, vectors[e["start"]:e["end"]], e["params"].get("k_factor", disk.K_FACTOR))
                index.nprobe = e["params"].get("nprobe", index.nprobe)
            else:
                index = load(d, {"kind": e["kind"], "params": e["params"]})
            shards.append((index, e["start"], e["end"], e["kind"], e["params"]))
        return cls(shards)


def build_sharded(vectors: np.ndarray, shards: int, kind: str, recall_target: float, memory_budget_mb: float,
                  storage, work_url: str, map_fn: Optional[Callable[[list[ShardSpec]], list[dict]]] = None,
                  seed: int = 0, text_queries: Optional[np.ndarray] = None) -> tuple[ShardedIndex, IndexReport]:
    """Write ``vectors`` to ``work_url``, build ``shards`` shards through ``map_fn`` (default:
    here, in turn), load them back, and tune the merged index like one index: one setting for
    every shard, the cheapest whose merged recall@10 meets ``recall_target``."""
    from cerebro_core.index.build import _latency, choose_kind, tune, sample_queries
    from cerebro_core.index.publish import write_vectors

    n, d = vectors.shape
    kind = choose_kind(-(-n // shards), d, memory_budget_mb, kind)  # per shard: what one shard needs
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cerebro-shards-") as td:
        write_vectors(Path(td) / "vectors.npy", vectors)
        vectors_url = f"{work_url.rstrip('/')}/vectors.npy"
        storage.put_file(Path(td) / "vectors.npy", vectors_url)
        trained_url, bp = None, {}
        if kind in ("ivf", "ivfpq", "ivfpq_disk") and n:
            import faiss

            trained, bp = train_empty(vectors, kind, n, seed)
            faiss.write_index(trained, str(Path(td) / "trained.faiss"))
            trained_url = f"{work_url.rstrip('/')}/trained.faiss"
            storage.put_file(Path(td) / "trained.faiss", trained_url)
        specs = [ShardSpec(i, a, b, kind, recall_target, memory_budget_mb, vectors_url,
                           f"{work_url.rstrip('/')}/shard-{i:05d}.faiss", seed, trained_url)
                 for i, (a, b) in enumerate(plan(n, shards))]
        results = sorted((map_fn or (lambda ss: [build_shard(s, storage) for s in ss]))(specs), key=lambda r: r["shard"])
        parts = []
        for r in results:
            sd = Path(td) / f"shard-{r['shard']:05d}"
            sd.mkdir()
            storage.get_file(specs[r["shard"]].out_url, sd / "index.faiss")
            if kind == "ivfpq_disk":
                import faiss

                index = disk.DiskIVFPQ(disk.read_ivf(sd / "index.faiss", mmap=False), vectors[r["start"]:r["end"]])
            else:
                index = load(sd, {"kind": kind, "params": r["report"]["params"]})
            parts.append((index, r["start"], r["end"], kind, r["report"]["params"]))
    sharded = ShardedIndex(parts)
    wall = time.perf_counter() - t0
    report = IndexReport(kind=kind, n=n, dim=d, build_s=wall, memory_mb=sum(r["report"]["memory_mb"] for r in results))
    report.build_params = {**bp, "shards": [{k: r[k] for k in ("shard", "start", "end", "seconds", "host", "pid")}
                                      | {"params": r["report"]["params"], "recall_at_10": r["report"]["recall_at_10"],
                                         "build_params": r["report"]["build_params"]} for r in results]}
    if n:
        q = sample_queries(vectors, 300, seed)
        k = min(10, n)
        texts = None if text_queries is None or not len(text_queries) else np.ascontiguousarray(text_queries, np.float32)
        if kind == "flat":
            report.recall_at_10 = 1.0
            report.text_recall_at_10 = 1.0 if texts is not None else None
            _, report.latency_p50_ms, report.latency_p99_ms = _latency(sharded, q[:100], None, k)
        else:  # the merged index, on image and text queries alike
            tune(sharded, kind, bp or {"nlist": 1}, q, disk.exact_topk(vectors, q, k), k, recall_target, report,
                 text=(texts, disk.exact_topk(vectors, texts, k)) if texts is not None else None)
    return sharded, report


def build_index(icfg, vectors: np.ndarray, storage, work_url: str,
                map_fn: Optional[Callable[[list[ShardSpec]], list[dict]]] = None,
                text_queries: Optional[np.ndarray] = None):
    """What ``index.*`` asks for: one index, or ``index.shards`` shards built through ``map_fn``,
    tuned on image and (given) text queries."""
    if icfg.shards > 1:
        return build_sharded(vectors, icfg.shards, icfg.kind, icfg.recall_target, icfg.memory_budget_mb, storage,
                             work_url, map_fn, text_queries=text_queries)
    return build_and_tune(vectors, icfg.kind, icfg.recall_target, icfg.memory_budget_mb, text_queries=text_queries)
