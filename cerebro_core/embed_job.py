"""Embedding in the cluster shape of ``compute.*``: what index, reindex and adapt's labelling call.

One process (world size 1) embeds in the caller's process. Otherwise the items go to storage and
a torchrun job runs one process per device on every node (fp16 on CUDA, decode workers ahead of
the model; one thread per core on CPU): rank r embeds items r, r+W, r+2W, … with
:func:`cerebro_core.embed.embed_items`, writes its part to ``work_dir``, and node 0's caller
merges the parts in item order — the same ids and order as one process. Nodes other than 0
compute their share and get None.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel

from cerebro_core.config import ComputeConfig, StorageConfig
from cerebro_core.distributed import Dist, resolve_device, run_job, worker_main, world_size
from cerebro_core.embed import Embedded, Item, default_workers, embed_items, read_parts, write_parts
from cerebro_core.storage import Storage, join

WORKER = "cerebro_core.embed_job"
_ITEM_FIELDS = ("uri", "source", "media_type", "video_ts", "sha256")


class EmbedJob(BaseModel):
    model_name: str
    weights: str  # a model.pt (published) or a training checkpoint, local path or storage URL
    items_url: str  # JSON list of items (uri, source, media_type, video_ts, sha256): no labels
    out_dir: str
    storage: StorageConfig
    batch_size: int = 256
    result_path: Optional[str] = None


def embedding_dir(storage_root: str, name: str, what: str, model_ref: str, items: list[Item]) -> str:
    """Where an embedding job's parts go: the same on every node for the same work."""
    blob = json.dumps([what, model_ref, [(it.uri, it.media_type, it.video_ts) for it in items]]).encode()
    return join(storage_root, name, "embeddings", f"{what}-{hashlib.sha256(blob).hexdigest()[:16]}")


def load_model(model_name: str, weights: str, storage: Storage, device: str):
    from cerebro_core.model import checkpoint as ckpt
    from cerebro_core.model.factory import create

    bundle = create(model_name)
    ckpt.load_model_weights(bundle.model, ckpt.load(storage, weights))
    bundle.model.to(device).eval()
    bundle.weights = weights
    return bundle


def embed(
    compute: ComputeConfig,
    storage_cfg: StorageConfig,
    model_name: str,
    weights: str,
    items: list[Item],
    work_dir: str,
    batch_size: int = 256,
    log: Callable[[str], None] = print,
    progress: Optional[Callable[[int, int], None]] = None,
    bundle=None,
) -> Optional[Embedded]:
    """Embed ``items`` with the model ``weights`` (``bundle``: that model already loaded, used when
    the job runs in this process). Rows carry each item's ``extra`` columns."""
    storage = Storage(storage_cfg)
    if world_size(compute) == 1:
        device = resolve_device(compute)
        if bundle is None:
            bundle = load_model(model_name, weights, storage, device)
        else:
            bundle.model.to(device)
        emb = embed_items(bundle.model, bundle.preprocess_val, items, batch_size=batch_size,
                          workers=default_workers(), device=device, progress=progress)
        if device != "cpu":
            bundle.model.to("cpu")
        return emb
    items_url = join(work_dir, "items.json")
    storage.write_text(items_url, json.dumps([{k: getattr(it, k) for k in _ITEM_FIELDS} for it in items]))
    job = EmbedJob(model_name=model_name, weights=weights, items_url=items_url, out_dir=join(work_dir, "parts"),
                   storage=storage_cfg, batch_size=batch_size)
    result = run_job(WORKER, job, compute, log=log, what="embedding")
    if compute.node_rank != 0:
        return None
    emb = read_parts(job.out_dir, result["parts"], storage)
    storage.rm(work_dir, recursive=True)  # every rank finished before torchrun exited: the parts are merged
    emb.failures = Counter(result["failures"])
    for row, i in zip(emb.rows, emb.index):
        row.update(items[int(i)].extra)
    if progress is not None:
        progress(len(items), len(items))
    return emb


def _run(job_path: str) -> None:
    job = EmbedJob.model_validate_json(Path(job_path).read_text())
    d = Dist()
    storage = Storage(job.storage)
    bundle = load_model(job.model_name, job.weights, storage, d.device)
    items = [Item(**row) for row in json.loads(storage.read_text(job.items_url))]
    # on CUDA: spawned decode workers feed the device; on CPU: one thread per core of this process
    emb = embed_items(bundle.model, bundle.preprocess_val, items, batch_size=job.batch_size,
                      workers=default_workers(), device=d.device, rank=d.rank, world_size=d.world_size)
    write_parts(emb, job.out_dir, d.rank, storage)
    failures = Counter()
    for part in d.gather(dict(emb.failures)):
        failures.update(part)
    if d.is_main:
        print(f"embedding: {len(items)} items on {d.world_size} processes, {len(emb.rows)} on rank 0", flush=True)
    d.barrier()  # every part is in storage before any node's caller reads them
    d.finish({"parts": d.world_size, "failures": dict(failures)}, job.result_path)


if __name__ == "__main__":
    worker_main(_run)
