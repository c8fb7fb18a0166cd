"""What a verification costs the server (issue #34): after each write, the served index gets the
latest verifications again — content hashes matched over every row (Arrow ``index_in``) and the
species/score/verified columns rebuilt — and the review queue ranks and clusters candidates.

    python benchmarks/review_apply.py --rows 1000000 --verified 1000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--verified", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from cerebro_core.search.columns import Columns
    from cerebro_core.search.rows import Rows
    from cerebro_core.search.searcher import Searcher
    from cerebro_core.review.queue import apply, clusters, propose
    from cerebro_core.review.store import Verification

    rng = np.random.default_rng(0)
    n = a.rows
    sha = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    names = np.array(["deer", "horse", "cat", "frog", "fox"])
    table = pa.table({"id": np.arange(n), "sha256": sha, "species": names[rng.integers(0, 5, n)],
                      "species_score": rng.random(n), "species_margin": rng.random(n) * 0.5,
                      "sequence_id": np.arange(n) // 5})
    rows = Rows(table, Path("/nonexistent"))
    s = SimpleNamespace(rows=rows, columns=Columns(rows, list(names)), verified={})
    s.set_verified = lambda by_id: Searcher.set_verified(s, by_id)
    picked = rng.choice(n, a.verified, replace=False)
    latest = {sha[i]: Verification(sha[i], "fox", "2024-01-01T00:00:00+00:00") for i in picked}
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        got = apply(s, latest)
        times.append(time.perf_counter() - t0)
    assert got == a.verified and int(s.columns.verified.sum()) == a.verified
    # the queue's work on its pool: 4096 candidates of 512-d vectors clustered, then picked
    vec = rng.standard_normal((4096, 512)).astype(np.float32)
    t0 = time.perf_counter()
    cl = clusters(vec, 24)
    pick = propose(rng.random(4096), rng.integers(0, 5, 4096), cl, [np.arange(4096) // 5], 24)
    queue_s = time.perf_counter() - t0
    print(json.dumps({"rows": n, "verified": a.verified, "apply_s_median": float(np.median(times)),
                      "apply_s_min": float(min(times)), "queue_pool_4096_s": queue_s, "queue_k": len(pick)}))


if __name__ == "__main__":
    main()
