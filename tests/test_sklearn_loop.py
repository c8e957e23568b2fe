"""gpubp.sklearn's training loop and its bookkeeping, side by side with scikit-learn's MLPs where they are
meant to agree (tests found missing by mutation testing of gpubp/sklearn.py)."""

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _blobs(n=60, n_features=4, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (n_classes, n_features))
    y = np.arange(n) % n_classes
    return centers[y] + rng.normal(0, 1, (n, n_features)), y


def _fit_quietly(est, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kw)


# ---------------------------------------------------------------- warnings point at the caller
def test_warnings_point_at_the_callers_line():
    """gpubp's warnings point at the first frame outside gpubp (training._caller_level): the batch_size
    clip and the ConvergenceWarning of fit, and the batch_size clip of partial_fit, are reported at the
    line of this file that called them, as "Training interrupted by user." is.  They pointed one frame
    short, at `fit` inside gpubp/sklearn.py."""
    X, y = _blobs(n=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MLPClassifier((3,), batch_size=40, max_iter=1, random_state=0, backend="numpy").fit(X, y)
        MLPRegressor((3,), batch_size=40, random_state=0, backend="numpy").partial_fit(X, X[:, 0])
    kinds = sorted((w.category.__name__, w.filename) for w in caught)
    assert kinds == sorted([("UserWarning", __file__), ("ConvergenceWarning", __file__),
                            ("UserWarning", __file__)]), kinds


# ---------------------------------------------------------------- stopping rules, side by side with scikit-learn
def _parity_cases():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5))
    return X, {"multiclass": (SkMLPClassifier, MLPClassifier, rng.integers(0, 3, 40)),
               "binary": (SkMLPClassifier, MLPClassifier, rng.integers(0, 2, 40)),
               "multilabel": (SkMLPClassifier, MLPClassifier, rng.integers(0, 2, (40, 3))),
               "regression": (SkMLPRegressor, MLPRegressor, rng.standard_normal((40, 2)))}


@pytest.mark.parametrize("case", ["multiclass", "binary", "multilabel", "regression"])
def test_early_stopping_with_sample_weight_matches_sklearn(case):
    """With early stopping, scikit-learn splits sample_weight with the samples and scores the validation
    split weighted by its part (accuracy or R^2).  Weights all below 1 (only their ratios matter) train
    and score as there: the same validation scores, stopping epoch and restored weights (full batches of
    the 32 training rows, so the sample order does not matter)."""
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    w = np.random.default_rng(7).uniform(0.05, 0.9, len(X))
    kw = dict(hidden_layer_sizes=(7,), activation="tanh", solver="sgd", alpha=0.0, batch_size=32, max_iter=30,
              learning_rate_init=0.05, random_state=3, tol=1e-3, n_iter_no_change=3, early_stopping=True,
              validation_fraction=0.2)
    sk = _fit_quietly(Sk(**kw, nesterovs_momentum=False), X, y, sample_weight=w)
    g = _fit_quietly(G(**kw, backend="numpy", dtype="float64"), X, y, sample_weight=w)
    assert g.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(g.validation_scores_, sk.validation_scores_, rtol=1e-9, atol=1e-12)
    assert g.best_validation_score_ == pytest.approx(sk.best_validation_score_, rel=1e-9)
    for a, b in zip(sk.coefs_ + sk.intercepts_, g.coefs_ + g.intercepts_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("Est", ["classifier", "regressor"])
def test_an_unchanged_loss_or_score_is_not_counted_against_tol_0(early_stopping, Est):
    """scikit-learn counts an epoch against n_iter_no_change only when its loss is above best_loss_ - tol
    (its validation score below best_validation_score_ + tol): with tol=0 an epoch that ends where the
    best one did is not counted.  A learning rate too small to move any weight (1e-300) gives the same
    loss and score every epoch, so neither stops before max_iter."""
    X, cases = _parity_cases()
    Sk, G, y = cases["binary" if Est == "classifier" else "regression"]
    kw = dict(hidden_layer_sizes=(5,), solver="sgd", learning_rate_init=1e-300, momentum=0.0, alpha=0.0,
              shuffle=False, max_iter=8, tol=0.0, n_iter_no_change=1, random_state=0,
              early_stopping=early_stopping, validation_fraction=0.25)
    sk = _fit_quietly(Sk(**kw), X, y)
    g = _fit_quietly(G(**kw, backend="numpy", dtype="float64"), X, y)
    assert len(set(g.loss_curve_)) == 1                     # nothing moved
    assert g.n_iter_ == sk.n_iter_ == 8


@pytest.mark.parametrize("Est", [MLPClassifier, MLPRegressor])
def test_verbose_false_prints_nothing(Est, capsys):
    """verbose=False (the default) trains silently, as scikit-learn's MLPs: no line per epoch and no
    progress bar of gpubp's own fit, on stdout or stderr."""
    X, y = _blobs(n=40)
    est = Est((4,), max_iter=3, random_state=0, backend="numpy")
    _fit_quietly(est, X, y)
    est.set_params(early_stopping=True, warm_start=True)
    _fit_quietly(est, X, y)
    est.set_params(early_stopping=False).partial_fit(X, y)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_weights_near_float64s_largest_train_without_overflowing():
    """The mean weight that scales alpha (scikit-learn divides the penalty by the weight sum) is taken of
    the weights over their largest, whose sum cannot overflow: 1e308 each, with alpha > 0, trains without
    a numpy overflow warning and, the penalty being alpha / 1e308, as alpha=0 without weights does."""
    X, y = _blobs(n=40)
    kw = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0, backend="numpy", dtype="float64")
    plain = _fit_quietly(MLPClassifier(alpha=0.0, **kw), X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        big = MLPClassifier(alpha=1e-4, **kw).fit(X, y, sample_weight=np.full(40, 1e308))
    for a, b in zip(plain.coefs_ + plain.intercepts_, big.coefs_ + big.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(big.loss_curve_, plain.loss_curve_, rtol=1e-12)
