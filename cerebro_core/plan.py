"""`cerebro plan`: each stage's work for a config and its projected time on the configured devices.

Work is counted from the inputs where they can be read here (the URL list, the download's
manifest, the source folders) and otherwise taken from the original system's sizes, saying so.
Times come from the throughput table ``throughput.json`` (measured, derived or original figures,
each with where it came from); a stage with no figure for its (model, device) has no projection.

A stage's projection is the sum of its parts (:class:`Part`: an amount of work at one rate), each
printed with its rate and where that came from; adding a pass to a stage is adding one ``Part``.
Devices are the kinds in the table, matched exactly (``KINDS``); with no GPU visible here and none
chosen with ``--device-kind``, H100 is assumed and every device-dependent stage says so.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cerebro_core.config import CerebroConfig, SourceConfig

TABLE = Path(__file__).with_name("throughput.json")
DAY_S = 86400.0
CC3M_TRAIN_ROWS = 3_318_333  # the published CC3M train split
ASSUMED_SUCCESS = 0.8  # share of CC3M URLs that still resolve, when no download says otherwise
ASSUMED_IMAGE_MB = 0.5  # bytes of a pool image to hash, when the sources cannot be read here


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
class Part:
    """``amount`` of one kind of work at ``rate`` (None: not known, and the stage has no projection)."""

    what: str
    amount: Optional[float]
    unit: str
    rate: Optional[Rate]
    missing: str = ""  # the (model, device) that has no figure, for the message

    @property
    def seconds(self) -> Optional[float]:
        return self.amount / self.rate.total if (self.amount is not None and self.rate) else None

    def line(self) -> str:
        if self.rate is None:
            return f"{self.what}: no figure for {self.missing}"
        r = self.rate
        amount = f"{_fmt(self.amount)} {self.unit} at " if self.amount is not None else ""
        return f"{self.what}: {amount}{r.per_s:,.1f} {self.unit}/s × {r.processes} ({r.kind}: {r.source})"


@dataclass
class StagePlan:
    stage: str
    work: str
    seconds: Optional[float]
    rates: list[str] = field(default_factory=list)
    original_s: Optional[float] = None
    notes: list[str] = field(default_factory=list)


def stage(name: str, work: str, parts: list[Part], original_s: Optional[float], notes: list[str]) -> StagePlan:
    secs = [p.seconds for p in parts]
    return StagePlan(name, work, None if any(x is None for x in secs) else sum(secs), [p.line() for p in parts],
                     original_s, notes)


class PlanError(ValueError):
    """A device kind the table has no figures for."""


KINDS = ("H100", "H200", "A100", "RTX 4090", "cpu")  # the device kinds throughput.json has rows for


def load_table() -> dict:
    return json.loads(TABLE.read_text())


def kind_of(name: str) -> Optional[str]:
    """The table's kind of a CUDA device name ('NVIDIA H100 80GB HBM3' → 'H100'); None: unknown."""
    for kind in KINDS[:-1]:
        if re.search(r"(?<![0-9A-Za-z])" + re.escape(kind).replace(r"\ ", r"\s*") + r"(?![0-9A-Za-z])", name, re.I):
            return kind
    return None


def device_kind(cfg: CerebroConfig, requested: Optional[str]) -> tuple[str, int, Optional[str]]:
    """(device kind in the table, processes per node, a note when the kind was assumed)."""
    from cerebro_core.distributed import cuda_devices

    c = cfg.compute
    if requested is not None:
        kind = next((k for k in KINDS if k.lower() == " ".join(requested.split()).lower()), None)
        if kind is None:
            raise PlanError(f"--device-kind {requested!r}: no figures for it; known kinds: {', '.join(KINDS)}")
    local = cuda_devices()
    if requested is None:
        wants_gpu = c.device == "cuda" or (c.device == "auto" and local > 0)
        kind = None if wants_gpu else "cpu"
    if kind == "cpu":
        return "cpu", int(c.nproc_per_node) if (c.nproc_per_node != "auto" and requested is None) else 1, None
    n = int(c.nproc_per_node) if c.nproc_per_node != "auto" else max(1, local)
    if kind is not None:
        return kind, n, None
    if local:
        import torch

        name = torch.cuda.get_device_name(0)
        kind = kind_of(name)
        if kind is None:
            raise PlanError(f"the GPU here is {name!r}: no figures for it; choose a kind with --device-kind "
                            f"({', '.join(KINDS)})")
        return kind, n, None
    return "H100", n, (f"assumed H100: no GPU is visible here and no --device-kind was given "
                       f"(known: {', '.join(KINDS)})")


