#!/usr/bin/env bash
# The one GPU check (for a lent H100: PyTorch preinstalled, no network, 16 cores): builds the
# library against that machine's torch, checks the CUDA ops against a float64 reference, runs a
# short compute-sanitizer memcheck, and times ours against the per-group gather + SDPA baseline.
# Writes bench/results/gpu.json (or $OUT/gpu.json) and prints a table last.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build-gpu}
RESULTS=${OUT:-bench/results}
mkdir -p "$RESULTS"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

echo "== build against $($PYTHON -c 'import torch; print(torch.__version__, torch.version.cuda)')"
CMAKE=cmake
# No installs (the lent machine has no network): a CMake older than 3.28 may lack the CUDA C++20
# dialect that newer torch headers need; the pip-installed cmake module is used when present.
if ! cmake --version | awk 'NR==1{split($3,v,"."); exit !(v[1]>3 || (v[1]==3 && v[2]>=28))}'; then
  if $PYTHON -c "import cmake" 2>/dev/null; then CMAKE="$PYTHON -m cmake"
  else echo "cmake $(cmake --version | awk 'NR==1{print $3}') is older than 3.28: the build may fail"; fi
fi
GENERATOR=(); command -v ninja >/dev/null && GENERATOR=(-G Ninja)
# The Catch2 programs only where Catch2 is installed (the lent machine may lack it): they hold
# the sharded engine on two in-process ranks on one GPU.
CPP_TESTS=OFF; { [ -d /usr/include/catch2 ] || [ -d /usr/local/include/catch2 ]; } && CPP_TESTS=ON
$CMAKE -S . -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$(command -v $PYTHON)" -DDILATED_ATTENTION_BUILD_BENCH=OFF \
  -DDILATED_ATTENTION_BUILD_TESTS=$CPP_TESTS > "$RESULTS/gpu_build.log" 2>&1
$CMAKE --build "$BUILD_DIR" -j"$(nproc)" >> "$RESULTS/gpu_build.log" 2>&1 ||
  { tail -40 "$RESULTS/gpu_build.log"; exit 1; }
echo "build log: $RESULTS/gpu_build.log"
export DILATED_ATTENTION_OPS_LIB="$PWD/$BUILD_DIR/libdilated_attention_ops.so"

failed=0
echo "== tests/python/test_cuda.py and test_cuda_capabilities.py (GPU cases of every fix)"
if $PYTHON -c "import pytest" 2>/dev/null; then
  $PYTHON -m pytest -q -p no:cacheprovider -x tests/python/test_cuda.py \
    tests/python/test_cuda_capabilities.py 2>&1 | tee "$RESULTS/gpu_pytest.log" | tail -30 ||
    failed=1
else
  echo "pytest is not installed here: the pytest cases did not run"
fi

if [ -x "$BUILD_DIR/tests/cpp/comm_tests" ]; then
  echo "== sharded engine on two in-process ranks on the GPU (comm_tests [cuda])"
  "$BUILD_DIR/tests/cpp/comm_tests" "[cuda]" || failed=1
else
  echo "== Catch2 not installed: the in-process sharded CUDA case did not run"
fi

echo "== correctness on the GPU"
$PYTHON bench/gpu_check.py correctness --json "$RESULTS/gpu_correctness.json" || failed=1

if command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer memcheck (small shapes, at most 120 s, not fatal)"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 compute-sanitizer --tool memcheck \
    --error-exitcode 3 $PYTHON bench/gpu_check.py memcheck || echo "memcheck: exit $?"
else
  echo "== compute-sanitizer not found: memcheck skipped"
fi

echo "== timings"
$PYTHON bench/gpu_check.py timing --json "$RESULTS/gpu.json"
exit $failed
