"""Time the Hopper forward GEMM (kernels/gemm_wgmma.cu) against cuBLAS at the same precision (sm_90 only).

    python3 benchmarks/wgmma_bench.py --out DIR [--reps 20]

Shapes (M batch rows, N outputs, K inputs): 8192 x 4096 x 4096 (the issue's goal: forward GEMM +
bias + ReLU at 75% of cuBLAS or better) and a 4096-wide layer at batch 4096, 1024 and 256.  Per
(mode, shape), medians of `reps` CUDA-event timings after warm-up, on random operands rotated
between two copies (so that repetitions do not all hit L2):
  - `call`: `gemm_fwd` as the backend runs it, with a plan scratch: the two operand copies
    (rounding to tf32 / bf16) and the GEMM;
  - `kernel bn128` / `kernel bn256`: the GEMM kernel alone on ready copies (`launch_fwd`);
  - gemm_tc's mma.sync forward of the same mode;
  - cuBLAS through PyTorch: tf32 -> float32 with allow_tf32; bf16 -> bfloat16 operands made
    beforehand (bf16 output).  cuBLAS has no bias or activation epilogue here.
The input gradient (delta @ W, ReLU's g') of the 4096-wide layer at batch 4096, 1024 and 256:
`gemm_bwd_data` as called (copies of delta and of W transposed, and the GEMM), gemm_tc's, and
cuBLAS's delta @ W.
Ratios are cuBLAS ms / ours.  Writes DIR/wgmma_bench.json and DIR/wgmma_bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import cupy
import numpy as np
import torch

from gpubp.activations import ACT_CODES
from gpubp.backends import cubin_cache, cuda_device
from gpubp.backends import cuda_gemm_tc as tc
from gpubp.backends import cuda_gemm_wgmma as wg
from gpubp.backends.plan import Scratch

SHAPES = [(8192, 4096, 4096), (4096, 4096, 4096), (1024, 4096, 4096), (256, 4096, 4096)]
RELU = ACT_CODES["relu"]


class _Backend:
    @staticmethod
    def empty(shape, dtype):
        return cupy.empty(shape, dtype)


def _time(fn, reps, events):
    start, stop = events()
    for i in range(3):
        fn(i)
    times = []
    for i in range(reps):
        start.record()
        fn(i)
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) if isinstance(start, cupy.cuda.Event)
                     else start.elapsed_time(stop))
    return statistics.median(times)


def _cupy_events():
    return cupy.cuda.Event(), cupy.cuda.Event()


def _torch_events():
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if cuda_device.compute_capability() != 90:
        raise SystemExit("the wgmma kernels need compute capability 9.0")
    cubin_cache.load(wg.SPECS[0])
    cuda_device.load_kernels({tc.SPECS[0]: [tc.fwd_name(m, RELU) for m in wg.PREC_CODES]})
    rows = []
    for M, N, K in SHAPES:
        rs = cupy.random.RandomState(M + N + K)
        A = [rs.standard_normal((M, K), dtype=np.float32) for _ in range(2)]
        W = [rs.standard_normal((N, K), dtype=np.float32) for _ in range(2)]
        b = rs.standard_normal((N,), dtype=np.float32)
        out = cupy.empty((M, N), np.float32)
        flop = 2.0 * M * N * K
        for mode in wg.PREC_CODES:
            scratch = Scratch(_Backend())
            res = dict(M=M, N=N, K=K, mode=mode)
            res["call_ms"] = _time(lambda i: wg.gemm_fwd(A[i % 2], W[i % 2], b, RELU, out, precision=mode,
                                                         scratch=scratch), args.reps, _cupy_events)
            copies = [(wg._copy(A[j], mode, f"A{j}", scratch), wg._copy(W[j], mode, f"W{j}", scratch))
                      for j in range(2)]
            for bn in wg.BNS:
                res[f"kernel_bn{bn}_ms"] = _time(
                    lambda i: wg.launch_fwd(copies[i % 2][0], copies[i % 2][1], K, b, RELU, out, None, mode,
                                            scratch, bn), args.reps, _cupy_events)
            res["gemm_tc_ms"] = _time(lambda i: tc.gemm_fwd(A[i % 2], W[i % 2], b, RELU, out, precision=mode),
                                      args.reps, _cupy_events)
            dtype = torch.bfloat16 if mode == "bf16" else torch.float32
            tA = [torch.from_dlpack(x).to(dtype) for x in A]
            tW = [torch.from_dlpack(x).to(dtype) for x in W]
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            res["cublas_ms"] = _time(lambda i: tA[i % 2] @ tW[i % 2].T, args.reps, _torch_events)
            torch.backends.cuda.matmul.allow_tf32 = False
            best = min(res["kernel_bn128_ms"], res["kernel_bn256_ms"])
            res.update(call_ratio=res["cublas_ms"] / res["call_ms"], kernel_ratio=res["cublas_ms"] / best,
                       gemm_tc_ratio=res["cublas_ms"] / res["gemm_tc_ms"],
                       kernel_tflops=flop / best / 1e9, cublas_tflops=flop / res["cublas_ms"] / 1e9)
            rows.append(res)
            print(f"{M:5d}x{N}x{K} {mode:5s} call {res['call_ms']:.3f} ms  kernel bn128 "
                  f"{res['kernel_bn128_ms']:.3f} bn256 {res['kernel_bn256_ms']:.3f} ms "
                  f"({res['kernel_tflops']:.0f} TFLOP/s)  gemm_tc {res['gemm_tc_ms']:.3f}  cuBLAS "
                  f"{res['cublas_ms']:.3f} ms ({res['cublas_tflops']:.0f} TFLOP/s)  ratios call "
                  f"{res['call_ratio']:.2f} kernel {res['kernel_ratio']:.2f} gemm_tc {res['gemm_tc_ratio']:.2f}",
                  flush=True)
            del tA, tW, copies, scratch
        del A, W
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    bwd_rows = []
    cuda_device.load_kernels({tc.SPECS[0]: [tc.bwd_data_name(m, RELU) for m in wg.PREC_CODES]})
    for M, N, K in SHAPES[1:]:
        rs = cupy.random.RandomState(M + 7)
        D = [rs.standard_normal((M, N), dtype=np.float32) for _ in range(2)]
        W = [rs.standard_normal((N, K), dtype=np.float32) for _ in range(2)]
        Ap = rs.standard_normal((M, K), dtype=np.float32)
        out = cupy.empty((M, K), np.float32)
        flop = 2.0 * M * N * K
        for mode in wg.PREC_CODES:
            scratch = Scratch(_Backend())
            res = dict(M=M, N=N, K=K, mode=mode)
            res["call_ms"] = _time(lambda i: wg.gemm_bwd_data(D[i % 2], W[i % 2], Ap, None, RELU, out,
                                                              precision=mode, scratch=scratch),
                                   args.reps, _cupy_events)
            res["gemm_tc_ms"] = _time(lambda i: tc.gemm_bwd_data(D[i % 2], W[i % 2], Ap, None, RELU, out,
                                                                 precision=mode), args.reps, _cupy_events)
            dtype = torch.bfloat16 if mode == "bf16" else torch.float32
            tD = [torch.from_dlpack(x).to(dtype) for x in D]
            tW = [torch.from_dlpack(x).to(dtype) for x in W]
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            res["cublas_ms"] = _time(lambda i: tD[i % 2] @ tW[i % 2], args.reps, _torch_events)
            torch.backends.cuda.matmul.allow_tf32 = False
            res.update(call_ratio=res["cublas_ms"] / res["call_ms"], gemm_tc_ratio=res["cublas_ms"] / res["gemm_tc_ms"],
                       call_tflops=flop / res["call_ms"] / 1e9)
            bwd_rows.append(res)
            print(f"bwd_data {M:5d}x{N}x{K} {mode:5s} call {res['call_ms']:.3f} ms ({res['call_tflops']:.0f} "
                  f"TFLOP/s)  gemm_tc {res['gemm_tc_ms']:.3f}  cuBLAS {res['cublas_ms']:.3f} ms  ratios call "
                  f"{res['call_ratio']:.2f} gemm_tc {res['gemm_tc_ratio']:.2f}", flush=True)
            del tD, tW, scratch
        del D, W
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    dev = cupy.cuda.runtime.getDeviceProperties(cuda_device.device_id())["name"].decode()
    with open(os.path.join(args.out, "wgmma_bench.json"), "w") as f:
        json.dump(dict(device=dev, reps=args.reps, rows=rows, bwd_data_rows=bwd_rows), f, indent=1)
    lines = [f"# Hopper forward GEMM + bias + ReLU vs cuBLAS on {dev} (median of {args.reps}, CUDA events)", "",
             "| M x N x K | mode | call ms | kernel bn128 ms | kernel bn256 ms | gemm_tc ms | cuBLAS ms "
             "| call / cuBLAS | kernel / cuBLAS | gemm_tc / cuBLAS |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['M']}x{r['N']}x{r['K']} | {r['mode']} | {r['call_ms']:.3f} | {r['kernel_bn128_ms']:.3f} "
                     f"| {r['kernel_bn256_ms']:.3f} | {r['gemm_tc_ms']:.3f} | {r['cublas_ms']:.3f} | "
                     f"{r['call_ratio']:.2f} | {r['kernel_ratio']:.2f} | {r['gemm_tc_ratio']:.2f} |")
    lines += ["", "Input gradient (delta @ W, ReLU's g'):", "",
              "| M x N x K | mode | call ms | gemm_tc ms | cuBLAS ms | call / cuBLAS | gemm_tc / cuBLAS |",
              "|---|---|---|---|---|---|---|"]
    for r in bwd_rows:
        lines.append(f"| {r['M']}x{r['N']}x{r['K']} | {r['mode']} | {r['call_ms']:.3f} | {r['gemm_tc_ms']:.3f} | "
                     f"{r['cublas_ms']:.3f} | {r['call_ratio']:.2f} | {r['gemm_tc_ratio']:.2f} |")
    with open(os.path.join(args.out, "wgmma_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
