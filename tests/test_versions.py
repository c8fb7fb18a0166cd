"""Search versions as manifests of content-addressed parts (cerebro_core/parts.py, index/gc.py):
a reindex of n photos writes O(n) bytes plus a few small parts, the previous version stays
loadable and answers as before, and `cerebro gc` deletes only parts no registered version
references (a dry run unless --delete; young parts kept)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from helpers import REPO, indexed_caltech, make_scrape

PART = 64 * 1024  # small parts, so that a 700-item bundle has many


@pytest.fixture(scope="module")
def versions_home(shared_data, tmp_path_factory):
    yield from indexed_caltech(shared_data, tmp_path_factory, "versions-home", f"storage.part_size={PART}")


def _manifest(home: Path, version: str) -> dict:
    from cerebro_core import tracking
    from cerebro_core.search.local_copy import version_manifest

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return json.loads(version_manifest(tracking.version_ref(uri, "cerebro-search", version=version), uri).read_text())


def _part_files(home: Path) -> dict[str, Path]:
    return {p.name: p for p in (home / "data" / "parts" / "cerebro-search").rglob("*") if p.is_file()}


def _top(searcher, queries) -> list[list[str]]:
    return [[h["path"] for h in searcher.search(q, k=5)] for q in queries]


def test_reindex_writes_what_changed_and_gc_keeps_what_is_registered(versions_home, shared_data, tmp_path):
    import mlflow

    from cerebro_core import parts, tracking
    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.index.reindex import run_reindex

    home, cfg, v1 = versions_home["home"], versions_home["cfg"], versions_home["sv"]
    queries = ["a photo of a cat", "an animal in the grass", "a bird"]
    _, s1 = load_searcher(f"models:/cerebro-search/{v1.version}")
    before = _top(s1, queries)
    m1 = _manifest(home, v1.version)
    assert m1["format"] == "cerebro-parts/1" and m1["parts_root"] == "${CEREBRO_HOME}/data/parts/cerebro-search"
    assert {"index.json", "metadata.arrow", "vectors.npy", "model/model.pt"} <= set(m1["files"])
    # the MLflow model holds the manifest, not the bundle
    model_dir = Path(urlparse(tracking.version_ref(f"sqlite:///{home / 'mlflow.db'}", "cerebro-search",
                                                   version=v1.version).storage_location).path)
    assert not (model_dir / "artifacts" / "bundle").exists() and (model_dir / "artifacts" / "manifest.json").is_file()
    total = sum(f["size"] for f in m1["files"].values())
    first = mlflow.MlflowClient().get_run(v1.run_id).data.metrics
    assert first["version/bytes_total"] == total and first["version/bytes_written"] > 0.95 * total

    n_new = 20
    make_scrape(shared_data, tmp_path / "scrape", n_new=n_new, n_copies=0, offset=300)
    r = run_reindex(cfg, str(tmp_path / "scrape"), log=lambda x: None)
    assert r.published and r.new == n_new
    m2 = _manifest(home, r.version.version)
    written = mlflow.MlflowClient().get_run(r.version.run_id).data.metrics["version/bytes_written"]
    d = load_searcher(f"models:/cerebro-search/{r.version.version}")[1].info["dim"]
    # O(n): per new item a vector twice (fp16 vectors, fp32 flat index) and a row; per changed file
    # its head block (64 KiB) and its partial tail block
    changed = [f for f in m2["files"] if m2["files"][f]["sha256"] != m1["files"].get(f, {}).get("sha256")]
    bound = n_new * (6 * d + 2048) + len(changed) * (PART + parts.HEAD)
    print(f"v1 {total} bytes; reindex of {n_new}: {written:.0f} bytes written (bound {bound}), changed {changed}")
    assert written <= bound, (written, bound, changed)
    assert written < 0.1 * total
    assert m2["files"]["model/model.pt"] == m1["files"]["model/model.pt"]  # the CLIP weights: not rewritten
    vec1, vec2 = m1["files"]["vectors.npy"]["blocks"], m2["files"]["vectors.npy"]["blocks"]
    assert vec2[1:len(vec1) - 1] == vec1[1:-1] and len(vec1) >= 3  # the old rows' blocks are shared
    # the previous version still loads from its parts and answers exactly as before
    _, s1_again = load_searcher(f"models:/cerebro-search/{v1.version}")
    assert _top(s1_again, queries) == before and len(s1_again.rows) == 700

    # gc: everything is referenced
    from cerebro_core.index.gc import collect

    rep = collect(cfg, delete=False, min_age_s=0)
    assert rep.garbage == [] and rep.referenced == rep.parts == len(parts.referenced(m1) | parts.referenced(m2))
    # v1 leaves the registry: the parts only it named become garbage, and only those
    mlflow.MlflowClient().delete_model_version("cerebro-search", v1.version)
    only_v1 = parts.referenced(m1) - parts.referenced(m2)
    old = time.time() - 2 * 3600
    for p in _part_files(home).values():  # written two hours ago, as far as gc can tell
        os.utime(p, (old, old))
    stray = Path(parts.block_url(str(home / "data" / "parts" / "cerebro-search"), "ab" + "0" * 62))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"a publish in progress")  # young: kept
    dry = subprocess.run([str(Path(sys.executable).parent / "cerebro"), "gc", "-c", str(REPO / "configs/demo.yaml"),
                          "--list"], env=dict(os.environ, CEREBRO_HOME=str(home)), capture_output=True, text=True,
                         timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]
    listed = {line.rsplit("/", 1)[-1] for line in dry.stdout.splitlines() if "/parts/" in line}
    assert listed == only_v1 and only_v1
    assert f"would delete {len(only_v1)} part(s)" in dry.stdout and "1 unreferenced part(s) newer than 1 h kept" in dry.stdout
    assert set(_part_files(home)) >= only_v1  # a dry run deletes nothing
    wet = subprocess.run([str(Path(sys.executable).parent / "cerebro"), "gc", "-c", str(REPO / "configs/demo.yaml"),
                          "--delete", "--min-age-hours", "0"], env=dict(os.environ, CEREBRO_HOME=str(home)),
                         capture_output=True, text=True, timeout=300)
    assert wet.returncode == 0, wet.stderr[-2000:]
    assert f"deleted {len(only_v1) + 1} part(s)" in wet.stdout
    left = set(_part_files(home))
    assert left == parts.referenced(m2) and not stray.exists()
    _, s2 = load_searcher("models:/cerebro-search@champion")  # the champion loads from what is left
    assert len(s2.rows) == 720 and s2.search("a bird", k=3)


def test_a_missing_part_is_named(tmp_path):
    """A version whose part was deleted by hand fails naming the part and the file, not with a
    bare path; a corrupted part is refused by its hash."""
    from cerebro_core import parts
    from cerebro_core.storage import Storage

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "vectors.npy").write_bytes(bytes(range(256)) * 1000)
    m, _ = parts.pack(tmp_path / "b", Storage(), str(tmp_path / "p"), 65536, tmp_path / "home")
    first = m["files"]["vectors.npy"]["blocks"][0]
    url = Path(parts.block_url(str(tmp_path / "p"), first))
    url.write_bytes(b"not the block")
    with pytest.raises(parts.CorruptPart, match=f"part {first} of vectors.npy does not match its name: moved to"):
        parts.assemble(m, tmp_path / "out1", tmp_path / "home")
    # moved aside, named, kept for inspection
    assert not url.exists() and (tmp_path / "p" / "corrupt" / first).read_bytes() == b"not the block"
    with pytest.raises(FileNotFoundError, match=f"part {first} of vectors.npy is not in"):
        parts.assemble(m, tmp_path / "out2", tmp_path / "home")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()  # nothing half-built left
    # never reused: the next pack of that content writes the part again (a short part too)
    _, st = parts.pack(tmp_path / "b", Storage(), str(tmp_path / "p"), 65536, tmp_path / "home")
    assert st.blocks_written == 1 and parts.assemble(m, tmp_path / "out3", tmp_path / "home").is_dir()
    last = m["files"]["vectors.npy"]["blocks"][-1]
    Path(parts.block_url(str(tmp_path / "p"), last)).write_bytes(b"short")
    _, st = parts.pack(tmp_path / "b", Storage(), str(tmp_path / "p"), 65536, tmp_path / "home")
    assert st.blocks_written == 1


REINDEX_SCRIPT = """
import sys
from cerebro_core.config import load_config
from cerebro_core.index.reindex import run_reindex

