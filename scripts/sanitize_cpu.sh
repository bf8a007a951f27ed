#!/usr/bin/env bash
# The CPU kernels under AddressSanitizer and UndefinedBehaviorSanitizer: builds sdtp_kernels._C from csrc/ (CPU
# sources only) with -fsanitize=address,undefined into its own folder, puts it in a copy of the package there, and
# runs the op tests and property tests against it. Any report fails the run. Needs scripts/setup.sh first.
#   scripts/sanitize_cpu.sh [WORK_DIR]      (default build/sanitize)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(realpath -m "${1:-build/sanitize}")
mkdir -p "$work"
# The sanitizer runtimes must come first in every process that loads the build (here and in the tests); Python's own
# allocations are not leaks worth reporting.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "== sanitized CPU build in $work (a few minutes)"
.venv/bin/python - "$work" <<'PY'
import glob, os, shutil, sys
from torch.utils.cpp_extension import load

work = sys.argv[1]
flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-fopenmp"]
sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
os.makedirs(os.path.join(work, "obj"), exist_ok=True)
module = load("_C", sources, extra_cflags=flags, extra_ldflags=["-fsanitize=address,undefined", "-fopenmp"],
              build_directory=os.path.join(work, "obj"), verbose=False)
# A tree of its own (package, references, op tests): run from there, nothing can import the regular build.
tree = os.path.join(work, "pkg")
shutil.rmtree(tree, ignore_errors=True)
skip = shutil.ignore_patterns("*.so", "__pycache__")
for name in ("sdtp_kernels", "python_ref", "tests/ops"):
    shutil.copytree(name, os.path.join(tree, name), ignore=skip)
with open(os.path.join(tree, "tests", "ops", "test_sanitized_build.py"), "w") as f:  # runs first: what is tested
    f.write("import sys, sdtp_kernels.ops\n\n\ndef test_the_sanitized_build_is_the_one_tested():\n"
            f"    assert sdtp_kernels.ops.load_library().__file__.startswith({tree!r})\n")
shutil.copy("tests/conftest.py", os.path.join(tree, "tests", "conftest.py"))
# Its own pytest.ini: pytest must not find the project's (whose pythonpath would put the regular build first).
with open(os.path.join(tree, "pytest.ini"), "w") as f:
    f.write("[pytest]\nmarkers =\n    cuda: needs a CUDA device\n    slow: slow\n")
shutil.copy(module.__file__, os.path.join(tree, "sdtp_kernels", os.path.basename(module.__file__)))
print("built", module.__file__)
PY
echo "== op tests and property tests under ASan + UBSan"
python=$PWD/.venv/bin/python
cd "$work/pkg"
# --capture=sys: a sanitizer report goes to file descriptor 2, which pytest must not swallow.
"$python" -m pytest -q -p no:cacheprovider --capture=sys tests/ops/test_sanitized_build.py tests/ops
"$python" -c '
import sys, sdtp_kernels.ops
library = sdtp_kernels.ops.load_library().__file__
assert library.startswith(sys.argv[1]), library
print("the op tests ran against", library)' "$work/pkg"
