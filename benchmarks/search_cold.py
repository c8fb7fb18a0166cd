"""A cold `cerebro search` against `python -c "import open_clip, faiss"`, side by side.

    .venv/bin/python benchmarks/search_cold.py [--rounds 5] [--home .cerebro]

Needs a published index in the state dir (`make demo` makes one). Each round runs, as separate
fresh processes in a rotating order:
  anchor:  python -c "import open_clip, faiss"              (the libraries any query path needs)
  ours:    cerebro search "a red circle on snow" -k 10      (the command as a user types it)
  pyfunc:  the same query through mlflow.pyfunc.load_model  (how `cerebro search` loaded before)
Reported: median wall time and peak RSS of each, and ours ÷ anchor (goal, issue #22: ≤ 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUERY = "a red circle on snow"
PYFUNC = """
import pandas as pd, mlflow
from cerebro_core import tracking
from cerebro_core.config import load_config
tracking.configure(load_config("configs/demo.yaml"))
m = mlflow.pyfunc.load_model("models:/cerebro-search@champion")
print(len(m.predict(pd.DataFrame({"query": [%r]}), params={"k": 10})))
""" % QUERY


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one fresh process (its own rusage, from wait4)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({p.returncode}):\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--home", default=os.environ.get("CEREBRO_HOME", str(REPO / ".cerebro")))
    args = ap.parse_args()
    env = dict(os.environ, CEREBRO_HOME=str(Path(args.home).resolve()))
    cmds = {
        "anchor": [sys.executable, "-c", "import open_clip, faiss"],
        "ours": [str(BIN / "cerebro"), "search", QUERY, "-k", "10", "-c", "configs/demo.yaml"],
        "pyfunc": [sys.executable, "-c", PYFUNC],
    }
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    rss: dict[str, list[float]] = {k: [] for k in cmds}
    timed(cmds["ours"], env)  # warms the page cache and makes the local copy (a first query)
    names = list(cmds)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            w, m = timed(cmds[name], env)
            walls[name].append(w)
            rss[name].append(m)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"cold search, {args.rounds} rounds: median wall s (min..max), median peak RSS MB")
    for k in names:
        print(f"  {k:<7} {med[k]:6.2f}  ({min(walls[k]):.2f}..{max(walls[k]):.2f})  {statistics.median(rss[k]):7.0f}")
    print(f"ours / anchor   = {med['ours'] / med['anchor']:.2f}  (goal <= 2)")
    print(f"pyfunc / anchor = {med['pyfunc'] / med['anchor']:.2f}")


if __name__ == "__main__":
    main()
