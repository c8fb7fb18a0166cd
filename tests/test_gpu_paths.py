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


def test_query_tower_goes_to_the_gpu_when_one_is_visible(tiny):
    """Issue 35 item 6: with CUDA visible the query tower turned int8 off and stayed on the CPU in
    fp32 (2.5x slower queries). Now: CUDA → the tower on the GPU; no GPU → int8 on the CPU."""
    from cerebro_core.model.text import FastTextEncoder, query_tower, query_tower_placement

    assert query_tower_placement(int8=True, cuda=True) == ("cuda", False)
    assert query_tower_placement(int8=True, cuda=False) == ("cpu", True)
    assert query_tower_placement(int8=False, cuda=False) == ("cpu", False)  # CEREBRO_TEXT_INT8=0
    cpu = query_tower(tiny.model, int8=True, cuda=False)
    assert cpu.int8 and cpu.positional_embedding.device.type == "cpu"
    tokens = tiny.tokenizer(["a red fox in the snow"])
    want = cpu(tokens)
    assert want.shape == (1, tiny.model.text_projection.shape[1])
    tower = FastTextEncoder(tiny.model)
    with FakeTensorMode(allow_non_fake_inputs=True):
        tower.to(query_tower_placement(int8=True, cuda=True)[0])
        assert {p.device.type for p in tower.parameters()} == {"cuda"}
        out = tower(tokens)  # host tokens in, computed on the tower's device, the features back on the host
        assert out.device.type == "cpu" and out.shape == want.shape
