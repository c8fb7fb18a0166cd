"""What the index stage asks of this package: the index ``index.*`` describes, built (one, or
``index.shards`` shards) and tuned; and a bundle's index loaded back, sharded or not, as the one
handle search and re-indexing use."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cerebro_core.ann.base import Index
from cerebro_core.ann.kinds import kind_for
from cerebro_core.ann.sharded import ShardedIndex, ShardSpec, build_sharded
from cerebro_core.ann.tune import build_and_tune


def build_index(icfg, vectors: np.ndarray, storage, work_url: str,
                map_fn: Optional[Callable[[list[ShardSpec]], list[dict]]] = None,
                text_queries: Optional[np.ndarray] = None):
    """(index, report) as ``icfg`` (the ``index`` section) asks: ``index.shards`` > 1 builds
    through ``map_fn``; tuned on image and (given) text queries."""
    if icfg.shards > 1:
        return build_sharded(vectors, icfg.shards, icfg.kind, icfg.recall_target, icfg.memory_budget_mb, storage,
                             work_url, map_fn, text_queries=text_queries)
    return build_and_tune(vectors, icfg.kind, icfg.recall_target, icfg.memory_budget_mb, text_queries=text_queries)


def load(bundle_dir: Path, info: dict, mmap: bool = True):
    """The bundle's index (``info``: its index.json) at its tuned setting; an on-disk kind is
    memory-mapped unless ``mmap=False`` (to add to it)."""
    bundle_dir = Path(bundle_dir)
    if info.get("shards"):
        return ShardedIndex.load(bundle_dir, info["shards"], mmap=mmap)
    kind = kind_for(info["kind"])
    return Index(kind, kind.read(bundle_dir, mmap), info.get("params", {}))


def rebuild_like(info: dict, vectors: np.ndarray, icfg, storage, work_url: str):
    """A new index over ``vectors`` built as the bundle's was (``info``: its index.json): the same
    kind, one index at its setting or as many shards (tuned afresh)."""
    if info.get("shards"):
        return build_sharded(vectors, len(info["shards"]), info["kind"], icfg.recall_target, icfg.memory_budget_mb,
                             storage, work_url)[0]
    kind = kind_for(info["kind"])
    return Index(kind, kind.build(vectors)[0], info.get("params", {}))
