"""The download's writer side: which img2dataset shards finished, their per-sample status, and
failure reasons classified from img2dataset's error messages."""

from __future__ import annotations

import re
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cerebro_core.storage import Storage, join

SHARD_DIGITS = 5  # img2dataset's oom_shard_count
INPUT_DIR = "_input"

_REASON_PATTERNS = [
    (re.compile(r"HTTP Error (\d{3})"), lambda m: f"http_{m.group(1)}"),
    (re.compile(r"Connection refused|Errno 111", re.I), "connection_refused"),
    (re.compile(r"timed out|timeout", re.I), "timeout"),
    (re.compile(r"unknown url type|no host given|Invalid URL|URL can't contain|nonnumeric port", re.I), "invalid_url"),
    (re.compile(r"Errno 2\]|No such file", re.I), "not_found"),
    (re.compile(r"Name or service not known|getaddrinfo|Errno -[23]\]", re.I), "dns_error"),
    (re.compile(r"Connection reset|RemoteDisconnected|IncompleteRead", re.I), "connection_error"),
    (re.compile(r"X-Robots-Tag", re.I), "disallowed_by_robots"),
    (re.compile(r"Image decoding error", re.I), "not_an_image"),
    (re.compile(r"image too small|image area too large|aspect ratio too large"), "size_filter"),
]


def classify_error(message: Optional[str]) -> str:
    if not message:
        return "unknown"
    from cerebro_core.data.images import REASONS

    if message in REASONS:
        return message
    for pattern, kind in _REASON_PATTERNS:
        m = pattern.search(message)
        if m:
            return kind(m) if callable(kind) else kind
    return "other"


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}"


def done_shard_ids(storage: Storage, output: str) -> list[int]:
    ids = []
    for p in storage.glob(join(output, "*_stats.json")):
        stem = p.rsplit("/", 1)[-1].split("_", 1)[0]
        if stem.isdigit():
            ids.append(int(stem))
    return sorted(ids)


def remove_orphans(storage: Storage, output: str) -> int:
    """Delete .tar/.parquet files of shards that never finished (no _stats.json)."""
    done = {shard_name(i) for i in done_shard_ids(storage, output)}
    removed = 0
    for pattern in ("*.tar", "*.parquet"):
        for p in storage.glob(join(output, pattern)):
            stem = p.rsplit("/", 1)[-1].split(".", 1)[0]
            if stem.isdigit() and stem not in done:
                storage.rm(p)
                removed += 1
    return removed


def read_shard_status(storage: Storage, output: str, shard_id: int) -> pa.Table:
    url = join(output, shard_name(shard_id) + ".parquet")
    with storage.open(url, "rb") as f:
        return pq.read_table(f, columns=["cerebro_id", "status", "error_message", "sha256"])


def collect(storage: Storage, output: str) -> tuple[dict, dict[str, str]]:
    """Final status per cerebro_id across all finished shards (later shards win)."""
    final: dict[int, tuple[str, Optional[str], int]] = {}
    sizes: dict[str, int] = {}
    hashes: dict[str, str] = {}
    for sid in done_shard_ids(storage, output):
        t = read_shard_status(storage, output, sid).to_pydict()
        name = shard_name(sid) + ".tar"
        n_ok = 0
        for cid, status, err, sha in zip(t["cerebro_id"], t["status"], t["error_message"], t["sha256"]):
            prev = final.get(cid)
            if status == "success":
                n_ok += 1
                final[cid] = ("success", None, sid)
                hashes[f"{name}/{cid}"] = sha or ""
            elif prev is None or prev[0] != "success":
                final[cid] = (status or "failed", err, sid)
        sizes[name] = n_ok
    return {"final": final, "sizes": sizes}, hashes


