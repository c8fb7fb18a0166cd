"""Runs inside img2dataset's environment and its worker processes (Pillow + stdlib only).

img2dataset decodes with ``cv2.imdecode``, which accepts truncated JPEGs (it fills the missing
rows with grey) and decodes a 30000x30000 PNG in full before any size check. ``SafeResizer`` puts
the project's one safe decoder (:mod:`cerebro_core.data.images`) in front of img2dataset's own
resizer, so such rows are counted as failures and never written into a shard.
"""

from __future__ import annotations

import functools

from img2dataset.resizer import Resizer

from cerebro_core.data import images


class SafeResizer(Resizer):
    def __init__(self, *args, max_image_pixels: int = images.DEFAULT_MAX_PIXELS, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_image_pixels = max_image_pixels

    def __call__(self, img_stream, blurring_bbox_list=None):
        img_stream.seek(0)
        reason = images.check(img_stream.read(), max_pixels=self.max_image_pixels)
        if reason is not None:
            return None, None, None, None, None, reason
        img_stream.seek(0)
        return super().__call__(img_stream, blurring_bbox_list)


def install(max_image_pixels: int) -> None:
    """Make ``img2dataset.download`` build a SafeResizer (pickled by reference to the workers)."""
    import sys

    import img2dataset  # noqa: F401  (img2dataset.main is shadowed by the function `main`)

    i2d_main = sys.modules["img2dataset.main"]

    i2d_main.Resizer = functools.partial(SafeResizer, max_image_pixels=max_image_pixels)
