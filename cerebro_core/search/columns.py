"""The item columns filters read, as arrays built once per loaded index from the bundle's
Arrow table (:class:`cerebro_core.search.rows.Rows`), never from per-row dicts.

A string column (source, media type, species, camera) is kept as dictionary codes, 4 bytes an
item (-1: none), so 10M items with a few thousand distinct cameras cost 40 MB, not 10M Python
strings. Times are parsed once per distinct value.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cerebro_core.search.filters import Filters, QueryError, _instant, parse_time
from cerebro_core.review.store import SPECIAL


class Categorical:
    """A string column as codes into ``values`` (-1: null)."""

    def __init__(self, column: Optional[pa.ChunkedArray], n: int):
        if column is None or column.null_count == n:
            self.codes, self.values = np.full(n, -1, dtype=np.int32), []
        else:
            # one dictionary for all record batches (each batch's own would give each its own codes)
            enc = pc.dictionary_encode(column.cast(pa.string())).unify_dictionaries().combine_chunks()
            self.codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
            self.values = enc.dictionary.to_pylist()
        self._code = {v: i for i, v in enumerate(self.values)}

    def __eq__(self, value) -> np.ndarray:  # type: ignore[override]
        c = self._code.get(value)
        return self.codes == c if c is not None else np.zeros(len(self.codes), dtype=bool)

    __hash__ = None  # type: ignore[assignment]

    def overridden(self, labels: dict[int, str]) -> "Categorical":
        """A copy in which item ``i`` has the value ``labels[i]``."""
        out = object.__new__(Categorical)
        out.codes, out.values, out._code = self.codes.copy(), list(self.values), dict(self._code)
        for i, v in labels.items():
            if v not in out._code:
                out._code[v] = len(out.values)
                out.values.append(v)
            out.codes[i] = out._code[v]
        return out

    def isin(self, values) -> np.ndarray:
        return np.isin(self.codes, [self._code[v] for v in values if v in self._code])

    def counts(self) -> dict[str, int]:
        """Non-empty values by count, most first (ties in value order)."""
        n = np.bincount(self.codes[self.codes >= 0], minlength=len(self.values))
        pairs = sorted((v, int(c)) for v, c in zip(self.values, n) if v and c)
        return dict(sorted(pairs, key=lambda t: -t[1]))

    def present(self) -> list[str]:
        return sorted(self.counts())


def _floats(column: Optional[pa.ChunkedArray], n: int) -> np.ndarray:
    if column is None:
        return np.full(n, np.nan)
    return pc.fill_null(column.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False)


def _ints(column: Optional[pa.ChunkedArray], n: int, fill: np.ndarray) -> np.ndarray:
    """Integers, with ``fill[i]`` where item i has none."""
    if column is None:
        return fill.astype(np.int64)
    valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
    vals = pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    return np.where(valid, vals, fill).astype(np.int64)


def _flags(column: Optional[pa.ChunkedArray], n: int) -> np.ndarray:
    if column is None:
        return np.zeros(n, dtype=bool)
    return pc.fill_null(column.cast(pa.bool_()), False).to_numpy(zero_copy_only=False).astype(bool)


def _naive(column: Optional[pa.ChunkedArray], n: int) -> np.ndarray:
    """Which items' times carry no zone (a camera's local clock)."""
    cat = Categorical(column, n)
    per_value = np.array([bool(v) and datetime.fromisoformat(v).tzinfo is None for v in cat.values] + [False])
    return per_value[cat.codes]


def _times(column: Optional[pa.ChunkedArray], n: int) -> np.ndarray:
    cat = Categorical(column, n)
    per_value = np.array([np.nan if parse_time(v) is None else parse_time(v) for v in cat.values] + [np.nan])
    return per_value[cat.codes]  # code -1 → the trailing NaN


class Columns:
    def __init__(self, rows, species_vocabulary: Optional[list[str]] = None):
        """``rows``: :class:`cerebro_core.search.rows.Rows`."""
        n = len(rows)
        self.n = n
        self.source, self.media, self.species, self.camera, self.source_label = (
            Categorical(rows.column(k), n) for k in ("source", "media_type", "species", "camera", "source_label"))
        self.species_score, self.lat, self.lon = (_floats(rows.column(k), n) for k in ("species_score", "lat", "lon"))
        self.taken = _times(rows.column("taken_at"), n)
        self.naive = _naive(rows.column("taken_at"), n)
        seq = rows.column("sequence_id")
        top = (pc.max(seq).as_py() if seq is not None and seq.null_count < n else None)
        top = -1 if top is None else top
        self.sequence_key = _ints(seq, n, top + 1 + np.arange(n))
        self.duplicate_key = _ints(rows.column("duplicate_of"), n, np.arange(n))
        self.vocabulary = list(species_vocabulary or self.species.present())
        # the model's guesses; ``species``/``species_score`` are what search uses: a person's
        # verified label (score 1.0) wins over the guess (:meth:`verify`)
        self.model_species, self.model_species_score = self.species, self.species_score
        self.species_margin = _floats(rows.column("species_margin"), n)
        self.verified = np.zeros(n, dtype=bool)
        # what the source says a frame is (coco_meta): empty, or showing people; a person's verified
        # label wins over it. Frames with people are never listed unless ``show_people`` (serve.show_people)
        self.source_empty, self.source_person = (_flags(rows.column(k), n) for k in ("empty", "person"))
        self.show_people = False
        self._hidden: dict[tuple[bool, bool], Optional[np.ndarray]] = {}  # per (show_empty, show_people)

    def verify(self, labels: dict[int, str]) -> None:
        """Person-verified labels by item id: they replace the model's guesses in filters and facets."""
        ids = np.fromiter(labels, dtype=np.int64, count=len(labels))
        verified = np.zeros(self.n, dtype=bool)
        verified[ids] = True
        score = self.model_species_score.copy()
        score[ids] = 1.0
        self.species, self.species_score, self.verified = self.model_species.overridden(labels), score, verified
        self._hidden = {}

    def check(self, f: Filters, sources: list[str]) -> None:
        if f.source is not None and f.source not in sources:
            raise QueryError(f"source: unknown {f.source!r}; known: {', '.join(sources)}")
        unknown = [s for s in f.species if s not in self.vocabulary and s not in SPECIAL]
        if unknown:
            known = ", ".join(self.vocabulary[:20]) + (" …" if len(self.vocabulary) > 20 else "")
            raise QueryError(f"species: unknown {', '.join(map(repr, unknown))}; known: {known or 'none (no vocabulary)'}")

    def empty(self) -> np.ndarray:
        return (self.source_empty & ~self.verified) | (self.species == "empty")

    def person(self) -> np.ndarray:
        return (self.source_person & ~self.verified) | (self.species == "person")

    def is_person(self, i: int) -> bool:
        c = self.species._code.get("person")
        return bool(self.source_person[i] and not self.verified[i]) or (c is not None and self.species.codes[i] == c)

    def hidden(self, f: Filters) -> Optional[np.ndarray]:
        """Empty frames unless ``f.show_empty``; frames with people unless ``show_people``; None
        when none is hidden. Computed once per setting (and again after :meth:`verify`)."""
        key = (f.show_empty, self.show_people)
        if key not in self._hidden:
            h = np.zeros(self.n, dtype=bool) if f.show_empty else self.empty()
            h = h if self.show_people else h | self.person()
            self._hidden[key] = h if h.any() else None
        return self._hidden[key]

    def mask(self, f: Filters) -> Optional[np.ndarray]:
        """Which items pass ``f`` (None: all of them)."""
        hidden = self.hidden(f)
        if not f.filtering and hidden is None:
            return None
        m = ~hidden if hidden is not None else np.ones(self.n, dtype=bool)
        if f.source:
            m &= self.source == f.source
        if f.media:
            m &= self.media == ("video_frame" if f.media == "video" else "image")
        if f.species:
            m &= self.species.isin(f.species)
        if f.min_species_score is not None:
            m &= np.nan_to_num(self.species_score, nan=-1.0) >= f.min_species_score
        with np.errstate(invalid="ignore"):  # NaN (no time, no place) never passes
            if f.date_from:
                m &= self.taken >= _instant(f.date_from, False)
            if f.date_to:
                m &= self.taken <= _instant(f.date_to, True)
            if f.bbox:
                a, b, c, d = (float(x) for x in f.bbox.split(","))
                lon = (self.lon >= a) & (self.lon <= c) if a <= c else (self.lon >= a) | (self.lon <= c)
                m &= lon & (self.lat >= b) & (self.lat <= d)  # a > c: across the antimeridian
        if f.camera:
            m &= self.camera == f.camera
        if f.source_label:
            m &= self.source_label == f.source_label
        if f.verified is not None:
            m &= self.verified if f.verified else ~self.verified
        return m

    def group_key(self, f: Filters) -> Optional[np.ndarray]:
        return {"sequence": self.sequence_key, "duplicates": self.duplicate_key}.get(f.collapse)

    def facets(self) -> dict:
        has = np.flatnonzero(~np.isnan(self.taken))
        span = None
        if len(has):  # a naive time is printed naive: no offset invented for a camera's local clock
            ends = (has[np.argmin(self.taken[has])], has[np.argmax(self.taken[has])])
            span = [datetime.fromtimestamp(self.taken[i], timezone.utc).replace(
                tzinfo=None if self.naive[i] else timezone.utc).isoformat() for i in ends]
        return {"species": self.species.counts(), "cameras": self.camera.counts(), "taken_at": span,
                "source_labels": self.source_label.counts(),
                "with_location": int(np.sum(~np.isnan(self.lat))),
                "verified": {"verified": int(self.verified.sum()), "unverified": int(self.n - self.verified.sum())},
                "hidden": {"empty": int(self.empty().sum()), "person": int(self.person().sum())}}
