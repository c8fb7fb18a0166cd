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


def _batch(bundle, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    size = bundle.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return torch.randn(n, 3, size, size, generator=g), bundle.tokenizer([f"a photo of animal {seed}-{i}" for i in range(n)])


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulated_gradients_equal_the_whole_batch(tiny):
    """Issue 35 item 11: train.accum_steps > 1 had never run. Two micro-batches of 8 must give the
    gradients of one batch of 16 (open_clip's scheme): the old step divided each pass's loss by the
    number of passes (half the features' gradients) while the logit scale's counted in every pass."""
    import copy

    from cerebro_core.train.loop import _step
    from cerebro_core.train.loss import create_loss

    a = copy.deepcopy(tiny.model).train()
    b = copy.deepcopy(tiny.model).train()
    (i1, t1), (i2, t2) = _batch(tiny, 8, 1), _batch(tiny, 8, 2)
    la = _step(a, [(i1, t1), (i2, t2)], create_loss(), "cpu", False, torch.bfloat16, None)
    lb = _step(b, [(torch.cat([i1, i2]), torch.cat([t1, t2]))], create_loss(), "cpu", False, torch.bfloat16, None)
    assert abs(la - lb) < 1e-5
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys() and "logit_scale" in ga
    for n in ga:
        assert torch.allclose(ga[n], gb[n], rtol=1e-4, atol=1e-6), (n, (ga[n] - gb[n]).abs().max())


def test_bf16_autocast_step_on_cpu(tiny):
    """The bf16 step runs on CPU autocast (the GPU path's code) and stays near fp32."""
    import copy

    from cerebro_core.train.loop import _step
    from cerebro_core.train.loss import create_loss

    a, b = copy.deepcopy(tiny.model).train(), copy.deepcopy(tiny.model).train()
    micro = [_batch(tiny, 8, 3), _batch(tiny, 8, 4)]
    l32 = _step(a, micro, create_loss(), "cpu", False, torch.bfloat16, None)
    l16 = _step(b, micro, create_loss(), "cpu", True, torch.bfloat16, None)
    assert abs(l16 - l32) < 0.05 * abs(l32), (l16, l32)
    g32, g16 = _grads(a), _grads(b)
    flat32 = torch.cat([g32[n].flatten() for n in g32])
    flat16 = torch.cat([g16[n].float().flatten() for n in g32])
    assert torch.isfinite(flat16).all()
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.95


def test_fp16_with_grad_scaler_and_fused_adamw_on_cpu(tiny):
    """fp16 autocast with torch's GradScaler (CPU support since torch 2.3) through the trainer's
    step, then the fused AdamW kernel (CPU since torch 2.4) equal to the default foreach within
    float tolerance."""
    import copy

    from cerebro_core.train.loop import _step, param_groups
    from cerebro_core.train.loss import create_loss

    m = copy.deepcopy(tiny.model).train()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(param_groups(m, 0.1), lr=1e-3, fused=True)
    loss = _step(m, [_batch(tiny, 8, 5)], create_loss(), "cpu", True, torch.float16, scaler)
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    assert loss == loss and scaler.get_scale() > 0
    moved = [n for n, p in m.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(moved) > 0.9 * len(before) and all(torch.isfinite(p).all() for p in m.parameters())

    fused, foreach = copy.deepcopy(tiny.model).train(), copy.deepcopy(tiny.model).train()
    for model, kw in ((fused, {"fused": True}), (foreach, {"foreach": True})):
        o = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, **kw)
        for seed in (6,):
            o.zero_grad()
            _step(model, [_batch(tiny, 8, seed)], create_loss(), "cpu", False, torch.float32, None)
            o.step()
    for (n, p), q in zip(fused.named_parameters(), foreach.parameters()):
        # one update of lr 1e-3: the same but for the order of float operations
        assert (p - q).abs().max() < 1e-6, (n, (p - q).abs().max())


def test_uint8_batches_normalised_on_the_device_equal_the_fp32_path(tiny, pair_shards):
    """Issue 35 item 7: fp32 batches filled the loader's shared memory (~8.6 GiB in flight per rank
    for ViT-B-32 at 480). Batches now cross as uint8 and are normalised on the device: the same
    samples, the same augmentation, the same normalised values."""
    from cerebro_core.train.data import PipelineSpec, make_loader, uint8_transform

    transform, normalise = uint8_transform(tiny.preprocess_train)
    assert normalise is not None

    def batches(t):
        spec = PipelineSpec(shards=pair_shards, batch_size=10, batches_per_epoch=3, epoch=0, seed=3, return_keys=True)
        return list(make_loader(spec, t, tiny.tokenizer, 1))

    old, new = batches(tiny.preprocess_train), batches(transform)
    assert len(old) == len(new) == 3
    for a, b in zip(old, new):
        assert a[3] == b[3] and b[0].dtype == torch.uint8 and a[0].dtype == torch.float32
        assert b[0].element_size() * 4 == a[0].element_size()
        assert torch.allclose(normalise(b[0]), a[0], atol=1e-6, rtol=0)
    # a transform it cannot split (timm's, random erasing after Normalize) stays as it is
    timm = create(MODEL, aug_cfg={"use_timm": True, "re_prob": 0.25}).preprocess_train
    assert uint8_transform(timm) == (timm, None)
