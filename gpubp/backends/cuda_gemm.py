"""Launchers of the GEMM kernels of `kernels/gemm.cu` (the fused dense layer).

    gemm_fwd(A_prev, W, b, act_code, A_out, Z_out=None)
        Z = A_prev @ W.T + b, A_out = g(Z), Z_out = Z when given.
    gemm_bwd_data(delta, W, A_prev, Z_prev, act_code, delta_prev_out)
        delta_prev_out = (delta @ W) * g'(.), g = the previous layer's activation,
        g' taken from A_prev, or from Z_prev for gelu/silu.
    gemm_bwd_weight(delta, A_prev, dW_out, db_out)
        dW_out = delta.T @ A_prev, db_out = delta.sum(0); deterministic split over
        the batch (no atomics), partials in a cached workspace.

Arguments are C-contiguous CuPy arrays of one dtype (float32 or float64).
Launches go on the current stream.  Each launcher returns the name of the
kernel it ran.  The split-K workspace of `gemm_bwd_weight` comes from the
caller's `Scratch` (a step plan's), keyed by (splits, N, K, dtype), so in steady
state nothing is allocated and a CUDA graph can be captured once every shape
has been run once outside the capture; this module keeps no buffers.

Tile configurations (see gemm.cu): the template int SUB gives a
(32 SUB) x (32 SUB) block tile, 256 threads, BK = 8.  float: SUB 4 (128 x 128)
for large problems, SUB 2 (64 x 64) for small ones; double: SUB 2 and SUB 1.

The float32 weight gradient has a second large tile, "pipelined"
(`gemm_bwd_weight_pipelined` in gemm.cu): 128 x 128, a 3-stage cp.async pipeline
with BK 16 (sm_80+), warp-tiled 8 x 8 per thread (`PIPELINED`).  It serves the
large float32 weight gradient wherever delta and A_prev are 16-byte aligned with
leading dimensions % 4 == 0 and the device is sm_80+; otherwise v1's large tile
runs.  Measured on an H100 it beat v1 there (84% against 80% of cuBLAS) and lost
to v1 for the forward and input-gradient GEMMs, whose pipelined variants left the
library.  Double always uses v1.

`kernel_names(...)` lists the kernels a dense layer of given shapes may launch, so
the backend can compile just those, together, before a step first runs.

CuPy is imported inside functions only, so this module imports without a GPU.
"""

from __future__ import annotations

import numpy as np

from ..activations import ACTIVATIONS
from .cuda_device import compute_capability, function, sm_count
from .cuda_launch import aligned, batch_splits, cdiv, check_act, check_arrays, ctype, split_stride
from .cuda_source import ModuleSpec
from .kernel_constants import GEMM2_BM, GEMM_BK, GEMM_PAD, GEMM_THREADS

#: (large, small) SUB per dtype
_SUBS = {"float": (4, 2), "double": (2, 1)}
_N_ACT = len(ACTIVATIONS)
THREADS = GEMM_THREADS
BK = GEMM_BK


def _fwd_name(ct: str, act: int, sub: int) -> str:
    return f"gemm_fwd<{ct}, {act}, {sub}>"


def _bwd_data_name(ct: str, act: int, sub: int) -> str:
    return f"gemm_bwd_data<{ct}, {act}, {sub}>"


def _bwd_weight_name(ct: str, sub: int) -> str:
    return f"gemm_bwd_weight<{ct}, {sub}>"


def _reduce_name(ct: str) -> str:
    return f"gemm_splitk_reduce<{ct}>"


#: (BK, STAGES) of the pipelined float32 weight-gradient tile.  Measured on an H100
#: (benchmarks/results/h100-2026-11-22/tf32-v2-run/gemm_tiles.log, where it is called "v2w").
PIPELINED = (16, 3)


def _pipelined_smem(bk: int = PIPELINED[0], stages: int = PIPELINED[1]) -> int:
    """Dynamic shared memory of the pipelined kernel (GEMM2_SMEM_BYTES in gemm.cu)."""
    return 2 * stages * bk * (GEMM2_BM + GEMM_PAD) * 4


