"""gpubp.data: the data sets, the stratified split, standardisation, targets."""

import numpy as np
import pytest

from gpubp import data

SHAPES = {"digits": (64, 10), "iris": (4, 3), "breast_cancer": (30, 2), "wine": (13, 3), "moons": (2, 2),
          "xor": (2, 2)}


@pytest.mark.parametrize("name", data.DATASETS)
def test_every_dataset_loads_and_splits(name):
    ds = data.load_dataset(name, test_size=0.2, val_size=0.1, seed=3)
    n_features, n_classes = SHAPES[name]
    assert ds.n_features == n_features and ds.n_classes == n_classes
    n = len(ds.y_train) + len(ds.y_val) + len(ds.y_test)
    assert abs(len(ds.y_test) - 0.2 * n) <= 1 and abs(len(ds.y_val) - 0.1 * n) <= 1
    for X, y in ((ds.X_train, ds.y_train), (ds.X_val, ds.y_val), (ds.X_test, ds.y_test)):
        assert X.shape == (len(y), n_features) and X.dtype == np.float64 and np.all(np.isfinite(X))
        assert y.dtype == np.int64 and set(np.unique(y)) <= set(range(n_classes))
    # stratified: every part has every class in about the whole set's proportion
    whole = np.bincount(np.concatenate([ds.y_train, ds.y_val, ds.y_test]), minlength=n_classes) / n
    for y in (ds.y_train, ds.y_val, ds.y_test):
        part = np.bincount(y, minlength=n_classes) / len(y)
        assert np.max(np.abs(part - whole)) < 0.05, (name, part, whole)
    # the parts are disjoint and together the whole data set
    X, _, _ = data.raw_dataset(name, seed=3)
    raw = data.load_dataset(name, test_size=0.2, val_size=0.1, seed=3, standardize_features=False)
    assert np.array_equal(raw.y_val, ds.y_val) and np.array_equal(raw.y_test, ds.y_test)
    rows = lambda A: sorted(map(tuple, A))  # noqa: E731
    assert rows(np.concatenate([raw.X_train, raw.X_val, raw.X_test])) == rows(X)


def test_split_is_reproducible_and_seeded():
    a = data.load_dataset("wine", seed=1)
    b = data.load_dataset("wine", seed=1)
    c = data.load_dataset("wine", seed=2)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.X_train, c.X_train)
    m1 = data.load_dataset("moons", seed=5)
    m2 = data.load_dataset("moons", seed=6)
    assert not np.array_equal(m1.X_train, m2.X_train)


def test_standardisation_uses_training_statistics_only():
    raw = data.load_dataset("breast_cancer", seed=0, standardize_features=False)
    ds = data.load_dataset("breast_cancer", seed=0)
    assert np.allclose(ds.X_train.mean(axis=0), 0, atol=1e-12)
    assert np.allclose(ds.X_train.std(axis=0), 1, atol=1e-12)
    # the test part is scaled with the training mean and std, not its own
    assert np.allclose(ds.mean, raw.X_train.mean(axis=0)) and np.allclose(ds.std, raw.X_train.std(axis=0))
    assert np.allclose(ds.X_test, (raw.X_test - ds.mean) / ds.std)
    assert not np.allclose(ds.X_test.mean(axis=0), 0, atol=1e-3)


def test_constant_features_do_not_divide_by_zero():
    X = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    mean, std, Xs, Xt = data.standardize(X, np.array([[2.0, 6.0]]))
    assert std[1] == 1.0 and np.all(np.isfinite(Xs)) and Xs[:, 1].tolist() == [0, 0, 0]
    assert Xt.tolist() == [[0.0, 1.0]]
    # digits has constant pixels: they stay finite
    assert np.all(np.isfinite(data.load_dataset("digits").X_train))


def test_xor_labels():
    X, y = data.make_xor(500, seed=0)
    assert X.shape == (500, 2) and np.all(np.abs(X) <= 1)
    assert np.array_equal(y, (np.sign(X[:, 0]) != np.sign(X[:, 1])).astype(np.int64))
    assert 0.4 < y.mean() < 0.6
    Xn, yn = data.make_xor(500, noise=0.1, seed=0)
    assert np.array_equal(yn, y) and not np.array_equal(Xn, X)


