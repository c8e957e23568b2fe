"""Callbacks of `MLP.fit`: objects told when training begins, after each epoch, and when it ends.

A callback has any of `on_train_begin(net, logs)`, `on_epoch_end(net, epoch,
logs)` (epoch counted from 1 in each `fit` call; `logs` is the history so far, one list per
figure: the dict `fit` returns, not a copy) and `on_train_end(net, logs)`.  Each hook is
called for the callbacks in the order of the list, after the epoch's figures are recorded
(and shown).  Setting `net.stop_training = True` ends `fit` after the current epoch.  A
callback may change the network between epochs (`set_params`, `net.optimizer.lr`, which an
`lr_schedule` sets again before each step); `on_train_end` is not called when `fit` raises
(a diverged step, an interrupt).  A callback runs in `fit`'s thread, which holds the network's
lock (README, "Thread safety"): it may call the network itself, but another thread's call waits
for `fit` to end, so a callback that waits for such a thread never returns.  Callbacks keep their state in themselves: a checkpoint
does not hold it (`EarlyStopping` starts its count and best value again in each `fit`).
"""

from __future__ import annotations

import math

import numpy as np

from .checks import check_flag, real_number


#: history keys (of `fit(grad_norms=True)`) that hold a list per layer each epoch, not one figure
_PER_LAYER = frozenset({"grad_norms", "delta_norms", "update_ratios"})


class EarlyStopping:
    """Stop when `monitor` has not improved for `patience` epochs; optionally restore the best weights.

    Counted as scikit-learn's `n_iter_no_change`: training goes on through `patience` epochs without
    improvement and stops at the next one that does not improve either (`patience + 1` in a row;
    `patience=0` stops at the first epoch that does not improve).

    `monitor` is a history key ("val_loss" by default, or "loss", "val_accuracy",
    ...; one the fit does not record is refused before its first step, and the
    call then changes nothing); `mode` "min", "max" or "auto" (max for accuracies, else min); an epoch
    improves when it beats the best by more than `min_delta`.  With
    `restore_best=True` the parameters of the best epoch are put back when
    training stops (the optimizer state stays that of the last step).
    After `fit`, `stopped_epoch` is the epoch it stopped at (0: it did not stop)
    and `best_epoch` the best one.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto", restore_best=True):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must name a history key, got {monitor!r}")
        if isinstance(patience, (bool, np.bool_)) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
        delta = real_number(min_delta)
        if delta is None or not math.isfinite(delta) or delta < 0:
            raise ValueError(f"min_delta must be a non-negative number, got {min_delta!r}")
        if not isinstance(mode, str) or mode not in ("auto", "min", "max"):   # an array: numpy's "truth value"
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), delta
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.restore_best = check_flag("restore_best", restore_best)

    def _check_monitor(self, logs):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this fit does not record "
                             f"(it records {', '.join(sorted(logs))}; val_* needs validation data)")
        if self.monitor in _PER_LAYER:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which holds a list per layer for each "
                             "epoch, not one number per epoch: monitor loss, accuracy, val_loss or val_accuracy")

    def on_train_begin(self, net, logs):
        # `logs` already holds a list for every figure the fit records: refuse before any step
        self._check_monitor(logs)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.wait = 0
        self._best_params = None

    def _improved(self, value) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, net, epoch, logs):
        # `logs` is the dict on_train_begin checked: fit records the same figures every epoch
        value = logs[self.monitor][-1]
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self._best_params = net.get_params()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            net.stop_training = True

    def on_train_end(self, net, logs):
        if self.restore_best and self._best_params is not None and self.best_epoch != len(logs["loss"]):
            net.set_params(self._best_params)


class LambdaCallback:
    """A callback from plain functions: `LambdaCallback(on_epoch_end=lambda net, epoch, logs: ...)`."""

    def __init__(self, on_train_begin=None, on_epoch_end=None, on_train_end=None):
        for name, fn in (("on_train_begin", on_train_begin), ("on_epoch_end", on_epoch_end),
                         ("on_train_end", on_train_end)):
            if fn is not None:
                if not callable(fn):
                    raise TypeError(f"{name} must be callable")
                setattr(self, name, fn)
