"""Per-item metadata for filtering search: when, where, which camera, which species, which burst,
which near-duplicate — computed by index and reindex, stored in the bundle's metadata.arrow.

- ``taken_at``: EXIF DateTimeOriginal (with OffsetTimeOriginal when present), a video's container
  ``creation_time``; otherwise none — never the file's modification time;
- ``lat``/``lon``: EXIF GPS, decimal degrees;
- ``taken_at``/``camera`` given by the source's metadata JSON (``datetime``, ``location``) win;
- ``camera``: the ``camera`` (or ``deployment``) column of the source's labels.csv, else EXIF
  Make + Model; for a downloaded scrape, time, place and camera come from the EXIF img2dataset
  read from the original bytes (:mod:`cerebro_core.data.sidecar`);
- ``species``/``species_score``/``species_margin``: zero-shot top-1 over the project's vocabulary
  with the index's own model, its probability, and its lead over the second class;
- ``sequence_id``: the source's own sequence when its metadata gives one (a COCO Camera Traps
  ``seq_id``); else items of one camera whose times are at most ``index.sequence_gap_s`` apart
  (a burst, an event); an item without camera or time is its own sequence; a video's stills
  share one;
- ``duplicate_of``: the lowest id of the item's near-duplicate group (embedding cosine ≥
  ``index.duplicate_threshold``), none when it has no near-duplicate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional, Sequence

import numpy as np

from cerebro_core.search.filters import parse_time

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL = 271, 272
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 36867, 36881


def _ratio(v) -> float:
    return float(v[0]) / float(v[1]) if isinstance(v, tuple) else float(v)


def _degrees(dms, ref: str) -> Optional[float]:
    try:
        d = _ratio(dms[0]) + _ratio(dms[1]) / 60 + _ratio(dms[2]) / 3600
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    return -d if ref in ("S", "W") else d


def _exif_time(value: str, offset: Optional[str]) -> Optional[str]:
    try:
        t = datetime.strptime(value.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except (ValueError, AttributeError):
        return None
    if offset:
        try:
            t = datetime.strptime(f"{t.isoformat()}{offset.strip()}", "%Y-%m-%dT%H:%M:%S%z")
        except ValueError:
            pass
    return t.isoformat()


def image_fields(path: str) -> dict:
    """taken_at, lat, lon, camera from the image's EXIF (header only; no pixel is decoded)."""
    from PIL import Image

    out: dict = {"taken_at": None, "lat": None, "lon": None, "camera": None}
    try:
        with Image.open(path) as im:
            exif = im.getexif()
    except Exception:  # unreadable images are counted where they are embedded
        return out
    ifd = exif.get_ifd(EXIF_IFD)
    if DATETIME_ORIGINAL in ifd:
        out["taken_at"] = _exif_time(ifd[DATETIME_ORIGINAL], ifd.get(OFFSET_TIME_ORIGINAL))
    gps = exif.get_ifd(GPS_IFD)
    if 2 in gps and 4 in gps:
        out["lat"], out["lon"] = _degrees(gps[2], gps.get(1, "N")), _degrees(gps[4], gps.get(3, "E"))
    camera = " ".join(str(exif.get(t, "")).strip("\x00 ") for t in (MAKE, MODEL)).strip()
    out["camera"] = camera or None
    return out


def video_fields(path: str) -> dict:
    import av

    out: dict = {"taken_at": None, "lat": None, "lon": None, "camera": None}
    try:
        with av.open(path) as c:
            created = c.metadata.get("creation_time")
    except Exception:
        return out
    if created:
        try:
            out["taken_at"] = datetime.fromisoformat(created.replace("Z", "+00:00")).isoformat()
        except ValueError:
            pass
    return out


def sequences(rows: Sequence[dict], gap_s: float) -> list[int]:
    """A sequence id per row (see the module doc); ids are 0..S-1 in order of first appearance."""
    ids: list[Optional[int]] = [None] * len(rows)
    next_id = 0
    by_video: dict[str, int] = {}
    by_given: dict[tuple, int] = {}
    by_camera: dict[str, list[tuple[float, int]]] = {}
    for i, r in enumerate(rows):
        t = parse_time(r.get("taken_at"))
        if r.get("source_sequence") is not None:  # the collection's own seq_id (coco_meta)
            key = (r.get("source"), r["source_sequence"])
            if key not in by_given:
                by_given[key] = next_id
                next_id += 1
            ids[i] = by_given[key]
        elif r.get("media_type") == "video_frame":
            if r["uri"] not in by_video:
                by_video[r["uri"]] = next_id
                next_id += 1
            ids[i] = by_video[r["uri"]]
        elif r.get("camera") and t is not None:
            by_camera.setdefault(r["camera"], []).append((t, i))
    for cam in sorted(by_camera):
        last = None
        for t, i in sorted(by_camera[cam]):
            if last is None or t - last > gap_s:
                current = next_id
                next_id += 1
            ids[i], last = current, t
    for i in range(len(ids)):
        if ids[i] is None:
            ids[i] = next_id
            next_id += 1
    return [int(x) for x in ids]


