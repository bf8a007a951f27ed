#!/usr/bin/env bash
# Installs lm-evaluation-harness (the version the `sdtp` harness model is tested with) into build/lm-eval, beside
# .venv, once; later runs find it and return. Its shared dependencies are pinned to .venv's versions, so that
# putting build/lm-eval on PYTHONPATH shadows nothing with another version; when .venv's versions change (another
# torch, a newer transformers), it installs again. Needs scripts/setup.sh first.
#   scripts/setup_harness.sh            then: PYTHONPATH=build/lm-eval .venv/bin/python -m sdtp_kernels.lm_eval ...
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${SDTP_LM_EVAL:-lm-eval==0.4.13}
target=build/lm-eval
mkdir -p build
.venv/bin/python -m pip freeze --exclude-editable | grep -v '^sdtp' > build/venv-constraints.txt
stamp="$spec, .venv $(sha256sum < build/venv-constraints.txt | cut -c1-16)"
if [ -f "$target/.installed" ] && [ "$(cat "$target/.installed")" = "$stamp" ]; then
  echo "setup_harness: $spec is installed in $target"
  exit 0
fi
echo "setup_harness: installing $spec into $target (about 50 s, 750 MB)"
rm -rf "$target"
# pip's resolver warnings about old pytablewriter releases are noise: kept in a log, shown only on failure.
.venv/bin/python -m pip install -q --target "$target" -c build/venv-constraints.txt "$spec" \
    2> build/lm-eval-install.log || { cat build/lm-eval-install.log; exit 1; }
# The harness's Hugging Face model needs accelerate (and psutil); their other needs, torch first, are .venv's.
.venv/bin/python -m pip install -q --target "$target" --no-deps "accelerate>=0.26" psutil \
    2>> build/lm-eval-install.log || { cat build/lm-eval-install.log; exit 1; }
echo "$stamp" > "$target/.installed"
