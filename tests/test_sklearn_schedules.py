"""scikit-learn's SGD settings in gpubp.sklearn: Nesterov momentum (`nesterovs_momentum`, on by default as
in scikit-learn), the `invscaling` and `adaptive` learning rates (`learning_rate`, `power_t`), and the
parameters accepted for the interface's sake (`max_fun`) and the regressor's `loss`, side by side with
scikit-learn's MLPs."""

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from support.sklearn_parity import assert_same_run, fit_quietly, parity_cases, sgd_settings  # noqa: E402


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _pair(case, **over):
    X, cases = parity_cases()
    Sk, G, y = cases[case]
    kw = sgd_settings(**over)
    return X, y, Sk(**kw), G(**kw, backend="numpy", dtype="float64")


# ---------------------------------------------------------------- the schedules, as scikit-learn's
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("case", ["multiclass", "multilabel", "regression"])
@pytest.mark.parametrize("power_t", [0.5, 0.25])
def test_invscaling_matches_sklearn(case, nesterov, power_t):
    """After each epoch the rate is learning_rate_init / (samples seen + 1) ** power_t.  scikit-learn's
    velocity holds steps, gpubp's (PyTorch's) gradients: without rescaling gpubp's at each change the
    weights would drift from scikit-learn's from the second epoch on.  Multilabel: gpubp's loss is
    1 / n_outputs of scikit-learn's, the rate n_outputs times larger."""
    X, y, sk, g = _pair(case, learning_rate="invscaling", power_t=power_t, nesterovs_momentum=nesterov)
    fit_quietly(sk, X, y)
    fit_quietly(g, X, y)
    assert_same_run(sk, g)
    assert g._sgd_lr == pytest.approx(sk._optimizer.learning_rate, rel=1e-15)
    assert g._sgd_lr == pytest.approx(0.05 / (12 * 40 + 1) ** power_t, rel=1e-15)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("case", ["multiclass", "binary", "regression"])
def test_adaptive_divides_the_rate_by_5_then_stops_below_1e_6_as_sklearn(case, nesterov):
    """tol 10 never counts an epoch as an improvement: each n_iter_no_change + 1 epochs the rate is
    divided by 5 (and the count starts again), until a rate at or below 1e-6 stops the training."""
    X, y, sk, g = _pair(case, learning_rate="adaptive", tol=10.0, n_iter_no_change=1, max_iter=100,
                        nesterovs_momentum=nesterov)
    sk.fit(X, y)
    g.fit(X, y)
    assert_same_run(sk, g)
    # the first epoch sets best_loss_ (no count); then every 2 epochs a cut (epochs 3, 5, ..., 15), until
    # 0.05 / 5**7 = 6.4e-7, the first rate at or below 1e-6, stops the training at epoch 17
    assert g.n_iter_ == 17 and g._sgd_lr == pytest.approx(0.05 / 5 ** 7)


@pytest.mark.parametrize("lr, epochs", [(1e-6, 3), (0.025, 17)])
def test_adaptive_stops_at_a_rate_of_1e_6_and_cuts_above_it(lr, epochs):
    """A rate of exactly 1e-6 stops at the first trigger; 1.6e-6 (0.025 / 5**6) is cut once more."""
    X, y, sk, g = _pair("multiclass", learning_rate="adaptive", learning_rate_init=lr, tol=10.0,
                        n_iter_no_change=1, max_iter=100)
    sk.fit(X, y)
    g.fit(X, y)
    assert_same_run(sk, g)
    assert g.n_iter_ == epochs


def test_adaptive_with_early_stopping_cuts_on_the_validation_score_as_sklearn():
    X, y, sk, g = _pair("multiclass", learning_rate="adaptive", early_stopping=True, validation_fraction=0.25,
                        tol=0.5, n_iter_no_change=2, max_iter=60)
    sk.fit(X, y)
    g.fit(X, y)
    assert_same_run(sk, g)
    np.testing.assert_allclose(g.validation_scores_, sk.validation_scores_, rtol=1e-12)
    assert g._sgd_lr == pytest.approx(sk._optimizer.learning_rate, rel=1e-15) and g.n_iter_ < 60


