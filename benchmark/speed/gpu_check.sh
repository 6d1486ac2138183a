#!/usr/bin/env bash
# GPU speed check (ISSUE 7): on a machine with one GPU and no network, write a fake
# CREMA-D-shaped prepared dataset (random data, full-size arrays: audio float16
# [1, 257, 188], visual uint8 [3, 256, 341, 3]), then time the loader, every method's step
# and end to end at batch 64 with loader workers, print the table and write the JSON.
# About 2-4 minutes on one H100 (most of it writing ~2 GB of fake data and CUDA start-up).
#
#   benchmark/speed/gpu_check.sh                 # or: make gpu-check
#   OUT=/tmp/speed TRAIN_ROWS=4096 STEPS=50 benchmark/speed/gpu_check.sh
#
# Settings (environment): PYTHON (.venv/bin/python, else python3), OUT (where the JSON
# and the table go; default results/speed), DATA (the fake dataset; default
# /tmp/imbalance-bench-fake-cremad, reused when present), TRAIN_ROWS (2048), BATCH (64),
# STEPS (30), WARMUP (10), WORKERS (auto: up to 8), DEVICE (cuda), SET (extra --set
# key=value pairs, e.g. "compile=true compile_mode=reduce-overhead"), METHODS (all).
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-results/speed}
DATA=${DATA:-/tmp/imbalance-bench-fake-cremad}
TRAIN_ROWS=${TRAIN_ROWS:-2048}
BATCH=${BATCH:-64}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-10}
WORKERS=${WORKERS:-}
DEVICE=${DEVICE:-cuda}
SET=${SET:-}
METHODS=${METHODS:-}

mkdir -p "$OUT"
"$PYTHON" - <<PY
import torch
if "$DEVICE".startswith("cuda") and not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA device visible (torch " + torch.__version__ + ")")
if torch.cuda.is_available():
    print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
          "| CUDA", torch.version.cuda)
PY

if [ ! -f "$DATA/meta.json" ] || [ "$("$PYTHON" -c "import json;print(json.load(open('$DATA/meta.json'))['splits']['train'])")" != "$TRAIN_ROWS" ]; then
  "$PYTHON" -m benchmark.speed.fake_cremad "$DATA" --train "$TRAIN_ROWS" --val 256 --test 256
fi

args=(speed --dataset "$DATA" --device "$DEVICE" --batch-size "$BATCH" --steps "$STEPS"
      --warmup "$WARMUP" --json "$OUT/speed.json")
[ -n "$WORKERS" ] && args+=(--workers "$WORKERS")
[ -n "$METHODS" ] && args+=(--methods $METHODS)
[ -n "$SET" ] && args+=(--set $SET)
echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) $PYTHON -m benchmark ${args[*]}"
status=0
"$PYTHON" -m benchmark "${args[@]}" | tee "$OUT/speed.txt" || status=$?
echo "gpu_check: table in $OUT/speed.txt, JSON in $OUT/speed.json (exit $status)"
exit "$status"