def test_targets_and_output_sizes():
    y = np.array([0, 2, 1])
    assert data.one_hot(y, 3).tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert data.targets_for(y, "cross_entropy", 3).tolist() == [0, 2, 1]
    assert data.targets_for(y, "mse", 3).shape == (3, 3)
    assert data.targets_for(np.array([0, 1]), "binary_cross_entropy", 1).tolist() == [[0.0], [1.0]]
    assert data.output_sizes("cross_entropy", 2) == (2,)
    assert data.output_sizes("binary_cross_entropy", 2) == (1,)
    assert data.output_sizes("binary_cross_entropy", 3) == (3,)
    assert data.output_sizes("mse", 2) == (2, 1)
    assert data.labels_from_outputs(np.array([[0.2, 0.9], [3.0, -1.0]]), "mse").tolist() == [1, 0]
    assert data.labels_from_outputs(np.array([[-0.1], [0.1]]), "binary_cross_entropy").tolist() == [0, 1]
    assert data.labels_from_outputs(np.array([[0.4], [0.6]]), "mse").tolist() == [0, 1]


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match="test_size"):
        data.load_dataset("iris", test_size=1.5)
    with pytest.raises(ValueError, match="n_samples and noise apply"):
        data.load_dataset("iris", noise=0.1)
    for seed in (-1, 2**32, 1.5, True):      # not blamed on the split's sample counts
        with pytest.raises(ValueError, match=r"seed must be None or an integer from 0 to 2\*\*32 - 1"):
            data.load_dataset("iris", seed=seed)
    assert len(data.load_dataset("iris", seed=2**32 - 1).y_test) == 30
    with pytest.raises(ValueError, match="labels"):
        data.one_hot([0, 3], 3)


@pytest.mark.parametrize("n", [3, 5])
def test_too_few_samples_for_a_stratified_split_say_so(n):
    # scikit-learn's own message ("The test_size = 1 should be greater or equal to the number of classes")
    # names neither the data set nor what to change
    with pytest.raises(ValueError, match=rf"moons has too few samples \({n}; the smallest class has \d\) for a "
                                         r"stratified split with test_size 0.2 and val_size 0.1.*n_samples"):
        data.load_dataset("moons", test_size=0.2, val_size=0.1, n_samples=n, seed=0)


def test_accuracy_refuses_labels_of_another_shape():
    # a (B, 1) column of labels (what targets_for gives one output) was compared by broadcasting as
    # (B, B) pairs: 0.5 where the accuracy is 0.65, silently
    from gpubp.network import MLP

    net = MLP([2, 4, 1], loss="binary_cross_entropy", seed=0, backend="numpy")
    X, y = data.make_xor(20, seed=0)
    acc = data.accuracy(net, X, y)
    assert acc == np.mean((net.forward(X)[:, 0] > 0) == y)
    for bad in (y.reshape(-1, 1), y[:5]):
        with pytest.raises(ValueError, match=rf"y has shape \({bad.shape[0]},.*expected \(20,\), one class label"):
            data.accuracy(net, X, bad)


def test_targets_refuse_labels_that_are_not_class_indices():
    # cross_entropy's astype(int64) truncated 1.7 to 1 and passed 5 of 3 classes on; one_hot failed on
    # whole-number floats with numpy's "arrays used as indices must be of integer type"
    for bad in (np.array([0.5, 1.7]), np.array([0, 1, 5]), np.array([0, -1]), np.array([0.0, np.nan])):
        for loss, n_out in (("cross_entropy", 3), ("mse", 3), ("binary_cross_entropy", 1)):
            with pytest.raises(ValueError, match="labels must be a 1-D array of integers"):
                data.targets_for(bad, loss, n_out)
    assert data.targets_for(np.array([0.0, 2.0]), "cross_entropy", 3).tolist() == [0, 2]
    assert data.one_hot(np.array([0.0, 2.0]), 3).tolist() == [[1, 0, 0], [0, 0, 1]]
    assert data.targets_for(np.array([1, 0]), "mse", 1).tolist() == [[1.0], [0.0]]


@pytest.mark.parametrize("kwargs, match", [
    (dict(test_size="0.2"), r"test_size must be a fraction in \(0, 1\), got '0.2'"),
    (dict(val_size=None), r"val_size must be a fraction in \[0, 1\), got None"),
    (dict(test_size=True), r"test_size must be a fraction in \(0, 1\), got True"),
])
def test_fractions_that_are_not_numbers_are_refused_naming_them(kwargs, match):
    # numpy's "ufunc 'isfinite' not supported for the input types" (a TypeError) named no argument
    with pytest.raises(ValueError, match=match):
        data.load_dataset("iris", **kwargs)


