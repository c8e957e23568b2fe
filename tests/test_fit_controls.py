"""fit's controls: callbacks, early stopping, schedules, weights, standardisation, validation split,
initialisation and output."""

import io
import math

import numpy as np
import pytest

import gpubp
from gpubp.callbacks import EarlyStopping, LambdaCallback
from gpubp.schedules import cosine, step_decay
from gpubp.training import Reporter


def _data(seed=0, n=200, d=6, k=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    return X, y


def _flat(net):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in net.get_params()])


def test_callbacks_are_called_in_order_and_can_stop():
    calls = []

    def on_epoch_end(net, epoch, logs):
        calls.append(("epoch", epoch, len(logs["loss"])))
        if epoch == 3:
            net.stop_training = True

    cb = LambdaCallback(on_train_begin=lambda net, logs: calls.append(("begin",)),
                        on_epoch_end=on_epoch_end,
                        on_train_end=lambda net, logs: calls.append(("end", len(logs["loss"]))))
    net = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    hist = net.fit(*_data(), epochs=10, batch_size=50, callbacks=[cb], progress=False)
    assert calls == [("begin",), ("epoch", 1, 1), ("epoch", 2, 2), ("epoch", 3, 3), ("end", 3)]
    assert len(hist["loss"]) == 3


def test_early_stopping_restores_the_best_epoch():
    X, y = _data(1, n=120)
    Xv, yv = _data(2, n=60)
    es = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    snaps = []
    net = gpubp.MLP([6, 64, 3], loss="cross_entropy", backend="numpy", seed=0)
    # a high rate makes validation loss rise after a few epochs
    hist = net.fit(X, y, epochs=60, batch_size=8, optimizer=gpubp.optim.Adam(0.05), validation=(Xv, yv),
                   callbacks=[es, LambdaCallback(on_epoch_end=lambda n, e, l: snaps.append(_flat(n)))],
                   progress=False)
    assert es.stopped_epoch == len(hist["loss"]) < 60
    best = int(np.argmin(hist["val_loss"])) + 1
    assert es.best_epoch == best and es.stopped_epoch == best + 2 + 1
    assert np.array_equal(_flat(net), snaps[best - 1])


def test_early_stopping_checks_its_monitor():
    net = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", seed=0)
    with pytest.raises(ValueError, match="val_loss"):
        net.fit(*_data(), epochs=2, callbacks=[EarlyStopping()], progress=False)
    with pytest.raises(ValueError):
        EarlyStopping(patience=-1)


def test_early_stopping_refuses_a_restore_best_that_is_not_a_bool():
    with pytest.raises(TypeError, match="restore_best must be True or False"):
        EarlyStopping(restore_best="False")
    assert EarlyStopping(restore_best=np.False_).restore_best is False


