"""Launchers of `kernels/fused_mlp_family.cu`: the fused-MLP kernel family (one templated
source, three math policies), with the table layout and launch contract of `cuda_fused`.

Not on any default path: the CUDA backend runs `cuda_fused` (GPU-verified).  This module
has the same public functions with the same arguments (`eligible`, `fits_device`,
`fused_forward`, `fused_backward`, `bwd_grid`, `kernel_names`, `fwd_smem_bytes`,
`bwd_smem_bytes`, `SPECS`, `CONFIGS`, `PRECISIONS`), so the backend can switch to it by
importing it in `cuda_fused`'s place once a GPU has verified it.  The argument checks and
the parameter table are `cuda_fused.forward_rows` / `cuda_fused.backward_rows` (one table
layout, the FM_* fields of the generated header).

Precisions (the policy template argument, `kernel_constants.FF_POLICIES`):
    "float32"  FFMA, float32 products
    "tf32"     mma.sync m16n8k8 TF32 (operands rounded to nearest, ties away), sm_80+
    "bf16"     mma.sync m16n8k16 BF16 (operands rounded to nearest even), sm_80+
All three keep float32 global arrays (weights, biases, activations, Z, deltas, gradients),
float32 accumulation and float32 epilogue arithmetic.  In "bf16" the operands the tensor
cores multiply are rounded to bf16 (W when it is staged in shared memory, activations and
deltas as their fragments are loaded), and so is everything the policy stores, as the "bf16"
mode defines (`gpubp.precision.round_stored`): Z_out, A_out and the next layer's input tile,
the deltas between layers (db and dW sum the rounded ones) and delta_in; the run's input and
delta_last are read as given (numpy emulation: `gpubp.precision.fused_reference`).

Configurations (template <POL, BM, WMAX>, 256 threads a block, warp tiles 32 x 32):
    WMAX 64  (every width <= 64):  BM 128, forward and backward
    WMAX 128 (some width > 64):    BM 64
Dynamic shared memory: forward (BM + 2 WMAX) WMAX 4 B (W double-buffered: 64 KB at WMAX 64,
160 KB at WMAX 128); backward (BM + NBUF (BM + WMAX)) WMAX 4 B + 2 KB with NBUF = 2
(double-buffered input tile and W) at WMAX 64 and 1 at WMAX 128: 130 KB either way.  The
largest, 163,840 B, fits sm_80's 163 KB and sm_90's 227 KB opt-in; all policies need sm_80
(cp.async), and `fits_device` says whether the current device holds them.

CuPy is imported inside functions only, so this module imports without a GPU.
"""

from __future__ import annotations

import numpy as np

from . import cuda_fused
from .cuda_device import DEFAULT_SMEM, attributes, device_id, function
from .cuda_launch import aligned as _aligned
from .cuda_launch import cdiv
from .cuda_source import ModuleSpec
from .kernel_constants import FF_POLICIES, FM_NT

THREADS = FM_NT
MAX_WIDTH = cuda_fused.MAX_WIDTH
#: (forward BM, backward BM) per WMAX: BM = 256 / (WMAX / 32), the 32 x 32 warp tiles
CONFIGS = {64: (128, 128), 128: (64, 64)}
#: precision -> policy template argument
PRECISIONS = dict(FF_POLICIES)
#: the matrix instruction each policy's forward and backward kernels must hold in SASS
SASS_OPCODES = {"float32": "FFMA", "tf32": "HMMA.1688.F32.TF32", "bf16": "HMMA.16816.F32.BF16"}

eligible = cuda_fused.eligible
_wmax = cuda_fused._wmax


def _policy(precision: str) -> int:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}") from None


def fwd_name(bm: int, wmax: int, precision: str = "float32") -> str:
    return f"fused_family_fwd<{_policy(precision)}, {bm}, {wmax}>"


def bwd_name(bm: int, wmax: int, precision: str = "float32") -> str:
    return f"fused_family_bwd<{_policy(precision)}, {bm}, {wmax}>"


def reduce_name(wmax: int) -> str:
    return f"fused_family_reduce<{wmax}>"


