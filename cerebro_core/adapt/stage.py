"""Stage 3, adapt: ``adapt.iterations`` rounds of pseudo-label → train a student, measured per round.

ModelVersion + wildlife sources + vocabulary + pretraining pairs ──adapt──▶ ModelVersion {@champion}

One iteration:
  1. embed every unlabelled image with the current model (the shared embedding job) → class
     probabilities over the vocabulary (prompt-ensembled text embeddings); for a scratch student
     with ``folds: K``, iterations after the first are labelled out of fold (``folds.py``);
  2. the labeller selects: confidence ≥ threshold AND per-class top-k (class balance);
  3. pseudo-captioned webdataset shards (image, caption from a template, json with label, score);
  4. the student trains with the pretrain trainer under torchrun (``students.py``): by default
     warm-started from the teacher on the pretraining pairs mixed with the pseudo-captioned images
     for ``adapt.student.budget`` pretrain-equivalents;
  5. measure: validation/test zero-shot top-1 and mean per class, text→image R@k, pseudo-label
     precision (ground truth read here only, after selection), forgetting on general pairs, and
     ``compute/pretrain_equivalents`` (samples trained ÷ samples of the pretraining run).
Ground-truth labels are used for measurement only: selection and training never see them.
Keep-best by validation top-1 (iteration 0 = the starting model competes too); early stop when
validation falls. The best model becomes a new cerebro-clip version with alias ``champion``.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from pydantic import BaseModel

from cerebro_core import tracking
from cerebro_core.adapt.artifacts import confusion_png, sample_grid_png
from cerebro_core.adapt.folds import out_of_fold
from cerebro_core.adapt.label import Labeller, create_labeller
from cerebro_core.adapt.models import SEARCH, Models, rank_key
from cerebro_core.adapt.select import class_entropy
from cerebro_core.adapt.students import (AdaptInputError, pretraining_pairs, pretraining_samples, replay_job,
                                         scratch_job, selection_cap, write_pseudo_shards)
from cerebro_core.adapt.verified import split_verified
from cerebro_core.config import CerebroConfig, ReplayStudent, SourceConfig
from cerebro_core.data import coco_meta, megadetector
from cerebro_core.data.mirror import folder_error, has_image, local_folder
from cerebro_core.data.vocab import VocabularyError, load_vocabulary, prompts_for
from cerebro_core.embed import Item, scan_folder
from cerebro_core.home import resolve
from cerebro_core.model.publish import ModelVersion, publish_model
from cerebro_core.review.store import verified_labels
from cerebro_core.storage import Storage, join
from cerebro_core.train.data import split_shards
from cerebro_core.train.launch import launch

__all__ = ["AdaptInputError", "AdaptResult", "gather", "run_loop", "run_stage"]


class AdaptResult(BaseModel):
    model: ModelVersion
    best_iteration: int
    iterations: list[dict]


# --------------------------------------------------------------------------- inputs


def _local(cfg: CerebroConfig, s: SourceConfig, key: str) -> str:
    """The source's folder here: a local one, or an ``s3://`` prefix mirrored under the state dir
    (copied again only where an object's size or ETag changed)."""
    if s.kind != "folder":
        raise AdaptInputError(f"{key}.kind: {s.kind!r} sources are not supported by adapt yet; use a folder")
    try:
        folder = local_folder(Storage(cfg.storage), s.path, resolve(cfg).home)
    except FileNotFoundError:
        raise AdaptInputError(f"{key}.path: nothing at {s.path}") from None
    if folder is None:
        raise AdaptInputError(f"{key}.path: folder not found: {s.path}")
    return str(folder)


def _sources(cfg: CerebroConfig) -> list[tuple[str, SourceConfig]]:
    a = cfg.adapt
    return [(f"adapt.sources[{i}]", s) for i, s in enumerate(a.sources)] + [
        (key, s) for key, s in (("adapt.validation_source", a.validation_source), ("adapt.test_source", a.test_source))
        if s is not None]


def check_inputs(cfg: CerebroConfig) -> list[str]:
    """What adapt needs, checked without doing its work (no image is hashed, no folder mirrored,
    no JSON read): the vocabulary, the sources, their folders and metadata files. Returns the
    classes; AdaptInputError naming the key. The CLI runs this before starting Prefect."""
    try:
        classes = load_vocabulary(cfg.adapt.vocabulary)
    except VocabularyError as exc:
        raise AdaptInputError(str(exc)) from None
    if not cfg.adapt.sources:
        raise AdaptInputError("adapt.sources: no wildlife sources configured")
    storage = Storage(cfg.storage)
    for key, s in _sources(cfg):
        if s.kind != "folder":
            raise AdaptInputError(f"{key}.kind: {s.kind!r} sources are not supported by adapt yet; use a folder")
        bad = folder_error(storage, s.path, f"{key}.path") or next(
            iter(coco_meta.source_file_errors(storage, s, "adapt.sources")), None)
        if bad:
            raise AdaptInputError(bad)
        if key.startswith("adapt.sources[") and not has_image(s.path):
            raise AdaptInputError(f"adapt.sources[{s.name}]: no images in {s.path}")
    return classes


def gather(cfg: CerebroConfig) -> tuple[list[Item], list[Item], list[Item], list[str], Counter]:
    """(unlabelled pool, validation, test, classes, counts), every input checked first."""
    a = cfg.adapt
    classes = check_inputs(cfg)
    folders = {id(s): _local(cfg, s, f"adapt.sources[{i}]") for i, s in enumerate(a.sources)}
    for key, s in (("adapt.validation_source", a.validation_source), ("adapt.test_source", a.test_source)):
        if s is not None:
            folders[id(s)] = _local(cfg, s, key)
    counts: Counter = Counter()
    held_out: set[str] = set()
    storage = Storage(cfg.storage)
    try:  # the collections' own JSON: their files, labels, times, cameras (coco_meta), read first
        every = [s for s in (*a.sources, a.validation_source, a.test_source) if s is not None]
        meta = {id(s): coco_meta.for_source(storage, s, counts) for s in every}
        flags = {id(s): megadetector.for_source(storage, s, counts) for s in every}
    except FileNotFoundError as exc:
        raise AdaptInputError(f"adapt.{exc}") from None

    def scan(s: SourceConfig) -> list[Item]:
        return [it for it in scan_folder(folders[id(s)], s.name, 1e9, counts, meta[id(s)], s.layout, flags[id(s)])
                if it.media_type == "image"]

    def labelled(s: Optional[SourceConfig]) -> list[Item]:
        if s is None:
            return []
        items = scan(s)
        for it in items:
            held_out.add(_sha(it.uri))
        return items

    val, test = labelled(a.validation_source), labelled(a.test_source)
    pool: list[Item] = []
    seen: set[str] = set()
    for s in a.sources:
        items = scan(s)
        if not items:
            raise AdaptInputError(f"adapt.sources[{s.name}]: no images in {s.path}")
        for it in items:
            try:
                h = _sha(it.uri)
            except OSError:
                counts[f"unreadable.{s.name}"] += 1
                continue
            if h in seen or h in held_out:  # de-duplicated across sources, never a held-out image
                counts["duplicates"] += 1
                continue
            if it.extra.get("empty") or it.extra.get("person"):  # the source says: no animal to label
                counts[f"source_{'person' if it.extra.get('person') else 'empty'}"] += 1
                continue
            seen.add(h)
            it.sha256 = h
            u = int(h[:12], 16) / 16**12  # the collections' annotated images: a share held out by content hash
            if it.label in classes and u < a.annotated_validation:
                val.append(it)
                counts["annotated_validation"] += 1
            elif it.label in classes and u < a.annotated_validation + a.annotated_test:
                test.append(it)
                counts["annotated_test"] += 1
            else:
                pool.append(it)
    return pool, val, test, classes, counts


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _flat(m: dict) -> dict:
    return {f"{part}/{k}": float(v) for part, d in m.items() for k, v in d.items() if isinstance(v, (int, float))}


def run_stage(cfg: CerebroConfig, start_version: Optional[str] = None, log: Callable[[str], None] = print,
              on_iteration: Optional[Callable[[dict], None]] = None) -> AdaptResult:
    """The adapt stage: the loop with the labeller of ``adapt.labeller.kind``."""
    return run_loop(cfg, create_labeller(cfg.adapt.labeller), start_version, log, on_iteration)


def _fmt(row: dict) -> str:
    """The iteration's line: figures without labels are left out, not printed as nan."""
    out = [f"{name} {row[key]:.3f}" for name, key in (
        ("precision", "pseudo_label_precision"), ("val search mAP", f"val/{SEARCH}"), ("val top1", "val/top1"),
        ("test top1", "test/top1")) if not math.isnan(row.get(key, math.nan))]
    if "wise_ft_alpha" in row:
        out.append(f"α {row['wise_ft_alpha']:g}")
    return ", ".join(out + [f"{row['compute/pretrain_equivalents']:.3f} pretrain-equivalents"])


def _choose(models: Models, teacher_ckpt: str, student_ckpt: str, val: list[Item], base: str, row: dict,
            log: Callable[[str], None]) -> tuple[float, str]:
    """The iteration's model: the student or a WiSE-FT interpolation with its teacher
    (``adapt.wise_ft``), whichever validation ranks first (:func:`rank_key`; ties: the larger α)."""
    alphas = models.cfg.adapt.wise_ft if val else []
    if not alphas:
        return 1.0, student_ckpt
    scored = []
    for alpha in [1.0] + sorted(alphas, reverse=True):
        ck = student_ckpt if alpha == 1.0 else models.interpolate(teacher_ckpt, student_ckpt, alpha,
                                                                   join(base, f"wise-ft-{alpha:g}.pt"))
        v = _flat(models.measure(models.load(ck), {"val": val}, general=False))
        row[f"wise_ft/{alpha:g}/val_search"], row[f"wise_ft/{alpha:g}/val_top1"] = rank_key(v)
        scored.append((rank_key(v), alpha, ck))
    key, alpha, ck = max(scored, key=lambda x: x[0])  # max keeps the first of equals: the larger α
    log(f"adapt: WiSE-FT: " + ", ".join(f"α {a:g} {k[0]:.3f}/{k[1]:.3f}" for k, a, _ in scored)
        + f" (val search mAP/top1) → α {alpha:g}")
    return alpha, ck


def run_loop(cfg: CerebroConfig, labeller: Labeller, start_version: Optional[str] = None,
             log: Callable[[str], None] = print, on_iteration: Optional[Callable[[dict], None]] = None,
             ) -> AdaptResult:
    """The loop with any labeller (the stage's, or a benchmark's control)."""
    from cerebro_core.model.registry import download, resolve_version

    pool, val, test, classes, counts = gather(cfg)
    tracking.configure(cfg)
    a = cfg.adapt
    storage = Storage(cfg.storage)
    # what reviewers verified: out of the labeller's hands, into validation or every student's training
    vf = split_verified(pool, classes, verified_labels(resolve(cfg).storage_root, storage), a.verified_to_validation)
    pool, val = vf.pool, val + vf.val
    counts.update({"verified_validation": len(vf.val), "verified_training": len(vf.train),
                   "verified_excluded": vf.excluded})
    pairs = pretraining_pairs(cfg, storage)
    n_pairs = split_shards(pairs, cfg.train.val_fraction)[2]
    mv0 = resolve_version(cfg.tracking.model_name, "champion", start_version)
    start_dir = download(mv0)
    current_ckpt = str(start_dir / "model.pt")
    model_name = json.loads((start_dir / "model_config.json").read_text())["model_name"]
    models = Models(cfg, storage, model_name, prompts_for(classes, a.templates, a.vocabulary_kind), classes, log)
    work = join(resolve(cfg).storage_root, cfg.name, "adapt", tracking.client().get_experiment_by_name(
        cfg.tracking.experiment).experiment_id)
    student = a.student
    cap = selection_cap(cfg, len(pool), len(classes))
    history: list[dict] = []
    tags = {"start_version": mv0.version, "student": student.kind, "labeller": labeller.name}
    with tracking.stage_run(cfg, "adapt", tags=tags) as parent:
        unit = pretraining_samples(cfg, mv0, n_pairs)
        log(f"adapt: student {student.kind}; start model v{mv0.version} was pretrained on {unit:,} samples "
            "(forward+backward); each iteration logs compute/pretrain_equivalents")
        for src in a.sources:  # what the loop read: the unlabelled pool per source
            uris = [it.uri for it in pool if it.source == src.name]
            tracking.log_dataset(src.name, src.path, tracking.listing_digest(uris), "unlabelled", len(uris))
        for src, items in ((a.validation_source, val), (a.test_source, test)):
            if src is not None and items:
                tracking.log_dataset(src.name, src.path, tracking.listing_digest([it.uri for it in items]),
                                     "validation" if src is a.validation_source else "test", len(items))
        params = {"adapt.pool_size": len(pool), "adapt.classes": len(classes), "adapt.pretrain_samples": unit,
                  "adapt.selection_cap": cap, **{f"adapt.counts.{k}": v for k, v in counts.items()}}
        if isinstance(student, ReplayStudent):  # the regime a benchmark must match to speak for this run
            params.update({f"adapt.regime.{k}": v for k, v in student.regime(
                unit, cap, cfg.train.batch_size * cfg.train.accum_steps * _world(cfg))._asdict().items()})
        tracking.log_params(params)
        teacher = models.load(current_ckpt)
        row0 = {"iteration": 0, **_flat(models.measure(teacher, {"val": val, "test": test}))}
        history.append(row0)
        tracking.log_metrics({k: v for k, v in row0.items() if k != "iteration"}, step=0)
        best = (0, rank_key(row0), current_ckpt)
        prev = rank_key(row0)
        pending = None  # scratch with folds: the previous iteration's (selection, labels, scores)
        for it in range(1, a.iterations + 1):
            with tracking.stage_run(cfg, "adapt-iteration", run_name=f"iteration {it}",
                                    parent_run_id=parent.info.run_id, tags={"iteration": str(it)},
                                    log_config=False) as child:
                spent: list[int] = []  # samples through forward+backward this iteration, per trained model
                base = join(work, parent.info.run_id, f"iteration-{it}")
                if pending is not None:  # each image labelled by a fold student that never saw it
                    oof = out_of_fold(cfg, models, pairs, pool, classes, cap, base, it - 1, *pending, spent=spent)
                    keys = [p.uri for p in pool if p.uri in oof]
                    probs = np.stack([oof[k] for k in keys]) if keys else np.zeros((0, len(classes)))
                    feats = np.zeros((len(keys), 0), np.float32)  # fold students: no one feature space
                else:
                    keys, probs, feats = models.probabilities(teacher, pool)
                by_uri = {p.uri: p for p in pool}
                items = [by_uri[k] for k in keys]
                idx, labels, scores = labeller(it, keys, probs, feats)
                sel_items = [items[i] for i in idx]
                known = [(classes[lab], x.label) for lab, x in zip(labels, sel_items) if x.label is not None]
                row = {
                    "iteration": it, "selected": len(idx), "coverage": len(idx) / max(1, len(items)),
                    "mean_confidence": float(scores.mean()) if len(idx) else 0.0,
                    "class_entropy": class_entropy(labels, len(classes)),
                    "pseudo_label_precision": (sum(p == g for p, g in known) / len(known)) if known else float("nan"),
                    "embed_failures": len(pool) - len(keys), "out_of_fold": float(pending is not None),
                }
                if len(idx) < labeller.min_selected:
                    log(f"adapt: iteration {it}: {len(idx)} images selected, stopping")
                    tracking.log_metrics({k: v for k, v in row.items() if k != "iteration"}, step=it)
                    history.append(row)
                    break
                if vf.train and len(idx):  # verified labels beside the pseudo-labels, at precision 1.0
                    sel_items += vf.train
                    labels = np.concatenate([labels, np.asarray(vf.train_labels, labels.dtype)])
                    scores = np.concatenate([scores, np.ones(len(vf.train), scores.dtype)])
                    row["verified_training"] = len(vf.train)
                shards = write_pseudo_shards(storage, join(base, "shards"), sel_items, list(labels), list(scores),
                                             classes, a.labeller.caption_templates, it) if len(idx) else []
                if isinstance(student, ReplayStudent):
                    job = replay_job(cfg, student, model_name, pairs, shards, cap, current_ckpt, unit,
                                     join(base, "checkpoints"), it, mlflow_run_id=child.info.run_id)
                else:
                    job = scratch_job(cfg, model_name, pairs, shards, len(idx), cap, join(base, "checkpoints"), it,
                                      mlflow_run_id=child.info.run_id)
                row.update({"student_train_samples": job.train_samples, "student_steps": job.max_steps})
                summary = launch(job, log=log)
                spent.append(summary["step"] * summary["global_batch"])
                share = float(np.mean(summary.get("mixed_share") or [0.0]))
                if job.mix_shards:  # measured in the student's batches, not computed
                    row["pseudo_share"] = share
                    row["passes"] = summary["step"] * summary["global_batch"] * share / max(1, len(idx))
                alpha, current_ckpt = (_choose(models, current_ckpt, summary["checkpoint"], val, base, row, log)
                                       if isinstance(student, ReplayStudent) else (1.0, summary["checkpoint"]))
                row["wise_ft_alpha"] = alpha
                teacher = models.load(current_ckpt)  # labels the next iteration; measured and selectable
                m = models.measure(teacher, {"val": val, "test": test})
                row.update(_flat(m))
                row["final_loss"] = summary["final_loss"]
                row["compute/train_samples"] = float(sum(spent))
                row["compute/pretrain_equivalents"] = sum(spent) / unit
                tracking.log_metrics({k: v for k, v in row.items() if k != "iteration" and not
                                      (isinstance(v, float) and math.isnan(v))}, step=it)
                with tempfile.TemporaryDirectory() as td:
                    if "val" in m and "confusion" in m["val"]:
                        tracking.log_artifact(confusion_png(m["val"]["confusion"], classes,
                                                            Path(td, f"confusion_val_{it}.png"),
                                                            f"validation, iteration {it}"))
                    if len(idx):
                        tracking.log_artifact(sample_grid_png(sel_items, [classes[x] for x in labels], list(scores),
                                                              Path(td, f"pseudo_labels_{it}.png")))
                history.append(row)
                log(f"adapt: iteration {it}: selected {len(idx)}, " + _fmt(row))
                if on_iteration is not None:
                    on_iteration(row)
                k = rank_key(row)
                if val and k > best[1]:
                    best = (it, k, current_ckpt)
                elif not val:
                    best = (it, k, current_ckpt)  # no labelled validation: the last iteration
                if a.early_stop and val and k < prev:
                    log(f"adapt: validation fell ({prev[0]:.3f}/{prev[1]:.3f} → {k[0]:.3f}/{k[1]:.3f} "
                        "search mAP/top1); stopping early")
                    break
                prev = k
                if getattr(student, "folds", 0) and it < a.iterations and len(idx):
                    pending = (sel_items, list(labels), list(scores))
        tracking.log_json_artifact(history, "iterations.json")
        tracking.set_tags({"best_iteration": best[0]})
        metrics = {k: v for k, v in history[best[0]].items() if isinstance(v, float) and not math.isnan(v)}
        result = _publish(cfg, models, parent.info.run_id, mv0, start_dir, model_name, best, val, metrics, log)
    return AdaptResult(model=result, best_iteration=best[0], iterations=history)


def _world(cfg: CerebroConfig) -> int:
    from cerebro_core.distributed import one_node, world_size

    return world_size(one_node(cfg.compute))


def _publish(cfg: CerebroConfig, models: Models, run_id: str, mv0, start_dir: Path, model_name: str,
             best: tuple, val: list[Item], metrics: dict, log: Callable[[str], None]) -> ModelVersion:
    """Register the best iteration (keep-best) and move ``champion`` to it only when it is at least as
    good on validation as the current champion (measured here when that is not the start model)."""
    try:
        champ: Optional[str] = str(tracking.get_version_by_alias(cfg.tracking.model_name, "champion").version)
    except Exception:  # no champion yet
        champ = None
    champ_key = None  # the start model is the champion: keep-best already weighed it (iteration 0)
    if val and champ is not None and champ != str(mv0.version):
        from cerebro_core.model.registry import download, resolve_version

        c_dir = download(resolve_version(cfg.tracking.model_name, None, champ))
        champ_key = rank_key(_flat(models.measure(models.load(str(c_dir / "model.pt")), {"val": val}, False)))
    if best[0] == 0:  # the starting model stays the best: nothing new to register
        result = ModelVersion(name=mv0.name, version=str(mv0.version), run_id=mv0.run_id or "", model=model_name,
                              stage="adapt(kept start)", checkpoint_url=str(start_dir / "model.pt"),
                              artifact_uri=mv0.source, metrics=metrics)
    else:
        result = publish_model(cfg, run_id, best[2], "adapt",
                               {"iteration": best[0], "metric": f"val/{SEARCH}, val/top1",
                                "value": "/".join(f"{x:.4f}" for x in best[1]), "start_version": mv0.version,
                                "student": cfg.adapt.student.kind}, metrics)
    if champ_key is None or best[1] >= champ_key:
        tracking.set_alias(cfg.tracking.model_name, "champion", result.version)
    else:
        log(f"adapt: v{result.version} ranks below the champion v{champ} on validation "
            f"({best[1][0]:.3f}/{best[1][1]:.3f} < {champ_key[0]:.3f}/{champ_key[1]:.3f}); champion unchanged")
    return result
