#!/usr/bin/env bash
# Runs the benchmarks and writes the plot next to their JSON (bench/results/):
#   tokens/s against sequence length for ours and the baselines (C++ benchmark, 2 threads), and
#   per-rank throughput for P = 1, 2, 4 over gloo (bench_distributed.py).
# Then: bench/results/report.png. Takes about 13 minutes on the 2-core CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
VENV=${VENV:-.venv}
export DILATED_ATTENTION_OPS_LIB="$PWD/$BUILD_DIR/libdilated_attention_ops.so"
mkdir -p bench/results
for n in ${SEQ_LENGTHS:-8192 16384 32768}; do
  # The dense baseline is O(N^2): time it only where it finishes in reasonable time.
  dense=(); [ "$n" -gt 16384 ] && dense=(--skip-dense)
  "$BUILD_DIR/bench/dilated_attention_bench" --seq "$n" --repeats 3 "${dense[@]}" \
    --json "bench/results/seq_$n.json"
  # bfloat16: ours and the gather baseline (the fused kernel's bf16 curve).
  "$BUILD_DIR/bench/dilated_attention_bench" --seq "$n" --repeats 3 --skip-dense \
    --dtype bfloat16 --json "bench/results/seq_${n}_bfloat16.json"
done
"$VENV/bin/python" bench/bench_distributed.py
"$VENV/bin/python" bench/plot.py bench/results
