"""Offline demo data: procedurally drawn scenes with captions, listed as ``file://`` URLs in the
raw CC3M TSV layout (``caption<TAB>url``, no header) so the demo goes through the real
downloader with no network.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (230, 210, 40),
    "white": (240, 240, 240),
    "brown": (120, 80, 40),
}
SHAPES = ["circle", "square", "triangle"]
BACKGROUNDS = {"snow": (225, 230, 240), "grass": (70, 120, 50), "sand": (200, 180, 130), "night": (20, 20, 40)}
TEMPLATES = ["a {c} {s} on {b}", "a photo of a {c} {s} in the {b}", "{c} {s}, {b} background"]


def _draw(color: str, shape: str, bg: str, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in COLORS[color])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def make_demo_data(folder: str | Path, n: int = 600, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` images and ``urls.tsv``; returns the TSV path. Idempotent."""
    folder = Path(folder)
    tsv = folder / "urls.tsv"
    if tsv.exists() and sum(1 for _ in tsv.open()) == n:
        return tsv
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        c, s, b = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
        p = folder / "images" / f"{i:05d}_{c}_{s}_{b}.jpg"
        _draw(c, s, b, size, rng).save(p, quality=90)
        caption = rng.choice(TEMPLATES).format(c=c, s=s, b=b)
        lines.append(f"{caption}\t{p.resolve().as_uri()}")
    make_demo_video(folder / "images" / "clips" / "red_circle_on_snow.mp4", "red", "snow", size, rng)
    # adapt: an unlabelled "wild" set, a labelled validation set (class folders), the vocabulary
    classes = [f"{c} {s}" for c in COLORS for s in SHAPES]
    (folder / "vocabulary.txt").write_text("\n".join(classes) + "\n")
    for sub, per_class in (("wild", 15), ("val", 5)):
        for cname in classes:
            c, s = cname.split()
            d = folder / sub / (cname if sub == "val" else "")
            d.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                b = rng.choice(list(BACKGROUNDS))
                _draw(c, s, b, size, rng).save(d / f"{sub}_{c}_{s}_{j:03d}.jpg", quality=90)
    tmp = tsv.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(tsv)
    return tsv


def make_demo_video(path: Path, color: str, bg: str, size: int, rng: random.Random, seconds: int = 4, fps: int = 8) -> Path:
    """A short clip of a moving shape (stills of it end up in the index)."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=fps)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
            d = ImageDraw.Draw(img)
            r = size // 5
            cx = r + (i * 3) % (size - 2 * r)
            d.ellipse([cx - r, size // 2 - r, cx + r, size // 2 + r], fill=COLORS[color])
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path
