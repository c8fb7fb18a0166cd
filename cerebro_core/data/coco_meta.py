"""A source's own metadata as the collections publish it: a COCO Camera Traps JSON (LILA's format:
``images[]`` with ``file_name``, ``datetime``, ``location``, ``seq_id``, ``frame_num``;
``categories[]``; ``annotations[]`` with ``image_id`` and ``category_id``) or plain COCO / iNat
(the same keys, fewer of them). Read into one record per file, relative to the source's folder:

- ``label``: the image's annotated category name (one distinct category; several: none, counted);
- ``taken_at`` (ISO 8601) from ``datetime``, ``camera`` from ``location``, ``source_sequence``
  from ``seq_id`` and ``frame_num``;
- ``empty`` / ``person``: the image's categories are the collection's empty or human ones.

Malformed or partial entries are counted per reason in ``counts`` (``metadata.<reason>``) and
left out or kept without the bad field — never a crash: a file name that is absolute or leaves
the folder, an annotation of an unknown image or category, a datetime that does not parse, an
image entry without a file name, a duplicate file name."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Optional

EMPTY_NAMES = {"empty", "blank", "nothing", "none"}
PERSON_NAMES = {"human", "person", "people", "humans"}
_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d %H:%M:%S",
            "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S.%f")


def parse_datetime(value: Any) -> Optional[str]:
    """ISO 8601 from the formats COCO Camera Traps files use (with or without a zone); None if none."""
    if not isinstance(value, str) or not value.strip():
        return None
    v = value.strip()
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).isoformat()
    except ValueError:
        pass
    for fmt in _FORMATS:
        try:
            return datetime.strptime(v, fmt).isoformat()
        except ValueError:
            continue
    return None


def _relative(name: Any) -> Optional[str]:
    """``file_name`` as a path inside the folder, or None when it is not one."""
    if not isinstance(name, str) or not name.strip():
        return None
    p = PurePosixPath(name.strip().replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        return None
    return p.as_posix()


def images_json(text: str, counts: Counter, prefix: str) -> Optional[dict]:
    """The JSON object of ``text`` with an ``images`` list, or None, counted as
    ``<prefix>.not_json`` / ``<prefix>.no_images_list`` (this format and MegaDetector's alike)."""
    try:
        data = json.loads(text)
    except ValueError:
        counts[f"{prefix}.not_json"] += 1
        return None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        counts[f"{prefix}.no_images_list"] += 1
        return None
    return data


def source_file_errors(storage, source, prefix: str) -> list[str]:
    """The files a source's ``metadata`` and ``detections`` options name that are not there
    (nothing is read)."""
    return [f"{prefix}[{source.name}].{key}: nothing at {url}" for key in ("metadata", "detections")
            for url in [getattr(source, key, None)] if url and not storage.exists(url)]


def read_source_file(storage, source, key: str) -> Optional[str]:
    """The text of the file a source's ``key`` option names (a path or storage URL), or None when
    it names none; FileNotFoundError naming the key when nothing is there."""
    url = getattr(source, key, None)
    if not url:
        return None
    try:
        return storage.read_text(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"sources[{source.name}].{key}: nothing at {url}") from None


def parse(text: str, counts: Counter) -> dict[str, dict]:
    """{file name relative to the source folder: record} from the JSON ``text`` (see the module doc)."""
    data = images_json(text, counts, "metadata")
    if data is None:
        return {}
    cats = {c.get("id"): str(c.get("name", "")).strip() for c in data.get("categories") or []
            if isinstance(c, dict) and c.get("id") is not None}
    by_id: dict[Any, str] = {}
    out: dict[str, dict] = {}
    for im in data["images"]:
        if not isinstance(im, dict):
            counts["metadata.bad_image_entry"] += 1
            continue
        rel = _relative(im.get("file_name"))
        if rel is None:
            counts["metadata.bad_file_name" if not isinstance(im.get("file_name"), str) or not im["file_name"].strip()
                   else "metadata.outside_source"] += 1
            continue
        if rel in out:
            counts["metadata.duplicate_file_name"] += 1
            continue
        rec: dict = {}
        if im.get("datetime") not in (None, ""):
            t = parse_datetime(im.get("datetime"))
            if t is None:
                counts["metadata.bad_datetime"] += 1
            rec["taken_at"] = t
        if im.get("location") not in (None, ""):
            rec["camera"] = str(im["location"])
        if im.get("seq_id") not in (None, ""):
            rec["source_sequence"] = str(im["seq_id"])
            if isinstance(im.get("frame_num"), int):
                rec["frame_num"] = im["frame_num"]
        out[rel] = rec
        if im.get("id") is not None:
            by_id[im["id"]] = rel
    labels: dict[str, set[str]] = defaultdict(set)
    for a in data.get("annotations") or []:
        if not isinstance(a, dict) or a.get("image_id") not in by_id:
            counts["metadata.unknown_image"] += 1
            continue
        if a.get("category_id") not in cats:
            counts["metadata.unknown_category"] += 1
            continue
        labels[by_id[a["image_id"]]].add(cats[a["category_id"]])
    for rel, names in labels.items():
        lower = {n.lower() for n in names}
        out[rel]["empty"] = bool(lower) and lower <= EMPTY_NAMES
        out[rel]["person"] = bool(lower & PERSON_NAMES)
        if len(names) == 1:
            out[rel]["label"] = next(iter(names))
        else:
            counts["metadata.several_categories"] += 1
    return out


def for_source(storage, source, counts: Counter) -> Optional[dict[str, dict]]:
    """The records of ``source.metadata`` (a path or storage URL), or None when it names none."""
    text = read_source_file(storage, source, "metadata")
    return None if text is None else parse(text, counts)
