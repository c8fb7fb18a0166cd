"""Paths from data never leave their folder: a labels CSV's paths, and the members of a scrape's
shards when they are unpacked."""

from __future__ import annotations

import shutil
from pathlib import Path


def test_labels_csv_paths_cannot_leave_the_folder(tmp_path, shared_data):
    from collections import Counter

    from cerebro_core.data.sources import list_folder

    photo = sorted((shared_data / "cifar10_animals" / "test" / "deer").glob("*.jpg"))[0]
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copy(photo, folder / "a.jpg")
    shutil.copy(photo, tmp_path / "outside.jpg")
    (folder / "labels.csv").write_text(f"path,label\na.jpg,deer\n../outside.jpg,deer\n{tmp_path}/outside.jpg,deer\n")
    counts: Counter = Counter()
    recs = list_folder(folder, "s", counts)
    assert [Path(r.path).name for r in recs] == ["a.jpg"] and counts == {"outside_source": 2}


def test_scrape_shard_members_cannot_escape(tmp_path):
    import io
    import tarfile

    from cerebro_core.index.reindex import unpack_images

    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tf:
        for name in ("00000.jpg", "sub/00001.jpg", "../escape.jpg", "/tmp/cerebro-abs-escape.jpg",
                     "sub/../../escape2.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"\xff\xd8\xff\xd9"))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    dest = tmp_path / "scrape" / "images"
    assert unpack_images([str(shard)], dest) == 4
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p != shard)
    assert written == ["scrape/images/00000.jpg", "scrape/images/sub/00001.jpg"]
    assert not Path("/tmp/cerebro-abs-escape.jpg").exists() and not (dest / "link.jpg").exists()
