#!/usr/bin/env bash
# The GPU suite: one script, run as it is on a lent GPU machine; about 6-8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_suite.sh                             # on the device: results in $OUT
#   CEREBRO_SUITE_SMOKE=1 OUT=/tmp/s bash benchmarks/gpu_suite.sh   # CPU smoke (tiny model, 2 steps; tests run it)
#
# 1. ViT-B-32 bf16 pretraining through our trainer (torchrun, webdataset, transforms): samples/s and
#    MFU at batch 256 and 480, with AdamW foreach vs fused on the step alone, and torch.compile
#    (train.compile); attention is open_clip's nn.MultiheadAttention, which calls SDPA (flash on bf16).
# 2. Embedding images/s in fp16 with real JPEG decode (ours vs a plain open_clip DataLoader loop),
#    and one adapt labelling pass over 304 classes projected to 152,982 images.
# 3. FAISS build time for 152,982 x 512 (IVF on the GPU when faiss has one).
# 4. The real run's GPU paths end to end (benchmarks/gpu_pretrain_check.py): a short ViT-B-32 bf16
#    pretraining, 2 epochs, train.accum_steps=2, train.zero_shot_source (evaluated at each epoch end),
#    deterministic mode, resumed from its epoch-1 checkpoint to the same weights (~1-2 min). Last:
#    a failure here (its exit status) ends the suite after the measurements above are written.
# Results: $OUT/gpu_suite.md (the tables, in order) + one JSON per step; stderr in $OUT/stderr.log.
# Python packages the device image lacks travel as wheels in .whl/ (docs/BENCHMARKS.md, "GPU suite").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/cerebro-gpu-suite}
mkdir -p "$OUT"
if ! "$PY" -c 'import open_clip, webdataset, pydantic, faiss' 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
res="$OUT/gpu_suite.md"
if [ "${CEREBRO_SUITE_SMOKE:-0}" = 1 ]; then
  TRAIN=(--model cerebro-tiny-vit-32 --precision fp32 --steps 2 --workers 0 --peak-tflops 0.1568)
  B1=8; B2=16
  EMB=(--model cerebro-tiny-vit-32 --images 64 --size 64 --batch 16 --workers 1)
  FAISS=(--n 3000)
  CHECK=(--model cerebro-tiny-vit-32 --batch 8 --precision fp32 --workers 0 --steps-per-epoch 2)
else
  TRAIN=(--model ViT-B-32 --precision bf16 --steps 30 --workers 14)
  B1=256; B2=480
  EMB=(--model ViT-B-32 --images 16384 --batch 512 --workers 14)
  FAISS=()
  CHECK=(--model ViT-B-32 --batch 128 --precision bf16 --workers 8 --steps-per-epoch 4)
fi

step() {  # step TITLE JSON COMMAND...: the command's table into the results file
  local title=$1 json=$2; shift 2
  local t0=$SECONDS
  { echo; echo "## $title"; echo; echo "\`$*\`"; echo; } >>"$res"
  "$@" --json "$OUT/$json" 2>>"$OUT/stderr.log" | grep '^|' | tee -a "$res"
  echo "($((SECONDS - t0)) s)" >>"$res"
}

{
  echo "# Cerebro GPU suite, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  "$PY" -c 'import torch, open_clip; c = torch.cuda.is_available(); print("torch", torch.__version__, "| open_clip", open_clip.__version__, "|", torch.cuda.get_device_name(0) if c else "no CUDA device", "|", __import__("os").cpu_count(), "CPU cores")'
} >"$res"
step "Pretraining, batch $B1 per GPU" train_b1.json "$PY" benchmarks/gpu_throughput.py "${TRAIN[@]}" --batch "$B1"
step "Pretraining, batch $B2 per GPU" train_b2.json "$PY" benchmarks/gpu_throughput.py "${TRAIN[@]}" --batch "$B2" --no-step-only
step "Pretraining, batch $B1 per GPU, torch.compile" train_b1_compiled.json \
  "$PY" benchmarks/gpu_throughput.py "${TRAIN[@]}" --batch "$B1" --compile
step "Embedding and one adapt labelling pass" embed.json "$PY" benchmarks/embed_throughput.py "${EMB[@]}"
step "FAISS build" faiss.json "$PY" benchmarks/faiss_build.py "${FAISS[@]}"
step "Pretraining paths: 2 epochs, accum_steps 2, zero-shot, deterministic, resume" pretrain_check.json \
  "$PY" benchmarks/gpu_pretrain_check.py "${CHECK[@]}"
echo "suite done: $res"
