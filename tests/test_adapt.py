"""Stage 3, adapt: the mechanics on real CIFAR photos — balanced selection, pseudo-labelled shards,
the replay student (warm-started, pairs + pseudo-captions, a budget of the pretraining's samples),
per-iteration MLflow child runs and artifacts, keep-best and the champion alias, ground truth
unused (permuting it changes nothing), bad inputs, the benchmark's pairs-only control, and the
scratch (noisy) student with out-of-fold labels."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cerebro_core.adapt.models import rank_key
from cerebro_core.adapt.select import select
from cerebro_core.adapt.stage import AdaptInputError, check_inputs, gather, run_stage
from cerebro_core.config import load_config
from cerebro_core.model import checkpoint as ckpt
from cerebro_core.storage import Storage
from helpers import CLASSES, REPO, dist, latest_adapt, pool_probs, split, written_labels


@pytest.fixture(scope="module")
def adapt_env(shared_data, state_dir, tmp_path_factory):
    from helpers import good_pairs, shardset_for, write_pair_shards

    root = tmp_path_factory.mktemp("adapt-data")
    shards = write_pair_shards(good_pairs(shared_data, n_coco=0, n_cifar_per_class=40), root / "shards")
    (root / "shards" / "manifest.json").write_text(shardset_for(shards, "adapt").model_dump_json())
    pool = split(shared_data, root / "pool", 100, 130)
    pool_shuffled = split(shared_data, root / "pool_shuffled", 100, 130, shuffle_labels_seed=3)
    val = split(shared_data, root / "val", 350, 360)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    base = [f"adapt.sources=[{{name: pool, path: {pool}}}]", f"adapt.validation_source={{name: val, path: {val}}}",
            f"adapt.vocabulary={root / 'classes.txt'}", "adapt.iterations=1", f"adapt.pairs={root / 'shards'}",
            "train.deterministic=true", "train.workers=0", "train.epochs=4",
            "train.batch_size=40", "train.val_fraction=0", "adapt.labeller.threshold=0.0",
            "adapt.labeller.per_class_top_k=20", "train.log_every_steps=2", "adapt.early_stop=false",
            "adapt.student.budget=0.5"]
    cfg = load_config(REPO / "configs/demo.yaml", base)
    from cerebro_core.train.pretrain import run_stage as pretrain

    mv = pretrain(cfg, shardset_for(shards, "adapt"), log=lambda s: None)
    return {"cfg": cfg, "base": base, "mv": mv, "root": root, "pool_shuffled": pool_shuffled, "pool": pool}


@pytest.fixture(scope="module")
def base_run(adapt_env):
    """adapt_env's loop (1 iteration, deterministic kernels) run once: the tests that read its
    result, runs, shards and student share it rather than each running the same loop again."""
    res = run_stage(adapt_env["cfg"], start_version=adapt_env["mv"].version, log=lambda s: None)
    run, child, student = latest_adapt()
    return {"res": res, "run": run, "child": child, "student": student}


def test_one_iteration_end_to_end(adapt_env, base_run):
    import mlflow
    import webdataset as wds

    res = base_run["res"]
    it1 = res.iterations[1]
    assert it1["selected"] > 0 and it1["selected"] <= 6 * 20
    assert 0.0 <= it1["pseudo_label_precision"] <= 1.0 and "val/top1" in it1 and "val/mean_per_class" in it1
    client = mlflow.MlflowClient()
    parent = base_run["run"]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [c.data.tags["iteration"] for c in children] == ["1"]
    child = children[0]
    for k in ("selected", "coverage", "mean_confidence", "class_entropy", "pseudo_label_precision", "val/top1",
              "val/text_to_image_R5", "compute/train_samples", "compute/pretrain_equivalents", "train/loss"):
        assert k in child.data.metrics, k
    arts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"confusion_val_1.png", "pseudo_labels_1.png"} <= arts
    # the pseudo-labelled shards: image, caption from a template, json with label/score/iteration/source
    shard_dir = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    tars = sorted(shard_dir.rglob(f"{parent.info.run_id}/iteration-1/shards/*.tar"))
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode())
    assert len(samples) == it1["selected"]
    meta = samples[0]["json"]
    assert set(meta) >= {"label", "label_name", "score", "iteration", "source"} and meta["iteration"] == 1
    assert meta["label_name"] in samples[0]["txt"]
    # the replay student: every batch half pairs, half pseudo-captioned images (an epoch: one pass
    # over the 6 × 40 pairs, 480 samples); the budget (0.5 × the pretraining's 4 epochs of 6 steps ×
    # 40 = 960 samples: 12 steps) binds before 4 passes over the selection's cap (6 × 20 at 20 per
    # batch: 24 steps), and that is what it ran
    assert it1["student_train_samples"] == 2 * 6 * 40 and it1["student_steps"] == 12
    assert it1["pseudo_share"] == pytest.approx(0.5) and it1["passes"] == pytest.approx(12 * 20 / it1["selected"])
    assert child.data.metrics["compute/train_samples"] == 12 * 40
    assert child.data.metrics["compute/pretrain_equivalents"] == pytest.approx(0.5)
    # warm-started from the teacher: both towers trained, and the student is far nearer the
    # teacher's weights than a fresh initialisation
    from cerebro_core.model.factory import create

    start = torch.load(Path(mlflow.artifacts.download_artifacts(
        client.get_model_version("cerebro-clip", adapt_env["mv"].version).source)) / "model.pt", weights_only=True)
    ck = sorted(shard_dir.rglob(f"{parent.info.run_id}/iteration-1/checkpoints/*.pt"))[-1]
    after = ckpt.load(Storage(), str(ck))["model"]
    changed = [k for k in after if not torch.equal(after[k], start["model"][k])]
    assert any(k.startswith("visual.") for k in changed) and any(k.startswith("transformer.") for k in changed)
    torch.manual_seed(adapt_env["cfg"].train.seed + 1000)
    fresh = create(adapt_env["cfg"].train.model).model.state_dict()
    assert dist(after, start["model"]) < 0.2 * dist(after, fresh)
    # keep-best: champion is the best iteration by validation
    champion = client.get_model_version_by_alias("cerebro-clip", "champion")
    if res.best_iteration == 0:
        assert str(champion.version) == str(adapt_env["mv"].version)
    else:
        assert champion.tags["stage"] == "adapt" and champion.tags["iteration"] == str(res.best_iteration)
        assert rank_key(res.iterations[res.best_iteration]) > rank_key(res.iterations[0])


def test_logged_metrics_match_open_clips_zero_shot_classifier(adapt_env, base_run):
    """The logged validation top-1 and pseudo-label precision, recomputed independently: open_clip's
    own ``build_zero_shot_classifier`` over the same prompts, PIL decode + the model's transform,
    ground truth read from the folders' labels.csv — never through the stage's own code."""
    import hashlib

    import mlflow
    import open_clip
    import webdataset as wds
    from PIL import Image

    from cerebro_core.model.factory import create

    cfg = adapt_env["cfg"]
    res, parent = base_run["res"], base_run["run"]
    client = mlflow.MlflowClient()
    (child,) = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"

    def model_from(ck: str):
        b = create(adapt_env["mv"].model)
        ckpt.load_model_weights(b.model, ckpt.load(Storage(), ck))
        return b.model.eval(), b.preprocess_val, open_clip.get_tokenizer(adapt_env["mv"].model)

    def truth(folder: Path) -> dict[str, str]:
        with (folder / "labels.csv").open() as f:
            return {str(folder / r["path"]): r["label"] for r in csv.DictReader(f)}

    @torch.no_grad()
    def predict(model, preprocess, tokenizer, paths: list[str]) -> list[str]:
        clf = open_clip.build_zero_shot_classifier(model, tokenizer, CLASSES, cfg.adapt.templates)
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        feats = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        return [CLASSES[i] for i in (feats @ clf).argmax(1).tolist()]

    # validation top-1 of the iteration-1 model: the student, or the WiSE-FT interpolation chosen
    alpha = res.iterations[1]["wise_ft_alpha"]
    ck1 = (sorted(work.rglob(f"{parent.info.run_id}/iteration-1/checkpoints/*.pt"))[-1] if alpha == 1.0 else
           next(work.rglob(f"{parent.info.run_id}/iteration-1/wise-ft-{alpha:g}.pt")))
    val = truth(Path(cfg.adapt.validation_source.path))
    pred = predict(*model_from(str(ck1)), sorted(val))
    top1 = sum(p == val[path] for p, path in zip(pred, sorted(val))) / len(val)
    assert child.data.metrics["val/top1"] == pytest.approx(top1, abs=1e-6)  # a float32 mean of the same count
    assert res.iterations[1]["val/top1"] == pytest.approx(top1, abs=1e-6)
    # the pseudo-labels in the shards are the start model's zero-shot predictions; their precision
    pool = truth(Path(cfg.adapt.sources[0].path))
    by_sha = {hashlib.sha256(Path(p).read_bytes()).hexdigest(): p for p in pool}
    tars = sorted(work.rglob(f"{parent.info.run_id}/iteration-1/shards/*.tar"))
    selected = [(by_sha[s["json"]["sha256"]], s["json"]["label_name"])
                for s in wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode()]
    start = str(Path(mlflow.artifacts.download_artifacts(
        client.get_model_version("cerebro-clip", adapt_env["mv"].version).source)) / "model.pt")
    teacher = predict(*model_from(start), [p for p, _ in selected])
    assert [lab for _, lab in selected] == teacher
    precision = sum(lab == pool[p] for p, lab in selected) / len(selected)
    assert child.data.metrics["pseudo_label_precision"] == pytest.approx(precision, abs=1e-6)
    assert child.data.metrics["selected"] == len(selected)


def test_ground_truth_never_reaches_training(adapt_env, base_run):
    """Permuting the pool's ground-truth labels leaves the trained weights bit-identical."""
    cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
        f"adapt.sources=[{{name: pool, path: {adapt_env['pool_shuffled']}}}]"])
    r = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    a = {"weights": base_run["student"], "row": base_run["res"].iterations[1]}  # the same loop on the true labels
    b = {"weights": latest_adapt()[2], "row": r.iterations[1]}
    assert a["row"]["selected"] == b["row"]["selected"]
    assert a["row"]["pseudo_label_precision"] != b["row"]["pseudo_label_precision"]  # measured against gt...
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])  # ...which training never saw


