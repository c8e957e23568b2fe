"""`gpubp.sklearn.MLPRegressor(loss="poisson")` side by side with scikit-learn's: the log link (the
network outputs log-rates, `predict` the rates), half the Poisson deviance summed over the outputs
as scikit-learn reports it, and the same updates."""

import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.neural_network._base import poisson_loss  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from gpubp.sklearn import MLPRegressor  # noqa: E402
from support.sklearn_parity import assert_same_run, fit_quietly, sgd_settings  # noqa: E402


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _counts(n_out=2, n=40, seed=0):
    """X (n x 5) and Poisson counts whose log-rates depend on X (zeros among them)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = rng.poisson(np.exp(0.5 * X[:, :n_out])).astype(np.float64)
    assert (y == 0).any() and (y > 2).any()
    return X, (y[:, 0] if n_out == 1 else y)


def _kw(**over):
    """scikit-learn's and gpubp's runs alike (`sgd_settings`), with the poisson loss."""
    return sgd_settings(**{"loss": "poisson", **over})


def _pair(n_out=2, **over):
    X, y = _counts(n_out)
    kw = _kw(**over)
    return X, y, SkMLPRegressor(**kw), MLPRegressor(**kw, backend="numpy", dtype="float64")


@pytest.mark.parametrize("n_out", [1, 3])
@pytest.mark.parametrize("sgd", [dict(nesterovs_momentum=True), dict(nesterovs_momentum=False),
                                 dict(momentum=0.0), dict(learning_rate="invscaling", power_t=0.3)],
                         ids=["nesterov", "momentum", "plain", "invscaling"])
def test_sgd_trains_as_sklearn(sgd, n_out):
    """The same weights, loss curve, rates and r2 as scikit-learn's to rounding.  With 3 targets gpubp's
    loss is 1/3 of scikit-learn's (a mean over the outputs, not a sum): without the rate scaled to match,
    the weights would differ from the first step."""
    X, y, sk, g = _pair(n_out, **sgd)
    fit_quietly(sk, X, y)
    fit_quietly(g, X, y)
    assert_same_run(sk, g)
    assert g.out_activation_ == sk.out_activation_ == "exp" and g.net_.loss == "poisson"
    pred = g.predict(X)
    assert pred.shape == y.shape and (pred > 0).all()
    np.testing.assert_allclose(pred, sk.predict(X), rtol=1e-10)
    assert g.score(X, y) == pytest.approx(sk.score(X, y), rel=1e-9)
    assert g.score(X, y) == pytest.approx(r2_score(y, pred), rel=1e-12)


def test_the_reported_loss_is_sklearns_poisson_loss_of_the_predictions():
    """loss_curve_'s last entry is the epoch's mean batch loss; one full batch and plain SGD make the loss
    at the start of the epoch scikit-learn's poisson_loss of the predictions before it: scikit-learn's own
    function, summed over the 2 outputs, on gpubp's rates."""
    X, y = _counts(2)
    g = MLPRegressor(**_kw(batch_size=40, max_iter=1, momentum=0.0), backend="numpy", dtype="float64")
    g.partial_fit(X, y)
    before = g.predict(X)
    g.partial_fit(X, y)
    assert g.loss_curve_[-1] == pytest.approx(poisson_loss(y, before), rel=1e-12)
    assert g.loss_curve_[-1] == pytest.approx(
        np.mean(np.sum(np.where(y > 0, y * np.log(np.where(y > 0, y, 1) / before), 0) - y + before, axis=1)),
        rel=1e-12)