def rate(table: dict, work: str, model: str, device: str, processes: int = 1) -> Optional[Rate]:
    for r in table["rows"]:
        if r["work"] == work and r["model"] in (model, "-") and r["device"] == device:
            return Rate(r["per_s"], r["kind"], r["source"], processes)
    return None


def part(table: dict, what: str, amount: Optional[float], unit: str, work: str, model: str, device: str,
         processes: int = 1) -> Part:
    return Part(what, amount, unit, rate(table, work, model, device, processes), f"{model} on {device}")


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


def _bytes_mb(sources: list[SourceConfig], images: int, notes: list[str]) -> float:
    from cerebro_core.data.sources import list_folder

    if sources and all(Path(s.path).is_dir() for s in sources):
        return sum(Path(r.path).stat().st_size for s in sources for r in list_folder(s.path, s.name)) / 2**20
    notes.append(f"image bytes unknown here: assumed {ASSUMED_IMAGE_MB} MB per image to hash")
    return images * ASSUMED_IMAGE_MB


def plan(cfg: CerebroConfig, device_kind_name: Optional[str] = None) -> list[StagePlan]:
    table = load_table()
    orig = table["original"]
    device, nproc, assumed = device_kind(cfg, device_kind_name)
    world = nproc * cfg.compute.nnodes
    model = cfg.train.model
    on_device = [assumed] if assumed else []
    out: list[StagePlan] = []

    # download
    notes: list[str] = []
    rows = _rows(cfg, notes)
    dl = part(table, "images", rows, "images", "download", "-", "process", cfg.download.processes)
    out.append(stage("download", f"{_fmt(rows) if rows else '?'} rows, {cfg.download.processes} process(es) × "
                     f"{cfg.download.threads} threads", [dl], orig["download_s"], notes))

    # pretrain
    notes = list(on_device)
    samples = _samples(cfg, rows, notes)
    t = cfg.train
    train_samples = int(samples * (1 - t.val_fraction)) if samples is not None else 0
    global_batch = t.batch_size * world * t.accum_steps
    steps = t.epochs * (train_samples // global_batch)
    seen = steps * global_batch
    tr = part(table, "training", seen if samples else None, "samples", "pretrain", model, device, world)
    out.append(stage("pretrain", f"{_fmt(train_samples) if samples else '?'} samples × {t.epochs} epochs = "
                     f"{_fmt(steps) if samples else '?'} steps of {_fmt(global_batch)} ({world} process(es) on "
                     f"{cfg.compute.nnodes} node(s), {device})", [tr], orig["pretrain_s"], notes))

    # adapt
    notes = list(on_device)
    a = cfg.adapt
    pool = _count_images(a.sources)
    pool_mb = _bytes_mb(a.sources, pool, notes) if pool is not None else None
    if pool is None:
        pool = orig["adapt_images"]
        notes.append(f"sources not readable here: assumed the original system's {pool:,} images")
        pool_mb = _bytes_mb([], pool, notes)
    held = _count_images([s for s in (a.validation_source, a.test_source) if s]) or 0
    annotated = round(pool * (a.annotated_validation + a.annotated_test))  # held out of the pool itself
    if annotated:
        notes.append(f"annotated splits: at most {annotated:,} pool images held out by content hash "
                     f"(adapt.annotated_validation {a.annotated_validation:g}, adapt.annotated_test "
                     f"{a.annotated_test:g}, of the images the collections annotate with a vocabulary species)")
    pool, held = pool - annotated, held + annotated
    labelled = pool + held
    picked = min(pool, a.labeller.per_class_top_k * _classes(cfg, pool))
    # what one iteration trains on: the student kind's own arithmetic (config_adapt.py)
    train_total, reg = a.student.planned_samples(seen, picked, train_samples, t.epochs,
                                                 t.batch_size * nproc * t.accum_steps, a.iterations)
    if reg:  # a replay student: its regime, and which limit set it
        notes.append(f"replay regime per iteration: {reg.steps:,} steps of {reg.global_batch:,}, "
                     f"pseudo share {100 * reg.pseudo_fraction:.0f} % of every batch, "
                     f"{reg.passes:.1f} passes over the selection ({_fmt(picked)} images at its cap, "
                     f"{100 * picked / max(1, pool):.1f} % of the pool), {reg.pretrain_equivalents:.3g} "
                     f"pretrain-equivalents (set by adapt.student.{'max_passes' if reg.bound == 'passes' else 'budget'})")
    pe = f"{train_total / seen:.3g}" if (seen and train_total) else "?"
    its = a.iterations
    parts = [  # students train on every process of one node; labelling runs on one node
        part(table, f"labelling ({its} passes)", labelled * its, "images", "embed", model, device, nproc),
        part(table, f"training ({its} students)", train_total * its if train_total else None, "samples", "pretrain",
             model, device, nproc),
        part(table, "hashing the pool (sha256, once)", pool_mb, "MB", "pool_hash", "-", "cpu"),
    ]
    n_val = ((_count_images([a.validation_source]) or 0) if a.validation_source else 0) + round(
        (pool + annotated) * a.annotated_validation)
    if a.wise_ft and n_val:  # each iteration scores its student's interpolations on validation
        parts.append(part(table, f"WiSE-FT candidates ({len(a.wise_ft)} × validation × {its})",
                          len(a.wise_ft) * n_val * its, "images", "embed", model, device, nproc))
    out.append(stage(
        "adapt", f"{its} iterations × (label {_fmt(pool)} pool + {_fmt(held)} held-out images, train "
                 f"{_fmt(train_total) if train_total else '?'} samples = {pe} pretrain-equivalents per iteration; "
                 f"student: {a.student.kind})",
        parts, orig["adapt_iteration_s"] * its * pool / orig["adapt_images"], notes))

    # index
    notes = list(on_device)
    items = _count_images(cfg.index.sources)
    if items is None:
        items = orig["adapt_images"]
        notes.append(f"index sources not readable here: assumed {items:,} images (video stills not counted)")
    dim = table["embed_dim"].get(model)
    weights_mb = table["weights_mb"].get(model)
    bundle_mb = items * dim * 4 * 2 / 2**20 + weights_mb if (dim and weights_mb) else None
    parts = [
        part(table, "embedding", items, "images", "embed", model, device, world),
        part(table, "EXIF pass (time, place, camera)", items, "images", "exif", "-", "cpu"),
        part(table, f"build (FAISS {cfg.index.kind})", items, "vectors", "index_build", "-", "cpu"),
        part(table, "near-duplicates", items, "vectors", "duplicates", "-", "cpu"),
        part(table, "publish (vectors + index + model weights)", bundle_mb, "MB", "publish", "-", "cpu"),
    ]
    if bundle_mb is not None:
        notes.append(f"published bytes derived: {_fmt(items)} × {dim} float32 twice (vectors and index) + "
                     f"{_fmt(weights_mb)} MB of {model} weights")
    out.append(stage("index", f"{_fmt(items)} images on {world} process(es), FAISS {cfg.index.kind}", parts, None,
                     notes))
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
