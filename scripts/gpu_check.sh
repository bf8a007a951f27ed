#!/usr/bin/env bash
# One command for the GPU machine (docs/ARCHITECTURE.md §8; one H200, ~10 min): builds the extension there for
# sm_90 (its time is recorded, to plan the budget), prints build_info, runs the error cases (each in its own process:
# a device-side assert would end the CUDA context), the CUDA tests under CUDA_LAUNCH_BLOCKING=1, compute-sanitizer
# memcheck, racecheck, initcheck and synccheck over scripts/sanitizer_smoke.py, the CUDA micro benchmarks (both
# saliency_score paths, select in the integration's configuration), the end-to-end prefill benchmark and the whole
# suite. Every step has its own timeout; a failing step is recorded and the script goes on.
#
#   bash scripts/gpu_check.sh             on the GPU machine
#   bash scripts/gpu_check.sh --dry-run   here, without a GPU: every step's script and Python code runs on the CPU
#                                          on toy sizes (the build, the sanitizers and the whole suite are skipped),
#                                          so that the check's own errors show without a GPU. CI runs it.
#
# Everything lands in $OUT (default ./gpu_out), at most a handful of files:
#   gpu_check.json  every step (status, seconds, output tail), build_info, build seconds, benchmark figures
#   gpu_check.log   the whole output
#   cuda_micro.json the micro benchmark figures on their own (also inside gpu_check.json)
#   e2e.json, e2e.png  bench/e2e.py (args from GPU_CHECK_E2E_ARGS)
#   pytest_cuda.xml / pytest.xml  JUnit reports
# The steps run in order of importance under one overall budget (GPU_CHECK_BUDGET seconds, default 540, so the
# whole run fits a 10-minute device command); a step gets min(its own timeout, what is left) and is recorded as
# "no-time" when too little is left.
# Env: OUT, PYTHON (default .venv/bin/python where it exists, else python3), GPU_CHECK_BUDGET,
#      GPU_CHECK_QUICK=1 (short benchmark),
#      GPU_CHECK_CC / GPU_CHECK_CXX (host compiler of the build; default /usr/bin/gcc and /usr/bin/g++),
#      GPU_CHECK_SKIP="step names" (environment build build_info native_errors cuobjdump error_cases pytest_cuda
#      memcheck initcheck racecheck synccheck sanitizer_smoke cuda_micro e2e pytest),
#      GPU_CHECK_E2E_ARGS (default: --contexts 4096 16384 32768 --new-tokens 32 --repeats 2 --profile-first)
set -u
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}  # scripts/setup.sh's venv here
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORK=$(mktemp -d)
STEPS="$WORK/steps.tsv"
: >"$STEPS"
LOG="$OUT/gpu_check.log"
: >"$LOG"
DEADLINE=$(($(date +%s) + ${GPU_CHECK_BUDGET:-540}))

if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda /usr/local/cuda-13.0; do [ -x "$d/bin/nvcc" ] && export CUDA_HOME=$d && break; done
fi
[ -n "${CUDA_HOME:-}" ] && export PATH="$CUDA_HOME/bin:$PATH"

skipped() { case " ${GPU_CHECK_SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }
# dry_run_skip NAME: in a dry run, records NAME as not run (it needs the GPU or the time a GPU machine has).
dry_run_skip() {
  [ "$DRY_RUN" = 1 ] || return 1
  echo "=== $1: not run in a dry run" | tee -a "$LOG"
  printf '%s\tdry-run\t0\t0\n' "$1" >>"$STEPS"
}
DEV=cuda
[ "$DRY_RUN" = 1 ] && DEV=cpu

# step NAME TIMEOUT_S COMMAND...: runs COMMAND under `timeout`, output to $WORK/NAME.log and the combined log.
step() {
  local name=$1 limit=$2
  shift 2
  if skipped "$name"; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >>"$STEPS"
    return 0
  fi
  local left=$((DEADLINE - $(date +%s) - 20))  # 20 s kept for the report
  if [ "$left" -lt 30 ]; then
    echo "=== $name: no time left" | tee -a "$LOG"
    printf '%s\tno-time\t0\t%s\n' "$name" "$limit" >>"$STEPS"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  local t0 t1 rc
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  t1=$(date +%s%N)
  cat "$WORK/$name.log" >>"$LOG"
  tail -n 5 "$WORK/$name.log"
  echo "=== $name: rc=$rc" | tee -a "$LOG"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(((t1 - t0) / 1000000))" "$limit" >>"$STEPS"
  return $rc
}

SANITIZER=$(command -v compute-sanitizer 2>/dev/null || true)
if [ -z "$SANITIZER" ]; then
  for c in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer /opt/nvidia/compute-sanitizer/compute-sanitizer; do
    [ -x "$c" ] && SANITIZER=$c && break
  done
fi

# The host compiler: the system's gcc / g++ where they exist (GPU_CHECK_CC / GPU_CHECK_CXX choose another). On one
# GPU image CC / CXX named a wrapper (/opt/gcc/bin) whose build carried its own copy of C++ runtime code and crashed
# the process the first time an op formatted an integer into an error; the system compiler's build passed everything.
BUILD_CC=${GPU_CHECK_CC:-$([ -x /usr/bin/gcc ] && echo /usr/bin/gcc || echo "${CC:-gcc}")}
BUILD_CXX=${GPU_CHECK_CXX:-$([ -x /usr/bin/g++ ] && echo /usr/bin/g++ || echo "${CXX:-g++}")}

step environment 60 bash -c "echo CC=$BUILD_CC CXX=$BUILD_CXX; nvidia-smi || true; echo
  $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda,
    torch.cuda.is_available() and torch.cuda.get_device_name())'
  echo; nvcc --version; echo; echo compute-sanitizer: ${SANITIZER:-not found}; nproc"

