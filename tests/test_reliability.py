"""Ownership and all-or-nothing behaviour: threads, plans, divergence, refused calls, checked inputs."""

import threading
import time

import numpy as np
import pytest

import gpubp
from gpubp.backends import get_backend
from gpubp.network import MAX_PLANS
from support.lockstep import in_lockstep


def _data(seed, n=300, d=8, k=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, k, n)


def _net(seed=0, **kw):
    kw.setdefault("loss", "cross_entropy")
    return gpubp.MLP([8, 32, 16, 4], backend="numpy", seed=seed, **kw)


def _flat(net):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in net.get_params()])


def _state(opt):
    return {k: opt._backend.to_numpy(v) for k, v in opt.state.items()}, opt.t


# ---------------------------------------------------------------- threads share a backend
def test_two_threads_on_the_shared_backend_equal_sequential_training():
    """Two networks trained at once in two threads (one default numpy backend) end bitwise where
    training them one after the other ends."""
    jobs = [(_data(1), 1, "adam"), (_data(2, n=257), 2, gpubp.optim.SGD(0.05, momentum=0.9))]

    def train(net, data, opt):
        net.fit(*data, epochs=4, batch_size=16, optimizer=opt, progress=False)

    seq = []
    for data, seed, opt in jobs:
        net = _net(seed)
        train(net, data, opt if isinstance(opt, str) else gpubp.optim.SGD(0.05, momentum=0.9))
        seq.append(_flat(net))
    nets = [_net(seed) for _, seed, _ in jobs]
    assert nets[0].backend is nets[1].backend is get_backend("numpy")
    threads = [threading.Thread(target=train, args=(net, data, opt if isinstance(opt, str) else
                                                     gpubp.optim.SGD(0.05, momentum=0.9)))
               for net, (data, _, opt) in zip(nets, jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for net, ref in zip(nets, seq):
        assert np.array_equal(_flat(net), ref)


def test_two_threads_in_lockstep_through_every_public_call_equal_sequential(tmp_path):
    """Two networks of the same shapes, in two threads that meet at a barrier between calls, so that
    each call of one runs beside the same call of the other: fit (standardising), train_step,
    captured-step replays with predictions and evaluations between them (other plans made and
    evicted), save to its own path and to one shared path, load.  Every result equals the one of
    the same calls made one thread after the other, bitwise."""
    def calls(k, meet):
        X, y = _data(20 + k, n=200)
        net = _net(k, activation=["gelu", "tanh"])
        out = []
        meet()
        out.append(net.fit(X, y, epochs=2, batch_size=16, optimizer="adam", progress=False, standardize=True))
        meet()
        out += [net.train_step(X[i:i + 24], y[i:i + 24], "adam") for i in range(0, 96, 24)]
        meet()
        step = net.capture_train_step(X[:32], y[:32], gpubp.optim.SGD(0.05, momentum=0.9))
        for i in range(1, 2 * MAX_PLANS):
            meet()
            out.append(float(step(X[32 * (i % 6):32 * (i % 6) + 32], y[32 * (i % 6):32 * (i % 6) + 32])[0]))
            out.append(net.predict_proba(X[:10 + i]))          # a new batch size each time
            out.append(net.evaluate(X[i:], y[i:]))
        meet()
        net.save(tmp_path / f"own{k}.npz")
        net.save(tmp_path / "shared.npz")
        meet()
        back = gpubp.MLP.load(tmp_path / f"own{k}.npz", backend="numpy")
        out.append(back.predict_proba(X))
        out.append(_flat(net))
        return out

    seq, got = in_lockstep(calls, timeout=60)

    def same(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and not isinstance(a, np.ndarray):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return np.array_equal(a, b)

    assert same(got[0], seq[0]) and same(got[1], seq[1])
    shared = _flat(gpubp.MLP.load(tmp_path / "shared.npz", backend="numpy"))
    assert any(np.array_equal(shared, s[-1]) for s in seq)      # one whole network, whichever saved last


@pytest.mark.parametrize("first, second", [("predict_proba", "predict_proba"), ("loss_and_grads", "loss_and_grads"),
                                           ("loss_and_grads", "captured step")])
def test_one_network_called_from_two_threads_runs_one_pass_at_a_time(monkeypatch, first, second):
    """A server calling `predict` of one network from several threads: its step plans and gradient
    buffer serve one pass at a time.  Thread A is paused right after its forward pass until thread
    B's whole call is over (or 0.3 s): B must wait for A, not write its activations into A's plan
    (A returned B's probabilities) nor its gradients or update into A's backward."""
    net = _net(1)
    X, y = _data(2, n=64)
    step = net.capture_train_step(X[32:48], y[32:48], "sgd") if second == "captured step" else None
    calls = {"predict_proba": lambda rows: net.predict_proba(X[rows]),
             "loss_and_grads": lambda rows: net.loss_and_grads(X[rows], y[rows]),
             "captured step": lambda rows: step(X[rows], y[rows])}
    ref = calls[first](slice(0, 16))
    a_paused, b_done = threading.Event(), threading.Event()
    forward = net.backend.network_forward

    def paused(plan, Wb):
        forward(plan, Wb)
        if threading.current_thread().name == "A":
            a_paused.set()
            b_done.wait(0.3)

    monkeypatch.setattr(net.backend, "network_forward", paused)
    out = {}
    a = threading.Thread(target=lambda: out.update(a=calls[first](slice(0, 16))), name="A")
    a.start()
    assert a_paused.wait(10)
    calls[second](slice(16, 32))
    b_done.set()
    a.join()
    got = out["a"] if first == "predict_proba" else [out["a"][0]] + [g for pair in out["a"][1] for g in pair]
    want = ref if first == "predict_proba" else [ref[0]] + [g for pair in ref[1] for g in pair]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def test_numpy_backend_holds_no_buffers():
    be = get_backend("numpy")
    net = _net()
    net.fit(*_data(0), epochs=1, batch_size=32, progress=False)
    assert not any(isinstance(v, (dict, list, np.ndarray)) and v is not None and len(v)
                   for v in vars(be).values())


# ---------------------------------------------------------------- plans
def test_plans_are_bounded_and_reused():
    net = _net()
    X, y = _data(3, n=100)
    for n in range(5, 5 + 3 * MAX_PLANS):
        net.evaluate(X[:n], y[:n])
    assert len(net._plans) <= MAX_PLANS
    p = net._plan(64)
    assert net._plan(64) is p


@pytest.mark.parametrize("call", ["fit", "predict", "evaluate", "train_step", "loss_and_grads"])
def test_kept_plans_do_not_keep_the_callers_data_alive(call):
    """A kept plan holds buffers of its own batch shape, not the last input it was bound to: after a
    call no plan refers to the caller's array (a float32 X is used without a copy) or to the
    network's copy of a whole data set (fit's shuffled rows), which would stay alive, on the
    device too, for as long as the plan is kept."""
    import gc
    import weakref

    net = _net()
    X, y = _data(9, n=96)
    X = X.astype(np.float32)
    kept = weakref.ref(X)
    if call == "fit":
        net.fit(X, y, epochs=2, batch_size=32, progress=False, validation=(X[:40], y[:40]))
    elif call in ("evaluate", "train_step", "loss_and_grads"):
        getattr(net, call)(X, y, *(["adam"] if call == "train_step" else []))
    else:
        net.predict(X)
    assert net._plans and all(p.A[0] is None for p in net._plans.values())
    del X
    gc.collect()
    assert kept() is None
    assert net.evaluate(*_data(9, n=96))["loss"] > 0       # and the plans serve the next call


def test_captured_step_keeps_its_plan_through_other_batch_sizes():
    """A captured step owns its buffers: evaluations at many other batch sizes in between leave its
    replays equal to plain steps, bitwise."""
    X, y = _data(4, n=64)
    a, b = _net(5), _net(5)
    step = a.capture_train_step(X[:32], y[:32], gpubp.optim.Adam(1e-2))
    b.train_step(X[:32], y[:32], gpubp.optim.Adam(1e-2))
    for i in range(1, 3 * MAX_PLANS):
        a.evaluate(X[:i * 3 + 1], y[:i * 3 + 1])
        a.predict(X[:i + 7])
        step(X[32:], y[32:])
        b.train_step(X[32:], y[32:], "adam")
    assert np.array_equal(_flat(a), _flat(b))
    assert a.optimizer.t == b.optimizer.t == 3 * MAX_PLANS - 1 + 1


def test_captured_step_checks_labels_without_nan_scans():
    X, y = _data(6, n=32)
    net = _net()
    step = net.capture_train_step(X, y, gpubp.optim.SGD(0.1), check_inputs=False)
    before = _flat(net)
    bad = y.copy()
    bad[3] = 4
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        step(X, bad)
    bad[3] = -1
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        step(X, bad)
    assert np.array_equal(_flat(net), before)


@pytest.mark.parametrize("wide, message", [
    (np.int64(2**32 + 1), r"\[0, 4\)"),     # would wrap to label 1 in the step's int32 buffer
    (np.int64(-2**32), r"\[0, 4\)"),        # would wrap to label 0
    (1.5, "integers"),                        # would be truncated to label 1
])
def test_captured_step_without_checks_refuses_labels_before_their_cast(wide, message):
    """check_inputs=False still range-checks class labels: on the values given, not on their int32
    cast (which would turn an out-of-range int64 label, or a fractional one, into a valid label)."""
    X, y = _data(6, n=32)
    net = _net()
    step = net.capture_train_step(X, y, gpubp.optim.SGD(0.1), check_inputs=False)
    before = _flat(net)
    bad = y.astype(np.int64 if isinstance(wide, np.integer) else np.float64)
    bad[3] = wide
    with pytest.raises(ValueError, match=message):
        step(X, bad)
    assert np.array_equal(_flat(net), before)
    step(X, y.astype(np.int64))                  # in-range int64 labels are taken as before
    assert not np.array_equal(_flat(net), before)


@pytest.mark.parametrize("make_opt, change", [
    (lambda: gpubp.optim.Adam(1e-2), lambda o: setattr(o, "lr", 1e-3)),
    (lambda: gpubp.optim.Adam(1e-2), lambda o: setattr(o, "betas", (0.8, 0.99))),
    (lambda: gpubp.optim.SGD(0.1, momentum=0.9), lambda o: setattr(o, "momentum", 0.5)),
    (lambda: gpubp.optim.SGD(0.1, momentum=0.9), lambda o: setattr(o, "nesterov", True)),
    (lambda: gpubp.optim.AdamW(1e-2), lambda o: setattr(o, "weight_decay", 0.1)),
])
@pytest.mark.parametrize("check_inputs", [True, False])
def test_captured_step_refuses_to_run_after_its_optimizer_changed(make_opt, change, check_inputs):
    """A captured CUDA graph holds the optimizer's hyper-parameters as they were at capture; a host
    replay would read the new ones.  So on every backend a step whose optimizer has changed refuses
    to run (and changes nothing) rather than train with values the caller no longer set; setting
    them back, or capturing again, trains."""
    X, y = _data(7, n=32)
    net, opt = _net(), make_opt()
    step = net.capture_train_step(X, y, opt, check_inputs=check_inputs)
    hyper = opt.hyper()
    step(X, y)
    before, t = _flat(net), opt.t
    change(opt)
    with pytest.raises(ValueError, match="capture again"):
        step(X, y)
    assert np.array_equal(_flat(net), before) and opt.t == t
    again = net.capture_train_step(X, y, opt, check_inputs=check_inputs)
    again(X, y)
    assert opt.t == t + 2
    for k, v in hyper.items():
        setattr(opt, k, tuple(v) if isinstance(v, list) else v)
    step(X, y)
    assert opt.t == t + 3


def test_a_captured_step_checks_its_inputs_by_default():
    """check_inputs defaults to True: a NaN in a later batch is refused, nothing trained."""
    X, y = _data(6, n=32)
    net = _net()
    step = net.capture_train_step(X, y, gpubp.optim.SGD(0.1))
    before, t = _flat(net), net.optimizer.t
    bad = X.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        step(bad, y)
    assert np.array_equal(_flat(net), before) and net.optimizer.t == t


@pytest.mark.parametrize("loss, standardize", [("mse", False), ("one-hot", False), ("cross_entropy", True),
                                            ("mse", True), ("probabilities", False)])
def test_a_captured_step_without_checks_trains_as_the_checked_one(loss, standardize):
    """check_inputs=False skips the NaN scans only: on a regression network and on cross-entropy over
    one-hot (probability) targets (neither are class labels), and on a standardised float32 network fed
    host inputs with a large offset (standardised in float64 before the cast to float32, as every host
    input is: see `MLP._inputs`), it trains bitwise as check_inputs=True does.  Probability rows that
    sum to 1 only within the 1e-3 cross_entropy accepts are divided by their sums on both paths
    (docs/spec.md, "Losses"): the unchecked one trained on the rows as given."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((96, 8))
    if standardize:
        X[:, 0] = 1e8 + rng.integers(0, 8, 96)      # varies by units: float32's spacing there is 8
    P = rng.random((96, 4)) + 0.1
    P *= rng.uniform(1 - 9e-4, 1 + 9e-4, (96, 1)) / P.sum(axis=1, keepdims=True)
    Y = {"cross_entropy": rng.integers(0, 4, 96), "one-hot": np.eye(4)[rng.integers(0, 4, 96)],
         "mse": rng.standard_normal((96, 4)), "probabilities": P}[loss]
    params = []
    for check in (True, False):
        net = _net(loss="cross_entropy" if loss in ("one-hot", "probabilities") else loss)
        if standardize:
            net.set_standardization(X.mean(0), X.std(0))
        step = net.capture_train_step(X[:32], Y[:32], gpubp.optim.Adam(1e-2), check_inputs=check)
        losses = [float(step(X[i:i + 32], Y[i:i + 32])[0]) for i in (32, 64)]
        params.append((_flat(net), losses))
    assert np.array_equal(params[0][0], params[1][0]) and params[0][1] == params[1][1]


@pytest.mark.parametrize("check_inputs", [True, False])
def test_a_captured_step_refuses_a_batch_of_the_same_size_in_another_shape(check_inputs):
    """A batch of one sample (1, 4) is not (2, 2), and (4, 2) targets are not (2, 4): with or without
    the input checks the step refuses them (no reshape of what merely has as many numbers)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((4, 4)), rng.standard_normal((4, 2))
    for Xs, Ys, Xb, Yb in [(X[:1], Y[:1], X[:1].reshape(2, 2), Y[:1]), (X, Y, X, Y.reshape(2, 4))]:
        net = gpubp.MLP([4, 3, 2], backend="numpy", seed=0)
        step = net.capture_train_step(Xs, Ys, gpubp.optim.SGD(0.1), check_inputs=check_inputs)
        before = _flat(net)
        with pytest.raises(ValueError, match="shaped like the first one" if not check_inputs else "shape"):
            step(Xb, Yb)
        assert np.array_equal(_flat(net), before) and net.optimizer.t == 1


def test_a_captured_step_returns_one_loss_in_the_same_array_each_call():
    X, y = _data(6, n=64)
    net = _net()
    step = net.capture_train_step(X[:32], y[:32], gpubp.optim.SGD(0.1))
    assert step.first_loss.shape == (1,)
    first = step(X[32:], y[32:])
    assert first.shape == (1,) and step(X[:32], y[:32]) is first
    assert float(first[0]) == pytest.approx(net.evaluate(X[:32], y[:32])["loss"], rel=0.2)


def test_a_captured_step_refused_for_a_changed_optimizer_names_what_changed():
    X, y = _data(7, n=32)
    opt = gpubp.optim.Adam(1e-2)
    step = _net().capture_train_step(X, y, opt)
    opt.lr = 1e-3
    with pytest.raises(ValueError, match=r"changed since this step was captured \(lr 0\.01 -> 0\.001\);"):
        step(X, y)


# ---------------------------------------------------------------- divergence
def _diverging(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((256, 8)) * 10
    Y = rng.standard_normal((256, 4)) * 10
    return X, Y


@pytest.mark.parametrize("make_opt", [lambda: gpubp.optim.SGD(5.0), lambda: gpubp.optim.SGD(2.0, momentum=0.9)])
def test_fit_divergence_restores_the_last_finite_step(make_opt):
    X, Y = _diverging()
    net = gpubp.MLP([8, 64, 4], activation="relu", loss="mse", backend="numpy", seed=0)
    opt = make_opt()
    with pytest.raises(FloatingPointError, match=r"step (\d+).*learning rate") as info:
        net.fit(X, Y, epochs=50, batch_size=8, optimizer=opt, shuffle=False, progress=False)
    failed = int(__import__("re").search(r"step (\d+)", str(info.value)).group(1))
    assert opt.t == failed - 1 >= 1
    params = _flat(net)
    assert np.all(np.isfinite(params))
    # the same number of plain steps on the same batches gives the same bits
    ref = gpubp.MLP([8, 64, 4], activation="relu", loss="mse", backend="numpy", seed=0)
    ropt = make_opt()
    nb = 256 // 8
    for s in range(opt.t):
        i = s % nb
        ref.train_step(X[i * 8:(i + 1) * 8], Y[i * 8:(i + 1) * 8], ropt)
    assert np.array_equal(_flat(ref), params)
    for k, v in _state(opt)[0].items():
        assert np.array_equal(v, _state(ropt)[0][k])



@pytest.mark.parametrize("strict", ["warnings-as-errors", "seterr-raise"])
@pytest.mark.parametrize("call", ["fit", "train_step", "capture_train_step"])
def test_divergence_is_the_documented_error_under_strict_float_settings(strict, call):
    """A diverging step overflows inside numpy: the training calls check the loss themselves and raise
    their FloatingPointError naming the step, with nothing of numpy's in between (no RuntimeWarning per
    op; under `-W error` or `np.seterr(all="raise")` numpy's own exception used to escape from inside
    the step in place of the documented one, which says what to do)."""
    import warnings

    X, Y = _diverging()
    net = gpubp.MLP([8, 64, 4], activation="relu", loss="mse", backend="numpy", seed=0)
    opt = gpubp.optim.SGD(5.0)
    if call != "fit":     # a first step that leaves parameters whose next loss overflows
        net.train_step(X[:8], Y[:8], gpubp.optim.SGD(0.1))
        W = net.get_params()
        net.set_params([(W[0][0] * 1e30, W[0][1])] + W[1:])
    before = _flat(net)
    old = np.seterr(all="raise" if strict == "seterr-raise" else "warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(FloatingPointError, match=r"at step \d+.*training diverged.*Try a lower"):
                if call == "fit":
                    net.fit(X, Y, epochs=50, batch_size=8, optimizer=opt, shuffle=False, progress=False)
                else:
                    getattr(net, call)(X[:8] * 1e30, Y[:8], net.optimizer)
    finally:
        np.seterr(**old)
    assert np.all(np.isfinite(_flat(net)))
    if call != "fit":
        assert np.array_equal(_flat(net), before)

def test_fit_divergence_names_the_rate_of_the_failing_step_under_a_schedule():
    """With a schedule the error gives the rate the failing step ran with (not that of the last step
    run in the window), and the optimizer keeps the rate of the last finite step."""
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((800, 8)), rng.standard_normal((800, 4))
    net = gpubp.MLP([8, 16, 4], activation="relu", loss="mse", backend="numpy", seed=0)

    def sched(step):     # harmless for 63 steps; step 64's update blows the parameters up
        return 1e-3 if step < 64 else 1e30 * step

    with pytest.raises(FloatingPointError) as info:
        net.fit(X, Y, epochs=1, batch_size=8, optimizer=gpubp.optim.SGD(0.1), lr_schedule=sched, shuffle=False,
                progress=False)
    msg = str(info.value)
    assert "at step 65 " in msg and f"learning rate {sched(65):g}:" in msg   # step 65: the window's first
    assert net.optimizer.t == 64 and net.optimizer.lr == sched(64)



def _overflowing(seed=0):
    """Data whose gradients are large: an update at a rate of 1e37 overflows float32 parameters
    while the loss of the step that made it is still finite."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((64, 6)) * 100, rng.standard_normal((64, 2)) * 1000


def _plain_steps(lrs, X, Y, batch):
    """A fresh network after one train_step per rate in `lrs` on consecutive batches, and its optimizer."""
    ref = gpubp.MLP([6, 8, 2], loss="mse", backend="numpy", seed=0)
    opt = gpubp.optim.SGD(1.0)
    n_b = len(X) // batch
    for s, lr in enumerate(lrs):
        opt.lr = lr
        i = s % n_b
        ref.train_step(X[i * batch:(i + 1) * batch], Y[i * batch:(i + 1) * batch], opt)
    return ref, opt


@pytest.mark.parametrize("bad_step", [1, 3, 4, 6], ids=lambda k: f"update{k}")
def test_fit_undoes_an_update_that_overflows_the_parameters(bad_step):
    """The update of step `bad_step` overflows the parameters although that step's loss was finite
    (step 4 is the last of the first epoch's window, where no later loss shows it; step 6 is in the
    second epoch's window).  fit names that update, and leaves the network, the optimizer's state and
    its rate as after the step before, bitwise: never non-finite parameters."""
    X, Y = _overflowing()
    net = gpubp.MLP([6, 8, 2], loss="mse", backend="numpy", seed=0)

    def sched(step):
        return 1e-6 if step != bad_step else 1e37

    with pytest.raises(FloatingPointError, match=rf"the update of step {bad_step} \(epoch \d, batch \d\) with "
                                                 r"learning rate 1e\+37 left parameters"):
        net.fit(X, Y, epochs=2, batch_size=16, optimizer=gpubp.optim.SGD(1.0), lr_schedule=sched,
                shuffle=False, progress=False)
    assert np.all(np.isfinite(_flat(net)))
    ref, ropt = _plain_steps([1e-6] * (bad_step - 1), X, Y, 16)
    assert net.optimizer.t == bad_step - 1 == ropt.t
    assert np.array_equal(_flat(net), _flat(ref))
    if bad_step > 1:
        assert net.optimizer.lr == 1e-6


def test_train_step_says_when_the_parameters_themselves_overflowed():
    """train_step reads its loss before its update, so an update that overflows shows at the next
    step; that step's error says the parameters are no longer finite (no step can mend them)."""
    X, Y = _overflowing()
    net = gpubp.MLP([6, 8, 2], loss="mse", backend="numpy", seed=0)
    opt = gpubp.optim.SGD(1e37)
    assert np.isfinite(net.train_step(X[:16], Y[:16], opt))
    with pytest.raises(FloatingPointError, match=r"step 2 .*the parameters are not finite: the update of "
                                                 r"step 1 overflowed them"):
        net.train_step(X[:16], Y[:16], opt)
    # a loss that is not finite with finite parameters says nothing of the kind
    net = gpubp.MLP([6, 8, 2], loss="mse", backend="numpy", seed=0)
    with pytest.raises(FloatingPointError) as info:
        net.train_step(np.full((4, 6), 1e30), np.ones((4, 2)), "sgd")
    assert "parameters are not finite" not in str(info.value)

def test_train_step_divergence_changes_nothing():
    net = gpubp.MLP([2, 3, 1], loss="mse", backend="numpy", seed=0)
    opt = gpubp.optim.Adam(0.1)
    net.train_step(np.ones((4, 2)), np.ones((4, 1)), opt)
    before, t = _flat(net), opt.t
    W = net.get_params()
    W[0] = (W[0][0] * 1e30, W[0][1])
    net.set_params(W)
    huge = _flat(net)
    with pytest.raises(FloatingPointError, match="step 2"):
        net.train_step(np.full((4, 2), 1e30), np.ones((4, 1)), opt)
    assert opt.t == t and np.array_equal(_flat(net), huge)
    assert not np.array_equal(before, huge)


def test_capture_train_step_refuses_a_first_batch_whose_loss_is_not_finite():
    """capture_train_step trains on its first batch: like train_step it reads that loss before the
    update and refuses a loss that is not finite (it used to apply the update and return a step,
    leaving parameters that were no longer finite)."""
    net = gpubp.MLP([2, 3, 1], loss="mse", backend="numpy", seed=0)
    opt = gpubp.optim.Adam(0.1)
    net.train_step(np.ones((4, 2)), np.ones((4, 1)), opt)
    before, t = _flat(net), opt.t
    with pytest.raises(FloatingPointError, match="step 2"):
        net.capture_train_step(np.full((4, 2), 1e30), np.ones((4, 1)), opt)
    assert opt.t == t and np.array_equal(_flat(net), before)
    step = net.capture_train_step(np.ones((4, 2)), np.ones((4, 1)), opt)     # a finite batch: captured
    assert opt.t == t + 1 and np.isfinite(float(step.first_loss[0]))


# ---------------------------------------------------------------- interrupted fit
def _half_update(monkeypatch, name, at):
    """Make the numpy backend's `name` update (sgd_update, adam_update) raise KeyboardInterrupt at its
    `at`-th call, half made: its first state buffer and the parameters already changed."""
    from gpubp.backends.numpy_backend import NumpyBackend

    orig, calls = getattr(NumpyBackend, name), [0]

    def update(self, params, grads, state, *args, **kw):
        calls[0] += 1
        if calls[0] == at:
            state += 1.0
            params -= 0.5
            raise KeyboardInterrupt
        return orig(self, params, grads, state, *args, **kw)

    monkeypatch.setattr(NumpyBackend, name, update)


@pytest.mark.parametrize("make_opt, update", [(lambda: gpubp.optim.Adam(1e-2), "adam_update"),
                                              (lambda: gpubp.optim.SGD(0.05, momentum=0.9), "sgd_update")],
                         ids=["adam", "sgd"])
@pytest.mark.parametrize("at", [1, 5, 7], ids=lambda k: f"update{k}")   # 7: the second epoch's window
@pytest.mark.parametrize("check_every", [64, 2])     # 2: the losses checked (and a snapshot taken) every 2 steps
def test_an_interrupt_inside_an_update_leaves_the_last_whole_step(monkeypatch, make_opt, update, at, check_every):
    """A KeyboardInterrupt in the middle of an update (the step count, a state buffer and the
    parameters changed, the rest not) leaves the network, the optimizer's state and its step count
    bitwise as after the step before: never half an update; also where the interrupt comes in a
    later window of the epoch than its first."""
    import gpubp.training

    monkeypatch.setattr(gpubp.training, "CHECK_EVERY", check_every)
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((64, 6)), rng.standard_normal((64, 2))
    net = gpubp.MLP([6, 8, 2], loss="mse", backend="numpy", seed=0)
    opt = make_opt()
    _half_update(monkeypatch, update, at)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, Y, epochs=3, batch_size=16, optimizer=opt, shuffle=False, progress=False)
    monkeypatch.undo()
    ref = gpubp.MLP([6, 8, 2], loss="mse", backend="numpy", seed=0)
    ropt = make_opt()
    for s in range(at - 1):
        i = s % 4
        ref.train_step(X[i * 16:(i + 1) * 16], Y[i * 16:(i + 1) * 16], ropt)
    assert opt.t == at - 1
    assert np.array_equal(_flat(net), _flat(ref))
    for k, v in _state(ropt)[0].items():
        assert np.array_equal(_state(opt)[0][k], v)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_within_a_window_leaves_no_diverged_state(error):
    """An exception between two steps (here the schedule's, at step 4) comes before the window's
    check of its losses: fit still leaves the network as after the last good step (the update of
    step 3 overflowed the parameters), never with parameters that are not finite."""
    X, Y = _overflowing()
    net = gpubp.MLP([6, 8, 2], loss="mse", backend="numpy", seed=0)

    def sched(step):
        if step == 4:
            raise error("the schedule stops here")
        return 1e37 if step == 3 else 1e-6

    with pytest.raises(error, match="the schedule stops here"):
        net.fit(X, Y, epochs=1, batch_size=16, optimizer=gpubp.optim.SGD(1.0), lr_schedule=sched,
                shuffle=False, progress=False)
    assert np.all(np.isfinite(_flat(net)))
    ref, ropt = _plain_steps([1e-6] * 2, X, Y, 16)
    assert net.optimizer.t == 2 == ropt.t
    assert np.array_equal(_flat(net), _flat(ref))
    assert net.optimizer.lr == 1e-6


def test_an_interrupt_while_a_diverged_window_is_replayed_leaves_the_last_good_step():
    """A KeyboardInterrupt in the middle of the replay that rolls a diverged window back (here the
    schedule's, when the replay asks for step 3's rate) is settled from where the replay was, each
    step once: the network ends bitwise as after step 3, the last before the update (step 4's) that
    overflowed the parameters, as the roll back would have left it."""
    X, Y = _overflowing()
    net = gpubp.MLP([6, 8, 2], loss="mse", backend="numpy", seed=0)
    asked = []

    def sched(step):
        asked.append(step)
        if step == 3 and asked.count(3) == 2:
            raise KeyboardInterrupt
        return 1e37 if step == 4 else 1e-6

    with pytest.raises(KeyboardInterrupt):
        net.fit(X, Y, epochs=1, batch_size=8, optimizer=gpubp.optim.SGD(1.0), lr_schedule=sched,
                shuffle=False, progress=False)
    assert asked[:12] == [1, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3]   # the check, the window, its replay cut short
    ref, ropt = _plain_steps([1e-6] * 3, X, Y, 8)
    assert net.optimizer.t == 3 == ropt.t
    assert np.array_equal(_flat(net), _flat(ref))


class _Interrupt:
    def on_train_begin(self, net, logs):
        raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["checks", "on_train_begin"])
def test_an_interrupt_before_training_begins_changes_nothing(monkeypatch, where):
    """A KeyboardInterrupt while fit checks its arguments, or in a callback's on_train_begin, is
    undone as a refused argument is: the standardisation, the optimizer and its state as they were."""
    X, y = _data(7)
    net = _net()
    opt = gpubp.optim.Adam(1e-2)
    net.fit(X, y, epochs=1, batch_size=64, optimizer=opt, progress=False)
    before, state = _flat(net), _state(opt)
    kw = dict(epochs=1, batch_size=64, optimizer="sgd", standardize=True, progress=False)
    if where == "checks":
        def interrupted(*a, **k):
            raise KeyboardInterrupt
        monkeypatch.setattr(net, "_sample_weights", interrupted)
    else:
        kw["callbacks"] = [_Interrupt()]
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, **kw)
    assert net.optimizer is opt and np.array_equal(_flat(net), before)
    after = _state(opt)
    assert after[1] == state[1] and all(np.array_equal(after[0][k], v) for k, v in state[0].items())
    assert net.standardization is None


# ---------------------------------------------------------------- refused calls change nothing
@pytest.mark.parametrize("bad", [
    dict(Y=np.full(300, 9)),                                       # label out of range
    dict(validation=(np.ones((3, 8)), np.array([0, 1, 7]))),        # bad validation labels
    dict(validation=(np.ones((3, 7)), np.array([0, 1, 2]))),        # bad validation shape
    dict(sample_weight=-np.ones(300)),
    dict(sample_weight=np.ones(299)),
    dict(class_weight={9: 1.0}),
    dict(class_weight={0: 10 ** 400}),                             # beyond float's range
    dict(callbacks=[object()]),
    dict(epochs=0),
    dict(lr=-1.0),
    dict(optimizer=gpubp.optim.SGD(0.1), lr=0.5),                   # conflicting rates
    dict(standardize=True, Y=np.full(300, 9)),
    dict(standardize="False"),                                      # a flag's text is not read as its truth
    dict(shuffle="no"),
    dict(grad_norms=1),
])
def test_refused_fit_changes_nothing(bad):
    X, y = _data(7)
    net = _net()
    opt = gpubp.optim.Adam(1e-2)
    net.fit(X, y, epochs=1, batch_size=64, optimizer=opt, progress=False)
    before, state = _flat(net), _state(opt)
    kw = dict(epochs=1, batch_size=64, optimizer="adam", progress=False)
    Xb, yb = bad.pop("X", X), bad.pop("Y", y)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError)):
        net.fit(Xb, yb, **kw)
    assert net.optimizer is opt and np.array_equal(_flat(net), before)
    after = _state(opt)
    assert after[1] == state[1] and all(np.array_equal(after[0][k], v) for k, v in state[0].items())
    assert net.standardization is None


def test_a_standardization_whose_device_copy_fails_changes_nothing(monkeypatch):
    """set_standardization makes its backend copies before it sets anything: a copy that fails
    (out of device memory) leaves the saved statistics and those the inputs use as they were, not
    new ones saved while inputs are still standardised with the old."""
    X, y = _data(7)
    net = _net()
    net.set_standardization(np.zeros(8), np.ones(8))
    before = net.predict_proba(X)
    calls = []
    orig = net.backend.asarray

    def asarray(x, dtype):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of device memory")
        return orig(x, dtype)

    monkeypatch.setattr(net.backend, "asarray", asarray)
    with pytest.raises(MemoryError):
        net.set_standardization(np.full(8, 3.0), np.full(8, 2.0))
    monkeypatch.undo()
    assert np.array_equal(net.standardization[0], np.zeros(8)) and np.array_equal(net.standardization[1], np.ones(8))
    assert np.array_equal(net.predict_proba(X), before)


def test_refused_train_step_binds_no_new_optimizer():
    net = _net()
    opt = gpubp.optim.SGD(0.1)
    net.train_step(*_data(8, n=16), opt)
    with pytest.raises(ValueError):
        net.train_step(np.ones((4, 8)), np.array([0, 1, 2, 9]), gpubp.optim.Adam())
    assert net.optimizer is opt


def test_a_captured_step_refuses_a_flag_that_is_not_a_bool():
    net = _net()
    opt = gpubp.optim.SGD(0.1)
    X, y = _data(8, n=16)
    net.train_step(X, y, opt)
    before, t = _flat(net), opt.t
    with pytest.raises(TypeError, match="check_inputs must be True or False"):
        net.capture_train_step(X, y, opt, check_inputs="False")
    assert np.array_equal(_flat(net), before) and opt.t == t


def test_train_step_by_name_keeps_one_optimizer():
    net = _net()
    X, y = _data(9, n=16)
    for _ in range(3):
        net.train_step(X, y, "adam")
    opt = net.optimizer
    assert opt.name == "adam" and opt.t == 3
    net.train_step(X, y, "adam")
    assert net.optimizer is opt and opt.t == 4
    net.fit(X, y, epochs=1, batch_size=16, optimizer="adam", lr=0.5, progress=False)
    assert net.optimizer is opt and opt.lr == 0.5 and opt.t == 5


def test_an_optimizer_serves_one_network():
    opt = gpubp.optim.SGD(0.1)
    a, b = _net(), _net(1)
    X, y = _data(10, n=16)
    a.train_step(X, y, opt)
    before = _flat(b)
    with pytest.raises(ValueError, match="another network"):
        b.fit(X, y, epochs=1, optimizer=opt, progress=False)
    assert b.optimizer is None and np.array_equal(_flat(b), before)


def test_a_refused_fit_keeps_a_bound_optimizer_bound_with_its_state():
    """`is_bound` says whether the optimizer holds state; a fit refused after its optimizer was bound
    by an earlier call leaves it bound with its moments and step count (only a binding made by the
    refused call itself is undone)."""
    X, y = _data(11, n=32)
    net, adam = _net(), gpubp.optim.Adam(1e-2)
    assert not adam.is_bound
    net.fit(X, y, epochs=1, batch_size=16, optimizer=adam, progress=False)
    assert adam.is_bound is True
    moments, t = _state(adam)
    with pytest.raises(TypeError, match="validation must be an"):
        net.fit(X, y, epochs=1, batch_size=16, optimizer=adam, validation=X, progress=False)
    assert adam.is_bound and net.optimizer is adam and t == 2
    after, t_after = _state(adam)
    assert t_after == t and all(np.array_equal(after[k], v) for k, v in moments.items())
    adam.unbind()
    assert not adam.is_bound and adam.t == 2

def test_the_optimizer_base_class_updates_nothing_and_names_no_hyper_parameters():
    """`Optimizer` is the base of SGD, Adam and AdamW: its `step` and `hyper` say they are abstract
    rather than counting a step that changed nothing."""
    from gpubp.backends import get_backend

    opt, p = gpubp.optim.Optimizer(0.1), np.ones(4)
    with pytest.raises(NotImplementedError):
        opt.step(get_backend("numpy"), p, np.ones(4))
    with pytest.raises(NotImplementedError):
        opt.hyper()
    assert np.array_equal(p, np.ones(4))

def test_an_optimizer_bound_from_two_threads_serves_one_network():
    """One optimizer given to two networks in two threads: both checks ran before either binding,
    so both passed, and the second binding took the state over from the first network (which had
    trained with it).  The check and the binding are one step now: the second network is refused,
    as it is one thread after the other.  The interleaving is forced: thread A stops inside its
    binding (allocating the state) until thread B's call has ended or a second has passed."""
    from gpubp.backends.numpy_backend import NumpyBackend

    in_bind, b_done = threading.Event(), threading.Event()

    class Pausing(NumpyBackend):
        armed = False

        def zeros(self, shape, dtype):
            if self.armed and tuple(shape) == (a.layout.total,):   # only the optimizer's state is that size
                in_bind.set()
                b_done.wait(1.0)
            return super().zeros(shape, dtype)

    be = Pausing()
    a, b = gpubp.MLP([8, 32, 16, 4], loss="cross_entropy", backend=be, seed=0), _net(1)
    opt = gpubp.optim.Adam(1e-3)
    X, y = _data(11, n=16)
    before = _flat(b)
    errors = {}

    def run(name, net):
        try:
            if name == "b":
                assert in_bind.wait(5.0)
            net.train_step(X, y, opt)
        except ValueError as e:
            errors[name] = e
        finally:
            if name == "b":
                b_done.set()

    be.armed = True
    threads = [threading.Thread(target=run, args=(n, net)) for n, net in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(errors) == ["b"] and "another network" in str(errors["b"])
    assert opt._params is a._params and a.optimizer is opt and opt.t == 1
    assert b.optimizer is None and np.array_equal(_flat(b), before)


@pytest.mark.parametrize("attr,value", [("lr", -5), ("lr", 0), ("lr", float("nan")), ("eps", 0.0),
                                        ("betas", (0.9, 1.0)), ("weight_decay", -1), ("lr", "fast")])
def test_hyper_parameters_checked_when_assigned(attr, value):
    opt = gpubp.optim.Adam(1e-3)
    old = getattr(opt, attr)
    with pytest.raises((ValueError, TypeError)):
        setattr(opt, attr, value)
    assert getattr(opt, attr) == old


@pytest.mark.parametrize("start, attr, value, words", [
    (dict(momentum=0.9, nesterov=True), "momentum", 0.0, "Nesterov momentum needs a momentum above 0"),
    (dict(momentum=0.0), "nesterov", True, "Nesterov momentum needs a momentum above 0"),
    (dict(momentum=0.9), "nesterov", None, "nesterov must be True or False"),
])
def test_nesterov_is_checked_with_the_momentum_when_either_is_assigned(start, attr, value, words):
    """PyTorch's rule: Nesterov momentum needs a momentum; an assignment breaking it changes nothing."""
    opt = gpubp.optim.SGD(0.1, **start)
    before = opt.hyper()
    with pytest.raises((ValueError, TypeError), match=words):
        setattr(opt, attr, value)
    assert opt.hyper() == before


def test_nesterov_is_a_hyper_parameter_and_can_be_switched():
    opt = gpubp.optim.SGD(0.1, momentum=0.9)
    assert opt.hyper() == {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False}
    opt.nesterov = np.True_
    assert opt.nesterov is True and "nesterov=True" in repr(opt)
    opt.nesterov = False
    opt.momentum = 0.0             # allowed again once Nesterov is off (before the optimizer is bound)
    assert opt.hyper()["momentum"] == 0.0


@pytest.mark.parametrize("make", [
    lambda: gpubp.optim.SGD(5e-324), lambda: gpubp.optim.SGD(0.1, momentum=0.0, weight_decay=0.0),
    lambda: gpubp.optim.SGD(0.1, momentum=np.nextafter(1.0, 0.0)), lambda: gpubp.optim.Adam(betas=[0.0, 0.0]),
    lambda: gpubp.optim.Adam(betas=(np.nextafter(1.0, 0.0), np.nextafter(1.0, 0.0)), eps=5e-324),
    lambda: gpubp.optim.AdamW(weight_decay=0)])
def test_hyper_parameters_at_the_edges_of_their_ranges_are_taken(make):
    """docs/spec.md: lr positive, momentum and betas in [0, 1), eps positive, weight_decay non-negative."""
    make()


@pytest.mark.parametrize("make,words", [
    (lambda: gpubp.optim.SGD(-5e-324), "learning rate must be a positive"),
    (lambda: gpubp.optim.SGD(0.1, momentum=1.0), r"momentum must lie in \[0.0, 1.0\)"),
    (lambda: gpubp.optim.SGD(0.1, momentum=-5e-324), r"momentum must lie in \[0.0, 1.0\)"),
    (lambda: gpubp.optim.SGD(0.1, weight_decay=-5e-324), r"weight_decay must lie in \[0.0, inf\)"),
    (lambda: gpubp.optim.SGD(0.1, weight_decay=float("inf")), r"weight_decay must lie in \[0.0, inf\)"),
    (lambda: gpubp.optim.Adam(betas=(1.0, 0.9)), r"betas\[0\] must lie in \[0.0, 1.0\)"),
    (lambda: gpubp.optim.Adam(betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0.0, 1.0\)"),
    (lambda: gpubp.optim.Adam(betas=(0.9, -5e-324)), r"betas\[1\] must lie in \[0.0, 1.0\)"),
    (lambda: gpubp.optim.Adam(eps=0.0), r"eps must lie in \(0.0, inf\)"),
    (lambda: gpubp.optim.Adam(eps=float("inf")), r"eps must lie in \(0.0, inf\)"),
    (lambda: gpubp.optim.AdamW(weight_decay=-5e-324), r"weight_decay must lie in \[0.0, inf\)"),
    (lambda: gpubp.optim.SGD(0.1, nesterov=True), "Nesterov momentum needs a momentum above 0"),
    (lambda: gpubp.optim.SGD(0.1, momentum=0.0, nesterov=True), "Nesterov momentum needs a momentum above 0"),
])
def test_hyper_parameters_just_outside_their_ranges_are_refused(make, words):
    with pytest.raises(ValueError, match=words):
        make()


@pytest.mark.parametrize("betas", [(0.9,), (0.9, 0.99, 0.999), 0.9, "ab"])
def test_betas_are_a_pair(betas):
    with pytest.raises(TypeError, match="betas must be a pair"):
        gpubp.optim.Adam(betas=betas)


@pytest.mark.parametrize("make,words", [
    (lambda: gpubp.optim.SGD("fast"), "learning rate must be a number, got str"),
    (lambda: gpubp.optim.SGD(0.1, momentum=None), "momentum must be a number, got NoneType"),
    (lambda: gpubp.optim.Adam(betas=("a", 0.9)), r"betas\[0\] must be a number, got str"),
    (lambda: gpubp.optim.Adam(eps=[1e-8]), "eps must be a number, got list"),
    (lambda: gpubp.optim.SGD(0.1, momentum=0.9, nesterov=1), "nesterov must be True or False, got 1"),
    (lambda: gpubp.optim.SGD(0.1, momentum=0.9, nesterov="False"), "nesterov must be True or False"),
])
def test_hyper_parameters_that_are_not_numbers_are_type_errors_naming_them(make, words):
    with pytest.raises(TypeError, match=words):
        make()


def test_optimizer_names_take_their_default_rates():
    """MLP.fit's docstring: lr defaults to 0.01 for sgd and 1e-3 for adam and adamw; names in any case."""
    from gpubp.optim import make_optimizer

    got = {name: make_optimizer(name) for name in ("sgd", "Adam", "ADAMW")}
    assert [(type(o), o.lr) for o in got.values()] == [(gpubp.optim.SGD, 0.01), (gpubp.optim.Adam, 1e-3),
                                                        (gpubp.optim.AdamW, 1e-3)]
    assert got["ADAMW"].weight_decay == 0.01 and got["Adam"].weight_decay == 0
    assert make_optimizer("sgd", 0.5, momentum=0.9).hyper() == {"lr": 0.5, "momentum": 0.9, "weight_decay": 0.0,
                                                                      "nesterov": False}
    opt = gpubp.optim.SGD(0.2)
    assert make_optimizer(opt, 0.7) is opt and opt.lr == 0.2
    with pytest.raises(TypeError, match="optimizer must be an Optimizer or a name"):
        make_optimizer(3)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop")


HUGE = 10 ** 400   # a Python int beyond float's range: float(HUGE) raises OverflowError


@pytest.mark.parametrize("make,words", [
    (lambda: gpubp.optim.SGD(HUGE), "learning rate"),
    (lambda: gpubp.optim.SGD(0.1, momentum=HUGE), "momentum"),
    (lambda: gpubp.optim.SGD(0.1, weight_decay=HUGE), "weight_decay"),
    (lambda: gpubp.optim.Adam(eps=HUGE), "eps"),
    (lambda: gpubp.optim.Adam(betas=(-HUGE, 0.9)), r"betas\[0\]"),
    (lambda: gpubp.schedules.cosine(HUGE, 10), "lr"),
    (lambda: gpubp.schedules.step_decay(0.1, 2, gamma=HUGE), "gamma"),
    (lambda: gpubp.callbacks.EarlyStopping(min_delta=HUGE), "min_delta"),
])
def test_numbers_beyond_floats_range_are_value_errors_naming_the_argument(make, words):
    with pytest.raises(ValueError, match=words):
        make()
    opt = gpubp.optim.Adam(1e-3)
    with pytest.raises(ValueError, match="learning rate"):
        opt.lr = HUGE
    assert opt.lr == 1e-3


def test_an_adam_eps_that_rounds_to_zero_in_the_networks_dtype_is_refused():
    # 1e-50 is positive, but 0 in float32: the padding's 0 / 0 made fit stop with a "diverged" error
    # blaming the learning rate; it is an argument error, refused before anything changes
    X, y = _data(7)
    net = _net()
    adam = gpubp.optim.Adam(1e-2)
    net.fit(X, y, epochs=1, batch_size=64, optimizer=adam, progress=False)
    before, state = _flat(net), _state(adam)
    for make in (lambda: gpubp.optim.Adam(1e-3, eps=1e-50), lambda: gpubp.optim.AdamW(eps=1e-50)):
        with pytest.raises(ValueError, match=r"eps=1e-50 rounds to 0 in float32"):
            net.fit(X, y, epochs=1, batch_size=64, optimizer=make(), progress=False)
        assert net.optimizer is adam and np.array_equal(_flat(net), before)
    with pytest.raises(ValueError, match="eps=1e-50 rounds to 0 in float32"):
        adam.eps = 1e-50
    assert adam.eps == 1e-8
    after = _state(adam)
    assert after[1] == state[1] and all(np.array_equal(after[0][k], v) for k, v in state[0].items())
    net64 = _net(dtype="float64")
    net64.fit(X, y, epochs=1, batch_size=64, optimizer=gpubp.optim.Adam(1e-3, eps=1e-50), progress=False)
    assert np.all(np.isfinite(_flat(net64)))


def test_an_adam_eps_subnormal_in_the_networks_dtype_is_refused_and_its_smallest_normal_taken():
    """The CUDA kernels flush subnormals to 0: a float32 eps of 1e-40 is 0 there; float32's smallest
    normal number (the "use at least" of the message) is taken."""
    X, y = _data(7, n=64)
    tiny = float(np.finfo(np.float32).tiny)
    net = _net()
    with pytest.raises(ValueError, match=r"eps=1e-40 is subnormal in float32.*use at least 1.18e-38"):
        net.fit(X, y, epochs=1, batch_size=64, optimizer=gpubp.optim.Adam(1e-3, eps=1e-40), progress=False)
    adam = gpubp.optim.Adam(1e-3, eps=tiny)
    net.fit(X, y, epochs=1, batch_size=64, optimizer=adam, progress=False)
    assert adam.eps == tiny and np.all(np.isfinite(_flat(net)))
    with pytest.raises(ValueError, match="eps=1e-40 is subnormal in float32"):
        adam.eps = 1e-40
    assert adam.eps == tiny

def test_sgd_momentum_checked_when_assigned():
    opt = gpubp.optim.SGD(0.1, momentum=0.5)
    with pytest.raises(ValueError):
        opt.momentum = 1.5
    assert opt.momentum == 0.5


@pytest.mark.parametrize("make", [
    lambda: gpubp.optim.Adam(1e-2, eps=1e-30), lambda: gpubp.optim.Adam(1e-2, weight_decay=0.5),
    lambda: gpubp.optim.AdamW(1e-2, betas=(0.0, 0.0)), lambda: gpubp.optim.SGD(0.1, momentum=0.99, weight_decay=3)])
def test_accepted_hyper_parameters_keep_padding_zero(make):
    net = gpubp.MLP([3, 5, 2], loss="mse", backend="numpy", seed=0)   # segments padded to 32
    rng = np.random.default_rng(0)
    opt = make()
    net.fit(rng.standard_normal((40, 3)), rng.standard_normal((40, 2)), epochs=3, batch_size=8,
            optimizer=opt, progress=False)
    mask = np.ones(net.layout.total, bool)
    for w, o, i, b in net.layout.segments:
        mask[w:w + o * i] = False
        mask[b:b + o] = False
    assert mask.any()
    for buf in [net._params, net._grads, *opt.state.values()]:
        assert np.all(buf[mask] == 0)


# ---------------------------------------------------------------- inputs checked after conversion
def test_overflowing_values_are_refused_naming_the_argument():
    net = _net()
    X, y = _data(11, n=8)
    Xo = X.copy()
    Xo[2, 3] = 1e39
    with pytest.raises(ValueError, match=r"X overflows float32"):
        net.forward(Xo)
    reg = gpubp.MLP([8, 4, 2], loss="mse", backend="numpy", seed=0)
    Yo = np.zeros((8, 2))
    Yo[1, 1] = -1e39
    with pytest.raises(ValueError, match=r"Y overflows float32"):
        reg.train_step(X, Yo, "sgd")
    with pytest.raises(ValueError, match=r"X_val overflows"):
        net.fit(X, y, epochs=1, validation=(Xo, y), progress=False)
    params = net.get_params()
    params[1] = (params[1][0].astype(np.float64) * 0 + 1e39, params[1][1])
    with pytest.raises(ValueError, match=r"layer 2 W overflows"):
        net.set_params(params)


def test_complex_and_ragged_inputs_are_refused():
    net = _net()
    X, y = _data(12, n=8)
    with pytest.raises(TypeError, match="X is complex"):
        net.forward(X + 1j)
    reg = gpubp.MLP([8, 1], loss="mse", backend="numpy", seed=0)
    with pytest.raises(TypeError, match="Y is complex"):
        reg.train_step(X, np.ones(8) + 0j, "sgd")
    with pytest.raises(TypeError, match="complex"):
        net.set_params([(W + 0j, b) for W, b in net.get_params()])
    with pytest.raises(ValueError, match="X is not a rectangular"):
        net.forward([[1.0] * 8, [1.0] * 7])
    with pytest.raises(ValueError, match="Y is not a rectangular"):
        reg.train_step(X[:2], [[1.0], [1.0, 2.0]], "sgd")


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (1.5, TypeError), ("7", TypeError), (True, TypeError)])
def test_invalid_seeds_are_refused(seed, exc):
    with pytest.raises(exc, match="seed"):
        gpubp.MLP([2, 2], backend="numpy", seed=seed)


def test_big_seeds_are_accepted():
    net = gpubp.MLP([2, 2], backend="numpy", seed=2**80 + 3)
    assert net.config()["seed"] == 2**80 + 3


# ---------------------------------------------------------------- memory
def test_a_network_too_large_is_refused_before_allocating():
    t = time.perf_counter()
    with pytest.raises(MemoryError, match=r"[\d,]+ bytes"):
        gpubp.MLP([10**6, 10**6, 10], backend="numpy")
    assert time.perf_counter() - t < 1.0


def test_a_batch_too_large_is_refused_before_allocating():
    net = gpubp.MLP([4096, 4096, 10], backend="numpy", seed=0)
    with pytest.raises(MemoryError, match="bytes"):
        net._plan(10**9)


def test_fit_refuses_a_first_batch_too_large_for_memory_before_anything_changes(monkeypatch):
    """fit makes its first batch's plan among its checks: refused for memory, the optimizer is not
    bound, the standardisation not set and the parameters not trained."""
    X, y = _data(12, n=64)
    net, opt = _net(), gpubp.optim.Adam(1e-2)
    before = _flat(net)
    # on the class, as below: an instance's patch, undone, would hide later tests' class patches
    monkeypatch.setattr(type(net.backend), "free_memory", lambda self: 2000)
    with pytest.raises(MemoryError, match="buffers for a batch of 64 rows need"):
        net.fit(X, y, epochs=1, batch_size=64, optimizer=opt, standardize=True, progress=False)
    assert net.optimizer is None and not opt.is_bound and opt.t == 0 and net.standardization is None
    assert np.array_equal(_flat(net), before)


def test_predict_and_evaluate_take_rows_whose_eval_chunk_plan_would_not_fit(monkeypatch):
    """forward, predict and evaluate ran EVAL_CHUNK rows per pass whatever the memory: a wide network
    whose chunk plan did not fit in the free memory refused predict(X) (MemoryError) though it trains
    on smaller batches.  They now run as many rows per pass as fit, with the same results."""
    import gpubp.network
    from gpubp.backends.plan import StepPlan

    monkeypatch.setattr(gpubp.network, "EVAL_CHUNK", 1000)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((2500, 8)), rng.integers(0, 4, 2500)
    net = _net(seed=3)
    want_p, want_e, want_f = net.predict(X), net.evaluate(X, y), net.forward(X)
    net = _net(seed=3)
    per_row = StepPlan.nbytes_estimate(net.sizes, net.activations, 1, net.dtype)
    # patched on the class: monkeypatch undoes an instance's patch by setting the bound method on the shared
    # backend instance, which then hid later tests' class patches (test_checkpoint's predict test failed after this)
    monkeypatch.setattr(type(net.backend), "free_memory", lambda self: 300 * per_row)   # 300 rows fit, not 1000
    with pytest.raises(MemoryError):
        net._plan(1000)
    assert np.array_equal(net.predict(X), want_p) and np.array_equal(net.forward(X), want_f)
    got = net.evaluate(X, y)
    assert got["accuracy"] == want_e["accuracy"] and got["loss"] == pytest.approx(want_e["loss"], rel=1e-6)
    assert max(net._plans) == 300
    monkeypatch.setattr(type(net.backend), "free_memory", lambda self: per_row - 1)      # not even one row
    with pytest.raises(MemoryError, match="a batch of 1 rows"):
        net.predict(X[:5])
