"""Launchers of the Hopper GEMMs of `kernels/gemm_wgmma.cu` (experimental, sm_90 only).

    gemm_fwd(A_prev, W, b, act_code, A_out, Z_out=None, precision="tf32", scratch=None, bn=None)
        Z = A_prev @ W.T + b, A_out = g(Z), Z_out = Z when given; the signature and results of
        `cuda_gemm_tc.gemm_fwd` for "tf32" and "bf16" (same rounding of the operands, float32
        accumulation; the sums' order differs, so results agree to rounding, not bitwise).
    gemm_bwd_data(delta, W, A_prev, Z_prev, act_code, delta_prev_out, precision="tf32", scratch=None, bn=None,
                  delta_copy=None)
        delta_prev_out = (delta @ W) * g'(.), as `cuda_gemm_tc.gemm_bwd_data`, on copies of delta
        and of W transposed (K x N), so that both wgmma operands are K-major; `delta_copy`: the
        copy of delta that `gemm_bwd_weight` returned, reused instead of copying delta again.
    gemm_bwd_weight(delta, A_prev, dW_out, db_out, precision="bf16", scratch=None, bn=None) -> delta's copy
        dW_out = delta.T @ A_prev, db_out = delta.sum(0), as `cuda_gemm_tc.gemm_bwd_weight`, bf16
        only: both operands are batch-major (MN-major for the reduction over the batch), which bf16
        wgmma reads transposed; TF32 wgmma cannot, so "tf32" stays on `cuda_gemm_tc`.  db comes
        from the copy of delta (`gemm_wgmma_copy_colsum_bf16`), the batch is split when the output
        has few tiles (`wgrad_splits`), and gemm_tc's ordered reduce adds the partials.

How a call runs (all on the current stream):
  1. operand copies: `gemm_wgmma_copy_tf32` / `_bf16` write A_prev and W rounded to the mode
     (TF32 values as float32, or bfloat16) into row-padded buffers (`padded_cols(K)`: rows of
     a multiple of 8 elements, so the TMA row stride is a multiple of 16 bytes for any K);
  2. tensor maps: one `CUtensorMap` per copy (`encode_tiled`, cuda.bindings.driver's
     `cuTensorMapEncodeTiled`: 2-D, box {128 bytes of k, 128 or BN rows}, 128-byte swizzle,
     zero fill out of bounds), passed by value as `__grid_constant__` parameters (a 1-element
     numpy array of 128 bytes, which CuPy passes by value);
  3. `gemm_wgmma_fwd<PREC, ACT, BN>`: 384 threads, `smem_bytes(bn)` of dynamic shared memory.

The copies cost a read of A_prev and W and a write of half (bf16) or all (tf32) of their bytes
per call: the price of float32 storage (the kernel cannot round while TMA stages the tiles, and
TF32 wgmma on unrounded float32 would truncate).  With `scratch` (a `plan.Scratch`) the copies
are plan buffers and their tensor maps are encoded once and kept in `scratch.memo` (keyed by
address, shape and box), so a captured CUDA graph replays with no host work; with scratch=None
each call allocates its copies and encodes its maps.

`bn=None` picks 256 columns per block when that still gives at least one block per SM, else 128.
K == 0 (no products: Z = b) runs on `cuda_gemm_tc.gemm_fwd`.  Everything else is checked as
in `cuda_gemm_tc` (float32, C-contiguous, shapes), plus compute capability 9.0: the cubin is
built for sm_90a only.  The module is built by `cubin_cache` (NVRTC, sm_90a, cached on disk).

Not used by any default path: only `CudaBackend(tensor_core_gemms=True, hopper=True)` runs its
"tf32" and "bf16" forward and input-gradient GEMMs (and the "bf16" weight gradient) here, until these
kernels have passed their GPU tests.  CuPy and cuda.bindings.driver are imported inside
functions only, so this module imports without a GPU.
"""

from __future__ import annotations