if __name__ == "__main__":  # decode workers are spawned: the script must be importable
    run_reindex(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2], log=print)
"""


def _metric_rows(home: Path, key: str) -> int:
    import sqlite3

    with sqlite3.connect(home / "mlflow.db") as db:
        return db.execute("select count(*) from metrics where key = ?", (key,)).fetchone()[0]


def test_gc_during_a_paused_publish_that_reuses_old_parts(versions_home, shared_data, tmp_path):
    """A reindex whose publish reuses parts orphaned hours ago is paused (SIGSTOP) right after it
    stored its parts; `cerebro gc --delete --min-age-hours 0` runs meanwhile. The publish then
    completes and its version loads: gc waited for the publish lock, and kept what it references."""
    import signal

    import mlflow

    from cerebro_core import parts, tracking
    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.index.reindex import run_reindex
    home, cfg = versions_home["home"], versions_home["cfg"]
    champ = tracking.client().get_model_version_by_alias("cerebro-search", "champion").version
    n0 = len(load_searcher("models:/cerebro-search@champion")[1].rows)
    make_scrape(shared_data, tmp_path / "scrape", n_new=6, n_copies=0, offset=400)
    # a version with the scrape's photos is published, then leaves the registry: its own parts are orphans
    r = run_reindex(cfg, str(tmp_path / "scrape"), log=lambda x: None)
    m_gone = _manifest(home, r.version.version)
    mlflow.MlflowClient().delete_model_version("cerebro-search", r.version.version)
    tracking.set_alias("cerebro-search", "champion", champ)
    orphans = parts.referenced(m_gone) - parts.referenced(_manifest(home, champ))
    old = time.time() - 2 * 3600
    for p in _part_files(home).values():
        os.utime(p, (old, old))
    assert orphans <= set(_part_files(home))

    script = tmp_path / "run.py"
    script.write_text(REINDEX_SCRIPT)
    src = f"index.sources=[{{name: caltech, path: {shared_data}/caltech101_animals}}]"
    env = dict(os.environ, CEREBRO_HOME=str(home))
    stored = _metric_rows(home, "version/parts_reused")
    pub = subprocess.Popen([sys.executable, str(script), str(REPO / "configs/demo.yaml"), str(tmp_path / "scrape"),
                            src, f"storage.part_size={PART}"],
                           start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    gc = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _metric_rows(home, "version/parts_reused") == stored and pub.poll() is None:
            time.sleep(0.02)
        os.killpg(pub.pid, signal.SIGSTOP)  # parts stored, not yet registered
        assert pub.poll() is None, pub.stdout.read()[-3000:]
        gc = subprocess.Popen([str(Path(sys.executable).parent / "cerebro"), "gc", "-c", str(REPO / "configs/demo.yaml"),
                               "--delete", "--min-age-hours", "0"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        first = gc.stdout.readline()  # waits for the publish lock (before the fix: collected at once)
        os.killpg(pub.pid, signal.SIGCONT)
        out = pub.communicate(timeout=300)[0]
        gc_out = first + gc.communicate(timeout=300)[0]
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(pub.pid, signal.SIGCONT)
        for p in (pub, gc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    print(gc_out)
    assert pub.returncode == 0, out[-3000:]
    assert gc.returncode == 0 and "waiting for process" in first, gc_out
    new = tracking.client().get_model_version_by_alias("cerebro-search", "champion").version
    assert int(new) > int(r.version.version)
    m_new = _manifest(home, new)
    assert parts.referenced(m_new) & orphans, "the publish did not reuse the orphaned parts"
    assert parts.referenced(m_new) <= set(_part_files(home))
    shutil.rmtree(home / "cache" / "search" / "bundles", ignore_errors=True)  # load from the parts alone
    _, s = load_searcher("models:/cerebro-search@champion")
    assert len(s.rows) == n0 + 6 and s.search("a horse", k=3)


def _disk_usage(root: Path) -> dict[str, int]:
    """Bytes on disk under each top-level entry of ``root``, each inode counted once (as du does)."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, int] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            top = Path(dirpath, f).relative_to(root).parts[0]
            out[top] = out.get(top, 0) + st.st_blocks * 512
    return out