def test_a_constant_rate_never_changes_and_adam_ignores_the_schedule():
    """scikit-learn's Adam has no schedule (learning_rate applies to sgd only): invscaling with Adam trains
    exactly as constant does."""
    X, cases = parity_cases()
    _, G, y = cases["multiclass"]
    fits = [fit_quietly(G(**sgd_settings(solver="adam", learning_rate=lr), backend="numpy", dtype="float64"), X, y)
            for lr in ("constant", "invscaling", "adaptive")]
    for other in fits[1:]:
        for a, b in zip(fits[0].coefs_, other.coefs_):
            assert np.array_equal(a, b)
    g = fit_quietly(G(**sgd_settings(), backend="numpy", dtype="float64"), X, y)
    assert g._sgd_lr == 0.05 and g.net_.optimizer.lr == 0.05


@pytest.mark.parametrize("schedule", ["invscaling", "adaptive"])
def test_partial_fit_carries_the_rate_on_as_sklearn(schedule):
    """partial_fit keeps the optimizer, its schedule and its rate from call to call; each call is one
    epoch, and an adaptive cut happens within a call as in scikit-learn's."""
    X, y, sk, g = _pair("multiclass", learning_rate=schedule, tol=10.0, n_iter_no_change=1)
    for _ in range(7):
        for est in (sk, g):
            est.partial_fit(X, y, classes=[0, 1, 2])
    assert_same_run(sk, g)
    assert g._sgd_lr == pytest.approx(sk._optimizer.learning_rate, rel=1e-15) and g._sgd_lr < 0.05


def test_a_warm_start_starts_the_rate_again_but_not_the_sample_count():
    """A warm-started fit makes a fresh optimizer (rate learning_rate_init) while t_ goes on, so invscaling's
    rates continue from the samples already seen, as in scikit-learn."""
    X, y, sk, g = _pair("regression", learning_rate="invscaling", warm_start=True, max_iter=4)
    for _ in range(3):
        fit_quietly(sk, X, y)
        fit_quietly(g, X, y)
    assert_same_run(sk, g)


def test_the_schedule_is_the_optimizers_until_the_next_fit():
    """set_params(learning_rate=...) between partial_fit calls changes nothing until a fit makes a new
    optimizer (scikit-learn's optimizer keeps the schedule it was made with)."""
    X, y, sk, g = _pair("multiclass", learning_rate="invscaling")
    for est in (sk, g):
        est.partial_fit(X, y, classes=[0, 1, 2])
        est.set_params(learning_rate="constant", power_t=3.0)
        est.partial_fit(X, y)
    assert_same_run(sk, g)
    assert g._sgd_lr == pytest.approx(0.05 / 81 ** 0.5)


def test_verbose_reports_the_cuts_and_the_stop_as_sklearn(capsys):
    X, y, sk, g = _pair("multiclass", learning_rate="adaptive", tol=10.0, n_iter_no_change=1, max_iter=100,
                        verbose=True)
    sk.fit(X, y)
    theirs = capsys.readouterr().out.splitlines()
    g.fit(X, y)
    ours = capsys.readouterr().out.splitlines()
    pick = lambda lines: [s for s in lines if "did not improve" in s]   # noqa: E731
    assert pick(ours) == pick(theirs) and len(pick(ours)) == 8
    assert pick(ours)[0].endswith("Setting learning rate to 0.010000")
    assert pick(ours)[-1].endswith("Learning rate too small. Stopping.")


def test_invscaling_with_power_t_0_is_a_constant_rate():
    X, y, sk, g = _pair("multiclass", learning_rate="invscaling", power_t=0.0)
    fit_quietly(sk, X, y)
    fit_quietly(g, X, y)
    assert_same_run(sk, g)
    assert g._sgd_lr == 0.05


