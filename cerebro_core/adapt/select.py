"""Pseudo-label selection from class probabilities: confidence threshold AND per-class top-k.

Ground-truth labels never reach this module; it sees probabilities only."""

from __future__ import annotations

import numpy as np


def select(probs: np.ndarray, threshold: float, per_class_top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, labels, scores) of the selected rows, balanced: at most ``per_class_top_k`` per
    predicted class, each with confidence ≥ ``threshold``, the most confident first."""
    if probs.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    pred = probs.argmax(1)
    conf = probs.max(1)
    keep = []
    for c in np.unique(pred):
        rows = np.where((pred == c) & (conf >= threshold))[0]
        rows = rows[np.argsort(-conf[rows], kind="stable")][:per_class_top_k]
        keep.append(rows)
    idx = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return idx.astype(np.int64), pred[idx].astype(np.int64), conf[idx].astype(np.float32)


def class_entropy(labels: np.ndarray, n_classes: int) -> float:
    """Normalised entropy of the selected labels' class distribution (1 = uniform, 0 = collapse)."""
    if len(labels) == 0 or n_classes < 2:
        return 0.0
    p = np.bincount(labels, minlength=n_classes).astype(np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum() / np.log(n_classes))
