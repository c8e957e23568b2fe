"""Time the large float32 GEMM tiles of gpubp.backends.cuda_gemm against cuBLAS (needs a GPU).

    python benchmarks/gemm_tiles.py [--reps 20] [--warmup 5]

For each shape (batch M x n_out N x n_in K: 4096^3 and 8192x4096x4096) and each of the
three fused kernels, times v1 (the verified large tile), the "pipelined" tile
(`cuda_gemm.PIPELINED`, weight gradient only; the others run v1 under it), the third tile
design "f32" (`gpubp.backends.cuda_gemm_f32`, kernels/gemm_f32.cu: 128 threads, 16 x 8 per
thread, BK 16, 3-stage cp.async; all three kernels), cupy.matmul alone (cuBLAS SGEMM,
CUPY_TF32=0) and cupy.matmul plus the same epilogue unfused.  CUDA events around each call, median of --reps after
--warmup calls, random normal inputs; every gpubp output is checked against a float64
product (relative error column).  Prints one table; "% cuBLAS" = cupy.matmul time /
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
RELU = 3   # gpubp.activations.ACT_CODES["relu"]


def _time(cupy, f, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        f()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        f()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def _rel(cupy, out, ref) -> float:
    return float(cupy.linalg.norm(out.astype(np.float64) - ref) / cupy.linalg.norm(ref))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)

    import cupy

    from gpubp.backends import cuda_gemm, cuda_gemm_f32
    from gpubp.backends.cuda_backend import CudaBackend
    from gpubp.backends.plan import Scratch

    dev = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    print(f"# {name}, cc {dev.compute_capability}, CUPY_TF32={os.environ.get('CUPY_TF32')}, "
          f"median of {args.reps} after {args.warmup} warm-up; v2 configs (BK, STAGES): "
          f"pipelined (BK, STAGES) {cuda_gemm.PIPELINED}")
    tiles = ["large", "pipelined", "f32"]   # "large" = v1 everywhere; "f32" = cuda_gemm_f32
    rows = []
    rs = cupy.random.RandomState(2026)
    for M, N, K in SHAPES:
        A = rs.standard_normal((M, K), dtype=np.float32)           # A_prev, batch x n_in
        W = rs.standard_normal((N, K), dtype=np.float32) * np.float32(1 / np.sqrt(K))
        b = rs.standard_normal((N,), dtype=np.float32)
        D = rs.standard_normal((M, N), dtype=np.float32)           # delta, batch x n_out
        Ap = cupy.maximum(rs.standard_normal((M, K), dtype=np.float32), 0)   # relu output
        A_out = cupy.empty((M, N), np.float32)
        Dp = cupy.empty((M, K), np.float32)
        dW = cupy.empty((N, K), np.float32)
        db = cupy.empty((N,), np.float32)
        C_mn, C_mk, C_nk = (cupy.empty(s, np.float32) for s in ((M, N), (M, K), (N, K)))
        A64, W64, D64 = A.astype(np.float64), W.astype(np.float64), D.astype(np.float64)
        refs = {
            "fwd": (cupy.maximum(A64 @ W64.T + b.astype(np.float64), 0),),
            "bwd_data": ((D64 @ W64) * (Ap > 0),),
            "bwd_weight": (D64.T @ A64, D64.sum(0)),
        }
        del A64, W64, D64
        scratch = Scratch(CudaBackend())   # the split-K workspace, kept between timed calls
        f32_scratch = cupy.empty(max(1, cuda_gemm_f32.bwd_weight_scratch_size(M, N, K)), np.float32)
        ours = {
            "fwd": (lambda tile: cuda_gemm_f32.gemm_fwd(A, W, b, RELU, A_out) if tile == "f32" else
                    cuda_gemm.gemm_fwd(A, W, b, RELU, A_out, tile=tile), (A_out,)),
            "bwd_data": (lambda tile: cuda_gemm_f32.gemm_bwd_data(D, W, Ap, None, RELU, Dp) if tile == "f32" else
                         cuda_gemm.gemm_bwd_data(D, W, Ap, None, RELU, Dp, tile=tile), (Dp,)),
            "bwd_weight": (lambda tile: cuda_gemm_f32.gemm_bwd_weight(D, A, dW, db, scratch=f32_scratch)
                           if tile == "f32" else
                           cuda_gemm.gemm_bwd_weight(D, A, dW, db, scratch=scratch, tile=tile), (dW, db)),
        }
        cublas = {
            "fwd": lambda: cupy.matmul(A, W.T, out=C_mn),
            "bwd_data": lambda: cupy.matmul(D, W, out=C_mk),
            "bwd_weight": lambda: cupy.matmul(D.T, A, out=C_nk),
        }
        unfused = {
            "fwd": lambda: cupy.maximum(cupy.matmul(A, W.T, out=C_mn) + b, 0, out=C_mn),
            "bwd_data": lambda: cupy.multiply(cupy.matmul(D, W, out=C_mk), Ap > 0, out=C_mk),
            "bwd_weight": lambda: (cupy.matmul(D.T, A, out=C_nk), D.sum(0)),
        }
        flop = 2.0 * M * N * K
        for kern in ("fwd", "bwd_data", "bwd_weight"):
            t_cb = _time(cupy, cublas[kern], args.reps, args.warmup)
            t_un = _time(cupy, unfused[kern], args.reps, args.warmup)
            shape = f"{M}x{N}x{K}"
            rows.append((kern, shape, "cupy.matmul (cuBLAS)", t_cb, flop / t_cb / 1e9, 1.0, ""))
            rows.append((kern, shape, "cupy.matmul + epilogue", t_un, flop / t_un / 1e9, t_cb / t_un, ""))
            for tile in tiles:
                try:
                    run, outs = ours[kern]
                    f = lambda: run(tile)   # noqa: E731
                    for o in outs:
                        o.fill(np.nan)
                    ran = f()
                    err = max(_rel(cupy, o, r) for o, r in zip(outs, refs[kern]))
                    t = _time(cupy, f, args.reps, args.warmup)
                    label = "v1" if tile == "large" else tile
                    rows.append((kern, shape, f"{label}: {ran}", t, flop / t / 1e9, t_cb / t,
                                 f"{err:.1e}"))
                except Exception as e:   # a failing config must not hide the others
                    rows.append((kern, shape, f"{tile}: {type(e).__name__}: {e}"[:90],
                                 float("nan"), float("nan"), float("nan"), ""))
        del A, W, b, D, Ap, A_out, Dp, dW, db, C_mn, C_mk, C_nk, refs, f32_scratch
        cupy.get_default_memory_pool().free_all_blocks()

    print("| kernel | shape MxNxK | what | median ms | TFLOP/s | % cuBLAS | rel. err vs fp64 |")
    print("|---|---|---|---|---|---|---|")
    for kern, shape, what, t, tf, frac, err in rows:
        print(f"| {kern} | {shape} | {what} | {t:.3f} | {tf:.1f} | {frac:.1%} | {err} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
