"""Time each tensor-core GEMM of gemm_tc.cu against cuBLAS at the same precision (GPU only).

    python3 benchmarks/tc_bench.py --out DIR [--reps 20] [--step-rows]

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

Split-K rows (small batches): the wide network's forward and input-gradient GEMMs at batch 256
and 1024 (4096 x 4096 hidden layers; the forward of the 10-wide output layer) timed on the
single-kernel path (no scratch, as the kernel rows above) and with split-K (a scratch of
`fwd_scratch_size` / `bwd_data_scratch_size`: what a step plan gives), with the slice count S the
launcher chose (S = 1: no split at that shape, both columns the same path) and cuBLAS at the
same precision.
Step rows (with --step-rows only; `tc_device_run.sh steps`): a whole training step (forward, MSE
loss, backward, Adam; the captured CUDA graph of `MLP.capture_train_step`) of the wide network
at batch 256 and 1024 with `CudaBackend(tensor_core_gemms=True)` in each mode, with split-K as
the launchers choose it and with it turned off (`cuda_gemm_tc.MAX_K_SPLITS = 1` while that step
is built and captured).
Writes DIR/tc_bench.json and DIR/tc_bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # this checkout's gpubp

import cupy
import numpy as np
import torch

from gpubp.activations import ACT_CODES
from gpubp.backends import cuda_device
from gpubp.backends import cuda_gemm_tc as tc
from gpubp.bench import gemms, timing

SHAPES = [("fwd", 8192, 4096, 4096)] + [(k, b, 4096, 4096) for b in (4096, 1024, 256)
                                         for k in ("fwd", "bwd_data", "bwd_weight")]
#: cuBLAS at each mode's precision (3xTF32 promises float32 accuracy: SGEMM)
CUBLAS = {"tf32": "cublas-tf32", "bf16": "cublas-bf16", "3xtf32": "cublas-sgemm"}
#: the wide network of the step rows, and the split-K rows: (kernel, M, N, K) of its GEMMs
WIDE = (1024, 4096, 4096, 4096, 10)
SPLITK_SHAPES = [(k, b, n, 4096) for b in (256, 1024) for k, n in (("fwd", 4096), ("bwd_data", 4096), ("fwd", 10))]


def _time_cupy(fn, reps):
    return timing.event_median_ms(fn, reps, timing.CupyClock())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--step-rows", action="store_true",
                    help="also time the wide network's training step with and without split-K")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cuda_device.load_kernels({tc.SPECS[0]: tc.SPECS[0].name_expressions})   # one compile, as the tests
    rows = []
    for kind, M, N, K in SHAPES:
        ops = gemms.GemmOperands(gemms.random_sets(M, N, K, n_sets=2))
        flop = 2.0 * M * N * K
        ms32 = _time_cupy(gemms.rotating(gemms.gpubp_gemm("gpubp-fused", kind, ops), ops.sets), args.reps)
        for mode in ("tf32", "bf16", "3xtf32"):
            ms = _time_cupy(gemms.rotating(gemms.gpubp_gemm(f"gpubp-tc-{mode}", kind, ops), ops.sets), args.reps)
            ref = gemms.time_cublas(CUBLAS[mode], kind, ops, args.reps, torch_sgemm=True)   # all through torch
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
    splitk_rows = _splitk_rows(args.reps)
    step_rows = _step_rows(args.reps) if args.step_rows else []
    dev = cupy.cuda.runtime.getDeviceProperties(cuda_device.device_id())["name"].decode()
    with open(os.path.join(args.out, "tc_bench.json"), "w") as f:
        json.dump(dict(device=dev, reps=args.reps, rows=rows, splitk_rows=splitk_rows, step_rows=step_rows),
                  f, indent=1)
    lines = [f"# Tensor-core GEMMs vs cuBLAS on {dev} (median of {args.reps}, CUDA events)", "",
             "| kernel | M x N x K | mode | ms | TFLOP/s | cuBLAS | cuBLAS ms | ratio (cuBLAS ms / ours) "
             "| gpubp float32 ms |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['M']}x{r['N']}x{r['K']} | {r['mode']} | {r['ms']:.3f} | "
                     f"{r['tflops']:.1f} | {r['cublas']} | {r['cublas_ms']:.3f} | {r['ratio']:.2f} | "
                     f"{r['gpubp_float32_ms']:.3f} |")
    lines += ["", f"## Split-K of the forward and input-gradient GEMMs (wide network, {cuda_device.sm_count()} SMs)", "",
              "| kernel | M x N x K | mode | S | one kernel ms | split-K ms | speed-up | cuBLAS ms "
              "| ratio (cuBLAS ms / split-K) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in splitk_rows:
        lines.append(f"| {r['kernel']} | {r['M']}x{r['N']}x{r['K']} | {r['mode']} | {r['S']} | {r['ms_one']:.4f} | "
                     f"{r['ms_split']:.4f} | {r['ms_one'] / r['ms_split']:.2f} | {r['cublas_ms']:.4f} | "
                     f"{r['cublas_ms'] / r['ms_split']:.2f} |")
    if step_rows:
        lines += ["", f"## Training step of {list(WIDE)} (captured graph, Adam, MSE)", "",
                  "| batch | mode | step ms, split-K | step ms, no split | speed-up |", "|---|---|---|---|---|"]
        for r in step_rows:
            lines.append(f"| {r['batch']} | {r['mode']} | {r['ms_split']:.3f} | {r['ms_one']:.3f} | "
                         f"{r['ms_one'] / r['ms_split']:.2f} |")
    with open(os.path.join(args.out, "tc_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _splitk_call(kind, ops, mode, ws):
    """`kind` (fwd or bwd_data) as `gemms.gpubp_gemm` calls it, with the split-K workspace `ws`."""
    relu = ACT_CODES["relu"]
    if kind == "fwd":
        return lambda A, W, b, D: tc.gemm_fwd(A, W, b, relu, ops.A_out, precision=mode, scratch=ws)
    return lambda A, W, b, D: tc.gemm_bwd_data(D, W, A, None, relu, ops.D_prev, precision=mode, scratch=ws)


def _splitk_rows(reps):
    """The split-K rows (SPLITK_SHAPES): each mode with no scratch (one kernel) and with the
    scratch the launcher asks for (split-K where it chooses S > 1), and cuBLAS."""
    rows = []
    sms = cuda_device.sm_count()
    for kind, M, N, K in SPLITK_SHAPES:
        ops = gemms.GemmOperands(gemms.random_sets(M, N, K, n_sets=2))
        if kind == "fwd":
            S, size = tc.fwd_splits(M, N, K, sms)[0], tc.fwd_scratch_size(M, N, K)
        else:
            S, size = tc.bwd_data_splits(M, N, K, sms)[0], tc.bwd_data_scratch_size(M, N, K)
        ws = cupy.empty(max(size, 1), np.float32)
        for mode in ("tf32", "bf16", "3xtf32"):
            one = _time_cupy(gemms.rotating(gemms.gpubp_gemm(f"gpubp-tc-{mode}", kind, ops), ops.sets), reps)
            split = _time_cupy(gemms.rotating(_splitk_call(kind, ops, mode, ws), ops.sets), reps)
            ref = gemms.time_cublas(CUBLAS[mode], kind, ops, reps, torch_sgemm=True)
            rows.append(dict(kernel=kind, M=M, N=N, K=K, mode=mode, S=S, ms_one=one, ms_split=split, cublas_ms=ref))
            print(f"split-K {kind:8s} {M:5d}x{N}x{K} {mode:6s} S={S:2d} one kernel {one:8.4f} ms  split-K "
                  f"{split:8.4f} ms  x{one / split:5.2f}  cuBLAS {ref:8.4f} ms", flush=True)
        ops.release()
        del ops, ws
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    return rows


def _step_rows(reps):
    """The wide network's captured training step per mode and batch, with and without split-K."""
    import gpubp
    from gpubp.backends.cuda_backend import CudaBackend

    rows = []
    be = CudaBackend(tensor_core_gemms=True)
    rs = cupy.random.RandomState(11)
    for mode in ("tf32", "bf16", "3xtf32"):
        net = gpubp.MLP(list(WIDE), activation="relu", backend=be, precision=mode, seed=0)
        for batch in (256, 1024):
            X = rs.standard_normal((batch, WIDE[0]), dtype=np.float32)
            Y = rs.standard_normal((batch, WIDE[-1]), dtype=np.float32)
            steps = {}
            for key in ("split", "one"):
                saved = tc.MAX_K_SPLITS
                if key == "one":
                    tc.MAX_K_SPLITS = 1
                try:
                    steps[key] = net.capture_train_step(X, Y, "adam", check_inputs=False)
                finally:
                    tc.MAX_K_SPLITS = saved
            ms = {k: _time_cupy(lambda i, f=f: f(X, Y), reps) for k, f in steps.items()}
            rows.append(dict(batch=batch, mode=mode, ms_split=ms["split"], ms_one=ms["one"]))
            print(f"step {list(WIDE)} batch {batch:5d} {mode:6s} split-K {ms['split']:8.3f} ms  no split "
                  f"{ms['one']:8.3f} ms  x{ms['one'] / ms['split']:5.2f}", flush=True)
            del steps
        del net
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


if __name__ == "__main__":
    main()
