#!/usr/bin/env bash
# The GPU session's one call for the tensor-core GEMMs (kernels/gemm_tc.cu):
#
#     bash benchmarks/tc_device_run.sh [tests] [memcheck] [racecheck] [bench] [compile]
#
# (no argument: tests memcheck racecheck bench, in that order, within 10 minutes; compile-check
# runs only when named: it needs no GPU and runs in CI).  Run from the repository root on the GPU machine.
# Writes under $OUT (default benchmarks/results/tc-<UTC date>):
#   env.txt            GPU, driver, package versions
#   gpu_tests.log      pytest tests/gpu/test_gemm_tc.py (emulation, float64, bits, poison)
#   memcheck.log       compute-sanitizer memcheck over benchmarks/tc_sanitize.py
#   racecheck.log      compute-sanitizer racecheck over the same
#   tc_bench.{log,json,md}  each GEMM against cuBLAS at the same precision (CUDA events)
#   compile_check.log  gpubp compile-check (NVRTC build, spills, HMMA in SASS)
#   summary.txt        exit status and seconds of each step
# Each step has its own time limit (the default steps fit in 10 minutes); a failing step does not
# stop the next.  The script exits 1 if any step failed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/tc-$(date -u +%Y%m%d-%H%M)}"
mkdir -p "$OUT"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests memcheck racecheck bench)
PY="${PYTHON:-python3}"
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
: > "$OUT/summary.txt"
failed=0

step() {   # step NAME LIMIT_SECONDS LOG COMMAND...
    local name=$1 limit=$2 log=$3; shift 3
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0)) limit=$limit log=$log" | tee -a "$OUT/summary.txt"
    [ $rc -ne 0 ] && failed=1
    return 0
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    $PY -c "import sys, numpy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'cudart', cupy.cuda.runtime.runtimeGetVersion(), 'driver', cupy.cuda.runtime.driverGetVersion())" 2>&1
    $PY -c "import torch; print('torch', torch.__version__)" 2>&1
    echo "compute-sanitizer: ${SAN:-not found}"
    git log -1 --format='commit %H %s' 2>/dev/null
} > "$OUT/env.txt"

for s in "${STEPS[@]}"; do
    case "$s" in
        tests)     step tests 240 gpu_tests.log $PY -m pytest tests/gpu/test_gemm_tc.py -m gpu -q -ra --durations=10 -p no:cacheprovider ;;
        memcheck)  if [ -n "$SAN" ]; then step memcheck 90 memcheck.log "$SAN" --tool memcheck --leak-check no --error-exitcode 1 $PY benchmarks/tc_sanitize.py
                   else echo "memcheck skipped: no compute-sanitizer" | tee -a "$OUT/summary.txt"; failed=1; fi ;;
        racecheck) if [ -n "$SAN" ]; then step racecheck 120 racecheck.log "$SAN" --tool racecheck --racecheck-report all --error-exitcode 1 $PY benchmarks/tc_sanitize.py
                   else echo "racecheck skipped: no compute-sanitizer" | tee -a "$OUT/summary.txt"; failed=1; fi ;;
        bench)     step bench 120 tc_bench.log $PY benchmarks/tc_bench.py --out "$OUT" ;;
        compile)   step compile 120 compile_check.log $PY -m gpubp compile-check ;;
        *)         echo "unknown step $s (tests memcheck racecheck bench compile)" | tee -a "$OUT/summary.txt"; failed=1 ;;
    esac
done
echo "results in $OUT"
exit $failed
