"""The search server probed as an attacker and a careless user would (issue #21's defects), on a
real `cerebro serve` over a small real index: strict ids, invisible and over-long queries, unknown
media, the Host-header guard, no CORS by default, uploads refused before the body is read, a video
gone behind an indexed still, and the CLI refusing before it loads a model."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import CEREBRO, REPO, free_port, make_video, stop, wait_port


@pytest.fixture(scope="module")
def served(shared_data, state_dir, tmp_path_factory):
    from helpers import indexed_home

    from cerebro_core.config import load_config

    home = state_dir
    src = tmp_path_factory.mktemp("serve-src")
    for i, p in enumerate(sorted((shared_data / "cifar10_animals" / "test" / "deer").glob("*.jpg"))[:20]):
        shutil.copy(p, src / f"deer_{i:03d}.jpg")
    make_video(src / "clip.mp4", seconds=3.0)
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(sorted((shared_data / "cifar10_animals" / "test" / "cat").glob("*.jpg"))[0], outside / "cat.jpg")
    (src / "link_in.jpg").symlink_to(src / "deer_000.jpg")  # stays inside: indexed
    (src / "link_out.jpg").symlink_to(outside / "cat.jpg")  # leaves the folder: refused
    overrides = [f"index.sources=[{{name: src, path: {src}}}]", "index.video_frame_interval=2.0",
                 "serve.max_query_chars=50", "serve.max_upload_mb=1", "serve.max_concurrent_images=1"]
    _, sv = indexed_home(load_config(REPO / "configs/demo.yaml", overrides))
    port = free_port()
    env = dict(os.environ, CEREBRO_HOME=str(home))
    args = [CEREBRO, "serve", "--port", str(port), "-c", str(REPO / "configs/demo.yaml")]
    for o in overrides:
        args += ["--set", o]
    log = open(home / "serve.log", "w")  # a file, not an unread pipe: a full pipe would stall the server
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=120, proc=proc)
        yield {"url": f"http://127.0.0.1:{port}", "port": port, "src": src, "env": env, "overrides": overrides,
               "sv": sv, "outside": outside}
    finally:
        stop(proc)
        log.close()


def test_ids_queries_and_media_are_strict(served):
    import httpx

    c = httpx.Client(base_url=served["url"], timeout=60)
    assert c.get("/images/10").status_code == 200
    for bad in ("1_0", " 10", "+10", "١٠", "10.0", "0x0a", "9" * 40):
        r = c.get(f"/images/{bad}")
        assert r.status_code == 404 and r.json()["detail"].startswith("no indexed item"), bad
    assert c.get("/search", params={"q": "a deer", "k": 3}).status_code == 200
    for q, msg in (("\u200b\u200b\u200b", "query is empty"), ("\u200b \u2060\ufeff", "query is empty"),
                   ("x" * 51, "longer than 50 characters")):  # serve.max_query_chars=50 is read
        r = c.get("/search", params={"q": q})
        assert r.status_code == 400 and msg in r.json()["detail"], q
    r = c.get("/search", params={"q": "a deer", "media": "video_frame"})
    assert r.status_code == 400 and "media must be 'image' or 'video'" in r.json()["detail"]
    assert len(c.get("/search", params={"q": "a deer", "media": "video"}).json()["results"]) == 2


def test_host_header_guard_and_no_cors_by_default(served):
    import httpx

    c = httpx.Client(base_url=served["url"], timeout=60)
    assert c.get("/healthz", headers={"Host": f"localhost:{served['port']}"}).status_code == 200
    rebound = c.get("/search", params={"q": "a deer"}, headers={"Host": "attacker.example"})
    assert rebound.status_code == 400  # a DNS-rebound page reaching 127.0.0.1 under its own name
    r = c.get("/healthz", headers={"Origin": "http://attacker.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def _response(s: socket.socket) -> bytes:
    """One whole HTTP response (headers and its Content-Length of body), however it is segmented."""
    s.setblocking(True)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            next((ln.split(b":")[1] for ln in data.split(b"\r\n") if ln.lower().startswith(b"content-length:")),
                 b"0")):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _raw(port: int, head: bytes, body_chunks=()) -> tuple[bytes, int]:
    """Send ``head``, then body chunks until the server answers; (its answer, body bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        sent = 0
        for chunk in body_chunks:
            view = memoryview(chunk)
            while view:
                readable, writable, _ = select.select([s], [s], [], 30)
                if readable:  # the server answered mid-body
                    return _response(s), sent
                try:
                    n = s.send(view)
                except (BrokenPipeError, ConnectionResetError):
                    return _response(s), sent
                view, sent = view[n:], sent + n
        return _response(s), sent


def test_upload_over_the_limit_is_refused_before_the_body_is_read(served):
    port = served["port"]
    head = (f"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary=x\r\nContent-Length: {300 * 2**20}\r\n\r\n").encode()
    reply, sent = _raw(port, head)  # the 300 MiB body is never sent: the answer comes on the headers
    assert reply.startswith(b"HTTP/1.1 413") and b"upload larger than 1 MB" in reply and sent == 0
    # no Content-Length (chunked): refused once 1 MB + the envelope has arrived, long before 300 MiB
    head = (f"POST /search/image HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            "boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    part = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n" + b"\xff" * 65000
    chunk = f"{len(part):x}\r\n".encode() + part + b"\r\n"
    reply, sent = _raw(port, head, [chunk] * 4800)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 16 * 2**20  # a fraction of the 300 MiB it would have sent


def test_a_missing_video_behind_a_still_is_gone_not_an_error(served):
    import httpx

    c = httpx.Client(base_url=served["url"], timeout=60)
    still = c.get("/search", params={"q": "a deer", "media": "video", "k": 1}).json()["results"][0]
    assert c.get(still["image_url"]).status_code == 200
    video = served["src"] / "clip.mp4"
    kept = video.read_bytes()
    try:
        video.write_bytes(b"not a video any more")
        r = c.get(still["image_url"])
        assert r.status_code == 410 and "no longer readable" in r.json()["detail"]
        video.unlink()
        assert c.get(still["image_url"]).status_code == 410
    finally:
        video.write_bytes(kept)
    assert c.get("/healthz").json()["status"] == "ok"


def test_cli_refuses_before_loading_a_model(served):
    def run(*args: str) -> subprocess.CompletedProcess:
        extra = [x for o in served["overrides"] for x in ("--set", o)]
        return subprocess.run([CEREBRO, *args, "-c", str(REPO / "configs/demo.yaml"), *extra], env=served["env"],
                              capture_output=True, text=True, timeout=120)

    for args, msg in ((("search", ""), "query is empty"), (("search", "a deer", "-k", "0"), "k must be an integer"),
                      (("search", "\u200b"), "query is empty")):
        r = run(*args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-300:])
    r = run("serve", "--port", str(served["port"]))  # the running server holds it
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{served['port']}" in r.stderr
    assert "Traceback" not in r.stderr and "Errno 98" not in r.stderr


def _hits_for(c, photo: bytes, k: int = 5) -> list[dict]:
    r = c.post("/search/image", files={"file": ("q.jpg", photo, "image/jpeg")}, params={"k": k})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_links_leaving_the_source_are_refused_when_indexed_and_when_served(served):
    import httpx
    import mlflow

    run = mlflow.MlflowClient().get_run(served["sv"].run_id)
    assert run.data.metrics["failures.outside_source"] == 1  # link_out.jpg, never embedded
    c = httpx.Client(base_url=served["url"], timeout=60)
    src = served["src"]
    hits = _hits_for(c, (src / "deer_000.jpg").read_bytes())
    assert {"deer_000.jpg", "link_in.jpg"} <= {h["uri"] for h in hits[:2]}
    assert "link_out.jpg" not in {h["uri"] for h in _hits_for(c, (served["outside"] / "cat.jpg").read_bytes(), 23)}
    # every hit names its item relative to its source folder: no path of the server, no hash
    assert all(not h["uri"].startswith("/") and "sha256" not in h and "source_root" not in h for h in hits)
    link = next(h for h in hits if h["uri"] == "link_in.jpg")
    assert c.get(link["image_url"]).content == (src / "deer_000.jpg").read_bytes()
    try:  # repointed after indexing, as in the probe: to /etc/passwd, then to a photo outside
        for target in (Path("/etc/passwd"), served["outside"] / "cat.jpg"):
            (src / "link_in.jpg").unlink()
            (src / "link_in.jpg").symlink_to(target)
            r = c.get(link["image_url"])
            assert r.status_code == 410 and "inside its source folder" in r.json()["detail"], r.text
        (src / "link_in.jpg").unlink()
        (src / "link_in.jpg").symlink_to(src / "deer_001.jpg")  # inside, but not the bytes indexed
        r = c.get(link["image_url"])
        assert r.status_code == 410 and "its bytes changed" in r.json()["detail"]
    finally:
        (src / "link_in.jpg").unlink()
        (src / "link_in.jpg").symlink_to(src / "deer_000.jpg")
    assert c.get(link["image_url"]).status_code == 200


def _png(w: int, h: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 90, 60)).save(buf, format="PNG")
    return buf.getvalue()


