"""Evaluation, the one module for it: image↔text retrieval R@k, zero-shot classification with prompt
ensembles, labelled-set metrics (pretraining's zero-shot eval and adapt's validation/test)."""

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


@torch.no_grad()
def prompt_class_embeddings(model, tokenizer: Callable, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """Per class, the normalised mean of its prompts' normalised text features (on the model's
    device; returned on the CPU) — ``class_embeddings`` for per-class prompt lists (a vocabulary of
    names × templates, or of captions)."""
    device = next(unwrap(model).parameters()).device
    out = [F.normalize(encode_texts(model, tokenizer(list(p)).to(device)).mean(0), dim=-1) for p in prompts]
    return torch.stack(out).cpu()


def probabilities(feats, cls: torch.Tensor, scale: float):
    """Zero-shot class probabilities (numpy [N, C]) of normalised image features at ``scale``."""
    import numpy as np

    logits = scale * torch.from_numpy(np.asarray(feats, dtype=np.float32)) @ cls.T
    return torch.softmax(logits, dim=1).numpy()


def labelled_metrics(feats, labels: Sequence[str | None], classes: Sequence[str], cls: torch.Tensor) -> dict:
    """Zero-shot top-1 and mean per class (``zero_shot_scores``), text→image R@k / P@k with each
    present class's embedding as the query (relevant = same label), and the confusion matrix, over
    the images whose label is in ``classes``."""
    import numpy as np

    idx = [i for i, lab in enumerate(labels) if lab in classes]
    if not idx:
        return {}
    f = torch.from_numpy(np.asarray(feats, dtype=np.float32)[idx])
    y = torch.tensor([list(classes).index(labels[i]) for i in idx])
    out: dict = zero_shot_scores(f, cls, y)
    sims = cls[y.unique()] @ f.T
    for k in (1, 5, 10):
        top = sims.topk(min(k, f.shape[0]), dim=1).indices
        rel = (y[top] == y.unique()[:, None]).float()
        out[f"text_to_image_R{k}"] = float((rel.sum(1) > 0).float().mean())
        out[f"text_to_image_P{k}"] = float(rel.mean())
    m = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(m, (y.numpy(), (f @ cls.T).argmax(1).numpy()), 1)
    out["confusion"] = m.tolist()
    return out


def general_retrieval(bundle, shards: Sequence[str], storage, max_n: int = 1000) -> dict:
    """``retrieval_metrics`` of ``bundle``'s model on up to ``max_n`` image-text pairs of ``shards``
    (the forgetting check on general pairs)."""
    from cerebro_core.data import images
    from cerebro_core.train.data import iter_pairs

    imgs, caps = [], []
    for _, data, text in iter_pairs(list(shards), storage, max_n):
        try:
            imgs.append(bundle.preprocess_val(images.decode(data)))
            caps.append(text)
        except images.ImageRejected:
            continue
    if not imgs:
        return {}
    model = bundle.model
    fi = torch.cat([encode_images(model, torch.stack(imgs[i:i + 256])) for i in range(0, len(imgs), 256)])
    ft = torch.cat([encode_texts(model, bundle.tokenizer(caps[i:i + 256])) for i in range(0, len(caps), 256)])
    return retrieval_metrics(fi, ft, caps)


def species_queries(feats, labels: Sequence[str], queries: torch.Tensor, classes: Sequence[str], k: int = 10) -> dict:
    """Text→image retrieval as a search user runs it: per class, its query (one text embedding per
    class, ``queries[i]`` for ``classes[i]``) ranks all images; relevant = same label.
    ``mAP@k``: mean over classes of AP@k = Σ_{i≤k} P(i)·rel(i) / min(k, #relevant); ``P@k``."""
    import numpy as np

    f = torch.from_numpy(np.asarray(feats, dtype=np.float32))
    y = np.array([list(classes).index(lab) for lab in labels])
    top = (queries @ f.T).topk(min(k, f.shape[0]), dim=1).indices.numpy()
    aps, precs = [], []
    for c in range(len(classes)):
        n_rel = int((y == c).sum())
        if n_rel == 0:
            continue
        rel = (y[top[c]] == c).astype(np.float64)
        prec_at = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append(float((prec_at * rel).sum() / min(k, n_rel)))
        precs.append(float(rel.mean()))
    return {f"mAP@{k}": float(np.mean(aps)) if aps else 0.0, f"P@{k}": float(np.mean(precs)) if precs else 0.0,
            "queries": len(aps)}


def knn_accuracy(feats, labels: Sequence[int], k: int = 10) -> float:
    """Leave-one-out k-NN accuracy of normalised features (cosine, majority vote, ties to the
    nearest): how much class structure the image features hold without any text."""
    import numpy as np

    f = torch.from_numpy(np.asarray(feats, dtype=np.float32))
    y = torch.tensor(list(labels))
    if len(y) < 2:
        return float("nan")
    sim = f @ f.T
    sim.fill_diagonal_(float("-inf"))
    nn = sim.topk(min(k, len(y) - 1), dim=1).indices
    votes = torch.zeros(len(y), int(y.max()) + 1)
    weights = torch.linspace(1.0, 0.99, nn.shape[1]).expand_as(nn)  # ties go to the nearer neighbours
    votes.scatter_add_(1, y[nn], weights.contiguous())
    return float((votes.argmax(1) == y).float().mean())
