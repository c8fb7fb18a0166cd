"""The images, built: the CPU image through scripts/build-image.sh (buildah, docker/Dockerfile.cpu)
on a local Debian base (scripts/build-base.sh: debootstrap, cached by its content hash) with pip
reading this machine's mirror, and run: inside a container of it, `cerebro info`, the demo pipeline
and one `cerebro search`, as the README's container section shows. The search target's
HEALTHCHECK is checked in its config; the GPU image is built the same way and probed (CUDA torch,
faiss-gpu, `cerebro info`). Slow (a first build installs torch), but it runs in CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from helpers import REPO

# network: debootstrap reads Debian's mirror and pip the package index (pyproject.toml's markers)
pytestmark = [pytest.mark.slow, pytest.mark.network]
# the demo's pipeline, shortened: what is checked here is that the image runs it, not its quality
SHORT = ["--set", "train.epochs=2", "--set", "adapt.iterations=1", "--set", "download.samples_per_shard=200"]


def _build(*args: str) -> str:
    # PyTorch's CPU index cannot be reached here: torch comes from the pip mirror (its CUDA build)
    p = subprocess.run([str(REPO / "scripts" / "build-image.sh"), *args], cwd=REPO, capture_output=True, text=True,
                       timeout=2400, env=dict(os.environ, TORCH_INDEX_URL=""))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    print(p.stderr.strip().splitlines()[-1])  # "built <tag> in N s: <size>"
    return p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cpu_image() -> str:
    for tool in ("buildah", "debootstrap"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing: scripts/install-system-deps.sh installs it")
    return _build("cpu", "-t", "localhost/cerebro-cpu:test")


@pytest.fixture
def container(cpu_image):
    ctr = subprocess.run(["buildah", "from", "--quiet", cpu_image], capture_output=True, text=True, check=True,
                         timeout=300).stdout.strip()
    try:
        yield ctr
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, timeout=300)


def run_in(ctr: str, *cmd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", "run", "--isolation", "chroot", ctr, "--", *cmd], capture_output=True,
                          text=True, timeout=timeout)


def test_cpu_image_runs_info_the_demo_and_a_search(container):
    who = run_in(container, "sh", "-c", "id -un; echo $CEREBRO_HOME; ls -d /opt/img2dataset/lib/python3.11/site-packages/img2dataset")
    assert who.returncode == 0, who.stderr
    assert who.stdout.split()[:2] == ["cerebro", "/data/cerebro"]  # not root; state on the volume

    info = run_in(container, "cerebro", "info", "-c", "configs/demo.yaml")
    assert info.returncode == 0, info.stderr[-2000:]
    for line in (r"torch\s+2\.14\.1", r"torchvision\s+0\.29\.1", r"open_clip_torch\s+3\.3\.", r"prefect\s+3\.",
                 r"webdataset\s+0\.2\.86"):
        assert re.search(line, info.stdout), (line, info.stdout[:1500])

    demo = run_in(container, "cerebro", "demo", "-c", "configs/demo.yaml", *SHORT, timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert re.search(r"pipeline done in \d+ s: download \d+ s, pretrain \d+ s, adapt \d+ s, index \d+ s", demo.stdout)
    assert re.search(r"demo search \(v1\): R-precision .* mean [01]\.\d{3}, lowest [01]\.\d{3}", demo.stdout)
    assert '\n  cerebro search "a red circle on snow"' in demo.stdout  # the image's command, not .venv/bin/

    search = run_in(container, "cerebro", "search", "a red circle on snow", "-k", "3", "-c", "configs/demo.yaml")
    assert search.returncode == 0, search.stderr[-2000:]
    hits = [ln for ln in search.stdout.splitlines() if re.match(r"\s+[123]\. \d\.\d{3}  \[demo\] ", ln)]
    assert len(hits) == 3, search.stdout
    assert all("/data/cerebro/demo/images/" in h for h in hits)


def test_search_target_has_a_healthcheck(cpu_image):
    import json

    tag = _build("cpu", "--target", "search", "-t", "localhost/cerebro-search:test")  # the shared layers: cached
    cfg = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, text=True,
                                    check=True, timeout=120).stdout)
    docker = cfg["Docker"]["config"]
    assert "/healthz" in " ".join(docker["Healthcheck"]["Test"]) and docker["User"] == "cerebro"
    assert docker["Cmd"][:4] == ["cerebro", "serve", "--host", "0.0.0.0"]


def test_gpu_image_builds_with_cuda_torch_and_faiss_gpu():
    """docker/Dockerfile.gpu, built the same way (torch's CUDA wheels from the index, faiss-gpu in
    place of faiss-cpu): inside it torch reports its CUDA version, faiss has its GPU classes, and
    `cerebro info` runs. No GPU here: the device itself is exercised only where one is lent."""
    tag = _build("gpu", "-t", "localhost/cerebro-gpu:test")
    ctr = subprocess.run(["buildah", "from", "--quiet", tag], capture_output=True, text=True, check=True,
                         timeout=300).stdout.strip()
    try:
        probe = run_in(ctr, "python", "-c", "import torch, faiss; print(torch.version.cuda, "
                       "hasattr(faiss, 'StandardGpuResources'))", timeout=300)
        assert probe.returncode == 0, probe.stderr[-2000:]
        cuda, gpu_faiss = probe.stdout.split()[-2:]
        assert re.fullmatch(r"\d+\.\d+", cuda) and gpu_faiss == "True", probe.stdout
        info = run_in(ctr, "cerebro", "info", "-c", "configs/demo.yaml", timeout=300)
        assert info.returncode == 0, info.stderr[-2000:]
        assert re.search(r"faiss-gpu-cu12\s+\d", info.stdout) and re.search(r"faiss-cpu\s+not installed", info.stdout)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True, timeout=300)
