#!/usr/bin/env bash
# Builds the ops with CMake (find_package(Torch)) into a plain shared library, loads it with
# torch.ops.load_library() in a fresh interpreter and calls one op.
#   scripts/cmake_build.sh [BUILD_DIR] [--configure-only]
#     BUILD_DIR         relative to the repository root (default build/cmake)
#     --configure-only  configure, print the nvcc architecture flags of the CUDA sources (with SDTP_CUDA=ON; an
#                       error when there are none), build nothing
# env: PYTHON (default .venv/bin/python where scripts/setup.sh made it, else python3), SDTP_CUDA=ON|OFF
#      (default OFF), TORCH_CUDA_ARCH_LIST (default 8.0;9.0+PTX), CUDA_HOME
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
build=build/cmake configure_only=false
for arg in "$@"; do
  case $arg in
    --configure-only) configure_only=true ;;
    -*) echo "cmake_build.sh: unknown option $arg (expected --configure-only)"; exit 2 ;;
    *) build=$arg ;;
  esac
done
args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DSDTP_CUDA="${SDTP_CUDA:-OFF}"
      -DCMAKE_PREFIX_PATH="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')")
if [ "$("$py" -c 'import torch; print(torch.version.cuda is not None)')" = True ]; then
  # A CUDA build of torch needs the toolkit even for the CPU-only library; nvrtc ships with torch's wheels.
  CUDA_HOME=${CUDA_HOME:-$("$py" scripts/find_cuda_home.py)}
  [ -n "$CUDA_HOME" ] || { echo "a CUDA build of torch needs the CUDA toolkit (nvcc or CUDA_HOME)"; exit 1; }
  nvrtc=$("$py" -c 'import glob, os, torch
libs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "*", "lib", "libnvrtc.so*"))
print(min(libs, default=""))')
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc")
  [ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
fi
mkdir -p "$(dirname "$build")"
cmake -S . -B "$build" "${args[@]}" >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
if $configure_only; then
  if [ "${SDTP_CUDA:-OFF}" = ON ]; then
    flags=$(ninja -C "$build" -t commands | grep -m1 -- '-x cu ' | grep -o -- '-gencode [^ ]*' | paste -sd' ' || true)
    [ -n "$flags" ] || { echo "cmake: the CUDA sources get no architecture flags"; exit 1; }
    echo "cmake configured: the CUDA sources compile with $flags"
  else
    echo "cmake configured (CPU kernels only)"
  fi
  exit 0
fi
cmake --build "$build" -j "${MAX_JOBS:-2}"
"$py" - "$build/libsdtp_ops.so" <<'PY'
import sys
import torch
torch.ops.load_library(sys.argv[1])
x = torch.arange(12.0).view(1, 6, 2)
out = torch.ops.sdtp.compact(x, torch.tensor([[-1, 1, 4]]), 1)
assert out.tolist() == [[[0.0, 0.0], [2.0, 3.0], [8.0, 9.0]]], out
print(f"cmake build OK: {sys.argv[1]} loaded, sdtp.compact answered")
PY
