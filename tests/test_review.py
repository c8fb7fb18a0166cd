"""Reviewers verify what the model guessed (issue #34), on a real index of CIFAR animals and a
video (a burst of near-identical stills) with a random CLIP: review mode in Chromium (confirm 3,
correct 2, mark 1 empty), search, facets, filters and export reflecting it, the verifications
surviving a reindex; CSV export/import through the CLI; the review queue; refused writes."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import CEREBRO, REPO, chromium, free_port, make_video, stop, wait_port


VOCAB = ("deer", "horse", "cat", "frog")


@pytest.fixture(scope="module")
def reviewed(shared_data, state_dir, tmp_path_factory):
    """21 items (4 photos of each of 4 species, 5 stills of one video) indexed by the real index
    stage, served by `cerebro serve` on its state dir."""
    from helpers import indexed_home

    from cerebro_core.config import load_config

    src = tmp_path_factory.mktemp("review-src")
    for sp in VOCAB:
        for i, p in enumerate(sorted((shared_data / "cifar10_animals" / "test" / sp).glob("*.jpg"))[:4]):
            shutil.copy(p, src / f"{sp}_{i}.jpg")
    make_video(src / "clip.mp4", seconds=5.0)
    vocab = tmp_path_factory.mktemp("review-vocab") / "species.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    home = state_dir
    overrides = [f"index.sources=[{{name: src, path: {src}}}]", "index.video_frame_interval=1.0",
                 f"index.vocabulary={vocab}"]
    cfg = load_config(REPO / "configs/demo.yaml", overrides)
    indexed_home(cfg)
    port = free_port()
    env = dict(os.environ, CEREBRO_HOME=str(home))
    args = [CEREBRO, "serve", "--port", str(port), "--reload-interval", "1", "-c", str(REPO / "configs/demo.yaml")]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=120, proc=proc)
        yield {"url": f"http://127.0.0.1:{port}", "cfg": cfg, "home": home, "env": env, "overrides": overrides,
               "src": src, "proc": proc}
    finally:
        stop(proc)


def cli(reviewed, *args: str) -> subprocess.CompletedProcess:
    extra = [x for o in reviewed["overrides"] for x in ("--set", o)]
    return subprocess.run([CEREBRO, *args, "-c", str(REPO / "configs/demo.yaml"), *extra], env=reviewed["env"],
                          capture_output=True, text=True, timeout=180)


def test_propose_spreads_over_bursts_classes_and_clusters():
    from cerebro_core.review.queue import propose

    # 50 frames of one burst are the least sure: one of them is proposed, then other bursts
    n = 80
    margin = np.concatenate([np.linspace(0.0, 0.01, 50), np.linspace(0.2, 0.9, 30)])
    burst = np.concatenate([np.zeros(50, int), np.arange(1, 31)])
    classes = np.concatenate([np.zeros(50, int), np.arange(30) % 3])
    cluster = np.concatenate([np.zeros(50, int), np.arange(30) % 5])
    pick = propose(margin, classes, cluster, [burst, np.arange(n)], 9)
    assert pick[0] == 0 and len(pick) == 9 and sum(burst[pick] == 0) == 1
    assert len(set(burst[pick])) == 9
    assert np.bincount(classes[pick]).max() <= 3  # ceil(9 / 3 classes) before any class gets more
    # without spread constraints the least sure come first
    assert propose(margin[50:], np.zeros(30, int), np.zeros(30, int), [], 4) == [0, 1, 2, 3]


def test_review_page_confirms_corrects_marks_empty_and_it_survives_a_reindex(reviewed, shared_data, tmp_path):
    import httpx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from cerebro_core.index.reindex import run_reindex

    api = reviewed["url"]
    c = httpx.Client(base_url=api, timeout=60)
    q = {"q": "an animal", "k": 24}

    def hits(d):
        return d.find_elements(By.CSS_SELECTOR, "figure.hit")

    def attrs(d, name):
        return d.execute_script(f"return [...document.querySelectorAll('figure.hit')].map(f => f.dataset.{name})")

    def press(d, keys: str, want_pos: int):
        ActionChains(d).send_keys(keys).perform()
        WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "rvpos").text.startswith(f"{want_pos} /")
                                   or not d.execute_script("return reviewing"))

    with chromium() as d:
        d.set_window_size(1400, 1200)
        d.get(f"{api}/?q=an+animal&k=24")
        WebDriverWait(d, 60).until(lambda d: len(hits(d)) == 21)
        d.find_element(By.ID, "reviewer").send_keys("ana", Keys.TAB)
        guesses = attrs(d, "species")
        ids = [int(x) for x in attrs(d, "id")]
        d.find_element(By.ID, "review").click()
        WebDriverWait(d, 10).until(lambda d: d.find_element(By.ID, "rvpos").text == "1 / 21")
        want = {}
        for pos in range(3):  # confirm the model's tag: one key each
            press(d, Keys.ENTER, pos + 2)
            want[ids[pos]] = guesses[pos]
        for pos in (3, 4):  # correct: type the start of another label, Enter takes the first match
            other = next(v for v in VOCAB if v != guesses[pos])
            press(d, other[:2] + Keys.ENTER, pos + 2)
            want[ids[pos]] = other
        press(d, "emp" + Keys.ENTER, 7)  # mark empty
        want[ids[5]] = "empty"
        press(d, Keys.ARROW_RIGHT, 8)  # skip
        ActionChains(d).send_keys(Keys.ESCAPE).perform()
        WebDriverWait(d, 30).until(lambda d: "6 verified by a person" in d.find_element(By.ID, "status").text)
        tags = dict(zip((int(x) for x in attrs(d, "id")), attrs(d, "species")))
        assert {i: tags[i] for i in want} == want
        assert [int(x) for x in attrs(d, "id") if x] and sum(v == "1" for v in attrs(d, "verified")) == 6
        assert "✓ empty" in d.find_element(By.CSS_SELECTOR, f"figure.hit[data-id='{ids[5]}'] .tag").text
        empty_chip = d.find_element(By.CSS_SELECTOR, ".chip[data-species='empty']").text
        assert empty_chip == "empty 1"  # the species facet counts what people said
        Select(d.find_element(By.ID, "verified")).select_by_value("true")  # the verified filter: the frame
        WebDriverWait(d, 30).until(lambda d: len(hits(d)) == 5 and all(v == "1" for v in attrs(d, "verified")))
        assert ids[5] not in [int(x) for x in attrs(d, "id")]  # marked empty: hidden unless empty frames are shown
        Select(d.find_element(By.ID, "show_empty")).select_by_value("true")
        WebDriverWait(d, 30).until(lambda d: len(hits(d)) == 6 and all(v == "1" for v in attrs(d, "verified")))
        assert "verified=true" in d.current_url

        # the API, facets and export say the same
        facets = c.get("/facets").json()
        assert facets["verified"] == {"verified": 6, "unverified": 15} and facets["species"]["empty"] == 1
        got = c.get("/search", params={**q, "verified": "true", "show_empty": "true"}).json()["results"]
        assert {h["id"] for h in c.get("/search", params={**q, "verified": "true"}).json()["results"]} == set(want) - {ids[5]}
        assert {h["id"]: h["species"] for h in got} == want
        assert all(h["verified_by"] == "ana" and h["species_score"] == 1.0 and h["model_species"] for h in got)
        assert [h["model_species"] for h in sorted(got, key=lambda h: ids.index(h["id"]))][:3] == guesses[:3]
        sp = want[ids[3]]
        in_sp = c.get("/search", params={**q, "species": sp}).json()["results"]
        assert ids[3] in {h["id"] for h in in_sp} and all(h["species"] == sp for h in in_sp)
        rows = list(csv.DictReader(io.StringIO(c.get("/export", params={**q, "verified": "true",
                                                                        "show_empty": "true"}).text)))
        assert {int(r["id"]): r["species"] for r in rows} == want and {r["verified"] for r in rows} == {"True"}
        unverified = c.get("/search", params={**q, "verified": "false"}).json()
        assert unverified["matches"] == 15
        d.find_element(By.ID, "queue").click()  # the review queue: unverified items only, least sure first
        WebDriverWait(d, 30).until(lambda d: d.execute_script("return reviewing")
                                   and d.find_element(By.ID, "rvpos").text.startswith("1 /"))
        queued = [int(x) for x in attrs(d, "id")]
        assert queued and not set(queued) & set(want) and not any(attrs(d, "verified"))
        assert queued == [h["id"] for h in c.get("/review", params={"q": "an animal", "k": 24}).json()["results"]]
        ActionChains(d).send_keys(Keys.ESCAPE).perform()

        # a reindex (2 new photos: a new version, new ids) keeps every verification
        scrape = tmp_path / "scrape"
        scrape.mkdir()
        for i, p in enumerate(sorted((shared_data / "cifar10_animals" / "test" / "dog").glob("*.jpg"))[:2]):
            shutil.copy(p, scrape / f"dog_{i}.jpg")
        v0 = c.get("/healthz").json()["version"]
        r = run_reindex(reviewed["cfg"], str(scrape), source="scrape", log=lambda x: None)
        assert r.published and r.new == 2
        deadline = time.monotonic() + 90
        while c.get("/healthz").json()["version"] == v0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.get("/healthz").json()["n"] == 23
        after = c.get("/search", params={**q, "verified": "true", "show_empty": "true"}).json()["results"]
        uri = {h["id"]: h["uri"] for h in got}
        assert sorted((h["uri"], h["species"]) for h in after) == sorted((uri[i], want[i]) for i in want)
        d.get(f"{api}/?q=an+animal&k=24&verified=true&show_empty=true")
        WebDriverWait(d, 60).until(lambda d: len(hits(d)) == 6 and all(v == "1" for v in attrs(d, "verified")))
        d.save_screenshot(str(Path(os.environ.get("CEREBRO_SCREENSHOT_DIR", "/tmp")) / "cerebro-review.png"))

    # CSV out, into another storage root, and out again: the same verifications
    out = tmp_path / "v.csv"
    r = cli(reviewed, "review", "export", "--out", str(out))
    assert r.returncode == 0, r.stderr[-1500:]
    exported = list(csv.DictReader(out.open()))
    assert len(exported) == 6 and {e["reviewer"] for e in exported} == {"ana"}
    assert sorted((e["uri"], e["label"]) for e in exported) == sorted((uri[i], want[i]) for i in want)
    other = f"storage.root={tmp_path / 'other-root'}"
    r = cli(reviewed, "review", "import", str(out), "--set", other)
    assert r.returncode == 0 and "6 verification(s) imported" in r.stdout, r.stderr[-1500:]
    again = cli(reviewed, "review", "export", "--set", other)
    assert again.stdout == out.read_text()
    # another tool's file names items by path only; a bad label refuses the whole file
    (tmp_path / "tool.csv").write_text("uri,label,reviewer\ndog_0.jpg,frog,timelapse\n")
    r = cli(reviewed, "review", "import", str(tmp_path / "tool.csv"), "--set", other)
    assert r.returncode == 0, r.stderr[-1500:]
    (tmp_path / "bad.csv").write_text("uri,label\ndog_1.jpg,frog\ncat_0.jpg,unicorn\n")
    r = cli(reviewed, "review", "import", str(tmp_path / "bad.csv"), "--set", other)
    assert r.returncode == 2 and "row 3: label: unknown 'unicorn'" in r.stderr and "Traceback" not in r.stderr
    rows = list(csv.DictReader(io.StringIO(cli(reviewed, "review", "export", "--latest", "--set", other).stdout)))
    assert len(rows) == 7 and ("dog_0.jpg", "frog", "timelapse") in {(x["uri"], x["label"], x["reviewer"]) for x in rows}
    r = cli(reviewed, "search", "an animal", "--verified", "--show-empty", "-k", "50", "--json")  # the CLI's too
    assert r.returncode == 0 and len(__import__("json").loads(r.stdout)["results"]) == 6, r.stderr[-800:]
    r = cli(reviewed, "search", "an animal", "--verified", "-k", "50", "--json")  # the frame marked empty: hidden
    assert r.returncode == 0 and len(__import__("json").loads(r.stdout)["results"]) == 5, r.stderr[-800:]


def test_review_queue_and_refused_writes(reviewed):
    import httpx
    from fastapi.testclient import TestClient

    from cerebro_core.config import ServeConfig
    from cerebro_core.search.local_copy import load_searcher
    from cerebro_core.serve.app import Holder, create_app
    from cerebro_core.serve.review import Reviews

    c = httpx.Client(base_url=reviewed["url"], timeout=60)
    body = c.get("/review", params={"k": 8}).json()
    queue = body["results"]
    assert 0 < len(queue) <= 8 and not any(h["verified"] for h in queue)
    assert len({h["sequence_id"] for h in queue}) == len(queue)  # one still of the video at most
    unverified = c.get("/search", params={"q": "an animal", "k": 50, "verified": "false"}).json()["results"]
    version, s = load_searcher("models:/cerebro-search@champion")
    margins = {h["id"]: s.columns.species_margin[h["id"]] for h in unverified}
    assert queue[0]["margin"] == pytest.approx(min(margins.values()))  # the least sure comes first
    assert all(np.isfinite(h["margin"]) and h["margin"] >= 0 for h in queue)

    for payload, kind, code, msg in (
            ({"items": [{"id": 99999, "label": "deer"}]}, "application/json", 404, "items[0].id: no indexed item 99999"),
            ({"items": [{"id": 0, "label": "deer"}, {"id": 1, "label": "unicorn"}]}, "application/json", 400,
             "items[1].label: unknown 'unicorn'"),
            ({"items": [{"id": 0, "label": "deer"}]}, "text/plain", 415, "application/json")):
        r = c.post("/verify", content=__import__("json").dumps(payload), headers={"Content-Type": kind})
        assert r.status_code == code and msg in r.json()["detail"], r.text
    r = c.post("/verify", json={"items": []})  # FastAPI's own check, in the API's one 400 shape
    assert r.status_code == 400 and "items" in r.json()["detail"], r.text
    # read-only, and a token, on the same searcher in process
    reviews = Reviews(str(reviewed["home"] / "data"))
    ro = TestClient(create_app(Holder(lambda: (version, s)), ServeConfig(read_only=True), reviews=reviews),
                    base_url="http://127.0.0.1")
    r = ro.post("/verify", json={"items": [{"id": 0, "label": "deer"}]})
    assert r.status_code == 403 and "serve.read_only" in r.json()["detail"]
    assert ro.get("/facets").json()["reviews"] is False
    token = "a-review-token-0123456789"
    guarded = TestClient(create_app(Holder(lambda: (version, s)), ServeConfig(token=token), reviews=reviews),
                         base_url="http://127.0.0.1")
    assert guarded.post("/verify", json={"items": [{"id": 0, "label": "deer"}]}).status_code == 401
    ok = guarded.post("/verify", json={"items": [{"id": 0, "label": "cat"}], "reviewer": "ben"},
                      headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and ok.json()["results"][0]["species"] == "cat"


def test_a_server_killed_by_sigkill_loses_no_acknowledged_verification(reviewed):
    """The last test here: it kills the module's server. A client verifies one item per request
    (each with its own reviewer name); the server gets SIGKILL mid-stream; every request answered
    200 is in the storage root."""
    import signal
    import threading

    import httpx

    from cerebro_core.review.store import read_log

    acked: list[str] = []
    stop_posting = threading.Event()

    def post() -> None:
        with httpx.Client(base_url=reviewed["url"], timeout=30) as c:
            for n in range(10_000):
                if stop_posting.is_set():
                    return
                try:
                    r = c.post("/verify", json={"items": [{"id": n % 21, "label": VOCAB[n % 4]}], "reviewer": f"k{n}"})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    acked.append(f"k{n}")

    t = threading.Thread(target=post)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(reviewed["proc"].pid, signal.SIGKILL)
    stop_posting.set()
    t.join(timeout=60)
    assert reviewed["proc"].wait(timeout=10) == -signal.SIGKILL and len(acked) >= 15
    stored = {v.reviewer for v in read_log(str(reviewed["home"] / "data")).all()}
    assert set(acked) <= stored, f"lost {sorted(set(acked) - stored)}"
