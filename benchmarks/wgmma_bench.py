"""Time the Hopper GEMMs (kernels/gemm_wgmma.cu) against cuBLAS at the same precision (sm_90 only).

    python3 benchmarks/wgmma_bench.py --out DIR [--reps 20]

Shapes (M batch rows, N outputs, K inputs): 8192 x 4096 x 4096 (the issue's goal: forward GEMM +
bias + ReLU at 75% of cuBLAS or better) and a 4096-wide layer at batch 4096, 1024 and 256.  Per
(mode, shape), medians of `reps` CUDA-event timings after warm-up, on the random operands of
`gpubp bench`'s kernel rows and tc_bench.py (`gpubp.bench.gemms`), rotated between two sets (so
that repetitions do not all hit L2):
  - `call`: `gemm_fwd` as the backend runs it, with a plan scratch: the two operand copies
    (rounding to tf32 / bf16) and the GEMM;
  - `kernel bn128` / `kernel bn256`: the GEMM kernel alone on ready copies (`launch_fwd`);
  - gemm_tc's mma.sync forward of the same mode;
  - cuBLAS through PyTorch (`gemms.CublasGemm`, into a preallocated output): tf32 -> float32 with
    allow_tf32; bf16 -> bfloat16 operands made beforehand (bf16 output).  cuBLAS has no bias or
    activation epilogue here.
The input gradient (delta @ W, ReLU's g') of the 4096-wide layer at batch 4096, 1024 and 256:
`gemm_bwd_data` as called (copies of delta and of W transposed, and the GEMM), gemm_tc's, and
cuBLAS's delta @ W.
The bf16 weight gradient (dW = delta^T A_prev, db = column sums of delta) of the same layer at
batch 4096, 1024 and 256: `gemm_bwd_weight` as called (delta's copy with db's column sums,
A_prev's copy, the MN-major wgmma GEMM, the ordered reduce when split), its GEMM kernel alone on
ready copies (`launch_bwd_weight`, unsplit), gemm_tc's mma.sync weight gradient, and cuBLAS's
delta^T @ A_prev in bf16 (no db).
Ratios are cuBLAS ms / ours.  Writes DIR/wgmma_bench.json and DIR/wgmma_bench.md.
"""

from __future__ import annotations

import argparse
import json
import os

import cupy
import torch

from gpubp.activations import ACT_CODES
from gpubp.backends import cubin_cache, cuda_device
from gpubp.backends import cuda_gemm_tc as tc
from gpubp.backends import cuda_gemm_wgmma as wg
from gpubp.backends.plan import Scratch
from gpubp.bench import gemms, timing

SHAPES = [(8192, 4096, 4096), (4096, 4096, 4096), (1024, 4096, 4096), (256, 4096, 4096)]
RELU = ACT_CODES["relu"]
#: cuBLAS at each mode's precision (`gpubp.bench.gemms.CUBLAS`)
CUBLAS = {"tf32": "cublas-tf32", "bf16": "cublas-bf16"}


class _Backend:
    @staticmethod
    def empty(shape, dtype):
        return cupy.empty(shape, dtype)


