"""Stage 3, adapt: the mechanics on real CIFAR photos — balanced selection, pseudo-labelled shards,
fine-tuning changes the weights, per-iteration MLflow child runs and artifacts, keep-best and the
champion alias, ground truth unused (permuting it changes nothing), objectives, bad inputs, the EMA
teacher, the scratch (noisy) student with its pairs-only control, and the label ensemble."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cerebro_core.adapt.select import ProbabilityEnsemble, class_entropy, class_thresholds, select
from cerebro_core.adapt.stage import AdaptInputError, gather, run_stage
from cerebro_core.config import load_config
from cerebro_core.model import checkpoint as ckpt
from cerebro_core.storage import Storage

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["bird", "cat", "deer", "dog", "frog", "horse"]


def split(shared: Path, dst: Path, a: int, b: int, shuffle_labels_seed: int | None = None) -> Path:
    rows = list(csv.DictReader((shared / "cifar10_animals" / "labels.csv").open()))
    dst.mkdir(parents=True)
    chosen = []
    for c in CLASSES:
        chosen += sorted((r for r in rows if r["label"] == c), key=lambda r: r["path"])[a:b]
    labels = [r["label"] for r in chosen]
    if shuffle_labels_seed is not None:
        random.Random(shuffle_labels_seed).shuffle(labels)
    with (dst / "labels.csv").open("w") as f:
        f.write("path,label\n")
        for r, lab in zip(chosen, labels):
            name = r["path"].replace("/", "_")
            os.link(shared / "cifar10_animals" / r["path"], dst / name)
            f.write(f"{name},{lab}\n")
    return dst


@pytest.fixture(scope="module")
def adapt_env(shared_data, tmp_path_factory):
    from conftest import good_pairs, shardset_for, write_pair_shards

    home = tmp_path_factory.mktemp("adapt-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("CEREBRO_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path_factory.mktemp("adapt-data")
    pool = split(shared_data, root / "pool", 100, 130)
    pool_shuffled = split(shared_data, root / "pool_shuffled", 100, 130, shuffle_labels_seed=3)
    val = split(shared_data, root / "val", 350, 360)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    base = [f"adapt.sources=[{{name: pool, path: {pool}}}]", f"adapt.validation_source={{name: val, path: {val}}}",
            f"adapt.vocabulary={root / 'classes.txt'}", "adapt.iterations=1", "train.finetune.steps=8",
            "train.finetune.batch_size=32", "train.deterministic=true", "train.workers=0", "train.epochs=4",
            "train.batch_size=40", "train.val_fraction=0", "adapt.confidence_threshold=0.0",
            "adapt.per_class_top_k=20", "train.log_every_steps=2", "adapt.early_stop=false"]
    cfg = load_config(REPO / "configs/demo.yaml", base)
    from cerebro_core.train.pretrain import run_stage as pretrain

    shards = write_pair_shards(good_pairs(shared_data, n_coco=0, n_cifar_per_class=40), root / "shards")
    mv = pretrain(cfg, shardset_for(shards, "adapt"), log=lambda s: None)
    yield {"cfg": cfg, "base": base, "mv": mv, "root": root, "pool_shuffled": pool_shuffled, "pool": pool}
    mp.undo()


def test_select_is_balanced_and_thresholded():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((500, 5)) * 3
    logits[:300, 0] += 4  # class 0 dominates
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    idx, labels, scores = select(probs, threshold=0.5, per_class_top_k=20)
    counts = np.bincount(labels, minlength=5)
    assert counts.max() <= 20 and counts[0] == 20
    assert (scores >= 0.5).all() and (probs[idx].argmax(1) == labels).all()
    # within a class, the most confident are kept
    c0 = np.where((probs.argmax(1) == 0) & (probs.max(1) >= 0.5))[0]
    assert set(idx[labels == 0]) == set(c0[np.argsort(-probs[c0, 0])][:20])
    assert class_entropy(np.zeros(10, int), 5) == 0.0
    assert abs(class_entropy(np.arange(5), 5) - 1.0) < 1e-9


def test_probability_ensemble_averages_per_image():
    e = ProbabilityEnsemble()
    e.add(["a", "b", "c"], np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]))
    e.add(["c", "a"], np.array([[0.1, 0.9], [0.3, 0.7]]))  # another order; "b" failed to decode this time
    assert e.models == 2
    np.testing.assert_allclose(e.mean(["b", "a", "c"]), [[0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], rtol=1e-6)
    with pytest.raises(ValueError, match="2 keys for 3 rows"):
        e.add(["a", "b"], np.zeros((3, 2)))
    # one more model's rows, without adding them: "d" is new to the ensemble
    np.testing.assert_allclose(e.mean_with(["a", "d"], np.array([[0.0, 1.0], [0.4, 0.6]])),
                               [[0.4, 0.6], [0.4, 0.6]], rtol=1e-6)
    assert e.models == 2
    np.testing.assert_allclose(e.mean(["a"]), [[0.6, 0.4]], rtol=1e-6)


def _probs(rows: list[tuple[int, float]], n_classes: int = 3) -> np.ndarray:
    """One row per (predicted class, confidence); the rest of the mass spread over the others."""
    p = np.zeros((len(rows), n_classes))
    for i, (c, conf) in enumerate(rows):
        p[i] = (1 - conf) / (n_classes - 1)
        p[i, c] = conf
    return p


def test_flexmatch_thresholds_lower_the_bar_for_unsure_classes():
    # σ = [3, 1, 0] images at ≥ 0.5, 2 below it: β = σ / max(3, 2) = [1, 1/3, 0],
    # T = β / (2 − β) · 0.5 = [0.5, 0.1, 0]
    probs = _probs([(0, 0.9), (0, 0.8), (0, 0.7), (1, 0.6), (1, 0.4), (2, 0.45)])
    assert np.allclose(class_thresholds(probs, 0.5, "fixed"), [0.5, 0.5, 0.5])
    assert np.allclose(class_thresholds(probs, 0.5, "flexmatch"), [0.5, 0.1, 0.0])
    idx_fixed, _, _ = select(probs, 0.5, per_class_top_k=10)
    idx_flex, labels, _ = select(probs, 0.5, per_class_top_k=10, mode="flexmatch")
    assert list(idx_fixed) == [0, 1, 2, 3] and list(idx_flex) == [0, 1, 2, 3, 4, 5]
    assert list(labels) == [0, 0, 0, 1, 1, 2]
    # warm-up: while most images are unsure, every class's bar is low
    unsure = _probs([(0, 0.9)] + [(1, 0.4)] * 9)
    assert class_thresholds(unsure, 0.5, "flexmatch").max() < 0.5 / 9
    with pytest.raises(ValueError):
        class_thresholds(probs, 0.5, "adaptive")


def test_one_iteration_end_to_end(adapt_env):
    import mlflow
    import webdataset as wds

    res = run_stage(adapt_env["cfg"], start_version=adapt_env["mv"].version, log=lambda s: None)
    it1 = res.iterations[1]
    assert it1["selected"] > 0 and it1["selected"] <= 6 * 20
    assert 0.0 <= it1["pseudo_label_precision"] <= 1.0 and "val/top1" in it1 and "val/mean_per_class" in it1
    client = mlflow.MlflowClient()
    parent = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id],
                                "tags.stage = 'adapt'", order_by=["start_time DESC"])[0]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [c.data.tags["iteration"] for c in children] == ["1"]
    child = children[0]
    for k in ("selected", "coverage", "mean_confidence", "class_entropy", "pseudo_label_precision", "val/top1",
              "class_threshold_min", "class_threshold_max",
              "val/text_to_image_R5"):
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
    # fine-tuning changed the weights
    start = torch.load(Path(mlflow.artifacts.download_artifacts(
        client.get_model_version("cerebro-clip", adapt_env["mv"].version).source)) / "model.pt", weights_only=True)
    ck = sorted(shard_dir.rglob(f"{parent.info.run_id}/iteration-1/checkpoints/*.pt"))[-1]
    after = ckpt.load(Storage(), str(ck))["model"]
    changed = [k for k in after if not torch.equal(after[k], start["model"][k])]
    assert any(k.startswith("visual.") for k in changed)
    assert not any(k.startswith("transformer.") for k in changed)  # text tower frozen
    # keep-best: champion is the best iteration by validation
    champion = client.get_model_version_by_alias("cerebro-clip", "champion")
    if res.best_iteration == 0:
        assert str(champion.version) == str(adapt_env["mv"].version)
    else:
        assert champion.tags["stage"] == "adapt" and champion.tags["iteration"] == str(res.best_iteration)
        assert res.iterations[res.best_iteration]["val/top1"] > res.iterations[0]["val/top1"]


def test_logged_metrics_match_open_clips_zero_shot_classifier(adapt_env):
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
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    client = mlflow.MlflowClient()
    parent = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
                                order_by=["start_time DESC"])[0]
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

    # validation top-1 of the iteration-1 model
    ck1 = sorted(work.rglob(f"{parent.info.run_id}/iteration-1/checkpoints/*.pt"))[-1]
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


def test_ground_truth_never_reaches_training(adapt_env):
    """Permuting the pool's ground-truth labels leaves the trained weights bit-identical."""
    import mlflow

    def run_with(pool: Path) -> dict:
        cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
            f"adapt.sources=[{{name: pool, path: {pool}}}]"])
        r = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
        run = mlflow.MlflowClient().search_runs(
            [mlflow.MlflowClient().get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
            order_by=["start_time DESC"])[0]
        ck = sorted((Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt").rglob(
            f"{run.info.run_id}/iteration-1/checkpoints/*.pt"))[-1]
        return {"weights": ckpt.load(Storage(), str(ck))["model"], "row": r.iterations[1]}

    a = run_with(adapt_env["pool"])
    b = run_with(adapt_env["pool_shuffled"])
    assert a["row"]["selected"] == b["row"]["selected"]
    assert a["row"]["pseudo_label_precision"] != b["row"]["pseudo_label_precision"]  # measured against gt...
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])  # ...which training never saw


