"""Every bad input gets a clear error that names what is wrong."""

import numpy as np
import pytest

import gpubp


@pytest.fixture
def net():
    return gpubp.MLP([4, 6, 3], loss="cross_entropy", backend="numpy", seed=0)


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(layer_sizes=[4]), ValueError, "at least two"),
    (dict(layer_sizes=[]), ValueError, "at least two"),
    (dict(layer_sizes=[4, 0, 3]), ValueError, "at least 1"),
    (dict(layer_sizes=[4, -2, 3]), ValueError, "at least 1"),
    (dict(layer_sizes=[4, 2.5, 3]), TypeError, "integers"),
    (dict(layer_sizes="43"), TypeError, "sequence"),
    (dict(layer_sizes=[4, 3], activation="softplus"), ValueError, "softplus"),
    (dict(layer_sizes=[4, 5, 3], activation=["relu", "tanh"]), ValueError, "one name per hidden layer"),
    (dict(layer_sizes=[4, 3], output_activation="swish"), ValueError, "swish"),
    (dict(layer_sizes=[4, 5, 3], activation=None), TypeError, "activation must be a string"),
    (dict(layer_sizes=[4, 3], output_activation=0), TypeError, "output_activation must be a string"),
    (dict(layer_sizes=[4, 3], loss="hinge"), ValueError, "hinge"),
    (dict(layer_sizes=[4, 3], loss=None), TypeError, "loss must be a string"),
    (dict(layer_sizes=[4, 3], loss=2), TypeError, "loss must be a string"),
    (dict(layer_sizes=[4, 3], loss="cross_entropy", output_activation="sigmoid"), ValueError, "logits"),
    # a softmax over one logit is 1: loss and gradients would be 0 whatever the data
    (dict(layer_sizes=[4, 5, 1], loss="cross_entropy"), ValueError, "at least 2 outputs.*binary_cross_entropy"),
    (dict(layer_sizes=[4, 3], dtype="float16"), ValueError, "float16"),
    (dict(layer_sizes=[4, 3], dtype="int32"), ValueError, "float32 or float64"),
    (dict(layer_sizes=[4, 3], dtype=None), ValueError, "float32 or float64"),   # numpy's None is float64
    (dict(layer_sizes=[4, 3], backend="tpu"), ValueError, "tpu"),
    (dict(layer_sizes=[4, 3], precision="fp8"), ValueError, "precision"),
    (dict(layer_sizes=[4, 3], precision="tf32", dtype="float64"), ValueError, "needs dtype float32"),
])
def test_constructor_errors(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        gpubp.MLP(backend=kwargs.pop("backend", "numpy"), **kwargs)


def test_shape_mismatches(net):
    X, y = np.ones((5, 4)), np.zeros(5, dtype=int)
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(B, 4\)"):
        net.loss_and_grads(np.ones((5, 3)), y)
    with pytest.raises(ValueError, match="4 labels but X has 5"):
        net.loss_and_grads(X, y[:4])
    with pytest.raises(ValueError, match=r"shape \(5, 2\).*\(5, 3\).*\(B,\) integer class labels"):
        net.loss_and_grads(X, np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"shape \(5, 2\).*\(5, 3\) for X with 5 samples and a network with 3 outputs$"):
        gpubp.MLP([4, 3], backend="numpy").loss_and_grads(X, np.ones((5, 2)))   # no labels hint but for cross_entropy
    X0, y0 = np.ones((0, 4)), np.zeros(0, dtype=int)
    for call in (lambda: net.forward(X0), lambda: net.predict(X0), lambda: net.predict_proba(X0),
                 lambda: net.evaluate(X0, y0), lambda: net.loss_and_grads(X0, y0),
                 lambda: net.train_step(X0, y0, "sgd"), lambda: net.fit(X0, y0, progress=False),
                 lambda: net.fit(X0, y0, progress=False, standardize=True)):
        with pytest.raises(ValueError, match="X holds no samples"):
            call()
    assert net.optimizer is None and net.standardization is None
    with pytest.raises(ValueError, match=r"\(2, 2, 4\)"):
        net.forward(np.ones((2, 2, 4)))


def test_labels_out_of_range(net):
    X = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"\[0, 3\).*from 0 to 3"):
        net.train_step(X, np.array([0, 1, 3]), gpubp.optim.SGD(0.1))
    with pytest.raises(ValueError, match="from -1"):
        net.train_step(X, np.array([0, -1, 2]), gpubp.optim.SGD(0.1))


def test_bad_probability_targets(net):
    with pytest.raises(ValueError, match="sum to 1"):
        net.loss_and_grads(np.ones((2, 4)), np.full((2, 3), 0.5))
    bce = gpubp.MLP([2, 2], loss="binary_cross_entropy", backend="numpy")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce.loss_and_grads(np.ones((2, 2)), np.full((2, 2), 2.0))


