"""Which validation figure should keep-best and WiSE-FT rank by? A diagnostic over the models an
adapt benchmark run left in its work dir (``benchmarks/adapt_cifar.py --work DIR``): the teacher,
and per iteration the student and its WiSE-FT interpolations. For each it measures (with the
loop's own ``Models.measure``), on the validation source, zero-shot top-1, species-query mAP@10
(session 16's rank key) and species-query mAP over the whole ranking, and on the test source
top-1 (measurement only). Prints, per
criterion, the test top-1 of what it would pick in each iteration among the same candidates, and
its rank correlation with test top-1 over all candidates.

    .venv/bin/python experiments/keep_best_criteria.py --work /work/ver-0/s0 --seed 0 [--run RUN_ID] --json out.json
    .venv/bin/python experiments/keep_best_criteria.py --report out0.json out1.json out2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CRITERIA = ("val/search_mAP_at_10", "val/search_mAP", "val/top1")


def measure_run(work: Path, seed: int, run: str | None) -> list[dict]:
    os.environ["CEREBRO_HOME"] = str(work / f"home-{seed}")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from cerebro_core import tracking
    from cerebro_core.adapt.models import Models
    from cerebro_core.adapt.stage import gather
    from cerebro_core.config import load_config
    from cerebro_core.data.vocab import prompts_for
    from cerebro_core.storage import Storage

    sets = [f"adapt.sources=[{{name: pool, path: {work / 'pool'}}}]",
            f"adapt.validation_source={{name: val, path: {work / 'val'}}}",
            f"adapt.test_source={{name: test, path: {work / 'test'}}}",
            f"adapt.vocabulary={work / 'classes.txt'}", f"train.seed={seed}", f"adapt.seed={seed}"]
    cfg = load_config(REPO / "configs/adapt-cifar.yaml", sets)
    _, val, test, classes, _ = gather(cfg)
    tracking.configure(cfg)
    a = cfg.adapt
    models = Models(cfg, Storage(cfg.storage), "cerebro-tiny-vit-32", prompts_for(classes, a.templates, a.vocabulary_kind),
                    classes, lambda s: None)
    data = work / f"home-{seed}" / "data" / "adapt-cifar"
    teacher = sorted((data / "checkpoints").glob("pretrain-*/step-*.pt"))[-1]
    runs = sorted((data / "adapt" / "1").iterdir(), key=lambda p: p.stat().st_mtime)
    base = data / "adapt" / "1" / run if run else runs[-1]
    cands = [(0, "teacher", teacher)]
    for it in sorted(base.glob("iteration-*"), key=lambda p: int(p.name.split("-")[1])):
        i = int(it.name.split("-")[1])
        cands.append((i, "1", sorted((it / "checkpoints").glob("step-*.pt"))[-1]))
        cands += [(i, p.stem.removeprefix("wise-ft-"), p) for p in sorted(it.glob("wise-ft-*.pt"))]
    rows = []
    for i, alpha, ck in cands:  # Models.measure: what the loop itself logs per candidate
        m = models.measure(models.load(str(ck)), {"val": val, "test": test}, general=False)
        row = {"seed": seed, "iteration": i, "alpha": alpha,
               **{f"{part}/{k}": m[part][k] for part in m for k in ("top1", "search_mAP_at_10", "search_mAP")}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def report(rows: list[dict]) -> None:
    seeds = sorted({r["seed"] for r in rows})
    print("| criterion | test top-1 of its pick, mean over seeds × iterations (± s.e.) | "
          "picks the best-on-test candidate | Spearman with test top-1 (mean over seeds) |")
    print("|---|---:|---:|---:|")
    for c in CRITERIA + ("test/top1",):
        picked, hits, rhos = [], 0, []
        for s in seeds:
            rs = [r for r in rows if r["seed"] == s]
            rhos.append(spearman([r[c] for r in rs], [r["test/top1"] for r in rs]))
            for i in sorted({r["iteration"] for r in rs if r["iteration"] > 0}):
                group = [r for r in rs if r["iteration"] == i]
                best = max(group, key=lambda r: r[c])
                picked.append(best["test/top1"])
                hits += best["test/top1"] == max(r["test/top1"] for r in group)
        se = statistics.stdev(picked) / len(picked) ** 0.5 if len(picked) > 1 else float("nan")
        print(f"| {c} | {statistics.mean(picked):.4f} ± {se:.4f} | {hits} of {len(picked)} | "
              f"{statistics.mean(rhos):+.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", help="the adapt run's id (default: the latest in the work dir)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--report", type=Path, nargs="*")
    args = ap.parse_args()
    if args.report:
        report([r for p in args.report for r in json.loads(p.read_text())])
        return
    rows = measure_run(args.work, args.seed, args.run)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    report(rows)


if __name__ == "__main__":
    main()
