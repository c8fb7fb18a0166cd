"""An index source on S3 (moto's server on 127.0.0.1): `index.sources` with an ``s3://``
prefix is mirrored locally (copied once, again only when an object's size or ETag changes,
removed when its object is gone) and each item names its object."""

from __future__ import annotations


import pytest

from cerebro_core.config import load_config
from helpers import REPO


@pytest.fixture
def s3_photos(shared_data, s3_env, monkeypatch):
    from cerebro_core.config import StorageConfig
    from cerebro_core.storage import Storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["endpoint"])
    st = Storage(StorageConfig())
    base = f"s3://{s3_env['bucket']}/cams"
    photos = {}
    for cls in ("deer", "horse"):
        for p in sorted((shared_data / "cifar10_animals" / "test" / cls).glob("*.jpg"))[:20]:
            url = f"{base}/{cls}/{p.name}"
            st.write_bytes(url, p.read_bytes())
            photos[url] = p
    return {"storage": st, "base": base, "photos": photos}


def test_mirror_follows_the_bucket(s3_photos, tmp_path):
    from cerebro_core.data.mirror import mirror

    st, base = s3_photos["storage"], s3_photos["base"]
    m = mirror(st, base, tmp_path / "m")
    assert (m.copied, m.kept, m.removed, m.refused) == (40, 0, 0, 0)
    assert mirror(st, base, tmp_path / "m").kept == 40  # nothing changed: nothing copied
    urls = sorted(s3_photos["photos"])
    other = s3_photos["photos"][urls[-1]].read_bytes()
    st.write_bytes(urls[0], other)  # an object rewritten
    st.rm(urls[1])  # an object deleted
    m = mirror(st, base, tmp_path / "m")
    assert (m.copied, m.kept, m.removed) == (1, 38, 1)
    rel = urls[0][len(base) + 1:]
    assert (tmp_path / "m" / rel).read_bytes() == other
    assert not (tmp_path / "m" / urls[1][len(base) + 1:]).exists()
    with pytest.raises(FileNotFoundError):
        mirror(st, base + "-nothing", tmp_path / "n")


def test_index_stage_reads_an_s3_source(s3_photos, cerebro_home):
    from helpers import indexed_home

    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.index.stage import IndexInputError, check_inputs

    cfg = load_config(REPO / "configs/demo.yaml", [f"index.sources=[{{name: cams, path: {s3_photos['base']}}}]"])
    _, sv = indexed_home(cfg)
    assert sv.n == 40
    _, s = load_searcher("models:/cerebro-search@champion")
    assert sorted(r["origin_uri"] for r in s.rows) == sorted(s3_photos["photos"])
    url = sorted(s3_photos["photos"])[7]
    hit = s.search_image(s3_photos["photos"][url].read_bytes(), k=1)[0]
    assert hit["origin_uri"] == url and hit["source"] == "cams"

    bad = load_config(REPO / "configs/demo.yaml", [f"index.sources=[{{name: gone, path: {s3_photos['base']}-x}}]"])
    with pytest.raises(IndexInputError, match=r"index.sources\[gone\].path: nothing at s3://"):
        check_inputs(bad)  # what `cerebro index` checks before starting: a listing, no mirror


def test_video_stills_from_s3_name_their_object(s3_photos, cerebro_home, tmp_path):
    """A mirrored video's stills carry its s3:// URI like a photo does (they had none: the sidecar
    was read for images only, so a video hit from S3 named no object)."""
    from collections import Counter

    from helpers import make_video

    from cerebro_core.index.stage import scan_sources

    make_video(tmp_path / "clip.mp4", seconds=3.0)
    url = f"{s3_photos['base']}/clips/clip.mp4"
    s3_photos["storage"].write_bytes(url, (tmp_path / "clip.mp4").read_bytes())
    cfg = load_config(REPO / "configs/demo.yaml", [f"index.sources=[{{name: cams, path: {s3_photos['base']}}}]",
                                                    "index.video_frame_interval=1.0"])
    items = scan_sources(cfg, Counter())
    stills = [it for it in items if it.media_type == "video_frame"]
    assert len(stills) >= 2 and {it.extra.get("origin_uri") for it in stills} == {url}
    assert all(it.extra.get("origin_uri") in s3_photos["photos"] for it in items if it.media_type == "image")


KILLED_MIRROR = """
import sys, time
from pathlib import Path
from cerebro_core.config import StorageConfig
from cerebro_core.data.mirror import mirror
from cerebro_core.storage import Storage

st = Storage(StorageConfig())
real = st.get_file
def slow(src, dst):  # a slow link: each object takes a while, so the kill lands half way
    time.sleep(0.1)
    real(src, dst)
st.get_file = slow
mirror(st, sys.argv[1], Path(sys.argv[2]), workers=4)
"""


def test_an_interrupted_mirror_resumes_without_copying_again(s3_photos, tmp_path):
    """#36 item 5: copies run in parallel and are recorded as they finish; a mirror killed (SIGKILL)
    half way is rerun and copies only what it had not finished, every file whole."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cerebro_core.data.mirror import JOURNAL, mirror

    st, base, dest = s3_photos["storage"], s3_photos["base"], tmp_path / "m"
    p = subprocess.Popen([sys.executable, "-c", KILLED_MIRROR, base, str(dest)], env=dict(os.environ))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        j = dest / JOURNAL
        if j.exists() and len(j.read_text().splitlines()) >= 12:
            break
        assert p.poll() is None, "the mirror finished before it could be interrupted"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = len((dest / JOURNAL).read_text().splitlines())
    assert 12 <= done < 40 and not (dest / "_cerebro_mirror.json").exists()
    m = mirror(st, base, dest)
    assert m.copied == 40 - done and m.kept == done  # the finished copies were not made again
    for url, src in s3_photos["photos"].items():
        assert (dest / url[len(base) + 1:]).read_bytes() == src.read_bytes()
    assert not list(dest.rglob("*.partial")) and not (dest / JOURNAL).exists()
