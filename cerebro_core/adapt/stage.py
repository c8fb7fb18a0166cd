"""Stage 3, adapt: ``adapt.iterations`` rounds of pseudo-label → fine-tune, measured per round.

ModelVersion + wildlife sources + vocabulary ──adapt──▶ ModelVersion {cerebro-clip vM @champion}

One iteration:
  1. embed every unlabelled image with the current model (the shared embedding function);
  2. class probabilities over the vocabulary (prompt-ensembled text embeddings) — averaged with
     those of ``adapt.extra_teachers`` (other registered versions, e.g. pretrained with other
     seeds), and with ``adapt.label_ensemble`` over the starting model and every student so far;
     with ``adapt.cross_fit_folds: K`` (scratch student) the previous iteration's labels come out
     of fold instead: K students, each trained without one fold of the pool, label that fold — a
     student that trained on an image's pseudo-label otherwise hands the same label back;
  3. select pseudo-labels: confidence ≥ threshold (fixed, or per class: FlexMatch) AND per-class
     top-k (class balance);
  4. write pseudo-labelled webdataset shards (image, caption from a template, json with label,
     score, iteration, source);
  5. train the student with the pretrain trainer: fine-tune the teacher (objective: clip |
     masked_contrastive | vocab_ce), or — ``adapt.student: scratch``, a noisy student — pretrain
     a new model from random weights on the pretraining pairs plus the pseudo-labelled images
     (pseudo-captioned, or with ``adapt.student_targets: soft`` the teacher's class probabilities
     distilled into the student's zero-shot head), under torchrun with the pretraining settings;
  6. evaluate: validation/test zero-shot top-1 and mean-per-class, text→image R@k, pseudo-label
     precision (ground truth read here only, after selection), forgetting on general pairs.
Ground-truth labels are used for measurement only: selection and training never see them.
Keep-best by validation top-1 (iteration 0 = the starting model competes too); early stop when
validation falls. The best model becomes a new cerebro-clip version with alias ``champion``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from cerebro_core import tracking
from cerebro_core.adapt.select import ProbabilityEnsemble, class_entropy, class_thresholds, select
from cerebro_core.data.vocab import VocabularyError, load_vocabulary, prompts_for
from cerebro_core.config import CerebroConfig, SourceConfig, TrainConfig
from cerebro_core.distributed import one_node, world_size
from cerebro_core.embed import Item, scan_folder
from cerebro_core.embed_job import embed, embedding_dir
from cerebro_core.evaluate import retrieval_metrics
from cerebro_core.home import resolve
from cerebro_core.model import checkpoint as ckpt
from cerebro_core.model.factory import create
from cerebro_core.storage import Storage, join
from cerebro_core.train.launch import launch
from cerebro_core.train.loop import TrainJob, train
from cerebro_core.model.publish import ModelVersion, publish_model
from cerebro_core.train.data import split_shards


class AdaptInputError(ValueError):
    pass


class AdaptResult(BaseModel):
    model: ModelVersion
    best_iteration: int
    iterations: list[dict]


# --------------------------------------------------------------------------- inputs


def _check_folder(s: SourceConfig, key: str) -> None:
    if s.kind != "folder":
        raise AdaptInputError(f"{key}.kind: {s.kind!r} sources are not supported by adapt yet; use a folder")
    if not Path(s.path).is_dir():
        raise AdaptInputError(f"{key}.path: folder not found: {s.path}")


def gather(cfg: CerebroConfig) -> tuple[list[Item], list[Item], list[Item], list[str], Counter]:
    """(unlabelled pool, validation, test, classes, counts) — all checked before any compute."""
    a = cfg.adapt
    try:
        classes = load_vocabulary(a.vocabulary)
    except VocabularyError as exc:
        raise AdaptInputError(str(exc)) from None
    if not a.sources:
        raise AdaptInputError("adapt.sources: no wildlife sources configured")
    for i, s in enumerate(a.sources):
        _check_folder(s, f"adapt.sources[{i}]")
    for key, s in (("adapt.validation_source", a.validation_source), ("adapt.test_source", a.test_source)):
        if s is not None:
            _check_folder(s, key)
    counts: Counter = Counter()
    held_out: set[str] = set()

    def labelled(s: Optional[SourceConfig]) -> list[Item]:
        if s is None:
            return []
        items = [it for it in scan_folder(s.path, s.name, 1e9, counts) if it.media_type == "image"]
        for it in items:
            held_out.add(_sha(it.uri))
        return items

    val, test = labelled(a.validation_source), labelled(a.test_source)
    pool: list[Item] = []
    seen: set[str] = set()
    for s in a.sources:
        items = [it for it in scan_folder(s.path, s.name, 1e9, counts) if it.media_type == "image"]
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
            seen.add(h)
            it.sha256 = h
            pool.append(it)
    return pool, val, test, classes, counts


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def class_embeddings(model, tokenizer, prompts: list[list[str]]) -> torch.Tensor:
    """Per class, the normalised mean of its prompts' normalised text features (on the model's
    device; returned on the CPU)."""
    device = next(model.parameters()).device
    out = []
    for plist in prompts:
        f = F.normalize(model.encode_text(tokenizer(plist).to(device)).float(), dim=-1).mean(0)
        out.append(F.normalize(f, dim=-1))
    return torch.stack(out).cpu()


def probabilities(feats: np.ndarray, cls: torch.Tensor, scale: float) -> np.ndarray:
    logits = scale * torch.from_numpy(feats.astype(np.float32)) @ cls.T
    return torch.softmax(logits, dim=1).numpy()


def labelled_metrics(feats: np.ndarray, labels: list[str], classes: list[str], cls: torch.Tensor) -> dict:
    idx = [i for i, lab in enumerate(labels) if lab in classes]
    if not idx:
        return {}
    f = torch.from_numpy(feats[idx].astype(np.float32))
    y = torch.tensor([classes.index(labels[i]) for i in idx])
    pred = (f @ cls.T).argmax(1)
    correct = (pred == y).float()
    per_class = [correct[y == c].mean() for c in y.unique()]
    # text→image: each present class's prompt embedding queries the set; relevant = same label
    sims = cls[y.unique()] @ f.T
    out = {"top1": float(correct.mean()), "mean_per_class": float(torch.stack(per_class).mean()), "n": len(idx)}
    for k in (1, 5, 10):
        top = sims.topk(min(k, f.shape[0]), dim=1).indices
        rel = (y[top] == y.unique()[:, None]).float()
        out[f"text_to_image_R{k}"] = float((rel.sum(1) > 0).float().mean())
        out[f"text_to_image_P{k}"] = float(rel.mean())
    out["confusion"] = _confusion(pred.numpy(), y.numpy(), len(classes))
    return out


def _confusion(pred: np.ndarray, y: np.ndarray, n: int) -> list[list[int]]:
    m = np.zeros((n, n), np.int64)
    for p, t in zip(pred, y):
        m[t, p] += 1
    return m.tolist()


def general_retrieval(model, clip, shards: list[str], storage: Storage, max_n: int = 1000) -> dict:
    from cerebro_core.data import images
    from cerebro_core.train.data import iter_pairs

    imgs, caps = [], []
    for _, data, text in iter_pairs(shards, storage, max_n):
        try:
            imgs.append(clip.preprocess_val(images.decode(data)))
            caps.append(text)
        except images.ImageRejected:
            continue
    if not imgs:
        return {}
    with torch.no_grad():
        fi = torch.cat([F.normalize(model.encode_image(torch.stack(imgs[i:i + 256])).float(), dim=-1)
                        for i in range(0, len(imgs), 256)])
        ft = torch.cat([F.normalize(model.encode_text(clip.tokenizer(caps[i:i + 256])).float(), dim=-1)
                        for i in range(0, len(caps), 256)])
    return retrieval_metrics(fi, ft, caps)


# --------------------------------------------------------------------------- artifacts


def confusion_png(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(classes), 1.0 + 0.45 * len(classes)), dpi=100)
    ax.imshow(m, cmap="Greens")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sample_grid_png(items: list[Item], labels: list[str], scores: list[float], path: Path, n: int = 24) -> Path:
    from PIL import Image, ImageDraw

    cell, cols = 96, 6
    rows = max(1, math.ceil(min(n, len(items)) / cols))
    grid = Image.new("RGB", (cols * cell, rows * (cell + 14)), "white")
    d = ImageDraw.Draw(grid)
    for k, (it, lab, sc) in enumerate(list(zip(items, labels, scores))[:n]):
        try:
            im = Image.open(it.uri).convert("RGB").resize((cell, cell))
        except Exception:
            continue
        x, y = (k % cols) * cell, (k // cols) * (cell + 14)
        grid.paste(im, (x, y))
        d.text((x + 2, y + cell), f"{lab[:11]} {sc:.2f}", fill="black")
    grid.save(path)
    return path


# --------------------------------------------------------------------------- the loop


SOFT_TOP_K = 64  # soft targets keep each image's 64 most probable classes, renormalised


def sparse_soft_targets(probs: np.ndarray, k: int = SOFT_TOP_K) -> list[dict]:
    """Per row, ``{"i": class ids, "p": probabilities}`` of its ``k`` most probable classes,
    renormalised to sum to 1 (a 1,000-name vocabulary × 153k images stays small in the shards)."""
    out = []
    for row in probs:
        idx = np.argsort(-row, kind="stable")[:k]
        p = row[idx].astype(np.float64)
        p = p / p.sum()
        out.append({"i": [int(i) for i in idx], "p": [round(float(x), 6) for x in p]})
    return out


def write_pseudo_shards(storage: Storage, out_dir: str, items: list[Item], labels: list[int], scores: list[float],
                        classes: list[str], templates: list[str], iteration: int, per_shard: int = 1000,
                        soft: Optional[list[dict]] = None) -> list[str]:
    """Pseudo-labelled shards: image, a caption of its label from ``templates``, and json (label,
    score, iteration, source, sha256, and — with ``soft`` — the teacher's soft targets)."""
    import webdataset as wds

    urls = []
    with tempfile.TemporaryDirectory() as td:
        pattern = str(Path(td, "%05d.tar"))
        with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as w:
            for k, (it, lab, sc) in enumerate(zip(items, labels, scores)):
                data = Path(it.uri).read_bytes()
                ext = Path(it.uri).suffix.lower().lstrip(".")
                ext = "jpg" if ext in ("jpg", "jpeg") else ext
                caption = templates[k % len(templates)].format(classes[lab])
                meta = {"label": int(lab), "label_name": classes[lab], "score": float(sc), "iteration": iteration,
                        "source": it.source, "sha256": it.sha256}
                if soft is not None:
                    meta["soft"] = soft[k]
                w.write({"__key__": f"{k:07d}", ext: data, "txt": caption, "json": json.dumps(meta)})
        for p in sorted(Path(td).glob("*.tar")):
            url = join(out_dir, p.name)
            storage.put_file(p, url)
            urls.append(url)
    return urls


def ema_weights(teacher: dict, student: dict, beta: float) -> dict:
    """β·teacher + (1−β)·student for floating tensors; other buffers (counters) from the student."""
    out = {}
    for k, s in student.items():
        t = teacher[k]
        out[k] = (beta * t.detach().to(s.dtype) + (1 - beta) * s.detach()) if s.is_floating_point() else s.clone()
    return out


def finetune_config(cfg: CerebroConfig, n_samples: int) -> TrainConfig:
    ft = cfg.train.finetune
    batch = min(ft.batch_size, max(2, n_samples))
    steps_per_epoch = max(1, n_samples // batch)
    return cfg.train.model_copy(update={
        "batch_size": batch, "lr": ft.lr, "weight_decay": ft.weight_decay, "warmup_steps": ft.warmup_steps,
        "epochs": math.ceil(ft.steps / steps_per_epoch), "accum_steps": 1, "checkpoint_every_steps": 10**9,
        "keep_checkpoints": 1, "resume": "never", "log_every_steps": max(1, min(cfg.train.log_every_steps, ft.steps)),
        "seed": cfg.adapt.seed, "augment": ft.augment or cfg.train.augment,
        # in-process: no forked loader workers inside a multi-threaded orchestrator process
        "workers": 0,
    })


def pretraining_pairs(cfg: CerebroConfig, storage: Storage):
    """The pairs a scratch student is pretrained on (a download stage output), checked up front."""
    from cerebro_core.data.shardset import default_output, load_manifest

    where = cfg.adapt.pairs or default_output(cfg.download, resolve(cfg).storage_root, cfg.name)
    try:
        return load_manifest(storage, where)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise AdaptInputError(f"adapt.pairs: no download output with a manifest at {where} ({exc})") from None


def scratch_student_job(cfg: CerebroConfig, model_name: str, pairs, pseudo_shards: list[str], n_pseudo: int,
                        ckpt_dir: str, iteration: int, control: bool, mlflow_run_id: Optional[str] = None,
                        prompts: Optional[list[list[str]]] = None, teacher_scale: float = 100.0,
                        seed_offset: int = 0) -> TrainJob:
    """Noisy student: a new model from random weights, trained like the pretrain stage (``train.*``,
    its augmentation, the contrastive loss) on the pairs plus the pseudo-labelled images, for
    ``train.epochs`` passes over both: pseudo-captioned (``adapt.student_targets: captions``) or
    distilled from the teacher's soft targets into the student's zero-shot head over ``prompts``
    at the teacher's logit scale (``soft``). The control trains on the pairs alone for the same
    steps, with the contrastive loss."""
    train_urls, val_urls, n_pairs = split_shards(pairs, cfg.train.val_fraction)
    hp = cfg.train
    compute = one_node(cfg.compute)  # adapt runs on one node: its processes (compute.nproc_per_node)
    global_batch = hp.batch_size * world_size(compute) * hp.accum_steps
    steps = hp.epochs * ((n_pairs + n_pseudo) // global_batch)
    n_train = n_pairs if control else n_pairs + n_pseudo
    hp = hp.model_copy(update={
        "seed": hp.seed + 1000 * iteration + seed_offset,  # a fresh initialisation per iteration (and fold)
        "epochs": math.ceil(steps / max(1, n_train // global_batch)), "resume": "never",
    })
    distill = {}
    if cfg.adapt.student_targets == "soft" and not control:
        if not prompts:
            raise ValueError("soft targets need the class prompts")
        distill = {"objective": "clip_distill", "soft_key": "soft", "distill_prompts": prompts,
                   "distill_scale": teacher_scale, "distill_weight": cfg.adapt.distill_weight}
    return TrainJob(model=model_name, hp=hp, compute=compute, train_shards=train_urls + ([] if control else pseudo_shards),
                    train_samples=n_train, val_shards=val_urls, storage=cfg.storage, ckpt_dir=ckpt_dir,
                    max_steps=steps, mlflow_run_id=mlflow_run_id, **({"objective": "clip"} | distill))


def pretraining_samples(mv) -> Optional[int]:
    """Samples through forward+backward of the pretraining run behind a registered version (its
    ``compute/train_samples``), the unit of ``compute/pretrain_equivalents``; None when the
    version has no pretrain run that logged it."""
    run = tracking.client().get_run(mv.run_id) if mv.run_id else None
    if run is None or run.data.tags.get("stage") != "pretrain":
        return None
    return int(run.data.metrics.get("compute/train_samples", 0)) or None


def fold_of(item: Item, folds: int) -> int:
    """The cross-fit fold of a pool image: from its content hash, so it is stable across runs and
    independent of any label."""
    return int((item.sha256 or hashlib.sha256(item.uri.encode()).hexdigest())[:12], 16) % folds


def run_stage(
    cfg: CerebroConfig,
    start_version: Optional[str] = None,
    log: Callable[[str], None] = print,
    on_iteration: Optional[Callable[[dict], None]] = None,
    control: bool = False,
) -> AdaptResult:
    """Run the loop. ``control=True`` runs the equal-step control instead: the same objective and
    steps with no information from the teacher — a fine-tuned student gets the same images with
    labels drawn at random; a scratch student is pretrained on the pairs alone."""
    from mlflow.exceptions import MlflowException

    from cerebro_core.model.registry import download, resolve_version

    pool, val, test, classes, counts = gather(cfg)
    tracking.configure(cfg)
    a = cfg.adapt
    storage = Storage(cfg.storage)
    mv0 = resolve_version(cfg.tracking.model_name, "champion", start_version)
    extra_mvs = []
    for i, v in enumerate(a.extra_teachers):
        try:
            extra_mvs.append(resolve_version(cfg.tracking.model_name, None, v))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise AdaptInputError(f"adapt.extra_teachers[{i}]: no version {v!r} of {cfg.tracking.model_name}") from None
    start_dir = download(mv0)
    current_ckpt = str(start_dir / "model.pt")
    model_name = json.loads((start_dir / "model_config.json").read_text())["model_name"]
    prompts = prompts_for(classes, a.templates, a.vocabulary_kind)
    general = sorted(storage.glob(a.general_pairs)) if a.general_pairs else []
    pairs = pretraining_pairs(cfg, storage) if a.student == "scratch" else None
    work = join(resolve(cfg).storage_root, cfg.name, "adapt", tracking.client().get_experiment_by_name(
        cfg.tracking.experiment).experiment_id)
    rng = np.random.default_rng(a.seed)
    ensemble = ProbabilityEnsemble()

    def load(ck: str, name: str = model_name):
        b = create(name)
        ckpt.load_model_weights(b.model, ckpt.load(storage, ck))
        b.model.eval()
        b.weights = ck
        return b

    def embed_with(b, items: list[Item]):
        """Embedding in this node's cluster shape (compute.nproc_per_node processes)."""
        return embed(one_node(cfg.compute), cfg.storage, b.name, b.weights, items,
                     embedding_dir(resolve(cfg).storage_root, cfg.name, "adapt", b.weights, items), log=log, bundle=b)

    def pool_probabilities(b, items: Optional[list[Item]] = None) -> tuple[list[str], np.ndarray]:
        """(pool image keys, class probabilities) of one model, each with its own text tower and scale."""
        cls = class_embeddings(b.model, b.tokenizer, prompts)
        e = embed_with(b, pool if items is None else items)
        return [r["uri"] for r in e.rows], probabilities(e.vectors, cls, float(b.model.logit_scale.detach().exp()))

    def measure(b) -> dict:
        cls = class_embeddings(b.model, b.tokenizer, prompts)
        out: dict = {}
        for name, items in (("val", val), ("test", test)):
            if items:
                e = embed_with(b, items)
                label_of = {it.uri: it.label for it in items}
                labs = [label_of[r["uri"]] for r in e.rows]
                out[name] = labelled_metrics(e.vectors, labs, classes, cls)
        if general:
            out["general"] = general_retrieval(b.model, b, general, storage)
        return out

    def flat(m: dict) -> dict:
        f = {}
        for part, d in m.items():
            for k, v in d.items():
                if isinstance(v, (int, float)):
                    f[f"{part}/{k}"] = float(v)
        return f

    def out_of_fold(run_id: str, it: int, sel_items: list[Item], labels, scores, soft, teacher_scale: float,
                    ) -> dict[str, np.ndarray]:
        """Cross-fit: for each fold k, a student trained like iteration ``it``'s on the pairs plus
        the selection minus fold k labels fold k (probabilities per pool image uri)."""
        k_folds = a.cross_fit_folds
        out: dict[str, np.ndarray] = {}
        for k in range(k_folds):
            keep = [j for j, x in enumerate(sel_items) if fold_of(x, k_folds) != k]
            base = join(work, run_id, f"iteration-{it}", f"fold-{k}")
            shards = write_pseudo_shards(storage, join(base, "shards"), [sel_items[j] for j in keep],
                                         [labels[j] for j in keep], [scores[j] for j in keep], classes,
                                         a.caption_templates, it, soft=[soft[j] for j in keep] if soft else None)
            job = scratch_student_job(cfg, model_name, pairs, shards, len(keep), join(base, "checkpoints"), it,
                                      False, prompts=prompts, teacher_scale=teacher_scale, seed_offset=500 + k)
            summary = launch(job, log=log)
            spent.append(summary["step"] * summary["global_batch"])
            held_out = [x for x in pool if fold_of(x, k_folds) == k]
            keys, probs = pool_probabilities(load(summary["checkpoint"]), held_out)
            out.update(zip(keys, probs))
            log(f"adapt: iteration {it}: fold {k + 1}/{k_folds} student ({len(keep)} pseudo-labelled images, "
                f"{job.max_steps} steps) labelled {len(keys)} held-out pool images")
        return out

    history: list[dict] = []
    tags = {"start_version": mv0.version, "objective": a.objective, "control": str(control)}
    with tracking.stage_run(cfg, "adapt", tags=tags) as parent:
        pretrain_samples = pretraining_samples(mv0)
        log(f"adapt: start model v{mv0.version} was pretrained on "
            + (f"{pretrain_samples:,} samples (forward+backward); each iteration logs compute/pretrain_equivalents"
               if pretrain_samples else "an unknown number of samples (no pretrain run behind it)"))
        tracking.log_params({"adapt.pool_size": len(pool), "adapt.classes": len(classes),
                             **{f"adapt.counts.{k}": v for k, v in counts.items()}})
        extras = ensemble if a.label_ensemble else ProbabilityEnsemble()
        for mv in extra_mvs:  # fixed members of every iteration's labelling ensemble
            d = download(mv)
            extras.add(*pool_probabilities(load(str(d / "model.pt"),
                                                json.loads((d / "model_config.json").read_text())["model_name"])))
        teacher = load(current_ckpt)
        m0 = measure(teacher)
        row0 = {"iteration": 0, **flat(m0)}
        history.append(row0)
        tracking.log_metrics({k: v for k, v in row0.items() if k != "iteration"}, step=0)
        best = (0, row0.get("val/top1", -1.0), current_ckpt)
        prev_val = row0.get("val/top1")
        pending = None  # cross-fit: (iteration, selection, labels, scores, soft targets, scale) to label from
        for it in range(1, a.iterations + 1):
            with tracking.stage_run(cfg, "adapt-iteration", run_name=f"iteration {it}",
                                    parent_run_id=parent.info.run_id, tags={"iteration": str(it)},
                                    log_config=False) as child:
                cls = class_embeddings(teacher.model, teacher.tokenizer, prompts)
                teacher_scale = float(teacher.model.logit_scale.detach().exp())
                by_uri = {p.uri: p for p in pool}
                spent: list[int] = []  # samples through forward+backward this iteration, per trained model
                if pending is not None:  # cross-fit: each image labelled by a student that never saw it
                    oof = out_of_fold(parent.info.run_id, *pending)
                    keys = [p.uri for p in pool if p.uri in oof]
                    probs = np.stack([oof[k] for k in keys])
                else:
                    keys, probs = pool_probabilities(teacher)
                items = [by_uri[k] for k in keys]
                if a.label_ensemble:  # the mean over the starting model and every student so far (+ extras)
                    ensemble.add(keys, probs)
                    probs = ensemble.mean(keys)
                elif extras.models:  # the mean over the current teacher and the extra teachers
                    probs = extras.mean_with(keys, probs)
                idx, labels, scores = select(probs, a.confidence_threshold, a.per_class_top_k, a.threshold_mode)
                thresholds = class_thresholds(probs, a.confidence_threshold, a.threshold_mode)
                if control:  # same images and steps, labels carrying no teacher information
                    labels = rng.integers(0, len(classes), size=len(idx))
                sel_items = [items[i] for i in idx]
                gt = [it.label for it in sel_items]
                known = [(classes[lab], g) for lab, g in zip(labels, gt) if g is not None]
                row = {
                    "iteration": it, "selected": len(idx), "coverage": len(idx) / max(1, len(items)),
                    "mean_confidence": float(scores.mean()) if len(idx) else 0.0,
                    "class_entropy": class_entropy(labels, len(classes)),
                    "pseudo_label_precision": (sum(p == g for p, g in known) / len(known)) if known else float("nan"),
                    "embed_failures": len(pool) - len(keys),
                    "class_threshold_min": float(thresholds.min()), "class_threshold_max": float(thresholds.max()),
                    "labelling_models": ensemble.models if a.label_ensemble else extras.models + 1,
                    "cross_fit_folds": a.cross_fit_folds if pending is not None else 0,
                }
                if len(idx) < 2:
                    log(f"adapt: iteration {it}: {len(idx)} images selected, stopping")
                    tracking.log_metrics({k: v for k, v in row.items() if k != "iteration"}, step=it)
                    history.append(row)
                    break
                shard_dir = join(work, parent.info.run_id, f"iteration-{it}", "shards")
                soft = sparse_soft_targets(probs[idx]) if a.student_targets == "soft" and not control else None
                shards = write_pseudo_shards(storage, shard_dir, sel_items, list(labels), list(scores), classes,
                                             a.caption_templates, it, soft=soft)
                cls_path = None
                if a.objective == "vocab_ce":
                    cls_path = str(Path(tempfile.mkdtemp(prefix="cerebro-cls-")) / "classes.npy")
                    np.save(cls_path, cls.numpy(), allow_pickle=False)
                ckpt_dir = join(work, parent.info.run_id, f"iteration-{it}", "checkpoints")
                if a.student == "scratch":
                    job = scratch_student_job(cfg, model_name, pairs, shards, len(idx), ckpt_dir, it, control,
                                              mlflow_run_id=child.info.run_id,  # its curve in the iteration's run
                                              prompts=prompts, teacher_scale=teacher_scale)
                    row.update({"student_train_samples": job.train_samples, "student_steps": job.max_steps})
                    summary = launch(job, log=log)
                else:
                    job = TrainJob(
                        model=model_name, hp=finetune_config(cfg, len(idx)), train_shards=shards,
                        train_samples=len(idx), storage=cfg.storage, ckpt_dir=ckpt_dir,
                        init_from=current_ckpt, max_steps=cfg.train.finetune.steps,
                        freeze_text=cfg.train.finetune.freeze_text, objective=a.objective,
                        label_key="label" if a.objective != "clip" else None, class_embeddings=cls_path,
                    )
                    summary = train(job)
                current_ckpt = summary["checkpoint"]  # the student trains on from its own weights
                if a.ema_teacher is not None:
                    teacher_ckpt = join(work, parent.info.run_id, f"iteration-{it}", "ema-teacher.pt")
                    st = ckpt.load(storage, current_ckpt)
                    ckpt.save(storage, teacher_ckpt, {
                        "model": ema_weights(teacher.model.state_dict(), st["model"], a.ema_teacher),
                        "model_name": model_name, "step": st["step"]})
                else:
                    teacher_ckpt = current_ckpt
                teacher = load(teacher_ckpt)  # labels the next iteration; measured and selectable
                m = measure(teacher)
                row.update(flat(m))
                row["final_loss"] = summary["final_loss"]
                spent.append(summary["step"] * summary["global_batch"])
                row["compute/train_samples"] = float(sum(spent))
                if pretrain_samples:
                    row["compute/pretrain_equivalents"] = sum(spent) / pretrain_samples
                tracking.log_metrics({k: v for k, v in row.items() if k != "iteration" and not
                                      (isinstance(v, float) and math.isnan(v))}, step=it)
                with tempfile.TemporaryDirectory() as td:
                    if "val" in m and "confusion" in m["val"]:
                        tracking.log_artifact(confusion_png(m["val"]["confusion"], classes, Path(td, f"confusion_val_{it}.png"),
                                                            f"validation, iteration {it}"))
                    tracking.log_artifact(sample_grid_png(sel_items, [classes[x] for x in labels], list(scores),
                                                          Path(td, f"pseudo_labels_{it}.png")))
                history.append(row)
                log(f"adapt: iteration {it}: selected {len(idx)}, precision {row['pseudo_label_precision']:.3f}, "
                    f"val top1 {row.get('val/top1', float('nan')):.3f}, test top1 {row.get('test/top1', float('nan')):.3f}")
                if on_iteration is not None:
                    on_iteration(row)
                v = row.get("val/top1")
                if v is not None and v > best[1]:
                    best = (it, v, teacher_ckpt)
                elif not val:
                    best = (it, -1.0, teacher_ckpt)  # no labelled validation: the last iteration
                if a.early_stop and v is not None and prev_val is not None and v < prev_val:
                    log(f"adapt: validation fell ({prev_val:.3f} → {v:.3f}); stopping early")
                    break
                prev_val = v
                if a.cross_fit_folds and not control and it < a.iterations:
                    pending = (it, sel_items, list(labels), list(scores), soft, teacher_scale)
        tracking.log_json_artifact(history, "iterations.json")
        tracking.set_tags({"best_iteration": best[0]})
        metrics = {k: v for k, v in history[best[0]].items() if isinstance(v, float) and not math.isnan(v)}
        if best[0] == 0:
            # The starting model stays the best: keep it (never publish a worse one).
            tracking.set_alias(cfg.tracking.model_name, "champion", mv0.version)
            result = ModelVersion(name=mv0.name, version=str(mv0.version), run_id=mv0.run_id or "", model=model_name,
                                  stage="adapt(kept start)", checkpoint_url=str(start_dir / "model.pt"),
                                  artifact_uri=mv0.source, metrics=metrics)
        else:
            result = publish_model(cfg, parent.info.run_id, best[2], "adapt",
                                   {"iteration": best[0], "metric": "val/top1", "value": round(best[1], 4),
                                    "start_version": mv0.version, "objective": a.objective}, metrics)
            tracking.set_alias(cfg.tracking.model_name, "champion", result.version)
    return AdaptResult(model=result, best_iteration=best[0], iterations=history)
