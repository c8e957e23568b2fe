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
from support.sklearn_parity import fit_quietly as _fit_quietly  # noqa: E402
from support.sklearn_parity import parity_cases as _parity_cases  # noqa: E402
from support.sklearn_parity import switch_activation  # noqa: E402


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _blobs(n=60, n_features=4, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (n_classes, n_features))
    y = np.arange(n) % n_classes
    return centers[y] + rng.normal(0, 1, (n, n_features)), y


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
    from gpubp.network import MLP

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(MLP, "fit", interrupted)
        MLPClassifier((3,), max_iter=5, random_state=0, backend="numpy").fit(X, y)
    assert [(str(w.message), w.filename) for w in caught] == [("Training interrupted by user.", __file__)]


# ---------------------------------------------------------------- stopping rules, side by side with scikit-learn
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
    sk = _fit_quietly(Sk(**kw), X, y, sample_weight=w)
    g = _fit_quietly(G(**kw, backend="numpy", dtype="float64"), X, y, sample_weight=w)
    assert g.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(g.validation_scores_, sk.validation_scores_, rtol=1e-9, atol=1e-12)
    assert g.best_validation_score_ == pytest.approx(sk.best_validation_score_, rel=1e-9)
    for a, b in zip(sk.coefs_ + sk.intercepts_, g.coefs_ + g.intercepts_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_validation_prediction_that_overflows_scores_nan_as_in_sklearn():
    """A diverging regressor whose validation predictions overflow float64 (the training loss still
    finite): scikit-learn scores the epoch NaN and ends on the best epoch's weights; r2_score raised
    "Input contains infinity" from inside scikit-learn instead (full batches, so the same epochs)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5))
    y = X @ rng.normal(size=5) * 1e5
    kw = dict(hidden_layer_sizes=(8,), max_iter=4, random_state=0, solver="sgd", learning_rate_init=10.0, alpha=0.0,
              early_stopping=True, batch_size="auto", shuffle=False)
    sk = _fit_quietly(SkMLPRegressor(**kw), X, y)
    g = _fit_quietly(MLPRegressor(**kw, backend="numpy", dtype="float64"), X, y)
    assert np.isnan(sk.validation_scores_[-1]) and np.isfinite(sk.validation_scores_[:-1]).all()
    np.testing.assert_allclose(g.validation_scores_, sk.validation_scores_, rtol=1e-9)   # NaN where NaN
    assert g.best_validation_score_ == pytest.approx(sk.best_validation_score_, rel=1e-9)
    for a, b in zip(sk.coefs_ + sk.intercepts_, g.coefs_ + g.intercepts_):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_diverged_step_is_named_by_the_epoch_of_the_call():
    """Each epoch is one call of MLP.fit, whose divergence error named every epoch "epoch 1": full-batch
    steps diverging at step k are the call's epoch k."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5))
    y = X @ rng.normal(size=5) * 1e5
    est = MLPRegressor((8,), max_iter=20, random_state=0, solver="sgd", learning_rate_init=10.0, alpha=0.0,
                       batch_size="auto", shuffle=False, backend="numpy", dtype="float64")
    with pytest.raises(FloatingPointError) as e:
        est.fit(X, y)
    step = int(str(e.value).split(" at step ")[1].split()[0])
    assert step > 1 and f"at step {step} (epoch {step}, batch 1)" in str(e.value)


def test_a_fit_diverging_with_early_stopping_leaves_the_best_epochs_weights():
    """scikit-learn's early stopping ends on the best epoch's weights whatever came after; gpubp raises at the
    diverged step (FloatingPointError) and leaves the estimator on those weights too, not on the last
    finite step's."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5))
    y = X @ rng.normal(size=5) * 1e5
    kw = dict(hidden_layer_sizes=(8,), random_state=0, solver="sgd", learning_rate_init=2.0, alpha=0.0,
              batch_size=64, shuffle=False, early_stopping=True, validation_fraction=0.2, tol=0.0,
              n_iter_no_change=1000, backend="numpy", dtype="float64")
    est = MLPRegressor(max_iter=50, **kw)
    with pytest.raises(FloatingPointError):
        est.fit(X, y)
    best = int(np.argmax(est.validation_scores_)) + 1
    assert 1 <= best < est.n_iter_ + 1 and len(est.validation_scores_) >= 2
    ref = _fit_quietly(MLPRegressor(max_iter=best, **kw), X, y)
    for a, b in zip(ref.coefs_ + ref.intercepts_, est.coefs_ + est.intercepts_):
        assert np.array_equal(a, b)


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


# ---------------------------------------------------------------- the estimators' interface
@pytest.mark.parametrize("G, Sk", [(MLPClassifier, SkMLPClassifier), (MLPRegressor, SkMLPRegressor)])
def test_default_parameters_are_sklearns_and_gpubp_mlps(G, Sk):
    """The constructor's defaults: scikit-learn's for the arguments they share (same names, same meaning),
    gpubp.MLP's for backend, dtype and precision ("as in gpubp.MLP")."""
    import inspect

    from gpubp import MLP

    ours, theirs = G().get_params(), Sk().get_params()
    shared = set(ours) & set(theirs)
    assert shared == set(ours) - {"backend", "dtype", "precision"}
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}
    mlp = inspect.signature(MLP).parameters
    assert {k: ours[k] for k in ("backend", "dtype", "precision")} == \
        {k: mlp[k].default for k in ("backend", "dtype", "precision")}


