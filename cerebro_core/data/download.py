"""Stage 1, download: an image-text URL list → webdataset shards, through img2dataset itself.

reader (normalise the URL list)  →  img2dataset (subprocess, its own venv)  →  writer (manifest)

- Inputs: the raw CC3M TSV as published (``caption<TAB>url``, no header), csv/tsv/parquet with
  named columns, an iNaturalist-style CSV with an ``image_url`` column, or a plain .txt of URLs.
  The list is normalised once into ``<output>/_input/urls.parquet`` (url, caption, cerebro_id =
  row number in the original list) so img2dataset's shard assignment is deterministic and resume
  is exact.
- Output (local folder or ``s3://``): img2dataset's ``NNNNN.tar`` (jpg/txt/json per sample),
  ``NNNNN.parquet`` and ``NNNNN_stats.json``, then our ``stats.json``, ``sizes.json`` (open_clip's
  format) and ``manifest.json`` — written last, so a manifest exists only for a finished download.
- Resume: img2dataset's incremental mode skips shards that have their ``_stats.json``; a shard
  cut off mid-way has none and is redone whole (overwritten), so no sample is written twice.
- ``retry_failed``: rows whose final status is a failure are downloaded again into new shards
  (img2dataset's ``extend`` mode); their earlier failure rows stay in the old shards' parquet
  but are superseded by ``cerebro_id``.
- Empty captions: when the list has a caption column, rows with an empty caption are dropped by
  default (``download.empty_captions: drop``; counted as ``empty_caption``) since an empty caption
  carries no training signal; ``keep`` writes them with an empty ``.txt``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cerebro_core import quiet
from cerebro_core.config import DownloadConfig
from cerebro_core.data.download_status import (INPUT_DIR, SHARD_DIGITS, classify_error, collect, done_shard_ids,
                                               remove_orphans)
from cerebro_core.data.img2dataset_env import img2dataset_python
from cerebro_core.data.url_list import DownloadInputError, read_url_list, table_hash
from cerebro_core.data.shardset import MANIFEST, SIZES, STATS, DownloadStats, ShardSet, default_output
from cerebro_core.procs import run_supervised
from cerebro_core.storage import Storage, is_remote, join


ProgressFn = Callable[[int, int], None]
_TQDM_LINE = re.compile(r"^\d+it \[")  # img2dataset's own shard counter; we report progress ourselves


# --------------------------------------------------------------------------- img2dataset


def _subprocess_env(storage: Storage, output: str) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds cerebro_core/
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its update check would reach for the network
    opts = storage.options(output)
    if opts.get("key"):
        env["AWS_ACCESS_KEY_ID"] = opts["key"]
    if opts.get("secret"):
        env["AWS_SECRET_ACCESS_KEY"] = opts["secret"]
    ck = opts.get("client_kwargs", {})
    if ck.get("endpoint_url"):
        env["AWS_ENDPOINT_URL"] = ck["endpoint_url"]
        env["FSSPEC_S3_ENDPOINT_URL"] = ck["endpoint_url"]
    if ck.get("region_name"):
        env["AWS_DEFAULT_REGION"] = ck["region_name"]
    if opts.get("anon"):
        env["FSSPEC_S3_ANON"] = "true"
    return env


def _count_done(storage: Storage, output: str) -> int:
    try:
        return len(storage.glob(join(output, "*_stats.json")))
    except Exception:
        return 0


def run_img2dataset(
    cfg: DownloadConfig,
    storage: Storage,
    input_url: str,
    output: str,
    has_caption: bool,
    mode: str,
    expected_shards: int,
    progress: Optional[ProgressFn] = None,
    log: Callable[[str], None] = print,
) -> float:
    """Run img2dataset on ``input_url`` (normalised parquet) into ``output``; returns wall seconds."""
    spec = {
        "url_list": input_url,
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "caption" if has_caption else None,
        "save_additional_columns": ["cerebro_id"],
        "output_folder": output,
        "output_format": "webdataset",
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "resize_only_if_bigger": cfg.resize_only_if_bigger,
        "encode_format": cfg.encode_format,
        "encode_quality": cfg.encode_quality,
        "processes_count": cfg.processes,
        "thread_count": cfg.threads,
        "number_sample_per_shard": cfg.samples_per_shard,
        "timeout": cfg.timeout,
        "retries": cfg.retries,
        "incremental_mode": mode,
        "oom_shard_count": SHARD_DIGITS,
        "compute_hash": "sha256",
        "enable_wandb": False,
        "extract_exif": cfg.extract_exif,
        "disallowed_header_directives": list(cfg.disallowed_header_directives),
        "distributor": "multiprocessing",
        "_cerebro": {"max_image_pixels": cfg.max_image_pixels},
    }
    runner = Path(__file__).with_name("img2dataset_runner.py")
    with tempfile.TemporaryDirectory(prefix="cerebro-i2d-") as td:
        spec_path = Path(td, "spec.json")
        spec_path.write_text(json.dumps(spec))
        cmd = [img2dataset_python(), str(runner), str(spec_path)]
        t0 = time.perf_counter()

        def tick() -> None:
            if progress is not None:
                progress(min(_count_done(storage, output), expected_shards), expected_shards)

        def line(text: str) -> None:  # img2dataset's own log: shown with --verbose, in the error when it fails
            if text and not _TQDM_LINE.match(text) and quiet.verbose():
                log(text)

        # in our process group (a kill of the group reaches img2dataset's workers), dies with us;
        # cancelled or timed out: img2dataset's whole tree is killed
        rc, tail = run_supervised(cmd, _subprocess_env(storage, output), line, tail_lines=200,
                                  keep=lambda text: bool(text) and not _TQDM_LINE.match(text), tick=tick,
                                  own_session=False)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(
                f"img2dataset exited with status {rc}:\n" + "\n".join(tail[-30:])
            )
        if progress is not None:
            progress(min(_count_done(storage, output), expected_shards), expected_shards)
        return wall


def download(
    cfg: DownloadConfig,
    storage: Storage,
    output: str,
    progress: Optional[ProgressFn] = None,
    log: Callable[[str], None] = print,
    url_list: Optional[tuple] = None,
) -> ShardSet:
    """Run the download stage end to end and return the shard set (see module docstring).
    ``url_list``: the list as :func:`read_url_list` returned it, when the caller has read it."""
    table, meta = url_list or read_url_list(cfg, storage)  # fails before any worker starts
    img2dataset_python()  # ... and so does a missing img2dataset environment
    input_hash = table_hash(table)
    storage.makedirs(output)

    # A (re)run invalidates the previous manifest until it completes; the manifest is the commit marker.
    for name in (MANIFEST, SIZES, STATS):
        storage.rm(join(output, name))
    if storage.exists(join(output, "_tmp")):
        storage.rm(join(output, "_tmp"), recursive=True)

    input_url = join(output, INPUT_DIR, "urls.parquet")
    marker_url = join(output, INPUT_DIR, "urls.hash")
    if storage.exists(input_url) and storage.exists(marker_url):
        if storage.read_text(marker_url).strip() != input_hash:
            raise DownloadInputError(
                f"download.output: {output} holds a download of a different URL list; "
                "choose another output folder (or delete it) to start over"
            )
    else:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(input_url, buf.getvalue())
        storage.write_text(marker_url, input_hash)

    expected = math.ceil(table.num_rows / cfg.samples_per_shard)
    remove_orphans(storage, output)
    done_before = done_shard_ids(storage, output)
    before_ok = sum(1 for v in collect(storage, output)[0]["final"].values() if v[0] == "success") if done_before else 0

    wall = 0.0
    if len([i for i in done_before if i < expected]) < expected:
        log(f"download: {expected} shards of {cfg.samples_per_shard}, {len(done_before)} already done")
        wall += run_img2dataset(
            cfg, storage, input_url, output, meta["has_caption"], "incremental", expected, progress, log
        )
    missing = sorted(set(range(expected)) - set(done_shard_ids(storage, output)))
    if missing:
        raise RuntimeError(f"img2dataset finished but shards {missing[:10]} have no stats; rerun to resume")

    if cfg.retry_failed:
        state, _ = collect(storage, output)
        failed_ids = sorted(cid for cid, v in state["final"].items() if v[0] != "success")
        if failed_ids:
            retry = table.filter(pc.is_in(table.column("cerebro_id"), pa.array(failed_ids, pa.int64())))
            n_retry = len(done_shard_ids(storage, output))
            retry_url = join(output, INPUT_DIR, f"retry-{n_retry:05d}.parquet")
            buf = io.BytesIO()
            pq.write_table(retry, buf)
            storage.write_bytes(retry_url, buf.getvalue())
            log(f"download: retrying {len(failed_ids)} failed rows")
            remove_orphans(storage, output)
            wall += run_img2dataset(
                cfg,
                storage,
                retry_url,
                output,
                meta["has_caption"],
                "extend",
                math.ceil(len(failed_ids) / cfg.samples_per_shard),
                None,
                log,
            )
            remove_orphans(storage, output)

    state, hashes = collect(storage, output)
    final = state["final"]
    sizes = state["sizes"]
    reasons: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for status, err, _sid in final.values():
        if status != "success":
            reasons[classify_error(err)] += 1
            messages[(err or status)[:200]] += 1
    if meta["dropped_empty_caption"]:
        reasons["empty_caption"] += meta["dropped_empty_caption"]
    successes = sum(1 for v in final.values() if v[0] == "success")
    bytes_written = 0
    shards = []
    for name in sorted(sizes):
        url = join(output, name)
        shards.append(url)
        bytes_written += storage.size(url)
    new_ok = max(0, successes - before_ok)
    stats = DownloadStats(
        total_rows=meta["rows"],
        attempted=len(final),
        successes=successes,
        failures=meta["rows"] - successes,
        dropped_empty_caption=meta["dropped_empty_caption"],
        success_rate=successes / meta["rows"],
        failures_by_reason=dict(sorted(reasons.items())),
        failure_messages=dict(messages.most_common(50)),
        bytes_written=bytes_written,
        new_successes=new_ok,
        wall_s=round(wall, 3),
        images_per_s=(new_ok / wall) if wall > 0 else 0.0,
        shards=len(shards),
    )
    manifest_hash = hashlib.sha256(
        json.dumps({"sizes": sizes, "samples": sorted(hashes.items())}, sort_keys=True).encode()
    ).hexdigest()[:16]
    stats_url, sizes_url, manifest_url = join(output, STATS), join(output, SIZES), join(output, MANIFEST)
    storage.write_json(stats_url, stats.model_dump())
    storage.write_json(sizes_url, sizes)
    result = ShardSet(
        output=output,
        shards=shards,
        sizes=sizes,
        num_samples=sum(sizes.values()),
        manifest_url=manifest_url,
        sizes_url=sizes_url,
        stats_url=stats_url,
        manifest_hash=manifest_hash,
        input_hash=input_hash,
        stats=stats,
    )
    storage.write_json(manifest_url, result.model_dump())
    if not is_remote(output) and storage.exists(join(output, "_tmp")):
        storage.rm(join(output, "_tmp"), recursive=True)
    return result


def run_stage(cfg, progress: Optional[ProgressFn] = None, log: Callable[[str], None] = print) -> ShardSet:
    """The download stage with its MLflow run (tagged stage=download): params, stats metrics and
    the merged stats JSON as an artifact."""
    from cerebro_core import tracking
    from cerebro_core.home import resolve

    storage = Storage(cfg.storage)
    output = default_output(cfg.download, resolve(cfg).storage_root, cfg.name)
    # Read and checked once, before an MLflow run is opened: a bad list leaves no empty run behind
    url_list = read_url_list(cfg.download, storage)
    with tracking.stage_run(cfg, "download", tags={"download.output": output}) as run:
        result = download(cfg.download, storage, output, progress=progress, log=log, url_list=url_list)
        s = result.stats
        tracking.log_metrics(
            {
                "total_rows": s.total_rows,
                "successes": s.successes,
                "failures": s.failures,
                "success_rate": s.success_rate,
                "images_per_s": s.images_per_s,
                "bytes_written": s.bytes_written,
                "shards": s.shards,
                "wall_s": s.wall_s,
                **{f"failures.{k}": v for k, v in s.failures_by_reason.items()},
            }
        )
        tracking.log_json_artifact(s.model_dump(), "download_stats.json")
        tracking.log_json_artifact(result.model_dump(), "manifest.json")
        tracking.set_tags({"manifest_hash": result.manifest_hash, "mlflow_run_id": run.info.run_id})
    return result
