"""gpubp.sklearn: scikit-learn's estimator checks, model selection, labels, and parity with its MLPs."""

import pickle
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from threadpoolctl import threadpool_limits  # noqa: E402  (a scikit-learn dependency)

from gpubp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from support.sklearn_parity import fit_quietly as _fit_quietly  # noqa: E402
from support.sklearn_parity import parity_cases as _parity_cases  # noqa: E402
from support.sklearn_parity import switch_activation  # noqa: E402


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The tests train tiny networks: one BLAS thread is fastest, and far faster on a loaded machine."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


#: checks of scikit-learn's suite these estimators are expected to fail, with the reason
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data":
        "float32 rounding only: the check compares predictions to a relative 1e-7, below float32's "
        "resolution (6e-8) after 100 epochs of arithmetic; in float64 it passes "
        "(test_sample_weight_equivalence_check_passes_in_float64)",
}
#: and those the poisson regressor is expected to fail besides
POISSON_FAILED_CHECKS = {
    "check_regressor_multioutput":
        "the check draws targets below zero (make_regression) whatever the positive_only tag says; "
        "loss='poisson' refuses them (scikit-learn's own poisson MLP trains on them to a NaN loss)",
}


def _expected_failed_checks(est) -> dict:
    return {**EXPECTED_FAILED_CHECKS, **(POISSON_FAILED_CHECKS if getattr(est, "loss", None) == "poisson" else {})}


@parametrize_with_checks(
    [MLPClassifier(backend="numpy", max_iter=100, random_state=0),
     MLPRegressor(backend="numpy", max_iter=100, random_state=0),
     # the coarsest mode too (outputs rounded to bfloat16): the suite holds there as well
     MLPClassifier(backend="numpy", max_iter=100, random_state=0, precision="bf16"),
     MLPRegressor(backend="numpy", max_iter=100, random_state=0, precision="bf16"),
     # the log link: 500 epochs reach the suite's r2 of 0.5 on its linear targets (scikit-learn's own
     # poisson MLP misses it at 200), targets kept non-negative by the positive_only tag
     MLPRegressor(backend="numpy", max_iter=500, random_state=0, loss="poisson")],
    expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("Est, kw", [(MLPClassifier, {}), (MLPRegressor, {}), (MLPRegressor, {"loss": "poisson"})],
                         ids=["classifier", "regressor", "poisson"])
def test_sample_weight_equivalence_check_passes_in_float64(Est, kw):
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_sample_weight_equivalence_on_dense_data(
            Est.__name__, Est(backend="numpy", dtype="float64", max_iter=100, random_state=0, **kw))


# ---------------------------------------------------------------- data
def _blobs(n=120, n_features=4, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (n_classes, n_features))
    y = np.arange(n) % n_classes
    X = centers[y] + rng.normal(0, 1, (n, n_features))
    return X, y


# ---------------------------------------------------------------- labels and shapes
@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "emu"]), np.array([1, 2, 3]), np.array([-5, 0, 7])])
def test_any_labels_through_classes_(labels):
    X, y = _blobs()
    yl = labels[y]
    clf = _fit_quietly(MLPClassifier((16,), max_iter=60, learning_rate_init=0.01, random_state=0,
                                     backend="numpy"), X, yl)
    assert list(clf.classes_) == sorted(labels.tolist())
    pred = clf.predict(X)
    assert pred.dtype == yl.dtype and set(pred) <= set(labels)
    assert clf.score(X, yl) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)


def test_binary_labels_1_2_predict_proba_two_columns():
    X, y = _blobs(n_classes=2)
    y12 = y + 1
    clf = _fit_quietly(MLPClassifier((8,), max_iter=60, learning_rate_init=0.01, random_state=0,
                                     backend="numpy"), X, y12)
    np.testing.assert_array_equal(clf.classes_, [1, 2])
    assert clf.net_.sizes[-1] == 1 and clf.out_activation_ == "logistic"   # one logistic output, as sklearn
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), np.where(proba[:, 1] > 0.5, 2, 1))
    assert clf.score(X, y12) > 0.9


def test_multilabel_and_multioutput():
    X, y = _blobs(n_classes=3)
    Y = np.stack([y == 0, y != 1, y == 2], axis=1).astype(int)
    clf = _fit_quietly(MLPClassifier((16,), max_iter=80, learning_rate_init=0.01, random_state=0,
                                     backend="numpy"), X, Y)
    assert clf.predict(X).shape == Y.shape and clf.predict_proba(X).shape == Y.shape
    assert clf.score(X, Y) > 0.9
    reg = _fit_quietly(MLPRegressor((16,), max_iter=50, random_state=0, backend="numpy"), X,
                       np.stack([X[:, 0], X[:, 1] - X[:, 2]], axis=1))
    assert reg.predict(X).shape == (len(X), 2)
    reg1 = _fit_quietly(MLPRegressor((4,), max_iter=5, random_state=0, backend="numpy"), X, X[:, 0])
    assert reg1.predict(X).shape == (len(X),)


def test_refusals_are_clear():
    X, y = _blobs()
    with pytest.raises(ValueError, match="lbfgs"):
        MLPClassifier(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="activation"):
        MLPClassifier(activation="softplus").fit(X, y)
    with pytest.raises(ValueError, match="multiclass-multioutput"):
        MLPClassifier(backend="numpy").fit(X, np.stack([y, y], axis=1))
    with pytest.raises(ValueError, match="batch_size"):
        MLPClassifier(batch_size=0).fit(X, y)
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier(backend="numpy").partial_fit(X, y)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPRegressor(backend="numpy", early_stopping=True).partial_fit(X, y)
    big = X * 1e39                                      # finite in float64, beyond float32's range
    with pytest.raises(ValueError, match=r"beyond the range of float32.*e\+39"):
        MLPClassifier(backend="numpy").fit(big, y)
    fitted = _fit_quietly(MLPClassifier((4,), max_iter=2, random_state=0, backend="numpy"), X, y)
    with pytest.raises(ValueError, match="beyond the range of float32"):
        fitted.predict(big)
    assert _fit_quietly(MLPRegressor((4,), max_iter=2, random_state=0, backend="numpy", dtype="float64"),
                        big, y).predict(big).shape == y.shape       # float64 holds them
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(np.where(X > 1, np.nan, X))
    sp = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="[Ss]parse"):
        MLPClassifier(backend="numpy").fit(sp.csr_matrix(X), y)
    # a sparse y (validate_data lets one through with multi_output=True) was refused with "Unknown label
    # type: unknown" by the classifier and "setting an array element with a sequence" by the regressor
    Y = np.stack([y == 0, y == 1], axis=1).astype(int)
    with pytest.raises(TypeError, match="[Ss]parse.*y.*toarray"):
        MLPClassifier(backend="numpy").fit(X, sp.csr_matrix(Y))
    with pytest.raises(TypeError, match="[Ss]parse.*y.*toarray"):
        MLPRegressor(backend="numpy").fit(X, sp.csr_matrix(X[:, :2]))


def test_values_scikit_learn_accepts_for_n_iter_no_change_and_validation_fraction():
    """scikit-learn's MLPs take n_iter_no_change=np.inf (never stop on tol) and validation_fraction=0
    when early_stopping is off (it is unused then); both were refused."""
    X, y = _blobs(n=40)
    est = _fit_quietly(MLPClassifier((4,), max_iter=6, tol=1e9, n_iter_no_change=np.inf, random_state=0,
                                     backend="numpy"), X, y)
    assert est.n_iter_ == 6                                 # tol alone would stop it: inf never does
    sk = _fit_quietly(SkMLPClassifier((4,), max_iter=6, tol=1e9, n_iter_no_change=np.inf, random_state=0), X, y)
    assert sk.n_iter_ == 6
    _fit_quietly(MLPRegressor((4,), max_iter=2, validation_fraction=0.0, random_state=0, backend="numpy"), X,
                 X[:, 0])
    with pytest.raises(ValueError, match="validation_fraction"):
        MLPRegressor((4,), validation_fraction=0.0, early_stopping=True, backend="numpy").fit(X, X[:, 0])
    for bad in (0, 2.5, -np.inf, np.nan):
        with pytest.raises(ValueError, match="n_iter_no_change"):
            MLPRegressor(n_iter_no_change=bad, backend="numpy").fit(X, X[:, 0])


def test_a_numpy_float32_validation_fraction_is_taken_with_early_stopping_as_in_sklearn():
    """np.float32(0.25) passes the parameter checks (a Real), and scikit-learn's MLPs split with it; gpubp handed
    it to train_test_split, whose own check refuses numpy floats other than float64."""
    X, y = _blobs(n=40)
    kw = dict(hidden_layer_sizes=(4,), max_iter=3, early_stopping=True, random_state=0)
    _fit_quietly(SkMLPClassifier(**kw, validation_fraction=np.float32(0.25)), X, y)
    est = _fit_quietly(MLPClassifier(**kw, validation_fraction=np.float32(0.25), backend="numpy"), X, y)
    ref = _fit_quietly(MLPClassifier(**kw, validation_fraction=0.25, backend="numpy"), X, y)
    assert est.validation_scores_ == ref.validation_scores_