def test_adam_trains_as_sklearn_up_to_where_epsilon_is_added():
    """Adam: the same run but for where eps is added (PyTorch's sqrt(v_hat) + eps, scikit-learn's
    sqrt(v) + eps; module docs), a relative difference of order 1e-5 here."""
    X, y, sk, g = _pair(2, solver="adam", learning_rate_init=0.01)
    fit_quietly(sk, X, y)
    fit_quietly(g, X, y)
    for a, b in zip(sk.coefs_ + sk.intercepts_, g.coefs_ + g.intercepts_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    np.testing.assert_allclose(g.loss_curve_, sk.loss_curve_, rtol=1e-4)


def test_early_stopping_scores_the_rates_as_sklearn():
    """The validation score is r2 of the predicted rates, as scikit-learn's; the same split, scores and
    restored best epoch."""
    X, y, sk, g = _pair(2, early_stopping=True, validation_fraction=0.25, n_iter_no_change=2, max_iter=60,
                        batch_size=30, tol=1e-3)
    fit_quietly(sk, X, y)
    fit_quietly(g, X, y)
    np.testing.assert_allclose(g.validation_scores_, sk.validation_scores_, rtol=1e-9)
    assert g.n_iter_ == sk.n_iter_ and g.best_validation_score_ == pytest.approx(sk.best_validation_score_)
    for a, b in zip(sk.coefs_, g.coefs_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


def test_sample_weight_trains_as_sklearn():
    X, y, sk, g = _pair(2, batch_size=40)
    w = np.random.default_rng(3).uniform(0.2, 3.0, 40)
    fit_quietly(sk, X, y, sample_weight=w)
    fit_quietly(g, X, y, sample_weight=w)
    assert_same_run(sk, g)


def test_partial_fit_and_warm_start_continue_as_sklearn():
    X, y, sk, g = _pair(2, max_iter=3, warm_start=True)
    for est in (sk, g):
        fit_quietly(est, X, y)
        fit_quietly(est, X, y)
        est.partial_fit(X, y)
    assert_same_run(sk, g)


def test_negative_targets_are_refused_and_nothing_changes():
    """scikit-learn's trains on them to a NaN loss; gpubp says why, before any change."""
    X, y = _counts(2)
    bad = y.copy()
    bad[5, 1] = -1.0
    with pytest.raises(ValueError, match=r"^y: poisson targets are counts or rates and must be non-negative; "
                                         r"got values from -1\.0 to"):
        MLPRegressor(**_kw(), backend="numpy").fit(X, bad)
    g = fit_quietly(MLPRegressor(**_kw(max_iter=2), backend="numpy", dtype="float64"), X, y)
    before, curve = [c.copy() for c in g.coefs_], list(g.loss_curve_)
    for call in (g.partial_fit, g.set_params(warm_start=True).fit):
        with pytest.raises(ValueError, match="non-negative"):
            call(X, bad)
        assert all(np.array_equal(a, b) for a, b in zip(before, g.coefs_)) and g.loss_curve_ == curve
    # zeros are counts like any other
    fit_quietly(MLPRegressor(**_kw(max_iter=2), backend="numpy"), X, np.zeros_like(y))


@pytest.mark.parametrize("how", ["partial_fit", "warm_start"])
def test_a_fitted_regressor_continues_only_with_its_own_loss(how):
    """Its network has the other output (log-rates, or values): continuing under the other loss would
    train the one network on two different functions.  A fit from scratch takes the new loss."""
    X, y = _counts(2)
    for first, then in (("poisson", "squared_error"), ("squared_error", "poisson")):
        g = fit_quietly(MLPRegressor(**_kw(max_iter=2, loss=first), backend="numpy", dtype="float64"), X, y)
        before = [c.copy() for c in g.coefs_]
        g.set_params(loss=then, warm_start=how == "warm_start")
        call = "partial_fit" if how == "partial_fit" else "warm-started fit"     # the call refused is named
        with pytest.raises(ValueError, match=f"fitted with loss='{first}'; a {call} cannot continue it with "
                                             f"loss='{then}'"):
            g.partial_fit(X, y) if how == "partial_fit" else g.fit(X, y)
        assert all(np.array_equal(a, b) for a, b in zip(before, g.coefs_)) and g.net_.loss != then
        g.set_params(warm_start=False)
        fit_quietly(g, X, y)
        assert g.out_activation_ == ("exp" if then == "poisson" else "identity")
        assert g.net_.loss == ("poisson" if then == "poisson" else "half_sse")


def test_pickle_and_clone_keep_the_loss():
    X, y = _counts(2)
    g = fit_quietly(MLPRegressor(**_kw(max_iter=2), backend="numpy", dtype="float64"), X, y)
    back = pickle.loads(pickle.dumps(g))
    np.testing.assert_array_equal(back.predict(X), g.predict(X))
    assert back.out_activation_ == "exp" and clone(g).get_params()["loss"] == "poisson"


def test_rates_are_the_exp_of_the_log_rates_in_float64():
    """As scikit-learn's, predictions are float64: the rate of a float32 network's log-rate 100 is e^100
    (finite), not float32's overflow; a rate beyond float64 is inf (no warning), and `score` refuses such
    predictions as scikit-learn's r2 does (early stopping scores them NaN, as for squared_error)."""
    X, y = _counts(1)
    g = fit_quietly(MLPRegressor(**_kw(max_iter=1), backend="numpy"), X, y)
    for bias, finite in ((100.0, True), (1000.0, False)):
        b = [c.copy() for c in g.intercepts_]
        b[-1][:] = bias
        g.intercepts_ = b
        with np.errstate(over="raise"):     # no overflow warning escapes
            pred = g.predict(X)
        z = g.net_.backend.to_numpy(g.net_.forward(X.astype(np.float32)))[:, 0].astype(np.float64)
        assert pred.dtype == np.float64 and np.array_equal(pred, np.exp(z) if finite else np.full(40, np.inf))
        if finite:
            assert np.isfinite(g.score(X, y))
        else:
            with pytest.raises(ValueError, match="infinity"):
                g.score(X, y)
            assert np.isnan(g._score_on(X, y, None))


def test_the_tags_say_the_targets_must_not_be_negative():
    """scikit-learn's estimator checks read positive_only to draw targets this regressor takes."""
    assert MLPRegressor(loss="poisson").__sklearn_tags__().target_tags.positive_only
    assert not MLPRegressor().__sklearn_tags__().target_tags.positive_only
