"""The multilayer perceptron: parameters, forward, backward, training loop.

The network holds its parameters in one flat buffer (`gpubp.params`), owns a
step plan per batch shape (`gpubp.backends.plan.StepPlan`: activations,
pre-activations, deltas, the loss and every backend temporary of a step), and
calls only the backend interface (`gpubp.backends.base.Backend`).

Every public method checks all of its arguments before it changes anything: a
call refused with `ValueError` / `TypeError` leaves the parameters, the
optimizer and its state as they were.  A training run whose loss stops being
finite raises `FloatingPointError` with the parameters and optimizer state of
the last step whose loss was finite.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import activations as acts
from . import losses
from .backends import Backend, get_backend
from .checks import (check_dtype, check_flag, check_positive_int, check_precision, check_seed, check_sizes,
                     finite_after_cast, host_array, real_number)
from .distributed import DataParallel, EveryRankError, check_fit_options, guard_fit
from .optim import Optimizer, make_optimizer
from .params import ALIGN, ParamLayout
from .precision import PRECISIONS  # noqa: F401  (the modes `MLP(precision=...)` takes)
from .training import FitLoop, Reporter, quiet_floats, schedule_rate

#: weight initialisations (`MLP(init=...)`)
INITS = ("torch", "xavier", "kaiming")

#: rows per forward pass in evaluate/predict (bounds plan memory)
EVAL_CHUNK = 65536
#: step plans a network keeps (least recently used go first; a captured step keeps its own)
MAX_PLANS = 4
#: the batch size the constructor's memory estimate assumes
_ESTIMATE_BATCH = 32

log = logging.getLogger("gpubp")


def _is_device_array(x) -> bool:
    if getattr(x, "is_cuda", False) is True or type(x).__module__.startswith("cupy"):
        return True
    try:
        return hasattr(x, "__cuda_array_interface__")
    except Exception:   # a device object refusing the interface (a CUDA tensor that requires grad): the
        return True     # backend says why (Backend.asarray)


def _releases_inputs(method):
    """A public call that binds plans' inputs unbinds them when it ends (`MLP._release_inputs`).

    It holds the network's lock (re-entrant) throughout: its step plans and gradient buffer serve
    one pass at a time, so two threads calling one network (a server's `predict`) run one after
    the other instead of writing each other's activations."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self._release_inputs()
    return _locked(call)


def _locked(method):
    """A public call that holds the network's lock (as `_releases_inputs`), binding no plan's input."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return call


class MLP:
    """A dense network `layer_sizes[0] -> ... -> layer_sizes[-1]` trained by backprop.

    `activation` is the hidden layers' activation (or a list, one per hidden
    layer); `output_activation` the last layer's (identity for the losses
    that fuse their own: `cross_entropy`, `binary_cross_entropy` on logits and
    `poisson` on log-rates).  `init` chooses the
    weights' start: "torch" (PyTorch's `nn.Linear`: W and b uniform in
    `±1/sqrt(fan_in)`), "xavier" (Glorot uniform, `±sqrt(6/(fan_in+fan_out))`,
    b = 0) or "kaiming" (He normal, std `sqrt(2/fan_in)`, b = 0), reproducibly
    from `seed` (None or a non-negative integer).

    `precision` chooses how the matrix products of a step are computed
    (docs/spec.md, "Precision modes"; `gpubp.precision` emulates each):
    "float32" (default, full float32), "tf32" (operands rounded to TF32, float32
    sums), "bf16" (mixed precision as autocast users know it: operands rounded
    to bfloat16, float32 sums, every stored activation Z, A and delta rounded to
    bfloat16 when written; float32 weights, biases, gradients, optimizer state
    and loss; the outputs of `forward` / `predict` are the rounded ones) or
    "3xtf32" (each operand split into two TF32 parts, three products:
    near-float32 accuracy); every mode but "float32" needs dtype float32.  The numpy backend
    emulates each mode's rounding exactly as defined there.  The CUDA backend
    runs "tf32" on TF32 tensor cores in its fused narrow-layer runs (its
    per-layer GEMMs stay float32), and refuses "bf16" and "3xtf32" unless it was
    made with `CudaBackend(tensor_core_gemms=True)` (kernels not yet verified on
    a GPU).

    The constructor refuses, before allocating, a network whose parameters,
    gradients, optimizer state and one step's buffers would not fit in the
    backend's free memory (a `MemoryError` giving the size in bytes).
    """

    def __init__(self, layer_sizes, activation="relu", output_activation="identity", loss="mse",
                 backend="auto", dtype="float32", seed=None, precision="float32", init="torch"):
        self.sizes = check_sizes(layer_sizes)
        self._lock = threading.RLock()   # one pass at a time on the plans and `_grads` (`_releases_inputs`)
        n_hidden = len(self.sizes) - 2
        if isinstance(activation, (list, tuple)):
            if len(activation) != n_hidden:
                raise ValueError(f"activation lists one name per hidden layer: expected {n_hidden}, "
                                 f"got {len(activation)} ({list(activation)})")
            hidden = [acts.check_activation(a) for a in activation]
        else:
            hidden = [acts.check_activation(activation)] * n_hidden
        out_act = acts.check_activation(output_activation, "output_activation")
        self.loss = losses.check_loss(loss)
        losses.check_output_activation(self.loss, out_act)
        try:
            losses.check_outputs(self.loss, self.sizes[-1])
        except ValueError as e:
            raise ValueError(f"loss {e}") from None
        self.activations = tuple(hidden + [out_act])   # activation of layers 1..L
        self.dtype = check_dtype(dtype)
        self._precision = check_precision(precision, self.dtype)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.init = init
        self.seed = check_seed(seed)
        self.backend = get_backend(backend)
        self.backend.check_precision(self.precision)   # a mode the backend cannot run is refused here
        self.layout = ParamLayout(self.sizes)
        self.backend.check_memory(self.memory_estimate(), f"the network {list(self.sizes)} in {self.dtype.name} "
                                  f"(parameters, gradients, optimizer state and a batch of {_ESTIMATE_BATCH})")
        self._params = self.backend.zeros((self.layout.total,), self.dtype)
        self._grads = self.backend.zeros((self.layout.total,), self.dtype)
        self._Wb = self.layout.views(self._params)
        self._dWb = self.layout.views(self._grads)
        self._plans: OrderedDict = OrderedDict()
        self.optimizer: Optimizer | None = None
        #: free-form JSON data saved with the network
        self.metadata: dict = {}
        #: input standardisation `(mean, std)` applied to every input, or None (`set_standardization`)
        self.standardization: tuple[np.ndarray, np.ndarray] | None = None
        self._std_dev = None        # the same on the backend
        #: the number of dimensions of the targets at fit (1: `predict` returns `(N,)`), or None
        self.target_ndim: int | None = None
        #: set by a callback to end `fit` after the current epoch
        self.stop_training = False
        self._rng = np.random.default_rng(self.seed)
        self._init_params()

    # ------------------------------------------------------------ basics
    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        return self.layout.n_params

    @property
    def precision(self) -> str:
        """How the matrix products are computed ("float32", "tf32", "bf16", "3xtf32"; docs/spec.md,
        "Precision modes").  Assigning another mode checks it as the constructor does (a mode the
        dtype or the backend cannot run is refused, nothing changed) and drops the kept step plans,
        which were made for the old mode: every later pass, of any batch size, runs the new one."""
        return self._precision

    @precision.setter
    def precision(self, value) -> None:
        self._precision = self._runnable_precision(value)
        self._plans = OrderedDict()

    def _runnable_precision(self, value) -> str:
        """`value` as the name of a precision mode this network can run (its dtype, its backend), or
        ValueError / TypeError; changes nothing."""
        value = check_precision(value, self.dtype)
        self.backend.check_precision(value)
        return value

    def __repr__(self):
        return (f"MLP({list(self.sizes)}, activations={list(self.activations)}, loss={self.loss!r}, "
                f"backend={self.backend.name!r}, dtype={self.dtype.name!r}, precision={self.precision!r})")

    # ------------------------------------------------------------ copies (copy.deepcopy, pickle)
    def __getstate__(self):
        """What a copy holds: the flat buffers, not the per-layer views of them nor the step plans.

        deepcopy and pickle copy each array on its own, so a view of `_params` would come back as a
        separate array: the copy's passes would read stale weights while its optimizer updated
        `_params`.  `__setstate__` makes the views again from the copied buffers."""
        state = dict(self.__dict__)
        for name in ("_Wb", "_dWb", "_plans", "_lock"):
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        if "precision" in state:   # pickled before `precision` became a checked property
            state = dict(state)
            state["_precision"] = state.pop("precision")
        self.__dict__.update(state)
        for a in self.standardization or ():   # copies come back writeable: read-only as set_standardization's
            a.flags.writeable = False
        self._Wb = self.layout.views(self._params)
        self._dWb = self.layout.views(self._grads)
        self._plans = OrderedDict()
        self._lock = threading.RLock()

    def config(self) -> dict:
        """What `__init__` needs to rebuild this network (JSON-serialisable)."""
        return {"layer_sizes": list(self.sizes), "activation": list(self.activations[:-1]),
                "output_activation": self.activations[-1], "loss": self.loss,
                "dtype": self.dtype.name, "seed": self.seed, "precision": self.precision,
                "init": self.init}

    def memory_estimate(self, batch: int = _ESTIMATE_BATCH) -> int:
        """Bytes of parameters, gradients, two optimizer state buffers and one step plan of `batch` rows."""
        from .backends.plan import StepPlan

        # a positive integer: int() would take "3", truncate 2.5, read True as 1 and give a negative
        # size for -1
        batch = check_positive_int("batch", batch)
        flat = 4 * self.layout.total * self.dtype.itemsize
        return flat + StepPlan.nbytes_estimate(self.sizes, self.activations, batch, self.dtype)

    def _init_params(self):
        host = np.zeros(self.layout.total, dtype=np.float64)
        for W, b in self.layout.views(host):
            n_out, n_in = W.shape
            if self.init == "torch":
                bound = 1.0 / math.sqrt(n_in)
                W[...] = self._rng.uniform(-bound, bound, size=W.shape)
                b[...] = self._rng.uniform(-bound, bound, size=b.shape)
            elif self.init == "xavier":
                bound = math.sqrt(6.0 / (n_in + n_out))
                W[...] = self._rng.uniform(-bound, bound, size=W.shape)
            else:  # kaiming (He) normal, for relu-family layers
                W[...] = self._rng.normal(0.0, math.sqrt(2.0 / n_in), size=W.shape)
        self._params[...] = self.backend.asarray(host, self.dtype)

    def get_params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer `(W, b)` as numpy copies; `W` has shape `(n_out, n_in)`."""
        host = self.backend.to_numpy(self._params)
        return [(W.copy(), b.copy()) for W, b in self.layout.views(host)]

    def set_params(self, params: Sequence[tuple[ArrayLike, ArrayLike]]) -> None:
        """Set every layer's `(W, b)` from a list like `get_params()` returns (all checked first).

        The values are written into the network's parameter buffer: a bound optimizer
        (`net.optimizer`) keeps its state (moments, velocity, step count), as a PyTorch
        optimizer does when `load_state_dict` sets its module's parameters."""
        self.backend.check_current(self._params, "network")   # the write runs on the current device
        try:
            params = list(params)
        except TypeError:
            raise TypeError("set_params needs a list of (W, b) pairs") from None
        if len(params) != self.n_layers:
            raise ValueError(f"set_params needs {self.n_layers} (W, b) pairs, got {len(params)}")
        host = np.zeros(self.layout.total, dtype=self.dtype)
        for l, ((W, b), pair) in enumerate(zip(self.layout.views(host), params), start=1):
            try:
                Wn, bn = pair
            except (TypeError, ValueError):
                raise TypeError(f"set_params: layer {l} must be a (W, b) pair") from None
            Wn, bn = self._host(Wn, f"layer {l} W"), self._host(bn, f"layer {l} b")
            if Wn.shape != W.shape or bn.shape != b.shape:
                raise ValueError(f"layer {l}: expected W {W.shape} and b {b.shape}, got W {Wn.shape} "
                                 f"and b {bn.shape}")
            W[...] = finite_after_cast(Wn, self.dtype, f"layer {l} W")
            b[...] = finite_after_cast(bn, self.dtype, f"layer {l} b")
        self._params[...] = self.backend.asarray(host, self.dtype)

    def set_standardization(self, mean: ArrayLike | None, std: ArrayLike | None) -> None:
        """Standardise every input as `(X - mean) / std` from now on (None, None: stop).

        `fit(..., standardize=True)` sets it from the training data; it is saved
        with the network and applied by `forward`, `predict`, `predict_proba`,
        `evaluate` and training alike."""
        if mean is None and std is None:
            self.standardization, self._std_dev = None, None
            return
        # its device copies are made on the current device, where every forward must find them
        self.backend.check_current(self._params, "network")
        n0 = self.sizes[0]
        if mean is None or std is None:
            raise ValueError("give mean and std together (or both None to stop standardising), got "
                             f"{'mean' if mean is None else 'std'}=None")
        hm, hs = self._host(mean, "mean"), self._host(std, "std")
        # (n_0,) or a row (1, n_0) (X.mean(axis=0, keepdims=True)); another shape of n_0 values, (2, 2) for
        # 4 inputs, is not one value per input
        if hm.shape not in ((n0,), (1, n0)) or hs.shape not in ((n0,), (1, n0)):
            raise ValueError(f"mean and std need {n0} values each (one per input, shape ({n0},) or (1, {n0})), "
                             f"got shapes {hm.shape} and {hs.shape}")
        # copies: the network's standardisation must not change when the caller's arrays do
        m = finite_after_cast(hm.reshape(-1), np.float64, "mean").copy()
        s = finite_after_cast(hs.reshape(-1), np.float64, "std").copy()
        if np.any(s <= 0):
            raise ValueError("std must be positive (a constant feature: use std 1)")
        # every input is computed as (X - mean) * (1 / std) in the network's dtype: both must fit it
        mean_d = finite_after_cast(m.reshape(1, -1), self.dtype, "mean")
        with np.errstate(over="ignore"):
            inv = 1.0 / s
            fits = np.all(np.isfinite(inv.astype(self.dtype)))
        if not fits:
            raise ValueError(f"std is too small for a {self.dtype.name} network: 1 / std overflows "
                             f"{self.dtype.name} (smallest std {float(s.min()):.3g})")
        m.flags.writeable = s.flags.writeable = False   # what is saved must stay what the inputs use
        # the device copies first: a copy that fails (out of device memory) leaves both as they were
        dev = (self.backend.asarray(mean_d, self.dtype), self.backend.asarray(inv.reshape(1, -1), self.dtype))
        self.standardization, self._std_dev = (m, s), dev

    # ------------------------------------------------------------ inputs
    def _inputs(self, X, name="X", allow_empty=False):
        """`X` as a `(B, n_0)` backend array of the network's dtype, after checks (and standardised);
        no rows are refused unless `allow_empty` (a rank's shard in a sharded fit may hold none).

        A host input (numpy array, list, frame) is standardised in float64 and only then rounded to
        the network's dtype: rounded first, a feature with a large offset (a timestamp near 1.7e9, a
        value near 1e8 varying by units) would lose its variation to float32's spacing there.  An
        input already on the device is standardised there, in the network's dtype."""
        if self._std_dev is not None and not _is_device_array(X):
            self.backend.check_current(self._params, "network")
            h = finite_after_cast(self._host_rows(X, name, allow_empty), np.float64, name)
            return self.backend.asarray(finite_after_cast(self._standardize_host(h), self.dtype,
                                                          f"{name} (standardised)"), self.dtype)
        return self._standardize_device(self._raw_inputs(X, name, allow_empty))

    def _standardize_device(self, a):
        """Backend array `a` standardised in the network's dtype (as it is, without a standardisation)."""
        if self._std_dev is None:
            return a
        mean, inv = self._std_dev
        return (a - mean) * inv

    def _standardize_host(self, h: np.ndarray) -> np.ndarray:
        """`(h - mean) * (1 / std)` in float64 (docs/spec.md, "Training loop")."""
        mean, std = self.standardization
        with np.errstate(over="ignore", invalid="ignore"):   # what overflows is refused by the caller
            return (np.asarray(h, np.float64) - mean) * (1.0 / std)

    def _host_rows(self, X, name="X", allow_empty=False) -> np.ndarray:
        """Host `X` as a `(B, n_0)` numpy array of real numbers (any dtype), shape checked."""
        n0 = self.sizes[0]
        h = host_array(X, name)
        if h.ndim == 1 and h.shape[0] == n0:
            h = h.reshape(1, n0)
        if h.ndim != 2 or h.shape[1] != n0:
            raise ValueError(f"{name} has shape {h.shape}; expected (B, {n0}) for a network with {n0} inputs")
        if h.shape[0] == 0 and not allow_empty:
            raise ValueError(f"{name} holds no samples")
        return h

    def _raw_inputs(self, X, name="X", allow_empty=False):
        n0 = self.sizes[0]
        self.backend.check_current(self._params, "network")   # kernels read its parameters where they run
        if _is_device_array(X):
            if "complex" in str(getattr(X, "dtype", "")):
                raise TypeError(f"{name} is complex ({X.dtype}); gpubp takes real numbers only")
            a = self._device_input(X, name)
            if a.ndim == 1 and a.shape[0] == n0:
                a = a.reshape(1, n0)
            if a.ndim != 2 or a.shape[1] != n0:
                raise ValueError(f"{name} has shape {tuple(a.shape)}; expected (B, {n0}) for a network "
                                 f"with {n0} inputs")
            if not bool(self.backend.xp.isfinite(a).all()):
                raise ValueError(f"{name} contains NaN or infinity (or values beyond {self.dtype.name}'s range)")
        else:
            h = self._host_rows(X, name, allow_empty)
            a = self.backend.asarray(finite_after_cast(h, self.dtype, name), self.dtype)
        if a.shape[0] == 0 and not allow_empty:
            raise ValueError(f"{name} holds no samples")
        return a

    def _device_input(self, x, name, to_host=False):
        """Device array `x` as a backend array of the network's dtype (or, `to_host`, a numpy copy); the
        backend's refusal (the numpy backend's of any device array) names the argument."""
        try:
            return self.backend.to_numpy(x) if to_host else self.backend.asarray(x, self.dtype)
        except TypeError as e:
            raise TypeError(f"{name}: {e}") from None

    def _host(self, x, name):
        """`host_array(x, name)`, with a device array (CuPy, a CUDA tensor) copied to the host first by
        the backend (numpy cannot read device memory; the numpy backend refuses one, saying why)."""
        return host_array(self._device_input(x, name, to_host=True) if _is_device_array(x) else x, name)

    def _targets(self, Y, B, name="Y"):
        """Targets checked against a batch of `B` samples, as a backend array."""
        # checked on the host
        h = losses.prepare_targets(self._host(Y, name), self.loss, B, self.sizes[-1], self.dtype, name)
        return self.backend.asarray(h, h.dtype)

    def _sample_weights(self, w, B, Y=None, class_weight=None, some_positive=True):
        """Per-sample weights (host float64, shape (B,)) from `sample_weight` and `class_weight`, or None.

        `some_positive=False` lets them all be zero (one rank's shard of a sharded fit: the weights
        of all the ranks' rows together are checked by `DataParallel.setup`)."""
        out = None
        if w is not None:
            h = self._host(w, "sample_weight").astype(np.float64)
            if h.shape != (B,):
                raise ValueError(f"sample_weight has shape {h.shape}; expected ({B},), one weight per sample")
            if not np.all(np.isfinite(h)) or np.any(h < 0):
                raise ValueError("sample_weight must hold finite, non-negative numbers")
            out = h
        if class_weight is not None:
            if self.loss != "cross_entropy":
                raise ValueError("class_weight applies to cross_entropy networks (classes are labels)")
            labels = self.backend.to_numpy(Y)
            labels = labels if labels.ndim == 1 else labels.argmax(axis=1)
            n = self.sizes[-1]
            if isinstance(class_weight, str):
                if class_weight != "balanced":
                    raise ValueError(f"class_weight must be a dict or 'balanced', got {class_weight!r}")
                counts = np.bincount(labels, minlength=n).astype(np.float64)
                cw = np.where(counts > 0, B / (n * np.maximum(counts, 1)), 0.0)
            elif isinstance(class_weight, dict):
                cw = np.ones(n)
                for k, v in class_weight.items():
                    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n:
                        raise ValueError(f"class_weight keys must be class indices in [0, {n}), got {k!r}")
                    fv = real_number(v)
                    if fv is None or not math.isfinite(fv) or fv < 0:
                        raise ValueError(f"class_weight[{k}] must be a finite non-negative number, got {v!r}")
                    cw[int(k)] = fv
            else:
                raise TypeError("class_weight must be a dict {class: weight} or 'balanced'")
            cls_w = cw[labels]
            with np.errstate(over="ignore"):     # an overflowing product is refused below
                out = cls_w if out is None else out * cls_w
        if out is not None:
            # training uses the weights in the network's dtype: refuse what overflows it, and
            # weights that all round to zero there
            name = "sample_weight" if class_weight is None else \
                "the sample weights" if w is None else "the sample weights (sample_weight times class_weight)"
            cast = finite_after_cast(out, self.dtype, name)
            if some_positive and not np.any(cast > 0):
                raise ValueError("the sample weights are all zero" if not np.any(out > 0) else
                                 f"the sample weights are all zero in {self.dtype.name} (each is below its "
                                 f"smallest positive number)")
        return out

    # ------------------------------------------------------------ plans and passes
    def _plan(self, B):
        """The step plan for batches of `B` rows (kept; at MAX_PLANS the least recently used goes first)."""
        plan = self._plans.get(B)
        if plan is None:
            while len(self._plans) >= MAX_PLANS:   # room first: the new plan's memory check counts what they free
                self._plans.popitem(last=False)
            plan = self._new_plan(B)
            self._plans[B] = plan
        else:
            self._plans.move_to_end(B)
        return plan

    def _release_inputs(self):
        """Unbind the kept plans' inputs (`A[0]`) at the end of a public call (`_releases_inputs`): bound, a plan would keep
        the last batch alive, a view of the caller's array or of the network's copy of a whole data
        set (fit's shuffled rows, predict's converted input), on the device too, for as long as the
        plan is kept.  Every pass binds its input again (`_forward`)."""
        for plan in self._plans.values():
            plan.A[0] = None

    def _new_plan(self, B):
        plan = self.backend.make_plan(self.sizes, self.activations, B, self.dtype, self.precision)
        self.backend.prepare(plan, self.loss)   # the CUDA backend compiles the step's kernels here
        return plan

    def _forward(self, X, plan=None):
        """Forward of the checked backend array `X`; returns the plan holding A, Z (and room for deltas)."""
        plan = (plan or self._plan(X.shape[0])).bind_input(X)
        self.backend.network_forward(plan, self._Wb)
        return plan

    def _loss_delta(self, plan, Y, loss_out=None, weights=None, want_delta=True):
        self.backend.network_loss(plan, Y, self.loss, want_delta=want_delta, loss_out=loss_out, weights=weights)

    def _gradients(self, X, Y, loss_out=None, weights=None, plan=None, after_layer=None, every_delta=False):
        """Forward, loss and backward of one batch of checked backend arrays: the loss in `loss_out`
        (default the plan's), the gradients in `self._grads`; returns the plan.  `after_layer` as
        for `Backend.network_backward`; `every_delta` runs the interface's layer-by-layer backward,
        which writes every intermediate delta even where a backend fuses layers."""
        plan = self._forward(X, plan)
        self._loss_delta(plan, Y, loss_out, weights)
        if every_delta:   # the interface's own layer-by-layer backward, not a backend's fused one
            Backend.network_backward(self.backend, plan, self._Wb, self._dWb, after_layer)
        else:
            self.backend.network_backward(plan, self._Wb, self._dWb, after_layer)
        return plan

    def _step(self, X, Y, optimizer: Optimizer, loss_out=None, weights=None, plan=None):
        """One training step on checked backend arrays (and a bound optimizer); no host synchronisation."""
        plan = self._gradients(X, Y, loss_out, weights, plan)
        optimizer.step(self.backend, self._params, self._grads)
        return plan

    # ------------------------------------------------------------ public passes
    @_releases_inputs
    def forward(self, X: ArrayLike) -> Any:
        """The network's raw outputs for `X` (logits for the logit losses, log-rates for `poisson`), as a
        backend array."""
        X = self._inputs(X)
        rows = self._eval_rows(X.shape[0])
        outs = [self._forward(X[i:i + rows]).A[-1].copy() for i in range(0, X.shape[0], rows)]
        return outs[0] if len(outs) == 1 else self.backend.xp.concatenate(outs)

    def _eval_rows(self, B: int) -> int:
        """Rows per pass of `forward` and `evaluate` over `B` rows: `EVAL_CHUNK` (or `B`), fewer only where
        a plan of that many rows would be refused for the backend's free memory (a wide network on a
        small device): as many as fit, so that any number of rows is taken whose one-row plan fits."""
        rows = min(B, EVAL_CHUNK)
        if rows in self._plans:
            return rows
        free = self.backend.free_memory()
        if free is not None:
            from .backends.plan import StepPlan

            per_row = StepPlan.nbytes_estimate(self.sizes, self.activations, 1, self.dtype)
            rows = max(1, min(rows, free // per_row))   # 1 row that does not fit: its plan says why
        return rows

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Class labels for `cross_entropy`, 0/1 per output for `binary_cross_entropy`, the rates
        `exp(outputs)` for `poisson`, else outputs (shaped `(N,)` when the network's last training
        call, `fit`, `train_step` or `capture_train_step`, took `(N,)` targets for its one output)."""
        out = self.backend.to_numpy(self.forward(X))
        if self.loss == "cross_entropy":
            return out.argmax(axis=1)
        if self.loss == "binary_cross_entropy":
            out = (out > 0).astype(np.int64)
        elif self.loss == "poisson":
            out = losses.poisson_rates(out)
        if self.target_ndim == 1 and out.shape[1] == 1:
            return out[:, 0]
        return out

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities: softmax for `cross_entropy`, sigmoid for `binary_cross_entropy`."""
        if self.loss not in losses.LOGIT_LOSSES:
            raise ValueError(f"predict_proba needs a cross-entropy loss; this network's loss is {self.loss!r}")
        z = self.backend.to_numpy(self.forward(X)).astype(np.float64)
        if self.loss == "cross_entropy":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        else:
            e = np.exp(-np.abs(z))                      # stable: e in (0, 1]
            p = np.where(z >= 0, 1.0, e) / (1.0 + e)
        return p.astype(self.dtype)

    @_releases_inputs
    def loss_and_grads(self, X: ArrayLike, Y: ArrayLike) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
        """`(loss, [(dW, db), ...])` for the batch, without changing the parameters."""
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        plan = self._gradients(X, Y)
        loss = float(self.backend.to_numpy(plan.loss)[0])
        host = self.backend.to_numpy(self._grads)
        return loss, [(dW.copy(), db.copy()) for dW, db in self.layout.views(host)]

    # ------------------------------------------------------------ optimizers
    def _resolve_optimizer(self, optimizer, lr=None) -> Optimizer:
        """The optimizer a call will use, checked, without binding it (nothing changes here).

        An Optimizer instance is used as it is (`lr`, if given, must equal its
        rate: a conflict is refused).  A name reuses the network's current
        optimizer when it has that name, so its state carries on (`lr`, if given,
        becomes its rate once the call's checks have passed); otherwise a new
        optimizer of that name is made."""
        if lr is not None:
            from .optim import _check_lr

            lr = _check_lr(lr)
        if isinstance(optimizer, Optimizer):
            if lr is not None and lr != optimizer.lr:
                raise ValueError(f"lr={lr} conflicts with the optimizer's own rate {optimizer.lr}: set "
                                 "optimizer.lr, or pass the optimizer by name")
            optimizer.check_bindable(self._params)
            return optimizer
        if isinstance(optimizer, str) and self.optimizer is not None and \
                optimizer.lower() == self.optimizer.name:
            return self.optimizer
        opt = make_optimizer(optimizer, lr)
        opt.check_bindable(self._params)
        return opt

    def _bind(self, opt: Optimizer, lr=None) -> Optimizer:
        """Bind `opt` (from `_resolve_optimizer`) once every check of the call has passed."""
        opt.bind(self.backend, self._params)
        if lr is not None:
            opt.lr = lr
        self.optimizer = opt
        return opt

    def _diverged(self, value, step, lr, where="", note=""):
        return FloatingPointError(
            f"the loss became {value} at step {step}{where} with learning rate {lr:g}: training diverged; "
            f"the parameters and optimizer state are those after step {step - 1}, the last with a finite "
            f"loss. Try a lower learning rate than {lr:g}{note}")

    def _diverged_update(self, step, lr, where=""):
        return FloatingPointError(
            f"the update of step {step}{where} with learning rate {lr:g} left parameters or optimizer state "
            f"that are not finite (its loss was finite): training diverged; the parameters and optimizer "
            f"state are those before that step. Try a lower learning rate than {lr:g}")

    # ------------------------------------------------------------ training
    @_releases_inputs
    def train_step(self, X: ArrayLike, Y: ArrayLike, optimizer: Optimizer | str, lr: float | None = None) -> float:
        """Forward, backward and update on one batch; returns the batch's loss before the update.

        If that loss is not finite the update is not made (FloatingPointError):
        the parameters and optimizer state stay those of the last finite step."""
        opt = self._resolve_optimizer(optimizer, lr)
        X = self._inputs(X)
        Yd = self._targets(Y, X.shape[0])
        ndim = _target_ndim(Y)
        plan = self._plan(X.shape[0])      # a batch too large is refused here, before the optimizer is bound
        opt.check_steps(1)                 # its int32 step count would wrap: refused, nothing changed
        opt = self._bind(opt, lr)
        with quiet_floats():   # a loss that is not finite is this call's FloatingPointError, not numpy's
            plan = self._gradients(X, Yd, plan=plan)
            loss = self._finite_loss(plan.loss, opt)   # read before the update: a sync
            opt.step(self.backend, self._params, self._grads)
        self.target_ndim = ndim       # as fit: `predict` gives (N,) after training on (N,) targets
        return loss

    def _finite_loss(self, loss_out, opt) -> float:
        """The loss in `loss_out[0]` of the step `opt` is about to take; FloatingPointError (before
        that step's update) when it is not finite."""
        loss = float(self.backend.to_numpy(loss_out)[0])
        if not math.isfinite(loss):
            broken = not bool(self.backend.xp.isfinite(self._params).all())   # say so: no step mends them
            raise self._diverged(loss, opt.t + 1, opt.lr, note=f" (the parameters are not finite: the update of "
                                 f"step {opt.t} overflowed them; set_params or load to go on)" if broken else "")
        return loss

    @_locked
    def capture_train_step(self, X: ArrayLike, Y: ArrayLike, optimizer: Optimizer | str,
                           check_inputs: bool = True) -> Callable[[ArrayLike, ArrayLike], Any]:
        """Train on `(X, Y)` and return a function that trains on further batches of that shape.

        The first step is checked as `train_step`'s: a loss that is not finite raises
        FloatingPointError before its update, and nothing is captured.

        The returned `step(X, Y)` copies the batch into fixed buffers and
        replays the recorded step: on the CUDA backend that is one CUDA graph
        launch for the whole forward, backward and update, with no launch
        overhead per kernel and no host synchronisation; it returns the
        batch's loss as a 1-element backend array, the same array on every
        call, which the next call overwrites: read it (`float(loss[0])`) or
        copy it before the next step.  Each batch must have the first one's
        shape.  With `check_inputs=False` the NaN scans (a synchronisation
        each) are skipped; class labels are still checked (on the device: integers,
        in range, before their cast to int32), so an out-of-range label never
        reaches a kernel, and probability rows are divided by their sums as
        on the checked path (docs/spec.md, "Losses").  The step
        owns its buffers (its own step plan), which stay valid whatever else the
        network runs in between.  The optimizer's hyper-parameters (learning
        rate, momentum, betas, eps, weight decay) are recorded too: once one has
        changed the step refuses to run (ValueError), on every backend; capture
        again to train with the new values.  So does it once `precision` has
        been changed.  The step trains with the optimizer
        it was captured with, whatever optimizer later calls give the network.
        """
        check_inputs = check_flag("check_inputs", check_inputs)
        opt = self._resolve_optimizer(optimizer)
        Xs = self._inputs(X).copy()
        Ys = self._targets(Y, Xs.shape[0]).copy()
        plan = self._new_plan(Xs.shape[0])       # refused (MemoryError) before the optimizer is bound
        opt.check_steps(1)
        loss_out = self.backend.zeros((1,), self.dtype)
        opt = self._bind(opt)
        hyper = opt.hyper()          # what the recorded update uses (a CUDA graph holds the values)
        # a real first step, its loss checked before its update as train_step's; it leaves every
        # buffer allocated
        with quiet_floats():   # as train_step's
            self._gradients(Xs, Ys, loss_out, plan=plan)
            self._finite_loss(loss_out, opt)
            opt.step(self.backend, self._params, self._grads)
        self.target_ndim = _target_ndim(Y)
        with opt.host_count_advances(0):   # a CUDA graph's recording runs no step
            replay = self.backend.capture(lambda: self._step(Xs, Ys, opt, loss_out, plan=plan))
        labels = self.loss == "cross_entropy" and Ys.ndim == 1
        probabilities = self.loss == "cross_entropy" and Ys.ndim == 2   # rows divided by their sums
        n_out = self.sizes[-1]
        precision = self.precision   # the mode its plan (and a CUDA graph's kernels) computes in

        def step(X, Y):
            with self._lock:   # its plan is its own, but `_params` and `_grads` are the network's
                return replay_checked(X, Y)

        def replay_checked(X, Y):
            if self.precision != precision:
                raise ValueError(f"the network's precision changed since this step was captured ({precision!r} "
                                 f"-> {self.precision!r}); a captured step replays the mode it recorded: capture "
                                 "again (net.capture_train_step) to train in the new one")
            now = opt.hyper()
            if now != hyper:
                changed = ", ".join(f"{k} {hyper[k]!r} -> {now[k]!r}" for k in hyper if now.get(k) != hyper[k])
                raise ValueError(f"the optimizer's hyper-parameters changed since this step was captured "
                                 f"({changed}); a captured step replays the values it recorded: capture again "
                                 "(net.capture_train_step) to train with the new ones")
            opt.check_steps(1)   # the count's wrap refused on the host, as train_step's
            if check_inputs:
                Xd = self._inputs(X)
                Yd = self._targets(Y, Xd.shape[0])
            else:
                self.backend.check_current(self._params, "network")
                if self._std_dev is not None and not _is_device_array(X):   # as `_inputs`, without the scans
                    Xd = self.backend.asarray(self._standardize_host(self._host_rows(X)).astype(self.dtype),
                                              self.dtype)
                else:
                    Xd = self._standardize_device(self.backend.asarray(X, self.dtype))
                if labels:   # range-checked before the cast to int32, which would wrap or truncate them
                    Y = self.backend.xp.asarray(Y)
                    if Y.shape == Ys.shape and Y.dtype.kind not in "iub":
                        raise ValueError(f"class labels in Y must be integers, got dtype {Y.dtype}")
                    if Y.shape == Ys.shape and bool(((Y < 0) | (Y >= n_out)).any()):
                        raise ValueError(f"class labels in Y must lie in [0, {n_out})")
                Yd = self.backend.asarray(Y, Ys.dtype)
                # the shapes `_inputs` and `_targets` take as well: one sample as (n_0,), the targets of
                # one output as (B,) (and one sample's as (n_out,)); (B,) targets were refused here
                if Xd.ndim == 1 and Xs.shape[0] == 1 and Xd.shape[0] == Xs.shape[1]:
                    Xd = Xd.reshape(Xs.shape)
                if Yd.ndim == 1 and Ys.ndim == 2 and 1 in Ys.shape and Yd.shape[0] == Ys.size:
                    Yd = Yd.reshape(Ys.shape)
                if probabilities and Yd.shape == Ys.shape:
                    # each row divided by its sum, as `losses.prepare_targets` does on the checked path
                    # (the same bits: sums in float64, rounded to the dtype; a row summing to 1 is
                    # divided by 1), into a new array (Y may be the caller's); no host read
                    xp = self.backend.xp
                    sums = Yd.sum(axis=1, dtype=xp.float64).astype(Yd.dtype)
                    Yd = Yd / xp.where(sums > 0, sums, 1)[:, None]
            if Xd.shape != Xs.shape or Yd.shape != Ys.shape or Yd.dtype != Ys.dtype:
                raise ValueError(f"a captured step trains on batches shaped like the first one: X {Xs.shape}, "
                                 f"Y {Ys.shape} of {Ys.dtype}; got X {Xd.shape}, Y {Yd.shape} of {Yd.dtype}")
            Xs[...] = Xd
            Ys[...] = Yd
            # the loss it returns says a step diverged, as a CUDA graph's does; one step counted, which a
            # CUDA graph's replay takes without `opt.step`
            with quiet_floats(), opt.host_count_advances(1):
                replay()
            return loss_out

        step.plan = plan               # the buffers the recorded step uses, kept alive with it
        step.first_loss = loss_out.copy()
        return step

    @_releases_inputs
    def evaluate(self, X: ArrayLike, Y: ArrayLike, _checked: bool = False) -> dict[str, float]:
        """Mean loss (and accuracy for the classification losses) over `X`, `Y`."""
        if _checked:       # backend arrays that `fit` has already checked (and standardised)
            Yd = Y
        else:
            X = self._inputs(X)
            Yd = self._targets(Y, X.shape[0])
        B = X.shape[0]
        total, correct = 0.0, 0.0
        rows = self._eval_rows(B)
        for i in range(0, B, rows):
            Xc, Yc = X[i:i + rows], Yd[i:i + rows]
            plan = self._forward(Xc)
            self._loss_delta(plan, Yc, want_delta=False)
            total += float(self.backend.to_numpy(plan.loss)[0]) * Xc.shape[0]
            if self.loss in losses.CLASSIFICATION_LOSSES:
                correct += self._n_correct(self.backend.to_numpy(plan.A[-1]), self.backend.to_numpy(Yc))
        out = {"loss": total / B}
        if self.loss in losses.CLASSIFICATION_LOSSES:
            out["accuracy"] = correct / B
        return out

    def _n_correct(self, logits, Y) -> float:
        if self.loss == "cross_entropy":
            labels = Y if Y.ndim == 1 else Y.argmax(axis=1)
            return float((logits.argmax(axis=1) == labels).sum())
        return float(((logits > 0) == (Y > 0.5)).mean(axis=1).sum())

    # ------------------------------------------------------------ training loop
    @guard_fit   # with comm=: an exception on one rank ends the whole job instead of leaving the others waiting
    @_releases_inputs
    def fit(self, X: ArrayLike, Y: ArrayLike, epochs: int = 10, batch_size: int = 32,
            optimizer: Optimizer | str = "adam", validation: tuple[ArrayLike, ArrayLike] | None = None,
            shuffle: bool = True, progress: bool | str = "auto", lr: float | None = None, *,
            callbacks: Sequence[Any] | None = None, validation_split: float | None = None,
            sample_weight: ArrayLike | None = None, class_weight: dict | str | None = None,
            standardize: bool = False, lr_schedule: Callable[[int], float] | None = None, verbose: int = 1,
            grad_norms: bool = False, comm: Any = None, sharded: bool = False) -> dict[str, list]:
        """Train for `epochs` passes over `X`, `Y` in batches; returns the history.

        Each call continues from the network's current parameters and the position of its
        shuffling generator, and by name (the default) with its optimizer's state: two
        calls of 5 epochs train as one of 10 (a schedule aside: see `lr_schedule`); a new
        optimizer instance starts from a fresh state.

        - `optimizer`: an Optimizer, or a name ("sgd", "adam", "adamw") with `lr`;
          a name reuses the network's current optimizer of that name (its state
          carries on, and `lr`, when given, becomes its rate; without `lr` it keeps
          its last rate, also one a schedule set), else makes a new one (rate `lr`,
          or 0.01 for sgd and 1e-3 for adam and adamw).  `lr` with an Optimizer
          instance must equal its rate.
        - `validation`: an `(X_val, Y_val)` pair evaluated after each epoch, or
          `validation_split`: the fraction of `X`, `Y` (its last
          `floor(len(X) * validation_split)` rows, before any shuffling) held out
          for that; `standardize` and `class_weight="balanced"` then use the other rows.
        - `sample_weight` (one non-negative weight per sample) and `class_weight`
          (`{class: weight}` or "balanced", cross_entropy only): each batch's loss is
          the weighted mean `sum w_i l_i / sum w_i` of its samples' losses.
        - `standardize=True`: set the network's input standardisation from `X`'s
          mean and standard deviation (see `set_standardization`) before training.
          Each such call sets it again, from its own `X`: to train on in further calls
          (chunks of a data set), pass it to the first only; the others keep it.
        - `lr_schedule`: a callable `step -> learning rate` (steps counted from 1
          over this call, so each call starts it again: to continue one after `load`,
          pass `lambda step: schedule(step + done)`, `done` the steps already taken),
          e.g. `gpubp.schedules.cosine(...)`.
        - `callbacks`: objects with any of `on_train_begin(net, logs)`,
          `on_epoch_end(net, epoch, logs)` and `on_train_end(net, logs)`; one sets
          `net.stop_training = True` to stop after the epoch (see
          `gpubp.callbacks.EarlyStopping`).
        - `progress="auto"` draws a bar on a terminal and writes one line per epoch
          otherwise; True always draws a bar; False (or `verbose=0`) is silent; `verbose=2`
          writes one line per epoch even on a terminal (as Keras's).
        - `grad_norms=True` records per epoch and layer `||dW||`, `||delta||` and the
          update-to-weight ratio of the epoch's last step (`history["grad_norms"]`,
          `"delta_norms"`, `"update_ratios"`) and warns of vanishing or exploding
          gradients.
        - `comm` (from `gpubp.distributed.init()`, under `mpiexec`) trains data-parallel
          over its ranks: every rank passes the same `X`, `Y` and takes its share of each
          batch, or with `sharded=True` rows of its own (see
          `gpubp.distributed.DataParallel`).  The result equals one process training on the
          same global batches; losses and metrics are reduced over the ranks and only rank 0
          reports progress.  Arguments refused on any rank are refused on every rank (each
          network unchanged); after the callbacks every rank holds rank 0's network.

        The history holds per-epoch lists: `loss` (the mean of the epoch's step
        losses, each measured before its update, weighted by each batch's size or
        total sample weight), `accuracy` for classification losses (measured after
        the epoch), and `val_loss` / `val_accuracy` (measured after the epoch).
        Every argument is checked before anything changes.  If the loss stops being
        finite, FloatingPointError is raised with the parameters and optimizer state of
        the last step whose loss was finite.
        """
        epochs = check_positive_int("epochs", epochs)
        batch_size = check_positive_int("batch_size", batch_size)
        # by identity, not ==: 0 == False, but Reporter tells False (silent) from the rest by `is`
        if isinstance(progress, (bool, np.bool_)):
            progress = bool(progress)
        elif not (isinstance(progress, str) and progress == "auto"):
            raise ValueError(f"progress must be 'auto', True or False, got {progress!r}")
        # an integer, not a bool (numpy's either: np.True_ == 1) nor a float (1.0 == 1)
        if isinstance(verbose, (bool, np.bool_)) or not isinstance(verbose, (int, np.integer)) \
                or verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        verbose = int(verbose)
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError("lr_schedule must be a callable step -> learning rate")
        shuffle, standardize = check_flag("shuffle", shuffle), check_flag("standardize", standardize)
        grad_norms, sharded = check_flag("grad_norms", grad_norms), check_flag("sharded", sharded)
        if comm is None and sharded:
            raise ValueError("sharded=True needs comm (from gpubp.distributed.init())")
        if callbacks is not None and any(hasattr(callbacks, h) for h in ("on_train_begin", "on_epoch_end",
                                                                         "on_train_end")):
            raise TypeError(f"callbacks must be a list of callbacks, got one ({callbacks!r}): pass [callback]")
        try:
            callbacks = [] if callbacks is None else list(callbacks)   # not `or`: an array has no truth value
        except TypeError:
            raise TypeError(f"callbacks must be a list of callbacks, got {type(callbacks).__name__}") from None
        for cb in callbacks:
            if not any(hasattr(cb, h) for h in ("on_train_begin", "on_epoch_end", "on_train_end")):
                raise TypeError(f"callback {cb!r} has none of on_train_begin, on_epoch_end, on_train_end")
        opt = self._resolve_optimizer(optimizer, lr)
        if validation is not None and validation_split is not None:
            raise ValueError("give validation or validation_split, not both")
        Xh = X if _is_device_array(X) else host_array(X, "X")
        ndim = getattr(Xh, "ndim", 0)
        # a 1-D X of n_0 values is one sample (as everywhere)
        n_all = 1 if ndim == 1 and Xh.shape[0] == self.sizes[0] else int(Xh.shape[0]) if ndim >= 1 else 0
        Yh = Y
        # a rank's shard of a sharded fit may hold no rows (no training or no validation rows): the
        # ranks' rows together are checked by `DataParallel.setup`
        empty_ok = comm is not None and sharded
        if validation_split is not None:
            fraction = real_number(validation_split)     # numpy's floats too (np.float32(0.2))
            if fraction is None or not 0 < fraction < 1:
                raise ValueError(f"validation_split must be a fraction in (0, 1), got {validation_split!r}")
            n_val = int(math.floor(n_all * fraction))
            if (n_val < 1 or n_val >= n_all) and not empty_ok:
                raise ValueError(f"validation_split={validation_split} of {n_all} samples leaves no "
                                 "validation or no training samples")
            Yh = Y if _is_device_array(Y) else host_array(Y, "Y")
            # the split cuts X, Y and sample_weight at the same row: each must have a row per sample
            # (cut first, a longer one would pass the checks of its training part unnoticed)
            n_y = int(Yh.shape[0]) if getattr(Yh, "ndim", 0) >= 1 else None
            if n_y != n_all:
                raise ValueError(f"Y has {'no rows' if n_y is None else f'{n_y} rows'} but X has {n_all} "
                                 "samples")
            validation = (Xh[n_all - n_val:], Yh[n_all - n_val:])
            Xh, Yh = Xh[:n_all - n_val], Yh[:n_all - n_val]
            if sample_weight is not None:
                sw = self._host(sample_weight, "sample_weight")
                if sw.shape != (n_all,):
                    raise ValueError(f"sample_weight has shape {sw.shape}; expected ({n_all},), one weight per "
                                     "sample")
                sample_weight = sw[:n_all - n_val]
        # what the call may change, put back by `undo` when it is refused before training begins
        saved = (self.standardization, self.target_ndim, self.optimizer, opt.lr, opt.is_bound)

        def undo():
            std, self.target_ndim, self.optimizer, opt.lr, was_bound = saved
            if not was_bound:     # bound by this call (a no-op if it was not reached)
                opt.unbind()
            if standardize:
                self.set_standardization(*(std or (None, None)))

        if standardize:   # the statistics of the rows as given (float64 for host rows, as they are used)
            Xr = self.backend.to_numpy(self._raw_inputs(Xh)) if _is_device_array(Xh) else \
                finite_after_cast(self._host_rows(Xh), np.float64, "X")
            self.set_standardization(*_input_statistics(Xr.astype(np.float64)))
        try:
            Xd = self._inputs(Xh, allow_empty=empty_ok)
            Yd = self._targets(Yh, Xd.shape[0])
            if validation is not None:
                if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                    raise TypeError("validation must be an (X_val, Y_val) pair")
                Xv = self._inputs(validation[0], "X_val", allow_empty=empty_ok)
                Yv = self._targets(validation[1], Xv.shape[0], "Y_val")
            weights = self._sample_weights(sample_weight, Xd.shape[0], Yd, class_weight, some_positive=not empty_ok)
            if lr_schedule is not None:   # the first step's rate, checked before anything is bound
                schedule_rate(lr_schedule, 1)
            if comm is None:   # the first batch's plan: a batch too large is refused (MemoryError) here
                self._plan(min(batch_size, Xd.shape[0]))
            else:   # the ranks' first collective, once the checks passed: a refusal on any rank is one on all
                device = getattr(getattr(self._params, "device", None), "id", None)   # a CUDA network's device
                check_fit_options(comm, sharded, grad_norms, class_weight, standardize, device)
        except BaseException:   # a KeyboardInterrupt during the checks too
            undo()
            raise
        loop = None
        try:
            self.target_ndim = _target_ndim(Yh)
            opt = self._bind(opt, lr)
            self.stop_training = False
            dist = None
            if comm is not None:
                dist = DataParallel(comm, self, opt, sharded, class_weight)
                progress = progress if comm.is_root else False
            loop = FitLoop(self, opt, Xd, Yd, weights, batch_size, shuffle, lr_schedule,
                           (Xv, Yv) if validation is not None else None, callbacks, Reporter(progress, verbose),
                           grad_norms, dist=dist)
            return loop.run(epochs)
        except BaseException as e:   # a KeyboardInterrupt too
            # refused by every rank together (ConfigMismatch...) before anything was broadcast or trained,
            # or by a callback's on_train_begin (EarlyStopping monitoring a figure this fit does not
            # record) before the first step: the call changes nothing, as an argument refused here does not
            if isinstance(e, EveryRankError) or loop is None or not loop.started:
                undo()
            raise

    # ------------------------------------------------------------ snapshots
    def _state_buffers(self, opt) -> list:
        return [self._params] + (opt.buffers() if opt is not None else [])

    # ------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write configuration, parameters, optimizer state, the shuffling generator's state and
        `metadata` (JSON data, default `self.metadata`) to one `.npz` file that loads without pickle.

        The file is replaced atomically (see `gpubp.checkpoint.write`): a save that fails leaves
        the previous file as it was.  A `path` naming a directory (an existing one, or a name
        ending in a path separator such as "out/", which would otherwise write a file named
        `out`) is refused with an IsADirectoryError, nothing written.  A network whose
        parameters or optimizer state are not finite (after an update that overflowed) is
        refused with a ValueError, as `load` would refuse
        the file, and so is an optimizer assigned to `net.optimizer` that `load` could not give
        back (one holding another network's state, or not gpubp's: TypeError); one assigned
        and never stepped is saved with the zero state its first step would start from.  `load`
        then resumes exactly: training on from the loaded network gives bitwise what training on
        from this one would (an `lr_schedule` restarts in each `fit`: see `fit`).
        """
        from . import checkpoint

        meta = {"config": dict(self.config(), seed=_seed_for_file(self.seed)),
                "shapes": [[o, i] for _, o, i, _ in self.layout.segments],
                "optimizer": None, "rng": _rng_state_for_file(self._rng),
                "standardization": self.standardization is not None,
                "target_ndim": _target_ndim_for_file(self.target_ndim),
                "metadata": checkpoint.json_data(metadata if metadata is not None else self.metadata)}
        arrays = {"params": self.backend.to_numpy(self._params)}
        if self.standardization is not None:
            arrays["input_mean"], arrays["input_std"] = self.standardization
        opt = self.optimizer
        if opt is not None:
            from .optim import OPTIMIZERS

            # `net.optimizer` is a plain attribute: what a caller assigned is checked as `load` checks it
            if not isinstance(opt, Optimizer) or OPTIMIZERS.get(getattr(opt, "name", None)) is None:
                raise TypeError(f"cannot save this network: its optimizer {_short_repr(opt)} is not one of gpubp's "
                                f"({', '.join(OPTIMIZERS)}) or None; {str(path)!r} is left as it was")
            try:   # bound to another network, or an eps this dtype rounds to 0: `load` would refuse it
                opt.check_bindable(self._params)
            except ValueError as e:
                raise ValueError(f"cannot save this network's optimizer: {e}; {str(path)!r} is left as it was") \
                    from None
            # an optimizer not yet bound (assigned, never stepped) has the state binding would give it: zeros
            for name in opt.state_names:
                buf = opt.state.get(name)
                arrays[f"opt.{name}"] = self.backend.to_numpy(buf) if buf is not None else \
                    np.zeros(self.layout.total, self.dtype)
            meta["optimizer"] = {"name": opt.name, "hyper": opt.hyper(), "t": opt.t,
                                 "state": sorted(opt.state_names)}
        for name, a in arrays.items():   # load refuses such a file: do not write it over a good one
            if not np.isfinite(a).all():
                raise ValueError(f"cannot save this network: array {name!r} holds NaN or infinite values (an "
                                 f"update overflowed; see train_step's next error); {str(path)!r} is left as it was")
        checkpoint.write(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str | Backend = "auto") -> MLP:
        """A network from a file written by `save`; its optimizer comes back as `net.optimizer`.

        The whole file is checked before a network is built: the configuration, every array's
        shape and dtype (from the archive's headers, before any data is read), the checksums,
        finite parameters and a possible optimizer state (a step count >= 0, second moments
        >= 0).  A file that fails a check raises a ValueError naming the field or array at
        fault; a bad `backend` is the argument's error (ValueError naming `backend`), as is one
        that cannot run the file's precision mode (ValueError naming both).
        """
        from . import checkpoint

        be = get_backend(backend)        # the caller's argument: checked first, blamed as such
        with checkpoint.Checkpoint(path) as ck:
            spec = _checkpoint_spec(ck)   # configuration and array headers only: nothing large is read
            arrays = {name: ck.array(name, shape, dtype) for name, (shape, dtype) in spec["arrays"].items()}
            _check_checkpoint_values(ck, spec, arrays)
            cfg = spec["config"]
            try:   # a sound file whose mode this backend cannot run: the backend's fault, not the file's
                be.check_precision(cfg["precision"])
            except ValueError as e:
                raise ValueError(f"{str(path)!r} holds a network of precision {cfg['precision']!r}, which backend "
                                 f"{be.name!r} cannot run: {e}") from None
            try:
                net = cls(cfg["layer_sizes"], activation=cfg["activation"],
                          output_activation=cfg["output_activation"], loss=cfg["loss"], backend=be,
                          dtype=cfg["dtype"], seed=cfg["seed"], precision=cfg["precision"], init=cfg["init"])
                if "input_mean" in arrays:
                    net.set_standardization(arrays["input_mean"], arrays["input_std"])
            except (TypeError, ValueError) as e:
                ck.fail(f"its configuration is refused: {e}")
        net._params[...] = be.asarray(arrays["params"], net.dtype)
        net.metadata = spec["metadata"]
        net.target_ndim = spec["target_ndim"]
        if spec["rng"] is not None:
            net._rng = spec["rng"]
        opt = spec["optimizer"]
        if opt is not None:
            opt.bind(be, net._params)
            for name in opt.state:
                opt.state[name][...] = be.asarray(arrays[f"opt.{name}"], net.dtype)
            opt.t = spec["t"]
            net.optimizer = opt
        return net


def _input_statistics(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and population standard deviation of `X`'s columns for `standardize=True`, a constant
    column getting std 1 (centred only).

    A column is constant when its std is within the rounding of its mean (scikit-learn's
    `_is_constant_feature`: `var <= n eps var + (n eps mean)^2`), a test relative to the column's
    magnitude: a feature in small units (values near 1e-13) has a std of that size and is scaled."""
    mean, var = X.mean(axis=0), X.var(axis=0)
    n_eps = X.shape[0] * np.finfo(np.float64).eps
    constant = var <= n_eps * var + (n_eps * mean) ** 2
    return mean, np.where(constant, 1.0, np.sqrt(var))


def _target_ndim(Y) -> int:
    """`MLP.target_ndim` for targets `Y` given to a training call: 1 for a vector, else 2."""
    return 1 if (getattr(Y, "ndim", None) == 1 or np.ndim(Y) == 1) else 2


# ---------------------------------------------------------------- checkpoint fields (MLP.save / MLP.load)
#: optimizer state buffers that hold second moments (never negative)
_NONNEGATIVE_STATE = ("v",)
#: bit generators whose state a checkpoint can hold (the shuffling generator is numpy's default, PCG64)
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64")


def _seed_for_file(seed):
    """The constructor's seed as JSON data: None or a non-negative integer (what `load` accepts)."""
    try:
        return check_seed(seed)
    except (TypeError, ValueError):
        raise ValueError(f"this network's seed {_short_repr(seed)} cannot be saved: a checkpoint holds None "
                         "or a non-negative integer, as the constructor takes") from None


def _target_ndim_for_file(ndim):
    """`target_ndim` (a plain attribute: None, 1 or 2, what `load` accepts) as JSON data."""
    if ndim is None or (not isinstance(ndim, (bool, np.bool_)) and isinstance(ndim, (int, np.integer))
                        and int(ndim) in (1, 2)):
        return None if ndim is None else int(ndim)
    raise ValueError(f"this network's target_ndim {_short_repr(ndim)} cannot be saved: it must be None, 1 or 2 "
                     "(the number of dimensions of the training targets)")


def _rng_state_for_file(rng):
    """The generator's `bit_generator.state` as JSON data (Python ints of any size, lists)."""
    def plain(o):
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple, np.ndarray)):
            return [plain(v) for v in o]
        if isinstance(o, (np.integer, int)) and not isinstance(o, bool):
            return int(o)
        if isinstance(o, str):
            return o
        raise TypeError(f"the shuffling generator's state holds {type(o).__name__}, which is not JSON data")
    return plain(rng.bit_generator.state)


_U32, _U64, _U128 = 2 ** 32, 2 ** 64, 2 ** 128
#: each bit generator's `state` as numpy gives it: key -> the integer bound (a value in [0, bound)), a
#: list `[bound, length]`, or a nested layout
_RNG_LAYOUTS = {
    "PCG64": {"state": {"state": _U128, "inc": _U128}, "has_uint32": 2, "uinteger": _U32},
    "PCG64DXSM": {"state": {"state": _U128, "inc": _U128}, "has_uint32": 2, "uinteger": _U32},
    # numpy indexes its 4-word buffer with buffer_pos unchecked: a negative one reads outside it
    "Philox": {"state": {"counter": [_U64, 4], "key": [_U64, 2]}, "buffer": [_U64, 4], "buffer_pos": 5,
               "has_uint32": 2, "uinteger": _U32},
    "SFC64": {"state": {"state": [_U64, 4]}, "has_uint32": 2, "uinteger": _U32},
}


def _rng_from_file(ck, st: dict) -> np.random.Generator:
    """The shuffling generator from its saved `bit_generator.state`, every field checked first.

    numpy's state setters convert what they are given (a float, `true`) and check few ranges (one
    Philox field indexes memory), so the state must have exactly the generator's fields, each an
    integer in its range, and read back from the generator as it was written."""
    kind = st.get("bit_generator")
    if kind not in _BIT_GENERATORS:
        ck.fail(f"field 'rng.bit_generator': must be one of {', '.join(_BIT_GENERATORS)}, got "
                f"{_short_repr(kind)}")

    def check(obj, layout, where):
        if not isinstance(obj, dict) or set(obj) != set(layout):
            ck.fail(f"field {where!r}: not a valid {kind} state: expected the fields {sorted(layout)}, got "
                    f"{_short_repr(sorted(obj) if isinstance(obj, dict) else obj)}")
        for key, bound in layout.items():
            v, name = obj[key], f"{where}.{key}"
            if isinstance(bound, dict):
                check(v, bound, name)
                continue
            bound, n = bound if isinstance(bound, list) else (bound, None)
            values = v if n is not None and isinstance(v, list) and len(v) == n else [v]
            if (n is not None and values is not v) or not all(
                    isinstance(x, int) and not isinstance(x, bool) and 0 <= x < bound for x in values):
                top = f"2**{bound.bit_length() - 1}" if bound >= _U32 else bound
                want = f"a list of {n} integers in [0, {top})" if n is not None else f"an integer in [0, {top})"
                ck.fail(f"field {name!r}: not a valid {kind} state: must be {want}, got {_short_repr(v)}")
    check({k: v for k, v in st.items() if k != "bit_generator"}, _RNG_LAYOUTS[kind], "rng")
    try:
        rng = np.random.Generator(getattr(np.random, kind)())
        rng.bit_generator.state = st
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        ck.fail(f"field 'rng': not a valid {kind} state ({type(e).__name__}: {e})")
    if _rng_state_for_file(rng) != st:
        ck.fail(f"field 'rng': not a valid {kind} state (the generator does not take it as it is)")
    return rng


def _checkpoint_spec(ck) -> dict:
    """Everything the checkpoint's metadata says, checked, and the arrays it must hold (name -> shape).

    Reads no array data: shapes and dtypes are checked against the archive's headers.
    """
    from . import checkpoint

    meta = ck.meta
    c = ck.field(meta, "config", dict)

    def bad(field, why):
        if isinstance(why, checkpoint.CheckpointError):   # ck.field's own error, which names the field
            raise why
        ck.fail(f"field {field!r}: {why}")

    sizes = ck.field(c, "layer_sizes", list, "config")
    # each layer takes at least 2 * ALIGN numbers (its W and b segments): a configuration of more layers
    # than 'params' can hold is refused first, not after checking (perhaps) millions of layers
    held = ck.headers.get("params", ((), None))[0]
    if len(held) == 1 and (len(sizes) - 1) * 2 * ALIGN > held[0]:
        bad("config.layer_sizes", f"{len(sizes) - 1} layers need at least {(len(sizes) - 1) * 2 * ALIGN} "
                                  f"numbers, but array 'params' holds {held[0]}")
    try:
        sizes = check_sizes(sizes)
    except (TypeError, ValueError) as e:
        bad("config.layer_sizes", e)
    n_hidden = len(sizes) - 2
    act = ck.field(c, "activation", (str, list), "config")
    hidden = [act] * n_hidden if isinstance(act, str) else list(act)
    if len(hidden) != n_hidden:
        bad("config.activation", f"one name per hidden layer: expected {n_hidden}, got {len(hidden)}")
    if not all(isinstance(a, str) for a in hidden):
        bad("config.activation", f"must be a name or a list of names, got {_short_repr(act)}")
    try:
        hidden = [acts.check_activation(a) for a in hidden]
    except ValueError as e:
        bad("config.activation", e)
    try:
        out_act = acts.check_activation(ck.field(c, "output_activation", str, "config"), "output_activation")
    except ValueError as e:
        bad("config.output_activation", e)
    try:
        loss = losses.check_loss(ck.field(c, "loss", str, "config"))
    except ValueError as e:
        bad("config.loss", e)
    try:
        losses.check_output_activation(loss, out_act)
    except ValueError as e:
        bad("config.output_activation", e)
    try:   # as the constructor (files saved before it refused one output: such a network never learned)
        losses.check_outputs(loss, sizes[-1])
    except ValueError as e:
        bad("config.loss", e)
    try:
        dtype = check_dtype(ck.field(c, "dtype", str, "config"))
    except ValueError as e:
        bad("config.dtype", e)
    precision = ck.field(c, "precision", str, "config") if "precision" in c else "float32"
    try:
        check_precision(precision, dtype)
    except ValueError as e:
        bad("config.precision", e)
    init = ck.field(c, "init", str, "config") if "init" in c else "torch"
    if init not in INITS:
        bad("config.init", f"must be one of {', '.join(INITS)}, got {init!r}")
    seed = c.get("seed")
    try:
        seed = check_seed(seed)
    except (TypeError, ValueError):
        bad("config.seed", f"must be null or a non-negative integer, got {_short_repr(seed)}")
    layout = ParamLayout(sizes)
    # properties that recompute the segments: each once (a small file may claim 10**6 layers)
    shapes, total = [[o, i] for _, o, i, _ in layout.segments], layout.total
    if "shapes" in meta and meta["shapes"] != shapes:
        bad("shapes", f"layer shapes {meta['shapes']} (n_out, n_in) do not fit the network {list(sizes)} "
                      f"of its configuration ({shapes})")
    arrays = {"params": ((total,), dtype)}
    standardized = ck.field(meta, "standardization", bool) if "standardization" in meta else False
    if standardized:
        arrays.update(input_mean=((sizes[0],), np.float64), input_std=((sizes[0],), np.float64))
    target_ndim = ck.field(meta, "target_ndim", (int, type(None))) if "target_ndim" in meta else None
    if target_ndim not in (None, 1, 2):
        bad("target_ndim", f"must be null, 1 or 2, got {_short_repr(target_ndim)}")

    om = ck.field(meta, "optimizer", (dict, type(None)))
    opt, t = None, 0
    if om is not None:
        from .optim import OPTIMIZERS

        name = ck.field(om, "name", str, "optimizer")
        if name not in OPTIMIZERS:
            bad("optimizer.name", f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
        hyper = ck.field(om, "hyper", dict, "optimizer")
        try:
            opt = OPTIMIZERS[name](**hyper)
            opt.check_bindable(np.zeros(0, dtype))   # hyper-parameters the network's dtype can hold (eps)
        except (TypeError, ValueError) as e:
            bad("optimizer.hyper", e)
        t = ck.field(om, "t", int, "optimizer")
        if not 0 <= t < 2 ** 31:
            bad("optimizer.t", f"the step count must lie in [0, 2**31), got {_short_repr(t)}")
        state = ck.field(om, "state", list, "optimizer")
        if not all(isinstance(n, str) for n in state) or sorted(state) != sorted(opt.state_names):
            bad("optimizer.state", f"{state} does not fit {opt!r}, which keeps {sorted(opt.state_names)}")
        arrays.update({f"opt.{n}": ((total,), dtype) for n in opt.state_names})

    extra = sorted(set(ck.headers) - set(arrays) - {"meta"})
    if extra:
        ck.fail(f"it holds arrays {_short_repr(extra)} that its configuration does not use")
    for name, (shape, dt) in arrays.items():
        ck.check_array(name, shape, dt)

    rng = None
    version = meta["version"]
    if version >= 2 or "rng" in meta:
        rng = _rng_from_file(ck, ck.field(meta, "rng", dict))
    metadata = ck.field(meta, "metadata", dict)
    return {"config": {"layer_sizes": list(sizes), "activation": hidden, "output_activation": out_act,
                       "loss": loss, "dtype": dtype.name, "seed": seed, "precision": precision, "init": init},
            "layout": layout, "arrays": arrays, "optimizer": opt, "t": t, "rng": rng,
            "target_ndim": target_ndim, "metadata": metadata}


def _check_checkpoint_values(ck, spec, arrays) -> None:
    """Every array finite; parameters and optimizer state zero in the layout's padding, second
    moments >= 0; the input standardisation's deviations > 0."""
    layout = spec["layout"]
    padding = np.ones(layout.total, dtype=bool)
    for w, o, i, b in layout.segments:
        padding[w:w + o * i] = False
        padding[b:b + o] = False
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            ck.fail(f"array {name!r} holds NaN or infinite values")
        if name == "input_std" and (a <= 0).any():
            ck.fail("array 'input_std' holds a standard deviation <= 0")
        if name.startswith("input_"):
            continue
        if a[padding].any():
            ck.fail(f"array {name!r} is not zero in the padding between layers")
        if name.split(".", 1)[-1] in _NONNEGATIVE_STATE and name.startswith("opt.") and (a < 0).any():
            ck.fail(f"array {name!r} holds negative second moments")


def _short_repr(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."
