"""The whole DAG through real servers: `prefect server start`, `mlflow server` and moto's S3 server
on 127.0.0.1, `prefect deploy --all` from prefect.yaml, a process worker, flow runs created through
the REST API (as the UI does). Everything is on S3, as on a cluster: `storage.root` (shards,
checkpoints, embeddings, pseudo-labelled shards, search-version parts), MLflow's artifacts, adapt's
and index's sources as `s3://` prefixes, and the scrape the `cerebro.scrape.landed` event names.
Nested MLflow runs per stage and iteration, cerebro-search@champion answering `cerebro search`; a
failed adapt stage resumed without recomputing download and pretrain; the docker-compose file
validated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, free_port, seed_prefect_home, wait_port


BIN = Path(sys.executable).parent
FAST = ["train.epochs=2", "adapt.iterations=2", "adapt.early_stop=false",
        "download.samples_per_shard=200"]


def _http(method: str, url: str, body: dict | None = None) -> dict | list:
    """One REST call to Prefect's server, retried as Prefect's own client retries: the server
    answers 503 when its SQLite database is busy ("errors clients can retry on")."""
    import httpx

    for attempt in range(8):
        r = httpx.request(method, url, json=body, timeout=60)
        if r.status_code not in (429, 502, 503) or attempt == 7:
            break
        time.sleep(min(2 ** attempt * 0.5, 10))
    r.raise_for_status()
    return r.json() if r.content else {}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, moto_server, migrated_prefect_db):
    import boto3

    tmp = tmp_path_factory.mktemp("servers")
    seed_prefect_home(tmp / "prefect-server", migrated_prefect_db)  # the server's database, migrated
    pport, mport = free_port(), free_port()
    bucket = f"pipeline-{int(time.time() * 1000) % 10**9}"
    s3 = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_ENDPOINT_URL": moto_server, "MLFLOW_S3_ENDPOINT_URL": moto_server}
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    base_env.update(s3, AWS_EC2_METADATA_DISABLED="true")  # the servers never ask the cloud metadata service
    penv = dict(base_env, PREFECT_HOME=str(tmp / "prefect-server"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_UI_ENABLED="false")
    procs = [
        subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(pport)],
                         env=penv, stdout=open(tmp / "prefect.log", "w"), stderr=subprocess.STDOUT),
        subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mport),
                          "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                          "--artifacts-destination", f"s3://{bucket}/mlflow", "--workers", "1"],
                         env=base_env, stdout=open(tmp / "mlflow.log", "w"), stderr=subprocess.STDOUT),
    ]
    worker = None
    try:
        wait_port(pport, timeout=120, proc=procs[0])
        wait_port(mport, timeout=120, proc=procs[1])
        api = f"http://127.0.0.1:{pport}/api"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                _http("GET", api + "/health")
                break
            except Exception:
                time.sleep(0.5)
        env = dict(base_env, PREFECT_API_URL=api, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mport}",
                   PREFECT_HOME=str(tmp / "prefect-client"), CEREBRO_HOME=str(tmp / "home"),
                   CEREBRO_REPO=str(REPO), CEREBRO_SCRAPE_DIR=str(tmp / "scrapes" / "daily"))
        run = lambda *a: subprocess.run([str(BIN / "prefect"), *a], env=env, cwd=REPO, capture_output=True,  # noqa: E731
                                        text=True, timeout=300)
        for pool, typ, tpl in [("cerebro-cpu", "process", "cerebro-cpu.json"),
                               ("cerebro-gpu", "kubernetes", "cerebro-gpu-kubernetes.json"),
                               ("cerebro-gpu-docker", "docker", "cerebro-gpu-docker.json")]:
            p = run("work-pool", "create", pool, "--type", typ, "--base-job-template", str(REPO / "deployments" / tpl))
            assert p.returncode == 0, p.stdout + p.stderr
        p = run("--no-prompt", "deploy", "--all")
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cerebro-cpu"], env=env, cwd=REPO,
                                  stdout=open(tmp / "worker.log", "w"), stderr=subprocess.STDOUT)
        yield {"api": api, "mlflow": f"http://127.0.0.1:{mport}", "env": env, "tmp": tmp, "bucket": bucket,
               "s3": s3}
    finally:
        for p in ([worker] if worker else []) + procs:
            p.terminate()
        for p in ([worker] if worker else []) + procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def run_deployment(api: str, name: str, parameters: dict, timeout: float = 900) -> dict:
    dep = _http("GET", f"{api}/deployments/name/{name}")
    fr = _http("POST", f"{api}/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})
    return wait_flow_run(api, fr["id"], timeout)


def wait_flow_run(api: str, fr_id: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        fr = _http("GET", f"{api}/flow_runs/{fr_id}")
        if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return fr
        time.sleep(2)
    raise TimeoutError(f"flow run {fr_id} still {fr['state']['type']} after {timeout}s")


def runs_by_stage(client, stage: str):
    exp = client.get_experiment_by_name("cerebro")
    return client.search_runs([exp.experiment_id], f"tags.stage = '{stage}'")


def _s3(servers):
    import boto3

    e = servers["s3"]
    return boto3.client("s3", endpoint_url=e["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _upload(servers, folder: Path, prefix: str) -> int:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    for p in files:
        _s3(servers).upload_file(str(p), servers["bucket"], f"{prefix}/{p.relative_to(folder).as_posix()}")
    return len(files)


def _keys(servers, prefix: str) -> list[str]:
    pages = _s3(servers).get_paginator("list_objects_v2").paginate(Bucket=servers["bucket"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_pipeline_on_s3_through_prefect_server_and_resume(servers):
    import mlflow

    api, env, tmp, bucket = servers["api"], servers["env"], servers["tmp"], servers["bucket"]
    overrides = FAST + [f"storage.root=s3://{bucket}/cerebro",
                        f"adapt.sources=[{{name: wild, path: s3://{bucket}/wild}}]",  # empty until the second run
                        f"index.sources=[{{name: demo, path: s3://{bucket}/images}}]"]
    params = {"params": {"config": "configs/demo.yaml", "overrides": overrides, "demo_data": True}}
    first = run_deployment(api, "cerebro/pipeline", params)
    assert first["state"]["type"] == "FAILED"  # adapt: nothing at s3://…/wild
    assert "adapt.sources[0].path: nothing at s3://" in (tmp / "worker.log").read_text()
    client = mlflow.MlflowClient(tracking_uri=servers["mlflow"])
    assert len(runs_by_stage(client, "download")) == 1 and len(runs_by_stage(client, "pretrain")) == 1
    assert len(runs_by_stage(client, "adapt")) == 0

    # the wildlife photos land in the bucket (the demo data the first run generated, as a sync would)
    assert _upload(servers, tmp / "home" / "demo" / "wild", "wild") > 0
    assert _upload(servers, tmp / "home" / "demo" / "images", "images") > 0
    second = run_deployment(api, "cerebro/pipeline", params)
    log = (tmp / "worker.log").read_text()[-4000:]
    assert second["state"]["type"] == "COMPLETED", log
    # download and pretrain came from the cache: still one MLflow run each
    assert len(runs_by_stage(client, "download")) == 1 and len(runs_by_stage(client, "pretrain")) == 1
    pipelines = runs_by_stage(client, "pipeline")
    done = [r for r in pipelines if r.info.status == "FINISHED"]
    assert len(done) == 1
    parent = done[0].info.run_id
    for stage in ("adapt", "index"):
        (r,) = runs_by_stage(client, stage)
        assert r.data.tags["mlflow.parentRunId"] == parent, stage
    adapt_run = runs_by_stage(client, "adapt")[0]
    its = runs_by_stage(client, "adapt-iteration")
    assert sorted(r.data.tags["iteration"] for r in its) == ["1", "2"]
    assert all(r.data.tags["mlflow.parentRunId"] == adapt_run.info.run_id for r in its)
    # cost as a measured quantity: each student's samples ÷ the pretraining run's samples
    (pre,) = runs_by_stage(client, "pretrain")
    pretrain_samples = pre.data.metrics["compute/train_samples"]
    steps = max(m.step for m in client.get_metric_history(pre.info.run_id, "train/loss"))  # logged at the last step
    assert pretrain_samples == steps * int(pre.data.params["train.batch_size"])
    for r in its:
        spent = r.data.metrics["compute/train_samples"]
        assert spent == max(1, round(0.2 * pretrain_samples / 64)) * 64  # replay budget 0.2, batch 64
        assert abs(r.data.metrics["compute/pretrain_equivalents"] - spent / pretrain_samples) < 1e-9
    first_parent = [r for r in pipelines if r.info.run_id != parent][0].info.run_id
    assert runs_by_stage(client, "download")[0].data.tags["mlflow.parentRunId"] == first_parent
    assert client.get_model_version_by_alias("cerebro-search", "champion")
    arts = _http("POST", f"{api}/artifacts/filter", {"artifacts": {"key": {"any_": ["pipeline-summary"]}}})
    assert arts and "recall@10" in arts[0]["data"]

    # every stage wrote to the bucket, nothing to the local default root
    keys = _keys(servers, "cerebro/")
    for what in (".tar", "manifest.json", ".pt", "/parts/cerebro-search/"):
        assert any(what in k for k in keys), (what, keys[:20])
    assert any(k.startswith("cerebro/demo/") and "adapt" in k and k.endswith(".tar") for k in keys), keys[:40]
    assert not any(p.is_file() for p in (tmp / "home" / "data").rglob("*"))
    assert _keys(servers, "mlflow/")  # MLflow's artifacts: on S3 too, through its server

    p = subprocess.run([str(BIN / "cerebro"), "search", "a red circle on snow", "-k", "3", "--json", "-c",
                        "configs/demo.yaml"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    hits = json.loads(p.stdout)["results"]
    assert len(hits) == 3 and all(Path(h["uri"]).exists() for h in hits)  # the local mirror, served by path
    assert all(h["origin_uri"].startswith(f"s3://{bucket}/images/") for h in hits)


def test_scrape_event_on_s3_triggers_reindex(servers, shared_data):
    api, env, tmp, bucket = servers["api"], servers["env"], servers["tmp"], servers["bucket"]
    local = tmp / "scrapes" / "new-batch"
    local.mkdir(parents=True)
    for p in sorted((shared_data / "cifar10_animals" / "test" / "frog").glob("*.jpg"))[:8]:
        shutil.copy(p, local / p.name)
    assert _upload(servers, local, "scrapes/new-batch") == 8
    scrape = f"s3://{bucket}/scrapes/new-batch"
    # the deployment keeps its storage on the bucket: its parameters edited as in the UI
    dep = _http("GET", f"{api}/deployments/name/reindex/reindex")
    _http("PATCH", f"{api}/deployments/{dep['id']}", {"parameters": {
        **dep["parameters"], "overrides": [f"storage.root=s3://{bucket}/cerebro"]}})
    parts_before = {k for k in _keys(servers, "cerebro/parts/")}
    code = ("from prefect.events import emit_event\n"
            f"emit_event(event='cerebro.scrape.landed', resource={{'prefect.resource.id': 'cerebro.scrape.test'}},"
            f" payload={{'scrape': {scrape!r}}})\n")
    t0 = time.time()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    deadline = time.time() + 180
    runs, seen = [], []
    while time.time() < deadline and not runs:
        # the deployment's daily schedule has runs of its own (scheduled, on the daily folder): the
        # event's run is the one whose scrape is this batch
        seen = _http("POST", f"{api}/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})
        runs = [r for r in seen if r["parameters"].get("scrape") == scrape]
        time.sleep(2)
    assert runs, ("the event did not start a reindex run", [(r["state"]["type"], r["parameters"]) for r in seen])
    fr = wait_flow_run(api, runs[0]["id"], 600)
    assert fr["state"]["type"] == "COMPLETED", (tmp / "worker.log").read_text()[-4000:]
    import mlflow

    r = runs_by_stage(mlflow.MlflowClient(tracking_uri=servers["mlflow"]), "reindex")
    assert r and r[0].data.metrics["new"] == 8 and time.time() - t0 < 900
    # the new version's parts went to the bucket: a few new ones beside the old, not a new copy
    m = r[0].data.metrics
    new_parts = {k for k in _keys(servers, "cerebro/parts/")} - parts_before
    assert new_parts and len(new_parts) == m["version/parts_written"] and m["version/parts_reused"] > 0
    assert m["version/bytes_written"] < m["version/bytes_total"] / 2
    photo = sorted(local.glob("*.jpg"))[3]
    p = subprocess.run([str(BIN / "cerebro"), "search", "--image", str(photo), "-k", "1", "--json", "-c",
                        "configs/demo.yaml"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (hit,) = json.loads(p.stdout)["results"]
    assert hit["source"] == "scrape" and hit["origin_uri"] == f"{scrape}/{photo.name}"


def test_compose_file_validates():
    if not shutil.which("docker-compose"):
        pytest.fail("docker-compose missing: scripts/install-system-deps.sh installs Debian's docker-compose")
    p = subprocess.run(["docker-compose", "-f", str(REPO / "docker" / "docker-compose.yml"), "config", "-q"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cfg = subprocess.run(["docker-compose", "-f", str(REPO / "docker" / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, timeout=120).stdout
    import yaml

    services = yaml.safe_load(cfg)["services"]
    assert {"postgres", "minio", "prefect", "mlflow", "worker", "gpu-worker", "search"} <= set(services)
    # the images as docker/Dockerfile.* build them, by the names scripts/build-image.sh gives
    assert services["worker"]["image"] == services["mlflow"]["image"] == "cerebro-cpu:dev"
    assert services["worker"]["build"]["target"] == "worker" and services["search"]["build"]["target"] == "search"
    assert services["search"]["image"] == "cerebro-search:dev" and services["gpu-worker"]["image"] == "cerebro-gpu:dev"
    assert services["gpu-worker"]["build"]["dockerfile"].endswith("Dockerfile.gpu")
    (dev,) = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"]
    assert "--pool cerebro-gpu" in services["gpu-worker"]["command"]