import struct

import numpy as np

from ..activations import ACTIVATIONS
from . import cubin_cache, cuda_gemm_tc
from .cuda_device import compute_capability, sm_count
from .cuda_launch import aligned as _aligned
from .cuda_launch import cdiv, check_act, even_slices, gprime_source, grid_1d, split_stride
from .cuda_source import ModuleSpec
from .kernel_constants import WG_BM as BM
from .kernel_constants import WG_STAGES as STAGES
from .kernel_constants import WG_THREADS as THREADS

#: the modes with kernels here, and their PREC template value (gemm_tc.cu's codes)
PREC_CODES = {"tf32": 0, "bf16": 2}
#: block tile columns the kernel is built for
BNS = (128, 256)
#: bytes of one swizzled shared-memory row (a k-tile of either operand)
ROW_BYTES = 128
#: block size of the operand-copy kernels
COPY_THREADS = 256
ARCH = "sm_90a"
_N_ACT = len(ACTIVATIONS)

#: numpy type of a CUtensorMap passed by value (128 bytes; CuPy passes a 1-element array's bytes)
TENSOR_MAP_DTYPE = np.dtype([("opaque", "<u8", (16,))])
assert TENSOR_MAP_DTYPE.itemsize == 128


def element_bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


def box_k(precision: str) -> int:
    """Elements of k in one 128-byte row: 32 (tf32) or 64 (bf16)."""
    return ROW_BYTES // element_bytes(precision)


def padded_cols(K: int) -> int:
    """Row length (elements) of the operand copies: K rounded up to a multiple of 8."""
    return cdiv(K, 8) * 8


def smem_bytes(bn: int) -> int:
    """Dynamic shared memory of one block: alignment slack, WG_STAGES stages of the A tile
    (128 rows) and the W tile (bn rows) of 128-byte rows, 2 * WG_STAGES mbarriers."""
    return 1024 + STAGES * (BM + bn) * ROW_BYTES + 2 * STAGES * 8


def fwd_name(precision: str, act: int, bn: int = 128) -> str:
    return f"gemm_wgmma_fwd<{PREC_CODES[precision]}, {act}, {bn}>"


def bwd_data_name(precision: str, act: int, bn: int = 128) -> str:
    return f"gemm_wgmma_bwd_data<{PREC_CODES[precision]}, {act}, {bn}>"


def bwd_weight_name(precision: str, bn: int = 128) -> str:
    return f"gemm_wgmma_bwd_weight<{PREC_CODES[precision]}, {bn}>"


#: the modes whose weight gradient runs here: bf16 only (wgmma reads bf16 operands transposed)
WGRAD_PRECISIONS = ("bf16",)
#: the copy of delta fused with the bias gradient's column sums (the weight gradient's)
COLSUM_NAME = "gemm_wgmma_copy_colsum_bf16"
COPY_NAMES = {"tf32": "gemm_wgmma_copy_tf32", "bf16": "gemm_wgmma_copy_bf16"}
COPY_T_NAMES = {"tf32": "gemm_wgmma_copy_t_tf32", "bf16": "gemm_wgmma_copy_t_bf16"}


def _all_names() -> tuple[str, ...]:
    names = [f(p, a, bn) for f in (fwd_name, bwd_data_name) for p in PREC_CODES for a in range(_N_ACT)
             for bn in BNS]
    names += [bwd_weight_name(p, bn) for p in WGRAD_PRECISIONS for bn in BNS]
    return tuple(names) + tuple(COPY_NAMES.values()) + tuple(COPY_T_NAMES.values()) + (COLSUM_NAME,)


#: the SASS each forward kernel must hold: its wgmma (HGMMA) and its TMA loads (UTMALDG)
SASS_OPCODES = {"tf32": "HGMMA.64x128x8.F32.TF32", "bf16": "HGMMA.64x128x16.F32.BF16"}
#: the weight gradient's wgmma reads both shared operands transposed (MN-major)
WGRAD_SASS_TRANSPOSE = "tnspA.tnspB"


