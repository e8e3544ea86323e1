#!/usr/bin/env bash
# The library and its Catch2 tests built with AddressSanitizer + UndefinedBehaviorSanitizer
# (-DDILATED_ATTENTION_SANITIZE=ON, into build-asan), then ctest, then a Python smoke subset of
# the op tests with the ASan runtime preloaded into the interpreter (torch itself is not
# instrumented; leak checking is off because the interpreter's own allocations are not ours).
# Any report fails the run: UBSan aborts on the first error (-fno-sanitize-recover).
#   VENV       virtual environment with torch (default: .venv; scripts/setup.sh makes it)
#   BUILD_DIR  where to build (default: build-asan)
#   DILATED_ATTENTION_CUDA  AUTO (default), ON or OFF: whether the CUDA kernels are built
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BUILD_DIR=${BUILD_DIR:-build-asan}
export PATH="$PWD/$VENV/bin:$PATH"

# -O1 -g1 (line tables): what ASan's reports need for file:line, in half the compile time of
# -O2 -g (the build is most of this script's time on CI's two cores).
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DPython3_EXECUTABLE="$PWD/$VENV/bin/python" -DDILATED_ATTENTION_SANITIZE=ON \
  -DDILATED_ATTENTION_BUILD_BENCH=OFF -DDILATED_ATTENTION_CUDA="${DILATED_ATTENTION_CUDA:-AUTO}" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"

export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 600

# libstdc++ is preloaded with the runtime: the interpreter does not link it, and ASan's
# __cxa_throw interceptor must find it at start-up (or every C++ exception aborts).
asan_runtime=$(${CXX:-c++} -print-file-name=libasan.so)
cxx_runtime=$(${CXX:-c++} -print-file-name=libstdc++.so)
for lib in "$asan_runtime" "$cxx_runtime"; do
  [ -f "$lib" ] || { echo "no runtime library at $lib"; exit 1; }
done
LD_PRELOAD="$asan_runtime $cxx_runtime" DILATED_ATTENTION_OPS_LIB="$PWD/$BUILD_DIR/libdilated_attention_ops.so" \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  tests/python/test_layouts.py tests/python/test_misuse_hardening.py \
  tests/python/test_validation.py tests/python/test_forward_backward.py \
  tests/python/test_distributed_edge_shapes.py tests/python/test_gqa.py \
  tests/python/test_key_padding_mask.py tests/python/test_varlen.py tests/python/test_longnet.py \
  tests/python/test_kv_cache.py
echo "== sanitizers (ASan + UBSan): ctest and the Python smoke subset passed"
