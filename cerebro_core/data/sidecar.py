"""What a scrape knows about its files beyond their bytes: ``_cerebro_origins.csv`` in the folder.

Written when a scrape is materialised — from S3 (each file's ``s3://`` URI) or from a URL list
through img2dataset (each file's http URL, and the EXIF img2dataset read from the downloaded
bytes before re-encoding them) — and read by :func:`cerebro_core.data.sources.list_folder`, so
that an indexed item keeps the URI its user gave and the time, place and camera of the original.
Columns: ``path`` (relative to the folder), ``origin_uri``, ``taken_at``, ``lat``, ``lon``,
``camera``; empty = unknown.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Optional

SIDECAR = "_cerebro_origins.csv"
COLUMNS = ("path", "origin_uri", "taken_at", "lat", "lon", "camera")


def write(folder: Path, rows: list[dict]) -> None:
    """Merge ``rows`` (by path) into the folder's sidecar (none: nothing is written)."""
    if not rows:
        return
    known = {path: {"path": path, **fields} for path, fields in read(folder).items()}
    for r in rows:
        known[r["path"]] = {c: r.get(c) for c in COLUMNS}
    tmp = folder / (SIDECAR + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for p in sorted(known):
            w.writerow({c: "" if known[p].get(c) is None else known[p][c] for c in COLUMNS})
    tmp.replace(folder / SIDECAR)


def read(folder: Path) -> dict[str, dict]:
    """path → its known fields (unknown ones left out)."""
    p = Path(folder) / SIDECAR
    if not p.exists():
        return {}
    out = {}
    with p.open(newline="") as f:
        for r in csv.DictReader(f):
            fields = {c: r[c] for c in COLUMNS[1:] if r.get(c)}
            for c in ("lat", "lon"):
                if c in fields:
                    fields[c] = float(fields[c])
            out[r["path"]] = fields
    return out


def _number(s: str) -> float:
    return float(Fraction(s.strip()))


def _gps(value: Optional[str], ref: Optional[str]) -> Optional[float]:
    """exifread's ``[46, 30, 1793/50]`` and a reference N/S/E/W → decimal degrees."""
    if not value:
        return None
    try:
        parts = [_number(x) for x in value.strip("[] ").split(",")]
        d = parts[0] + (parts[1] if len(parts) > 1 else 0) / 60 + (parts[2] if len(parts) > 2 else 0) / 3600
    except (ValueError, ZeroDivisionError):
        return None
    return -d if (ref or "").strip().upper() in ("S", "W") else d


def from_img2dataset(meta: dict) -> dict:
    """origin_uri, taken_at, lat, lon, camera from an img2dataset sample's json (``url`` and the
    ``exif`` it stores with ``extract_exif``: exifread's tags as strings)."""
    out: dict = {"origin_uri": meta.get("url")}
    try:
        exif = json.loads(meta.get("exif") or "{}")
    except (TypeError, ValueError):
        exif = {}
    when = exif.get("EXIF DateTimeOriginal")
    if when:
        try:
            t = datetime.strptime(when.strip(), "%Y:%m:%d %H:%M:%S")
            offset = exif.get("EXIF OffsetTimeOriginal", "").strip()
            if re.fullmatch(r"[+-]\d\d:\d\d", offset):
                t = datetime.fromisoformat(t.isoformat() + offset)
            out["taken_at"] = t.isoformat()
        except ValueError:
            pass
    out["lat"] = _gps(exif.get("GPS GPSLatitude"), exif.get("GPS GPSLatitudeRef"))
    out["lon"] = _gps(exif.get("GPS GPSLongitude"), exif.get("GPS GPSLongitudeRef"))
    camera = " ".join(exif.get(k, "").strip() for k in ("Image Make", "Image Model")).strip()
    out["camera"] = camera or None
    return out