def _sass_expect(names) -> tuple[tuple[str, str], ...]:
    by_code = {code: SASS_OPCODES[p] for p, code in PREC_CODES.items()}
    out = []
    for n in names:
        if n.startswith(("gemm_wgmma_fwd<", "gemm_wgmma_bwd_data<", "gemm_wgmma_bwd_weight<")):
            out.append((n, by_code[int(n[n.index("<") + 1:].split(",")[0])]))
            out.append((n, "UTMALDG"))
            if n.startswith("gemm_wgmma_bwd_weight<"):
                out.append((n, WGRAD_SASS_TRANSPOSE))
    return tuple(out)


SPECS = (ModuleSpec(name="gemm_wgmma",
                    files=("activations.cuh", "epilogue.cuh", "async_copy.cuh", "mma.cuh", "hopper.cuh", "gemm_wgmma.cu"),
                    name_expressions=_all_names(), sass_expect=_sass_expect(_all_names()), archs=(ARCH,)),)


def available() -> bool:
    """Whether the current device can run these kernels (compute capability 9.0)."""
    return compute_capability() == 90


def _check_precision(precision) -> int:
    if precision not in PREC_CODES:
        raise ValueError(f"precision must be one of {', '.join(PREC_CODES)} for the Hopper GEMM, "
                         f"got {precision!r}")
    if not available():
        raise RuntimeError(f"the Hopper GEMM (wgmma, built for sm_90a) needs compute capability 9.0; "
                           f"this device is {compute_capability() / 10:.1f}")
    return PREC_CODES[precision]


# ----------------------------------------------------------------- tensor maps
def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as e:
        raise RuntimeError("the Hopper GEMM needs cuda-bindings (cuda.bindings.driver) for its TMA "
                           "tensor maps: pip install cuda-bindings") from e
    (err,) = driver.cuInit(0)
    if int(err) != 0:
        raise RuntimeError(f"cuInit failed: {err}")
    return driver


def encode_tiled(ptr: int, rows: int, cols: int, ld: int, precision: str, box_rows: int,
                 driver=None) -> np.ndarray:
    """The tensor map of a row-major (rows x cols) matrix of the mode's element type at device
    address `ptr` with rows `ld` elements apart: box {box_k(precision), box_rows}, 128-byte
    swizzle, zeros out of bounds.  Returns a 1-element `TENSOR_MAP_DTYPE` array (the kernel
    parameter)."""
    drv = driver or _driver()
    elem = element_bytes(precision)
    if ptr % 16 or (ld * elem) % 16:
        raise ValueError(f"a TMA tensor needs a 16-byte aligned base and row stride (address {ptr:#x}, "
                         f"row stride {ld * elem} bytes)")
    T = drv.CUtensorMapDataType
    dtype = T.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 if precision == "bf16" else T.CU_TENSOR_MAP_DATA_TYPE_FLOAT32
    u64, u32 = drv.cuuint64_t, drv.cuuint32_t
    err, tmap = drv.cuTensorMapEncodeTiled(
        dtype, 2, ptr, [u64(cols), u64(rows)], [u64(ld * elem)], [u32(box_k(precision)), u32(box_rows)],
        [u32(1), u32(1)], drv.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        drv.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        drv.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        drv.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    if int(err) != 0:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed ({err}) for a {rows} x {cols} {precision} "
                           f"tensor, row stride {ld * elem} bytes, box {box_k(precision)} x {box_rows}")
    out = np.zeros(1, dtype=TENSOR_MAP_DTYPE)
    out["opaque"][0] = [int(v) for v in tmap.opaque]
    return out


