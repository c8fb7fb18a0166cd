"""fsspec storage: one code path for a local folder and ``s3://`` (MinIO, moto, AWS).

Every stage reads and writes through :class:`Storage`, so a URL is all that crosses a process or
a machine. Writes of whole files are atomic: a local temp file renamed into place, or one S3 PUT of
a complete object (S3 never exposes a partial object).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import posixpath
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec

from cerebro_core.config import StorageConfig


def is_remote(url: str) -> bool:
    proto = url.split("://", 1)[0] if "://" in url else "file"
    return proto not in ("file", "local")


class RemoteDisabled(OSError):
    """A remote URL read inside :func:`local_only` (e.g. `cerebro plan` without --remote)."""


_LOCAL_ONLY = contextvars.ContextVar("cerebro_local_only", default=False)


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within this block no Storage touches a remote URL: it raises RemoteDisabled before any
    client is made (so no credential lookup, no cloud metadata query, no connection)."""
    token = _LOCAL_ONLY.set(True)
    try:
        yield
    finally:
        _LOCAL_ONLY.reset(token)


def join(base: str, *parts: str) -> str:
    if "://" in base:
        proto, rest = base.split("://", 1)
        return f"{proto}://" + posixpath.join(rest, *parts)
    return os.path.join(base, *parts)


class Storage:
    """Thin wrapper over fsspec that carries the configured credentials/endpoint."""

    def __init__(self, cfg: StorageConfig | None = None):
        self.cfg = cfg or StorageConfig()

    # ---- options ---------------------------------------------------------------
    def options(self, url: str) -> dict[str, Any]:
        """Storage options for fsspec/s3fs (also what img2dataset and webdataset get)."""
        if _LOCAL_ONLY.get() and is_remote(url):
            raise RemoteDisabled(f"{url}: remote, not read here (local only)")
        if not url.startswith(("s3://", "s3a://")):
            return {}
        opts: dict[str, Any] = {}
        c = self.cfg
        if c.anon:
            opts["anon"] = True
        if c.access_key_id:
            opts["key"] = c.access_key_id
        if c.secret_access_key is not None:
            opts["secret"] = c.secret_access_key.get_secret_value()
        client_kwargs: dict[str, Any] = {}
        endpoint = c.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        region = c.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            client_kwargs["region_name"] = region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts

    def fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = fsspec.core.url_to_fs(url, **self.options(url))
        if is_remote(url):
            # Other processes (img2dataset, torchrun ranks) write here too: never answer a
            # listing or existence query from s3fs's directory cache.
            fs.invalidate_cache()
        return fs, path

    # ---- queries -----------------------------------------------------------------
    def exists(self, url: str) -> bool:
        fs, path = self.fs(url)
        return fs.exists(path)

    def isdir(self, url: str) -> bool:
        fs, path = self.fs(url)
        return fs.isdir(path)

    def size(self, url: str) -> int:
        fs, path = self.fs(url)
        return int(fs.size(path))

    def glob(self, url_pattern: str) -> list[str]:
        fs, path = self.fs(url_pattern)
        proto = url_pattern.split("://", 1)[0] + "://" if "://" in url_pattern else ""
        return sorted(proto + p if proto and not p.startswith(proto) else p for p in fs.glob(path))

    def ls(self, url: str) -> list[str]:
        fs, path = self.fs(url)
        if not fs.exists(path):
            return []
        proto = url.split("://", 1)[0] + "://" if "://" in url else ""
        out = fs.ls(path, detail=False)
        return sorted(proto + p if proto and not p.startswith(proto) else p for p in out)

    # ---- reads -------------------------------------------------------------------
    def open(self, url: str, mode: str = "rb", **kw):
        return fsspec.open(url, mode, **self.options(url), **kw)

    def read_bytes(self, url: str) -> bytes:
        fs, path = self.fs(url)
        return fs.cat_file(path)

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode("utf-8")

    def read_json(self, url: str) -> Any:
        return json.loads(self.read_bytes(url))

    # ---- writes ------------------------------------------------------------------
    def makedirs(self, url: str) -> None:
        fs, path = self.fs(url)
        if is_remote(url):
            return  # object stores have no directories
        fs.makedirs(path, exist_ok=True)

    def write_bytes(self, url: str, data: bytes) -> None:
        """Atomic whole-file write."""
        fs, path = self.fs(url)
        if not is_remote(url):
            parent = os.path.dirname(path) or "."
            os.makedirs(parent, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            fs.pipe_file(path, data)

    def write_text(self, url: str, text: str) -> None:
        self.write_bytes(url, text.encode("utf-8"))

    def write_json(self, url: str, obj: Any) -> None:
        self.write_text(url, json.dumps(obj, indent=2, sort_keys=True, default=str))

    def put_file(self, local_path: str | os.PathLike, url: str) -> None:
        """Upload/copy a finished local file atomically."""
        fs, path = self.fs(url)
        if not is_remote(url):
            parent = os.path.dirname(path) or "."
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}")
            fs.put_file(str(local_path), tmp)
            os.replace(tmp, path)
        else:
            fs.put_file(str(local_path), path)

    def get_file(self, url: str, local_path: str | os.PathLike) -> None:
        fs, path = self.fs(url)
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(local_path))

    def rm(self, url: str, recursive: bool = False) -> None:
        fs, path = self.fs(url)
        if fs.exists(path):
            fs.rm(path, recursive=recursive)

    def walk_files(self, url: str) -> Iterator[str]:
        fs, path = self.fs(url)
        proto = url.split("://", 1)[0] + "://" if "://" in url else ""
        for p in sorted(fs.find(path)):
            yield proto + p if proto and not p.startswith(proto) else p
