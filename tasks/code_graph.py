"""The code a stage runs, read from the import graph: a stage's cache key hashes only those files.

From the stage's task module, every ``import``/``from … import`` of ``cerebro_core`` or ``tasks``
anywhere in a module (top level or inside a function) is followed, with the packages' ``__init__``
files, which Python runs on the way in. A string in a module that names a ``cerebro_core`` module
(a torchrun worker started as ``-m cerebro_core.train.worker``) or a file beside the module (its
``with_name("page.html")`` data, a ``configs`` folder, a script it runs) counts as code of the
stage too. ``tasks.caching`` (the keys themselves) is not followed: it reaches into every stage.

Editing ``serve/page.html`` thus leaves pretrain, adapt and index cached; editing
``train/loop.py`` reruns pretrain (and adapt, whose students train with it)."""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cerebro_core", "tasks")
NOT_FOLLOWED = {"tasks.caching", "tasks.code_graph"}

# the task modules of each cached stage
STAGE_ROOTS = {
    "download": ("tasks.download",),
    "pretrain": ("tasks.pretrain",),
    "adapt": ("tasks.adapt",),
    "index": ("tasks.index", "tasks.shards"),
    "reindex": ("tasks.reindex", "tasks.shards"),
}


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _ours(name: str) -> bool:
    return name.split(".", 1)[0] in PACKAGES


def _references(root: Path, name: str, path: Path) -> tuple[set[str], set[Path]]:
    """(modules, data files) that module ``name`` at ``path`` imports or names."""
    tree = ast.parse(path.read_bytes(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    siblings = {p.name for p in path.parent.iterdir() if p.name != "__pycache__"}
    mods: set[str] = set()
    files: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if _ours(a.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if _ours(base):
                mods.add(base)
                # `from cerebro_core.train import pretrain`: a submodule, when one has the name
                mods.update(f"{base}.{a.name}" for a in node.names if _module_file(root, f"{base}.{a.name}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
            v = node.value
            if _ours(v) and _module_file(root, v):
                mods.add(v)
            elif v in siblings:
                files.add(path.parent / v)
    return mods, files


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.lru_cache(maxsize=None)
def stage_files(stage: str, root: Path = REPO) -> tuple[Path, ...]:
    """Every file of ``root`` the stage's code is made of, sorted."""
    todo = [m for r in STAGE_ROOTS[stage] for m in _with_parents(r)]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_FOLLOWED:
            continue
        seen.add(name)
        path = _module_file(root, name)
        if path is None:  # `from pkg import name` where name is not a module
            continue
        files.add(path)
        mods, data = _references(root, name, path)
        todo.extend(p for m in mods for p in _with_parents(m))
        for f in data:
            if f.suffix == ".py":  # a script run from its path (img2dataset_runner.py, search_pyfunc.py)
                todo.append(".".join(f.relative_to(root).with_suffix("").parts))
            elif f.is_dir():
                files.update(p for p in f.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            else:
                files.add(f)
    return tuple(sorted(files))


@functools.lru_cache(maxsize=None)
def stage_code_version(stage: str, root: Path = REPO) -> str:
    """Hash of the names and contents of the stage's files."""
    h = hashlib.sha256()
    for p in stage_files(stage, root):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
