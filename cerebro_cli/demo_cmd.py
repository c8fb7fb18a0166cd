"""``cerebro demo``: the offline CPU demo, as a stage command (its input check makes the demo's
images and prints ``cerebro info``; its flow is the whole pipeline), then a search of the result."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from cerebro_cli.app import SetOption, Stage, app, stage_command
from cerebro_core.config import CerebroConfig


@app.command()
def demo(
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", "-c", help="demo config"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """The offline CPU demo: generate images, then run the whole pipeline on them."""
    from cerebro_cli.info_cmds import info
    from cerebro_core.home import resolve

    t0 = time.monotonic()

    def prepare(cfg: CerebroConfig) -> None:  # the demo's own input: its generated images
        from cerebro_core.demo_data import make_demo_data

        typer.echo(f"demo data: {make_demo_data(resolve(cfg).home / 'demo')}")
        info(config=config, set_=set_, as_json=False)

    cfg, summary = stage_command("demo", config, set_, lambda: Stage(prepare, (), "cerebro_cli.demo_cmd:pipeline"))
    typer.echo(f"pipeline done in {sum(summary['timings_s'].values()):.0f} s: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in summary["timings_s"].items()))
    from cerebro_core.demo_data import search_quality
    from cerebro_core.search.local_copy import load_searcher

    version, searcher = load_searcher(f"models:/{cfg.tracking.search_model_name}@champion", resolve(cfg).tracking_uri)
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


def pipeline(config: str, overrides: list[str]):
    """The whole pipeline flow, called as the stage commands call theirs."""
    from flows.pipeline import PipelineParams, pipeline_flow

    return pipeline_flow(PipelineParams(config=config, overrides=overrides))