@pytest.mark.parametrize("objective", ["masked_contrastive", "clip"])
def test_other_objectives_run(adapt_env, objective):
    cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
        f"adapt.objective={objective}", "train.finetune.freeze_text=false", "train.finetune.steps=4"])
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    assert res.iterations[1]["selected"] > 0 and np.isfinite(res.iterations[1]["final_loss"])


def test_keep_best_never_publishes_a_worse_model(adapt_env):
    """An absurd learning rate wrecks the model: validation falls, the loop stops early and the
    starting version stays champion."""
    import mlflow

    cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
        "train.finetune.lr=0.5", "adapt.iterations=3", "adapt.early_stop=true"])
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    assert res.best_iteration == 0 and len(res.iterations) == 2  # iteration 0, then 1 fell: stop
    assert res.iterations[1]["val/top1"] < res.iterations[0]["val/top1"]
    champion = mlflow.MlflowClient().get_model_version_by_alias("cerebro-clip", "champion")
    assert str(champion.version) == str(adapt_env["mv"].version)


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
    ]
    for extra, msg in cases:
        with pytest.raises(AdaptInputError, match=msg):
            gather(load_config(REPO / "configs/demo.yaml", base + extra))


def test_vocabulary_formats(shared_data, tmp_path):
    from cerebro_core.data.vocab import load_vocabulary

    names = load_vocabulary(str(shared_data / "species_names" / "iucn_rare_species_400.csv"))
    assert len(names) > 300 and all(n.strip() for n in names)
    z = load_vocabulary(str(shared_data / "species_names" / "zamba_african_camera_trap_labels.txt"))
    assert len(z) == 32
    inat = load_vocabulary(str(shared_data / "species_names" / "inat21_category_id_to_common_name.json"))
    assert len(inat) > 5000
    (tmp_path / "caps.txt").write_text("a fox in snow\na fox in snow\nan owl at night\n")
    assert load_vocabulary(str(tmp_path / "caps.txt")) == ["a fox in snow", "an owl at night"]