@pytest.mark.parametrize("noise", [None, "0.1", True])
def test_xor_noise_that_is_not_a_number_is_refused_naming_it(noise):
    with pytest.raises(ValueError, match=f"noise must be a non-negative number, got {noise!r}"):
        data.make_xor(10, noise=noise)


@pytest.mark.parametrize("kwargs, error, match", [
    # make_moons took True for one sample (then "too few samples (1 ...)") and blamed its own parameters
    (dict(n_samples=True), ValueError, "n_samples must be a positive integer, got True"),
    (dict(n_samples=2.5), ValueError, "n_samples must be a positive integer, got 2.5"),
    (dict(n_samples=-5), ValueError, "n_samples must be a positive integer, got -5"),
    (dict(noise=True), ValueError, "noise must be a non-negative number, got True"),
    (dict(noise=float("nan")), ValueError, "noise must be a non-negative number, got nan"),
    (dict(noise=-1.0), ValueError, "noise must be a non-negative number, got -1.0"),
])
def test_moons_arguments_are_checked_as_xor_s_are(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.raw_dataset("moons", **kwargs)


def test_generated_data_seeds_and_flags_are_checked():
    with pytest.raises(ValueError, match="seed must be None or a non-negative integer, got -1"):
        data.make_xor(10, seed=-1)         # numpy said "expected non-negative integer", naming no argument
    with pytest.raises(TypeError, match="seed must be None or a non-negative integer, got 1.5"):
        data.raw_dataset("xor", seed=1.5)
    # the string "no" was read by its truth value: the features were standardised
    with pytest.raises(TypeError, match="standardize_features must be True or False, got 'no'"):
        data.load_dataset("iris", standardize_features="no")


def test_unknown_loss_names_are_refused_not_taken_for_squared_error():
    for call in (lambda: data.output_sizes("crossentropy", 3), lambda: data.targets_for([0, 1], "bce", 2)):
        with pytest.raises(ValueError, match="unknown loss"):
            call()


@pytest.mark.parametrize("eps", [0.0, 1e-12, 0.5])
def test_a_constant_feature_is_centred_whatever_eps(eps):
    """standardize's eps may be 0: a constant feature (standard deviation 0) is still centred and left
    unscaled, not divided 0 / 0 into NaN."""
    X = np.array([[1.0, 5.0], [3.0, 5.0]])
    mean, std, Xs = data.standardize(X, eps=eps)
    assert std.tolist() == [1.0, 1.0] and Xs.tolist() == [[-1.0, 0.0], [1.0, 0.0]]


def test_a_standard_deviation_equal_to_eps_is_scaled():
    """Only features whose standard deviation is below eps are left unscaled."""
    X = np.array([[0.0], [4.0]])                      # standard deviation 2
    mean, std, Xs = data.standardize(X, eps=2.0)
    assert std.tolist() == [2.0] and Xs.tolist() == [[-1.0], [1.0]]
    mean, std, Xs = data.standardize(X, eps=2.0 + 1e-9)
    assert std.tolist() == [1.0] and Xs.tolist() == [[-2.0], [2.0]]
    with pytest.raises(ValueError, match="eps must be a non-negative finite number"):
        data.standardize(X, eps=-1e-12)


@pytest.mark.parametrize("kwargs, refused", [
    (dict(test_size=0.89), None), (dict(test_size=0.5, val_size=0.39), None), (dict(val_size=0.0), None),
    (dict(test_size=0.9), "leave more than 10%"), (dict(test_size=0.45, val_size=0.45), "leave more than 10%"),
    (dict(test_size=0.0), r"test_size must be a fraction in \(0, 1\)"),
    (dict(test_size=1.0), r"test_size must be a fraction in \(0, 1\)"),
    (dict(val_size=1.0), r"val_size must be a fraction in \[0, 1\)"),
    (dict(val_size=-0.1), r"val_size must be a fraction in \[0, 1\)"),
])
def test_split_fractions_at_their_limits(kwargs, refused):
    """test_size in (0, 1), val_size in [0, 1), and together they leave more than 10% for training."""
    if refused is None:
        ds = data.load_dataset("iris", **kwargs)
        n_train = len(ds.y_train)
        assert n_train == 150 - len(ds.y_test) - len(ds.y_val) and n_train > 15
    else:
        with pytest.raises(ValueError, match=refused):
            data.load_dataset("iris", **kwargs)


def test_xor_needs_four_samples():
    X, y = data.make_xor(4, seed=0)
    assert X.shape == (4, 2) and y.shape == (4,)
    with pytest.raises(ValueError, match="n_samples must be an integer of at least 4, got 3"):
        data.make_xor(3)


def test_outputs_at_the_threshold_are_class_0():
    """One output gives class 1 only above the threshold: a logit above 0 (probability above 1/2, as
    scikit-learn's binary MLPClassifier), a squared-error output above 0.5; a 1-D row of outputs is one
    output per sample."""
    assert data.labels_from_outputs(np.array([[0.0], [1e-12]]), "binary_cross_entropy").tolist() == [0, 1]
    assert data.labels_from_outputs(np.array([0.5, 0.5 + 1e-12]), "mse").tolist() == [0, 1]
    assert data.labels_from_outputs(np.array([-0.1, 0.1]), "binary_cross_entropy").tolist() == [0, 1]
    with pytest.raises(ValueError, match="out must be a network's outputs"):
        data.labels_from_outputs(np.zeros((2, 2, 2)), "mse")


def test_no_labels_give_no_rows():
    assert data.one_hot(np.array([], np.int64), 3).shape == (0, 3)
    assert data.targets_for(np.array([], np.int64), "binary_cross_entropy", 1).shape == (0, 1)
    assert data.targets_for(np.array([], np.int64), "cross_entropy", 3).shape == (0,)


def test_generated_data_take_the_noise_given():
    """The noise reaches the generator (moons' default is 0.2, xor's 0), and the description says it."""
    from sklearn.datasets import make_moons

    for noise in (0.0, 0.3):
        X, y, desc = data.raw_dataset("moons", seed=0, noise=noise)
        Xs, ys = make_moons(n_samples=data.SYNTHETIC_SAMPLES, noise=noise, random_state=0)
        assert np.array_equal(X, Xs) and np.array_equal(y, ys) and f"noise {noise}" in desc
        X, y, desc = data.raw_dataset("xor", seed=0, noise=noise)
        Xx, yx = data.make_xor(data.SYNTHETIC_SAMPLES, noise, 0)
        assert np.array_equal(X, Xx) and np.array_equal(y, yx) and f"noise {noise}" in desc


@pytest.mark.parametrize("dtype", [np.float32, np.int8, bool])
def test_targets_have_the_dtype_asked_for(dtype):
    y = np.array([0, 2, 1])
    assert data.one_hot(y, 3, dtype=dtype).dtype == np.dtype(dtype)
    assert data.targets_for(y, "mse", 3, dtype=dtype).dtype == np.dtype(dtype)
    assert data.targets_for(np.array([0, 1]), "binary_cross_entropy", 1, dtype=dtype).dtype == np.dtype(dtype)


def test_labels_from_outputs_refuses_an_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'bce'"):
        data.labels_from_outputs(np.array([[0.2], [0.7]]), "bce")


def test_standardize_default_eps_and_no_training_samples():
    """The default eps is 1e-12: a feature of standard deviation 1.5e-12 is still scaled.  No training
    samples: no statistics, refused."""
    mean, std, Xs = data.standardize(np.array([[0.0], [3e-12]]))
    assert std[0] == pytest.approx(1.5e-12) and np.allclose(Xs, [[-1.0], [1.0]])
    with pytest.raises(ValueError, match="X_train holds no samples"):
        data.standardize(np.zeros((0, 3)))


def test_load_dataset_default_seed_is_0():
    a, b = data.load_dataset("wine"), data.load_dataset("wine", seed=0)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_test, b.y_test)