def test_tags_as_sklearns_where_the_estimators_agree():
    """scikit-learn's tags: a multilabel-capable classifier, regressors not of poor score; gpubp's
    regressor takes several targets (multi-output), and neither takes sparse input (documented)."""
    clf, reg = MLPClassifier().__sklearn_tags__(), MLPRegressor().__sklearn_tags__()
    assert clf.classifier_tags.multi_label is SkMLPClassifier().__sklearn_tags__().classifier_tags.multi_label is True
    assert reg.regressor_tags.poor_score is SkMLPRegressor().__sklearn_tags__().regressor_tags.poor_score is False
    assert reg.target_tags.multi_output is True
    assert clf.input_tags.sparse is False and reg.input_tags.sparse is False


@pytest.mark.parametrize("sizes", [1, (1,), (1, 1)])
def test_hidden_layers_of_one_unit_are_accepted_as_in_sklearn(sizes):
    X, y = _blobs(n=20)
    g = _fit_quietly(MLPClassifier(sizes, max_iter=2, random_state=0, backend="numpy"), X, y)
    sk = _fit_quietly(SkMLPClassifier(sizes, max_iter=2, random_state=0), X, y)
    assert [c.shape for c in g.coefs_] == [c.shape for c in sk.coefs_]


@pytest.mark.parametrize("case", ["binary", "multilabel"])
def test_a_logit_of_exactly_zero_predicts_the_negative_label_as_sklearn(case):
    """scikit-learn predicts a logistic output's positive label for a probability above 0.5 only: with all
    weights and biases zero every probability is 0.5 exactly and both predict classes_[0] (binary), and
    0 for every label (multilabel)."""
    X, cases = _parity_cases()
    _, _, y = cases[case]
    kw = dict(hidden_layer_sizes=(3,), max_iter=1, random_state=0)
    sk = _fit_quietly(SkMLPClassifier(**kw), X, y + 1 if case == "binary" else y)
    g = _fit_quietly(MLPClassifier(backend="numpy", dtype="float64", **kw), X, y + 1 if case == "binary" else y)
    for est in (sk, g):
        est.coefs_ = [np.zeros_like(c) for c in est.coefs_]
        est.intercepts_ = [np.zeros_like(b) for b in est.intercepts_]
    np.testing.assert_array_equal(g.predict_proba(X), sk.predict_proba(X))
    np.testing.assert_array_equal(g.predict(X), sk.predict(X))
    assert (g.predict(X) == (1 if case == "binary" else 0)).all()


def test_coefs_and_intercepts_of_an_unfitted_estimator_are_not_fitted_errors():
    """Before fit, reading or assigning coefs_ / intercepts_ is scikit-learn's NotFittedError (an
    AttributeError, as scikit-learn's unfitted MLPs raise), not a bare AttributeError about net_."""
    from sklearn.exceptions import NotFittedError

    est = MLPClassifier()
    for name in ("coefs_", "intercepts_"):
        with pytest.raises(NotFittedError):
            getattr(est, name)
        with pytest.raises(NotFittedError):
            setattr(est, name, [np.zeros((2, 2))])
        assert not hasattr(est, name) and not hasattr(SkMLPClassifier(), name)


