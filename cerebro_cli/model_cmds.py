"""`cerebro export-model`: a registered CLIP as a folder open_clip loads by itself
(``open_clip.create_model_and_transforms("local-dir:DIR")``), for use outside Cerebro."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cerebro_cli.app import ConfigOption, SetOption, app, load
from cerebro_cli.text import clean, clean_lines


@app.command("export-model")
def export_model(
    out: str = typer.Option(..., "--out", "-o", help="folder (or s3:// prefix) to write the open_clip model to"),
    clip_version: Optional[str] = typer.Option(None, help="cerebro-clip version (default: alias champion, else latest)"),
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Write a cerebro-clip version as open_clip_config.json + open_clip_model.safetensors."""
    cfg = load(config, set_)
    from cerebro_core import tracking
    from cerebro_core.model.export import export_open_clip
    from cerebro_core.model.registry import NoModelError, download, load_clip_from_folder, resolve_version
    from cerebro_core.storage import Storage

    tracking.configure(cfg)
    try:
        mv = resolve_version(cfg.tracking.model_name, "champion", clip_version)
    except NoModelError as exc:
        typer.echo(f"cerebro export-model: {clean_lines(exc)}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # an unknown version number
        typer.echo(f"cerebro export-model: --clip-version {clean(str(clip_version))}: {clean(str(exc))[:200]}",
                   err=True)
        raise typer.Exit(2) from None
    bundle = load_clip_from_folder(download(mv))
    written = export_open_clip(bundle, out, {"name": f"{mv.name} v{mv.version}", "architecture": bundle.name,
                                             "mlflow_run_id": mv.run_id or "", "source": mv.source},
                               Storage(cfg.storage))
    typer.echo(f"wrote {mv.name} v{mv.version} ({bundle.name}) for open_clip: " + ", ".join(clean(w) for w in written))
    typer.echo(f'load it with open_clip.create_model_and_transforms("local-dir:{clean(out)}")')
