"""Launchers of the tensor-core GEMM kernels of `kernels/gemm_tc.cu` (experimental).

Same three fused GEMMs and signatures as `cuda_gemm`, plus `precision`
("tf32", "3xtf32" or "bf16"; see gpubp/precision.py for what each computes):

    gemm_fwd(A_prev, W, b, act_code, A_out, Z_out=None, precision="tf32", scratch=None)
        Z = A_prev @ W.T + b, A_out = g(Z), Z_out = Z when given.
    gemm_bwd_data(delta, W, A_prev, Z_prev, act_code, delta_prev_out, precision="tf32",
                  scratch=None)
        delta_prev_out = (delta @ W) * g'(.), g' from A_prev, or Z_prev for gelu/silu.
    gemm_bwd_weight(delta, A_prev, dW_out, db_out, precision="tf32", scratch=None)
        dW_out = delta.T @ A_prev, db_out = delta.sum(0) (float32 sums of the delta as
        stored); split over the batch into `scratch`, then reduced in split order.

In "bf16" the forward and input-gradient epilogues (one-kernel and split-K) store Z,
A_out and delta_prev_out rounded to bfloat16 (`gpubp.precision.round_stored`: the
mode's storage, in float32 buffers); the split-K epilogues have a bf16 instantiation
for it (`fwd_epilogue_name(act, "bf16")`), the other kernels take it from their mode.

Arguments are C-contiguous float32 CuPy arrays on the current device; launches go
on the current stream.  Nothing is cached in module state except the compiled
functions (`cuda_device.function`): the split workspaces are the caller's
`scratch` (a float32 CuPy array of at least `bwd_weight_scratch_size(M, N, K)`,
`fwd_scratch_size(M, N, K)` or `bwd_data_scratch_size(M, N, K)` elements, owned by
whoever runs the step, e.g. a StepPlan); with scratch=None each GEMM runs unsplit
(correct, slower when its output has few tiles).

Split-K of the forward and input-gradient GEMMs (small batches): when the output has
too few 128 x 128 tiles to fill the device, `fwd_splits` / `bwd_data_splits` (pure
functions of the shapes and the SM count, `cuda_launch.wave_splits`) cut the reduction
into S slices; slice z's blocks write float32 partial sums to `scratch`, and an
epilogue kernel adds the partials of each element in slice order 0..S-1 and applies
bias + activation (forward) or the g' product (input gradient).  Deterministic: the
same device and shapes give the same bits every run; S = 1 is the single-kernel path.

Needs compute capability 8.0+.  Not used by any backend's default path yet: only
`CudaBackend(tensor_core_gemms=True)`, an explicit opt-in, runs its per-layer GEMMs
here, until these kernels have passed their GPU tests.

Tiles (gemm_tc.cu): 128 x 128 block tile, BK 16, 256 threads, `STAGES`-deep
cp.async pipeline; dynamic shared memory `smem_bytes(precision)`.

CuPy is imported inside functions only, so this module imports without a GPU.
"""

from __future__ import annotations

import numpy as np

from ..activations import ACT_CODES, ACTIVATIONS, NEEDS_Z
from .cuda_device import compute_capability, function, sm_count
from .cuda_launch import aligned as _aligned
from .cuda_launch import batch_splits, cdiv, check_act, grid_1d, split_stride, wave_splits
from .cuda_source import ModuleSpec
from .kernel_constants import TC_BK as BK
from .kernel_constants import TC_BM as BM
from .kernel_constants import TC_MIN_BLOCKS_FWD as BLOCKS_PER_SM
from .kernel_constants import TC_THREADS as THREADS

#: the modes with kernels here, and their PREC template value
PREC_CODES = {"tf32": 0, "3xtf32": 1, "bf16": 2}
STAGES = 3
_N_ACT = len(ACTIVATIONS)
_NEEDS_Z_CODES = frozenset(ACT_CODES[a] for a in NEEDS_Z)