def test_ema_teacher_and_strong_view(adapt_env):
    """adapt.ema_teacher=β: after each iteration the labelling (and measured, selectable) teacher
    is β·teacher + (1−β)·student, while the student trains on from its own weights;
    train.finetune.augment is the fine-tune's training view (labels come from the eval view)."""
    import mlflow

    from cerebro_core.adapt.stage import finetune_config

    cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
        "adapt.ema_teacher=0.75", "adapt.iterations=2", "train.finetune.augment.scale=[0.3, 1.0]"])
    assert finetune_config(cfg, 100).augment.scale == (0.3, 1.0)
    assert finetune_config(adapt_env["cfg"], 100).augment == adapt_env["cfg"].train.augment
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    assert len(res.iterations) == 3
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
                             order_by=["start_time DESC"])[0]
    root = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    start = torch.load(Path(mlflow.artifacts.download_artifacts(
        client.get_model_version("cerebro-clip", adapt_env["mv"].version).source)) / "model.pt", weights_only=True)["model"]
    teacher = start
    for it in (1, 2):
        student = ckpt.load(Storage(), str(sorted(root.rglob(f"{run.info.run_id}/iteration-{it}/checkpoints/*.pt"))[-1]))["model"]
        ema = ckpt.load(Storage(), str(next(root.rglob(f"{run.info.run_id}/iteration-{it}/ema-teacher.pt"))))["model"]
        moved = [k for k in student if student[k].is_floating_point() and not torch.equal(student[k], teacher[k])]
        assert any(k.startswith("visual.") for k in moved) and not any(k.startswith("transformer.") for k in moved)
        for k in student:
            if student[k].is_floating_point():
                torch.testing.assert_close(ema[k], 0.75 * teacher[k] + 0.25 * student[k])
        teacher = ema
    if res.best_iteration:
        champion = client.get_model_version_by_alias("cerebro-clip", "champion")
        published = torch.load(Path(mlflow.artifacts.download_artifacts(champion.source)) / "model.pt", weights_only=True)["model"]
        best_ema = ckpt.load(Storage(), str(next(root.rglob(
            f"{run.info.run_id}/iteration-{res.best_iteration}/ema-teacher.pt"))))["model"]
        assert all(torch.equal(published[k], best_ema[k]) for k in best_ema)


