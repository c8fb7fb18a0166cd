"""Shard reads that fail for a while are retried with backoff (nothing lost); a shard that stays
unreadable is skipped and counted, and past train.max_lost_share of the shards the run fails.
Real shards served by a loopback HTTP server that answers 500 to its first requests, read through
fsspec as training reads them."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class _Flaky(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    fail_first: dict[str, int] = {}  # path → how many requests still answer 500

    def log_message(self, *a):
        pass

    def _answer(self, body: bool):
        path = self.path.split("?", 1)[0]
        left = self.fail_first.get(path, 0)
        if left:
            self.fail_first[path] = left - 1
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._answer(True)

    def do_HEAD(self):  # noqa: N802
        self._answer(False)


@pytest.fixture
def flaky_shards(pair_shards):
    handler = type("H", (_Flaky,), {"files": {f"/{Path(s).name}": Path(s).read_bytes() for s in pair_shards[:4]},
                                    "fail_first": {}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield handler, [f"http://127.0.0.1:{httpd.server_address[1]}/{Path(s).name}" for s in pair_shards[:4]]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_shard_reads_are_retried_and_losses_are_bounded(flaky_shards):
    from cerebro_core.storage import Storage
    from cerebro_core.train.data import ReadPolicy, ShardLossError, raw_samples

    handler, urls = flaky_shards
    for u in urls:  # every shard fails twice before it is served (a flaky network, a throttled bucket)
        handler.fail_first["/" + u.rsplit("/", 1)[1]] = 2
    counter: dict = {}
    got = list(raw_samples(urls, Storage(), counter, ReadPolicy(retries=3, backoff_s=0.01)))
    assert len(got) == 80 and counter.get("bad_shards", 0) == 0  # nothing lost
    # one of four shards stays unreadable: skipped and counted while within the allowed share ...
    handler.fail_first["/" + urls[1].rsplit("/", 1)[1]] = 10**6
    counter = {}
    got = list(raw_samples(urls, Storage(), counter, ReadPolicy(retries=2, backoff_s=0.01, max_lost_share=0.5)))
    assert len(got) == 60 and counter["bad_shards"] == 1
    # ... and past it the run fails, saying how much was lost
    handler.fail_first["/" + urls[2].rsplit("/", 1)[1]] = 10**6
    with pytest.raises(ShardLossError, match=r"lost 2 of the 3 shards read so far .*max_lost_share=0.5"):
        list(raw_samples(urls, Storage(), {}, ReadPolicy(retries=1, backoff_s=0.01, max_lost_share=0.5)))
