"""How well an index version searches, recorded with it: species queries on a labelled source.

When ``index.evaluation_source`` names a labelled folder (class folders or a labels.csv), the
index stage embeds its photos with the version's own model and runs the query
"a photo of a {species}" for each species in it: ``search/mAP_at_10`` and ``search/P_at_10``
(MLflow names cannot hold "@"; see :func:`cerebro_core.evaluate.species_queries`). The same is
measured with the pretrained model (the latest ``cerebro-clip`` version tagged ``stage=pretrain``)
as ``search/pretrained_mAP_at_10`` and ``…_P_at_10``, so the registry shows whether a version
searches better than pretraining alone. The evaluation photos are for measurement only: they are
not indexed.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from cerebro_core import tracking
from cerebro_core.config import CerebroConfig, SourceConfig
from cerebro_core.embed import Item, embed_items, scan_folder
from cerebro_core.evaluate import encode_texts, species_queries

QUERY = "a photo of a {}."


def evaluation_items(source: SourceConfig) -> list[Item]:
    return [it for it in scan_folder(source.path, source.name, 1e9, Counter(), layout=source.layout)
            if it.media_type == "image" and it.label]


def measure(clip, items: list[Item], batch_size: int = 256) -> dict:
    import torch

    emb = embed_items(clip.model, clip.preprocess_val, items, batch_size=batch_size)
    labels = [items[int(i)].label for i in emb.index]
    classes = sorted(set(labels))
    with torch.inference_mode():
        q = encode_texts(clip.model, clip.tokenizer([QUERY.format(c) for c in classes]))
    return species_queries(emb.vectors, labels, q, classes, k=10)


def pretrained_version(cfg: CerebroConfig):
    versions = [v for v in tracking.client().search_model_versions(f"name='{cfg.tracking.model_name}'")
                if v.tags.get("stage") == "pretrain"]
    return max(versions, key=lambda v: int(v.version)) if versions else None


def search_quality(cfg: CerebroConfig, clip, clip_version: str) -> Optional[dict]:
    """The metrics to log (and tag the search version with), or None without an evaluation source."""
    from cerebro_core.model.registry import load_clip

    src = cfg.index.evaluation_source
    if src is None:
        return None
    items = evaluation_items(src)
    m = measure(clip, items, cfg.index.batch_size)
    out = {"search/mAP_at_10": m["mAP@10"], "search/P_at_10": m["P@10"], "search/queries": m["queries"]}
    pre = pretrained_version(cfg)
    if pre is not None:
        if str(pre.version) == str(clip_version):
            p = m
        else:
            _, pre_clip, _ = load_clip(cfg.tracking.model_name, None, str(pre.version))
            p = measure(pre_clip, items, cfg.index.batch_size)
        out.update({"search/pretrained_mAP_at_10": p["mAP@10"], "search/pretrained_P_at_10": p["P@10"],
                    "search/pretrained_version": float(pre.version)})
    return out
