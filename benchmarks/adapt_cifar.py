"""The adapt quality protocol on CIFAR-10 animals: per seed, pretrain → the adapt stage as a user
runs it (the config's default recipe) → the equal-compute control, and the gain-vs-cost table.

    .venv/bin/python benchmarks/adapt_cifar.py [--config configs/adapt-cifar.yaml] [--seeds 0 1 2] [--set k=v]

Splits per class (6 classes), by sorted file name; labels are read only to measure:
- pretraining pairs: test split [0, 100) captioned from templates (+ the 80 COCO pairs);
- validation (model selection only): test split [100, 200) — 600 images;
- test (reported only; nothing trains on it or selects by it): test split [200, 500) + train
  split [0, 100) — 2,400 images;
- unlabelled pool: train split [100, 1000) — 5,400 images.
The control (``experiments/adapt_control.py``) is the same loop with a labeller that knows no
teacher: each iteration's student trains the same steps on the pairs alone. Prints per-seed rows,
then means ± standard error over the seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a {} in the wild.", "a close-up photo of a {}.",
             "a small {}.", "a picture of a {} outdoors."]
SPLITS = {  # name: [(shared folder, first, end) per class]
    "pretrain": [("cifar10_animals", 0, 100)],
    "val": [("cifar10_animals", 100, 200)],
    "test": [("cifar10_animals", 200, 500), ("cifar10_train_animals", 0, 100)],
    "pool": [("cifar10_train_animals", 100, 1000)],
}


def make_splits(work: Path) -> dict[str, Path]:
    from conftest import SHARED

    out = {}
    for name, parts in SPLITS.items():
        d = work / name
        d.mkdir(parents=True)
        with (d / "labels.csv").open("w") as f:
            f.write("path,label\n")
            for folder, a, b in parts:
                by_class: dict[str, list[str]] = {}
                for r in csv.DictReader((SHARED / folder / "labels.csv").open()):
                    by_class.setdefault(r["label"], []).append(r["path"])
                for label, paths in sorted(by_class.items()):
                    for p in sorted(paths)[a:b]:
                        dst = d / label / f"{folder}-{Path(p).name}"
                        dst.parent.mkdir(exist_ok=True)
                        os.link(SHARED / folder / p, dst)
                        f.write(f"{label}/{dst.name},{label}\n")
        out[name] = d
    return out


def pretrain_pairs(split: Path) -> list[tuple[str, Path]]:
    from conftest import SHARED, good_pairs

    pairs = good_pairs(SHARED, n_coco=80, n_cifar_per_class=0)
    for k, r in enumerate(csv.DictReader((split / "labels.csv").open())):
        pairs.append((TEMPLATES[k % len(TEMPLATES)].format(r["label"]), split / r["path"]))
    return pairs


def run_seed(config: str, seed: int, splits: dict[str, Path], work: Path, extra: list[str], oracle: bool = False,
             verified: int = 0, pick: str = "queue", control: bool = True, teacher: str = "") -> dict:
    os.environ["CEREBRO_HOME"] = str(work / f"home-{seed}")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from conftest import shardset_for, write_pair_shards

    from cerebro_core.adapt.stage import run_loop, run_stage
    from cerebro_core.config import load_config
    from cerebro_core.train.pretrain import run_stage as pretrain
    from experiments.adapt_control import PairsOnly

    if (work / f"shards-{seed}" / "manifest.json").is_file():  # --work: a rerun resumes the finished pretraining
        shards = sorted(str(x) for x in (work / f"shards-{seed}").glob("*.tar"))
    else:
        shards = write_pair_shards(pretrain_pairs(splits["pretrain"]), work / f"shards-{seed}", per_shard=100)
    shardset = shardset_for(shards, f"cifar-{seed}")
    (work / f"shards-{seed}" / "manifest.json").write_text(shardset.model_dump_json())  # adapt.pairs reads it
    sets = [f"adapt.sources=[{{name: pool, path: {splits['pool']}}}]",
            f"adapt.validation_source={{name: val, path: {splits['val']}}}",
            f"adapt.test_source={{name: test, path: {splits['test']}}}",
            f"adapt.vocabulary={work / 'classes.txt'}", f"train.seed={seed}", f"adapt.seed={seed}",
            f"adapt.pairs={work / f'shards-{seed}'}"]
    cfg = load_config(config, sets + extra)
    quiet = lambda s: None if s.startswith(("launch:", "step ", "epoch ", "embed")) else print(  # noqa: E731
        f"  seed {seed}: {s}", file=sys.stderr, flush=True)
    progress = lambda s: print(f"  seed {seed}: pretrain {s[:60]}", file=sys.stderr, flush=True) if (  # noqa: E731
        s.startswith("step ") and int(s.split()[1].split("/")[0]) % 400 == 0) else None
    if teacher:  # --teacher-version: a teacher this work dir's registry holds already (a paired rerun)
        from cerebro_core import tracking
        from cerebro_core.model.registry import resolve_version

        tracking.configure(cfg)
        mv = resolve_version(cfg.tracking.model_name, None, teacher)
    else:
        mv = pretrain(cfg, shardset, log=progress)
    review = None
    if verified:  # a reviewer verified some pool images first (experiments/simulated_review.py)
        from cerebro_core.home import resolve
        from cerebro_core.review.store import verified_labels
        from experiments.simulated_review import simulate_review

        if verified_labels(resolve(cfg).storage_root):
            raise SystemExit(f"seed {seed}: {work} holds verifications already: copy the work dir afresh")
        review = simulate_review(cfg, mv.version, verified, pick, seed, log=quiet)
    if oracle:  # diagnostic: the teacher's selection with ground-truth classes (experiments/adapt_oracle.py)
        from cerebro_core.adapt.stage import gather
        from experiments.adapt_oracle import OracleLabels

        pool, _, _, classes, _ = gather(cfg)
        labeller = OracleLabels(cfg.adapt.labeller, {p.uri: classes.index(p.label) for p in pool})
        loop = run_loop(cfg, labeller, start_version=mv.version, log=quiet)
    elif control == "only":  # --control-only: the equal-compute control alone
        loop = None
    else:
        loop = run_stage(cfg, start_version=mv.version, log=quiet)
    out = {"seed": seed, "student": cfg.adapt.student.model_dump(), "review": review}
    if loop is not None:
        out.update(loop=loop.iterations, best=loop.best_iteration)
    if control:
        ctl = run_loop(cfg, PairsOnly(), start_version=mv.version, log=lambda s: quiet("control: " + s))
        out.update(control=ctl.iterations, control_best=ctl.best_iteration)
    return out


def mean_se(xs: list[float], points: bool = True) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "—"
    m = statistics.mean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return f"{100 * m:+.1f} ± {100 * se:.1f}" if points else f"{m:.3f} ± {se:.3f}"


def report(results: list[dict]) -> None:
    print("\n### per seed: test top-1 (validation) of each iteration; loop precision / pretrain-equivalents\n")
    print("| seed | run | it 0 | it 1 | it 2 | it 3 | published (keep-best) |")
    print("|---:|---|---|---|---|---|---|")
    for r in results:
        for name in [n for n in ("loop", "control") if n in r]:
            rows = r[name]
            cells = [f"{x.get('test/top1', math.nan):.3f} ({x.get('val/top1', math.nan):.3f})" + (
                f" / {x['pseudo_label_precision']:.3f} / {x['compute/pretrain_equivalents']:.2f}"
                if name == "loop" and "compute/pretrain_equivalents" in x else "") for x in rows]
            cells += ["—"] * (4 - len(cells))
            b = rows[r["best" if name == "loop" else "control_best"]]
            print(f"| {r['seed']} | {name} | " + " | ".join(cells)
                  + f" | {b.get('test/top1', math.nan):.3f} ({b.get('val/top1', math.nan):.3f}) |")
    n_it = max(len(r["loop"]) for r in results) - 1
    print("\n### means over seeds ± standard error (differences in points of top-1)\n")
    print("| comparison | test | validation |")
    print("|---|---:|---:|")

    def top1(r: dict, run: str, i: int, p: str) -> float:
        rows = r.get(run, [])
        return rows[i].get(f"{p}/top1", math.nan) if i < len(rows) else math.nan

    def diff(f, points: bool):
        return [mean_se([f(r, p) for r in results], points) for p in ("test", "val")]

    rows: list = [("pretrained", lambda r, p: top1(r, "loop", 0, p))]
    for i in range(1, n_it + 1):
        rows.append((f"iteration {i} − pretrained", lambda r, p, i=i: top1(r, "loop", i, p) - top1(r, "loop", 0, p)))
        rows.append((f"iteration {i} − control iteration {i}",
                     lambda r, p, i=i: top1(r, "loop", i, p) - top1(r, "control", i, p)))
    rows.append(("published − pretrained", lambda r, p: top1(r, "loop", r["best"], p) - top1(r, "loop", 0, p)))
    rows.append(("published − control published",
                 lambda r, p: top1(r, "loop", r["best"], p) - top1(r, "control", r.get("control_best", 0), p)))
    for name, f in rows:
        t, v = diff(f, name != "pretrained")
        print(f"| {name} | {t} | {v} |")
    pe = [x["compute/pretrain_equivalents"] for r in results for x in r["loop"][1:] if "compute/pretrain_equivalents" in x]
    print(f"\npretrain-equivalents per iteration: {min(pe, default=0):.3f}–{max(pe, default=0):.3f}")
    print("\n### per seed and iteration: the regime, the model chosen, and the labeller diagnostic\n")
    print("| seed | it | pseudo share (measured) | passes | selected | precision | WiSE-FT α | val search mAP | "
          "val top-1 | val 10-NN (features) | features beat zero-shot? |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        for x in r["loop"]:
            knn, zs = x.get("val/knn_top1", math.nan), x.get("val/top1", math.nan)
            print(f"| {r['seed']} | {x['iteration']} | {x.get('pseudo_share', math.nan):.3f} | {x.get('passes', math.nan):.2f} | "
                  f"{x.get('selected', 0)} | {x.get('pseudo_label_precision', math.nan):.3f} | "
                  f"{x.get('wise_ft_alpha', math.nan):g} | {x.get('val/search_mAP', x.get('val/search_mAP_at_10', math.nan)):.3f} | {zs:.3f} | "
                  f"{knn:.3f} | {'yes' if knn > zs else 'no'} |")
    print(f"\nkeep-best published a trained model on {sum(r['best'] > 0 for r in results)} of {len(results)} seeds; "
          f"the control on {sum(r.get('control_best', 0) > 0 for r in results if 'control' in r)}")


def against(base: list[dict], runs: list[dict]) -> None:
    """Test top-1 of ``runs`` beside ``base`` (the same seeds, same teachers): the gain over pretrained
    after the last iteration and of the published model, and the difference to the base run."""
    by_seed = {r["seed"]: r for r in base}
    pairs = [(by_seed[r["seed"]], r) for r in runs if r["seed"] in by_seed]

    def t(r: dict, i: int) -> float:
        return r["loop"][i].get("test/top1", math.nan)

    last = lambda r: len(r["loop"]) - 1  # noqa: E731
    print("| seed | verified | last − pretrained (base) | last − pretrained | published − pretrained (base) | "
          "published − pretrained | trained model published |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for b, r in pairs:
        print(f"| {r['seed']} | {(r.get('review') or {}).get('verified', 0)} | {100 * (t(b, last(b)) - t(b, 0)):+.1f} | "
              f"{100 * (t(r, last(r)) - t(r, 0)):+.1f} | {100 * (t(b, b['best']) - t(b, 0)):+.1f} | "
              f"{100 * (t(r, r['best']) - t(r, 0)):+.1f} | {'yes' if r['best'] > 0 else 'no'} |")
    print("\n| comparison (test, points, mean ± standard error) | value |\n|---|---:|")
    for name, f in (("last iteration − pretrained", lambda b, r: t(r, last(r)) - t(r, 0)),
                    ("last iteration − base last iteration", lambda b, r: t(r, last(r)) - t(b, last(b))),
                    ("published − pretrained", lambda b, r: t(r, r["best"]) - t(r, 0)),
                    ("published − base published", lambda b, r: t(r, r["best"]) - t(b, b["best"]))):
        print(f"| {name} | {mean_se([f(b, r) for b, r in pairs])} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs/adapt-cifar.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--json", type=Path, help="also write the per-seed results here")
    ap.add_argument("--oracle-labels", action="store_true",
                    help="diagnostic: the loop trains on the teacher's selection with ground-truth classes")
    ap.add_argument("--verified", type=int, default=0, metavar="N",
                    help="a simulated reviewer verifies N pool images per class before the loop (#34)")
    ap.add_argument("--pick", choices=("queue", "random"), default="queue", help="which images --verified takes")
    ap.add_argument("--teacher-version", default="", metavar="V",
                    help="with --work: start every seed from registered version V instead of pretraining (the same "
                         "teachers as an earlier run of that work dir, for a paired comparison)")
    ap.add_argument("--no-control", dest="control", action="store_false", help="skip the equal-compute control")
    ap.add_argument("--control-only", dest="control", action="store_const", const="only",
                    help="run the equal-compute control alone")
    ap.add_argument("--report", type=Path, nargs="*", help="only print the table of these --json files")
    ap.add_argument("--against", type=Path, nargs="*", help="with --report: the same seeds' runs to compare with")
    ap.add_argument("--work", type=Path, help="keep the splits, shards and state dirs here: a rerun with the same "
                                              "train.* resumes each seed's finished pretraining instead of redoing it")
    args = ap.parse_args()
    if args.report:
        results = [r for p in args.report for r in json.loads(p.read_text())]
        if args.against:
            against([r for p in args.against for r in json.loads(p.read_text())], results)
        else:
            report(results)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="cerebro-adapt-cifar-"))
    if args.work and (work / "pool").is_dir():
        splits = {name: work / name for name in SPLITS}
    else:
        splits = make_splits(work)
    (work / "classes.txt").write_text("\n".join(sorted(p.name for p in splits["pool"].iterdir() if p.is_dir())))
    results = []
    for seed in args.seeds:
        results.append(run_seed(args.config, seed, splits, work, args.sets, args.oracle_labels, args.verified,
                                args.pick, args.control, args.teacher_version))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    if all("loop" in r for r in results):
        report(results)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