def test_image_queries_are_bounded_in_pixels_and_in_concurrency(served):
    import threading

    import httpx

    c = httpx.Client(base_url=served["url"], timeout=120)
    big = _png(5000, 4000)  # 20 Mpx in 60 KB: over serve.max_query_pixels (16 Mpx), refused before decoding
    r = c.post("/search/image", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 400 and "exceeds 16000000 pixels" in r.json()["detail"]
    heavy = _png(3900, 3900)  # 15.2 Mpx: decoded; with serve.max_concurrent_images=1 the rest wait no queue
    codes: list[int] = []

    def upload() -> None:
        with httpx.Client(base_url=served["url"], timeout=120) as cl:
            resp = cl.post("/search/image", files={"file": ("h.png", heavy, "image/png")})
            codes.append(resp.status_code)
            if resp.status_code == 503:
                assert resp.headers["retry-after"] == "1" and "busy" in resp.json()["detail"]

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    health = [c.get("/healthz").status_code for _ in range(5)]  # the event loop answers meanwhile
    for t in threads:
        t.join()
    assert health == [200] * 5 and set(codes) == {200, 503} and len(codes) == 8, codes


def _page_uses_the_token(url: str, token: str) -> None:
    """Chromium: another app's cookie on this host that SimpleCookie cannot parse, set first (so
    sent first), then the token typed into the page's form: the page searches and its images load."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from helpers import chromium

    with chromium() as d:
        d.get(url + "/")
        d.execute_script("""document.cookie = 'prefs={"theme":"dark"}; path=/';""")
        WebDriverWait(d, 60).until(lambda d: d.find_element(By.ID, "auth").is_displayed())
        d.find_element(By.ID, "token").send_keys(token)
        d.find_element(By.CSS_SELECTOR, "#auth button").click()
        d.find_element(By.ID, "q").send_keys("a deer")
        WebDriverWait(d, 60).until(lambda d: "results in" in d.find_element(By.ID, "status").text)
        WebDriverWait(d, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "img.result")) >= 3)
        WebDriverWait(d, 60).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('img.result')].every(i => i.complete && i.naturalWidth > 0)"))
        assert not d.find_element(By.ID, "auth").is_displayed()
        assert d.get_cookie("prefs") and "%2B" in d.get_cookie("cerebro_token")["value"]  # encoded as the page does


def test_token_guards_everything_but_the_page(served, tmp_path):
    import httpx

    def serve(*args: str, wait: bool = True):
        extra = [x for o in served["overrides"] for x in ("--set", o)]
        return subprocess.Popen([CEREBRO, "serve", *args, "-c", str(REPO / "configs/demo.yaml"), *extra],
                                env=served["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    p = serve("--host", "0.0.0.0", "--port", str(free_port()))  # beyond loopback without a token: refused
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "serve.token" in out and "Traceback" not in out, out[-400:]
    token = "s3cret+token/for=the-test=="  # base64's characters: the page URL-encodes them in its cookie
    port = free_port()
    p = serve("--port", str(port), "--set", f"serve.token={token}")
    try:
        wait_port(port, timeout=120, proc=p)
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        assert c.get("/").status_code == 200  # the page holds no data: it asks for the token
        for path in ("/healthz", "/search?q=a+deer", "/images/0"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
        ok = c.get("/search", params={"q": "a deer"}, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["results"]
        as_page = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, cookies={"cerebro_token": token})
        assert as_page.get("/images/0").status_code == 200  # as the page's <img> sends it
        _signed_links_serve_img2dataset(c, token, tmp_path)
        _page_uses_the_token(f"http://127.0.0.1:{port}", token)
    finally:
        stop(p)


def _signed_links_serve_img2dataset(c, token: str, tmp_path: Path) -> None:
    """With a token set, /export?format=urls writes signed links that expire: img2dataset itself
    fetches every image without the token; a link altered to another item, one whose expiry was
    moved, or a signature on another path is refused."""
    import tarfile

    from cerebro_core.data.img2dataset_env import img2dataset_python

    urls = c.get("/export", params={"q": "a deer", "format": "urls"}, headers={"Authorization": f"Bearer {token}"})
    lines = urls.text.split()
    assert urls.status_code == 200 and lines and all("?exp=" in u and "&sig=" in u for u in lines)
    assert token not in urls.text and "token" not in urls.text
    first = lines[0]
    path, query = first.split("127.0.0.1:", 1)[1].split("/", 1)[1].split("?")
    assert c.get(first).status_code == 200  # no header, no cookie: the link is enough
    item = path.rsplit("/", 1)[1]
    other = "/images/" + ("1" if item != "1" else "0")
    exp, sig = (kv.split("=")[1] for kv in query.split("&"))
    for bad in (f"{other}?{query}", f"/{path}?exp={int(exp) + 60}&sig={sig}", f"/healthz?{query}",
                f"/{path}?exp={exp}&sig={'0' * 32}"):
        assert c.get(bad).status_code == 401, bad
    (tmp_path / "urls.txt").write_text(urls.text)
    cli = Path(img2dataset_python()).parent / "img2dataset"
    r = subprocess.run([str(cli), "--url_list", str(tmp_path / "urls.txt"), "--output_folder", str(tmp_path / "i2d"),
                        "--output_format", "webdataset", "--image_size", "32", "--processes_count", "1",
                        "--thread_count", "2", "--enable_wandb", "False"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled"))
    assert r.returncode == 0, r.stderr[-2000:]
    with tarfile.open(tmp_path / "i2d" / "00000.tar") as tf:
        assert len([m for m in tf.getnames() if m.endswith(".jpg")]) == len(lines)


def test_ipv6_loopback_host_head_and_options_are_answered(served):
    import httpx

    c = httpx.Client(base_url=served["url"], timeout=60)
    assert c.get("/healthz", headers={"Host": f"[::1]:{served['port']}"}).status_code == 200  # --host ::1
    assert c.get("/healthz", headers={"Host": "[::2]:80"}).status_code == 400
    head = c.head("/healthz")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"] == "application/json"
    assert c.head("/").status_code == 200
    opts = c.options("/healthz")
    assert opts.status_code == 204 and opts.headers["allow"] == "GET, HEAD, OPTIONS"


def test_cli_image_query_is_read_no_further_than_the_api_limit(served):
    extra = [x for o in served["overrides"] for x in ("--set", o)]  # serve.max_upload_mb=1
    r = subprocess.run([CEREBRO, "search", "--image", "/dev/zero", "-c", str(REPO / "configs/demo.yaml"), *extra],
                       env=served["env"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "larger than 1 MB (serve.max_upload_mb)" in r.stderr, r.stderr[-500:]
    assert "Traceback" not in r.stderr


def test_one_error_shape_400_naming_the_parameter_with_the_input_cut(served):
    import httpx

    c = httpx.Client(base_url=served["url"], timeout=60)
    cases = [("get", "/search", {"params": {"q": "a deer", "k": "abc"}}, "k: "),
             ("post", "/search/image", {}, "file: "),
             ("get", "/search", {"params": {"like": "abc"}}, "like: "),
             ("get", "/search", {"params": {"q": "a deer", "date_from": "y" * 60_000}}, "date_from: ")]
    for method, path, kw, name in cases:
        r = getattr(c, method)(path, **kw)
        assert r.status_code == 400, (path, name, r.status_code, r.text[:300])
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail.startswith(name) and len(r.content) < 600, (name, r.text[:600])
    assert c.get("/search", params={"like": "999999"}).status_code == 404  # digits, but no such item: 404
    for path in ("/search", "/export"):  # a query over 100,000 characters (past httpx's URL limit: raw)
        reply, _ = _raw(served["port"], f"GET {path}?q={'x' * 100_001} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        "Connection: close\r\n\r\n".encode())
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["detail"].startswith("q: "), reply[:300]
        assert len(body) < 600, body[:600]


def test_export_lines_offset_and_no_query(served):
    import csv
    import io

    import httpx

    c = httpx.Client(base_url=served["url"], timeout=60)
    full = c.get("/export", params={"q": "a deer"})
    assert full.status_code == 200
    lines = full.content.split(b"\n")[:-1]
    assert len(lines) > 3 and all(ln.endswith(b"\r") for ln in lines)  # the header as the rows: CRLF
    rows = list(csv.DictReader(io.StringIO(full.text)))
    later = list(csv.DictReader(io.StringIO(c.get("/export", params={"q": "a deer", "offset": 3}).text)))
    assert [r["id"] for r in later] == [r["id"] for r in rows[3:]]
    n = c.get("/healthz").json()["n"]
    everything = list(csv.DictReader(io.StringIO(c.get("/export").text)))  # no query: every item
    assert sorted(int(r["id"]) for r in everything) == list(range(n)) and all(r["score"] == "" for r in everything)
    videos = c.get("/export", params={"media": "video", "format": "jsonl"}).text.splitlines()
    assert len(videos) == 2 and {json.loads(v)["media_type"] for v in videos} == {"video_frame"}
    r = c.get("/export", params={"min_score": "0.1"})
    assert r.status_code == 400 and r.json()["detail"] == "min_score: needs a query (q)"


def test_thumbnails_follow_their_original(served):
    """A cached thumbnail is served only while its original is there and unchanged: 410 when the
    photo is replaced or deleted (as /images/ID), 200 again once it is back."""
    import httpx

    c = httpx.Client(base_url=served["url"], timeout=60)
    src = served["src"]
    photo = src / "deer_005.jpg"
    hit = next(h for h in _hits_for(c, photo.read_bytes()) if h["uri"] == "deer_005.jpg")
    original = photo.read_bytes()
    assert c.get(hit["thumbnail_url"]).status_code == 200  # made and cached
    assert c.get(hit["thumbnail_url"]).status_code == 200  # from the cache
    try:
        photo.write_bytes((src / "deer_006.jpg").read_bytes())  # replaced
        r = c.get(hit["thumbnail_url"])
        assert r.status_code == 410 and "its bytes changed" in r.json()["detail"], r.text
        photo.unlink()  # deleted
        r = c.get(hit["thumbnail_url"])
        assert r.status_code == 410 and c.get(hit["image_url"]).status_code == 410, r.text
    finally:
        photo.write_bytes(original)
    assert c.get(hit["thumbnail_url"]).status_code == 200
