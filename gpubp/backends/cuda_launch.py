"""What every kernel launcher needs: C types of dtypes, argument checks, alignment, grid sizes.

Raw kernels read raw pointers: they ignore dtypes and strides, so each launcher
checks its arrays here before a launch (`check_arrays`), passes scalars as
numpy scalars of exactly the kernel parameter's type (`SCALARS`; CuPy would pass
a Python int as `long long` and a Python float as `double`, unchecked), and takes
a 16-byte vector path only where `aligned` says so.  No CuPy import.
"""

from __future__ import annotations

import numpy as np

from ..activations import ACT_CODES, ACTIVATIONS, NEEDS_Z

#: the C type of each dtype the templated kernels are instantiated for
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
#: the numpy scalar type that passes a value as a kernel's `T` parameter
SCALARS = {np.dtype(np.float32): np.float32, np.dtype(np.float64): np.float64}


def ctype(dtype, what: str = "gpubp's CUDA kernels") -> str:
    """"float" or "double" for `dtype`, or a TypeError naming `what` takes only those."""
    ct = CTYPES.get(np.dtype(dtype))
    if ct is None:
        raise TypeError(f"{what} take float32 or float64 arrays, got {np.dtype(dtype)}")
    return ct


def check_arrays(dtype, *arrays, what: str = "gpubp's CUDA kernels") -> None:
    """Every array (None skipped) is of `dtype` and C-contiguous, or a TypeError / ValueError."""
    dtype = np.dtype(dtype)
    for a in arrays:
        if a is None:
            continue
        if a.dtype != dtype:
            raise TypeError(f"{what}: expected arrays of {dtype}, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{what} need C-contiguous arrays")


def aligned(a, nbytes: int = 16) -> bool:
    """True when array `a` starts on an `nbytes` boundary (vector loads need it)."""
    return a.data.ptr % nbytes == 0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def grid_1d(work_items: int, per_block: int, cap: int) -> int:
    """Blocks of a grid-stride kernel: enough for `work_items` at `per_block` each, at most `cap`."""
    return max(1, min(cap, cdiv(work_items, per_block)))


def batch_splits(M: int, tiles: int, sms: int, bk: int, max_splits: int, min_rows: int = 256) -> tuple[int, int]:
    """`(S, rows_per_split)` of a weight gradient split over the batch: enough blocks for about
    two per SM when the output has fewer `tiles` than that, each split at least `min_rows` rows
    and at most `max_splits` splits, `rows_per_split` a multiple of the k-tile `bk` (every split
    but the last starts on a whole k-tile), no empty split.  `(1, max(M, 1))`: no split."""
    S = 1
    if tiles < 2 * sms:
        S = min(cdiv(2 * sms, tiles), max(1, M // min_rows), max_splits)
    return even_slices(M, S, bk)


def even_slices(n: int, S: int, step: int) -> tuple[int, int]:
    """`(S', per_slice)`: `n` cut into at most `S` contiguous slices of `per_slice` elements (a
    multiple of `step`; the last slice may be shorter), `S' = cdiv(n, per_slice)` so no slice is
    empty.  `S <= 1` (or n too short for two slices): `(1, max(n, 1))`."""
    if S <= 1 or n <= 0:
        return 1, max(n, 1)
    per = cdiv(cdiv(n, S), step) * step
    S = cdiv(n, per)
    return (S, per) if S > 1 else (1, max(n, 1))


def wave_splits(tiles: int, slots: int, n: int, step: int, max_splits: int, min_len: int) -> tuple[int, int]:
    """`(S, per_slice)` of a split-K GEMM whose output has `tiles` blocks' worth of tiles, on a
    device that holds `slots` blocks at once, over a reduction of length `n`: the most slices that
    still run in one wave (`S = slots // tiles`), at most `max_splits`, each at least `min_len`
    long (`n // min_len` slices at most), cut by `even_slices` on whole `step`s.  `(1, n)`: no
    split, when the tiles alone fill half the slots or more, or the reduction is too short."""
    S = min(slots // max(tiles, 1), max_splits, n // min_len)
    return even_slices(n, S, step)


def split_stride(N: int, K: int) -> int:
    """Elements of one split's partials of an (N, K) weight gradient, [N*K dW][N db], padded to a
    multiple of 4 (so each split starts 16-byte aligned)."""
    return cdiv(N * K + N, 4) * 4


def check_act(code) -> int:
    """`code` as an int, if it is an activation code (gpubp.activations.ACT_CODES)."""
    c = int(code)
    if not 0 <= c < len(ACTIVATIONS):
        raise ValueError(f"activation code {code} out of range 0..{len(ACTIVATIONS) - 1}")
    return c


#: activation codes whose derivative is computed from the pre-activation Z (gelu, silu)
NEEDS_Z_CODES = frozenset(ACT_CODES[a] for a in NEEDS_Z)


def gprime_source(act: int, A_prev, Z_prev, what: str = "gemm_bwd_data") -> tuple[str, object]:
    """`(name, array)` an input-gradient GEMM computes g' from for activation code `act`:
    ("Z_prev", Z_prev) for gelu and silu, ("A_prev", A_prev) for the others, with the array None
    for identity (no g'); a ValueError naming the argument when the one needed is None."""
    needs_z = act in NEEDS_Z_CODES
    needs_a = not needs_z and act != ACT_CODES["identity"]
    name = "Z_prev" if needs_z else "A_prev"
    src = Z_prev if needs_z else (A_prev if needs_a else None)
    if (needs_z or needs_a) and src is None:
        raise ValueError(f"{what}: {name} is needed for activation code {act}")
    return name, src
