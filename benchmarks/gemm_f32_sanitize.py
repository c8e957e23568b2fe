"""Every gemm_f32 kernel once or twice at small awkward shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck  python3 benchmarks/gemm_f32_sanitize.py
    compute-sanitizer --tool racecheck python3 benchmarks/gemm_f32_sanitize.py

The forward (gelu writing Z; relu without Z), the input gradient (gelu from Z, tanh from A)
and the weight gradient with one split and with a split over the batch into a scratch, on
aligned operands and on views at an odd element offset (4-byte copies, scalar stores), with
masked edges (no dimension a multiple of the 128 x 128 x 16 tile) and, at offset 0, interior
tiles that run the unmasked fast loop.  Prints "gemm_f32 sanitize run done".
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import cupy  # noqa: E402
import numpy as np  # noqa: E402

from gpubp.activations import ACT_CODES  # noqa: E402
from gpubp.backends import cuda_device  # noqa: E402
from gpubp.backends import cuda_gemm_f32 as g3  # noqa: E402

cuda_device.load_kernels({g3.SPECS[0]: g3.SPECS[0].name_expressions})
rs = cupy.random.RandomState(0)


def operand(shape, offset):
    n = int(np.prod(shape))
    flat = rs.standard_normal(n + offset, dtype=np.float32)
    return flat[offset:offset + n].reshape(shape)


def empty(shape, offset):
    n = int(np.prod(shape))
    return cupy.full(n + offset, np.nan, dtype=np.float32)[offset:offset + n].reshape(shape)


for offset in (0, 1):
    for M, N, K in ((300, 136, 132), (260, 256, 132 + 64)):   # edges; then interior tiles, 12 k-tiles + 4
        A, W, b = operand((M, K), offset), operand((N, K), offset), operand((N,), offset)
        A_out, Z_out = empty((M, N), offset), empty((M, N), offset)
        g3.gemm_fwd(A, W, b, ACT_CODES["gelu"], A_out, Z_out)
        g3.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out, None)
        delta, dprev = operand((M, N), offset), empty((M, K), offset)
        g3.gemm_bwd_data(delta, W, None, A, ACT_CODES["gelu"], dprev)
        g3.gemm_bwd_data(delta, W, A, None, ACT_CODES["tanh"], dprev)
        g3.gemm_bwd_weight(delta, A, empty((N, K), offset), empty((N,), offset))
    # many rows, few tiles: split over the batch into a scratch, then the ordered reduce
    M2 = 5000 + offset
    d2, a2 = operand((M2, 33), offset), operand((M2, 70), offset)
    size = g3.bwd_weight_scratch_size(M2, 33, 70)
    g3.gemm_bwd_weight(d2, a2, empty((33, 70), offset), empty((33,), offset),
                       scratch=cupy.empty(max(size, 1), dtype=np.float32) if size else None)
cupy.cuda.runtime.deviceSynchronize()
print("gemm_f32 sanitize run done")
