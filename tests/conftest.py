"""Shared fixtures: the real data in ../shared/data, an isolated state dir, and real servers on
127.0.0.1 (moto's S3 server as a subprocess, a loopback HTTP server) that stop by themselves."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zlib
import struct
from pathlib import Path

import pytest

from helpers import LoopbackServer

REPO = Path(__file__).resolve().parents[1]
# botocore never asks the cloud's metadata service (169.254.169.254) for credentials: not in any
# test, nor in the servers and commands they start (they inherit this environment)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# nor reads this machine's AWS config or credentials (a profile's credential_process, SSO, region):
# the tests give their own (s3_env, moto on loopback)
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
for _var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
    os.environ.pop(_var, None)
SHARED = Path(os.environ.get("CEREBRO_SHARED_DATA", REPO.parent / "shared" / "data"))
VENV_BIN = Path(sys.executable).parent


def require_shared(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"shared data not found at {p} (expected ../shared/data beside the repo; see its SOURCE.txt files)"
        if os.environ.get("CEREBRO_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " and CEREBRO_REQUIRE_SHARED_DATA=1")
        pytest.skip(msg)
    return p


@pytest.fixture(autouse=True)
def _mlflow_uris_stay_in_their_test():
    """MLflow keeps the URIs a test set (``mlflow.set_tracking_uri``, as ``tracking.configure``
    does) in module globals, which win over ``MLFLOW_TRACKING_URI``, and copies them into the
    environment: the next test in the process would talk to this one's server. Put both back."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    before = _mlflow_uris()
    yield
    after = _mlflow_uris()
    if after is not None and after != before:
        from mlflow.tracking._model_registry import utils as registry
        from mlflow.tracking._tracking_service import utils as tracking

        tracking._tracking_uri, registry._registry_uri = before or (None, None)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _mlflow_uris():
    if "mlflow" not in sys.modules:
        return None
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    return tracking._tracking_uri, registry._registry_uri


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def migrated_prefect_db(tmp_path_factory) -> Path:
    """A Prefect database with every migration applied, by Prefect's own CLI (`prefect server
    database upgrade`), once per session: what a state dir holds after its first command. Tests
    whose new state dir is not about a first run copy it in (seed_prefect_home); the migrations cost
    each first command 6-13 s here. `cerebro demo` and test_install's ephemeral API start without it."""
    home = tmp_path_factory.mktemp("prefect-template")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    p = subprocess.run([str(VENV_BIN / "prefect"), "server", "database", "upgrade", "-y"],
                       env=dict(env, PREFECT_HOME=str(home)), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and (home / "prefect.db").is_file(), p.stdout[-2000:] + p.stderr[-2000:]
    return home / "prefect.db"


def seed_prefect_home(prefect_home: Path, db: Path) -> Path:
    prefect_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, prefect_home / "prefect.db")
    return prefect_home


