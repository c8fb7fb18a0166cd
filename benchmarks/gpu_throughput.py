"""Pretraining throughput and model FLOPs utilisation (MFU) of our trainer on one accelerator.

    .venv/bin/python benchmarks/gpu_throughput.py                      # ViT-B-32, bf16, batch 256, on CUDA
    .venv/bin/python benchmarks/gpu_throughput.py --model cerebro-tiny-vit-32 --precision fp32 \
        --batch 64 --steps 12 --peak-tflops 1.0                        # CPU smoke run of the same path

What runs: ``cerebro_core.train.launch.launch`` — torchrun with one process per visible GPU,
the real data path (webdataset shards → open_clip train transform → tokenizer) and the real
step (autocast, ClipLoss, AdamW, clipping, logit-scale clamp). The shards hold synthetic
images at the model's input size (random-noise JPEGs + captions: throughput does not depend on
what the pixels show; no data set can be fetched on the device machine).

Reported: samples/s per process (the trainer's own ``train/samples_per_s``, which includes
waiting for data; median over the logged windows after the first), data-wait fraction, peak
memory; on CUDA also the trainer's step alone on a batch already on the GPU (``--step-only-batches``,
AdamW foreach and fused: the compute ceiling the data path is held against); and MFU = samples/s × model FLOPs per sample ÷ the device's peak dense FLOP/s. FLOPs per
sample are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward
of both towers and open_clip's ``ClipLoss`` (it counts matmuls, convolutions and attention;
elementwise ops are not counted, as usual for MFU). Peaks (dense, no sparsity): H100 SXM / H200 bf16 989.4
TFLOP/s, H100 PCIe 756; others: pass ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_BF16_TFLOPS = {"H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H200": 989.4, "H100 PCIe": 756.0, "A100": 312.0}


def synthetic_shards(out: Path, n: int, size: int, per_shard: int = 1000) -> list[str]:
    import numpy as np
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    animals = ["red fox", "snow leopard", "moose", "barn owl", "grey wolf", "sea otter", "lynx", "bison"]
    out.mkdir(parents=True, exist_ok=True)
    # 256 distinct JPEGs (random crops of 64 noise tiles), cycled: decoding costs what it costs
    # for any sample, and writing 10^4 shards' worth stays cheap
    tiles = [rng.integers(0, 256, (size + 16, size + 16, 3), dtype=np.uint8) for _ in range(64)]
    jpegs = []
    for i in range(256):
        dy, dx = rng.integers(0, 16, 2)
        b = io.BytesIO()
        Image.fromarray(tiles[i % 64][dy:dy + size, dx:dx + size]).save(b, format="JPEG", quality=90)
        jpegs.append(b.getvalue())
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(n):
            w.write({"__key__": f"{i:08d}", "jpg": jpegs[i % len(jpegs)],
                     "txt": f"a photo of a {animals[i % len(animals)]} number {i}", "json": json.dumps({"i": i})})
    return sorted(str(p) for p in out.glob("*.tar"))


def flops_per_sample(model_name: str, device: str, precision: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cerebro_core.model.factory import create

    b = create(model_name)
    model = b.model.to(device).train()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    n = 4
    x = torch.randn(n, 3, size, size, device=device)
    t = b.tokenizer(["a photo of a red fox"] * n).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    from open_clip.loss import ClipLoss

    with FlopCounterMode(display=False) as fc:
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
            o = model(x, t)
            loss = ClipLoss()(o["image_features"], o["text_features"], o["logit_scale"])
        loss.backward()
    return fc.get_total_flops() / n


def step_only(model_name: str, batch: int, precision: str, steps: int = 30, warmup: int = 5,
              fused: bool = False, compile: bool = False) -> tuple[float, float]:
    """Samples/s of the trainer's own step (``loop._step``: autocast forward of both towers,
    ClipLoss, backward; then AdamW) on one batch already on the GPU: the compute ceiling that the
    data path is measured against; ``fused``: AdamW's fused CUDA kernel instead of the trainer's
    default (foreach). Returns (samples/s, peak memory MB)."""
    import torch

    from cerebro_core.model.factory import create
    from cerebro_core.train.loop import _step, param_groups
    from cerebro_core.train.loss import create_loss

    b = create(model_name, device="cuda")
    model = b.model.train()
    fwd = torch.compile(model) if compile else model
    warmup = warmup + (10 if compile else 0)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, fused=fused)
    loss_fn = create_loss("clip", 0, 1)
    amp = precision in ("bf16", "fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    x = torch.randn(batch, 3, size, size, device="cuda")
    t = b.tokenizer([f"a photo of a red fox number {i}" for i in range(batch)]).cuda()
    micro = [(x, t)]
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _step(fwd, micro, loss_fn, "cuda", amp, dtype, scaler)
        (scaler.step(opt), scaler.update()) if scaler is not None else opt.step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times), torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=256, help="per process")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true", help="train.compile (torch.compile of the forward)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="per device; 0: from the device name")
    ap.add_argument("--no-step-only", action="store_true", help="skip the step-only (data-free) measurement")
    ap.add_argument("--step-only-batches", type=int, nargs="*", default=None,
                    help="batch sizes of the step-only measurement (default: --batch)")
    args = ap.parse_args()

    import torch

    from cerebro_core.config import TrainConfig
    from cerebro_core.model.factory import create
    from cerebro_core.config import ComputeConfig
    from cerebro_core.distributed import resolve_nproc
    from cerebro_core.train.launch import launch
    from cerebro_core.train.loop import TrainJob

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)
    hp = TrainConfig(model=args.model, batch_size=args.batch, epochs=1, precision=args.precision,
                     workers=args.workers, warmup_steps=5, lr=5e-4, checkpoint_every_steps=10**9,
                     log_every_steps=5, val_fraction=0.0, grad_checkpointing=args.grad_checkpointing,
                     compile=args.compile)
    nproc = resolve_nproc(ComputeConfig())
    size = create(args.model).model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    n = args.batch * nproc * args.steps
    with tempfile.TemporaryDirectory(prefix="cerebro-gpu-bench-") as td:
        shards = synthetic_shards(Path(td) / "shards", n, size)
        job = TrainJob(model=args.model, hp=hp, train_shards=shards, train_samples=n, ckpt_dir=str(Path(td) / "ck"))
        s = launch(job, log=lambda line: print(line, file=sys.stderr))
    hist = s["history"][1:] or s["history"]
    sps = statistics.median(h["train/samples_per_s"] for h in hist) / nproc
    wait = statistics.median(h["train/data_wait_frac"] for h in hist)
    mem = max(h["train/peak_mem_mb"] for h in hist)
    fps = flops_per_sample(args.model, device, args.precision)
    rows = [("data path (torchrun, webdataset, transforms)", args.batch, sps, f"{wait:.2f}", mem)]
    if cuda and not args.no_step_only:
        for batch in args.step_only_batches or [args.batch]:
            for fused in (False, True):
                sps_step, mem_step = step_only(args.model, batch, args.precision, fused=fused, compile=args.compile)
                rows.append((f"step only, AdamW {'fused' if fused else 'foreach'}"
                             f"{', compiled' if args.compile else ''} (batch on the GPU)", batch, sps_step, "—", mem_step))
    print("| device | model | precision | batch/process | processes | measured | samples/s per process | data wait "
          "| peak memory (MB) | GFLOP/sample (fwd+bwd) | MFU |")
    print("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    out = []
    for what, batch, v, w, m in rows:
        mfu = v * fps / (peak * 1e12) if peak else float("nan")
        out.append({"device": name, "model": args.model, "precision": args.precision, "batch": batch,
                    "processes": nproc, "measured": what + (" (compiled)" if args.compile and "step" not in what else ""),
                    "samples_per_s": v, "data_wait": w, "peak_mem_mb": m, "gflop_per_sample": fps / 1e9, "mfu": mfu})
        print(f"| {name} | {args.model} | {args.precision} | {batch} | {nproc} | {what} | {v:.1f} | {w} | {m:.0f} "
              f"| {fps / 1e9:.2f} | {mfu:.3f} |" + ("" if peak else " (no peak known: pass --peak-tflops)"))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
