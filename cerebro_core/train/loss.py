"""The training objectives, one registry as open_clip keeps ``loss.py`` and ``create_loss``:
``job.objective`` → loss(image features, text features, logit scale, labels, extra text features).

- ``clip``: open_clip's ``ClipLoss`` (``local_loss`` + ``gather_with_grad`` across ranks);
- ``masked_contrastive``: same-label pairs removed from the negatives;
- ``vocab_ce``: cross-entropy of image features against fixed class embeddings;
- ``clip_distill``: the contrastive loss on the pairs + distillation of soft targets into the
  model's own zero-shot head.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def create_loss(job, rank: int = 0, world_size: int = 1, device: str = "cpu"):
    """loss(image_features, text_features, logit_scale, labels, extra_text_features) for the job's
    objective (labels: class ids, or soft targets [B, C] for clip_distill)."""
    from open_clip.loss import ClipLoss  # when a job builds its loss, not when the loop module is imported

    clip_loss = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)
    if job.objective == "clip":
        return lambda img, txt, scale, labels, extra=None: clip_loss(img, txt, scale)
    if job.objective == "clip_distill":
        return clip_distill_loss(job, rank, world_size)
    if job.objective == "masked_contrastive":

        def masked(img, txt, scale, labels, extra=None):
            logits = scale * img @ txt.T
            n = logits.shape[0]
            same = labels.to(logits.device)[:, None] == labels.to(logits.device)[None, :]
            off = same & ~torch.eye(n, dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(off, float("-inf"))  # same class: neither positive nor negative
            target = torch.arange(n, device=logits.device)
            return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

        return masked
    import numpy as np

    cls = torch.from_numpy(np.load(job.class_embeddings, allow_pickle=False)).float().to(device)
    cls = F.normalize(cls, dim=-1)

    def vocab_ce(img, txt, scale, labels, extra=None):
        return F.cross_entropy(scale * F.normalize(img, dim=-1) @ cls.T, labels.to(img.device))

    return vocab_ce


def clip_distill_loss(job, rank: int, world_size: int):
    """Contrastive loss among the samples without soft targets (the pairs; gathered across ranks as
    open_clip's default ``ClipLoss``) + ``distill_weight`` × cross-entropy of the model's zero-shot
    distribution — ``distill_scale`` × cosine to its own prompt-ensembled class embeddings, computed
    in the same forward — against the soft targets of the other samples (knowledge distillation)."""
    n_prompts = [len(p) for p in job.distill_prompts]
    owner = torch.repeat_interleave(torch.arange(len(n_prompts)), torch.tensor(n_prompts))

    def loss(img, txt, scale, targets, prompt_feats):
        targets = targets.to(img.device)
        soft = targets.sum(1) > 0
        pi, pt, pair = img, txt, ~soft
        if world_size > 1:
            from open_clip.loss import gather_features

            pi, pt = gather_features(img, txt, local_loss=False, gather_with_grad=False, rank=rank,
                                     world_size=world_size)
            masks = [torch.empty_like(pair, dtype=torch.uint8) for _ in range(world_size)]
            dist.all_gather(masks, pair.to(torch.uint8))  # gloo has no bool all_gather
            pair = torch.cat(masks).bool()
        pi, pt = pi[pair], pt[pair]
        total = img.sum() * 0.0
        if pi.shape[0] > 1:
            logits = scale * pi @ pt.T
            target = torch.arange(pi.shape[0], device=img.device)
            total = total + (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        if soft.any():
            f = F.normalize(prompt_feats.float(), dim=-1)
            cls = torch.zeros(len(n_prompts), f.shape[1], device=f.device).index_add(0, owner.to(f.device), f)
            cls = F.normalize(cls, dim=-1)  # the prompt ensemble: mean of normalised prompt embeddings
            logp = F.log_softmax(job.distill_scale * F.normalize(img[soft].float(), dim=-1) @ cls.T, dim=1)
            total = total + job.distill_weight * -(targets[soft] * logp).sum(1).mean()
        return total

    return loss