def _registered_weights(version: str) -> dict:
    import mlflow

    source = mlflow.MlflowClient().get_model_version("cerebro-clip", version).source
    return torch.load(Path(mlflow.artifacts.download_artifacts(source)) / "model.pt", weights_only=True)["model"]


def _pool_probs(cfg, weights: dict) -> dict[str, np.ndarray]:
    """Class probabilities of one model on the pool, per image sha256, recomputed from its weights."""
    from cerebro_core.adapt.stage import class_embeddings, probabilities
    from cerebro_core.data.vocab import prompts_for
    from cerebro_core.embed import embed_items
    from cerebro_core.model.factory import create

    pool, _, _, classes, _ = gather(cfg)
    prompts = prompts_for(classes, cfg.adapt.templates, cfg.adapt.vocabulary_kind)
    sha = {p.uri: p.sha256 for p in pool}
    b = create(cfg.train.model)
    b.model.load_state_dict(weights)
    b.model.eval()
    e = embed_items(b.model, b.preprocess_val, pool, batch_size=256, workers=0)
    p = probabilities(e.vectors, class_embeddings(b.model, b.tokenizer, prompts), float(b.model.logit_scale.detach().exp()))
    return dict(zip((sha[r["uri"]] for r in e.rows), p))


def _written(run_id: str, where: str) -> dict[str, tuple[int, float]]:
    """(label, score) per image sha256 in the pseudo-labelled shards under ``{run_id}/{where}``."""
    import tarfile

    written = {}
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    for shard in sorted(work.rglob(f"{run_id}/{where}/*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    written[meta["sha256"]] = (meta["label"], meta["score"])
    return written


def _assert_selected_from_the_mean(cfg, run_id: str, iteration: int, a: dict, b: dict) -> None:
    """The iteration's shards hold exactly the selection from the mean of two models' probabilities
    (labels and scores), which differs from the selection from ``b`` alone."""
    keys = sorted(a)

    def expected(p: np.ndarray) -> dict[str, tuple[int, float]]:
        idx, labels, scores = select(p, cfg.adapt.confidence_threshold, cfg.adapt.per_class_top_k)
        return {keys[i]: (int(lab), float(sc)) for i, lab, sc in zip(idx, labels, scores)}

    mean = expected(np.stack([(a[k] + b[k]) / 2 for k in keys]))
    alone = expected(np.stack([b[k] for k in keys]))
    written = _written(run_id, f"iteration-{iteration}/shards")
    assert written.keys() == mean.keys()
    for k, (lab, sc) in written.items():
        assert lab == mean[k][0] and abs(sc - mean[k][1]) < 1e-4
    assert any(abs(written[k][1] - alone[k][1]) > 1e-3 for k in written.keys() & alone.keys())


def test_label_ensemble_labels_with_the_mean_of_the_loop_models(adapt_env):
    """adapt.label_ensemble: iteration 2 selects from the mean class probabilities of the starting
    model and the iteration-1 student (recomputed here from their checkpoints), not the student's."""
    import mlflow

    cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + ["adapt.label_ensemble=true", "adapt.iterations=2"])
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    assert [r.get("labelling_models") for r in res.iterations[1:]] == [1, 2]
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
                             order_by=["start_time DESC"])[0]
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    student1 = ckpt.load(Storage(), str(sorted(work.rglob(f"{run.info.run_id}/iteration-1/checkpoints/*.pt"))[-1]))["model"]
    _assert_selected_from_the_mean(cfg, run.info.run_id, 2, _pool_probs(cfg, _registered_weights(adapt_env["mv"].version)),
                                   _pool_probs(cfg, student1))


