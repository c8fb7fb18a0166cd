"""The GPU deployments: every flow that runs a model has one on the GPU pool, and one image name
is used by prefect.yaml, both GPU pool templates, the compose file and the build script."""

from __future__ import annotations

import json
import subprocess

import yaml
from helpers import REPO

GPU_FLOWS = {"pipeline", "pretrain", "adapt", "index", "reindex"}


def _template_image(name: str) -> str:
    tpl = json.loads((REPO / "deployments" / name).read_text())
    assert '"{{ image }}"' in json.dumps(tpl["job_configuration"])  # the container runs the variable
    return tpl["variables"]["properties"]["image"]["default"]


def test_every_gpu_capable_flow_has_a_gpu_deployment_with_the_built_image():
    """Issue 35 item 2: the templates defaulted to cerebro-worker-gpu:latest, which nothing built,
    prefect.yaml set no image, and only pretrain had a GPU deployment."""
    built = subprocess.run(["bash", str(REPO / "scripts/build-image.sh"), "gpu", "--print-tag"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.strip()
    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    gpu_pool = project["definitions"]["work_pools"]["gpu"]["name"]
    gpu = {d["entrypoint"].split(":")[0].removeprefix("flows/").removesuffix(".py"): d
           for d in project["deployments"] if d["work_pool"]["name"] == gpu_pool}
    assert set(gpu) == GPU_FLOWS
    for flow, d in gpu.items():
        assert d["work_pool"]["job_variables"]["image"] == built, flow
        params = d["parameters"].get("params", d["parameters"])
        assert params["config"] == "configs/cc3m-vitb32.yaml", flow
    compose = yaml.safe_load((REPO / "docker/docker-compose.yml").read_text())["services"]["gpu-worker"]
    assert f"--pool {gpu_pool}" in compose["command"]
    assert {built, compose["image"], _template_image("cerebro-gpu-docker.json"),
            _template_image("cerebro-gpu-kubernetes.json")} == {built}
