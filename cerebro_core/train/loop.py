"""The training loop shared by pretraining and fine-tuning: one process per device, launched by
torchrun (or called in-process with world size 1).

open_clip provides the model, transforms, tokenizer and ``ClipLoss`` (``local_loss`` +
``gather_with_grad`` across ranks); this module adds what open_clip_train's 1,000-line main does
not give as a library: exact step-level resume from atomically written checkpoints on any fsspec
storage, and metrics to MLflow from rank 0.
"""

from __future__ import annotations

import math
import os
import resource
import time
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from pydantic import BaseModel, Field

from cerebro_core.config import ComputeConfig, StorageConfig, TrainConfig
from cerebro_core.distributed import Dist
from cerebro_core.evaluate import unwrap
from cerebro_core.metric_buffer import MetricBuffer
from cerebro_core.model import checkpoint as ckpt
from cerebro_core.model.factory import ClipBundle, create
from cerebro_core.storage import Storage
from cerebro_core.train.data import PipelineSpec, make_loader, uint8_transform
from cerebro_core.train.evaluation import ZeroShotSpec, evaluate
from cerebro_core.train.loss import create_loss


class TrainJob(BaseModel):
    """Everything one training run needs; serialised to JSON for the torchrun workers."""

    model: str
    hp: TrainConfig
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    train_shards: list[str]
    train_samples: int
    mix_shards: list[str] = Field(default_factory=list)  # mixed into every batch at ``mix_fraction`` (adapt)
    mix_fraction: float = 0.0
    val_shards: list[str] = Field(default_factory=list)
    val_max_samples: int = 2000
    zero_shot: Optional[ZeroShotSpec] = None
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ckpt_dir: str
    init_from: Optional[str] = None  # model checkpoint to start from (fine-tuning)
    max_steps: Optional[int] = None
    loss: str = "clip"  # train/loss.py's LOSSES
    mlflow_run_id: Optional[str] = None
    result_path: Optional[str] = None


# --------------------------------------------------------------------------- helpers


def cosine_lr(step: int, base: float, warmup: int, total: int) -> float:
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if total <= warmup:
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) * base


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's rule: no weight decay on gains, biases, embeddings and logit_scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n or "embedding" in n:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _peak_mem_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _metric_logger(run_id: Optional[str], is_main: bool):
    return MetricBuffer(run_id if is_main else None)  # a tracking outage never stalls or kills training


# --------------------------------------------------------------------------- training


CUBLAS_DETERMINISTIC = ":4096:8"  # cuBLAS's fixed workspaces: deterministic GEMMs (CUDA >= 10.2)


def set_deterministic() -> None:
    """Deterministic kernels or an error naming the op that has none: ``warn_only`` would let a GPU
    run resume off the bit-exact path with a warning in a log (only the CPU run was exact)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA raises ``torch.OutOfMemoryError``; the CPU allocator a plain RuntimeError."""
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc) or (
        "not enough memory" in str(exc))


