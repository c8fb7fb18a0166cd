"""Pseudo-label selection from class probabilities: confidence threshold AND per-class top-k.

Ground-truth labels never reach this module; it sees probabilities only."""

from __future__ import annotations

import numpy as np


def class_thresholds(probs: np.ndarray, threshold: float, mode: str = "fixed") -> np.ndarray:
    """Per-class confidence thresholds. ``fixed``: ``threshold`` for every class. ``flexmatch``
    (Zhang et al. 2021, with its warm-up): classes the model is less sure of get a lower bar,
    T_c = M(β_c)·threshold, M(x) = x / (2 − x), β_c = σ_c / max(max_c σ_c, #unsure), σ_c = the
    number of images predicted c with confidence ≥ ``threshold``, #unsure = the images below it."""
    n_classes = probs.shape[1]
    if mode == "fixed":
        return np.full(n_classes, threshold, np.float64)
    if mode != "flexmatch":
        raise ValueError(f"unknown threshold mode {mode!r}")
    pred, conf = probs.argmax(1), probs.max(1)
    sure = conf >= threshold
    sigma = np.bincount(pred[sure], minlength=n_classes).astype(np.float64)
    beta = sigma / max(sigma.max(), float((~sure).sum()), 1.0)
    return beta / (2.0 - beta) * threshold


def select(probs: np.ndarray, threshold: float, per_class_top_k: int,
           mode: str = "fixed") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, labels, scores) of the selected rows, balanced: at most ``per_class_top_k`` per
    predicted class, each with confidence ≥ its class's threshold (``class_thresholds``), the
    most confident first."""
    if probs.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    pred = probs.argmax(1)
    conf = probs.max(1)
    thresholds = class_thresholds(probs, threshold, mode)
    keep = []
    for c in np.unique(pred):
        rows = np.where((pred == c) & (conf >= thresholds[c]))[0]
        rows = rows[np.argsort(-conf[rows], kind="stable")][:per_class_top_k]
        keep.append(rows)
    idx = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return idx.astype(np.int64), pred[idx].astype(np.int64), conf[idx].astype(np.float32)


class ProbabilityEnsemble:
    """Running mean of class probabilities over the models of the loop, per image key (a pool
    image that one model failed to decode is averaged over the models that saw it). Sums are kept in
    float32: images × classes × 4 bytes (153k images × 1,000 names: 0.6 GB)."""

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._n: dict[str, int] = {}
        self.models = 0

    def add(self, keys: list[str], probs: np.ndarray) -> None:
        if len(keys) != len(probs):
            raise ValueError(f"{len(keys)} keys for {len(probs)} rows of probabilities")
        for k, p in zip(keys, probs):
            self._sum[k] = self._sum.get(k, 0.0) + p.astype(np.float32)
            self._n[k] = self._n.get(k, 0) + 1
        self.models += 1

    def mean(self, keys: list[str]) -> np.ndarray:
        """Mean probabilities of ``keys`` (rows in that order)."""
        if not keys:
            return np.zeros((0, 0), np.float32)
        return np.stack([self._sum[k] / np.float32(self._n[k]) for k in keys])

    def mean_with(self, keys: list[str], probs: np.ndarray) -> np.ndarray:
        """Mean over the ensemble's models and one more model's ``probs`` (rows of ``keys``),
        leaving the ensemble as it was."""
        if len(keys) != len(probs):
            raise ValueError(f"{len(keys)} keys for {len(probs)} rows of probabilities")
        return np.stack([(self._sum.get(k, 0.0) + p.astype(np.float32)) / np.float32(self._n.get(k, 0) + 1)
                         for k, p in zip(keys, probs)]) if keys else np.zeros((0, 0), np.float32)


def class_entropy(labels: np.ndarray, n_classes: int) -> float:
    """Normalised entropy of the selected labels' class distribution (1 = uniform, 0 = collapse)."""
    if len(labels) == 0 or n_classes < 2:
        return 0.0
    p = np.bincount(labels, minlength=n_classes).astype(np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum() / np.log(n_classes))
