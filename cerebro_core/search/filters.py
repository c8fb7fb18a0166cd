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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class QueryError(ValueError):
    """A bad query: the API answers 4xx with this message, the CLI exits 2."""


MAX_QUERY_CHARS = 1000
SHOWN_CHARS = 200  # an error quotes at most this much of the input


def shown(value: object) -> str:
    """``value`` as an error message quotes it: its repr, cut to SHOWN_CHARS characters."""
    r = repr(value)
    return r if len(r) <= SHOWN_CHARS else f"{r[:SHOWN_CHARS]}… ({len(r)} characters)"

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
        raise QueryError(f"k must be an integer in 1..{MAX_K}, got {shown(k)}")
    if media is not None and media not in MEDIA:
        raise QueryError(f"media must be 'image' or 'video', got {shown(media)}")


def _instant(value: str, end_of_day: bool) -> float:
    """ISO 8601 date or date-time → seconds since the epoch (naive = UTC); a bare date, month
    (``2009-04``) or year (``2009``) as an upper bound means the end of that day, month or year."""
    v = value.strip()
    try:
        if "W" in v.upper():  # an ISO week (2009-W17, 2009-W17-1): Python parses it, the API does not take it
            raise ValueError
        if len(v) == 4 and v.isdigit():  # a year: from its first instant to its last
            y = int(v)
            t = datetime(y, 12, 31, 23, 59, 59, 999999) if end_of_day else datetime(y, 1, 1)
        elif len(v) == 7 and v[4] == "-" and v[:4].isdigit() and v[5:].isdigit():  # a month
            y, m = int(v[:4]), int(v[5:])
            first = date(y, m, 1)
            last = date(y + m // 12, m % 12 + 1, 1).toordinal() - 1
            t = datetime.combine(date.fromordinal(last), time.max) if end_of_day else datetime.combine(first, time.min)
        elif len(v) == 10:
            d = date.fromisoformat(v)
            t = datetime.combine(d, time.max if end_of_day else time.min)
        else:
            t = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date, month, year or date-time: {shown(value)}") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def parse_time(s: Optional[str]) -> Optional[float]:
    """Seconds since the epoch of an ISO 8601 time, or None. A naive time (a camera's local clock,
    no zone stated) is read as UTC, as naive filter bounds are: naive times compare as wall-clock
    times, and facets print them without an offset."""
    if not s:
        return None
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    species: list[str] = Field(default_factory=list, description="any of these species (repeatable)")
    min_species_score: Optional[float] = Field(None, ge=0, le=1)
    source: Optional[str] = None
    media: Optional[Literal["image", "video"]] = None
    date_from: Optional[str] = Field(None, description="ISO 8601; items without a time never pass")
    date_to: Optional[str] = Field(None, description="ISO 8601; a bare date includes that whole day")
    bbox: Optional[str] = Field(None, description="min_lon,min_lat,max_lon,max_lat (min_lon > max_lon: across "
                                                  "the antimeridian)")
    camera: Optional[str] = None
    source_label: Optional[str] = Field(None, description="the source's own label (its metadata JSON or layout)")
    verified: Optional[bool] = Field(None, description="true: only items a person verified; false: only the rest")
    show_empty: bool = Field(False, description="list empty frames too (the source's empty category, or verified "
                                                "empty); hidden by default")
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
        if b > d:
            raise ValueError("inverted: min_lat > max_lat")
        return v  # min_lon > max_lon: the box crosses the antimeridian (GeoJSON's convention)

    @model_validator(mode="after")
    def _range(self) -> "Filters":
        if self.date_from and self.date_to and _instant(self.date_from, False) > _instant(self.date_to, True):
            raise ValueError("date_from is after date_to")
        return self

    @property
    def filtering(self) -> bool:
        return bool(self.species or self.min_species_score is not None or self.source or self.media
                    or self.date_from or self.date_to or self.bbox or self.camera or self.verified is not None
                    or self.source_label)


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