#: parameter values at the edges of scikit-learn's own constraints (each accepted or refused there)
PARAM_EDGES = {
    "alpha": [0.0, -0.0, 1, -1e-300, np.inf, np.nan],
    "learning_rate_init": [1e-300, 1, 0.0, -1.0, np.inf],
    "tol": [0.0, -1e-300, np.inf, np.nan],
    "momentum": [0.0, 1.0, 1.0000001, -1e-300, np.nan],
    "beta_1": [0.0, 0.999999, 1.0, -1e-300],
    "beta_2": [0.0, 0.999999, 1.0, -1e-300],
    "epsilon": [1e-30, 0.0, -1.0, np.inf],
    "max_iter": [1, np.int64(1), 0, -1, 1.0],
    "n_iter_no_change": [1, np.int64(1), np.inf, 0, 1.0, -np.inf],
    "batch_size": ["auto", 1, np.int64(1), 0, 1.0, "full"],
    "validation_fraction": [0.0, 0, 0.999, 1.0, -1e-300, True, np.nan],
    "shuffle": [True, np.True_, 1, 0, None, "yes"],
    "warm_start": [False, np.False_, 1, 0],
    "early_stopping": [False, 1, 0],
    "verbose": [0, 1, True, 2, np.int64(3), -1, 1.0],
    "solver": ["adam", "sgd", "ADAM", None],
    "hidden_layer_sizes": [(2,), 2, [3, 2], (), np.int64(2), (0,), (2, 0), -1],
    "activation": ["relu", "logistic", "tanh", "identity", "RELU", None],
}


@pytest.mark.parametrize("name, value", [(k, v) for k, vs in PARAM_EDGES.items() for v in vs],
                         ids=lambda v: repr(v))
def test_parameter_edges_accepted_and_refused_as_sklearn(name, value):
    """Each value is accepted exactly where scikit-learn's MLPClassifier (MLPRegressor) accepts it (asked, not copied)."""
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    params = {"max_iter": 1, "random_state": 0, "verbose": False, name: value}

    def accepted(est):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(X, y)
        except ValueError:
            return False
        return True

    assert accepted(MLPClassifier(backend="numpy", **params)) == accepted(SkMLPClassifier(**params))
    y = X[:, 0]                                        # the regressor checks them too
    assert accepted(MLPRegressor(backend="numpy", **params)) == accepted(SkMLPRegressor(**params))


def test_parameter_refusals_beyond_sklearns():
    """gpubp's own limits (docs/spec.md, optimizers): SGD's momentum below 1; Adam's eps positive once rounded to
    the network's dtype."""
    X, y = _blobs(n=20)
    _fit_quietly(MLPClassifier((2,), solver="adam", momentum=1.0, max_iter=1, backend="numpy"), X, y)
    _fit_quietly(MLPClassifier((2,), solver="sgd", momentum=0.999, max_iter=1, backend="numpy"), X, y)
    with pytest.raises(ValueError, match="momentum must be below 1"):
        MLPClassifier((2,), solver="sgd", momentum=1.0, backend="numpy").fit(X, y)
    _fit_quietly(MLPClassifier((2,), epsilon=1e-300, dtype="float64", max_iter=1, backend="numpy"), X, y)
    with pytest.raises(ValueError, match="eps"):
        MLPClassifier((2,), epsilon=1e-300, backend="numpy").fit(X, y)


@pytest.mark.parametrize("name, good, bad", [
    ("backend", ["auto", "numpy"], ["gpu", "NUMPY", None]),
    ("dtype", ["float32", "float64"], ["float16", np.float32, "FLOAT32", None]),
    ("precision", ["float32", "tf32", "bf16", "3xtf32"], ["fp16", "TF32", "bfloat16", None])])
def test_gpubp_parameters_take_their_documented_names_only(name, good, bad):
    """backend, dtype and precision (README) take the names listed there, spelled as there; the rest are a
    ValueError naming the parameter, before any training."""
    X, y = _blobs(n=20)
    for v in good:
        _fit_quietly(MLPClassifier((2,), max_iter=1, **{"backend": "numpy", name: v}), X, y)
    for v in bad:
        with pytest.raises(ValueError, match=f"{name} must be one of"):
            MLPClassifier((2,), max_iter=1, **{"backend": "numpy", name: v}).fit(X, y)


def test_activation_names_of_sklearn_and_gpubp():
    X, y = _blobs()
    assert _fit_quietly(MLPClassifier((4,), activation="logistic", max_iter=2, random_state=0,
                                      backend="numpy"), X, y).net_.activations[0] == "sigmoid"
    assert _fit_quietly(MLPClassifier((4,), activation="gelu", max_iter=2, random_state=0,
                                      backend="numpy"), X, y).net_.activations[0] == "gelu"


# ---------------------------------------------------------------- model selection
def test_pipeline_clone_cross_val_score_grid_search():
    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=80, learning_rate_init=0.01,
                                                         random_state=0, backend="numpy"))
    c = clone(pipe)
    assert c.get_params()["mlpclassifier__hidden_layer_sizes"] == (16,)
    assert not hasattr(c[-1], "net_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipe, X, y, cv=3)
        assert scores.shape == (3,) and scores.mean() > 0.85
        gs = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1],
                                 "mlpclassifier__hidden_layer_sizes": [(4,), (16,)]}, cv=2).fit(X, y)
    assert gs.best_score_ > 0.85
    assert set(gs.best_params_) == {"mlpclassifier__alpha", "mlpclassifier__hidden_layer_sizes"}
    assert gs.predict(X).shape == y.shape


# ---------------------------------------------------------------- parity with scikit-learn's updates
@pytest.mark.parametrize("case", ["multiclass", "binary", "multilabel", "regression"])
@pytest.mark.parametrize("solver,alpha,tol_w,nesterov", [("sgd", 0.0, 1e-12, False), ("sgd", 0.0, 1e-12, True),
                                                         ("sgd", 0.01, 1e-4, True), ("adam", 0.0, 1e-3, True)])
def test_full_batch_training_matches_sklearn(case, solver, alpha, tol_w, nesterov):
    """Same init (Glorot from random_state, drawn as scikit-learn draws it), same loss, same updates.

    Full batches make the sample order irrelevant.  SGD, with classical or (scikit-learn's default)
    Nesterov momentum, matches to rounding; with alpha the biases are decayed too (scikit-learn
    penalises weights only); Adam adds eps where PyTorch does.
    """
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    kw = dict(hidden_layer_sizes=(7, 6), activation="tanh", solver=solver, alpha=alpha, batch_size=40,
              max_iter=5, learning_rate_init=0.05, random_state=3, tol=0, n_iter_no_change=100,
              nesterovs_momentum=nesterov)
    sk = _fit_quietly(Sk(**kw), X, y)
    g = _fit_quietly(G(**kw, backend="numpy", dtype="float64"), X, y)
    for a, b in zip(sk.coefs_, g.coefs_):
        np.testing.assert_allclose(b, a, rtol=0, atol=tol_w)
    np.testing.assert_allclose(g.loss_curve_, sk.loss_curve_, rtol=max(tol_w, 1e-10) * 10)
    assert g.n_iter_ == sk.n_iter_ == 5 and g.t_ == sk.t_


@pytest.mark.parametrize("scale", [1.0, 1e-3])   # weights all below 1 too: only their ratios matter
@pytest.mark.parametrize("case", ["multiclass", "binary", "multilabel", "regression"])
def test_weighted_mini_batch_loss_curve_matches_sklearn(case, scale):
    """scikit-learn's `loss_` averages each batch's weighted mean loss over the epoch by the batch's
    rows (`batch_loss * len(batch)`, then over `n`), not by its weight sum.  It took gpubp's history
    loss as it was (batches weighted by their sample weight sums): with uneven weights over several
    batches the curve was 0.5 to 4% off scikit-learn's (and `tol` stopped at other epochs) while the
    weights matched to rounding.  Without alpha and shuffling the updates are scikit-learn's, so the
    two curves agree to rounding."""
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    w = np.random.default_rng(4).uniform(0.1, 3.0, len(X)) * scale
    kw = dict(hidden_layer_sizes=(6,), activation="tanh", solver="sgd", alpha=0.0, batch_size=16, max_iter=4,
              learning_rate_init=0.05, momentum=0.9, shuffle=False, random_state=0, tol=0, n_iter_no_change=100)
    sk = _fit_quietly(Sk(**kw), X, y, sample_weight=w)
    g = _fit_quietly(G(**kw, backend="numpy", dtype="float64"), X, y, sample_weight=w)
    for a, b in zip(sk.coefs_, g.coefs_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.loss_curve_, sk.loss_curve_, rtol=1e-10)


def test_weighted_shuffled_epochs_train_as_the_plain_weights():
    """With shuffling, each epoch's batches are those of the network's own generator: the weights the
    estimator gives `MLP.fit` (rescaled per batch so that the history averages by rows, as scikit-learn's
    `loss_`) train as the plain weights do, and `loss_curve_` is the row-weighted mean of the batches'
    weighted losses."""
    import copy

    import gpubp

    X, y = _blobs(n=50)
    w = np.random.default_rng(5).uniform(0.1, 3.0, len(X))
    est = _fit_quietly(MLPClassifier(hidden_layer_sizes=(5,), solver="sgd", momentum=0.0, learning_rate_init=0.1,
                                     alpha=0.0, batch_size=16, max_iter=1, random_state=0, warm_start=True,
                                     backend="numpy", dtype="float64"), X, y, sample_weight=w)
    ref = copy.deepcopy(est.net_)                          # the network and its generator before the epoch
    params = ref.get_params()
    order = copy.deepcopy(ref._rng).permutation(len(X))    # the epoch's order, as fit draws it
    _fit_quietly(est, X, y, sample_weight=w)               # one more epoch (warm start)
    ref.fit(X, y, epochs=1, batch_size=16, optimizer=gpubp.optim.SGD(0.1), sample_weight=w / w.mean(),
            shuffle=True, progress=False)
    for (W, b), (W2, b2) in zip(est.net_.get_params(), ref.get_params()):
        np.testing.assert_allclose(W, W2, rtol=0, atol=1e-13)
        np.testing.assert_allclose(b, b2, rtol=0, atol=1e-13)
    # the epoch's loss the scikit-learn way: each batch's weighted mean loss before its step, times its rows
    probe = copy.deepcopy(ref)
    probe.set_params(params)
    total = 0.0
    for s in range(0, len(X), 16):
        rows = order[s:s + 16]
        logits = probe.forward(X[rows])
        z = logits - logits.max(axis=1, keepdims=True)
        li = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(rows)), y[rows]]
        total += len(rows) * float(np.average(li, weights=w[rows]))
        probe.fit(X[rows], y[rows], epochs=1, batch_size=16, optimizer=gpubp.optim.SGD(0.1),
                  sample_weight=w[rows], shuffle=False, progress=False)
    for (W, b), (W2, b2) in zip(est.net_.get_params(), probe.get_params()):
        np.testing.assert_allclose(W, W2, rtol=0, atol=1e-13)
    assert est.loss_curve_[-1] == pytest.approx(total / len(X), rel=1e-12)



