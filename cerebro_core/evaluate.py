"""Evaluation: image↔text retrieval R@k, zero-shot classification with prompt ensembles."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {} in the wild.",
    "a low resolution photo of a {}.",
)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def encode_images(model, batch: torch.Tensor) -> torch.Tensor:
    return F.normalize(unwrap(model).encode_image(batch).float(), dim=-1)


@torch.no_grad()
def encode_texts(model, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(unwrap(model).encode_text(tokens).float(), dim=-1)


def retrieval_metrics(
    img: torch.Tensor, txt: torch.Tensor, captions: Sequence[str] | None = None, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Pairs are (img[i], txt[i]); R@k both ways. With ``captions``, pairs whose captions are the
    same string are interchangeable positives (templated captions repeat), so a hit on any of
    them counts: the rank is the number of negatives scoring above the best positive."""
    sim = img @ txt.T
    n = sim.shape[0]
    if captions is not None:
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        g = torch.tensor([ids[c] for c in captions])
        pos = g.unsqueeze(0) == g.unsqueeze(1)
    else:
        pos = torch.eye(n, dtype=torch.bool)
    out = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        best_pos = s.masked_fill(~pos, float("-inf")).max(1, keepdim=True).values
        ranks = ((s > best_pos) & ~pos).sum(1)
        for k in ks:
            out[f"{name}_R{k}"] = float((ranks < k).float().mean())
    out["n"] = n
    return out


@torch.no_grad()
def class_embeddings(model, tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str],
                     device: str = "cpu", batch: int = 256) -> torch.Tensor:
    """Prompt ensemble: mean of the normalised template embeddings per class, renormalised."""
    prompts = [t.format(c) for c in classnames for t in templates]
    feats = []
    for i in range(0, len(prompts), batch):
        feats.append(encode_texts(model, tokenizer(prompts[i : i + batch]).to(device)))
    f = torch.cat(feats).view(len(classnames), len(templates), -1).mean(1)
    return F.normalize(f, dim=-1)


def zero_shot_scores(img_feats: torch.Tensor, cls_emb: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    pred = (img_feats @ cls_emb.T).argmax(1)
    correct = (pred == labels).float()
    per_class = [correct[labels == c].mean() for c in labels.unique()]
    return {"top1": float(correct.mean()), "mean_per_class": float(torch.stack(per_class).mean()), "n": len(labels)}
