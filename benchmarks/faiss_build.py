"""FAISS build time for the original collection's size: 152,982 × 512 clustered vectors.

    python benchmarks/faiss_build.py                 # every kind the index stage can pick
    python benchmarks/faiss_build.py --n 5000        # smoke

Ours: each kind's ``build`` (:mod:`cerebro_core.ann.kinds`) (IVF trains and adds on the GPUs when
faiss has them) and ``build_and_tune`` for what ``index.kind: auto`` ships (build + recall
tuning); anchor: a plain ``IndexFlatIP`` (the original system's exact index). Writes one row per
kind: seconds, whether a GPU did the work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=152_982)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from search_latency import clustered

    from cerebro_core.ann.base import gpu_count
    from cerebro_core.ann.kinds import kind_for
    from cerebro_core.ann.tune import build_and_tune

    x = clustered(args.n, args.d)
    rows = []
    for kind in ("flat", "ivf", "hnsw", "ivfpq"):
        t0 = time.perf_counter()
        _, params, on_gpu = kind_for(kind).build(x)
        rows.append({"what": f"build {kind}", "seconds": time.perf_counter() - t0, "gpu": on_gpu, "params": params})
    t0 = time.perf_counter()
    _, report = build_and_tune(x, "auto", 0.95, 16384)
    rows.append({"what": f"index.kind auto → {report.kind}, build + tune to recall@10 ≥ 0.95",
                 "seconds": time.perf_counter() - t0, "gpu": report.gpu, "recall_at_10": report.recall_at_10})
    print(f"| n | d | what | seconds | on GPU | (faiss GPUs: {gpu_count()}) |")
    print("|---:|---:|---|---:|---|---|")
    for r in rows:
        print(f"| {args.n} | {args.d} | {r['what']} | {r['seconds']:.2f} | {r['gpu']} | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "d": args.d, "faiss_gpus": gpu_count(), "rows": rows},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
