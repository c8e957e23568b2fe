"""The numpy backend: the reference implementation of every operation.

Written to be read against docs/spec.md and to be fast on a CPU: GEMMs go to
numpy's BLAS with `out=`, elementwise work is done in place, and the few
temporaries a step needs live in the caller's `Scratch` (a step plan's or an
optimizer's), never in the backend, which holds no state at all.

Precision modes: the layer ops take `precision=` ("float32" by default, the
BLAS path above, unchanged).  In "tf32", "bf16" and "3xtf32" each of a layer's
three products (forward `A_prev W^T`, input gradient `delta W`, weight gradient
`delta^T A_prev`) is computed by `gpubp.precision.matmul`, which rounds the
operands and orders the float32 sums as that mode's tensor-core GEMM does; the
epilogues compute in float32 (bias and activation after the product, `db` the
float32 sum of the delta, g' on the float32 product).  "bf16" also rounds what
it stores (`gpubp.precision.round_stored`): Z after the bias, A after the
activation (from the rounded Z), the input gradient after g', and, in
`loss_and_delta(precision="bf16")`, delta_L.  Plans pass their precision
through `layer_options`.
"""

from __future__ import annotations

import math

import numpy as np

from ..activations import GELU_C, GELU_K, LEAKY_SLOPE
from ..precision import PRECISIONS
from ..precision import matmul as emulated_matmul
from ..precision import round_stored
from .base import Backend, half_poisson_deviance
from .plan import scratch_buffer


#: rows per block of the bias gradient's sum (`column_sums`)
DB_BLOCK = 512


