"""Every tensor-core GEMM kernel once or twice at small awkward shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck  python3 benchmarks/tc_sanitize.py
    compute-sanitizer --tool racecheck python3 benchmarks/tc_sanitize.py

Each mode (tf32, 3xtf32, bf16) runs the forward (gelu, writing Z; relu without Z), the input
gradient (gelu from Z, tanh from A), the weight gradient with one split and with a
split over the batch into a scratch, the split-K forward (silu with Z, relu without) and input
gradient (gelu from Z, identity) of a few-tile output with a long reduction, on aligned operands (16-byte copies) and on views at an
odd element offset (the 4-byte copy path and scalar stores), with masked edges everywhere
(no dimension a multiple of the 128 x 128 x 16 tile).  Prints "tc sanitize run done".
"""

import cupy
import numpy as np

from gpubp.activations import ACT_CODES
from gpubp.backends import cuda_device
from gpubp.backends import cuda_gemm_tc as tc

# every kernel in one program: the same CuPy cache entry as the GPU tests' compile
cuda_device.load_kernels({tc.SPECS[0]: tc.SPECS[0].name_expressions})
rs = cupy.random.RandomState(0)


def operand(shape, offset):
    n = int(np.prod(shape))
    flat = rs.standard_normal(n + offset, dtype=np.float32)
    return flat[offset:offset + n].reshape(shape)


def empty(shape, offset):
    n = int(np.prod(shape))
    return cupy.full(n + offset, np.nan, dtype=np.float32)[offset:offset + n].reshape(shape)


for mode in tc.PREC_CODES:
    for offset in (0, 1):
        M, N, K = 300, 136, 132           # 3 x 2 tiles in M x N, K = 8 k-tiles + 4
        A, W, b = operand((M, K), offset), operand((N, K), offset), operand((N,), offset)
        A_out, Z_out = empty((M, N), offset), empty((M, N), offset)
        tc.gemm_fwd(A, W, b, ACT_CODES["gelu"], A_out, Z_out, precision=mode)
        tc.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out, None, precision=mode)
        delta, dprev = operand((M, N), offset), empty((M, K), offset)
        tc.gemm_bwd_data(delta, W, None, A, ACT_CODES["gelu"], dprev, precision=mode)
        tc.gemm_bwd_data(delta, W, A, None, ACT_CODES["tanh"], dprev, precision=mode)
        dW, db = empty((N, K), offset), empty((N,), offset)
        tc.gemm_bwd_weight(delta, A, dW, db, precision=mode)
        # many rows, few tiles: split over the batch into a scratch, then the ordered reduce
        M2 = 5000 + offset
        d2, a2 = operand((M2, 33), offset), operand((M2, 70), offset)
        size = tc.bwd_weight_scratch_size(M2, 33, 70)
        scratch = cupy.empty(max(size, 1), dtype=np.float32)
        tc.gemm_bwd_weight(d2, a2, empty((33, 70), offset), empty((33,), offset), precision=mode,
                           scratch=scratch if size else None)
        # few output tiles, a long reduction: split-K forward and input gradient (partials into a
        # scratch, then the ordered epilogue), every slice but the last whole, the last one short
        M3, N3, K3 = 130, 36, 1000 + offset
        A3, W3, b3 = operand((M3, K3), offset), operand((N3, K3), offset), operand((N3,), offset)
        ws = empty((max(tc.fwd_scratch_size(M3, N3, K3), tc.bwd_data_scratch_size(M3, K3, N3), 1),), offset)
        assert tc.fwd_scratch_size(M3, N3, K3) > 0 and tc.bwd_data_scratch_size(M3, K3, N3) > 0
        tc.gemm_fwd(A3, W3, b3, ACT_CODES["silu"], empty((M3, N3), offset), empty((M3, N3), offset),
                    precision=mode, scratch=ws)
        tc.gemm_fwd(A3, W3, b3, ACT_CODES["relu"], empty((M3, N3), offset), None, precision=mode, scratch=ws)
        d3, W3d = operand((M3, K3), offset), operand((K3, N3), offset)
        tc.gemm_bwd_data(d3, W3d, None, operand((M3, N3), offset), ACT_CODES["gelu"], empty((M3, N3), offset),
                         precision=mode, scratch=ws)
        tc.gemm_bwd_data(d3, W3d, None, None, ACT_CODES["identity"], empty((M3, N3), offset),
                         precision=mode, scratch=ws)
    x = rs.standard_normal(1000, dtype=np.float32)
    tc.round_like_kernels(x, mode)
cupy.cuda.runtime.deviceSynchronize()
print("tc sanitize run done")