def _time_cupy(fn, reps):
    return timing.event_median_ms(fn, reps, timing.CupyClock())


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
        ops = gemms.GemmOperands(gemms.random_sets(M, N, K, n_sets=2))
        flop = 2.0 * M * N * K
        for mode in wg.PREC_CODES:
            scratch = Scratch(_Backend())
            res = dict(M=M, N=N, K=K, mode=mode)
            res["call_ms"] = _time_cupy(gemms.rotating(
                lambda A, W, b, D: wg.gemm_fwd(A, W, b, RELU, ops.A_out, precision=mode, scratch=scratch),
                ops.sets), args.reps)
            # the operand copies of each input set, and its bias
            copies = [(wg._copy(A, mode, f"A{j}", scratch), wg._copy(W, mode, f"W{j}", scratch), b)
                      for j, (A, W, b, _) in enumerate(ops.sets)]
            for bn in wg.BNS:
                res[f"kernel_bn{bn}_ms"] = _time_cupy(gemms.rotating(
                    lambda a, w, b: wg.launch_fwd(a, w, K, b, RELU, ops.A_out, None, mode, scratch, bn), copies),
                    args.reps)
            res["gemm_tc_ms"] = _time_cupy(gemms.rotating(gemms.gpubp_gemm(f"gpubp-tc-{mode}", "fwd", ops), ops.sets),
                                           args.reps)
            res["cublas_ms"] = gemms.time_cublas(CUBLAS[mode], "fwd", ops, args.reps)
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
            del copies, scratch
        ops.release()
        del ops
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    bwd_rows = []
    cuda_device.load_kernels({tc.SPECS[0]: [tc.bwd_data_name(m, RELU) for m in wg.PREC_CODES]})
    for M, N, K in SHAPES[1:]:
        ops = gemms.GemmOperands(gemms.random_sets(M, N, K, n_sets=2))
        flop = 2.0 * M * N * K
        for mode in wg.PREC_CODES:
            scratch = Scratch(_Backend())
            res = dict(M=M, N=N, K=K, mode=mode)
            res["call_ms"] = _time_cupy(gemms.rotating(
                lambda A, W, b, D: wg.gemm_bwd_data(D, W, A, None, RELU, ops.D_prev, precision=mode, scratch=scratch),
                ops.sets), args.reps)
            res["gemm_tc_ms"] = _time_cupy(gemms.rotating(gemms.gpubp_gemm(f"gpubp-tc-{mode}", "bwd_data", ops),
                                                          ops.sets), args.reps)
            res["cublas_ms"] = gemms.time_cublas(CUBLAS[mode], "bwd_data", ops, args.reps)
            res.update(call_ratio=res["cublas_ms"] / res["call_ms"], gemm_tc_ratio=res["cublas_ms"] / res["gemm_tc_ms"],
                       call_tflops=flop / res["call_ms"] / 1e9)
            bwd_rows.append(res)
            print(f"bwd_data {M:5d}x{N}x{K} {mode:5s} call {res['call_ms']:.3f} ms ({res['call_tflops']:.0f} "
                  f"TFLOP/s)  gemm_tc {res['gemm_tc_ms']:.3f}  cuBLAS {res['cublas_ms']:.3f} ms  ratios call "
                  f"{res['call_ratio']:.2f} gemm_tc {res['gemm_tc_ratio']:.2f}", flush=True)
            del scratch
        ops.release()
        del ops
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    wgrad_rows = _wgrad_rows(args.reps)
    dev = cupy.cuda.runtime.getDeviceProperties(cuda_device.device_id())["name"].decode()
    with open(os.path.join(args.out, "wgmma_bench.json"), "w") as f:
        json.dump(dict(device=dev, reps=args.reps, rows=rows, bwd_data_rows=bwd_rows, bwd_weight_rows=wgrad_rows),
                  f, indent=1)
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
    lines += ["", "Weight gradient, bf16 (delta^T A_prev and db; cuBLAS: delta^T A_prev only):", "",
              "| M x N x K | call ms | kernel ms | gemm_tc ms | cuBLAS ms | call / cuBLAS | kernel / cuBLAS "
              "| gemm_tc / cuBLAS |", "|---|---|---|---|---|---|---|---|"]
    for r in wgrad_rows:
        lines.append(f"| {r['M']}x{r['N']}x{r['K']} | {r['call_ms']:.3f} | {r['kernel_ms']:.3f} | {r['gemm_tc_ms']:.3f} | "
                     f"{r['cublas_ms']:.3f} | {r['call_ratio']:.2f} | {r['kernel_ratio']:.2f} | {r['gemm_tc_ratio']:.2f} |")
    with open(os.path.join(args.out, "wgmma_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _wgrad_rows(reps):
    """The bf16 weight gradient of the 4096-wide layer at batch 4096, 1024 and 256."""
    mode = "bf16"
    cuda_device.load_kernels({tc.SPECS[0]: [tc.bwd_weight_name(mode), tc.REDUCE_NAME]})
    out = []
    for M, N, K in SHAPES[1:]:
        ops = gemms.GemmOperands(gemms.random_sets(M, N, K, n_sets=2))
        flop = 2.0 * M * N * K
        scratch = Scratch(_Backend())
        res = dict(M=M, N=N, K=K, mode=mode, plan=wg.wgrad_plan(M, N, K, cuda_device.sm_count()))
        res["call_ms"] = _time_cupy(gemms.rotating(
            lambda A, W, b, D: wg.gemm_bwd_weight(D, A, ops.dW, ops.db, precision=mode, scratch=scratch),
            ops.sets), reps)
        bn = res["plan"]["bn"]
        copies = [(wg._copy(D, mode, f"D{j}", scratch), wg._copy(A, mode, f"A{j}", scratch))
                  for j, (A, W, b, D) in enumerate(ops.sets)]
        res["kernel_ms"] = _time_cupy(gemms.rotating(
            lambda d, a: wg.launch_bwd_weight(d, a, M, N, K, ops.dW, 1, M, 0, mode, scratch, bn), copies), reps)
        res["gemm_tc_ms"] = _time_cupy(gemms.rotating(gemms.gpubp_gemm(f"gpubp-tc-{mode}", "bwd_weight", ops),
                                                      ops.sets), reps)
        res["cublas_ms"] = gemms.time_cublas(CUBLAS[mode], "bwd_weight", ops, reps)
        res.update(call_ratio=res["cublas_ms"] / res["call_ms"], kernel_ratio=res["cublas_ms"] / res["kernel_ms"],
                   gemm_tc_ratio=res["cublas_ms"] / res["gemm_tc_ms"], call_tflops=flop / res["call_ms"] / 1e9,
                   kernel_tflops=flop / res["kernel_ms"] / 1e9)
        out.append(res)
        print(f"bwd_weight {M:5d}x{N}x{K} {mode} call {res['call_ms']:.3f} ms ({res['call_tflops']:.0f} TFLOP/s)  "
              f"kernel {res['kernel_ms']:.3f} ms ({res['kernel_tflops']:.0f} TFLOP/s, bn {bn})  gemm_tc "
              f"{res['gemm_tc_ms']:.3f}  cuBLAS {res['cublas_ms']:.3f} ms  ratios call {res['call_ratio']:.2f} "
              f"kernel {res['kernel_ratio']:.2f} gemm_tc {res['gemm_tc_ratio']:.2f}", flush=True)
        del copies, scratch
        ops.release()
        del ops
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    main()
