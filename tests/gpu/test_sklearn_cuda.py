"""gpubp.sklearn's estimators on the CUDA backend against the numpy backend (skipped without CUDA)."""

import pickle
import warnings

import numpy as np
import pytest

from gpubp.backends import cuda_available

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA device")]

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def _fit(est, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kw)


@pytest.mark.parametrize("Est", [MLPClassifier, MLPRegressor])
def test_cuda_estimator_follows_numpy(Est):
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    target = y if Est is MLPClassifier else (y / 9.0)
    w = np.where(y % 2 == 0, 2.0, 1.0)
    kw = dict(hidden_layer_sizes=(32,), max_iter=3, random_state=0, dtype="float64", tol=0)
    ref = _fit(Est(backend="numpy", **kw), X, target, sample_weight=w)
    gpu = _fit(Est(backend="cuda", **kw), X, target, sample_weight=w)
    assert gpu.net_.backend.name == "cuda"
    for a, b in zip(ref.coefs_, gpu.coefs_):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gpu.loss_curve_, ref.loss_curve_, rtol=1e-9)
    out = gpu.predict_proba(X) if Est is MLPClassifier else gpu.predict(X)
    assert isinstance(out, np.ndarray)
    twin = pickle.loads(pickle.dumps(gpu))          # device arrays go through the host
    assert twin.net_.backend.name == "cuda"
    np.testing.assert_array_equal(twin.predict(X), gpu.predict(X))
    gpu.partial_fit(X, target)
    twin.partial_fit(X, target)
    np.testing.assert_allclose(twin.coefs_[0], gpu.coefs_[0], rtol=1e-12)


def test_cuda_poisson_regressor_follows_numpy():
    """loss="poisson": the poisson loss kernel (value in double, delta e^z - y) under sample weights and
    two targets, and the rates predicted from the device's log-rates."""
    X, y = load_digits(return_X_y=True)
    X = X[:400] / 16.0
    counts = np.stack([y[:400] % 4, y[:400] // 3], axis=1).astype(np.float64)
    w = np.where(y[:400] % 2 == 0, 2.0, 1.0)
    kw = dict(hidden_layer_sizes=(32,), loss="poisson", max_iter=3, random_state=0, dtype="float64", tol=0)
    ref = _fit(MLPRegressor(backend="numpy", **kw), X, counts, sample_weight=w)
    gpu = _fit(MLPRegressor(backend="cuda", **kw), X, counts, sample_weight=w)
    assert gpu.net_.backend.name == "cuda" and gpu.out_activation_ == "exp"
    for a, b in zip(ref.coefs_, gpu.coefs_):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gpu.loss_curve_, ref.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(gpu.predict(X), ref.predict(X), rtol=1e-7)


@pytest.mark.parametrize("schedule", ["invscaling", "adaptive"])
def test_cuda_sgd_schedules_with_nesterov_follow_numpy(schedule):
    """solver="sgd" with Nesterov momentum (scikit-learn's default) and a changing rate: the sgd_update
    kernel's Nesterov flag, and the velocity rescaled on the device at each change of rate."""
    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16.0, y[:300]
    kw = dict(hidden_layer_sizes=(32,), solver="sgd", learning_rate=schedule, learning_rate_init=0.05,
              max_iter=8, batch_size=64, tol=10.0, n_iter_no_change=1, random_state=0, dtype="float64")
    ref = _fit(MLPClassifier(backend="numpy", **kw), X, y)
    gpu = _fit(MLPClassifier(backend="cuda", **kw), X, y)
    assert gpu.net_.optimizer.nesterov and gpu._sgd_lr == ref._sgd_lr < 0.05
    for a, b in zip(ref.coefs_, gpu.coefs_):
        np.testing.assert_allclose(b, a, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gpu.loss_curve_, ref.loss_curve_, rtol=1e-9)


def test_cuda_float32_scores_like_numpy():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    kw = dict(hidden_layer_sizes=(64,), max_iter=30, random_state=0)
    a = _fit(MLPClassifier(backend="numpy", **kw), X, y).score(X, y)
    b = _fit(MLPClassifier(backend="cuda", **kw), X, y).score(X, y)
    assert abs(a - b) < 0.01