def column_sums(delta, out, scratch=None):
    """`out = delta.sum(axis=0)` for a C-contiguous `(B, n)` `delta`, summed by blocks of `DB_BLOCK` rows.

    numpy adds the rows of such an array one after another (its pairwise summation runs along
    contiguous axes only): an error growing as `sqrt(B)` roundings, 1.7e-5 relative in float32 at
    B = 2^20.  Summing each block of rows, then the block sums, keeps it near
    `sqrt(DB_BLOCK) + sqrt(B / DB_BLOCK)` roundings (1e-6 there) at about the cost of one pass.
    Batches of fewer than two blocks are summed as numpy sums them.  Deterministic."""
    B, n = delta.shape
    full = B - B % DB_BLOCK
    if full < 2 * DB_BLOCK:
        return np.sum(delta, axis=0, out=out)
    blocks = scratch_buffer(scratch, "db_blocks", shape=(full // DB_BLOCK, n), dtype=delta.dtype)
    np.sum(delta[:full].reshape(-1, DB_BLOCK, n), axis=1, out=blocks)
    np.sum(blocks, axis=0, out=out)
    if full < B:
        out += delta[full:].sum(axis=0)
    return out


def _sigmoid(z, out):
    """Stable logistic: 1/(1+e^-z) for z >= 0, e^z/(1+e^z) for z < 0. `out` may be `z`."""
    t = np.abs(z)
    np.negative(t, out=t)
    np.exp(t, out=t)                       # t = e^-|z| in (0, 1]
    num = np.where(z >= 0, 1.0, t).astype(z.dtype, copy=False)
    t += 1.0
    np.divide(num, t, out=out)
    return out


def _gelu_inner(z):
    """tanh(c (z + k z^3)) for the tanh approximation of GELU."""
    u = z * z
    u *= GELU_K
    u += 1.0
    u *= z
    u *= GELU_C
    return np.tanh(u, out=u)


def activation_forward(name: str, z, out):
    """`out = g(z)`; `out` may be the same array as `z`."""
    if name == "identity":
        if out is not z:
            np.copyto(out, z)
    elif name == "relu":
        np.maximum(z, 0, out=out)
    elif name == "leaky_relu":
        np.maximum(z, z * LEAKY_SLOPE, out=out)
    elif name == "sigmoid":
        _sigmoid(z, out)
    elif name == "tanh":
        np.tanh(z, out=out)
    elif name == "gelu":
        t = _gelu_inner(z)
        t += 1.0
        t *= 0.5
        np.multiply(z, t, out=out)
    elif name == "silu":
        s = _sigmoid(z, np.empty_like(z))
        np.multiply(z, s, out=out)
    else:  # names are validated before they get here
        raise ValueError(f"unknown activation {name!r}")
    return out


def activation_backward_inplace(name: str, delta, a, z=None):
    """`delta *= g'(.)`, from the activation's output `a` or, for gelu/silu, `z`."""
    if name == "identity":
        return delta
    if name == "relu":
        np.multiply(delta, a > 0, out=delta)
    elif name == "leaky_relu":
        np.multiply(delta, np.where(a > 0, 1.0, LEAKY_SLOPE).astype(a.dtype, copy=False), out=delta)
    elif name == "sigmoid":
        d = 1.0 - a
        d *= a
        delta *= d
    elif name == "tanh":
        d = a * a
        np.subtract(1.0, d, out=d)
        delta *= d
    elif name == "gelu":
        # d/dz 0.5 z (1 + t) = 0.5 (1 + t) + 0.5 z (1 - t^2) c (1 + 3 k z^2)
        t = _gelu_inner(z)
        dt = 1.0 - t * t
        dt *= 0.5 * GELU_C
        dt *= z
        dt *= 1.0 + (3.0 * GELU_K) * (z * z)
        t += 1.0
        t *= 0.5
        t += dt
        delta *= t
    elif name == "silu":
        # d/dz z s(z) = s (1 + z (1 - s))
        s = _sigmoid(z, np.empty_like(z))
        d = 1.0 - s
        d *= z
        d += 1.0
        d *= s
        delta *= d
    else:
        raise ValueError(f"unknown activation {name!r}")
    return delta


class NumpyBackend(Backend):
    """Host arrays, numpy's BLAS; the reference for every other backend."""

    name = "numpy"
    xp = np
    #: every mode: "float32" on BLAS, the others emulated (`gpubp.precision`)
    precisions = PRECISIONS

    # ----------------------------------------------------------- arrays
    @staticmethod
    def _refuse_device(x):
        # is_cuda first: a CUDA tensor that requires grad raises on __cuda_array_interface__
        if getattr(x, "is_cuda", False) is True or hasattr(x, "__cuda_array_interface__"):
            raise TypeError("got an array on a CUDA device; the numpy backend takes host arrays "
                            "(use backend='cuda', or copy it to the host first)")

    def asarray(self, x, dtype):
        self._refuse_device(x)
        return np.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, a):
        self._refuse_device(a)
        return np.array(a, copy=True)

    def describe(self):
        return f"numpy {np.__version__} on the CPU"

    def free_memory(self):
        """Available host memory (MemAvailable on Linux), or None where it cannot be read."""
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            import os

            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None

    def layer_options(self, plan):
        """The plan's precision for the layer ops (nothing for "float32": the calls stay as they are)."""
        return {} if plan.precision == "float32" else {"precision": plan.precision}

    # ----------------------------------------------------------- forward
    def dense_forward(self, A_prev, W, b, activation, A_out, Z_out=None, scratch=None, precision="float32"):
        Z = A_out if Z_out is None else Z_out
        if precision == "float32":
            np.matmul(A_prev, W.T, out=Z)
        else:
            Z[...] = emulated_matmul(A_prev, W.T, precision)
        Z += b
        if precision == "float32":
            activation_forward(activation, Z, A_out)
            return
        round_stored(Z, precision)                   # bf16: Z as stored, read by g and g'
        activation_forward(activation, Z, A_out)
        round_stored(A_out, precision)

    # ----------------------------------------------------------- loss
    def loss_and_delta(self, A_L, Z_L, Y, loss, activation, loss_out, delta_out=None, scratch=None,
                       precision="float32"):
        self._loss_and_delta(A_L, Z_L, Y, loss, activation, loss_out, delta_out, scratch)
        if delta_out is not None and precision != "float32":
            round_stored(delta_out, precision)       # bf16: delta_L as stored

    def round_stored(self, x, precision):
        round_stored(x, precision)

    def _loss_and_delta(self, A_L, Z_L, Y, loss, activation, loss_out, delta_out, scratch):
        # The value's sums over elements and rows are accumulated in double, as the CUDA loss kernels'
        # are (docs/spec.md, "Precision"): in float32 a sum could overflow to inf where the mean, the
        # loss, is finite (two outputs of 1.5e19), and the two backends disagreed on a finite step.
        B, n = A_L.shape
        if loss in ("mse", "half_sse"):
            diff = np.subtract(A_L, Y, out=delta_out if delta_out is not None else
                               scratch_buffer(scratch, "loss_diff", A_L))
            sq = np.einsum("ij,ij->", diff, diff, dtype=np.float64)   # in double, as the CUDA kernels
            loss_out[0] = sq / (B * n) if loss == "mse" else sq / (2 * B)
            if delta_out is not None:
                diff *= (2.0 / (B * n)) if loss == "mse" else (1.0 / B)
                activation_backward_inplace(activation, delta_out, A_L, Z_L)
        elif loss == "cross_entropy":
            sh = np.subtract(A_L, A_L.max(axis=1, keepdims=True), out=scratch_buffer(scratch, "loss_shift", A_L))  # z - max
            p = np.exp(sh, out=delta_out if delta_out is not None else np.empty_like(sh))
            s = p.sum(axis=1, keepdims=True)
            logs = np.log(s)
            if Y.ndim == 1:
                rows = np.arange(B)
                loss_out[0] = (logs[:, 0] - sh[rows, Y]).sum(dtype=np.float64) / B
            else:
                # -sum_j y_j (sh_j - log s) = log s - sum_j y_j sh_j  (rows of Y sum to 1)
                loss_out[0] = (logs[:, 0] - np.einsum("ij,ij->i", Y, sh, dtype=np.float64)).sum() / B
            if delta_out is not None:
                p /= s
                if Y.ndim == 1:
                    p[rows, Y] -= 1.0
                else:
                    p -= Y
                p *= 1.0 / B
        elif loss == "binary_cross_entropy":
            z = A_L
            # max(z, 0) - z y + log(1 + e^-|z|)
            t = np.abs(z)
            np.negative(t, out=t)
            np.exp(t, out=t)
            np.log1p(t, out=t)
            t += np.maximum(z, 0)
            t -= z * Y
            loss_out[0] = t.sum(dtype=np.float64) / (B * n)
            if delta_out is not None:
                _sigmoid(z, delta_out)
                delta_out -= Y
                delta_out *= 1.0 / (B * n)
        elif loss == "poisson":
            # on the log-rates z: half the Poisson deviance (in double), delta = (e^z - y) / (B n)
            with np.errstate(over="ignore"):       # a rate beyond the dtype: inf, and so is the loss
                mu = np.exp(A_L, out=delta_out if delta_out is not None else scratch_buffer(scratch, "loss_diff", A_L))
            loss_out[0] = half_poisson_deviance(np, A_L, Y, rates=mu).sum() / (B * n)
            if delta_out is not None:
                mu -= Y
                mu *= 1.0 / (B * n)
        else:
            raise ValueError(f"unknown loss {loss!r}")

    # ----------------------------------------------------------- backward
    def dense_backward(self, delta, A_prev, W, dW_out, db_out,
                       delta_prev_out=None, prev_activation=None, Z_prev=None, scratch=None,
                       precision="float32"):
        if precision == "float32":
            np.matmul(delta.T, A_prev, out=dW_out)
        else:
            dW_out[...] = emulated_matmul(delta.T, A_prev, precision)
        column_sums(delta, db_out, scratch)
        if delta_prev_out is not None:
            if precision == "float32":
                np.matmul(delta, W, out=delta_prev_out)
            else:
                delta_prev_out[...] = emulated_matmul(delta, W, precision)
            activation_backward_inplace(prev_activation, delta_prev_out, A_prev, Z_prev)
            if precision != "float32":
                round_stored(delta_prev_out, precision)   # bf16: the delta as stored, after g'

    # ----------------------------------------------------------- updates
    def sgd_update(self, params, grads, velocity, lr, momentum, weight_decay=0.0, nesterov=False, scratch=None):
        g = grads
        if weight_decay:
            g = np.multiply(params, weight_decay, out=scratch_buffer(scratch, "sgd_decay", params))
            g += grads
        step = scratch_buffer(scratch, "sgd_step", params)
        if momentum:
            velocity *= momentum
            velocity += g
            if nesterov:        # PyTorch's g + momentum * velocity (the velocity just updated)
                g = np.add(np.multiply(velocity, momentum, out=step), g, out=step)
            else:
                g = velocity
        np.multiply(g, lr, out=step)
        params -= step

    def adam_update(self, params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                    scratch=None):
        g = grads
        if weight_decay and decoupled:
            params *= 1.0 - lr * weight_decay
        elif weight_decay:
            g = np.multiply(params, weight_decay, out=scratch_buffer(scratch, "adam_decay", params))
            g += grads
        # m = lerp(m, g, w), w = 1 - b1 in the dtype, as PyTorch's lerp computes it: m + w (g - m) for
        # w < 0.5, else g - (g - m)(1 - w), which is exactly g at b1 = 0 (m + (g - m) is not where
        # |g| << |m|); v = b2 v + ((1 - b2) g) g  (PyTorch's addcmul: g g first would overflow for |g|
        # above the square root of the dtype's largest number)
        w = params.dtype.type(1.0 - beta1)
        t = np.subtract(g, m, out=scratch_buffer(scratch, "adam_t", params))
        if w < 0.5:
            t *= w
            m += t
        else:
            t *= params.dtype.type(1) - w
            np.subtract(g, t, out=m)
        v *= beta2
        np.multiply(g, 1.0 - beta2, out=t)
        t *= g
        v += t
        n = int(step[0])
        bc1 = 1.0 - beta1 ** n
        bc2_sqrt = math.sqrt(1.0 - beta2 ** n)   # a Python float: the division below is in the dtype, as T(bc2_sqrt) on CUDA
        np.sqrt(v, out=t)
        t /= bc2_sqrt
        t += eps
        np.divide(m, t, out=t)
        t *= lr / bc1
        params -= t
