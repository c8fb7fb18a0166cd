"""A search's filters, one typed model for the API, the CLI and the pyfunc model alike, and the
item columns they are evaluated on.

Filters become a FAISS ID selector (the index searches only the items that pass, so filtering
never costs recall on an exact index); ``min_score`` cuts the ranked list; ``collapse`` keeps the
best hit of each sequence (burst) or near-duplicate group and reports the group's size among the
items that pass. Bad values raise :class:`QueryError` naming the parameter.
"""

from __future__ import annotations

import unicodedata
from datetime import date, datetime, time, timezone
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class QueryError(ValueError):
    """A bad query: the API answers 4xx with this message, the CLI exits 2."""


MAX_QUERY_CHARS = 1000
MAX_K = 1000
MEDIA = ("image", "video")


def check_query(query: Optional[str] = None, k: int = 10, media: Optional[str] = None,
                max_chars: int = MAX_QUERY_CHARS) -> None:
    """What can be refused without a model: an empty query (whitespace, zero-width and other
    invisible characters only), one over ``max_chars``, ``k`` outside 1..MAX_K, an unknown media."""
    if query is not None:
        if not isinstance(query, str) or not "".join(
                ch for ch in query if unicodedata.category(ch)[0] not in "CZ").strip():
            raise QueryError("query is empty")
        if len(query) > max_chars:
            raise QueryError(f"query is longer than {max_chars} characters ({len(query)})")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise QueryError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    if media is not None and media not in MEDIA:
        raise QueryError(f"media must be 'image' or 'video', got {media!r}")