@pytest.mark.parametrize("dtype", [str, "datetime64[s]", object, "no such dtype"])
def test_targets_refuse_a_dtype_that_is_not_a_real_number(dtype):
    with pytest.raises(TypeError, match="dtype must be a real numeric dtype"):
        data.one_hot(np.array([0, 1]), 2, dtype=dtype)
    with pytest.raises(TypeError, match="dtype must be a real numeric dtype"):
        data.targets_for(np.array([0, 1]), "mse", 2, dtype=dtype)



def test_standardize_refuses_others_of_another_width():
    """A part with one feature would broadcast against the training statistics of three."""
    X = np.arange(6.0).reshape(2, 3)
    with pytest.raises(ValueError, match="others\\[0\\] has 1 features; X_train has 3"):
        data.standardize(X, X[:, :1])


def test_generated_data_sets_default_to_1000_samples():
    """The command line's --n-samples help says moons and xor have 1000 samples unless told otherwise."""
    assert data.make_xor()[0].shape == (1000, 2)
    for name in ("moons", "xor"):
        X, y, _ = data.raw_dataset(name)
        assert X.shape == (1000, 2) and y.shape == (1000,)


@pytest.mark.parametrize("seed, error", [(1.5, TypeError), (True, TypeError), (-1, ValueError)])
def test_moons_seed_is_checked_as_xor_s_is(seed, error):
    """scikit-learn's make_moons took True for seed 1 and blamed its own random_state for the rest."""
    with pytest.raises(error, match=f"seed must be None or a non-negative integer, got {seed!r}"):
        data.raw_dataset("moons", seed=seed)


