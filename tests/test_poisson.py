"""The `poisson` loss (docs/spec.md, "Losses"): half the Poisson deviance on log-rate outputs, its
delta, the network's rates, and the places that refuse it (classification helpers, `gpubp train`)."""

import math

import numpy as np
import pytest

import gpubp
from gpubp import data
from gpubp.backends.numpy_backend import NumpyBackend

NP = NumpyBackend()


def deviance_by_hand(z, y):
    """Half the Poisson deviance e^z - y - y (z - log y) of one element, in Python floats."""
    return math.exp(z) - y - (y * (z - math.log(y)) if y > 0 else 0.0)


def run(A, Y, dtype=np.float64):
    A, Y = np.asarray(A, dtype), np.asarray(Y, dtype)
    loss, delta = np.empty(1, dtype), np.empty_like(A)
    NP.loss_and_delta(A, None, Y, "poisson", "identity", loss, delta)
    value_only = np.empty(1, dtype)
    NP.loss_and_delta(A, None, Y, "poisson", "identity", value_only)
    assert value_only.tobytes() == loss.tobytes()
    return loss[0], delta


def test_value_and_delta_by_hand():
    A = [[0.3, -1.2, 2.0], [1.1, 0.0, -0.4]]
    Y = [[0.0, 2.0, 7.0], [1.0, 0.5, 0.0]]
    loss, delta = run(A, Y)
    by_hand = np.mean([deviance_by_hand(z, y) for zr, yr in zip(A, Y) for z, y in zip(zr, yr)])
    assert loss == pytest.approx(by_hand, rel=1e-14)
    np.testing.assert_allclose(delta, (np.exp(A) - np.array(Y)) / 6, rtol=1e-14)


def test_value_is_sklearns_poisson_loss_over_the_outputs():
    sk_base = pytest.importorskip("sklearn.neural_network._base")
    rng = np.random.default_rng(4)
    A = rng.normal(size=(13, 4))
    Y = rng.poisson(2.0, (13, 4)).astype(float)
    assert run(A, Y)[0] == pytest.approx(sk_base.poisson_loss(Y, np.exp(A)) / 4, rel=1e-13)


@pytest.mark.parametrize("d", [1e-3, 1e-6, 1e-9, -1e-7])
@pytest.mark.parametrize("y", [1.0, 3.0, 1e6])
def test_no_cancellation_near_the_optimum(y, d):
    """At e^z = y e^d the deviance is y (d^2/2 + d^3/6 + ...): tiny beside the terms e^z, y, y z it is
    made of.  The naive e^z - y - y z + y log y in double loses it entirely at d = 1e-9 (its error
    about 1e-16 y |log y|, against a value 5e-19 y); gpubp's stays within rounding of the series."""
    z = math.log(y) + d
    loss, delta = run([[z]], [[y]])
    series = y * (d * d / 2 + d ** 3 / 6 + d ** 4 / 24)
    assert loss == pytest.approx(series, rel=1e-6)
    assert delta[0, 0] == pytest.approx(y * math.expm1(d), rel=1e-6)


def test_float32_rates_that_overflow_make_the_loss_inf_with_the_delta():
    """e^89 overflows float32: the delta e^z - y is inf, and so is the loss (not the finite double
    value of the deviance), so the training loop stops on the step instead of applying an inf
    gradient under a finite loss.  e^88 is finite: both are finite.  In float64 e^89 is finite."""
    loss, delta = run([[89.0, 0.0]], [[1.0, 1.0]], np.float32)
    assert math.isinf(loss) and loss > 0 and np.isinf(delta[0, 0])
    loss, delta = run([[88.0, 0.0]], [[1.0, 1.0]], np.float32)
    assert math.isfinite(loss) and np.isfinite(delta).all()
    assert loss == pytest.approx((deviance_by_hand(88.0, 1.0) + deviance_by_hand(0.0, 1.0)) / 2, rel=1e-6)
    loss, delta = run([[89.0]], [[1.0]], np.float64)
    assert loss == pytest.approx(deviance_by_hand(89.0, 1.0), rel=1e-14) and np.isfinite(delta).all()
    with pytest.raises(FloatingPointError):
        net = gpubp.MLP([1, 1], loss="poisson", backend="numpy", seed=0)
        net.set_params([(np.array([[1.0]]), np.array([95.0]))])
        net.fit(np.zeros((4, 1)), np.ones(4), epochs=1, progress=False, optimizer=gpubp.optim.SGD(0.1))


