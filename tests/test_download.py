"""Stage 1, download: real img2dataset against a loopback HTTP server serving real photos and
every bad case; local and S3 (moto server) outputs; SIGKILL + resume; retry_failed; MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from cerebro_core.config import DownloadConfig, StorageConfig
from cerebro_core.data.download import DownloadInputError, download, read_url_list
from cerebro_core.data.shardset import load_manifest
from cerebro_core.storage import Storage
from helpers import REPO, good_pairs, LoopbackServer, seed_prefect_home, write_url_list


def read_shards(shard_paths: list[str]) -> list[dict]:
    """Every sample of the shards, read with webdataset itself."""
    ds = wds.WebDataset(shard_paths, shardshuffle=False).decode("pil")
    out = []
    for s in ds:
        meta = s["json"]
        out.append({"key": s["__key__"], "id": meta["cerebro_id"], "txt": s["txt"], "jpg": s["jpg"], "meta": meta})
    return out


def check_shards(samples: list[dict], expect: dict, size: int) -> None:
    ids = Counter(s["id"] for s in samples)
    assert set(ids) == set(expect["good"]), "shards must hold exactly the good rows"
    assert max(ids.values()) == 1, "no sample twice"
    assert not set(ids) & set(expect["bad"]), "nothing from a bad row"
    for s in samples:
        assert s["txt"] == expect["good"][s["id"]]
        assert s["jpg"].size == (size, size)
        assert s["meta"]["status"] == "success" and len(s["meta"]["sha256"]) == 64


def test_download_every_case_local(http_images, tmp_path):
    expect = write_url_list(tmp_path / "cc3m.tsv", http_images)  # raw CC3M layout, no header
    cfg = DownloadConfig(url_list=str(tmp_path / "cc3m.tsv"), image_size=48, samples_per_shard=25, threads=8,
                         timeout=2)
    res = download(cfg, Storage(), str(tmp_path / "out"), log=lambda s: None)
    s = res.stats
    assert s.total_rows == expect["rows"]
    assert s.successes == len(expect["good"]) == res.num_samples
    assert s.failures_by_reason == dict(Counter(expect["bad"].values()))
    assert s.dropped_empty_caption == 1 and s.failures == len(expect["bad"])
    assert s.bytes_written == sum(os.path.getsize(p) for p in res.shards)
    check_shards(read_shards(res.shards), expect, 48)
    # the manifest: sizes.json in open_clip's format beside the shards, and the full result
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert sizes == res.sizes and sum(sizes.values()) == s.successes
    assert load_manifest(Storage(), str(tmp_path / "out")) == res
    # a rerun with the same config is a no-op with the same manifest
    again = download(cfg, Storage(), str(tmp_path / "out"), log=lambda s: None)
    assert again.manifest_hash == res.manifest_hash and again.stats.new_successes == 0
    # the opt-out is honoured by default (above: disallowed_by_robots); configured off, it downloads
    (tmp_path / "optout.tsv").write_text(f"an opted-out photo\t{http_images.base}/bad/noai.jpg\n")
    off = download(cfg.model_copy(update={"url_list": str(tmp_path / "optout.tsv"), "disallowed_header_directives": []}),
                   Storage(), str(tmp_path / "out-optout"), log=lambda s: None)
    assert off.stats.successes == 1 and off.stats.failures == 0


def test_download_to_s3(http_images, s3_env, tmp_path):
    import boto3

    expect = write_url_list(tmp_path / "cc3m.tsv", http_images)
    st = Storage(StorageConfig(endpoint_url=s3_env["endpoint"]))
    out = f"s3://{s3_env['bucket']}/cc/shards"
    cfg = DownloadConfig(url_list=str(tmp_path / "cc3m.tsv"), image_size=32, samples_per_shard=40, threads=8,
                         timeout=2)
    res = download(cfg, st, out, log=print)
    assert res.stats.successes == len(expect["good"])
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3_env["endpoint"]).list_objects_v2(
        Bucket=s3_env["bucket"], Prefix="cc/shards/")["Contents"]}
    assert {"cc/shards/manifest.json", "cc/shards/sizes.json", "cc/shards/00000.tar"} <= keys
    local = []
    for url in res.shards:
        dst = tmp_path / "dl" / url.rsplit("/", 1)[-1]
        st.get_file(url, dst)
        local.append(str(dst))
    check_shards(read_shards(local), expect, 32)
    assert load_manifest(st, out).manifest_hash == res.manifest_hash


def _slow_server(shared: Path, n: int, delay: float) -> tuple[LoopbackServer, list[tuple[str, str]]]:
    pairs = good_pairs(shared, n_coco=80, n_cifar_per_class=20)
    files = {f"{i}.jpg": p for i, (_, p) in enumerate(pairs)}
    srv = LoopbackServer(files, {})
    srv.handler.delay_s = delay
    rows = [(f"{pairs[i % len(pairs)][0]} #{i}", f"/img/{i % len(pairs)}.jpg?r={i}") for i in range(n)]
    return srv, rows


RESUME_SCRIPT = """
import sys
from cerebro_core.config import DownloadConfig
from cerebro_core.storage import Storage
from cerebro_core.data.download import download
cfg = DownloadConfig(url_list=sys.argv[1], image_size=32, samples_per_shard=20, threads=2, timeout=5)
download(cfg, Storage(), sys.argv[2])
"""


def test_sigkill_then_resume(shared_data, tmp_path):
    srv, rows = _slow_server(shared_data, n=240, delay=0.04)
    with srv:
        lst = tmp_path / "list.tsv"
        lst.write_text("".join(f"{c}\t{srv.base}{u}\n" for c, u in rows))
        out = tmp_path / "out"
        script = tmp_path / "run.py"
        script.write_text(RESUME_SCRIPT)
        proc = subprocess.Popen([sys.executable, str(script), str(lst), str(out)], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and len(list(out.glob("*_stats.json"))) < 2:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and img2dataset's workers, mid-download
        proc.wait()
        done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_stats.json")}
        assert 2 <= len(done_before) < 12, "the kill must land part way"
        assert not (out / "manifest.json").exists()
        cfg = DownloadConfig(url_list=str(lst), image_size=32, samples_per_shard=20, threads=4, timeout=5)
        res = download(cfg, Storage(), str(out), log=lambda s: None)
    assert res.stats.successes == len(rows) and res.stats.shards == 12
    for name, mtime in done_before.items():  # finished shards were not downloaded again
        assert (out / name).stat().st_mtime_ns == mtime
    ids = Counter(s["id"] for s in read_shards(res.shards))
    assert set(ids) == set(range(len(rows))) and max(ids.values()) == 1
    assert res.stats.new_successes == len(rows) - 20 * len(done_before)


def test_retry_failed_redownloads_only_failures(shared_data, tmp_path):
    pairs = good_pairs(shared_data, n_coco=10, n_cifar_per_class=0)
    files = {f"{i}.jpg": p for i, (_, p) in enumerate(pairs)}
    flaky = pairs[3][1].read_bytes()
    blobs = {"/flaky.jpg": (503, "text/plain", b"try later")}
    with LoopbackServer(files, blobs) as srv:
        lst = tmp_path / "list.csv"
        lines = ["url,caption"] + [f"{srv.base}/img/{i}.jpg,{c.replace(',', ' ')}" for i, (c, _) in enumerate(pairs)]
        lines.append(f"{srv.base}/flaky.jpg,a flaky photo")
        lst.write_text("\n".join(lines) + "\n")
        cfg = DownloadConfig(url_list=str(lst), image_size=32, samples_per_shard=4, threads=4)
        first = download(cfg, Storage(), str(tmp_path / "out"), log=lambda s: None)
        assert first.stats.successes == 10 and first.stats.failures_by_reason == {"http_503": 1}
        blobs["/flaky.jpg"] = (200, "image/jpeg", flaky)  # the server recovers
        again = download(cfg, Storage(), str(tmp_path / "out"), log=lambda s: None)
        assert again.stats.successes == 10, "without retry_failed nothing is downloaded again"
        cfg.retry_failed = True
        fixed = download(cfg, Storage(), str(tmp_path / "out"), log=lambda s: None)
    assert fixed.stats.successes == 11 and fixed.stats.failures == 0
    assert fixed.stats.new_successes == 1 and fixed.stats.shards == first.stats.shards + 1
    samples = read_shards(fixed.shards)
    ids = Counter(s["id"] for s in samples)
    assert set(ids) == set(range(11)) and max(ids.values()) == 1
    assert [s["txt"] for s in samples if s["id"] == 10] == ["a flaky photo"]


def test_input_formats(tmp_path):
    st = Storage()
    (tmp_path / "named.tsv").write_text("url\tcaption\textra\nhttp://a/1.jpg\tone\tx\nhttp://a/2.jpg\ttwo\ty\n")
    t, meta = read_url_list(DownloadConfig(url_list=str(tmp_path / "named.tsv")), st)
    assert meta["format"] == "tsv" and t.column("caption").to_pylist() == ["one", "two"]
    pq.write_table(pa.table({"link": ["http://a/1.jpg"], "text": ["hi"]}), tmp_path / "l.parquet")
    t, meta = read_url_list(DownloadConfig(url_list=str(tmp_path / "l.parquet"), url_col="link", caption_col="text"),
                            st)
    assert t.column("url").to_pylist() == ["http://a/1.jpg"] and t.column("caption").to_pylist() == ["hi"]
    # iNaturalist-style export: image_url column, no caption
    (tmp_path / "inat.csv").write_text("id,image_url,scientific_name\n1,http://a/1.jpg,Vulpes vulpes\n")
    t, meta = read_url_list(DownloadConfig(url_list=str(tmp_path / "inat.csv")), st)
    assert meta["url_col"] == "image_url" and not meta["has_caption"] and t.column_names == ["url", "cerebro_id"]
    # the raw CC3M TSV as published, captions containing quotes
    (tmp_path / "cc3m.tsv").write_text('a "quoted" caption\thttp://a/1.jpg\nsecond\thttp://a/2.jpg\n')
    t, meta = read_url_list(DownloadConfig(url_list=str(tmp_path / "cc3m.tsv")), st)
    assert meta["format"] == "cc3m_tsv" and t.column("caption").to_pylist()[0] == 'a "quoted" caption'
    # empty captions: dropped by default, kept on request
    (tmp_path / "e.tsv").write_text("x\thttp://a/1.jpg\n\thttp://a/2.jpg\n")
    assert read_url_list(DownloadConfig(url_list=str(tmp_path / "e.tsv")), st)[0].num_rows == 1
    kept = read_url_list(DownloadConfig(url_list=str(tmp_path / "e.tsv"), empty_captions="keep"), st)[0]
    assert kept.column("caption").to_pylist() == ["x", ""]


@pytest.mark.parametrize(
    "content, overrides, message",
    [
        (None, {}, "download.url_list: file not found"),
        ("", {}, "is empty"),
        ("link,caption\nhttp://a/1.jpg,x\n", {}, "download.url_col: column 'url' not found"),
        ("url,caption\nhttp://a/1.jpg,x\n", {"caption_col": "text"}, "download.caption_col: column 'text' not found"),
        ("url,caption\n", {}, "has no rows"),
    ],
)
def test_bad_url_lists_fail_before_any_worker(tmp_path, content, overrides, message):
    lst = tmp_path / "list.csv"
    if content is not None:
        lst.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(DownloadInputError, match=message):
        download(DownloadConfig(url_list=str(lst), **overrides), Storage(), str(out), log=lambda s: None)
    assert not out.exists()


def test_cli_download_through_prefect_and_mlflow(http_images, tmp_path, migrated_prefect_db):
    expect = write_url_list(tmp_path / "cc3m.tsv", http_images)
    home = tmp_path / "home"
    seed_prefect_home(home / "prefect", migrated_prefect_db)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME")}
    env["CEREBRO_HOME"] = str(home)
    cerebro = str(Path(sys.executable).parent / "cerebro")
    args = [cerebro, "download", "-c", str(REPO / "configs/demo.yaml"), "--set", f"download.url_list={tmp_path}/cc3m.tsv",
            "--set", "download.timeout=2", "--set", "download.samples_per_shard=50"]
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert f"downloaded {len(expect['good'])}/{expect['rows']}" in p.stdout
    # a bad list exits 2 before any worker or server starts
    bad = subprocess.run(args[:4] + ["--set", f"download.url_list={tmp_path}/missing.tsv"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "download.url_list: file not found" in bad.stderr
    (tmp_path / "links.csv").write_text("link,caption\nhttp://127.0.0.1:9/a.jpg,a fox\n")  # no `url` column
    bad = subprocess.run(args[:4] + ["--set", f"download.url_list={tmp_path}/links.csv"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "download.url_col: column 'url' not found" in bad.stderr, bad.stderr[-2000:]
    (tmp_path / "blank.csv").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,\n")  # only rows with no caption
    bad = subprocess.run(args[:4] + ["--set", f"download.url_list={tmp_path}/blank.csv"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "has no usable rows" in bad.stderr, bad.stderr[-2000:]  # found in the flow: no retry

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    exp = client.get_experiment_by_name("cerebro")
    assert exp.artifact_location.startswith(home.as_uri())  # all state under CEREBRO_HOME, none in cwd
    assert not (tmp_path / "mlruns").exists()
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'download'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["successes"] == len(expect["good"])
    assert run.data.metrics["failures.decompression_bomb"] == 1
    assert run.data.params["download.image_size"] == "64"
    assert run.data.tags["manifest_hash"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"download_stats.json", "manifest.json"} <= arts
    stats = json.loads(Path(client.download_artifacts(run.info.run_id, "download_stats.json", str(tmp_path))).read_text())
    assert stats["successes"] == len(expect["good"])

    # the Prefect table artifact, read back from the same Prefect home
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import asyncio\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        arts = await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=['download-stats'])))\n"
        "        print('ARTIFACTS', len(arts), arts[0].type)\n"
        "        print(arts[0].data)\n"
        "asyncio.run(main())\n"
    )
    env["PREFECT_HOME"] = str(home / "prefect")
    q = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=300)
    assert q.returncode == 0, q.stderr[-2000:]
    assert "ARTIFACTS 1 table" in q.stdout and "success rate" in q.stdout