def _bwd_weight_pipelined_name(cfg=PIPELINED) -> str:
    return f"gemm_bwd_weight_pipelined<{cfg[0]}, {cfg[1]}>"


def _all_names() -> tuple[str, ...]:
    names = []
    for ct, subs in _SUBS.items():
        for sub in subs:
            names += [_fwd_name(ct, a, sub) for a in range(_N_ACT)]
            names += [_bwd_data_name(ct, a, sub) for a in range(_N_ACT)]
            names.append(_bwd_weight_name(ct, sub))
        names.append(_reduce_name(ct))
    names.append(_bwd_weight_pipelined_name())
    return tuple(names)


SPECS = (ModuleSpec(name="gemm", files=("activations.cuh", "async_copy.cuh", "gemm.cu"),
                    name_expressions=_all_names()),)


def _launch(name: str, grid, args, smem: int = 0) -> str:
    """Launch kernel `name` with 256 threads a block and `smem` bytes of dynamic shared memory."""
    function(SPECS[0], name, smem)(grid, (THREADS, 1, 1), args, shared_mem=smem)
    return name


def _ctype(*arrays) -> str:
    """The C type of the arrays, which must share one dtype and be C-contiguous."""
    ct = ctype(arrays[0].dtype, "gemm kernels")
    check_arrays(arrays[0].dtype, *arrays, what="gemm kernels")
    return ct


def _aligned(a, sub: int) -> bool:
    """Aligned for a vector of `sub` elements."""
    return aligned(a, sub * a.itemsize)


def _tiles(P: int, Q: int, sub: int) -> int:
    bm = 32 * sub
    return cdiv(P, bm) * cdiv(Q, bm)


#: the tile configurations a caller may force (`tile=`): "large" (v1's large tile everywhere),
#: "small", or "pipelined" (the large tile, with the pipelined weight gradient where eligible)
TILES = ("large", "small", "pipelined")


def _forced(ct: str, tile):
    if tile is None:
        return None
    if tile not in TILES:
        raise ValueError(f"tile must be one of {TILES} or None, got {tile!r}")
    return _SUBS[ct][1 if tile == "small" else 0]


def _use_pipelined(ct: str, sub: int, tile, aligned_d: bool, aligned_a: bool) -> bool:
    """Whether the pipelined tile replaces v1's large tile for a weight gradient.

    `sub` is the SUB picked for v1; `aligned_*` the 16-byte eligibility of delta and A_prev
    (both are p-contiguous there: the cp.async copies are 16 bytes)."""
    if ct != "float" or sub != _SUBS[ct][0] or not (aligned_d and aligned_a):
        return False
    if tile not in (None, "pipelined"):
        return False
    return compute_capability() >= 80


def _pick_sub(ct: str, P: int, Q: int, tile=None) -> int:
    """The large tile when both output dimensions fill it and there are enough
    tiles for every SM; else the small one (or the configuration `tile` forces)."""
    forced = _forced(ct, tile)
    if forced is not None:
        return forced
    big, small = _SUBS[ct]
    bm = 32 * big
    if P >= bm and Q >= bm and _tiles(P, Q, big) >= sm_count():
        return big
    return small


