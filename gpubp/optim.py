"""Optimizers: SGD (with momentum, Nesterov's too), Adam and AdamW, each equal to PyTorch's.

An optimizer holds its hyper-parameters and, once bound to a network, its
state in flat buffers of the network's parameter layout; `step` updates every
parameter in one backend call.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import numpy as np

from .checks import check_flag, real_number

#: held while an optimizer is checked and bound (`Optimizer.bind`); a module's lock, not the optimizer's,
#: so optimizers still copy and pickle
_BIND_LOCK = threading.Lock()


def _check_lr(lr) -> float:
    x = real_number(lr)
    if x is None:
        raise TypeError(f"learning rate must be a number, got {type(lr).__name__}")
    if not math.isfinite(x) or x <= 0:
        raise ValueError(f"learning rate must be a positive finite number, got {lr}")
    return x


def _check_range(name, x, lo, hi, lo_open=False) -> float:
    """`x` as a float in `[lo, hi)` (`(lo, hi)` with `lo_open`); every range here is open at `hi`."""
    v = real_number(x)
    if v is None:
        raise TypeError(f"{name} must be a number, got {type(x).__name__}")
    x = v
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and x < hi
    if not ok:
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo}, {hi}), got {x}")
    return x


def _hyper(name, check, fits=None):
    """A hyper-parameter checked on every assignment (`opt.lr = -5` raises, `opt` unchanged); `fits(value,
    dtype)`, when given, also holds it against the dtype of the parameters the optimizer is bound to (the
    optimizer's `check_bindable` calls it too, for the network about to be bound)."""
    attr = "_" + name

    def get(self):
        return getattr(self, attr)

    def set(self, value):
        value = check(value)
        if fits is not None and self._params is not None:
            fits(value, self._params.dtype)
        setattr(self, attr, value)

    return property(get, set, doc=f"{name}, validated when assigned")


def _nonneg(name):
    return lambda x: _check_range(name, x, 0.0, math.inf)


def _check_betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair of numbers, got {betas!r}")
    return (_check_range("betas[0]", betas[0], 0.0, 1.0), _check_range("betas[1]", betas[1], 0.0, 1.0))


def _check_eps(eps):
    # eps > 0: with eps = 0 a parameter whose gradient has always been 0 (and the flat
    # buffer's zero padding) would get 0 / 0
    return _check_range("eps", eps, 0.0, math.inf, lo_open=True)


def check_eps_fits(eps: float, dtype) -> None:
    """Refuse an `eps` that rounds to 0 in `dtype`, the dtype the update computes in: it would be
    eps = 0 there (1e-50 is positive, but 0 in float32), and a parameter whose gradient has always
    been 0 would get 0 / 0."""
    dt = np.dtype(dtype)
    tiny = np.finfo(dt).tiny
    if not dt.type(eps) > 0:
        raise ValueError(f"eps={eps!r} rounds to 0 in {dt.name}, the dtype of the network's parameters, and "
                         f"eps must be positive there (a parameter whose gradient has always been 0 would get "
                         f"0 / 0); use at least {float(tiny):.3g}")
    if dt.type(eps) < tiny:
        # the CUDA kernels are compiled with -ftz=true: a subnormal float32 eps is 0 there
        raise ValueError(f"eps={eps!r} is subnormal in {dt.name}, the dtype of the network's parameters: the "
                         f"CUDA kernels flush it to 0 (then a parameter whose gradient has always been 0 would "
                         f"get 0 / 0); use at least {float(tiny):.3g}")


#: the most steps an optimizer counts: its step count `t` is an int32 on the backend
MAX_STEPS = 2**31 - 1


class Optimizer:
    """Base class: `bind` allocates state for a network, `step` updates it.

    Hyper-parameters are checked when the optimizer is made and whenever one is
    assigned.  The state (`state` buffers and the step count `t`) lives on the
    backend of the network the optimizer is bound to; an optimizer serves one
    network.
    """

    name = "?"
    state_names: tuple[str, ...] = ()
    lr = _hyper("lr", _check_lr)

    def __init__(self, lr: float):
        self.lr = lr
        self.state: dict = {}
        self._params = None   # the flat parameter buffer the state was made for
        self._backend = None
        self._scratch = None  # temporaries of the update (the numpy backend's)
        self._t = np.zeros(1, dtype=np.int32)   # steps taken; a backend array once bound
        #: `t` as last read or set, plus the steps taken since: the host's copy, so that `check_steps`
        #: needs no device read; None once someone may have written `_t` (see `buffers`)
        self._t_host: int | None = 0

    @property
    def t(self) -> int:
        """Steps taken (kept on the backend, so a captured CUDA graph can count them)."""
        t = int(self._backend.to_numpy(self._t)[0]) if self._backend is not None else int(self._t[0])
        self._t_host = t
        return t

    @t.setter
    def t(self, value: int):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**31:
            raise ValueError(f"the step count t must be an integer in [0, 2**31), got {value!r}")
        host = np.array([value], dtype=np.int32)
        if self._backend is not None:
            self._t[...] = self._backend.asarray(host, np.int32)
        else:
            self._t = host
        self._t_host = int(value)

    def check_steps(self, n: int) -> None:
        """Raise a ValueError, changing nothing, if `n` more steps would pass `MAX_STEPS`.

        The step count is an int32 on the backend: past 2**31 - 1 it would wrap to a negative
        number without a word (Adam's bias correction then divides by 1 - beta**t of a negative t,
        and `save` would write a count `load` refuses).  Reads the count from the device only
        when the host's copy is unknown (after `buffers` was handed out)."""
        t = self._t_host if self._t_host is not None else self.t
        if t + n > MAX_STEPS:
            raise ValueError(f"this optimizer has taken {t} steps and {n} more would pass its step count's limit "
                             f"{MAX_STEPS} (2**31 - 1, an int32 on the device, which would wrap); make a new "
                             "optimizer, or set optimizer.t, to train on")

    @contextmanager
    def host_count_advances(self, steps: int):
        """The host's copy of `t` after the block is its value before plus `steps`, whatever `step` calls
        the block made: a CUDA graph's recording runs no step (0), its replay one that `step` does not
        see (1).  If the block raises, the copy is dropped (the next `check_steps` reads the device)."""
        before = self._t_host
        try:
            yield
        except BaseException:
            self._t_host = None
            raise
        self._t_host = None if before is None else before + steps

    def check_bindable(self, params) -> None:
        """Raise unless `bind(backend, params)` would succeed (it changes nothing)."""
        if self._params is not None and self._params is not params:
            raise ValueError("this optimizer holds the state of another network; make one optimizer "
                             "per network")

    def bind(self, backend, params):
        """Allocate (once) the state buffers for `params`, a flat backend array."""
        if self._params is params:
            return
        # the check and the binding at once: two threads binding one optimizer to two networks would
        # otherwise both pass the check, and one network would train with the other's state
        with _BIND_LOCK:
            self.check_bindable(params)
            if self._params is None:
                from .backends.plan import Scratch

                state = {n: backend.zeros(params.shape, params.dtype) for n in self.state_names}
                t = backend.asarray(self._t, np.int32)
                self._params, self._backend, self._t, self.state = params, backend, t, state
                self._scratch = Scratch(backend)

    @property
    def is_bound(self) -> bool:
        """Whether the optimizer holds state for a network's parameters (`bind`)."""
        return self._params is not None

    def unbind(self) -> None:
        """Drop the state made by `bind` (keeping the step count), as if it had never been bound."""
        if self._params is not None:
            t = self.t
            self.state, self._params, self._backend, self._scratch = {}, None, None, None
            self._t = np.array([t], dtype=np.int32)

    def step(self, backend, params, grads):
        self.bind(backend, params)
        self._t += 1          # in place, on the backend: no host round trip
        if self._t_host is not None:
            self._t_host += 1
        self._update(backend, params, grads)

    def _update(self, backend, params, grads):
        raise NotImplementedError

    # ------------------------------------------------------------ snapshots
    def buffers(self) -> list:
        """The step count and every state buffer, in a fixed order (for snapshots)."""
        self._t_host = None   # the caller may write the count (a restore, a broadcast): read it again
        return [self._t] + [self.state[n] for n in sorted(self.state)]

    def hyper(self) -> dict:
        """Hyper-parameters, JSON-serialisable (for checkpoints)."""
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """`torch.optim.SGD(lr, momentum, weight_decay, nesterov)` with dampening 0.

    `nesterov=True` (PyTorch's Nesterov momentum) needs a momentum above 0, as PyTorch's does."""

    name = "sgd"
    weight_decay = _hyper("weight_decay", _nonneg("weight_decay"))

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(lr)
        momentum = _check_range("momentum", momentum, 0.0, 1.0)
        nesterov = check_flag("nesterov", nesterov)
        _check_nesterov(nesterov, momentum)
        self._momentum, self._nesterov = momentum, nesterov
        self.weight_decay = weight_decay
        self.state_names = ("velocity",) if self._momentum else ()

    @property
    def momentum(self) -> float:
        """Momentum, validated when assigned; it can change between 0 and non-zero only before
        the optimizer is bound (the velocity buffer exists only with momentum), and not to 0 with
        Nesterov momentum on."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        m = _check_range("momentum", value, 0.0, 1.0)
        if self._params is not None and bool(m) != bool(self._momentum):
            raise ValueError("momentum cannot be switched on or off once the optimizer has state; "
                             "make a new optimizer")
        _check_nesterov(self._nesterov, m)
        self._momentum = m
        self.state_names = ("velocity",) if m else ()

    @property
    def nesterov(self) -> bool:
        """Nesterov momentum (PyTorch's): the step is `g + momentum * velocity` rather than `velocity`.
        Validated when assigned (True or False; True needs a momentum above 0)."""
        return self._nesterov

    @nesterov.setter
    def nesterov(self, value):
        value = check_flag("nesterov", value)
        _check_nesterov(value, self._momentum)
        self._nesterov = value

    def _update(self, backend, params, grads):
        backend.sgd_update(params, grads, self.state.get("velocity"), self.lr, self.momentum,
                           self.weight_decay, nesterov=self.nesterov, scratch=self._scratch)

    def hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}


def _check_nesterov(nesterov: bool, momentum: float) -> None:
    if nesterov and not momentum:
        raise ValueError("Nesterov momentum needs a momentum above 0 (as PyTorch's SGD): set momentum, "
                         "or nesterov=False")


class Adam(Optimizer):
    """`torch.optim.Adam(lr, betas, eps, weight_decay)` (L2 penalty added to the gradient).

    `eps` must be positive (PyTorch accepts 0, which turns a parameter whose gradient
    has always been 0 into 0/0 = NaN)."""

    name = "adam"
    state_names = ("m", "v")
    decoupled = False
    betas = _hyper("betas", _check_betas)
    eps = _hyper("eps", _check_eps, fits=check_eps_fits)
    weight_decay = _hyper("weight_decay", _nonneg("weight_decay"))

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay

    def check_bindable(self, params) -> None:
        super().check_bindable(params)
        check_eps_fits(self.eps, params.dtype)

    def _update(self, backend, params, grads):
        backend.adam_update(params, grads, self.state["m"], self.state["v"], self.lr,
                            self.betas[0], self.betas[1], self.eps, self.weight_decay, self._t,
                            self.decoupled, scratch=self._scratch)

    def hyper(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


class AdamW(Adam):
    """`torch.optim.AdamW(lr, betas, eps, weight_decay=0.01)` (decoupled weight decay)."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(spec: Optimizer | str, lr: float | None = None, **kwargs) -> Optimizer:
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
