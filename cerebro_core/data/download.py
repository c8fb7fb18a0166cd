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
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cerebro_core.config import DownloadConfig
from cerebro_core.data.img2dataset_env import img2dataset_python
from cerebro_core.data.shardset import MANIFEST, SIZES, STATS, DownloadStats, ShardSet, default_output
from cerebro_core.procs import run_supervised
from cerebro_core.storage import Storage, is_remote, join

SHARD_DIGITS = 5  # img2dataset's oom_shard_count
INPUT_DIR = "_input"

ProgressFn = Callable[[int, int], None]
_TQDM_LINE = re.compile(r"^\d+it \[")  # img2dataset's own shard counter; we report progress ourselves


class DownloadInputError(ValueError):
    """The URL list is unusable; raised before any download worker starts."""


# --------------------------------------------------------------------------- reader


def _detect_format(cfg: DownloadConfig, url: str, first_line: str) -> str:
    if cfg.input_format != "auto":
        return cfg.input_format
    lower = url.lower()
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".txt"):
        return "txt"
    if lower.endswith((".tsv", ".tsv.gz")):
        fields = first_line.rstrip("\r\n").split("\t")
        if cfg.url_col in fields:
            return "tsv"
        # The CC3M file as published: no header, "caption<TAB>url".
        if len(fields) == 2 and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", fields[1].strip()):
            return "cc3m_tsv"
        return "tsv"
    return "csv"


def read_url_list(cfg: DownloadConfig, storage: Storage) -> tuple[pa.Table, dict]:
    """Read and validate the URL list into a table (url, caption?, cerebro_id, extras)."""
    src = cfg.url_list
    if not src:
        raise DownloadInputError("download.url_list: no URL list configured (set download.url_list=...)")
    if not storage.exists(src):
        raise DownloadInputError(f"download.url_list: file not found: {src}")
    if storage.size(src) == 0:
        raise DownloadInputError(f"download.url_list: {src} is empty")
    raw = storage.read_bytes(src)
    first_line = raw[:65536].split(b"\n", 1)[0].decode("utf-8", "replace")
    fmt = _detect_format(cfg, src, first_line)
    try:
        if fmt == "parquet":
            table = pq.read_table(io.BytesIO(raw))
        elif fmt == "txt":
            lines = [ln.strip() for ln in raw.decode("utf-8").splitlines() if ln.strip()]
            table = pa.table({"url": lines})
        elif fmt == "cc3m_tsv":
            table = pacsv.read_csv(
                io.BytesIO(raw),
                read_options=pacsv.ReadOptions(column_names=["caption", "url"]),
                parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, newlines_in_values=False),
                convert_options=pacsv.ConvertOptions(column_types={"caption": pa.string(), "url": pa.string()}),
            )
        else:
            delim = "\t" if fmt == "tsv" else ","
            table = pacsv.read_csv(
                io.BytesIO(raw),
                parse_options=pacsv.ParseOptions(delimiter=delim),
                convert_options=pacsv.ConvertOptions(strings_can_be_null=False, auto_dict_encode=False),
            )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise DownloadInputError(f"download.url_list: cannot parse {src} as {fmt}: {exc}") from None

    if table.num_rows == 0:
        raise DownloadInputError(f"download.url_list: {src} has no rows")

    url_col = cfg.url_col
    if fmt in ("txt", "cc3m_tsv"):
        url_col = "url"
    elif url_col not in table.column_names and "image_url" in table.column_names and url_col == "url":
        url_col = "image_url"  # iNaturalist-style export
    if url_col not in table.column_names:
        raise DownloadInputError(
            f"download.url_col: column {url_col!r} not found in {src} (columns: {', '.join(table.column_names)})"
        )
    caption_col = "caption" if fmt == "cc3m_tsv" else cfg.caption_col
    has_caption = caption_col is not None and caption_col in table.column_names
    if caption_col is not None and not has_caption and caption_col != "caption":
        raise DownloadInputError(
            f"download.caption_col: column {caption_col!r} not found in {src} (columns: {', '.join(table.column_names)})"
        )

    n = table.num_rows
    urls = pc.cast(table.column(url_col), pa.string())
    urls = pc.fill_null(urls, "")
    cols = {"url": pc.utf8_trim_whitespace(urls), "cerebro_id": pa.array(range(n), pa.int64())}
    dropped = 0
    if has_caption:
        caps = pc.fill_null(pc.cast(table.column(caption_col), pa.string()), "")
        cols["caption"] = caps
    out = pa.table(cols)
    if has_caption and cfg.empty_captions == "drop":
        keep = pc.not_equal(pc.utf8_trim_whitespace(out.column("caption")), "")
        dropped = n - int(pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)
        out = out.filter(keep)
    meta = {"format": fmt, "url_col": url_col, "has_caption": has_caption, "rows": n, "dropped_empty_caption": dropped}
    if out.num_rows == 0:
        raise DownloadInputError(f"download.url_list: {src} has no usable rows (all {n} have an empty caption)")
    return out, meta