def _scratch_cfg(adapt_env, *extra: str):
    """The noisy-student config: adapt.pairs = the fixture's pretraining shards (with a manifest)."""
    from conftest import shardset_for

    root = adapt_env["root"]
    shards = sorted(str(p) for p in (root / "shards").glob("*.tar"))
    (root / "shards" / "manifest.json").write_text(shardset_for(shards, "adapt").model_dump_json())
    return load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
        "adapt.student=scratch", "adapt.objective=clip", f"adapt.pairs={root / 'shards'}", "train.epochs=2", *extra])


def test_scratch_student_and_its_control(adapt_env):
    """adapt.student=scratch (noisy student): each iteration pretrains a new model from random
    weights on the pretraining pairs plus the pseudo-captioned pool images, for train.epochs passes
    over both; the control trains on the pairs alone for the same number of steps."""
    import mlflow

    from cerebro_core.model.factory import create

    cfg = _scratch_cfg(adapt_env)
    n_pairs = 6 * 40

    def student_of(control: bool) -> tuple[dict, dict]:
        res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None, control=control)
        client = mlflow.MlflowClient()
        run = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
                                 order_by=["start_time DESC"])[0]
        ck = sorted((Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt").rglob(
            f"{run.info.run_id}/iteration-1/checkpoints/*.pt"))[-1]
        child = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")[0]
        assert "train/loss" in child.data.metrics  # the student's training curve, in the iteration's run
        assert child.data.metrics["student_steps"] == res.iterations[1]["student_steps"]
        return res.iterations[1], ckpt.load(Storage(), str(ck))["model"]

    row, student = student_of(control=False)
    assert row["selected"] > 0
    assert row["student_train_samples"] == n_pairs + row["selected"]
    assert row["student_steps"] == 2 * ((n_pairs + row["selected"]) // 40)
    ctl_row, ctl = student_of(control=True)
    assert ctl_row["student_train_samples"] == n_pairs and ctl_row["student_steps"] == row["student_steps"]
    # from random weights (the trainer's seed for iteration 1), not from the teacher: both towers
    # trained, and the student is far nearer its fresh initialisation than the teacher's weights
    teacher = torch.load(Path(mlflow.artifacts.download_artifacts(mlflow.MlflowClient().get_model_version(
        "cerebro-clip", adapt_env["mv"].version).source)) / "model.pt", weights_only=True)["model"]
    torch.manual_seed(cfg.train.seed + 1000)
    fresh = create(cfg.train.model).model.state_dict()
    dist = lambda a, b: sum(float((a[k].float() - b[k].float()).norm()) for k in a if a[k].is_floating_point())  # noqa: E731
    assert dist(student, fresh) < 0.5 * dist(student, teacher)
    assert any(not torch.equal(student[k], fresh[k]) for k in student if k.startswith("transformer."))
    assert any(not torch.equal(student[k], ctl[k]) for k in student)  # the pseudo-labels made a difference


def test_scratch_student_needs_pairs_and_the_contrastive_objective(adapt_env, tmp_path):
    from cerebro_core.config import ConfigError

    with pytest.raises(ConfigError, match="objective: a scratch student"):
        load_config(REPO / "configs/demo.yaml", adapt_env["base"] + ["adapt.student=scratch"])
    with pytest.raises(ConfigError, match="ema_teacher"):
        load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
            "adapt.student=scratch", "adapt.objective=clip", "adapt.ema_teacher=0.5"])
    cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
        "adapt.student=scratch", "adapt.objective=clip", f"adapt.pairs={tmp_path}"])
    with pytest.raises(AdaptInputError, match="adapt.pairs: no download output"):
        run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)


