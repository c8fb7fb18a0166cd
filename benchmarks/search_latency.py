"""Search latency at the original system's scale, side by side with its path.

    .venv/bin/python benchmarks/search_latency.py [--n 152982] [--queries 200]

Index part: 152,982 synthetic clustered vectors of dimension 512 (L2-normalised). Text tower:
ViT-B-32 with random weights (same cost as trained). End-to-end text query = tokenize + text
encode + FAISS search, on this machine's CPU threads, cache misses only (distinct queries).

- original: full 77-token encode + IndexFlatIP (exact)
- ours:     FastTextEncoder: tokens cut after EOT (exact) + int8 dynamic projections (measured
            below), index chosen + tuned by cerebro (HNSW here), recall@10 vs exact
Also: embedding images/s of the tiny model and ViT-B-32 through cerebro_core.embed (real CIFAR
photos, parallel decode).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def queries(n: int) -> list[str]:
    names = [r["common_name"] for r in csv.DictReader(
        open(REPO.parent / "shared/data/species_names/iucn_rare_species_400.csv")) if r.get("common_name")]
    templates = ["a {} leaping into snow", "a photo of a {} at night", "two {}s near a river", "a {} in tall grass"]
    out = []
    for i in range(n):
        out.append(templates[i % len(templates)].format(names[(i * 7) % len(names)].lower()))
    return list(dict.fromkeys(out))[:n]


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1024, d)).astype(np.float32)
    x = centers[rng.integers(0, 1024, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pct(ts: list[float], p: float) -> float:
    return float(np.percentile(np.array(ts), p))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=152_982)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args()

    import faiss

    from cerebro_core.model.text import FastTextEncoder, encode_text_truncated
    from cerebro_core.ann.base import recall_at_k
    from cerebro_core.ann.tune import build_and_tune
    from cerebro_core.model.factory import create

    torch.manual_seed(0)
    clip = create("ViT-B-32")
    model = clip.model.eval()
    qmodel = FastTextEncoder(model, int8=True)
    tok = clip.tokenizer
    qs = queries(args.queries)
    x = clustered(args.n, 512)

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(512)
    flat.add(x)
    flat_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    index, rep = build_and_tune(x, "auto", 0.95, 4096, n_queries=300)
    ours_build = time.perf_counter() - t0

    # A random text tower's query vectors bear no relation to synthetic data, so each query i is
    # searched with a vector near the data (database vector i, perturbed): the index is exercised
    # where real queries hit it, and both paths search the identical vector, so recall@10 is the
    # index's. The text encode is timed for real on the query string.
    def to_data_space(i: int) -> np.ndarray:
        rng = np.random.default_rng(i)
        w = x[(i * 7919) % len(x)] + 0.05 * rng.standard_normal(512).astype(np.float32) / np.sqrt(512)
        return (w / np.linalg.norm(w)).astype(np.float32)

    orig_t, ours_t, enc_full, enc_ours, cos = [], [], [], [], []
    found_ours, found_exact = [], []
    with torch.inference_mode():
        for warm in qs[:5]:  # warm-up both paths
            model.encode_text(tok([warm]))
            qmodel(tok([warm]))
        for i, q in enumerate(qs):
            t0 = time.perf_counter()
            v = F.normalize(model.encode_text(tok([q])).float(), dim=-1).numpy()
            t1 = time.perf_counter()
            qv = to_data_space(i)[None, :]
            _, I_exact = flat.search(qv, 10)
            t2 = time.perf_counter()
            orig_t.append((t1 - t0 + t2 - t1) * 1000)
            enc_full.append((t1 - t0) * 1000)

            t0 = time.perf_counter()
            w = F.normalize(qmodel(tok([q])).float(), dim=-1).numpy()
            t1 = time.perf_counter()
            qw = to_data_space(i)[None, :]
            _, I_ours = index.search(qw, 10)  # at its tuned setting
            t2 = time.perf_counter()
            ours_t.append((t2 - t0) * 1000)
            enc_ours.append((t1 - t0) * 1000)
            cos.append(float((v[0] * w[0]).sum()))
            found_ours.append(I_ours[0])
            found_exact.append(I_exact[0])
    recall = recall_at_k(np.stack(found_ours), np.stack(found_exact))
    # exactness of the truncation alone (fp32 weights): max |Δ| over all queries
    with torch.inference_mode():
        t = tok(qs[:64])
        delta = (model.encode_text(t) - encode_text_truncated(model, t)).abs().max().item()

    print(f"collection: {args.n} x 512, {len(qs)} distinct queries, {torch.get_num_threads()} CPU threads\n")
    print("| path | text encode p50 (ms) | end-to-end p50 (ms) | p99 (ms) | recall@10 vs exact | index | build (s) | index memory (MB) |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    print(f"| original: 77-token encode + IndexFlatIP | {statistics.median(enc_full):.1f} | {pct(orig_t, 50):.1f} | "
          f"{pct(orig_t, 99):.1f} | 1.000 | flat | {flat_build:.1f} | {args.n * 512 * 4 / 2**20:.0f} |")
    print(f"| cerebro: truncated + int8 text encoder, tuned index | {statistics.median(enc_ours):.1f} | {pct(ours_t, 50):.1f} | "
          f"{pct(ours_t, 99):.1f} | {recall:.3f} | {rep.kind} {rep.params} | {ours_build:.1f} | {rep.memory_mb:.0f} |")
    print(f"\nspeed-up p50: {pct(orig_t, 50) / pct(ours_t, 50):.2f}x; query-embedding cosine int8 vs fp32: "
          f"min {min(cos):.4f}, mean {statistics.mean(cos):.4f}; truncation alone max |Δ| = {delta:.2e}")
    print(f"index tuning (on perturbed database vectors): recall@10 {rep.recall_at_10:.3f}, "
          f"search-only p50 {rep.latency_p50_ms:.2f} ms; tried {rep.tuning}")

    if args.skip_embed:
        return
    from cerebro_core.embed import Item, default_workers, embed_items

    cifar = REPO.parent / "shared/data/cifar10_animals/test"
    items = [Item(str(p)) for p in sorted(cifar.rglob("*.jpg"))[:1024]]
    print("\n| model | images | batch | workers | images/s (CPU) |")
    print("|---|---:|---:|---:|---:|")
    for name in ("cerebro-tiny-vit-32", "ViT-B-32"):
        b = create(name)
        sub = items if name != "ViT-B-32" else items[:256]
        embed_items(b.model, b.preprocess_val, sub[:64], batch_size=64, workers=default_workers())  # warm-up
        t0 = time.perf_counter()
        e = embed_items(b.model, b.preprocess_val, sub, batch_size=64, workers=default_workers())
        dt = time.perf_counter() - t0
        print(f"| {name} | {len(e.rows)} | 64 | {default_workers()} | {len(e.rows) / dt:.1f} |")


if __name__ == "__main__":
    main()
