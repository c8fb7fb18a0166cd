"""Opening a published search version for queries, from a local copy of its bundle.

`cerebro search` and `cerebro serve` need the bundle (index, item rows, CLIP weights), not
MLflow's pyfunc wrapper around it (which imports MLflow, checks pip requirements and sets up code
paths: seconds on every cold start). The registry says which version an alias names
(:func:`cerebro_core.tracking.version_ref`, read straight from a sqlite store). A version's
artifact is the manifest of its content-addressed parts (:mod:`cerebro_core.parts`); the bundle is
assembled from them once into ``$CEREBRO_HOME/cache/search/bundles/<manifest digest>/`` and opened
from there (a manifest names its content, so a copy is current for as long as it exists).
Versions published before parts carried the bundle itself: it is used in place when the artifact
store is a local folder, and otherwise downloaded once into
``$CEREBRO_HOME/cache/search/<name>/v<version>-<run id>/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

from cerebro_core import parts, tracking
from cerebro_core.home import cerebro_home

MANIFEST = Path("artifacts", "manifest.json")  # inside a logged cerebro-search model
BUNDLE = Path("artifacts", "bundle")  # versions from before parts carried the bundle itself
COMPLETE = "index.json"  # written last by write_bundle; a copy without it is incomplete


def bundle_from_manifest(manifest_path: str | Path, cache_root: Optional[Path] = None) -> Path:
    """The bundle a manifest describes, assembled from its parts into the cache (once). Its files
    are hard links into ``cache/search/files/<sha256>``, so versions share what they have in common
    (the CLIP weights, unchanged rows): a reindex adds O(new) bytes to the cache too. A cached copy
    is checked on every open (:func:`cerebro_core.parts.check`: each file's size and stat against
    what was stamped when it was assembled; hashed where they differ) and assembled again from
    its parts when anything does not match."""
    manifest = json.loads(Path(manifest_path).read_text())
    home = home_for(manifest)
    root = cache_root or home / "cache" / "search"
    dest = root / "bundles" / parts.manifest_digest(manifest)[:32]
    if dest.is_dir():
        bad = parts.check(manifest, dest)
        if not bad:
            return dest
        print(f"cerebro: the cached copy {dest} was changed since it was assembled ({'; '.join(bad.values())}): "
              "assembling it again from its parts", file=sys.stderr)
        for rel in bad:  # the shared copy of that content is the same (hard-linked) file
            with contextlib.suppress(OSError):
                os.unlink(root / "files" / manifest["files"][rel]["sha256"])
        parts.discard(dest)
    return parts.assemble(manifest, dest, home, files=root / "files")


def home_for(manifest: dict) -> Path:
    """The state dir a manifest's home-relative parts are read from and its copy is cached in:
    ``$CEREBRO_HOME`` when set, else ``./.cerebro`` when there is one, else the state dir the
    version was published from (``mlflow models serve`` started anywhere with only
    ``MLFLOW_TRACKING_URI``: nothing is created in its working directory), else ``~/.cache/cerebro``."""
    if "CEREBRO_HOME" in os.environ or cerebro_home().is_dir():
        return cerebro_home()
    published = manifest.get("home")
    if published and Path(published).is_dir():
        return Path(published)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "cerebro"


def bundle_from_artifacts(artifacts: dict) -> Path:
    """The pyfunc's artifacts → its bundle folder (a manifest's, or a legacy bundle itself)."""
    if "manifest" in artifacts:
        return bundle_from_manifest(artifacts["manifest"])
    return Path(artifacts["bundle"])


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


def _cache_dir(ref: tracking.VersionRef, root: Path) -> Path:
    return root / ref.name / f"v{ref.version}-{ref.run_id[:12] or ref.created_ms}"


def version_manifest(ref: tracking.VersionRef, tracking_uri: str, cache_root: Optional[Path] = None) -> Optional[Path]:
    """``ref``'s manifest file (in place for a local artifact store, else downloaded once into the
    cache), or None for a version from before parts (it carries its bundle)."""
    loc = urlparse(ref.storage_location)
    if loc.scheme in ("", "file"):
        model = Path(unquote(loc.path))
        if (model / MANIFEST).is_file():
            return model / MANIFEST
        if (model / BUNDLE / COMPLETE).is_file():
            return None
    dest = _cache_dir(ref, cache_root or cerebro_home() / "cache" / "search")
    if (dest / MANIFEST.name).is_file():
        return dest / MANIFEST.name
    if (dest / COMPLETE).is_file():
        return None
    _download(ref, tracking_uri, dest)
    return dest / MANIFEST.name if (dest / MANIFEST.name).is_file() else None


def _download(ref: tracking.VersionRef, tracking_uri: str, dest: Path) -> None:
    """``dest``: the version's manifest, or (a version from before parts) its bundle."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as td:
        model_dir = Path(tracking.download_version(tracking_uri, ref, Path(td, "model")))
        if (model_dir / MANIFEST).is_file():
            staged = Path(td, "keep")
            staged.mkdir()
            os.replace(model_dir / MANIFEST, staged / MANIFEST.name)
        else:
            staged = model_dir / BUNDLE
            if not (staged / COMPLETE).is_file():
                raise FileNotFoundError(f"models:/{ref.name}/{ref.version} holds no search bundle or manifest")
        try:
            os.replace(staged, dest)  # atomic: a concurrent loader sees all of it or none
        except OSError:
            if not dest.is_dir():
                raise


def bundle_for(ref: tracking.VersionRef, tracking_uri: str, cache_root: Optional[Path] = None) -> Path:
    """A local folder holding ``ref``'s bundle: assembled from its parts into the cache; a version
    from before parts in place (local artifact store) or downloaded into the cache."""
    root = cache_root or cerebro_home() / "cache" / "search"
    manifest = version_manifest(ref, tracking_uri, root)
    if manifest is not None:
        return bundle_from_manifest(manifest, root)
    loc = urlparse(ref.storage_location)
    here = Path(unquote(loc.path)) / BUNDLE
    if loc.scheme in ("", "file") and (here / COMPLETE).is_file():
        return here
    return _cache_dir(ref, root)


def load_searcher(model_uri: str, tracking_uri: Optional[str] = None):
    """(registered version, Searcher) for ``models:/cerebro-search@champion`` or ``models:/name/N``."""
    from cerebro_core.search.searcher import Searcher

    tracking_uri = tracking_uri or os.environ["MLFLOW_TRACKING_URI"]
    name, alias, version = parse_model_uri(model_uri)
    ref = tracking.version_ref(tracking_uri, name, alias=alias, version=version)
    return ref.version, Searcher(bundle_for(ref, tracking_uri))
