"""The ``cerebro`` command line. It drives the Prefect flows, so it lives outside cerebro_core."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
import yaml

from cerebro_cli.text import clean, clean_lines
from cerebro_core.config import CerebroConfig, ConfigError, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Cerebro: wildlife text-to-image search on a CLIP model trained from scratch.",
    pretty_exceptions_enable=False,
)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config in configs/ (default: built-in defaults)")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="show library logs and warnings too")) -> None:
    """Cerebro: wildlife text-to-image search on a CLIP model trained from scratch."""
    from cerebro_core import quiet

    quiet.apply(verbose)


SetOption = typer.Option(
    None, "--set", "-s", help="Override a config key, repeatable: --set train.batch_size=64", metavar="KEY=VALUE"
)


def load(config: Optional[Path], sets: Optional[list[str]]) -> CerebroConfig:
    """Load the config or exit 2 with a message naming the bad key, before anything runs."""
    try:
        cfg = load_config(config, sets or [])
    except ConfigError as exc:
        typer.echo(f"cerebro: invalid configuration:\n{clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    from cerebro_core import tracking
    from cerebro_core.home import resolve

    try:  # a broken tracking database is a one-line error here, not a traceback from deep in MLflow
        tracking.check_store(resolve(cfg), cfg.tracking.lock_wait_s)
    except tracking.TrackingStoreError as exc:
        typer.echo(f"cerebro: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    return cfg


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in [
        "cerebro",
        "torch",
        "torchvision",
        "open_clip_torch",
        "prefect",
        "mlflow",
        "faiss-cpu",
        "faiss-gpu-cu12",
        "webdataset",
        "pyarrow",
        "s3fs",
        "pillow",
        "fastapi",
        "uvicorn",
        "pydantic",
    ]:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            if dist.startswith("faiss-gpu"):
                continue
            out[dist] = "not installed"
    from cerebro_core.data.img2dataset_env import img2dataset_version

    out["img2dataset"] = img2dataset_version() or "not installed"
    return out


@app.command()
def info(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Versions, the resolved config (secrets masked), MLflow, Prefect, storage and devices."""
    cfg = load(config, set_)
    from cerebro_core import devices
    from cerebro_core.home import resolve

    ep = resolve(cfg)
    report = {
        "versions": _versions(),
        "state_dir": str(ep.home),
        "mlflow_tracking_uri": ep.tracking_uri,
        "mlflow_tracking_source": ep.tracking_source,
        "prefect_api": ep.prefect_api,
        "prefect_home": str(ep.prefect_home),
        "storage_root": ep.storage_root,
        "devices": devices.describe(),
        "config": cfg.masked(),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo("Cerebro")
    typer.echo("== versions")
    for k, v in report["versions"].items():
        typer.echo(f"  {k:<16} {v}")
    typer.echo("== endpoints")
    typer.echo(f"  state dir        {report['state_dir']}")
    typer.echo(f"  MLflow tracking  {report['mlflow_tracking_uri']}  ({report['mlflow_tracking_source']})")
    api = report["prefect_api"]
    typer.echo(f"  Prefect API      {api}" + ("  (temporary local server per run)" if api == "ephemeral" else ""))
    typer.echo(f"  Prefect home     {report['prefect_home']}")
    typer.echo(f"  storage root     {report['storage_root']}")
    d = report["devices"]
    typer.echo("== devices")
    typer.echo(f"  CPU threads      {d['cpu_affinity']} usable of {d['cpu_count']} (torch uses {d['torch_threads']})")
    typer.echo(f"  CUDA devices     {d['cuda_device_count']}")
    for dev in d["cuda_devices"]:
        typer.echo(f"    cuda:{dev['index']}  {dev['name']}  {dev['memory_gib']} GiB")
    typer.echo("== config")
    typer.echo("  " + yaml.safe_dump(report["config"], sort_keys=False).replace("\n", "\n  ").rstrip())


@app.command()
def plan(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    device_kind: Optional[str] = typer.Option(
        None, "--device-kind", "--gpu", help="the device kind to project for: H100, H200, A100, RTX 4090 or cpu "
        "(default: the GPU visible here; with none visible, H100, said to be assumed)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    remote: bool = typer.Option(False, "--remote", help="read a remote (s3://, http) URL list and manifest to "
                                "count rows; without it nothing remote is touched and the rows are assumed"),
) -> None:
    """Each stage's work and its projected time on the configured devices, before anything runs."""
    cfg = load(config, set_)
    import contextlib
    from dataclasses import asdict

    from cerebro_core import plan as planner
    from cerebro_core.storage import local_only

    try:
        with contextlib.nullcontext() if remote else local_only():  # no credential lookup unless asked
            stages = planner.plan(cfg, device_kind)
    except planner.PlanError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps([asdict(s) for s in stages], indent=2))
        return
    typer.echo(f"Plan for {cfg.name} (figures: {planner.TABLE.name}; 'original' = the original system, 4 × RTX 4090)")
    typer.echo(f"  {'stage':<9} {'projected':>10} {'original':>10}  work")
    for s in stages:
        typer.echo(f"  {s.stage:<9} {planner.human(s.seconds):>10} {planner.human(s.original_s):>10}  {s.work}")
        for line in s.rates + s.notes:
            typer.echo(f"  {'':<9} {'':>10} {'':>10}    {line}")
    total = sum(s.seconds for s in stages if s.seconds is not None)
    typer.echo(f"  {'total':<9} {planner.human(total):>10}")
    for s in planner.over_a_day(stages):
        typer.echo(f"WARNING: {s.stage} is projected to take {planner.human(s.seconds)} (over a day)", err=True)


def _start_prefect(cfg: CerebroConfig) -> Callable[[], None]:
    """Export the embedded defaults (PREFECT_HOME, MLflow URI) before Prefect is imported; without
    PREFECT_API_URL, start a temporary Prefect API that dies with this command (prefect_api.py).
    It starts while the command imports its flow; call what this returns before running the flow."""
    from cerebro_cli.prefect_api import PrefectApiError, start_temporary_api
    from cerebro_core.home import prepare_environment

    ep = prepare_environment(cfg)
    api = start_temporary_api(ep.prefect_home) if ep.prefect_api == "ephemeral" else None

    def ready() -> None:
        try:
            if api is not None:
                api.wait()
        except PrefectApiError as exc:
            typer.echo(f"cerebro: {clean_lines(exc)}", err=True)
            raise typer.Exit(3) from None
        from cerebro_cli import prefect_reap  # runs of a killed command: Crashed, as MLflow's are FAILED

        prefect_reap.mark_runs()
        prefect_reap.reap(lambda m: typer.echo(f"cerebro: {m}", err=True))

    return ready


@app.command()
def download(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Stage 1: URL list -> webdataset shards with img2dataset (resumable; local or s3://)."""
    cfg = load(config, set_)
    from cerebro_core.data.url_list import DownloadInputError, read_url_list
    from cerebro_core.data.img2dataset_env import Img2DatasetNotFound, img2dataset_python
    from cerebro_core.storage import Storage

    try:
        read_url_list(cfg.download, Storage(cfg.storage))
        img2dataset_python()
    except (DownloadInputError, Img2DatasetNotFound) as exc:
        typer.echo(f"cerebro download: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    ready = _start_prefect(cfg)
    from flows.download import download_flow
    ready()

    result = download_flow(config=str(config) if config else None, overrides=list(set_ or []))
    s = result.stats
    typer.echo(
        f"downloaded {s.successes}/{s.total_rows} ({s.success_rate:.1%}) into {len(result.shards)} shards "
        f"at {result.output}; {s.images_per_s:.1f} images/s; failures: {s.failures_by_reason or 'none'}"
    )
    typer.echo(f"manifest: {clean(result.manifest_url)} (hash {result.manifest_hash})")


@app.command()
def pretrain(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    shards: Optional[str] = typer.Option(None, help="download output or manifest.json (default: the config's)"),
) -> None:
    """Stage 2: CLIP from random weights on the downloaded shards (torchrun, resumable)."""
    cfg = load(config, set_)
    from cerebro_core.data.shardset import default_output, load_manifest
    from cerebro_core.home import resolve
    from cerebro_core.model.factory import model_config
    from cerebro_core.storage import Storage

    try:
        model_config(cfg.train.model)
        load_manifest(Storage(cfg.storage), shards or default_output(cfg.download, resolve(cfg).storage_root, cfg.name))
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"cerebro pretrain: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    ready = _start_prefect(cfg)
    from flows.pretrain import pretrain_flow
    ready()

    mv = pretrain_flow(config=str(config) if config else None, overrides=list(set_ or []), shards=shards)
    if mv is None:
        typer.echo(f"node {cfg.compute.node_rank} of {cfg.compute.nnodes}: training done; node 0 registers the model")
        return
    typer.echo(f"registered {mv.name} v{mv.version} ({mv.model}) from run {mv.run_id}")
    typer.echo("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(mv.metrics.items())))


@app.command()
def adapt(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    start_version: Optional[str] = typer.Option(None, help="cerebro-clip version to start from (default: champion)"),
) -> None:
    """Stage 3: pseudo-label wildlife images and train a student on them, adapt.iterations times; keep the best."""
    cfg = load(config, set_)
    from cerebro_core.adapt.stage import AdaptInputError, gather

    try:
        gather(cfg)
    except AdaptInputError as exc:
        typer.echo(f"cerebro adapt: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    ready = _start_prefect(cfg)
    from flows.adapt import adapt_flow
    ready()

    res = adapt_flow(config=str(config) if config else None, overrides=list(set_ or []), start_version=start_version)
    for r in res.iterations:
        typer.echo("iteration {iteration}: ".format(**r) + ", ".join(
            f"{k}={v:.3f}" for k, v in r.items() if k in ("selected", "pseudo_label_precision", "val/top1", "test/top1")
            and isinstance(v, (int, float))))
    typer.echo(f"best iteration {res.best_iteration}: {res.model.name} v{res.model.version} is champion")


@app.command()
def index(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    clip_version: Optional[str] = typer.Option(None, help="cerebro-clip version (default: alias champion, else latest)"),
) -> None:
    """Stage 4: embed the wildlife sources, build a tuned FAISS index, publish cerebro-search@champion."""
    cfg = load(config, set_)
    from collections import Counter

    from cerebro_core.index.stage import IndexInputError, scan_sources

    try:
        scan_sources(cfg.index.sources, cfg.index.video_frame_interval, Counter())
    except (IndexInputError, FileNotFoundError) as exc:
        typer.echo(f"cerebro index: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    ready = _start_prefect(cfg)
    from flows.index import index_flow
    ready()

    sv = index_flow(config=str(config) if config else None, overrides=list(set_ or []), clip_version=clip_version)
    if sv is None:
        typer.echo(f"node {cfg.compute.node_rank} of {cfg.compute.nnodes}: embedding done; node 0 publishes the index")
        return
    typer.echo(f"published {sv.name} v{sv.version} (champion): {sv.n} items, {sv.kind} index, "
               f"recall@10 {sv.recall_at_10:.3f}, search p50 {sv.latency_p50_ms:.2f} ms")


@app.command()
def reindex(
    scrape: str = typer.Option(..., "--scrape", help="folder, s3:// prefix, or URL list of new media"),
    source: str = typer.Option("scrape", help="source name recorded for the new items; a source index.sources names is "
                                              "read with its own metadata, detections and layout"),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Add a new wildlife scrape to the published index (only what is new; idempotent)."""
    cfg = load(config, set_)
    if not scrape.startswith("s3://") and not Path(scrape.removeprefix("file://")).exists():
        typer.echo(f"cerebro reindex: --scrape: no such folder or URL list: {clean(scrape)}", err=True)
        raise typer.Exit(2)
    ready = _start_prefect(cfg)
    from flows.reindex import reindex_flow
    ready()

    r = reindex_flow(scrape=scrape, config=str(config) if config else None, overrides=list(set_ or []), source=source)
    why = f" ({', '.join(f'{k} {v}' for k, v in sorted(r.failures.items()))})" if r.failures else ""
    typer.echo(f"scanned {r.scanned}: {r.new} new, {r.duplicates} duplicates, {r.failed} failed{clean(why)}; "
               f"{r.size_before} -> {r.size_after} items ({r.reason})")
    typer.echo(f"published {r.version.name} v{r.version.version} (champion)" if r.version else "nothing published")


from cerebro_cli import search_cmds  # noqa: E402,F401 — registers `search` and `serve` here, in order
from cerebro_cli import ui  # noqa: E402,F401 — registers `ui`
from cerebro_cli import gc_cmd  # noqa: E402,F401 — registers `gc`
from cerebro_cli import review_cmds  # noqa: E402,F401 — registers `review export|import`
from cerebro_cli import model_cmds  # noqa: E402,F401 — registers `export-model`


@app.command()
def demo(
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", "-c", help="demo config"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """The offline CPU demo: generate images, then run the whole pipeline on them."""
    t0 = time.monotonic()
    cfg = load(config, set_)
    from cerebro_core.demo_data import make_demo_data
    from cerebro_core.home import resolve

    ep = resolve(cfg)
    tsv = make_demo_data(ep.home / "demo")
    typer.echo(f"demo data: {tsv}")
    info(config=config, set_=set_, as_json=False)
    ready = _start_prefect(cfg)
    from flows.pipeline import PipelineParams, pipeline_flow
    ready()

    summary = pipeline_flow(PipelineParams(config=str(config), overrides=list(set_ or [])))
    typer.echo(f"pipeline done in {sum(summary['timings_s'].values()):.0f} s: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in summary["timings_s"].items()))
    from cerebro_core.demo_data import search_quality
    from cerebro_core.search.local_copy import load_searcher

    version, searcher = load_searcher(f"models:/{cfg.tracking.search_model_name}@champion", ep.tracking_uri)
    q = search_quality(searcher)
    typer.echo(f'demo search (v{version}): R-precision of "a {{colour}} {{shape}} on {{background}}" over '
               f"{q['queries']} combinations: mean {q['mean']:.3f}, lowest {q['min']:.3f}")
    typer.echo(f"demo done in {time.monotonic() - t0:.0f} s")
    typer.echo("")
    typer.echo("Search it:")
    exe = ".venv/bin/cerebro" if Path(".venv/bin/cerebro").exists() else "cerebro"  # the Makefile's, or an image's
    typer.echo(f'  {exe} search "a red circle on snow" -c configs/demo.yaml')
    typer.echo(f"  {exe} serve -c configs/demo.yaml   # then open http://127.0.0.1:8000")
    typer.echo("Inspect the runs, run the pipeline from the Prefect UI:")
    typer.echo(f"  {exe} ui -c configs/demo.yaml   # Prefect UI :4200, MLflow UI :5000")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