@pytest.fixture
def cerebro_home(tmp_path, monkeypatch, migrated_prefect_db) -> Path:
    """A fresh state dir per test (its Prefect database migrated); no tracking/Prefect server leaks
    in from the environment."""
    home = tmp_path / "cerebro-home"
    seed_prefect_home(home / "prefect", migrated_prefect_db)
    monkeypatch.setenv("CEREBRO_HOME", str(home))
    monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
    for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


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


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 server in its own process on loopback (not the in-process mock)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, timeout=10)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a server the test started, SIGKILL it if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    """Credentials + endpoint as a user would export them, and a fresh bucket."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"cerebro-{int(time.time() * 1000) % 10**9}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return {"endpoint": moto_server, "bucket": bucket}


# --------------------------------------------------------------------------- loopback HTTP server


def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels (900 Mpx) that compresses to ~100 KB."""
    raw_row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    chunks = []
    block = raw_row * 1000
    for _ in range(side // 1000):
        chunks.append(comp.compress(block))
    chunks.append(comp.flush())
    idat = b"".join(chunks)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def good_pairs(shared: Path, n_coco: int = 80, n_cifar_per_class: int = 10) -> list[tuple[str, Path]]:
    """Real (caption, image path) pairs: COCO captions mini + CIFAR animals captioned by class."""
    pairs: list[tuple[str, Path]] = []
    coco = shared / "coco_captions_mini"
    for line in (coco / "captions.jsonl").read_text().splitlines()[:n_coco]:
        rec = json.loads(line)
        pairs.append((rec["captions"][0].strip(), coco / rec["image"]))
    cifar = shared / "cifar10_animals"
    per: dict[str, int] = {}
    templates = ["a photo of a {}.", "a blurry photo of a {}.", "a {} in the wild.", "a close-up of a {}."]
    for row in csv.DictReader((cifar / "labels.csv").open()):
        k = per.get(row["label"], 0)
        if k < n_cifar_per_class:
            pairs.append((templates[k % len(templates)].format(row["label"]), cifar / row["path"]))
            per[row["label"]] = k + 1
    return pairs


BAD_KINDS = {
    # path → expected failure kind; (status, content type, body[, headers]) filled in by the fixture
    "/bad/404": "http_404",
    "/bad/500": "http_500",
    "/slow/timeout.jpg": "timeout",
    "/bad/html.jpg": "html_instead_of_image",
    "/bad/truncated.jpg": "truncated_image",
    "/bad/empty.jpg": "empty_body",
    "/bad/garbage.jpg": "not_an_image",
    "/bad/bomb.png": "decompression_bomb",
    "/bad/noai.jpg": "disallowed_by_robots",  # a site's AI opt-out, honoured by default
}


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    return png_bomb()


@pytest.fixture
def http_images(shared_data, bomb_png):
    """Loopback server with real photos under /img/<n>.jpg and every bad case of the download issue."""
    pairs = good_pairs(shared_data)
    files = {f"{i}.jpg": p for i, (_, p) in enumerate(pairs)}
    a_jpeg = pairs[0][1].read_bytes()
    blobs = {
        "/bad/404": (404, "text/html", b"<html>nope</html>"),
        "/bad/500": (500, "text/plain", b"boom"),
        "/bad/html.jpg": (200, "image/jpeg", b"<!DOCTYPE html><html><body>Sign in to view</body></html>"),
        "/bad/truncated.jpg": (200, "image/jpeg", a_jpeg[: len(a_jpeg) // 2]),
        "/bad/empty.jpg": (200, "image/jpeg", b""),
        "/bad/garbage.jpg": (200, "image/jpeg", os.urandom(4096)),
        "/bad/bomb.png": (200, "image/png", bomb_png),
        "/bad/noai.jpg": (200, "image/jpeg", a_jpeg, {"X-Robots-Tag": "noimageai"}),
    }
    with LoopbackServer(files, blobs) as srv:
        srv.pairs = pairs
        yield srv


def write_url_list(path: Path, srv: LoopbackServer, header: bool = False) -> dict:
    """Raw CC3M TSV (caption<TAB>url, no header): good rows then every bad row.

    Returns expectations: good captions by row number, bad kinds by row number."""
    closed_port = free_port()  # nothing listens there any more
    rows: list[tuple[str, str]] = []
    good: dict[int, str] = {}
    bad: dict[int, str] = {}
    for i, (cap, _) in enumerate(srv.pairs):
        good[len(rows)] = cap
        rows.append((cap, f"{srv.base}/img/{i}.jpg"))
    for path_, kind in BAD_KINDS.items():
        bad[len(rows)] = kind
        rows.append((f"bad row {kind}", srv.base + path_))
    bad[len(rows)] = "connection_refused"
    rows.append(("refused", f"http://127.0.0.1:{closed_port}/x.jpg"))
    bad[len(rows)] = "invalid_url"
    rows.append(("invalid url", "ht!tp:/not a url"))
    bad[len(rows)] = "empty_caption"
    rows.append(("", f"{srv.base}/img/0.jpg"))
    with path.open("w") as f:
        if header:
            f.write("caption\turl\n")
        for cap, url in rows:
            f.write(f"{cap}\t{url}\n")
    return {"good": good, "bad": bad, "rows": len(rows)}


def write_pair_shards(pairs: list[tuple[str, Path]], out: Path, per_shard: int = 20, size: int = 32) -> list[str]:
    """Real pairs as webdataset shards (what the download stage writes), via webdataset's writer."""
    import io as _io

    import webdataset as wds
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=per_shard, verbose=0) as w:
        for i, (cap, p) in enumerate(pairs):
            img = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)
            b = _io.BytesIO()
            img.save(b, format="JPEG", quality=95)
            w.write({"__key__": f"{i:06d}", "jpg": b.getvalue(), "txt": cap, "json": json.dumps({"cerebro_id": i})})
    return sorted(str(p) for p in out.glob("*.tar"))


def shardset_for(shards: list[str], name: str = "test"):
    """A ShardSet (the download stage's result) for shards built directly."""
    import tarfile

    from cerebro_core.data.shardset import DownloadStats, ShardSet

    sizes = {}
    for s in shards:
        with tarfile.open(s) as tf:
            sizes[Path(s).name] = sum(1 for m in tf.getnames() if m.endswith(".jpg"))
    n = sum(sizes.values())
    stats = DownloadStats(total_rows=n, attempted=n, successes=n, failures=0, dropped_empty_caption=0,
                          success_rate=1.0, failures_by_reason={}, failure_messages={}, bytes_written=0,
                          new_successes=n, wall_s=0.0, images_per_s=0.0, shards=len(shards))
    return ShardSet(output=str(Path(shards[0]).parent), shards=shards, sizes=sizes, num_samples=n,
                    manifest_url="", sizes_url="", stats_url="", manifest_hash=f"{name}-{n}", input_hash=name,
                    stats=stats)


@pytest.fixture(scope="session")
def pair_shards(shared_data, tmp_path_factory) -> list[str]:
    """140 real pairs (80 COCO photos with a human caption, 60 CIFAR animals) in 7 shards."""
    return write_pair_shards(good_pairs(shared_data, n_coco=80, n_cifar_per_class=10),
                             tmp_path_factory.mktemp("pairs"))


def make_video(path: Path, seconds: float = 3.0, fps: int = 10, size: int = 64,
               creation_time: str | None = None) -> Path:
    """A short real video (MPEG-4 part 2 in .mp4) of a moving square, encoded with PyAV; with
    ``creation_time`` (ISO 8601) in its container metadata, as cameras write it."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        if creation_time:
            c.metadata["creation_time"] = creation_time
        st = c.add_stream("mpeg4", rate=fps)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.full((size, size, 3), 30, np.uint8)
            x = (i * 3) % (size - 16)
            img[20:36, x : x + 16] = (220, 120, 30)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """`cerebro demo` once, as a new user runs it (a fresh state dir, no servers configured):
    its combined output and the state it leaves. Shared by test_demo and test_ui."""
    home = tmp_path_factory.mktemp("demo") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "CEREBRO_"))}
    env["CEREBRO_HOME"] = str(home)
    bin_ = VENV_BIN
    p = subprocess.run([str(bin_ / "cerebro"), "demo", "-c", "configs/demo.yaml"], env=env, cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:]
    return {"home": home, "env": env, "out": p.stdout, "bin": bin_}
