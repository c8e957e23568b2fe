"""The loop behind `MLP.fit`: epochs of shuffled batches, loss checks, rollback, history, callbacks.

`FitLoop` owns one call's state (the shuffled epoch, the step losses on the
backend, the snapshot used to roll back a diverged run) so that `MLP.fit`
itself only checks its arguments.  Losses are read from the backend every
`CHECK_EVERY` steps (one synchronisation each); before each such window the
parameters and optimizer state are copied (on the backend) into a snapshot, so
that when a loss in the window is not finite the run is restored to the
snapshot and the window's good steps are replayed: the steps are deterministic,
so the result is exactly the state after the last step whose loss was finite.
"""

from __future__ import annotations

import sys

import numpy as np

from . import losses
from .optim import _check_lr

#: steps between two reads of the loss values (each read is a host synchronisation)
CHECK_EVERY = 64


def quiet_floats():
    """numpy's floating-point error handling off, for the steps of a training call: the loop checks
    every loss and the state itself and raises its own FloatingPointError naming the step, so the
    overflows of a diverging step must neither warn (a RuntimeWarning per op) nor, under the caller's
    `np.seterr(all="raise")` or `warnings.simplefilter("error")`, raise numpy's exception from inside
    the step in its place.  (Thread-local in numpy; CuPy's kernels ignore it.)"""
    return np.errstate(all="ignore")