def smem_bytes(precision: str, stages: int = STAGES) -> int:
    """Dynamic shared memory of one block (STAGES * 2 operands * tile floats * 4 bytes)."""
    tile = 128 * 24 if precision == "bf16" else 128 * 20   # tc_pitch<PREC>::TILE
    return stages * 2 * tile * 4


def fwd_name(precision: str, act: int, stages: int = STAGES) -> str:
    return f"gemm_tc_fwd<{PREC_CODES[precision]}, {act}, {stages}>"


def bwd_data_name(precision: str, act: int, stages: int = STAGES) -> str:
    return f"gemm_tc_bwd_data<{PREC_CODES[precision]}, {act}, {stages}>"


def bwd_weight_name(precision: str, stages: int = STAGES) -> str:
    return f"gemm_tc_bwd_weight<{PREC_CODES[precision]}, {stages}>"


REDUCE_NAME = "gemm_tc_splitk_reduce"


def partial_name(precision: str, ypc: bool, stages: int = STAGES) -> str:
    """The split-K partial kernel: ypc False for the forward (W row-major in k), True for the
    input gradient (W read along its columns)."""
    return f"gemm_tc_splitk_partial<{PREC_CODES[precision]}, {'true' if ypc else 'false'}, {stages}>"


def _bf16_flag(precision: str) -> str:
    """The split-K epilogues' template flag: ", true" for bf16 (Z, A and deltas rounded to
    bfloat16 as stored), nothing otherwise (the float32-storing instantiation, as it always was)."""
    return ", true" if precision == "bf16" else ""


def fwd_epilogue_name(act: int, precision: str = "tf32") -> str:
    return f"gemm_tc_fwd_splitk_epilogue<{act}{_bf16_flag(precision)}>"


def bwd_data_epilogue_name(act: int, precision: str = "tf32") -> str:
    return f"gemm_tc_bwd_data_splitk_epilogue<{act}{_bf16_flag(precision)}>"


def round_name(precision: str) -> str:
    return f"gemm_tc_round<{PREC_CODES[precision]}>"


def _all_names() -> tuple[str, ...]:
    names = []
    for prec in PREC_CODES:
        names += [fwd_name(prec, a) for a in range(_N_ACT)]
        names += [bwd_data_name(prec, a) for a in range(_N_ACT)]
        names.append(bwd_weight_name(prec))
        names.append(round_name(prec))
        names += [partial_name(prec, False), partial_name(prec, True)]
    names.append(REDUCE_NAME)
    for prec in ("tf32", "bf16"):           # the float32-storing ones, then bf16's
        names += [fwd_epilogue_name(a, prec) for a in range(_N_ACT)]
        names += [bwd_data_epilogue_name(a, prec) for a in range(_N_ACT)]
    return tuple(names)


#: the tensor-core instruction each mode's mma.sync compiles to (SASS opcode prefix)
SASS_OPCODES = {"tf32": "HMMA.1688.F32.TF32", "3xtf32": "HMMA.1688.F32.TF32", "bf16": "HMMA.16816.F32.BF16"}


def _sass_expect(names) -> tuple[tuple[str, str], ...]:
    """Every GEMM kernel must hold its mode's HMMA (the compile check reads the SASS)."""
    by_code = {code: SASS_OPCODES[p] for p, code in PREC_CODES.items()}
    out = []
    for n in names:
        if n.startswith(("gemm_tc_fwd<", "gemm_tc_bwd_data<", "gemm_tc_bwd_weight<", "gemm_tc_splitk_partial<")):
            out.append((n, by_code[int(n[n.index("<") + 1:].split(",")[0])]))
    return tuple(out)


SPECS = (ModuleSpec(name="gemm_tc", files=("activations.cuh", "epilogue.cuh", "async_copy.cuh", "mma.cuh", "gemm_tc.cu"),
                    name_expressions=_all_names(), sass_expect=_sass_expect(_all_names())),)


