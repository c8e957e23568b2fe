#!/usr/bin/env bash
# The GPU session's one call for the tensor-core GEMMs (kernels/gemm_tc.cu):
#
#     bash benchmarks/tc_device_run.sh [tests] [memcheck] [racecheck] [bench] [steps] [compile]
#     bash benchmarks/tc_device_run.sh wgmma-tests wgmma-memcheck wgmma-racecheck wgmma-bench
#
# (no argument: tests memcheck racecheck bench, in that order, within 10 minutes; steps and
# compile-check run only when named: steps times the wide network's training step with and without
# split-K, compile-check needs no GPU and runs in CI).  The wgmma-* steps are the Hopper
# GEMMs' (kernels/gemm_wgmma.cu, sm_90 only), run only when named; the four of them fit in one
# 10-minute call too.  Run from the repository root on the GPU machine.
# Writes under $OUT (default benchmarks/results/tc-<UTC date>):
#   env.txt            GPU, driver, package versions
#   gpu_tests.log      pytest tests/gpu/test_gemm_tc.py and test_gemm_tc_splitk.py (emulation, float64,
#                      bits, poison; split-K of the forward and input gradient)
#   memcheck.log       compute-sanitizer memcheck over benchmarks/tc_sanitize.py
#   racecheck.log      compute-sanitizer racecheck over the same
#   tc_bench.{log,json,md}  each GEMM against cuBLAS at the same precision (CUDA events), and the
#                      small-batch GEMMs with and without split-K
#   steps/tc_bench.{json,md}, tc_steps.log  with `steps`: the bench again with its step rows
#   compile_check.log  gpubp compile-check (NVRTC build, spills, HMMA in SASS)
#   wgmma_tests.log    pytest tests/gpu/test_gemm_wgmma.py (the Hopper GEMM: emulation, float64, bits)
#   wgmma_memcheck.log, wgmma_racecheck.log   compute-sanitizer over benchmarks/wgmma_sanitize.py
#   wgmma_bench.{log,json,md}  the Hopper GEMM against cuBLAS and gemm_tc (CUDA events)
#   summary.txt        exit status and seconds of each step
# Each step has its own time limit (the default steps fit in 10 minutes); a failing step does not
# stop the next.  The script exits 1 if any step failed.
set -u
source "$(dirname "$0")/device_steps.sh" tc "$@"
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests memcheck racecheck bench)

for s in "${STEPS[@]}"; do
    case "$s" in
        tests)     step tests 240 gpu_tests.log $PY -m pytest tests/gpu/test_gemm_tc.py tests/gpu/test_gemm_tc_splitk.py -m gpu -q -ra --durations=10 -p no:cacheprovider ;;
        memcheck)  sanitize memcheck 90 memcheck.log benchmarks/tc_sanitize.py ;;
        racecheck) sanitize racecheck 120 racecheck.log benchmarks/tc_sanitize.py ;;
        bench)     step bench 120 tc_bench.log $PY benchmarks/tc_bench.py --out "$OUT" ;;
        steps)     step steps 300 tc_steps.log $PY benchmarks/tc_bench.py --out "$OUT/steps" --step-rows ;;
        compile)   step compile 120 compile_check.log $PY -m gpubp compile-check ;;
        wgmma-tests)     step wgmma-tests 240 wgmma_tests.log $PY -m pytest tests/gpu/test_gemm_wgmma.py -m gpu -q -ra --durations=10 -p no:cacheprovider ;;
        wgmma-memcheck)  sanitize memcheck 90 wgmma_memcheck.log benchmarks/wgmma_sanitize.py ;;
        wgmma-racecheck) sanitize racecheck 120 wgmma_racecheck.log benchmarks/wgmma_sanitize.py ;;
        wgmma-bench)     step wgmma-bench 120 wgmma_bench.log $PY benchmarks/wgmma_bench.py --out "$OUT" ;;
        *)         echo "unknown step $s (tests memcheck racecheck bench steps compile wgmma-tests wgmma-memcheck wgmma-racecheck wgmma-bench)" | tee -a "$OUT/summary.txt"; failed=1 ;;
    esac
done
finish
