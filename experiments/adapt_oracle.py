"""A diagnostic labeller for the adapt benchmark, never for the product: the teacher's selection
(the same images) with each image's ground-truth class instead of the teacher's. It bounds what
better labels could buy a student at a given cost. Ground truth comes from the pool's labels.csv."""

from __future__ import annotations

import numpy as np

from cerebro_core.adapt.label import Selection, create_labeller
from cerebro_core.config import TopKLabeller


class OracleLabels:
    name = "oracle-labels"
    min_selected = 2

    def __init__(self, cfg: TopKLabeller, truth: dict[str, int]) -> None:
        self.teacher, self.truth = create_labeller(cfg), truth

    def __call__(self, iteration: int, keys: list[str], probs: np.ndarray, feats: np.ndarray) -> Selection:
        idx, _, scores = self.teacher(iteration, keys, probs, feats)
        labels = np.array([self.truth[keys[i]] for i in idx], np.int64)
        return Selection(idx, labels, scores)
