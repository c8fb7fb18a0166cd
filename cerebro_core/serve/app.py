"""The search API and page.

GET  /healthz                 status, serving version, collection size (HEAD and OPTIONS too)
GET  /search?q=&k=&<filters>  text search; ?like=<id>: items like an indexed one (filters: species (repeatable), min_species_score, source,
                              media, date_from, date_to, bbox, camera, min_score, sort, collapse, offset)
POST /search/image?k=&<filters>  multipart ``file``: image search (≤ serve.max_upload_mb)
GET  /export?q=&format=csv|jsonl|urls&<filters>  every match from offset on, streamed (urls: for img2dataset);
                              no q: every item the filters keep
GET  /facets                  species and camera counts, the time span (for the page's controls)
GET  /images/{id}             the indexed media, by id only (video stills rendered as JPEG)
GET  /thumbnails/{id}         a JPEG, longer side ≤ 256 px, made once and kept in storage
GET  /                        a page that searches as you type, and reviews
POST /verify, GET /review     people verify the model's species tags (:mod:`cerebro_core.serve.review`);
                              a verified label wins over the guess in hits, facets, filters, exports

With ``serve.token`` set, every route but ``/`` needs ``Authorization: Bearer <token>`` (or the
page's cookie). Hits name an item as its user gave it (its s3:// or http URL, else its path
relative to its source folder), never by a path of this machine; ``/images/{id}`` serves an item only while it still resolves inside its source
folder and (images) still has the bytes that were indexed.

The server follows the ``champion`` alias of ``cerebro-search``: a background thread polls the
registry and swaps in a new version (loaded fully before the swap), so no restart is needed.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import threading
import time
from functools import partial
from pathlib import Path
from typing import Callable, Optional

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cerebro_core.config import ServeConfig
from cerebro_core.search.filters import MAX_K, Filters, QueryError, check_query, parse_filters, shown
from cerebro_core.search.searcher import Searcher
from cerebro_core.serve.media import Thumbnails, original
from cerebro_core.review.csvio import safe_cell
from cerebro_core.serve.guards import BearerToken, BodyLimit, Slots, signed_query
from cerebro_core.serve.review import Reviews, add_review_routes
from cerebro_core.serve.workers import image_pool, release_large_buffers, trimmed

log = logging.getLogger("cerebro.serve")
PAGE = Path(__file__).with_name("page.html")
Loader = Callable[[], tuple[str, Searcher]]
VersionProbe = Callable[[], Optional[str]]


class Holder:
    """The current searcher, swapped atomically when the champion version changes."""

    def __init__(self, loader: Loader, probe: Optional[VersionProbe] = None, interval_s: float = 5.0):
        self.loader, self.probe, self.interval_s = loader, probe, interval_s
        self.version, self.searcher = loader()
        self.loaded_at = time.time()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self.probe is not None and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="champion-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """Load the champion if it moved; True when a new version is now served."""
        try:
            v = self.probe() if self.probe else None
        except Exception as exc:  # registry unreachable: keep serving what we have
            log.warning("champion probe failed: %s", exc)
            return False
        if v is None or v == self.version:
            return False
        version, searcher = self.loader()
        self.version, self.searcher, self.loaded_at = version, searcher, time.time()
        log.info("now serving version %s", version)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as exc:
                log.warning("reload failed, still serving %s: %s", self.version, exc)


PUBLIC = ("id", "score", "source", "media_type", "video_ts", "width", "height", "species", "species_score",
          "taken_at", "lat", "lon", "camera", "sequence_id", "group_size", "verified", "verified_by", "verified_at",
          "model_species", "model_species_score", "source_label", "empty", "person")


def _hit(h: dict) -> dict:
    """What a response shows of a hit: no path of this machine, no content hash. ``uri`` is the
    item as its user gave it: its s3:// or http URL for a scrape from S3 or a URL list, else its
    path relative to its source folder."""
    return {**{k: h.get(k) for k in PUBLIC}, "uri": h.get("origin_uri") or h.get("path"),
            "image_url": f"/images/{h['id']}", "thumbnail_url": f"/thumbnails/{h['id']}"}


def _filters(species: list[str] = Query([]), min_species_score: Optional[str] = None, source: Optional[str] = None,
             media: Optional[str] = None, date_from: Optional[str] = None, date_to: Optional[str] = None,
             bbox: Optional[str] = None, camera: Optional[str] = None, min_score: Optional[str] = None,
             sort: Optional[str] = None, collapse: Optional[str] = None, offset: Optional[str] = None,
             verified: Optional[str] = None, show_empty: Optional[str] = None,
             source_label: Optional[str] = None) -> Filters:
    """The query's filters; a bad value is a 400 naming the parameter."""
    check_query(None, 1, media or None)
    return parse_filters(species=species, min_species_score=min_species_score, source=source, media=media,
                         date_from=date_from, date_to=date_to, bbox=bbox, camera=camera, min_score=min_score,
                         sort=sort, collapse=collapse, offset=offset, verified=verified, show_empty=show_empty,
                         source_label=source_label)


