"""Verified labels in the adapt loop: what reviewers confirmed or corrected (``cerebro review``, the
page's review mode) is ground truth a person gave, so it is worth more than any pseudo-label.

Verified pool images are taken out of the labeller's hands:
- one in ``1 / validation_every`` of them (by content hash, label-blind and stable across runs)
  joins the labelled validation data that keep-best reads;
- the rest enter every student's training with their verified label at precision 1.0 (score 1.0),
  beside the labeller's selection;
- an image verified as ``empty``, ``person`` or ``unknown`` (or as a species outside the
  vocabulary) is never pseudo-labelled.
The test source is never touched: its images are held out of the pool already, verified or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cerebro_core.embed import Item


@dataclass
class Verified:
    pool: list[Item]  # what the labeller may still select from
    val: list[Item] = field(default_factory=list)  # verified images joining validation (label = verified)
    train: list[Item] = field(default_factory=list)  # verified images every student trains on
    train_labels: list[int] = field(default_factory=list)  # their class ids
    excluded: int = 0  # verified as empty / person / unknown / outside the vocabulary


def split_verified(pool: list[Item], classes: list[str], verified: dict[str, str],
                   validation_every: int) -> Verified:
    """Split the pool by what reviewers said (``verified``: ``{sha256: label}``)."""
    out = Verified(pool=[])
    for it in pool:
        label = verified.get(it.sha256 or "")
        if label is None:
            out.pool.append(it)
        elif label not in classes:
            out.excluded += 1
        elif validation_every and int(it.sha256[:12], 16) % validation_every == 0:
            out.val.append(replace(it, label=label))
        else:
            out.train.append(it)
            out.train_labels.append(classes.index(label))
    return out
