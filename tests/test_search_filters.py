"""Searching the way camera-trap users do (issue #20): real photos given EXIF times, GPS and camera
makes, a labels.csv with deployment ids and a video with a container creation time, indexed by the
real index stage; every filter, collapse, page and export checked against sets computed here from
what the test wrote (and, for ranking, brute force over the index's own vectors), through the
library, the HTTP API, the CLI and the pyfunc model."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from helpers import CEREBRO, REPO, free_port, make_video, stop, wait_port


T0 = datetime(2024, 5, 1, 10, 0, 0)
CAM_A = ("Bushnell", "CoreDS", (46.5, 7.9))      # the Alps
CAM_B = ("Reconyx", "HP2X", (-2.33, 34.83))      # the Serengeti
# file → (camera, seconds after T0); bursts: a0-a2 (10 s apart), a3-a4 (2 h later), a5 (6 weeks later), b0-b3
SHOTS = {"a0": (CAM_A, 0), "a1": (CAM_A, 10), "a2": (CAM_A, 20), "a3": (CAM_A, 7200), "a4": (CAM_A, 7230),
         "a5": (CAM_A, 45 * 86400), "b0": (CAM_B, 5), "b1": (CAM_B, 10), "b2": (CAM_B, 15), "b3": (CAM_B, 20)}


def _dms(x: float) -> tuple:
    d = int(x)
    m = int((x - d) * 60)
    return (float(d), float(m), round(((x - d) * 60 - m) * 60, 4))


def with_exif(src: Path, dst: Path, camera: tuple, when: datetime) -> None:
    from PIL import Image

    make, model, (lat, lon) = camera
    exif = Image.Exif()
    exif[271], exif[272] = make, model
    exif.get_ifd(0x8769)[36867] = when.strftime("%Y:%m:%d %H:%M:%S")
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = ("N" if lat >= 0 else "S"), _dms(abs(lat)), ("E" if lon >= 0 else "W"), _dms(abs(lon))
    Image.open(src).save(dst, exif=exif, quality=95)


@pytest.fixture(scope="module")
def wild(shared_data, state_dir, tmp_path_factory):
    from helpers import indexed_home

    from cerebro_core.config import load_config
    from cerebro_core.search.local_copy import load_searcher

    photos = {k: sorted((shared_data / "cifar10_animals" / "test" / k).glob("*.jpg")) for k in ("deer", "horse", "cat", "frog")}
    cams, traps = tmp_path_factory.mktemp("cams"), tmp_path_factory.mktemp("traps")
    for i, (name, (cam, dt)) in enumerate(SHOTS.items()):
        with_exif(photos["deer" if name[0] == "a" else "horse"][i], cams / f"{name}.jpg", cam, T0 + timedelta(seconds=dt))
    shutil.copy(cams / "a0.jpg", cams / "a0_copy.jpg")  # the same shot twice: a near-duplicate
    for i in range(3):
        shutil.copy(photos["cat"][i], cams / f"n{i}.jpg")  # no EXIF at all
    make_video(cams / "clip.mp4", seconds=3.0, creation_time="2024-05-02T09:00:00.000000Z")
    for i in range(3):
        shutil.copy(photos["frog"][i], traps / f"t{i}.jpg")
    (traps / "labels.csv").write_text("path,label,camera\nt0.jpg,frog,DEP-7\nt1.jpg,frog,DEP-7\nt2.jpg,frog,DEP-8\n")
    vocab = tmp_path_factory.mktemp("vocab") / "species.txt"
    vocab.write_text("deer\nhorse\ncat\nfrog\n")
    home = state_dir
    overrides = [f"index.sources=[{{name: cams, path: {cams}}}, {{name: traps, path: {traps}}}]",
                 "index.video_frame_interval=1.0", f"index.vocabulary={vocab}", "index.duplicate_threshold=0.9999"]
    indexed_home(load_config(REPO / "configs/demo.yaml", overrides))
    _, searcher = load_searcher("models:/cerebro-search@champion")
    return {"home": home, "overrides": overrides, "s": searcher, "cams": cams, "traps": traps,
            "env": dict(os.environ, CEREBRO_HOME=str(home))}


def _by_name(s) -> dict:
    return {Path(r["uri"]).name + (f"@{r['video_ts']:.0f}" if r["media_type"] == "video_frame" else ""): dict(r, id=i)
            for i, r in enumerate(s.rows)}


def test_each_item_carries_its_time_place_camera_species_sequence_and_duplicate(wild):
    rows = _by_name(wild["s"])
    assert len(rows) == 11 + 3 + 3 + 3  # 10 shots + the copy, 3 without EXIF, 3 stills, 3 trap photos
    a1, b0 = rows["a1.jpg"], rows["b0.jpg"]
    assert a1["taken_at"] == "2024-05-01T10:00:10" and a1["camera"] == "Bushnell CoreDS"
    assert abs(a1["lat"] - 46.5) < 1e-3 and abs(a1["lon"] - 7.9) < 1e-3
    assert b0["camera"] == "Reconyx HP2X" and b0["lat"] < 0 < b0["lon"]
    assert rows["n0.jpg"]["taken_at"] is None and rows["n0.jpg"]["lat"] is None  # never the file's mtime
    assert rows["clip.mp4@0"]["taken_at"] == "2024-05-02T09:00:00+00:00"
    assert [rows[f"t{i}.jpg"]["camera"] for i in range(3)] == ["DEP-7", "DEP-7", "DEP-8"]  # labels.csv wins
    assert all(r["species"] in ("deer", "horse", "cat", "frog") and 0 < r["species_score"] <= 1 for r in rows.values())
    seq = {n: r["sequence_id"] for n, r in rows.items()}
    groups = [{"a0.jpg", "a0_copy.jpg", "a1.jpg", "a2.jpg"}, {"a3.jpg", "a4.jpg"}, {"a5.jpg"},
              {"b0.jpg", "b1.jpg", "b2.jpg", "b3.jpg"}, {"clip.mp4@0", "clip.mp4@1", "clip.mp4@2"}]
    groups += [{n} for n in rows if n[0] in "nt"]
    assert sorted(sorted(g) for g in groups) == sorted(
        sorted(n for n in seq if seq[n] == v) for v in set(seq.values()))
    # the copy, and the stills of a video whose frames hardly change (cosine ≥ 0.9999 here)
    dups = {n: r["duplicate_of"] for n, r in rows.items() if r["duplicate_of"] is not None}
    assert dups == {"a0_copy.jpg": rows["a0.jpg"]["id"], "clip.mp4@1": rows["clip.mp4@0"]["id"],
                    "clip.mp4@2": rows["clip.mp4@0"]["id"]}


def _brute(s, v: np.ndarray, keep) -> list[int]:
    x = s.index.reconstruct_n(0, s.index.ntotal)
    scores = x @ v
    return [int(i) for i in np.argsort(-scores, kind="stable") if keep(s.rows[i], float(scores[i]))]


def _same_ranking(got: list[dict], want: list[int], s, v) -> None:
    assert {h["id"] for h in got} == set(want)
    scores = [h["score"] for h in got]
    assert scores == sorted(scores, reverse=True)


def test_filters_are_exact_against_brute_force(wild):
    from cerebro_core.search.filters import parse_filters

    s = wild["s"]
    v = s.encode_text("a deer in the snow")
    top_species = max(s.columns.facets()["species"].items(), key=lambda t: t[1])[0]
    median = float(np.median(s.index.reconstruct_n(0, s.index.ntotal) @ v))
    cases = [
        ({"date_from": "2024-05-01", "date_to": "2024-05-01"}, lambda r, sc: (r["taken_at"] or "")[:10] == "2024-05-01"),
        ({"date_from": "2024-05-01T11:00:00", "date_to": "2024-06-30"},
         lambda r, sc: r["taken_at"] is not None and "2024-05-01T11:00:00" <= r["taken_at"][:19] <= "2024-06-30T23:59:59"),
        ({"bbox": "7,46,8,47"}, lambda r, sc: r["camera"] == "Bushnell CoreDS"),
        ({"bbox": "30,-5,40,0", "camera": "Reconyx HP2X"}, lambda r, sc: r["camera"] == "Reconyx HP2X"),
        ({"bbox": "30,-90,8,90"},  # across the antimeridian: east of 30° or west of 8° (refused as inverted before)
         lambda r, sc: r["lon"] is not None and (r["lon"] >= 30 or r["lon"] <= 8)),
        ({"camera": "DEP-7"}, lambda r, sc: r["camera"] == "DEP-7"),
        ({"species": [top_species]}, lambda r, sc: r["species"] == top_species),
        ({"species": [top_species], "min_species_score": 0.3}, lambda r, sc: r["species"] == top_species and r["species_score"] >= 0.3),
        ({"media": "video"}, lambda r, sc: r["media_type"] == "video_frame"),
        ({"source": "traps"}, lambda r, sc: r["source"] == "traps"),
        ({"min_score": median}, lambda r, sc: sc >= median),
    ]
    for params, keep in cases:
        want = _brute(s, v, keep)
        got = s.search_vector(v, k=100, filters=parse_filters(**params))
        assert want, params
        _same_ranking(got, want, s, v)
        assert s.matches(parse_filters(**params)) >= len(want), params


def test_collapse_pages_and_date_order(wild):
    from cerebro_core.search.filters import parse_filters

    s = wild["s"]
    rows = _by_name(s)
    v = s.encode_text("an animal")
    hits = s.search_vector(v, k=100, filters=parse_filters(collapse="sequence"))
    assert len(hits) == 5 + 6  # the 5 multi-item sequences and the 6 single items, once each
    sizes = {rows[n]["sequence_id"]: 0 for n in rows}
    for r in rows.values():
        sizes[r["sequence_id"]] += 1
    assert all(h["group_size"] == sizes[h["sequence_id"]] for h in hits)
    dup = s.search_vector(v, k=100, filters=parse_filters(collapse="duplicates"))
    assert len(dup) == len(rows) - 3
    assert [h["group_size"] for h in dup if h["id"] in (rows["a0.jpg"]["id"], rows["a0_copy.jpg"]["id"])] == [2]
    assert [h["group_size"] for h in dup if h["media_type"] == "video_frame"] == [3]
    full = s.search_vector(v, k=20, filters=parse_filters())
    pages = [h for off in (0, 7, 14) for h in s.search_vector(v, k=7, filters=parse_filters(offset=off))]
    assert [h["id"] for h in pages] == [h["id"] for h in full]
    dated = s.search_vector(v, k=100, filters=parse_filters(sort="date"))
    times = [h["taken_at"] for h in dated]
    known = [t for t in times if t]
    assert len(dated) == 20 and times[:len(known)] == known and not any(times[len(known):])
    assert [datetime.fromisoformat(t[:19]) for t in known] == sorted(datetime.fromisoformat(t[:19]) for t in known)


@pytest.fixture(scope="module")
def api(wild):
    port = free_port()
    args = [CEREBRO, "serve", "--port", str(port), "-c", str(REPO / "configs/demo.yaml")]
    for o in wild["overrides"]:
        args += ["--set", o]
    proc = subprocess.Popen(args, env=wild["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_api_filters_thumbnails_export_and_bad_values(api, wild):
    import httpx
    from PIL import Image

    c = httpx.Client(base_url=api, timeout=60)
    r = c.get("/search", params={"q": "a deer", "k": 50, "date_from": "2024-05-01", "date_to": "2024-05-01",
                                 "collapse": "sequence"})
    assert r.status_code == 200, r.text
    body = r.json()
    names = {h["uri"] for h in body["results"]}
    assert len(body["results"]) == 3 and body["matches"] == 10  # 10 shots that day, in 3 bursts
    assert sorted(h["group_size"] for h in body["results"]) == [2, 4, 4]
    h = body["results"][0]
    assert set(h) >= {"id", "score", "source", "media_type", "uri", "thumbnail_url", "species", "species_score",
                      "taken_at", "lat", "lon", "camera", "sequence_id", "group_size", "video_ts"}
    assert all(not str(val).startswith("/") for hit in body["results"] for key, val in hit.items() if not key.endswith("_url"))
    assert names <= {f"{n}.jpg" for n in SHOTS} | {"a0_copy.jpg"}
    facets = c.get("/facets").json()
    assert sum(facets["species"].values()) == 20 and facets["cameras"]["DEP-7"] == 2
    assert facets["taken_at"] == ["2024-05-01T10:00:00", "2024-06-15T10:00:00"]  # naive EXIF clocks: no offset invented
    # thumbnails: ≤ 256 px JPEG, made once and then read from storage; video stills too
    still = c.get("/search", params={"q": "a deer", "media": "video", "k": 1}).json()["results"][0]
    for item in (h, still):
        t = c.get(item["thumbnail_url"])
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(t.content)).size) <= 256
    cached = sorted((wild["home"] / "data" / "thumbnails").rglob("*.jpg"))
    assert len(cached) == 2
    stamp = [p.stat().st_mtime_ns for p in cached]
    assert c.get(h["thumbnail_url"]).content in [p.read_bytes() for p in cached]  # served from storage
    assert [p.stat().st_mtime_ns for p in cached] == stamp  # not made again
    # export: every match, in three formats
    q = {"q": "a deer", "camera": "Bushnell CoreDS"}
    rows = list(csv.DictReader(io.StringIO(c.get("/export", params={**q, "format": "csv"}).text)))
    assert sorted(r["uri"] for r in rows) == sorted(["a0.jpg", "a0_copy.jpg"] + [f"a{i}.jpg" for i in range(1, 6)])
    lines = c.get("/export", params={**q, "format": "jsonl"}).text.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [int(r["id"]) for r in rows]
    urls = c.get("/export", params={**q, "format": "urls"}).text.split()
    assert urls == [f"{api}/images/{r['id']}" for r in rows] and c.get(urls[0]).status_code == 200
    for params, msg in (({"species": "unicorn"}, "species: unknown 'unicorn'"),
                        ({"date_from": "2024-13-01"}, "date_from: not an ISO 8601"),
                        ({"bbox": "5,1,10,0"}, "bbox: inverted: min_lat > max_lat"),
                        ({"date_from": "2009-W17"}, "date_from: not an ISO 8601 date, month, year"),  # taken before
                        ({"bbox": "1,2,3"}, "bbox: expected min_lon"),
                        ({"collapse": "bursts"}, "collapse:"),
                        ({"min_score": "high"}, "min_score:"),
                        ({"date_from": "2024-06-01", "date_to": "2024-05-01"}, "date_from is after date_to")):
        r = c.get("/search", params={"q": "a deer", **params})
        assert r.status_code == 400 and msg in r.json()["detail"], (params, r.text)


def test_cli_and_pyfunc_filter_alike(wild):
    import mlflow
    import pandas as pd

    def cli(*args: str) -> subprocess.CompletedProcess:
        extra = [x for o in wild["overrides"] for x in ("--set", o)]
        return subprocess.run([CEREBRO, "search", *args, "-c", str(REPO / "configs/demo.yaml"), *extra],
                              env=wild["env"], capture_output=True, text=True, timeout=180)

    sp = max(wild["s"].columns.facets()["species"].items(), key=lambda t: t[1])[0]
    r = cli("a deer", "--species", sp, "--from", "2024-01-01", "-k", "50", "--json")
    assert r.returncode == 0, r.stderr[-1500:]
    hits = json.loads(r.stdout)["results"]
    want = {i for i, row in enumerate(wild["s"].rows) if row["species"] == sp and row["taken_at"]}
    assert {h["id"] for h in hits} == want and all(h["taken_at"] >= "2024-01-01" for h in hits)
    for args, msg in ((("--species", "unicorn"), "species: unknown"), (("--bbox", "5,1,10,0"), "bbox: inverted"),
                      (("--from", "2024-13-01"), "date_from:")):
        r = cli("a deer", *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-800:])
    m = mlflow.pyfunc.load_model("models:/cerebro-search@champion")
    out = m.predict(pd.DataFrame({"query": ["a frog"]}), params={"k": 10, "camera": "DEP-7"})
    assert sorted(Path(u).name for u in out["uri"]) == ["t0.jpg", "t1.jpg"]


def test_page_filters_pages_and_queries_by_image_in_chromium(api, wild):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders its hits on every answer: an element read mid-render is stale, not wrong
    RERENDERED = (NoSuchElementException, StaleElementReferenceException)

    from helpers import chromium

    def hits(d) -> list:
        return d.find_elements(By.CSS_SELECTOR, "figure.hit")

    def settled(d) -> bool:
        return d.execute_script("return [...document.querySelectorAll('img.result')].every(i => i.complete)")

    s = wild["s"]
    sp = max(s.columns.facets()["species"].items(), key=lambda t: t[1])[0]
    with chromium() as d:
        d.get(api + "/")
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".chip"))
        d.find_element(By.ID, "q").send_keys("a deer")
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: len(hits(d)) == 20 and settled(d))  # k=24, 20 items
        d.find_element(By.CSS_SELECTOR, f".chip[data-species='{sp}']").click()  # pick a species
        want = sum(1 for r in s.rows if r["species"] == sp)
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: len(hits(d)) == want)
        assert {h.get_attribute("data-species") for h in hits(d)} == {sp}  # only that species
        assert f"species={sp}" in d.current_url and "q=a+deer" in d.current_url  # the query lives in the URL
        d.get(d.current_url)  # reload: the same search comes back
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: len(hits(d)) == want)
        assert d.find_element(By.ID, "q").get_attribute("value") == "a deer"
        d.find_element(By.CSS_SELECTOR, f".chip[data-species='{sp}']").click()  # off again
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: len(hits(d)) == 20)
        # pagination: 8 per page, the second page starts at result 9
        k = d.find_element(By.ID, "k")
        k.clear()
        k.send_keys("8")
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: len(hits(d)) == 8)
        first_page = [h.get_attribute("data-id") for h in hits(d)]
        d.find_element(By.ID, "next").click()
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: "results 9–16" in d.find_element(By.ID, "pageinfo").text)
        assert not set(first_page) & {h.get_attribute("data-id") for h in hits(d)}
        # click a hit: the original and its metadata; then "more like this"
        target = hits(d)[0]
        tid = target.get_attribute("data-id")
        target.click()
        WebDriverWait(d, 30, ignored_exceptions=RERENDERED).until(lambda d: d.find_element(By.ID, "detail").get_attribute("open") is not None)
        assert "taken" in d.find_element(By.ID, "meta").text
        d.find_element(By.ID, "like").click()
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: f"like={tid}" in d.current_url and len(hits(d)) == 8)
        assert tid not in {h.get_attribute("data-id") for h in hits(d)}
        # drop an image on the page: the dropped photo itself comes back first
        a2 = next(i for i, r in enumerate(s.rows) if r["uri"].endswith("/a2.jpg"))
        d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/images/' + arguments[0]).then(r => r.blob()).then(b => {
              const dt = new DataTransfer();
              dt.items.add(new File([b], 'dropped.jpg', {type: 'image/jpeg'}));
              document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
              done(true);
            });""", a2)
        WebDriverWait(d, 60, ignored_exceptions=RERENDERED).until(lambda d: hits(d) and hits(d)[0].get_attribute("data-id") == str(a2))
        assert float(d.find_elements(By.CSS_SELECTOR, ".score")[0].text) > 0.999
        d.save_screenshot(str(Path(os.environ.get("CEREBRO_SCREENSHOT_DIR", "/tmp")) / "cerebro-filters.png"))


