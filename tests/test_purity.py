"""cerebro_core is a pure library: importing it and calling its functions never imports Prefect,
and only its tracking package imports MLflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from helpers import REPO


def _imports(py: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(py.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_no_prefect_import_statement_in_core():
    for py in (REPO / "cerebro_core").rglob("*.py"):
        names = _imports(py)
        assert not any(n == "prefect" or n.startswith("prefect.") for n in names), f"{py}: imports {names}"


def test_only_the_tracking_package_imports_mlflow():
    """One path for tracking: the library, the CLI, the tasks and flows reach MLflow through
    cerebro_core.tracking alone."""
    tracking = REPO / "cerebro_core" / "tracking"
    seen = set()
    for folder in ("cerebro_core", "cerebro_cli", "tasks", "flows"):
        for py in (REPO / folder).rglob("*.py"):
            names = [n for n in _imports(py) if n == "mlflow" or n.startswith("mlflow.")]
            if tracking in py.parents:
                seen.update(names)
            else:
                assert not names, f"{py.relative_to(REPO)} imports {names}: go through cerebro_core.tracking"
    assert "mlflow" in seen  # the check reads real imports


def test_importing_and_calling_core_never_loads_prefect(tmp_path, shared_data):
    code = f"""
import importlib, pkgutil, sys, os
os.environ["CEREBRO_HOME"] = {str(tmp_path)!r}
import cerebro_core
mods = [m.name for m in pkgutil.walk_packages(cerebro_core.__path__, "cerebro_core.")
        if not m.name.endswith(("img2dataset_runner", "img2dataset_hooks"))]
for m in mods:
    importlib.import_module(m)
from cerebro_core.config import load_config
from cerebro_core.storage import Storage
from cerebro_core import tracking, devices
from cerebro_core.data import download
cfg = load_config({str(REPO / 'configs/demo.yaml')!r}, ["download.url_list={tmp_path}/list.txt",
                  "download.output={tmp_path}/out", "download.samples_per_shard=2"])
open({str(tmp_path / 'list.txt')!r}, "w").write("file://{shared_data}/cifar10_animals/test/cat/0000.jpg\\n")
devices.describe()
res = download.run_stage(cfg, log=lambda s: None)
assert res.num_samples == 1, res
tracking.configure(cfg)
assert "prefect" not in sys.modules, sorted(m for m in sys.modules if m.startswith("prefect"))
print("PURE", len(mods))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "PURE" in p.stdout


STAGES = {"download": "cerebro_core.data.download", "pretrain": "cerebro_core.train.pretrain",
          "adapt": "cerebro_core.adapt", "index": "cerebro_core.index", "serve": "cerebro_core.serve"}
# reindex downloads a URL-list scrape with the download engine (plan reads the URL list through
# data/url_list.py, a library module); serve reads published versions through the query side
# (cerebro_core.search, a library folder), not the index stage
ALLOWED = {("index", "download")}


# the index stage's MLflow model-from-code file: MLflow loads it from its path and no module imports
# it (checked below); it lives with the rest of the MLflow code, in cerebro_core/tracking/
STAGE_FILES = {"cerebro_core.tracking.search_pyfunc": "index"}


def _stage(module: str):
    if module == "cerebro_core.plan":
        return "plan"
    if module in STAGE_FILES:
        return STAGE_FILES[module]
    return next((k for k, v in STAGES.items() if module == v or module.startswith(v + ".")), None)


def test_stages_import_library_folders_never_each_other():
    """A stage reads the previous stage's result from a library module (data.shardset,
    model.publish, model.registry), and no library module imports a stage."""
    bad = []
    for py in (REPO / "cerebro_core").rglob("*.py"):
        mod = "cerebro_core." + ".".join(py.relative_to(REPO / "cerebro_core").with_suffix("").parts)
        me = _stage(mod)
        for node in ast.walk(ast.parse(py.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
                loaded = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = loaded = [a.name for a in node.names]
            else:
                loaded = []
            bad += [f"{mod} imports {n}, which MLflow alone loads" for n in set(names) | set(loaded) if n in STAGE_FILES]
            for n in names:
                other = _stage(n)
                if other and other not in ("plan", me) and (me, other) not in ALLOWED:
                    bad.append(f"{mod} ({me or 'library'}) imports {n} ({other})")
    assert not bad, "\n".join(bad)


def _module_names(*packages: str) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for py in (REPO / pkg).rglob("*.py"):
            parts = py.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = py
    return out


def import_cycles(*packages: str) -> list[list[str]]:
    """The import loops among ``packages``' modules (strongly connected components of the import
    graph), counting imports inside functions: ``from a import b`` is an edge to module ``a.b``
    when there is one, else to ``a``."""
    mods = _module_names(*packages)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, py in mods.items():
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                edges[m] |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in mods or node.module in mods:
                        edges[m].add(full if full in mods else node.module)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1 or v in edges[v]:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_loops_in_the_library_or_the_cli():
    """#39: no import loop in cerebro_core (the index kinds, shards and the query side included)
    or in cerebro_cli, counting the imports inside functions."""
    assert import_cycles("cerebro_core", "cerebro_cli") == []


def test_the_loop_finder_finds_loops(tmp_path, monkeypatch):
    pkg = tmp_path / "loopy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from loopy.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from loopy import a\n")
    (pkg / "c.py").write_text("import loopy.a\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert import_cycles("loopy") == [["loopy.a", "loopy.b"]]


def test_no_test_imports_another_test_module_or_conftest():
    """#39 item 5: set-up is shared through fixtures (conftest.py) and tests/helpers/ alone."""
    bad = []
    for py in sorted((REPO / "tests").rglob("*.py")):
        for name in _imports(py):
            if name.split(".")[0].startswith("test_") or name.split(".")[0] == "conftest":
                bad.append(f"{py.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)
