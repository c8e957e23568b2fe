"""Time each tensor-core GEMM of gemm_tc.cu against cuBLAS at the same precision (GPU only).

    python3 benchmarks/tc_bench.py --out DIR [--reps 20]

Shapes (M batch rows, N outputs, K inputs): the forward GEMM + bias + ReLU at 8192 x 4096 x
4096 (the issue's 75%-of-cuBLAS goal), and the three GEMMs of a 4096-wide layer at batch 4096,
1024 and 256.  Per (kernel, mode, shape): the median of `reps` CUDA-event timings after
warm-up, TFLOP/s (2 M N K), and the ratio to cuBLAS through PyTorch on the same operand
layout (A @ W.T, D @ W, D.T @ A):
    tf32   -> torch float32 with allow_tf32 = True (cuBLAS TF32)
    bf16   -> torch bfloat16 operands (cuBLAS BF16, float32 accumulation; bf16 output)
    3xtf32 -> torch float32 with allow_tf32 = False (cuBLAS SGEMM: the speed 3xTF32 must beat)
and gpubp's own float32 GEMM (cuda_gemm) for reference.  cuBLAS runs without our fused
epilogues (bias, activation, g', db), so the ratios slightly favour it.  Inputs are rotated
between two copies so that repeated runs do not all hit L2.  The operands and the calls (gpubp's
and cuBLAS's) are those of `gpubp bench`'s kernel rows (`gpubp.bench.gemms`).
Writes DIR/tc_bench.json and DIR/tc_bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # this checkout's gpubp

import cupy
import torch

from gpubp.backends import cuda_device
from gpubp.backends import cuda_gemm_tc as tc
from gpubp.bench import gemms

SHAPES = [("fwd", 8192, 4096, 4096)] + [(k, b, 4096, 4096) for b in (4096, 1024, 256)
                                         for k in ("fwd", "bwd_data", "bwd_weight")]
#: cuBLAS at each mode's precision (3xTF32 promises float32 accuracy: SGEMM)
CUBLAS = {"tf32": "cublas-tf32", "bf16": "cublas-bf16", "3xtf32": "cublas-sgemm"}


def _time(fn, reps, events, elapsed):
    start, stop = events()
    for i in range(3):
        fn(i)
    times = []
    for i in range(reps):
        start.record()
        fn(i)
        stop.record()
        stop.synchronize()
        times.append(elapsed(start, stop))
    return statistics.median(times)


def _time_cupy(fn, reps):
    return _time(fn, reps, lambda: (cupy.cuda.Event(), cupy.cuda.Event()), cupy.cuda.get_elapsed_time)


def _time_torch(fn, reps):
    return _time(fn, reps, lambda: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)),
                 lambda a, b: a.elapsed_time(b))


def _rotating(fn, sets):
    return lambda i: fn(*sets[i % len(sets)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cuda_device.load_kernels({tc.SPECS[0]: tc.SPECS[0].name_expressions})   # one compile, as the tests
    rows = []
    for kind, M, N, K in SHAPES:
        ops = gemms.GemmOperands(gemms.random_sets(M, N, K, n_sets=2))
        flop = 2.0 * M * N * K
        ms32 = _time_cupy(_rotating(gemms.gpubp_gemm("gpubp-fused", kind, ops), ops.sets), args.reps)
        for mode in ("tf32", "bf16", "3xtf32"):
            ms = _time_cupy(_rotating(gemms.gpubp_gemm(f"gpubp-tc-{mode}", kind, ops), ops.sets), args.reps)
            gemm = gemms.CublasGemm(CUBLAS[mode], kind, ops, torch_sgemm=True)   # all through torch
            with gemm:
                ref = _time_torch(_rotating(gemm.call, gemm.inputs), args.reps)
            gemm.release()
            cublas_name = {"tf32": "cuBLAS TF32", "bf16": "cuBLAS BF16", "3xtf32": "cuBLAS SGEMM"}[mode]
            rows.append(dict(kernel=kind, M=M, N=N, K=K, mode=mode, ms=ms, tflops=flop / ms / 1e9,
                             cublas=cublas_name, cublas_ms=ref, cublas_tflops=flop / ref / 1e9,
                             ratio=ref / ms, gpubp_float32_ms=ms32))
            print(f"{kind:10s} {M:5d}x{N}x{K} {mode:6s} {ms:8.3f} ms {flop / ms / 1e9:7.1f} TFLOP/s  "
                  f"{cublas_name} {ref:8.3f} ms  ratio {ref / ms:5.2f}  (gpubp float32 {ms32:.3f} ms)", flush=True)
        ops.release()
        del ops
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    dev = cupy.cuda.runtime.getDeviceProperties(cuda_device.device_id())["name"].decode()
    with open(os.path.join(args.out, "tc_bench.json"), "w") as f:
        json.dump(dict(device=dev, reps=args.reps, rows=rows), f, indent=1)
    lines = [f"# Tensor-core GEMMs vs cuBLAS on {dev} (median of {args.reps}, CUDA events)", "",
             "| kernel | M x N x K | mode | ms | TFLOP/s | cuBLAS | cuBLAS ms | ratio (cuBLAS ms / ours) "
             "| gpubp float32 ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['M']}x{r['N']}x{r['K']} | {r['mode']} | {r['ms']:.3f} | "
                     f"{r['tflops']:.1f} | {r['cublas']} | {r['cublas_ms']:.3f} | {r['ratio']:.2f} | "
                     f"{r['gpubp_float32_ms']:.3f} |")
    with open(os.path.join(args.out, "tc_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
