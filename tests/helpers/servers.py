"""Real servers and processes on 127.0.0.1: free ports, waiting for and stopping a server, a
loopback HTTP server with chosen answers, headless Chromium."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a server the test started, SIGKILL it if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, Path] = {}
    blobs: dict[str, tuple[int, str, bytes]] = {}
    delay_s: float = 0.0

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        path = self.path.split("?", 1)[0]
        if self.delay_s:
            time.sleep(self.delay_s)
        if path.startswith("/slow"):
            time.sleep(5)
        extra: dict = {}
        if path in self.blobs:
            status, ctype, body, *more = self.blobs[path]
            extra = more[0] if more else {}
        elif path.startswith("/img/") and path[5:] in self.files:
            status, ctype, body = 200, "image/jpeg", self.files[path[5:]].read_bytes()
        else:
            status, ctype, body = 404, "text/plain", b"not found"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class LoopbackServer:
    def __init__(self, files: dict[str, Path], blobs: dict[str, tuple[int, str, bytes]]):
        handler = type("Handler", (_Handler,), {"files": files, "blobs": blobs})
        self.handler = handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def chromium():
    """Headless Debian chromium driven by chromedriver (both installed by scripts/install-system-deps.sh)."""
    import shutil

    if not shutil.which("chromedriver") or not shutil.which("chromium"):
        pytest.fail("chromium/chromedriver missing: scripts/install-system-deps.sh installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]:
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
