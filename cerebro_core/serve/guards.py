"""ASGI guards in front of the search API: a request body limit, a bound on concurrent image
queries and an optional bearer token.

They run before FastAPI parses anything, so a refused request costs no body read, no spooled
temporary file and no model work."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from urllib.parse import parse_qs, unquote

from fastapi import HTTPException
from fastapi.responses import JSONResponse

ENVELOPE = 64 * 1024  # multipart boundaries and headers around an uploaded file
TOKEN_COOKIE = "cerebro_token"


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


def _cookie_values(header: str, name: str) -> list[bytes]:
    """Every value of cookie ``name`` in a Cookie header, each as sent and URL-decoded (the page
    stores the token with encodeURIComponent). Split by hand: one cookie of another app on this
    host that SimpleCookie cannot parse (``prefs={"theme":"dark"}``) must not hide ours."""
    out = []
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out += [value.encode("latin-1"), unquote(value).encode("utf-8", "replace")]  # the bytes sent; decoded
    return out


def _presented(headers: dict[bytes, bytes]) -> list[bytes]:
    """The tokens a request presents: its bearer header, else its token cookie (as sent and decoded)."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth[:7].lower() == "bearer ":
        return [auth[7:].strip().encode("latin-1")]
    return _cookie_values(headers.get(b"cookie", b"").decode("latin-1"), TOKEN_COOKIE)


SIGNED_PREFIXES = ("/images/", "/thumbnails/")  # what a signed link may fetch: one item's media


def sign(token: str | bytes, path: str, expires: int) -> str:
    """The signature of a link to ``path`` valid until ``expires`` (epoch seconds): HMAC-SHA256 keyed
    by a key derived from the token (the token itself never appears in a link)."""
    key = hmac.new(token if isinstance(token, bytes) else token.encode(), b"cerebro signed links", hashlib.sha256)
    return hmac.new(key.digest(), f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def signed_query(token: str, path: str, ttl_s: int) -> str:
    expires = int(time.time()) + ttl_s
    return f"exp={expires}&sig={sign(token, path, expires)}"


def _signed_ok(token: bytes, path: str, query: bytes) -> bool:
    """A link from ``/export?format=urls``: one item's media, its signature right, not expired."""
    if not path.startswith(SIGNED_PREFIXES):
        return False
    q = parse_qs(query.decode("latin-1"))
    try:
        (expires,), (sig,) = q["exp"], q["sig"]
        expires_at = int(expires)
    except (KeyError, ValueError):
        return False
    return expires_at >= time.time() and hmac.compare_digest(sig, sign(token, path, expires_at))


class BearerToken:
    """Every HTTP request except those for ``open_paths`` (the page itself, which holds no data)
    must present the token: ``Authorization: Bearer <token>``, or the ``cerebro_token`` cookie that
    the page sets (an ``<img>`` cannot send a header), or — for one item's media — a signed link
    that has not expired (:func:`sign`: what ``/export?format=urls`` writes, so img2dataset can
    fetch the list without the token). Compared in constant time; 401 otherwise."""

    def __init__(self, app, token: str, open_paths: tuple[str, ...] = ("/",)) -> None:
        self.app, self.token, self.open_paths = app, token.encode(), open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        if _signed_ok(self.token, scope["path"], scope.get("query_string", b"")):
            return await self.app(scope, receive, send)
        given = _presented(dict(scope["headers"]))
        if not any([hmac.compare_digest(t, self.token) for t in given]):  # every one compared
            resp = JSONResponse({"detail": "missing or wrong access token (serve.token)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


class Slots:
    """At most ``n`` requests on ``paths`` at once; one more is answered 503 with Retry-After
    before its body is read (a refused 10-MB upload costs no parsing and no temporary file)."""

    def __init__(self, app, n: int, paths: tuple[str, ...]) -> None:
        self.app, self.paths, self.sem = app, paths, asyncio.Semaphore(n)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        if self.sem.locked():
            resp = JSONResponse({"detail": "busy with other image queries; retry shortly"}, status_code=503,
                                headers={"Retry-After": "1"})
            return await resp(scope, receive, send)
        async with self.sem:
            return await self.app(scope, receive, send)
