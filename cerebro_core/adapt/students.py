"""Adapt's students as training jobs for the pretrain trainer (contrastive loss, torchrun on one
node), and the pseudo-captioned shards they read.

- ``replay`` (default): warm-started from the teacher; every batch an exact ``pseudo_fraction`` of
  pseudo-captioned images, the rest pretraining pairs; ``max_passes`` over the selection (at its
  cap) or ``budget`` pretrain-equivalents per iteration, whichever is less (``ReplayStudent.regime``).
- ``scratch`` (noisy student): a new model from random weights, ``train.*`` on the pairs plus the
  pseudo-captioned images, ``train.epochs`` passes over both (the selection counted at its cap).
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Optional

from cerebro_core import tracking
from cerebro_core.config import CerebroConfig, ReplayStudent, ScratchStudent
from cerebro_core.distributed import one_node, world_size
from cerebro_core.embed import Item
from cerebro_core.home import resolve
from cerebro_core.storage import Storage, join
from cerebro_core.train.data import split_shards
from cerebro_core.train.loop import TrainJob


class AdaptInputError(ValueError):
    pass


def write_pseudo_shards(storage: Storage, out_dir: str, items: list[Item], labels: list[int], scores: list[float],
                        classes: list[str], templates: list[str], iteration: int, per_shard: int = 1000) -> list[str]:
    """Pseudo-labelled shards: image, a caption of its label from ``templates`` (in turn), and json
    (label, score, iteration, source, sha256)."""
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
                w.write({"__key__": f"{k:07d}", ext: data, "txt": caption, "json": json.dumps(meta)})
        for p in sorted(Path(td).glob("*.tar")):
            url = join(out_dir, p.name)
            storage.put_file(p, url)
            urls.append(url)
    return urls


def pretraining_pairs(cfg: CerebroConfig, storage: Storage):
    """The pairs the students replay (a download stage output), checked up front."""
    from cerebro_core.data.shardset import default_output, load_manifest

    where = cfg.adapt.pairs or default_output(cfg.download, resolve(cfg).storage_root, cfg.name)
    try:
        return load_manifest(storage, where)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise AdaptInputError(f"adapt.pairs: no download output with a manifest at {where} ({exc})") from None


def pretraining_samples(cfg: CerebroConfig, mv, n_pairs: int) -> int:
    """Samples through forward+backward of the pretraining run behind a registered version (its
    ``compute/train_samples``): the unit of ``compute/pretrain_equivalents`` and of the replay
    budget. A version with no pretrain run behind it (e.g. an earlier adapt's): what ``train.*``
    pretraining on these pairs costs."""
    run = tracking.client().get_run(mv.run_id) if mv.run_id else None
    if run is not None and run.data.tags.get("stage") == "pretrain":
        logged = int(run.data.metrics.get("compute/train_samples", 0))
        if logged:
            return logged
    gb = _global_batch(cfg)
    return cfg.train.epochs * (n_pairs // gb) * gb


def _global_batch(cfg: CerebroConfig) -> int:
    return cfg.train.batch_size * world_size(one_node(cfg.compute)) * cfg.train.accum_steps


def replay_job(cfg: CerebroConfig, student: ReplayStudent, model_name: str, pairs, pseudo_shards: list[str],
               n_cap: int, init_from: str, unit_samples: int, ckpt_dir: str, iteration: int,
               mlflow_run_id: Optional[str] = None) -> TrainJob:
    """The teacher's weights trained on, with the pretraining objective, for ``student.regime``'s
    steps (cosine from ``lr_scale × train.lr`` after ``warmup_fraction`` of them), every batch an
    exact ``pseudo_fraction`` of the pseudo-captioned images (none when nothing was selected)."""
    train_urls, val_urls, n_pairs = split_shards(pairs, cfg.train.val_fraction)
    gb = _global_batch(cfg)
    steps = student.regime(unit_samples, n_cap, gb).steps
    f = student.pseudo_fraction if pseudo_shards else 0.0
    n_train = round(n_pairs / (1 - f))  # an epoch: one pass over the pairs
    hp = cfg.train.model_copy(update={
        "lr": cfg.train.lr * student.lr_scale, "warmup_steps": int(student.warmup_fraction * steps),
        "epochs": math.ceil(steps / max(1, n_train // gb)), "resume": "never",
        "seed": cfg.train.seed + 1000 * iteration, "augment": student.augment or cfg.train.augment,
    })
    return TrainJob(model=model_name, hp=hp, compute=one_node(cfg.compute), train_shards=train_urls,
                    mix_shards=list(pseudo_shards), mix_fraction=f, train_samples=n_train, val_shards=val_urls,
                    storage=cfg.storage, ckpt_dir=ckpt_dir, init_from=init_from, max_steps=steps,
                    mlflow_run_id=mlflow_run_id)


def scratch_job(cfg: CerebroConfig, model_name: str, pairs, pseudo_shards: list[str], n_pseudo: int,
                n_counted: int, ckpt_dir: str, iteration: int, mlflow_run_id: Optional[str] = None,
                seed_offset: int = 0) -> TrainJob:
    """A new model from random weights (seed per iteration and fold), trained like the pretrain
    stage on the pairs plus ``n_pseudo`` pseudo-captioned images for ``train.epochs`` passes over
    ``n_pairs + n_counted`` samples (``n_counted``: the selection's cap, so the steps do not depend
    on how many images the labeller kept)."""
    train_urls, val_urls, n_pairs = split_shards(pairs, cfg.train.val_fraction)
    gb = _global_batch(cfg)
    steps = cfg.train.epochs * ((n_pairs + n_counted) // gb)
    n_train = n_pairs + n_pseudo
    hp = cfg.train.model_copy(update={
        "seed": cfg.train.seed + 1000 * iteration + seed_offset,
        "epochs": math.ceil(steps / max(1, n_train // gb)), "resume": "never",
    })
    return TrainJob(model=model_name, hp=hp, compute=one_node(cfg.compute), train_shards=train_urls + pseudo_shards,
                    train_samples=n_train, val_shards=val_urls, storage=cfg.storage, ckpt_dir=ckpt_dir,
                    max_steps=steps, mlflow_run_id=mlflow_run_id)


def selection_cap(cfg: CerebroConfig, n_pool: int, n_classes: int) -> int:
    """The most images one labelling can select: per-class top-k × classes, at most the pool."""
    return min(n_pool, cfg.adapt.labeller.per_class_top_k * n_classes)


def fold_of(item: Item, folds: int) -> int:
    """The cross-fit fold of a pool image: from its content hash, so it is stable across runs and
    independent of any label."""
    return int((item.sha256 or hashlib.sha256(item.uri.encode()).hexdigest())[:12], 16) % folds


__all__ = ["AdaptInputError", "ReplayStudent", "ScratchStudent", "fold_of", "pretraining_pairs",
           "pretraining_samples", "replay_job", "scratch_job", "selection_cap", "write_pseudo_shards"]
