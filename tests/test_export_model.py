"""`cerebro export-model`: a registered CLIP leaves Cerebro as a folder open_clip loads by itself
(``local-dir:``), giving the same embeddings as Cerebro's own loading of that version."""

from __future__ import annotations

import json
import os
import subprocess

import torch
from PIL import Image

from helpers import CEREBRO, REPO, register_random_clip


def test_export_model_loads_in_open_clip_with_the_same_embeddings(shared_data, tmp_path, monkeypatch):
    import open_clip

    from cerebro_core.config import load_config
    from cerebro_core.model.registry import download, load_clip_from_folder, resolve_version

    monkeypatch.setenv("CEREBRO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(REPO / "configs/demo.yaml", [])
    register_random_clip(cfg, seed=0)
    register_random_clip(cfg, seed=1)
    mv = resolve_version(cfg.tracking.model_name, "champion")  # the latest published
    assert str(mv.version) == "2"
    out = tmp_path / "exported"
    p = subprocess.run([CEREBRO, "export-model", "-c", str(REPO / "configs/demo.yaml"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, env=os.environ)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"v{mv.version}" in p.stdout and f"local-dir:{out}" in p.stdout
    assert sorted(x.name for x in out.iterdir()) == ["README.md", "open_clip_config.json", "open_clip_model.safetensors"]
    assert json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]["image_size"] == 32

    # open_clip alone: its own config reader, weights loader, transform and tokenizer
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    ours = load_clip_from_folder(download(mv))
    photos = sorted((shared_data / "caltech101_animals").rglob("*.jpg"))[:4]
    texts = ["a red fox leaping into snow", "a photo of a leopard", "an empty frame"]
    with torch.no_grad():
        imgs = [Image.open(x).convert("RGB") for x in photos]
        theirs_i = model.encode_image(torch.stack([preprocess(i) for i in imgs]), normalize=True)
        ours_i = ours.model.encode_image(torch.stack([ours.preprocess_val(i) for i in imgs]), normalize=True)
        theirs_t = model.encode_text(tokenizer(texts), normalize=True)
        ours_t = ours.model.encode_text(ours.tokenizer(texts), normalize=True)
    assert torch.allclose(theirs_i, ours_i, atol=1e-5) and torch.allclose(theirs_t, ours_t, atol=1e-5)
    assert not torch.allclose(theirs_i[0], theirs_i[1], atol=1e-3)  # real, distinct embeddings

    # an unknown version is one line and exit 2, nothing written
    p = subprocess.run([CEREBRO, "export-model", "-c", str(REPO / "configs/demo.yaml"), "--clip-version", "99",
                        "--out", str(tmp_path / "v99")], capture_output=True, text=True, timeout=300, env=os.environ)
    assert p.returncode == 2 and "--clip-version 99" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "v99").exists()
