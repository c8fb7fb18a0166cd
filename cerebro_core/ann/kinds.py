"""The index kinds by the name ``index.kind`` gives, and the automatic choice: exact up to
``FLAT_MAX`` vectors, then the first of HNSW, IVF and IVF-PQ that fits ``index.memory_budget_mb``,
else IVF-PQ on disk. A new kind is one file (an :class:`~cerebro_core.ann.base.IndexKind`) and
one line here."""

from __future__ import annotations

from cerebro_core.ann.base import IndexKind
from cerebro_core.ann.flat import Flat
from cerebro_core.ann.hnsw import HNSW
from cerebro_core.ann.ivf import IVF
from cerebro_core.ann.ivfpq import IVFPQ
from cerebro_core.ann.ivfpq_disk import IVFPQDisk

KINDS: dict[str, IndexKind] = {k.name: k() for k in (Flat, HNSW, IVF, IVFPQ, IVFPQDisk)}
AUTO_ORDER = ("hnsw", "ivf", "ivfpq")  # in RAM, fastest first; else ivfpq_disk
FLAT_MAX = 50_000


def kind_for(name: str) -> IndexKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown index kind {name!r}; known: auto, {', '.join(KINDS)}") from None


def choose_kind(n: int, d: int, memory_budget_mb: float, requested: str = "auto") -> IndexKind:
    if requested != "auto":
        return kind_for(requested)
    if n <= FLAT_MAX:
        return KINDS["flat"]
    return next((KINDS[k] for k in AUTO_ORDER if KINDS[k].estimate_mb(n, d) <= memory_budget_mb), KINDS["ivfpq_disk"])