def test_a_rate_that_invscaling_would_take_below_the_dtypes_range_is_refused_before_training():
    X, y, _, g = _pair("multiclass", learning_rate="invscaling", power_t=40.0)
    g.set_params(dtype="float32")
    with pytest.raises(ValueError, match="below the smallest normal float32 number: lower power_t or max_iter"):
        g.fit(X, y)
    assert not hasattr(g, "net_")
    g.set_params(power_t=5.0)          # 0.05 / 481**5 = 1.9e-15: trains
    fit_quietly(g, X, y)
    assert g._sgd_lr == pytest.approx(0.05 / 481 ** 5)


@pytest.mark.parametrize("power_t, ok", [(22.65, True), (22.8, False)])
def test_the_range_check_is_on_the_rate_after_the_last_epoch(power_t, ok):
    """One epoch of 40 samples ends at 0.05 / 41**power_t: 2.1e-38 for 22.65 (above float32's smallest normal,
    1.18e-38: trains), 6.9e-39 for 22.8 (refused)."""
    X, y, _, g = _pair("multiclass", learning_rate="invscaling", power_t=power_t, max_iter=1)
    g.set_params(dtype="float32")
    if ok:
        fit_quietly(g, X, y)
        assert g._sgd_lr == pytest.approx(0.05 / 41 ** power_t)
    else:
        with pytest.raises(ValueError, match="after 40 samples"):
            g.fit(X, y)


@pytest.mark.parametrize("over", [dict(solver="sgd", learning_rate="constant"),
                                  dict(solver="sgd", learning_rate="adaptive"),
                                  dict(solver="adam", learning_rate="invscaling")])
def test_power_t_is_not_checked_against_the_range_where_no_schedule_reads_it(over):
    X, y, _, g = _pair("multiclass", power_t=40.0, max_iter=2, **over)
    g.set_params(dtype="float32")
    fit_quietly(g, X, y)
    assert g.n_iter_ == 2


def test_the_first_partial_fit_and_a_warm_start_check_the_range_with_the_estimators_power_t():
    """A first partial_fit and every fit make a new optimizer from the estimator's parameters: their bound
    uses them (a later partial_fit, the optimizer's own)."""
    X, y, _, g = _pair("multiclass", learning_rate="invscaling", power_t=23.0)
    g.set_params(dtype="float32")
    with pytest.raises(ValueError, match="after 40 samples"):
        g.partial_fit(X, y, classes=[0, 1, 2])
    X, y, _, g = _pair("multiclass", learning_rate="invscaling", warm_start=True, max_iter=1)
    g.set_params(dtype="float32")
    fit_quietly(g, X, y)
    g.set_params(power_t=23.0)
    with pytest.raises(ValueError, match="after 80 samples"):
        g.fit(X, y)
    assert g.t_ == 40


def test_partial_fit_refuses_the_call_that_would_take_invscalings_rate_out_of_range():
    """Each partial_fit is one epoch of 40 samples: with power_t 22 in float32 the rate after the first is
    0.05 / 41**22 = 1.7e-37 (a normal number), after the second 0.05 / 81**22 = 5e-44 (not): the second is
    refused, the estimator kept.  The bound uses the optimizer's power_t, not one set since."""
    X, y, _, g = _pair("multiclass", learning_rate="invscaling", power_t=22.0)
    g.set_params(dtype="float32")
    g.partial_fit(X, y, classes=[0, 1, 2])
    before = [c.copy() for c in g.coefs_]
    with pytest.raises(ValueError, match="after 80 samples, below the smallest normal float32"):
        g.partial_fit(X, y)
    assert g.t_ == 40 and all(np.array_equal(a, b) for a, b in zip(before, g.coefs_))
    X, y, _, g = _pair("multiclass", learning_rate="invscaling", power_t=0.5)
    g.set_params(dtype="float32")
    g.partial_fit(X, y, classes=[0, 1, 2])
    g.set_params(power_t=40.0)         # the optimizer's schedule keeps 0.5 until the next fit
    g.partial_fit(X, y)
    assert g._sgd_lr == pytest.approx(0.05 / 81 ** 0.5) and g.t_ == 80


