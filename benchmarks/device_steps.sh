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
#   time_left                        prints the seconds a step may still take before DEADLINE
#   not_run NAME LOG WHY             a line in summary.txt for a step that was not run (rc=skipped)
#   finish                           print where the results are, pack them into $PACK when it is set
#                                    (a .tgz: the device tool brings back at most 8 files from $OUT, two
#                                    folders deep), and exit 1 if any step failed or was not run
#
# DEADLINE (optional, seconds since the epoch, `$(( $(date +%s) + 540 ))`): no step runs past it.  A
# step's limit is cut to the time left (less RESERVE_S, kept for packing; its summary line then says
# cut_from=ITS_LIMIT); a step with under MIN_STEP_S seconds left is not run, and its line says
# rc=skipped.  A step run in the background (`step ... &`, then `wait`) writes its line as usual;
# finish judges the run by the summary lines, so a background step's failure counts too.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-benchmarks/results/$1-$(date -u +%Y%m%d-%H%M)}"
shift
mkdir -p "$OUT"
STEPS=("$@")
PY="${PYTHON:-python3}"
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
NCU="$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
DEADLINE="${DEADLINE:-}"
MIN_STEP_S="${MIN_STEP_S:-20}"
RESERVE_S="${RESERVE_S:-10}"
: > "$OUT/summary.txt"
failed=0

# The test plugins the device machine lacks (it has no network): the wheels in WHEELS (default .whl/,
# downloaded here by benchmarks/device_wheels.sh; the device call names .whl in `carry`) go into a folder
# on PYTHONPATH, so pytest -n and --timeout work there (gpu_session_run.sh uses them only where they import).
WHEELS="${WHEELS:-.whl}"
PLUGINS="${PLUGINS:-/tmp/gpubp-test-plugins}"
if [ -d "$WHEELS" ] && ! $PY -c "import xdist, pytest_timeout" > /dev/null 2>&1; then
    if timeout 60 $PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$PLUGINS" \
            pytest-xdist execnet pytest-timeout > "$OUT/plugins.log" 2>&1; then
        export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PLUGINS"
    fi
fi

time_left() {   # seconds before DEADLINE less RESERVE_S (a day when there is no deadline)
    if [ -z "$DEADLINE" ]; then echo 86400; else echo $((DEADLINE - $(date +%s) - RESERVE_S)); fi
}

not_run() {   # not_run NAME LOG WHY
    echo "$1 rc=skipped seconds=0 limit=0 log=$2 ($3)" | tee -a "$OUT/summary.txt"
    failed=1
}

step() {   # step NAME LIMIT_SECONDS LOG COMMAND...
    local name=$1 limit=$2 log=$3; shift 3
    local left cut=""
    left=$(time_left)
    if [ "$left" -lt "$MIN_STEP_S" ]; then
        not_run "$name" "$log" "out of time: ${left}s left before DEADLINE"
        return 0
    fi
    if [ "$left" -lt "$limit" ]; then cut=" cut_from=$limit"; limit=$left; fi
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0)) limit=$limit$cut log=$log" | tee -a "$OUT/summary.txt"
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
    wait   # steps left in the background
    grep -qv ' rc=0 ' "$OUT/summary.txt" && failed=1
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