EXPORT_COLUMNS = ("id", "score", "uri", "source", "media_type", "video_ts", "species", "species_score", "taken_at",
                  "lat", "lon", "camera", "sequence_id", "group_size", "verified", "verified_by", "model_species",
                  "source_label", "empty", "image_url")


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as ours: the parameter named, the input cut to 200 characters."""
    msgs = []
    for e in exc.errors():
        name = ".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
        given = e.get("input")
        msgs.append(f"{name}: {e.get('msg', 'invalid')}" + ("" if given is None or isinstance(given, dict)
                                                             else f", got {shown(given)}"))
    return "; ".join(msgs)


def host_patterns(allowed: list[str]) -> list[str]:
    """``allowed_hosts`` as Starlette matches them: the Host header of an IPv6 literal keeps its
    brackets (``[::1]:8000``), so ``::1`` is matched as ``[::1]`` too."""
    return [*allowed, *(f"[{h}]" for h in allowed if ":" in h and not h.startswith("["))]


def create_app(holder: Holder, cfg: Optional[ServeConfig] = None, thumbnails: Optional[Thumbnails] = None,
               reviews: Optional[Reviews] = None) -> FastAPI:
    """``reviews``: the verifications of the storage root (none: no review routes, tags as guessed)."""
    cfg = cfg or ServeConfig()
    thumbnails = thumbnails or Thumbnails()
    app = FastAPI(title="Cerebro search", version="1")
    max_upload_mb = cfg.max_upload_mb
    max_bytes = int(max_upload_mb * 2**20)
    pool = image_pool(cfg.max_concurrent_images)
    release_large_buffers()
    app.add_middleware(BodyLimit, max_bytes=max_bytes, paths=("/search/image",))
    app.add_middleware(Slots, n=cfg.max_concurrent_images, paths=("/search/image",))  # before the body limit
    if cfg.token is not None:
        app.add_middleware(BearerToken, token=cfg.token.get_secret_value())
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=host_patterns(cfg.allowed_hosts))  # outermost: first

    @app.on_event("startup")
    def _start() -> None:  # pragma: no cover - exercised by the server tests
        holder.start()

    @app.on_event("shutdown")
    def _stop() -> None:  # pragma: no cover
        holder.stop()
        pool.shutdown(wait=False, cancel_futures=True)

    @app.exception_handler(QueryError)
    def _bad_query(request, exc: QueryError):
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    def current() -> Searcher:  # with the latest verifications applied, people shown only if configured
        s = reviews.sync(holder.searcher) if reviews is not None else holder.searcher
        s.columns.show_people = cfg.show_people
        return s

    if reviews is not None:
        add_review_routes(app, holder, reviews, cfg.read_only, _filters, _hit, cfg.max_query_chars)

    @app.exception_handler(RequestValidationError)
    def _bad_request(request, exc: RequestValidationError):  # FastAPI's own checks: the same 400 shape
        return JSONResponse(status_code=400, content={"detail": validation_message(exc)})

    @app.options("/healthz")
    def healthz_options() -> Response:
        return Response(status_code=204, headers={"Allow": "GET, HEAD, OPTIONS"})

    @app.api_route("/healthz", methods=["GET", "HEAD"])  # load balancers and probes send HEAD
    def healthz() -> dict:
        s = holder.searcher
        return {"status": "ok", "version": holder.version, "n": s.index.ntotal, "kind": s.kind,
                "sources": s.sources, "media_types": s.media_types}

    def _page(s: Searcher, hits: list[dict], f: Filters, k: int, t0: float) -> dict:
        return {"k": k, "offset": f.offset, "matches": s.matches(f), "version": holder.version,
                "took_ms": (time.perf_counter() - t0) * 1000, "results": [_hit(h) for h in hits]}

    @app.get("/search")
    def search(q: str = Query("", max_length=100_000), k: int = Query(10), like: Optional[str] = None,
               f: Filters = Depends(_filters)) -> dict:
        s = current()
        t0 = time.perf_counter()
        if like is not None:  # "more like this": an indexed item's own vector is the query
            if q:
                raise QueryError("like: give q or like, not both")
            if not (like.isascii() and like.isdigit() and len(like) < 13):
                raise QueryError(f"like: must be an item id (decimal digits), got {shown(like)}")
            _record(like)  # an indexed id, else 404
            hits = s.search_like(int(like), k, f)
            return {"like": int(like), **_page(s, hits, f, k, t0)}
        hits = s.search(q, k=k, max_chars=cfg.max_query_chars, filters=f)
        return {"query": q, **_page(s, hits, f, k, t0)}

    @app.post("/search/image")
    async def search_image(file: UploadFile = File(...), k: int = Query(10), f: Filters = Depends(_filters)) -> dict:
        data = await file.read(max_bytes + 1)  # Slots (serve.max_concurrent_images) let this request in
        if len(data) > max_bytes:
            raise HTTPException(status_code=413, detail=f"upload larger than {max_upload_mb:g} MB")
        if not data:
            raise HTTPException(status_code=400, detail="empty upload")
        s = current()
        t0 = time.perf_counter()
        hits = await asyncio.get_running_loop().run_in_executor(  # decoding: off the event loop, niced
            pool, trimmed(partial(s.search_image, filters=f)), data, k, None, None, cfg.max_query_pixels)
        return _page(s, hits, f, k, t0)

    @app.get("/export")
    def export(request: Request, q: str = Query("", max_length=100_000), format: str = Query("csv"),
               f: Filters = Depends(_filters)):
        """Every match of the query and filters, best first (``min_score`` cuts), from ``offset`` on,
        streamed; with no query, every item the filters keep (index order, or ``sort=date``)."""
        if format not in ("csv", "jsonl", "urls"):
            raise QueryError(f"format: must be csv, jsonl or urls, got {shown(format)}")
        s = current()
        if q:
            check_query(q, max_chars=cfg.max_query_chars)
            ranked = s.all_matches(s.encode_text(q), f)
        else:  # no query: everything the filters keep
            ranked = s.all_filtered(f)
        ranked = ranked[f.offset:]
        base = str(request.base_url).rstrip("/")

        def lines():
            if format == "csv":  # every line ends in CRLF (RFC 4180), the header as the rows
                buf = io.StringIO()
                csv.writer(buf).writerow(EXPORT_COLUMNS)
                yield buf.getvalue()
            for i, score, size in ranked:
                h = _hit(s.hit(i, score, size))
                if format == "urls":  # img2dataset --input_format txt: the original URL, else this server's
                    if h["uri"].startswith(("http://", "https://")):
                        yield h["uri"] + "\n"
                    elif cfg.token is not None:  # a signed link: fetched without the token, expires
                        yield f"{base}{h['image_url']}?{signed_query(cfg.token.get_secret_value(), h['image_url'], cfg.signed_link_ttl_s)}\n"
                    else:
                        yield base + h["image_url"] + "\n"
                elif format == "jsonl":
                    yield json.dumps(h) + "\n"
                else:
                    buf = io.StringIO()
                    csv.writer(buf).writerow(["" if h.get(c) is None else safe_cell(h[c]) for c in EXPORT_COLUMNS])
                    yield buf.getvalue()

        media_type = {"csv": "text/csv", "jsonl": "application/x-ndjson", "urls": "text/plain"}[format]
        return StreamingResponse(lines(), media_type=media_type,
                                 headers={"Content-Disposition": f'attachment; filename="cerebro-export.{format if format != "urls" else "txt"}"'})

    @app.get("/facets")
    def facets() -> dict:
        s = current()
        return {"version": holder.version, "n": s.index.ntotal, "sources": s.sources,
                "species_vocabulary": s.columns.vocabulary, **s.columns.facets(),
                "reviews": reviews is not None and not cfg.read_only}

    def _record(item_id: str) -> dict:
        s = current()
        i = int(item_id) if item_id.isascii() and item_id.isdigit() and len(item_id) < 13 else -1
        try:  # decimal digits only: int() would also read "1_0" as 10, " 7" as 7, "٣" as 3
            rec = s.record(i)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no indexed item {item_id[:40]!r}") from None
        if not cfg.show_people and s.columns.is_person(i):  # never served unless serve.show_people
            raise HTTPException(status_code=404, detail=f"no indexed item {item_id[:40]!r}")
        return rec

    @app.get("/images/{item_id}")
    def image(item_id: str):
        return original(_record(item_id), item_id)

    @app.get("/thumbnails/{item_id}")
    def thumbnail(item_id: str):
        return Response(thumbnails.get(_record(item_id), item_id), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=86400"})

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text().replace("{{MAX_K}}", str(MAX_K))

    return app


def registry_holder(model_uri: str, interval_s: float = 5.0) -> Holder:
    """A holder that serves ``model_uri`` (e.g. models:/cerebro-search@champion) and follows it."""
    from cerebro_core import tracking
    from cerebro_core.search.local_copy import load_searcher

    def probe() -> Optional[str]:
        if not model_uri.startswith("models:/") or "@" not in model_uri:
            return None
        name, _, alias = model_uri[len("models:/"):].partition("@")
        return str(tracking.client().get_model_version_by_alias(name, alias).version)

    return Holder(lambda: load_searcher(model_uri), probe, interval_s)