def test_the_range_is_checked_on_the_rate_the_network_trains_with():
    """Multilabel on 3 outputs: gpubp's loss is a third of scikit-learn's, its rate 3 times scikit-learn's.
    With power_t 22.7 the rate after 40 samples is 0.05 / 41**22.7 = 5.6e-39 on scikit-learn's scale (below
    float32's smallest normal, 1.18e-38) and 1.7e-38 on the network's: it trains."""
    X, y, _, g = _pair("multilabel", learning_rate="invscaling", power_t=22.7, max_iter=1)
    g.set_params(dtype="float32")
    fit_quietly(g, X, y)
    assert g.net_.optimizer.lr == pytest.approx(3 * 0.05 / 41 ** 22.7)


# ---------------------------------------------------------------- Nesterov momentum
def test_nesterov_is_the_default_and_trains_otherwise_than_classical_momentum():
    X, cases = parity_cases()
    _, G, y = cases["regression"]
    a = fit_quietly(G(**sgd_settings(), backend="numpy", dtype="float64"), X, y)
    b = fit_quietly(G(**sgd_settings(nesterovs_momentum=False), backend="numpy", dtype="float64"), X, y)
    assert a.nesterovs_momentum is True and a.net_.optimizer.nesterov is True
    assert b.net_.optimizer.nesterov is False
    assert not np.allclose(a.coefs_[0], b.coefs_[0], rtol=0, atol=1e-6)


def test_nesterov_without_momentum_is_plain_sgd_as_in_sklearn():
    X, y, sk, g = _pair("multiclass", momentum=0.0, nesterovs_momentum=True)
    fit_quietly(sk, X, y)
    fit_quietly(g, X, y)
    assert_same_run(sk, g)
    assert g.net_.optimizer.nesterov is False and g.net_.optimizer.momentum == 0


# ---------------------------------------------------------------- parameters and their checks
@pytest.mark.parametrize("G, Sk", [(MLPClassifier, SkMLPClassifier), (MLPRegressor, SkMLPRegressor)])
def test_every_sklearn_parameter_is_accepted_with_its_default(G, Sk):
    """A parameter grid or a configuration written for scikit-learn's MLPs fits gpubp's."""
    theirs = Sk().get_params()
    ours = G().get_params()
    assert set(theirs) <= set(ours) and {k: ours[k] for k in theirs} == theirs
    est = G(**theirs)
    assert clone(est).get_params() == est.get_params()


@pytest.mark.parametrize("name, bad, words", [
    ("learning_rate", "optimal", "learning_rate must be one of 'constant', 'invscaling', 'adaptive'"),
    ("learning_rate", None, "learning_rate must be one of"),
    ("power_t", -0.5, r"power_t must be a number in \[0, inf\)"),
    ("power_t", float("inf"), r"power_t must be a number in \[0, inf\)"),
    ("power_t", "0.5", r"power_t must be a number"),
    ("nesterovs_momentum", 1, "nesterovs_momentum must be True or False"),
    ("nesterovs_momentum", "False", "nesterovs_momentum must be True or False"),
    ("max_fun", 0, "max_fun must be a positive integer"),
    ("max_fun", 2.0, "max_fun must be a positive integer"),
])
def test_bad_sgd_parameters_are_refused_and_the_estimator_kept(name, bad, words):
    X, cases = parity_cases()
    _, G, y = cases["multiclass"]
    g = fit_quietly(G(**sgd_settings(max_iter=2), backend="numpy"), X, y)
    before = [c.copy() for c in g.coefs_]
    curve = list(g.loss_curve_)
    g.set_params(**{name: bad})
    with pytest.raises(ValueError, match=words):
        g.fit(X, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, g.coefs_)) and g.loss_curve_ == curve
    with pytest.raises(ValueError):      # scikit-learn refuses each too
        SkMLPClassifier(**sgd_settings(max_iter=2), **{name: bad}).fit(X, y)


