#!/usr/bin/env bash
# CI step: compiles and links only the library target (its CUDA sources included when the torch
# wheel has CUDA) against the headers and libraries of one torch release, without installing it.
# The wheels are downloaded once into a cache outside the clone and unpacked there.
#   TORCH_VERSION             torch release to check (default 2.11.0, the CUDA 13.0 wheel)
#   DILATED_ATTENTION_CACHE   cache of wheels, unpacked trees and a CMake venv
#                             (default ~/.cache/dilated-attention-ops)
#   COMPILE_CHECK_BUILD_DIR   build directory (default build-torch<major><minor>, e.g.
#                             build-torch211; not BUILD_DIR, which .ci/run sets for its own build)
#   CUDA_HOME                 CUDA toolkit with nvcc (default: the one of the nvcc on PATH, else
#                             /usr/local/cuda)
#   JOBS                      parallel compile jobs (default: nproc)
#   PYTHON                    interpreter for pip and the helpers (default python3)
# It ends with "== torch <version> (CUDA <version> | CPU only): library compiled and linked".
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.11.0}
CACHE=${DILATED_ATTENTION_CACHE:-$HOME/.cache/dilated-attention-ops}
JOBS=${JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"
CACHE=$(cd "$CACHE" && pwd)
WHEELS="$CACHE/wheels"
case "$CACHE/" in
  "$PWD"/*) echo "DILATED_ATTENTION_CACHE must lie outside the clone ($PWD)" >&2; exit 2 ;;
esac

# The first wheel in the cache whose name matches one of the glob PATTERNS.
cached_wheel() {
  local pattern f
  for pattern in "$@"; do
    for f in "$WHEELS"/$pattern; do
      if [ -f "$f" ]; then
        echo "$f"
        return
      fi
    done
  done
}

# Downloads the wheel of REQUIREMENT (no dependencies) unless one matching PATTERNS is cached.
fetch_wheel() {
  local requirement=$1 wheel
  shift
  wheel=$(cached_wheel "$@")
  if [ -z "$wheel" ]; then
    echo "== downloading $requirement into $WHEELS" >&2
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "$requirement" >&2
    wheel=$(cached_wheel "$@")
    [ -n "$wheel" ] || { echo "pip download $requirement saved no wheel named $*" >&2; exit 1; }
  fi
  echo "$wheel"
}

# Unpacks the members of WHEEL under the given prefixes into DEST (once: an interrupted unpack
# leaves only DEST.partial, which the next run redoes).
unpack_wheel() {
  local wheel=$1 dest=$2
  shift 2
  if [ -d "$dest" ]; then return; fi
  echo "== unpacking $(basename "$wheel") into $dest"
  rm -rf "$dest.partial"
  "$PYTHON" - "$wheel" "$dest.partial" "$@" <<'EOF'
import sys, zipfile
wheel, dest, prefixes = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [m for m in z.namelist() if m.startswith(prefixes)])
EOF
  mv "$dest.partial" "$dest"
}

# --- torch
TORCH_WHEEL=$(fetch_wheel "torch==$TORCH_VERSION" "torch-$TORCH_VERSION-*.whl" \
  "torch-$TORCH_VERSION+*.whl")
TORCH_TREE="$CACHE/$(basename "$TORCH_WHEEL" .whl)"
unpack_wheel "$TORCH_WHEEL" "$TORCH_TREE" torch/include/ torch/lib/ torch/share/ torch/version.py
read -r TORCH_FULL_VERSION TORCH_CUDA < <("$PYTHON" - "$TORCH_TREE/torch/version.py" <<'EOF'
import runpy, sys
v = runpy.run_path(sys.argv[1])
print(v["__version__"], v["cuda"] or "none")
EOF
)
[ -n "${TORCH_CUDA:-}" ] || { echo "cannot read $TORCH_TREE/torch/version.py" >&2; exit 1; }
IFS=. read -r TORCH_MAJOR TORCH_MINOR _ <<<"$TORCH_VERSION"
BUILD_DIR=${COMPILE_CHECK_BUILD_DIR:-build-torch$TORCH_MAJOR$TORCH_MINOR}

# --- CMake >= 3.28 (for the C++20 CUDA dialect) and Ninja, from a venv in the cache when the
# machine's are missing or older
cmake_too_old() {
  command -v cmake >/dev/null || return 0
  "$PYTHON" - "$(cmake --version | head -n1)" <<'EOF'
import sys
version = tuple(int(x) for x in sys.argv[1].split()[-1].split("-")[0].split(".")[:2])
sys.exit(0 if version < (3, 28) else 1)
EOF
}
if cmake_too_old || ! command -v ninja >/dev/null; then
  if [ ! -x "$CACHE/tools/bin/cmake" ] || [ ! -x "$CACHE/tools/bin/ninja" ]; then
    echo "== installing cmake>=3.28 and ninja into $CACHE/tools"
    "$PYTHON" -m venv "$CACHE/tools"
    "$CACHE/tools/bin/pip" install -q "cmake>=3.28,<4" ninja
  fi
  export PATH="$CACHE/tools/bin:$PATH"
fi

CMAKE_ARGS=(
  -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
  -DDILATED_ATTENTION_TORCH_DIR="$TORCH_TREE/torch/share/cmake/Torch"
  -DDILATED_ATTENTION_BUILD_TESTS=OFF -DDILATED_ATTENTION_BUILD_BENCH=OFF
  # A shared library links even with unresolved symbols: make every symbol it uses resolve in
  # this torch's libraries, so "linked" means what it says.
  "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--no-undefined"
)
if [ "$TORCH_CUDA" = none ]; then
  CMAKE_ARGS+=(-DDILATED_ATTENTION_CUDA=OFF)
  WHAT="CPU only"
else
  # --- the CUDA toolkit of nvcc
  if [ -z "${CUDA_HOME:-}" ]; then
    CUDA_HOME=/usr/local/cuda
    if command -v nvcc >/dev/null; then
      # The nvcc on PATH may be a wrapper script: its dry run names the directory it runs from.
      NVCC_BIN=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 |
        sed -n 's/^#\$ _HERE_=//p' || true)
      [ -z "$NVCC_BIN" ] || CUDA_HOME=$(cd "$NVCC_BIN/.." && pwd)
    fi
  fi
  [ -x "$CUDA_HOME/bin/nvcc" ] || { echo "no nvcc in $CUDA_HOME/bin; set CUDA_HOME" >&2; exit 1; }
  NVCC_VERSION=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
  if [ "$NVCC_VERSION" != "$TORCH_CUDA" ]; then
    echo "warning: torch $TORCH_FULL_VERSION is built with CUDA $TORCH_CUDA, nvcc is $NVCC_VERSION"
  fi
  # --- what torch's CMake config wants beyond an nvcc-only toolkit: libnvrtc, from the
  # nvidia-* wheel that torch's wheel pins (only its headers and libnvrtc are kept). Our CUDA
  # sources include no ATen header that needs cuBLAS, cuSPARSE or cuSOLVER.
  CUDA_LIBS_TREE="$CACHE/nvrtc-for-$(basename "$TORCH_TREE")"
  if [ ! -d "$CUDA_LIBS_TREE" ]; then
    mapfile -t CUDA_REQUIREMENTS < <("$PYTHON" - "$TORCH_WHEEL" <<'EOF'
import re, sys, zipfile
from email.parser import Parser

wanted = ["nvrtc"]
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = Parser().parsestr(z.read(name).decode())
for requirement in metadata.get_all("Requires-Dist") or []:
    spec, _, marker = requirement.partition(";")
    if "extra" in marker:
        continue
    match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*(.*)", spec)
    package, version = match.group(1), match.group(2).strip("() ")
    if package == "cuda-toolkit":  # torch >= 2.10 pins the libraries through this package
        print(f"cuda-toolkit[{','.join(wanted)}]{version}")
    elif re.fullmatch(r"nvidia-cuda-nvrtc(-cu[0-9]+)?", package):
        print(f"{package}{version}")
EOF
)
    if [ ${#CUDA_REQUIREMENTS[@]} -eq 0 ]; then
      echo "$(basename "$TORCH_WHEEL") pins no CUDA library wheels" >&2
      exit 1
    fi
    echo "== downloading ${CUDA_REQUIREMENTS[*]}"
    rm -rf "$CUDA_LIBS_TREE.wheels"
    "$PYTHON" -m pip download -q --only-binary=:all: -d "$CUDA_LIBS_TREE.wheels" \
      "${CUDA_REQUIREMENTS[@]}"
    rm -rf "$CUDA_LIBS_TREE.partial"
    for wheel in "$CUDA_LIBS_TREE.wheels"/nvidia_cuda_nvrtc[-_]*.whl; do
      echo "== unpacking $(basename "$wheel") (headers, libnvrtc)"
      "$PYTHON" - "$wheel" "$CUDA_LIBS_TREE.partial" <<'EOF'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    keep = [m for m in z.namelist() if re.match(r"nvidia/.*/(include/|lib/libnvrtc\.so)", m)]
    z.extractall(sys.argv[2], keep)
EOF
    done
    mv "$CUDA_LIBS_TREE.partial" "$CUDA_LIBS_TREE"
    rm -rf "$CUDA_LIBS_TREE.wheels"
  fi
  NVRTC_LIBRARY=$(find "$CUDA_LIBS_TREE" -name "libnvrtc.so.*" | sort | head -n1)
  [ -n "$NVRTC_LIBRARY" ] || { echo "no libnvrtc.so in $CUDA_LIBS_TREE" >&2; exit 1; }
  CUDA_INCLUDE_DIRS=$(find "$CUDA_LIBS_TREE" -type d -name include | sort | paste -sd ';')
  CMAKE_ARGS+=(
    -DDILATED_ATTENTION_CUDA=ON
    -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc"
    -DCUDA_nvrtc_LIBRARY="$NVRTC_LIBRARY" -DCUDA_NVRTC_LIB="$NVRTC_LIBRARY"
    -DCMAKE_CXX_STANDARD_INCLUDE_DIRECTORIES="$CUDA_INCLUDE_DIRS"
    -DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES="$CUDA_INCLUDE_DIRS"
  )
  WHAT="CUDA $TORCH_CUDA"
fi

# A build directory configured for another torch keeps that torch's cached paths (Caffe2_DIR,
# TORCH_LIBRARY, ...): configure it afresh then.
if [ -f "$BUILD_DIR/CMakeCache.txt" ] && ! grep -qxF \
  "DILATED_ATTENTION_TORCH_DIR:PATH=$TORCH_TREE/torch/share/cmake/Torch" "$BUILD_DIR/CMakeCache.txt"
then
  CMAKE_ARGS+=(--fresh)
fi
echo "== configuring $BUILD_DIR against torch $TORCH_FULL_VERSION ($WHAT)"
cmake "${CMAKE_ARGS[@]}"
echo "== building dilated_attention_ops (-j$JOBS)"
cmake --build "$BUILD_DIR" --target dilated_attention_ops -j"$JOBS"
echo "== torch $TORCH_VERSION ($WHAT): library compiled and linked"
