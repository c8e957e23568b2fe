"""Launchers of the elementwise kernels (kernels/elementwise.cu): the fused loss + delta[L] and the
optimizer updates.

Every launcher takes CuPy arrays (C-contiguous, the network's dtype), writes its
outputs in place, allocates nothing, never synchronises with the host, and
launches on CuPy's current stream, so a training step can be captured in a
CUDA graph.  Scalars are passed as numpy scalars of exactly the kernel
parameter's type (CuPy would pass a Python int as `long long` and a Python
float as `double`, unchecked).

The loss value is reduced deterministically: each block of a loss kernel writes
one double partial sum into `partials` (length `MAX_PARTIALS`, owned by the
caller), and `loss_finalize` sums them in a fixed order.  The grids depend on
the shapes only, so two runs give the same bits on any device.

This module imports CuPy only when a kernel is first launched.
"""

from __future__ import annotations

import numpy as np

from ..activations import ACT_CODES, NEEDS_Z
from ..losses import FUSED_OUTPUT
from .cuda_device import function
from .cuda_launch import SCALARS as _NP_SCALAR
from .cuda_launch import aligned, check_arrays, grid_1d
from .cuda_launch import ctype as _c_type_of
from .cuda_source import ModuleSpec
from .kernel_constants import EW_THREADS, LOSS_CODES, MAX_PARTIALS

#: block size of every kernel in elementwise.cu, and the length of the `partials` scratch
#: (the loss kernels' grid cap); shared with the kernels through kernel_constants
THREADS = EW_THREADS
#: rows wider than this get a block per row in cross_entropy, narrower ones a warp
CE_WARP_MAX_WIDTH = 1024

_NEEDS_Z_CODES = frozenset(ACT_CODES[a] for a in NEEDS_Z)
_LOSS_CODES = LOSS_CODES
#: pointwise losses on an identity output that apply their own nonlinearity (sigmoid, exp)
_FUSED_POINTWISE = tuple(loss for loss in FUSED_OUTPUT if loss in LOSS_CODES)


def _flag(bf16: bool) -> str:
    """The loss kernels' last template argument: ", true" rounds delta to bfloat16 as stored
    (the "bf16" mode); nothing names the float32-storing instantiation, as it always was."""
    return ", true" if bf16 else ""


def _pointwise_name(ctype: str, loss_code: int, act_code: int, bf16: bool = False) -> str:
    return f"loss_pointwise<{ctype}, {loss_code}, {act_code}{_flag(bf16)}>"


def _ce_name(ctype: str, labels: bool, block_row: bool, bf16: bool = False) -> str:
    return (f"ce_loss_delta<{ctype}, {'true' if labels else 'false'}, {'true' if block_row else 'false'}"
            f"{_flag(bf16)}>")


def _loss_names(ctype: str, bf16: bool) -> list[str]:
    out = []
    for loss in ("mse", "half_sse"):
        for act in ACT_CODES.values():
            out.append(_pointwise_name(ctype, _LOSS_CODES[loss], act, bf16))
    for loss in _FUSED_POINTWISE:     # identity outputs only: the loss applies the nonlinearity
        out.append(_pointwise_name(ctype, _LOSS_CODES[loss], ACT_CODES["identity"], bf16))
    for labels in (True, False):
        for block_row in (False, True):
            out.append(_ce_name(ctype, labels, block_row, bf16))
    return out


def _names() -> tuple[str, ...]:
    out = []
    for ctype in ("float", "double"):
        out += _loss_names(ctype, False)
        out += [f"loss_finalize<{ctype}>", f"sgd_update<{ctype}>", f"adam_update<{ctype}>"]
    return tuple(out + _loss_names("float", True))      # bf16 storage: float32 networks only


SPECS = (ModuleSpec(name="elementwise", files=("activations.cuh", "epilogue.cuh", "elementwise.cu"),
                    name_expressions=_names()),)

