"""Test data built from the shared photos (or made up): image-text pairs and their shards, URL
lists served from loopback, videos, PNG bombs, scrapes, CIFAR splits, clustered vectors."""

from __future__ import annotations

import csv
import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np

from helpers.servers import LoopbackServer, free_port


CLASSES = ["bird", "cat", "deer", "dog", "frog", "horse"]


def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels (900 Mpx) that compresses to ~100 KB."""
    raw_row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    chunks = []
    block = raw_row * 1000
    for _ in range(side // 1000):
        chunks.append(comp.compress(block))
    chunks.append(comp.flush())
    idat = b"".join(chunks)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def good_pairs(shared: Path, n_coco: int = 80, n_cifar_per_class: int = 10) -> list[tuple[str, Path]]:
    """Real (caption, image path) pairs: COCO captions mini + CIFAR animals captioned by class."""
    pairs: list[tuple[str, Path]] = []
    coco = shared / "coco_captions_mini"
    for line in (coco / "captions.jsonl").read_text().splitlines()[:n_coco]:
        rec = json.loads(line)
        pairs.append((rec["captions"][0].strip(), coco / rec["image"]))
    cifar = shared / "cifar10_animals"
    per: dict[str, int] = {}
    templates = ["a photo of a {}.", "a blurry photo of a {}.", "a {} in the wild.", "a close-up of a {}."]
    for row in csv.DictReader((cifar / "labels.csv").open()):
        k = per.get(row["label"], 0)
        if k < n_cifar_per_class:
            pairs.append((templates[k % len(templates)].format(row["label"]), cifar / row["path"]))
            per[row["label"]] = k + 1
    return pairs


BAD_KINDS = {
    # path → expected failure kind; (status, content type, body[, headers]) filled in by the fixture
    "/bad/404": "http_404",
    "/bad/500": "http_500",
    "/slow/timeout.jpg": "timeout",
    "/bad/html.jpg": "html_instead_of_image",
    "/bad/truncated.jpg": "truncated_image",
    "/bad/empty.jpg": "empty_body",
    "/bad/garbage.jpg": "not_an_image",
    "/bad/bomb.png": "decompression_bomb",
    "/bad/noai.jpg": "disallowed_by_robots",  # a site's AI opt-out, honoured by default
}


def write_url_list(path: Path, srv: LoopbackServer, header: bool = False) -> dict:
    """Raw CC3M TSV (caption<TAB>url, no header): good rows then every bad row.

    Returns expectations: good captions by row number, bad kinds by row number."""
    closed_port = free_port()  # nothing listens there any more
    rows: list[tuple[str, str]] = []
    good: dict[int, str] = {}
    bad: dict[int, str] = {}
    for i, (cap, _) in enumerate(srv.pairs):
        good[len(rows)] = cap
        rows.append((cap, f"{srv.base}/img/{i}.jpg"))
    for path_, kind in BAD_KINDS.items():
        bad[len(rows)] = kind
        rows.append((f"bad row {kind}", srv.base + path_))
    bad[len(rows)] = "connection_refused"
    rows.append(("refused", f"http://127.0.0.1:{closed_port}/x.jpg"))
    bad[len(rows)] = "invalid_url"
    rows.append(("invalid url", "ht!tp:/not a url"))
    bad[len(rows)] = "empty_caption"
    rows.append(("", f"{srv.base}/img/0.jpg"))
    with path.open("w") as f:
        if header:
            f.write("caption\turl\n")
        for cap, url in rows:
            f.write(f"{cap}\t{url}\n")
    return {"good": good, "bad": bad, "rows": len(rows)}


def write_pair_shards(pairs: list[tuple[str, Path]], out: Path, per_shard: int = 20, size: int = 32) -> list[str]:
    """Real pairs as webdataset shards (what the download stage writes), via webdataset's writer."""
    import io as _io

    import webdataset as wds
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as w:
        for i, (cap, p) in enumerate(pairs):
            img = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)
            b = _io.BytesIO()
            img.save(b, format="JPEG", quality=95)
            w.write({"__key__": f"{i:06d}", "jpg": b.getvalue(), "txt": cap, "json": json.dumps({"cerebro_id": i})})
    return sorted(str(p) for p in out.glob("*.tar"))


def shardset_for(shards: list[str], name: str = "test"):
    """A ShardSet (the download stage's result) for shards built directly."""
    import tarfile

    from cerebro_core.data.shardset import DownloadStats, ShardSet

    sizes = {}
    for s in shards:
        with tarfile.open(s) as tf:
            sizes[Path(s).name] = sum(1 for m in tf.getnames() if m.endswith(".jpg"))
    n = sum(sizes.values())
    stats = DownloadStats(total_rows=n, attempted=n, successes=n, failures=0, dropped_empty_caption=0,
                          success_rate=1.0, failures_by_reason={}, failure_messages={}, bytes_written=0,
                          new_successes=n, wall_s=0.0, images_per_s=0.0, shards=len(shards))
    return ShardSet(output=str(Path(shards[0]).parent), shards=shards, sizes=sizes, num_samples=n,
                    manifest_url="", sizes_url="", stats_url="", manifest_hash=f"{name}-{n}", input_hash=name,
                    stats=stats)


def make_video(path: Path, seconds: float = 3.0, fps: int = 10, size: int = 64,
               creation_time: str | None = None) -> Path:
    """A short real video (MPEG-4 part 2 in .mp4) of a moving square, encoded with PyAV; with
    ``creation_time`` (ISO 8601) in its container metadata, as cameras write it."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        if creation_time:
            c.metadata["creation_time"] = creation_time
        st = c.add_stream("mpeg4", rate=fps)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.full((size, size, 3), 30, np.uint8)
            x = (i * 3) % (size - 16)
            img[20:36, x : x + 16] = (220, 120, 30)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


def make_scrape(shared: Path, dst: Path, n_new: int, n_copies: int, offset: int = 0) -> dict:
    """A scrape folder: ``n_new`` CIFAR horses, ``n_copies`` renamed copies of Caltech photos, a
    corrupt JPEG and a text file named .png."""
    import shutil

    dst.mkdir(parents=True)
    new = sorted((shared / "cifar10_animals" / "test" / "horse").glob("*.jpg"))[offset:offset + n_new]
    for i, p in enumerate(new):
        shutil.copy(p, dst / f"new_{offset + i:04d}.jpg")
    olds = sorted((shared / "caltech101_animals").rglob("*.jpg"))[:n_copies]
    for i, p in enumerate(olds):
        shutil.copy(p, dst / f"renamed_copy_{i}.jpg")
    (dst / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (dst / "notes.png").write_bytes(b"this is text")
    return {"new": new, "copies": olds}


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


def clustered(n: int, d: int, seed: int = 0, centers: int = 64, dtype=np.float32) -> np.ndarray:
    """``n`` unit vectors around ``centers`` random centres (noise 0.6), as ``dtype``: data an
    approximate index must work to search."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype)
