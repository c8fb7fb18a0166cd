"""A simulated reviewer for the adapt benchmark, never for the product (#34 item 5): before the
loop starts, a person verifies ``per_class`` × classes pool images with their true class, either
the ones the review queue proposes (``queue``: the page's ``/review``, run on the start model's
embeddings of the pool: least sure first, spread over predicted classes and k-means clusters) or
uniformly drawn ones (``random``). The verifications go into the seed's storage root as
``cerebro review import`` or the page would write them; the adapt stage then reads them as it
reads a reviewer's (``cerebro_core/adapt/verified.py``). Ground truth comes from the pool's class
folders, which the loop itself never reads."""

from __future__ import annotations

import json
from collections import Counter
from typing import Callable

import numpy as np

from cerebro_core import tracking
from cerebro_core.adapt.models import Models
from cerebro_core.adapt.stage import gather
from cerebro_core.config import CerebroConfig
from cerebro_core.data.vocab import prompts_for
from cerebro_core.home import resolve
from cerebro_core.model.registry import download, resolve_version
from cerebro_core.review.queue import choose
from cerebro_core.review.store import Verification, append, now
from cerebro_core.storage import Storage

PICKS = ("queue", "random")


def simulate_review(cfg: CerebroConfig, start_version: str, per_class: int, pick: str, seed: int,
                    log: Callable[[str], None] = print) -> dict:
    """Verify ``per_class`` × classes pool images picked by ``pick``; returns what was verified."""
    if pick not in PICKS:
        raise ValueError(f"pick: one of {PICKS}, not {pick!r}")
    pool, _, _, classes, _ = gather(cfg)
    tracking.configure(cfg)
    storage = Storage(cfg.storage)
    k = per_class * len(classes)
    if pick == "random":
        rows = [int(i) for i in np.random.default_rng(seed).choice(len(pool), size=min(k, len(pool)), replace=False)]
    else:
        d = download(resolve_version(cfg.tracking.model_name, "champion", start_version))
        a = cfg.adapt
        models = Models(cfg, storage, json.loads((d / "model_config.json").read_text())["model_name"],
                        prompts_for(classes, a.templates, a.vocabulary_kind), classes, log)
        uris, probs, feats = models.probabilities(models.load(str(d / "model.pt")), pool)
        at = {u: i for i, u in enumerate(uris)}
        order = np.array([at[it.uri] for it in pool])  # embedding rows in pool order
        probs, feats = probs[order], feats[order]
        top2 = np.sort(probs, axis=1)[:, -2:]
        rows, _, _ = choose(np.arange(len(pool)), top2[:, 1] - top2[:, 0], probs.argmax(1), lambda r: feats[r], [], k)
    batch = [Verification(sha256=pool[i].sha256, label=pool[i].label, time=now(), reviewer="simulated",
                          uri=pool[i].uri) for i in rows]
    append(resolve(cfg).storage_root, batch, storage)
    per = Counter(v.label for v in batch)
    log(f"simulated review ({pick}): {len(batch)} verified, per class {dict(sorted(per.items()))}")
    return {"pick": pick, "per_class": per_class, "verified": len(batch), "by_class": dict(per)}
