"""The GPU paths of a real pretraining run, end to end: a short pretraining through the trainer
(torchrun, webdataset shards, open_clip transforms) for 2 epochs with ``train.zero_shot_source``
(zero-shot evaluation at each epoch end: issue 35 item 1), ``train.accum_steps=2`` and the
configured precision (bf16 on the device), in deterministic mode (item 8: no warn_only, so an op
without a deterministic CUDA kernel fails here), and a resume from the epoch-1 checkpoint with
another log and checkpoint cadence, whose final weights must equal the uninterrupted run's.

    python benchmarks/gpu_pretrain_check.py --json out.json                      # on the device
    python benchmarks/gpu_pretrain_check.py --model cerebro-tiny-vit-32 --batch 8 --precision fp32   # CPU smoke

Images are synthetic (noise JPEGs, benchmarks/gpu_throughput.py): what is checked is that the
paths run and agree (losses finite, zero-shot metrics at each epoch end, the step counter and a
resumed run's final weights equal to the uninterrupted run's), not what the model learns.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CLASSES = ("fox", "owl", "wolf")


def zero_shot_folder(out: Path, size: int, per_class: int = 8) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            b = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(b, format="JPEG")
            (out / c / f"{i}.jpg").write_bytes(b.getvalue())
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=128, help="per process, per micro-batch")
    ap.add_argument("--steps-per-epoch", type=int, default=6)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from cerebro_core.config import ComputeConfig, TrainConfig
    from cerebro_core.distributed import resolve_nproc
    from cerebro_core.model import checkpoint as ckpt
    from cerebro_core.model.factory import create
    from cerebro_core.storage import Storage
    from cerebro_core.train.launch import launch
    from cerebro_core.train.loop import TrainJob, ZeroShotSpec
    from gpu_throughput import synthetic_shards

    nproc = resolve_nproc(ComputeConfig())
    size = create(args.model).model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    accum = 2
    n = args.batch * nproc * accum * args.steps_per_epoch
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    hp = dict(model=args.model, batch_size=args.batch, epochs=2, precision=args.precision, accum_steps=accum,
              workers=args.workers, warmup_steps=2, lr=5e-4, log_every_steps=1, val_fraction=0.0, deterministic=True)
    with tempfile.TemporaryDirectory(prefix="cerebro-gpu-check-") as td:
        shards = synthetic_shards(Path(td) / "shards", n, size, per_shard=max(1, n // 8))
        zs = ZeroShotSpec(folder=zero_shot_folder(Path(td) / "zs", size), templates=["a photo of a {}."])

        def job(d: str, **kw) -> TrainJob:
            return TrainJob(model=args.model, hp=TrainConfig(**{**hp, **kw}), train_shards=shards, train_samples=n,
                            zero_shot=zs, ckpt_dir=str(Path(td) / d))

        t0 = time.perf_counter()
        full = launch(job("full", checkpoint_every_steps=args.steps_per_epoch),
                      log=lambda line: print(line, file=sys.stderr))
        wall = time.perf_counter() - t0
        # a crash after epoch 1: its checkpoint alone, resumed with another logging/checkpoint cadence
        (Path(td) / "resumed").mkdir()
        name_1 = ckpt.step_name(args.steps_per_epoch)
        shutil.copy(Path(td) / "full" / name_1, Path(td) / "resumed" / name_1)
        resumed = launch(job("resumed", checkpoint_every_steps=10**9, log_every_steps=2),
                         log=lambda line: print(line, file=sys.stderr))
        a = ckpt.load(Storage(), full["checkpoint"])["model"]
        b = ckpt.load(Storage(), resumed["checkpoint"])["model"]
        exact = all(torch.equal(a[k], b[k]) for k in a)
    losses = [h["train/loss"] for h in full["history"]]
    zs_epochs = [e["epoch"] for e in full["eval_history"] if "zeroshot/top1" in e and "epoch" in e]
    ok = (full["step"] == 2 * args.steps_per_epoch and all(x == x and abs(x) < 1e4 for x in losses)
          and "zeroshot/top1" in full["eval"] and zs_epochs == [1] and str(resumed["resumed_from"]).endswith(name_1)
          and exact)
    row = {"device": name, "model": args.model, "precision": args.precision, "batch": args.batch, "accum_steps": accum,
           "processes": nproc, "steps": full["step"], "first_loss": losses[0], "last_loss": losses[-1],
           "zeroshot_top1": full["eval"].get("zeroshot/top1"), "resume_bit_exact": exact, "wall_s": wall, "ok": ok}
    print("| device | model | precision | batch × accum × processes | steps | loss first → last | zero-shot top-1 "
          "(3 noise classes) | resumed run bit-exact | wall (s) | paths ran |")
    print("|---|---|---|---|---:|---|---:|---|---:|---|")
    print(f"| {name} | {args.model} | {args.precision} | {args.batch} × {accum} × {nproc} | {full['step']} | "
          f"{losses[0]:.3f} → {losses[-1]:.3f} | {row['zeroshot_top1']:.3f} | {exact} | {wall:.0f} | {ok} |")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    if not ok:
        sys.exit(f"the GPU paths did not all run as expected: {row}")


if __name__ == "__main__":
    main()