# ----------------------------------------------------------------- forward
def gemm_fwd(A_prev, W, b, act_code: int, A_out, Z_out=None, tile=None) -> str | None:
    """`Z = A_prev @ W.T + b`; `A_out = g(Z)`; `Z_out = Z` when given."""
    act = check_act(act_code)
    arrays = (A_prev, W, b, A_out) + ((Z_out,) if Z_out is not None else ())
    ct = _ctype(*arrays)
    M, K = A_prev.shape
    N = W.shape[0]
    assert W.shape == (N, K) and b.shape == (N,) and A_out.shape == (M, N), "gemm_fwd shapes"
    assert Z_out is None or Z_out.shape == (M, N), "gemm_fwd: Z_out shape"
    if M == 0 or N == 0:
        return None
    sub = _pick_sub(ct, M, N, tile)
    vec_a = K % sub == 0 and _aligned(A_prev, sub) and _aligned(W, sub)
    outs = (A_out,) if Z_out is None else (A_out, Z_out)
    vec_out = N % sub == 0 and all(_aligned(o, sub) for o in outs)
    z = Z_out if Z_out is not None else A_out   # never written when write_z == 0
    return _launch(_fwd_name(ct, act, sub), (_tiles(M, N, sub), 1, 1),
            (A_prev, W, b, A_out, z, np.int32(M), np.int32(N), np.int32(K),
             np.int32(Z_out is not None), np.int32(vec_a), np.int32(vec_out)))


# ----------------------------------------------------------------- backward, data
def gemm_bwd_data(delta, W, A_prev, Z_prev, act_code: int, delta_prev_out, tile=None) -> str | None:
    """`delta_prev_out = (delta @ W) * g'(.)`; g' from `A_prev`, or `Z_prev` (gelu, silu).

    `A_prev` may be None for identity or gelu/silu; `Z_prev` is needed only for gelu/silu.
    """
    act = check_act(act_code)
    needs_z = act in (5, 6)
    needs_a = not needs_z and act != 0
    g_src = Z_prev if needs_z else (A_prev if needs_a else None)
    if (needs_z or needs_a) and g_src is None:
        raise ValueError("gemm_bwd_data: " + ("Z_prev" if needs_z else "A_prev") + " is needed")
    arrays = (delta, W, delta_prev_out) + ((g_src,) if g_src is not None else ())
    ct = _ctype(*arrays)
    M, N = delta.shape
    K = W.shape[1]
    assert W.shape == (N, K) and delta_prev_out.shape == (M, K), "gemm_bwd_data shapes"
    assert g_src is None or g_src.shape == (M, K), "gemm_bwd_data: A_prev/Z_prev shape"
    if M == 0 or K == 0:
        return None
    sub = _pick_sub(ct, M, K, tile)
    vec_d = N % sub == 0 and _aligned(delta, sub)
    vec_w = K % sub == 0 and _aligned(W, sub)
    if g_src is None:
        g_src = delta_prev_out   # never read
    vec_out = K % sub == 0 and _aligned(delta_prev_out, sub) and _aligned(g_src, sub)
    return _launch(_bwd_data_name(ct, act, sub), (_tiles(M, K, sub), 1, 1),
            (delta, W, g_src, g_src, delta_prev_out, np.int32(M), np.int32(N), np.int32(K),
             np.int32(vec_d), np.int32(vec_w), np.int32(vec_out)))


# ----------------------------------------------------------------- backward, weights
def _bwd_weight_sub(ct: str, N: int, K: int, tile=None) -> int:
    """The split over M fills the GPU, so the large tile whenever N and K fill it."""
    sub = _forced(ct, tile)
    if sub is None:
        big, small = _SUBS[ct]
        sub = big if (N >= 32 * big and K >= 32 * big) else small
    return sub


#: fewest batch rows one split sums (keeps the partial writes and the reduce small)
MIN_ROWS_PER_SPLIT = 256
MAX_SPLITS = 256


def _splits(M: int, tiles: int) -> tuple[int, int]:
    """(S, rows_per_split) of the split over the batch (`cuda_launch.batch_splits`)."""
    return batch_splits(M, tiles, sm_count(), BK, MAX_SPLITS, MIN_ROWS_PER_SPLIT)


def _workspace(S: int, N: int, K: int, dtype, scratch):
    """Per-split partials: S blocks of [N*K dW][N db], each padded to a multiple of 4; from
    the caller's scratch (kept for the next call), or fresh when there is none."""
    import cupy
    stride = split_stride(N, K)
    if scratch is None:
        return cupy.empty(S * stride, dtype=dtype), stride
    return scratch.get(("gemm_splitk", S, N, K), (S * stride,), dtype), stride


