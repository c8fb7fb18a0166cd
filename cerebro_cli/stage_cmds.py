"""The stage commands (download, pretrain, adapt, index, reindex): each one
:func:`cerebro_cli.app.stage_command` (config → input check → Prefect → flow) and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cerebro_cli.app import ConfigOption, SetOption, Stage, app, stage_command
from cerebro_cli.text import clean
from cerebro_core.config import CerebroConfig


def _download() -> Stage:
    from cerebro_core.data.img2dataset_env import Img2DatasetNotFound, img2dataset_python
    from cerebro_core.data.url_list import DownloadInputError, check_url_list
    from cerebro_core.storage import Storage

    def check(cfg: CerebroConfig) -> None:
        check_url_list(cfg.download, Storage(cfg.storage))  # there, a known format, its columns: not parsed whole
        img2dataset_python()

    return Stage(check, (DownloadInputError, Img2DatasetNotFound), "flows.download:download_flow")


@app.command()
def download(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Stage 1: URL list -> webdataset shards with img2dataset (resumable; local or s3://)."""
    _, result = stage_command("download", config, set_, _download)
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

    def stage() -> Stage:
        from cerebro_core.data.shardset import default_output, load_manifest
        from cerebro_core.home import resolve
        from cerebro_core.model.factory import model_config
        from cerebro_core.storage import Storage

        def check(cfg: CerebroConfig) -> None:
            model_config(cfg.train.model)
            load_manifest(Storage(cfg.storage), shards or default_output(cfg.download, resolve(cfg).storage_root, cfg.name))

        return Stage(check, (ValueError, FileNotFoundError), "flows.pretrain:pretrain_flow")

    cfg, mv = stage_command("pretrain", config, set_, stage, shards=shards)
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

    def stage() -> Stage:
        from cerebro_core.adapt.stage import AdaptInputError, check_inputs

        return Stage(check_inputs, (AdaptInputError,), "flows.adapt:adapt_flow")

    _, res = stage_command("adapt", config, set_, stage, start_version=start_version)
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

    def stage() -> Stage:
        from cerebro_core.data.vocab import VocabularyError
        from cerebro_core.index.stage import IndexInputError, check_inputs

        return Stage(check_inputs, (IndexInputError, VocabularyError), "flows.index:index_flow")

    cfg, sv = stage_command("index", config, set_, stage, clip_version=clip_version)
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

    def stage() -> Stage:
        from cerebro_core.index.reindex import ScrapeError

        def check(cfg: CerebroConfig) -> None:
            if not scrape.startswith("s3://") and not Path(scrape.removeprefix("file://")).exists():
                raise ScrapeError(f"--scrape: no such folder or URL list: {clean(scrape)}")

        return Stage(check, (ScrapeError,), "flows.reindex:reindex_flow")

    _, r = stage_command("reindex", config, set_, stage, scrape=scrape, source=source)
    why = f" ({', '.join(f'{k} {v}' for k, v in sorted(r.failures.items()))})" if r.failures else ""
    typer.echo(f"scanned {r.scanned}: {r.new} new, {r.duplicates} duplicates, {r.failed} failed{clean(why)}; "
               f"{r.size_before} -> {r.size_after} items ({r.reason})")
    typer.echo(f"published {r.version.name} v{r.version.version} (champion)" if r.version else "nothing published")

