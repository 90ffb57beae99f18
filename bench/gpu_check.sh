#!/usr/bin/env bash
# Everything issue #15 asks of a GPU, in one script (a few minutes on an H100-class GPU):
#   1. the CUDA tests (pytest -m gpu: device rule, generator, server, training, precision);
#   2. whole members at 721x1440 (one global member, and 8 members per window, batched 8 at a
#      time) for the shipped global bundle and a paper-sized global bundle (random weights,
#      configs/era5_global_paper.yaml's denoiser), float32 / bf16 / fp16, eager and with
#      torch.compile + CUDA graphs (mode reduce-overhead);
#   3. denoiser forwards (s/forward, GFLOP/s, % of the measured GEMM peak) in float32 / bf16 /
#      fp16, eager vs autocast vs AOTInductor;
#   4. the precision evidence on the Iberia validation split with fp16 added (bf16 and fp16
#      against float32: field differences, CRPS, spread-skill, p99).
# Targets (issue #15): paper-sized member <= 0.3 s, 8 members <= 1 s on an H100.
#
# Usage:  bash bench/gpu_check.sh [OUTDIR]      (default out/gpu_check; needs scripts/setup.sh
#         with a CUDA torch: PRECIPDIFF_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126)
# Every step logs to OUTDIR/*.txt and writes OUTDIR/*.json; a failing step does not stop the
# others. Record the numbers in docs/generator.md ("Measured speed") and the README's
# performance table, with the command and the GPU named.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/gpu_check}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
status=0
step() {  # step NAME COMMAND...: run, tee the log, remember failures
  local name=$1; shift
  echo "=== $name: $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS
  "$@" 2>&1 | tee -a "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
  [[ $rc -ne 0 ]] && status=1
  return 0
}

step environment bash -c "nvidia-smi; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'"
if ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "no CUDA device visible to $PY: nothing to measure" | tee -a "$OUT/environment.txt"
  exit 1
fi

# 1. CUDA tests (skipped everywhere else).
step tests_gpu "$PY" -m pytest -q -m gpu tests/python

# 2. Whole members, 1 and 8 per window, 721x1440, default sampler (8 network evaluations).
step members "$PY" bench/bench_generate_speed.py --device cuda --what members --paper \
  --members 8 --member-batch 8 --jit reduce-overhead --rounds 3 --windows 3 \
  --json "$OUT/members.json"

# 3. Forwards at 721x1440 with GFLOP/s and % of peak, eager / autocast / AOTInductor.
step forwards "$PY" bench/bench_generate_speed.py --device cuda --what forward --paper \
  --paper-shape 721x1440 --compiled --rounds 3 --forwards 10 --json "$OUT/forward.json"

# 4. Precision evidence with fp16 (needs ../shared/data or PRECIPDIFF_SHARED_DATA).
step precision "$PY" bench/bench_precision.py --device cuda --precisions float32 bf16 fp16 \
  --json "$OUT/precision.json"

echo "logs and JSON in $OUT (exit $status)"
exit $status