def gemm_bwd_weight(delta, A_prev, dW_out, db_out, scratch=None, tile=None) -> str | None:
    """`dW_out = delta.T @ A_prev`, `db_out = delta.sum(0)`; bitwise reproducible.

    `scratch` (a `gpubp.backends.plan.Scratch`) holds the split-K workspace between calls."""
    ct = _ctype(delta, A_prev, dW_out, db_out)
    M, N = delta.shape
    K = A_prev.shape[1]
    assert A_prev.shape == (M, K) and dW_out.shape == (N, K) and db_out.shape == (N,), \
        "gemm_bwd_weight shapes"
    if N == 0:
        return None
    sub = _bwd_weight_sub(ct, N, K, tile)
    tiles = _tiles(N, K, sub)   # the pipelined 128 x 128 tile is v1's float large tile (SUB 4)
    S, rows = _splits(M, tiles)
    vec_d = N % sub == 0 and _aligned(delta, sub)
    vec_a = K % sub == 0 and _aligned(A_prev, sub)
    if _use_pipelined(ct, sub, tile, vec_d, vec_a):
        name, smem = _bwd_weight_pipelined_name(), _pipelined_smem()

        def launch(grid, dW, db, rows_per_split, stride, vec_out):
            return _launch(name, grid, (delta, A_prev, dW, db, np.int32(M), np.int32(N), np.int32(K),
                                        np.int32(rows_per_split), np.int64(stride), np.int32(vec_out)), smem)
    else:
        name, smem = _bwd_weight_name(ct, sub), 0

        def launch(grid, dW, db, rows_per_split, stride, vec_out):
            return _launch(name, grid, (delta, A_prev, dW, db, np.int32(M), np.int32(N), np.int32(K),
                                        np.int32(rows_per_split), np.int64(stride), np.int32(vec_d),
                                        np.int32(vec_a), np.int32(vec_out)))
    if S == 1:
        vec_out = K % sub == 0 and _aligned(dW_out, sub)
        return launch((tiles, 1, 1), dW_out, db_out, max(M, 1), 0, vec_out)
    ws, stride = _workspace(S, N, K, delta.dtype, scratch)
    NK = N * K
    vec_out = K % sub == 0   # ws is allocation-aligned and stride % 4 == 0
    ran = launch((tiles, 1, S), ws, ws[NK:], rows, stride, vec_out)
    total = NK + N
    blocks = min(cdiv(total, 256), 8 * sm_count())
    function(SPECS[0], _reduce_name(ct))(
        (blocks, 1, 1), (256, 1, 1),
        (ws, dW_out, db_out, np.int32(S), np.int64(stride), np.int64(NK), np.int32(N)))
    return ran


# ----------------------------------------------------------------- what a layer launches
def kernel_names(dtype, M: int, N: int, K: int, act_code: int, prev_act_code=None, tile=None) -> set[str]:
    """The kernels a dense layer may launch for a batch of M rows, N outputs and K inputs: its
    forward (activation `act_code`), its weight gradient (with the split-K reduction when the
    batch is split) and, when `prev_act_code` is given, its input gradient through that g'.
    Operands are assumed 16-byte aligned where the shapes allow (as plan buffers and parameter
    views are); a launch that finds otherwise compiles its kernel when it first runs."""
    ct = ctype(dtype, "gemm kernels")
    names = {_fwd_name(ct, check_act(act_code), _pick_sub(ct, M, N, tile))}
    if prev_act_code is not None:
        names.add(_bwd_data_name(ct, check_act(prev_act_code), _pick_sub(ct, M, K, tile)))
    sub = _bwd_weight_sub(ct, N, K, tile)
    if _use_pipelined(ct, sub, tile, N % sub == 0, K % sub == 0):
        names.add(_bwd_weight_pipelined_name())
    else:
        names.add(_bwd_weight_name(ct, sub))
    if _splits(M, _tiles(N, K, sub))[0] > 1:
        names.add(_reduce_name(ct))
    return names
