#!/usr/bin/env bash
# The GPU session's one call for `gpubp bench` (gpubp.bench: every peer, ceiling, GEMM row and goal):
#
#     bash benchmarks/bench_device_run.sh [full | quick | goals | sanity]
#
# (no argument: full).  Name one suite per call: each fits the 10-minute limit of one command
# on its own (full: the suite's 410 s budget, the goals' rows first and torch.compile last; quick:
# 200 s, no torch.compile; goals: only the rows the goals judge, in the full mode's budget;
# sanity: the bench's CPU tests, tests/test_bench.py, in a minute).  Run from the repository root
# on the GPU machine.  Writes under $OUT (default benchmarks/results/bench-<UTC date>):
#   env.txt                      GPU, driver, package versions
#   bench.log                    the console output of the suite
#   bench.json, bench.md, bench.png  every row, the goals (PASS / MISS / NOT MEASURED), the plot
#   sanity.log                   pytest tests/test_bench.py
#   summary.txt                  exit status and seconds of each step
# The script exits 1 if any step failed.
set -u
source "$(dirname "$0")/device_steps.sh" bench "$@"
[ ${#STEPS[@]} -eq 0 ] && STEPS=(full)

for s in "${STEPS[@]}"; do
    case "$s" in
        full)   step full 560 bench.log $PY -m gpubp bench --out "$OUT" ;;
        quick)  step quick 400 bench.log $PY -m gpubp bench --quick --out "$OUT" ;;
        goals)  step goals 560 bench.log $PY -m gpubp bench --only goals --out "$OUT" ;;
        sanity) step sanity 120 sanity.log $PY -m pytest tests/test_bench.py -q -ra -p no:cacheprovider ;;
        *)      echo "unknown step $s (full quick goals sanity)" | tee -a "$OUT/summary.txt"; failed=1 ;;
    esac
done
finish
