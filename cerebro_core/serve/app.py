"""The search API and page.

GET  /healthz                      status, serving version, collection size
GET  /search?q=&k=&source=&media=  text search
POST /search/image                 multipart ``file``: image search (≤ serve.max_upload_mb)
GET  /images/{id}                  the indexed media, by id only (video stills rendered as JPEG)
GET  /                             a page that searches as you type

The server follows the ``champion`` alias of ``cerebro-search``: a background thread polls the
registry and swaps in a new version (loaded fully before the swap), so no restart is needed.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from cerebro_core.config import ServeConfig
from cerebro_core.index.search import MAX_K, QueryError, Searcher

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


def _hit(h: dict) -> dict:
    return {**h, "image_url": f"/images/{h['id']}"}


class BodyLimit:
    """Refuses a request body over ``max_bytes`` on ``paths`` with 413: at once when its
    Content-Length says so, else as soon as the bytes received pass the limit (nothing more is read
    or spooled to disk)."""

    def __init__(self, app, max_bytes: int, paths: tuple[str, ...]) -> None:
        self.app, self.max_bytes, self.paths = app, max_bytes, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        detail = f"upload larger than {self.max_bytes / 2**20:g} MB"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes + ENVELOPE:
            return await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes + ENVELOPE:
                    raise HTTPException(status_code=413, detail=detail)
            return msg

        return await self.app(scope, limited, send)


ENVELOPE = 64 * 1024  # multipart boundaries and headers around the file


def create_app(holder: Holder, cfg: Optional[ServeConfig] = None) -> FastAPI:
    cfg = cfg or ServeConfig()
    app = FastAPI(title="Cerebro search", version="1")
    max_upload_mb = cfg.max_upload_mb
    max_bytes = int(max_upload_mb * 2**20)
    app.add_middleware(BodyLimit, max_bytes=max_bytes, paths=("/search/image",))
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=cfg.allowed_hosts)  # outermost: checked first

    @app.on_event("startup")
    def _start() -> None:  # pragma: no cover - exercised by the server tests
        holder.start()

    @app.on_event("shutdown")
    def _stop() -> None:  # pragma: no cover
        holder.stop()

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
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(status_code=413, detail=f"upload larger than {max_upload_mb:g} MB")
        if not data:
            raise HTTPException(status_code=400, detail="empty upload")
        s = holder.searcher
        t0 = time.perf_counter()
        hits = s.search_image(data, k=k, source=source or None, media=media or None)
        return {"k": k, "version": holder.version, "took_ms": (time.perf_counter() - t0) * 1000,
                "results": [_hit(h) for h in hits]}

    @app.get("/images/{item_id}")
    def image(item_id: str):
        s = holder.searcher
        try:  # decimal digits only: int() would also read "1_0" as 10, " 7" as 7, "٣" as 3
            r = s.record(int(item_id) if item_id.isascii() and item_id.isdigit() and len(item_id) < 13 else -1)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"no indexed item {item_id[:40]!r}") from None
        path = Path(r["uri"])
        if r["media_type"] == "video_frame":
            from cerebro_core.embed import read_still

            buf = io.BytesIO()
            try:
                read_still(str(path), r["video_ts"] or 0.0).save(buf, format="JPEG", quality=90)
            except Exception as exc:  # the video moved, was truncated or replaced: as for a gone image
                log.warning("item %s: video still unreadable: %s", item_id, exc)
                raise HTTPException(status_code=410, detail=f"item {item_id} is no longer readable") from None
            return Response(buf.getvalue(), media_type="image/jpeg")
        try:
            data = path.read_bytes()
        except OSError:
            raise HTTPException(status_code=410, detail=f"item {item_id} is no longer readable") from None
        ext = path.suffix.lower().lstrip(".")
        mt = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
              "gif": "image/gif", "bmp": "image/bmp"}.get(ext, "application/octet-stream")
        return Response(data, media_type=mt, headers={"Cache-Control": "max-age=3600"})

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
