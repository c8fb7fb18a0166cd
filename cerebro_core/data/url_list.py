"""The download's reader: an image-text URL list (CC3M TSV, csv/tsv/parquet with named columns, an
iNaturalist-style CSV, a plain .txt of URLs) → one normalised table (url, caption, cerebro_id)."""

from __future__ import annotations

import csv
import hashlib
import io
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cerebro_core.config import DownloadConfig
from cerebro_core.storage import Storage


class DownloadInputError(ValueError):
    """The URL list is unusable; raised before any download worker starts."""


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


def check_url_list(cfg: DownloadConfig, storage: Storage) -> str:
    """The URL list is there, not empty, and of a known format (read from its first 64 KB, not
    parsed whole): its format. What ``cerebro download`` checks before starting Prefect."""
    src = cfg.url_list
    if not src:
        raise DownloadInputError("download.url_list: no URL list configured (set download.url_list=...)")
    if not storage.exists(src):
        raise DownloadInputError(f"download.url_list: file not found: {src}")
    if storage.size(src) == 0:
        raise DownloadInputError(f"download.url_list: {src} is empty")
    with storage.open(src, "rb") as f:
        head = f.read(65536)
        first_line = head.split(b"\n", 1)[0].decode("utf-8", "replace")
        fmt = _detect_format(cfg, src, first_line)
        if fmt == "parquet":
            try:
                f.seek(0)
                columns = pq.read_schema(f).names
            except (pa.ArrowInvalid, OSError) as exc:
                raise DownloadInputError(f"download.url_list: cannot parse {src} as parquet: {exc}") from None
        elif fmt in ("csv", "tsv"):
            header = first_line.lstrip("\ufeff").rstrip("\r")  # the header as the CSV reader reads it
            columns = next(csv.reader([header], delimiter="\t" if fmt == "tsv" else ","), [])
        else:  # txt and the CC3M TSV name their own columns
            return fmt
    _columns(cfg, src, columns)
    return fmt


def _columns(cfg: DownloadConfig, src: str, columns: list[str]) -> str:
    """The URL column the list's ``columns`` hold; DownloadInputError naming the key when the
    configured URL or caption column is missing."""
    url_col = cfg.url_col
    if url_col not in columns and "image_url" in columns and url_col == "url":
        url_col = "image_url"  # iNaturalist-style export
    if url_col not in columns:
        raise DownloadInputError(f"download.url_col: column {url_col!r} not found in {src} (columns: {', '.join(columns)})")
    caption_col = cfg.caption_col
    if caption_col is not None and caption_col not in columns and caption_col != "caption":
        raise DownloadInputError(
            f"download.caption_col: column {caption_col!r} not found in {src} (columns: {', '.join(columns)})")
    return url_col


def read_url_list(cfg: DownloadConfig, storage: Storage) -> tuple[pa.Table, dict]:
    """Read and validate the URL list into a table (url, caption?, cerebro_id, extras)."""
    fmt = check_url_list(cfg, storage)
    src = cfg.url_list
    raw = storage.read_bytes(src)
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

    url_col = "url" if fmt in ("txt", "cc3m_tsv") else _columns(cfg, src, table.column_names)
    caption_col = "caption" if fmt == "cc3m_tsv" else cfg.caption_col
    has_caption = caption_col is not None and caption_col in table.column_names

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


def table_hash(table: pa.Table) -> str:
    h = hashlib.sha256()
    for name in table.column_names:
        h.update(name.encode())
        for value in table.column(name).to_pylist():
            h.update(repr(value).encode())
            h.update(b"\x00")
    return h.hexdigest()[:16]


