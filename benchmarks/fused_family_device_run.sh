#!/usr/bin/env bash
# The GPU session's one call for the fused-MLP kernel family (kernels/fused_mlp_family.cu):
#
#     bash benchmarks/fused_family_device_run.sh [tests] [memcheck] [racecheck] [bench] [compile]
#
# (no argument: tests memcheck racecheck bench, in that order, within 10 minutes; compile-check
# runs only when named: it needs no GPU and runs in CI).  Run from the repository root on the GPU machine.
# Writes under $OUT (default benchmarks/results/fused-family-<UTC date>):
#   env.txt                  GPU, driver, package versions
#   gpu_tests.log            pytest tests/gpu/test_fused_family.py (float64, cuda_fused, bf16 emulation,
#                            exact integers, poison, misaligned views, bits, small grids)
#   memcheck.log             compute-sanitizer memcheck over benchmarks/fused_family_sanitize.py
#   racecheck.log            compute-sanitizer racecheck over the same
#   fused_family_bench.{log,json,md}  w64x8, w128x8 at batch 2^18 and w64x5 at 2^20: the family (float32, tf32, bf16)
#                            against cuda_fused (float32, tf32) and torch (eager, eager tf32, autocast bf16)
#   compile_check.log        gpubp compile-check (NVRTC build, spills, FFMA / HMMA in SASS)
#   summary.txt              exit status and seconds of each step
# Each step has its own time limit; a failing step does not stop the next.  Exits 1 if any step failed.
set -u
source "$(dirname "$0")/device_steps.sh" fused-family "$@"
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests memcheck racecheck bench)

for s in "${STEPS[@]}"; do
    case "$s" in
        tests)     step tests 280 gpu_tests.log $PY -m pytest tests/gpu/test_fused_family.py -m gpu -q -ra --maxfail=10 --durations=10 -p no:cacheprovider ;;
        memcheck)  sanitize memcheck 70 memcheck.log benchmarks/fused_family_sanitize.py ;;
        racecheck) sanitize racecheck 120 racecheck.log benchmarks/fused_family_sanitize.py ;;
        bench)     step bench 100 fused_family_bench.log $PY benchmarks/fused_family_bench.py --out "$OUT" ;;
        compile)   step compile 180 compile_check.log $PY -m gpubp compile-check ;;
        *)         echo "unknown step $s (tests memcheck racecheck bench compile)" | tee -a "$OUT/summary.txt"; failed=1 ;;
    esac
done
finish
