"""`cerebro gc`: the parts no registered search version references (a dry run unless --delete)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cerebro_cli.app import ConfigOption, SetOption, app, load
from cerebro_cli.text import clean


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


@app.command()
def gc(
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
    delete: bool = typer.Option(False, "--delete", help="delete them (default: only list what would go)"),
    min_age_hours: float = typer.Option(1.0, min=0, help="keep unreferenced parts newer than this (a publish in progress)"),
    verbose_list: bool = typer.Option(False, "--list", help="print each unreferenced part's URL"),
    verify: bool = typer.Option(False, "--verify", help="first read every part and every cached bundle and check "
                                "their hashes; corrupt parts are moved aside and restored from an intact cached copy"),
) -> None:
    """Garbage-collect search-version parts: only those no registered version references."""
    cfg = load(config, set_)
    from cerebro_core.home import prepare_environment
    from cerebro_core.index.gc import collect

    prepare_environment(cfg)
    if verify:
        from cerebro_core.index.gc import verify as run_verify

        v = run_verify(cfg, log=typer.echo)
        lost = sorted(set(v.corrupt) - set(v.repaired))
        typer.echo(f"verified {v.parts} part(s), {_mb(v.bytes_read)}, and {v.bundles} cached bundle(s) in "
                   f"{v.seconds:.1f} s: {len(v.corrupt)} corrupt part(s), {len(v.repaired)} restored; "
                   f"{len(v.bundles_bad)} cached bundle(s) removed")
        if lost:
            for url in lost:
                typer.echo(f"cerebro gc: {url} is corrupt and no intact copy is cached; it is named by "
                           f"{', '.join(v.corrupt[url]) or 'no registered version'}: publish again (`cerebro index`)",
                           err=True)
            raise typer.Exit(1)
    r = collect(cfg, delete=delete, min_age_s=min_age_hours * 3600, log=typer.echo)
    if verbose_list:
        for url in r.garbage:
            typer.echo(clean(url))
    typer.echo(f"{r.versions} registered version(s) of {cfg.tracking.search_model_name} reference {r.referenced} "
               f"of {r.parts} part(s); {r.young} unreferenced part(s) newer than {min_age_hours:g} h kept")
    if r.deleted:
        typer.echo(f"deleted {len(r.garbage)} part(s), {_mb(r.garbage_bytes)}; "
                   f"{r.cache_removed} assembled bundle(s) of versions without an alias removed from the cache")
    else:
        typer.echo(f"would delete {len(r.garbage)} part(s), {_mb(r.garbage_bytes)} (dry run: --delete to delete)")
