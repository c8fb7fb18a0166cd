"""The ``cerebro`` Typer app, its shared options, and the one shape every stage command has:
load the config (exit 2 naming a bad key) → check the stage's inputs without doing its work (exit
2 naming what is wrong) → start Prefect (a temporary API unless ``PREFECT_API_URL`` is set) while
the flow module imports → run the flow. Command modules import this one; it imports none of them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from cerebro_cli.text import clean_lines
from cerebro_core.config import CerebroConfig, ConfigError, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Cerebro: wildlife text-to-image search on a CLIP model trained from scratch.",
    pretty_exceptions_enable=False,
)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config in configs/ (default: built-in defaults)")
SetOption = typer.Option(
    None, "--set", "-s", help="Override a config key, repeatable: --set train.batch_size=64", metavar="KEY=VALUE"
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="show library logs and warnings too")) -> None:
    """Cerebro: wildlife text-to-image search on a CLIP model trained from scratch."""
    from cerebro_core import quiet

    quiet.apply(verbose)


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


def start_prefect(cfg: CerebroConfig) -> Callable[[], None]:
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


@dataclass
class Stage:
    """What a stage command runs: ``check(cfg)`` checks the inputs without doing the stage's work,
    raising one of ``errors`` for what it cannot use; ``flow`` names the flow, ``"module:function"``
    (imported while the Prefect API starts)."""

    check: Callable[[CerebroConfig], Any]
    errors: tuple[type[Exception], ...]
    flow: str


def stage_command(name: str, config: Optional[Path], sets: Optional[list[str]], stage: Callable[[], Stage],
                  **flow_args: Any) -> tuple[CerebroConfig, Any]:
    """One stage command. ``stage()`` imports the stage (after the config loaded: a bad key costs
    no torch import) and says what to check and run. An input error, from the check or raised by
    the flow (one only reading every input finds, e.g. a list with no usable row), exits 2 with
    ``cerebro <name>: <message>``. The flow is called with the config path, the overrides and
    ``flow_args``. Returns (config, flow result)."""
    cfg = load(config, sets)
    st = stage()
    try:
        st.check(cfg)
    except st.errors as exc:
        typer.echo(f"cerebro {name}: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    ready = start_prefect(cfg)
    module, _, attr = st.flow.partition(":")
    run = getattr(importlib.import_module(module), attr)  # imports Prefect and the flow while the API starts
    ready()
    try:
        return cfg, run(config=str(config) if config else None, overrides=list(sets or []), **flow_args)
    except st.errors as exc:
        typer.echo(f"cerebro {name}: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