def test_keep_best_never_publishes_a_worse_model(adapt_env):
    """An absurd learning rate wrecks the model: validation falls, the loop stops early and the
    starting version stays champion."""
    import mlflow

    cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
        "train.lr=0.1", "adapt.student.lr_scale=10", "adapt.iterations=3", "adapt.early_stop=true"])
    before = mlflow.MlflowClient().get_model_version_by_alias("cerebro-clip", "champion").version
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    assert res.best_iteration == 0 and len(res.iterations) == 2  # iteration 0, then 1 fell: stop
    assert rank_key(res.iterations[1]) < rank_key(res.iterations[0])
    champion = mlflow.MlflowClient().get_model_version_by_alias("cerebro-clip", "champion")
    assert champion.version == before  # the start model or a champion at least as good: never the wreck


def test_bad_inputs_fail_before_compute(adapt_env, tmp_path):
    base = adapt_env["base"]
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "nothing").mkdir()
    cases = [
        (["adapt.vocabulary=" + str(tmp_path / "empty.txt")], "is empty"),
        (["adapt.vocabulary=" + str(tmp_path / "missing.txt")], "adapt.vocabulary: file not found"),
        ([f"adapt.sources=[{{name: x, path: {tmp_path}/nope}}]"], r"adapt.sources\[0\].path: folder not found"),
        ([f"adapt.sources=[{{name: x, path: {tmp_path}/nothing}}]"], r"adapt.sources\[x\]: no images"),
        (["adapt.sources=[]"], "no wildlife sources"),
        ([f"adapt.sources=[{{name: x, path: {adapt_env['pool']}, metadata: {tmp_path}/m.json}}]"],
         r"adapt.sources\[x\].metadata: nothing at"),
    ]
    for extra, msg in cases:
        cfg = load_config(REPO / "configs/demo.yaml", base + extra)
        with pytest.raises(AdaptInputError, match=msg):
            check_inputs(cfg)  # what `cerebro adapt` checks before Prefect: no image read or hashed
        with pytest.raises(AdaptInputError, match=msg):
            gather(cfg)  # and the stage, the same way, first
    assert check_inputs(adapt_env["cfg"]) == CLASSES


