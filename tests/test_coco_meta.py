"""Wildlife data as the collections publish it (#36 items 1 and 3): a COCO Camera Traps JSON beside
real shared photos gives each image its labels, time, camera and sequence; empty and person frames
are flagged; every malformed entry is counted per reason, never a crash; adapt reads a labelled
validation split from the annotations and never pseudo-labels the source's empty or person frames;
a real `cerebro serve` hides empty frames unless asked and never lists or serves people unless
serve.show_people is set; a camtrapR / Timelapse `Station/Species/file` tree gives cameras and labels
(#36 item 2)."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from cerebro_core.config import load_config
from cerebro_core.data.coco_meta import parse
from cerebro_core.embed import scan_folder
from cerebro_core.index.metadata import sequences
from helpers import CEREBRO, CLASSES, REPO, free_port, indexed_home, stop, wait_port


def _collection(shared: Path, dst: Path, first: int) -> tuple[Path, dict]:
    """12 real CIFAR photos laid out as a camera-trap collection (loc_A/loc_B folders), and its
    COCO Camera Traps JSON: 2 sequences, species annotations, one empty frame, one person frame,
    and one malformed entry of each kind."""
    photos = sorted((shared / "cifar10_animals" / "test").rglob("*.jpg"))[first:first + 12]
    images, annotations = [], []
    cats = [{"id": i, "name": n} for i, n in enumerate(CLASSES)] + [{"id": 90, "name": "empty"},
                                                                    {"id": 91, "name": "human"}]
    for i, p in enumerate(photos):
        rel = f"loc_{'AB'[i % 2]}/IMG_{i:04d}.jpg"
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(p, dst / rel)
        images.append({"id": f"im{i}", "file_name": rel, "location": f"loc_{'AB'[i % 2]}",
                       "datetime": f"2019-06-0{1 + i // 6} 05:{i:02d}:00", "seq_id": f"s{i // 3}", "frame_num": i % 3})
        cat = 90 if i == 10 else 91 if i == 11 else CLASSES.index(p.parent.name)
        annotations.append({"id": f"a{i}", "image_id": f"im{i}", "category_id": cat})
    images[1]["datetime"] = "June the 1st"  # bad datetime: kept, without a time
    images += [{"id": "x1", "file_name": "../outside.jpg"}, {"id": "x2", "file_name": "/etc/passwd"},
               {"id": "x3"}, {"id": "x4", "file_name": "loc_A/not_there.jpg"}, dict(images[0], id="dup")]
    annotations += [{"id": "b1", "image_id": "nope", "category_id": 0}, {"id": "b2", "image_id": "im2", "category_id": 77}]
    meta = {"info": {"version": "1.0"}, "images": images, "annotations": annotations, "categories": cats}
    (dst / "collection.json").write_text(json.dumps(meta))
    return dst / "collection.json", {"photos": photos}


def test_a_coco_camera_traps_json_gives_labels_times_cameras_sequences_and_counts_what_is_wrong(shared_data, tmp_path):
    path, info = _collection(shared_data, tmp_path / "traps", 0)
    counts: Counter = Counter()
    items = scan_folder(str(tmp_path / "traps"), "traps", 1e9, counts, parse(path.read_text(), counts))
    assert len(items) == 12  # the 12 files; the malformed entries left out
    assert counts == Counter({"metadata.outside_source": 2, "metadata.bad_file_name": 1, "metadata.missing_file": 1,
                              "metadata.duplicate_file_name": 1, "metadata.bad_datetime": 1,
                              "metadata.unknown_image": 1, "metadata.unknown_category": 1})
    by = {Path(it.uri).name: it for it in items}
    first = by["IMG_0000.jpg"]
    assert first.label == info["photos"][0].parent.name == first.extra["source_label"]
    assert first.extra["camera"] == "loc_A" and first.extra["taken_at"] == "2019-06-01T05:00:00"
    assert first.extra["source_sequence"] == "s0" and first.extra["frame_num"] == 0
    assert "taken_at" not in by["IMG_0001.jpg"].extra  # its datetime did not parse
    assert by["IMG_0010.jpg"].extra["empty"] and by["IMG_0010.jpg"].label == "empty"
    assert by["IMG_0011.jpg"].extra["person"] and not by["IMG_0011.jpg"].extra["empty"]
    assert not first.extra["empty"] and not first.extra["person"]
    # the index's sequences follow the collection's seq_id, across its two cameras
    rows = [{"uri": it.uri, "source": it.source, "media_type": "image", **it.extra} for it in items]
    seq = dict(zip((Path(r["uri"]).name for r in rows), sequences(rows, gap_s=1e9)))
    assert seq["IMG_0000.jpg"] == seq["IMG_0001.jpg"] == seq["IMG_0002.jpg"] != seq["IMG_0003.jpg"]
    assert len(set(seq.values())) == 4
    assert parse("{not json", Counter()) == {} and parse('{"images": 3}', Counter()) == {}


def test_adapt_validates_on_the_collections_annotations_and_skips_its_empty_and_person_frames(shared_data, tmp_path,
                                                                                             monkeypatch):
    from cerebro_core.adapt.stage import AdaptInputError, gather

    monkeypatch.setenv("CEREBRO_HOME", str(tmp_path / "home"))
    pool_json, _ = _collection(shared_data, tmp_path / "pool", 0)
    val_json, _ = _collection(shared_data, tmp_path / "val", 100)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    sets = [f"adapt.sources=[{{name: pool, path: {tmp_path / 'pool'}, metadata: {pool_json}}}]",
            f"adapt.validation_source={{name: val, path: {tmp_path / 'val'}, metadata: {val_json}}}",
            f"adapt.vocabulary={tmp_path / 'classes.txt'}"]
    pool, val, test, classes, counts = gather(load_config(REPO / "configs/demo.yaml", sets))
    assert len(val) == 12 and sum(it.label in CLASSES for it in val) == 10  # species labels from annotations
    assert len(pool) == 10 and counts["source_empty"] == 1 and counts["source_person"] == 1
    assert not any(it.extra.get("empty") or it.extra.get("person") for it in pool)
    # or the split comes from the collection's own annotations, held out by content hash
    pool2, val2, test2, _, c2 = gather(load_config(REPO / "configs/demo.yaml", [
        sets[0], sets[2], "adapt.validation_source=null", "adapt.annotated_validation=0.4",
        "adapt.annotated_test=0.3"]))
    u = {it.sha256: int(it.sha256[:12], 16) / 16**12 for it in pool2 + val2 + test2}
    assert val2 and test2 and len(pool2) + len(val2) + len(test2) == 10
    assert all(u[it.sha256] < 0.4 and it.label in CLASSES for it in val2)
    assert all(0.4 <= u[it.sha256] < 0.7 and it.label in CLASSES for it in test2)
    assert all(u[it.sha256] >= 0.7 for it in pool2) and c2["annotated_validation"] == len(val2)
    missing = [f"adapt.sources=[{{name: pool, path: {tmp_path / 'pool'}, metadata: {tmp_path / 'none.json'}}}]"]
    with pytest.raises(AdaptInputError, match=r"sources\[pool\]\.metadata: nothing at"):
        gather(load_config(REPO / "configs/demo.yaml", sets[1:] + missing))


def _serve(home: Path, sets: list[str]):
    port = free_port()
    args = [CEREBRO, "serve", "--port", str(port), "-c", str(REPO / "configs/demo.yaml")]
    for o in sets:
        args += ["--set", o]
    log = open(home / f"serve-{port}.log", "w")
    proc = subprocess.Popen(args, env=dict(os.environ, CEREBRO_HOME=str(home)), stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, timeout=120, proc=proc)
    return proc, log, f"http://127.0.0.1:{port}"


def test_search_hides_empty_frames_and_never_serves_people_unless_configured(shared_data, tmp_path, monkeypatch):
    import httpx

    home = tmp_path / "home"
    monkeypatch.setenv("CEREBRO_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path, _ = _collection(shared_data, tmp_path / "traps", 0)
    for station in ("ST01", "ST02"):  # a second source, an ecologist's Station/Species tree
        (tmp_path / "st" / station / "horse").mkdir(parents=True)
        for p in sorted((shared_data / "cifar10_animals" / "test" / "horse").glob("*.jpg"))[:2]:
            os.link(p, tmp_path / "st" / station / "horse" / f"{station}_{p.name}")
    sets = [f"index.sources=[{{name: traps, path: {tmp_path / 'traps'}, metadata: {path}, timezone: Africa/Dar_es_Salaam}}, "
            f"{{name: st, path: {tmp_path / 'st'}, layout: '{{camera}}/{{label}}/{{file}}'}}]"]
    cfg = load_config(REPO / "configs/demo.yaml", sets)
    indexed_home(cfg)
    proc, log, url = _serve(home, sets)
    try:
        c = httpx.Client(base_url=url, timeout=60)
        st = c.get("/search", params={"q": "an animal", "k": 50, "camera": "ST02"}).json()["results"]
        assert len(st) == 2 and {(h["source"], h["source_label"]) for h in st} == {("st", "horse")}
        hits = c.get("/search", params={"q": "an animal", "k": 50, "source": "traps"}).json()["results"]
        names = {Path(h["uri"]).name: h for h in hits}
        assert len(hits) == 10 and "IMG_0010.jpg" not in names and "IMG_0011.jpg" not in names
        first = names["IMG_0000.jpg"]
        assert first["source_label"] in CLASSES and first["camera"] == "loc_A"
        assert first["taken_at"] == "2019-06-01T05:00:00+03:00"  # the source's zone on its naive clock
        at = c.get("/search", params={"q": "an animal", "k": 50, "date_from": "2019-06-01T02:00:00Z",
                                      "date_to": "2019-06-01T02:00:30Z"}).json()["results"]
        assert [Path(h["uri"]).name for h in at] == ["IMG_0000.jpg"]  # 05:00 in Dar es Salaam is 02:00 UTC
        assert names["IMG_0001.jpg"]["sequence_id"] == first["sequence_id"] != names["IMG_0003.jpg"]["sequence_id"]
        shown = {Path(h["uri"]).name: h for h in c.get("/search", params={
            "q": "an animal", "k": 50, "show_empty": "true", "source": "traps"}).json()["results"]}
        assert len(shown) == 11 and shown["IMG_0010.jpg"]["empty"] is True and "IMG_0011.jpg" not in shown
        facets = c.get("/facets").json()
        assert facets["hidden"] == {"empty": 1, "person": 1} and facets["source_labels"][first["source_label"]] >= 1
        same = c.get("/search", params={"q": "an animal", "k": 50, "source_label": first["source_label"]}).json()
        assert same["results"] and {h["source_label"] for h in same["results"]} == {first["source_label"]}
        export = c.get("/export", params={"q": "an animal", "format": "csv", "source": "traps"}).text
        assert "IMG_0000.jpg" in export and "IMG_0010.jpg" not in export and "IMG_0011.jpg" not in export
        ids = {Path(h["uri"]).name: h["id"] for h in map(json.loads, c.get("/export", params={
            "q": "an animal", "format": "jsonl", "show_empty": "true"}).text.splitlines())}  # 11 + 4 of st
        assert c.get(f"/images/{ids['IMG_0010.jpg']}").status_code == 200
        person = next(i for i in range(16) if i not in ids.values())
        assert c.get(f"/images/{person}").status_code == 404 and c.get(f"/thumbnails/{person}").status_code == 404
    finally:
        stop(proc)
        log.close()
    proc, log, url = _serve(home, sets + ["serve.show_people=true"])
    try:
        c = httpx.Client(base_url=url, timeout=60)
        hits = c.get("/search", params={"q": "an animal", "k": 50, "show_empty": "true", "source": "traps"}).json()[
            "results"]
        assert len(hits) == 12 and {h["person"] for h in hits} == {True, False}
        assert c.get(f"/images/{person}").status_code == 200
    finally:
        stop(proc)
        log.close()


def test_a_station_species_folder_tree_gives_cameras_and_labels(shared_data, tmp_path, monkeypatch):
    """layout '{camera}/{label}/{file}': the station is the camera, the species folder the label (not the
    station, as the class-folder default would read it); a file at another depth is counted and kept
    without either; bursts are grouped per station, never across stations."""
    from cerebro_core.adapt.stage import gather
    from cerebro_core.config import ConfigError

    root = tmp_path / "stations"
    for station in ("ST01", "ST02"):
        for species in ("deer", "horse"):
            (root / station / species).mkdir(parents=True)
            for p in sorted((shared_data / "cifar10_animals" / "test" / species).glob("*.jpg"))[:3]:
                os.link(p, root / station / species / f"{station}_{p.name}")
    os.link(next((shared_data / "cifar10_animals" / "test" / "cat").glob("*.jpg")), root / "loose.jpg")
    counts: Counter = Counter()
    items = scan_folder(str(root), "st", 1e9, counts, layout="{camera}/{label}/{file}")
    assert len(items) == 13 and counts["layout_mismatch"] == 1
    placed = [it for it in items if Path(it.uri).name != "loose.jpg"]
    assert {(it.extra["camera"], it.label) for it in placed} == {(s, sp) for s in ("ST01", "ST02") for sp in ("deer", "horse")}
    assert all(Path(it.uri).parent.name == it.label and Path(it.uri).parent.parent.name == it.extra["camera"]
               for it in placed)
    default = scan_folder(str(root), "st", 1e9, Counter())
    assert {it.label for it in default} == {"ST01", "ST02", None}  # the default reads the station as the label
    rows = [{"uri": it.uri, "source": "st", "media_type": "image", "taken_at": "2020-01-01T00:00:00", **it.extra}
            for it in placed]  # one instant everywhere: only the camera tells bursts apart
    seq = sequences(rows, gap_s=60)
    assert len(set(seq)) == 2 and all((seq[i] == seq[j]) == (rows[i]["camera"] == rows[j]["camera"])
                                      for i in range(len(rows)) for j in range(len(rows)))
    monkeypatch.setenv("CEREBRO_HOME", str(tmp_path / "home"))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    cfg = load_config(REPO / "configs/demo.yaml", [
        f"adapt.sources=[{{name: st, path: {root}, layout: '{{camera}}/{{label}}/{{file}}'}}]",
        f"adapt.vocabulary={tmp_path / 'classes.txt'}", "adapt.validation_source=null"])
    pool = gather(cfg)[0]
    assert {it.label for it in pool} == {"deer", "horse", None}  # measurement only: precision against the species
    for bad in ("{label}/{label}/{file}", "{station}/{file}", "{camera}/{label}"):
        with pytest.raises(ConfigError, match=r"index\.sources\.0\.layout"):
            load_config(REPO / "configs/demo.yaml", [f"index.sources=[{{name: x, path: {root}, layout: '{bad}'}}]"])


def test_megadetector_output_flags_empty_and_person_frames(shared_data, tmp_path, monkeypatch):
    """A MegaDetector batch-output JSON as a source option: a frame without a detection at the
    threshold is empty, a person detection at it flags people (below it, not), the source's own
    annotations win over the detector, and malformed entries are counted; adapt skips the flagged."""
    from cerebro_core.adapt.stage import gather
    from cerebro_core.data.megadetector import parse as parse_md

    root = tmp_path / "cam"
    root.mkdir()
    photos = sorted((shared_data / "cifar10_animals" / "test" / "deer").glob("*.jpg"))[:7]
    for i, p in enumerate(photos):
        os.link(p, root / f"IMG_{i}.jpg")
    det = lambda cat, conf: {"category": cat, "conf": conf, "bbox": [0.1, 0.1, 0.5, 0.5]}  # noqa: E731
    md = {"detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": [
        {"file": "IMG_0.jpg", "detections": [det("1", 0.93)]},
        {"file": "IMG_1.jpg", "detections": []},                                # empty
        {"file": "IMG_2.jpg", "detections": [det("1", 0.05)]},                  # below the threshold: empty
        {"file": "IMG_3.jpg", "detections": [det("2", 0.91), det("1", 0.4)]},   # a person
        {"file": "IMG_4.jpg", "detections": [det("2", 0.1), det("1", 0.8)]},    # not a person at 0.2
        {"file": "IMG_5.jpg", "failure": "Failure image access"},
        {"file": "../../etc/passwd", "detections": []},
        {"file": "IMG_6.jpg", "detections": [{"category": "9", "conf": 0.9}, {"category": "1", "conf": "high"}]},
        {"file": "IMG_0.jpg", "detections": []},                                # listed twice: the first kept
    ]}
    (tmp_path / "md.json").write_text(json.dumps(md))
    counts: Counter = Counter()
    flags = parse_md((tmp_path / "md.json").read_text(), counts, 0.2)
    items = {Path(it.uri).name: it for it in scan_folder(str(root), "cam", 1e9, counts, flags=flags)}
    assert [(items[f"IMG_{i}.jpg"].extra.get("empty"), items[f"IMG_{i}.jpg"].extra.get("person")) for i in range(7)] == [
        (False, False), (True, False), (True, False), (False, True), (False, False), (None, None), (True, False)]
    assert items["IMG_4.jpg"].extra["animal_conf"] == 0.8
    assert counts == Counter({"detections.failed_image": 1, "detections.bad_file_name": 1,
                              "detections.bad_detection": 2, "detections.duplicate_file_name": 1})
    # the collection's own annotation wins: IMG_1 annotated as a deer is not empty for the detector's miss
    coco = {"images": [{"id": i, "file_name": f"IMG_{i}.jpg"} for i in range(7)],
            "annotations": [{"image_id": 1, "category_id": 1}], "categories": [{"id": 1, "name": "deer"}]}
    both = {Path(it.uri).name: it for it in scan_folder(str(root), "cam", 1e9, Counter(),
                                                         parse(json.dumps(coco), Counter()), flags=flags)}
    assert both["IMG_1.jpg"].extra["empty"] is False and both["IMG_2.jpg"].extra["empty"] is True
    monkeypatch.setenv("CEREBRO_HOME", str(tmp_path / "home"))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    pool, _, _, _, c = gather(load_config(REPO / "configs/demo.yaml", [
        f"adapt.sources=[{{name: cam, path: {root}, detections: {tmp_path / 'md.json'}}}]",
        f"adapt.vocabulary={tmp_path / 'classes.txt'}", "adapt.validation_source=null"]))
    assert len(pool) == 3 and c["source_empty"] == 3 and c["source_person"] == 1


def test_reindex_of_a_configured_source_reads_its_metadata(shared_data, tmp_path, monkeypatch):
    """`cerebro reindex` of a source the config names reads that source's metadata JSON as the
    index stage does: the new items carry the collection's labels, cameras and flags."""
    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.index.reindex import run_reindex

    home = tmp_path / "home"
    monkeypatch.setenv("CEREBRO_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "first").mkdir()
    for p in sorted((shared_data / "cifar10_animals" / "test" / "horse").glob("*.jpg"))[:4]:
        os.link(p, tmp_path / "first" / p.name)
    first = f"{{name: first, path: {tmp_path / 'first'}}}"
    cfg = load_config(REPO / "configs/demo.yaml", [f"index.sources=[{first}]"])
    indexed_home(cfg)
    path, _ = _collection(shared_data, tmp_path / "traps", 0)
    cfg2 = load_config(REPO / "configs/demo.yaml", [
        f"index.sources=[{first}, {{name: traps, path: {tmp_path / 'traps'}, metadata: {path}}}]"])
    r = run_reindex(cfg2, str(tmp_path / "traps"), source="traps", log=lambda s: None)
    assert r.published and r.new == 12
    _, s = load_searcher("models:/cerebro-search@champion", f"sqlite:///{home / 'mlflow.db'}")
    rows = {Path(x["uri"]).name: x for x in s.rows if x["source"] == "traps"}
    assert rows["IMG_0003.jpg"]["camera"] == "loc_B" and rows["IMG_0003.jpg"]["source_label"] in CLASSES
    assert rows["IMG_0010.jpg"]["empty"] and rows["IMG_0011.jpg"]["person"]
    assert s.columns.facets()["hidden"] == {"empty": 1, "person": 1}


def test_naive_times_stay_naive_and_compare_as_local(tmp_path):
    """No zone stated: a camera's naive clock is compared as wall-clock time with naive bounds, and
    the facets print it without inventing an offset; zoned times keep theirs."""
    import pyarrow as pa

    from cerebro_core.search.columns import Columns
    from cerebro_core.search.filters import Filters
    from cerebro_core.search.rows import Rows

    times = ["2019-06-01T05:00:00", "2019-06-01T23:30:00", "2019-06-02T01:00:00+02:00", None]
    table = pa.table({"uri": [f"/x/{i}.jpg" for i in range(4)], "source": ["s"] * 4, "media_type": ["image"] * 4,
                      "taken_at": times})
    cols = Columns(Rows(table, tmp_path))
    assert cols.facets()["taken_at"] == ["2019-06-01T05:00:00", "2019-06-01T23:30:00"]
    day = cols.mask(Filters(date_from="2019-06-01", date_to="2019-06-01"))
    assert day.tolist() == [True, True, True, False]  # 01:00+02:00 is 23:00 UTC on the 1st
    late = cols.mask(Filters(date_from="2019-06-01T23:00:00"))
    assert late.tolist() == [False, True, True, False]
