"""The multilayer perceptron: parameters, forward, backward, training loop.

The network holds its parameters in one flat buffer (`gpubp.params`), keeps
per-batch-size workspaces for the forward and backward passes, and calls only
the backend interface (`gpubp.backends.base.Backend`).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import activations as acts
from . import losses
from .backends import get_backend
from .optim import Optimizer, make_optimizer
from .params import ParamLayout

DTYPES = {"float32": np.float32, "float64": np.float64}
PRECISIONS = ("float32", "tf32")

#: rows per forward pass in evaluate/predict (bounds workspace memory)
EVAL_CHUNK = 65536


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _check_sizes(layer_sizes):
    if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
        raise TypeError(f"layer_sizes must be a sequence of integers, got {layer_sizes!r}")
    sizes = list(layer_sizes)
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs at least two sizes (inputs and outputs), got {sizes}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"layer_sizes must hold integers, got {s!r} in {sizes}")
        if s < 1:
            raise ValueError(f"every layer size must be at least 1, got {sizes}")
    return tuple(int(s) for s in sizes)


def _is_device_array(x) -> bool:
    return hasattr(x, "__cuda_array_interface__") or getattr(x, "is_cuda", False) or \
        type(x).__module__.startswith("cupy")


class _Workspace:
    """Activations, pre-activations and deltas for one batch size."""

    def __init__(self, net, B):
        be, dt = net.backend, net.dtype
        self.B = B
        self.A = [None] + [be.empty((B, n), dt) for n in net.sizes[1:]]
        self.Z = [None] + [be.empty((B, n), dt) if g in acts.NEEDS_Z else None
                           for n, g in zip(net.sizes[1:], net.activations)]
        self.delta = [None] + [be.empty((B, n), dt) for n in net.sizes[1:]]


class MLP:
    """A dense network `layer_sizes[0] -> ... -> layer_sizes[-1]` trained by backprop.

    `activation` is the hidden layers' activation (or a list, one per hidden
    layer); `output_activation` the last layer's (identity for the logit
    losses `cross_entropy` and `binary_cross_entropy`).  Weights start as
    PyTorch's `nn.Linear` does: uniform in `±1/sqrt(fan_in)`, reproducibly from
    `seed`.  `precision="tf32"` (float32 only) lets the CUDA backend multiply
    on TF32 tensor cores where it has such kernels (the fused narrow-layer
    runs): faster, with relative errors near 1e-3 instead of 1e-6; the numpy
    backend always computes in full precision.
    """

    def __init__(self, layer_sizes, activation="relu", output_activation="identity", loss="mse",
                 backend="auto", dtype="float32", seed=None, precision="float32"):
        self.sizes = _check_sizes(layer_sizes)
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
        if self.loss in losses.LOGIT_LOSSES and out_act != "identity":
            raise ValueError(f"loss {self.loss!r} works on logits (softmax/sigmoid are fused into it): "
                             f"output_activation must be 'identity', got {out_act!r}")
        self.activations = tuple(hidden + [out_act])   # activation of layers 1..L
        self.dtype = _check_dtype(dtype)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "tf32" and self.dtype != np.float32:
            raise ValueError(f"precision='tf32' needs dtype float32, got {self.dtype.name}")
        self.precision = precision
        self.seed = seed
        self.backend = get_backend(backend)
        self.layout = ParamLayout(self.sizes)
        self._params = self.backend.zeros((self.layout.total,), self.dtype)
        self._grads = self.backend.zeros((self.layout.total,), self.dtype)
        self._Wb = self.layout.views(self._params)
        self._dWb = self.layout.views(self._grads)
        self._loss_buf = self.backend.zeros((1,), self.dtype)
        self._workspaces: OrderedDict = OrderedDict()
        self.optimizer: Optimizer | None = None
        #: free-form JSON data saved with the network (e.g. input standardisation)
        self.metadata: dict = {}
        self._rng = np.random.default_rng(seed)
        self._init_params()

    # ------------------------------------------------------------ basics
    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        return self.layout.n_params

    def __repr__(self):
        return (f"MLP({list(self.sizes)}, activations={list(self.activations)}, loss={self.loss!r}, "
                f"backend={self.backend.name!r}, dtype={self.dtype.name!r}, precision={self.precision!r})")

    def config(self) -> dict:
        """What `__init__` needs to rebuild this network (JSON-serialisable)."""
        return {"layer_sizes": list(self.sizes), "activation": list(self.activations[:-1]),
                "output_activation": self.activations[-1], "loss": self.loss,
                "dtype": self.dtype.name, "seed": self.seed, "precision": self.precision}

    def _init_params(self):
        host = np.zeros(self.layout.total, dtype=np.float64)
        for W, b in self.layout.views(host):
            bound = 1.0 / math.sqrt(W.shape[1])
            W[...] = self._rng.uniform(-bound, bound, size=W.shape)
            b[...] = self._rng.uniform(-bound, bound, size=b.shape)
        self._params[...] = self.backend.asarray(host, self.dtype)

    def get_params(self):
        """Per layer `(W, b)` as numpy copies; `W` has shape `(n_out, n_in)`."""
        host = self.backend.to_numpy(self._params)
        return [(W.copy(), b.copy()) for W, b in self.layout.views(host)]

    def set_params(self, params):
        """Set every layer's `(W, b)` from a list like `get_params()` returns."""
        params = list(params)
        if len(params) != self.n_layers:
            raise ValueError(f"set_params needs {self.n_layers} (W, b) pairs, got {len(params)}")
        host = np.zeros(self.layout.total, dtype=self.dtype)
        for l, ((W, b), (Wn, bn)) in enumerate(zip(self.layout.views(host), params), start=1):
            Wn, bn = np.asarray(Wn), np.asarray(bn)
            if Wn.shape != W.shape or bn.shape != b.shape:
                raise ValueError(f"layer {l}: expected W {W.shape} and b {b.shape}, got W {Wn.shape} "
                                 f"and b {bn.shape}")
            if not (np.all(np.isfinite(Wn)) and np.all(np.isfinite(bn))):
                raise ValueError(f"layer {l}: parameters contain NaN or infinity")
            W[...], b[...] = Wn, bn
        self._params[...] = self.backend.asarray(host, self.dtype)

    # ------------------------------------------------------------ inputs
    def _inputs(self, X, name="X"):
        """`X` as a `(B, n_0)` backend array of the network's dtype, after checks."""
        n0 = self.sizes[0]
        if _is_device_array(X):
            a = self.backend.asarray(X, self.dtype)
            if a.ndim == 1 and a.shape[0] == n0:
                a = a.reshape(1, n0)
            if a.ndim != 2 or a.shape[1] != n0:
                raise ValueError(f"{name} has shape {tuple(a.shape)}; expected (B, {n0}) for a network "
                                 f"with {n0} inputs")
            if not bool(self.backend.xp.isfinite(a).all()):
                raise ValueError(f"{name} contains NaN or infinity")
        else:
            h = np.asarray(X)
            if h.dtype.kind not in "biuf":
                raise TypeError(f"{name} must be a real numeric array, got dtype {h.dtype}")
            if h.ndim == 1 and h.shape[0] == n0:
                h = h.reshape(1, n0)
            if h.ndim != 2 or h.shape[1] != n0:
                raise ValueError(f"{name} has shape {h.shape}; expected (B, {n0}) for a network with "
                                 f"{n0} inputs")
            if h.dtype.kind == "f" and not np.all(np.isfinite(h)):
                raise ValueError(f"{name} contains NaN or infinity")
            a = self.backend.asarray(h, self.dtype)
        if a.shape[0] == 0:
            raise ValueError(f"{name} holds no samples")
        return a

    def _targets(self, Y, B):
        """Targets checked against a batch of `B` samples, as a backend array."""
        if _is_device_array(Y):
            Y = self.backend.to_numpy(self.backend.xp.asarray(Y))  # checked on the host
        h = losses.prepare_targets(Y, self.loss, B, self.sizes[-1], self.dtype)
        return self.backend.asarray(h, h.dtype)

    def _workspace(self, B) -> _Workspace:
        ws = self._workspaces.get(B)
        if ws is None:
            ws = self._workspaces[B] = _Workspace(self, B)
            while len(self._workspaces) > 3:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(B)
        return ws

    # ------------------------------------------------------------ passes
    def _forward(self, X) -> _Workspace:
        ws = self._workspace(X.shape[0])
        ws.A[0] = X
        self.backend.network_forward(self._Wb, self.activations, ws.A, ws.Z, self.precision)
        return ws

    def _backward(self, ws, Y, loss_out, after_layer=None):
        L = self.n_layers
        self.backend.loss_and_delta(ws.A[L], ws.Z[L], Y, self.loss, self.activations[-1], loss_out,
                                    ws.delta[L])
        if after_layer is None:
            self.backend.network_backward(self._Wb, self.activations, ws.A, ws.Z, ws.delta, self._dWb,
                                          self.precision)
            return
        for l in range(L, 0, -1):
            self.backend.layer_backward(l, self._Wb, self.activations, ws.A, ws.Z, ws.delta, self._dWb)
            after_layer(l)

    def _step(self, X, Y, optimizer: Optimizer, loss_out, dp=None):
        """One training step on checked backend arrays; no host synchronisation.

        `dp` (a `gpubp.distributed.DataParallel`) sums the gradients across ranks before the update.
        """
        if dp is None:
            ws = self._forward(X)
            self._backward(ws, Y, loss_out)
        elif X.shape[0] == 0:
            loss_out[...] = 0
            dp.empty_step()
        else:
            ws = self._forward(X)
            self._backward(ws, Y, loss_out, dp.after_layer)
            dp.finish()
        optimizer.step(self.backend, self._params, self._grads)

    # ------------------------------------------------------------ public passes
    def forward(self, X):
        """The network's raw outputs for `X` (logits for the logit losses), as a backend array."""
        X = self._inputs(X)
        outs = [self._forward(X[i:i + EVAL_CHUNK]).A[-1].copy() for i in range(0, X.shape[0], EVAL_CHUNK)]
        return outs[0] if len(outs) == 1 else self.backend.xp.concatenate(outs)

    def predict(self, X) -> np.ndarray:
        """Class labels for `cross_entropy`, 0/1 per output for `binary_cross_entropy`, else outputs."""
        out = self.backend.to_numpy(self.forward(X))
        if self.loss == "cross_entropy":
            return out.argmax(axis=1)
        if self.loss == "binary_cross_entropy":
            return (out > 0).astype(np.int64)
        return out

    def predict_proba(self, X) -> np.ndarray:
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

    def loss_and_grads(self, X, Y):
        """`(loss, [(dW, db), ...])` for the batch, without changing the parameters."""
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        ws = self._forward(X)
        self._backward(ws, Y, self._loss_buf)
        loss = float(self.backend.to_numpy(self._loss_buf)[0])
        host = self.backend.to_numpy(self._grads)
        return loss, [(dW.copy(), db.copy()) for dW, db in self.layout.views(host)]

    def _bind(self, optimizer, lr=None) -> Optimizer:
        opt = make_optimizer(optimizer, lr)
        opt.bind(self.backend, self._params)
        self.optimizer = opt
        return opt

    def train_step(self, X, Y, optimizer) -> float:
        """Forward, backward and update on one batch; returns the batch's loss before the update."""
        opt = self._bind(optimizer)
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        self._step(X, Y, opt, self._loss_buf)
        loss = float(self.backend.to_numpy(self._loss_buf)[0])
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} at step {opt.t}; the parameters have "
                                     f"diverged: try a lower learning rate than {opt.lr}")
        return loss

    def capture_train_step(self, X, Y, optimizer, check_inputs=True):
        """Train on `(X, Y)` and return a function that trains on further batches of that shape.

        The returned `step(X, Y)` copies the batch into fixed buffers and
        replays the recorded step: on the CUDA backend that is one CUDA graph
        launch for the whole forward, backward and update, with no launch
        overhead per kernel and no host synchronisation; it returns the
        batch's loss as a 1-element backend array (read it with
        `float(loss[0])` when needed).  Each batch must have the first one's
        shape; with `check_inputs=False` the NaN checks (a synchronisation
        each) are skipped.  The optimizer's learning rate is recorded too:
        capture again after changing it.
        """
        opt = self._bind(optimizer)
        Xs = self._inputs(X).copy()
        Ys = self._targets(Y, Xs.shape[0]).copy()
        loss_out = self.backend.zeros((1,), self.dtype)
        self._step(Xs, Ys, opt, loss_out)        # a real first step; leaves every buffer allocated
        replay = self.backend.capture(lambda: self._step(Xs, Ys, opt, loss_out))

        def step(X, Y):
            if check_inputs:
                Xd = self._inputs(X)
                Yd = self._targets(Y, Xd.shape[0])
            else:
                Xd, Yd = self.backend.asarray(X, self.dtype), self.backend.asarray(Y, Ys.dtype)
            if Xd.shape != Xs.shape or Yd.shape != Ys.shape or Yd.dtype != Ys.dtype:
                raise ValueError(f"a captured step trains on batches shaped like the first one: X {Xs.shape}, "
                                 f"Y {Ys.shape} of {Ys.dtype}; got X {Xd.shape}, Y {Yd.shape} of {Yd.dtype}")
            Xs[...] = Xd
            Ys[...] = Yd
            replay()
            return loss_out

        step.first_loss = loss_out.copy()
        return step

    def evaluate(self, X, Y) -> dict:
        """Mean loss (and accuracy for the classification losses) over `X`, `Y`."""
        X = self._inputs(X)
        Yd = self._targets(Y, X.shape[0])
        B = X.shape[0]
        total, correct = 0.0, 0.0
        for i in range(0, B, EVAL_CHUNK):
            Xc, Yc = X[i:i + EVAL_CHUNK], Yd[i:i + EVAL_CHUNK]
            ws = self._forward(Xc)
            self.backend.loss_and_delta(ws.A[-1], ws.Z[-1], Yc, self.loss, self.activations[-1],
                                        self._loss_buf, None)
            total += float(self.backend.to_numpy(self._loss_buf)[0]) * Xc.shape[0]
            if self.loss in losses.CLASSIFICATION_LOSSES:
                correct += self._n_correct(self.backend.to_numpy(ws.A[-1]), self.backend.to_numpy(Yc))
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
    def fit(self, X, Y, epochs=10, batch_size=32, optimizer="adam", validation=None, shuffle=True,
            progress=True, lr=None, comm=None, sharded=False):
        """Train for `epochs` passes over `X`, `Y` in batches; returns the history.

        `optimizer` is an Optimizer or a name ("sgd", "adam", "adamw", with
        `lr`); `validation` an `(X_val, Y_val)` pair evaluated after each
        epoch.  The history holds per-epoch lists: `loss` (mean training loss
        over the epoch's steps), `accuracy` for classification losses
        (measured after the epoch), and `val_loss` / `val_accuracy`.

        `comm` (from `gpubp.distributed.init()`) trains data-parallel over
        its ranks: every rank passes the same `X`, `Y` and takes its share of
        each batch, or with `sharded=True` its own rows (see
        `gpubp.distributed.DataParallel`); the result equals one process
        training on the same batches, and only rank 0 shows progress.
        """
        if comm is None:
            if sharded:
                raise ValueError("sharded=True needs comm (from gpubp.distributed.init())")
            return self._fit(X, Y, epochs, batch_size, optimizer, validation, shuffle, progress, lr)
        with comm.guard():      # a rank that raises ends the whole job instead of leaving the others waiting
            return self._fit(X, Y, epochs, batch_size, optimizer, validation, shuffle, progress, lr,
                             comm, sharded)

    def _fit(self, X, Y, epochs, batch_size, optimizer, validation, shuffle, progress, lr,
             comm=None, sharded=False):
        for name, v in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        opt = self._bind(optimizer, lr)
        Xd = self._inputs(X)
        Yd = self._targets(Y, Xd.shape[0])
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                raise TypeError("validation must be an (X_val, Y_val) pair")
            Xv = self._inputs(validation[0], "X_val")
            Yv = self._targets(validation[1], Xv.shape[0])
        B = Xd.shape[0]
        n_batches = -(-B // batch_size)
        dp = None
        if comm is not None:
            from .distributed import DataParallel

            dp = DataParallel(comm, self, opt, sharded)
            n_batches = dp.setup(Xd, Yd, epochs, batch_size, shuffle, validation is not None)
            progress = progress and dp.is_root
        evaluate = self.evaluate if dp is None else dp.evaluate
        classify = self.loss in losses.CLASSIFICATION_LOSSES
        hist = {"loss": []}
        if classify:
            hist["accuracy"] = []
        if validation is not None:
            hist["val_loss"] = []
            if classify:
                hist["val_accuracy"] = []
        xp = self.backend.xp
        step_losses = self.backend.zeros((n_batches,), self.dtype)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=epochs * n_batches, unit="step", leave=True, dynamic_ncols=True)
        try:
            for epoch in range(1, epochs + 1):
                order = self._rng.permutation(B) if dp is None and shuffle else \
                    dp.epoch_order(shuffle) if dp is not None else None
                if order is not None:
                    perm = self.backend.asarray(order, np.int64)
                    Xe, Ye = xp.take(Xd, perm, axis=0), xp.take(Yd, perm, axis=0)
                else:
                    Xe, Ye = Xd, Yd
                checked = 0
                rows = np.zeros(n_batches)
                for i in range(n_batches):
                    s = slice(i * batch_size, (i + 1) * batch_size) if dp is None else dp.batch(i)
                    rows[i] = s.stop - s.start if dp is not None else min(batch_size, B - i * batch_size)
                    self._step(Xe[s], Ye[s], opt, step_losses[i:i + 1], dp)
                    if (i + 1) % 64 == 0 or i + 1 == n_batches:   # read losses without a sync per step
                        checked = self._check_losses(step_losses, checked, i + 1, opt, epoch, n_batches)
                    if bar is not None:
                        bar.update(1)
                loss_sum = self.backend.to_numpy(step_losses) @ rows
                hist["loss"].append(float(loss_sum / B) if dp is None else dp.epoch_loss(loss_sum))
                if classify:
                    hist["accuracy"].append(evaluate(Xd, Yd)["accuracy"])
                if validation is not None:
                    ev = evaluate(Xv, Yv)
                    hist["val_loss"].append(ev["loss"])
                    if classify:
                        hist["val_accuracy"].append(ev["accuracy"])
                if bar is not None:
                    bar.set_postfix({k: f"{v[-1]:.4g}" for k, v in hist.items()}, refresh=True)
        finally:
            if bar is not None:
                bar.close()
        return hist

    def _check_losses(self, step_losses, start, stop, opt, epoch, n_batches):
        vals = self.backend.to_numpy(step_losses[start:stop])
        bad = np.flatnonzero(~np.isfinite(vals))
        if bad.size:
            i = start + int(bad[0])
            step = (epoch - 1) * n_batches + i + 1
            raise FloatingPointError(
                f"the loss became {vals[bad[0]]} at step {step} (epoch {epoch}, batch {i + 1}); training "
                f"diverged: try a lower learning rate than {opt.lr}")
        return stop

    # ------------------------------------------------------------ files
    def save(self, path, metadata=None):
        """Write configuration, parameters, optimizer state and `metadata` (JSON data, default
        `self.metadata`) to one `.npz` file that loads without pickle."""
        from .checkpoint import save

        save(self, path, metadata)

    @classmethod
    def load(cls, path, backend="auto"):
        """A network from a file written by `save`; its optimizer comes back as `net.optimizer`."""
        from .checkpoint import load

        return load(path, backend)