def test_coefs_and_intercepts_refuse_what_is_not_a_list_of_numeric_arrays():
    """Assigning a non-list, or arrays of text, is a TypeError naming the attribute, and writes nothing."""
    X, y = _blobs(n=30)
    est = _fit_quietly(MLPClassifier((4,), max_iter=2, random_state=0, backend="numpy"), X, y)
    before = est.predict_proba(X)
    with pytest.raises(TypeError, match=r"coefs_ must be a list of arrays, one per layer"):
        est.coefs_ = 5
    with pytest.raises(TypeError, match=r"intercepts_\[1\] must be numeric, got dtype <U"):
        est.intercepts_ = [b.astype(str) if i == 1 else b for i, b in enumerate(est.intercepts_)]
    with pytest.raises(TypeError, match=r"coefs_\[0\] must be numeric"):
        est.coefs_ = [c.astype(str) for c in est.coefs_]
    np.testing.assert_array_equal(est.predict_proba(X), before)
    est.intercepts_ = [b + 1.0 for b in est.intercepts_]        # biases only: the weights stay
    np.testing.assert_array_equal(est.coefs_[0], _fit_quietly(MLPClassifier((4,), max_iter=2, random_state=0,
                                                                            backend="numpy"), X, y).coefs_[0])


# ---------------------------------------------------------------- warm starts
@pytest.mark.parametrize("case", ["multiclass", "regression"])
def test_a_warm_start_after_early_stopping_trains_on_from_its_best_epoch(case):
    """An early-stopping fit ends on its best epoch's weights; a warm-started fit with early_stopping=False
    then trains on from them and ends on its own last epoch (only early stopping restores a best epoch, as
    in scikit-learn, whose MLPs fail on this switch): it trains as a warm-started fit without early
    stopping given those weights does (no shuffling: the same batches, and a fresh optimizer each)."""
    X, cases = _parity_cases()
    _, G, y = cases[case]
    kw = dict(hidden_layer_sizes=(7,), activation="tanh", solver="sgd", alpha=0.0, batch_size=32, max_iter=12,
              learning_rate_init=0.05, random_state=3, tol=1e-3, n_iter_no_change=2, validation_fraction=0.2,
              shuffle=False, warm_start=True, backend="numpy", dtype="float64")
    es = _fit_quietly(G(early_stopping=True, **kw), X, y)
    best = [p.copy() for p in es.coefs_ + es.intercepts_]
    plain = _fit_quietly(G(**dict(kw, max_iter=1)), X, y)
    plain.coefs_, plain.intercepts_ = best[:2], best[2:]
    for est in (es, plain):
        _fit_quietly(est.set_params(early_stopping=False, max_iter=4, tol=0.0, n_iter_no_change=100), X, y)
    assert es.n_iter_ == plain.n_iter_ == 4
    np.testing.assert_allclose(es.loss_curve_[-4:], plain.loss_curve_[-4:], rtol=1e-12)
    for a, b in zip(plain.coefs_ + plain.intercepts_, es.coefs_ + es.intercepts_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-13)
    assert max(np.abs(a - b).max() for a, b in zip(best, es.coefs_ + es.intercepts_)) > 1e-4


@pytest.mark.parametrize("how", ["predict", "warm_start"])
def test_an_activation_set_after_fitting_applies_to_every_hidden_layer(how):
    """scikit-learn applies self.activation to each hidden layer; with two hidden layers both switch, and the
    output layer stays the identity (logits)."""
    X, _, sk, g = switch_activation("multiclass", (6, 5), how)
    np.testing.assert_allclose(g.predict_proba(X), sk.predict_proba(X), rtol=0, atol=1e-12)
    assert g.net_.activations == ("tanh", "tanh", "identity")


def test_values_the_network_cannot_hold_name_input_or_targets():
    """X or y beyond float32's range is refused naming which to scale."""
    X, y = _blobs(n=30)
    with pytest.raises(ValueError, match="beyond the range of float32.*scale the input"):
        MLPRegressor((3,), backend="numpy").fit(X * 1e39, y)
    with pytest.raises(ValueError, match="overflows float32.*scale the targets"):
        MLPRegressor((3,), backend="numpy").fit(X, y * 1e39)


def test_a_one_dimensional_X_is_refused_as_in_sklearn():
    """A pandas Series, a 1-D array or a flat list as X is scikit-learn's ValueError ("Expected a
    2-dimensional container" / "Expected 2D array"), at fit and at predict, in both estimators."""
    pd = pytest.importorskip("pandas")
    X, y = _blobs(n=20)
    flat = [pd.Series(X[:, 0]), X[:, 0], X[:, 0].tolist()]
    for G, Sk in ((MLPClassifier, SkMLPClassifier), (MLPRegressor, SkMLPRegressor)):
        fitted = _fit_quietly(G((3,), max_iter=1, random_state=0, backend="numpy"), X[:, :1], y)
        for Xb in flat:
            msgs = []
            for call in (lambda: Sk(hidden_layer_sizes=(3,), max_iter=1).fit(Xb, y),
                         lambda: G((3,), backend="numpy").fit(Xb, y),
                         lambda: fitted.predict(Xb)):
                with pytest.raises(ValueError, match="Expected (a )?2") as e:
                    call()
                msgs.append(str(e.value).split(":")[0].split(" but")[0])
            assert len(set(msgs)) == 1, msgs


