"""`cerebro info` and `--help`: what a user sees first."""

from __future__ import annotations

import json
import os
import subprocess
from helpers import CEREBRO, REPO


def run(args, env_extra=None, tmp=None):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env.update(env_extra or {})
    return subprocess.run([CEREBRO, *args], capture_output=True, text=True, env=env, timeout=300, cwd=tmp)


def test_info_embedded_defaults(tmp_path):
    home = tmp_path / "state"
    p = run(["info", "-c", str(REPO / "configs/demo.yaml"), "--set", "storage.secret_access_key=s3cr3t"],
            {"CEREBRO_HOME": str(home)})
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for dist in ["torch", "torchvision", "open_clip_torch", "prefect", "mlflow", "faiss-cpu", "webdataset",
                 "img2dataset", "pyarrow", "s3fs", "pillow"]:
        assert dist in out
    assert f"sqlite:///{home}/mlflow.db  (embedded)" in out
    assert "Prefect API      ephemeral" in out
    assert f"storage root     {home}/data" in out
    assert "CUDA devices     0" in out or "CUDA devices" in out
    assert "CPU threads" in out
    assert "s3cr3t" not in out and "'**********'" in out
    assert "batch_size: 64" in out  # the resolved demo config


def test_info_json_follows_env_servers(tmp_path):
    p = run(["info", "--json"], {"CEREBRO_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999",
                                  "PREFECT_API_URL": "http://127.0.0.1:4299/api"})
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["mlflow_tracking_uri"] == "http://127.0.0.1:5999" and d["mlflow_tracking_source"] == "env"
    assert d["prefect_api"] == "http://127.0.0.1:4299/api"
    assert d["devices"]["cpu_count"] >= 1
    import torch

    assert d["devices"]["cuda_device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert d["versions"]["img2dataset"] not in ("", "not installed")
    # the config switches tracking too, and wins over the env
    p = run(["info", "--json", "--set", "tracking.uri=sqlite:////tmp/x.db"], {"CEREBRO_HOME": str(tmp_path),
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"})
    assert json.loads(p.stdout)["mlflow_tracking_uri"] == "sqlite:////tmp/x.db"


def test_help_lists_only_working_commands():
    p = run(["--help"])
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line)
    listed = set()
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            break
        first = line.strip("│ ").split(" ", 1)[0]
        if line.startswith("│ ") and first and not line.startswith("│  "):
            listed.add(first)
    import cerebro_cli.main as m

    registered = {c.name or c.callback.__name__ for c in m.app.registered_commands}
    groups = {g.name: g.typer_instance for g in m.app.registered_groups}  # `cerebro review export|import`
    assert listed == registered | set(groups), (listed, registered, set(groups))
    assert {"info", "download", "demo"} <= registered
    for name in registered | set(groups):  # every listed command answers --help
        assert run([name, "--help"]).returncode == 0, name
    for name, group in groups.items():
        for c in group.registered_commands:
            assert run([name, c.name or c.callback.__name__, "--help"]).returncode == 0, (name, c.name)
