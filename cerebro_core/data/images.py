"""The one image decoder with the safety limits.

Every stage that turns bytes into pixels goes through here: the downloader (inside img2dataset's
worker processes, so this module imports only Pillow and the standard library), adapt's
pseudo-labelling and the index stage's embedding. Problems come back as a short reason string
(one of :data:`REASONS`), never as a crash.
"""

from __future__ import annotations

import io
import warnings
from typing import Optional

from PIL import Image, ImageFile

# Pillow's own default (~89.5 Mpx); a 30000x30000 PNG (900 Mpx) is refused from its header alone.
DEFAULT_MAX_PIXELS = 89_478_485

REASONS = (
    "empty_body",
    "html_instead_of_image",
    "not_an_image",
    "decompression_bomb",
    "truncated_image",
    "corrupt_image",
)


class ImageRejected(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _looks_like_html(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in head


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, full_check: bool = True) -> Image.Image:
    """Open ``data`` as an image, enforcing the limits; raises :class:`ImageRejected`.

    - the pixel count is checked from the header, before any pixel is decoded (bomb-safe);
    - with ``full_check`` the whole stream is decoded so truncated files are caught
      (JPEGs are decoded at 1/8 scale via ``draft``, which still reads every byte).
    Returns a loaded image (for JPEG with full_check: the reduced-scale draft, so callers that
    need full resolution should call :func:`decode` instead).
    """
    if not data:
        raise ImageRejected("empty_body")
    if _looks_like_html(data):
        raise ImageRejected("html_instead_of_image")
    prev_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageRejected("decompression_bomb", str(exc)) from None
            except Exception as exc:  # UnidentifiedImageError, SyntaxError, ...
                raise ImageRejected("not_an_image", type(exc).__name__) from None
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageRejected("corrupt_image", f"size {w}x{h}")
        if w * h > max_pixels:
            raise ImageRejected("decompression_bomb", f"{w}x{h} exceeds {max_pixels} pixels")
        if full_check:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            try:
                img.load()
            except OSError as exc:
                msg = str(exc).lower()
                reason = "truncated_image" if "truncat" in msg or "broken data stream" in msg else "corrupt_image"
                raise ImageRejected(reason, str(exc)) from None
            except Exception as exc:
                raise ImageRejected("corrupt_image", f"{type(exc).__name__}: {exc}") from None
        return img
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev_truncated


def check(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """None when ``data`` is a complete, decodable image within the limits, else the reason."""
    try:
        open_checked(data, max_pixels=max_pixels, full_check=True)
        return None
    except ImageRejected as exc:
        return exc.reason


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, mode: str = "RGB",
           draft: Optional[int] = None) -> Image.Image:
    """Decode to an image in ``mode``; raises :class:`ImageRejected`.

    Full resolution, unless ``draft`` is given: then a JPEG is decoded at the smallest DCT
    scale (1/2, 1/4, 1/8) whose short side is still ≥ ``draft`` pixels (Pillow's ``draft``, as
    ``Image.thumbnail`` uses) — every byte is still read, so truncation is still caught; then
    ``max_pixels`` bounds the pixels decoded at that scale (the header is still bounded by
    Pillow's bomb limit). The stored size before any reduction is in ``img.info["original_size"]``."""
    img = open_checked(data, max_pixels=DEFAULT_MAX_PIXELS if draft else max_pixels, full_check=False)
    original_size = img.size
    if draft and img.format == "JPEG":
        w, h = img.size
        s = min(w, h)
        if s > draft:
            img.draft("RGB", (max(1, w * draft // s), max(1, h * draft // s)))
    if img.size[0] * img.size[1] > max_pixels:  # with draft: the pixels a JPEG decodes to at its reduced scale
        raise ImageRejected("decompression_bomb", f"{img.size[0]}x{img.size[1]} exceeds {max_pixels} pixels")
    try:
        img.load()
    except OSError as exc:
        msg = str(exc).lower()
        raise ImageRejected("truncated_image" if "truncat" in msg else "corrupt_image", str(exc)) from None
    except Exception as exc:
        raise ImageRejected("corrupt_image", f"{type(exc).__name__}: {exc}") from None
    if img.mode != mode:
        if img.mode in ("P", "LA", "RGBA", "PA") and mode == "RGB":
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, img)
        img = img.convert(mode)
    img.info["original_size"] = original_size
    return img
