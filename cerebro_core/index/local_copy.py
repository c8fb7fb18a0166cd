"""Opening a published search version for queries, from a local copy of its bundle.

`cerebro search` and `cerebro serve` need the bundle (index, item rows, CLIP weights), not
MLflow's pyfunc wrapper around it (which imports MLflow, checks pip requirements and sets up code
paths: seconds on every cold start). The registry says which version an alias names
(:func:`cerebro_core.tracking.version_ref`, read straight from a sqlite store); its bundle is used
in place when the artifact store is a local folder, and otherwise downloaded once into
``$CEREBRO_HOME/cache/search/<name>/v<version>-<run id>/`` and opened from there. Versions are
immutable, so a copy is current for as long as the registry names that version.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

from cerebro_core import tracking
from cerebro_core.home import cerebro_home

BUNDLE = Path("artifacts", "bundle")  # inside a logged cerebro-search model
COMPLETE = "index.json"  # written last by write_bundle; a copy without it is incomplete


def parse_model_uri(model_uri: str) -> tuple[str, Optional[str], Optional[str]]:
    """``models:/name@alias`` or ``models:/name/3`` → (name, alias, version)."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"not a registry URI (models:/name@alias or models:/name/N): {model_uri!r}")
    rest = model_uri[len("models:/"):]
    if "@" in rest:
        name, _, alias = rest.partition("@")
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"not a registry URI (models:/name@alias or models:/name/N): {model_uri!r}")
    return name, None, version


def bundle_for(ref: tracking.VersionRef, tracking_uri: str, cache_root: Optional[Path] = None) -> Path:
    """A local folder holding ``ref``'s bundle: in place for a local artifact store, else the cache."""
    loc = urlparse(ref.storage_location)
    if loc.scheme in ("", "file"):
        here = Path(unquote(loc.path)) / BUNDLE
        if (here / COMPLETE).is_file():
            return here
    root = cache_root or cerebro_home() / "cache" / "search"
    dest = root / ref.name / f"v{ref.version}-{ref.run_id[:12] or ref.created_ms}"
    if (dest / COMPLETE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as td:
        model_dir = tracking.download_version(tracking_uri, ref, Path(td))
        staged = Path(model_dir) / BUNDLE
        if not (staged / COMPLETE).is_file():
            raise FileNotFoundError(f"models:/{ref.name}/{ref.version} holds no search bundle ({BUNDLE})")
        try:
            os.replace(staged, dest)  # atomic: a concurrent loader sees all of it or none
        except OSError:
            if not (dest / COMPLETE).is_file():
                raise
    return dest


def load_searcher(model_uri: str, tracking_uri: Optional[str] = None):
    """(registered version, Searcher) for ``models:/cerebro-search@champion`` or ``models:/name/N``."""
    from cerebro_core.index.search import Searcher

    tracking_uri = tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
    name, alias, version = parse_model_uri(model_uri)
    ref = tracking.version_ref(tracking_uri, name, alias=alias, version=version)
    return ref.version, Searcher(bundle_for(ref, tracking_uri))
