"""Labellers: the model's class probabilities (and image features) over the pool → the images the
student trains on with a caption of their label. One small class per ``adapt.labeller.kind``,
looked up by :func:`create_labeller`; a benchmark may run the loop with a labeller of its own (e.g.
a control that knows no teacher, in ``experiments/``)."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from cerebro_core.adapt.select import select
from cerebro_core.config import LabellerConfig, TopKLabeller


class Selection(NamedTuple):
    idx: np.ndarray  # rows of the pool (in the order of the probabilities)
    labels: np.ndarray  # class ids
    scores: np.ndarray  # the labeller's confidence in each label


class Labeller(Protocol):
    name: str
    min_selected: int  # fewer selected images than this: the loop stops (nothing left to learn)

    def __call__(self, iteration: int, keys: list[str], probs: np.ndarray, feats: np.ndarray) -> Selection:
        """Select among the pool images ``keys`` (uris): ``probs`` their class probabilities, ``feats``
        their normalised image features (rows in the same order)."""


class TeacherLabeller:
    """Confidence ≥ ``threshold`` and at most ``per_class_top_k`` per predicted class."""

    name = "top_k"
    min_selected = 2

    def __init__(self, cfg: TopKLabeller) -> None:
        self.cfg = cfg

    def __call__(self, iteration: int, keys: list[str], probs: np.ndarray, feats: np.ndarray) -> Selection:
        return Selection(*select(probs, self.cfg.threshold, self.cfg.per_class_top_k))


LABELLERS = {"top_k": TeacherLabeller}


def create_labeller(cfg: LabellerConfig) -> Labeller:
    """The labeller of ``adapt.labeller.kind``."""
    return LABELLERS[cfg.kind](cfg)
