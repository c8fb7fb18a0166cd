"""Shared fixtures: the real data in ../shared/data, an isolated state dir, and real servers on
127.0.0.1 (moto's S3 server as a subprocess, a loopback HTTP server) that stop by themselves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (REPO, VENV_BIN, LoopbackServer, free_port, good_pairs, png_bomb, require_shared,
                     seed_prefect_home, state_dir as _state_dir, stop, wait_port, write_pair_shards)

# botocore never asks the cloud's metadata service (169.254.169.254) for credentials: not in any
# test, nor in the servers and commands they start (they inherit this environment)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# nor reads this machine's AWS config or credentials (a profile's credential_process, SSO, region):
# the tests give their own (s3_env, moto on loopback)
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
for _var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory, request) -> Path:
    """A state dir for the whole module (``CEREBRO_HOME``), the environment restored after it
    whatever happens: what module-scoped set-ups (an indexed home, a served one) build in."""
    with _state_dir(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1] + "-home")) as home:
        yield home


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


@pytest.fixture(scope="session")
def pair_shards(shared_data, tmp_path_factory) -> list[str]:
    """140 real pairs (80 COCO photos with a human caption, 60 CIFAR animals) in 7 shards."""
    return write_pair_shards(good_pairs(shared_data, n_coco=80, n_cifar_per_class=10),
                             tmp_path_factory.mktemp("pairs"))


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
