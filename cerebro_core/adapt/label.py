"""Labellers: the model's class probabilities (and image features) over the pool → the images the
student trains on with a caption of their label. One small class per ``adapt.labeller.kind``,
looked up by :func:`create_labeller`; a benchmark may run the loop with a labeller of its own (e.g.
a control that knows no teacher, in ``experiments/``)."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from cerebro_core.adapt.select import select
from cerebro_core.config import KnnLabeller, LabellerConfig, TopKLabeller


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


class KnnSmoothed(TeacherLabeller):
    """The probabilities averaged with those of each image's nearest pool neighbours (FAISS, inner
    product of normalised features), then selected as ``top_k``."""

    name = "knn"

    def __call__(self, iteration: int, keys: list[str], probs: np.ndarray, feats: np.ndarray) -> Selection:
        return Selection(*select(knn_smooth(probs, feats, self.cfg.neighbours, self.cfg.knn_weight),
                                 self.cfg.threshold, self.cfg.per_class_top_k))


def knn_smooth(probs: np.ndarray, feats: np.ndarray, k: int, w: float) -> np.ndarray:
    """(1 − w)·probs + w·(mean of the ``k`` nearest other rows' probs), neighbours by cosine."""
    import faiss

    if len(probs) < 2 or w == 0:
        return probs
    x = np.ascontiguousarray(feats, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nn = index.search(x, min(k + 1, len(x)))
    own = nn == np.arange(len(x))[:, None]
    nn = np.where(own, -1, nn)[:, :]  # drop each row's own hit wherever it ranks
    out = np.empty_like(probs)
    for i, row in enumerate(nn):
        row = row[row >= 0][:k]
        out[i] = (1 - w) * probs[i] + w * probs[row].mean(0)
    return out


LABELLERS = {"top_k": TeacherLabeller, "knn": KnnSmoothed}


def create_labeller(cfg: LabellerConfig) -> Labeller:
    """The labeller of ``adapt.labeller.kind``."""
    return LABELLERS[cfg.kind](cfg)
