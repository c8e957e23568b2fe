"""Launchers of `kernels/fused_mlp.cu`: whole-network fusion of a run of narrow layers.

A *run* is consecutive dense layers 0..L-1 of widths n_0 -> n_1 -> ... -> n_L,
every n_l <= 128 (`eligible`).  One thread block keeps a tile of batch rows on
chip across all layers of the run, so the activations between layers are not
re-read from HBM in the forward pass, and the deltas inside the run never touch
HBM in the backward pass.  float32 arrays; two precisions of the matrix work:
precision="float32" (default): FFMA accumulation (kernels/fused_mlp.cu);
precision="tf32": tensor cores, mma.sync m16n8k8 with operands rounded to TF32
(10-bit mantissa) and fp32 accumulation (kernels/fused_mlp_tf32.cu): about
1e-3 relative error instead of ~1e-6, much faster on sm_80+.

    eligible(widths) -> bool
        True when every width (n_0 .. n_L) is <= 128.
    fused_forward(A_in, Ws, bs, act_codes, A_outs, Z_outs, precision="float32")
        for l: Z_l = A_{l-1} @ Ws[l].T + bs[l], A_outs[l] = g_l(Z_l) (A_{-1} = A_in),
        Z_outs[l] = Z_l where Z_outs[l] is not None.
    fused_backward(delta_last, Ws, act_codes, A_in, A_outs, Z_outs, dWs, dbs,
                   delta_in_out=None, act_code_in=None, Z_in=None, precision="float32")
        delta_{L-1} = delta_last (dLoss/dZ of the last layer); for l = L-1 .. 0:
        dWs[l] = delta_l.T @ A_{l-1}, dbs[l] = delta_l.sum(0),
        delta_{l-1} = (delta_l @ Ws[l]) * g'_{l-1}, g_{l-1} = act_codes[l-1] taken from
        A_outs[l-1] (or Z_outs[l-1] for gelu/silu); delta_in_out (when given) gets
        (delta_0 @ Ws[0]) * g'(act_code_in) from A_in (or Z_in for gelu/silu).
        Deterministic (bitwise equal on repeated calls on one device): a persistent
        grid accumulates per-block partials in a cached workspace, reduced in block order.

Arrays: C-contiguous CuPy float32 arrays; A_in (B, n_0), Ws[l] (n_{l+1}, n_l),
bs[l] (n_{l+1},), A_outs[l] / Z_outs[l] / dWs... as their layers.  Launches go on
the current stream.  With the caller's `Scratch` (a step plan's), in steady state
nothing is allocated and nothing is copied from the host: the per-layer parameter
table (pointers, widths, codes) is uploaded once per distinct set of arrays and kept
in the scratch, the backward workspace too, so a CUDA graph can be captured once
every call has been made once outside the capture.  Without a scratch each call
uploads its table and allocates its workspace.  This module keeps no buffers.

Configurations (template <BM, WMAX> of fused_mlp.cu / fused_mlp_tf32.cu; 256
threads per block), the same for both precisions:
    WMAX 64  (every width <= 64):  forward BM 128, backward BM 128
    WMAX 128 (some width > 64):    forward BM 64,  backward BM 64
Dynamic shared memory, float32: forward (BM + WMAX)(WMAX + 4) 4 B, backward
(2 BM + WMAX)(WMAX + 4) 4 B + 1 KB; tf32 (unpadded, XOR-swizzled tiles): forward
(BM + WMAX) WMAX 4 B, backward (2 BM + WMAX) WMAX 4 B + 1 KB.  The largest,
136,192 B, fits sm_80's 163 KB and sm_90's 227 KB opt-in.  The tf32 kernels use
mma.sync, so they need compute capability 8.0 or newer.

CuPy is imported inside functions only, so this module imports without a GPU.
"""

from __future__ import annotations

import numpy as np