def test_scrapes_keep_their_urls_and_the_exif_of_the_originals(wild, tmp_path, s3_env, monkeypatch):
    """A URL list goes through img2dataset, which re-encodes each photo: the EXIF it read from
    the downloaded bytes and the URL survive; an S3 scrape's hits name their s3:// objects."""
    import boto3

    from cerebro_core.config import load_config
    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.index.reindex import run_reindex
    from cerebro_core.serve.app import _hit

    remote = tmp_path / "remote"
    remote.mkdir()
    shots = sorted((REPO.parent / "shared" / "data" / "cifar10_animals" / "test" / "dog").glob("*.jpg"))[:3]
    urls = []
    for i, p in enumerate(shots):
        with_exif(p, remote / f"dog{i}.jpg", CAM_B, datetime(2024, 7, 1, 6, 0, 0) + timedelta(seconds=20 * i))
        urls.append((remote / f"dog{i}.jpg").as_uri())
    (tmp_path / "urls.csv").write_text("url,caption\n" + "".join(f"{u},a dog\n" for u in urls))
    cfg = load_config(REPO / "configs/demo.yaml", wild["overrides"])
    r = run_reindex(cfg, str(tmp_path / "urls.csv"), source="downloaded", log=lambda x: None)
    assert r.new == 3, r
    _, s = load_searcher("models:/cerebro-search@champion")
    got = {row["origin_uri"]: row for row in s.rows if row["source"] == "downloaded"}
    assert sorted(got) == sorted(urls)
    for i, u in enumerate(urls):
        row = got[u]
        assert row["taken_at"] == f"2024-07-01T06:00:{20 * i:02d}" and row["camera"] == "Reconyx HP2X"
        assert abs(row["lat"] + 2.33) < 1e-3 and abs(row["lon"] - 34.83) < 1e-3
    assert len({row["sequence_id"] for row in got.values()}) == 1  # one burst: 20 s apart, one camera
    i = next(j for j, row in enumerate(s.rows) if row.get("origin_uri") == urls[0])
    assert _hit(s.hit(i, 1.0))["uri"] == urls[0]

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["endpoint"])
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"], region_name="us-east-1")
    for p in sorted((REPO.parent / "shared" / "data" / "cifar10_animals" / "test" / "bird").glob("*.jpg"))[:2]:
        s3.upload_file(str(p), s3_env["bucket"], f"scrape/birds/{p.name}")
    prefix = f"s3://{s3_env['bucket']}/scrape"
    r = run_reindex(cfg, prefix, source="s3", log=lambda x: None)
    assert r.new == 2, r
    _, s = load_searcher("models:/cerebro-search@champion")
    birds = [j for j, row in enumerate(s.rows) if row["source"] == "s3"]
    assert sorted(_hit(s.hit(j, 1.0))["uri"] for j in birds) == sorted(
        f"{prefix}/birds/{p.name}" for p in sorted((REPO.parent / "shared" / "data" / "cifar10_animals" / "test" / "bird").glob("*.jpg"))[:2])


def test_years_and_months_are_ranges():
    from datetime import datetime, timezone

    from cerebro_core.search.filters import Filters, _instant

    def at(*a) -> float:
        return datetime(*a, tzinfo=timezone.utc).timestamp()

    assert _instant("2009", False) == at(2009, 1, 1) and _instant("2009", True) == at(2009, 12, 31, 23, 59, 59, 999999)
    assert _instant("2009-04", False) == at(2009, 4, 1)
    assert _instant("2009-04", True) == at(2009, 4, 30, 23, 59, 59, 999999)
    assert _instant("2008-02", True) == at(2008, 2, 29, 23, 59, 59, 999999)
    assert _instant("2009-12", True) == at(2009, 12, 31, 23, 59, 59, 999999)
    f = Filters(date_from="2009", date_to="2009-04")
    assert f.date_from == "2009" and f.date_to == "2009-04"
    for bad in ("2009-13", "2009-00", "20O9"):
        with pytest.raises(ValueError, match="not an ISO 8601 date"):
            _instant(bad, False)
