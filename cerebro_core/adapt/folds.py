"""Out-of-fold labels for the scratch student (``adapt.student.folds: K``): after iteration i, K
more students are trained like iteration i's, each on the pairs plus the selection minus one fold
of the pool (folds by image hash, label-blind), and each labels only its held-out fold — so no
image is labelled by a model that trained on its own pseudo-label."""

from __future__ import annotations

import numpy as np

from cerebro_core.adapt.students import fold_of, scratch_job, write_pseudo_shards
from cerebro_core.config import CerebroConfig
from cerebro_core.embed import Item
from cerebro_core.storage import join
from cerebro_core.train.launch import launch


def out_of_fold(cfg: CerebroConfig, models, pairs, pool: list[Item], classes: list[str], cap: int, base: str,
                it: int, sel_items: list[Item], labels: list[int], scores: list[float],
                spent: list[int]) -> dict[str, np.ndarray]:
    """Per pool image uri, the class probabilities of the fold student that did not see it
    (``spent`` collects each fold student's trained samples)."""
    k_folds = cfg.adapt.student.folds
    out: dict[str, np.ndarray] = {}
    for k in range(k_folds):
        keep = [j for j, x in enumerate(sel_items) if fold_of(x, k_folds) != k]
        shards = write_pseudo_shards(models.storage, join(base, f"fold-{k}", "shards"), [sel_items[j] for j in keep],
                                     [labels[j] for j in keep], [scores[j] for j in keep], classes,
                                     cfg.adapt.labeller.caption_templates, it)
        n_counted = round(cap * (k_folds - 1) / k_folds)  # the fold's share of the selection's cap
        job = scratch_job(cfg, models.model_name, pairs, shards, len(keep), n_counted,
                          join(base, f"fold-{k}", "checkpoints"), it, seed_offset=500 + k)
        summary = launch(job, log=models.log)
        spent.append(summary["step"] * summary["global_batch"])
        held_out = [x for x in pool if fold_of(x, k_folds) == k]
        keys, probs, _ = models.probabilities(models.load(summary["checkpoint"]), held_out)
        out.update(zip(keys, probs))
        models.log(f"adapt: fold {k + 1}/{k_folds} student ({len(keep)} pseudo-labelled images, "
                   f"{job.max_steps} steps) labelled {len(keys)} held-out pool images")
    return out
