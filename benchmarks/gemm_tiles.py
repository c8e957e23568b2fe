"""Time the large float32 GEMM tiles of gpubp.backends.cuda_gemm against cuBLAS (needs a GPU).

    python benchmarks/gemm_tiles.py [--reps 20] [--warmup 5]

For each shape (batch M x n_out N x n_in K: 4096^3 and 8192x4096x4096) and each of the
three fused kernels, times v1 (the verified large tile), the "pipelined" tile
(`cuda_gemm.PIPELINED`, weight gradient only), the third tile design "f32"
(`gpubp.backends.cuda_gemm_f32`, kernels/gemm_f32.cu: 128 threads, 16 x 8 per thread, BK 16,
3-stage cp.async; all three kernels), cupy.matmul alone (cuBLAS SGEMM, CUPY_TF32=0) and
cupy.matmul plus the same epilogue unfused: the calls and random operands of `gpubp bench`'s
kernel rows (`gpubp.bench.gemms`).  CUDA events around each call, median of --reps after
--warmup calls; every gpubp output is checked against a float64 product (relative error
column).  Prints one table; "% cuBLAS" = cupy.matmul time /
this time (the goal is >= 90% for the fused kernels).

    fwd        Z = A W^T + b, A_out = relu(Z)       cuBLAS: A @ W.T
    bwd_data   D' = (D W) * relu'(A_prev)           cuBLAS: D @ W
    bwd_weight dW = D^T A, db = sum_rows D          cuBLAS: D.T @ A
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("CUPY_TF32", "0")   # before cupy is imported: no TF32 in the baseline

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

SHAPES = ((4096, 4096, 4096), (8192, 4096, 4096))
#: the table's label of each float32 tile -> its variant in `gpubp.bench.gemms` ("v1" everywhere;
#: "pipelined" for the weight gradient only; "f32" = cuda_gemm_f32, all three)
TILES = {"v1": "gpubp-gemm-v1", "pipelined": "gpubp-gemm-pipelined", "f32": "gpubp-gemm-f32"}


def _rel(cupy, out, ref) -> float:
    return float(cupy.linalg.norm(out.astype(np.float64) - ref) / cupy.linalg.norm(ref))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)

    import cupy

    from gpubp.backends import cuda_gemm
    from gpubp.bench import gemms, timing

    dev = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    print(f"# {name}, cc {dev.compute_capability}, CUPY_TF32={os.environ.get('CUPY_TF32')}, "
          f"median of {args.reps} after {args.warmup} warm-up; v2 configs (BK, STAGES): "
          f"pipelined (BK, STAGES) {cuda_gemm.PIPELINED}")
    clock = timing.CupyClock()
    rows = []
    for M, N, K in SHAPES:
        ops = gemms.GemmOperands(gemms.random_sets(M, N, K, n_sets=1, seed=2026))
        A, W, b, D = ops.sets[0]          # A: the previous layer's ReLU output (its zeros drive g')
        A64, W64, D64 = A.astype(np.float64), W.astype(np.float64), D.astype(np.float64)
        refs = {
            "fwd": (cupy.maximum(A64 @ W64.T + b.astype(np.float64), 0),),
            "bwd_data": ((D64 @ W64) * (A > 0),),
            "bwd_weight": (D64.T @ A64, D64.sum(0)),
        }
        del A64, W64, D64
        flop = 2.0 * M * N * K
        for kern in gemms.KINDS:
            cublas = gemms.CublasGemm("cublas-sgemm", kern, ops)
            t_cb = timing.event_median_ms(lambda i: cublas.call(A, W, b, D), args.reps, clock, args.warmup)
            cublas.release()
            unfused = gemms.unfused_gemm(kern, ops)
            t_un = timing.event_median_ms(lambda i: unfused(A, W, b, D), args.reps, clock, args.warmup)
            shape = f"{M}x{N}x{K}"
            rows.append((kern, shape, "cupy.matmul (cuBLAS)", t_cb, flop / t_cb / 1e9, 1.0, ""))
            rows.append((kern, shape, "cupy.matmul + epilogue", t_un, flop / t_un / 1e9, t_cb / t_un, ""))
            for label, peer in TILES.items():
                if not gemms.variant_applies(peer, kern):
                    continue
                try:
                    run = gemms.gpubp_gemm(peer, kern, ops)
                    outs = ops.outputs(kern)
                    for o in outs:
                        o.fill(np.nan)
                    ran = run(A, W, b, D)
                    err = max(_rel(cupy, o, r) for o, r in zip(outs, refs[kern]))
                    t = timing.event_median_ms(lambda i: run(A, W, b, D), args.reps, clock, args.warmup)
                    rows.append((kern, shape, f"{label}: {ran}", t, flop / t / 1e9, t_cb / t, f"{err:.1e}"))
                except Exception as e:   # a failing config must not hide the others
                    rows.append((kern, shape, f"{label}: {type(e).__name__}: {e}"[:90],
                                 float("nan"), float("nan"), float("nan"), ""))
        ops.release()
        del A, W, b, D, ops, refs
        cupy.get_default_memory_pool().free_all_blocks()

    print("| kernel | shape MxNxK | what | median ms | TFLOP/s | % cuBLAS | rel. err vs fp64 |")
    print("|---|---|---|---|---|---|---|")
    for kern, shape, what, t, tf, frac, err in rows:
        print(f"| {kern} | {shape} | {what} | {t:.3f} | {tf:.1f} | {frac:.1%} | {err} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