def _launch(name: str, grid, args, smem: int = 0) -> None:
    f = function(SPECS[0], name, smem)
    f(grid, (THREADS, 1, 1), args, shared_mem=smem)


def _check_precision(precision) -> int:
    if precision not in PREC_CODES:
        raise ValueError(f"precision must be one of {', '.join(PREC_CODES)} for the tensor-core "
                         f"GEMMs, got {precision!r}")
    if compute_capability() < 80:
        raise RuntimeError(f"tensor-core GEMMs need compute capability 8.0 or newer; this device "
                           f"is {compute_capability() / 10:.1f}")
    return PREC_CODES[precision]


def _check_arrays(**arrays) -> None:
    """float32, C-contiguous, 2-D or 1-D as given; raises naming the argument."""
    for name, a in arrays.items():
        if a is None:
            continue
        if getattr(a, "dtype", None) != np.float32:
            raise TypeError(f"{name} must be a float32 CuPy array, got {getattr(a, 'dtype', type(a).__name__)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")


def _shape(name: str, a, want) -> None:
    if tuple(a.shape) != tuple(want):
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {tuple(want)}")


def _tiles(P: int, Q: int) -> int:
    return cdiv(P, BM) * cdiv(Q, BM)


# ----------------------------------------------------------------- split-K of fwd and bwd_data
#: fewest reduction elements (k of the forward, n of the input gradient) one slice sums
MIN_K_PER_SPLIT = 256
MAX_K_SPLITS = 16


def k_splits(P: int, Q: int, R: int, sms: int) -> tuple[int, int]:
    """`(S, r_per_split)` of a split-K GEMM with a P x Q output and a reduction of length R on a
    device with `sms` SMs: `cuda_launch.wave_splits` with `BLOCKS_PER_SM * sms` resident blocks,
    slices of whole k-tiles, at least `MIN_K_PER_SPLIT` long, at most `MAX_K_SPLITS`.
    `(1, R)`: the single-kernel path (tiles fill half the device or more, or R is short)."""
    return wave_splits(_tiles(P, Q), BLOCKS_PER_SM * sms, R, BK, MAX_K_SPLITS, MIN_K_PER_SPLIT)


def fwd_splits(M: int, N: int, K: int, sms: int) -> tuple[int, int]:
    """`(S, k_per_split)` of `gemm_fwd` (output M x N, reduction over K)."""
    return k_splits(M, N, K, sms)


def bwd_data_splits(M: int, N: int, K: int, sms: int) -> tuple[int, int]:
    """`(S, n_per_split)` of `gemm_bwd_data` (delta M x N, W N x K: output M x K, reduction over N)."""
    return k_splits(M, K, N, sms)


def partial_stride(P: int, Q: int) -> int:
    """Elements of one slice's P x Q partial sums, padded to a multiple of 4 (16-byte aligned slices)."""
    return cdiv(P * Q, 4) * 4


def fwd_scratch_size(M: int, N: int, K: int, sms: int | None = None) -> int:
    """Float32 elements of `scratch` that `gemm_fwd` uses for these shapes (0: none)."""
    S, _ = fwd_splits(M, N, K, sm_count() if sms is None else sms)
    return 0 if S == 1 else S * partial_stride(M, N)


def bwd_data_scratch_size(M: int, N: int, K: int, sms: int | None = None) -> int:
    """Float32 elements of `scratch` that `gemm_bwd_data` uses for these shapes (0: none)."""
    S, _ = bwd_data_splits(M, N, K, sm_count() if sms is None else sms)
    return 0 if S == 1 else S * partial_stride(M, K)


def _split_or_not(S: int, per: int, R: int, need: int, scratch, what: str, sizer: str) -> tuple[int, int]:
    """The split to run: (S, per) when `scratch` holds `need` elements, (1, R) without a scratch;
    a ValueError (before any launch) for a scratch too short."""
    if S > 1 and (scratch is None or scratch.size < need):
        if scratch is not None:
            raise ValueError(f"scratch holds {scratch.size} elements; {what} needs {need} ({sizer})")
        return 1, max(R, 1)
    return S, per


