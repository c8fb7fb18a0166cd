"""Search over a built index: text or image query → top-k media with scores.

A search bundle is a folder: ``index.faiss``, ``metadata.parquet``, ``index.json`` (kind, search
parameters, measured recall and latency, model reference) and ``model/`` (the CLIP weights and
architecture). The published ``cerebro-search`` pyfunc model carries exactly this folder.

Query path: tokenize → :class:`cerebro_core.model.text.FastTextEncoder` (tokens cut after EOT, exact;
int8 projections on CPU, measured) → LRU cache → FAISS with the tuned parameter;
filters (source, media type) use FAISS ID selectors, so they never cost recall.
"""

from __future__ import annotations

import json
import os
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from cerebro_core.data import images
from cerebro_core.home import cerebro_home
from cerebro_core.model.registry import load_clip_from_folder
from cerebro_core.model.text import FastTextEncoder
from cerebro_core.index.build import deserialize, search_params
from cerebro_core.index.rows import read_rows

MAX_QUERY_CHARS = 1000
MAX_K = 1000


class QueryError(ValueError):
    """A bad query: the API answers 4xx with this message."""


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
        self.index = deserialize((d / "index.faiss").read_bytes())
        self.rows = read_rows(d, cerebro_home())
        self.kind = self.info["kind"]
        self.param = next(iter(self.info.get("params", {}).values()), None)
        self.clip = load_clip_from_folder(d / "model")
        if text_int8 is None:
            text_int8 = os.environ.get("CEREBRO_TEXT_INT8", "1") != "0"
        self.text_int8 = bool(text_int8) and not torch.cuda.is_available()
        # exact fp32 (GPU or CEREBRO_TEXT_INT8=0) or int8 projections (CPU default, measured)
        self.text_model = FastTextEncoder(self.clip.model, int8=self.text_int8)
        self.cache = _LRU(cache_size)
        # one query at a time per tower; the text and image towers are separate modules, so a slow
        # image query never holds a text query back
        self._text_lock, self._image_lock = threading.Lock(), threading.Lock()
        self._selectors: dict = {}
        self.sources = sorted({r["source"] for r in self.rows})
        self.media_types = sorted({r["media_type"] for r in self.rows})
        if threads:
            torch.set_num_threads(threads)

    # ---- validation ----------------------------------------------------------------
    def _check(self, k: int, source: Optional[str], media: Optional[str]) -> None:
        check_query(None, k, media)
        if source is not None and source not in self.sources:
            raise QueryError(f"unknown source {source!r}; known: {', '.join(self.sources)}")

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
    def _selector(self, source: Optional[str], media: Optional[str]):
        if source is None and media is None:
            return None
        key = (source, media)
        if key not in self._selectors:
            import faiss

            m = "video_frame" if media == "video" else media
            ids = np.array([i for i, r in enumerate(self.rows)
                            if (source is None or r["source"] == source) and (m is None or r["media_type"] == m)],
                           dtype=np.int64)
            self._selectors[key] = (faiss.IDSelectorBatch(ids), ids)
        return self._selectors[key][0]

    def search_vector(self, v: np.ndarray, k: int = 10, source: Optional[str] = None,
                      media: Optional[str] = None) -> list[dict]:
        self._check(k, source, media)
        k_eff = min(k, self.index.ntotal)
        if k_eff == 0:
            return []
        params = search_params(self.index, self.kind, self.param, sel=self._selector(source, media))
        D, I = self.index.search(np.ascontiguousarray(v[None, :], dtype=np.float32), k_eff, params=params)
        out = []
        for score, i in zip(D[0], I[0]):
            if i < 0:
                continue
            r = self.rows[int(i)]
            out.append({"id": int(i), "score": float(score), **{k2: r.get(k2) for k2 in
                        ("uri", "path", "source_root", "source", "media_type", "video_ts", "width", "height",
                         "sha256", "pseudo_label", "pseudo_score")}})
        return out

    def search(self, query: str, k: int = 10, source: Optional[str] = None, media: Optional[str] = None,
               max_chars: int = MAX_QUERY_CHARS) -> list[dict]:
        check_query(query, max_chars=max_chars)  # the text; k, media and source below
        self._check(k, source, media)
        return self.search_vector(self.encode_text(query), k, source, media)

    def search_image(self, data: bytes, k: int = 10, source: Optional[str] = None, media: Optional[str] = None,
                     max_pixels: int = images.DEFAULT_MAX_PIXELS) -> list[dict]:
        self._check(k, source, media)
        return self.search_vector(self.encode_image(data, max_pixels), k, source, media)

    def record(self, i: int) -> dict:
        if not 0 <= i < len(self.rows):
            raise KeyError(i)
        return self.rows[i]
