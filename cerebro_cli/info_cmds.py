"""``cerebro info`` and ``cerebro plan``: what is installed and configured, and each stage's
projected work, before anything runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

from cerebro_cli.app import ConfigOption, SetOption, app, load


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
