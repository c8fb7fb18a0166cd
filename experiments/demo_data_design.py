"""Which demo data can a 2-core, two-minute pretraining learn to search? (issue #22, item 5)

    .venv/bin/python experiments/demo_data_design.py [--variants before,palette,centred] [--epochs 30]

Trains the demo's tiny CLIP (cerebro-tiny-vit-32, open_clip's ClipLoss, AdamW lr 1e-3, batch 64,
20 warm-up steps then cosine) from random weights on 600 drawn images with their captions, as the
demo's pretraining does but in one process and without the pipeline, then measures R-precision of
"a {colour} {shape} on {background}" over every combination (k = that combination's image count)
and counts, over all top-k lists, the hits whose colour, shape or background is wrong.

Variants (each adds to the one before):
  before   the old demo data: 6 colours incl. white and green, a shape of radius size/5..size/3
           anywhere in the image, combinations drawn at random (some 3 times, some 14);
  palette  colours that stand out from every background (orange and purple for white and green),
           every combination equally often;
  larger   radius 0.25..0.4 × size, still anywhere;
  centred  radius 0.30..0.34 × size, centred ±size/32 (what cerebro_core/demo_data.py draws now).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cerebro_core import demo_data  # noqa: E402
from cerebro_core.model.factory import create  # noqa: E402

OLD_COLORS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 210, 40),
              "white": (240, 240, 240), "brown": (120, 80, 40)}
VARIANTS = {
    "before": dict(colors=OLD_COLORS, balanced=False, r=(1 / 5, 1 / 3), centred=False),
    "palette": dict(colors=demo_data.COLORS, balanced=True, r=(1 / 5, 1 / 3), centred=False),
    "larger": dict(colors=demo_data.COLORS, balanced=True, r=(0.25, 0.4), centred=False),
    "centred": dict(colors=demo_data.COLORS, balanced=True, r=(0.30, 0.34), centred=True),
}


def draw(v: dict, c: str, s: str, b: str, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), demo_data.BACKGROUNDS[b])
    r = rng.randint(int(size * v["r"][0]), int(size * v["r"][1]))
    if v["centred"]:
        j = max(1, size // 32)
        cx, cy = size // 2 + rng.randint(-j, j), size // 2 + rng.randint(-j, j)
    else:
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = tuple(max(0, min(255, x + rng.randint(-20, 20))) for x in v["colors"][c])
    demo_data._shape(ImageDraw.Draw(img), s, cx, cy, r, fill)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)  # as the demo writes them
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def run(name: str, n: int, epochs: int, seed: int = 0, lr: float = 1e-3, bs: int = 64) -> dict:
    import open_clip

    v = VARIANTS[name]
    torch.manual_seed(seed)
    rng = random.Random(seed)
    combos = list(itertools.product(v["colors"], demo_data.SHAPES, demo_data.BACKGROUNDS))
    picks = [combos[i % len(combos)] for i in range(n)] if v["balanced"] else [rng.choice(combos) for _ in range(n)]
    data = [(cmb, draw(v, *cmb, 64, rng), rng.choice(demo_data.TEMPLATES).format(c=cmb[0], s=cmb[1], b=cmb[2]))
            for cmb in picks]
    bundle = create("cerebro-tiny-vit-32", aug_cfg={"scale": (0.9, 1.0)})
    m, tok = bundle.model, bundle.tokenizer
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
    steps, warm = epochs * (n // bs), 20
    toks = tok([d[2] for d in data])
    t0, step = time.perf_counter(), 0
    for ep in range(epochs):
        perm = np.random.RandomState(seed * 1000 + ep).permutation(n)
        for j in range(n // bs):
            idx = perm[j * bs:(j + 1) * bs]
            for g in opt.param_groups:
                g["lr"] = lr * min(1, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1, step / steps)))
            out = m(torch.stack([bundle.preprocess_train(data[i][1]) for i in idx]), toks[idx])
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    train_s = time.perf_counter() - t0
    m.eval()
    wrong = [0, 0, 0]
    rps = []
    with torch.no_grad():
        iv = F.normalize(m.encode_image(torch.stack([bundle.preprocess_val(d[1]) for d in data])), dim=-1)
        for cmb in combos:
            rel = [i for i, d in enumerate(data) if d[0] == cmb]
            if not rel:
                continue
            q = F.normalize(m.encode_text(tok(["a {} {} on {}".format(*cmb)])), dim=-1)
            top = (iv @ q.T).squeeze(1).argsort(descending=True)[:len(rel)].tolist()
            rps.append(sum(data[i][0] == cmb for i in top) / len(rel))
            for i in top:
                for a in range(3):
                    wrong[a] += data[i][0][a] != cmb[a]
    return {"variant": name, "steps": steps, "train_s": round(train_s, 1), "mean_r_precision": round(statistics.mean(rps), 3),
            "min_r_precision": round(min(rps), 3), "queries_below_0.5": sum(r < 0.5 for r in rps),
            "wrong_colour_shape_background": wrong}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n", type=int, default=600)
    args = ap.parse_args()
    for name in args.variants.split(","):
        print(json.dumps(run(name, args.n, args.epochs)), flush=True)


if __name__ == "__main__":
    main()
