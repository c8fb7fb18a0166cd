"""Each published search version records how well it searches: species-query mAP@10 and P@10 of
its model and of the pretrained one (index.evaluation_source), checked against a direct computation."""

from __future__ import annotations

import shutil

from helpers import REPO


def test_each_version_records_how_well_it_searches(shared_data, tmp_path, monkeypatch):
    """index.evaluation_source = the shared Caltech photos: the published version carries
    species-query mAP@10 and P@10 of its model and of the pretrained one, as metrics and tags,
    equal to a direct computation here."""
    import mlflow
    import torch
    import torch.nn.functional as F
    from helpers import register_random_clip

    from cerebro_core.config import load_config
    from cerebro_core.data.sources import list_folder
    from cerebro_core.index.stage import run_stage
    from cerebro_core.model.registry import load_clip

    monkeypatch.setenv("CEREBRO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    few = tmp_path / "few"
    few.mkdir()
    for i, p in enumerate(sorted((shared_data / "cifar10_animals" / "test" / "deer").glob("*.jpg"))[:5]):
        shutil.copy(p, few / f"d{i}.jpg")
    caltech = shared_data / "caltech101_animals"
    cfg = load_config(REPO / "configs/demo.yaml", [f"index.sources=[{{name: few, path: {few}}}]",
                                                   f"index.evaluation_source={{name: caltech, path: {caltech}}}"])
    register_random_clip(cfg, stage="pretrain", seed=0)
    register_random_clip(cfg, stage="adapt", seed=1)  # the latest: the one the index uses
    sv = run_stage(cfg, log=lambda s: None)
    metrics = mlflow.MlflowClient().get_run(sv.run_id).data.metrics
    tags = mlflow.MlflowClient().get_model_version("cerebro-search", sv.version).tags

    recs = [r for r in list_folder(caltech) if r.label]
    classes = sorted({r.label for r in recs})
    assert len(recs) == 700 and len(classes) == 35 and metrics["search/queries"] == 35

    def direct(version: str) -> tuple[float, float]:
        _, clip, _ = load_clip("cerebro-clip", None, version)
        from PIL import Image

        with torch.inference_mode():
            x = torch.stack([clip.preprocess_val(Image.open(r.path).convert("RGB")) for r in recs])
            f = F.normalize(clip.model.encode_image(x).float(), dim=-1)
            t = F.normalize(clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in classes])).float(), dim=-1)
        aps, precs = [], []
        for ci, c in enumerate(classes):
            order = torch.argsort(t[ci] @ f.T, descending=True)[:10].tolist()
            rel = [recs[j].label == c for j in order]
            hits = 0
            ap = 0.0
            for rank, r in enumerate(rel, 1):
                if r:
                    hits += 1
                    ap += hits / rank
            aps.append(ap / min(10, sum(x.label == c for x in recs)))
            precs.append(sum(rel) / 10)
        return sum(aps) / len(aps), sum(precs) / len(precs)

    for prefix, version in (("search/", "2"), ("search/pretrained_", "1")):
        m_ap, p10 = direct(version)
        # the stage decodes JPEGs at a reduced DCT scale: rankings may differ in the last place
        assert abs(metrics[f"{prefix}mAP_at_10"] - m_ap) < 0.02 and abs(metrics[f"{prefix}P_at_10"] - p10) < 0.02, prefix
        assert tags[f"{prefix}mAP_at_10"] == str(round(metrics[f"{prefix}mAP_at_10"], 4))
    assert metrics["search/pretrained_version"] == 1.0
    assert metrics["search/mAP_at_10"] != metrics["search/pretrained_mAP_at_10"]  # two models, two figures
