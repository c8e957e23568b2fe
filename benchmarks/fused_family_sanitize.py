"""Every kernel of the fused-MLP kernel family once or twice at small awkward shapes, for
compute-sanitizer (memcheck: out-of-bounds and misaligned accesses, cp.async included;
racecheck: shared-memory hazards between the barriers of the double-buffered pipeline).

    compute-sanitizer --tool memcheck  python3 benchmarks/fused_family_sanitize.py
    compute-sanitizer --tool racecheck python3 benchmarks/fused_family_sanitize.py

Each policy (float32, tf32, bf16) at both widths (WMAX 64: [70, 64, 33, 5]; WMAX 128:
[20, 128, 97, 3]): the forward (gelu, writing Z), the backward with delta_in (silu, from
Z_in) on the default grid and on a grid of 2 blocks (each block walks several row tiles: the
cross-tile prefetch), on aligned arrays (16-byte copies) and on views at an odd element offset
(the 4-byte copy paths and scalar stores); the batch is no multiple of a tile.
Prints "fused family sanitize run done".
"""

import cupy
import numpy as np

from gpubp.activations import ACT_CODES
from gpubp.backends import cuda_device
from gpubp.backends import cuda_fused_family as ff

cuda_device.load_kernels({ff.SPECS[0]: ff.SPECS[0].name_expressions})   # one NVRTC program
rs = cupy.random.RandomState(0)


def operand(shape, offset, scale=1.0):
    n = int(np.prod(shape))
    flat = rs.standard_normal(n + offset, dtype=np.float32) * np.float32(scale)
    return flat[offset:offset + n].reshape(shape)


def empty(shape, offset):
    n = int(np.prod(shape))
    return cupy.full(n + offset, np.nan, dtype=np.float32)[offset:offset + n].reshape(shape)


for precision in ff.PRECISIONS:
    for widths in ([70, 64, 33, 5], [20, 128, 97, 3]):
        for offset in (0, 1):
            B, L = 333, len(widths) - 1
            Ws = [operand((widths[i + 1], widths[i]), offset, widths[i] ** -0.5) for i in range(L)]
            bs = [operand((widths[i + 1],), offset) for i in range(L)]
            A_in, Z_in = operand((B, widths[0]), offset), operand((B, widths[0]), offset)
            codes = [ACT_CODES["gelu"]] * L
            A = [empty((B, w), offset) for w in widths[1:]]
            Z = [empty((B, w), offset) for w in widths[1:]]
            ff.fused_forward(A_in, Ws, bs, codes, A, Z, precision=precision)
            delta = operand((B, widths[-1]), offset)
            for grid in (None, 2):
                dWs = [empty(W.shape, offset) for W in Ws]
                dbs = [empty(b.shape, offset) for b in bs]
                din = empty((B, widths[0]), offset)
                ff.fused_backward(delta, Ws, codes, A_in, A, Z, dWs, dbs, delta_in_out=din,
                                  act_code_in=ACT_CODES["silu"], Z_in=Z_in, precision=precision,
                                  grid_blocks=grid)
                out = cupy.concatenate([x.ravel() for x in dWs + dbs + [din] + A])
                assert bool(cupy.isfinite(out).all()), (precision, widths, offset, grid)
            # without delta_in: the first layer's W is never staged
            ff.fused_backward(delta, Ws, codes, A_in, A, Z, dWs, dbs, precision=precision, grid_blocks=2)
cupy.cuda.runtime.deviceSynchronize()
print("fused family sanitize run done")
