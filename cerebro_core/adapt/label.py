"""Labellers: the teacher's class probabilities over the pool → the images the student trains on
with a caption of their label. The stage runs ``TeacherLabeller``; a benchmark may run the same
loop with a labeller of its own (e.g. a control that knows no teacher)."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from cerebro_core.adapt.select import select
from cerebro_core.config import LabellerConfig


class Selection(NamedTuple):
    idx: np.ndarray  # rows of the pool (in the order of the probabilities)
    labels: np.ndarray  # class ids
    scores: np.ndarray  # the teacher's confidence in each label


class Labeller(Protocol):
    name: str
    min_selected: int  # fewer selected images than this: the loop stops (nothing left to learn)

    def __call__(self, iteration: int, keys: list[str], probs: np.ndarray) -> Selection:
        """Select among the pool images ``keys`` (uris), whose class probabilities are the rows of ``probs``."""


class TeacherLabeller:
    """Confidence ≥ ``threshold`` and at most ``per_class_top_k`` per predicted class."""

    name = "teacher"
    min_selected = 2

    def __init__(self, cfg: LabellerConfig) -> None:
        self.cfg = cfg

    def __call__(self, iteration: int, keys: list[str], probs: np.ndarray) -> Selection:
        return Selection(*select(probs, self.cfg.threshold, self.cfg.per_class_top_k))
