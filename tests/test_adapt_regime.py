"""Adapt in the real run's regime: the replay student's explicit mix (an exact pseudo share of every
batch, whatever the pair count), its steps from passes over the selection or the budget, the
labellers as typed kinds, and ``cerebro plan`` printing the regime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cerebro_core.adapt.label import TeacherLabeller, create_labeller
from cerebro_core.adapt.models import rank_key
from cerebro_core.adapt.students import replay_job
from cerebro_core.config import ConfigError, ReplayStudent, load_config
from cerebro_core.train.data import PipelineSpec
from cerebro_core.train.loop import train
from helpers import REPO, good_pairs, shardset_for, write_pair_shards

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def mix_data(shared_data, tmp_path_factory):
    """Pair shards at two very different counts (60 and 1,200 real CIFAR pairs) and 60
    pseudo-captioned images, written as the adapt stage writes them."""
    root = tmp_path_factory.mktemp("mix")
    few = write_pair_shards(good_pairs(shared_data, n_coco=0, n_cifar_per_class=10), root / "few", per_shard=20)
    many = write_pair_shards(good_pairs(shared_data, n_coco=0, n_cifar_per_class=200), root / "many", per_shard=100)
    pseudo = write_pair_shards([(f"a photo of a {c}.", p) for c, p in
                                good_pairs(shared_data, n_coco=0, n_cifar_per_class=10)], root / "pseudo", per_shard=30)
    return {"few": few, "many": many, "pseudo": pseudo, "root": root}


def test_replay_student_batches_hold_the_configured_pseudo_share_at_any_pair_count(mix_data, tmp_path):
    """The student trains on the pairs and 60 pseudo-captioned images with pseudo_fraction 0.3: the
    share measured in its batches (from each sample's shard) is 0.3 ± 0.02 with 60 pairs and with
    1,200. Before the explicit mix the share was the file counts' (50 % and 4.8 %)."""
    shares = {}
    for name in ("few", "many"):
        cfg = load_config(REPO / "configs/demo.yaml", [
            "train.batch_size=20", "train.workers=0", "train.val_fraction=0", "train.log_every_steps=5",
            "adapt.student.pseudo_fraction=0.3", "adapt.student.max_passes=1", "adapt.student.budget=4"])
        pairs = shardset_for(mix_data[name], name)
        job = replay_job(cfg, cfg.adapt.student, cfg.train.model, pairs, mix_data["pseudo"], 60, None, 10**6,
                         str(tmp_path / name), 1)
        assert job.max_steps == 10  # 1 pass over 60 images at 6 per batch of 20: the passes, not the budget
        s = train(job)
        assert s["step"] == 10
        shares[name] = s["mixed_share"][0]
    assert shares["few"] == pytest.approx(0.3, abs=0.02) and shares["many"] == pytest.approx(0.3, abs=0.02), shares


def test_mixed_batches_resume_exactly(mix_data):
    """A loader started at batch k of an epoch yields exactly batches k.. of the full epoch, with a
    mix: both streams skip what they had produced, undecoded."""
    import torch

    from cerebro_core.model.factory import create
    from cerebro_core.train.data import make_loader

    b = create("cerebro-tiny-vit-32")

    def run(start, workers):
        spec = PipelineSpec(shards=mix_data["few"], batch_size=10, batches_per_epoch=7, epoch=2, seed=3,
                            start_batch=start, return_keys=True, mix_shards=mix_data["pseudo"], mix_fraction=0.25)
        return [(bt[0], bt[3]) for bt in make_loader(spec, b.preprocess_train, b.tokenizer, workers)]

    for workers in (0, 2):
        full, tail = run(0, workers), run(3, workers)
        assert len(full) == 7 and len(tail) == 4
        # exact in aggregate: round(n · 0.25 · 10) of the first n batches come from the mix
        n_mixed = sum(sum("/pseudo/" in k for k in keys) for _, keys in full)
        assert n_mixed == round(7 * 2.5) and all(len(keys) == 10 for _, keys in full)
        for (img_a, keys_a), (img_b, keys_b) in zip(full[3:], tail):
            assert keys_a == keys_b and torch.equal(img_a, img_b)


def test_replay_regime_steps_come_from_passes_or_budget():
    st = ReplayStudent(pseudo_fraction=0.5, max_passes=4, budget=0.2)
    cc3m = st.regime(32 * (2_641_392 // 1920) * 1920, 30_400, 1920)  # configs/cc3m-vitb32.yaml
    assert cc3m.bound == "passes" and cc3m.steps == 127 and cc3m.passes == pytest.approx(4.0, abs=0.02)
    assert cc3m.pretrain_equivalents == pytest.approx(127 * 1920 / (32 * 1375 * 1920))
    cifar = st.regime(25_600, 600, 64)  # the CIFAR protocol's teacher of sessions 1-15
    assert cifar.bound == "passes" and cifar.steps == 75 and cifar.pseudo_fraction == 0.5
    small = st.regime(12_800, 600, 64)  # a shorter pretraining: the budget binds
    assert small.bound == "budget" and small.steps == 40 and small.pretrain_equivalents == pytest.approx(0.2)


def test_the_labeller_is_a_typed_kind_chosen_in_config():
    base = load_config(REPO / "configs/demo.yaml", [])
    assert isinstance(create_labeller(base.adapt.labeller), TeacherLabeller) and base.adapt.labeller.kind == "top_k"
    assert load_config(REPO / "configs/demo.yaml", ["adapt.labeller.per_class_top_k=7"]).adapt.labeller.kind == "top_k"
    for sets, key in ((["adapt.labeller.kind=knn"], "adapt.labeller.kind"),  # measured no gain: removed
                      (["adapt.labeller.neighbours=5"], "adapt.labeller.neighbours"),
                      (["adapt.wise_ft=[0.5, 1.0]"], "adapt.wise_ft")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(REPO / "configs/demo.yaml", sets)


def test_rank_key_ranks_search_first_then_top1():
    a = {"val/search_mAP": 0.8, "val/top1": 0.3}
    b = {"val/search_mAP": 0.7, "val/top1": 0.9}
    c = {"val/search_mAP": 0.8, "val/top1": 0.4}
    assert max([a, b, c], key=rank_key) is c and rank_key({}) == (-1.0, -1.0)


def test_plan_prints_the_replay_regime_of_the_real_run():
    p = subprocess.run([str(VENV_BIN / "cerebro"), "plan", "-c", str(REPO / "configs/cc3m-vitb32.yaml")],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert "pseudo share 50 % of every batch" in p.stdout and "4.0 passes over the selection" in p.stdout
    assert "0.00289 pretrain-equivalents" in p.stdout