def _all_names() -> tuple[str, ...]:
    names = []
    for wmax, (bm_f, bm_b) in CONFIGS.items():
        for prec in PRECISIONS:
            names += [fwd_name(bm_f, wmax, prec), bwd_name(bm_b, wmax, prec)]
        names.append(reduce_name(wmax))
    return tuple(names)


def _sass_expect() -> tuple[tuple[str, str], ...]:
    out = []
    for wmax, (bm_f, bm_b) in CONFIGS.items():
        for prec, op in SASS_OPCODES.items():
            out += [(fwd_name(bm_f, wmax, prec), op), (bwd_name(bm_b, wmax, prec), op)]
    return tuple(out)


SPECS = (ModuleSpec(name="fused_mlp_family", files=("activations.cuh", "async_copy.cuh", "mma.cuh", "fused_mlp_family.cu"),
                    name_expressions=_all_names(), sass_expect=_sass_expect()),)


def bwd_buffers(wmax: int) -> int:
    """How many (input tile, W) buffer sets the backward kernel keeps: 2 at WMAX 64, 1 at 128."""
    return 2 if wmax <= 64 else 1


def fwd_smem_bytes(wmax: int, bm: int | None = None, precision: str = "float32") -> int:
    _policy(precision)
    bm = CONFIGS[wmax][0] if bm is None else bm
    return (bm + 2 * wmax) * wmax * 4


def bwd_smem_bytes(wmax: int, bm: int | None = None, precision: str = "float32") -> int:
    _policy(precision)
    bm = CONFIGS[wmax][1] if bm is None else bm
    return (bm + bwd_buffers(wmax) * (bm + wmax)) * wmax * 4 + 2 * THREADS * 4


def fits_device(widths, precision: str = "float32") -> bool:
    """True when the current device can run this family on a run of these widths: compute
    capability 8.0+ (cp.async, mma.sync) and both kernels' shared memory within its opt-in."""
    a = attributes()
    if int(a.get("ComputeCapabilityMajor", 8)) < 8:
        return False
    wmax = _wmax(widths)
    optin = int(a.get("MaxSharedMemoryPerBlockOptin", DEFAULT_SMEM))
    return max(fwd_smem_bytes(wmax, precision=precision), bwd_smem_bytes(wmax, precision=precision)) <= optin


def _check_arch() -> None:
    if int(attributes().get("ComputeCapabilityMajor", 8)) < 8:
        raise RuntimeError("the fused kernel family needs a GPU of compute capability 8.0 or newer "
                           "(cp.async, mma.sync)")


#: resident blocks per SM of each backward kernel, per device (read-only once computed)
_grids: dict = {}

#: blocks per SM of the persistent backward grid; None: as many as fit (occupancy)
BWD_BLOCKS_PER_SM: int | None = None


def bwd_grid(wmax: int, n_tiles: int, precision: str = "float32") -> int:
    """Blocks of the persistent backward grid for `n_tiles` row tiles."""
    bm = CONFIGS[wmax][1]
    smem = bwd_smem_bytes(wmax, bm, precision)
    key = (device_id(), wmax, BWD_BLOCKS_PER_SM, precision)
    per_sm = _grids.get(key)
    if per_sm is None:
        f = function(SPECS[0], bwd_name(bm, wmax, precision), smem)
        per_sm = BWD_BLOCKS_PER_SM or cuda_fused._blocks_per_sm(f, smem)
        _grids[key] = per_sm
    n_sm = int(attributes().get("MultiProcessorCount", 1))
    return max(1, min(n_tiles, per_sm * n_sm))


def _table(rows: np.ndarray, scratch, kind: str):
    """The device copy of the parameter table, kept in `scratch` by content."""
    import cupy
    if scratch is None:
        return cupy.asarray(rows)
    return scratch.memo(("fused_family_table", kind, rows.shape[0]), rows.tobytes(), lambda: cupy.asarray(rows))


