"""MegaDetector batch output, as camera-trap users already have it for their images
(``images[]`` with ``file`` and ``detections[]`` of ``category`` "1" animal / "2" person /
"3" vehicle, ``conf`` and ``bbox``; ``detection_categories`` names them): per file, relative to
the source folder, whether the frame is ``empty`` (no animal, person or vehicle at ``threshold``
or above) or shows a ``person``, and the best animal confidence (``animal_conf``).

Malformed entries are counted per reason (``detections.<reason>``), never a crash: a file name
that is absolute or leaves the folder, an image the detector failed on (``failure``), a
detection without a known category or a numeric confidence, a file listed twice (the first kept)."""

from __future__ import annotations

from collections import Counter

from cerebro_core.data.coco_meta import _relative, images_json, read_source_file


def parse(text: str, counts: Counter, threshold: float) -> dict[str, dict]:
    data = images_json(text, counts, "detections")
    if data is None:
        return {}
    names = {str(k): str(v).lower() for k, v in (data.get("detection_categories") or
                                                 {"1": "animal", "2": "person", "3": "vehicle"}).items()}
    out: dict[str, dict] = {}
    for im in data["images"]:
        rel = _relative(im.get("file")) if isinstance(im, dict) else None
        if rel is None:
            counts["detections.bad_file_name"] += 1
            continue
        if rel in out:
            counts["detections.duplicate_file_name"] += 1
            continue
        if im.get("failure") or not isinstance(im.get("detections"), list):
            counts["detections.failed_image"] += 1
            out[rel] = {}  # listed, but unknown: neither flag set
            continue
        seen: dict[str, float] = {}
        for d in im["detections"]:
            cat = names.get(str(d.get("category"))) if isinstance(d, dict) else None
            conf = d.get("conf") if isinstance(d, dict) else None
            if cat is None or not isinstance(conf, (int, float)):
                counts["detections.bad_detection"] += 1
                continue
            seen[cat] = max(seen.get(cat, 0.0), float(conf))
        out[rel] = {"empty": not any(c >= threshold for c in seen.values()),
                    "person": seen.get("person", 0.0) >= threshold, "animal_conf": seen.get("animal", 0.0)}
    return out


def for_source(storage, source, counts: Counter) -> dict[str, dict] | None:
    """The flags of ``source.detections`` (a path or storage URL), or None when it names none."""
    text = read_source_file(storage, source, "detections")
    return None if text is None else parse(text, counts, source.detection_threshold)