@pytest.mark.parametrize("case", ["multiclass", "binary", "multilabel", "regression"])
def test_early_stopping_matches_sklearn(case):
    """The same validation split (scikit-learn stratifies only for two classes), scores and stopping epoch.

    A stratified split for several classes drew other validation samples than scikit-learn's, so the
    scores and the epoch it stopped at differed.
    """
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    kw = dict(hidden_layer_sizes=(7,), activation="tanh", solver="sgd", alpha=0.0, batch_size=32, max_iter=40,
              learning_rate_init=0.05, random_state=3, tol=1e-3, n_iter_no_change=3, early_stopping=True,
              validation_fraction=0.2)
    sk = _fit_quietly(Sk(**kw), X, y)
    g = _fit_quietly(G(**kw, backend="numpy", dtype="float64"), X, y)
    assert g.n_iter_ == sk.n_iter_ < 40
    np.testing.assert_allclose(g.validation_scores_, sk.validation_scores_, rtol=1e-9, atol=1e-12)
    for a, b in zip(sk.coefs_, g.coefs_):     # the best epoch's weights, restored by both
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


def test_early_stopping_on_few_samples_of_several_classes():
    """20 samples of 3 classes, validation_fraction=0.1: 2 validation samples, as scikit-learn takes them
    (a stratified split needs one per class and refused)."""
    X, y = _blobs(n=20)
    clf = _fit_quietly(MLPClassifier((4,), max_iter=5, early_stopping=True, random_state=0, backend="numpy"),
                       X, y)
    assert len(clf.validation_scores_) == clf.n_iter_ and set(clf.classes_) == {0, 1, 2}

def _split(loader, classify, scale_y=1.0):
    X, y = loader(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y / scale_y if not classify else y, test_size=0.25,
                                          random_state=0, stratify=y if classify else None)
    return Xtr, Xte, ytr, yte


#: data set -> (max_iter, seeds, allowed gap of the mean test score); the gaps are about two test
#: samples for the small sets and what run-to-run variation of scikit-learn's own MLP shows
SCORE_CASES = {"iris": (load_iris, True, 200, (0, 1, 2), 0.06),
               "digits": (load_digits, True, 60, (0,), 0.03),
               "breast_cancer": (load_breast_cancer, True, 100, (0, 1), 0.03),
               "diabetes": (load_diabetes, False, 200, (0, 1), 0.06)}


@pytest.mark.parametrize("name", list(SCORE_CASES))
def test_scores_like_sklearn(name):
    loader, classify, max_iter, seeds, gap = SCORE_CASES[name]
    Xtr, Xte, ytr, yte = _split(loader, classify, scale_y=100.0)
    ours, theirs = [], []
    for seed in seeds:
        kw = dict(hidden_layer_sizes=(64,), max_iter=max_iter, random_state=seed)
        Sk, G = (SkMLPClassifier, MLPClassifier) if classify else (SkMLPRegressor, MLPRegressor)
        theirs.append(_fit_quietly(make_pipeline(StandardScaler(), Sk(**kw)), Xtr, ytr).score(Xte, yte))
        ours.append(_fit_quietly(make_pipeline(StandardScaler(), G(**kw, backend="numpy")), Xtr, ytr)
                    .score(Xte, yte))
    print(f"{name}: gpubp {np.mean(ours):.4f}, scikit-learn {np.mean(theirs):.4f}")
    assert np.mean(ours) >= np.mean(theirs) - gap, (ours, theirs)
    assert np.mean(ours) > (0.9 if classify else 0.1)


# ---------------------------------------------------------------- training loop
def test_partial_fit_keeps_optimizer_state():
    """k calls of partial_fit train exactly as fit with max_iter=k (same init, shuffles and Adam moments)."""
    X, y = _blobs()
    kw = dict(hidden_layer_sizes=(8,), random_state=0, backend="numpy", dtype="float64", batch_size=16,
              tol=0, n_iter_no_change=1000)
    full = _fit_quietly(MLPClassifier(max_iter=4, **kw), X, y)
    inc = MLPClassifier(**kw)
    for _ in range(4):
        inc.partial_fit(X, y, classes=np.unique(y))
    assert inc.n_iter_ == 1 and len(inc.loss_curve_) == 4 and inc._optimizer.t == 4 * 8
    for a, b in zip(full.coefs_, inc.coefs_):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    # a fresh optimizer (what would happen if state were dropped) trains differently
    fresh = MLPClassifier(**kw).partial_fit(X, y, classes=np.unique(y))
    fresh._optimizer = None
    for _ in range(3):
        fresh.partial_fit(X, y)
    assert max(np.abs(a - b).max() for a, b in zip(full.coefs_, fresh.coefs_)) > 1e-4
    with pytest.raises(ValueError, match="not in classes_"):
        inc.partial_fit(X, y + 10)


def test_tol_stopping_and_loss_attributes():
    X, y = _blobs()
    clf = MLPClassifier((8,), max_iter=500, tol=0.5, n_iter_no_change=3, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)   # it stops before max_iter: no warning
        clf.fit(X, y)
    assert clf.n_iter_ < 500
    assert len(clf.loss_curve_) == clf.n_iter_ and clf.best_loss_ == min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.loss_ == clf.loss_curve_[-1]
    with pytest.warns(ConvergenceWarning):
        MLPClassifier((8,), max_iter=2, random_state=0, backend="numpy").fit(X, y)


def test_early_stopping_restores_the_best_epoch():
    X, y = _blobs(n=200, seed=1)
    kw = dict(hidden_layer_sizes=(8,), early_stopping=True, validation_fraction=0.2, n_iter_no_change=3,
              tol=0.0, random_state=0, backend="numpy", dtype="float64", learning_rate_init=0.05)
    es = _fit_quietly(MLPClassifier(max_iter=200, **kw), X, y)
    assert es.best_loss_ is None and len(es.validation_scores_) == es.n_iter_ < 200
    best = int(np.argmax(es.validation_scores_)) + 1
    assert es.best_validation_score_ == max(es.validation_scores_)
    # the same run stopped at the best epoch has the weights the early-stopped one restored
    at_best = _fit_quietly(MLPClassifier(max_iter=best, **kw), X, y)
    for a, b in zip(at_best.coefs_, es.coefs_):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_warm_start_continues():
    X, y = _blobs()
    clf = _fit_quietly(MLPClassifier((8,), max_iter=3, warm_start=True, random_state=0, backend="numpy"), X, y)
    before = clf.coefs_
    _fit_quietly(clf, X, y)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 6 and clf.t_ == 6 * len(X)
    assert max(np.abs(a - b).max() for a, b in zip(before, clf.coefs_)) > 0


def test_warm_start_may_switch_early_stopping():
    """A warm-started fit after one with the other early_stopping setting starts that rule's bookkeeping.

    It trained one epoch and then failed on the bookkeeping of the other rule: "unsupported operand
    type(s) for -: 'NoneType' and 'float'" (best_loss_ is None under early stopping) or "'NoneType'
    object has no attribute 'append'" (validation_scores_ is None without), as scikit-learn's MLPs do.
    """
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0, warm_start=True, backend="numpy")
    on = _fit_quietly(MLPClassifier(early_stopping=False, **kw), X, y)
    _fit_quietly(on.set_params(early_stopping=True), X, y)
    assert len(on.validation_scores_) == on.n_iter_ == 3 and on.best_loss_ is None
    assert on.best_validation_score_ == max(on.validation_scores_) and len(on.loss_curve_) == 6
    off = _fit_quietly(MLPClassifier(early_stopping=True, **kw), X, y)
    _fit_quietly(off.set_params(early_stopping=False), X, y)
    assert off.validation_scores_ is None and off.best_validation_score_ is None
    assert off.best_loss_ == min(off.loss_curve_) and len(off.loss_curve_) == 6


@pytest.mark.parametrize("case", ["multiclass", "regression"])
def test_warm_start_fits_match_sklearn(case):
    """Each warm-started fit runs max_iter epochs from the fitted weights with a fresh optimizer and warns
    when it has not converged, as scikit-learn's; its weights equal scikit-learn's (full-batch SGD with
    momentum: a kept velocity would differ).  A partial_fit after them keeps the optimizer's state."""
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    kw = dict(hidden_layer_sizes=(7,), activation="tanh", solver="sgd", alpha=0.0, batch_size=40, max_iter=3,
              learning_rate_init=0.05, momentum=0.9, random_state=3, tol=0, n_iter_no_change=100, warm_start=True)
    sk, g = Sk(**kw), G(**kw, backend="numpy", dtype="float64")
    for _ in range(3):
        for est in (sk, g):
            with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
                est.fit(X, y)
        for a, b in zip(sk.coefs_, g.coefs_):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
    assert len(g.loss_curve_) == len(sk.loss_curve_) == 9 and g.n_iter_ == sk.n_iter_ == 3 and g.t_ == sk.t_
    velocity = g._optimizer.state["velocity"].copy()
    for est in (sk, g):
        est.partial_fit(X, y)
    assert g.n_iter_ == sk.n_iter_ == 1 and len(g.loss_curve_) == len(sk.loss_curve_) == 10 and g.t_ == sk.t_
    assert np.abs(g._optimizer.state["velocity"] - velocity).max() > 0
    for a, b in zip(sk.coefs_, g.coefs_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["binary", "regression"])
