"""The download stage's result: a set of webdataset shards with sizes, stats and a manifest.

What pretrain (and adapt's scratch students) read; a stage reads it from here, never from the
download engine.
"""

from __future__ import annotations

from pydantic import BaseModel

from cerebro_core.config import DownloadConfig
from cerebro_core.storage import Storage, join

MANIFEST = "manifest.json"
SIZES = "sizes.json"
STATS = "stats.json"


class DownloadStats(BaseModel):
    total_rows: int
    attempted: int
    successes: int
    failures: int
    dropped_empty_caption: int
    success_rate: float
    failures_by_reason: dict[str, int]
    failure_messages: dict[str, int]
    bytes_written: int
    new_successes: int
    wall_s: float
    images_per_s: float
    shards: int


class ShardSet(BaseModel):
    """The download stage's result: what the trainer reads."""

    output: str
    shards: list[str]
    sizes: dict[str, int]
    num_samples: int
    manifest_url: str
    sizes_url: str
    stats_url: str
    manifest_hash: str
    input_hash: str
    stats: DownloadStats


def load_manifest(storage: Storage, output_or_manifest: str) -> ShardSet:
    url = output_or_manifest if output_or_manifest.endswith(".json") else join(output_or_manifest, MANIFEST)
    if not storage.exists(url):
        raise FileNotFoundError(f"no finished download at {output_or_manifest} (missing {MANIFEST})")
    return ShardSet.model_validate(storage.read_json(url))


def default_output(cfg_download: DownloadConfig, storage_root: str, name: str) -> str:
    return cfg_download.output or join(storage_root, name, "shards")