def _fn(name: str):
    return function(SPECS[0], name)


def _ctype(a) -> str:
    return _c_type_of(a.dtype)


def _check(dtype, *arrays):
    """Raw kernels ignore strides and dtypes: refuse what they would misread."""
    check_arrays(dtype, *arrays)


def _grid(work_items: int, cap: int) -> int:
    return grid_1d(work_items, THREADS, cap)


# ------------------------------------------------------------------ losses
def loss_and_delta(A_L, Z_L, Y, loss: str, act_code: int, loss_out, delta_out, partials,
                   bf16: bool = False) -> None:
    """The loss of the batch into `loss_out[0]` and, when `delta_out` is given, delta[L].

    `A_L` is the output activation (the logits for cross_entropy and
    binary_cross_entropy, the log-rates for poisson), `Z_L` the pre-activation or None (read only for
    gelu/silu), `Y` `(B, n)` of the dtype or, for cross_entropy, `(B,)` int32
    class indices.  `partials` is a float64 scratch of `MAX_PARTIALS` elements.
    `bf16` (float32 arrays only: the "bf16" precision mode) rounds delta[L] to
    bfloat16 as it is stored.  Two kernel launches.
    """
    dtype = A_L.dtype
    if bf16 and dtype != np.float32:
        raise TypeError(f"bf16 storage of delta needs float32 arrays, got {dtype}")
    ctype = _ctype(A_L)
    T = _NP_SCALAR[dtype]
    B, n = A_L.shape
    labels = loss == "cross_entropy" and Y.ndim == 1
    if labels:
        if Y.dtype != np.int32 or not Y.flags.c_contiguous or Y.shape != (B,):
            raise TypeError(f"class labels must be a C-contiguous ({B},) int32 array, "
                            f"got {Y.shape} {Y.dtype}")
        _check(dtype, A_L, delta_out)
    else:
        if Y.shape != A_L.shape:
            raise ValueError(f"targets of shape {Y.shape} for outputs of shape {A_L.shape}")
        _check(dtype, A_L, Z_L, Y, delta_out)
    _check(dtype, loss_out)
    if delta_out is not None and delta_out.shape != A_L.shape:
        raise ValueError(f"delta_out has shape {delta_out.shape}, the outputs {A_L.shape}")
    if partials.dtype != np.float64 or partials.size < MAX_PARTIALS:
        raise ValueError(f"partials must be a float64 array of at least {MAX_PARTIALS} elements")
    write = np.int32(delta_out is not None)
    delta = delta_out if delta_out is not None else A_L   # never written when write == 0

    if loss == "cross_entropy":
        block_row = n > CE_WARP_MAX_WIDTH
        rows_per_block = 1 if block_row else THREADS // 32
        grid = max(1, min(MAX_PARTIALS, -(-B // rows_per_block)))
        f = _fn(_ce_name(ctype, labels, block_row, bf16))
        f((grid,), (THREADS,), (A_L, A_L if labels else Y, Y if labels else A_L, delta, partials,
                                 np.int64(B), np.int64(n), T(1.0 / B), write))
        denom = float(B)
    else:
        code = _LOSS_CODES[loss]
        if loss in _FUSED_POINTWISE:
            act_code, scale, denom = ACT_CODES["identity"], 1.0 / (B * n), float(B * n)
        elif loss == "mse":
            scale, denom = 2.0 / (B * n), float(B * n)
        else:  # half_sse
            scale, denom = 1.0 / B, 2.0 * B
        if act_code in _NEEDS_Z_CODES and Z_L is None:
            raise ValueError("this output activation's derivative needs Z_L (the pre-activation)")
        total = B * n
        grid = _grid(total, MAX_PARTIALS)
        f = _fn(_pointwise_name(ctype, code, act_code, bf16))
        f((grid,), (THREADS,), (A_L, Z_L if Z_L is not None else A_L, Y, delta, partials,
                                 np.int64(total), T(scale), write))
    _fn(f"loss_finalize<{ctype}>")((1,), (THREADS,), (partials, np.int32(grid), np.float64(denom), loss_out))


# ------------------------------------------------------------------ updates
def _aligned(*arrays) -> bool:
    return all(aligned(a) for a in arrays)


def _update_grid(n: int, dtype) -> int:
    per_thread = 16 // np.dtype(dtype).itemsize
    return max(1, min(65535, -(-n // (per_thread * THREADS))))


def sgd_update(params, grads, velocity, lr: float, momentum: float, weight_decay: float = 0.0,
               nesterov: bool = False) -> None:
    """PyTorch's SGD over a flat buffer in one launch; `velocity` is used only with momentum (and
    `nesterov` only with it too)."""
    dtype = params.dtype
    ctype = _ctype(params)
    T = _NP_SCALAR[dtype]
    use_mom = bool(momentum)
    if use_mom and velocity is None:
        raise ValueError("SGD with momentum needs a velocity buffer")
    buf = velocity if use_mom else params
    _check(dtype, params, grads, buf)
    n = params.size
    if grads.size != n or buf.size != n:
        raise ValueError("params, grads and velocity must have the same length")
    if nesterov and not use_mom:
        raise ValueError("Nesterov momentum needs a momentum above 0")
    flags = np.int32((1 if weight_decay else 0) | (2 if use_mom else 0) | (4 if nesterov else 0))
    vec = np.int32(_aligned(params, grads, buf))
    _fn(f"sgd_update<{ctype}>")((_update_grid(n, dtype),), (THREADS,),
                                (params, grads, buf, np.int64(n), T(lr), T(momentum),
                                 T(weight_decay), flags, vec))


def adam_update(params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, step, decoupled: bool) -> None:
    """PyTorch's Adam / AdamW over a flat buffer in one launch.

    `step` is a 1-element int32 device array holding the step number (from 1);
    the kernel reads it, so a captured graph needs no new arguments per step.
    """
    dtype = params.dtype
    ctype = _ctype(params)
    T = _NP_SCALAR[dtype]
    _check(dtype, params, grads, m, v)
    n = params.size
    if grads.size != n or m.size != n or v.size != n:
        raise ValueError("params, grads, m and v must have the same length")
    if step.dtype != np.int32 or step.size != 1:
        raise ValueError(f"Adam's step must be a 1-element int32 device array, got {step.dtype} {step.shape}")
    mode = 0 if not weight_decay else (2 if decoupled else 1)
    vec = np.int32(_aligned(params, grads, m, v))
    _fn(f"adam_update<{ctype}>")((_update_grid(n, dtype),), (THREADS,),
                                 (params, grads, m, v, np.int64(n), step, np.float64(lr), np.float64(beta1),
                                  np.float64(beta2), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(eps),
                                  T(weight_decay), T(1.0 - lr * weight_decay), np.int32(mode), vec))


# ------------------------------------------------------------------ what a step launches
def kernel_names(dtype, loss: str, act_code: int, n_out: int, bf16: bool = False) -> set[str]:
    """The loss kernels a step may launch (cross-entropy: both the label and the probability
    variant; `bf16`: the delta-rounding ones) and both optimizer updates, for arrays of `dtype`."""
    ctype = _c_type_of(dtype)
    if loss == "cross_entropy":
        block_row = n_out > CE_WARP_MAX_WIDTH
        names = {_ce_name(ctype, True, block_row, bf16), _ce_name(ctype, False, block_row, bf16)}
    elif loss in _FUSED_POINTWISE:
        names = {_pointwise_name(ctype, _LOSS_CODES[loss], ACT_CODES["identity"], bf16)}
    else:
        names = {_pointwise_name(ctype, _LOSS_CODES[loss], act_code, bf16)}
    return names | {f"loss_finalize<{ctype}>", f"sgd_update<{ctype}>", f"adam_update<{ctype}>"}
