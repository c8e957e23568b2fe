#!/usr/bin/env bash
# The one call of a GPU task: a task is lent 15 minutes of device time in all (the machine's start,
# each call, idle time and the give-back included), which leaves room for one call of about 9
# minutes and, on the still-warm machine, a short rerun.  This script spends its call in the order
# the developers' guide sets: re-verify every GPU kernel (default path and opt-in), then the
# sanitizers, then measure the goals.
#
#     PACK=$OUT/session.tgz OUT=/tmp/session bash benchmarks/gpu_session_run.sh [tests] [memcheck] [racecheck] [bench]
#
# (no argument: all four, in that order; PACK is named before OUT so that it lands in the device
# tool's $OUT and comes back.)  Run from the repository root on the GPU machine, PYTHONPATH=.
# The whole run ends by DEADLINE (seconds since the epoch; default: SESSION_S seconds, 540, after
# the start: the steps' limits, 240 + 100 + 100 and the bench's least 90, and the 10 s kept for packing): each step's limit is cut to the time left and a step with too little left is not run
# (device_steps.sh).  Writes under $OUT (default benchmarks/results/session-<UTC date>):
#   env.txt              GPU, driver, package versions, tools, commit
#   gpu_tests.log        pytest -m gpu over every file in tests/gpu (the default path and every opt-in
#                        kernel: gemm_tc and its split-K, gemm_wgmma on sm_90, the fused family,
#                        gemm_f32), on 8 pytest-xdist workers when xdist is there (the machine's 16
#                        cores build the cold kernel cache and the float64 references in parallel)
#   gpu_tests.xml        the same as JUnit XML (every test's outcome and seconds)
#   memcheck_*.log       compute-sanitizer memcheck over each sanitize script, the five at once:
#                        default (benchmarks/sanitize_run.py), tc, wgmma, family, f32
#   racecheck_*.log      compute-sanitizer racecheck over the same (the default path's large
#                        kernels only: --large-only), the five at once
#   bench/               gpubp bench --only goals --no-cpu --row-seconds 0.3 in the time left:
#                        bench.{log,json,md,png}
#   summary.txt          one line per step: exit status, seconds, limit (rc=skipped: out of time)
# A failing step does not stop the next.  Exits 1 if any step failed or was not run.
set -u
SESSION_S="${SESSION_S:-540}"
export DEADLINE="${DEADLINE:-$(( $(date +%s) + SESSION_S ))}"
source "$(dirname "$0")/device_steps.sh" session "$@"
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests memcheck racecheck bench)

# the sanitize scripts, by the name their logs carry (each builds and runs its kernels at awkward shapes)
SANITIZE=(default:benchmarks/sanitize_run.py tc:benchmarks/tc_sanitize.py wgmma:benchmarks/wgmma_sanitize.py
          family:benchmarks/fused_family_sanitize.py f32:benchmarks/gemm_f32_sanitize.py)

pytest_speedups() {   # 8 xdist workers and a per-test limit, where the plugins are there
    if $PY -c "import xdist" > /dev/null 2>&1; then echo "-n 8 --dist load"; fi
    if $PY -c "import pytest_timeout" > /dev/null 2>&1; then echo "--timeout 150"; fi
}

sanitize_all() {   # sanitize_all TOOL LIMIT: TOOL over every sanitize script at once
    local tool=$1 limit=$2 entry name script extra
    for entry in "${SANITIZE[@]}"; do
        name=${entry%%:*} script=${entry#*:} extra=()
        [ "$tool" = racecheck ] && [ "$name" = default ] && extra=(--large-only)
        sanitize "$tool" "$limit" "${tool}_$name.log" "$script" "${extra[@]}" &
    done
    wait
}

for s in "${STEPS[@]}"; do
    case "$s" in
        tests)     # shellcheck disable=SC2046  (the plugin arguments split on purpose)
                   step tests 240 gpu_tests.log $PY -m pytest tests/gpu -m gpu $(pytest_speedups) -q -ra --maxfail=50 \
                       --durations=25 -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" ;;
        memcheck)  sanitize_all memcheck 100 ;;
        racecheck) sanitize_all racecheck 100 ;;
        bench)     left=$(time_left)   # the suite's own budget ends 30 s before the step's limit
                   if [ "$left" -ge 90 ]; then   # 0.3 s timed per row: the ~60 goal rows fit in minutes
                       step bench "$left" bench.log $PY -m gpubp bench --only goals --no-cpu --row-seconds 0.3 \
                           --suite-seconds $((left - 30)) --out "$OUT/bench"
                   else
                       not_run bench bench.log "out of time: ${left}s left, the goals' rows need 90"
                   fi ;;
        *)         echo "unknown step $s (tests memcheck racecheck bench)" | tee -a "$OUT/summary.txt"; failed=1 ;;
    esac
done

# what the reply shows (its last 12,000 characters): every step, the failures, the goals
echo "== summary"; cat "$OUT/summary.txt"
[ -f "$OUT/gpu_tests.log" ] && { echo "== tests"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" | tail -40; }
[ -f "$OUT/bench/bench.md" ] && { echo "== goals"; grep -E "PASS|MISS|NOT MEASURED" "$OUT/bench/bench.md" | head -40; }
finish
