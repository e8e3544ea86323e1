#!/usr/bin/env bash
# Installs the built library into a prefix and builds and runs tests/consumer against it: a
# LibTorch program outside the project that does find_package(dilated_attention_ops).
#   BUILD_DIR  the project's build directory (default: build)
#   VENV       virtual environment whose torch the library was built with (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
PREFIX="$PWD/$BUILD_DIR/consumer-install"
CONSUMER_BUILD="$PWD/$BUILD_DIR/consumer-build"

rm -rf "$PREFIX" "$CONSUMER_BUILD"
cmake --install "$BUILD_DIR" --prefix "$PREFIX" --component development >/dev/null

torch_prefix=$("$VENV/bin/python" -c "import torch; print(torch.utils.cmake_prefix_path)")
# A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit (FindCUDA, which
# cannot derive the toolkit from an nvcc on PATH outside it): hand the consumer what the
# project's configure found: the toolkit of its nvcc, and nvrtc from torch's nvidia wheels.
cached() { sed -n "s/^$1:[A-Z]*=//p" "$BUILD_DIR/CMakeCache.txt" | head -1; }
cuda_hints=()
nvcc=$(cached CUDA_NVCC_EXECUTABLE)
if [ -n "$nvcc" ]; then
  cuda_hints+=("-DCUDA_TOOLKIT_ROOT_DIR=$(dirname "$(dirname "$nvcc")")" "-DCMAKE_CUDA_COMPILER=$nvcc")
fi
for var in CUDA_NVRTC_LIB CUDA_nvrtc_LIBRARY TORCH_CUDA_ARCH_LIST; do
  value=$(cached $var)
  [ -n "$value" ] && cuda_hints+=("-D$var=$value")
done
cmake -S tests/consumer -B "$CONSUMER_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX;$torch_prefix" "${cuda_hints[@]}" >/dev/null
cmake --build "$CONSUMER_BUILD" >/dev/null
"$CONSUMER_BUILD/consumer"
echo "== out-of-tree consumer: find_package(dilated_attention_ops) against $PREFIX passed"
