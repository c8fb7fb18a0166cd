"""Index at scale: ``ivfpq_disk`` (what ``index.kind: auto`` picks when no in-RAM kind fits)
beside the anchor, the same trained IVF-PQ searched the usual FAISS way, all in RAM: lists read
into memory and ``IndexRefine`` over an fp16 copy of the vectors (same codes, same nprobe and
k_factor), on synthetic clustered vectors.

    .venv/bin/python benchmarks/index_scale.py --sizes 1000000 2000000 5000000 --anchor-max 2000000

Each size runs in fresh processes: one builds and tunes (``build_and_tune``: recall target
0.95 vs exact search) and writes the index; another loads it (ours: memory-mapped lists,
vectors read per row with pread; the anchor: in RAM) and measures single-query latency on 2 threads, recall@10 against exact
search on held-out queries, and resident memory (anonymous + mapped pages touched). The data
is one fp16 ``vectors.npy`` of the largest size; smaller sizes are its prefixes.

Prints a Markdown table and a JSON line per row, and projects 10M and 1B from the measured curve.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def status_mb() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024
    return out


class PeakAnon:
    """Peak anonymous RSS, sampled (VmHWM also counts the mapped input's pages)."""

    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, status_mb()["RssAnon"])

    def stop(self) -> float:
        self._stop.set()
        self.t.join()
        return max(self.peak, status_mb()["RssAnon"])