def test_early_stopping_refuses_its_monitor_before_any_step():
    # a monitor the fit does not record is refused before training, and the call changes nothing
    # (it used to be refused after the first epoch, with that epoch's updates made)
    X, y = _data()
    net = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    net.fit(X, y, epochs=1, optimizer="sgd", lr=0.1, progress=False)
    before, sgd = _flat(net), net.optimizer
    t_before = sgd.t
    seen = []
    adam = gpubp.optim.Adam(0.01)
    for cb, opt in ((EarlyStopping(), adam), (EarlyStopping(monitor="val_accuracy"), "sgd")):
        with pytest.raises(ValueError, match="val_"):
            net.fit(X, y, epochs=3, optimizer=opt, standardize=True, progress=False,
                    callbacks=[LambdaCallback(on_epoch_end=lambda n, e, l: seen.append(e)), cb])
        assert seen == [] and np.array_equal(_flat(net), before)
        assert net.optimizer is sgd and sgd.t == t_before and net.standardization is None
    # the refused call did not bind the Adam instance to this network: it still serves another
    other = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=1)
    assert adam.t == 0 and not adam.is_bound
    other.fit(X, y, epochs=1, optimizer=adam, progress=False)
    assert adam.t == -(-len(X) // 32)
    # with the figure recorded, the same callback trains
    hist = net.fit(X, y, epochs=2, validation_split=0.2, callbacks=[EarlyStopping(monitor="val_accuracy")],
                   progress=False)
    assert len(hist["val_accuracy"]) == 2


def test_early_stopping_refuses_a_per_layer_figure_before_any_step():
    # grad_norms, delta_norms and update_ratios are history keys, but each epoch holds a list per layer:
    # there is no best to compare with; it used to train an epoch, then fail on `list < float`
    X, y = _data()
    net = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    before = _flat(net)
    for key in ("grad_norms", "delta_norms", "update_ratios"):
        with pytest.raises(ValueError, match=f"{key}.*one number per epoch"):
            net.fit(X, y, epochs=2, grad_norms=True, callbacks=[EarlyStopping(monitor=key)], progress=False)
        assert np.array_equal(_flat(net), before) and net.optimizer is None


def test_lr_schedule_sets_the_rate_of_every_step():
    X, y = _data(3, n=64)
    sched = step_decay(0.1, step_size=3, gamma=0.5)
    a = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    b = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    opt_a, opt_b = gpubp.optim.SGD(1.0), gpubp.optim.SGD(1.0)
    a.fit(X, y, epochs=2, batch_size=16, optimizer=opt_a, shuffle=False, lr_schedule=sched, progress=False)
    for s in range(1, 9):
        opt_b.lr = sched(s)
        i = (s - 1) % 4
        b.train_step(X[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16], opt_b)
    assert np.array_equal(_flat(a), _flat(b))
    assert opt_a.lr == sched(8)


def test_a_schedule_giving_a_bad_rate_is_named_with_its_step():
    X, y = _data(3, n=64)
    net = gpubp.MLP([6, 4, 3], loss="cross_entropy", backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"lr_schedule\(5\) gave 0\.0, which is not a learning rate"):
        net.fit(X, y, epochs=2, batch_size=16, optimizer=gpubp.optim.SGD(0.1),
                lr_schedule=lambda s: 0.1 if s < 5 else 0.0, progress=False)
    assert net.optimizer.t == 4 and net.optimizer.lr == 0.1
    with pytest.raises(TypeError, match=r"lr_schedule\(1\) gave 'fast'"):
        net.fit(X, y, epochs=1, optimizer="sgd", lr_schedule=lambda s: "fast", progress=False)



def test_a_schedule_refusing_its_first_rate_changes_nothing():
    """The first step's rate is checked with the call's other arguments: a schedule whose first
    rate is refused leaves the parameters, the bound optimizer (and its state) and the
    standardisation as they were, as every refused call does."""
    X, y = _data(3, n=64)
    net = gpubp.MLP([6, 4, 3], loss="cross_entropy", backend="numpy", seed=0)
    adam = gpubp.optim.Adam(1e-2)
    net.fit(X, y, epochs=1, optimizer=adam, progress=False)
    before = _flat(net).copy()
    state = [b.copy() for b in adam.buffers()]
    for bad, err in ((lambda s: 0.0, ValueError), (lambda s: float("nan"), ValueError),
                     (lambda s: None, TypeError)):
        with pytest.raises(err, match=r"lr_schedule\(1\) gave"):
            net.fit(X * 3 + 1, y, epochs=2, optimizer=gpubp.optim.SGD(0.1), standardize=True,
                    lr_schedule=bad, progress=False)
        assert net.optimizer is adam and adam.lr == 1e-2 and adam.t == 2
        assert all(np.array_equal(a, b) for a, b in zip(adam.buffers(), state))
        assert net.standardization is None
        assert np.array_equal(_flat(net), before)

def test_schedules():
    c = cosine(0.1, 100, warmup_steps=10)
    assert c(5) == pytest.approx(0.05) and c(11) == pytest.approx(0.1)
    assert all(c(s) > 0 for s in range(1, 200)) and c(150) == c(100) < 0.001
    with pytest.raises(ValueError):
        cosine(0.1, 10, warmup_steps=10)
    with pytest.raises(ValueError):
        step_decay(-1, 3)



def test_schedule_arguments_at_and_past_the_edges_of_their_ranges():
    """cosine: lr positive, warmup_steps an integer in [0, total_steps), min_lr in [0, lr); step_decay:
    lr, gamma positive, step_size a positive integer."""
    plain = cosine(0.1, 10)                          # no warm-up, down to 0: min_lr=0, warmup_steps=0
    assert [plain(k) for k in (1, 10, 11)] == [0.1, pytest.approx(0.1 * math.sin(math.pi / 20) ** 2, rel=1e-15),
                                              pytest.approx(0.1 * math.sin(math.pi / 20) ** 2, rel=1e-15)]
    assert plain(6) == pytest.approx(0.05, rel=1e-15)     # half-way: 0.5 (1 + cos(pi 5 / 10)) = 0.5
    last = cosine(0.1, 10, warmup_steps=9)          # the longest warm-up: one cosine step, at the full rate
    assert [last(k) for k in (1, 9, 10, 11)] == [pytest.approx(0.1 / 9, rel=1e-15), 0.1, 0.1, 0.1]
    below = float(np.nextafter(0.1, 0))
    assert cosine(0.1, 4, min_lr=below)(4) == pytest.approx(0.1, rel=1e-15)   # min_lr just below lr is taken
    assert cosine(5e-324, 3)(1) == 5e-324
    default = step_decay(0.1, 2)                    # gamma=0.1, as PyTorch's StepLR
    assert [default(k) for k in (1, 2, 3, 5)] == [0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1 ** 2]
    flat = step_decay(0.1, 1, gamma=1.0)
    assert flat(1) == flat(10 ** 6) == 0.1
    for bad in (dict(warmup_steps=-1), dict(warmup_steps=True), dict(warmup_steps=2.0), dict(min_lr=0.1),
                dict(min_lr=-5e-324), dict(min_lr=float("nan")), dict(min_lr="0"), dict(lr=0.0),
                dict(lr=float("inf")), dict(lr=float("nan")), dict(total_steps=0)):
        with pytest.raises((ValueError, TypeError)):
            cosine(**{"lr": 0.1, "total_steps": 10, **bad})
    for bad in (dict(gamma=0.0), dict(gamma=float("inf")), dict(gamma=-0.5), dict(lr=-5e-324),
                dict(step_size=0), dict(step_size=True), dict(step_size=1.0)):
        with pytest.raises((ValueError, TypeError)):
            step_decay(**{"lr": 0.1, "step_size": 3, **bad})


def test_a_long_step_decay_keeps_a_positive_rate_and_a_growing_one_is_refused_naming_its_step():
    """step_decay(0.1, 1, 0.1) underflowed to a rate of 0.0 after 324 decays, which the optimizers refuse:
    a long fit stopped there with a ValueError (and gamma > 1 raised Python's OverflowError from inside
    fit).  The decay holds the smallest positive normal float; a rate past float's range is inf, which
    fit refuses naming the step."""
    import sys

    s = step_decay(0.1, 1, 0.1)
    assert s(2) == 0.1 * 0.1 and s(300) == 0.1 * 0.1 ** 299 > sys.float_info.min
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((400, 3)), rng.standard_normal(400)
    net = gpubp.MLP([3, 4, 1], backend="numpy", seed=0)
    net.fit(X, y, epochs=1, batch_size=1, optimizer="sgd", lr_schedule=s, shuffle=False, progress=False)
    assert net.optimizer.t == 400 and net.optimizer.lr == sys.float_info.min == s(10 ** 6)
    grow = step_decay(0.1, 1, 2.0)
    assert grow(1024) == 0.1 * 2.0 ** 1023 and grow(1025) == pytest.approx(0.2 * 2.0 ** 1023, rel=1e-12)
    assert grow(1100) == grow(10 ** 6) == float("inf")
    assert step_decay(1e-300, 1, 2.0)(1100) == pytest.approx(1e-300 * 2.0 ** 99 * 2.0 ** 1000, rel=1e-12)
    net = gpubp.MLP([3, 4, 1], backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"lr_schedule\(1\) gave inf, which is not a learning rate"):
        net.fit(X, y, optimizer="sgd", lr_schedule=lambda k: grow(k + 1100), progress=False)
    assert net.optimizer is None

def test_schedules_and_early_stopping_take_numpy_numbers_as_fit_does():
    # fit takes epochs=np.int64(...); the step counts computed with numpy must not be refused as
    # "not a positive integer"
    n = np.int64(100)
    assert cosine(0.1, n, min_lr=np.float32(1e-3), warmup_steps=np.int64(10))(50) == \
        cosine(0.1, 100, min_lr=float(np.float32(1e-3)), warmup_steps=10)(50)
    assert step_decay(0.1, np.int64(10))(11) == step_decay(0.1, 10)(11)
    assert EarlyStopping(patience=np.int64(3)).patience == 3
    for bad in (dict(total_steps=np.bool_(True)), dict(total_steps=10, warmup_steps=np.int64(10)),
                dict(total_steps=10, min_lr=np.float32(0.1))):
        with pytest.raises(ValueError):
            cosine(0.1, **bad)


def test_sample_weight_equals_duplicated_samples():
    """Integer weights on a full batch equal repeating each sample that many times."""
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((12, 6)), rng.integers(0, 3, 12)
    w = rng.integers(1, 4, 12)
    a = gpubp.MLP([6, 5, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    b = gpubp.MLP([6, 5, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    ha = a.fit(X, y, epochs=1, batch_size=12, optimizer=gpubp.optim.SGD(0.5), shuffle=False,
               sample_weight=w, progress=False)
    Xr, yr = np.repeat(X, w, axis=0), np.repeat(y, w)
    hb = b.fit(Xr, yr, epochs=1, batch_size=len(yr), optimizer=gpubp.optim.SGD(0.5), shuffle=False,
               progress=False)
    assert ha["loss"][0] == pytest.approx(hb["loss"][0], rel=1e-12)
    assert np.allclose(_flat(a), _flat(b), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["mse", "half_sse", "binary_cross_entropy", "poisson"])
def test_sample_weight_other_losses(loss):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((10, 4))
    Y = rng.random((10, 2))
    w = rng.integers(1, 3, 10)
    nets = [gpubp.MLP([4, 2], loss=loss, backend="numpy", dtype="float64", seed=0) for _ in range(2)]
    nets[0].fit(X, Y, epochs=1, batch_size=10, optimizer=gpubp.optim.SGD(0.3), shuffle=False,
                sample_weight=w, progress=False)
    nets[1].fit(np.repeat(X, w, 0), np.repeat(Y, w, 0), epochs=1, batch_size=int(w.sum()),
                optimizer=gpubp.optim.SGD(0.3), shuffle=False, progress=False)
    assert np.allclose(_flat(nets[0]), _flat(nets[1]), rtol=1e-12, atol=1e-14)



@pytest.mark.parametrize("scale", [2.0 ** 126, 2.0 ** -130], ids=["near-max", "subnormal"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_sample_weights_near_the_ends_of_float32_train_as_their_ratios(scale, loss):
    """The weighted loss depends only on the weights' ratios: weights near float32's largest number
    (whose batch sum overflows) or subnormal (B / sum overflows) train exactly as the same ratios
    near 1, instead of a loss of 0 with no learning or a NaN loss."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((24, 6))
    Y = rng.integers(0, 3, 24) if loss == "cross_entropy" else rng.standard_normal((24, 3))
    w = rng.integers(1, 4, 24).astype(np.float64)
    nets = [gpubp.MLP([6, 5, 3], loss=loss, backend="numpy", seed=0) for _ in range(2)]
    hists = [net.fit(X, Y, epochs=2, batch_size=12, optimizer=gpubp.optim.SGD(0.3), shuffle=False,
                     sample_weight=sw, progress=False) for net, sw in zip(nets, (w, w * scale))]
    assert np.all(np.isfinite(hists[1]["loss"])) and hists[1]["loss"] == hists[0]["loss"]
    assert np.array_equal(_flat(nets[1]), _flat(nets[0]))


@pytest.mark.parametrize("scale", [2.0 ** 1020, 2.0 ** -1070], ids=["near-max", "subnormal"])
def test_sample_weights_near_the_ends_of_float64_train_and_report_as_their_ratios(scale):
    """The same in a float64 network, history included: the history weighs each batch's loss by its
    weight sum, which was summed as given, in float64, and overflowed for weights near float64's
    largest number: the epoch's loss was inf / inf = NaN while the parameters trained right."""
    rng = np.random.default_rng(11)
    X, Y = rng.standard_normal((24, 6)), rng.integers(0, 3, 24)
    w = rng.integers(1, 4, 24).astype(np.float64)
    nets = [gpubp.MLP([6, 5, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0) for _ in range(2)]
    hists = [net.fit(X, Y, epochs=2, batch_size=12, optimizer=gpubp.optim.SGD(0.3), shuffle=False,
                     sample_weight=sw, progress=False) for net, sw in zip(nets, (w, w * scale))]
    assert np.all(np.isfinite(hists[1]["loss"])) and hists[1]["loss"] == hists[0]["loss"]
    assert np.array_equal(_flat(nets[1]), _flat(nets[0]))


@pytest.mark.parametrize("kw,words", [
    (dict(sample_weight=np.full(40, 1e39)), "sample_weight overflows float32"),
    (dict(sample_weight=np.full(40, 1e-46)), "all zero in float32"),
    (dict(class_weight={0: 1e39}), "the sample weights overflow"),
    (dict(class_weight={0: 10 ** 400}), r"class_weight\[0\]"),
    (dict(class_weight={0: 1e200}, sample_weight=np.full(40, 1e200)), "sample_weight times class_weight"),
])
def test_weights_beyond_the_networks_dtype_are_refused(kw, words):
    X, y = _data(12, n=40)
    net = gpubp.MLP([6, 4, 3], loss="cross_entropy", backend="numpy", seed=0)
    before = _flat(net)
    with pytest.raises(ValueError, match=words):
        net.fit(X, y, epochs=1, batch_size=8, progress=False, **kw)
    assert np.array_equal(_flat(net), before) and net.optimizer is None


def test_validation_split_needs_a_row_of_y_and_a_weight_per_sample():
    """The split cuts X, Y and sample_weight at the same row: a Y or sample_weight with more rows than
    X is refused, naming it, instead of its extra rows being dropped unnoticed."""
    X, y = _data(13, n=20)
    net = gpubp.MLP([6, 4, 3], loss="cross_entropy", backend="numpy", seed=0)
    before = _flat(net)
    for kw, words in [(dict(sample_weight=np.ones(25)), r"sample_weight has shape \(25,\); expected \(20,\)"),
                      (dict(sample_weight=1.0), r"sample_weight has shape \(\); expected \(20,\)"),
                      (dict(Y=np.concatenate([y, y])), "Y has 40 rows but X has 20 samples"),
                      (dict(Y=y[:18]), "Y has 18 rows but X has 20 samples"),
                      (dict(Y=1), "Y has no rows but X has 20 samples"),
                      (dict(X=X[0], Y=y[:1]), "of 1 samples leaves no validation")]:
        Xb, yb = kw.pop("X", X), kw.pop("Y", y)
        with pytest.raises(ValueError, match=words):
            net.fit(Xb, yb, epochs=1, validation_split=0.25, progress=False, **kw)
    assert np.array_equal(_flat(net), before) and net.optimizer is None

def test_class_weight_balanced_and_dict():
    X, y = _data(6)
    a = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    b = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    cw = {0: 2.0, 1: 0.5, 2: 1.0}
    a.fit(X, y, epochs=2, batch_size=32, class_weight=cw, progress=False, shuffle=False)
    b.fit(X, y, epochs=2, batch_size=32, sample_weight=np.array([cw[c] for c in y]), progress=False,
          shuffle=False)
    assert np.array_equal(_flat(a), _flat(b))
    counts = np.bincount(y, minlength=3)
    c = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    c.fit(X, y, epochs=2, batch_size=32, class_weight="balanced", progress=False, shuffle=False)
    d = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    d.fit(X, y, epochs=2, batch_size=32, sample_weight=(len(y) / (3 * counts))[y], progress=False, shuffle=False)
    assert np.array_equal(_flat(c), _flat(d))
    with pytest.raises(ValueError, match="cross_entropy"):
        gpubp.MLP([6, 1], loss="mse", backend="numpy").fit(X, y.astype(float), class_weight="balanced",
                                                          progress=False)


def test_standardize_is_part_of_the_network(tmp_path):
    X, y = _data(7)
    X = X * [1, 10, 100, 0.1, 5, 1] + [3, -2, 50, 0, 1, 1]
    mean, std = X.mean(0), X.std(0)
    a = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    a.fit(X, y, epochs=3, batch_size=20, standardize=True, progress=False)
    b = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    b.fit((X - mean) / std, y, epochs=3, batch_size=20, progress=False)
    assert np.allclose(_flat(a), _flat(b), rtol=1e-5, atol=1e-6)
    assert np.array_equal(a.predict(X), b.predict((X - mean) / std))
    assert np.allclose(a.predict_proba(X), b.predict_proba((X - mean) / std), atol=1e-6)
    assert a.evaluate(X, y)["loss"] == pytest.approx(b.evaluate((X - mean) / std, y)["loss"], rel=1e-5)
    np.testing.assert_allclose(a.standardization[0], mean)
    with pytest.raises(ValueError, match="std must be positive"):
        a.set_standardization(mean, np.zeros(6))


@pytest.mark.parametrize("one_hot", [False, True])
def test_class_weights_match_sklearn_with_a_class_of_one_sample_and_one_hot_targets(one_hot):
    """'balanced' gives each sample n_samples / (n_classes * count of its class), as scikit-learn's
    compute_sample_weight, a class of a single sample included; one-hot targets name their classes
    by their largest column, as labels do (the dict's weights too)."""
    from sklearn.utils.class_weight import compute_sample_weight

    y = np.array([1, 2, 0, 1, 1, 2, 1, 2, 1, 2])          # class 0 once
    Y = np.eye(3)[y] if one_hot else y
    net = gpubp.MLP([4, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    T = net._targets(Y, len(y))
    np.testing.assert_allclose(net._sample_weights(None, len(y), T, "balanced"),
                               compute_sample_weight("balanced", y), rtol=1e-12)
    cw = {0: 3.0, 1: 0.5, 2: 2.0}
    np.testing.assert_array_equal(net._sample_weights(None, len(y), T, cw), [cw[c] for c in y])


def test_all_zero_weights_are_refused_as_zero_and_an_absent_class_weighs_nothing_quietly():
    """Weights that are all 0 are refused as such (not as too small for the dtype, which is said only of
    positive weights that round to 0); 'balanced' with a class absent from the targets gives no
    warning (its weight, never used, is 0, not a division by its zero count)."""
    import warnings

    net = gpubp.MLP([4, 3], loss="cross_entropy", backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"^the sample weights are all zero$"):
        net._sample_weights(np.zeros(5), 5)
    with pytest.raises(ValueError, match=r"^the sample weights are all zero in float32"):
        net._sample_weights(np.full(5, 1e-46), 5)
    y = np.array([0, 2, 2, 0, 2])                        # class 1 absent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = net._sample_weights(None, 5, net._targets(y, 5), "balanced")
    np.testing.assert_allclose(w, [5 / 6, 5 / 9, 5 / 9, 5 / 6, 5 / 9])


def test_the_constant_feature_rule_matches_sklearn_near_its_threshold():
    """A column is constant (std 1) when var <= n eps var + (n eps mean)^2, n the number of rows, as
    scikit-learn's StandardScaler decides: 1e4 +- 2**-36 (var 2.1e-22, under (10 eps 1e4)^2 = 4.9e-22)
    is constant, 1 +- 1e-10 (var 1e-20, far above (10 eps)^2) is scaled."""
    from sklearn.preprocessing import StandardScaler

    from gpubp.network import _input_statistics

    s = np.tile([1.0, -1.0], 5)
    X = np.stack([1e4 + s * 2.0 ** -36, 1 + s * 1e-10, np.arange(10.0)], axis=1)
    mean, std = _input_statistics(X)
    sk = StandardScaler().fit(X)
    assert std[0] == 1.0 and std[1] < 1e-9
    np.testing.assert_allclose(std, sk.scale_, rtol=1e-6)
    np.testing.assert_allclose(mean, sk.mean_, rtol=1e-12)


def test_the_device_copies_of_a_standardisation_compute_x_minus_mean_over_std():
    """An input already on the device is standardised there, `(X - mean) * (1 / std)` in the network's
    dtype, from the copies `set_standardization` makes (the numpy backend's arrays stand in for the
    device's; the fake CUDA backend's forward computes nothing to compare)."""
    X, _ = _data(7)
    X = X * [1, 10, 100, 0.1, 5, 1] + [3, -2, 50, 0, 1, 1]
    mean, std = X.mean(0), X.std(0)
    net = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    net.set_standardization(mean, std)
    got = net._standardize_device(net.backend.asarray(X, net.dtype))
    np.testing.assert_allclose(got, (X - mean) / std, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", [1e-13, 1e-20])
def test_standardize_scales_a_feature_of_small_units_and_centres_only_constant_ones(scale):
    # a feature measured in small units (farads of picofarad capacitors) is not constant: it gets
    # its own std (spec: only a constant feature gets std 1), so the network sees it at unit scale
    X, _ = _data(21, n=50, d=3)
    X[:, 0] *= scale
    X[:, 1] = 1e8 + 0.0          # constant, at a large magnitude
    X[:, 2] = 0.0                # constant zero
    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    net.fit(X, X[:, :2] * 0, epochs=1, standardize=True, progress=False)
    mean, std = net.standardization
    np.testing.assert_allclose(std, [X[:, 0].std(), 1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(mean, X.mean(0), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_set_standardization_copies_and_refuses_what_the_dtype_cannot_hold(dtype):
    X = np.random.default_rng(14).standard_normal((5, 3))
    net = gpubp.MLP([3, 2], backend="numpy", seed=0, dtype=dtype)
    mean, std = np.zeros(3), np.ones(3)
    net.set_standardization(mean, std)
    out = net.forward(X).copy()
    mean[:], std[:] = 100.0, 7.0            # the caller's arrays change: the network must not
    assert np.array_equal(net.forward(X), out)
    assert np.array_equal(net.standardization[0], np.zeros(3)) and np.array_equal(net.standardization[1], np.ones(3))
    cases = [(np.zeros(3), np.full(3, 0.5 / float(np.finfo(dtype).max)), "1 / std overflows")]
    if dtype == "float32":                   # a float64 1e39 does not fit a float32 network
        cases.append((np.full(3, 1e39), np.ones(3), "mean overflows float32"))
    for m, s, words in cases:
        with pytest.raises(ValueError, match=words):
            net.set_standardization(m, s)
        assert np.array_equal(net.forward(X), out)   # the old standardisation stays


def test_standardize_keeps_the_variation_of_a_feature_with_a_large_offset():
    # 1e8 + [0, 4): float32's spacing at 1e8 is 8, so rounding X before standardising made the feature
    # one constant value and the network could not learn from it (accuracy 0.54, against 0.99 when the
    # user standardised in float64 first); the network standardises host inputs in float64
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 4, 400)
    X, y = np.c_[1e8 + t, rng.standard_normal(400)], (t > 2).astype(int)
    a = gpubp.MLP([2, 16, 2], loss="cross_entropy", backend="numpy", seed=0)
    a.fit(X, y, epochs=5, batch_size=32, standardize=True, progress=False)
    mean, std = X.mean(0), X.std(0)
    np.testing.assert_allclose(a.standardization[1], std, rtol=1e-12)
    b = gpubp.MLP([2, 16, 2], loss="cross_entropy", backend="numpy", seed=0)
    b.fit((X - mean) / std, y, epochs=5, batch_size=32, progress=False)
    assert np.allclose(_flat(a), _flat(b), rtol=1e-5, atol=1e-6)
    assert np.allclose(a.predict_proba(X), b.predict_proba((X - mean) / std), atol=1e-6)
    assert a.evaluate(X, y)["accuracy"] > 0.8
    step = a.capture_train_step(X[:32], y[:32], "adam", check_inputs=False)   # the unchecked path alike
    c = gpubp.MLP([2, 16, 2], loss="cross_entropy", backend="numpy", seed=0)
    c.set_params(a.get_params())
    c.set_standardization(mean, std)
    assert float(step(X[32:64], y[32:64])[0]) == pytest.approx(c.evaluate(X[32:64], y[32:64])["loss"], rel=1e-2)


def test_the_standardisation_a_network_reports_cannot_be_changed_behind_its_back(tmp_path):
    # net.standardization is what save writes; the inputs use a copy on the backend: changing the
    # reported arrays in place made a saved network predict otherwise than the one that saved it
    X, y = _data(16, n=40)
    net = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", seed=0)
    net.fit(X * 5 + 2, y, epochs=1, standardize=True, progress=False)
    mean, std = net.standardization
    with pytest.raises(ValueError, match="read-only"):
        mean -= 1.0
    with pytest.raises(ValueError, match="read-only"):
        std[0] = 3.0
    net.save(tmp_path / "n.npz")
    back = gpubp.MLP.load(tmp_path / "n.npz", backend="numpy")
    assert np.array_equal(back.predict_proba(X), net.predict_proba(X))


def test_validation_split_holds_out_the_last_rows():
    X, y = _data(8, n=100)
    a = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    b = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    ha = a.fit(X, y, epochs=2, batch_size=16, validation_split=0.25, progress=False)
    hb = b.fit(X[:75], y[:75], epochs=2, batch_size=16, validation=(X[75:], y[75:]), progress=False)
    assert ha == hb
    with pytest.raises(ValueError, match="validation_split"):
        a.fit(X, y, validation_split=1.5, progress=False)


def test_validation_split_of_lists_holds_out_the_last_rows():
    """X and Y as nested lists (array-likes, as everywhere) split as the arrays do."""
    X, y = _data(8, n=40)
    a = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    b = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    ha = a.fit(X.tolist(), y.tolist(), epochs=1, batch_size=16, validation_split=0.25, progress=False)
    hb = b.fit(X[:30], y[:30], epochs=1, batch_size=16, validation=(X[30:], y[30:]), progress=False)
    assert ha == hb


def test_predict_keeps_the_target_shape():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((30, 3))
    net = gpubp.MLP([3, 4, 1], loss="mse", backend="numpy", seed=0)
    net.fit(X, X[:, 0], epochs=1, progress=False)
    assert net.predict(X).shape == (30,)
    net.fit(X, X[:, :1], epochs=1, progress=False)
    assert net.predict(X).shape == (30, 1)


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy", "poisson"])
def test_predict_keeps_the_target_shape_of_train_step_and_captured_steps(loss):
    # every training call records the targets' shape, as fit does (train_step used to leave it,
    # so predict gave (N, 1) after training on (N,) targets)
    rng = np.random.default_rng(9)
    X = rng.standard_normal((30, 3))
    y = (X[:, 0] > 0).astype(float)
    net = gpubp.MLP([3, 4, 1], loss=loss, backend="numpy", seed=0)
    assert net.predict(X).shape == (30, 1)        # never trained: one column per output
    net.train_step(X, y, "sgd")
    assert net.predict(X).shape == (30,)
    net.train_step(X, y[:, None], "sgd")
    assert net.predict(X).shape == (30, 1)
    step = net.capture_train_step(X, y, "sgd")
    assert net.predict(X).shape == (30,)
    step(X, y)
    with pytest.raises(ValueError):               # a refused call leaves the shape as it was
        net.train_step(X, np.ones((30, 2)), "sgd")
    assert net.predict(X).shape == (30,)


@pytest.mark.parametrize("init", ["torch", "xavier", "kaiming"])
def test_initialisations(init):
    net = gpubp.MLP([400, 300, 10], backend="numpy", dtype="float64", seed=1, init=init)
    (W1, b1), (W2, b2) = net.get_params()
    if init == "torch":
        assert np.abs(W1).max() <= 1 / 20 and np.abs(b1).max() <= 1 / 20 and abs(W1.std() - 1 / 20 / 3**0.5) < 1e-3
    elif init == "xavier":
        bound = (6 / 700) ** 0.5
        assert np.abs(W1).max() <= bound and abs(W1.std() - bound / 3**0.5) < 2e-3 and not b1.any()
    else:
        assert abs(W1.std() - (2 / 400) ** 0.5) < 2e-3 and abs(W1.mean()) < 1e-3 and not b2.any()
    again = gpubp.MLP([400, 300, 10], backend="numpy", dtype="float64", seed=1, init=init)
    assert np.array_equal(_flat(net), _flat(again))
    with pytest.raises(ValueError, match="init"):
        gpubp.MLP([2, 2], backend="numpy", init="orthogonal")


def test_reporter_lines_when_not_a_terminal():
    out = io.StringIO()
    net = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", seed=0)
    X, y = _data(10)
    loop_reporter = Reporter("auto", 1, stream=out)
    assert loop_reporter.mode == "lines"
    loop_reporter.begin(2, 3)
    loop_reporter.epoch(1, {"loss": [0.5], "accuracy": [0.7], "val_loss": [0.6], "val_accuracy": [0.65]})
    text = out.getvalue()
    assert text.count("\n") == 1 and "\r" not in text
    assert "train loss 0.5" in text and "val loss 0.6" in text and "val acc 0.65" in text
    assert Reporter("auto", 0, stream=out).mode == "silent"
    assert Reporter(False, 1, stream=out).mode == "silent"
    net.fit(X, y, epochs=2, verbose=0)


def test_verbose_2_writes_one_line_per_epoch_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert Reporter("auto", 1, stream=Terminal()).mode == "bar"
    assert Reporter("auto", 2, stream=Terminal()).mode == "lines"     # it drew the bar as verbose=1 did
    assert Reporter(True, 2, stream=Terminal()).mode == "bar"
    assert Reporter("auto", 2, stream=io.StringIO()).mode == "lines"


def test_progress_false_as_a_numpy_bool_is_silent_and_other_falsy_values_are_refused(capsys):
    X, y = _data(5, n=20)
    net = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", seed=0)
    net.fit(X, y, epochs=2, progress=np.False_)
    assert capsys.readouterr().err == ""
    before = _flat(net)
    for bad in (0, 1, None, "no"):      # 0 == False, but it was taken for "auto" and wrote every epoch
        with pytest.raises(ValueError, match="progress must be 'auto', True or False"):
            net.fit(X, y, epochs=1, progress=bad)
    assert np.array_equal(_flat(net), before) and capsys.readouterr().err == ""


def test_fit_writes_one_line_per_epoch_to_a_log(capsys):
    net = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", seed=0)
    net.fit(*_data(11), epochs=3, batch_size=20)
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "\r" not in err and "epoch 3/3" in err


def test_grad_norms_are_recorded_and_vanishing_gradients_warned_once():
    import warnings

    from gpubp.gradflow import GradientFlowWarning

    rng = np.random.default_rng(12)
    X = rng.standard_normal((256, 8))
    y = (X[:, 0] > 0).astype(int)
    net = gpubp.MLP([8] + [16] * 10 + [2], activation="sigmoid", loss="cross_entropy", backend="numpy", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = net.fit(X, y, epochs=3, batch_size=64, grad_norms=True, verbose=0)
    assert len(hist["grad_norms"]) == len(hist["delta_norms"]) == len(hist["update_ratios"]) == 3
    assert all(len(e) == 11 for e in hist["grad_norms"])
    # the last entry is the last step's gradient, which the network still holds
    dW = [np.linalg.norm(net.backend.to_numpy(W)) for W, _ in net._dWb]
    np.testing.assert_allclose(hist["grad_norms"][-1], dW, rtol=1e-5)   # float32 sums
    flow = [w for w in caught if issubclass(w.category, GradientFlowWarning)]
    layers = [str(w.message).split(":")[0] for w in flow]
    assert layers and "layer 1" in layers and len(layers) == len(set(layers))    # once per layer and kind
    # relu and He initialisation: no warning
    net = gpubp.MLP([8] + [16] * 10 + [2], activation="relu", loss="cross_entropy", backend="numpy", seed=0,
                    init="kaiming")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.fit(X, y, epochs=2, batch_size=64, grad_norms=True, verbose=0)
    assert not [w for w in caught if issubclass(w.category, GradientFlowWarning)]


def test_set_params_keeps_the_optimizers_state():
    X, y = _data(13, n=64)
    a = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    b = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    for net in (a, b):
        net.fit(X, y, epochs=2, batch_size=16, optimizer="adam", lr=0.01, progress=False)
    moments = {k: v.copy() for k, v in a.optimizer.state.items()}
    a.set_params(a.get_params())     # same values: the state and the next steps are unchanged
    assert a.optimizer.t == 8 and all(np.array_equal(a.optimizer.state[k], moments[k]) for k in moments)
    for net in (a, b):
        net.train_step(X, y, "adam")
    assert np.array_equal(_flat(a), _flat(b))


def test_validation_figures_are_unweighted():
    X, y = _data(14, n=100)
    w = np.random.default_rng(14).uniform(0.1, 5.0, 100)
    net = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    hist = net.fit(X, y, epochs=1, batch_size=100, optimizer=gpubp.optim.SGD(1e-300), sample_weight=w,
                   class_weight="balanced", validation_split=0.3, progress=False)
    ev = net.evaluate(X[70:], y[70:])
    assert hist["val_loss"] == [ev["loss"]] and hist["val_accuracy"] == [ev["accuracy"]]
    assert hist["accuracy"] == [net.evaluate(X[:70], y[:70])["accuracy"]]
    # the training loss is the weighted one (a rate of 1e-300 leaves the parameters as they were)
    z = net.forward(X[:70])
    z = z - z.max(axis=1, keepdims=True)
    per_row = np.log(np.exp(z).sum(axis=1)) - z[np.arange(70), y[:70]]
    counts = np.bincount(y[:70], minlength=3)
    cw = w[:70] * (70 / (3 * counts))[y[:70]]
    assert abs(hist["loss"][0] - (cw * per_row).sum() / cw.sum()) < 1e-12


def test_validation_split_takes_numpy_fractions():
    X, y = _data(9, n=40)
    runs = []
    for split in (0.25, np.float32(0.25), np.float64(0.25)):
        net = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", seed=0)
        runs.append(net.fit(X, y, epochs=1, validation_split=split, progress=False))
    assert runs[0] == runs[1] == runs[2]
    for bad in (np.True_, np.float32(1.0), "0.2", 0, 0.0, 1.0, -0.25, np.nan):
        with pytest.raises(ValueError, match="validation_split must be a fraction"):
            net.fit(X, y, epochs=1, validation_split=bad, progress=False)
    # as many rows as inputs (6 x 6) is 6 samples, not one: 3 held out
    hist = net.fit(X[:6], y[:6], epochs=1, validation_split=0.5, progress=False)
    assert hist["val_loss"] == [net.evaluate(X[3:6], y[3:6])["loss"]]
    # floor(n * fraction) rows held out: at least one (4 * 0.25), and at least one left to train on
    hist = net.fit(X[:4], y[:4], epochs=1, validation_split=0.25, progress=False)
    assert hist["val_loss"] == [net.evaluate(X[3:4], y[3:4])["loss"]]
    for n, split in ((3, 0.3), (1, 0.5)):
        with pytest.raises(ValueError, match=f"validation_split={split} of {n} samples leaves no validation"):
            net.fit(X[:n], y[:n], epochs=1, validation_split=split, progress=False)


def test_validation_split_rows_and_what_the_training_rows_set():
    X, y = _data(15, n=10)
    X = X * 3 + 1
    net = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    hist = net.fit(X, y, epochs=1, batch_size=4, validation_split=0.25, standardize=True, progress=False)
    # floor(10 * 0.25) = 2 rows held out: the standardisation is the other 8 rows'
    mean, std = net.standardization
    assert np.allclose(mean, X[:8].mean(axis=0), rtol=1e-12) and np.allclose(std, X[:8].std(axis=0), rtol=1e-12)
    assert hist["val_loss"] == [net.evaluate(X[8:], y[8:])["loss"]]


class _Net:
    """What EarlyStopping touches of a network: stop_training and its parameters (one number here)."""

    def __init__(self):
        self.stop_training, self.params, self.restored = False, 0, []

    def get_params(self):
        return self.params

    def set_params(self, p):
        self.restored.append(p)


@pytest.mark.parametrize("kwargs, values, best_epoch, stopped", [
    # an epoch improves when it beats the best by MORE than min_delta (Keras's `value - min_delta < best`)
    (dict(monitor="loss", patience=1, min_delta=0.25), [1.0, 0.75, 0.5, 0.4, 0.9], 3, 5),
    (dict(monitor="loss", patience=0), [1.0, 0.5, 0.5], 2, 3),                         # equal is no improvement
    (dict(monitor="loss", patience=2), [3.0, 2.0, 2.5, 2.1, 1.9, 2.0, 2.0, 2.0], 5, 8),  # patience + 1 in a row
    (dict(monitor="loss", patience=2), [3.0, 2.0, 2.5, 2.1], 2, 0),                      # not yet: no stop
    (dict(monitor="val_accuracy", patience=1, min_delta=0.25), [0.25, 0.5, 0.75, 0.5], 3, 0),   # auto: max
    (dict(monitor="val_accuracy", patience=0, min_delta=0.25), [0.25, 0.5], 1, 2),
    (dict(monitor="val_loss", mode="max", patience=0), [1.0, 2.0, 2.0], 2, 3),
    (dict(monitor="accuracy", mode="min", patience=0), [0.5, 0.25, 0.5], 2, 3),
    # a first figure that is not finite (an overflowing validation loss) is no improvement on inf: it counts
    (dict(monitor="val_loss", patience=1), [np.inf, 1.0, 2.0, 2.0], 2, 4),
    (dict(monitor="val_loss", patience=1), [np.inf, np.inf], 0, 2),
])
def test_early_stopping_counts_as_documented(kwargs, values, best_epoch, stopped):
    """EarlyStopping's rule on scripted figures (docs: counted as scikit-learn's n_iter_no_change,
    `patience + 1` epochs in a row without improvement stop; mode "auto" is max for accuracies);
    restore_best puts back the best epoch's parameters at the end unless the best is the last."""
    es = EarlyStopping(**kwargs)
    net, logs = _Net(), {"loss": [], kwargs["monitor"]: []}
    es.on_train_begin(net, logs)
    assert es.stopped_epoch == es.best_epoch == 0
    for epoch, v in enumerate(values, start=1):
        assert not net.stop_training
        for key in logs:
            logs[key].append(v)
        net.params = epoch
        es.on_epoch_end(net, epoch, logs)
    assert net.stop_training == (stopped != 0) and es.stopped_epoch == stopped
    assert es.best_epoch == best_epoch and es.best == (values[best_epoch - 1] if best_epoch else np.inf)
    es.on_train_end(net, logs)
    assert net.restored == ([best_epoch] if best_epoch not in (0, len(values)) else [])
    es = EarlyStopping(**kwargs, restore_best=False)
    net = _Net()
    es.on_train_begin(net, logs)
    for epoch, v in enumerate(values, start=1):
        es.on_epoch_end(net, epoch, {k: l[:epoch] for k, l in logs.items()})
    es.on_train_end(net, logs)
    assert net.restored == [] and es.best_epoch == best_epoch


def test_early_stopping_and_lambda_callback_defaults_and_refusals():
    """The defaults the signature documents (monitor val_loss, patience 5, min_delta 0, mode auto:
    min for a loss, restore_best); a monitor that is not a name and a hook that is not callable are
    refused when the callback is made."""
    es = EarlyStopping()
    assert (es.monitor, es.patience, es.min_delta, es.mode, es.restore_best) == ("val_loss", 5, 0.0, "min", True)
    for monitor in (None, ["val_loss"], 3):
        with pytest.raises(TypeError, match="monitor must name a history key"):
            EarlyStopping(monitor=monitor)
    for hook in ("on_train_begin", "on_epoch_end", "on_train_end"):
        with pytest.raises(TypeError, match=f"{hook} must be callable"):
            LambdaCallback(**{hook: 3})
        assert not hasattr(LambdaCallback(), hook)
        assert getattr(LambdaCallback(**{hook: print}), hook) is print


def test_class_weight_keys_and_values_at_their_bounds():
    """class_weight's keys are class indices in [0, n_out) (the last, n_out - 1, taken; n_out, -1, a bool
    or a float refused) and its values finite numbers >= 0 (0 taken: that class's rows are dropped,
    as sample_weight 0 drops a row); classes left out weigh 1; a sample weight of 0 is taken."""
    X, y = _data(14, n=30)
    y[:3] = [0, 1, 2]
    net = gpubp.MLP([6, 5, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    before = _flat(net)
    for cw, words in [({3: 1.0}, r"keys must be class indices in \[0, 3\), got 3"), ({-1: 1.0}, "got -1"),
                      ({True: 1.0}, "got True"), ({1.0: 1.0}, "got 1.0"), ({"0": 1.0}, "got '0'"),
                      ({2: -0.5}, r"class_weight\[2\] must be a finite non-negative number"),
                      ({2: np.nan}, r"class_weight\[2\]"), ({2: np.inf}, r"class_weight\[2\]"),
                      ({0: 0, 1: 0, 2: 0}, "the sample weights are all zero"),
                      ("Balanced", "class_weight must be a dict or 'balanced'")]:
        with pytest.raises(ValueError, match=words):
            net.fit(X, y, epochs=1, class_weight=cw, progress=False)
    with pytest.raises(TypeError, match="class_weight must be a dict"):
        net.fit(X, y, epochs=1, class_weight=[1.0, 2.0, 3.0], progress=False)
    with pytest.raises(ValueError, match="sample_weight must hold finite, non-negative numbers"):
        net.fit(X, y, epochs=1, sample_weight=np.r_[-1e-300, np.ones(29)], progress=False)
    for w in (np.ones(31), np.ones((30, 1)), np.ones(29)):
        with pytest.raises(ValueError, match=rf"sample_weight has shape \({w.shape[0]},.*; expected \(30,\)"):
            net.fit(X, y, epochs=1, sample_weight=w, progress=False)
    bce = gpubp.MLP([6, 5, 1], loss="binary_cross_entropy", backend="numpy", seed=0)
    with pytest.raises(ValueError, match="class_weight applies to cross_entropy networks"):
        bce.fit(X, (y > 0).astype(float), epochs=1, class_weight={0: 1.0}, progress=False)
    assert bce.optimizer is None
    assert np.array_equal(_flat(net), before) and net.optimizer is None
    kept = y != 2
    runs = []
    for kw in (dict(class_weight={np.int64(2): 0.0, 0: 1.0}), dict(sample_weight=kept.astype(float)),
               dict(X=X[kept], Y=y[kept])):
        n = gpubp.MLP([6, 5, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
        n.fit(kw.pop("X", X), kw.pop("Y", y), epochs=1, batch_size=64, optimizer="sgd", lr=0.5,
              shuffle=False, progress=False, **kw)
        runs.append(_flat(n))
    np.testing.assert_allclose(runs[0], runs[2], rtol=1e-13, atol=1e-15)
    assert np.array_equal(runs[0], runs[1])


def test_progress_bar_counts_every_step_and_is_closed(capsys):
    """progress=True: a bar of epochs x steps per epoch that advances once per step (6/6 at the end of
    2 epochs of 3 batches), closed when fit returns (its last line ended); progress="auto" on a
    stream that is not a terminal writes one line per epoch instead."""
    pytest.importorskip("tqdm")
    X, y = _data(16, n=30)
    net = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", seed=0)
    net.fit(X, y, epochs=2, batch_size=10, progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and err.endswith("\n")
    stop = LambdaCallback(on_epoch_end=lambda n, e, l: 1 / 0)
    with pytest.raises(ZeroDivisionError) as info:      # closed when fit raises too (info keeps its frames)
        net.fit(X, y, epochs=2, batch_size=10, progress=True, callbacks=[stop])
    err = capsys.readouterr().err
    assert "3/6" in err and err.endswith("\n") and info.traceback
    net.fit(X, y, epochs=2, batch_size=10, progress="auto")
    lines = capsys.readouterr().err.splitlines()
    assert [l.split("  ")[0] for l in lines] == ["epoch 1/2", "epoch 2/2"] and "train loss" in lines[0]


def test_fit_on_a_terminal_draws_a_bar_by_default_and_lines_at_verbose_2(monkeypatch):
    """progress="auto" and verbose=1 (the defaults) draw the bar on a terminal; verbose=2 writes one line
    per epoch there (as Keras's)."""
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    X, y = _data(17, n=20)
    net = gpubp.MLP([6, 3], loss="cross_entropy", backend="numpy", seed=0)
    for kw, bar in ((dict(), True), (dict(verbose=2), False)):
        err = Terminal()
        monkeypatch.setattr("sys.stderr", err)
        net.fit(X, y, epochs=2, batch_size=10, **kw)
        text = err.getvalue()
        assert ("4/4" in text) == bar and ("epoch 2/2" in text) == (not bar), (kw, text)
