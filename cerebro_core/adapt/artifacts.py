"""Adapt's per-iteration images for MLflow: the validation confusion matrix and a grid of
pseudo-labelled samples."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cerebro_core.embed import Item


def confusion_png(matrix: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(classes), 1.0 + 0.45 * len(classes)), dpi=100)
    ax.imshow(m, cmap="Greens")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if m[i, j]:
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sample_grid_png(items: list[Item], labels: list[str], scores: list[float], path: Path, n: int = 24) -> Path:
    from PIL import Image, ImageDraw

    cell, cols = 96, 6
    rows = max(1, math.ceil(min(n, len(items)) / cols))
    grid = Image.new("RGB", (cols * cell, rows * (cell + 14)), "white")
    d = ImageDraw.Draw(grid)
    for k, (it, lab, sc) in enumerate(list(zip(items, labels, scores))[:n]):
        try:
            im = Image.open(it.uri).convert("RGB").resize((cell, cell))
        except Exception:
            continue
        x, y = (k % cols) * cell, (k // cols) * (cell + 14)
        grid.paste(im, (x, y))
        d.text((x + 2, y + cell), f"{lab[:11]} {sc:.2f}", fill="black")
    grid.save(path)
    return path
