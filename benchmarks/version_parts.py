"""What a reindex costs in storage: content-addressed parts (ours) vs a whole bundle per version
(the anchor: what every version stored before, and what logging the bundle as an MLflow artifact
does).

A synthetic bundle of N items (fp16 ``vectors.npy``, a flat ``index.faiss``, ``metadata.arrow``
with the columns the index stage writes, a fixed 30 MB ``model/model.pt``) is packed; n items are
appended, as a reindex does, and the new bundle is packed again. Reported: bytes the second
version wrote, that ÷ the whole bundle, and the time to pack (hashing every block and checking
storage for it) against the time to copy the bundle.

    .venv/bin/python benchmarks/version_parts.py --n 200000 --add 1000 10000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cerebro_core import parts
from cerebro_core.ann.disk import write_vectors
from cerebro_core.search.rows import write_rows
from cerebro_core.storage import Storage


def rows(start: int, n: int, root: str) -> list[dict]:
    return [{"uri": f"{root}/cam{i % 50:02d}/IMG_{i:08d}.jpg", "source": "camera_traps", "media_type": "image",
             "video_ts": None, "sha256": f"{i:064x}", "source_root": root, "camera": f"cam{i % 50:02d}",
             "taken_at": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T12:00:00", "lat": 45.0 + i % 100 / 100,
             "lon": 7.0, "species": "red fox", "species_score": 0.5, "sequence_id": i // 5, "duplicate_of": None}
            for i in range(start, start + n)]


def bundle(dest: Path, vectors: np.ndarray, n_rows: int, model: bytes, root: str) -> Path:
    import faiss

    (dest / "model").mkdir(parents=True)
    (dest / "model" / "model.pt").write_bytes(model)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(dest / "index.faiss"))
    write_vectors(dest / "vectors.npy", vectors)
    write_rows(dest, rows(0, n_rows, root), Path("/nonexistent-home"))
    (dest / "index.json").write_text('{"kind": "flat", "n": %d}' % n_rows)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--add", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--part-mb", type=float, default=4)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    model = rng.bytes(30 * 2**20)
    block = int(a.part_mb * 2**20)
    print(f"| N | added n | bundle MB | ours: written MB | ours ÷ bundle | anchor (whole bundle) MB | "
          f"pack s | copy s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for add in a.add:
        with tempfile.TemporaryDirectory() as td:
            td = Path(td)
            v = rng.standard_normal((a.n + add, a.dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            b1 = bundle(td / "v1", v[: a.n], a.n, model, "/data/wild")
            st = Storage()
            parts.pack(b1, st, str(td / "parts"), block, td)
            b2 = bundle(td / "v2", v, a.n + add, model, "/data/wild")
            t0 = time.perf_counter()
            _, s2 = parts.pack(b2, st, str(td / "parts"), block, td)
            pack_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            shutil.copytree(b2, td / "copy")
            copy_s = time.perf_counter() - t0
            mb = 2**20
            print(f"| {a.n:,} | {add:,} | {s2.bytes_total / mb:.1f} | {s2.bytes_written / mb:.1f} | "
                  f"{s2.bytes_written / s2.bytes_total:.3f} | {s2.bytes_total / mb:.1f} | {pack_s:.2f} | {copy_s:.2f} |")


if __name__ == "__main__":
    main()