def _tensor_map(copy, rows, cols, precision, box_rows, scratch):
    ptr = int(copy.data.ptr)
    ld = int(copy.shape[1])
    if scratch is None:
        return encode_tiled(ptr, rows, cols, ld, precision, box_rows)
    content = struct.pack("<5q", ptr, rows, cols, ld, box_rows) + precision.encode()
    return scratch.memo("wgmma_tensor_map", content,
                        lambda: encode_tiled(ptr, rows, cols, ld, precision, box_rows))


# ----------------------------------------------------------------- launches
def _launch(name, grid, block, args, smem=0):
    cubin_cache.function(SPECS[0], name, smem)(grid, block, args, shared_mem=smem)


def _copy(x, precision, which, scratch):
    """The mode-rounded, row-padded copy of the (rows x cols) float32 matrix x."""
    import cupy

    rows, cols = x.shape
    shape, dtype = copy_shape(rows, cols), copy_dtype(precision)
    out = cupy.empty(shape, dtype=dtype) if scratch is None else scratch.get(("wgmma_copy", which), shape, dtype)
    blocks = max(1, min(rows, 16 * sm_count()))
    _launch(COPY_NAMES[precision], (blocks, 1, 1), (COPY_THREADS, 1, 1),
            (x, out, np.int64(rows), np.int32(cols), np.int32(shape[1])))
    return out


def _copy_t(x, precision, which, scratch):
    """The mode-rounded transpose (cols x rows, rows padded) of the (rows x cols) float32 matrix x."""
    import cupy

    rows, cols = x.shape
    shape, dtype = copy_shape(cols, rows), copy_dtype(precision)
    out = cupy.empty(shape, dtype=dtype) if scratch is None else scratch.get(("wgmma_copy_t", which), shape, dtype)
    grid = (max(1, min(cdiv(cols, 32), 65535)), max(1, min(cdiv(rows, 32), 65535)), 1)
    _launch(COPY_T_NAMES[precision], grid, (32, 8, 1),
            (x, out, np.int32(rows), np.int32(cols), np.int32(shape[1])))
    return out


def copy_shape(rows: int, cols: int) -> tuple[int, int]:
    """The shape of the row-padded copy of a (rows x cols) matrix."""
    return rows, padded_cols(cols)


def copy_dtype(precision: str):
    """The element type of a copy in `precision`: bfloat16 bits (uint16) or TF32 values (float32)."""
    return np.dtype(np.uint16) if precision == "bf16" else np.dtype(np.float32)


def _check_copy(name, copy, rows, cols, precision) -> None:
    """Refuse an operand copy passed in that is not one `_copy` would have made for these shapes."""
    if not hasattr(getattr(copy, "data", None), "ptr"):
        raise TypeError(f"{name} must be a CuPy device array, got {type(copy).__name__}")
    dtype = copy_dtype(precision)
    if np.dtype(copy.dtype) != dtype:
        raise ValueError(f"{name} must hold {dtype} for precision {precision!r}, got {np.dtype(copy.dtype)}")
    cuda_gemm_tc._shape(name, copy, copy_shape(rows, cols))
    if not copy.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def _check_bn(bn) -> None:
    if bn is not None and bn not in BNS:
        raise ValueError(f"bn must be one of {BNS}, got {bn!r}")


def choose_bn(M: int, N: int, sms: int) -> int:
    """256 columns per block when that still gives every SM a block, else 128."""
    return 256 if N > 128 and cdiv(M, BM) * cdiv(N, 256) >= sms else 128


