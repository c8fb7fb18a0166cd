"""The ``cerebro`` command line. It drives the Prefect flows, so it lives outside cerebro_core."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml

from cerebro_core.config import CerebroConfig, ConfigError, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Cerebro: wildlife text-to-image search on a CLIP model trained from scratch.",
    pretty_exceptions_enable=False,
)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config in configs/ (default: built-in defaults)")
@app.callback()
def _root() -> None:
    """Cerebro: wildlife text-to-image search on a CLIP model trained from scratch."""


SetOption = typer.Option(
    None, "--set", "-s", help="Override a config key, repeatable: --set train.batch_size=64", metavar="KEY=VALUE"
)


def load(config: Optional[Path], sets: Optional[list[str]]) -> CerebroConfig:
    """Load the config or exit 2 with a message naming the bad key, before anything runs."""
    try:
        return load_config(config, sets or [])
    except ConfigError as exc:
        typer.echo(f"cerebro: invalid configuration:\n{exc}", err=True)
        raise typer.Exit(2) from None


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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
