"""Training throughput: our trainer vs ``open_clip_train.main`` side by side.

    .venv/bin/python benchmarks/train_throughput.py [--model cerebro-tiny-vit-32] [--epochs 2] [--rounds 2]

Same model config (registered with open_clip in both), same webdataset shards (3,000 real CIFAR-10
photos at 32 px with templated captions, 500 per shard), same batch size, precision fp32, lr,
warmup, one training process with one data-loader worker, no checkpoints mid-run. Each side logs
every step; we report the median per-step samples/s after the first 5 steps (steady state), and
alternate the two so machine noise hits both. The same estimators on both sides, from per-step
wall times that include waiting for data: open_clip_train logs each step's samples/s (batch /
that step's time); ours records a timestamp after every step (``on_step``), so a step's time
includes its data wait, optimizer step and logging. Reported: the median per-step samples/s after
the first 5 steps, and the mean (total samples / total time over the same steps, which also
counts the slow steps at epoch starts). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

OPENCLIP_RUNNER = """
import sys
from cerebro_core.model.factory import register_configs
register_configs()
from open_clip_train.main import main
main(sys.argv[1:])
"""

OURS_RUNNER = """
import json, sys, time
from cerebro_core.train.loop import TrainJob, train
job = TrainJob.model_validate_json(open(sys.argv[1]).read())
stamps = [time.perf_counter()]
s = train(job, on_step=lambda step, total, m: stamps.append(time.perf_counter()))
print("STEPS", json.dumps([b - a for a, b in zip(stamps, stamps[1:])]))
"""


def make_shards(out: Path, size: int) -> tuple[list[str], int]:
    import webdataset as wds
    from PIL import Image

    from conftest import SHARED

    cifar = SHARED / "cifar10_animals"
    rows = list(csv.DictReader((cifar / "labels.csv").open()))
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=500, verbose=0) as w:
        for i, r in enumerate(rows):
            img = Image.open(cifar / r["path"]).convert("RGB").resize((size, size))
            b = io.BytesIO()
            img.save(b, format="JPEG", quality=95)
            w.write({"__key__": f"{i:06d}", "jpg": b.getvalue(), "txt": f"a photo of a {r['label']}."})
    return sorted(str(p) for p in out.glob("*.tar")), len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cerebro-tiny-vit-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    from cerebro_core.config import TrainConfig
    from cerebro_core.model.factory import model_config
    from cerebro_core.train.loop import TrainJob

    size = model_config(args.model)["vision_cfg"]["image_size"]
    work = Path(tempfile.mkdtemp(prefix="cerebro-bench-train-"))
    shards, n = make_shards(work / "shards", size)
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count()), PYTHONPATH=str(REPO))
    (work / "openclip.py").write_text(OPENCLIP_RUNNER)
    (work / "ours.py").write_text(OURS_RUNNER)
    res: dict[str, list[float]] = {"open_clip_train.main": [], "cerebro trainer": []}
    mean: dict[str, list[float]] = {"open_clip_train.main": [], "cerebro trainer": []}
    def run_openclip(r: int) -> None:
        cmd = [sys.executable, str(work / "openclip.py"), "--train-data", "::".join(shards), "--dataset-type",
               "webdataset", "--train-num-samples", str(n), "--batch-size", str(args.batch_size), "--epochs",
               str(args.epochs), "--model", args.model, "--precision", "fp32", "--workers", str(args.workers),
               "--lr", "1e-3", "--wd", "0.1", "--warmup", "10", "--log-every-n-steps", "1", "--save-frequency", "0",
               "--logs", str(work / f"logs-{r}"), "--name", f"bench-{r}", "--report-to", "", "--seed", "0",
               "--device", "cpu"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise SystemExit(p.stderr[-3000:])
        log = (work / f"logs-{r}" / f"bench-{r}" / "out.log").read_text()
        per_step = [float(x) for x in re.findall(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s,", log)]
        res["open_clip_train.main"].append(statistics.median(per_step[5:]))
        times = [args.batch_size / x for x in per_step[5:]]
        mean["open_clip_train.main"].append(args.batch_size * len(times) / sum(times))

    def run_ours(r: int) -> None:
        hp = TrainConfig(model=args.model, batch_size=args.batch_size, lr=1e-3, weight_decay=0.1, warmup_steps=10,
                         epochs=args.epochs, precision="fp32", workers=args.workers, log_every_steps=10,
                         checkpoint_every_steps=10**9, val_fraction=0.0, seed=0)
        job = TrainJob(model=args.model, hp=hp, train_shards=shards, train_samples=n, ckpt_dir=str(work / f"ck-{r}"))
        (work / "job.json").write_text(job.model_dump_json())
        p = subprocess.run([sys.executable, str(work / "ours.py"), str(work / "job.json")], capture_output=True,
                           text=True, env=env)
        if p.returncode != 0:
            raise SystemExit(p.stderr[-3000:])
        times = json.loads(p.stdout.split("STEPS", 1)[1])[5:]
        res["cerebro trainer"].append(statistics.median(args.batch_size / t for t in times))
        mean["cerebro trainer"].append(args.batch_size * len(times) / sum(times))

    for r in range(args.rounds):
        for fn in ((run_openclip, run_ours) if r % 2 == 0 else (run_ours, run_openclip)):
            fn(r)
        print(f"round {r}: open_clip_train {res['open_clip_train.main'][-1]:.1f} (mean {mean['open_clip_train.main'][-1]:.1f}),"
              f" ours {res['cerebro trainer'][-1]:.1f} (mean {mean['cerebro trainer'][-1]:.1f}) samples/s", file=sys.stderr)
    a = statistics.median(res["open_clip_train.main"])
    b = statistics.median(res["cerebro trainer"])
    ratios = [y / x for x, y in zip(res["open_clip_train.main"], res["cerebro trainer"])]
    ma, mb = statistics.median(mean["open_clip_train.main"]), statistics.median(mean["cerebro trainer"])
    mratios = [y / x for x, y in zip(mean["open_clip_train.main"], mean["cerebro trainer"])]
    print("| model | batch | estimator | open_clip_train.main (samples/s) | cerebro trainer (samples/s) | ratio (median of rounds) |")
    print("|---|---:|---|---:|---:|---:|")
    print(f"| {args.model} | {args.batch_size} | median step | {a:.1f} | {b:.1f} | {statistics.median(ratios):.3f} |")
    print(f"| {args.model} | {args.batch_size} | mean (all steps after 5) | {ma:.1f} | {mb:.1f} | {statistics.median(mratios):.3f} |")
    print("\nper round (open_clip_train, ours): " + ", ".join(
        f"({x:.1f}, {y:.1f})" for x, y in zip(res["open_clip_train.main"], res["cerebro trainer"])))


if __name__ == "__main__":
    main()
