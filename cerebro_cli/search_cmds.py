"""`cerebro search` and `cerebro serve`: what can be refused is refused before a model loads."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Optional

import typer

from cerebro_cli.app import ConfigOption, SetOption, app, load
from cerebro_cli.text import clean, clean_lines
from cerebro_core.config import LOOPBACK, CerebroConfig


def _searcher(cfg: CerebroConfig, model_uri: Optional[str]):
    """The champion's bundle from its local copy: no MLflow import when the store is sqlite."""
    from cerebro_core.home import prepare_environment
    from cerebro_core.search.local_copy import load_searcher

    uri = model_uri or f"models:/{cfg.tracking.search_model_name}@champion"
    try:
        return load_searcher(uri, prepare_environment(cfg).tracking_uri)
    except Exception as exc:
        typer.echo(f"cerebro: cannot load {uri}: {clean_lines(exc)}\nrun `cerebro index` first", err=True)
        raise typer.Exit(2) from None


def _read_image(path: Path, max_bytes: int) -> bytes:
    """The query image's bytes, read no further than the API's upload limit (serve.max_upload_mb):
    ``--image /dev/zero`` is refused after max_bytes + 1 bytes, not read forever."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        typer.echo(f"cerebro search: --image {clean(path)}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    if len(data) > max_bytes:
        typer.echo(f"cerebro search: --image {clean(path)}: larger than {max_bytes / 2**20:g} MB (serve.max_upload_mb)",
                   err=True)
        raise typer.Exit(2)
    if not data:
        typer.echo(f"cerebro search: --image {clean(path)}: empty", err=True)
        raise typer.Exit(2)
    return data


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help='text query, e.g. "a red fox leaping into snow"'),
    k: int = typer.Option(10, "-k", help="number of results (1..1000)"),
    image: Optional[Path] = typer.Option(None, "--image", help="search by an image file instead of text"),
    source: Optional[str] = typer.Option(None, help="only this source"),
    media: Optional[str] = typer.Option(None, help="image | video"),
    species: Optional[list[str]] = typer.Option(None, "--species", help="only these species (repeatable)"),
    min_species_score: Optional[float] = typer.Option(None, help="species probability at least this"),
    date_from: Optional[str] = typer.Option(None, "--from", help="taken at or after (ISO 8601)"),
    date_to: Optional[str] = typer.Option(None, "--to", help="taken at or before (ISO 8601; a date: that whole day)"),
    bbox: Optional[str] = typer.Option(None, help="min_lon,min_lat,max_lon,max_lat"),
    camera: Optional[str] = typer.Option(None, help="only this camera / deployment"),
    min_score: Optional[float] = typer.Option(None, help="similarity at least this"),
    sort: Optional[str] = typer.Option(None, help="score (default) | date"),
    collapse: Optional[str] = typer.Option(None, help="none | sequence | duplicates"),
    offset: Optional[int] = typer.Option(None, help="skip this many results (pagination)"),
    verified: Optional[bool] = typer.Option(None, "--verified/--unverified", help="only items a person verified / not"),
    show_empty: bool = typer.Option(False, "--show-empty", help="list empty frames too (hidden by default)"),
    source_label: Optional[str] = typer.Option(None, "--source-label", help="the source's own label"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    model_uri: Optional[str] = typer.Option(None, help="models:/NAME@ALIAS or models:/NAME/N (default: models:/cerebro-search@champion)"),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Search the published index (cerebro-search@champion) by text or by image."""
    cfg = load(config, set_)
    if (query is None) == (image is None):
        typer.echo("cerebro search: give a text query or --image, not both", err=True)
        raise typer.Exit(2)
    from cerebro_core.search.filters import QueryError, check_query, parse_filters  # no torch yet

    try:  # before the model loads (seconds): an empty query, k out of range, a bad filter value
        check_query(query, k, media, cfg.serve.max_query_chars)
        f = parse_filters(species=species or [], min_species_score=min_species_score, date_from=date_from,
                          date_to=date_to, bbox=bbox, camera=camera, min_score=min_score, sort=sort,
                          collapse=collapse, offset=offset, verified=verified, show_empty=show_empty,
                          source_label=source_label)
    except QueryError as exc:
        typer.echo(f"cerebro search: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    data = None if image is None else _read_image(image, int(cfg.serve.max_upload_mb * 2**20))
    version, s = _searcher(cfg, model_uri)
    from cerebro_core.home import resolve
    from cerebro_core.review.queue import apply
    from cerebro_core.review.store import read_log
    from cerebro_core.storage import Storage

    apply(s, read_log(resolve(cfg).storage_root.rstrip("/"), Storage(cfg.storage)).latest())  # people's labels win
    try:
        hits = (s.search(query, k, source, media, filters=f) if image is None
                else s.search_image(data, k, source, media, filters=f, max_pixels=cfg.serve.max_query_pixels))
    except (QueryError, OSError) as exc:
        typer.echo(f"cerebro search: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"version": version, "results": hits}, indent=2))
        return
    for i, h in enumerate(hits, 1):
        typer.echo(hit_line(i + (f.offset or 0), h))


def hit_line(n: int, h: dict) -> str:
    """One result as `cerebro search` prints it; every field from the data (file name or URL, source,
    species, EXIF time and camera) with its control characters replaced (cerebro_cli.text)."""
    where = f"@{h['video_ts']:.1f}s" if h["media_type"] == "video_frame" else ""
    tags = "  ".join(clean(x) for x in (h.get("species") and (f"{h['species']} (verified)" if h.get("verified")
                                                               else f"{h['species']} {h['species_score']:.2f}"),
                                        h.get("taken_at"), h.get("camera"),
                                        h["group_size"] > 1 and f"×{h['group_size']}") if x)
    name = h.get("origin_uri") or h["uri"]  # an S3 or downloaded item by its object or URL, not its copy
    return f"{n:>3}. {h['score']:.3f}  [{clean(h['source'])}] {clean(name)}{where}  {tags}".rstrip()


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="default: serve.host (127.0.0.1)"),
    port: Optional[int] = typer.Option(None, min=1, max=65535, help="default: serve.port (8000); 1-65535"),
    reload_interval: float = typer.Option(5.0, help="seconds between checks for a new champion"),
    model_uri: Optional[str] = typer.Option(None, help="models:/NAME@ALIAS or models:/NAME/N (default: models:/cerebro-search@champion)"),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Serve the search API and page (follows the champion alias without restart)."""
    cfg = load(config, set_)
    import uvicorn

    from cerebro_core import tracking
    from cerebro_core.serve.app import create_app, registry_holder

    host, port = host or cfg.serve.host, cfg.serve.port if port is None else port
    if host not in LOOPBACK and not host.startswith("127.") and cfg.serve.token is None:
        typer.echo(f"cerebro serve: --host {host} answers beyond this machine: set serve.token (--set "
                   "serve.token=… with at least 16 characters) and add the public name to serve.allowed_hosts; "
                   "see README, 'Serving beyond localhost'", err=True)
        raise typer.Exit(2)
    try:  # before the model loads: a port in use is a one-line error, not uvicorn's Errno 98 seconds later
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as exc:
        typer.echo(f"cerebro serve: cannot listen on {host}:{port}: {exc.strerror or exc}; "
                   "choose another with --port", err=True)
        raise typer.Exit(2) from None
    tracking.configure(cfg)
    uri = model_uri or f"models:/{cfg.tracking.search_model_name}@champion"
    try:
        holder = registry_holder(uri, reload_interval)
    except Exception as exc:
        typer.echo(f"cerebro serve: cannot load {uri}: {clean_lines(exc)}\nrun `cerebro index` first", err=True)
        raise typer.Exit(2) from None
    from cerebro_core.home import resolve
    from cerebro_core.serve.media import Thumbnails
    from cerebro_core.storage import Storage

    from cerebro_core.serve.review import Reviews

    root = resolve(cfg).storage_root.rstrip("/")
    thumbs = Thumbnails(Storage(cfg.storage), f"{root}/thumbnails")
    app_ = create_app(holder, cfg.serve, thumbs, Reviews(root, Storage(cfg.storage)))
    uvicorn.run(app_, host=host, port=port, log_level="info")
