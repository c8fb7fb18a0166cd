"""Labellers: the model's class probabilities (and image features) over the pool → the images the
student trains on with a caption of their label. One small class per ``adapt.labeller.kind``,
looked up by :func:`create_labeller`; a benchmark may run the loop with a labeller of its own (e.g.
a control that knows no teacher, in ``experiments/``)."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from cerebro_core.adapt.select import select
from cerebro_core.config import AgreementLabeller, LabellerConfig, TopKLabeller


class Selection(NamedTuple):
    idx: np.ndarray  # rows of the pool (in the order of the probabilities)
    labels: np.ndarray  # class ids
    scores: np.ndarray  # the labeller's confidence in each label


class Labeller(Protocol):
    name: str
    min_selected: int  # fewer selected images than this: the loop stops (nothing left to learn)
    views: tuple[str, ...]  # the embedding views it reads (cerebro_core.embed_job.view_transform), "center" first

    def __call__(self, iteration: int, keys: list[str], probs: dict[str, np.ndarray], feats: np.ndarray) -> Selection:
        """Select among the pool images ``keys`` (uris): ``probs`` their class probabilities in each
        of ``views``, ``feats`` their normalised image features in the first (rows in the same order)."""


def per_class(cfg: LabellerConfig, iteration: int) -> int:
    """The per-class cap of ``iteration`` (1-based): ``per_class_top_k``, grown by ``grow_per_iteration``."""
    return cfg.per_class_top_k + (iteration - 1) * cfg.grow_per_iteration


class TeacherLabeller:
    """Confidence ≥ ``threshold`` and at most ``per_class_top_k`` per predicted class."""

    name = "top_k"
    min_selected = 2
    views = ("center",)

    def __init__(self, cfg: TopKLabeller) -> None:
        self.cfg = cfg

    def __call__(self, iteration: int, keys: list[str], probs: dict[str, np.ndarray], feats: np.ndarray) -> Selection:
        return Selection(*select(probs["center"], self.cfg.threshold, per_class(self.cfg, iteration)))


class TwoViewLabeller:
    """Only images whose two views (the image and its mirror image) get the same top class; among
    them, confidence (the two views' mean probability) ≥ ``threshold`` and at most
    ``per_class_top_k`` per class."""

    name = "agreement"
    min_selected = 2
    views = ("center", "mirror")

    def __init__(self, cfg: AgreementLabeller) -> None:
        self.cfg = cfg

    def __call__(self, iteration: int, keys: list[str], probs: dict[str, np.ndarray], feats: np.ndarray) -> Selection:
        a, b = probs["center"], probs["mirror"]
        agree = np.flatnonzero(a.argmax(1) == b.argmax(1))
        idx, labels, scores = select((a[agree] + b[agree]) / 2, self.cfg.threshold, per_class(self.cfg, iteration))
        return Selection(agree[idx], labels, scores)


LABELLERS = {"top_k": TeacherLabeller, "agreement": TwoViewLabeller}


def create_labeller(cfg: LabellerConfig) -> Labeller:
    """The labeller of ``adapt.labeller.kind``."""
    return LABELLERS[cfg.kind](cfg)
