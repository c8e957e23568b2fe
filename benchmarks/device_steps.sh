# Shared plumbing of the GPU sessions' one-call scripts (benchmarks/*_device_run.sh); sourced, not run:
#
#     source "$(dirname "$0")/device_steps.sh" NAME "$@"
#
# Sets OUT (default benchmarks/results/NAME-<UTC date>), PY, SAN (compute-sanitizer), NCU, STEPS (the
# script's arguments; empty when none were given: the script picks its defaults), writes
# $OUT/env.txt (GPU, driver, versions, tools, commit) and an empty $OUT/summary.txt, and defines
#   step NAME LIMIT LOG COMMAND...   run COMMAND under a time limit, its output in $OUT/LOG, one
#                                    line in summary.txt; a failing step sets failed=1, never stops
#   sanitize TOOL LIMIT LOG SCRIPT [ARG...]
#                                    compute-sanitizer --tool TOOL over `$PY SCRIPT ARG...` (memcheck or
#                                    racecheck), or a failed step when there is no compute-sanitizer
#   finish                           print where the results are, pack them into $PACK when it is set
#                                    (a .tgz: the device tool brings back at most 8 files from $OUT, two
#                                    folders deep), and exit 1 if any step failed
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-benchmarks/results/$1-$(date -u +%Y%m%d-%H%M)}"
shift
mkdir -p "$OUT"
STEPS=("$@")
PY="${PYTHON:-python3}"
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
NCU="$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
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

sanitize() {   # sanitize TOOL LIMIT LOG SCRIPT [ARG...]
    local tool=$1 limit=$2 log=$3 script=$4; shift 4
    if [ -z "$SAN" ]; then
        echo "$tool skipped: no compute-sanitizer" | tee -a "$OUT/summary.txt"
        failed=1
        return 0
    fi
    local extra=(--leak-check no)
    [ "$tool" = racecheck ] && extra=(--racecheck-report all)
    step "$tool" "$limit" "$log" "$SAN" --tool "$tool" "${extra[@]}" --error-exitcode 1 $PY "$script" "$@"
}

finish() {
    echo "results in $OUT"
    if [ -n "${PACK:-}" ]; then
        tar czf "$PACK" -C "$(dirname "$OUT")" "$(basename "$OUT")" && echo "packed into $PACK" || failed=1
    fi
    exit $failed
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    $PY -c "import sys, numpy, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'cudart', cupy.cuda.runtime.runtimeGetVersion(), 'driver', cupy.cuda.runtime.driverGetVersion())" 2>&1
    $PY -c "import torch; print('torch', torch.__version__)" 2>&1
    echo "compute-sanitizer: ${SAN:-not found}"
    echo "ncu: ${NCU:-not found} $([ -n "$NCU" ] && "$NCU" --version 2>&1 | tail -1)"
    git log -1 --format='commit %H %s' 2>/dev/null
} > "$OUT/env.txt"
