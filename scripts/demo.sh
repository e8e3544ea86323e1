#!/usr/bin/env bash
# The main job: sets up what is missing, builds, and runs the CPU demo (correctness against the
# float64 reference, then timings of ours against the baselines, as a table and JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
VENV=${VENV:-.venv}
DILATED_ATTENTION_OPS_LIB="$PWD/$BUILD_DIR/libdilated_attention_ops.so" \
  "$VENV/bin/python" bench/demo.py --bench "$BUILD_DIR/bench/dilated_attention_bench" "$@"
