"""The backend interface: the array operations one training step needs.

A backend owns where arrays live (host memory for numpy, device memory for
CUDA) and how the fused operations of docs/spec.md are computed.  The network code
(`gpubp.network`) calls only the methods below and never branches on which backend
it has.  Every array argument is an array of the backend's own kind (`xp.ndarray`),
C-contiguous, of the network's dtype; outputs are written in place into arrays
the caller allocated.  Temporaries live in a `Scratch` the caller owns (the
`scratch=` argument: a step plan's, an optimizer's); without one an operation
allocates its temporaries afresh.  A backend instance holds only read-only
things (compiled kernels, device attributes), so networks in different threads
can share it, and a step with a plan allocates nothing once it has run, so it
can be captured in a CUDA graph.

Conventions (docs/spec.md):
- `A_prev` is `(B, n_in)`, `W` is `(n_out, n_in)`, `b` is `(n_out,)`,
  `Z`, `A`, `delta` are `(B, n_out)`.
- Activation and loss names are those of `gpubp.activations` and
  `gpubp.losses`; they are validated before they reach a backend.
- `delta` always means dLoss/dZ (the Hadamard product with g' already done).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..precision import ROUNDED_STORAGE


def half_poisson_deviance(xp, Z, Y, rates=None):
    """The `poisson` loss of each element, in float64 (docs/spec.md, "Losses"): half the Poisson
    deviance of the targets `Y` at the rates `e^Z`, `e^z - y - y (z - log y)` (`y log y = 0` at
    `y = 0`).  Written `y (expm1(d) - d)` with `d = z - log y` where `y > 0`, which does not cancel
    near the optimum `e^z = y`, and `e^z` where `y = 0` or `d > 700` (there `y (1 + d)` is below the
    rounding of `e^z`, and `expm1(d)` would overflow where `e^z` need not).  `rates`, the rates `e^Z`
    as the network's dtype holds them (what the delta `e^z - y` is made of): where a rate overflowed
    to inf the element's loss is inf too, so a loss that is finite never comes with an infinite
    gradient."""
    with np.errstate(over="ignore", invalid="ignore"):
        z, y = Z.astype(xp.float64), Y.astype(xp.float64)
        pos = y > 0
        d = z - xp.log(xp.where(pos, y, 1.0))
        # beyond d = 700, y (1 + d) is (1 + d) e^-d < 1e-301 of e^z = y e^d: the value is e^z to the
        # last bit, where y expm1(d) would overflow (y tiny) though e^z need not
        out = xp.where(pos & (d <= 700.0), y * (xp.expm1(d) - d), xp.exp(z))
        if rates is None:
            rates = xp.exp(Z)
        return xp.where(xp.isinf(rates), xp.inf, out)


class Backend(ABC):
    """Array operations of a training step; see the module docstring."""

    #: short name: "numpy" or "cuda"
    name: str = "?"
    #: the array module (numpy or cupy), used for allocation and views only
    xp: Any = np

    # ----------------------------------------------------------- arrays
    @abstractmethod
    def asarray(self, x: Any, dtype: Any) -> Any:
        """`x` as a C-contiguous backend array of `dtype`; no copy when it is one."""

    @abstractmethod
    def to_numpy(self, a: Any) -> np.ndarray:
        """A host copy of backend array `a`, or of any device array this backend takes (a CUDA tensor);
        a backend that takes none refuses one with TypeError."""

    def empty(self, shape, dtype) -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype) -> Any:
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued work (a no-op on the host)."""

    def describe(self) -> str:
        """One line naming the backend and the device it runs on."""
        return self.name

    # ----------------------------------------------------------- copies
    def settings(self) -> dict:
        """The constructor's arguments that made this instance (none for the host backend)."""
        return {}

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        """A backend holds only read-only things and is shared by the networks using it, so a copied
        network (`copy.deepcopy`), optimizer or module shares it too (the CUDA backend holds the
        cupy module, which cannot be copied at all)."""
        return self

    def __reduce__(self):
        """Pickled as how to get it again: the default instance of its name (`get_backend`) when it is
        that instance, else a new one of its class and `settings()`."""
        from . import _instances, get_backend

        if _instances.get(self.name) is self:
            return get_backend, (self.name,)
        return _rebuild, (type(self), self.settings())

    def capture(self, fn):
        """A callable that repeats the work of `fn()` (which must allocate nothing).

        On the host this is `fn` itself; the CUDA backend records `fn`'s
        launches into a CUDA graph once and replays the graph on each call.
        """
        return fn

    # ----------------------------------------------------------- forward
    @abstractmethod
    def dense_forward(self, A_prev, W, b, activation: str, A_out, Z_out=None, scratch=None) -> None:
        """`Z = A_prev @ W.T + b`, `A_out = g(Z)`; `Z_out` is written when given.

        `Z_out` is given exactly when the activation's derivative needs `Z`
        (gelu, silu).  For identity, `A_out` holds `Z`.
        """

    # ----------------------------------------------------------- loss
    @abstractmethod
    def loss_and_delta(self, A_L, Z_L, Y, loss: str, activation: str,
                       loss_out, delta_out=None, scratch=None) -> None:
        """Loss value of the batch into `loss_out[0]`, and `delta[L]` into `delta_out`.

        `A_L` is the output layer's activation, `Z_L` its pre-activation (or
        None when the activation does not need it).  For `cross_entropy` and
        `binary_cross_entropy` the output activation is identity and `A_L` is
        the logits; for `poisson` it is identity and `A_L` the log-rates.
        `Y` is `(B, n_L)` of the network's dtype, or for `cross_entropy`
        optionally `(B,)` int32 class indices.  With
        `delta_out=None` only the value is computed.  `precision="bf16"` (passed
        by `network_loss` for "bf16" plans) rounds `delta_out` to bfloat16 as
        it is written (docs/spec.md, "Precision modes"); the loss value is
        float32 from `A_L` as it is.
        """

    def round_stored(self, x, precision: str) -> None:
        """Round the backend array `x` in place to what mode `precision` stores ("bf16":
        bfloat16, round to nearest even, as `gpubp.precision.to_bf16`; other modes: unchanged).
        This default works on the bits with `self.xp` (NaN stays NaN)."""
        if precision not in ROUNDED_STORAGE:
            return
        xp = self.xp
        bits = x.view(xp.uint32).astype(xp.uint64)       # no wrap on the add
        bits += xp.uint64(0x7FFF) + ((bits >> xp.uint64(16)) & xp.uint64(1))
        rounded = (bits & xp.uint64(0xFFFF0000)).astype(xp.uint32).view(xp.float32)
        x[...] = xp.where(xp.isnan(x), x, rounded)

    # ----------------------------------------------------------- backward
    @abstractmethod
    def dense_backward(self, delta, A_prev, W, dW_out, db_out,
                       delta_prev_out=None, prev_activation: str | None = None,
                       Z_prev=None, scratch=None) -> None:
        """The fused backward of one dense layer.

        `dW_out = delta.T @ A_prev`, `db_out = delta.sum(0)`, and when
        `delta_prev_out` is given, `delta_prev_out = (delta @ W) * g'(Z_prev)`
        with `g = prev_activation`, the previous layer's activation; `g'` is
        taken from `A_prev` (the previous layer's output) or from `Z_prev`
        where it needs Z.  Deterministic: two calls give equal bits.
        """

    # ----------------------------------------------------------- precision modes
    #: the precision modes (`gpubp.precision.PRECISIONS`) this backend runs; a backend without
    #: TF32 kernels computes "tf32" in float32, as `network_forward` documents
    precisions: tuple = ("float32", "tf32")

    def check_precision(self, precision: str) -> None:
        """Refuse, with a ValueError naming the mode and this backend, a precision mode it cannot run."""
        if precision not in self.precisions:
            raise ValueError(f"precision={precision!r} is not available on the {self.name} backend "
                             f"(it runs {', '.join(self.precisions)})")

    def layer_options(self, plan) -> dict:
        """Keyword arguments the default passes (`network_forward`, `layer_backward`) add to
        `dense_forward` / `dense_backward` for `plan` (a backend whose layer ops take
        `precision=` returns it here); none by default, so those calls stay as they are."""
        return {}

    # ----------------------------------------------------------- whole network
    def make_plan(self, sizes, activations, batch, dtype, precision="float32", input_grad=False):
        """A `StepPlan` owning every buffer of a step of `batch` rows (see `gpubp.backends.plan`);
        `precision` must be a mode this backend runs (`check_precision`) and fit `dtype`."""
        from ..checks import check_precision
        from .plan import StepPlan

        check_precision(precision, dtype)
        self.check_precision(precision)
        return StepPlan(self, sizes, activations, batch, dtype, precision, input_grad)

    def prepare(self, plan, loss: str) -> None:
        """Get ready to run steps of `plan` with `loss` (the CUDA backend compiles the kernels they
        will launch, all at once); nothing to do on the host."""

    def network_forward(self, plan, layers) -> None:
        """Forward through every layer: `plan.A[0]` is the input; fills `plan.A[1..L]` and `plan.Z`.

        `layers` is `[(W, b), ...]`.  This default calls `dense_forward` per
        layer; a backend may fuse runs of layers (the CUDA backend keeps narrow
        layers' tiles on chip).  `plan.precision` says how the products are
        computed (docs/spec.md, "Precision modes"): "tf32" lets a backend multiply
        float32 matrices on TF32 tensor cores (10-bit mantissa operands, float32
        sums); a backend without them computes in full float32.  A backend whose
        layer ops emulate or run the modes gets the plan's precision through
        `layer_options`.
        """
        opts = self.layer_options(plan)
        for l, ((W, b), g) in enumerate(zip(layers, plan.activations), start=1):
            self.dense_forward(plan.A[l - 1], W, b, g, plan.A[l], plan.Z[l], scratch=plan.scratch, **opts)

    def network_loss(self, plan, Y, loss: str, want_delta: bool = True, loss_out=None, weights=None) -> None:
        """The loss of the batch into `loss_out[0]` (default `plan.loss`) and, with `want_delta`,
        dLoss/dZ_L into `plan.delta[L]`.

        `weights` (a `(B,)` backend array of non-negative sample weights) makes the
        loss the weighted mean `sum_i w_i l_i / sum_i w_i` of the samples' losses
        `l_i`; since a sample's loss depends only on its own row, its delta row is
        the unweighted one scaled by `B w_i / sum w`.  This default computes the
        weighted value with array operations (`weighted_loss`), off the fused path.
        """
        L = plan.n_layers
        loss_out = plan.loss if loss_out is None else loss_out
        delta = plan.delta[L] if want_delta else None
        # "bf16" stores delta_L rounded: by the loss op itself, or after the weighting below
        rounded = delta is not None and plan.precision in ROUNDED_STORAGE
        opts = {"precision": plan.precision} if rounded and weights is None else {}
        self.loss_and_delta(plan.A[L], plan.Z[L], Y, loss, plan.activations[-1], loss_out, delta,
                            scratch=plan.scratch, **opts)
        if weights is not None:
            xp = self.xp
            # the weighted mean does not depend on the weights' scale: dividing by the batch's largest
            # weight first keeps the sum and B / sum finite for weights near the dtype's largest or
            # smallest numbers (weights of 1 are left as they are)
            top = weights.max()
            unit = weights / xp.where(top > 0, top, 1)
            total = unit.sum()
            scale = xp.where(total > 0, plan.batch / xp.where(total > 0, total, 1), 0).astype(weights.dtype)
            w = unit * scale                          # sums to B (or all zero)
            # a row that weighs nothing counts for nothing, also where its loss or delta is not finite
            # (0 * inf is NaN): as on several ranks, where a rank whose rows all weigh nothing skips them
            loss_out[0] = xp.where(w > 0, self.sample_losses(plan.A[L], Y, loss) * w, 0).sum() / plan.batch
            if delta is not None:
                delta *= w[:, None]
                delta[...] = xp.where(w[:, None] > 0, delta, 0)    # no boolean indexing: no device sync
                if rounded:
                    self.round_stored(delta, plan.precision)

    def sample_losses(self, A_L, Y, loss: str):
        """Each sample's loss `(B,)` (the batch loss is their mean), with array operations."""
        xp = self.xp
        B, n = A_L.shape
        if loss in ("mse", "half_sse"):
            d = A_L - Y
            sq = (d * d).sum(axis=1)
            return sq / n if loss == "mse" else sq / 2
        if loss == "cross_entropy":
            m = A_L.max(axis=1, keepdims=True)
            sh = A_L - m
            lse = xp.log(xp.exp(sh).sum(axis=1))
            if Y.ndim == 1:
                return lse - xp.take_along_axis(sh, Y.astype(xp.int64)[:, None], axis=1)[:, 0]
            return lse - (Y * sh).sum(axis=1)
        if loss == "binary_cross_entropy":
            z = A_L
            return (xp.maximum(z, 0) - z * Y + xp.log1p(xp.exp(-xp.abs(z)))).sum(axis=1) / n
        if loss == "poisson":
            return (half_poisson_deviance(xp, A_L, Y).sum(axis=1) / n).astype(A_L.dtype)
        raise ValueError(f"unknown loss {loss!r}")

    def network_backward(self, plan, layers, grads, after_layer=None) -> None:
        """Backward through every layer from `plan.delta[L]` (dLoss/dZ_L).

        Fills `grads[l-1] = (dW, db)` for every layer, `plan.delta[0]` (dLoss/dX)
        when the plan has `input_grad`, and uses `plan.delta[1..L-1]` as room for
        the intermediate deltas (a fused backend may leave them unwritten).
        `after_layer(l)` (1-based) is called as soon as layer l's dW and db are
        queued (so an all-reduce of them can start while earlier layers are still
        being computed).  This default calls `dense_backward` per layer.
        """
        for l in range(len(layers), 0, -1):
            self.layer_backward(plan, l, layers, grads)
            if after_layer is not None:
                after_layer(l)

    def layer_backward(self, plan, l, layers, grads) -> None:
        """`dense_backward` of layer `l` (1-based) of a plan, with the delta below it when needed."""
        W, _ = layers[l - 1]
        dW, db = grads[l - 1]
        A, Z, delta = plan.A, plan.Z, plan.delta
        opts = self.layer_options(plan)
        if l > 1:
            self.dense_backward(delta[l], A[l - 1], W, dW, db, delta[l - 1], plan.activations[l - 2],
                                Z[l - 1], scratch=plan.scratch, **opts)
        elif plan.input_grad:
            # dLoss/dX = delta_1 W_1: the input has no activation (identity's g' is 1)
            self.dense_backward(delta[1], A[0], W, dW, db, delta[0], "identity", None, scratch=plan.scratch,
                                **opts)
        else:
            self.dense_backward(delta[1], A[0], W, dW, db, scratch=plan.scratch, **opts)

    def check_current(self, array, what: str) -> None:
        """Refuse `array` (a backend array) when this backend's kernels cannot reach it from where
        they launch now (the CUDA backend: an array on another device than the current one)."""

    # ----------------------------------------------------------- memory
    def free_memory(self) -> int | None:
        """Bytes this backend can still allocate (None when unknown)."""
        return None

    def check_memory(self, nbytes: int, what: str) -> None:
        """Refuse, before allocating, `nbytes` that do not fit in the free memory."""
        free = self.free_memory()
        if free is not None and nbytes > free:
            raise MemoryError(f"{what} need {nbytes:,} bytes, but only {free:,} bytes of "
                              f"{self.name} memory are free")

    # ----------------------------------------------------------- updates
    @abstractmethod
    def sgd_update(self, params, grads, velocity, lr: float, momentum: float,
                   weight_decay: float = 0.0, nesterov: bool = False, scratch=None) -> None:
        """PyTorch's SGD (dampening 0) over flat buffers, in place.

        `g = grads + weight_decay * params`; with momentum
        `velocity = momentum * velocity + g` and `params -= lr * velocity`
        (`velocity` starts at zero, which equals PyTorch's first-step copy),
        or with `nesterov` `params -= lr * (g + momentum * velocity)`;
        without momentum, `params -= lr * g` and `velocity` may be None.
        """

    @abstractmethod
    def adam_update(self, params, grads, m, v, lr: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, step, decoupled: bool, scratch=None) -> None:
        """PyTorch's Adam (decoupled=False) or AdamW (decoupled=True), in place.

        `step` is a 1-element int32 backend array holding the step number
        (from 1), read by the update itself so that a captured CUDA graph
        counts steps on its own.  Adam adds `weight_decay * params` to the
        gradient; AdamW multiplies params by `1 - lr * weight_decay` first.
        `m = b1 m + (1-b1) g`, `v = b2 v + ((1-b2) g) g` (PyTorch's order: `g g` first overflows sooner),
        `params -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
        """


def _rebuild(cls, settings):
    """A backend of class `cls` made with `settings` (unpickling `Backend.__reduce__`)."""
    return cls(**settings)
