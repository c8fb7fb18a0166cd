"""Where image queries run: a small pool of background-priority threads, and memory handed back.

A query image is decoded and encoded off the event loop, on at most ``serve.max_concurrent_images``
threads, each niced (Linux: a thread has its own nice value), so that on a busy machine the
scheduler keeps text queries ahead of a large decode. glibc keeps the memory a freed image buffer
used unless told otherwise: large buffers are always mmapped (a fixed threshold, not glibc's
rising one) and each image query ends with ``malloc_trim`` — measured in docs/BENCHMARKS.md
(benchmarks/serve_load.py).
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
M_MMAP_THRESHOLD = -3
BACKGROUND_NICE = 10

try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc: nothing to tune
    _libc = None


def release_large_buffers() -> None:
    """Large allocations are mmapped, so freeing them returns them to the system at once."""
    if _libc is not None:
        _libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)


def trim() -> None:
    if _libc is not None:
        _libc.malloc_trim(0)


def _background() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (OSError, AttributeError):  # not permitted / not Linux: run at normal priority
        pass


def image_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-query", initializer=_background)


def trimmed(fn: Callable[..., T]) -> Callable[..., T]:
    def run(*args, **kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            trim()

    return run
