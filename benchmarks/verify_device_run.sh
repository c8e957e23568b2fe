#!/usr/bin/env bash
# The GPU session's first call: re-verify the default path (everything `gpubp` runs on CUDA without
# an opt-in) after the changes made since the last report under benchmarks/results/.
#
#     bash benchmarks/verify_device_run.sh [tests] [memcheck] [racecheck] [bench] [compile]
#
# (no argument: tests memcheck racecheck, in that order, within 8 minutes; bench (a --quick run of the
# GPU rows, up to 4 minutes) and compile-check (no GPU needed; it runs in CI) run only when named).  Run from the repository root on the GPU machine.
# Writes under $OUT (default benchmarks/results/verify-<UTC date>):
#   env.txt            GPU, driver, package versions, commit
#   gpu_tests.log      pytest -m gpu over the default-path GPU tests (GEMM and elementwise kernels,
#                      fused narrow runs, CUDA backend, whole networks, precision modes, scikit-learn,
#                      PyTorch module, distributed on one GPU); the opt-in kernels have their own scripts
#   memcheck.log       compute-sanitizer memcheck over benchmarks/sanitize_run.py (every loss, activation,
#                      dtype, the fused runs and the large tiles)
#   racecheck.log      compute-sanitizer racecheck over benchmarks/sanitize_run.py --large-only
#   bench.{log,json,md} gpubp bench --quick --no-cpu --no-opt-in (when named: the default path's peers and goals)
#   summary.txt        exit status and seconds of each step
# Each step has its own time limit; a failing step does not stop the next.  Exits 1 if any step failed.
set -u
source "$(dirname "$0")/device_steps.sh" verify "$@"
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests memcheck racecheck)

DEFAULT_PATH_TESTS=(tests/gpu/test_gemm.py tests/gpu/test_fused_mlp.py tests/gpu/test_cuda_backend.py
                    tests/gpu/test_cuda_training.py tests/gpu/test_precision_modes_gpu.py
                    tests/gpu/test_sklearn_cuda.py tests/gpu/test_torch_module_gpu.py
                    tests/gpu/test_distributed_gpu.py)

for s in "${STEPS[@]}"; do
    case "$s" in
        tests)     step tests 240 gpu_tests.log $PY -m pytest "${DEFAULT_PATH_TESTS[@]}" -m gpu -q -ra --maxfail=20 --durations=15 -p no:cacheprovider ;;
        memcheck)  sanitize memcheck 120 memcheck.log benchmarks/sanitize_run.py ;;
        racecheck) sanitize racecheck 90 racecheck.log benchmarks/sanitize_run.py --large-only ;;
        bench)     step bench 240 bench.log $PY -m gpubp bench --quick --no-cpu --no-opt-in --suite-seconds 200 --out "$OUT" ;;
        compile)   step compile 180 compile_check.log $PY -m gpubp compile-check ;;
        *)         echo "unknown step $s (tests memcheck racecheck bench compile)" | tee -a "$OUT/summary.txt"; failed=1 ;;
    esac
done
finish