def _splitk(name_partial: str, X, Y, ws, P: int, Q: int, R: int, S: int, per: int, ypc: bool, smem: int) -> int:
    """Launch the S slices' partial sums of a P x Q output into `ws`; returns the slice stride."""
    stride = partial_stride(P, Q)
    vec_x = R % 4 == 0 and _aligned(X, 16)
    vec_y = (Q if ypc else R) % 4 == 0 and _aligned(Y, 16)
    vec_out = Q % 2 == 0 and _aligned(ws, 8)    # stride % 4 == 0 keeps every slice aligned
    _launch(name_partial, (_tiles(P, Q), 1, S),
            (X, Y, ws, np.int32(P), np.int32(Q), np.int32(R), np.int32(per), np.int64(stride),
             np.int32(vec_x), np.int32(vec_y), np.int32(vec_out)), smem)
    return stride


def _epilogue_blocks(n: int, vec: bool) -> int:
    return grid_1d(n // 4 if vec else n, THREADS, 8 * sm_count())


# ----------------------------------------------------------------- forward
def gemm_fwd(A_prev, W, b, act_code: int, A_out, Z_out=None, precision: str = "tf32", scratch=None) -> None:
    """`Z = A_prev @ W.T + b`; `A_out = g(Z)`; `Z_out = Z` when given.  With `fwd_splits` > 1 and
    a `scratch` of `fwd_scratch_size` elements: split-K (partials, then the ordered sum + bias +
    activation); bitwise reproducible either way."""
    act = check_act(act_code)
    _check_precision(precision)
    _check_arrays(A_prev=A_prev, W=W, b=b, A_out=A_out, Z_out=Z_out, scratch=scratch)
    M, K = A_prev.shape
    N = W.shape[0]
    _shape("W", W, (N, K))
    _shape("b", b, (N,))
    _shape("A_out", A_out, (M, N))
    if Z_out is not None:
        _shape("Z_out", Z_out, (M, N))
    if M == 0 or N == 0:
        return
    S, per = fwd_splits(M, N, K, sm_count())
    S, per = _split_or_not(S, per, K, S * partial_stride(M, N), scratch, "gemm_fwd", "fwd_scratch_size")
    outs = (A_out,) if Z_out is None else (A_out, Z_out)
    z = Z_out if Z_out is not None else A_out   # never written when write_z == 0
    if S > 1:
        ws = scratch.ravel()
        stride = _splitk(partial_name(precision, False), A_prev, W, ws, M, N, K, S, per, False,
                         smem_bytes(precision))
        vec = N % 4 == 0 and all(_aligned(x, 16) for x in (ws, b) + outs)
        _launch(fwd_epilogue_name(act, precision), (_epilogue_blocks(M * N, vec), 1, 1),
                (ws, b, A_out, z, np.int32(M), np.int32(N), np.int32(S), np.int64(stride),
                 np.int32(Z_out is not None), np.int32(vec)))
        return
    vec_in = K % 4 == 0 and _aligned(A_prev, 16) and _aligned(W, 16)
    vec_out = N % 2 == 0 and all(_aligned(o, 8) for o in outs)
    _launch(fwd_name(precision, act), (_tiles(M, N), 1, 1),
            (A_prev, W, b, A_out, z, np.int32(M), np.int32(N), np.int32(K),
             np.int32(Z_out is not None), np.int32(vec_in), np.int32(vec_out)), smem_bytes(precision))


# ----------------------------------------------------------------- backward, data
def gemm_bwd_data(delta, W, A_prev, Z_prev, act_code: int, delta_prev_out, precision: str = "tf32",
                  scratch=None) -> None:
    """`delta_prev_out = (delta @ W) * g'(.)`; g' from `A_prev`, or `Z_prev` (gelu, silu).  With
    `bwd_data_splits` > 1 and a `scratch` of `bwd_data_scratch_size` elements: split-K over N
    (partials, then the ordered sum times g'); bitwise reproducible either way."""
    act = check_act(act_code)
    _check_precision(precision)
    needs_z = act in _NEEDS_Z_CODES
    needs_a = not needs_z and act != ACT_CODES["identity"]
    g_src = Z_prev if needs_z else (A_prev if needs_a else None)
    if (needs_z or needs_a) and g_src is None:
        raise ValueError("gemm_bwd_data: " + ("Z_prev" if needs_z else "A_prev") + " is needed")
    _check_arrays(delta=delta, W=W, delta_prev_out=delta_prev_out, scratch=scratch,
                  **{("Z_prev" if needs_z else "A_prev"): g_src})
    M, N = delta.shape
    K = W.shape[1]
    _shape("W", W, (N, K))
    _shape("delta_prev_out", delta_prev_out, (M, K))
    if g_src is not None:
        _shape("Z_prev" if needs_z else "A_prev", g_src, (M, K))
    if M == 0 or K == 0:
        return
    S, per = bwd_data_splits(M, N, K, sm_count())
    S, per = _split_or_not(S, per, N, S * partial_stride(M, K), scratch, "gemm_bwd_data", "bwd_data_scratch_size")
    if g_src is None:
        g_src = delta_prev_out   # never read
    if S > 1:
        ws = scratch.ravel()
        stride = _splitk(partial_name(precision, True), delta, W, ws, M, K, N, S, per, True,
                         smem_bytes(precision))
        vec = K % 4 == 0 and all(_aligned(x, 16) for x in (ws, delta_prev_out, g_src))
        _launch(bwd_data_epilogue_name(act, precision), (_epilogue_blocks(M * K, vec), 1, 1),
                (ws, g_src, g_src, delta_prev_out, np.int64(M * K), np.int32(S), np.int64(stride), np.int32(vec)))
        return
    vec_d = N % 4 == 0 and _aligned(delta, 16)
    vec_w = K % 4 == 0 and _aligned(W, 16)
    vec_out = K % 2 == 0 and _aligned(delta_prev_out, 8) and _aligned(g_src, 8)
    _launch(bwd_data_name(precision, act), (_tiles(M, K), 1, 1),
            (delta, W, g_src, g_src, delta_prev_out, np.int32(M), np.int32(N), np.int32(K),
             np.int32(vec_d), np.int32(vec_w), np.int32(vec_out)), smem_bytes(precision))


# ----------------------------------------------------------------- backward, weights
#: fewest batch rows one split sums
MIN_ROWS_PER_SPLIT = 256
MAX_SPLITS = 64


def splits(M: int, N: int, K: int, sms: int) -> tuple[int, int]:
    """(S, rows_per_split) of the weight gradient on a device with `sms` SMs
    (`cuda_launch.batch_splits`)."""
    return batch_splits(M, _tiles(N, K), sms, BK, MAX_SPLITS, MIN_ROWS_PER_SPLIT)


def bwd_weight_scratch_size(M: int, N: int, K: int, sms: int | None = None) -> int:
    """Float32 elements of `scratch` that `gemm_bwd_weight` uses for these shapes (0: none)."""
    S, _ = splits(M, N, K, sm_count() if sms is None else sms)
    return 0 if S == 1 else S * split_stride(N, K)


def gemm_bwd_weight(delta, A_prev, dW_out, db_out, precision: str = "tf32", scratch=None) -> None:
    """`dW_out = delta.T @ A_prev`, `db_out = delta.sum(0)`; bitwise reproducible."""
    _check_precision(precision)
    _check_arrays(delta=delta, A_prev=A_prev, dW_out=dW_out, db_out=db_out, scratch=scratch)
    M, N = delta.shape
    K = A_prev.shape[1]
    _shape("A_prev", A_prev, (M, K))
    _shape("dW_out", dW_out, (N, K))
    _shape("db_out", db_out, (N,))
    if N == 0:
        return
    name, smem = bwd_weight_name(precision), smem_bytes(precision)
    vec_d = N % 4 == 0 and _aligned(delta, 16)
    vec_a = K % 4 == 0 and _aligned(A_prev, 16)
    S, rows = splits(M, N, K, sm_count())
    stride = split_stride(N, K)
    if S > 1 and (scratch is None or scratch.size < S * stride):
        if scratch is not None:
            raise ValueError(f"scratch holds {scratch.size} elements; gemm_bwd_weight needs "
                             f"{S * stride} (bwd_weight_scratch_size)")
        S, rows = 1, max(M, 1)
    tiles = _tiles(N, K)
    if S == 1:
        vec_out = K % 2 == 0 and _aligned(dW_out, 8)
        _launch(name, (tiles, 1, 1), (delta, A_prev, dW_out, db_out, np.int32(M), np.int32(N),
                                      np.int32(K), np.int32(rows), np.int64(0), np.int32(vec_d),
                                      np.int32(vec_a), np.int32(vec_out)), smem)
        return
    ws = scratch.ravel()
    NK = N * K
    vec_out = K % 2 == 0 and _aligned(ws, 8)   # stride % 4 == 0 keeps every split aligned
    _launch(name, (tiles, 1, S), (delta, A_prev, ws, ws[NK:], np.int32(M), np.int32(N), np.int32(K),
                                  np.int32(rows), np.int64(stride), np.int32(vec_d), np.int32(vec_a),
                                  np.int32(vec_out)), smem)
    blocks = grid_1d(NK + N, THREADS, 8 * sm_count())
    _launch(REDUCE_NAME, (blocks, 1, 1), (ws, dW_out, db_out, np.int32(S), np.int64(stride),
                                          np.int64(NK), np.int32(N)))


def kernel_names(precision: str, M: int, N: int, K: int, act: int, prev_act: int | None,
                 sms: int | None = None, forward: bool = True) -> set[str]:
    """The kernels one layer's GEMMs launch with a scratch (`CudaBackend.prepare` compiles them
    with the plan): the forward (M x N from K inputs, activation `act`), or its split-K partial
    and epilogue, unless `forward` is false (the Hopper kernels run it); the weight gradient (and
    its reduce when split); with `prev_act` (the layer below's activation code) the input
    gradient through it, or its split-K pair."""
    sms = sm_count() if sms is None else sms
    names = {bwd_weight_name(precision)}
    if splits(M, N, K, sms)[0] > 1:
        names.add(REDUCE_NAME)
    if not forward:
        pass
    elif fwd_splits(M, N, K, sms)[0] > 1:
        names |= {partial_name(precision, False), fwd_epilogue_name(act, precision)}
    else:
        names.add(fwd_name(precision, act))
    if prev_act is not None:
        if bwd_data_splits(M, N, K, sms)[0] > 1:
            names |= {partial_name(precision, True), bwd_data_epilogue_name(prev_act, precision)}
        else:
            names.add(bwd_data_name(precision, prev_act))
    return names


def round_like_kernels(x, precision: str):
    """The kernels' operand conversion of float32 `x` (for checking gpubp.precision bit for bit):
    tf32 / bf16 rounded values, or for 3xtf32 an array (2, n) of hi and lo."""
    import cupy

    _check_precision(precision)
    _check_arrays(x=x)
    n = x.size
    out = cupy.empty((2 if precision == "3xtf32" else 1) * n, dtype=np.float32)
    _launch(round_name(precision), (grid_1d(n, THREADS, 1024), 1, 1), (x, out, np.int64(n)))
    return out.reshape(2, n) if precision == "3xtf32" else out