def _distill_job(**kw):
    from cerebro_core.config import TrainConfig
    from cerebro_core.train.loop import TrainJob

    return TrainJob(model="cerebro-tiny-vit-32", hp=TrainConfig(), train_shards=[], train_samples=1, ckpt_dir="-",
                    objective="clip_distill", soft_key="soft", distill_prompts=[["a", "b"], ["c"], ["d", "e", "f"]],
                    **kw)


def test_clip_distill_loss_is_contrastive_on_pairs_plus_distillation_on_soft_rows():
    """clip_distill: rows without soft targets (pairs) get open_clip's ClipLoss among themselves;
    rows with them, cross-entropy of the model's zero-shot softmax (distill_scale × cosine to the
    prompt-ensembled class embeddings) against the targets — whose gradient vanishes where the
    targets equal the model's own distribution."""
    import torch.nn.functional as F
    from open_clip.loss import ClipLoss

    from cerebro_core.train.loss import clip_distill_loss as _clip_distill_loss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    txt = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    prompts = torch.randn(6, 16, generator=g)  # 2 + 1 + 3 prompts
    scale = torch.tensor(10.0)
    job = _distill_job(distill_scale=20.0, distill_weight=0.5)
    loss = _clip_distill_loss(job, 0, 1)
    none = torch.zeros(8, 3)
    torch.testing.assert_close(loss(img, txt, scale, none, prompts), ClipLoss()(img, txt, scale))

    pn = F.normalize(prompts, dim=-1)
    cls = F.normalize(torch.stack([pn[0:2].mean(0), pn[2], pn[3:6].mean(0)]), dim=-1)
    targets = torch.zeros(8, 3)
    targets[5:] = torch.softmax(torch.randn(3, 3, generator=g), dim=1)
    expected = ClipLoss()(img[:5], txt[:5], scale) + 0.5 * -(
        targets[5:] * torch.log_softmax(20.0 * img[5:] @ cls.T, dim=1)).sum(1).mean()
    torch.testing.assert_close(loss(img, txt, scale, targets, prompts), expected)

    own = torch.zeros(8, 3)
    own[5:] = torch.softmax(20.0 * img[5:] @ cls.T, dim=1)
    x = img.clone().requires_grad_(True)
    loss(x, txt, scale, own, prompts).backward()
    assert x.grad[5:].abs().max() < 1e-5 and x.grad[:5].abs().max() > 1e-3
    x.grad = None
    loss(x, txt, scale, targets, prompts).backward()
    assert x.grad[5:].abs().max() > 1e-3


def test_soft_targets_need_a_scratch_student(adapt_env):
    from cerebro_core.config import ConfigError

    with pytest.raises(ConfigError, match="student_targets"):
        load_config(REPO / "configs/demo.yaml", adapt_env["base"] + ["adapt.student_targets=soft"])
    with pytest.raises(ConfigError, match="distill_weight"):
        load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
            "adapt.student=scratch", "adapt.objective=clip", "adapt.student_targets=soft", "adapt.distill_weight=0"])


