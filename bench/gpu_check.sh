#!/usr/bin/env bash
# The accelerator figures of issue 15 in one run (under 10 minutes on one H200):
#
#   1. sampler at Qwen2.5-1.5B shape, bf16, batch 128 (prompt 512 + 256 new tokens):
#      decode fraction of the HBM roofline, prefill MFU            (bench/sampling.py)
#   2. attention_impl='cudnn' runs and matches the XLA attention
#      (loss, logits, gradients; 28 layers, 4 x 2048, bf16)         (bench/attention_check.py)
#   3. the update step at Qwen2.5-1.5B shape (4 x 4 rows x 4096 tokens, fp32 params,
#      bf16 compute, remat), MFU with xla and with cudnn attention  (bench/update_step.py)
#   4. one training iteration at full shape on built-in ALFWorld, 16 groups x 8, random
#      weights, 3 turns x 512 response tokens, time split, tokens/s,
#      decode roofline fraction, update MFU                         (bench/iteration.py)
#
# Usage (repository root, venv active):
#   bash bench/gpu_check.sh              # on the GPU machine; log in $OUT or /tmp
#   bash bench/gpu_check.sh --cpu-smoke  # every piece shrunk, on CPU (code paths only)
#
# Peaks: each script takes the device's datasheet values (bench/peaks.py: H100 SXM
# 3350 GB/s, H200 4800 GB/s, 989 dense bf16 TFLOP/s); pass PEAKS="--peak-bw-gbs ..
# --peak-tflops .." to override. Each step has its own time limit and the script goes
# on after a failure; the summary lists each step's exit status.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.92}
LOG_DIR=${OUT:-/tmp}
LOG="$LOG_DIR/gpu_check.log"
PEAKS=${PEAKS:-}
SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then
  SMOKE=1
  export JAX_PLATFORMS=cpu
fi
: > "$LOG"
declare -a RESULTS

step() {  # step NAME SECONDS command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  RESULTS+=("$name: exit $rc in $((SECONDS - start)) s")
  echo "=== $name: exit $rc in $((SECONDS - start)) s" | tee -a "$LOG"
}

{ date -u; git rev-parse --short HEAD; python -c 'import jax; print(jax.__version__, jax.devices())'
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null
} 2>&1 | tee -a "$LOG"

if [ $SMOKE = 1 ]; then
  step sampler 600 python bench/sampling.py --gpu-shape --layers 2 --batch 8 --prompt-len 32 \
    --new-tokens 8 --repeats 1 $PEAKS
  step attention 600 python bench/attention_check.py --cpu-smoke
  step update_step 600 python bench/update_step.py --cpu-smoke $PEAKS
  step iteration 900 python bench/iteration.py --cpu-smoke --env-workers 1 $PEAKS
else
  step sampler 100 python bench/sampling.py --gpu-shape --batch 128 --prompt-len 512 \
    --new-tokens 256 --repeats 3 $PEAKS
  step attention 70 python bench/attention_check.py
  step update_step 90 python bench/update_step.py $PEAKS
  step update_step_cudnn 90 python bench/update_step.py --attention-impl cudnn $PEAKS
  step iteration 240 python bench/iteration.py --max-steps 3 --iterations 2 --json $PEAKS
fi

echo "=== summary" | tee -a "$LOG"
for r in "${RESULTS[@]}"; do echo "$r" | tee -a "$LOG"; done
grep -E "roofline|MFU|MATCH|^iteration |tokens/s" "$LOG" | tee -a "$LOG.summary"