def test_a_warm_started_fit_draws_its_early_stopping_split_from_random_state_anew_as_sklearn(case):
    """scikit-learn makes its generator anew from an int random_state at each fit: a warm-started fit
    splits off the validation set drawn from the seed again.  gpubp's went on drawing from the first fit's
    generator, another split and other validation scores.  (Only the second fit's scores are compared:
    scikit-learn's restored best weights alias its parameters from then on, a bug of its own.)"""
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    kw = dict(hidden_layer_sizes=(5,), solver="sgd", alpha=0.0, batch_size="auto", max_iter=3,
              learning_rate_init=0.05, random_state=3, tol=0, n_iter_no_change=100, warm_start=True,
              early_stopping=True, validation_fraction=0.25, shuffle=False)
    sk, g = Sk(**kw), G(**kw, backend="numpy", dtype="float64")
    for _ in range(2):
        _fit_quietly(sk, X, y)
        _fit_quietly(g, X, y)
    assert len(g.validation_scores_) == 6
    np.testing.assert_allclose(g.validation_scores_, sk.validation_scores_, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- sample_weight
def test_sample_weight_zero_equals_dropping_samples():
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(6,), max_iter=5, solver="sgd", alpha=1e-3, random_state=0, backend="numpy",
              dtype="float64", tol=0, n_iter_no_change=100)
    keep = np.arange(60) < 40
    a = _fit_quietly(MLPClassifier(batch_size=60, **kw), X, y, sample_weight=keep.astype(float))
    b = _fit_quietly(MLPClassifier(batch_size=40, **kw), X[keep], y[keep])
    for wa, wb in zip(a.coefs_, b.coefs_):
        np.testing.assert_allclose(wa, wb, rtol=1e-10, atol=1e-12)


def test_sample_weight_two_equals_duplicating_samples():
    X, y = _blobs(n=30)
    X2, y2 = np.vstack([X, X[:10]]), np.concatenate([y, y[:10]])
    w = np.ones(30)
    w[:10] = 2
    kw = dict(hidden_layer_sizes=(6,), max_iter=5, solver="sgd", alpha=0.0, random_state=0, backend="numpy",
              dtype="float64", tol=0, n_iter_no_change=100)
    a = _fit_quietly(MLPRegressor(batch_size=30, **kw), X, X[:, 0] * y, sample_weight=w)
    b = _fit_quietly(MLPRegressor(batch_size=40, **kw), X2, X2[:, 0] * y2)
    for wa, wb in zip(a.coefs_, b.coefs_):
        np.testing.assert_allclose(wa, wb, rtol=1e-10, atol=1e-12)


def test_sample_weight_changes_the_fit_and_is_checked():
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(6,), max_iter=3, random_state=0, backend="numpy")
    a = _fit_quietly(MLPClassifier(**kw), X, y)
    w = np.where(y == 0, 5.0, 1.0)
    b = _fit_quietly(MLPClassifier(**kw), X, y, sample_weight=w)
    assert max(np.abs(p - q).max() for p, q in zip(a.coefs_, b.coefs_)) > 1e-4
    with pytest.raises(ValueError, match="sample_weight"):
        MLPClassifier(**kw).fit(X, y, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="non-negative"):
        MLPClassifier(**kw).fit(X, y, sample_weight=-np.ones(60))


def test_sample_weight_near_float64s_limits():
    """Only the weights' ratios enter the loss (docs/spec.md), so uniform weights near float64's largest or
    smallest numbers train as no weights when alpha is 0.  Their mean was their sum over n: 1e308 each
    summed to infinity and the weights divided by it became 0 ("the sample weights are all zero").  With
    alpha > 0, scikit-learn divides the penalty by the weight sum: weights so small that it overflows are
    refused naming sample_weight (it was "weight_decay must lie in [0.0, inf), got inf")."""
    X, y = _blobs(n=40)
    kw = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0, backend="numpy", dtype="float64", alpha=0.0)
    plain = _fit_quietly(MLPClassifier(**kw), X, y)
    for w in (1e308, 1e-320):
        weighted = _fit_quietly(MLPClassifier(**kw), X, y, sample_weight=np.full(40, w))
        for a, b in zip(plain.coefs_, weighted.coefs_):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(weighted.loss_curve_, plain.loss_curve_, rtol=1e-12)
    with pytest.raises(ValueError, match="sample_weight.*alpha"):
        MLPClassifier(**dict(kw, alpha=1e-4)).fit(X, y, sample_weight=np.full(40, 1e-320))


# ---------------------------------------------------------------- pickling
def test_pickle_round_trip_keeps_weights_and_optimizer():
    X, y = _blobs()
    kw = dict(hidden_layer_sizes=(8,), random_state=0, backend="numpy", dtype="float64")
    clf = MLPClassifier(**kw).partial_fit(X, y, classes=np.unique(y))
    twin = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(twin.predict_proba(X), clf.predict_proba(X))
    clf.partial_fit(X, y)
    twin.partial_fit(X, y)   # same optimizer state and shuffling generator: same next epoch
    np.testing.assert_allclose(twin.predict_proba(X), clf.predict_proba(X), rtol=1e-12)


# ---------------------------------------------------------------- pandas input
@pytest.mark.parametrize("Est", [MLPClassifier, MLPRegressor])
def test_dataframe_feature_names_and_no_warning_from_early_stopping(Est):
    """A DataFrame's columns become feature_names_in_; fit's own validation split is scored quietly.

    scikit-learn's MLPs score the early-stopping split without re-validating it (it is a plain array
    cut from the validated input); validating it again warned "X does not have valid feature names"
    once per epoch.
    """
    pd = pytest.importorskip("pandas")
    X, y = _blobs(n=100)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    target = y if Est is MLPClassifier else X[:, 0] - X[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = Est((8,), max_iter=4, early_stopping=True, random_state=0, backend="numpy").fit(df, target)
        assert len(est.validation_scores_) == 4
        np.testing.assert_array_equal(est.feature_names_in_, ["a", "b", "c", "d"])
        est.predict(df)
        est.score(df, target)
    with pytest.warns(UserWarning, match="feature names"):
        est.predict(X)                       # a plain array after a DataFrame fit still warns, as in sklearn
    with pytest.raises(ValueError, match="feature names"):
        est.predict(df[["b", "a", "c", "d"]])


# ---------------------------------------------------------------- refused calls
def _fitted_state(est, X):
    """What a refused call must leave as it was: the predictions' bits and the fitted attributes."""
    out = est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X)
    return (out, est.n_features_in_, est.n_iter_, est.t_, list(est.loss_curve_), [c.copy() for c in est.coefs_],
            getattr(est, "classes_", None))


def _assert_same_state(a, b):
    for x, y in zip(a, b):
        if isinstance(x, list) and x and isinstance(x[0], np.ndarray):
            for p, q in zip(x, y):
                np.testing.assert_array_equal(p, q)
        else:
            np.testing.assert_array_equal(x, y)


def test_a_refused_fit_changes_nothing():
    """A fit or partial_fit refused for its input leaves a fitted estimator exactly as it was.

    The checks used to run after the estimator had started to change: validate_data had reset
    n_features_in_ (so after a refused fit on 3 features the 4-feature model refused 4-feature
    input), or the network had been rebuilt with fresh random weights before X or y was found to
    overflow float32 or the validation split to be too small, leaving an untrained model that
    predicted without complaint.
    """
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(6,), max_iter=5, random_state=0, backend="numpy")
    clf = _fit_quietly(MLPClassifier(**kw), X, y)
    before = _fitted_state(clf, X)
    refusals = [
        (lambda: clf.fit(X * 1e39, y), r"beyond the range of float32"),
        (lambda: clf.fit(X[:, :3], y + 0.5), "continuous"),
        (lambda: clf.fit(X[:, :3], y, sample_weight=-np.ones(60)), "non-negative"),
        (lambda: clf.partial_fit(X * 1e39, y), r"beyond the range of float32"),
        (lambda: clf.set_params(early_stopping=True, validation_fraction=0.01).fit(X, y), "validation set"),
        (lambda: clf.set_params(early_stopping=False, dtype="float64", precision="tf32").fit(X[:, :3], y),
         "tf32"),
    ]
    for call, match in refusals:
        with pytest.raises(ValueError, match=match):
            call()
        _assert_same_state(_fitted_state(clf, X), before)
    reg = _fit_quietly(MLPRegressor(**kw), X, X[:, 0])
    before = _fitted_state(reg, X)
    with pytest.raises(ValueError, match="y overflows float32"):
        reg.fit(X, X[:, 0] * 1e39)
    _assert_same_state(_fitted_state(reg, X), before)


@pytest.mark.parametrize("bad", [
    dict(learning_rate_init=0.0), dict(epsilon=0.0), dict(beta_1=1.0), dict(beta_2=1.0), dict(momentum=1.5),
    dict(alpha=-1.0), dict(tol=-1.0), dict(activation="RELU"), dict(solver="sgd", learning_rate_init=0.0),
    dict(batch_size=0), dict(max_iter=0), dict(n_iter_no_change=0), dict(early_stopping=True, validation_fraction=0),
    dict(epsilon=1e-40)],     # positive, but subnormal in the network's float32 (Adam's check, in the epochs)
    ids=repr)
