"""The adapt quality protocol on CIFAR-10 animals, per seed: pretrain → adapt (3 iterations) and
the equal-step control (same objective and steps, labels with no teacher information).

    .venv/bin/python benchmarks/adapt_cifar.py --config configs/adapt-cifar.yaml [--seeds 0 1 2]

Split per class by sorted file name (6 classes × 500): [0,100) captioned pairs for pretraining
(+ the 80 COCO pairs), [100,350) unlabelled pool (labels kept only to measure pseudo-label
precision), [350,400) labelled validation (model selection only), [400,500) test (reported only;
nothing trains on it or selects by it). Prints one Markdown table per seed and the mean.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a {} in the wild.", "a close-up photo of a {}.",
             "a small {}.", "a picture of a {} outdoors."]


def make_splits(work: Path) -> dict[str, Path]:
    from conftest import SHARED

    cifar = SHARED / "cifar10_animals"
    rows = list(csv.DictReader((cifar / "labels.csv").open()))
    by_class: dict[str, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r["label"], []).append(r)
    parts = {"pretrain": (0, 100), "pool": (100, 350), "val": (350, 400), "test": (400, 500)}
    out = {}
    for name, (a, b) in parts.items():
        d = work / name
        d.mkdir(parents=True)
        with (d / "labels.csv").open("w") as f:
            f.write("path,label\n")
            for label, rs in sorted(by_class.items()):
                for r in sorted(rs, key=lambda r: r["path"])[a:b]:
                    dst = d / label / Path(r["path"]).name
                    dst.parent.mkdir(exist_ok=True)
                    os.link(cifar / r["path"], dst) if not dst.exists() else None
                    f.write(f"{label}/{dst.name},{label}\n")
        out[name] = d
    return out


def pretrain_pairs(split: Path) -> list[tuple[str, Path]]:
    from conftest import SHARED, good_pairs

    pairs = good_pairs(SHARED, n_coco=80, n_cifar_per_class=0)
    for k, r in enumerate(csv.DictReader((split / "labels.csv").open())):
        pairs.append((TEMPLATES[k % len(TEMPLATES)].format(r["label"]), split / r["path"]))
    return pairs


def run_seed(config: str, seed: int, splits: dict[str, Path], work: Path, extra: list[str],
             control_iterations: int | None = None, control_only: bool = False, loop_only: bool = False,
             teachers: int = 1) -> dict:
    os.environ["CEREBRO_HOME"] = str(work / f"home-{seed}")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from conftest import shardset_for, write_pair_shards

    from cerebro_core.adapt.stage import run_stage as adapt
    from cerebro_core.config import load_config
    from cerebro_core.train.pretrain import run_stage as pretrain

    shards = write_pair_shards(pretrain_pairs(splits["pretrain"]), work / f"shards-{seed}", per_shard=100)
    shardset = shardset_for(shards, f"cifar-{seed}")
    (work / f"shards-{seed}" / "manifest.json").write_text(shardset.model_dump_json())  # adapt.student=scratch reads it
    sources = [f"adapt.sources=[{{name: pool, path: {splits['pool']}}}]",
               f"adapt.validation_source={{name: val, path: {splits['val']}}}",
               f"adapt.test_source={{name: test, path: {splits['test']}}}",
               f"adapt.vocabulary={work / 'classes.txt'}", f"train.seed={seed}", f"adapt.seed={seed}",
               f"adapt.pairs={work / f'shards-{seed}'}"]
    cfg = load_config(config, sources + extra)
    mv = pretrain(cfg, shardset, log=lambda s: None)
    if teachers > 1 and not control_only:  # more teachers from the same pairs, other seeds: adapt.extra_teachers
        versions = [pretrain(load_config(config, sources + extra + [f"train.seed={seed + 100 * j}"]), shardset,
                             log=lambda s: None).version for j in range(1, teachers)]
        extra = extra + ["adapt.extra_teachers=[" + ", ".join(f"'{v}'" for v in versions) + "]"]
        cfg = load_config(config, sources + extra)
    quiet = lambda s: None if s.startswith(("launch:", "step ", "epoch ")) else print(f"  seed {seed}: {s}", file=sys.stderr)  # noqa: E731
    res = None if control_only else adapt(cfg, start_version=mv.version, log=quiet)
    if loop_only:  # the control measured in another run (same pretraining, protocol and steps)
        nan = {"test/top1": float("nan"), "val/top1": float("nan")}
        return {"loop": res.iterations, "control": [{"iteration": 0, **nan}], "best": res.best_iteration,
                "control_best": 0}
    ctl_cfg = cfg if control_iterations is None else load_config(
        config, sources + extra + [f"adapt.iterations={control_iterations}"])
    ctl = adapt(ctl_cfg, start_version=mv.version, control=True,
                log=lambda s: quiet("control: " + s) if not s.startswith(("launch:", "step ", "epoch ")) else None)
    if res is None:  # --control-only: the loop's table holds the starting model (the control's iteration 0)
        return {"loop": ctl.iterations[:1], "control": ctl.iterations, "best": 0, "control_only": True,
                "control_best": ctl.best_iteration}
    return {"loop": res.iterations, "control": ctl.iterations, "best": res.best_iteration,
            "control_best": ctl.best_iteration}


def fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and x != x) else (f"{x:.3f}" if isinstance(x, float) else str(x))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs/adapt-cifar.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--control-iterations", type=int, default=None,
                    help="iterations of the control (default: as the loop); a scratch student's control is the "
                         "same pairs-only pretraining every iteration, so 1 measures it")
    ap.add_argument("--control-only", action="store_true",
                    help="pretrain and run the control alone (to complete a loop measured in another run)")
    ap.add_argument("--loop-only", action="store_true",
                    help="pretrain and run the loop alone (its control measured in another run)")
    ap.add_argument("--teachers", type=int, default=1,
                    help="label with the mean of this many teachers pretrained on the same pairs (seeds seed + 100·j)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cerebro-adapt-cifar-"))
    splits = make_splits(work)
    (work / "classes.txt").write_text("\n".join(sorted(p.name for p in splits["pool"].iterdir() if p.is_dir())))
    summary = []
    for seed in args.seeds:
        r = run_seed(args.config, seed, splits, work, args.sets, args.control_iterations, args.control_only,
                     args.loop_only, args.teachers)
        print(f"\n### seed {seed} (best iteration by validation: {r['best']})\n")
        print("| run | iteration | selected | pseudo-label precision | class entropy | val top-1 | test top-1 | test mean/class | general T→I R@5 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in ("loop", "control"):
            for row in r[name]:
                if name == "control" and row["iteration"] == 0:
                    continue
                print(f"| {name} | {row['iteration']} | {fmt(row.get('selected'))} | "
                      f"{fmt(row.get('pseudo_label_precision'))} | {fmt(row.get('class_entropy'))} | "
                      f"{fmt(row.get('val/top1'))} | {fmt(row.get('test/top1'))} | {fmt(row.get('test/mean_per_class'))} | "
                      f"{fmt(row.get('general/text_to_image_R5'))} |")
        ctl_rows = ([x for x in r["control"] if x["iteration"] == len(r["loop"]) - 1] if not r.get("control_only")
                    else []) or r["control"][-1:]
        row = {"seed": seed}
        for part in ("test", "val"):
            row.update({f"{part}_pretrained": r["loop"][0][f"{part}/top1"],
                        f"{part}_published": r["loop"][r["best"]][f"{part}/top1"],
                        f"{part}_last": r["loop"][-1].get(f"{part}/top1"),
                        f"{part}_control_last": ctl_rows[-1].get(f"{part}/top1"),
                        f"{part}_control_published": r["control"][r["control_best"]].get(f"{part}/top1")})
        summary.append(row)
        sys.stdout.flush()
    m = lambda k: statistics.mean(s[k] for s in summary)  # noqa: E731
    for part in ("test", "val"):
        print(f"\n### summary, {part} top-1 (published = best iteration by validation)\n")
        print("| seed | pretrained | published (keep-best) | loop, last iteration | control, same iteration | "
              "control, keep-best | last − pretrained | last − control | published − control keep-best |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in summary + [{"seed": "mean", **{k: m(k) for k in summary[0] if k != "seed"}}]:
            print(f"| {s['seed']} | {s[part + '_pretrained']:.3f} | {s[part + '_published']:.3f} | {s[part + '_last']:.3f} | "
                  f"{s[part + '_control_last']:.3f} | {s[part + '_control_published']:.3f} | "
                  f"{s[part + '_last'] - s[part + '_pretrained']:+.3f} | {s[part + '_last'] - s[part + '_control_last']:+.3f} | "
                  f"{s[part + '_published'] - s[part + '_control_published']:+.3f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