def test_scratch_student_distils_the_teachers_soft_targets(adapt_env):
    """adapt.student_targets=soft: the shards carry the teacher's class probabilities for each
    selected image (recomputed here from the teacher's checkpoint), the trainer reads them back as
    dense targets (zeros for the pairs), and the distilled student agrees with the teacher on the
    pool more than the equal-step pairs-only control does."""
    import mlflow
    import webdataset as wds

    from cerebro_core.model.factory import create
    from cerebro_core.train.data import PipelineSpec, make_loader

    cfg = _scratch_cfg(adapt_env, "adapt.student_targets=soft", "adapt.distill_weight=5")
    client = mlflow.MlflowClient()
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    classes = gather(cfg)[3]

    def student_of(control: bool) -> tuple[str, dict]:
        run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None, control=control)
        run = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
                                 order_by=["start_time DESC"])[0]
        ck = sorted(work.rglob(f"{run.info.run_id}/iteration-1/checkpoints/*.pt"))[-1]
        return run.info.run_id, ckpt.load(Storage(), str(ck))["model"]

    run_id, student = student_of(control=False)
    teacher = _pool_probs(cfg, _registered_weights(adapt_env["mv"].version))
    tars = sorted(str(t) for t in work.rglob(f"{run_id}/iteration-1/shards/*.tar"))
    written = {s["json"]["sha256"]: s["json"]["soft"] for s in wds.WebDataset(tars, shardshuffle=False).decode()}
    assert written
    for k, soft in written.items():
        dense = np.zeros(len(classes))
        dense[soft["i"]] = soft["p"]
        np.testing.assert_allclose(dense, teacher[k], atol=1e-4)
    # the trainer's loader: dense soft rows for the pseudo-labelled images, zero rows for the pairs
    b = create(cfg.train.model)
    pairs = sorted(str(p) for p in (adapt_env["root"] / "shards").glob("*.tar"))
    spec = PipelineSpec(shards=pairs + tars, batch_size=len(written) + 240, batches_per_epoch=1, epoch=0, seed=0,
                        soft_key="soft", soft_classes=len(classes), return_keys=True, shuffle_buffer=1)
    _, _, skipped, keys, targets = next(iter(make_loader(spec, b.preprocess_val, b.tokenizer, 0)))
    assert skipped == 0 and targets.shape == (len(written) + 240, len(classes))
    is_pseudo = torch.tensor([any(k.startswith(t + "#") for t in tars) for k in keys])
    assert int(is_pseudo.sum()) == len(written)
    assert torch.all(targets[~is_pseudo] == 0)
    torch.testing.assert_close(targets[is_pseudo].sum(1), torch.ones(len(written)), atol=1e-4, rtol=0)

    _, control = student_of(control=True)
    distilled, ctl = _pool_probs(cfg, student), _pool_probs(cfg, control)

    def kl_to_teacher(p: dict) -> float:
        return float(np.mean([np.sum(teacher[k] * (np.log(teacher[k] + 1e-9) - np.log(p[k] + 1e-9))) for k in written]))

    assert kl_to_teacher(distilled) < 0.5 * kl_to_teacher(ctl), (kl_to_teacher(distilled), kl_to_teacher(ctl))


def _distill_rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from cerebro_core.train.loss import clip_distill_loss as _clip_distill_loss

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    img, txt, targets, prompts = torch.load(out + ".in", weights_only=True)
    half = slice(4 * rank, 4 * rank + 4)
    loss = _clip_distill_loss(_distill_job(distill_scale=20.0, distill_weight=0.5), rank, 2)
    value = loss(img[half], txt[half], torch.tensor(10.0), targets[half], prompts)
    torch.save(value.detach(), f"{out}.{rank}")
    dist.destroy_process_group()


def test_clip_distill_loss_across_two_gloo_ranks(tmp_path):
    """Under DDP each rank's contrastive term covers the pairs of every rank (gathered, with the
    pair mask), its distillation term its own soft rows."""
    import torch.multiprocessing as mp
    import torch.nn.functional as F
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    txt = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    prompts = torch.randn(6, 16, generator=g)
    targets = torch.zeros(8, 3)
    soft = torch.tensor([False, True, False, True, True, False, False, True])
    targets[soft] = torch.softmax(torch.randn(4, 3, generator=g), dim=1)
    out = str(tmp_path / "loss")
    torch.save((img, txt, targets, prompts), out + ".in")
    mp.spawn(_distill_rank, args=(f"file://{tmp_path / 'init'}", out), nprocs=2)
    pn = F.normalize(prompts, dim=-1)
    cls = F.normalize(torch.stack([pn[0:2].mean(0), pn[2], pn[3:6].mean(0)]), dim=-1)
    contrastive = ClipLoss()(img[~soft], txt[~soft], torch.tensor(10.0))
    for rank in (0, 1):
        mine = torch.zeros(8, dtype=torch.bool)
        mine[4 * rank:4 * rank + 4] = True
        rows = soft & mine
        distill = -(targets[rows] * torch.log_softmax(20.0 * img[rows] @ cls.T, dim=1)).sum(1).mean()
        torch.testing.assert_close(torch.load(f"{out}.{rank}", weights_only=True), contrastive + 0.5 * distill)


