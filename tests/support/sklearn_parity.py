"""The data sets on which gpubp's scikit-learn estimators are fitted side by side with scikit-learn's.

Imported by the scikit-learn test modules only after their `pytest.importorskip("sklearn")`."""
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SkMLPClassifier
from sklearn.neural_network import MLPRegressor as SkMLPRegressor

from gpubp.sklearn import MLPClassifier, MLPRegressor


def parity_cases():
    """X (40 x 5) and, per case, (scikit-learn's estimator class, gpubp's, y): multiclass, binary,
    multilabel and two-target regression."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5))
    return X, {"multiclass": (SkMLPClassifier, MLPClassifier, rng.integers(0, 3, 40)),
               "binary": (SkMLPClassifier, MLPClassifier, rng.integers(0, 2, 40)),
               "multilabel": (SkMLPClassifier, MLPClassifier, rng.integers(0, 2, (40, 3))),
               "regression": (SkMLPRegressor, MLPRegressor, rng.standard_normal((40, 2)))}


def sgd_settings(**over):
    """Estimator arguments that make scikit-learn's run and gpubp's the same (with `over` changed): SGD
    with momentum, mini-batches in order (shuffle=False: the same batches), no penalty (gpubp's weight
    decay also decays the biases), no early stop."""
    kw = dict(hidden_layer_sizes=(6,), activation="tanh", solver="sgd", alpha=0.0, batch_size=16, max_iter=12,
              learning_rate_init=0.05, momentum=0.9, shuffle=False, random_state=1, tol=0, n_iter_no_change=100)
    kw.update(over)
    return kw


def assert_same_run(sk, g, atol=1e-10):
    """scikit-learn's fitted `sk` and gpubp's `g` have the same weights (to `atol`), loss curve, epochs
    and steps."""
    for a, b in zip(sk.coefs_ + sk.intercepts_, g.coefs_ + g.intercepts_):
        np.testing.assert_allclose(b, a, rtol=0, atol=atol)
    np.testing.assert_allclose(g.loss_curve_, sk.loss_curve_, rtol=1e-9)
    assert g.n_iter_ == sk.n_iter_ and g.t_ == sk.t_


def fit_quietly(est, X, y, **kw):
    """`est.fit` without the ConvergenceWarning of a deliberately short run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kw)


def switch_activation(case, hidden_layer_sizes, how):
    """scikit-learn's and gpubp's estimators for `case` of `parity_cases`, fitted alike in relu (float64,
    SGD with momentum, full batches), switched to tanh by set_params, then taken on by `how`: "predict"
    (nothing more), "warm_start" (a warm-started fit) or "partial_fit".  Returns X, y, sk, g."""
    X, cases = parity_cases()
    Sk, G, y = cases[case]
    kw = dict(hidden_layer_sizes=hidden_layer_sizes, activation="relu", solver="sgd", alpha=0.0, batch_size=40,
              max_iter=3, learning_rate_init=0.05, momentum=0.9, random_state=3, tol=0, n_iter_no_change=100,
              warm_start=True)
    sk, g = Sk(**kw), G(**kw, backend="numpy", dtype="float64")
    for est in (sk, g):
        fit_quietly(est, X, y)
        est.set_params(activation="tanh")
        if how == "warm_start":
            fit_quietly(est, X, y)
        elif how == "partial_fit":
            est.partial_fit(X, y)
    return X, y, sk, g