def _table_hash(table: pa.Table) -> str:
    h = hashlib.sha256()
    for name in table.column_names:
        h.update(name.encode())
        for value in table.column(name).to_pylist():
            h.update(repr(value).encode())
            h.update(b"\x00")
    return h.hexdigest()[:16]


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
        "extract_exif": False,
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

        def line(text: str) -> None:
            if text and not _TQDM_LINE.match(text):
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


# --------------------------------------------------------------------------- writer

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


def _shard_name(shard_id: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}"


def _done_shard_ids(storage: Storage, output: str) -> list[int]:
    ids = []
    for p in storage.glob(join(output, "*_stats.json")):
        stem = p.rsplit("/", 1)[-1].split("_", 1)[0]
        if stem.isdigit():
            ids.append(int(stem))
    return sorted(ids)


def _remove_orphans(storage: Storage, output: str) -> int:
    """Delete .tar/.parquet files of shards that never finished (no _stats.json)."""
    done = {_shard_name(i) for i in _done_shard_ids(storage, output)}
    removed = 0
    for pattern in ("*.tar", "*.parquet"):
        for p in storage.glob(join(output, pattern)):
            stem = p.rsplit("/", 1)[-1].split(".", 1)[0]
            if stem.isdigit() and stem not in done:
                storage.rm(p)
                removed += 1
    return removed


def _read_shard_status(storage: Storage, output: str, shard_id: int) -> pa.Table:
    url = join(output, _shard_name(shard_id) + ".parquet")
    with storage.open(url, "rb") as f:
        return pq.read_table(f, columns=["cerebro_id", "status", "error_message", "sha256"])


def collect(storage: Storage, output: str) -> tuple[dict, dict[str, str]]:
    """Final status per cerebro_id across all finished shards (later shards win)."""
    final: dict[int, tuple[str, Optional[str], int]] = {}
    sizes: dict[str, int] = {}
    hashes: dict[str, str] = {}
    for sid in _done_shard_ids(storage, output):
        t = _read_shard_status(storage, output, sid).to_pydict()
        name = _shard_name(sid) + ".tar"
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


def download(
    cfg: DownloadConfig,
    storage: Storage,
    output: str,
    progress: Optional[ProgressFn] = None,
    log: Callable[[str], None] = print,
) -> ShardSet:
    """Run the download stage end to end and return the shard set (see module docstring)."""
    table, meta = read_url_list(cfg, storage)  # fails before any worker starts
    img2dataset_python()  # ... and so does a missing img2dataset environment
    input_hash = _table_hash(table)
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
    _remove_orphans(storage, output)
    done_before = _done_shard_ids(storage, output)
    before_ok = sum(1 for v in collect(storage, output)[0]["final"].values() if v[0] == "success") if done_before else 0

    wall = 0.0
    if len([i for i in done_before if i < expected]) < expected:
        log(f"download: {expected} shards of {cfg.samples_per_shard}, {len(done_before)} already done")
        wall += run_img2dataset(
            cfg, storage, input_url, output, meta["has_caption"], "incremental", expected, progress, log
        )
    missing = sorted(set(range(expected)) - set(_done_shard_ids(storage, output)))
    if missing:
        raise RuntimeError(f"img2dataset finished but shards {missing[:10]} have no stats; rerun to resume")

    if cfg.retry_failed:
        state, _ = collect(storage, output)
        failed_ids = sorted(cid for cid, v in state["final"].items() if v[0] != "success")
        if failed_ids:
            retry = table.filter(pc.is_in(table.column("cerebro_id"), pa.array(failed_ids, pa.int64())))
            n_retry = len(_done_shard_ids(storage, output))
            retry_url = join(output, INPUT_DIR, f"retry-{n_retry:05d}.parquet")
            buf = io.BytesIO()
            pq.write_table(retry, buf)
            storage.write_bytes(retry_url, buf.getvalue())
            log(f"download: retrying {len(failed_ids)} failed rows")
            _remove_orphans(storage, output)
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
            _remove_orphans(storage, output)

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
    # Validate the input before an MLflow run is opened: a bad list leaves no empty run behind.
    read_url_list(cfg.download, storage)
    with tracking.stage_run(cfg, "download", tags={"download.output": output}) as run:
        result = download(cfg.download, storage, output, progress=progress, log=log)
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