def _registered_weights(version: str) -> dict:
    import mlflow

    source = mlflow.MlflowClient().get_model_version("cerebro-clip", version).source
    return torch.load(Path(mlflow.artifacts.download_artifacts(source)) / "model.pt", weights_only=True)["model"]


def _scratch_cfg(adapt_env, *extra: str):
    base = [x for x in adapt_env["base"] if not x.startswith("adapt.student.")]  # the replay budget
    return load_config(REPO / "configs/demo.yaml", base + [
        "adapt.student.kind=scratch", "adapt.student.folds=0", "train.epochs=2", *extra])


def test_the_benchmarks_control_trains_the_same_steps_on_the_pairs_alone(adapt_env, base_run):
    """The benchmark's control (experiments/adapt_control.py) runs the same loop with a labeller
    that knows no teacher: nothing selected, the replay student trains the same 12 steps from the
    same teacher on the pairs alone — and ends with other weights than the loop's student."""
    import sys

    sys.path.insert(0, str(REPO))
    from cerebro_core.adapt.stage import run_loop
    from experiments.adapt_control import PairsOnly

    cfg = adapt_env["cfg"]
    loop, student = base_run["res"].iterations[1], base_run["student"]
    ctl = run_loop(cfg, PairsOnly(), start_version=adapt_env["mv"].version, log=lambda s: None).iterations[1]
    run, child, control = latest_adapt()
    assert run.data.tags["labeller"] == "control-pairs-only" and ctl["selected"] == 0
    assert ctl["student_steps"] == loop["student_steps"] == 12 and ctl["student_train_samples"] == 6 * 40
    assert child.data.metrics["compute/train_samples"] == loop["compute/train_samples"]
    assert "pseudo_labels_1.png" not in {a.path for a in __import__("mlflow").MlflowClient().list_artifacts(
        child.info.run_id)}
    assert any(not torch.equal(student[k], control[k]) for k in student)  # the pseudo-labels made a difference


