"""The indexed media as the API serves them: originals and thumbnails, by index row only.

An item is served only while its path still resolves inside its source folder and, for an image,
still has the bytes (sha256) it was indexed with; otherwise 410. Thumbnails (longer side ≤ 256 px,
JPEG) are made once per content hash and kept in storage (an fsspec URL: local or s3://).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from fastapi import HTTPException
from fastapi.responses import Response

from cerebro_core.data import images
from cerebro_core.data.paths import inside

log = logging.getLogger("cerebro.serve")
THUMB_PX = 256
IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "gif": "image/gif", "bmp": "image/bmp"}


def gone(item_id: str, why: str) -> HTTPException:
    log.warning("item %s not served: %s", item_id, why)
    return HTTPException(status_code=410, detail=f"item {item_id} is no longer {why}")


def _contained(r: dict, item_id: str) -> str:
    uri, root = r["uri"], r.get("source_root")
    if not (inside(root, uri) if root else os.path.realpath(uri) == os.path.abspath(uri)):
        raise gone(item_id, "inside its source folder")  # a symlink repointed since indexing
    return uri


def _still(r: dict, item_id: str):
    from cerebro_core.embed import read_still

    try:
        return read_still(_contained(r, item_id), r["video_ts"] or 0.0)
    except HTTPException:
        raise
    except Exception as exc:  # the video moved, was truncated or replaced: as for a gone image
        raise gone(item_id, f"readable ({type(exc).__name__})") from None


def _image_bytes(r: dict, item_id: str) -> bytes:
    try:
        data = Path(_contained(r, item_id)).read_bytes()
    except OSError:
        raise gone(item_id, "readable") from None
    if r.get("sha256") and hashlib.sha256(data).hexdigest() != r["sha256"]:
        raise gone(item_id, "the file that was indexed (its bytes changed)")
    return data


def _jpeg(img, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def original(r: dict, item_id: str) -> Response:
    if r["media_type"] == "video_frame":
        return Response(_jpeg(_still(r, item_id), 90), media_type="image/jpeg")
    data = _image_bytes(r, item_id)
    mt = IMAGE_TYPES.get(Path(r["uri"]).suffix.lower().lstrip("."), "application/octet-stream")
    return Response(data, media_type=mt, headers={"Cache-Control": "max-age=3600"})


class Thumbnails:
    """Made once, then read from ``root`` (``<root>/<hash[:2]>/<hash>.jpg``); no root: made each time.

    A thumbnail follows its original: a cached one is served only while the original is still
    there and still the file that was indexed, as ``/images/ID`` requires (410 otherwise). Checking
    costs a stat per request; the original is read and hashed again only when its stat (size,
    mtime, inode) differs from when it was last checked in this process (bounded memory: LRU)."""

    CHECKED_MAX = 100_000

    def __init__(self, storage=None, root: Optional[str] = None):
        self.storage, self.root = storage, root.rstrip("/") if root else None
        self.made = 0
        self._checked: OrderedDict[str, tuple] = OrderedDict()

    def _original_unchanged(self, r: dict, item_id: str) -> None:
        uri = _contained(r, item_id)
        try:
            st = os.stat(uri)
        except OSError:
            raise gone(item_id, "readable") from None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._checked.get(uri) != sig:
            if r["media_type"] == "video_frame":
                _still(r, item_id)
            else:
                _image_bytes(r, item_id)  # 410 when its bytes changed
        self._checked[uri] = sig
        self._checked.move_to_end(uri)
        while len(self._checked) > self.CHECKED_MAX:
            self._checked.popitem(last=False)

    def get(self, r: dict, item_id: str) -> bytes:
        key = re.sub(r"[^0-9a-f]", "_", (r.get("sha256") or f"item-{item_id}").lower())
        url = f"{self.root}/{key[:2]}/{key}.jpg" if self.root else None
        if url and self.storage.exists(url):
            self._original_unchanged(r, item_id)  # gone, moved out of its folder or changed: 410
            return self.storage.read_bytes(url)
        if r["media_type"] == "video_frame":
            img = _still(r, item_id)
        else:
            try:
                img = images.decode(_image_bytes(r, item_id), draft=THUMB_PX)
            except images.ImageRejected as exc:
                raise gone(item_id, f"decodable ({exc.reason})") from None
        img.thumbnail((THUMB_PX, THUMB_PX))
        data = _jpeg(img, 85)
        self.made += 1
        if url:
            self.storage.write_bytes(url, data)
        return data
