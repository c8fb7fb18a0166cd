"""The adapt benchmark's equal-compute control: a labeller that knows no teacher.

It selects nothing, so each iteration's student trains the same number of steps on the same kind
of batches (the pretraining pairs) as the loop's, with no information from the teacher: the
replay student's steps are fixed by its budget, the scratch student's by the selection's cap.
What the loop gains over this control is what the teacher's labels add beyond more training."""

from __future__ import annotations

import numpy as np

from cerebro_core.adapt.label import Selection


class PairsOnly:
    name = "control-pairs-only"
    min_selected = 0  # an empty selection is the point: the student trains on

    def __call__(self, iteration: int, keys: list[str], probs: np.ndarray, feats: np.ndarray) -> Selection:
        return Selection(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
