#!/usr/bin/env bash
# Sets up from nothing: a virtual environment in .venv (or $SDTP_VENV) with torch, the package (native ops built
# here: CUDA kernels too when nvcc and a CUDA build of torch are present) and the development tools.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SDTP_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
"$venv/bin/python" -c 'import torch' 2>/dev/null || pip install -q "${SDTP_TORCH:-torch==2.14.1}"
pip install -q setuptools wheel ninja pybind11
MAX_JOBS=${MAX_JOBS:-2} pip install -q --no-build-isolation -e ".[dev]"
"$venv/bin/sdtp" info
