"""The rates `cerebro plan` prices the smaller passes with (issue 35 item 10), measured here:

- EXIF pass (index): ``index.metadata.image_fields`` over real photos (header only);
- pool hashing (adapt): sha256 of each image file, as adapt de-duplicates its pool (MB/s);
- near-duplicates (index): ``index.metadata.duplicate_groups`` through an HNSW index (M=32) of
  clustered 512-d vectors (the index stage's own search of 8 neighbours per row);
- publish (index): ``parts.pack`` of a search folder's bytes into a local parts store.

    .venv/bin/python benchmarks/plan_rates.py --json rates.json

Writes one row per pass (per second, one process); cerebro_core/throughput.json keeps them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "caltech101_animals"))
    ap.add_argument("--vectors", type=int, default=50_000)
    ap.add_argument("--publish-mb", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import faiss
    import numpy as np

    from cerebro_core.index.metadata import duplicate_groups, image_fields
    from cerebro_core.parts import pack
    from cerebro_core.storage import Storage

    photos = sorted(p for p in Path(args.photos).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rows = []
    rows.append(("exif", "images", timed(lambda: [image_fields(str(p)) for p in photos], len(photos)),
                 f"{len(photos)} Caltech-101 photos"))
    mb = sum(p.stat().st_size for p in photos) / 2**20
    rows.append(("pool_hash", "MB", timed(lambda: [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos], mb),
                 f"{len(photos)} Caltech-101 photos, {mb:.1f} MB (files read from the page cache)"))
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((500, 512)).astype(np.float32)
    v = centres[rng.integers(0, 500, args.vectors)] + 0.3 * rng.standard_normal((args.vectors, 512)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = faiss.IndexHNSWFlat(512, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(v)
    rows.append(("duplicates", "vectors", timed(lambda: duplicate_groups(index, v, 0.97), len(v)),
                 f"{len(v):,} clustered 512-d vectors, HNSW M=32, 8 neighbours"))
    with tempfile.TemporaryDirectory() as td:
        folder = Path(td, "search")
        folder.mkdir()
        for i in range(args.publish_mb // 64):
            (folder / f"part-{i}.bin").write_bytes(rng.bytes(64 << 20))
        rows.append(("publish", "MB", timed(lambda: pack(folder, Storage(), str(Path(td, "parts")), 4 << 20,
                                                         Path(td)), args.publish_mb),
                     f"{args.publish_mb} MB of random bytes packed into a local parts store (4 MiB blocks)"))
    print("| pass | per second | unit | on |")
    print("|---|---:|---|---|")
    for work, unit, r, on in rows:
        print(f"| {work} | {r:,.1f} | {unit} | {on} |")
    if args.json:
        Path(args.json).write_text(json.dumps([{"work": w, "unit": u, "per_s": r, "on": o} for w, u, r, o in rows],
                                              indent=2))


if __name__ == "__main__":
    main()
