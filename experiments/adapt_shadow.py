"""A diagnostic for the adapt benchmark, never for the product: the stage's own labeller does the
selecting, while other labeller kinds are asked, on the very same probabilities and features, what
they would have selected; their precision against the pool's ground truth is recorded per
iteration. It says whether a labeller kind would pay (e.g. ``knn`` where the features beat the
zero-shot) without paying for a loop per kind."""

from __future__ import annotations

import numpy as np

from cerebro_core.adapt.label import Labeller, Selection


class Shadowed:
    def __init__(self, labeller: Labeller, others: dict[str, Labeller], truth: dict[str, int]) -> None:
        self.labeller, self.others, self.truth = labeller, others, truth
        self.name, self.min_selected = labeller.name, labeller.min_selected
        self.records: list[dict] = []

    def _precision(self, keys: list[str], sel: Selection) -> float:
        hits = [self.truth[keys[i]] == lab for i, lab in zip(sel.idx, sel.labels) if keys[i] in self.truth]
        return float(np.mean(hits)) if hits else float("nan")

    def __call__(self, iteration: int, keys: list[str], probs: np.ndarray, feats: np.ndarray) -> Selection:
        own = self.labeller(iteration, keys, probs, feats)
        rec = {"iteration": iteration, self.name: self._precision(keys, own), f"{self.name}_n": len(own.idx)}
        for name, lab in self.others.items():
            sel = lab(iteration, keys, probs, feats)
            rec[name], rec[f"{name}_n"] = self._precision(keys, sel), len(sel.idx)
        self.records.append(rec)
        return own
