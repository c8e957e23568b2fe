#!/usr/bin/env bash
# The GPU session's one call for the third float32 GEMM tile (kernels/gemm_f32.cu):
#
#     OUT=<folder> bash benchmarks/gemm_f32_device_run.sh [tests] [bench] [memcheck] [racecheck] [ncu] [sass]
#
# (no argument: tests bench memcheck racecheck ncu, in that order, within 10 minutes; sass needs
# no GPU and runs only when named).  Run from the repository root on the GPU machine (sm_80+).
# Writes under $OUT (default benchmarks/results/gemm-f32-<UTC date>):
#   env.txt              GPU, driver, package versions, commit
#   gpu_tests.log        pytest tests/gpu/test_gemm_f32.py (float64 parity, poison, bits, v1)
#   gemm_tiles.log       benchmarks/gemm_tiles.py: v1, pipelined and f32 tiles against cuBLAS SGEMM
#                        (CUPY_TF32=0) at 4096^3 and 8192x4096x4096, CUDA events, median
#   memcheck.log         compute-sanitizer memcheck over benchmarks/gemm_f32_sanitize.py
#   racecheck.log        compute-sanitizer racecheck over the same
#   ncu_sections.log     Nsight Compute sections (speed of light, scheduler, warp states, shared
#                        memory tables, occupancy) of the three gemm_f32 GEMMs at 4096^3
#   ncu_metrics.csv      the profile metrics: shared-load wavefronts and requests (wavefronts per
#                        request = their ratio), bank conflicts, MIO-throttle, barrier and
#                        scoreboard stalls per issue-active, issue-active, FMA-pipe use
#   sass_mix.log         the k-loops' instruction mix from SASS (benchmarks/gemm_f32_sass_mix.py)
#   summary.txt          exit status and seconds of each step
# Each step has its own time limit (the default steps fit in 10 minutes); a failing step does not
# stop the next.  The script exits 1 if any step failed.
set -u
source "$(dirname "$0")/device_steps.sh" gemm-f32 "$@"
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests bench memcheck racecheck ncu)

# the profile metrics, per kernel (ratios: wavefronts / requests = shared-load wavefronts per request)
METRICS=l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,smsp__inst_executed_op_shared_ld.sum,\
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,\
smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,\
smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,\
smsp__issue_active.avg.pct_of_peak_sustained_active,\
smsp__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,\
smsp__inst_executed.sum,gpu__time_duration.sum
# the profile driver runs fwd, bwd_data, bwd_weight once to warm up (skipped), then once each
NCU_SEL=(--kernel-name "regex:gemm_f32_(fwd|bwd)" --launch-skip 3 --launch-count 3)

for s in "${STEPS[@]}"; do
    case "$s" in
        tests)     step tests 180 gpu_tests.log $PY -m pytest tests/gpu/test_gemm_f32.py -m gpu -q -ra --durations=10 -p no:cacheprovider ;;
        bench)     step bench 100 gemm_tiles.log $PY benchmarks/gemm_tiles.py --reps 20 --warmup 5 ;;
        memcheck)  sanitize memcheck 75 memcheck.log benchmarks/gemm_f32_sanitize.py ;;
        racecheck) sanitize racecheck 90 racecheck.log benchmarks/gemm_f32_sanitize.py ;;
        ncu)       if [ -n "$NCU" ]; then
                       step ncu_sections 60 ncu_sections.log "$NCU" "${NCU_SEL[@]}" --section SpeedOfLight --section SchedulerStats \
                           --section WarpStateStats --section MemoryWorkloadAnalysis_Tables --section Occupancy --section LaunchStats \
                           $PY benchmarks/gemm_f32_profile.py --reps 1
                       step ncu_metrics 60 ncu_metrics.csv "$NCU" "${NCU_SEL[@]}" --metrics "$METRICS" --csv --page raw \
                           $PY benchmarks/gemm_f32_profile.py --reps 1
                   else echo "ncu skipped: not found" | tee -a "$OUT/summary.txt"; failed=1; fi ;;
        sass)      step sass 120 sass_mix.log $PY benchmarks/gemm_f32_sass_mix.py ;;
        *)         echo "unknown step $s (tests bench memcheck racecheck ncu sass)" | tee -a "$OUT/summary.txt"; failed=1 ;;
    esac
done
finish