def _instant(value: str, end_of_day: bool) -> float:
    """ISO 8601 date or date-time → seconds since the epoch (naive = UTC); a bare date as an upper
    bound means the end of that day."""
    v = value.strip()
    try:
        if len(v) == 10:
            d = date.fromisoformat(v)
            t = datetime.combine(d, time.max if end_of_day else time.min)
        else:
            t = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or date-time: {value!r}") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    species: list[str] = Field(default_factory=list, description="any of these species (repeatable)")
    min_species_score: Optional[float] = Field(None, ge=0, le=1)
    source: Optional[str] = None
    media: Optional[Literal["image", "video"]] = None
    date_from: Optional[str] = Field(None, description="ISO 8601; items without a time never pass")
    date_to: Optional[str] = Field(None, description="ISO 8601; a bare date includes that whole day")
    bbox: Optional[str] = Field(None, description="min_lon,min_lat,max_lon,max_lat")
    camera: Optional[str] = None
    min_score: Optional[float] = Field(None, ge=-1, le=1, description="similarity cut-off")
    sort: Literal["score", "date"] = "score"
    collapse: Literal["none", "sequence", "duplicates"] = "none"
    offset: int = Field(0, ge=0, le=100_000)

    @field_validator("date_from", "date_to")
    @classmethod
    def _iso(cls, v: Optional[str], info) -> Optional[str]:
        if v is not None:
            _instant(v, info.field_name == "date_to")
        return v

    @field_validator("bbox")
    @classmethod
    def _box(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        try:
            a, b, c, d = (float(x) for x in v.split(","))
        except ValueError:
            raise ValueError("expected min_lon,min_lat,max_lon,max_lat (4 numbers)") from None
        if not (-180 <= a <= 180 and -180 <= c <= 180 and -90 <= b <= 90 and -90 <= d <= 90):
            raise ValueError("longitudes must be in -180..180 and latitudes in -90..90")
        if a > c or b > d:
            raise ValueError("inverted: min_lon > max_lon or min_lat > max_lat")
        return v

    @model_validator(mode="after")
    def _range(self) -> "Filters":
        if self.date_from and self.date_to and _instant(self.date_from, False) > _instant(self.date_to, True):
            raise ValueError("date_from is after date_to")
        return self

    @property
    def filtering(self) -> bool:
        return bool(self.species or self.min_species_score is not None or self.source or self.media
                    or self.date_from or self.date_to or self.bbox or self.camera)


def parse_filters(**params) -> Filters:
    """Filters from request/CLI parameters (None and "" mean unset), or QueryError naming the bad one."""
    clean = {k: v for k, v in params.items() if v is not None and v != "" and v != []}
    try:
        return Filters(**clean)
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            name = ".".join(str(p) for p in e["loc"] if not isinstance(p, int)) or "filters"
            msgs.append(f"{name}: {e['msg'].removeprefix('Value error, ')}")
        raise QueryError("; ".join(msgs)) from None


def _floats(rows: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


class Columns:
    """The item columns filters read, as arrays (built once per loaded index)."""

    def __init__(self, rows: list[dict], species_vocabulary: Optional[list[str]] = None):
        from cerebro_core.index.metadata import parse_time

        n = len(rows)
        self.n = n
        self.source = np.array([r.get("source") for r in rows], dtype=object)
        self.media = np.array([r.get("media_type") for r in rows], dtype=object)
        self.species = np.array([r.get("species") for r in rows], dtype=object)
        self.camera = np.array([r.get("camera") for r in rows], dtype=object)
        self.species_score, self.lat, self.lon = (_floats(rows, k) for k in ("species_score", "lat", "lon"))
        self.taken = np.array([np.nan if parse_time(r.get("taken_at")) is None else parse_time(r.get("taken_at"))
                               for r in rows], dtype=np.float64)
        seq = [r.get("sequence_id") for r in rows]
        top = max((s for s in seq if s is not None), default=-1) + 1
        self.sequence_key = np.array([s if s is not None else top + i for i, s in enumerate(seq)], dtype=np.int64)
        self.duplicate_key = np.array([r["duplicate_of"] if r.get("duplicate_of") is not None else i
                                       for i, r in enumerate(rows)], dtype=np.int64)
        present = sorted({s for s in self.species if s})
        self.vocabulary = list(species_vocabulary or present)

    def check(self, f: Filters, sources: list[str]) -> None:
        if f.source is not None and f.source not in sources:
            raise QueryError(f"source: unknown {f.source!r}; known: {', '.join(sources)}")
        unknown = [s for s in f.species if s not in self.vocabulary]
        if unknown:
            known = ", ".join(self.vocabulary[:20]) + (" …" if len(self.vocabulary) > 20 else "")
            raise QueryError(f"species: unknown {', '.join(map(repr, unknown))}; known: {known or 'none (no vocabulary)'}")

    def mask(self, f: Filters) -> Optional[np.ndarray]:
        """Which items pass ``f`` (None: all of them)."""
        if not f.filtering:
            return None
        m = np.ones(self.n, dtype=bool)
        if f.source:
            m &= self.source == f.source
        if f.media:
            m &= self.media == ("video_frame" if f.media == "video" else "image")
        if f.species:
            m &= np.isin(self.species, f.species)
        if f.min_species_score is not None:
            m &= np.nan_to_num(self.species_score, nan=-1.0) >= f.min_species_score
        with np.errstate(invalid="ignore"):  # NaN (no time, no place) never passes
            if f.date_from:
                m &= self.taken >= _instant(f.date_from, False)
            if f.date_to:
                m &= self.taken <= _instant(f.date_to, True)
            if f.bbox:
                a, b, c, d = (float(x) for x in f.bbox.split(","))
                m &= (self.lon >= a) & (self.lon <= c) & (self.lat >= b) & (self.lat <= d)
        if f.camera:
            m &= self.camera == f.camera
        return m

    def group_key(self, f: Filters) -> Optional[np.ndarray]:
        return {"sequence": self.sequence_key, "duplicates": self.duplicate_key}.get(f.collapse)

    def facets(self) -> dict:
        def counts(a: np.ndarray) -> dict:
            vals, n = np.unique(np.array([x for x in a if x], dtype=object), return_counts=True) if any(a) else ([], [])
            return {str(v): int(c) for v, c in sorted(zip(vals, n), key=lambda t: -t[1])}

        t = self.taken[~np.isnan(self.taken)]
        span = [datetime.fromtimestamp(x, timezone.utc).isoformat() for x in (t.min(), t.max())] if len(t) else None
        return {"species": counts(self.species), "cameras": counts(self.camera), "taken_at": span,
                "with_location": int(np.sum(~np.isnan(self.lat)))}