from ..activations import ACT_CODES, ACTIVATIONS
from .cuda_device import DEFAULT_SMEM, attributes, device_id, function
from .cuda_launch import aligned as _aligned
from .cuda_launch import cdiv, check_act, check_arrays
from .cuda_source import ModuleSpec
from .kernel_constants import FM, FM_FIELD_NAMES, FM_FIELDS, FM_NT, FM_VEC

THREADS = FM_NT
MAX_WIDTH = 128
_N_ACT = len(ACTIVATIONS)
_NEEDS_Z = (ACT_CODES["gelu"], ACT_CODES["silu"])
_FIELDS = FM_FIELDS
# table field indices and FM_VEC bits, shared with the kernels through kernel_constants
_W, _B, _AOUT, _ZOUT, _X, _ZX, _NIN, _NOUT, _ACT, _ACTX, _VEC, _DW, _DB = (FM[n] for n in FM_FIELD_NAMES)
_VEC_W, _VEC_X, _VEC_AOUT, _VEC_ZX = FM_VEC["W"], FM_VEC["X"], FM_VEC["AOUT"], FM_VEC["ZX"]

#: (forward BM, backward BM) per WMAX (both precisions; the tf32 kernels require
#: BM = 256 / (WMAX / 32), their 32 x 32 warp tiles)
CONFIGS = {64: (128, 128), 128: (64, 64)}
#: precision -> kernel name suffix
PRECISIONS = {"float32": "", "tf32": "_tf32"}


def _suffix(precision: str) -> str:
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}") from None


def _fwd_name(bm: int, wmax: int, precision: str = "float32") -> str:
    return f"fused_mlp_fwd{_suffix(precision)}<{bm}, {wmax}>"


def _bwd_name(bm: int, wmax: int, precision: str = "float32") -> str:
    return f"fused_mlp_bwd{_suffix(precision)}<{bm}, {wmax}>"


def _reduce_name(wmax: int) -> str:
    return f"fused_mlp_reduce<{wmax}>"


def _all_names() -> tuple[str, ...]:
    names = []
    for wmax, (bm_f, bm_b) in CONFIGS.items():
        for prec in PRECISIONS:
            names += [_fwd_name(bm_f, wmax, prec), _bwd_name(bm_b, wmax, prec)]
        names.append(_reduce_name(wmax))
    return tuple(names)


SPECS = (ModuleSpec(name="fused_mlp", files=("activations.cuh", "fused_mlp.cu", "fused_mlp_tf32.cu"),
                    name_expressions=_all_names()),)


def _pitch(wmax: int, precision: str) -> int:
    """Floats per shared tile row: padded by 4 (float32), XOR-swizzled and unpadded (tf32)."""
    return wmax + 4 if _suffix(precision) == "" else wmax


def fwd_smem_bytes(wmax: int, bm: int | None = None, precision: str = "float32") -> int:
    bm = CONFIGS[wmax][0] if bm is None else bm
    return (bm + wmax) * _pitch(wmax, precision) * 4


def bwd_smem_bytes(wmax: int, bm: int | None = None, precision: str = "float32") -> int:
    bm = CONFIGS[wmax][1] if bm is None else bm
    return (2 * bm + wmax) * _pitch(wmax, precision) * 4 + THREADS * 4


# ------------------------------------------------------------------ eligibility
def eligible(widths) -> bool:
    """True when every width of the run (input width included) is between 1 and 128."""
    widths = [int(w) for w in widths]
    return len(widths) >= 1 and all(1 <= w <= MAX_WIDTH for w in widths)


def _wmax(widths) -> int:
    return 64 if max(widths) <= 64 else 128


def fits_device(widths, precision: str = "float32") -> bool:
    """True when the current device can run a fused run of these widths: the forward and backward
    kernels' dynamic shared memory within its per-block opt-in limit (sm_75's 64 KB holds neither
    backward kernel; sm_70's 96 KB holds WMAX 64)."""
    a = attributes()
    wmax = _wmax(widths)
    optin = int(a.get("MaxSharedMemoryPerBlockOptin", DEFAULT_SMEM))
    return max(fwd_smem_bytes(wmax, precision=precision), bwd_smem_bytes(wmax, precision=precision)) <= optin


