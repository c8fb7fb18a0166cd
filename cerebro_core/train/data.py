"""Training data: webdataset shards (local or any fsspec URL) → batches of (images, tokens).

Built from webdataset's own stages (``tar_file_expander``, ``group_by_keys``, ``_shuffle``,
``warn_and_continue``) with one addition none of them has: an exactly reproducible position.

- Each (rank, dataloader worker) pair is a *slot*. Shards are shuffled per epoch with a seed and
  dealt to slots (split by node, then by worker); with fewer shards than slots, slots share.
- Every slot yields a fixed number of batches per epoch (the DataLoader interleaves workers round
  robin), cycling through its shards if needed ("virtual epochs", as open_clip's resampled mode).
- Resume: a slot skips the samples it had already produced *before decoding them*, so
  continuing from step N of an epoch reads the same samples, in the same order, with the same
  augmentation (seeded per batch), as the uninterrupted run.
- Bad data never stops an epoch: a missing or unreadable shard, a sample without image or text,
  a corrupt image are skipped and counted; each batch carries the count since the last batch.
- A mix (``mix_shards``, ``mix_fraction``): every batch takes an exact, deterministic share of its
  samples from a second set of shards (adapt's pseudo-captioned images), whatever the two sets'
  sizes: batch b of a slot holds round((b+1)·f·B) − round(b·f·B) of them. Each set is its own
  cycling, shuffled stream per slot, so resume skips a known count in each.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.handlers import warn_and_continue
from webdataset.tariterators import group_by_keys, tar_file_expander

from cerebro_core.config import StorageConfig
from cerebro_core.data import images
from cerebro_core.storage import Storage

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


class ShardLossError(RuntimeError):
    """More of the data was lost (shards unreadable after their retries) than the run allows."""


@dataclass
class ReadPolicy:
    """How shard reads fail: a read error is retried ``retries`` times with exponential backoff
    from ``backoff_s`` (capped at 30 s); a shard still unreadable is
    skipped and counted as lost. Past ``max_lost_share`` of the shards a reader has tried (each
    holding about as many samples: the download stage writes them full; judged once it has tried
    at least ``1 / max_lost_share`` of them), the run fails."""

    retries: int = 4
    backoff_s: float = 1.0
    max_lost_share: float = 0.05
    tried: int = 0
    lost: int = 0


def _read(url: str, storage: Storage, policy: ReadPolicy) -> bytes:
    for attempt in range(policy.retries + 1):
        try:
            with storage.open(url, "rb") as f:
                return f.read()
        except Exception as exc:  # not found too: fsspec's HTTP reports a failed HEAD as not found
            if attempt == policy.retries:
                raise
            wait = min(30.0, policy.backoff_s * 2 ** attempt)
            log.warning("reading shard %s failed (%s); retry %d/%d in %.1f s", url, exc, attempt + 1,
                        policy.retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def open_shards(urls: list[str], storage: Storage, counter: dict,
                policy: Optional[ReadPolicy] = None) -> Iterator[dict]:
    policy = policy or ReadPolicy()
    for url in urls:
        policy.tried += 1
        try:
            data = _read(url, storage, policy)
        except Exception as exc:  # missing / unreadable after its retries: skip it, count it
            counter["bad_shards"] = counter.get("bad_shards", 0) + 1
            policy.lost += 1
            log.warning("skipping shard %s: %s", url, exc)
            # judged once enough shards were tried for the share to mean something (1 / share)
            if policy.tried * policy.max_lost_share >= 1 and policy.lost > policy.max_lost_share * policy.tried:
                raise ShardLossError(
                    f"lost {policy.lost} of the {policy.tried} shards read so far (more than "
                    f"train.max_lost_share={policy.max_lost_share:g}), each after {policy.retries} retries; "
                    f"last: {url}: {exc}") from None
            continue
        yield {"url": url, "stream": io.BytesIO(data)}


def raw_samples(urls: list[str], storage: Storage, counter: dict,
                policy: Optional[ReadPolicy] = None) -> Iterator[dict]:
    files = tar_file_expander(open_shards(urls, storage, counter, policy), handler=warn_and_continue)
    yield from group_by_keys(files, handler=warn_and_continue)


@dataclass
class PipelineSpec:
    shards: list[str]
    batch_size: int
    batches_per_epoch: int  # per rank
    epoch: int  # the first epoch this loader serves
    seed: int
    epochs: int = 1  # consecutive epochs served by one loader (workers persist across them)
    rank: int = 0
    world_size: int = 1
    start_batch: int = 0  # batches of this epoch already consumed (per rank), for resume
    shuffle_buffer: int = 1000
    caption_key: str = "txt"
    return_keys: bool = False  # yield sample keys too (tests and debugging)
    mix_shards: list[str] = field(default_factory=list)  # a second set of shards mixed into every batch
    mix_fraction: float = 0.0  # the exact share of every batch taken from ``mix_shards``
    storage: StorageConfig = field(default_factory=StorageConfig)
    read_retries: int = 4  # ReadPolicy
    read_backoff_s: float = 1.0
    max_lost_share: float = 0.05


class ShardBatches(IterableDataset):
    """Yields ``(images, tokens, n_skipped, keys | None)``; see the
    module docstring."""

    def __init__(self, spec: PipelineSpec, transform: Callable, tokenizer: Callable, num_workers: int):
        super().__init__()
        self.spec, self.transform, self.tokenizer = spec, transform, tokenizer
        self.num_workers = max(1, num_workers)

    def _cycle(self, shards: list[str], rng: random.Random, counter: dict) -> Iterator[dict]:
        storage = Storage(self.spec.storage)
        policy = ReadPolicy(self.spec.read_retries, self.spec.read_backoff_s, self.spec.max_lost_share)
        while True:
            got = 0
            order = list(shards)
            rng.shuffle(order)
            for sample in raw_samples(order, storage, counter, policy):
                got += 1
                yield sample
            if got == 0:
                raise RuntimeError(f"no readable samples in shards {shards[:3]}... (all missing, empty or corrupt)")

    def __iter__(self):
        s = self.spec
        info = get_worker_info()
        phys = info.id if info is not None else 0
        W = self.num_workers
        # One loader serves ``s.epochs`` consecutive epochs (workers persist across epoch ends and
        # keep prefetching through evaluation). The DataLoader deals batches round robin over
        # its workers; batch b of an epoch was produced by logical worker b % W in an
        # uninterrupted run, so each physical worker takes the logical role that continues that
        # order given how many batches the stream has already yielded (this also covers a loader
        # started mid-epoch on resume).
        emitted = -s.start_batch  # stream position of the current epoch's batch 0
        start = s.start_batch
        for epoch in range(s.epoch, s.epoch + s.epochs):
            lw = (phys - emitted) % W
            yield from self._epoch(epoch, lw, start)
            emitted += s.batches_per_epoch
            start = 0

    def mixed(self, b: int) -> int:
        """How many of batch ``b`` (a slot's own batch index) come from ``mix_shards``: exact in
        aggregate (the first n batches hold round(n·f·B) of them)."""
        s = self.spec
        if not s.mix_shards or s.mix_fraction <= 0:
            return 0
        fb = s.mix_fraction * s.batch_size
        return int(math.floor((b + 1) * fb + 0.5) - math.floor(b * fb + 0.5))

    def _stream(self, shards: list[str], epoch: int, slot: int, n_slots: int, tag: str, counter: dict):
        s = self.spec
        rng = random.Random(_seed(s.seed, epoch, slot) if not tag else _seed(s.seed, epoch, slot, tag))
        order = list(shards)
        random.Random(_seed(s.seed, epoch, "shards", tag) if tag else _seed(s.seed, epoch, "shards")).shuffle(order)
        mine = order[slot::n_slots] if len(order) >= n_slots else [order[slot % len(order)]]
        stream = self._cycle(mine, rng, counter)
        return _shuffle(stream, bufsize=s.shuffle_buffer, initial=min(100, s.shuffle_buffer), rng=rng)

    def _valid(self, stream, to_skip: int, bad: list[int]):
        """(image, text, key) of the stream's valid samples, after skipping ``to_skip`` of them
        undecoded (resume); invalid ones are counted in ``bad[0]``."""
        s = self.spec
        for sample in stream:
            img_bytes = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            txt = sample.get(s.caption_key)
            if img_bytes is None or txt is None:
                bad[0] += 1
                continue
            try:
                text = txt.decode("utf-8").strip() if isinstance(txt, bytes) else str(txt).strip()
            except UnicodeDecodeError:
                bad[0] += 1
                continue
            if not text:
                bad[0] += 1
                continue
            if to_skip > 0:  # bad samples were skipped then too: count only valid ones
                if images.check(img_bytes) is None:
                    to_skip -= 1
                continue
            try:
                img = images.decode(img_bytes)
            except images.ImageRejected:
                bad[0] += 1
                continue
            yield img, text, f"{sample['__url__']}#{sample['__key__']}"

    def _epoch(self, epoch: int, lw: int, start_batch: int):
        s = self.spec
        W = self.num_workers
        slot, n_slots = s.rank * W + lw, s.world_size * W
        total = s.batches_per_epoch // W + (1 if lw < s.batches_per_epoch % W else 0)
        done = (start_batch - lw + W - 1) // W if start_batch > lw else 0
        if total - done <= 0:
            return
        counters: tuple[dict, dict] = ({}, {})
        bad = [0]
        # Skip, undecoded, what this slot already produced before the checkpoint.
        n_mixed = sum(self.mixed(b) for b in range(done))
        main = self._valid(self._stream(s.shards, epoch, slot, n_slots, "", counters[0]),
                           done * s.batch_size - n_mixed, bad)
        mix = (self._valid(self._stream(s.mix_shards, epoch, slot, n_slots, "mix", counters[1]), n_mixed, bad)
               if s.mix_shards and s.mix_fraction > 0 else None)
        for batch_idx in range(done, total):
            imgs, texts, keys = [], [], []
            m = self.mixed(batch_idx)
            for src, n in ((main, s.batch_size - m), (mix, m)):
                for _ in range(n):
                    img, text, key = next(src)
                    if not imgs:
                        torch.manual_seed(_seed(s.seed, epoch, slot, batch_idx) % (2**63))
                    imgs.append(self.transform(img))
                    texts.append(text)
                    keys.append(key)
            skipped = bad[0] + sum(c.pop("bad_shards", 0) for c in counters)
            bad[0] = 0
            yield (torch.stack(imgs), self.tokenizer(texts), skipped, keys if s.return_keys else None)


class DeviceNormalize:
    """The float conversion and ``Normalize`` of a transform, applied to a uint8 batch on the device
    (see :func:`uint8_transform`)."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        m, s = self.mean.to(x.device), self.std.to(x.device)
        return (x.float().div_(255) - m) / s  # ToTensor's /255, then Normalize's (x - mean) / std


def uint8_transform(preprocess) -> tuple[Callable, Optional[DeviceNormalize]]:
    """``preprocess`` ending in ToTensor + Normalize (open_clip's training transform) split in two:
    the loader's part up to a uint8 tensor, and the normalisation the trainer applies on the device.
    A batch crosses the loader's shared memory at a quarter of its fp32 size (480 ViT-B-32 images:
    69 MiB, not 276 MiB; 4 prefetched x 8 workers per rank: 2.2 GiB, not 8.6). Any other shape of
    transform (timm's, with random erasing after Normalize) is returned as it is, with None."""
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    if (len(steps) < 2 or not isinstance(steps[-1], T.Normalize)
            or type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor")):
        return preprocess, None
    return T.Compose(steps[:-2] + [T.PILToTensor()]), DeviceNormalize(steps[-1].mean, steps[-1].std)


def make_loader(spec: PipelineSpec, transform, tokenizer, num_workers: int) -> DataLoader:
    ds = ShardBatches(spec, transform, tokenizer, num_workers)
    return DataLoader(
        ds,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )


def iter_pairs(
    shards: list[str], storage: Storage, max_samples: Optional[int] = None, caption_key: str = "txt"
) -> Iterator[tuple[str, bytes, str]]:
    """Sequential (key, image bytes, caption) of valid samples, for evaluation."""
    n = 0
    counter: dict = {}
    for sample in raw_samples(shards, storage, counter):
        img = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        txt = sample.get(caption_key)
        if img is None or txt is None:
            continue
        text = txt.decode("utf-8", "replace").strip()
        if not text:
            continue
        yield sample["__key__"], img, text
        n += 1
        if max_samples is not None and n >= max_samples:
            return


def split_shards(shards, val_fraction: float) -> tuple[list[str], list[str], int]:
    urls = list(shards.shards)
    n_val = 0
    if val_fraction > 0 and len(urls) >= 2:
        n_val = max(1, round(val_fraction * len(urls)))
        n_val = min(n_val, len(urls) - 1)
    train, val = urls[: len(urls) - n_val], urls[len(urls) - n_val :]
    n_train = sum(shards.sizes[u.rsplit("/", 1)[-1]] for u in train)
    return train, val, n_train
