"""benchmarks/gpu_suite.sh runs as it is: its CPU smoke mode (tiny model, 2 steps) writes every
section's table and JSON, with positive rates (the device run uses the same script and code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from helpers import REPO


def test_gpu_suite_smoke_on_cpu(tmp_path):
    env = dict(os.environ, CEREBRO_SUITE_SMOKE="1", OUT=str(tmp_path), PYTHON=sys.executable,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["bash", str(REPO / "benchmarks/gpu_suite.sh")], env=env, capture_output=True, text=True,
                       timeout=900)  # 44 s alone; 614 s once with 3 other test runs on the 2 cores
    log = tmp_path / "stderr.log"
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + (log.read_text()[-3000:] if log.exists() else "")
    md = (tmp_path / "gpu_suite.md").read_text()
    for title in ("Pretraining, batch 8 per GPU", "Pretraining, batch 16 per GPU", "Pretraining, batch 8 per GPU, torch.compile",
                  "Embedding and one adapt labelling pass", "FAISS build",
                  "Pretraining paths: 2 epochs, accum_steps 2, zero-shot, deterministic, resume"):
        assert f"## {title}" in md
    for name in ("train_b1.json", "train_b2.json", "train_b1_compiled.json"):
        rows = json.loads((tmp_path / name).read_text())
        assert rows and all(row["samples_per_s"] > 0 and row["gflop_per_sample"] > 0 for row in rows)
    emb = json.loads((tmp_path / "embed.json").read_text())
    assert emb["ours_images_per_s"] > 0 and emb["anchor_images_per_s"] > 0 and emb["classes"] == 304
    assert emb["labelling_pass_152982_s"] == 152_982 / emb["labelling_images_per_s"]
    faiss = json.loads((tmp_path / "faiss.json").read_text())
    assert {r["what"].split()[1] for r in faiss["rows"][:4]} == {"flat", "ivf", "hnsw", "ivfpq"}
    check = json.loads((tmp_path / "pretrain_check.json").read_text())  # issue 35 items 1, 3, 8, 11
    assert check["ok"] and check["accum_steps"] == 2 and check["steps"] == 4 and check["resume_bit_exact"]
    assert check["zeroshot_top1"] is not None