# ------------------------------------------------------------------ device helpers
#: resident blocks per SM of each backward kernel, per device: derived from the device's
#: attributes and the compiled kernel, so read-only once computed
_grids: dict = {}

#: blocks per SM of the persistent backward grid; None: as many as fit (occupancy).
#: The grid (and so the bits of dW) depends only on this, the device and the build.
BWD_BLOCKS_PER_SM: int | None = None


def _blocks_per_sm(f, smem: int) -> int:
    """Resident blocks per SM of kernel `f` with `smem` dynamic bytes (smem, registers, threads)."""
    a = attributes()
    smem_sm = int(a.get("MaxSharedMemoryPerMultiprocessor", 0)) or (100 * 1024)
    regs_sm = int(a.get("MaxRegistersPerMultiprocessor", 65536))
    thr_sm = int(a.get("MaxThreadsPerMultiProcessor", 2048))
    static = int(getattr(f, "shared_size_bytes", 0) or 0)
    by_smem = smem_sm // (smem + static + 1024)          # 1 KB reserved per block (sm_80+)
    regs = int(getattr(f, "num_regs", 0) or 0)
    per_warp = -(-max(regs, 1) * 32 // 256) * 256        # allocation granularity: 256 per warp
    by_regs = regs_sm // (per_warp * (THREADS // 32))
    by_thr = thr_sm // THREADS
    return max(1, min(by_smem, by_regs, by_thr))


def _check(arrays, what: str) -> None:
    check_arrays(np.float32, *arrays, what=f"{what} (fused kernels)")


def _table(rows: np.ndarray, scratch, kind: str):
    """The device copy of the (L, 16) int64 parameter table, kept in `scratch` by content."""
    import cupy
    if scratch is None:
        return cupy.asarray(rows)
    return scratch.memo(("fused_table", kind, rows.shape[0]), rows.tobytes(), lambda: cupy.asarray(rows))


def _widths(A_in, Ws) -> list[int]:
    widths = [int(A_in.shape[1])]
    for l, W in enumerate(Ws):
        if W.ndim != 2 or W.shape[1] != widths[-1]:
            raise ValueError(f"fused run: Ws[{l}] has shape {W.shape}, expected (n_out, {widths[-1]})")
        widths.append(int(W.shape[0]))
    if not eligible(widths):
        raise ValueError(f"fused run: widths {widths} are not all in 1..{MAX_WIDTH}")
    return widths


# ------------------------------------------------------------------ forward
def _check_arch(precision: str) -> None:
    if _suffix(precision) and int(attributes().get("ComputeCapabilityMajor", 8)) < 8:
        raise RuntimeError("precision='tf32' needs a GPU of compute capability 8.0 or newer (mma.sync tf32)")


def forward_rows(A_in, Ws, bs, act_codes, A_outs, Z_outs):
    """Check a fused forward's arrays and build its (L, FM_FIELDS) parameter table.

    Returns (widths, B, rows); rows is None when there is nothing to launch (no layer or B == 0).
    Shared by every kernel family with this table layout (cuda_fused_family too)."""
    L = len(Ws)
    if L == 0:
        return [], 0, None
    if not (len(bs) == len(act_codes) == len(A_outs) == len(Z_outs) == L):
        raise ValueError("fused_forward: Ws, bs, act_codes, A_outs, Z_outs must have one entry per layer")
    widths = _widths(A_in, Ws)
    B = int(A_in.shape[0])
    arrays = [A_in, *Ws, *bs, *A_outs] + [z for z in Z_outs if z is not None]
    _check(arrays, "fused_forward")
    for l in range(L):
        n_in, n_out = widths[l], widths[l + 1]
        if bs[l].shape != (n_out,) or A_outs[l].shape != (B, n_out):
            raise ValueError(f"fused_forward: layer {l}: bias {bs[l].shape} / A_out {A_outs[l].shape} "
                             f"do not match ({B}, {n_out})")
        if Z_outs[l] is not None and Z_outs[l].shape != (B, n_out):
            raise ValueError(f"fused_forward: layer {l}: Z_out {Z_outs[l].shape} is not ({B}, {n_out})")
    if B == 0:
        return widths, B, None
    rows = np.zeros((L, _FIELDS), dtype=np.int64)
    for l in range(L):
        n_in, n_out = widths[l], widths[l + 1]
        W, A_out, Z_out = Ws[l], A_outs[l], Z_outs[l]
        X = A_in if l == 0 else A_outs[l - 1]
        vec = 0
        if n_in % 4 == 0 and _aligned(W):
            vec |= _VEC_W
        if n_in % 4 == 0 and _aligned(X):
            vec |= _VEC_X
        if n_out % 4 == 0 and _aligned(A_out):
            vec |= _VEC_AOUT
        r = rows[l]
        r[_W], r[_B], r[_AOUT] = W.data.ptr, bs[l].data.ptr, A_out.data.ptr
        r[_ZOUT] = Z_out.data.ptr if Z_out is not None else 0
        r[_X] = X.data.ptr
        r[_NIN], r[_NOUT], r[_ACT], r[_VEC] = n_in, n_out, check_act(act_codes[l]), vec
    return widths, B, rows


def fused_forward(A_in, Ws, bs, act_codes, A_outs, Z_outs, precision: str = "float32", scratch=None) -> None:
    """Forward of a run of narrow layers; writes every A_outs[l] and the given Z_outs[l].

    precision: "float32" (FFMA) or "tf32" (tensor cores, TF32 operands, fp32 accumulation)."""
    _suffix(precision)
    widths, B, rows = forward_rows(A_in, Ws, bs, act_codes, A_outs, Z_outs)
    if rows is None:
        return
    _check_arch(precision)
    L = len(Ws)
    wmax = _wmax(widths)
    bm = CONFIGS[wmax][0]
    table = _table(rows, scratch, "fwd")
    smem = fwd_smem_bytes(wmax, bm, precision)
    f = function(SPECS[0], _fwd_name(bm, wmax, precision), smem)
    f((cdiv(B, bm), 1, 1), (THREADS, 1, 1), (table, np.int32(L), np.int32(B)), shared_mem=smem)


# ------------------------------------------------------------------ backward
def _workspace(G: int, L: int, wmax: int, scratch):
    """Per-block dW/db partials of the persistent backward grid (reduced in block order)."""
    import cupy
    stride = L * (wmax * wmax + wmax)
    if scratch is None:
        return cupy.empty(G * stride, dtype=np.float32), stride
    return scratch.get(("fused_bwd", G, L, wmax), (G * stride,), np.float32), stride


def bwd_grid(wmax: int, n_tiles: int, precision: str = "float32") -> int:
    """Blocks of the persistent backward grid for `n_tiles` row tiles."""
    bm = CONFIGS[wmax][1]
    smem = bwd_smem_bytes(wmax, bm, precision)
    key = (device_id(), wmax, BWD_BLOCKS_PER_SM, precision)
    per_sm = _grids.get(key)
    if per_sm is None:
        f = function(SPECS[0], _bwd_name(bm, wmax, precision), smem)
        per_sm = BWD_BLOCKS_PER_SM or _blocks_per_sm(f, smem)
        _grids[key] = per_sm
    n_sm = int(attributes().get("MultiProcessorCount", 1))
    return max(1, min(n_tiles, per_sm * n_sm))


def backward_rows(delta_last, Ws, act_codes, A_in, A_outs, Z_outs, dWs, dbs,
                  delta_in_out=None, act_code_in=None, Z_in=None):
    """Check a fused backward's arrays and build its (L, FM_FIELDS) parameter table.

    Returns (widths, B, rows); rows is None when there is nothing to launch (no layer, or
    B == 0: then every dW and db has been zeroed).  Shared by every kernel family with this
    table layout (cuda_fused_family too)."""
    L = len(Ws)
    if L == 0:
        return [], 0, None
    if not (len(act_codes) == len(A_outs) == len(Z_outs) == len(dWs) == len(dbs) == L):
        raise ValueError("fused_backward: Ws, act_codes, A_outs, Z_outs, dWs, dbs need one entry per layer")
    widths = _widths(A_in, Ws)
    B = int(A_in.shape[0])
    if delta_last.shape != (B, widths[-1]):
        raise ValueError(f"fused_backward: delta_last {delta_last.shape} is not ({B}, {widths[-1]})")
    codes = [check_act(c) for c in act_codes]
    # the Z each layer's g' needs: layer l (l >= 1) takes g'_{l-1} from A_outs[l-1] or Z_outs[l-1]
    for l in range(1, L):
        if codes[l - 1] in _NEEDS_Z and Z_outs[l - 1] is None:
            raise ValueError(f"fused_backward: Z_outs[{l - 1}] is needed (activation code {codes[l - 1]})")
    want_din = delta_in_out is not None
    code_in = 0
    if want_din:
        if act_code_in is None:
            raise ValueError("fused_backward: act_code_in is needed with delta_in_out")
        code_in = check_act(act_code_in)
        if code_in in _NEEDS_Z and Z_in is None:
            raise ValueError("fused_backward: Z_in is needed for gelu/silu act_code_in")
        if delta_in_out.shape != (B, widths[0]):
            raise ValueError(f"fused_backward: delta_in_out {delta_in_out.shape} is not ({B}, {widths[0]})")
        if Z_in is not None and Z_in.shape != (B, widths[0]):
            raise ValueError(f"fused_backward: Z_in {Z_in.shape} is not ({B}, {widths[0]})")
    arrays = [delta_last, A_in, *Ws, *A_outs, *dWs, *dbs]
    arrays += [z for z in Z_outs if z is not None]
    if want_din:
        arrays.append(delta_in_out)
        if Z_in is not None and code_in in _NEEDS_Z:
            arrays.append(Z_in)
    _check(arrays, "fused_backward")
    for l in range(L):
        n_in, n_out = widths[l], widths[l + 1]
        if A_outs[l].shape != (B, n_out) or dWs[l].shape != (n_out, n_in) or dbs[l].shape != (n_out,):
            raise ValueError(f"fused_backward: layer {l}: A_out {A_outs[l].shape}, dW {dWs[l].shape}, "
                             f"db {dbs[l].shape} do not match widths {n_in} -> {n_out}, batch {B}")
        if Z_outs[l] is not None and Z_outs[l].shape != (B, n_out):
            raise ValueError(f"fused_backward: layer {l}: Z_out {Z_outs[l].shape} is not ({B}, {n_out})")
    if B == 0:
        for l in range(L):
            dWs[l].fill(0)
            dbs[l].fill(0)
        return widths, B, None
    rows = np.zeros((L, _FIELDS), dtype=np.int64)
    for l in range(L):
        n_in, n_out = widths[l], widths[l + 1]
        X = A_in if l == 0 else A_outs[l - 1]
        if l == 0:
            actx = code_in if want_din else 0
            Zx = Z_in if (want_din and code_in in _NEEDS_Z) else None
        else:
            actx = codes[l - 1]
            Zx = Z_outs[l - 1] if codes[l - 1] in _NEEDS_Z else None
        vec = 0
        if n_in % 4 == 0 and _aligned(Ws[l]):
            vec |= _VEC_W
        if n_in % 4 == 0 and _aligned(X):
            vec |= _VEC_X
        if Zx is not None and n_in % 4 == 0 and _aligned(Zx):
            vec |= _VEC_ZX
        r = rows[l]
        r[_W], r[_X] = Ws[l].data.ptr, X.data.ptr
        r[_ZX] = Zx.data.ptr if Zx is not None else 0
        r[_NIN], r[_NOUT], r[_ACTX], r[_VEC] = n_in, n_out, actx, vec
        r[_DW], r[_DB] = dWs[l].data.ptr, dbs[l].data.ptr
    return widths, B, rows


def fused_backward(delta_last, Ws, act_codes, A_in, A_outs, Z_outs, dWs, dbs,
                   delta_in_out=None, act_code_in=None, Z_in=None, precision: str = "float32",
                   scratch=None) -> None:
    """Backward of a run of narrow layers: every dWs[l], dbs[l], and delta_in_out when given.

    precision: "float32" (FFMA) or "tf32" (tensor cores for delta @ W and delta^T @ X,
    TF32 operands, fp32 accumulation; db is an fp32 sum either way)."""
    _suffix(precision)
    widths, B, rows = backward_rows(delta_last, Ws, act_codes, A_in, A_outs, Z_outs, dWs, dbs,
                                    delta_in_out, act_code_in, Z_in)
    if rows is None:
        return
    _check_arch(precision)
    L = len(Ws)
    want_din = delta_in_out is not None
    wmax = _wmax(widths)
    bm = CONFIGS[wmax][1]
    table = _table(rows, scratch, "bwd")

    n_tiles = cdiv(B, bm)
    G = bwd_grid(wmax, n_tiles, precision)
    ws, stride = _workspace(G, L, wmax, scratch)
    smem = bwd_smem_bytes(wmax, bm, precision)
    f = function(SPECS[0], _bwd_name(bm, wmax, precision), smem)
    vec_dl = widths[-1] % 4 == 0 and _aligned(delta_last)
    din = delta_in_out if want_din else delta_last    # never written when want_din == 0
    vec_din = want_din and widths[0] % 4 == 0 and _aligned(delta_in_out)
    f((G, 1, 1), (THREADS, 1, 1),
      (table, np.int32(L), np.int32(B), delta_last, np.int32(vec_dl),
       din, np.int32(want_din), np.int32(vec_din),
       ws, np.int64(stride), np.int32(n_tiles)), shared_mem=smem)
    launch_reduce(function(SPECS[0], _reduce_name(wmax), 0), widths, wmax, table, ws, stride, G)


def launch_reduce(f, widths, wmax: int, table, ws, stride: int, G: int) -> None:
    """The reduce of the backward's per-block partials, `f` (fused_mlp_reduce or the family's):
    one layer per grid row, so at most the device's grid height (`MaxGridDimY`, 65535) layers a
    launch; a deeper run is reduced in slices of layers, each launch given its first layer's row
    of the table and its first layer's partials (table[l0:], ws[l0 * LS:]: the kernel indexes
    both from its grid row)."""
    L = len(widths) - 1
    per = int(attributes().get("MaxGridDimY", 65535))
    LS = wmax * wmax + wmax
    for l0 in range(0, L, per):
        n = min(per, L - l0)
        max_e = max(widths[l + 1] * widths[l] + widths[l + 1] for l in range(l0, l0 + n))
        f((cdiv(max_e, 256), n, 1), (256, 1, 1), (table[l0:], ws[l0 * LS:], np.int64(stride), np.int32(G)))


# ------------------------------------------------------------------ what a run launches
def kernel_names(widths, precision: str = "float32") -> set[str]:
    """The kernels of a fused run of layers of these widths (input width first)."""
    _suffix(precision)
    wmax = _wmax(widths)
    bm_f, bm_b = CONFIGS[wmax]
    return {_fwd_name(bm_f, wmax, precision), _bwd_name(bm_b, wmax, precision), _reduce_name(wmax)}