def test_a_fit_refused_for_a_parameter_changes_nothing(bad):
    """A refit (warm_start off) with a parameter out of range is a ValueError naming it, and the fitted network
    stays as it was: the optimizers refuse such values too, but only after the network was rebuilt."""
    X, y = _blobs(n=60)
    clf = _fit_quietly(MLPClassifier((6,), max_iter=3, random_state=0, backend="numpy"), X, y)
    before, params = _fitted_state(clf, X), clf.get_params()
    with pytest.raises(ValueError, match=list(bad)[-1]):
        clf.set_params(**bad).fit(X, y)
    _assert_same_state(_fitted_state(clf.set_params(**params), X), before)


@pytest.mark.parametrize("bad", [dict(solver="adam", epsilon=5e-324), dict(solver="sgd", learning_rate_init=1e308)],
                         ids=repr)
@pytest.mark.parametrize("how", ["fit", "partial_fit"])
def test_a_value_the_loss_scaling_takes_out_of_the_optimizers_range_is_refused_before_anything_changes(bad, how):
    """Multilabel targets scale Adam's eps by 1/n_outputs and SGD's rate by n_outputs: in range alone, such a
    value became 0 or inf, which the optimizer refused only after the network had been rebuilt (a refit left
    an untrained network, no loss_curve_)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((12, 3)), rng.integers(0, 2, (12, 3))
    clf = _fit_quietly(MLPClassifier((2,), max_iter=2, random_state=0, backend="numpy"), X, Y)
    before, params = _fitted_state(clf, X), clf.get_params()
    fresh = MLPClassifier((2,), random_state=0, backend="numpy", **bad)
    with pytest.raises(ValueError, match=list(bad)[-1]) as e:
        clf.set_params(**bad).fit(X, Y) if how == "fit" else fresh.partial_fit(X, Y, classes=[0, 1, 2])
    if "epsilon" in bad:     # the least epsilon the user can pass: float32's tiny over the loss's c = 1/3
        assert f"epsilon must be at least {float(np.finfo(np.float32).tiny) * 3:.3g}" in str(e.value), str(e.value)
    _assert_same_state(_fitted_state(clf.set_params(**params), X), before)
    assert not hasattr(fresh, "net_")


def test_a_refused_warm_start_fit_does_not_move_the_random_state():
    """A warm-started fit refused after its early-stopping split had drawn from the estimator's random
    state: the next fit then split differently from one after no refused call."""
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(6,), max_iter=3, random_state=0, backend="numpy", dtype="float64",
              warm_start=True, early_stopping=True)
    a, b = _fit_quietly(MLPClassifier(**kw), X, y), _fit_quietly(MLPClassifier(**kw), X, y)
    with pytest.raises(ValueError, match="validation set"):
        b.set_params(validation_fraction=0.01).fit(X, y)
    b.set_params(validation_fraction=0.1)
    _fit_quietly(a, X, y)
    _fit_quietly(b, X, y)
    assert a.validation_scores_ == b.validation_scores_
    for p, q in zip(a.coefs_, b.coefs_):
        np.testing.assert_array_equal(p, q)


def test_a_refused_first_fit_does_not_move_a_random_state_given_as_a_generator():
    """random_state=RandomState(0): a first fit refused after drawing the initial weights (its validation
    split too small) left the caller's generator advanced, so the next fit started from other weights
    than a fit that had not been refused."""
    X, y = _blobs(n=30)
    rs = np.random.RandomState(0)
    est = MLPClassifier((4,), max_iter=2, random_state=rs, backend="numpy", early_stopping=True,
                        validation_fraction=0.01)
    with pytest.raises(ValueError, match="validation set"):
        est.fit(X, y)
    assert rs.randint(1 << 30) == np.random.RandomState(0).randint(1 << 30)
    rs.seed(0)
    with pytest.raises(ValueError, match="validation set"):
        est.fit(X, y)
    _fit_quietly(est.set_params(validation_fraction=0.2), X, y)
    fresh = _fit_quietly(MLPClassifier((4,), max_iter=2, random_state=np.random.RandomState(0), backend="numpy",
                                       early_stopping=True, validation_fraction=0.2), X, y)
    for p, q in zip(est.coefs_, fresh.coefs_):
        np.testing.assert_array_equal(p, q)


def test_early_stopping_training_weights_all_zero_is_a_clear_error():
    """Weights whose only positive entry the validation split takes: the training rows' weights sum to
    zero, which raised a bare ZeroDivisionError ("float division by zero") from the weight decay."""
    X, _ = _blobs(n=30)
    messages = set()
    for i in range(30):                      # one positive weight: in the training split or the validation one
        w = np.zeros(30)
        w[i] = 1.0
        est = MLPRegressor((4,), max_iter=1, random_state=0, backend="numpy", early_stopping=True,
                           validation_fraction=0.2)
        with pytest.raises(ValueError) as e:  # never another exception
            est.fit(X, X[:, 0], sample_weight=w)
        messages.add(str(e.value))
        assert not hasattr(est, "net_")
    assert any("sample_weight" in m and "training" in m for m in messages), messages


# ---------------------------------------------------------------- precision modes
def test_precision_is_a_parameter_clone_and_set_params_keep():
    est = MLPRegressor(precision="bf16", backend="numpy")
    assert est.get_params()["precision"] == "bf16" and clone(est).precision == "bf16"
    assert clone(est.set_params(precision="3xtf32")).get_params()["precision"] == "3xtf32"
    X, y = _blobs(n=40)
    reg = _fit_quietly(MLPRegressor(hidden_layer_sizes=(6,), max_iter=2, random_state=0, backend="numpy",
                                    precision="tf32"), X, X[:, 0])
    assert reg.net_.precision == "tf32"


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_a_precision_set_after_fitting_is_what_the_next_epochs_train_in(how):
    """A warm-started fit or a partial_fit after set_params(precision=...) kept training the fitted
    network in the mode it was built with, while get_params() reported the new one."""
    from gpubp.precision import to_bf16

    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(6,), max_iter=3, random_state=0, backend="numpy", warm_start=True)
    a, b = (_fit_quietly(MLPRegressor(**kw), X, X[:, 0]) for _ in range(2))
    b.set_params(precision="bf16")
    for est in (a, b):
        if how == "warm_start":
            _fit_quietly(est, X, X[:, 0])
        else:
            est.partial_fit(X, X[:, 0])
    assert a.net_.precision == "float32" and b.net_.precision == "bf16"
    out = b.predict(X).astype(np.float32)
    assert np.array_equal(to_bf16(out), out)            # bf16 outputs: the network runs in bf16
    assert not np.array_equal(a.coefs_[0], b.coefs_[0])  # and trained in it


def test_a_precision_the_fitted_network_cannot_run_is_refused_and_changes_nothing():
    """A warm-started fit or partial_fit refused for a precision the network cannot run leaves the
    estimator as it was, its optimizer's state included: a partial_fit after them continues as one
    without them."""
    X, y = _blobs(n=60)
    reg, twin = (_fit_quietly(MLPRegressor(hidden_layer_sizes=(6,), max_iter=2, random_state=0, backend="numpy",
                                           dtype="float64", warm_start=True), X, X[:, 0]) for _ in range(2))
    before = _fitted_state(reg, X)
    for call in (lambda: reg.fit(X, X[:, 0]), lambda: reg.partial_fit(X, X[:, 0])):
        with pytest.raises(ValueError, match="precision='tf32' needs dtype float32, got float64"):
            reg.set_params(precision="tf32")
            call()
        _assert_same_state(_fitted_state(reg, X), before)
        assert reg.net_.precision == "float32"
    for est in (reg.set_params(precision="float32"), twin):
        est.partial_fit(X, X[:, 0])
    _assert_same_state(_fitted_state(reg, X), _fitted_state(twin, X))


# ---------------------------------------------------------------- warm starts on other data
def test_a_warm_started_fit_needs_the_classes_it_was_fitted_on():
    """scikit-learn's MLPClassifier refuses a warm-started fit whose y lacks some of classes_ or has others.
    Ours trained on a y of fewer classes without a word (the network kept predicting a class the fit
    never saw).  partial_fit's batches may hold any of the classes (scikit-learn's refuses that too with
    warm_start=True, though not without it: a batch is not the whole data)."""
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(6,), max_iter=3, random_state=0, warm_start=True)
    for Est, extra in ((SkMLPClassifier, {}), (MLPClassifier, {"backend": "numpy"})):
        est = _fit_quietly(Est(**kw, **extra), X, y)
        before = _fitted_state(est, X)
        for bad in (y % 2, y + 1):          # a class missing; a new class
            with pytest.raises(ValueError, match="warm_start can only be used where .*y.* has the same classes"):
                est.fit(X, bad)
            _assert_same_state(_fitted_state(est, X), before)
        _fit_quietly(est, X, y[::-1])                    # the same classes in another order: fine
    est.partial_fit(X[y < 2], y[y < 2])                  # a batch of some classes: fine
    assert list(est.classes_) == [0, 1, 2]


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_an_activation_set_after_fitting_is_what_the_next_epochs_train_in(how):
    """scikit-learn's MLPs run the estimator's activation at each pass: after set_params(activation=...)
    a warm-started fit or a partial_fit trains the fitted weights in the new one.  Ours kept training
    and predicting in the activation the network was built with, while get_params() reported the new
    one."""
    X, _, sk, g = switch_activation("regression", (7,), how)
    assert g.net_.activations == ("tanh", "identity")
    for a, b in zip(sk.coefs_, g.coefs_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.predict(X), sk.predict(X), rtol=0, atol=1e-12)
    twin = pickle.loads(pickle.dumps(g))                 # the switched network is what a copy holds
    np.testing.assert_array_equal(twin.predict(X), g.predict(X))


@pytest.mark.parametrize("case", ["multiclass", "regression"])
def test_an_activation_set_after_fitting_is_what_predict_runs_without_a_refit(case):
    """scikit-learn's predict reads `self.activation`: after set_params(activation="tanh") on a fitted
    estimator it predicts with the fitted weights in tanh.  Ours went on predicting in the activation the
    network was built with (until the next fit) while get_params() reported the new one."""
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    kw = dict(hidden_layer_sizes=(7,), activation="relu", solver="sgd", alpha=0.0, batch_size=40, max_iter=3,
              learning_rate_init=0.05, momentum=0.9, random_state=3, tol=0, n_iter_no_change=100)
    sk = _fit_quietly(Sk(**kw), X, y)
    g = _fit_quietly(G(**kw, backend="numpy", dtype="float64"), X, y)
    for act in ("tanh", "logistic", "identity", "relu"):
        sk.set_params(activation=act)
        g.set_params(activation=act)
        assert g.get_params()["activation"] == act
        np.testing.assert_allclose(g.predict(X), sk.predict(X), rtol=0, atol=1e-12)
        if case == "multiclass":
            np.testing.assert_allclose(g.predict_proba(X), sk.predict_proba(X), rtol=0, atol=1e-12)
    g.set_params(activation="softmax")   # not one of ours: said, as fit says it, nothing changed
    with pytest.raises(ValueError, match="activation must be one of"):
        g.predict(X)
    assert g.net_.activations == ("relu", "identity")


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_other_hidden_layer_sizes_after_fitting_are_refused(how):
    """A warm-started fit or a partial_fit after set_params(hidden_layer_sizes=...) went on training the
    fitted network of the old sizes without a word (scikit-learn's do too, and fail with an
    AttributeError or TypeError on another depth): it is refused, nothing changed."""
    X, y = _blobs(n=60)
    est = _fit_quietly(MLPClassifier((6,), max_iter=2, random_state=0, warm_start=True, backend="numpy"), X, y)
    before = _fitted_state(est, X)
    for sizes in ((7,), (6, 4), 5):
        est.set_params(hidden_layer_sizes=sizes)
        with pytest.raises(ValueError, match=r"hidden_layer_sizes=.* is not the fitted network's \(6,\)"):
            est.fit(X, y) if how == "warm_start" else est.partial_fit(X, y)
        _assert_same_state(_fitted_state(est, X), before)
    est.set_params(hidden_layer_sizes=[6])               # the same sizes, spelled another way: fine
    _fit_quietly(est, X, y) if how == "warm_start" else est.partial_fit(X, y)
    assert est.n_layers_ == 3


def test_a_column_vector_y_warns_as_in_sklearn():
    """scikit-learn's MLPRegressor (and both classifiers) warn DataConversionWarning for a y of shape (n, 1)
    and predict (n,); ours predicted (n,) without the warning."""
    from sklearn.exceptions import DataConversionWarning

    X, _ = _blobs(n=40)
    for Est in (SkMLPRegressor, MLPRegressor):
        est = Est(hidden_layer_sizes=(4,), max_iter=2, random_state=0,
                  **({"backend": "numpy"} if Est is MLPRegressor else {}))   # (scikit-learn's first is loss)
        with pytest.warns(DataConversionWarning, match="column-vector y"):
            _fit_quietly(est, X, X[:, :1])
        assert est.predict(X).shape == (40,) and est.n_outputs_ == 1
    for Est in (SkMLPClassifier, MLPClassifier):
        for labels in (np.arange(40) % 3, np.arange(40) % 2 + 5):
            est = Est(hidden_layer_sizes=(4,), max_iter=2, random_state=0,
                      **({"backend": "numpy"} if Est is MLPClassifier else {}))
            with pytest.warns(DataConversionWarning, match="column-vector y"):
                _fit_quietly(est, X, labels[:, None])
            assert est.predict(X).shape == (40,) and est.classes_.tolist() == np.unique(labels).tolist()


@pytest.mark.parametrize("early_stopping", [False, True])
def test_ctrl_c_ends_training_and_fit_returns_the_estimator(early_stopping):
    """scikit-learn's MLPs catch a KeyboardInterrupt during the epochs, warn "Training interrupted by
    user." and return the estimator as trained so far (restoring early stopping's best epoch), so that
    `clf = MLPClassifier().fit(X, y)` stopped by Ctrl-C still gives a model.  Ours let the interrupt
    through: fit raised and nothing was assigned."""
    X, y = _blobs(n=60)
    est = MLPClassifier((6,), max_iter=20, random_state=0, backend="numpy", dtype="float64", tol=0,
                        early_stopping=early_stopping, n_iter_no_change=100)
    from gpubp.network import MLP

    calls = []
    real_fit = MLP.fit

    def interrupted_on_the_fourth_epoch(self, *a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_fit(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MLP, "fit", interrupted_on_the_fourth_epoch)
        try:
            with pytest.warns(UserWarning, match="Training interrupted by user"):
                assert est.fit(X, y) is est
        except KeyboardInterrupt:               # (not let through: it would end the test run)
            pytest.fail("the KeyboardInterrupt came through fit")
    assert est.n_iter_ == len(est.loss_curve_) == 3 and est.t_ == 3 * (len(X) - (6 if early_stopping else 0))
    if early_stopping:
        assert len(est.validation_scores_) == 3
        best = int(np.argmax(est.validation_scores_)) + 1
        at_best = _fit_quietly(clone(est).set_params(max_iter=best), X, y)
        for a, b in zip(at_best.coefs_, est.coefs_):   # the best epoch's weights, restored
            np.testing.assert_array_equal(b, a)
    assert est.predict(X).shape == y.shape


_Y3 = np.arange(30) % 3
_Y01 = np.arange(30) % 2
_YML = np.stack([_Y3 == 0, _Y3 != 1, _Y3 == 2], axis=1).astype(int)

#: sequences of calls (method, y, classes) on one estimator; after each, both must refuse or both accept
#: and agree on classes_
CLASS_SEQUENCES = {
    "partial_fit classes reordered later": [("partial_fit", _Y3, [2, 0, 1]), ("partial_fit", _Y3, [1, 2, 0])],
    "partial_fit classes changed later": [("partial_fit", _Y3, [0, 1, 2]), ("partial_fit", _Y3, [0, 1])],
    "partial_fit classes beyond y": [("partial_fit", _Y01, [0, 1, 2]), ("partial_fit", _Y3, None)],
    "partial_fit y beyond classes": [("partial_fit", _Y3, [0, 1])],
    "partial_fit a new label later": [("partial_fit", _Y01, [0, 1]), ("partial_fit", _Y3, None)],
    "partial_fit one class of two": [("partial_fit", np.zeros(30, int), [0, 1])],
    "partial_fit binary then fewer": [("partial_fit", _Y01, [0, 1]), ("partial_fit", np.ones(30, int), None)],
    "warm fit same classes": [("warm", _Y3, None), ("warm", _Y3[::-1], None)],
    "warm fit fewer classes": [("warm", _Y3, None), ("warm", _Y01, None)],
    "warm fit more classes": [("warm", _Y01, None), ("warm", _Y3, None)],
    "cold fit other classes": [("fit", _Y3, None), ("fit", _Y01, None), ("fit", _Y3 + 5, None)],
    "warm labels then multilabel": [("warm", _Y3, None), ("warm", _YML, None)],
    "warm multilabel fewer columns": [("warm", _YML, None), ("warm", _YML[:, :2], None)],
    "cold multilabel then labels": [("fit", _YML, None), ("fit", _Y01, None)],
    "partial_fit multilabel fewer columns": [("partial_fit", _YML, [0, 1, 2]), ("partial_fit", _YML[:, :2], None)],
    "partial_fit labels then multilabel": [("partial_fit", _Y3, [0, 1, 2]), ("partial_fit", _YML, None)],
}


@pytest.mark.parametrize("name", list(CLASS_SEQUENCES))
def test_classes_across_fits_as_sklearn(name):
    """partial_fit's classes, a warm-started fit's classes, and a cold refit on new ones: refused or accepted,
    and classes_ after, as scikit-learn's MLPClassifier (asked, not copied).  (One class and a label vector
    warm-starting a multilabel network are refused by gpubp only: test_one_class_is_refused_naming_the_class.)"""
    X = np.random.default_rng(0).normal(size=(30, 3))
    ours = MLPClassifier((3,), max_iter=1, random_state=0, backend="numpy")
    theirs = SkMLPClassifier((3,), max_iter=1, random_state=0)
    for step, (how, y, classes) in enumerate(CLASS_SEQUENCES[name]):
        outcome = []
        for est in (ours, theirs):
            est.set_params(warm_start=how == "warm")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    if how == "partial_fit":
                        est.partial_fit(X, y, classes=classes)
                    else:
                        est.fit(X, y)
                outcome.append(est.classes_.tolist())
            except ValueError:
                outcome.append("refused")
        assert outcome[0] == outcome[1], (step, outcome)


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_a_label_vector_after_a_multilabel_fit_is_refused(how):
    """gpubp only (scikit-learn trains on when the labels happen to number the columns): a network fitted on a
    multilabel indicator matrix refuses a label vector with a ValueError saying so, and stays as it was."""
    X = np.random.default_rng(0).normal(size=(30, 3))
    est = MLPClassifier((3,), max_iter=1, random_state=0, backend="numpy", warm_start=how == "warm_start")
    _fit_quietly(est, X, _YML) if how == "warm_start" else est.partial_fit(X, _YML, classes=[0, 1, 2])
    before = _fitted_state(est, X)
    with pytest.raises(ValueError, match="multilabel indicator matrix; y is a label vector"):
        _fit_quietly(est, X, _Y3) if how == "warm_start" else est.partial_fit(X, _Y3)
    _assert_same_state(_fitted_state(est, X), before)


def test_an_indicator_matrix_of_other_values_than_0_and_1_is_refused_before_training():
    """type_of_target calls any matrix of two integers multilabel ({-1, 1}, {0, 2}): gpubp's loss refused
    it from inside the first epoch ("Y: binary_cross_entropy targets must lie in [0, 1]"), leaving a first
    fit looking fitted (net_, classes_, predictions from its initial weights) and a refused partial_fit
    with n_iter_ reset.  Refused before training now, naming y, and nothing changes."""
    X = np.random.default_rng(0).normal(size=(30, 3))
    for bad in (_YML * 2, _YML * 2 - 1, _YML - 1):
        est = MLPClassifier((3,), max_iter=1, random_state=0, backend="numpy")
        with pytest.raises(ValueError, match="multilabel indicator matrix y must hold 0 and 1 only"):
            est.fit(X, bad)
        assert not hasattr(est, "net_") and not hasattr(est, "classes_")
        est = _fit_quietly(est, X, _YML)
        before = _fitted_state(est, X)
        with pytest.raises(ValueError, match="must hold 0 and 1 only"):
            est.partial_fit(X, bad)
        _assert_same_state(_fitted_state(est, X), before)
    _fit_quietly(MLPClassifier((3,), max_iter=1, backend="numpy"), X, _YML.astype(bool))   # True/False are 1/0


def test_a_continued_regressor_fit_needs_the_number_of_targets_it_was_fitted_on():
    """partial_fit and a warm-started fit continue the fitted network: a y of another number of targets is
    refused (scikit-learn's MLPRegressor refuses it too, with numpy's matmul error, after resetting n_iter_);
    ours says why and changes nothing."""
    X, y = _blobs(n=40)
    Y2 = np.column_stack([X[:, 0], X[:, 1] * y])
    for Est, extra in ((SkMLPRegressor, {}), (MLPRegressor, {"backend": "numpy"})):
        est = _fit_quietly(Est(hidden_layer_sizes=(5,), max_iter=3, random_state=0, warm_start=True, **extra), X,
                           X[:, 0])
        before = _fitted_state(est, X)
        for call in (est.partial_fit, est.fit):
            with pytest.raises(ValueError, match="" if Est is SkMLPRegressor else
                               "y has 2 targets; this regressor was fitted on 1"):
                call(X, Y2)
            if Est is MLPRegressor:
                _assert_same_state(_fitted_state(est, X), before)
                assert est.n_outputs_ == 1


def test_partial_fit_classes_must_be_a_list_of_labels():
    """classes=[[0, 1, 2]] (or a scalar) was flattened by np.unique and taken; scikit-learn refuses it."""
    X, y = _blobs(n=30)
    for bad in ([[0, 1, 2]], np.array([[0, 1], [2, 3]]), 2):
        est = MLPClassifier((4,), backend="numpy")
        with pytest.raises(ValueError, match="classes must be a 1-D list of labels"):
            est.partial_fit(X, y, classes=bad)
        assert not hasattr(est, "net_")
    with pytest.raises(ValueError):
        SkMLPClassifier((4,)).partial_fit(X, y, classes=[[0, 1, 2]])


def test_a_first_multilabel_partial_fit_takes_only_the_classes_of_its_indicator_columns():
    """classes=[0, 1] for a 3-label indicator matrix was ignored (classes_ [0, 1, 2]), and the same classes
    then refused by the next call as "not the same as on the first call"; scikit-learn refuses the first."""
    X, Y = np.random.default_rng(0).standard_normal((12, 3)), np.eye(3, dtype=int)[np.arange(12) % 3]
    for bad in ([0, 1], ["a", "b", "c"]):
        est = MLPClassifier((2,), backend="numpy")
        with pytest.raises(ValueError, match="indicator"):
            est.partial_fit(X, Y, classes=bad)
        assert not hasattr(est, "net_")
    est = MLPClassifier((2,), backend="numpy").partial_fit(X, Y, classes=[2, 0, 1])
    est.partial_fit(X, Y, classes=[0, 1, 2])
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])


def test_coefs_and_intercepts_are_set_as_in_sklearn_and_never_written_in_vain():
    """scikit-learn's coefs_/intercepts_ are the model: assigning a list, or writing into one of its
    arrays, changes the predictions.  Ours returned fresh copies: `est.coefs_[0][...] = W` changed nothing
    without a word, and `est.coefs_ = [...]` raised "property 'coefs_' ... has no setter".  Writing into
    a copy is now refused (read-only), assigning sets the network's parameters: the weights of a
    scikit-learn MLP assigned to ours predict as it does."""
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(6, 5), activation="tanh", max_iter=5, random_state=0)
    sk = _fit_quietly(SkMLPClassifier(**kw), X, y)
    est = _fit_quietly(MLPClassifier(**dict(kw, random_state=1), backend="numpy", dtype="float64"), X, y)
    before = est.predict_proba(X)
    with pytest.raises(ValueError, match="read-only"):
        est.coefs_[0][...] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        est.intercepts_[1] += 1.0
    np.testing.assert_array_equal(est.predict_proba(X), before)
    for bad, match in (([c.T for c in sk.coefs_], r"coefs_\[0\] has shape \(6, 4\); expected \(4, 6\)"),
                       (sk.coefs_[:2], "needs 3 arrays")):
        with pytest.raises(ValueError, match=match):
            est.coefs_ = bad
        np.testing.assert_array_equal(est.predict_proba(X), before)
    est.coefs_, est.intercepts_ = sk.coefs_, sk.intercepts_
    np.testing.assert_allclose(est.predict_proba(X), sk.predict_proba(X), rtol=1e-12, atol=1e-15)
    for a, b in zip(est.coefs_, sk.coefs_):
        np.testing.assert_array_equal(a, b)


def test_one_class_is_refused_naming_the_class():
    """As scikit-learn's LogisticRegression ("... only one class: 0"); the label was shown as numpy's repr
    ("np.str_('cat')", "np.int64(0)")."""
    X, _ = _blobs(n=20)
    for y, shown in ((np.full(20, "cat"), "('cat')"), (np.zeros(20, int), "(0)")):
        est = MLPClassifier((4,), backend="numpy")
        with pytest.raises(ValueError) as e:
            est.fit(X, y)
        assert str(e.value).endswith(f"at least 2 classes; got 1 class {shown}") and not hasattr(est, "net_")


def test_dates_and_text_in_X_are_refused():
    """validate_data's conversion to float read a datetime64 or timedelta64 X as day counts and parsed
    numeric text (str, bytes, pandas' text columns): such an X trained and predicted without a word
    (scikit-learn's MLPs fail on dates and refuse text at predict).  The targets were refused
    alike already (y must hold real numbers)."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 2)), np.arange(8) % 2
    days = np.arange(16).astype("datetime64[D]").reshape(8, 2)
    bad = [days, days - days[0, 0], X.astype(str), X.astype("S8"), X.astype(str).tolist(),
           pd.DataFrame({"a": X[:, 0], "b": pd.date_range("2020-01-01", periods=8)}),
           pd.DataFrame({"a": X[:, 0], "b": pd.array(X[:, 1].astype(str), dtype="string")}),
           # text in object arrays (pandas' text columns before pandas 3) was parsed too
           X.astype(str).astype(object),
           pd.DataFrame({"a": X[:, 0], "b": pd.Series(X[:, 1].astype(str), dtype=object)}),
           pd.DataFrame({"a": X[:, 0], "b": pd.Categorical(np.arange(8).astype(str))})]
    for Est in (MLPClassifier, MLPRegressor):
        fitted = _fit_quietly(Est((3,), max_iter=2, random_state=0, backend="numpy"), X, y)
        before = _fitted_state(fitted, X)
        for Xb in bad:
            with pytest.raises(ValueError, match="X must hold real numbers, got dtype"):
                Est((3,), max_iter=2, backend="numpy").fit(Xb, y)
            for call in (lambda: fitted.fit(Xb, y), lambda: fitted.predict(Xb)):
                with pytest.raises(ValueError, match="X must hold real numbers, got dtype"):
                    call()
            _assert_same_state(_fitted_state(fitted, X), before)
    sk = _fit_quietly(SkMLPRegressor(hidden_layer_sizes=(3,), max_iter=2), days, y)  # scikit-learn's fail on dates at
    with pytest.raises(TypeError):                                         # predict ("ufunc 'matmul' ...")
        sk.predict(days)
    for yb in (pd.Series(X[:, 0].astype(str)), pd.DataFrame({"a": X[:, 0].astype(str), "b": X[:, 1]})):
        with pytest.raises(ValueError, match="y must hold real numbers"):   # pandas' text as targets: parsed
            MLPRegressor((3,), max_iter=2, backend="numpy").fit(X, yb)
    # numbers in object arrays and pandas' nullable columns are numbers
    df = pd.DataFrame({"a": X[:, 0], "b": pd.array(np.arange(8), dtype="Int64")})
    _fit_quietly(MLPRegressor((3,), max_iter=2, backend="numpy"), df, y).predict(df)
    _fit_quietly(MLPRegressor((3,), max_iter=2, backend="numpy"), X.astype(object), y).predict(X.astype(object))


@pytest.mark.parametrize("bad, err, words", [
    (["1", "2"], TypeError, "numeric"),             # text is not parsed as numbers
    (np.array(["1", 2], dtype=object), TypeError, "numeric"),
    (np.array([object(), 1.0], dtype=object), TypeError, "numeric"),   # (pandas' NA alike)
    (np.array([None] + [1.0] * 39, dtype=object), ValueError, "NaN"),
    (np.inf, ValueError, "infinity"),               # scikit-learn: "contains infinity"
    ("inf_in_one", ValueError, "infinity"),
    ("nan_in_one", ValueError, "NaN"),
    (0.0, ValueError, "sums to zero"),              # scikit-learn: "must contain at least one non-zero number"
])
def test_sample_weight_refusals_as_in_sklearn(bad, err, words):
    X, y = _blobs(n=40)
    w = {"inf_in_one": np.r_[np.inf, np.ones(39)], "nan_in_one": np.r_[np.nan, np.ones(39)]}.get(
        bad if isinstance(bad, str) else None, bad)
    if isinstance(bad, list):
        w = np.array(bad * 20)
    with pytest.raises(err, match=words):
        MLPClassifier((4,), max_iter=2, random_state=0, backend="numpy").fit(X, y, sample_weight=w)


def test_sample_weight_of_numbers_held_as_objects_is_accepted_as_in_sklearn():
    """Numbers in an object array (a pandas object column) were refused ("sample_weight must be numeric,
    got dtype object"), where scikit-learn's MLPs, and gpubp's X, take them as numbers."""
    X, y = _blobs(n=40)
    w = np.random.default_rng(1).uniform(0.5, 2, 40)
    kw = dict(hidden_layer_sizes=(4,), max_iter=2, random_state=0, backend="numpy", dtype="float64")
    a = _fit_quietly(MLPClassifier(**kw), X, y, sample_weight=w)
    b = _fit_quietly(MLPClassifier(**kw), X, y, sample_weight=w.astype(object))
    for p, q in zip(a.coefs_, b.coefs_):
        np.testing.assert_array_equal(p, q)


def test_a_batch_of_zero_weights_trains_as_if_it_were_dropped():
    """A whole batch of weight 0 adds nothing to the loss and its gradient is 0 (scikit-learn's own MLPs
    divide by its weight sum and fail): plain SGD over the other batches gives the weights and the loss
    curve of fitting without those rows."""
    X, y = _blobs(n=40)
    w = np.ones(40)
    w[:10] = 0
    kw = dict(hidden_layer_sizes=(4,), batch_size=10, shuffle=False, max_iter=3, random_state=0, solver="sgd",
              momentum=0.0, alpha=0.0, backend="numpy", dtype="float64")
    a = _fit_quietly(MLPClassifier(**kw), X, y, sample_weight=w)
    b = _fit_quietly(MLPClassifier(**kw), X[10:], y[10:])
    for wa, wb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)


def test_the_epochs_sample_order_comes_from_random_state():
    """The module's documentation: each epoch's sample order comes from the network's generator, seeded
    from `random_state`.  Two estimators of other random states given the same weights then train
    differently (they visit the samples in other orders), and alike without shuffling."""
    X, y = _blobs(n=60)
    for shuffle in (True, False):
        kw = dict(hidden_layer_sizes=(5,), batch_size=10, max_iter=1, shuffle=shuffle, solver="sgd",
                  backend="numpy", dtype="float64", warm_start=True)
        a = _fit_quietly(MLPClassifier(random_state=0, **kw), X, y)
        b = _fit_quietly(MLPClassifier(random_state=1, **kw), X, y)
        b.coefs_, b.intercepts_ = a.coefs_, a.intercepts_
        a, b = _fit_quietly(a, X, y), _fit_quietly(b, X, y)
        diff = max(np.abs(p - q).max() for p, q in zip(a.coefs_, b.coefs_))
        assert diff > 1e-6 if shuffle else diff == 0


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("n_iter_no_change", [1, 3])
def test_tol_stops_after_the_epochs_sklearn_stops_after(early_stopping, n_iter_no_change):
    """With a tol no epoch can beat, scikit-learn's MLPs stop after the first epoch and
    n_iter_no_change + 1 more (the count starts at 0 on a fresh network)."""
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(4,), max_iter=50, random_state=0, tol=1e3, n_iter_no_change=n_iter_no_change,
              early_stopping=early_stopping)
    sk = SkMLPClassifier(**kw).fit(X, y)
    g = MLPClassifier(backend="numpy", **kw).fit(X, y)
    assert g.n_iter_ == sk.n_iter_ == n_iter_no_change + 2


