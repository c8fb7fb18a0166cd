"""Incremental add vs full rebuild, per index kind.

    .venv/bin/python benchmarks/reindex.py [--n 150000] [--add 1000] [--dim 512]

For each kind cerebro builds (flat, hnsw, ivf, ivfpq): build over N synthetic clustered vectors,
then time (a) adding 1,000 new vectors from the same distribution through
cerebro_core.ann.incremental.add_or_rebuild (drift check included) and (b) a full rebuild
over all N + 1,000. Target: incremental ≤ 5 % of the rebuild time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def clustered(n: int, d: int, centers: np.ndarray, rng) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150_000)
    ap.add_argument("--add", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    from cerebro_core.ann.base import Index
    from cerebro_core.ann.kinds import kind_for
    from cerebro_core.ann.tune import centroid_baseline
    from cerebro_core.ann.incremental import add_or_rebuild

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1024, args.dim)).astype(np.float32)
    x = clustered(args.n, args.dim, centers, rng)
    new = clustered(args.add, args.dim, centers, rng)
    print(f"{args.n} x {args.dim} vectors, adding {args.add}\n")
    print("| kind | build N (s) | incremental add (ms) | rebuilt? | full rebuild N+add (s) | add / rebuild |")
    print("|---|---:|---:|---|---:|---:|")
    for kind in ("flat", "hnsw", "ivf", "ivfpq"):
        t0 = time.perf_counter()
        k_ = kind_for(kind)
        index = Index(k_, k_.build(x)[0])
        build_s = time.perf_counter() - t0
        baseline = centroid_baseline(index, x)
        index, rep = add_or_rebuild(index, x, new, baseline, lambda v: Index(k_, k_.build(v)[0]))
        t0 = time.perf_counter()
        k_.build(np.concatenate([x, new]))
        rebuild_s = time.perf_counter() - t0
        print(f"| {kind} | {build_s:.2f} | {rep.seconds * 1000:.1f} | {'yes: ' + rep.reason if rep.rebuilt else 'no'} | "
              f"{rebuild_s:.2f} | {rep.seconds / rebuild_s:.2%} |", flush=True)


if __name__ == "__main__":
    main()