def gemm_fwd(A_prev, W, b, act_code: int, A_out, Z_out=None, precision: str = "tf32", scratch=None,
             bn: int | None = None) -> None:
    """`Z = A_prev @ W.T + b`; `A_out = g(Z)`; `Z_out = Z` when given."""
    act = check_act(act_code)
    _check_precision(precision)
    cuda_gemm_tc._check_arrays(A_prev=A_prev, W=W, b=b, A_out=A_out, Z_out=Z_out)
    if A_prev.ndim != 2 or W.ndim != 2:
        raise ValueError(f"A_prev and W must be 2-D, got {A_prev.ndim}-D and {W.ndim}-D")
    M, K = A_prev.shape
    N = W.shape[0]
    cuda_gemm_tc._shape("W", W, (N, K))
    cuda_gemm_tc._shape("b", b, (N,))
    cuda_gemm_tc._shape("A_out", A_out, (M, N))
    if Z_out is not None:
        cuda_gemm_tc._shape("Z_out", Z_out, (M, N))
    _check_bn(bn)
    if M == 0 or N == 0:
        return
    if K == 0:
        cuda_gemm_tc.gemm_fwd(A_prev, W, b, act, A_out, Z_out, precision=precision)
        return
    a_copy = _copy(A_prev, precision, "A", scratch)
    w_copy = _copy(W, precision, "W", scratch)
    launch_fwd(a_copy, w_copy, K, b, act, A_out, Z_out, precision, scratch, bn)


def launch_fwd(a_copy, w_copy, K: int, b, act: int, A_out, Z_out, precision: str, scratch=None,
               bn: int | None = None) -> None:
    """The GEMM kernel alone, on operand copies made by `_copy` (checked arguments; the
    benchmark times it apart from the copies)."""
    M, N = a_copy.shape[0], w_copy.shape[0]
    bn = bn or choose_bn(M, N, sm_count())
    tm_a = _tensor_map(a_copy, M, K, precision, BM, scratch)
    tm_w = _tensor_map(w_copy, N, K, precision, bn, scratch)
    outs = (A_out,) if Z_out is None else (A_out, Z_out)
    vec_out = N % 2 == 0 and all(_aligned(o, 8) for o in outs)
    z = Z_out if Z_out is not None else A_out   # never written when write_z == 0
    grid = (cdiv(M, BM) * cdiv(N, bn), 1, 1)
    _launch(fwd_name(precision, act, bn), grid, (THREADS, 1, 1),
            (tm_a, tm_w, b, A_out, z, np.int32(M), np.int32(N), np.int32(K), np.int32(Z_out is not None),
             np.int32(vec_out)), smem_bytes(bn))


# ----------------------------------------------------------------- backward, data
def gemm_bwd_data(delta, W, A_prev, Z_prev, act_code: int, delta_prev_out, precision: str = "tf32",
                  scratch=None, bn: int | None = None, delta_copy=None) -> None:
    """`delta_prev_out = (delta @ W) * g'(.)`; g' from `A_prev`, or `Z_prev` (gelu, silu): the
    signature and results of `cuda_gemm_tc.gemm_bwd_data` for "tf32" and "bf16".  Runs on copies
    of delta (rounded) and of W transposed (rounded, K x N: K-major for the reduction over N);
    N == 0 runs on `cuda_gemm_tc`.

    `delta_copy`, when given, is the rounded, row-padded copy of this `delta` that
    `gemm_bwd_weight` made and returned in the same backward step (the same rounding: its copy
    kernel and `gemm_wgmma_copy_bf16` round alike): it is read instead of copying delta again, which
    saves a read of delta and a write of its copy.  It must be a device array of
    `copy_shape(M, N)` and `copy_dtype(precision)`, C-contiguous; the caller keeps it unchanged
    since it was made from delta."""
    act = check_act(act_code)
    _check_precision(precision)
    g_name, g_src = gprime_source(act, A_prev, Z_prev)
    cuda_gemm_tc._check_arrays(delta=delta, W=W, delta_prev_out=delta_prev_out, **{g_name: g_src})
    if delta.ndim != 2 or W.ndim != 2:
        raise ValueError(f"delta and W must be 2-D, got {delta.ndim}-D and {W.ndim}-D")
    M, N = delta.shape
    K = W.shape[1]
    cuda_gemm_tc._shape("W", W, (N, K))
    cuda_gemm_tc._shape("delta_prev_out", delta_prev_out, (M, K))
    if g_src is not None:
        cuda_gemm_tc._shape(g_name, g_src, (M, K))
    _check_bn(bn)
    if M == 0 or K == 0:
        return
    if N == 0:
        cuda_gemm_tc.gemm_bwd_data(delta, W, A_prev, Z_prev, act, delta_prev_out, precision=precision)
        return
    if delta_copy is not None:
        _check_copy("delta_copy", delta_copy, M, N, precision)
    if g_src is None:
        g_src = delta_prev_out   # never read
    d_copy = delta_copy if delta_copy is not None else _copy(delta, precision, "D", scratch)
    wt_copy = _copy_t(W, precision, "Wt", scratch)
    bn = bn or choose_bn(M, K, sm_count())
    tm_d = _tensor_map(d_copy, M, N, precision, BM, scratch)
    tm_wt = _tensor_map(wt_copy, K, N, precision, bn, scratch)
    vec_out = K % 2 == 0 and _aligned(delta_prev_out, 8) and _aligned(g_src, 8)
    grid = (cdiv(M, BM) * cdiv(K, bn), 1, 1)
    _launch(bwd_data_name(precision, act, bn), grid, (THREADS, 1, 1),
            (tm_d, tm_wt, g_src, g_src, delta_prev_out, np.int32(M), np.int32(N), np.int32(K), np.int32(vec_out)),
            smem_bytes(bn))