def test_the_network_outputs_log_rates_and_predicts_rates():
    net = gpubp.MLP([3, 5, 2], loss="poisson", backend="numpy", dtype="float64", seed=0)
    X = np.random.default_rng(1).normal(size=(7, 3))
    z = net.backend.to_numpy(net.forward(X))
    np.testing.assert_array_equal(net.predict(X), np.exp(z))
    assert set(net.evaluate(X, np.ones((7, 2)))) == {"loss"}          # no accuracy: not a classifier
    with pytest.raises(ValueError, match="predict_proba needs a cross-entropy loss"):
        net.predict_proba(X)
    one = gpubp.MLP([3, 1], loss="poisson", backend="numpy", seed=0)
    one.fit(X, np.arange(7.0), epochs=1, progress=False)
    assert one.predict(X).shape == (7,) and (one.predict(X) > 0).all()


def test_training_learns_rates_that_depend_on_the_input():
    """Counts drawn with log-rate 0.8 x0 - 0.5 x1: the network's deviance ends well under that of the
    best constant rate (the mean count), and its rates track the true ones."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 2))
    rate = np.exp(0.8 * X[:, 0] - 0.5 * X[:, 1])
    y = rng.poisson(rate).astype(float)
    net = gpubp.MLP([2, 16, 1], activation="tanh", loss="poisson", backend="numpy", dtype="float64", seed=0)
    net.fit(X, y, epochs=30, batch_size=64, optimizer=gpubp.optim.Adam(0.01), progress=False)
    constant = np.mean([deviance_by_hand(math.log(y.mean()), v) for v in y])
    assert net.evaluate(X, y)["loss"] < 0.8 * constant
    assert np.corrcoef(net.predict(X), rate)[0, 1] > 0.95


def test_negative_or_missing_targets_are_refused_and_nothing_changes():
    net = gpubp.MLP([2, 3, 1], loss="poisson", backend="numpy", seed=0)
    before = net.get_params()
    X = np.ones((3, 2))
    for bad, words in (([1.0, -0.5, 2.0], "poisson targets are counts or rates and must be non-negative"),
                       ([1.0, np.nan, 2.0], "NaN")):
        with pytest.raises(ValueError, match=words):
            net.fit(X, bad, epochs=1, progress=False)
        with pytest.raises(ValueError, match=words):
            net.loss_and_grads(X, bad)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(before, net.get_params()))
    net.loss_and_grads(X, [0.0, 0.0, 5.0])              # zeros are counts


def test_an_output_activation_is_refused_as_for_the_logit_losses(tmp_path):
    with pytest.raises(ValueError, match="loss 'poisson' works on log-rates \\(the exp is fused into it\\): "
                                         "output_activation must be 'identity', got 'relu'"):
        gpubp.MLP([2, 3], loss="poisson", output_activation="relu", backend="numpy")
    net = gpubp.MLP([2, 3], loss="poisson", backend="numpy", seed=0)
    path = tmp_path / "p.npz"
    net.save(path)
    back = gpubp.MLP.load(path, backend="numpy")
    X = np.random.default_rng(0).normal(size=(4, 2))
    assert back.loss == "poisson" and np.array_equal(back.predict(X), net.predict(X))


def test_the_class_label_helpers_refuse_it():
    for call in (lambda: data.output_sizes("poisson", 3), lambda: data.targets_for(np.array([0, 1]), "poisson", 2),
                 lambda: data.labels_from_outputs(np.zeros((2, 2)), "poisson")):
        with pytest.raises(ValueError, match="'poisson' is a regression loss: class labels are targets of mse, "
                                             "half_sse, cross_entropy, binary_cross_entropy"):
            call()


def test_gpubp_train_offers_the_classification_losses_only(capsys):
    from gpubp.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--loss", "poisson", "--backend", "numpy"])
    assert e.value.code == 2 and "invalid choice: 'poisson'" in capsys.readouterr().err
