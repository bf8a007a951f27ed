#!/usr/bin/env bash
# Sets up from nothing: a virtual environment in .venv (or $SDTP_VENV) with torch, the package (native ops built
# here: CUDA kernels too when nvcc and a CUDA build of torch are present) and the development tools.
#
# Idempotent: a stamp in the venv records what the native build was made from (the C++/CUDA sources, setup.py,
# pyproject.toml, the build switches and torch's version); when none of it changed, a second run builds nothing and
# takes seconds. Switches: SDTP_TORCH (the torch requirement, default torch==2.14.1; e.g. a CPU-only wheel),
# SDTP_CUDA=auto|0|1, TORCH_CUDA_ARCH_LIST, MAX_JOBS (default 2), CUDA_HOME, SDTP_HARNESS=0 (no lm-eval in build/).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SDTP_VENV:-.venv}
py=$venv/bin/python
started=$(date +%s)
step() { echo "setup: $* ($(( $(date +%s) - started )) s)"; }
pip() { "$py" -m pip "$@"; }

if [ ! -x "$py" ]; then
  step "creating the virtual environment $venv"
  python3 -m venv "$venv"
  pip install -q --upgrade pip
fi
if ! "$py" -c 'import torch' 2>/dev/null; then
  step "installing ${SDTP_TORCH:-torch==2.14.1} (the CUDA build is about 3 GB; a few minutes)"
  # Unquoted: SDTP_TORCH may carry pip options (an --index-url for a CPU-only torch, say).
  # shellcheck disable=SC2086
  pip install -q ${SDTP_TORCH:-torch==2.14.1}
fi
"$py" -c 'import setuptools, wheel, ninja, pybind11' 2>/dev/null || pip install -q setuptools wheel ninja pybind11

stamp_file=$venv/.sdtp-build-stamp
stamp=$( { find csrc setup.py pyproject.toml CMakeLists.txt -type f -print0 | sort -z | xargs -0 sha256sum; \
           echo "${SDTP_CUDA:-auto} ${TORCH_CUDA_ARCH_LIST:-} ${CUDA_HOME:-}"; \
           "$py" -c 'import torch; print(torch.__version__)'; } | sha256sum | cut -c1-16)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && "$venv/bin/sdtp" info >/dev/null 2>&1; then
  step "the native build is up to date (stamp $stamp): nothing to build"
else
  step "building the package and its native ops (CPU kernels; CUDA kernels too when nvcc is found: about 6 minutes \
with the dependencies, on 2 cores)"
  MAX_JOBS=${MAX_JOBS:-2} pip install -q --no-build-isolation -e ".[dev,data]"
  echo "$stamp" > "$stamp_file"
fi
"$venv/bin/sdtp" info
if [ "${SDTP_HARNESS:-1}" != 0 ] && [ "$venv" = .venv ]; then
  step "lm-evaluation-harness for the sdtp harness model and its tests (build/lm-eval; SDTP_HARNESS=0 skips)"
  bash scripts/setup_harness.sh
fi
step "done"
