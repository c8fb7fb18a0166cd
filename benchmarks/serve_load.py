"""Bounded load on `cerebro serve` over 127.0.0.1: text queries while large images are uploaded.

    .venv/bin/python benchmarks/serve_load.py [--seconds 15] [--anchor /path/to/old/checkout]

One state dir: a random-weight tiny CLIP (demo config) and an index over the 700 shared Caltech
photos. For each tree (ours, and the anchor checkout when given, e.g. the commit before the
serve fixes, as a git worktree) one `cerebro serve` runs from that tree and gets:
  phase 1: text queries at concurrency 16 (distinct species queries), ``--seconds`` long;
  phase 2: the same text load plus 8 clients uploading large images in a loop (4 × a 24-Mpx
           JPEG, 4 × a 15-Mpx PNG; a 503 is retried after its Retry-After), from a second
           process, ``--seconds`` long;
then 3 s idle. Reported: text req/s, p50/p99 (ms) in each phase and their ratio, upload
outcomes, the server's RSS before the uploads, at its peak and 3 s after (ratios).
Goal (issue #21): text p99 during uploads ≤ 2 × without; RSS after within 10 % of before.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CEREBRO_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "tests"))


def queries() -> list[str]:
    names = [r["common_name"] for r in csv.DictReader(open(SHARED / "species_names/iucn_rare_species_400.csv"))
             if r.get("common_name")]
    return [f"{t} {n.lower()}" for n in names for t in ("a photo of a", "a", "a wild")]


def images() -> tuple[bytes, bytes]:
    from PIL import Image

    photo = Image.open(sorted((SHARED / "caltech101_animals").rglob("*.jpg"))[0]).convert("RGB")
    rng = np.random.default_rng(0)
    big = photo.resize((6000, 4000))
    big = Image.fromarray(np.clip(np.asarray(big, dtype=np.int16) + rng.integers(-6, 7, (4000, 6000, 3)), 0,
                                  255).astype(np.uint8))
    jb = io.BytesIO()
    big.save(jb, format="JPEG", quality=85)
    pb = io.BytesIO()
    photo.resize((3900, 3900)).save(pb, format="PNG", compress_level=1)
    return jb.getvalue(), pb.getvalue()


def build_state(home: Path) -> list[str]:
    os.environ["CEREBRO_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from test_index import register_random_clip

    from cerebro_core.config import load_config
    from cerebro_core.index.stage import run_stage

    overrides = [f"index.sources=[{{name: caltech, path: {SHARED / 'caltech101_animals'}}}]"]
    cfg = load_config(REPO / "configs/demo.yaml", overrides)
    register_random_clip(cfg)
    run_stage(cfg, log=lambda s: None)
    return overrides


def upload_loop(url: str, jpeg: bytes, png: bytes, seconds: float, out) -> None:
    """8 clients uploading in a loop (4 JPEG, 4 PNG) for ``seconds``; puts their status counts."""
    import httpx

    stop_at = time.perf_counter() + seconds
    codes: dict = {}
    lock = threading.Lock()

    def uploader(data: bytes, kind: str) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while time.perf_counter() < stop_at:
                r = c.post("/search/image", files={"file": (f"u.{kind}", data, f"image/{kind}")})
                with lock:
                    codes[f"{kind} {r.status_code}"] = codes.get(f"{kind} {r.status_code}", 0) + 1
                if r.status_code == 503:
                    time.sleep(float(r.headers.get("retry-after", "1")))

    threads = [threading.Thread(target=uploader, args=(d, k)) for d, k in [(jpeg, "jpeg")] * 4 + [(png, "png")] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(codes)


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_tree(name: str, tree: Path, home: Path, overrides: list[str], seconds: float, jpeg: bytes,
             png: bytes) -> dict:
    import httpx

    from conftest import free_port, stop, wait_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env.update(CEREBRO_HOME=str(home), PYTHONPATH=str(tree))
    cli = str(Path(sys.executable).parent / "cerebro")  # imports the tree: PYTHONPATH comes first
    args = [cli, "serve", "--port", str(port), "-c", str(tree / "configs/demo.yaml")]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.Popen(args, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=180, proc=proc)
        url = f"http://127.0.0.1:{port}"
        qs = queries()
        with httpx.Client(base_url=url, timeout=120) as c:  # warm up: the model, the first requests
            for q in qs[:20]:
                c.get("/search", params={"q": q, "k": 10})
            c.post("/search/image", files={"file": ("w.jpg", jpeg, "image/jpeg")})
        time.sleep(1.0)

        def text_phase(uploads: bool) -> dict:
            stop_at = time.perf_counter() + seconds
            lat: list[float] = []
            codes: dict = {}
            peak = [rss(proc.pid)]
            lock = threading.Lock()
            counter = iter(range(10**9))

            def texter() -> None:
                with httpx.Client(base_url=url, timeout=120) as c:
                    while time.perf_counter() < stop_at:
                        q = qs[next(counter) % len(qs)] + (" at dusk" if uploads else "")
                        t0 = time.perf_counter()
                        r = c.get("/search", params={"q": q, "k": 10})
                        with lock:
                            lat.append((time.perf_counter() - t0) * 1000)
                            codes[f"text {r.status_code}"] = codes.get(f"text {r.status_code}", 0) + 1

            threads = [threading.Thread(target=texter) for _ in range(16)]
            up = None
            if uploads:  # in their own process: encoding 6-MB bodies must not hold this one's GIL
                ctx = multiprocessing.get_context("spawn")
                out = ctx.Queue()
                up = ctx.Process(target=upload_loop, args=(url, jpeg, png, seconds, out))
                up.start()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak.append(rss(proc.pid))
                time.sleep(0.1)
            if up is not None:
                codes.update(out.get(timeout=600))
                up.join()
            a = np.array(lat)
            return {"text_req_s": len(a) / seconds, "p50_ms": float(np.percentile(a, 50)),
                    "p99_ms": float(np.percentile(a, 99)), "codes": codes, "rss_peak": max(peak)}

        quiet = text_phase(False)
        rss_before = rss(proc.pid)
        loaded = text_phase(True)
        time.sleep(3.0)
        rss_after = rss(proc.pid)
        return {"tree": name, "quiet": quiet, "loaded": loaded, "rss_before": rss_before,
                "rss_peak": loaded["rss_peak"], "rss_after": rss_after}
    finally:
        stop(proc)


def report(results: list[dict]) -> str:
    lines = ["| tree | text req/s alone | with uploads | p50 ms alone | with | p99 ms alone | with | p99 ratio "
             "| RSS before MB | peak | after | after/before | uploads |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        q, lo = r["quiet"], r["loaded"]
        ups = ", ".join(f"{k}: {v}" for k, v in sorted(lo["codes"].items()) if not k.startswith("text"))
        lines.append(f"| {r['tree']} | {q['text_req_s']:.1f} | {lo['text_req_s']:.1f} | {q['p50_ms']:.1f} | "
                     f"{lo['p50_ms']:.1f} | {q['p99_ms']:.1f} | {lo['p99_ms']:.1f} | {lo['p99_ms'] / q['p99_ms']:.2f} | "
                     f"{r['rss_before'] / 2**20:.0f} | {r['rss_peak'] / 2**20:.0f} | {r['rss_after'] / 2**20:.0f} | "
                     f"{r['rss_after'] / r['rss_before']:.2f} | {ups} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--anchor", type=Path, help="an older checkout to run side by side (e.g. a git worktree)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    jpeg, png = images()
    print(f"uploads: JPEG 6000x4000 ({len(jpeg) / 2**20:.1f} MB), PNG 3900x3900 ({len(png) / 2**20:.1f} MB)")
    home = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        overrides = build_state(home)
        trees = [("ours", REPO)] + ([("anchor", args.anchor.resolve())] if args.anchor else [])
        results = [run_tree(n, t, home, overrides, args.seconds, jpeg, png) for n, t in trees]
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
