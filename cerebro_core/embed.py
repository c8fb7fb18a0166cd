"""The one embedding function: images and video stills → L2-normalised CLIP vectors.

Used by the index stage, re-indexing and adapt's pseudo-labelling. On GPU, decoding (the safe
decoder, then the model's eval transform) runs ahead of the model in spawned DataLoader worker
processes, so that decode keeps a fast device fed, and the model runs in fp16. On CPU, batches
are spread over one thread per core, each decoding its batch and running the model on it
single-threaded (Pillow and torch release the GIL): no spawned worker start-up (seconds of
imports per call), no OpenMP barrier waiting on a core that a decode thread holds. With
torchrun, each rank takes every world_size-th item and writes its own part. Unreadable images
or videos are skipped and counted, never fatal.

Per-image work is kept to what must be per image (measured in docs/BENCHMARKS.md):
  - JPEGs are decoded at a reduced DCT scale (Pillow's ``draft``, as ``Image.thumbnail`` does)
    that still leaves at least ``draft_factor`` × the model's input size on the short side; the
    transform's antialiased resize does the rest;
  - the transform's tail (``ToTensor`` + ``Normalize``) runs once per batch on a uint8 stack —
    bit-identical to running it per image;
  - on CPU the model runs on cache-sized slices of the batch (:func:`cpu_forward_chunk`): a ViT's
    MLP activations for 256 images spill out of the caches, 32-64 images do not.

Output of :func:`write_parts` (one rank of an embedding job, :mod:`cerebro_core.embed_job`):
``emb-<rank>.npy`` (float32, [n, d]) + ``meta-<rank>.parquet`` (item, uri, source, sha256, width,
height, media_type, video_ts, plus any extra columns; ``item`` = the vector's position in the job's
items, the merge order).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cerebro_core.data import images, sidecar
from cerebro_core.data.paths import inside
from cerebro_core.data.sources import IMAGE_SUFFIXES, list_folder
from cerebro_core.devices import usable_cpus

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}


@dataclass
class Item:
    uri: str  # local path (or fsspec URL) of the image or video
    source: str = ""
    media_type: str = "image"  # "image" | "video_frame"
    video_ts: Optional[float] = None
    label: Optional[str] = None  # ground truth when the source has it: evaluation only
    sha256: Optional[str] = None  # precomputed (videos: of the file, '@ts' appended per still)
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- scanning


def video_timestamps(path: str, interval: float) -> list[float]:
    import av

    with av.open(path) as c:
        stream = c.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif c.duration is not None:
            duration = c.duration / 1_000_000
        else:
            duration = 0.0
    n = max(1, int(duration // interval) + (1 if duration % interval > 1e-6 else 0))
    return [round(i * interval, 3) for i in range(n) if i * interval < max(duration, 1e-9)]


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def scan_folder(folder: str, source: str, video_interval: float, counts: Optional[Counter] = None,
                metadata: Optional[dict[str, dict]] = None, layout: Optional[str] = None,
                flags: Optional[dict[str, dict]] = None) -> list[Item]:
    """Images (labels from labels.csv / class folders when present, or from the source's
    ``metadata``: :func:`cerebro_core.data.sources.list_folder`) and video stills; files that
    resolve outside ``folder`` are counted as ``outside_source``, not scanned."""
    counts = counts if counts is not None else Counter()
    root = {"source_root": os.path.abspath(folder)}  # serving re-checks each item against it
    items = [Item(r.path, source, label=r.label, extra={**root, **r.meta, **({"camera": r.camera} if r.camera else {})})
             for r in list_folder(folder, source, counts, metadata, layout)]
    if flags is not None:  # a detector's verdict per file (cerebro_core.data.megadetector): empty, person
        for it in items:
            f = flags.get(Path(it.uri).relative_to(folder).as_posix())
            if f is None:
                counts["detections.not_listed"] += 1
            else:
                it.extra.update({k: v for k, v in f.items() if k not in it.extra})  # annotations win
    known = sidecar.read(Path(folder))  # what a mirrored or downloaded video was: its object, its time
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            if not inside(folder, p):
                counts["outside_source"] += 1
                continue
            try:
                ts = video_timestamps(str(p), video_interval)
                digest = file_sha256(str(p))
            except Exception:
                counts["unreadable_video"] += 1
                continue
            extra = {**root, **known.get(p.relative_to(folder).as_posix(), {})}
            items += [Item(str(p), source, "video_frame", t, sha256=f"{digest}@{t:.3f}", extra=extra) for t in ts]
    return items


# --------------------------------------------------------------------------- decoding


def read_still(path: str, ts: float) -> "images.Image.Image":
    import av

    with av.open(path) as c:
        stream = c.streams.video[0]
        if ts > 0 and stream.time_base is not None:
            c.seek(int(ts / stream.time_base), stream=stream, backward=True, any_frame=False)
        frame = None
        for frame in c.decode(stream):
            if frame.time is None or frame.time + 1e-6 >= ts:
                break
        if frame is None:
            raise images.ImageRejected("corrupt_video", f"no frame at {ts}s")
        return frame.to_image().convert("RGB")


def split_transform(transform: Callable) -> tuple[Callable, Callable, Optional[int]]:
    """(per-image part → uint8 CHW tensor, per-batch part, resize target or None).

    open_clip's eval transform is ``Compose([Resize, CenterCrop, ConvertMode, ToTensor,
    Normalize])``; its last two steps are split off to run on a stacked uint8 batch (the same
    float ops, bit-identical). Any other transform runs whole per image (batch part: identity)."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) >= 2 and type(steps[-2]).__name__ in ("ToTensor", "MaybeToTensor") and isinstance(steps[-1], T.Normalize):
        head, norm = T.Compose(steps[:-2]), steps[-1]

        def per_batch(x: torch.Tensor) -> torch.Tensor:
            return norm(x.float().div(255)) if x.dtype == torch.uint8 else norm(x)

        size = next((s.size for s in steps if isinstance(s, T.Resize)), None)
        target = (size if isinstance(size, int) else min(size)) if size is not None else None
        return _ToUint8(head), per_batch, target
    return transform, (lambda x: x), None


