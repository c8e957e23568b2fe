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
