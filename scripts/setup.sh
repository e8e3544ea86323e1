#!/usr/bin/env bash
# Sets up what is missing on a fresh Debian machine and builds the library into build/.
# Idempotent: a second run only rebuilds what changed.
#   TORCH_REQUIREMENT  pip requirement for torch (default: the on-disk CPU wheel, torch==2.13.0;
#                      a CUDA build such as torch==2.14.1 also builds the CUDA kernels with nvcc)
#   VENV               virtual environment (default: .venv)
#   BUILD_DIR          build directory (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_REQUIREMENT=${TORCH_REQUIREMENT:-torch==2.13.0}
BUILD_DIR=${BUILD_DIR:-build}
VENV=${VENV:-.venv}

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v g++ >/dev/null || need_apt+=(g++)
[ -d /usr/include/catch2 ] || need_apt+=(catch2)
[ -f /usr/include/nlohmann/json.hpp ] || need_apt+=(nlohmann-json3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  python3 -m venv "$VENV"
fi
# transformers: the package's optional extra (dilated_attention_pytorch.transformers), tested too.
if ! "$VENV/bin/python" -c "import torch, pytest, hypothesis, numpy, expecttest, matplotlib, scikit_build_core, transformers" 2>/dev/null; then
  echo "== installing Python packages ($TORCH_REQUIREMENT)"
  "$VENV/bin/pip" install -q "$TORCH_REQUIREMENT" pytest hypothesis numpy expecttest matplotlib "scikit-build-core>=0.10.5" "transformers>=4.56"
fi

if "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
  # The C++20 CUDA dialect that torch 2.14's headers need wants CMake >= 3.28.
  [ -x "$VENV/bin/cmake" ] || "$VENV/bin/pip" install -q "cmake>=3.28,<4"
fi
export PATH="$PWD/$VENV/bin:$PATH"

echo "== building into $BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$PWD/$VENV/bin/python" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