# ----------------------------------------------------------------- backward, weights (bf16)
#: batch rows of one k-tile of the weight gradient (its splits cut the batch on whole k-tiles)
WGRAD_BK = 64
#: fewest batch rows one split of the weight gradient sums, and the most splits
WGRAD_MIN_ROWS = 256
WGRAD_MAX_SPLITS = 64
#: the column sums' row slices when the GEMM is not split: about COLSUM_BLOCKS_PER_SM blocks of
#: 32 columns per SM, each slice at least COLSUM_MIN_ROWS rows, at most COLSUM_MAX_SLICES
COLSUM_BLOCKS_PER_SM = 4
COLSUM_MIN_ROWS = 32
COLSUM_MAX_SLICES = 32


def wgrad_splits(M: int, N: int, K: int, sms: int, bn: int) -> tuple[int, int]:
    """`(S, rows_per_split)` of `gemm_bwd_weight`: when the N x K output has fewer block tiles
    (128 x bn) than SMs (one block per SM: 132 or 197 KB of shared memory), the batch is cut into
    S <= sms // tiles contiguous splits of whole 64-row k-tiles, each at least WGRAD_MIN_ROWS
    rows, at most WGRAD_MAX_SPLITS (`cuda_launch.even_slices`; no split empty).  A pure function
    of the shapes and the SM count, so a device gives the same bits every run."""
    tiles = cdiv(N, BM) * cdiv(K, bn)
    S = min(sms // max(tiles, 1), M // WGRAD_MIN_ROWS, WGRAD_MAX_SPLITS) if tiles < sms else 1
    return even_slices(M, S, WGRAD_BK)


def colsum_slices(M: int, N: int, sms: int) -> tuple[int, int]:
    """`(S, rows_per_slice)` of db's column sums when the weight gradient is not split."""
    S = min(cdiv(COLSUM_BLOCKS_PER_SM * sms, cdiv(N, 32)), M // COLSUM_MIN_ROWS, COLSUM_MAX_SLICES)
    return even_slices(M, S, 8)


def choose_wgrad_bn(N: int, K: int, sms: int) -> int:
    """`choose_bn` of the weight gradient's N x K output."""
    return choose_bn(N, K, sms)


def _buf(scratch, key, shape, dtype):
    import cupy

    return cupy.empty(shape, dtype=dtype) if scratch is None else scratch.get(key, shape, dtype)


def wgrad_plan(M: int, N: int, K: int, sms: int, bn: int | None = None) -> dict:
    """What `gemm_bwd_weight` launches for these shapes: block width `bn`, GEMM splits `S` of
    `rows` batch rows, column-sum slices `Sc` of `crows` rows, and the float32 workspaces:
    `ws` (S > 1: S * split_stride(N, K), the dW and db partials of each split, which
    `gemm_tc_splitk_reduce` adds in split order) or `colsum` (S == 1 and Sc > 1: Sc slices of
    cdiv(N, 4) * 4 column sums)."""
    bn = bn or choose_wgrad_bn(N, K, sms)
    S, rows = wgrad_splits(M, N, K, sms, bn) if K > 0 else (1, max(M, 1))
    if S > 1:
        Sc, crows = S, rows
    else:
        Sc, crows = colsum_slices(M, N, sms)
    return dict(bn=bn, S=S, rows=rows, Sc=Sc, crows=crows,
                ws=S * split_stride(N, K) if S > 1 else 0,
                colsum=Sc * cdiv(N, 4) * 4 if S == 1 and Sc > 1 else 0)


def gemm_bwd_weight(delta, A_prev, dW_out, db_out, precision: str = "bf16", scratch=None,
                    bn: int | None = None):
    """`dW_out = delta.T @ A_prev`, `db_out = delta.sum(0)` (float32 sums of the unrounded delta):
    the signature and results of `cuda_gemm_tc.gemm_bwd_weight` for "bf16" (the same operand
    rounding and float32 accumulation, another summation order), bitwise reproducible.

    1. `gemm_wgmma_copy_colsum_bf16`: delta's bf16 copy (row-padded) and db's column sums over
       row slices (fixed order);
    2. `gemm_wgmma_copy_bf16`: A_prev's bf16 copy;
    3. `gemm_wgmma_bwd_weight<2, bn>`: both copies read MN-major (TMA boxes of 64 x 64, the
       wgmma transposes them), split over the batch when the output has few tiles
       (`wgrad_splits`, grid.z = splits), the partials into a workspace;
    4. `gemm_tc_splitk_reduce` (kernels/gemm_tc.cu): the splits' dW and db partials, or the
       column sums' slices, added in order.
    With `scratch` (a plan's `Scratch`) the copies and workspaces are its buffers and the tensor
    maps are memoised, so a warm step allocates nothing and replays in a graph.  M == 0 runs on
    `cuda_gemm_tc`.

    Returns delta's bf16 copy (a `copy_shape(M, N)` uint16 device array; None when N == 0 or
    M == 0), for `gemm_bwd_data(..., delta_copy=)` of the same step: with `scratch` it is a plan
    buffer, valid until the next call with that scratch.  "tf32" is refused: TF32 wgmma reads K-major operands only, and its weight
    gradient stays on `cuda_gemm_tc` (see docs/architecture.md)."""
    if precision not in WGRAD_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(WGRAD_PRECISIONS)} for the Hopper weight "
                         f"gradient, got {precision!r} (tf32 runs on cuda_gemm_tc.gemm_bwd_weight)")
    _check_precision(precision)
    cuda_gemm_tc._check_arrays(delta=delta, A_prev=A_prev, dW_out=dW_out, db_out=db_out)
    if delta.ndim != 2 or A_prev.ndim != 2:
        raise ValueError(f"delta and A_prev must be 2-D, got {delta.ndim}-D and {A_prev.ndim}-D")
    M, N = delta.shape
    K = A_prev.shape[1]
    cuda_gemm_tc._shape("A_prev", A_prev, (M, K))
    cuda_gemm_tc._shape("dW_out", dW_out, (N, K))
    cuda_gemm_tc._shape("db_out", db_out, (N,))
    _check_bn(bn)
    if N == 0:
        return None
    if M == 0:
        cuda_gemm_tc.gemm_bwd_weight(delta, A_prev, dW_out, db_out, precision=precision)
        return None
    sms = sm_count()
    plan = wgrad_plan(M, N, K, sms, bn)
    S, Sc, NK = plan["S"], plan["Sc"], N * K
    stride = split_stride(N, K)
    ws = _buf(scratch, ("wgmma_wgrad", "splits"), (plan["ws"],), np.float32) if S > 1 else None
    if S > 1:
        colsum, cs_stride = ws[NK:], stride           # db partials beside each split's dW partials
    elif Sc > 1:
        cs_stride = cdiv(N, 4) * 4
        colsum = _buf(scratch, ("wgmma_wgrad", "colsum"), (plan["colsum"],), np.float32)
    else:
        colsum, cs_stride = db_out, 0                  # one slice: the sums are db
    d_copy = _buf(scratch, ("wgmma_copy", "wgrad_D"), copy_shape(M, N), copy_dtype(precision))
    _launch(COLSUM_NAME, (cdiv(N, 32), Sc, 1), (32, 8, 1),
            (delta, d_copy, colsum, np.int32(M), np.int32(N), np.int32(d_copy.shape[1]),
             np.int32(plan["crows"]), np.int64(cs_stride)))
    if K > 0:
        a_copy = _copy(A_prev, precision, "wgrad_A", scratch)
        launch_bwd_weight(d_copy, a_copy, M, N, K, dW_out if S == 1 else ws, S, plan["rows"], stride,
                          precision, scratch, plan["bn"])
    if S > 1:
        _reduce(ws, dW_out, db_out, S, stride, NK, N, sms)
    elif Sc > 1:
        _reduce(colsum, dW_out, db_out, Sc, cs_stride, 0, N, sms)   # NK = 0: db only
    return d_copy