def test_extra_teachers_label_with_the_mean_of_their_probabilities(adapt_env):
    """adapt.extra_teachers: iteration 1 selects from the mean class probabilities of the starting
    model and another registered version (pretrained here with another seed), recomputed here from
    their weights; a version that does not exist fails before any compute, naming the key."""
    import mlflow
    from conftest import shardset_for

    from cerebro_core import tracking
    from cerebro_core.train.pretrain import run_stage as pretrain

    with pytest.raises(AdaptInputError, match=r"adapt.extra_teachers\[0\]: no version '999'"):
        run_stage(load_config(REPO / "configs/demo.yaml", adapt_env["base"] + ["adapt.extra_teachers=['999']"]),
                  start_version=adapt_env["mv"].version, log=lambda s: None)
    shards = sorted(str(p) for p in (adapt_env["root"] / "shards").glob("*.tar"))
    other = pretrain(load_config(REPO / "configs/demo.yaml", adapt_env["base"] + ["train.seed=7"]),
                     shardset_for(shards, "adapt"), log=lambda s: None)
    cfg = load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [f"adapt.extra_teachers=['{other.version}']"])
    try:
        res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    finally:
        tracking.set_alias("cerebro-clip", "champion", adapt_env["mv"].version)
    assert res.iterations[1]["labelling_models"] == 2
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
                             order_by=["start_time DESC"])[0]
    _assert_selected_from_the_mean(cfg, run.info.run_id, 1, _pool_probs(cfg, _registered_weights(other.version)),
                                   _pool_probs(cfg, _registered_weights(adapt_env["mv"].version)))


def test_cross_fit_labels_each_fold_with_a_student_that_never_saw_it(adapt_env):
    """adapt.cross_fit_folds=2: after iteration 1, two more students are trained like it, each on
    the pairs plus iteration 1's selection minus one fold of the pool; iteration 2 selects from
    their out-of-fold probabilities (recomputed here from their checkpoints), not from the
    iteration-1 student, which trained on those very pseudo-labels."""
    import mlflow

    from cerebro_core.adapt.stage import fold_of
    from cerebro_core.config import ConfigError

    with pytest.raises(ConfigError, match="cross_fit_folds: out-of-fold"):
        load_config(REPO / "configs/demo.yaml", adapt_env["base"] + ["adapt.cross_fit_folds=2"])
    with pytest.raises(ConfigError, match="cross_fit_folds: 0"):
        load_config(REPO / "configs/demo.yaml", adapt_env["base"] + [
            "adapt.student=scratch", "adapt.objective=clip", "adapt.cross_fit_folds=1"])
    cfg = _scratch_cfg(adapt_env, "adapt.iterations=2", "adapt.cross_fit_folds=2")
    res = run_stage(cfg, start_version=adapt_env["mv"].version, log=lambda s: None)
    assert [r.get("cross_fit_folds") for r in res.iterations[1:]] == [0, 2]
    client = mlflow.MlflowClient()
    run_id = client.search_runs([client.get_experiment_by_name("cerebro").experiment_id], "tags.stage = 'adapt'",
                                order_by=["start_time DESC"])[0].info.run_id
    work = Path(os.environ["CEREBRO_HOME"]) / "data" / "demo" / "adapt"
    fold = {p.sha256: fold_of(p, 2) for p in gather(cfg)[0]}
    selected1 = _written(run_id, "iteration-1/shards")
    oof = {}
    for k in (0, 1):
        trained_on = _written(run_id, f"iteration-1/fold-{k}/shards")
        assert trained_on and trained_on.keys() == {h for h in selected1 if fold[h] != k}
        assert all(trained_on[h] == selected1[h] for h in trained_on)  # the same pseudo-labels
        weights = ckpt.load(Storage(), str(sorted(work.rglob(f"{run_id}/iteration-1/fold-{k}/checkpoints/*.pt"))[-1]))
        oof.update({h: p for h, p in _pool_probs(cfg, weights["model"]).items() if fold[h] == k})
    assert oof.keys() == fold.keys()
    keys = sorted(oof)
    idx, labels, scores = select(np.stack([oof[h] for h in keys]), cfg.adapt.confidence_threshold,
                                 cfg.adapt.per_class_top_k)
    written2 = _written(run_id, "iteration-2/shards")
    assert written2.keys() == {keys[i] for i in idx}
    for i, lab, sc in zip(idx, labels, scores):
        assert written2[keys[i]][0] == lab and abs(written2[keys[i]][1] - sc) < 1e-4
    student1 = ckpt.load(Storage(), str(sorted(work.rglob(f"{run_id}/iteration-1/checkpoints/*.pt"))[-1]))["model"]
    own = _pool_probs(cfg, student1)
    assert any(abs(float(own[h].max()) - written2[h][1]) > 1e-3 for h in written2)
