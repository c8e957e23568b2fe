"""Launchers of the third float32 GEMM tile design, `kernels/gemm_f32.cu` (experimental).

The same three fused GEMMs as `cuda_gemm`, float32 only:

    gemm_fwd(A_prev, W, b, act_code, A_out, Z_out=None)
        Z = A_prev @ W.T + b, A_out = g(Z), Z_out = Z when given.
    gemm_bwd_data(delta, W, A_prev, Z_prev, act_code, delta_prev_out)
        delta_prev_out = (delta @ W) * g'(.), g' from A_prev, or Z_prev for gelu/silu.
    gemm_bwd_weight(delta, A_prev, dW_out, db_out, scratch=None)
        dW_out = delta.T @ A_prev, db_out = delta.sum(0); split over the batch into the
        caller's `scratch`, then summed in split order (no atomics: bitwise reproducible).

Tile (gemm_f32.cu): 128 threads, 128 x 128 block tile, 64 x 64 warp tile, 16 x 8 thread tile,
BK 16, a 3-stage 16-byte cp.async pipeline, an unmasked fast path for interior k-tiles;
dynamic shared memory `SMEM_BYTES` (61,440 B, above the 48 KB default).

Arguments are C-contiguous float32 CuPy arrays on the current device; launches go on the
current stream; each launcher returns the name of the kernel it ran (None for an empty
output).  `scratch` is either a float32 CuPy array of at least
`bwd_weight_scratch_size(M, N, K)` elements or a step plan's `Scratch` (its buffer is then
kept there under a key of this module); with scratch=None the weight gradient runs as one
split (correct, slower where N x K has few tiles).  This module keeps no buffers.

Needs compute capability 8.0+.  On no backend's default path: reached only by calling these
functions (benchmarks/gemm_tiles.py times them against v1, the pipelined tile and cuBLAS).

CuPy is imported inside functions only, so this module imports without a GPU.
"""

from __future__ import annotations

import numpy as np

from ..activations import ACTIVATIONS
from .cuda_device import compute_capability, function, sm_count
from .cuda_launch import aligned, batch_splits, cdiv, check_act, gprime_source, grid_1d, split_stride
from .cuda_source import ModuleSpec
from .kernel_constants import GEMM3_BK as BK
from .kernel_constants import GEMM3_BM as BM
from .kernel_constants import GEMM3_STAGES as STAGES
from .kernel_constants import GEMM3_THREADS as THREADS

_N_ACT = len(ACTIVATIONS)
#: floats of one operand's pipeline stage (GEMM3_TILE in gemm_f32.cu: 128 rows of BK + 4)
STAGE_FLOATS = BM * (BK + 4)
#: dynamic shared memory of every GEMM kernel here (GEMM3_SMEM_BYTES)
SMEM_BYTES = 2 * STAGES * STAGE_FLOATS * 4


def fwd_name(act: int) -> str:
    return f"gemm_f32_fwd<{act}>"


def bwd_data_name(act: int) -> str:
    return f"gemm_f32_bwd_data<{act}>"


BWD_WEIGHT_NAME = "gemm_f32_bwd_weight"
REDUCE_NAME = "gemm_f32_splitk_reduce"


def _all_names() -> tuple[str, ...]:
    return (tuple(fwd_name(a) for a in range(_N_ACT)) + tuple(bwd_data_name(a) for a in range(_N_ACT))
            + (BWD_WEIGHT_NAME, REDUCE_NAME))


#: the FFMA core must compile to FFMA (the compile check reads each GEMM kernel's SASS)
SASS_OPCODE = "FFMA"

SPECS = (ModuleSpec(name="gemm_f32", files=("activations.cuh", "async_copy.cuh", "gemm_f32.cu"),
                    name_expressions=_all_names(),
                    sass_expect=tuple((n, SASS_OPCODE) for n in _all_names() if n != REDUCE_NAME)),)


