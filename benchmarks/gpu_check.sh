#!/usr/bin/env bash
# The GPU path in one go: CUDA tests, the demo on the GPU, the lab's comparison on a generated JPEG set
# at fp32 and bf16+channels_last, model-only throughput at batch 256, and the pipeline comparison.
# Usage on a machine with an NVIDIA GPU and torch/torchvision installed: bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu-results}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
PY=${PYTHON:-python3}
# One device session runs a command for at most 10 minutes: every step gets a time limit, and none may
# run past BUDGET seconds from the start (a hung step is cut, the next steps still run or say they were skipped).
DEADLINE=$((SECONDS + ${BUDGET:-540}))
t() {  # t CAP CMD...: CMD under `timeout`, CAP seconds or what is left of the budget
  local cap=$1 left=$((DEADLINE - SECONDS)); shift
  ((left < cap)) && cap=$left
  if ((cap <= 0)); then echo "skipped (out of time): $*" >&2; return 124; fi
  timeout "$cap" "$@"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
echo "== CUDA tests"
t 120 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5
echo "== demo on the GPU"
t 90 $PY -m cnnlab demo --out "$OUT/demo" --device cuda -q 2>&1 | tail -12
echo "== lab comparison on generated JPEGs (random weights: speed and memory only)"
t 90 $PY - <<'PY'
from pathlib import Path
import sys
sys.path.insert(0, "benchmarks")
from bench_pipeline import make_jpegs
make_jpegs(Path("/tmp/gpuset/photo_small"), 512, (500, 375), "photo", seed=0)
make_jpegs(Path("/tmp/gpuset/photo_large"), 128, (1600, 1200), "photo", seed=1)
PY
for cfg in "fp32" "bf16 --channels-last"; do
  set -- $cfg
  t 90 $PY -m cnnlab bench /tmp/gpuset/photo_small --random-weights --device cuda -b 256 --precision $cfg -q --no-plots \
      --overwrite --out "$OUT/lab_small_$1" 2>&1 | grep -v "^results in" | head -30
done
t 90 $PY -m cnnlab bench /tmp/gpuset/photo_large --random-weights --device cuda -b 256 --precision bf16 --channels-last -q --no-plots \
    --overwrite --out "$OUT/lab_large_bf16" 2>&1 | head -12
echo "== model-only throughput, resnet50 at batch 256"
for cfg in "fp32" "tf32" "bf16" "bf16 --channels-last"; do
  set -- $cfg
  rm -rf "/tmp/tp_$1$#"  # a failed run must not leave an earlier run's results.csv to be read below
  t 60 $PY -m cnnlab bench /tmp/gpuset/photo_small --models resnet50 --random-weights --device cuda -b 256 --precision $cfg \
      -q --no-plots --repeats 10 --out "/tmp/tp_$1$#" >/dev/null 2>&1
  [ -f "/tmp/tp_$1$#/results.csv" ] || { echo "resnet50 $cfg: failed or timed out"; continue; }
  $PY -c "import csv,sys; r=next(csv.DictReader(open('/tmp/tp_$1$#/results.csv'))); print('resnet50 $cfg:', round(float(r['throughput_images_per_s'])), 'img/s model-only; e2e', round(float(r['eval_images_per_s'])), 'img/s; peak alloc', round(float(r['cuda_peak_allocated_mib'])), 'MiB')"
done | tee "$OUT/throughput.txt"
echo "== pipeline vs the lab's plain loop"
t 120 $PY benchmarks/bench_pipeline.py --device cuda --small 512 --large 128 --models resnet50,efficientnet_lite0 --batch-size 256 2>&1 | tail -6 | tee "$OUT/pipeline.txt"
echo "== JPEG decoding: CPU (Pillow) vs GPU (nvJPEG) vs model only, resnet50 bf16, random weights"
t 240 $PY benchmarks/gpu_decode_check.py --device cuda --small 2000 --large 500 --json "$OUT/decode.json" 2>&1 \
    | tee "$OUT/decode.txt"
