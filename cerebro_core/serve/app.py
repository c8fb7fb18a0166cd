"""The search API and page.

GET  /healthz                      status, serving version, collection size
GET  /search?q=&k=&source=&media=  text search
POST /search/image                 multipart ``file``: image search (≤ serve.max_upload_mb)
GET  /images/{id}                  the indexed media, by id only (video stills rendered as JPEG)
GET  /                             a page that searches as you type

With ``serve.token`` set, every route but ``/`` needs ``Authorization: Bearer <token>`` (or the
page's cookie). Hits name an item by its path relative to its source folder, never by a path of
this machine; ``/images/{id}`` serves an item only while it still resolves inside its source
folder and (images) still has the bytes that were indexed.

The server follows the ``champion`` alias of ``cerebro-search``: a background thread polls the
registry and swaps in a new version (loaded fully before the swap), so no restart is needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cerebro_core.config import ServeConfig
from cerebro_core.data.paths import inside
from cerebro_core.index.search import MAX_K, QueryError, Searcher
from cerebro_core.serve.guards import BearerToken, BodyLimit, Slots
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


PUBLIC = ("id", "score", "source", "media_type", "video_ts", "width", "height", "pseudo_label", "pseudo_score")
IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "gif": "image/gif", "bmp": "image/bmp"}


def _hit(h: dict) -> dict:
    """What a response shows of a hit: no path of this machine, no content hash."""
    return {**{k: h.get(k) for k in PUBLIC}, "uri": h.get("path"), "image_url": f"/images/{h['id']}"}


def _gone(item_id: str, why: str) -> HTTPException:
    log.warning("item %s not served: %s", item_id, why)
    return HTTPException(status_code=410, detail=f"item {item_id} is no longer {why}")


def _media(r: dict, item_id: str) -> Response:
    """The indexed item as it is now, if it is still what was indexed, where it was indexed."""
    uri, root = r["uri"], r.get("source_root")
    if not (inside(root, uri) if root else os.path.realpath(uri) == os.path.abspath(uri)):
        raise _gone(item_id, "inside its source folder")  # a symlink repointed since indexing
    if r["media_type"] == "video_frame":
        from cerebro_core.embed import read_still

        buf = io.BytesIO()
        try:
            read_still(uri, r["video_ts"] or 0.0).save(buf, format="JPEG", quality=90)
        except Exception as exc:  # the video moved, was truncated or replaced: as for a gone image
            raise _gone(item_id, f"readable ({type(exc).__name__})") from None
        return Response(buf.getvalue(), media_type="image/jpeg")
    try:
        data = Path(uri).read_bytes()
    except OSError:
        raise _gone(item_id, "readable") from None
    if r.get("sha256") and hashlib.sha256(data).hexdigest() != r["sha256"]:
        raise _gone(item_id, "the file that was indexed (its bytes changed)")
    mt = IMAGE_TYPES.get(Path(uri).suffix.lower().lstrip("."), "application/octet-stream")
    return Response(data, media_type=mt, headers={"Cache-Control": "max-age=3600"})


def create_app(holder: Holder, cfg: Optional[ServeConfig] = None) -> FastAPI:
    cfg = cfg or ServeConfig()
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
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=cfg.allowed_hosts)  # outermost: checked first

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

    @app.get("/healthz")
    def healthz() -> dict:
        s = holder.searcher
        return {"status": "ok", "version": holder.version, "n": s.index.ntotal, "kind": s.kind,
                "sources": s.sources, "media_types": s.media_types}

    @app.get("/search")
    def search(q: str = Query("", max_length=100_000), k: int = Query(10), source: Optional[str] = None,
               media: Optional[str] = None) -> dict:
        s = holder.searcher
        t0 = time.perf_counter()
        hits = s.search(q, k=k, source=source or None, media=media or None, max_chars=cfg.max_query_chars)
        return {"query": q, "k": k, "version": holder.version, "took_ms": (time.perf_counter() - t0) * 1000,
                "results": [_hit(h) for h in hits]}

    @app.post("/search/image")
    async def search_image(file: UploadFile = File(...), k: int = Query(10), source: Optional[str] = None,
                           media: Optional[str] = None) -> dict:
        data = await file.read(max_bytes + 1)  # Slots (serve.max_concurrent_images) let this request in
        if len(data) > max_bytes:
            raise HTTPException(status_code=413, detail=f"upload larger than {max_upload_mb:g} MB")
        if not data:
            raise HTTPException(status_code=400, detail="empty upload")
        s = holder.searcher
        t0 = time.perf_counter()
        hits = await asyncio.get_running_loop().run_in_executor(  # decoding: off the event loop, niced
            pool, trimmed(s.search_image), data, k, source or None, media or None, cfg.max_query_pixels)
        return {"k": k, "version": holder.version, "took_ms": (time.perf_counter() - t0) * 1000,
                "results": [_hit(h) for h in hits]}

    @app.get("/images/{item_id}")
    def image(item_id: str):
        try:  # decimal digits only: int() would also read "1_0" as 10, " 7" as 7, "٣" as 3
            r = holder.searcher.record(
                int(item_id) if item_id.isascii() and item_id.isdigit() and len(item_id) < 13 else -1)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no indexed item {item_id[:40]!r}") from None
        return _media(r, item_id)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text().replace("{{MAX_K}}", str(MAX_K))

    return app


def registry_holder(model_uri: str, interval_s: float = 5.0) -> Holder:
    """A holder that serves ``model_uri`` (e.g. models:/cerebro-search@champion) and follows it."""
    from cerebro_core import tracking
    from cerebro_core.index.publish import load_searcher

    def probe() -> Optional[str]:
        if not model_uri.startswith("models:/") or "@" not in model_uri:
            return None
        name, _, alias = model_uri[len("models:/"):].partition("@")
        return str(tracking.client().get_model_version_by_alias(name, alias).version)

    return Holder(lambda: load_searcher(model_uri), probe, interval_s)