def test_a_small_reindex_grows_the_state_dir_by_what_is_new(versions_home, shared_data, tmp_path):
    """A reindex of 3 photos adds O(new) bytes to the state dir, its local cache included: the new
    version's cached bundle shares every unchanged file with the previous one (hard links)."""
    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.index.reindex import run_reindex

    home, cfg = versions_home["home"], versions_home["cfg"]
    load_searcher("models:/cerebro-search@champion")  # the champion is in the cache, as when serving
    make_scrape(shared_data, tmp_path / "scrape", n_new=3, n_copies=0, offset=440)
    before = _disk_usage(home)
    r = run_reindex(cfg, str(tmp_path / "scrape"), log=lambda x: None)
    assert r.published and r.new == 3
    _, s = load_searcher("models:/cerebro-search@champion")
    assert len(s.rows) == r.size_after and s.search("a horse", k=3)
    after = _disk_usage(home)
    grown = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    print(f"state dir grew by {sum(grown.values()) / 2**20:.2f} MB: "
          + ", ".join(f"{k} {v / 2**20:.2f} MB" for k, v in sorted(grown.items())))
    assert sum(grown.values()) <= 2 * 2**20, grown


def test_a_corrupt_cache_is_assembled_again_and_gc_verify_finds_corrupt_parts(versions_home, capfd):
    """Zeroing 100 KB of the champion's cached index.faiss: the next open notices (its stat no
    longer matches what was stamped when it was assembled), says so, and assembles it again: same
    answers. A zeroed part: `cerebro gc --verify` names it and the version and file that use it,
    moves it aside and restores it from the intact cached copy; with no cached copy it exits 1."""
    from cerebro_core import tracking
    from cerebro_core.search.local_copy import bundle_for, load_searcher

    home = versions_home["home"]
    uri = f"sqlite:///{home / 'mlflow.db'}"
    queries = ["a photo of a cat", "an animal in the grass", "a bird", "a horse"]
    _, s = load_searcher("models:/cerebro-search@champion")
    before = _top(s, queries)
    ref = tracking.version_ref(uri, "cerebro-search", alias="champion")
    cached = bundle_for(ref, uri) / "index.faiss"
    with open(cached, "r+b") as f:
        f.seek(4096)
        f.write(bytes(100 * 1024))
    capfd.readouterr()
    _, s = load_searcher("models:/cerebro-search@champion")
    assert _top(s, queries) == before
    assert "index.faiss does not match its sha256" in capfd.readouterr().err

    m = _manifest(home, ref.version)
    digest = m["files"]["index.faiss"]["blocks"][1]
    part = _part_files(home)[digest]
    good = part.read_bytes()
    part.write_bytes(bytes(len(good)))
    cli = [str(Path(sys.executable).parent / "cerebro"), "gc", "-c", str(REPO / "configs/demo.yaml"), "--verify"]
    env = dict(os.environ, CEREBRO_HOME=str(home))
    p = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert f"corrupt part {part}" in p.stdout and f"v{ref.version} index.faiss" in p.stdout
    assert "restored" in p.stdout and part.read_bytes() == good
    # no intact copy anywhere: named, moved aside (never reused), exit 1
    shutil.rmtree(home / "cache" / "search", ignore_errors=True)
    part.write_bytes(bytes(len(good)))
    p = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and f"{part} is corrupt and no intact copy is cached" in p.stderr, p.stderr[-2000:]
    assert not part.exists()
    part.write_bytes(good)  # put back, as a publish of that content would
    _, s = load_searcher("models:/cerebro-search@champion")
    assert _top(s, queries) == before
