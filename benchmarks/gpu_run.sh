#!/usr/bin/env bash
# Everything that needs a CUDA device, in one go (a lent GPU machine is held by the minute):
# the gpu-marked tests (the Triton MoE kernel compiled, the engine on CUDA), then the GPU benchmarks.
# Usage: benchmarks/gpu_run.sh [OUTDIR] [steps...]   steps: tests fp4 spec hf (default: all)
# Logs and the updated docs/benchmarks* land in OUTDIR (default: ./gpu-out) as gpu-docs.tar.gz.
set -uo pipefail
out=${1:-gpu-out}; shift || true
steps=${*:-tests fp4 spec hf}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$out/gpu.txt"
$py -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$out/gpu.txt"
status=0
for step in $steps; do
  start=$SECONDS
  case $step in
    tests) $py -m pytest -q -p no:cacheprovider tests/engine/moe/test_triton_moe.py tests/engine/test_cuda.py tests/engine/test_triton_attention.py 2>&1 | tee "$out/tests.log" ;;
    fp4) $py benchmarks/fp4_moe.py --gpu-only 2>&1 | tee "$out/fp4.log" ;;
    spec) $py benchmarks/spec_decode.py --device cuda --turns 16 --max-tokens 96 2>&1 | tee "$out/spec.log" ;;
    hf) $py benchmarks/engine_vs_hf.py --device cuda --dtype bfloat16 --repeats 3 2>&1 | tee "$out/hf.log" ;;
    *) echo "unknown step $step"; status=2; continue ;;
  esac
  rc=$?
  [ $rc -ne 0 ] && status=$rc
  echo "== step $step: exit $rc, $((SECONDS - start)) s" | tee -a "$out/gpu.txt"
  tar czf "$out/gpu-docs.tar.gz" docs/benchmarks.md docs/benchmarks  # after every step: a later one may run out of time
done
exit $status
