"""train/loss.py: the one objective, and why repeated pseudo-captions need no other.

Adapt's pseudo-captions repeat (a few templates × the vocabulary), so a batch holds pairs with the
same caption. One would expect them to be false negatives for the contrastive loss; they are not:
identical captions have identical text features, and open_clip's ClipLoss then equals the loss
that counts them as positives of each other (measured too: the adapt benchmark's students trained
with such a loss ended with the same loss and the same accuracy, docs/BENCHMARKS.md session 10)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cerebro_core.train.loss import create_loss


def test_clip_loss_already_treats_identical_captions_as_positives():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    txt = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    txt[3] = txt[0]  # pairs 0, 3 and 5 share one caption
    txt[5] = txt[0]
    scale = torch.tensor(10.0)
    target = torch.eye(8)
    for i in (0, 3, 5):
        target[i] = 0
        target[i, [0, 3, 5]] = 1 / 3  # each of the three is a positive of the others
    multi_positive = (F.cross_entropy(scale * img @ txt.T, target) + F.cross_entropy(scale * txt @ img.T, target)) / 2
    loss = create_loss("clip")
    torch.testing.assert_close(loss(img, txt, scale), multi_positive)
    # and it is not a coincidence of the data: with distinct captions the two differ
    txt[5] = F.normalize(torch.randn(16, generator=g), dim=-1)
    assert not torch.allclose(loss(img, txt, scale), multi_positive)
    with pytest.raises(ValueError, match="unknown loss 'siglip'"):
        create_loss("siglip")
