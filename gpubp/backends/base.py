"""The backend interface: the array operations one training step needs.

A backend owns where arrays live (host memory for numpy, device memory for
CUDA) and how the fused operations of docs/spec.md are computed.  The network code
(`gpubp.network`) calls only the methods below and never asks which backend it
has.  Every array argument is an array of the backend's own kind (`xp.ndarray`),
C-contiguous, of the network's dtype; outputs are written in place into arrays
the caller allocated, so a training step allocates nothing and can be captured
in a CUDA graph.

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
        """A host copy of backend array `a`."""

    def empty(self, shape, dtype) -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype) -> Any:
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued work (a no-op on the host)."""

    def describe(self) -> str:
        """One line naming the backend and the device it runs on."""
        return self.name

    def capture(self, fn):
        """A callable that repeats the work of `fn()` (which must allocate nothing).

        On the host this is `fn` itself; the CUDA backend records `fn`'s
        launches into a CUDA graph once and replays the graph on each call.
        """
        return fn

    # ----------------------------------------------------------- forward
    @abstractmethod
    def dense_forward(self, A_prev, W, b, activation: str, A_out, Z_out=None) -> None:
        """`Z = A_prev @ W.T + b`, `A_out = g(Z)`; `Z_out` is written when given.

        `Z_out` is given exactly when the activation's derivative needs `Z`
        (gelu, silu).  For identity, `A_out` holds `Z`.
        """

    # ----------------------------------------------------------- loss
    @abstractmethod
    def loss_and_delta(self, A_L, Z_L, Y, loss: str, activation: str,
                       loss_out, delta_out=None) -> None:
        """Loss value of the batch into `loss_out[0]`, and `delta[L]` into `delta_out`.

        `A_L` is the output layer's activation, `Z_L` its pre-activation (or
        None when the activation does not need it).  For `cross_entropy` and
        `binary_cross_entropy` the output activation is identity and `A_L` is
        the logits.  `Y` is `(B, n_L)` of the network's dtype, or for
        `cross_entropy` optionally `(B,)` int32 class indices.  With
        `delta_out=None` only the value is computed.
        """

    # ----------------------------------------------------------- backward
    @abstractmethod
    def dense_backward(self, delta, A_prev, W, dW_out, db_out,
                       delta_prev_out=None, prev_activation: str | None = None,
                       Z_prev=None) -> None:
        """The fused backward of one dense layer.

        `dW_out = delta.T @ A_prev`, `db_out = delta.sum(0)`, and when
        `delta_prev_out` is given, `delta_prev_out = (delta @ W) * g'(Z_prev)`
        with `g = prev_activation`, the previous layer's activation; `g'` is
        taken from `A_prev` (the previous layer's output) or from `Z_prev`
        where it needs Z.  Deterministic: two calls give equal bits.
        """

    # ----------------------------------------------------------- whole network
    def network_forward(self, layers, activations, A, Z, precision="float32") -> None:
        """Forward through every layer: `A[0]` is the input; fills `A[1..L]` and the `Z[l]` not None.

        `layers` is `[(W, b), ...]`, `activations` one name per layer.  This
        default calls `dense_forward` per layer; a backend may fuse runs of
        layers (the CUDA backend keeps narrow layers' tiles on chip).
        `precision="tf32"` lets a backend multiply float32 matrices on TF32
        tensor cores (10-bit mantissa products, float32 sums); a backend
        without them computes in full float32, as this default does.
        """
        for l, ((W, b), g) in enumerate(zip(layers, activations), start=1):
            self.dense_forward(A[l - 1], W, b, g, A[l], Z[l])

    def network_backward(self, layers, activations, A, Z, delta, grads, precision="float32") -> None:
        """Backward through every layer from `delta[L]` (already set by `loss_and_delta`).

        Fills `grads[l-1] = (dW, db)` for every layer and uses `delta[1..L-1]`
        as room for the intermediate deltas (a fused backend may leave them
        unwritten).  This default calls `dense_backward` per layer.  `precision`
        as for `network_forward`.
        """
        for l in range(len(layers), 0, -1):
            self.layer_backward(l, layers, activations, A, Z, delta, grads)

    def layer_backward(self, l, layers, activations, A, Z, delta, grads) -> None:
        """`dense_backward` of layer `l` (1-based) of a network, as `network_backward` lays it out."""
        W, _ = layers[l - 1]
        dW, db = grads[l - 1]
        if l > 1:
            self.dense_backward(delta[l], A[l - 1], W, dW, db, delta[l - 1], activations[l - 2], Z[l - 1])
        else:
            self.dense_backward(delta[l], A[0], W, dW, db)

    # ----------------------------------------------------------- updates
    @abstractmethod
    def sgd_update(self, params, grads, velocity, lr: float, momentum: float,
                   weight_decay: float = 0.0) -> None:
        """PyTorch's SGD (dampening 0, not Nesterov) over flat buffers, in place.

        `g = grads + weight_decay * params`; with momentum
        `velocity = momentum * velocity + g` and `params -= lr * velocity`
        (`velocity` starts at zero, which equals PyTorch's first-step copy);
        without, `params -= lr * g` and `velocity` may be None.
        """

    @abstractmethod
    def adam_update(self, params, grads, m, v, lr: float, beta1: float, beta2: float,
                    eps: float, weight_decay: float, step, decoupled: bool) -> None:
        """PyTorch's Adam (decoupled=False) or AdamW (decoupled=True), in place.

        `step` is a 1-element int32 backend array holding the step number
        (from 1), read by the update itself so that a captured CUDA graph
        counts steps on its own.  Adam adds `weight_decay * params` to the
        gradient; AdamW multiplies params by `1 - lr * weight_decay` first.
        `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
        `params -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
        """