def test_scratch_student_trains_from_random_weights(adapt_env):
    """adapt.student.kind=scratch (noisy student): each iteration pretrains a new model from random
    weights on the pretraining pairs plus the pseudo-captioned pool images, for train.epochs passes
    over the pairs plus the selection's cap (so its steps do not depend on the labeller)."""
    import mlflow

    from cerebro_core.model.factory import create

    cfg = _scratch_cfg(adapt_env)
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    row = res.iterations[1]
    run, child, student = latest_adapt()
    assert run.data.tags["student"] == "scratch" and "train/loss" in child.data.metrics
    n_pairs, cap = 6 * 40, 6 * 20  # 6 classes × per_class_top_k 20 (the pool has 180 images)
    assert row["selected"] > 0 and row["student_train_samples"] == n_pairs + row["selected"]
    assert row["student_steps"] == 2 * ((n_pairs + cap) // 40)
    assert child.data.metrics["compute/pretrain_equivalents"] == pytest.approx(row["student_steps"] * 40 / 960)
    teacher = torch.load(Path(mlflow.artifacts.download_artifacts(mlflow.MlflowClient().get_model_version(
        "cerebro-clip", adapt_env["mv"].version).source)) / "model.pt", weights_only=True)["model"]
    torch.manual_seed(cfg.train.seed + 1000)
    fresh = create(cfg.train.model).model.state_dict()
    assert dist(student, fresh) < 0.5 * dist(student, teacher)
    assert any(not torch.equal(student[k], fresh[k]) for k in student if k.startswith("transformer."))


def test_cross_fit_labels_each_fold_with_a_student_that_never_saw_it(adapt_env):
    """adapt.student.folds=2: after iteration 1, two more students are trained like it, each on
    the pairs plus iteration 1's selection minus one fold of the pool; iteration 2 selects from
    their out-of-fold probabilities (recomputed here from their checkpoints), not from the
    iteration-1 student, which trained on those very pseudo-labels."""
    import mlflow

    from cerebro_core.adapt.students import fold_of

    cfg = _scratch_cfg(adapt_env, "adapt.iterations=2", "adapt.student.folds=2")
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    assert [r.get("out_of_fold") for r in res.iterations[1:]] == [0.0, 1.0]
    # iteration 2 paid for its student and the two fold students
    assert res.iterations[2]["compute/train_samples"] > 2 * res.iterations[1]["compute/train_samples"]
    client = mlflow.MlflowClient()
    run_id = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
                                order_by=["start_time DESC"])[0].info.run_id
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    fold = {p.sha256: fold_of(p, 2) for p in gather(cfg)[0]}
    selected1 = written_labels(run_id, "iteration-1/shards")
    oof = {}
    for k in (0, 1):
        trained_on = written_labels(run_id, f"iteration-2/fold-{k}/shards")
        assert trained_on and trained_on.keys() == {h for h in selected1 if fold[h] != k}
        assert all(trained_on[h] == selected1[h] for h in trained_on)  # the same pseudo-labels
        weights = ckpt.load(Storage(), str(sorted(work.rglob(f"{run_id}/iteration-2/fold-{k}/checkpoints/*.pt"))[-1]))
        oof.update({h: p for h, p in pool_probs(cfg, weights["model"]).items() if fold[h] == k})
    assert oof.keys() == fold.keys()
    keys = sorted(oof)
    idx, labels, scores = select(np.stack([oof[h] for h in keys]), cfg.adapt.labeller.threshold,
                                 cfg.adapt.labeller.per_class_top_k)
    written2 = written_labels(run_id, "iteration-2/shards")
    assert written2.keys() == {keys[i] for i in idx}
    for i, lab, sc in zip(idx, labels, scores):
        assert written2[keys[i]][0] == lab and abs(written2[keys[i]][1] - sc) < 1e-4
    student1 = ckpt.load(Storage(), str(sorted(work.rglob(f"{run_id}/iteration-1/checkpoints/*.pt"))[-1]))["model"]
    own = pool_probs(cfg, student1)
    assert any(abs(float(own[h].max()) - written2[h][1]) > 1e-3 for h in written2)


