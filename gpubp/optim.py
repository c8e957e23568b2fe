"""Optimizers: SGD (with momentum), Adam and AdamW, each equal to PyTorch's.

An optimizer holds its hyper-parameters and, once bound to a network, its
state in flat buffers of the network's parameter layout; `step` updates every
parameter in one backend call.
"""

from __future__ import annotations

import math

import numpy as np


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating, np.integer)):
        raise TypeError(f"learning rate must be a number, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a positive finite number, got {lr}")
    return float(lr)


def _check_range(name, x, lo, hi, lo_open=False, hi_open=True) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    x = float(x)
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
    if not ok:
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {x}")
    return x


class Optimizer:
    """Base class: `bind` allocates state for a network, `step` updates it."""

    name = "?"
    state_names: tuple[str, ...] = ()

    def __init__(self, lr):
        self.lr = _check_lr(lr)
        self.state: dict = {}
        self._params = None   # the flat parameter buffer the state was made for
        self._backend = None
        self._t = np.zeros(1, dtype=np.int32)   # steps taken; a backend array once bound

    @property
    def t(self) -> int:
        """Steps taken (kept on the backend, so a captured CUDA graph can count them)."""
        return int(self._backend.to_numpy(self._t)[0]) if self._backend is not None else int(self._t[0])

    @t.setter
    def t(self, value: int):
        host = np.array([value], dtype=np.int32)
        self._t = self._backend.asarray(host, np.int32) if self._backend is not None else host

    def bind(self, backend, params):
        """Allocate (once) the state buffers for `params`, a flat backend array."""
        if self._params is None:
            self._params, self._backend = params, backend
            self._t = backend.asarray(self._t, np.int32)
            self.state = {n: backend.zeros(params.shape, params.dtype) for n in self.state_names}
        elif self._params is not params:
            raise ValueError("this optimizer holds the state of another network; make one optimizer "
                             "per network")

    def step(self, backend, params, grads):
        self.bind(backend, params)
        self._t += 1          # in place, on the backend: no host round trip
        self._update(backend, params, grads)

    def _update(self, backend, params, grads):
        raise NotImplementedError

    def hyper(self) -> dict:
        """Hyper-parameters, JSON-serialisable (for checkpoints)."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """`torch.optim.SGD(lr, momentum, weight_decay)` with dampening 0, not Nesterov."""

    name = "sgd"

    def __init__(self, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = _check_range("momentum", momentum, 0.0, 1.0)
        self.weight_decay = _check_range("weight_decay", weight_decay, 0.0, math.inf)
        self.state_names = ("velocity",) if self.momentum else ()

    def _update(self, backend, params, grads):
        backend.sgd_update(params, grads, self.state.get("velocity"), self.lr, self.momentum,
                           self.weight_decay)

    def hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """`torch.optim.Adam(lr, betas, eps, weight_decay)` (L2 penalty added to the gradient)."""

    name = "adam"
    state_names = ("m", "v")
    decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
        self.betas = (_check_range("betas[0]", betas[0], 0.0, 1.0), _check_range("betas[1]", betas[1], 0.0, 1.0))
        self.eps = _check_range("eps", eps, 0.0, math.inf)
        self.weight_decay = _check_range("weight_decay", weight_decay, 0.0, math.inf)

    def _update(self, backend, params, grads):
        backend.adam_update(params, grads, self.state["m"], self.state["v"], self.lr,
                            self.betas[0], self.betas[1], self.eps, self.weight_decay, self._t,
                            self.decoupled)

    def hyper(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


class AdamW(Adam):
    """`torch.optim.AdamW(lr, betas, eps, weight_decay=0.01)` (decoupled weight decay)."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(spec, lr=None, **kwargs) -> Optimizer:
    """An optimizer from an instance (returned as is) or a name ("sgd", "adam", "adamw")."""
    if isinstance(spec, Optimizer):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"optimizer must be an Optimizer or a name, got {type(spec).__name__}")
    cls = OPTIMIZERS.get(spec.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {spec!r}; choose one of {', '.join(OPTIMIZERS)}")
    if lr is None:
        lr = 0.01 if cls is SGD else 1e-3
    return cls(lr, **kwargs)
