"""Labelled and unlabelled image folders (wildlife sources, evaluation sets).

A folder is read as: ``labels.csv`` when present (columns ``path`` and one of ``label``,
``common_name``, ``class``), else class sub-folders (``<folder>/<class>/<image>``), else a flat
folder of images without labels.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from cerebro_core.data import sidecar
from cerebro_core.data.paths import inside

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
LABEL_COLUMNS = ("label", "common_name", "class")
CAMERA_COLUMNS = ("camera", "deployment", "deployment_id")


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: Optional[str]
    source: str = ""
    camera: Optional[str] = None  # labels.csv column camera / deployment / deployment_id
    meta: dict = field(default_factory=dict)  # what the scrape's sidecar knows: origin_uri, taken_at, …


def list_folder(folder: str | Path, source: str = "", counts: Optional[Counter] = None,
                metadata: Optional[dict[str, dict]] = None, layout: Optional[str] = None) -> list[ImageRecord]:
    """The folder's images (labels from labels.csv or class folders; with ``metadata``, the
    source's own JSON read by :mod:`cerebro_core.data.coco_meta`: its files, labels, times, cameras
    and sequences; with ``layout``, e.g. ``{camera}/{label}/{file}``, what each path component is:
    :func:`by_layout`). A file that resolves outside the folder (a symlink leaving it, a labels.csv
    path with ``..`` or an absolute one) is left out and counted in ``counts["outside_source"]``."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    counts = counts if counts is not None else Counter()

    def kept(p: Path) -> bool:
        if inside(root, p):
            return True
        counts["outside_source"] += 1
        return False
    if metadata is not None:
        recs = []
        for rel, m in sorted(metadata.items()):
            p = root / rel
            if not p.is_file():
                counts["metadata.missing_file"] += 1
            elif kept(p):
                meta = {k: v for k, v in m.items() if k not in ("label", "camera") and v is not None}
                if m.get("label"):  # shown beside the model's guess (species), never mixed with it
                    meta["source_label"] = m["label"]
                recs.append(ImageRecord(str(p), m.get("label"), source, m.get("camera"), meta))
        return _with_sidecar(root, recs)  # a mirrored source's items still name their objects
    labels_csv = root / "labels.csv"
    if labels_csv.exists():
        with labels_csv.open(newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            col = next((c for c in LABEL_COLUMNS if c in cols), None)
            if "path" not in cols:
                raise ValueError(f"{labels_csv}: needs a 'path' column (has {cols})")
            cam = next((c for c in CAMERA_COLUMNS if c in cols), None)
            recs = [ImageRecord(str(root / r["path"]), (r[col].strip() if col else None), source,
                                (r[cam].strip() or None) if cam else None) for r in reader if kept(root / r["path"])]
        return _with_sidecar(root, sorted(recs, key=lambda r: r.path))
    recs = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and kept(p):
            rel = p.relative_to(root)
            if layout is not None:
                fields = by_layout(rel.parts, layout)
                if fields is None:
                    counts["layout_mismatch"] += 1
                    fields = {}
                recs.append(ImageRecord(str(p), fields.get("label"), source, fields.get("camera"),
                                        {"source_label": fields["label"]} if fields.get("label") else {}))
            else:
                recs.append(ImageRecord(str(p), rel.parts[0] if len(rel.parts) > 1 else None, source))
    return _with_sidecar(root, recs)


def by_layout(parts: tuple[str, ...], layout: str) -> Optional[dict[str, str]]:
    """{"camera": …, "label": …} of a file's path components under ``layout`` (``{camera}``,
    ``{label}``, ``*`` per folder, then ``{file}``); None when the depth does not match."""
    tokens = layout.split("/")
    if len(parts) != len(tokens):
        return None
    return {t[1:-1]: part for t, part in zip(tokens[:-1], parts[:-1]) if t in ("{camera}", "{label}")}


def _with_sidecar(root: Path, recs: list[ImageRecord]) -> list[ImageRecord]:
    known = sidecar.read(root)
    if not known:
        return recs
    # what the source's own metadata says wins over the sidecar
    return [replace(r, meta={**known.get(Path(r.path).relative_to(root).as_posix(), {}), **r.meta}) for r in recs]
