"""Stage cache keys hash the code each stage runs (tasks/code_graph.py), not the whole package:
computed on a copy of this checkout, edited the way a developer would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cerebro_core.config import load_config
from tasks import caching, code_graph
from helpers import REPO


@pytest.fixture
def checkout(tmp_path, monkeypatch, pair_shards):
    """A copy of cerebro_core/ and tasks/ the keys read, and a function giving each stage's key."""
    root = tmp_path / "repo"
    for pkg in ("cerebro_core", "tasks"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(caching, "CODE_ROOT", root)
    monkeypatch.setenv("CEREBRO_HOME", str(tmp_path / "home"))
    from helpers import shardset_for

    cfg = load_config(REPO / "configs/demo.yaml")
    shards = shardset_for(pair_shards)

    def keys() -> dict[str, str]:
        code_graph.stage_files.cache_clear()
        code_graph.stage_code_version.cache_clear()
        p = {"cfg": cfg, "shards": shards, "clip_version": "3", "start_version": "2"}
        return {"download": caching.download_key(None, p), "pretrain": caching.pretrain_key(None, p),
                "adapt": caching.adapt_key(None, p), "index": caching.index_key(None, p)}

    return root, keys


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


def test_a_serve_edit_keeps_every_stage_cached_and_a_loop_edit_reruns_training(checkout):
    root, keys = checkout
    before = keys()
    _edit(root / "cerebro_core/serve/page.html")
    _edit(root / "cerebro_core/serve/app.py")
    _edit(root / "cerebro_core/plan.py")
    assert keys() == before  # issue 35 item 4: every stage's key changed with any edit

    _edit(root / "cerebro_core/train/loop.py")
    after = keys()
    assert after["pretrain"] != before["pretrain"]
    assert after["adapt"] != before["adapt"]  # its students train with the same loop
    assert after["download"] == before["download"] and after["index"] == before["index"]


def test_the_graph_follows_lazy_imports_workers_and_data_files():
    files = {p.relative_to(REPO).as_posix() for p in code_graph.stage_files("pretrain")}
    assert "cerebro_core/train/worker.py" in files  # started by torchrun as `-m cerebro_core.train.worker`
    assert "cerebro_core/data/images.py" in files  # imported inside a function
    assert "cerebro_core/model/configs/cerebro-tiny-vit-32.json" in files  # the factory reads configs/
    index = {p.relative_to(REPO).as_posix() for p in code_graph.stage_files("index")}
    assert "cerebro_core/embed_job.py" in index and "cerebro_core/tracking/search_pyfunc.py" in index
    assert not any("/serve/" in f for f in files | index)