def test_keep_best_ranks_by_species_search_and_weighs_wise_ft(adapt_env, base_run):
    """Each iteration's model is the student or a WiSE-FT interpolation with its teacher, whichever
    ranks first on validation by species-query mAP over the whole ranking (ties: top-1); each candidate's figures are
    logged, and the chosen checkpoint is exactly teacher + α·(student − teacher)."""
    import mlflow

    rows = base_run["res"].iterations
    it1 = rows[1]
    assert {"val/search_mAP", "val/search_mAP_at_10", "val/search_P_at_10", "val/knn_top1"} <= rows[0].keys()
    cands = {a: (it1[f"wise_ft/{a:g}/val_search"], it1[f"wise_ft/{a:g}/val_top1"]) for a in (1.0, 0.75, 0.5, 0.25)}
    assert cands[it1["wise_ft_alpha"]] == max(cands.values())
    assert rank_key(it1) == cands[it1["wise_ft_alpha"]]  # the measured model is the chosen one
    assert "wise_ft/0.5/val_search" in base_run["child"].data.metrics
    assert base_run["res"].best_iteration == max(range(len(rows)), key=lambda i: (rank_key(rows[i]), -i))
    run_id = base_run["run"].info.run_id
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    half = ckpt.load(Storage(), str(next(work.rglob(f"{run_id}/iteration-1/wise-ft-0.5.pt"))))["model"]
    teacher = torch.load(Path(mlflow.artifacts.download_artifacts(mlflow.MlflowClient().get_model_version(
        "cerebro-clip", adapt_env["mv"].version).source)) / "model.pt", weights_only=True)["model"]
    student = base_run["student"]
    assert all(torch.allclose(half[k], teacher[k] + 0.5 * (student[k] - teacher[k])) for k in half
               if half[k].is_floating_point())