@pytest.mark.parametrize("case", ["multiclass", "regression"])
def test_weighted_loss_curve_with_alpha_matches_sklearn(case):
    """With sample_weight, scikit-learn divides each batch's L2 penalty by the batch's weight sum (not its
    rows): a full batch of weights averaging 1.6 reports alpha / 2 * ||W||^2 / (1.6 n).  A tiny learning
    rate keeps the weights (and the biases gpubp also decays) close, so the curves agree closely."""
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    w = np.random.default_rng(4).uniform(0.2, 3.0, len(X))
    kw = dict(hidden_layer_sizes=(6,), activation="tanh", solver="sgd", alpha=0.5, batch_size=40, max_iter=3,
              learning_rate_init=1e-4, momentum=0.0, shuffle=False, random_state=0, tol=0, n_iter_no_change=100)
    sk = _fit_quietly(Sk(**kw), X, y, sample_weight=w)
    g = _fit_quietly(G(backend="numpy", dtype="float64", **kw), X, y, sample_weight=w)
    np.testing.assert_allclose(g.loss_curve_, sk.loss_curve_, rtol=1e-4)


@pytest.mark.parametrize("name", ["alpha", "learning_rate_init", "tol", "momentum", "beta_1", "beta_2", "epsilon",
                                  "validation_fraction"])
@pytest.mark.parametrize("bad", [None, "0.1", [0.1]])
def test_a_real_parameter_given_a_non_number_is_a_value_error_as_in_sklearn(name, bad):
    """A real-valued parameter given None, text or a list is a ValueError naming it (scikit-learn's
    InvalidParameterError is one), not a TypeError from comparing or testing it."""
    X, y = _blobs(n=20)
    with pytest.raises(ValueError):
        SkMLPClassifier(max_iter=1, **{name: bad}).fit(X, y)
    with pytest.raises(ValueError, match=f"{name} must be a number"):
        MLPClassifier(max_iter=1, backend="numpy", **{name: bad}).fit(X, y)


@pytest.mark.parametrize("sizes", [(2.5,), (2.0,), (True,), True, "3", ("3",), None, (0,), (2, 0), -1,
                                   np.array(3)])   # a 0-d array: numpy's "iteration over a 0-d array"
def test_hidden_layer_sizes_other_than_positive_integers_are_refused_naming_it(sizes):
    """scikit-learn's MLPs refuse them all (with a TypeError for floats and bools, which would otherwise
    be truncated or read as 1); gpubp's say so with a ValueError naming hidden_layer_sizes, before any
    network is built."""
    X, y = _blobs(n=20)
    with pytest.raises((TypeError, ValueError)):
        SkMLPClassifier(sizes, max_iter=1).fit(X, y)
    est = MLPClassifier(sizes, max_iter=1, backend="numpy")
    with pytest.raises(ValueError, match=r"hidden_layer_sizes must hold positive integers, got "):
        est.fit(X, y)
    assert not hasattr(est, "net_")


@pytest.mark.parametrize("case", ["multiclass", "binary", "multilabel", "regression"])
def test_adam_with_beta_2_zero_matches_sklearn_for_any_epsilon(case):
    """Adam's eps is added to sqrt(v_hat) by PyTorch (gpubp) and to sqrt(v) by scikit-learn, a factor
    sqrt(1 - beta_2^t) apart: with beta_2=0 the two are the same update for any epsilon.  A large epsilon
    then shows the module's adjustment for the multilabel loss (gpubp averages it over the outputs, a
    gradient c = 1 / n_outputs times scikit-learn's, so eps is multiplied by c): full-batch Adam
    reproduces scikit-learn's weights."""
    X, cases = _parity_cases()
    Sk, G, y = cases[case]
    kw = dict(hidden_layer_sizes=(6,), activation="tanh", solver="adam", alpha=0.0, batch_size=40, max_iter=5,
              learning_rate_init=0.05, beta_2=0.0, epsilon=0.05, random_state=3, tol=0, n_iter_no_change=100)
    sk = _fit_quietly(Sk(**kw), X, y)
    g = _fit_quietly(G(**kw, backend="numpy", dtype="float64"), X, y)
    for a, b in zip(sk.coefs_ + sk.intercepts_, g.coefs_ + g.intercepts_):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)
    np.testing.assert_allclose(g.loss_curve_, sk.loss_curve_, rtol=1e-10)
