"""`cerebro ui`: the Prefect UI and the MLflow UI on the state dir, ready to click "Run".

One command, on the embedded state (the Prefect database under ``PREFECT_HOME``, MLflow's sqlite
store and artifacts): ``prefect server start`` and ``mlflow server`` on 127.0.0.1, the work pool
``cerebro-cpu`` (process type, ``deployments/cerebro-cpu.json``) with the CPU deployments of
``prefect.yaml`` applied to it, and a process worker on that pool. It prints both URLs and stops
everything on Ctrl-C (or SIGTERM); each child dies with it even under ``kill -9`` (PDEATHSIG, and
its own process group, killed whole on the way out).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

import typer
import yaml

from cerebro_cli.app import ConfigOption, SetOption, app, load
from cerebro_core.procs import pdeathsig

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CPU_POOL, CPU_TEMPLATE = "cerebro-cpu", REPO / "deployments" / "cerebro-cpu.json"


def _port(requested: int) -> int:
    """``requested``, or one the kernel picks for 0; a port in use is a one-line error."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", requested))
        except OSError as exc:
            typer.echo(f"cerebro ui: cannot listen on 127.0.0.1:{requested}: {exc.strerror or exc}; "
                       "choose another with --prefect-port / --mlflow-port (0: any free port)", err=True)
            raise typer.Exit(2) from None
        return s.getsockname()[1]


def cpu_deployments(prefect_yaml: Path = REPO / "prefect.yaml") -> list[str]:
    """The deployments of prefect.yaml that run on the CPU pool (the GPU ones need a GPU pool)."""
    spec = yaml.safe_load(prefect_yaml.read_text())
    return [d["name"] for d in spec["deployments"] if (d.get("work_pool") or {}).get("name") == CPU_POOL]


class Stack:
    """The children of one `cerebro ui`, each in its own process group."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.procs = logs, env, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str], env: Optional[dict[str, str]] = None) -> None:
        out = open(self.logs / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(cmd, env=env or self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pdeathsig)

    def wait_http(self, name: str, url: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{name} did not answer {url} within {timeout_s:.0f} s; see {self.logs / name}.log")

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with status {p.returncode}; see {self.logs / name}.log")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group: what the child started (uvicorn, a flow run) goes with it
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _prefect(env: dict[str, str], *args: str) -> None:
    p = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args[:3])} failed:\n{(p.stdout + p.stderr)[-3000:]}")


def _experiment(cfg) -> str:
    """The experiment's id, created if need be, tagged as model training (the UI opens on runs)."""
    from cerebro_core import tracking

    tracking.configure(cfg)
    return tracking.client().get_experiment_by_name(cfg.tracking.experiment).experiment_id


def _interrupt(*_) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the stack as Ctrl-C does


@app.command()
def ui(
    prefect_port: int = typer.Option(4200, min=0, max=65535, help="Prefect UI and API port (0: any free port)"),
    mlflow_port: int = typer.Option(5000, min=0, max=65535, help="MLflow UI port (0: any free port)"),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Prefect's UI (deployments applied, a worker running) and MLflow's UI on the state dir."""
    from cerebro_core.home import prepare_environment, resolve

    cfg = load(config, set_)
    before = resolve(cfg)
    if before.tracking_source != "embedded" or before.prefect_api != "ephemeral":
        typer.echo("cerebro ui: serves the embedded state; MLFLOW_TRACKING_URI / PREFECT_API_URL / tracking.uri "
                   "already point at servers: open their UIs", err=True)
        raise typer.Exit(2)
    pport, mport = _port(prefect_port), _port(mlflow_port)
    ep = prepare_environment(cfg)
    exp_id = _experiment(cfg)
    home = ep.home.resolve()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    api = f"http://127.0.0.1:{pport}/api"
    env = dict(base, CEREBRO_HOME=str(home), CEREBRO_REPO=str(REPO), PREFECT_HOME=str(ep.prefect_home),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="true", PREFECT_API_URL=api,
               CEREBRO_SCRAPE_DIR=os.environ.get("CEREBRO_SCRAPE_DIR", str(home / "scrapes" / "daily")))
    stack = Stack(home / "ui", env)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                       "--port", str(pport)],
                    env={**{k: v for k, v in env.items() if k != "PREFECT_API_URL"}, "PREFECT_UI_API_URL": api,
                         "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(pport)})
        stack.start("mlflow-server", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mport),
                                      "--backend-store-uri", ep.tracking_uri, "--artifacts-destination",
                                      Path(ep.artifact_root).as_uri(), "--workers", "1"])
        stack.wait_http("prefect-server", f"{api}/health")
        _prefect(env, "work-pool", "create", CPU_POOL, "--type", "process", "--base-job-template",
                 str(CPU_TEMPLATE), "--overwrite")
        names = cpu_deployments()
        _prefect(env, "--no-prompt", "deploy", *[a for n in names for a in ("--name", n)])
        stack.start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", CPU_POOL])
        stack.wait_http("mlflow-server", f"http://127.0.0.1:{mport}/health")
        typer.echo(f"Prefect UI  http://127.0.0.1:{pport}/   ({len(names)} deployments on pool {CPU_POOL}, "
                   f"a worker running: {', '.join(names)})")
        typer.echo(f"MLflow UI   http://127.0.0.1:{mport}/#/experiments/{exp_id}?workflowType=machine_learning   "
                   f"(state dir {home})")
        typer.echo(f"logs in {stack.logs}; Ctrl-C stops all")
        while True:
            stack.check()
            time.sleep(1)
    except KeyboardInterrupt:
        typer.echo("cerebro ui: stopping")
    except RuntimeError as exc:
        typer.echo(f"cerebro ui: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
