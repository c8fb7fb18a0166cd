"""What the GPU paths do, run on the CPU as far as it can: device placement checked by torch's own
fake tensors (``FakeTensorMode`` propagates devices and raises torch's device-mismatch error
without a GPU), and the numerics of bf16 autocast, gradient accumulation, GradScaler and
torch.compile on real CPU kernels."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

from cerebro_core.model.factory import create
from cerebro_core.train.evaluation import ZeroShotSpec, zero_shot_features

MODEL = "cerebro-tiny-vit-32"


@pytest.fixture(scope="module")
def tiny():
    return create(MODEL)


def test_zero_shot_features_share_a_device_when_the_model_is_on_cuda(tiny, shared_data):
    """Issue 35 item 1: the class embeddings stayed on the model's CUDA device while the image
    features came back to the CPU, and the scores multiplied the two (a crash at the end of the
    first epoch of any GPU run with train.zero_shot_source)."""
    spec = ZeroShotSpec(folder=str(shared_data / "cifar10_animals"), max_images=12, templates=["a photo of a {}."])

    def on_host(img):  # the transform runs for real on the CPU, as in the loader
        with unset_fake_temporarily():
            return tiny.preprocess_val(img)

    bundle = dataclasses.replace(tiny, model=create(MODEL).model, preprocess_val=on_host)
    with FakeTensorMode(allow_non_fake_inputs=True):
        bundle.model.to("cuda")
        assert next(bundle.model.parameters()).device.type == "cuda"
        feats, cls, labels = zero_shot_features(bundle, spec, "cuda")
        assert feats.device == cls.device == torch.device("cpu")
        assert (feats @ cls.T).argmax(1).shape == labels.shape  # what zero_shot_scores computes first

