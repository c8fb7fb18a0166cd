"""The training objective, created as open_clip creates its losses (``loss.py``, ``create_loss``):
loss(image features, text features, logit scale).

- ``clip``: open_clip's ``ClipLoss`` (``local_loss`` + ``gather_with_grad`` across ranks), the one
  objective of pretraining and of adapt's students (pairs and pseudo-captioned images alike).
  Pseudo-captions repeat, but identical captions are no false negatives for it: their text features
  are identical, so counting them as positives of each other gives the same loss (shown in
  tests/test_loss.py).

The adapt objectives measured to lose were deleted; their numbers stay in docs/BENCHMARKS.md.
"""

from __future__ import annotations

LOSSES = ("clip",)


def create_loss(name: str = "clip", rank: int = 0, world_size: int = 1):
    """loss(image_features, text_features, logit_scale) for the objective ``name``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; one of {', '.join(LOSSES)}")
    from open_clip.loss import ClipLoss  # when a job builds its loss, not when the loop module is imported

    return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)