def test_max_fun_is_accepted_and_unused():
    """max_fun bounds scikit-learn's lbfgs, which gpubp does not offer: any valid value trains the same."""
    X, cases = parity_cases()
    _, G, y = cases["multiclass"]
    a, b = (fit_quietly(G(**sgd_settings(max_iter=3), max_fun=m, backend="numpy", dtype="float64"), X, y) for m in (1, 15000))
    assert all(np.array_equal(p, q) for p, q in zip(a.coefs_, b.coefs_))


def test_the_regressors_loss_is_squared_error_or_poisson():
    """Each trains its gpubp loss (tests/test_sklearn_poisson.py compares poisson with scikit-learn's);
    other names are refused, as scikit-learn refuses them."""
    X, cases = parity_cases()
    _, _, y = cases["regression"]
    a = fit_quietly(MLPRegressor(**sgd_settings(max_iter=3), loss="squared_error", backend="numpy"), X, y)
    assert a.loss == "squared_error" and a.net_.loss == "half_sse" and a.out_activation_ == "identity"
    p = fit_quietly(MLPRegressor(**sgd_settings(max_iter=3), loss="poisson", backend="numpy"), X, np.abs(y))
    assert p.net_.loss == "poisson" and p.out_activation_ == "exp"
    for loss, words in (("absolute_error", "loss must be one of 'squared_error', 'poisson'"),
                        ("Poisson", "loss must be"), (None, "loss must be")):
        with pytest.raises(ValueError):
            SkMLPRegressor(max_iter=3, loss=loss).fit(X, y)
        with pytest.raises(ValueError, match=words):
            MLPRegressor(**sgd_settings(max_iter=3), loss=loss, backend="numpy").fit(X, y)
    assert "loss" not in MLPClassifier().get_params()


# ---------------------------------------------------------------- pickling
def test_a_pickled_estimator_carries_its_rate_and_schedule_on():
    """partial_fit, pickle, partial_fit trains as the calls without the pickle."""
    X, y, _, g = _pair("multiclass", learning_rate="adaptive", tol=10.0, n_iter_no_change=1)
    ref = clone(g)
    for est in (g, ref):
        for _ in range(3):
            est.partial_fit(X, y, classes=[0, 1, 2])
    g = pickle.loads(pickle.dumps(g))
    for est in (g, ref):
        for _ in range(3):
            est.partial_fit(X, y)
    assert g._sgd_lr == ref._sgd_lr < 0.05
    assert all(np.array_equal(a, b) for a, b in zip(g.coefs_, ref.coefs_))


@pytest.mark.parametrize("case", ["multiclass", "regression"])
def test_an_estimator_pickled_before_these_parameters_trains_on_as_it_did(case):
    """One pickled before gpubp had nesterovs_momentum and the schedules trained with classical momentum at a
    constant rate: unpickled, it says so (scikit-learn's defaults for the rest) and partial_fit goes on
    that way."""
    X, y, _, g = _pair(case, nesterovs_momentum=False)
    g.partial_fit(X, y, **({"classes": [0, 1, 2]} if case == "multiclass" else {}))
    state = g.__getstate__()
    new = ["learning_rate", "power_t", "nesterovs_momentum", "max_fun", "_sgd_schedule", "_sgd_power_t",
           "_sgd_lr", "_sgd_lr_init"] + (["loss"] if case == "regression" else [])
    for k in new:
        del state[k]
    state["_net_state"]["optimizer"]["hyper"].pop("nesterov")
    old = type(g).__new__(type(g))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old.__setstate__(state)
    params = old.get_params()
    assert {k: params[k] for k in ("learning_rate", "power_t", "nesterovs_momentum", "max_fun")} == \
        {"learning_rate": "constant", "power_t": 0.5, "nesterovs_momentum": False, "max_fun": 15000}
    assert case == "multiclass" or params["loss"] == "squared_error"
    for est in (g, old):
        est.partial_fit(X, y)
    assert all(np.array_equal(a, b) for a, b in zip(g.coefs_, old.coefs_))


def test_convergence_warning_still_names_the_epochs_with_a_schedule():
    X, y, _, g = _pair("multiclass", learning_rate="invscaling", max_iter=2)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\)"):
        g.fit(X, y)
