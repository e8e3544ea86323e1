#!/usr/bin/env bash
# Sets up, builds, and runs every test: Catch2 through ctest, an out-of-tree C++ consumer of the
# installed library, then pytest. Fails when any fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${BUILD_DIR:-build}
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

echo "== C++ tests (ctest)"
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 600
echo "== C++ consumer of the installed library (find_package)"
bash scripts/test_consumer.sh
echo "== Python tests (pytest)"
DILATED_ATTENTION_OPS_LIB="$PWD/$BUILD_DIR/libdilated_attention_ops.so" \
  "$VENV/bin/python" -m pytest tests/python -q -p no:cacheprovider