class _ToUint8:
    """The transform's head (resize, crop, mode) then a uint8 CHW tensor; a class, not a
    closure, so that spawned decode workers can receive it."""

    def __init__(self, head: Callable):
        self.head = head

    def __call__(self, img) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        return TF.pil_to_tensor(self.head(img))


def cpu_forward_chunk(model, budget_bytes: int = 8 << 20) -> int:
    """Images per forward on CPU: a ViT's widest activation (tokens × MLP width, fp32) for the
    chunk kept near ``budget_bytes`` (L2/L3-sized), a power of two in [8, 256]. Measured on the
    tiny ViTs (2 cores): batch 256 at once 1.82 / 6.47 ms per image, this rule's 64 / 32 at a time
    1.17 / 4.23 (ViT-32 / ViT-64). Non-ViT towers: 64."""
    import math

    try:  # open_clip VisionTransformer
        v = model.visual
        tokens = int(v.grid_size[0] * v.grid_size[1]) + 1
        mlp = int(v.transformer.resblocks[0].mlp.c_fc.out_features)
    except (AttributeError, TypeError, IndexError):
        return 64
    per_image = tokens * mlp * 4
    return int(min(256, max(8, 2 ** round(math.log2(max(1.0, budget_bytes / per_image))))))


class _ItemDataset(Dataset):
    def __init__(self, items: list[Item], transform: Callable, max_pixels: int, draft: Optional[int] = None):
        self.items, self.transform, self.max_pixels, self.draft = items, transform, max_pixels, draft

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        it = self.items[i]
        try:
            if it.media_type == "video_frame":
                img = read_still(it.uri, it.video_ts or 0.0)
                sha = it.sha256
            else:
                with open(it.uri, "rb") as f:
                    data = f.read()
                sha = it.sha256 or hashlib.sha256(data).hexdigest()
                img = images.decode(data, max_pixels=self.max_pixels, draft=self.draft)
            w, h = img.info.get("original_size", img.size)
            return i, self.transform(img), sha, w, h, None
        except images.ImageRejected as exc:
            return i, None, None, 0, 0, exc.reason
        except Exception as exc:  # unreadable file, broken video
            return i, None, None, 0, 0, f"unreadable:{type(exc).__name__}"


def _collate(batch):
    ok = [b for b in batch if b[1] is not None]
    bad = [(b[0], b[5]) for b in batch if b[1] is None]
    if ok:
        return [b[0] for b in ok], torch.stack([b[1] for b in ok]), [b[2:5] for b in ok], bad
    return [], None, [], bad


