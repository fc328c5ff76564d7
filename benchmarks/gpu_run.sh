#!/usr/bin/env bash
# Everything that needs a CUDA device, in one go (a lent GPU machine is held by the minute): the
# gpu-marked tests (Triton varlen and decode attention compiled, the FP4 MoE kernel with split-K,
# CUDA graphs for decode and speculative verification, the engine on CUDA), then the GPU benchmarks
# (varlen attention vs the torch loop, FP4 vs bf16 MoE kernel table at batch 1-256, stream vs
# generate, speculative decoding, engine vs transformers).
# Usage: benchmarks/gpu_run.sh [OUTDIR] [steps...]   steps: tests attn fp4 stream spec hf (default: all)
# Each step has its own time limit (`limit`, seconds; 460 s in all, under 8 minutes with the
# set-up), so a slow step cannot eat the others' time. Logs and the updated docs/benchmarks* land in
# OUTDIR (default: ./gpu-out); the docs as gpu-docs.tar.gz, refreshed after every step.
set -uo pipefail
out=${1:-gpu-out}; shift || true
steps=${*:-tests attn fp4 stream spec hf}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
declare -A limit=([tests]=110 [attn]=30 [fp4]=150 [stream]=30 [spec]=70 [hf]=70)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$out/gpu.txt"
$py -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$out/gpu.txt"
tests=(tests/engine/test_varlen_attention.py tests/engine/test_triton_attention.py tests/engine/moe/test_triton_moe.py
       tests/engine/test_cuda_graphs.py tests/engine/test_cuda.py)
status=0
for step in $steps; do
  start=$SECONDS
  t=${limit[$step]:-60}
  case $step in
    tests) timeout "$t" $py -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$out/tests.log" ;;
    attn) timeout "$t" $py benchmarks/varlen_attention.py --device cuda 2>&1 | tee "$out/attn.log" ;;
    fp4) timeout "$t" $py benchmarks/fp4_moe.py --gpu-only --small-sweep 2>&1 | tee "$out/fp4.log" ;;
    stream) timeout "$t" $py benchmarks/stream_vs_generate.py --device cuda --tokens 128 --repeats 5 2>&1 | tee "$out/stream.log" ;;
    spec) timeout "$t" $py benchmarks/spec_decode.py --device cuda --turns 16 --max-tokens 96 2>&1 | tee "$out/spec.log" ;;
    hf) timeout "$t" $py benchmarks/engine_vs_hf.py --device cuda --dtype bfloat16 --repeats 3 2>&1 | tee "$out/hf.log" ;;
    *) echo "unknown step $step"; status=2; continue ;;
  esac
  rc=$?
  [ "$rc" -ne 0 ] && status=$rc
  [ "$rc" -eq 124 ] && echo "== step $step: stopped at its $t s limit" | tee -a "$out/gpu.txt"
  echo "== step $step: exit $rc, $((SECONDS - start)) s" | tee -a "$out/gpu.txt"
  tar czf "$out/gpu-docs.tar.gz" docs/benchmarks.md docs/benchmarks  # after every step: a later one may run out of time
done
exit $status
