"""Resolving registered ``cerebro-clip`` versions (alias, else latest) to local weights."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cerebro_core import tracking


class NoModelError(LookupError):
    pass


def resolve_version(name: str, alias: Optional[str] = "champion", version: Optional[str] = None):
    """A ModelVersion by explicit version, else by alias, else the latest version."""
    c = tracking.client()
    if version:
        return c.get_model_version(name, str(version))
    if alias:
        try:
            return c.get_model_version_by_alias(name, alias)
        except Exception:
            pass
    versions = c.search_model_versions(f"name='{name}'")
    if not versions:
        raise NoModelError(f"no registered model {name!r}: run the pretrain stage first (`cerebro pretrain`)")
    return max(versions, key=lambda v: int(v.version))


def download(mv) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(mv.source))


def load_clip(name: str, alias: Optional[str] = "champion", version: Optional[str] = None):
    """(ModelVersion, ClipBundle, local model dir) for a registered CLIP version."""
    from cerebro_core.index.search import load_clip_from_folder

    mv = resolve_version(name, alias, version)
    d = download(mv)
    return mv, load_clip_from_folder(d), d