def _launch(name: str, grid, args, smem: int = 0) -> str:
    function(SPECS[0], name, smem)(grid, (THREADS, 1, 1), args, shared_mem=smem)
    return name


def _check_device() -> None:
    cc = compute_capability()
    if cc < 80:
        raise RuntimeError(f"the gemm_f32 kernels need compute capability 8.0 or newer (cp.async); "
                           f"this device is {cc / 10:.1f}")


def _check_arrays(**arrays) -> None:
    """float32 and C-contiguous; raises naming the argument."""
    for name, a in arrays.items():
        if a is None:
            continue
        if getattr(a, "dtype", None) != np.float32:
            raise TypeError(f"{name} must be a float32 CuPy array, got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")


def _shape(name: str, a, want) -> None:
    if tuple(a.shape) != tuple(want):
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {tuple(want)}")


def _vec(a, ld: int) -> bool:
    """16-byte copies / vector accesses allowed: leading dimension % 4 == 0, 16-byte aligned base."""
    return ld % 4 == 0 and aligned(a, 16)


def tiles(P: int, Q: int) -> int:
    """Blocks of a P x Q output (grid.x)."""
    return cdiv(P, BM) * cdiv(Q, BM)


# ----------------------------------------------------------------- forward
def gemm_fwd(A_prev, W, b, act_code: int, A_out, Z_out=None) -> str | None:
    """`Z = A_prev @ W.T + b`; `A_out = g(Z)`; `Z_out = Z` when given."""
    act = check_act(act_code)
    _check_arrays(A_prev=A_prev, W=W, b=b, A_out=A_out, Z_out=Z_out)
    if A_prev.ndim != 2 or W.ndim != 2:
        raise ValueError("A_prev and W must be 2-D")
    M, K = A_prev.shape
    N = W.shape[0]
    _shape("W", W, (N, K))
    _shape("b", b, (N,))
    _shape("A_out", A_out, (M, N))
    if Z_out is not None:
        _shape("Z_out", Z_out, (M, N))
    if M == 0 or N == 0:
        return None
    _check_device()
    vec_in = _vec(A_prev, K) and _vec(W, K)
    z = Z_out if Z_out is not None else A_out   # never written when write_z == 0
    return _launch(fwd_name(act), (tiles(M, N), 1, 1),
                   (A_prev, W, b, A_out, z, np.int32(M), np.int32(N), np.int32(K),
                    np.int32(Z_out is not None), np.int32(vec_in)), SMEM_BYTES)


# ----------------------------------------------------------------- backward, data
def gemm_bwd_data(delta, W, A_prev, Z_prev, act_code: int, delta_prev_out) -> str | None:
    """`delta_prev_out = (delta @ W) * g'(.)`; g' from `A_prev`, or `Z_prev` (gelu, silu).

    `A_prev` may be None for identity or gelu/silu; `Z_prev` is needed only for gelu/silu."""
    act = check_act(act_code)
    g_name, g_src = gprime_source(act, A_prev, Z_prev)
    _check_arrays(delta=delta, W=W, delta_prev_out=delta_prev_out, **{g_name: g_src})
    if delta.ndim != 2 or W.ndim != 2:
        raise ValueError("delta and W must be 2-D")
    M, N = delta.shape
    K = W.shape[1]
    _shape("W", W, (N, K))
    _shape("delta_prev_out", delta_prev_out, (M, K))
    if g_src is not None:
        _shape(g_name, g_src, (M, K))
    if M == 0 or K == 0:
        return None
    _check_device()
    if g_src is None:
        g_src = delta_prev_out   # never read
    vec_out = K % 4 == 0 and aligned(delta_prev_out, 16) and aligned(g_src, 16)
    return _launch(bwd_data_name(act), (tiles(M, K), 1, 1),
                   (delta, W, g_src, g_src, delta_prev_out, np.int32(M), np.int32(N), np.int32(K),
                    np.int32(_vec(delta, N)), np.int32(_vec(W, K)), np.int32(vec_out)), SMEM_BYTES)