def _workspace(G: int, L: int, wmax: int, scratch):
    """Per-block dW/db partials of the persistent backward grid (reduced in block order)."""
    import cupy
    stride = L * (wmax * wmax + wmax)
    if scratch is None:
        return cupy.empty(G * stride, dtype=np.float32), stride
    return scratch.get(("fused_family_bwd", G, L, wmax), (G * stride,), np.float32), stride


def fused_forward(A_in, Ws, bs, act_codes, A_outs, Z_outs, precision: str = "float32", scratch=None) -> None:
    """Forward of a run of narrow layers (as `cuda_fused.fused_forward`), in `precision`
    ("float32", "tf32" or "bf16")."""
    _policy(precision)
    widths, B, rows = cuda_fused.forward_rows(A_in, Ws, bs, act_codes, A_outs, Z_outs)
    if rows is None:
        return
    _check_arch()
    L = len(Ws)
    wmax = _wmax(widths)
    bm = CONFIGS[wmax][0]
    table = _table(rows, scratch, "fwd")
    smem = fwd_smem_bytes(wmax, bm, precision)
    f = function(SPECS[0], fwd_name(bm, wmax, precision), smem)
    f((cdiv(B, bm), 1, 1), (THREADS, 1, 1), (table, np.int32(L), np.int32(B)), shared_mem=smem)


def fused_backward(delta_last, Ws, act_codes, A_in, A_outs, Z_outs, dWs, dbs,
                   delta_in_out=None, act_code_in=None, Z_in=None, precision: str = "float32",
                   scratch=None, grid_blocks: int | None = None) -> None:
    """Backward of a run of narrow layers (as `cuda_fused.fused_backward`): every dWs[l],
    dbs[l], and delta_in_out when given, in `precision`.  Deterministic: bitwise equal on
    repeated calls on one device with one grid.

    grid_blocks: the persistent grid's size (default `bwd_grid`: as many blocks as the device
    holds at once); smaller grids give each block more row tiles (tests and sanitizer runs)."""
    _policy(precision)
    if grid_blocks is not None and (isinstance(grid_blocks, bool) or int(grid_blocks) != grid_blocks
                                    or grid_blocks < 1):
        raise ValueError(f"grid_blocks must be a positive int, got {grid_blocks!r}")
    widths, B, rows = cuda_fused.backward_rows(delta_last, Ws, act_codes, A_in, A_outs, Z_outs, dWs, dbs,
                                               delta_in_out, act_code_in, Z_in)
    if rows is None:
        return
    _check_arch()
    L = len(Ws)
    want_din = delta_in_out is not None
    wmax = _wmax(widths)
    bm = CONFIGS[wmax][1]
    table = _table(rows, scratch, "bwd")
    n_tiles = cdiv(B, bm)
    G = bwd_grid(wmax, n_tiles, precision) if grid_blocks is None else min(n_tiles, int(grid_blocks))
    ws, stride = _workspace(G, L, wmax, scratch)
    smem = bwd_smem_bytes(wmax, bm, precision)
    f = function(SPECS[0], bwd_name(bm, wmax, precision), smem)
    vec_dl = widths[-1] % 4 == 0 and _aligned(delta_last)
    din = delta_in_out if want_din else delta_last    # never written when want_din == 0
    vec_din = want_din and widths[0] % 4 == 0 and _aligned(delta_in_out)
    f((G, 1, 1), (THREADS, 1, 1),
      (table, np.int32(L), np.int32(B), delta_last, np.int32(vec_dl),
       din, np.int32(want_din), np.int32(vec_din),
       ws, np.int64(stride), np.int32(n_tiles)), shared_mem=smem)
    cuda_fused.launch_reduce(function(SPECS[0], reduce_name(wmax), 0), widths, wmax, table, ws, stride, G)


def kernel_names(widths, precision: str = "float32") -> set[str]:
    """The kernels of a fused run of layers of these widths (input width first)."""
    _policy(precision)
    wmax = _wmax(widths)
    bm_f, bm_b = CONFIGS[wmax]
    return {fwd_name(bm_f, wmax, precision), bwd_name(bm_b, wmax, precision), reduce_name(wmax)}