def test_the_champion_moves_only_to_a_model_at_least_as_good_on_validation(adapt_env, tmp_path):
    """Adapt started from a random-weight version improves on it, but ranks below the current
    champion on validation: its best model is registered, the champion alias stays where it was."""
    import mlflow

    from cerebro_core import tracking
    from cerebro_core.model.factory import create
    from cerebro_core.model.publish import publish_model

    cfg = adapt_env["cfg"]
    client = mlflow.MlflowClient()
    before = client.get_model_version_by_alias("cerebro-clip", "champion").version
    torch.manual_seed(123)
    url = str(tmp_path / "random.pt")
    ckpt.save(Storage(), url, {"model": create(cfg.train.model).model.state_dict(), "model_name": cfg.train.model,
                               "step": 0})
    with tracking.stage_run(cfg, "pretrain", run_name="random weights") as run:
        weak = publish_model(cfg, run.info.run_id, url, "pretrain", {}, {})
    tracking.set_alias("cerebro-clip", "champion", before)
    lines: list[str] = []
    res = run_stage(cfg, start_version=weak.version, log=lines.append)
    assert client.get_model_version_by_alias("cerebro-clip", "champion").version == before
    assert res.model.version != before and any("champion unchanged" in x for x in lines), lines[-3:]


def test_verified_labels_train_every_student_and_join_validation(adapt_env, tmp_path):
    """Reviewers' verifications (cerebro_core.review.store) reach adapt: pool images verified as a
    species leave the labeller's hands — one in 3 by hash joins validation, the rest enter the
    student's shards at their verified label with score 1.0 — and images verified as empty are
    never pseudo-labelled."""
    import shutil

    import webdataset as wds

    from cerebro_core.home import resolve
    from cerebro_core.review.store import Verification, append, folder, now

    cfg = adapt_env["cfg"]
    pool = gather(cfg)[0]
    species = {p.sha256: CLASSES[(CLASSES.index(p.label) + 1) % 6] for p in pool[:12]}  # deliberately not the truth
    empty = {p.sha256 for p in pool[12:15]}
    root = resolve(cfg).storage_root
    append(root, [Verification(h, lab, now(), "tester") for h, lab in species.items()]
           + [Verification(h, "empty", now(), "tester") for h in empty])
    try:
        res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    finally:
        shutil.rmtree(folder(root))
    to_val = {h for h in species if int(h[:12], 16) % 3 == 0}
    assert 0 < len(to_val) < len(species)
    assert res.iterations[0]["val/n"] == 60 + len(to_val)  # validation: its 60 images + the verified third
    run_id = latest_adapt()[0].info.run_id
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    tars = sorted(work.rglob(f"{run_id}/iteration-1/shards/*.tar"))
    written = {s["json"]["sha256"]: s["json"] for s in wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode()}
    for h in set(species) - to_val:
        assert written[h]["label_name"] == species[h] and written[h]["score"] == 1.0
    assert not (to_val | empty) & written.keys()
    assert res.iterations[1]["verified_training"] == len(species) - len(to_val)