dry_run_skip build || step build 360 env CC="$BUILD_CC" CXX="$BUILD_CXX" SDTP_CUDA=1 \
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . -v
step build_info 60 "$PY" -c 'import json, sdtp_kernels; print(json.dumps(sdtp_kernels.build_info()))'
# The extension's own error messages (an integer formatted into a C++ exception) must reach Python as exceptions:
# a build whose C++ runtime differs from the one the process loads crashes here instead (docs/ARCHITECTURE.md §8).
step native_errors 60 "$PY" -c '
import torch, sdtp_kernels
try:
    sdtp_kernels.select_tokens(torch.zeros(1, 4), 1, width=-1)
except ValueError as e:
    assert "width" in str(e), e
    print("ok:", e)
else:
    raise SystemExit("no error raised")'
if command -v cuobjdump >/dev/null 2>&1; then
  step cuobjdump 30 bash -c "
    so=\$($PY -c 'import sdtp_kernels.ops as o, glob, os
print(glob.glob(os.path.join(os.path.dirname(o.__file__), \"_C*.so\"))[0])') &&
    cuobjdump --list-elf \"\$so\" && cuobjdump --list-ptx \"\$so\""
else
  printf 'cuobjdump\tnot-found\t0\t0\n' >>"$STEPS"
fi

# The errors that values on the device can cause (tests/ops/test_op_errors.py), each test in its own process.
# Every case runs, also after one fails (a crash in one says nothing of the others).
step error_cases 120 bash -c "
  ids=\$($PY -m pytest --collect-only -q -p no:cacheprovider tests/ops/test_op_errors.py -k device_values |
    grep '\\[$DEV-')
  [ -n \"\$ids\" ] || exit 1
  failed=0
  for id in \$ids; do
    if ! CUDA_LAUNCH_BLOCKING=1 $PY -m pytest -q -p no:cacheprovider \"\$id\"; then
      echo \"FAILED: \$id\"
      failed=\$((failed + 1))
    fi
  done
  echo \"\$failed failed\"
  [ \$failed = 0 ]"

# The CUDA tests alone (no -x: every CUDA failure shows), each launch checked as it returns.
# The harness is a test dependency of the package, not of its CUDA tests: a GPU machine without it skips that file.
ignore=()
"$PY" -c 'import lm_eval' >/dev/null 2>&1 || ignore+=(--ignore=tests/eval/test_lm_eval.py)
# Several processes where pytest-xdist is there: the CUDA tests are many small launches, bound by the host.
workers=()
"$PY" -c 'import xdist' >/dev/null 2>&1 && workers=(-n 8)
step pytest_cuda 180 env CUDA_LAUNCH_BLOCKING=1 "$PY" -m pytest -q -p no:cacheprovider -m cuda -rfE tests \
  "${ignore[@]}" "${workers[@]}" --junitxml="$OUT/pytest_cuda.xml"

# compute-sanitizer over a small run of every op and path. Without the caching allocator every tensor is its own
# allocation, so memcheck sees out-of-bounds accesses and initcheck reads of memory never written. memcheck and
# initcheck come before the micro benchmark (whose figures set the score-path rule), racecheck and synccheck after.
# initcheck runs the fused score path only: cuBLAS's Hopper GEMMs store their result through the tensor memory
# accelerator, which initcheck does not see, so every read of a GEMM result is reported (torch.sum over
# torch.mm(bf16, bf16, out_dtype=float32) is reported the same way); the other three tools cover the gemm path.
sanitize() {
  for tool in "$@"; do
    local paths=(fused gemm)
    [ "$tool" = initcheck ] && paths=(fused)
    if [ "$DRY_RUN" = 1 ]; then
      dry_run_skip "$tool"
    elif [ -n "$SANITIZER" ]; then
      step "$tool" 90 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$tool" --error-exitcode 99 \
        --print-limit 50 "$PY" scripts/sanitizer_smoke.py --score-paths "${paths[@]}"
    else
      printf '%s\tnot-found\t0\t0\n' "$tool" >>"$STEPS"
    fi
  done
}
[ "$DRY_RUN" = 1 ] && step sanitizer_smoke 120 "$PY" scripts/sanitizer_smoke.py --device cpu
sanitize memcheck initcheck

bench_args=("$OUT/cuda_micro.json" --device "$DEV")
[ "${GPU_CHECK_QUICK:-0}" = 1 ] && bench_args+=(--quick)
[ "$DRY_RUN" = 1 ] && bench_args+=(--tiny)
step cuda_micro 240 "$PY" bench/cuda_micro.py "${bench_args[@]}"

sanitize racecheck synccheck

# End-to-end prefill benchmark (bench/e2e.py), modest contexts by default so it fits the budget. Its H200 run took
# 51 s at 4K and 16K tokens; 32K, 32 new tokens, a first generate each for dense and SDTP at fresh prompt lengths
# (SDTP's took ~9 s there), and --profile-first (three more) add to that. e2e.json is rewritten after every
# context: a run cut short keeps what it measured.
e2e_args=${GPU_CHECK_E2E_ARGS:---contexts 4096 16384 32768 --new-tokens 32 --repeats 2 --profile-first}
[ "$DRY_RUN" = 1 ] && e2e_args="--preset cpu --contexts 256 --new-tokens 2 --repeats 1 --profile-first"
# shellcheck disable=SC2086
step e2e 280 "$PY" bench/e2e.py --device "$DEV" $e2e_args --out "$OUT/e2e.json" --plot "$OUT/e2e.png"

# The whole suite last (CI runs it without a GPU anyway), in whatever time is left: best effort, so running out of
# time there is recorded but does not fail the check; a failing test does.
dry_run_skip pytest || step pytest 420 "$PY" -m pytest -x -q -p no:cacheprovider -rfE tests "${ignore[@]}" \
  --junitxml="$OUT/pytest.xml"

# One JSON with everything.
"$PY" - "$STEPS" "$WORK" "$OUT" "$DRY_RUN" <<'PY'
import json, os, re, socket, sys, time

steps_file, work, out, dry_run = sys.argv[1:5]
report = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "dry_run": dry_run == "1",
          "steps": {}}
for line in open(steps_file):
    name, rc, seconds, limit = line.rstrip("\n").split("\t")
    log = os.path.join(work, name + ".log")
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    if rc in ("skipped", "not-found", "no-time", "dry-run"):
        status = rc
    else:
        status = "ok" if rc == "0" else ("timeout" if rc in ("124", "137") else "failed")
    entry = {"status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
             "seconds": int(seconds or 0) / 1000, "timeout_s": int(limit), "output_tail": text[-6000:]}
    if name == "build":
        report["build_seconds"] = entry["seconds"]
    if name in ("memcheck", "racecheck", "initcheck", "synccheck"):
        m = re.search(r"ERROR SUMMARY: (\d+) error", text)
        entry["sanitizer_errors"] = int(m.group(1)) if m else None
        m = re.search(r"RACECHECK SUMMARY: (\d+) hazard", text)
        if m:
            entry["race_hazards"] = int(m.group(1))
    if name.startswith("pytest"):
        m = re.findall(r"^=*\s*(.*(?:passed|failed|error|skipped).*?)\s*=*$", text, re.M)
        entry["summary"] = m[-1] if m else None
    if name == "build_info" and status == "ok":
        try:
            report["build_info"] = json.loads(text.strip().splitlines()[-1])
        except Exception:
            pass
    report["steps"][name] = entry
for key in ("cuda_micro", "e2e"):
    path = os.path.join(out, key + ".json")
    if os.path.exists(path):
        try:
            report[key] = json.load(open(path))
        except Exception as e:
            report[key] = {"error": f"unreadable: {e}"}
# A dry run has no GPU tools to find; on the GPU machine a missing one is a failure. The whole suite is best effort.
fine = ("ok", "skipped", "dry-run") + (("not-found",) if report["dry_run"] else ())
report["best_effort_steps"] = {"pytest": ("timeout", "no-time")}
report["all_ok"] = all(s["status"] in fine + report["best_effort_steps"].get(name, ())
                       for name, s in report["steps"].items())
with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(report, f, indent=2)
print(json.dumps({k: v["status"] for k, v in report["steps"].items()}, indent=1))
print("all_ok:", report["all_ok"], "->", os.path.join(out, "gpu_check.json"))
sys.exit(0 if report["all_ok"] else 1)
PY
rc=$?
rm -rf "$WORK"
exit $rc
