"""The adapt loop's models: loading, embedding, measuring on the labelled sources, and weight-space
interpolation between a teacher and its student (WiSE-FT), in this node's cluster shape.

What keep-best ranks by (:func:`rank_key`) is what the product does, search: species-query mean
average precision over the whole ranking of the validation source, each class's query its prompt
ensemble (``evaluate.species_queries``), ties broken by zero-shot top-1. Over the whole ranking,
not at 10 as ``index/quality.py`` reports a published index: with a few classes, mAP@10 rests on
a few dozen images and favours the teacher (on the CIFAR protocol its rank correlation with test
top-1 over 39 candidate models was −0.01, the whole ranking's +0.47; docs/BENCHMARKS.md, session 17).
mAP@10 is still logged."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from cerebro_core.config import CerebroConfig
from cerebro_core.distributed import one_node
from cerebro_core.embed import Item
from cerebro_core.embed_job import embed, embedding_dir
from cerebro_core.evaluate import (general_retrieval, knn_accuracy, labelled_metrics, probabilities,
                                   prompt_class_embeddings, species_queries)
from cerebro_core.home import resolve
from cerebro_core.model import checkpoint as ckpt
from cerebro_core.model.factory import create
from cerebro_core.storage import Storage

SEARCH = "search_mAP"  # the validation figure keep-best ranks by first: species-query mAP, whole ranking


def rank_key(row: dict, part: str = "val") -> tuple[float, float]:
    """(species-query mAP over the whole ranking, zero-shot top-1) on ``part``: higher is better; missing = −1."""
    return (float(row.get(f"{part}/{SEARCH}", -1.0)), float(row.get(f"{part}/top1", -1.0)))


class Models:
    def __init__(self, cfg: CerebroConfig, storage: Storage, model_name: str, prompts: list[list[str]],
                 classes: list[str], log: Callable[[str], None]) -> None:
        self.cfg, self.storage, self.model_name, self.prompts, self.classes, self.log = (
            cfg, storage, model_name, prompts, classes, log)
        a = cfg.adapt
        self.general = sorted(storage.glob(a.general_pairs)) if a.general_pairs else []

    def load(self, ck: str):
        b = create(self.model_name)
        ckpt.load_model_weights(b.model, ckpt.load(self.storage, ck))
        b.model.eval()
        b.weights = ck
        return b

    def interpolate(self, teacher: str, student: str, alpha: float, url: str) -> str:
        """teacher + α·(student − teacher), every floating-point tensor (WiSE-FT), saved at ``url``."""
        t, st = ckpt.load(self.storage, teacher)["model"], ckpt.load(self.storage, student)
        s = st["model"]
        mixed = {k: (t[k] + alpha * (s[k] - t[k])) if torch.is_floating_point(s[k]) else s[k] for k in s}
        ckpt.save(self.storage, url, {"model": mixed, "model_name": self.model_name, "step": st.get("step", 0),
                                      "wise_ft_alpha": alpha})
        return url

    def embed(self, b, items: list[Item]):
        root = resolve(self.cfg).storage_root
        return embed(one_node(self.cfg.compute), self.cfg.storage, b.name, b.weights, items,
                     embedding_dir(root, self.cfg.name, "adapt", b.weights, items), log=self.log, bundle=b)

    def probabilities(self, b, items: list[Item]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(image uris, class probabilities, image features) of one model, with its own text tower
        and logit scale."""
        cls = prompt_class_embeddings(b.model, b.tokenizer, self.prompts)
        e = self.embed(b, items)
        vecs = np.asarray(e.vectors, dtype=np.float32)
        return [r["uri"] for r in e.rows], probabilities(vecs, cls, float(b.model.logit_scale.detach().exp())), vecs

    def measure(self, b, parts: dict[str, list[Item]], general: bool = True) -> dict:
        """Per labelled part: zero-shot top-1 and the rest of ``labelled_metrics``, species-query
        search (mAP over the whole ranking; mAP@10, P@10) and the features' leave-one-out 10-NN
        accuracy (``knn_top1``: do the features beat the zero-shot?); the forgetting check on
        general pairs."""
        cls = prompt_class_embeddings(b.model, b.tokenizer, self.prompts)
        out: dict = {}
        for name, items in parts.items():
            if not items:
                continue
            e = self.embed(b, items)
            label_of = {it.uri: it.label for it in items}
            labels = [label_of[r["uri"]] for r in e.rows]
            m = labelled_metrics(e.vectors, labels, self.classes, cls)
            keep = [i for i, lab in enumerate(labels) if lab in self.classes]
            if m and keep:
                f = np.asarray(e.vectors, dtype=np.float32)[keep]
                ys = [labels[i] for i in keep]
                q = species_queries(f, ys, cls, self.classes, k=10)  # MLflow names hold no "@"
                m["search_mAP_at_10"], m["search_P_at_10"] = q["mAP@10"], q["P@10"]
                m[SEARCH] = species_queries(f, ys, cls, self.classes, k=len(f))[f"mAP@{len(f)}"]
                m["knn_top1"] = knn_accuracy(f, [self.classes.index(y) for y in ys], k=10)
            out[name] = m
        if general and self.general:
            out["general"] = general_retrieval(b, self.general, self.storage)
        return out