# ----------------------------------------------------------------- backward, weights
#: fewest batch rows one split sums; most splits
MIN_ROWS_PER_SPLIT = 256
MAX_SPLITS = 64


def splits(M: int, N: int, K: int, sms: int) -> tuple[int, int]:
    """(S, rows_per_split) of the weight gradient on a device with `sms` SMs
    (`cuda_launch.batch_splits`)."""
    return batch_splits(M, tiles(N, K), sms, BK, MAX_SPLITS, MIN_ROWS_PER_SPLIT)


def bwd_weight_scratch_size(M: int, N: int, K: int, sms: int | None = None) -> int:
    """Float32 elements of scratch `gemm_bwd_weight` uses for these shapes (0: none)."""
    S, _ = splits(M, N, K, sm_count() if sms is None else sms)
    return 0 if S == 1 else S * split_stride(N, K)


def _workspace(scratch, n: int):
    """A float32 array of >= n elements from the caller's scratch (an array, or a plan's
    `Scratch`), or None when there is none."""
    if scratch is None:
        return None
    if hasattr(scratch, "shape"):     # an array
        _check_arrays(scratch=scratch)
        if scratch.size < n:
            raise ValueError(f"scratch holds {scratch.size} elements; gemm_bwd_weight needs {n} "
                             f"(bwd_weight_scratch_size)")
        return scratch.ravel()
    return scratch.get(("gemm_f32_splitk", n), (n,), np.float32)


def gemm_bwd_weight(delta, A_prev, dW_out, db_out, scratch=None) -> str | None:
    """`dW_out = delta.T @ A_prev`, `db_out = delta.sum(0)`; bitwise reproducible."""
    _check_arrays(delta=delta, A_prev=A_prev, dW_out=dW_out, db_out=db_out)
    if delta.ndim != 2 or A_prev.ndim != 2:
        raise ValueError("delta and A_prev must be 2-D")
    M, N = delta.shape
    K = A_prev.shape[1]
    _shape("A_prev", A_prev, (M, K))
    _shape("dW_out", dW_out, (N, K))
    _shape("db_out", db_out, (N,))
    if N == 0:
        return None
    if K == 0:   # no tile column to run the bias-gradient blocks in
        raise ValueError("gemm_bwd_weight: A_prev has no columns (K == 0)")
    _check_device()
    vec_d, vec_a = _vec(delta, N), _vec(A_prev, K)
    S, rows = splits(M, N, K, sm_count())
    stride = split_stride(N, K)
    ws = _workspace(scratch, S * stride) if S > 1 else None
    if ws is None:
        S, rows = 1, max(M, 1)
    grid_x = tiles(N, K)
    if S == 1:
        vec_out = K % 4 == 0 and aligned(dW_out, 16)
        return _launch(BWD_WEIGHT_NAME, (grid_x, 1, 1),
                       (delta, A_prev, dW_out, db_out, np.int32(M), np.int32(N), np.int32(K),
                        np.int32(rows), np.int64(0), np.int32(vec_d), np.int32(vec_a),
                        np.int32(vec_out)), SMEM_BYTES)
    NK = N * K
    vec_out = K % 4 == 0 and aligned(ws, 16)   # stride % 4 == 0 keeps every split aligned
    _launch(BWD_WEIGHT_NAME, (grid_x, 1, S),
            (delta, A_prev, ws, ws[NK:], np.int32(M), np.int32(N), np.int32(K), np.int32(rows),
             np.int64(stride), np.int32(vec_d), np.int32(vec_a), np.int32(vec_out)), SMEM_BYTES)
    _launch(REDUCE_NAME, (grid_1d(NK + N, THREADS, 16 * sm_count()), 1, 1),
            (ws, dW_out, db_out, np.int32(S), np.int64(stride), np.int64(NK), np.int32(N)))
    return BWD_WEIGHT_NAME
