#!/usr/bin/env bash
# What a user gets from `pip install .` (not editable): builds a wheel of the tracked tree (CPU kernels only, to keep
# it quick), installs it into a fresh virtual environment that borrows the dependencies of .venv, and runs
# `sdtp demo` from another folder on the reference model that installs with the package.
#   scripts/check_install.sh [WORK_DIR]     (default build/install-check; needs scripts/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(realpath -m "${1:-build/install-check}")
rm -rf "$work" && mkdir -p "$work/src" "$work/run"
git ls-files -z | xargs -0 cp --parents -t "$work/src"   # the tracked tree, as a clean clone has it
echo "== wheel (CPU kernels)"
SDTP_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation \
    -w "$work/dist" "$work/src"
echo "== fresh venv"
python3 -m venv "$work/venv"
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The dependencies (torch, transformers, ...) of .venv, but none of its .pth hooks: not its editable sdtp_kernels.
.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/borrowed-deps.pth"
"$work/venv/bin/python" -m pip install -q --no-deps --no-index "$work"/dist/sdtp_kernels-*.whl
cd "$work/run"
"$work/venv/bin/python" - "$root" <<'PY'
import importlib.util, os, sys
import sdtp_kernels, sdtp_kernels.models
root = sys.argv[1]
assert not sdtp_kernels.__file__.startswith(os.path.join(root, "sdtp_kernels")), \
    f"imported the source tree: {sdtp_kernels.__file__}"
assert importlib.util.find_spec("python_ref") is None, "python_ref must not be installed"
print("installed at", sdtp_kernels.__file__, "; reference model at", sdtp_kernels.models.reference_model())
PY
echo "== sdtp demo from $PWD"
"$work/venv/bin/sdtp" demo --batch 4 --new-tokens 4 --repeats 1
test -s "$work/run/sdtp-demo/demo.png"
echo "install check OK"
