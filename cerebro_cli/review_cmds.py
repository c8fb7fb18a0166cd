"""`cerebro review export` and `cerebro review import`: verifications out and in as CSV
(uri, sha256, label, reviewer, time), e.g. to and from a camera-trap tool or a spreadsheet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cerebro_cli.app import ConfigOption, SetOption, app, load

review_app = typer.Typer(no_args_is_help=True, help="Verified labels: export and import them as CSV.")
app.add_typer(review_app, name="review")


def _root(cfg) -> str:
    from cerebro_core.home import prepare_environment

    return prepare_environment(cfg).storage_root.rstrip("/")


def _champion_items(cfg):
    """(vocabulary, {name: sha256}) of the champion index: every way a hit names an item (its
    relative path, its original URL, its local path); (None, {}) when nothing is indexed yet."""
    from cerebro_core import tracking
    from cerebro_core.home import cerebro_home, prepare_environment
    from cerebro_core.search.local_copy import bundle_for
    from cerebro_core.search.rows import read_rows

    uri = prepare_environment(cfg).tracking_uri
    try:
        ref = tracking.version_ref(uri, cfg.tracking.search_model_name, alias="champion")
    except Exception:
        return None, {}
    bundle = bundle_for(ref, uri)
    names: dict[str, str] = {}
    for r in read_rows(bundle, cerebro_home()):
        if r.get("sha256") and r.get("media_type") != "video_frame":
            for key in (r.get("path"), r.get("origin_uri"), r.get("uri")):
                if key:
                    names.setdefault(key, r["sha256"])
    return json.loads((bundle / "index.json").read_text()).get("species_vocabulary"), names


@review_app.command("export")
def export(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="CSV file to write (default: standard output)"),
    latest: bool = typer.Option(False, "--latest", help="only the latest verification of each item"),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Every verification in the storage root as CSV: uri, sha256, label, reviewer, time."""
    cfg = load(config, set_)
    from cerebro_core.review.csvio import write_csv
    from cerebro_core.review.store import read_log
    from cerebro_core.storage import Storage

    log = read_log(_root(cfg), Storage(cfg.storage))
    records = list(log.latest().values()) if latest else log.all()
    text = write_csv(records)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"{len(records)} verification(s) written to {out}", err=True)


@review_app.command("import")
def import_(
    csv_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV with label and sha256 or uri"),
    reviewer: Optional[str] = typer.Option(None, help="reviewer of rows that name none"),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Add verifications from CSV (columns uri or sha256, label, reviewer, time) as one batch; a
    row naming an unknown item or label refuses the whole file."""
    cfg = load(config, set_)
    from cerebro_core.index.metadata import vocabulary_of
    from cerebro_core.review.csvio import read_csv
    from cerebro_core.review.store import ReviewError, append
    from cerebro_core.storage import Storage

    vocab, names = _champion_items(cfg)
    try:
        vocab = vocab or vocabulary_of(cfg)
        records = read_csv(csv_file.read_text(encoding="utf-8"), vocab, names.get, reviewer)
    except (ReviewError, UnicodeDecodeError, ValueError) as exc:
        typer.echo(f"cerebro review import: {csv_file}: {exc}", err=True)
        raise typer.Exit(2) from None
    url = append(_root(cfg), records, Storage(cfg.storage))
    typer.echo(f"{len(records)} verification(s) imported" + (f" ({url})" if url else ""))