def test_raw_dataset_default_seed_is_0():
    for name in ("moons", "xor"):
        a, b = data.raw_dataset(name), data.raw_dataset(name, seed=0)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_summary_names_the_set_its_shape_and_its_parts():
    ds = data.load_dataset("iris", test_size=0.2, val_size=0.1, seed=0)
    assert ds.summary() == ("iris: Fisher's iris measurements; 4 features, 3 classes; "
                            "105 train / 15 validation / 30 test")


def test_one_output_takes_labels_0_and_1_only():
    """One output: 0/1 targets of two classes; a label 2 is no class of it."""
    with pytest.raises(ValueError, match=r"labels must be a 1-D array of integers in \[0, 2\)"):
        data.targets_for(np.array([0, 2]), "binary_cross_entropy", 1)
    assert data.targets_for(np.array([0, 1]), "mse", 1).tolist() == [[0.0], [1.0]]


def test_several_outputs_give_each_row_its_largest_output():
    out = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])   # 2 rows of 3 outputs: one label per row
    assert data.labels_from_outputs(out, "cross_entropy").tolist() == [1, 0]


def test_generated_data_default_noise():
    """moons' default noise is 0.2 (scikit-learn's make_moons with it); xor's noise is centred."""
    from sklearn.datasets import make_moons

    X, y, desc = data.raw_dataset("moons", seed=0)
    Xs, ys = make_moons(n_samples=1000, noise=0.2, random_state=0)
    assert np.array_equal(X, Xs) and np.array_equal(y, ys) and "noise 0.2" in desc
    X, y, desc = data.raw_dataset("xor", seed=0)     # xor's default: none
    assert np.array_equal(X, data.make_xor(1000, 0.0, 0)[0]) and "noise 0.0" in desc
    X0, _ = data.make_xor(1000, 0.0, 3)
    X1, _ = data.make_xor(1000, 0.1, 3)
    d = X1 - X0
    assert abs(d.mean()) < 0.02 and 0.09 < d.std() < 0.11


def test_accuracy_refuses_labels_beyond_the_output_layer_of_a_deep_network():
    """The classes are the last layer's outputs (3 here), not the hidden layer's 8 units."""
    import gpubp

    net = gpubp.MLP([2, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    X = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"y: labels must be a 1-D array of integers in \[0, 3\)"):
        data.accuracy(net, X, [0, 5])
    assert data.accuracy(net, X, [0, 2]) in (0.0, 0.5, 1.0)


@pytest.mark.parametrize("value", [123456.789, 1.7e9 + 0.3])
def test_a_constant_feature_with_a_large_offset_is_centred_and_left_unscaled(value):
    """A constant column whose float64 mean is off by its rounding (a standard deviation near 1e-5 for
    1000 rows near 1e9, far above eps) is constant all the same, as for `fit(standardize=True)`
    (scikit-learn's rule): centred and left unscaled, not blown up to +-1 with a test value one unit
    away sent to 1e5."""
    X = np.column_stack([np.full(1000, value), np.arange(1000.0)])
    mean, std, Xs, Xt = data.standardize(X, np.array([[value + 1.0, 0.0]]))
    assert std[0] == 1.0 and np.abs(Xs[:, 0]).max() < 1e-3
    assert Xt[0, 0] == pytest.approx(1.0, abs=1e-3)
