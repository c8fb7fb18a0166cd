"""A lock in storage, held by one process at a time, that works on a local folder and on S3.

Publishing a search version reads the champion, adds to it and moves the alias; two of these at
once would each build on the same champion and the later alias would drop the other's items.
``cerebro gc --delete`` deletes parts no registered version names, which a publish in progress
may be about to reuse. Both therefore run under one lease per search model:
``<storage root>/locks/<name>.lease``.

- **Local storage root**: ``fcntl.flock`` on that file. The kernel drops it when its process
  ends, however it ends (``kill -9`` included), so there is nothing stale to break.
- **S3**: a lease object created with a conditional PUT (``If-None-Match: *``: exactly one of
  concurrent creators succeeds), renewed by a heartbeat thread with ``If-Match: <its ETag>``
  every ``ttl/3`` seconds. A lease not renewed for ``ttl`` seconds (its holder was killed or lost
  its machine) is taken over with ``If-Match`` on the stale ETag, so two waiters cannot both take
  it. Its age is judged on the server's clock (the object's Last-Modified against the response's
  Date), never on the reader's. A holder whose heartbeat finds the lease gone or taken knows it
  lost it: :meth:`Lease.check` raises before anything irreversible (moving an alias).

A process that already holds the lease takes it again without waiting (re-entrant), so a
reindex can hold it from reading the champion to moving the alias while ``publish`` takes it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable, Iterator, Optional

from cerebro_core.storage import Storage, is_remote, join


class LeaseHeld(TimeoutError):
    """Another process holds the lease for longer than we were willing to wait."""


class LeaseLost(RuntimeError):
    """Our lease expired or was taken over while we held it."""


_held: dict[str, "Lease"] = {}  # url → the lease this process holds
_held_lock = threading.Lock()


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": uuid.uuid4().hex}


def describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (since {since})"


class Lease:
    def __init__(self, storage: Storage, url: str, ttl_s: float):
        self.storage, self.url, self.ttl_s = storage, url, ttl_s
        self.holder = _me()
        self.depth = 0
        self.lost: Optional[str] = None
        self._fd: Optional[int] = None
        self._etag: Optional[str] = None
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None
        self._renewed = time.time()

    # ---- acquiring -------------------------------------------------------------
    def try_acquire(self) -> Optional[dict]:
        """Take the lease; None on success, else what is known of its holder."""
        return self._try_s3() if is_remote(self.url) else self._try_local()

    def _try_local(self) -> Optional[dict]:
        import fcntl

        path = Path(self.url.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._fd = fd
        return None

    def _client(self):
        import botocore.session

        opts = self.storage.options(self.url)
        kw = dict(opts.get("client_kwargs", {}))
        if opts.get("key"):
            kw.update(aws_access_key_id=opts["key"], aws_secret_access_key=opts.get("secret"))
        if opts.get("anon"):
            from botocore import UNSIGNED
            from botocore.config import Config

            kw["config"] = Config(signature_version=UNSIGNED)
        return botocore.session.get_session().create_client("s3", **kw)

    def _bucket_key(self) -> tuple[str, str]:
        bucket, _, key = self.url.split("://", 1)[1].partition("/")
        return bucket, key

    def _put(self, **cond) -> Optional[str]:
        """A conditional PUT of our holder record; its ETag, or None when the condition failed."""
        from botocore.exceptions import ClientError

        bucket, key = self._bucket_key()
        # a fresh body each time, so each renewal has a new ETag: a waiter's If-Match on the ETag it
        # judged stale fails if the holder renewed meanwhile
        body = json.dumps({**self.holder, "ttl_s": self.ttl_s, "renewed": uuid.uuid4().hex}).encode()
        try:
            return self._s3.put_object(Bucket=bucket, Key=key, Body=body, **cond)["ETag"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                          "NoSuchKey", "412", "409"):
                return None
            raise

    def _try_s3(self) -> Optional[dict]:
        from botocore.exceptions import ClientError

        self._s3 = getattr(self, "_s3", None) or self._client()
        etag = self._put(IfNoneMatch="*")
        if etag is not None:
            self._etag = etag
            return None
        bucket, key = self._bucket_key()
        try:
            got = self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return {}  # released meanwhile: try again
            raise
        holder = json.loads(got["Body"].read() or b"{}")
        server_now = parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
        age = server_now - got["LastModified"].timestamp()
        if age > float(holder.get("ttl_s", self.ttl_s)):  # not renewed: its holder is gone
            etag = self._put(IfMatch=got["ETag"])
            if etag is not None:
                self._etag = etag
                return None
        return holder

    # ---- holding ---------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                etag = self._put(IfMatch=self._etag)
            except Exception as e:  # storage unreachable: keep trying until the ttl says otherwise
                if time.time() - self._renewed > self.ttl_s and self.lost is None:
                    self.lost = f"could not renew the lease: {e}"
                continue
            if etag is None:
                self.lost = "the lease was taken over by another process (ours was not renewed in time)"
                return
            self._etag = etag
            self._renewed = time.time()

    def start(self) -> None:
        if self._etag is not None:
            self._beat = threading.Thread(target=self._heartbeat, name="cerebro-lease", daemon=True)
            self._beat.start()

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"{self.url}: {self.lost}; nothing was moved, run it again")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=10)
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self._etag is not None and not self.lost:
            bucket, key = self._bucket_key()
            with contextlib.suppress(Exception):  # only if still ours; else it expires or was taken over
                self._s3.delete_object(Bucket=bucket, Key=key, IfMatch=self._etag)
            self._etag = None


@contextlib.contextmanager
def lease(storage: Storage, url: str, ttl_s: float = 120, wait_s: float = 3600, poll_s: float = 1.0,
          log: Callable[[str], None] = lambda s: None, what: str = "") -> Iterator[Lease]:
    """Hold the lease at ``url``; wait up to ``wait_s`` for its holder to let go (``LeaseHeld``)."""
    with _held_lock:
        mine = _held.get(url)
    if mine is not None:  # re-entrant
        mine.depth += 1
        try:
            yield mine
        finally:
            mine.depth -= 1
        return
    ls = Lease(storage, url, ttl_s)
    deadline = time.monotonic() + wait_s
    told = False
    while (holder := ls.try_acquire()) is not None:
        if time.monotonic() >= deadline:
            raise LeaseHeld(f"{what or url}: held by {describe(holder)} for longer than {wait_s:g} s; "
                            "nothing was done, run it again once that one has finished")
        if not told and holder:
            log(f"waiting for {describe(holder)}, which holds {what or url}")
            told = True
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    ls.start()
    with _held_lock:
        _held[url] = ls
    try:
        yield ls
    finally:
        with _held_lock:
            _held.pop(url, None)
        ls.release()


def publish_lease_url(storage_root: str, model_name: str) -> str:
    return join(storage_root, "locks", f"{model_name}.lease")


def publish_lease(cfg, log: Callable[[str], None] = lambda s: None):
    """The lease that serialises publishes of ``cfg``'s search model and gc's deletions of its parts."""
    from cerebro_core.home import resolve

    name = cfg.tracking.search_model_name
    return lease(Storage(cfg.storage), publish_lease_url(resolve(cfg).storage_root, name),
                 ttl_s=cfg.storage.lock_ttl_s, wait_s=cfg.storage.lock_wait_s, log=log,
                 what=f"the publish lock of {name}")