def train(job: TrainJob, on_step: Optional[Callable[[int, int, dict], None]] = None) -> dict[str, Any]:
    """Run (or resume) the training job; returns a summary (rank 0's view)."""
    hp = job.hp
    if hp.deterministic:  # before the first CUDA matmul creates cuBLAS's handle, which reads it
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    d = Dist()
    # rank 0 logs to the MLflow run of node 0's caller, wherever the rendezvous placed it
    run_id = next((r for r in d.gather(job.mlflow_run_id) if r), None)
    storage = Storage(job.storage)
    torch.manual_seed(hp.seed)
    if hp.deterministic:  # bit-exact reruns/resumes; costs ~4% on CPU (measured), more on GPU
        set_deterministic()
    amp = d.cuda and hp.precision in ("bf16", "fp16")
    amp_dtype = torch.bfloat16 if hp.precision == "bf16" else torch.float16

    bundle = create(job.model, device=d.device, aug_cfg=hp.augment.open_clip_cfg())
    model = bundle.model
    if job.init_from:
        ckpt.load_model_weights(model, ckpt.load(storage, job.init_from))
    if hp.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # fused CUDA kernel on a GPU: 1.24x the step rate of the default (foreach) for ViT-B-32 bf16 at
    # batch 256 on an H100, 1.12x at 1024 (benchmarks/gpu_throughput.py, step only)
    opt = torch.optim.AdamW(param_groups(model, hp.weight_decay), lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=hp.eps,
                            fused=d.cuda)
    scaler = torch.amp.GradScaler("cuda") if (d.cuda and hp.precision == "fp16") else None
    ddp_model = model
    if d.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if d.cuda else None)
    if hp.compile and d.cuda:  # the forward (through DDP); the weights stay `model`'s own
        ddp_model = torch.compile(ddp_model)
    loss_fn = create_loss(job.loss, d.rank, d.world_size)

    micro_per_step = hp.accum_steps
    global_batch = hp.batch_size * d.world_size * micro_per_step
    steps_per_epoch = job.train_samples // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"train.batch_size: {hp.batch_size} x {d.world_size} processes x {micro_per_step} accumulation "
            f"= {global_batch} exceeds the {job.train_samples} training samples"
        )
    total_steps = steps_per_epoch * hp.epochs
    if job.max_steps is not None:
        total_steps = min(total_steps, job.max_steps)

    step, epoch, micro_in_epoch = 0, 0, 0
    resumed_from = None
    if hp.resume == "auto":
        url = ckpt.latest(storage, job.ckpt_dir)
        if url is not None:
            st = ckpt.load(storage, url)
            ckpt.load_model_weights(model, st)
            opt.load_state_dict(st["optimizer"])
            if scaler is not None and st.get("scaler"):
                scaler.load_state_dict(st["scaler"])
            step, epoch, micro_in_epoch = int(st["step"]), int(st["epoch"]), int(st["micro_in_epoch"])
            ckpt.set_rng_state(st["rng"][d.rank] if d.rank < len(st["rng"]) else st["rng"][0])
            resumed_from = url
    log_metrics = _metric_logger(run_id, d.is_main)
    if d.is_main and resumed_from:
        print(f"resumed from {resumed_from} at step {step} (epoch {epoch}, batch {micro_in_epoch})", flush=True)

    def save(final: bool = False) -> str:
        rngs = [ckpt.rng_state()]
        if d.world_size > 1:
            gathered: list = [None] * d.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        url = ""
        if d.is_main:
            state = {
                "model": unwrap(model).state_dict(),
                "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "step": step,
                "epoch": epoch,
                "micro_in_epoch": micro_in_epoch,
                "rng": rngs,
                "model_name": job.model,
            }
            url = ckpt.save_training(storage, job.ckpt_dir, state, hp.keep_checkpoints)
        d.barrier()
        return url

    last_loss = float("nan")
    history: list[dict] = []
    eval_history: list[dict] = []
    skipped_total = 0
    shards_read: dict[int, set[str]] = {}  # epoch → the shards this rank read
    last_ckpt = ""
    t_window, wait_window, n_window = time.perf_counter(), 0.0, 0
    # One loader for all remaining epochs: its workers persist across epoch ends.
    spec = PipelineSpec(
        shards=job.train_shards, batch_size=hp.batch_size, batches_per_epoch=steps_per_epoch * micro_per_step,
        epoch=epoch, epochs=max(1, math.ceil((total_steps - step + micro_in_epoch // micro_per_step) / steps_per_epoch)),
        seed=hp.seed, rank=d.rank, world_size=d.world_size, start_batch=micro_in_epoch,
        storage=job.storage, return_keys=True, mix_shards=job.mix_shards, mix_fraction=job.mix_fraction,
        read_retries=hp.shard_read_retries, max_lost_share=hp.max_lost_share,
    )
    mixed = set(job.mix_shards)
    n_mixed = n_seen = 0
    # images cross the loader as uint8 and are normalised on the device (a quarter of the memory)
    transform, normalise = uint8_transform(bundle.preprocess_train)
    loader = iter(make_loader(spec, transform, bundle.tokenizer, hp.workers))
    while step < total_steps:
        while micro_in_epoch < steps_per_epoch * micro_per_step and step < total_steps:
            lr = cosine_lr(step, hp.lr, hp.warmup_steps, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            t0 = time.perf_counter()
            micro = [next(loader) for _ in range(micro_per_step)]
            read = [k.split("#", 1)[0] for m in micro for k in m[3]]
            shards_read.setdefault(epoch, set()).update(read)
            n_mixed, n_seen = n_mixed + sum(u in mixed for u in read), n_seen + len(read)
            wait_window += time.perf_counter() - t0
            skipped_total += sum(m[2] for m in micro)
            opt.zero_grad(set_to_none=True)
            try:
                loss_val = _step(ddp_model, micro, loss_fn, d.device, amp, amp_dtype, scaler, normalise)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _out_of_memory(exc):
                    raise
                raise RuntimeError(
                    f"train.batch_size={hp.batch_size} does not fit in {d.device} memory: lower train.batch_size "
                    "(and raise train.accum_steps to keep the global batch) or set train.grad_checkpointing=true"
                ) from None
            if scaler is not None:
                scaler.unscale_(opt)
            will_log = (step + 1) % hp.log_every_steps == 0 or step + 1 == total_steps
            grad_norm = float("nan")
            if hp.grad_clip or will_log:  # the norm costs a pass over all gradients: only when used
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    trainable, hp.grad_clip if hp.grad_clip else float("inf")
                )
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            with torch.no_grad():
                unwrap(model).logit_scale.clamp_(0, math.log(100))
            step += 1
            micro_in_epoch += micro_per_step
            n_window += 1
            last_loss = loss_val
            if step % hp.log_every_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_window
                m = {
                    "train/loss": loss_val,
                    "train/lr": lr,
                    "train/logit_scale": float(unwrap(model).logit_scale.detach().exp()),
                    "train/samples_per_s": n_window * global_batch / max(elapsed, 1e-9),
                    "train/data_wait_frac": wait_window / max(elapsed, 1e-9),
                    "train/grad_norm": float(grad_norm),
                    "train/peak_mem_mb": _peak_mem_mb(d.device),
                    "train/skipped_samples": skipped_total,
                    "train/epoch": epoch,
                }
                history.append({"step": step, **m})
                log_metrics(m, step)
                if d.is_main:
                    print(f"step {step}/{total_steps} loss {loss_val:.4f} lr {lr:.2e} "
                          f"{m['train/samples_per_s']:.1f} samples/s", flush=True)
                t_window, wait_window, n_window = time.perf_counter(), 0.0, 0
            if on_step is not None and d.is_main:
                on_step(step, total_steps, {"loss": loss_val})
            if step % hp.checkpoint_every_steps == 0 and step < total_steps:
                last_ckpt = save()
        if micro_in_epoch >= steps_per_epoch * micro_per_step:
            epoch += 1
            micro_in_epoch = 0
            if step < total_steps and d.is_main:  # end-of-epoch evaluation
                ev = evaluate(bundle, job, d.device)
                if ev:
                    ev["epoch"] = epoch
                    eval_history.append({"step": step, **ev})
                    log_metrics(ev, step)
            d.barrier()
    del loader
    last_ckpt = save(final=True)
    final_eval: dict[str, float] = {}
    if d.is_main:
        final_eval = evaluate(bundle, job, d.device)
        if final_eval:
            eval_history.append({"step": step, **final_eval})
            log_metrics(final_eval, step)
    log_metrics.close(spill_dir=job.ckpt_dir)  # what the tracking server has not taken yet: waited for
    summary = {
        "step": step,
        "total_steps": total_steps,
        "epoch": epoch,
        "final_loss": last_loss,
        "checkpoint": last_ckpt,
        "resumed_from": resumed_from,
        "skipped_samples": skipped_total,
        "mixed_share": d.gather(n_mixed / max(1, n_seen)),  # per rank: the measured share of mix_shards
        "world_size": d.world_size,
        "global_batch": global_batch,
        "history": history,
        "eval": final_eval,
        "eval_history": eval_history,
        "shards_by_rank": d.gather({str(e): sorted(v) for e, v in shards_read.items()}),
    }
    d.finish(summary, job.result_path)
    return summary


def _forward(model, images, texts, amp: bool, amp_dtype):
    """(image features, text features, logit scale); autocast on the inputs' device type."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp):
        out = model(images, texts)
    return out["image_features"], out["text_features"], out["logit_scale"]


def _step(ddp_model, micro, loss_fn, device, amp, amp_dtype, scaler, normalise=None) -> float:
    """One optimizer step's forward/backward. With accumulation, open_clip's scheme: features of
    all micro-batches first (no grad), then each micro-batch again with grad against the rest, so
    the contrastive loss sees the whole accumulated batch. The gradients equal the whole batch's
    (tests/test_gpu_paths.py): each pass carries the features of its own micro-batch, the logit
    scale's gradient is taken in one pass only, and the loss is not divided (it is the same loss in
    every pass). DDP all-reduces once, in the last pass, the one where every parameter (the logit
    scale too) gets its gradient."""
    from contextlib import nullcontext

    prep = normalise or (lambda x: x)  # uint8 images from the loader: normalised here, on the device
    moved = [(prep(m[0].to(device, non_blocking=True)), m[1].to(device, non_blocking=True)) for m in micro]
    if len(moved) == 1:
        img, txt, scale = _forward(ddp_model, *moved[0], amp, amp_dtype)
        loss = loss_fn(img, txt, scale)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return float(loss.detach())
    with torch.no_grad():
        feats = [_forward(ddp_model, i, t, amp, amp_dtype)[:2] for i, t in moved]
    for j, (i, t) in enumerate(moved):
        last = j == len(moved) - 1
        with (ddp_model.no_sync() if hasattr(ddp_model, "no_sync") and not last else nullcontext()):
            img, txt, scale = _forward(ddp_model, i, t, amp, amp_dtype)
            all_img = torch.cat([f[0] for f in feats[:j]] + [img] + [f[0] for f in feats[j + 1 :]])
            all_txt = torch.cat([f[1] for f in feats[:j]] + [txt] + [f[1] for f in feats[j + 1 :]])
            loss = loss_fn(all_img, all_txt, scale if last else scale.detach())
            (scaler.scale(loss) if scaler is not None else loss).backward()
    return float(loss.detach())