def _caller_level() -> int:
    """The `stacklevel` of a warning raised here that points at the first frame outside gpubp."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here + os.sep):
        frame, level = frame.f_back, level + 1
    return level


class Reporter:
    """What `fit` shows while it trains: a bar on a terminal, one line per epoch elsewhere, or nothing.

    `verbose` as Keras's: 0 silent, 1 the bar (or lines where the stream is not a terminal), 2 one
    line per epoch even on a terminal (`progress=True` still asks for the bar)."""

    def __init__(self, progress="auto", verbose=1, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        if verbose == 0 or progress is False:
            self.mode = "silent"
        elif progress is True:
            self.mode = "bar"
        elif verbose == 2:
            self.mode = "lines"
        else:
            isatty = getattr(self.stream, "isatty", None)
            self.mode = "bar" if (isatty is not None and isatty()) else "lines"
        self.bar = None
        self.epochs = 0

    def begin(self, epochs, steps_per_epoch):
        self.epochs = epochs
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs * steps_per_epoch, unit="step", leave=True, dynamic_ncols=True,
                            file=self.stream)

    def step(self):
        if self.bar is not None:
            self.bar.update(1)

    def epoch(self, epoch, hist):
        figures = {_label(k): v[-1] for k, v in hist.items() if k in _LABELS and v}
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in figures.items()}, refresh=True)
        elif self.mode == "lines":
            width = len(str(self.epochs))
            text = "  ".join(f"{k} {v:.4g}" for k, v in figures.items())
            print(f"epoch {epoch:>{width}}/{self.epochs}  {text}", file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: history keys shown while training, with the label that says what they measure
_LABELS = {"loss": "train loss", "accuracy": "train acc", "val_loss": "val loss", "val_accuracy": "val acc"}


def _label(key):
    return _LABELS[key]


def schedule_rate(lr_schedule, step: int) -> float:
    """The learning rate `lr_schedule` gives for `step`, checked as `Optimizer.lr` checks a rate;
    a rate it refuses raises naming the schedule and the step (nothing is assigned here)."""
    rate = lr_schedule(step)
    try:
        return _check_lr(rate)
    except (TypeError, ValueError) as e:
        raise type(e)(f"lr_schedule({step}) gave {rate!r}, which is not a learning rate: {e}") from None


class FitLoop:
    """One call of `MLP.fit` on checked backend arrays, with the optimizer already bound."""

    def __init__(self, net, opt, X, Y, weights, batch_size, shuffle, lr_schedule, validation, callbacks,
                 reporter, grad_norms=False, dist=None):
        self.net, self.opt = net, opt
        self.X, self.Y = X, Y
        self.weights = None if weights is None else net.backend.asarray(weights, net.dtype)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.lr_schedule = lr_schedule
        self.validation = validation
        self.callbacks = callbacks
        self.reporter = reporter
        self.grad_norms = grad_norms
        #: a `gpubp.distributed.DataParallel` when training over several ranks: it picks this rank's rows
        #: of each batch and sums gradients, losses and metrics over the ranks
        self.dist = dist
        B = X.shape[0]
        self.n_batches = -(-B // batch_size)
        self.steps_done = 0   # steps of this call, for the learning-rate schedule
        #: whether training has begun (the callbacks' on_train_begin passed): before that, an exception
        #: leaves the network as it was and `fit` undoes the call's other changes
        self.started = False
        self.flow_warned: set = set()   # (layer, kind) of the gradient-flow warnings already given
        #: set when an update begins and cleared once the step counts as done: an exception in between
        #: may have left the update half made (the step count, some state buffers, not the parameters)
        self.updating = False
        #: set when `_roll_back` has left the network as after the last good step and raises
        self.rolled_back = False
        #: per step of the epoch, whether its batch weighs nothing (one process with sample weights; `_shuffle`)
        self.weightless = None
        #: the epoch's sample weights on the host (one process with sample weights; `_shuffle`)
        self.We_host = None

    # ---------------------------------------------------------------- one step
    def _batch(self, i):
        s = slice(i * self.batch_size, (i + 1) * self.batch_size) if self.dist is None else self.dist.batch(i)
        w = None if self.We is None else self.We[s]
        return self.Xe[s], self.Ye[s], w

    def _run_step(self, i, step_losses, every_delta=False):
        """Step `i` of the current epoch (the same batch and rate every time it is run).

        `every_delta` runs the backward layer by layer (the interface's default), so
        that every intermediate delta is written even where a backend fuses layers."""
        net, opt = self.net, self.opt
        if self.lr_schedule is not None:
            opt.lr = schedule_rate(self.lr_schedule, self.epoch_start + i + 1)
        X, Y, w = self._batch(i)
        if self.dist is not None and self.dist.skip(i):   # no rows of this batch here: zeros join the sum
            self.dist.empty_step(step_losses[i:i + 1])
            self.updating = True
            opt.step(net.backend, net._params, net._grads)
            return None
        after_layer = None if self.dist is None else self.dist.after_layer
        plan = net._gradients(X, Y, step_losses[i:i + 1], w, after_layer=after_layer, every_delta=every_delta)
        if self.dist is not None:
            self.dist.finish()
        elif self.weightless is not None and self.weightless[i]:
            # a batch that weighs nothing has gradient 0 (and loss 0), also where a row's activations
            # overflow (0 * inf is NaN), as on several ranks, where a rank whose share weighs nothing skips it
            net._grads[...] = 0
        self.updating = True    # cleared by the caller once it counts the step as done (see `_settle`)
        opt.step(net.backend, net._params, net._grads)
        return plan

    # ---------------------------------------------------------------- snapshots
    def _take(self, snap, step):
        """Copy the state into `snap`: the state before step `step` of the epoch (`snap_at`)."""
        self.snap_at = None           # while it is being copied the snapshot holds no one step's state
        for dst, src in zip(snap, self.net._state_buffers(self.opt)):
            dst[...] = src
        self.snap_lr = self.opt.lr    # a schedule changes the rate within the window
        self.snap_at = step

    def _state_finite(self) -> bool:
        """Whether every parameter and optimizer value is finite (on every rank)."""
        xp = self.net.backend.xp
        # one flag per buffer, read together: one synchronisation per check on a device
        ok = bool(xp.stack([xp.isfinite(b).all() for b in self.net._state_buffers(self.opt)]).all())
        return ok if self.dist is None else self.dist.on_all_ranks(ok, "the check of the training state")

    def _roll_back(self, snap, first, k, loss, epoch, step_losses):
        """Leave the network as after the last good step of the window that began at step `first`
        (snapshot `snap`) and raise: step `k` had a non-finite loss `loss` (None: no loss in the
        window was, but the state was not finite at its end).  The window is replayed from the
        snapshot step by step; a step whose update leaves a parameter or optimizer value that is
        not finite is undone and named (its own loss was finite)."""
        self._restore(snap)
        for j in range(first, k):      # replay the window's good steps
            self._take(snap, j)
            self._run_step(j, step_losses)
            if not self._state_finite():
                lr = self.opt.lr
                self._restore(snap)
                err = self.net._diverged_update(self.opt.t + 1, lr, f" (epoch {epoch}, batch {j + 1})")
                self.rolled_back = True
                raise err if self.dist is None else self.dist.on_every_rank(err)
            self.updating = False
        if loss is None:   # not reached: the replay repeats the steps that left the state non-finite
            raise RuntimeError("the training state stopped being finite, but replaying the steps did not")
        # the rate step k ran with (the optimizer keeps that of the last finite step)
        lr = self.opt.lr if self.lr_schedule is None else self.lr_schedule(self.epoch_start + k + 1)
        err = self.net._diverged(loss, self.opt.t + 1, lr, f" (epoch {epoch}, batch {k + 1})")
        self.rolled_back = True
        raise err if self.dist is None else self.dist.on_every_rank(err)

    def _restore(self, snap):
        self.updating = True     # a mix of two states until the copy ends and the caller counts it done
        for dst, src in zip(self.net._state_buffers(self.opt), snap):
            dst[...] = src
        self.opt.lr = self.snap_lr

    # ---------------------------------------------------------------- the loop
    def run(self, epochs):
        net, be, opt = self.net, self.net.backend, self.opt
        B = self.X.shape[0]
        classify = net.loss in losses.CLASSIFICATION_LOSSES
        hist = {"loss": []}
        if classify:
            hist["accuracy"] = []
        if self.validation is not None:
            hist["val_loss"] = []
            if classify:
                hist["val_accuracy"] = []
        if self.grad_norms:
            hist.update(grad_norms=[], delta_norms=[], update_ratios=[])
        if self.dist is not None:
            self.n_batches = self.dist.setup(self.X, self.Y, self.weights, epochs, self.batch_size, self.shuffle,
                                             self.validation, self.lr_schedule)
        evaluate = net.evaluate if self.dist is None else self.dist.evaluate
        step_losses = be.zeros((self.n_batches,), net.dtype)
        snap = [b.copy() for b in net._state_buffers(opt)]
        sizes = np.full(self.n_batches, self.batch_size, dtype=np.float64)
        sizes[-1] = B - (self.n_batches - 1) * self.batch_size
        failed = None
        try:
            # the int32 step count would wrap (every rank has rank 0's count and the same steps)
            opt.check_steps(epochs * self.n_batches)
            for cb in self.callbacks:
                if hasattr(cb, "on_train_begin"):
                    cb.on_train_begin(net, hist)
        except Exception as e:
            if self.dist is None:
                raise
            failed = e
        if self.dist is not None:   # a refusal on any rank is one on every rank, each network as it was
            self.dist.start_together(failed)
        self.reporter.begin(epochs, self.n_batches)
        self.started = True
        try:
            for epoch in range(1, epochs + 1):
                self._shuffle()
                self.epoch_start = self.steps_done
                with quiet_floats():
                    self._epoch(epoch, step_losses, snap, hist)
                self.steps_done += self.n_batches
                if self.dist is not None:
                    hist["loss"].append(self.dist.epoch_loss(be.to_numpy(step_losses)))
                else:
                    batch_w = sizes if self.We is None else self._batch_weights()
                    hist["loss"].append(float(be.to_numpy(step_losses).astype(np.float64) @ batch_w / batch_w.sum()))
                with quiet_floats():   # a validation loss that overflows is recorded as it is (inf)
                    acc = evaluate(self.X, self.Y, _checked=True)["accuracy"] if classify else None
                    ev = evaluate(*self.validation, _checked=True) if self.validation is not None else None
                if classify:
                    hist["accuracy"].append(acc)
                if self.validation is not None:
                    hist["val_loss"].append(ev["loss"])
                    if classify:
                        hist["val_accuracy"].append(ev["accuracy"])
                self.reporter.epoch(epoch, hist)
                if self.dist is not None:
                    self.dist.before_callbacks()
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(net, epoch, hist)
                if self.dist is not None:   # a rank that stops (e.g. a callback on rank 0 alone) stops every rank
                    net.stop_training = self.dist.after_callbacks(net.stop_training, epoch)
                if net.stop_training:
                    break
        finally:
            self.reporter.close()
        if self.dist is not None:
            self.dist.before_callbacks()
        for cb in self.callbacks:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(net, hist)
        if self.dist is not None:   # no rank leaves fit before every rank is through its callbacks (and
            self.dist.after_callbacks(False)     # all hold rank 0's network)
        return hist

    def _shuffle(self):
        net, be = self.net, self.net.backend
        xp = be.xp
        order = self.dist.epoch_order(self.shuffle) if self.dist is not None else \
            net._rng.permutation(self.X.shape[0]) if self.shuffle else None
        if order is not None:
            perm = be.asarray(order, np.int64)
            self.Xe, self.Ye = xp.take(self.X, perm, axis=0), xp.take(self.Y, perm, axis=0)
            self.We = None if self.weights is None else xp.take(self.weights, perm, axis=0)
        else:
            self.Xe, self.Ye, self.We = self.X, self.Y, self.weights
        if self.dist is not None:
            self.dist.begin_epoch(self.We)
        elif self.We is not None:   # one host copy per epoch: its weightless batches (`_run_step`), the history's
            self.We_host = be.to_numpy(self.We)           # batch weights (`_batch_weights`)
            self.weightless = np.maximum.reduceat(self.We_host, np.arange(0, self.We_host.size, self.batch_size)) <= 0

    def _batch_weights(self):
        """Each batch's sample weight sum, up to one factor for all (the history uses their ratios only):
        over the largest weight, so that weights near float64's largest number do not sum to inf (the
        epoch's loss inf / inf) and subnormal ones do not make subnormal products with the losses."""
        w = self.We_host.astype(np.float64)      # a copy: divided in place below
        top = w.max()
        if top > 0:
            w /= top
        return np.add.reduceat(w, np.arange(0, w.size, self.batch_size))

    def _epoch(self, epoch, step_losses, snap, hist):
        be = self.net.backend
        checked = done = 0     # steps of this epoch whose losses were checked; whose updates were made
        self._take(snap, 0)
        last = self.n_batches - 1
        try:
            for i in range(self.n_batches):
                if self.grad_norms and i == last:
                    before = be.to_numpy(self.net._params)
                plan = self._run_step(i, step_losses, every_delta=self.grad_norms and i == last)
                done = i + 1
                self.updating = False
                if (i + 1) % CHECK_EVERY == 0 or i == last:
                    vals = be.to_numpy(step_losses[checked:i + 1])
                    if self.dist is not None:   # every rank decides on the global batches' losses
                        vals = self.dist.global_losses(vals, checked)
                    bad = np.flatnonzero(~np.isfinite(vals))
                    # an update can overflow while the loss it followed was finite
                    if bad.size or not self._state_finite():
                        self._roll_back(snap, checked, checked + int(bad[0]) if bad.size else i + 1,
                                        vals[bad[0]] if bad.size else None, epoch, step_losses)
                    checked = i + 1
                    if i != last:
                        self._take(snap, i + 1)
                self.reporter.step()
        except BaseException:
            # an interrupt (KeyboardInterrupt) or an error of a schedule, a backend call... within the
            # window: settle the network on its last good step before passing the exception on
            if not self.rolled_back and self.dist is None:   # ranks: the exception ends the whole job
                self._settle(snap, checked, done, step_losses)
            raise
        if self.grad_norms:
            self._record_flow(before, plan, hist)

    def _settle(self, snap, first, done, step_losses):
        """Leave the network as after the last good step of the window that began at step `first`,
        of which steps `first .. done - 1` were made, when an exception cut the window short (also
        within `_roll_back`): an update or a restore it interrupted is undone (the snapshot `snap`,
        the state before step `snap_at`, restored and the steps from there replayed), and so is every
        step from the first whose loss was not finite, or whose update left the state not finite, as
        the window's check would have.  A second exception while replaying leaves the network as
        after the steps replayed so far."""
        be = self.net.backend
        vals = be.to_numpy(step_losses[first:done])
        bad = np.flatnonzero(~np.isfinite(vals))
        good = first + int(bad[0]) if bad.size else done
        if self.snap_at is None or (good == done and not self.updating and self._state_finite()):
            # cut short while the state (whole and checked) was copied into the snapshot, or between two
            # steps that were all good: nothing to undo
            return
        self._restore(snap)
        try:
            for j in range(self.snap_at, good):
                self._take(snap, j)
                self._run_step(j, step_losses)
                if not self._state_finite():
                    self._restore(snap)
                    return
                self.updating = False
        except BaseException:
            if self.snap_at is not None:     # else the state is the whole one that was being copied
                self._restore(snap)          # as after step j - 1 (taken before step j)
            raise

    def _record_flow(self, before, plan, hist):
        from .gradflow import GradientFlowWarning, flow_warnings, layer_stats

        net = self.net
        be = net.backend
        after = be.to_numpy(net._params)
        grads = be.to_numpy(net._grads)
        views = net.layout.views
        W0 = [W for W, _ in views(before)]
        W1 = [W for W, _ in views(after)]
        dW = [W for W, _ in views(grads)]
        deltas = [be.to_numpy(d) if d is not None else None for d in plan.delta[1:]]
        stats = layer_stats(W0, W1, dW, deltas)
        hist["grad_norms"].append([s["grad_norm"] for s in stats])
        hist["delta_norms"].append([s["delta_norm"] for s in stats])
        hist["update_ratios"].append([s["update_ratio"] for s in stats])
        import warnings

        for msg in flow_warnings(stats):      # each finding once per fit call
            if (msg.layer, msg.kind) not in self.flow_warned:
                self.flow_warned.add((msg.layer, msg.kind))
                warnings.warn(str(msg), GradientFlowWarning, stacklevel=_caller_level())
