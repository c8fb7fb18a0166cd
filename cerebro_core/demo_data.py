"""Offline demo data: procedurally drawn scenes with captions, listed as ``file://`` URLs in the
raw CC3M TSV layout (``caption<TAB>url``, no header) so the demo goes through the real
downloader with no network.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from PIL import Image, ImageDraw

# Colours that stand out from every background (a white shape on snow or a green one on grass
# cannot be told apart at 32 px: R-precision 0 on those queries, measured), and one shape per
# image, centred and of nearly one size: what a 2-core, two-minute pretraining can learn to tell
# apart (docs/BENCHMARKS.md, "demo search").
COLORS = {
    "red": (200, 40, 40),
    "orange": (240, 130, 20),
    "yellow": (235, 215, 40),
    "blue": (40, 70, 200),
    "purple": (150, 50, 180),
    "brown": (165, 105, 50),
}
SHAPES = ["circle", "square", "triangle"]
BACKGROUNDS = {"snow": (225, 230, 240), "grass": (70, 120, 50), "sand": (200, 180, 130), "night": (20, 20, 40)}
TEMPLATES = ["a {c} {s} on {b}", "a photo of a {c} {s} in the {b}", "{c} {s}, {b} background"]


def _shape(d: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill: tuple) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def _draw(color: str, shape: str, bg: str, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[bg])
    r = rng.randint(int(size * 0.30), int(size * 0.34))
    j = max(1, size // 32)
    cx, cy = size // 2 + rng.randint(-j, j), size // 2 + rng.randint(-j, j)
    fill = tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in COLORS[color])
    _shape(ImageDraw.Draw(img), shape, cx, cy, r, fill)
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
    combos = [(c, s, b) for c in COLORS for s in SHAPES for b in BACKGROUNDS]
    order = [combos[i % len(combos)] for i in range(n)]  # every combination about n / 72 times
    rng.shuffle(order)
    for i, (c, s, b) in enumerate(order):
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
            drift = max(1, size // 32)  # the shape as in the photos, drifting a little
            _shape(ImageDraw.Draw(img), "circle", size // 2 + (i % (2 * drift + 1)) - drift, size // 2,
                   int(size * 0.32), COLORS[color])
            for pkt in st.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


_ITEM = re.compile(r"(?:^|/)(?:\d+_)?(?P<c>[a-z]+)_(?P<s>[a-z]+)_(?:on_)?(?P<b>[a-z]+)\.(?:jpg|mp4)$")


def demo_combo(uri: str) -> tuple[str, str, str] | None:
    """(colour, shape, background) of a demo item from its name (a photo or the clip)."""
    m = _ITEM.search(uri)
    return (m["c"], m["s"], m["b"]) if m else None


def search_quality(searcher) -> dict:
    """R-precision of "a {colour} {shape} on {background}" over every combination in the index:
    k = the number of demo items of that combination (a clip's stills count once, as its clip),
    the share of the first k distinct items that match. Returns mean, min and the query count."""
    items: dict[tuple, set[str]] = {}
    for r in searcher.rows:
        if (c := demo_combo(r["uri"])) is not None:
            items.setdefault(c, set()).add(r["uri"])
    scores = {}
    for (c, s, b), rel in sorted(items.items()):
        seen: list[str] = []
        for h in searcher.search(f"a {c} {s} on {b}", k=min(1000, 4 * len(rel) + 40)):
            if h["uri"] not in seen:
                seen.append(h["uri"])
            if len(seen) == len(rel):
                break
        scores[f"{c} {s} on {b}"] = sum(u in rel for u in seen) / len(rel)
    vals = list(scores.values())
    return {"mean": sum(vals) / len(vals), "min": min(vals), "queries": len(vals), "per_query": scores}
