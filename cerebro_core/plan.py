"""`cerebro plan`: each stage's work for a config and its projected time on the configured devices.

Work is counted from the inputs where they can be read here (the URL list, the download's
manifest, the source folders) and otherwise taken from the original system's sizes, saying so.
Times come from the throughput table ``throughput.json`` (measured, derived or original figures,
each with where it came from); a stage with no figure for its (model, device) has no projection.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cerebro_core.config import CerebroConfig, SourceConfig

TABLE = Path(__file__).with_name("throughput.json")
DAY_S = 86400.0
CC3M_TRAIN_ROWS = 3_318_333  # the published CC3M train split
ASSUMED_SUCCESS = 0.8  # share of CC3M URLs that still resolve, when no download says otherwise


@dataclass
class Rate:
    per_s: float  # per process
    kind: str
    source: str
    processes: int = 1

    @property
    def total(self) -> float:
        return self.per_s * self.processes


@dataclass
class StagePlan:
    stage: str
    work: str
    seconds: Optional[float]
    rates: list[str] = field(default_factory=list)
    original_s: Optional[float] = None
    notes: list[str] = field(default_factory=list)


def load_table() -> dict:
    return json.loads(TABLE.read_text())


def device_kind(cfg: CerebroConfig, gpu: Optional[str]) -> tuple[str, int]:
    """(device name in the table, processes per node) for the configured compute."""
    from cerebro_core.distributed import cuda_devices

    c = cfg.compute
    local = cuda_devices()
    wants_gpu = c.device == "cuda" or (c.device == "auto" and local > 0)
    if not wants_gpu:
        return "cpu", int(c.nproc_per_node) if c.nproc_per_node != "auto" else 1
    n = int(c.nproc_per_node) if c.nproc_per_node != "auto" else max(1, local)
    if gpu is None and local:
        import torch

        gpu = torch.cuda.get_device_name(0)
    return gpu or "H100", n


def rate(table: dict, work: str, model: str, device: str, processes: int = 1) -> Optional[Rate]:
    for r in table["rows"]:
        if r["work"] == work and r["model"] in (model, "-") and (r["device"] == device or r["device"] in device):
            return Rate(r["per_s"], r["kind"], r["source"], processes)
    return None


def _count_images(sources: list[SourceConfig]) -> Optional[int]:
    from cerebro_core.data.sources import list_folder

    if not sources or not all(Path(s.path).is_dir() for s in sources):
        return None
    return sum(len(list_folder(s.path, s.name)) for s in sources)


def _rows(cfg: CerebroConfig, notes: list[str]) -> Optional[int]:
    from cerebro_core.data.url_list import read_url_list
    from cerebro_core.storage import Storage

    try:
        table, _ = read_url_list(cfg.download, Storage(cfg.storage))
        return table.num_rows
    except Exception as exc:  # unreadable here (S3 out of reach, not yet written): say so
        if cfg.download.input_format == "cc3m_tsv":
            notes.append(f"URL list not readable here ({type(exc).__name__}); assumed the CC3M train split's "
                         f"{CC3M_TRAIN_ROWS:,} rows")
            return CC3M_TRAIN_ROWS
        notes.append(f"URL list not readable here ({type(exc).__name__}): its rows are unknown")
        return None


def _samples(cfg: CerebroConfig, rows: Optional[int], notes: list[str]) -> Optional[int]:
    from cerebro_core.data.shardset import default_output, load_manifest
    from cerebro_core.home import resolve
    from cerebro_core.storage import Storage

    try:
        return load_manifest(Storage(cfg.storage), default_output(cfg.download, resolve(cfg).storage_root,
                                                                  cfg.name)).num_samples
    except Exception:
        if rows is None:
            notes.append("no finished download and no URL list: the samples are unknown")
            return None
        notes.append(f"no finished download: assumed {ASSUMED_SUCCESS:.0%} of the rows download")
        return int(rows * ASSUMED_SUCCESS)


def _classes(cfg: CerebroConfig, fallback: int) -> int:
    from cerebro_core.data.vocab import VocabularyError, load_vocabulary

    try:
        return len(load_vocabulary(cfg.adapt.vocabulary))
    except VocabularyError:
        return fallback


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def _rate_line(what: str, r: Optional[Rate], unit: str, model: str, device: str) -> str:
    if r is None:
        return f"{what}: no figure for {model} on {device}"
    return f"{what}: {r.per_s:,.1f} {unit}/s × {r.processes} ({r.kind}: {r.source})"


def plan(cfg: CerebroConfig, gpu: Optional[str] = None) -> list[StagePlan]:
    table = load_table()
    orig = table["original"]
    device, nproc = device_kind(cfg, gpu)
    world = nproc * cfg.compute.nnodes
    model = cfg.train.model
    out: list[StagePlan] = []

    # download
    notes: list[str] = []
    rows = _rows(cfg, notes)
    dl = rate(table, "download", "-", "process", cfg.download.processes)
    out.append(StagePlan("download", f"{_fmt(rows) if rows else '?'} rows, {cfg.download.processes} process(es) × "
                         f"{cfg.download.threads} threads", rows / dl.total if (dl and rows) else None,
                         [_rate_line("images", dl, "images", "-", "process")], orig["download_s"], notes))

    # pretrain
    notes = []
    samples = _samples(cfg, rows, notes)
    t = cfg.train
    train_samples = int(samples * (1 - t.val_fraction)) if samples is not None else 0
    global_batch = t.batch_size * world * t.accum_steps
    steps = t.epochs * (train_samples // global_batch)
    seen = steps * global_batch
    tr = rate(table, "pretrain", model, device, world)
    out.append(StagePlan("pretrain", f"{_fmt(train_samples) if samples else '?'} samples × {t.epochs} epochs = "
                         f"{_fmt(steps) if samples else '?'} steps of {_fmt(global_batch)} ({world} process(es) on "
                         f"{cfg.compute.nnodes} node(s), {device})",
                         seen / tr.total if (tr and samples) else None, [_rate_line("training", tr, "samples", model, device)],
                         orig["pretrain_s"], notes))

    # adapt
    notes = []
    a = cfg.adapt
    pool = _count_images(a.sources)
    if pool is None:
        pool = orig["adapt_images"]
        notes.append(f"sources not readable here: assumed the original system's {pool:,} images")
    held = _count_images([s for s in (a.validation_source, a.test_source) if s]) or 0
    labelled = pool + held
    trainer = rate(table, "pretrain", model, device, nproc)  # students train on every process of one node
    if a.student.kind == "scratch":  # a new model on the pairs + the selection, like the pretraining
        picked = min(pool, a.labeller.per_class_top_k * _classes(cfg, pool))
        student = t.epochs * (train_samples + picked)
        # out of fold: K more students (each without one fold) before each iteration after the first
        folds = a.student.folds * (a.iterations - 1) / a.iterations
        train_total = student + folds * t.epochs * (train_samples + picked * (a.student.folds - 1) / max(1, a.student.folds))
    else:  # replay: warm-started from the teacher; pseudo share, passes over the selection, budget
        from cerebro_core.adapt.students import replay_regime

        picked = min(pool, a.labeller.per_class_top_k * _classes(cfg, pool))
        reg = replay_regime(a.student, seen, picked, t.batch_size * nproc * t.accum_steps) if seen else None
        train_total = reg.steps * reg.global_batch if reg else None
        if reg:
            notes.append(f"replay regime per iteration: {reg.steps:,} steps of {reg.global_batch:,}, "
                         f"pseudo share {100 * reg.pseudo_fraction:.0f} % of every batch, "
                         f"{reg.passes:.1f} passes over the selection ({_fmt(picked)} images at its cap, "
                         f"{100 * picked / max(1, pool):.1f} % of the pool), {reg.pretrain_equivalents:.3g} "
                         f"pretrain-equivalents (set by adapt.student.{'max_passes' if reg.bound == 'passes' else 'budget'})")
    emb = rate(table, "embed", model, device, nproc)  # adapt labels on one node
    per_it = None
    if emb and trainer and train_total:
        per_it = labelled / emb.total + train_total / trainer.total
    pe = f"{train_total / seen:.3g}" if (seen and train_total) else "?"
    out.append(StagePlan(
        "adapt", f"{a.iterations} iterations × (label {_fmt(pool)} pool + {_fmt(held)} held-out images, train "
                 f"{_fmt(train_total) if train_total else '?'} samples = {pe} pretrain-equivalents per iteration; "
                 f"student: {a.student.kind})",
        per_it * a.iterations if per_it is not None else None,
        [_rate_line("labelling", emb, "images", model, device), _rate_line("training", trainer, "samples", model,
                                                                            device)],
        orig["adapt_iteration_s"] * a.iterations * pool / orig["adapt_images"], notes))

    # index
    notes = []
    items = _count_images(cfg.index.sources)
    if items is None:
        items = orig["adapt_images"]
        notes.append(f"index sources not readable here: assumed {items:,} images (video stills not counted)")
    iemb = rate(table, "embed", model, device, world)
    build = rate(table, "index_build", "-", "cpu")
    secs = items / iemb.total + items / build.total if (iemb and build) else None
    out.append(StagePlan("index", f"{_fmt(items)} images on {world} process(es), FAISS {cfg.index.kind}", secs,
                         [_rate_line("embedding", iemb, "images", model, device),
                          _rate_line("build", build, "vectors", "-", "cpu")], None, notes))
    return out


def human(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_S:.1f} days"


def over_a_day(stages: list[StagePlan]) -> list[StagePlan]:
    return [s for s in stages if s.seconds is not None and not math.isnan(s.seconds) and s.seconds > DAY_S]