def make_data(path: Path, n: int, d: int, centres: int, seed: int = 0, chunk: int = 100_000) -> None:
    """Clustered unit vectors: a random centre plus noise (cosine to the centre ~0.78)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = c[rng.integers(0, centres, m)] + (0.8 / math.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + m] = x
    out.flush()


def phase_build(a) -> dict:
    import faiss

    from cerebro_core.ann.base import exact_topk, sample_queries
    from cerebro_core.ann.tune import build_and_tune

    faiss.omp_set_num_threads(a.threads)
    allv = np.load(a.data, mmap_mode="r")
    x = allv[:a.n]
    peak = PeakAnon()
    t0 = time.perf_counter()
    index, rep = build_and_tune(x, "ivfpq_disk", 0.95, 1, n_queries=300)
    total = time.perf_counter() - t0
    out_dir = Path(a.work, str(a.n))
    out_dir.mkdir(parents=True, exist_ok=True)
    index.save(out_dir)  # index.faiss
    q = sample_queries(x, a.queries, seed=1)  # held out: not the tuning queries (seed 0)
    t1 = time.perf_counter()
    truth = exact_topk(x, q, 10)
    np.save(out_dir / "queries.npy", q)
    np.save(out_dir / "truth.npy", truth)
    return {"build_s": rep.build_s, "tune_s": total - rep.build_s, "exact_s": time.perf_counter() - t1,
            "build_peak_anon_mb": peak.stop(), "params": rep.params, "build_params": rep.build_params,
            "tuned_recall": rep.recall_at_10, "index_file_mb": os.path.getsize(out_dir / "index.faiss") / 2**20}


def phase_search(a) -> dict:
    import faiss

    from cerebro_core.ann.base import recall_at_k
    from cerebro_core.ann.disk import DiskIVFPQ, VectorFile, read_ivf

    faiss.omp_set_num_threads(a.threads)
    out_dir = Path(a.work, str(a.n))
    params = json.loads(a.params)
    before = status_mb()
    if a.kind == "ivfpq_disk":
        vectors = VectorFile(a.data)[:a.n]
        index = DiskIVFPQ(read_ivf(out_dir / "index.faiss"), vectors,
                          params["k_factor"])
        index.nprobe = params["nprobe"]
        p = faiss.SearchParametersIVF(nprobe=params["nprobe"])
    else:  # the anchor: lists in RAM, IndexRefine over an fp16 copy in RAM
        base = read_ivf(out_dir / "index.faiss", mmap=False)
        refine = faiss.IndexScalarQuantizer(base.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
        src = np.load(a.data, mmap_mode="r")
        for s in range(0, a.n, 100_000):
            refine.add(np.asarray(src[s:min(s + 100_000, a.n)], dtype=np.float32))
        del src
        index = faiss.IndexRefine(base, refine)
        p = faiss.IndexRefineSearchParameters(k_factor=params["k_factor"],
                                              base_index_params=faiss.SearchParametersIVF(nprobe=params["nprobe"]))
    loaded = status_mb()
    q, truth = np.load(out_dir / "queries.npy"), np.load(out_dir / "truth.npy")
    times, found = [], []
    for v in q:
        t0 = time.perf_counter()
        _, ids = index.search(v[None, :], 10, params=p)
        times.append((time.perf_counter() - t0) * 1000)
        found.append(ids[0])
    t = np.array(times)
    after = status_mb()
    return {"recall_at_10": recall_at_k(np.stack(found), truth, 10), "p50_ms": float(np.percentile(t, 50)),
            "p99_ms": float(np.percentile(t, 99)), "load_rss_mb": loaded["VmRSS"] - before["VmRSS"],
            "rss_mb": after["VmRSS"], "rss_anon_mb": after["RssAnon"], "rss_file_mb": after["RssFile"]}


def child(phase: str, a, n: int, kind: str, params: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--n", str(n), "--kind", kind, "--data", str(a.data),
           "--work", str(a.work), "--threads", str(a.threads), "--queries", str(a.queries)]
    if params:
        cmd += ["--params", json.dumps(params)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{phase} n={n} {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fit_power(ns: list[int], ys: list[float]) -> tuple[float, float]:
    """y = c · n^e, least squares in log-log."""
    e, logc = np.polyfit(np.log(ns), np.log(ys), 1)
    return float(math.exp(logc)), float(e)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 5_000_000])
    ap.add_argument("--anchor-max", type=int, default=2_000_000, help="largest size the in-RAM anchor runs at")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--centres", type=int, default=10_000, help="clusters (≥ 100 members each at 1M: the "
                    "10 nearest neighbours are cluster mates, not noise-level ties)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cerebro-index-scale"))
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--phase", choices=["build", "search"], default=None)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--kind", default="ivfpq_disk")
    ap.add_argument("--params", default="{}")
    a = ap.parse_args()
    if a.phase:
        print(json.dumps(phase_build(a) if a.phase == "build" else phase_search(a)))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    a.data = a.data or a.work / f"vectors-{max(a.sizes)}x{a.dim}.npy"
    if not a.data.exists():
        t0 = time.perf_counter()
        make_data(a.data, max(a.sizes), a.dim, a.centres)
        print(f"data: {max(a.sizes):,} × {a.dim} fp16 in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = []
    for n in a.sizes:
        b = child("build", a, n, "ivfpq_disk")
        for kind in ("ivfpq_disk", "in-RAM anchor"):
            if kind != "ivfpq_disk" and n > a.anchor_max:
                continue
            s = child("search", a, n, kind, b["params"])
            row = {"n": n, "kind": kind, **b, **s}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{a.dim}-d vectors, {a.queries} held-out single queries, {a.threads} threads\n")
    print("| n | search | build s | tune s | params | recall@10 | p50 ms | p99 ms | RSS MB (anon + mapped) | peak build anon MB | index file MB |")
    print("|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['kind']} | {r['build_s']:.0f} | {r['tune_s']:.0f} | {r['params']} | "
              f"{r['recall_at_10']:.3f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rss_mb']:.0f} "
              f"({r['rss_anon_mb']:.0f} + {r['rss_file_mb']:.0f}) | {r['build_peak_anon_mb']:.0f} | "
              f"{r['index_file_mb']:.0f} |")
    for n in sorted({r["n"] for r in rows}):
        pair = {r["kind"]: r for r in rows if r["n"] == n}
        if len(pair) == 2:
            o, an = pair["ivfpq_disk"], pair["in-RAM anchor"]
            print(f"n={n:,}: ours/anchor RSS {o['rss_mb'] / an['rss_mb']:.3f}, p50 {o['p50_ms'] / an['p50_ms']:.3f}, "
                  f"recall {o['recall_at_10'] - an['recall_at_10']:+.3f}")
    disk_rows = [r for r in rows if r["kind"] == "ivfpq_disk"]
    if len(disk_rows) >= 2:
        ns = [r["n"] for r in disk_rows]
        cb, eb = fit_power(ns, [r["build_s"] for r in disk_rows])
        cl, el = fit_power(ns, [r["p50_ms"] for r in disk_rows])
        print(f"\nfit: build_s = {cb:.3g} · n^{eb:.3f}; p50_ms = {cl:.3g} · n^{el:.3f}")
        for n in (10_000_000, 1_000_000_000):
            print(f"projection n={n:,}: build {cb * n ** eb:,.0f} s, p50 {cl * n ** el:.2f} ms (one index, 2 threads)")


if __name__ == "__main__":
    main()
