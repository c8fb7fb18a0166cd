"""Resolving registered ``cerebro-clip`` versions (alias, else latest) to local weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from cerebro_core import tracking
from cerebro_core.model.factory import create


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
    return tracking.download_artifacts(mv.source)


def load_clip_from_folder(model_dir: str | Path):
    """The CLIP bundle from a published ``model/`` folder (strict weights load)."""
    import torch

    model_dir = Path(model_dir)
    info = json.loads((model_dir / "model_config.json").read_text())
    bundle = create(info["model_name"])
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    bundle.model.load_state_dict(state["model"], strict=True)
    bundle.model.eval()
    return bundle


def load_clip(name: str, alias: Optional[str] = "champion", version: Optional[str] = None):
    """(ModelVersion, ClipBundle, local model dir) for a registered CLIP version."""
    mv = resolve_version(name, alias, version)
    d = download(mv)
    return mv, load_clip_from_folder(d), d
