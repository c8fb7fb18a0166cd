"""The installed environment: Prefect's server starts and runs a flow; img2dataset runs — and the
`dataclasses==0.6` backport that img2dataset pins never reaches the main environment."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from cerebro_core.data.img2dataset_env import img2dataset_python

FLOW = """
import dataclasses, sys, sysconfig
assert dataclasses.__file__.startswith(sysconfig.get_paths()["stdlib"]), dataclasses.__file__
from prefect import flow, task

@task
def double(x):
    return 2 * x

@flow
def trivial(n: int = 21):
    return double(n)

assert trivial() == 42
from prefect.settings import PREFECT_API_URL
print("FLOW OK", PREFECT_API_URL.value())
"""


def test_prefect_ephemeral_api_runs_a_flow(tmp_path):
    script = tmp_path / "flow.py"
    script.write_text(FLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    # this checks that the ephemeral API works, not how fast it starts: under the full suite's load
    # its start-up took longer than Prefect's default 20 s once ("Timed out while attempting to connect")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "FLOW OK" in p.stdout
    assert (tmp_path / "prefect").exists()  # its database lives under the given home


def test_backport_kept_out_of_main_env():
    import importlib.metadata as md

    names = {d.metadata["Name"].lower() for d in md.distributions()}
    assert "dataclasses" not in names
    assert "img2dataset" not in names  # it lives in its own environment
    i2d = img2dataset_python()
    assert Path(i2d) != Path(sys.executable)  # venv interpreters are symlinks: compare the venvs
    probe = "import importlib.metadata as m, img2dataset; print(m.version('dataclasses'))"
    p = subprocess.run([i2d, "-c", probe], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert p.returncode == 0, p.stderr
    # the isolated env does carry the backport: the isolation is what keeps it away from Prefect
    assert p.stdout.strip() == "0.6"


def test_img2dataset_runs_on_two_file_urls(tmp_path, shared_data):
    imgs = sorted((shared_data / "cifar10_animals" / "test" / "deer").glob("*.jpg"))[:2]
    url_list = tmp_path / "urls.txt"
    url_list.write_text("".join(p.resolve().as_uri() + "\n" for p in imgs))
    out = tmp_path / "out"
    cli = Path(img2dataset_python()).parent / "img2dataset"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    p = subprocess.run(
        [str(cli), "--url_list", str(url_list), "--output_folder", str(out), "--output_format", "webdataset",
         "--image_size", "32", "--processes_count", "1", "--thread_count", "2", "--enable_wandb", "False"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    with tarfile.open(out / "00000.tar") as tf:
        jpgs = [m for m in tf.getnames() if m.endswith(".jpg")]
    assert len(jpgs) == 2
