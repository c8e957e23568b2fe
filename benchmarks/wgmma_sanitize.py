"""The Hopper GEMMs (kernels/gemm_wgmma.cu) at small awkward shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck  python3 benchmarks/wgmma_sanitize.py
    compute-sanitizer --tool racecheck python3 benchmarks/wgmma_sanitize.py

Each mode (tf32, bf16) and block width (128, 256) runs the forward with Z (gelu) and without
(relu), and the input gradient (gelu from Z, tanh from A; its transposed copy of W), on shapes with masked edges everywhere (no dimension a multiple of a tile; K below one
k-tile, and K spanning more k-tiles than pipeline stages so every stage is reused), on aligned
operands and on views at an odd element offset (the operand copies re-align them; the outputs
take the scalar stores), with and without a plan scratch (memoised tensor maps).  The bf16 weight
gradient (MN-major tiles; delta's copy with db's column sums) runs on the same shapes (the batch
M is its reduction: 300 rows are 5 k-tiles, more than the 4 stages) and on 1100 x 40 x 70, which
splits the batch (partial last k-tile, the workspace and gemm_tc's ordered reduce).  Needs compute
capability 9.0.  Prints "wgmma sanitize run done".
"""

import cupy
import numpy as np

from gpubp.activations import ACT_CODES
from gpubp.backends import cubin_cache, cuda_device
from gpubp.backends import cuda_gemm_wgmma as wg
from gpubp.backends.plan import Scratch

if cuda_device.compute_capability() != 90:
    raise SystemExit("the wgmma kernels need compute capability 9.0")
cubin_cache.load(wg.SPECS[0])
rs = cupy.random.RandomState(0)


class _Backend:
    @staticmethod
    def empty(shape, dtype):
        return cupy.empty(shape, dtype)


def operand(shape, offset):
    n = int(np.prod(shape))
    return rs.standard_normal(n + offset, dtype=np.float32)[offset:offset + n].reshape(shape)


def empty(shape, offset):
    n = int(np.prod(shape))
    return cupy.full(n + offset, np.nan, dtype=np.float32)[offset:offset + n].reshape(shape)


scratch = Scratch(_Backend())
for mode in wg.PREC_CODES:
    for bn in wg.BNS:
        for offset in (0, 1):
            for M, N, K in ((300, 270, 20), (131, 300, 200 * 4 + 13), (1, 3, 5)):
                A, W, b = operand((M, K), offset), operand((N, K), offset), operand((N,), offset)
                A_out, Z_out = empty((M, N), offset), empty((M, N), offset)
                wg.gemm_fwd(A, W, b, ACT_CODES["gelu"], A_out, Z_out, precision=mode, bn=bn)
                wg.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out, None, precision=mode, bn=bn, scratch=scratch)
                # the input gradient: delta (M x N) @ W (N x K), g' from Z (gelu) or from A (tanh)
                delta, dprev = operand((M, N), offset), empty((M, K), offset)
                wg.gemm_bwd_data(delta, W, None, A, ACT_CODES["gelu"], dprev, precision=mode, bn=bn)
                wg.gemm_bwd_data(delta, W, A, None, ACT_CODES["tanh"], dprev, precision=mode, bn=bn,
                                 scratch=scratch)
                if mode in wg.WGRAD_PRECISIONS:
                    for m, n, k in ((M, N, K), (1100, 40, 70)):
                        d, a = operand((m, n), offset), operand((m, k), offset)
                        dW, db = empty((n, k), offset), empty((n,), offset)
                        wg.gemm_bwd_weight(d, a, dW, db, precision=mode, bn=bn)
                        wg.gemm_bwd_weight(d, a, dW, db, precision=mode, bn=bn, scratch=scratch)
cupy.cuda.runtime.deviceSynchronize()
print("wgmma sanitize run done")