@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu", "identity"])
def test_initial_weights_are_sklearns_glorot_for_each_activation(activation):
    """scikit-learn draws Glorot-uniform weights with bound sqrt(2 / (fan_in + fan_out)) for the logistic
    activation and sqrt(6 / (fan_in + fan_out)) for the others, from random_state; one step of a vanishing
    learning rate leaves them as drawn, so both estimators hold the same numbers."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 3, 30)
    kw = dict(hidden_layer_sizes=(5, 4), activation=activation, solver="sgd", learning_rate_init=1e-12,
              max_iter=1, random_state=7, batch_size=30)
    sk = _fit_quietly(SkMLPClassifier(**kw), X, y)
    g = _fit_quietly(MLPClassifier(backend="numpy", dtype="float64", **kw), X, y)
    for a, b in zip(sk.coefs_ + sk.intercepts_, g.coefs_ + g.intercepts_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


@pytest.mark.parametrize("Est", [MLPClassifier, MLPRegressor])
def test_batch_size_warns_exactly_when_above_the_samples_as_in_sklearn(Est):
    """scikit-learn warns that a batch_size larger than the samples is clipped; one equal to them is a
    plain full batch, without a warning."""
    X, y = _blobs(n=30)
    kw = dict(hidden_layer_sizes=(4,), max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)     # a UserWarning too
        Est(batch_size=30, backend="numpy", **kw).fit(X, y)
        SkMLPClassifier(batch_size=30, **kw).fit(X, y)
    for est in (Est(batch_size=31, backend="numpy", **kw), SkMLPClassifier(batch_size=31, **kw)):
        with pytest.warns(UserWarning, match="batch_size"):
            _fit_quietly(est, X, y)


def test_loss_curve_penalty_counts_every_batch_of_an_uneven_split_as_sklearn():
    """scikit-learn adds alpha / 2 * ||W||^2 / len(batch) to each batch's loss and averages by rows:
    an epoch of 40 rows in batches of 16 adds the penalty three times (the last batch of 8 too).
    With a tiny learning rate the weights barely move within an epoch, so the curves agree closely."""
    X, cases = _parity_cases()
    y = cases["multiclass"][2]
    kw = dict(hidden_layer_sizes=(6,), activation="tanh", solver="sgd", alpha=0.5, batch_size=16, max_iter=3,
              learning_rate_init=1e-4, momentum=0.0, shuffle=False, random_state=0, tol=0, n_iter_no_change=100)
    sk = _fit_quietly(SkMLPClassifier(**kw), X, y)
    g = _fit_quietly(MLPClassifier(backend="numpy", dtype="float64", **kw), X, y)
    np.testing.assert_allclose(g.loss_curve_, sk.loss_curve_, rtol=1e-4)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_verbose_prints_sklearns_lines_per_epoch(early_stopping, capsys):
    """One line per epoch (two with early stopping), and the reason when tol stops the training."""
    X, y = _blobs(n=60)
    kw = dict(hidden_layer_sizes=(4,), max_iter=9, random_state=0, verbose=True, early_stopping=early_stopping,
              tol=1e3, n_iter_no_change=1)
    printed = []
    for est in (SkMLPClassifier(**kw), MLPClassifier(backend="numpy", **kw)):
        _fit_quietly(est, X, y)
        lines = capsys.readouterr().out.splitlines()
        printed.append([line.split(",")[0].split(":")[0] for line in lines])
    assert printed[1] == printed[0]
    assert printed[0].count("Iteration 3") == 1 and "Iteration 4" not in printed[0]
    assert printed[0].count("Validation score") == 3 * early_stopping
    assert printed[0][-1].endswith("did not improve more than tol=1000.000000 for 1 consecutive epochs. Stopping.")


@pytest.mark.parametrize("switch_to", [True, False])
@pytest.mark.parametrize("n_iter_no_change", [1, 3])
def test_a_warm_start_switching_early_stopping_counts_from_zero(switch_to, n_iter_no_change):
    """The new stopping rule's bookkeeping starts at the switch (no epoch without improvement yet): with
    a tol no epoch can beat, early stopping stops after the first epoch and n_iter_no_change + 1 more, as
    a fresh fit does; the training-loss rule, whose best loss is the curve's so far, after
    n_iter_no_change + 1 epochs."""
    X, y = _blobs(n=60)
    est = MLPClassifier((4,), max_iter=2, random_state=0, warm_start=True, early_stopping=not switch_to,
                        backend="numpy")
    _fit_quietly(est, X, y)
    _fit_quietly(est.set_params(early_stopping=switch_to, tol=1e3, n_iter_no_change=n_iter_no_change,
                                max_iter=50), X, y)
    assert est.n_iter_ == n_iter_no_change + (2 if switch_to else 1)


def test_early_stopping_that_cannot_split_is_a_value_error_as_in_sklearn():
    """A stratified validation split of a class with one sample fails in scikit-learn's MLPs with a
    ValueError; ours says so naming early_stopping, and changes nothing."""
    X = np.random.default_rng(0).normal(size=(10, 3))
    y = np.array([0] * 9 + [1])
    with pytest.raises(ValueError, match="least populated"):
        SkMLPClassifier(early_stopping=True, max_iter=2).fit(X, y)
    with pytest.raises(ValueError, match="early_stopping cannot split.* from 10 samples: .*least populated"):
        MLPClassifier(early_stopping=True, max_iter=2, backend="numpy").fit(X, y)


def test_batch_size_auto_is_min_200_n_samples():
    """scikit-learn's batch_size='auto' is min(200, n_samples): 250 samples train in batches of 200."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(250, 3))
    kw = dict(hidden_layer_sizes=(3,), max_iter=1, shuffle=False, random_state=0, solver="sgd", backend="numpy",
              dtype="float64")
    auto = _fit_quietly(MLPRegressor(**kw), X, X[:, 0])
    for bs, same in ((200, True), (201, False)):
        other = _fit_quietly(MLPRegressor(batch_size=bs, **kw), X, X[:, 0])
        assert all(np.array_equal(a, b) for a, b in zip(auto.coefs_, other.coefs_)) == same
