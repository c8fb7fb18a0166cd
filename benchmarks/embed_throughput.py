"""Embedding and pseudo-labelling throughput with real JPEG decode, ours beside a plain open_clip loop.

    python benchmarks/embed_throughput.py                          # ViT-B-32 fp16 on CUDA, 8,192 JPEGs
    python benchmarks/embed_throughput.py --model cerebro-tiny-vit-32 --images 64 --size 64   # CPU smoke

- ours: ``cerebro_core.embed.embed_items`` as index, reindex and adapt call it (on CUDA: spawned
  decode workers ahead of the model, fp16; on CPU: one thread per core), then for labelling the
  adapt stage's own prompt-ensembled class embeddings over the shipped 304-name vocabulary,
  probabilities and selection;
- anchor: the plain loop a user writes with open_clip (clip-retrieval's reader → mapper): a torch
  DataLoader of PIL decode + ``preprocess`` with the same workers, ``encode_image`` under autocast.

The JPEGs are synthetic (256 px noise tiles at quality 90, 256 distinct files cycled by hard links:
decode costs what it costs; the device machine has no data sets). Reported: images/s for both,
their ratio, and one adapt labelling pass projected to the original system's 152,982 images.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ORIGINAL_POOL = 152_982


def synthetic_jpegs(folder: Path, n: int, size: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    base = []
    for i in range(min(n, 256)):
        b = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(b, format="JPEG", quality=90)
        p = folder / f"base-{i:03d}.jpg"
        p.write_bytes(b.getvalue())
        base.append(p)
    out = []
    for i in range(n):
        p = folder / f"img-{i:06d}.jpg"
        os.link(base[i % len(base)], p)
        out.append(p)
    return out


class _Plain:
    """The anchor's dataset: PIL decode + open_clip's preprocess per image."""

    def __init__(self, paths: list[Path], preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.preprocess(Image.open(self.paths[i]).convert("RGB"))


def plain_loop(model, preprocess, paths: list[Path], batch: int, workers: int, device: str) -> float:
    import torch

    loader = torch.utils.data.DataLoader(_Plain(paths, preprocess), batch_size=batch, num_workers=workers,
                                         pin_memory=device == "cuda", multiprocessing_context="spawn" if workers else None)
    t0 = time.perf_counter()
    n = 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=device == "cuda"):
        for x in loader:
            model.encode_image(x.to(device, non_blocking=True))
            n += len(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--size", type=int, default=256, help="JPEG side (CC3M shards are 256 px center crops)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=min(14, max(1, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--processes", type=int, default=0,
                    help="also time the embedding job (cerebro_core.embed_job, torchrun) on this many processes")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    import torch

    from cerebro_core.adapt.select import select
    from cerebro_core.evaluate import probabilities, prompt_class_embeddings
    from cerebro_core.data.vocab import load_vocabulary, prompts_for
    from cerebro_core.embed import Item, embed_items
    from cerebro_core.model.factory import create

    device = "cuda" if torch.cuda.is_available() else "cpu"
    b = create(args.model, device=device)
    model = b.model.eval()
    classes = load_vocabulary(str(REPO / "configs/vocab/wildlife.txt"))
    prompts = prompts_for(classes, ["a photo of a {}.", "a wildlife photo of a {}.", "a close-up photo of a {}."],
                          "names")
    with tempfile.TemporaryDirectory(prefix="cerebro-embed-bench-") as td:
        paths = synthetic_jpegs(Path(td), args.images, args.size)
        items = [Item(str(p), "bench") for p in paths]
        warm = items[: min(len(items), 2 * args.batch)]
        embed_items(model, b.preprocess_val, warm, batch_size=args.batch, workers=args.workers, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        e = embed_items(model, b.preprocess_val, items, batch_size=args.batch, workers=args.workers, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        ours = len(e.rows) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        cls = prompt_class_embeddings(model, b.tokenizer, prompts)
        e = embed_items(model, b.preprocess_val, items, batch_size=args.batch, workers=args.workers, device=device)
        probs = probabilities(e.vectors, cls.cpu(), float(model.logit_scale.detach().exp()))
        select(probs, 0.5, 100)
        labelling = len(e.rows) / (time.perf_counter() - t0)
        plain_loop(model, b.preprocess_val, paths[: len(warm)], args.batch, args.workers, device)  # warm-up
        anchor = plain_loop(model, b.preprocess_val, paths, args.batch, args.workers, device)
        job = None
        if args.processes:  # the torchrun path index/reindex/adapt take with more than one process
            from cerebro_core.config import ComputeConfig, StorageConfig
            from cerebro_core.embed_job import embed
            from cerebro_core.model import checkpoint as ckpt
            from cerebro_core.storage import Storage

            weights = str(Path(td) / "model.pt")
            ckpt.save(Storage(), weights, {"model": model.state_dict(), "model_name": args.model, "step": 0})
            t0 = time.perf_counter()
            ej = embed(ComputeConfig(nproc_per_node=args.processes), StorageConfig(), args.model, weights, items,
                       str(Path(td) / "job"), batch_size=args.batch, log=lambda line: None)
            job = len(ej.rows) / (time.perf_counter() - t0)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    res = {"device": name, "model": args.model, "images": args.images, "jpeg_px": args.size, "batch": args.batch,
           "decode_workers": args.workers, "ours_images_per_s": ours, "anchor_images_per_s": anchor,
           "ratio": ours / anchor, "labelling_images_per_s": labelling, "classes": len(classes),
           "labelling_pass_152982_s": ORIGINAL_POOL / labelling, "job_processes": args.processes,
           "job_images_per_s": job}
    print("| device | model | images | decode workers | plain open_clip loop (img/s) | cerebro embed (img/s) | ratio "
          "| labelling pass (img/s, 304 classes) | one pass over 152,982 images |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {name} | {args.model} | {args.images} | {args.workers} | {anchor:.1f} | {ours:.1f} | {ours / anchor:.2f} "
          f"| {labelling:.1f} | {ORIGINAL_POOL / labelling / 60:.1f} min |")
    if job is not None:
        print(f"\nembedding job (torchrun, {args.processes} processes, start-up included): {job:.1f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