def launch_bwd_weight(d_copy, a_copy, M: int, N: int, K: int, out, S: int, rows: int, stride: int,
                      precision: str = "bf16", scratch=None, bn: int = 128) -> None:
    """The weight-gradient GEMM alone on the bf16 copies (`d_copy` M x >= N, `a_copy` M x >= K):
    `out` is dW_out (S == 1) or the split workspace (S partials `stride` apart)."""
    tm_d = _tensor_map(d_copy, M, N, precision, WGRAD_BK, scratch)
    tm_a = _tensor_map(a_copy, M, K, precision, WGRAD_BK, scratch)
    vec_out = K % 2 == 0 and _aligned(out, 8)      # stride % 4 == 0 keeps every split aligned
    grid = (cdiv(N, BM) * cdiv(K, bn), 1, S)
    _launch(bwd_weight_name(precision, bn), grid, (THREADS, 1, 1),
            (tm_d, tm_a, out, np.int32(M), np.int32(N), np.int32(K), np.int32(rows),
             np.int64(stride if S > 1 else 0), np.int32(vec_out)), smem_bytes(bn))


def _reduce(ws, dW_out, db_out, S: int, stride: int, NK: int, N: int, sms: int) -> None:
    """gemm_tc.cu's ordered sum of S partials (`cuda_gemm_tc.REDUCE_NAME`): dW[e] for e < NK,
    db[e - NK] for NK <= e < NK + N."""
    blocks = grid_1d(NK + N, cuda_gemm_tc.THREADS, 8 * sms)
    cuda_gemm_tc._launch(cuda_gemm_tc.REDUCE_NAME, (blocks, 1, 1),
                         (ws, dW_out, db_out, np.int32(S), np.int64(stride), np.int64(NK), np.int32(N)))


def gemm_tc_kernel_names(precision: str, M: int, N: int, K: int, sms: int | None = None) -> set[str]:
    """The kernels of `cuda_gemm_tc`'s module that `gemm_bwd_weight` launches for these shapes
    (`CudaBackend.prepare` compiles them with the plan): the ordered reduce when it sums splits
    or column-sum slices."""
    plan = wgrad_plan(M, N, K, sm_count() if sms is None else sms)
    return {cuda_gemm_tc.REDUCE_NAME} if plan["S"] > 1 or plan["Sc"] > 1 else set()