@pytest.mark.parametrize("row_sum", [1.0011, 0.9989, 1.002, 0.998])
def test_probability_rows_beyond_the_1e_3_tolerance_are_refused(net, row_sum):
    """docs/spec.md: rows summing to 1 within 1e-3 (1.0009 and 0.9992 are accepted, test_spec_math.py)."""
    Y = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]) * row_sum
    with pytest.raises(ValueError, match="sum to 1 per row"):
        net.loss_and_grads(np.ones((2, 4)), Y)


def test_probability_rows_must_be_non_negative_even_summing_to_1(net):
    with pytest.raises(ValueError, match="must be non-negative"):
        net.loss_and_grads(np.ones((2, 4)), np.array([[1.5, -0.5, 0.0], [0.0, 1.0, 0.0]]))


def test_one_hot_rows_and_binary_targets_at_0_and_1_are_taken():
    """The bounds are inclusive: a one-hot row (zeros) for cross_entropy, 0 and 1 for binary_cross_entropy
    (PyTorch's BCEWithLogitsLoss: max(z, 0) - z y + log(1 + e^-|z|)); just outside [0, 1] is refused."""
    rng = np.random.default_rng(0)
    X, labels = rng.standard_normal((4, 4)), np.array([0, 2, 1, 2])
    ce = gpubp.MLP([4, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    assert ce.loss_and_grads(X, np.eye(3)[labels])[0] == pytest.approx(ce.loss_and_grads(X, labels)[0], rel=1e-14)
    bce = gpubp.MLP([4, 2], loss="binary_cross_entropy", backend="numpy", dtype="float64", seed=0)
    Y = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    z = bce.forward(X)
    expect = np.mean(np.maximum(z, 0) - z * Y + np.log1p(np.exp(-np.abs(z))))
    assert bce.loss_and_grads(X, Y)[0] == pytest.approx(expect, rel=1e-14)
    for bad in (-1e-3, 1.001):
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
            bce.loss_and_grads(X, np.where(Y == 1, bad, Y) if bad > 1 else np.where(Y == 0, bad, Y))


def test_targets_beyond_float32_are_refused_as_overflow_not_as_nan():
    X, Y = np.ones((2, 4)), np.array([[1.0, 0.0], [2.0, 1e39]])   # 1e39 > float32's largest, 3.4e38
    with pytest.raises(ValueError, match="Y overflows float32"):
        gpubp.MLP([4, 2], backend="numpy", dtype="float32").loss_and_grads(X, Y)
    assert np.isfinite(gpubp.MLP([4, 2], backend="numpy", dtype="float64").loss_and_grads(X, Y)[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(net, bad):
    X = np.ones((3, 4))
    X[1, 2] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        net.predict(X)
    reg = gpubp.MLP([4, 2], backend="numpy")
    Y = np.ones((3, 2))
    Y[0, 0] = bad
    with pytest.raises(ValueError, match="Y contains NaN or infinity"):
        reg.loss_and_grads(np.ones((3, 4)), Y)


def test_non_numeric_input(net):
    with pytest.raises(TypeError, match="numeric"):
        net.forward(np.array([["a", "b", "c", "d"]]))


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf")])
def test_bad_learning_rate(lr):
    for make in (gpubp.optim.SGD, gpubp.optim.Adam, gpubp.optim.AdamW):
        with pytest.raises(ValueError, match="positive finite"):
            make(lr)
    with pytest.raises(TypeError, match="number"):
        gpubp.optim.SGD("0.1")


def test_unknown_optimizer_name(net):
    with pytest.raises(ValueError, match="rmsprop"):
        net.train_step(np.ones((2, 4)), np.array([0, 1]), "rmsprop")


def test_divergence_names_the_step():
    rng = np.random.default_rng(0)
    net = gpubp.MLP([3, 16, 1], activation="relu", backend="numpy", seed=0)
    X = rng.standard_normal((64, 3)) * 100
    Y = rng.standard_normal((64, 1)) * 100
    with pytest.raises(FloatingPointError, match=r"at step \d+ .*lower learning rate"):
        net.fit(X, Y, epochs=50, batch_size=8, optimizer=gpubp.optim.SGD(10.0), progress=False)


def test_optimizer_is_one_per_network():
    opt = gpubp.optim.Adam()
    a = gpubp.MLP([2, 3], backend="numpy")
    b = gpubp.MLP([2, 5], backend="numpy")
    a.train_step(np.ones((1, 2)), np.ones((1, 3)), opt)
    with pytest.raises(ValueError, match="another network"):
        b.train_step(np.ones((1, 2)), np.ones((1, 5)), opt)


def test_fit_arguments():
    net = gpubp.MLP([2, 2], backend="numpy")
    for kw in (dict(epochs=0), dict(batch_size=0), dict(epochs=1.5)):
        with pytest.raises(ValueError, match="positive integer"):
            net.fit(np.ones((4, 2)), np.ones((4, 2)), progress=False, **kw)
    for verbose in (True, np.True_, 1.0, np.float64(2), 3):   # bools and floats equal to 0, 1 or 2 too
        with pytest.raises(ValueError, match="verbose must be 0, 1 or 2"):
            net.fit(np.ones((4, 2)), np.ones((4, 2)), progress=False, verbose=verbose)
    for validation in (np.ones((4, 2)), np.ones((2, 2)), (np.ones((4, 2)), np.ones((4, 2)), np.ones((4, 2)))):
        with pytest.raises(TypeError, match="validation must be an \\(X_val, Y_val\\) pair"):
            net.fit(np.ones((4, 2)), np.ones((4, 2)), progress=False, validation=validation)
    for cbs in (gpubp.callbacks.EarlyStopping(), 3):
        with pytest.raises(TypeError, match="callbacks must be a list"):
            net.fit(np.ones((4, 2)), np.ones((4, 2)), progress=False, callbacks=cbs)
    with pytest.raises(TypeError, match=r"got one .*: pass \[callback\]"):
        net.fit(np.ones((4, 2)), np.ones((4, 2)), progress=False,
                callbacks=gpubp.callbacks.LambdaCallback(on_epoch_end=print))
    # a list holding something that is no callback (a function, a name) would be skipped silently
    for cb in (print, "early_stopping"):
        with pytest.raises(TypeError, match="has none of on_train_begin, on_epoch_end, on_train_end"):
            net.fit(np.ones((4, 2)), np.ones((4, 2)), progress=False, callbacks=[gpubp.callbacks.EarlyStopping(), cb])
    for kw, exc, words in ((dict(lr_schedule=0.1), TypeError, "lr_schedule must be a callable"),
                           (dict(sharded=True), ValueError, r"sharded=True needs comm"),
                           (dict(validation=(np.ones((2, 2)), np.ones((2, 2))), validation_split=0.5), ValueError,
                            "give validation or validation_split, not both")):
        with pytest.raises(exc, match=words):
            net.fit(np.ones((4, 2)), np.ones((4, 2)), progress=False, **kw)
    assert net.optimizer is None


@pytest.mark.parametrize("X, Y, words", [
    (np.ones(4), np.ones((1, 1)), "validation_split=0.5 of 1 samples leaves no validation"),   # one sample
    (np.ones(6), np.ones((6, 1)), r"X has shape \(3,\); expected \(B, 4\)"),   # 6 values: 6 rows of no width
    (np.float64(1.0), np.ones((1, 1)), "validation_split=0.5 of 0 samples leaves no validation"),
])
def test_validation_split_counts_the_samples_of_x_as_every_call_does(X, Y, words):
    """A 1-D X of n_0 values is one sample; another 1-D X is rows of the wrong shape; a scalar none."""
    net = gpubp.MLP([4, 1], backend="numpy", seed=0)
    with pytest.raises(ValueError, match=words):
        net.fit(X, Y, epochs=1, validation_split=0.5, progress=False)
    assert net.optimizer is None

def test_fit_defaults_are_the_signatures():
    """fit's documented defaults: 10 epochs of batches of 32 (65 rows: 3 steps an epoch), shuffled."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((65, 2)), rng.standard_normal((65, 2))
    nets = [gpubp.MLP([2, 2], backend="numpy", seed=0) for _ in range(3)]
    hists = [nets[0].fit(X, Y, progress=False), nets[1].fit(X, Y, epochs=10, batch_size=32, shuffle=True,
                                                             progress=False),
             nets[2].fit(X, Y, shuffle=False, progress=False)]
    assert nets[0].optimizer.t == 30 and len(hists[0]["loss"]) == 10
    assert set(hists[0]) == {"loss"} and nets[0].standardization is None   # no grad_norms, no standardize
    assert hists[0] == hists[1] and hists[0] != hists[2]


def test_pandas_frames_of_nullable_numbers_are_numbers(net):
    # pandas' nullable dtypes (read_csv(dtype_backend="numpy_nullable")) make np.asarray of a mixed frame
    # an object array: they are numbers, and a missing value is NaN, refused as such
    pd = pytest.importorskip("pandas")
    X = np.random.default_rng(0).standard_normal((5, 4))
    frame = pd.DataFrame({"a": pd.array([1, 2, 3, 4, 5], dtype="Int64"),
                          "b": pd.array(X[:, 1], dtype="Float64"), "c": X[:, 2], "d": X[:, 3]})
    plain = frame.astype("float64").to_numpy()
    assert np.array_equal(net.predict_proba(frame), net.predict_proba(plain))
    reg = gpubp.MLP([4, 1], backend="numpy")
    y = pd.Series(pd.array([0.5, 1.0, 2.0, 3.0, 4.0], dtype="Float64"))
    assert reg.loss_and_grads(frame, y)[0] == reg.loss_and_grads(plain, y.to_numpy(float))[0]
    frame.loc[2, "a"] = pd.NA
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        net.predict(frame)
    with pytest.raises(TypeError, match="X must be a real numeric array"):
        net.predict(frame.assign(a=["x", "y", "z", "u", "v"]))


def test_float_and_missing_class_labels_are_named_as_such(net):
    # both were "Y has shape (3,); expected (3, 3)", which blames the shape of a vector of labels
    X = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"class labels in Y must be integers, got dtype float64 .*astype\(int\)"):
        net.fit(X, np.array([0.0, 1.0, 2.0]), epochs=1, progress=False)
    with pytest.raises(ValueError, match="Y contains NaN or infinity"):
        net.fit(X, np.array([0, 1, np.nan]), epochs=1, progress=False)
    with pytest.raises(ValueError, match="Y_val contains NaN or infinity"):
        net.fit(X, np.array([0, 1, 2]), epochs=1, progress=False, validation=(X, np.array([0, np.nan, 1])))
    one = gpubp.MLP([4, 3], loss="cross_entropy", backend="numpy")   # one sample: (3,) is its probability row
    assert np.isfinite(one.loss_and_grads(np.ones(4), np.ones(3) / 3)[0])
    with pytest.raises(ValueError, match=r"Y has shape \(2,\); expected \(3, 3\)"):
        one.loss_and_grads(np.ones((3, 4)), np.ones(2) / 2)


def test_masked_arrays_are_not_read_without_their_mask(net):
    # np.asarray drops the mask: the values under it were used as data, silently
    X = np.ma.masked_array(np.ones((3, 4)), mask=np.zeros((3, 4), bool))
    plain = net.predict_proba(np.ones((3, 4)))
    assert np.array_equal(net.predict_proba(X), plain)      # nothing masked: its data
    X.mask[1, 2] = True
    X.data[1, 2] = 1e30
    before = net.get_params()
    with pytest.raises(ValueError, match=r"X is a masked array with 1 masked value.*filled"):
        net.predict(X)
    y = np.ma.masked_array([0, 1, 2], mask=[False, True, False])
    with pytest.raises(ValueError, match="Y is a masked array"):
        net.fit(np.ones((3, 4)), y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="sample_weight is a masked array"):
        net.fit(np.ones((3, 4)), [0, 1, 2], epochs=1, progress=False,
                sample_weight=np.ma.masked_array([1.0, 1.0, 1.0], mask=[0, 0, 1]))
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(before, net.get_params()))
    assert net.optimizer is None


def test_tensors_that_require_grad_are_named(net):
    torch = pytest.importorskip("torch")
    X = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    for call in (lambda: net.predict(X), lambda: net.fit(X, [0, 1, 2], epochs=1, progress=False),
                 lambda: net.loss_and_grads(X.detach(), torch.ones(3, 3, requires_grad=True) / 3)):
        with pytest.raises(TypeError, match=r"(X|Y) is a tensor that requires grad.*detach\(\)"):
            call()
    assert net.optimizer is None
    assert np.array_equal(net.predict(X.detach()), net.predict(np.ones((3, 4))))


@pytest.mark.parametrize("column", ["datetime", "timedelta", "datetime_tz"])
def test_pandas_date_columns_are_not_numbers(net, column):
    # a frame mixing numbers and dates became an object array, which to_numpy(float) read as nanoseconds
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(np.ones((3, 4)), columns=list("abcd"))
    dates = {"datetime": pd.date_range("2024-01-01", periods=3),
             "timedelta": pd.to_timedelta([1, 2, 3], unit="s"),
             "datetime_tz": pd.date_range("2024-01-01", periods=3, tz="UTC")}[column]
    with pytest.raises(TypeError, match=r"X has a .*(datetime|timedelta).* column"):
        net.predict(frame.assign(b=dates))
    reg = gpubp.MLP([4, 1], backend="numpy")
    with pytest.raises(TypeError, match="Y"):
        reg.fit(np.ones((3, 4)), pd.DataFrame({"t": dates}), epochs=1, progress=False)


@pytest.mark.parametrize("kwargs,words", [
    (dict(shuffle="no"), "shuffle must be True or False"),          # "no" was read as yes
    (dict(warm_start="no"), "warm_start must be True or False"),
    (dict(early_stopping="no"), "early_stopping must be True or False"),
    (dict(verbose="no"), "verbose must be True, False or a non-negative integer"),
    (dict(activation=["relu"]), "activation must be one of"),          # was TypeError: unhashable type
    (dict(dtype=["float32"]), "dtype must be one of"),
])
def test_sklearn_parameters(kwargs, words):
    pytest.importorskip("sklearn")
    from gpubp.sklearn import MLPRegressor
    X = np.random.default_rng(0).standard_normal((8, 3))
    with pytest.raises(ValueError, match=words):
        MLPRegressor((3,), max_iter=2, backend="numpy", **kwargs).fit(X, X[:, 0])


def test_sklearn_targets_and_weights_that_are_not_numbers():
    pytest.importorskip("sklearn")
    from gpubp.sklearn import MLPRegressor
    X = np.random.default_rng(0).standard_normal((8, 3))
    reg = MLPRegressor((3,), max_iter=2, backend="numpy")
    # dates were read as day counts and numeric strings parsed
    for y in (np.arange(8).astype("datetime64[D]"), np.array(["1.5"] * 8), np.array(["1.5"] * 8, dtype=object)):
        with pytest.raises(ValueError, match="y must hold real numbers"):
            reg.fit(X, y)
    with pytest.raises(TypeError, match="sample_weight must be numeric"):   # was float()'s error
        reg.fit(X, X[:, 0], sample_weight="abc")
    assert not hasattr(reg, "net_")


@pytest.mark.parametrize("args,kwargs,exc,words", [
    # each was averaged or broadcast silently (NaN statistics, the mask's data, dates as numbers), or
    # raised numpy's broadcasting error
    ((np.ones((0, 2)),), {}, ValueError, "X_train holds no samples"),
    ((np.ones((3, 2)), np.ones((2, 3))), {}, ValueError, r"others\[0\] has 3 features; X_train has 2"),
    ((np.array([[1.0, np.nan], [2.0, 3.0]]),), {}, ValueError, "X_train contains NaN"),
    ((np.ones((3, 2)), np.array([[np.inf, 0.0]])), {}, ValueError, r"others\[0\] contains NaN"),
    ((np.ma.masked_array(np.ones((2, 2)), mask=[[1, 0], [0, 0]]),), {}, ValueError, "X_train is a masked array"),
    ((np.arange(4).reshape(2, 2).astype("datetime64[D]"),), {}, TypeError, "X_train must be a real numeric"),
    ((np.ones(3),), {}, ValueError, r"X_train must be a 2-D array .*\(3,\)"),
    ((np.ones((3, 2)),), dict(eps=True), ValueError, "eps must be a non-negative finite number"),
    ((np.ones((3, 2)),), dict(eps=-1.0), ValueError, "eps must be a non-negative finite number"),
])
def test_data_standardize_refuses(args, kwargs, exc, words):
    from gpubp import data
    with pytest.raises(exc, match=words):
        data.standardize(*args, **kwargs)


def test_data_standardize_takes_lists_and_empty_others():
    from gpubp import data
    mean, std, Xs, Xe = data.standardize([[1, 2], [3, 4]], np.ones((0, 2)))
    assert mean.tolist() == [2, 3] and Xs.tolist() == [[-1, -1], [1, 1]] and Xe.shape == (0, 2)


def test_data_accuracy_refuses_labels_no_output_gives():
    # labels 1.5 or "a" never equal a predicted class: they counted as wrong, silently
    from gpubp import data
    net = gpubp.MLP([2, 2], loss="cross_entropy", backend="numpy", seed=0)
    X = np.array([[0.0, 1.0], [1.0, 0.0]])
    for bad in ([0, 1.5], ["a", "b"], [0, 2]):
        with pytest.raises(ValueError, match=r"y: labels must be a 1-D array of integers in \[0, 2\)"):
            data.accuracy(net, X, bad)
    assert data.accuracy(net, X, [0.0, 1.0]) == data.accuracy(net, X, [0, 1])


def test_save_and_load_paths(tmp_path):
    net = gpubp.MLP([4, 3], backend="numpy", seed=0)
    for path in (str(tmp_path / "a.npz"), tmp_path / "b.npz", bytes(tmp_path / "c.npz")):   # bytes was refused
        net.save(path)
        assert np.array_equal(gpubp.MLP.load(path, backend="numpy").get_params()[0][0], net.get_params()[0][0])
    for bad in (3, None, 2.5):    # load(3) read file descriptor 3
        with pytest.raises(TypeError, match=rf"path must be a file name \(str, bytes or os.PathLike\), "
                                            rf"got {type(bad).__name__}"):
            net.save(bad)
        with pytest.raises(TypeError, match="path must be a file name"):
            gpubp.MLP.load(bad, backend="numpy")


@pytest.mark.parametrize("mean,std,words", [
    (np.zeros((2, 2)), np.ones((2, 2)), r"shape \(4,\) or \(1, 4\).*\(2, 2\)"),   # was reshaped and taken
    (np.zeros(4), np.ones((4, 1)), r"\(4,\) and \(4, 1\)"),
    (0.0, 1.0, r"got shapes \(\) and \(\)"),
    (None, np.ones(4), "give mean and std together.*mean=None"),                # was "dtype object"
    (np.zeros(4), None, "give mean and std together.*std=None"),
])
def test_set_standardization_shapes(net, mean, std, words):
    net.set_standardization(np.full(4, 0.5), np.full(4, 2.0))
    with pytest.raises(ValueError, match=words):
        net.set_standardization(mean, std)
    assert net.standardization[0].tolist() == [0.5] * 4 and net.standardization[1].tolist() == [2.0] * 4
    net.set_standardization(np.zeros((1, 4)), np.ones((1, 4)))                  # a keepdims row is one per input
    assert net.standardization[0].shape == (4,)


@pytest.mark.parametrize("call,words", [
    (lambda d: d.one_hot([0, 1], 2.0), r"n_classes must be a positive integer, got 2.0"),   # numpy's TypeError
    (lambda d: d.one_hot([0, 1], True), r"n_classes must be a positive integer, got True"),
    (lambda d: d.output_sizes("mse", True), r"n_classes must be a positive integer, got True"),  # gave (True,)
    (lambda d: d.output_sizes("cross_entropy", 3.0), r"n_classes must be a positive integer, got 3.0"),
    (lambda d: d.targets_for([0, 1], "mse", 2.0), r"n_out must be a positive integer, got 2.0"),
    (lambda d: d.labels_from_outputs(np.ones((2, 2, 2)), "mse"), r"shape \(2, 2, 2\)"),   # gave (2, 2) labels
])
def test_data_helpers_check_counts_and_shapes(call, words):
    from gpubp import data
    with pytest.raises(ValueError, match=words):
        call(data)
    assert data.one_hot([0, 1], np.int64(2)).tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("batch", [True, 0, -1, 2.5, "3", None, float("nan"), float("inf")])
def test_memory_estimate_batch_is_a_positive_integer(net, batch):
    # each was taken by int(): "3" parsed, 2.5 truncated, True as 1, -1 a negative size (None, NaN and
    # inf were int()'s own errors)
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        net.memory_estimate(batch)
    assert net.memory_estimate(np.int64(3)) == net.memory_estimate(3) > net.memory_estimate(1)


@pytest.mark.parametrize("out,loss,exc,words", [
    # an unknown name was taken for a squared-error loss: one logit of 0.3 became class 0 (threshold 0.5)
    (np.array([[0.3], [-0.2]]), "bce", ValueError, "unknown loss 'bce'"),
    (np.array([[0.3], [-0.2]]), None, ValueError, "unknown loss None"),
    (np.array([["a", "b"], ["d", "c"]]), "mse", TypeError, "out must be a real numeric array"),   # argmax'ed as text
    (np.ones((2, 2), complex), "cross_entropy", TypeError, "out is complex"),
])
def test_labels_from_outputs_refuses_unknown_losses_and_non_numbers(out, loss, exc, words):
    from gpubp import data
    with pytest.raises(exc, match=words):
        data.labels_from_outputs(out, loss)
    assert data.labels_from_outputs(np.array([[0.3], [-0.2]]), "binary_cross_entropy").tolist() == [1, 0]


def test_early_stopping_mode_must_be_a_name():
    # an array was numpy's "truth value of an array ... is ambiguous"
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        gpubp.callbacks.EarlyStopping(mode=np.array(["min", "max"]))


class _OnDevice:
    """Stands for a CuPy array (what `_is_device_array` recognises), without a GPU."""
    __cuda_array_interface__ = {"shape": (3, 4), "typestr": "<f4", "data": (0, False), "version": 3}
    shape, ndim = (3, 4), 2


@pytest.mark.parametrize("name,call", [
    ("X", lambda n, d: n.predict(d)),
    ("X", lambda n, d: n.fit(d, [0, 1, 2], epochs=1, progress=False)),
    ("Y", lambda n, d: n.fit(np.ones((3, 4)), d, epochs=1, progress=False)),
    ("sample_weight", lambda n, d: n.fit(np.ones((3, 4)), [0, 1, 2], epochs=1, progress=False, sample_weight=d)),
    ("X_val", lambda n, d: n.fit(np.ones((3, 4)), [0, 1, 2], epochs=1, progress=False, validation=(d, [0, 1, 2]))),
    ("mean", lambda n, d: n.set_standardization(d, np.ones(4))),
    ("layer 1 W", lambda n, d: n.set_params([(d, np.ones(6)), (np.ones((3, 6)), np.ones(3))])),
])
def test_device_arrays_given_to_a_numpy_network_are_named(net, name, call):
    # the numpy backend's refusal said "got an array on a CUDA device" without saying which argument
    before = net.get_params()
    with pytest.raises(TypeError, match=rf"^{name}: got an array on a CUDA device; the numpy backend takes host"):
        call(net, _OnDevice())
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(before, net.get_params()))
    assert net.optimizer is None and net.standardization is None


@pytest.mark.parametrize("B,n_out", [(6, 1), (1, 3), (1, 1)])
def test_captured_step_without_checks_takes_the_shapes_the_checked_one_takes(B, n_out):
    # check_inputs=False refused (B,) targets of a one-output network (and a (n_0,) sample), which the
    # first step and check_inputs=True take: "a captured step trains on batches shaped like the first one"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, 4))
    Y = rng.standard_normal(B * n_out)        # (B,) for one output, (n_out,) for one sample
    Xs = X[0] if B == 1 else X
    steps = []
    for check in (True, False):
        net = gpubp.MLP([4, 5, n_out], backend="numpy", seed=0)
        step = net.capture_train_step(Xs, Y, gpubp.optim.SGD(0.1), check_inputs=check)
        steps.append((float(step(Xs, Y)[0]), float(step(Xs, Y)[0]), net.get_params()))
    assert steps[0][:2] == steps[1][:2]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(steps[0][2], steps[1][2]))


@pytest.mark.parametrize("dtype", [str, "U3", object, complex, "datetime64[D]", "abc"])
def test_one_hot_and_targets_for_take_numeric_dtypes_only(dtype):
    # str gave ['1', ''] rows, dates gave dates, complex and object were taken; "abc" was numpy's own error
    from gpubp import data
    for call in (lambda: data.one_hot([0, 1], 2, dtype=dtype), lambda: data.targets_for([0, 1], "mse", 2, dtype=dtype)):
        with pytest.raises(TypeError, match="dtype must be a real numeric dtype"):
            call()
    assert data.one_hot([0, 1], 2, dtype=np.float32).dtype == np.float32
    assert data.one_hot([0, 1], 2, dtype=int).tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("sizes", [{4, 3}, frozenset({4, 3}), {4: 1, 3: 1}])
def test_layer_sizes_must_be_ordered(sizes):
    # a set was taken in its iteration order ({4, 3} gave layers (3, 4)), a dict by its keys
    with pytest.raises(TypeError, match="layer_sizes must be a sequence of integers"):
        gpubp.MLP(sizes, backend="numpy")


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_dtype_is_native_whatever_the_byte_order_asked(dtype):
    # ">f4" (named float32) was kept: the network's buffers were big-endian
    net = gpubp.MLP([4, 3], backend="numpy", seed=0, dtype=dtype)
    assert net.dtype.isnative and net.dtype.name == np.dtype(dtype).name
    assert net._params.dtype.isnative
    ref = gpubp.MLP([4, 3], backend="numpy", seed=0, dtype=np.dtype(dtype).name)
    assert np.array_equal(net.forward(np.ones((2, 4))), ref.forward(np.ones((2, 4))))


def test_callbacks_as_an_array(net):
    # `callbacks or []` asked an array of callbacks for its truth value: numpy's "ambiguous" error
    cbs = np.array([gpubp.callbacks.EarlyStopping(monitor="loss"), 
                    gpubp.callbacks.LambdaCallback(on_epoch_end=lambda *a: None)], dtype=object)
    hist = net.fit(np.ones((3, 4)), [0, 1, 2], epochs=1, progress=False, callbacks=cbs)
    assert len(hist["loss"]) == 1


@pytest.mark.parametrize("c,a,b,exc,words", [
    # c was broadcast against a @ b: one row compared with every row, silently
    (np.ones(2), np.ones((2, 3)), np.ones((3, 2)), ValueError, r"c \(2,\), a \(2, 3\) and b \(3, 2\)"),
    (np.ones((1, 2)), np.ones((2, 3)), np.ones((3, 2)), ValueError, r"c \(1, 2\)"),
    (np.ones((2, 2)), np.ones((2, 3)), np.ones((2, 2)), ValueError, "not \\(M, N\\)"),
    ("a", np.ones((2, 3)), np.ones((3, 2)), TypeError, "c must be a real numeric array"),   # float()'s error
])
def test_precision_relative_error_checks_shapes(c, a, b, exc, words):
    from gpubp import precision
    with pytest.raises(exc, match=words):
        precision.relative_error(c, a, b)
    assert precision.relative_error(np.full((2, 2), 3.0), np.ones((2, 3)), np.ones((3, 2))) == 0.0


# ------------------------------------------------------------------ gpubp.checks, one by one
def test_real_number_takes_ints_and_floats_but_not_bools():
    from gpubp.checks import real_number

    for x, want in ((3, 3.0), (np.int64(-2), -2.0), (0.5, 0.5), (np.float32(0.25), 0.25), (10 ** 400, np.inf),
                    (-10 ** 400, -np.inf), (np.inf, np.inf)):
        got = real_number(x)
        assert type(got) is float and got == want, x
    for x in (True, False, np.True_, "1", None, 1j, np.array(1.0), [1.0]):
        assert real_number(x) is None, x


@pytest.mark.parametrize("check, good, bad", [
    # (the check, value -> what it returns, values refused -> the exception)
    ("check_seed", [(None, None), (0, 0), (np.uint64(2 ** 63), 2 ** 63), (10 ** 30, 10 ** 30)],
     [(-1, ValueError), (True, TypeError), (1.0, TypeError), ("3", TypeError)]),
    ("check_positive_int", [(1, 1), (np.int32(7), 7)],
     [(0, ValueError), (-3, ValueError), (True, ValueError), (2.0, ValueError), (None, ValueError)]),
    ("check_flag", [(True, True), (False, False), (np.True_, True), (np.False_, False)],
     [(1, TypeError), (0, TypeError), ("False", TypeError), (None, TypeError)]),
    ("check_sizes", [([4, 1], (4, 1)), ((np.int64(3), 2, 5), (3, 2, 5)), (range(2, 4), (2, 3))],
     [([4], ValueError), ([4, 0], ValueError), ([0, 4], ValueError), ([4, True], TypeError),
      ([4, 2.0], TypeError), ({4, 2}, TypeError), ("42", TypeError), (42, TypeError)]),
    ("check_dtype", [("float32", np.dtype(np.float32)), (np.float64, np.dtype(np.float64)),
                     (">f4", np.dtype(np.float32))],
     [(None, ValueError), ("float16", ValueError), ("int64", ValueError), ("nonsense", ValueError)]),
])
def test_argument_checks(check, good, bad):
    """Each check returns the value in gpubp's form (plain ints, native dtypes) or refuses it."""
    from gpubp import checks

    fn = getattr(checks, check)
    call = (lambda v: fn("n", v)) if check in ("check_positive_int", "check_flag") else fn
    for v, want in good:
        got = call(v)
        assert got == want and type(got) is type(want), (v, got)
        if isinstance(want, np.dtype):
            assert got.isnative
    for v, exc in bad:
        with pytest.raises(exc):
            call(v)


def test_host_array_and_finite_after_cast():
    from gpubp.checks import finite_after_cast, host_array

    for x in ([[1, 2]], np.array([True, False]), np.arange(3, dtype=np.uint8), [[0.5]]):
        assert np.array_equal(host_array(x, "X"), np.asarray(x))
    for x, exc, words in (([1j], TypeError, "X is complex"), (["a"], TypeError, "real numeric array"),
                          (np.array([1.0, "a"], dtype=object), TypeError, "real numeric array, got dtype object"),
                          ([[1, 2], [3]], ValueError, "not a rectangular"),
                          (np.ma.masked_array([1.0, 2.0], mask=[0, 1]), ValueError, "1 masked value")):
        with pytest.raises(exc, match=words):
            host_array(x, "X")
    assert np.array_equal(host_array(np.ma.masked_array([1.0, 2.0], mask=[0, 0]), "X"), [1.0, 2.0])
    a = finite_after_cast(np.array([[1, 2]], dtype=np.int64), np.float32, "X")
    assert a.dtype == np.float32 and a.flags.c_contiguous and a.tolist() == [[1.0, 2.0]]
    assert finite_after_cast(np.array([3.4e38, -3.4e38]), np.float32, "X").dtype == np.float32   # within range
    with pytest.raises(ValueError, match=r"X overflows float32 .*largest magnitude 3.5e\+38"):
        finite_after_cast(np.array([1.0, -3.5e38]), np.float32, "X")
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="X contains NaN or infinity"):
            finite_after_cast(np.array([1.0, bad]), np.float64, "X")


@pytest.mark.parametrize("params, exc, words", [
    (5, TypeError, "set_params needs a list of \\(W, b\\) pairs"),
    ([(np.ones((3, 2)), np.ones(3))], ValueError, "set_params needs 2 \\(W, b\\) pairs, got 1"),
    ([(np.ones((3, 2)), np.ones(3)), 7], TypeError, "set_params: layer 2 must be a \\(W, b\\) pair"),
    ([(np.ones((3, 2)), np.ones(3)), (np.ones((1, 3)),)], TypeError, "set_params: layer 2 must be a \\(W, b\\) pair"),
])
def test_set_params_refuses_what_is_not_one_w_b_pair_per_layer(params, exc, words):
    net = gpubp.MLP([2, 3, 1], backend="numpy", seed=0)
    before = net.get_params()
    with pytest.raises(exc, match=words):
        net.set_params(params)
    assert all(np.array_equal(W, W0) and np.array_equal(b, b0) for (W, b), (W0, b0) in zip(net.get_params(), before))


def test_an_error_inside_host_count_advances_propagates():
    """The optimizer's host step count is dropped when the block raises; the error is not swallowed."""
    opt = gpubp.optim.SGD(0.1)
    with pytest.raises(RuntimeError, match="inside"):
        with opt.host_count_advances(1):
            raise RuntimeError("inside")
    assert opt.t == 0
    with opt.host_count_advances(3):
        pass
    opt.check_steps(gpubp.optim.MAX_STEPS - 3)
    with pytest.raises(ValueError, match="has taken 3 steps"):
        opt.check_steps(gpubp.optim.MAX_STEPS - 2)
