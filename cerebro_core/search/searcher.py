"""Search over a built index: text or image query → top-k media with scores.

A search bundle is a folder: ``index.faiss``, ``metadata.arrow`` (memory-mapped rows), ``index.json`` (kind, search
parameters, measured recall and latency, model reference) and ``model/`` (the CLIP weights and
architecture). The published ``cerebro-search`` pyfunc model carries exactly this folder.

Query path: tokenize → :class:`cerebro_core.model.text.FastTextEncoder` (tokens cut after EOT, exact;
int8 projections on CPU, measured) → LRU cache → FAISS with the tuned parameter; filters
(:mod:`cerebro_core.search.filters`: species, time, place, camera, source, media) become a FAISS
ID selector, collapsing and pagination work on the ranked list.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from cerebro_core.data import images
from cerebro_core.home import cerebro_home
from cerebro_core.model.registry import load_clip_from_folder
from cerebro_core.model.text import query_tower
from cerebro_core.ann.store import load
from cerebro_core.search.columns import Columns
from cerebro_core.search.filters import MAX_K, MAX_QUERY_CHARS, Filters, QueryError, check_query
from cerebro_core.search.rows import read_rows


class _LRU:
    def __init__(self, size: int = 4096):
        self.size, self.data, self.lock = size, OrderedDict(), threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                self.hits += 1
                return self.data[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


class Searcher:
    def __init__(self, bundle_dir: str | Path, cache_size: int = 4096, threads: Optional[int] = None,
                 text_int8: Optional[bool] = None):
        d = Path(bundle_dir)
        self.dir = d
        self.info = json.loads((d / "index.json").read_text())
        self.kind = self.info["kind"]
        self.index = load(d, self.info)  # one index or shards: one handle, at its tuned setting
        self.rows = read_rows(d, cerebro_home())
        self.clip = load_clip_from_folder(d / "model")
        if text_int8 is None:
            text_int8 = os.environ.get("CEREBRO_TEXT_INT8", "1") != "0"
        # on the GPU when one is visible (exact fp32), else int8 projections on the CPU (default, measured)
        self.text_model = query_tower(self.clip.model, bool(text_int8), torch.cuda.is_available())
        self.text_int8 = self.text_model.int8
        self.cache = _LRU(cache_size)
        # one query at a time per tower; the text and image towers are separate modules, so a slow
        # image query never holds a text query back
        self._text_lock, self._image_lock = threading.Lock(), threading.Lock()
        self.columns = Columns(self.rows, self.info.get("species_vocabulary"))
        self._vectors = None  # vectors.npy, memory-mapped on first "more like this"
        self.verified: dict[int, dict] = {}  # id → a person's verification (set_verified)
        self.sources = self.columns.source.present()
        self.media_types = self.columns.media.present()
        if threads:
            torch.set_num_threads(threads)

    # ---- validation ----------------------------------------------------------------
    def _check(self, k: int, source: Optional[str], media: Optional[str], filters: Optional[Filters] = None) -> Filters:
        check_query(None, k, media)
        if source is not None and source not in self.sources:
            raise QueryError(f"unknown source {source!r}; known: {', '.join(self.sources)}")
        f = filters or Filters()
        if source is not None or media is not None:
            f = f.model_copy(update={k2: v for k2, v in (("source", source), ("media", media)) if v is not None})
        self.columns.check(f, self.sources)
        return f

    # ---- encoding --------------------------------------------------------------------
    def encode_text(self, query: str) -> np.ndarray:
        key = " ".join(query.split()).lower()
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        with self._text_lock, torch.inference_mode():
            tokens = self.clip.tokenizer([query])
            v = F.normalize(self.text_model(tokens).float(), dim=-1).numpy()[0]
        self.cache.put(key, v)
        return v

    def encode_image(self, data: bytes, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> np.ndarray:
        """A query image: over ``max_pixels`` is refused before decoding; a JPEG is decoded at the
        smallest DCT scale that still leaves twice the model's input size (a 24-Mpx photo then
        costs ~1/64 of its full-size memory)."""
        try:
            img = images.decode(data, max_pixels=max_pixels, draft=2 * self.clip.image_size)
        except images.ImageRejected as exc:
            raise QueryError(f"not a usable image: {exc}") from None
        x = self.clip.preprocess_val(img).unsqueeze(0)
        del img
        with self._image_lock, torch.inference_mode():
            return F.normalize(self.clip.model.encode_image(x).float(), dim=-1).numpy()[0]

    # ---- search ----------------------------------------------------------------------
    def ranked(self, v: np.ndarray, need: int, f: Filters) -> list[tuple[int, float, int]]:
        """The best ``need`` (id, score, group size) passing ``f``: filtered inside FAISS, cut at
        ``min_score``, one per group when collapsing (more candidates are fetched until ``need``
        groups are found or the matching items run out)."""
        mask = self.columns.mask(f)
        ids = np.flatnonzero(mask) if mask is not None else None
        n_match = len(ids) if ids is not None else self.index.ntotal
        if n_match == 0 or need <= 0:
            return []
        keys = self.columns.group_key(f)
        sizes = np.bincount(keys[ids] if ids is not None else keys) if keys is not None else None
        fetch = need if keys is None else need * 4
        q = np.ascontiguousarray(v[None, :], dtype=np.float32)
        while True:
            kk = min(fetch, n_match)
            D, I = self.index.search(q, kk, ids=ids)  # the filter inside FAISS, as an ID selector
            pairs = [(int(i), float(d)) for d, i in zip(D[0], I[0]) if i >= 0]
            cut = f.min_score is not None and bool(pairs) and pairs[-1][1] < f.min_score
            if f.min_score is not None:
                pairs = [(i, d) for i, d in pairs if d >= f.min_score]
            if keys is None:
                out = [(i, d, 1) for i, d in pairs]
            else:
                seen: set = set()
                out = []
                for i, d in pairs:
                    if keys[i] not in seen:
                        seen.add(keys[i])
                        out.append((i, d, int(sizes[keys[i]])))
            if len(out) >= need or kk >= n_match or cut:
                return out[:need]
            fetch *= 4

    def all_matches(self, v: np.ndarray, filters: Filters) -> list[tuple[int, float, int]]:
        """Every item passing ``filters`` (after ``min_score`` and collapsing), best first, or in
        time order with ``sort=date``; ``offset`` is ignored."""
        f = self._check(1, None, None, filters)
        out = self.ranked(v, self.matches(f), f)
        return self._by_date(out) if f.sort == "date" else out

    def all_filtered(self, filters: Filters) -> list[tuple[int, None, int]]:
        """Every item passing ``filters`` with no query (an export of a filter): in index order, or
        in time order with ``sort=date``; ``min_score`` and collapsing need a query."""
        f = self._check(1, None, None, filters)
        if f.min_score is not None or f.collapse != "none":
            raise QueryError(f"{'min_score' if f.min_score is not None else 'collapse'}: needs a query (q)")
        mask = self.columns.mask(f)
        ids = np.flatnonzero(mask) if mask is not None else np.arange(self.index.ntotal)
        out = [(int(i), None, 1) for i in ids]
        return self._by_date(out) if f.sort == "date" else out

    def _by_date(self, hits: list[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
        """In time order; items without a time last (stable: best first among them)."""
        t = self.columns.taken
        return sorted(hits, key=lambda h: (np.isnan(t[h[0]]), 0.0 if np.isnan(t[h[0]]) else t[h[0]]))

    def matches(self, f: Filters) -> int:
        mask = self.columns.mask(f)
        return int(mask.sum()) if mask is not None else self.index.ntotal

    def search_vector(self, v: np.ndarray, k: int = 10, source: Optional[str] = None,
                      media: Optional[str] = None, filters: Optional[Filters] = None) -> list[dict]:
        f = self._check(k, source, media, filters)
        if f.sort == "date":  # the best MAX_K (at least offset + k) by score, in time order
            top = self._by_date(self.ranked(v, max(f.offset + k, MAX_K), f))
        else:
            top = self.ranked(v, f.offset + k, f)
        return [self.hit(i, score, size) for i, score, size in top[f.offset:f.offset + k]]

    def set_verified(self, by_id: dict[int, dict]) -> None:
        """Person-verified labels, ``{id: {"label", "reviewer", "time"}}``: each wins over the model's
        guess in hits, filters, facets and exports (the guess stays as ``model_species``)."""
        self.columns.verify({i: v["label"] for i, v in by_id.items()})
        self.verified = by_id

    def hit(self, i: int, score: float, group_size: int = 1) -> dict:
        h = {"id": i, "score": score, "group_size": group_size, **{k: v for k, v in self.rows[i].items() if k != "id"}}
        v = self.verified.get(i)
        h.update(model_species=h.get("species"), model_species_score=h.get("species_score"), verified=v is not None,
                 verified_by=v and v.get("reviewer"), verified_at=v and v.get("time"))
        if v is not None:
            h["species"], h["species_score"] = v["label"], 1.0
        return h

    def search(self, query: str, k: int = 10, source: Optional[str] = None, media: Optional[str] = None,
               max_chars: int = MAX_QUERY_CHARS, filters: Optional[Filters] = None) -> list[dict]:
        check_query(query, max_chars=max_chars)  # the text; k, media, source and filters below
        f = self._check(k, source, media, filters)
        return self.search_vector(self.encode_text(query), k, filters=f)

    def search_image(self, data: bytes, k: int = 10, source: Optional[str] = None, media: Optional[str] = None,
                     max_pixels: int = images.DEFAULT_MAX_PIXELS, filters: Optional[Filters] = None) -> list[dict]:
        f = self._check(k, source, media, filters)
        return self.search_vector(self.encode_image(data, max_pixels), k, filters=f)

    def vector_of(self, i: int) -> np.ndarray:
        """The stored embedding of item ``i`` ("more like this")."""
        self.record(i)
        if self._vectors is None:
            path = self.dir / "vectors.npy"
            self._vectors = np.load(path, mmap_mode="r", allow_pickle=False) if path.exists() else False
        v = (np.asarray(self._vectors[i], dtype=np.float32) if self._vectors is not False
             else self.index.reconstruct(int(i)).astype(np.float32))
        return v / max(float(np.linalg.norm(v)), 1e-12)

    def search_like(self, i: int, k: int = 10, filters: Optional[Filters] = None) -> list[dict]:
        """Items like item ``i`` (itself left out)."""
        f = self._check(k, None, None, filters)
        hits = self.search_vector(self.vector_of(i), k + 1, filters=f)
        return [h for h in hits if h["id"] != i][:k]

    def record(self, i: int) -> dict:
        if not 0 <= i < len(self.rows):
            raise KeyError(i)
        return self.rows[i]
