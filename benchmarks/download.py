"""Download stage vs the plain img2dataset CLI, side by side on one URL list (loopback server).

    .venv/bin/python benchmarks/download.py [--rows 2000] [--rounds 3]

Both download the same rows (real CIFAR-10 photos from ../shared/data served over HTTP on
127.0.0.1) into webdataset shards with the same size, resize mode, processes, threads and shard
size; the runs alternate so machine noise hits both. Wall time is end to end: from the process
start to the finished shards (ours also normalises the list, checks every image with the safe
decoder and writes the manifest). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import SHARED  # noqa: E402
from helpers import LoopbackServer  # noqa: E402

from cerebro_core.config import DownloadConfig  # noqa: E402
from cerebro_core.data.download import download  # noqa: E402
from cerebro_core.data.img2dataset_env import img2dataset_python  # noqa: E402
from cerebro_core.storage import Storage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()

    cifar = SHARED / "cifar10_animals"
    rows = list(csv.DictReader((cifar / "labels.csv").open()))
    files = {f"{i}.jpg": cifar / r["path"] for i, r in enumerate(rows)}
    work = Path(tempfile.mkdtemp(prefix="cerebro-bench-dl-"))
    common = dict(image_size=args.image_size, processes=args.processes, threads=args.threads, samples_per_shard=500)
    results: dict[str, list[float]] = {"img2dataset CLI": [], "cerebro download": []}
    with LoopbackServer(files, {}) as srv:
        n = args.rows
        with (work / "named.tsv").open("w") as f:  # what the plain CLI needs: a header line
            f.write("caption\turl\n")
            for i in range(n):
                f.write(f"a photo of a {rows[i % len(rows)]['label']} #{i}\t{srv.base}/img/{i % len(rows)}.jpg?r={i}\n")
        with (work / "cc3m.tsv").open("w") as f:  # ours takes the raw CC3M layout
            for i in range(n):
                f.write(f"a photo of a {rows[i % len(rows)]['label']} #{i}\t{srv.base}/img/{i % len(rows)}.jpg?r={i}\n")
        cli = str(Path(img2dataset_python()).parent / "img2dataset")
        for r in range(args.rounds):
            out = work / f"plain-{r}"
            t0 = time.perf_counter()
            subprocess.run(
                [cli, "--url_list", str(work / "named.tsv"), "--input_format", "tsv", "--url_col", "url",
                 "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
                 "--image_size", str(args.image_size), "--resize_mode", "center_crop",
                 "--processes_count", str(args.processes), "--thread_count", str(args.threads),
                 "--number_sample_per_shard", "500", "--enable_wandb", "False", "--extract_exif", "False"],
                check=True, capture_output=True, env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"},
            )
            wall = time.perf_counter() - t0
            ok = sum(int(__import__("json").loads(p.read_text())["successes"]) for p in out.glob("*_stats.json"))
            results["img2dataset CLI"].append(ok / wall)
            shutil.rmtree(out)

            out = work / f"ours-{r}"
            t0 = time.perf_counter()
            res = download(DownloadConfig(url_list=str(work / "cc3m.tsv"), **common), Storage(), str(out),
                           log=lambda s: None)
            wall = time.perf_counter() - t0
            assert res.stats.successes == n, res.stats
            results["cerebro download"].append(res.stats.successes / wall)
            shutil.rmtree(out)
            print(f"round {r}: plain {results['img2dataset CLI'][-1]:.1f} img/s, ours "
                  f"{results['cerebro download'][-1]:.1f} img/s", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    plain = statistics.median(results["img2dataset CLI"])
    ours = statistics.median(results["cerebro download"])
    print(f"| rows | processes × threads | img2dataset CLI (img/s) | cerebro download (img/s) | ratio |")
    print(f"|---:|---:|---:|---:|---:|")
    print(f"| {args.rows} | {args.processes} × {args.threads} | {plain:.1f} | {ours:.1f} | {ours / plain:.3f} |")
    print(f"\nmedian of {args.rounds} alternating rounds; per round (plain, ours): "
          + ", ".join(f"({a:.0f}, {b:.0f})" for a, b in zip(results["img2dataset CLI"], results["cerebro download"])))


if __name__ == "__main__":
    main()