def duplicate_groups(index, vectors: np.ndarray, threshold: float, neighbours: int = 8) -> list[Optional[int]]:
    """``duplicate_of`` per row: the lowest id among the rows linked to it by cosine ≥
    ``threshold`` (through the built index's nearest neighbours); None for that lowest row itself
    and for a row with no near-duplicate."""
    n = len(vectors)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    if n:
        D, I = index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(neighbours, n))
        for a in range(n):
            for d, b in zip(D[a], I[a]):
                if b >= 0 and b != a and d >= threshold:
                    ra, rb = find(a), find(int(b))
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
    return [root if root != a else None for a, root in ((a, find(a)) for a in range(n))]


def species(vectors: np.ndarray, names: Sequence[str], class_emb, scale: float) -> tuple[list, list, list]:
    """Zero-shot top-1 species, its probability and its margin over the second class per row (the
    margin: how unsure the model is, which the review queue reads)."""
    from cerebro_core.evaluate import probabilities

    if not len(vectors) or not names:
        return [None] * len(vectors), [None] * len(vectors), [None] * len(vectors)
    p = probabilities(vectors, class_emb, scale)
    top = p.argmax(1)
    two = -np.sort(-p, axis=1)[:, :2] if p.shape[1] > 1 else np.concatenate([p, np.zeros_like(p)], 1)
    return ([names[j] for j in top], [float(p[i, j]) for i, j in enumerate(top)],
            [float(a - b) for a, b in two])


class Species:
    """Zero-shot species of image vectors with one model over one vocabulary (names × templates)."""

    def __init__(self, clip, names: Sequence[str], templates: Sequence[str]):
        from cerebro_core.data.vocab import prompts_for
        from cerebro_core.evaluate import prompt_class_embeddings

        self.names = list(names)
        self.cls = prompt_class_embeddings(clip.model, clip.tokenizer, prompts_for(self.names, list(templates), "names"))
        self.scale = float(clip.model.logit_scale.detach().exp())

    def __call__(self, vectors: np.ndarray) -> tuple[list, list, list]:
        return species(vectors, self.names, self.cls, self.scale)


def item_fields(rows: list[dict], vectors: np.ndarray, species_of: Optional[Species]) -> None:
    """Fill each row's own fields in place: time, place, camera, species. A value the source gave
    (a labels.csv camera, a scrape's sidecar: the EXIF of the downloaded original) wins over the
    file's own EXIF."""
    videos: dict[str, dict] = {}
    for r in rows:
        if r["media_type"] == "video_frame":
            f = videos.setdefault(r["uri"], video_fields(r["uri"]))
        else:
            f = image_fields(r["uri"])
        r.update({k: r[k] if r.get(k) is not None else v for k, v in f.items()})  # what was given wins
        if r.get("timezone") and r.get("taken_at"):  # the source states its cameras' zone: naive → aware
            t = datetime.fromisoformat(r["taken_at"])
            if t.tzinfo is None:
                from zoneinfo import ZoneInfo

                r["taken_at"] = t.replace(tzinfo=ZoneInfo(r["timezone"])).isoformat()
    none = [None] * len(rows)
    names, scores, margins = species_of(vectors) if species_of is not None else (none, none, none)
    for r, n, s, m in zip(rows, names, scores, margins):
        r["species"], r["species_score"], r["species_margin"] = n, s, m


def group_fields(rows: list[dict], index, vectors: np.ndarray, gap_s: float, threshold: float) -> None:
    """Fill ``sequence_id`` and ``duplicate_of`` in place, over all rows of the index."""
    for r, s, d in zip(rows, sequences(rows, gap_s), duplicate_groups(index, vectors, threshold)):
        r["sequence_id"], r["duplicate_of"] = s, d


def vocabulary_of(cfg) -> Optional[list[str]]:
    """The species names of ``index.vocabulary`` (a missing file is an error naming the key), else
    of a names-kind ``adapt.vocabulary`` when its file exists, else None (no species tags)."""
    from pathlib import Path

    from cerebro_core.data.vocab import VocabularyError, load_vocabulary

    if cfg.index.vocabulary:
        try:
            return load_vocabulary(cfg.index.vocabulary)
        except VocabularyError as exc:
            raise VocabularyError(str(exc).replace("adapt.vocabulary", "index.vocabulary", 1)) from None
    path = cfg.adapt.vocabulary if cfg.adapt.vocabulary_kind == "names" else None
    return load_vocabulary(path) if path and Path(path).is_file() else None