def _batches_on_threads(ds: _ItemDataset, batch_size: int, threads: int, work: Callable):
    """``work(collated batch)`` for every batch, in order, ``threads`` batches at a time: each
    thread decodes its own batch and runs the model on it with one intra-op torch thread.

    On a few CPU cores this beats decode-ahead + a multi-threaded forward: no OpenMP barrier
    waits on a core that a decode thread holds, and Python/Pillow work of one batch overlaps the
    matrix work of another (measured in docs/BENCHMARKS.md). The process-wide torch thread count
    is restored afterwards."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def job(a: int):
        return work(_collate([ds[i] for i in range(a, min(a + batch_size, len(ds)))]))

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cerebro-embed") as pool:
            pending: deque = deque()
            starts = iter(range(0, len(ds), batch_size))
            for a in starts:
                pending.append(pool.submit(job, a))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(before)


@dataclass
class Embedded:
    vectors: np.ndarray  # float32 [n, d], L2-normalised
    rows: list[dict]  # metadata per vector
    failures: Counter
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # each vector's position in the items


@torch.no_grad()
def embed_items(
    model,
    transform: Callable,
    items: list[Item],
    batch_size: int = 256,
    workers: int = 2,
    device: str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    progress: Optional[Callable[[int, int], None]] = None,
    decode: Literal["auto", "processes", "threads"] = "auto",
    draft_factor: Optional[float] = 2.0,
    forward_chunk: Optional[int] = None,
) -> Embedded:
    """``decode``: "processes" (DataLoader workers decode ahead of the model), "threads" (one
    thread per core, each decoding and embedding whole batches, see :func:`_batches_on_threads`)
    or "auto" (processes on CUDA, threads on CPU); ``workers=0`` decodes inline (``workers``
    sizes the process pool only). ``draft_factor``: JPEGs decoded at the smallest DCT scale that keeps
    the short side ≥ factor × the transform's resize target (None: full resolution).
    ``forward_chunk``: images per model call (None: :func:`cpu_forward_chunk` on CPU, the whole
    batch on GPU)."""
    mine = items[rank::world_size]
    model.eval()
    half = device.startswith("cuda")
    if decode not in ("auto", "processes", "threads"):
        raise ValueError(f"decode: {decode!r} is not one of auto, processes, threads")
    if decode == "auto":
        decode = "processes" if half else "threads"
    per_image, per_batch, target = split_transform(transform)
    draft = int(round(draft_factor * target)) if (draft_factor and target) else None
    chunk = forward_chunk or (batch_size if half else cpu_forward_chunk(model))
    ds = _ItemDataset(mine, per_image, max_pixels, draft)

    @torch.inference_mode()
    def work(collated):
        idx, batch, info, bad = collated
        if batch is None:
            return idx, None, info, bad
        batch = per_batch(batch.to(device, non_blocking=True))
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            f = torch.cat([model.encode_image(batch[a:a + chunk]) for a in range(0, len(batch), chunk)])
        return idx, F.normalize(f.float(), dim=-1).cpu().numpy(), info, bad

    if decode == "threads" and workers > 0:
        done_batches: Iterable = _batches_on_threads(ds, batch_size, max(2, usable_cpus()), work)
    else:
        loader = DataLoader(
            ds, batch_size=batch_size, num_workers=workers,
            collate_fn=_collate, pin_memory=half, prefetch_factor=4 if workers > 0 else None,
            # spawn, not fork: this runs inside orchestrator processes full of threads (Prefect's
            # event loop, MLflow clients), where forked decode workers die at start
            multiprocessing_context="spawn" if workers > 0 else None,
        )
        done_batches = (work(c) for c in loader)
    vecs, rows, where = [], [], []
    failures: Counter = Counter()
    done = 0
    for idx, v, info, bad in done_batches:
        for _, reason in bad:
            failures[reason] += 1
        if v is not None:
            vecs.append(v)
            for j, (sha, w, h) in zip(idx, info):
                it = mine[j]
                where.append(rank + j * world_size)
                rows.append({"uri": it.uri, "source": it.source, "sha256": sha, "width": int(w), "height": int(h),
                             "media_type": it.media_type, "video_ts": it.video_ts, **it.extra})
        done += len(idx) + len(bad)
        if progress is not None:
            progress(done, len(mine))
    dim = int(model.visual.output_dim) if hasattr(model.visual, "output_dim") else 0
    v = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
    return Embedded(v, rows, failures, np.asarray(where, np.int64))


def write_parts(emb: Embedded, out_dir: str, rank: int, storage) -> tuple[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cerebro_core.storage import join

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(emb.vectors, np.float32), allow_pickle=False)
    v_url, m_url = join(out_dir, f"emb-{rank:05d}.npy"), join(out_dir, f"meta-{rank:05d}.parquet")
    storage.write_bytes(v_url, buf.getvalue())
    rows = [{"item": int(i), **r} for i, r in zip(emb.index, emb.rows)]
    mbuf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({"item": pa.array([], pa.int64())}), mbuf)
    storage.write_bytes(m_url, mbuf.getvalue())
    return v_url, m_url


def read_parts(out_dir: str, parts: int, storage) -> Embedded:
    """The parts of ranks 0..parts-1 merged into item order (failures are not in the parts)."""
    import pyarrow.parquet as pq

    from cerebro_core.storage import join

    vecs, rows, where = [], [], []
    for r in range(parts):
        vecs.append(np.load(io.BytesIO(storage.read_bytes(join(out_dir, f"emb-{r:05d}.npy"))), allow_pickle=False))
        part = pq.read_table(io.BytesIO(storage.read_bytes(join(out_dir, f"meta-{r:05d}.parquet")))).to_pylist()
        where += [row.pop("item") for row in part]
        rows += part
    order = np.argsort(np.asarray(where, np.int64), kind="stable")
    v = np.concatenate(vecs)[order] if vecs else np.zeros((0, 0), np.float32)
    return Embedded(v, [rows[i] for i in order], Counter(), np.asarray(where, np.int64)[order])


def default_workers() -> int:
    return max(0, min(8, usable_cpus() - 1))
