"""Pseudo-label inference: adapt's labelling path vs the original system's, side by side.

    .venv/bin/python benchmarks/pseudo_label_inference.py [--models cerebro-tiny-vit-32 cerebro-tiny-vit-64] [--rounds 3]

Same images (real photos from two sources in ../shared/data: CIFAR-10 animals, 32 px, and
Caltech-101 animals, up to ~300 px JPEGs), same model (random weights; the cost is the same as trained),
same vocabulary (6 + 35 animal classes, 4 templates), same batch size.

- original: a thread pool decodes + preprocesses each batch in the main process (PIL), then one
  forward per batch, then argmax against the caption features — decode and forward alternate;
- ours:     ``cerebro_core.embed.embed_items`` (the shared embedding function: safe decoder in a
  thread pool 2 batches ahead of the model, JPEG draft decoding at >= 2x the input size, the
  transform's ToTensor+Normalize once per batch, cache-sized forward slices, hashes for de-dup)
  + prompt-ensembled class embeddings + softmax + threshold/top-k selection, as the adapt stage.
- original at batch --anchor-batch (default 64): the same original code with the batch size
  that suits this CPU's caches, to show how much of the ratio is the forward slicing alone.

Reports images/s (median of rounds, order rotating) and the ratios; checks that every path
labelled every image and how often ours agrees with ours without JPEG draft decoding (labels
differ from the original by design: it takes one caption per class, ours the prompt ensemble).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
TEMPLATES = ["a photo of a {}.", "a wildlife photo of a {}.", "a close-up photo of a {}.", "a {} in the wild."]


def wildlife_images() -> tuple[list[tuple[str, str]], list[str]]:
    """(path, source name) of every photo in both sources, and the union of their class names."""
    paths, classes = [], set()
    for name in ("cifar10_animals", "caltech101_animals"):
        for r in csv.DictReader((SHARED / name / "labels.csv").open()):
            paths.append((str(SHARED / name / r["path"]), name))
            classes.add(r.get("label") or r["common_name"])
    return paths, sorted(classes)


@torch.no_grad()
def original(model, preprocess, tokenizer, paths: list[str], classes: list[str], batch: int) -> np.ndarray:
    """The original scripts: thread-pool decode in the main process, forward per batch, argmax."""
    from PIL import Image

    captions = [TEMPLATES[0].format(c) for c in classes]
    text = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)

    def load(p: str):
        return preprocess(Image.open(p).convert("RGB"))

    out = []
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for i in range(0, len(paths), batch):
            x = torch.stack(list(pool.map(load, [p for p, _ in paths[i:i + batch]])))
            f = F.normalize(model.encode_image(x), dim=-1)
            out.append((f @ text.T).argmax(1).numpy())
    return np.concatenate(out)


def ours(bundle, paths: list[str], classes: list[str], batch: int, draft_factor=2.0) -> np.ndarray:
    from cerebro_core.adapt.select import select
    from cerebro_core.evaluate import probabilities, prompt_class_embeddings
    from cerebro_core.data.vocab import prompts_for
    from cerebro_core.embed import Item, default_workers, embed_items

    items = [Item(uri=p, source=src) for p, src in paths]
    cls = prompt_class_embeddings(bundle.model, bundle.tokenizer, prompts_for(classes, TEMPLATES, "names"))
    e = embed_items(bundle.model, bundle.preprocess_val, items, batch_size=batch, workers=default_workers(),
                    draft_factor=draft_factor)
    probs = probabilities(e.vectors, cls, float(bundle.model.logit_scale.detach().exp()))
    select(probs, 0.3, 150)  # part of the labelling path the stage runs
    order = {r["uri"]: k for k, r in enumerate(e.rows)}
    return probs.argmax(1)[[order[p] for p, _ in paths]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["cerebro-tiny-vit-32", "cerebro-tiny-vit-64"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--anchor-batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=0, help="use the first N images (0: all)")
    args = ap.parse_args()

    from cerebro_core.model.factory import create

    paths, classes = wildlife_images()
    if args.n:
        paths = paths[: args.n]
    print(f"{len(paths)} images from 2 sources, {len(classes)} classes, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores", file=sys.stderr)
    rows = []
    for name in args.models:
        b = create(name)
        b.model.eval()
        torch.manual_seed(0)
        t = {"original": [], "anchor": [], "ours": []}
        ours(b, paths[: args.batch], classes, args.batch)  # warm-up (allocator, thread pools)
        full = ours(b, paths, classes, args.batch, draft_factor=None)
        for r in range(args.rounds):
            order = [("original", "anchor", "ours")[(r + k) % 3] for k in range(3)]
            labs = {}
            for which in order:
                t0 = time.perf_counter()
                if which == "original":
                    labs[which] = original(b.model, b.preprocess_val, b.tokenizer, paths, classes, args.batch)
                elif which == "anchor":
                    labs[which] = original(b.model, b.preprocess_val, b.tokenizer, paths, classes, args.anchor_batch)
                else:
                    labs[which] = ours(b, paths, classes, args.batch)
                t[which].append(len(paths) / (time.perf_counter() - t0))
            assert all(len(v) == len(paths) for v in labs.values())
            agree = float((labs["ours"] == full).mean())
            print(f"{name} round {r}: original {t['original'][-1]:.1f}, original@{args.anchor_batch} "
                  f"{t['anchor'][-1]:.1f}, ours {t['ours'][-1]:.1f} images/s; ours vs full-res decode: "
                  f"{agree:.4f} same label", file=sys.stderr)
        ratio = statistics.median(o / a for o, a in zip(t["ours"], t["original"]))
        ratio_a = statistics.median(o / a for o, a in zip(t["ours"], t["anchor"]))
        rows.append((name, statistics.median(t["original"]), statistics.median(t["anchor"]),
                     statistics.median(t["ours"]), ratio, ratio_a, agree))
    print(f"| model | images | original, batch {args.batch} (img/s) | original, batch {args.anchor_batch} (img/s) "
          f"| cerebro adapt labelling (img/s) | ratio vs original | ratio vs original@{args.anchor_batch} "
          f"| same label as full-res decode |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, a, a2, o, ratio, ratio_a, agree in rows:
        print(f"| {name} | {len(paths)} | {a:.1f} | {a2:.1f} | {o:.1f} | {ratio:.2f} | {ratio_a:.2f} | {agree:.4f} |")


if __name__ == "__main__":
    main()
