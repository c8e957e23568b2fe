"""The data sets on which gpubp's scikit-learn estimators are fitted side by side with scikit-learn's.

Imported by the scikit-learn test modules only after their `pytest.importorskip("sklearn")`."""
import numpy as np
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
