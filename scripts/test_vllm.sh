#!/usr/bin/env bash
# The vLLM plugin's tests (tests/vllm) in build/vllm-venv, against the package installed there: sets it up first
# (scripts/setup_vllm.sh; seconds when nothing changed). Extra arguments go to pytest; a test path among them
# (tests/vllm/test_x.py[::test]) runs instead of the whole folder.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm.sh
# -o pythonpath=: not the source tree, whose sdtp_kernels extension is built for .venv's torch.
paths=(tests/vllm)
for arg in "$@"; do
  case "$arg" in tests/*) paths=(); break ;; esac
done
build/vllm-venv/bin/pytest -q -o pythonpath= "${paths[@]}" "$@"
