"""The training loop: it learns, it is reproducible, and dtypes agree."""

import numpy as np
import pytest

import gpubp
from conftest import rel_err


def blobs(rng, n=300, d=6, k=3):
    """k classes of unit Gaussian noise around centers drawn until every two are at least 6 apart,
    so that the nearest-center rule errs on well under 1% of the points.  (Centers drawn once could
    land 1.8 apart, as with rng seed 1909549445682481643: no classifier then reaches the accuracy
    the tests ask for; the best is 85%.)"""
    while True:
        centers = rng.standard_normal((k, d)) * 3
        gaps = np.linalg.norm(centers[:, None] - centers[None], axis=-1)[np.triu_indices(k, 1)]
        if k < 2 or gaps.min() >= 6:
            break
    y = rng.integers(0, k, n)
    return centers[y] + rng.standard_normal((n, d)), y


def test_fit_learns_a_separable_problem(rng):
    X, y = blobs(rng)
    net = gpubp.MLP([6, 16, 3], loss="cross_entropy", backend="numpy", seed=1)
    hist = net.fit(X, y, epochs=15, batch_size=32, optimizer=gpubp.optim.Adam(0.01), progress=False,
                   validation=(X[:50], y[:50]))
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["accuracy"][-1] > 0.95 and hist["val_accuracy"][-1] > 0.9
    assert len(hist["val_loss"]) == 15
    assert (net.predict(X) == y).mean() == pytest.approx(hist["accuracy"][-1])
    p = net.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)


def test_same_seed_same_bits(rng):
    X, y = blobs(rng)
    runs = []
    for _ in range(2):
        net = gpubp.MLP([6, 9, 3], activation="silu", loss="cross_entropy", backend="numpy", seed=42)
        net.fit(X, y, epochs=2, batch_size=17, optimizer="adam", progress=False)
        runs.append(net.get_params())
    for (W, b), (W2, b2) in zip(*runs):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    other = gpubp.MLP([6, 9, 3], backend="numpy", seed=43).get_params()
    assert not np.array_equal(other[0][0], gpubp.MLP([6, 9, 3], backend="numpy", seed=42).get_params()[0][0])



def test_two_fits_train_as_one_whatever_else_draws_random_numbers_in_between(rng):
    """fit's docstring: a second call continues (parameters, shuffling generator, optimizer by name), so
    two calls of 2 epochs give bitwise one of 4; other networks, numpy's global generator and Python's
    `random` drawn from in between change nothing (each network draws from its own generator)."""
    import random

    X, y = blobs(rng)

    def make():
        return gpubp.MLP([6, 9, 3], loss="cross_entropy", backend="numpy", seed=7)
    whole = make()
    whole.fit(X, y, epochs=4, batch_size=13, progress=False)
    split = make()
    np.random.seed(0)
    split.fit(X, y, epochs=2, batch_size=13, progress=False)
    gpubp.MLP([6, 9, 3], loss="cross_entropy", backend="numpy", seed=None).fit(X, y, epochs=1, progress=False)
    np.random.rand(5), random.random(), np.random.seed(1)
    split.fit(X, y, epochs=2, batch_size=13, progress=False)
    for (W, b), (W2, b2) in zip(whole.get_params(), split.get_params()):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    assert split.optimizer.t == whole.optimizer.t == 4 * -(-len(X) // 13)

def test_init_is_pytorch_linear_uniform():
    net = gpubp.MLP([400, 300, 2], backend="numpy", dtype="float64", seed=0)
    (W1, b1), (W2, b2) = net.get_params()
    bound = 1 / np.sqrt(400)
    assert np.abs(W1).max() <= bound and np.abs(W1).max() > 0.99 * bound
    assert np.abs(b1).max() <= bound
    assert W1.std() == pytest.approx(bound / np.sqrt(3), rel=0.02)
    assert np.abs(W2).max() <= 1 / np.sqrt(300)


def test_float32_follows_float64(rng):
    X, y = blobs(rng, n=64)
    nets = {dt: gpubp.MLP([6, 11, 3], activation="tanh", loss="cross_entropy", backend="numpy", dtype=dt,
                          seed=5) for dt in ("float32", "float64")}
    for dt, net in nets.items():
        opt = gpubp.optim.SGD(0.1, momentum=0.9)
        for i in range(5):
            net.train_step(X[i * 12:(i + 1) * 12], y[i * 12:(i + 1) * 12], opt)
    for (W, _), (W64, _) in zip(nets["float32"].get_params(), nets["float64"].get_params()):
        assert W.dtype == np.float32 and rel_err(W, W64) < 1e-5


def test_single_sample_and_regression_targets(rng):
    net = gpubp.MLP([3, 4, 1], activation="leaky_relu", backend="numpy", dtype="float64", seed=0)
    loss, grads = net.loss_and_grads(rng.standard_normal(3), np.array([0.7]))
    assert np.isfinite(loss) and grads[0][0].shape == (4, 3) and grads[1][1].shape == (1,)
    out = net.predict(rng.standard_normal((5, 3)))
    assert out.shape == (5, 1)
    with pytest.raises(ValueError, match="cross-entropy"):
        net.predict_proba(rng.standard_normal((5, 3)))


def test_set_params_checks_shapes():
    net = gpubp.MLP([3, 4, 2], backend="numpy")
    params = net.get_params()
    with pytest.raises(ValueError, match="layer 2"):
        net.set_params([params[0], (params[1][0].T, params[1][1])])
    with pytest.raises(ValueError, match="2 \\(W, b\\) pairs"):
        net.set_params(params[:1])


def test_captured_step_equals_plain_steps(rng):
    X, y = blobs(rng, n=40)
    a = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=7)
    b = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=7)
    oa, ob = gpubp.optim.Adam(0.01), gpubp.optim.Adam(0.01)
    losses_a = [a.train_step(X[i:i + 10], y[i:i + 10], oa) for i in range(0, 40, 10)]
    step = b.capture_train_step(X[:10], y[:10], ob)
    losses_b = [float(step.first_loss[0])] + [float(step(X[i:i + 10], y[i:i + 10])[0]) for i in (10, 20, 30)]
    assert losses_a == losses_b and ob.t == 4
    for (W, _), (W2, _) in zip(a.get_params(), b.get_params()):
        assert np.array_equal(W, W2)
    with pytest.raises(ValueError, match="shaped like the first"):
        step(X[:7], y[:7])


def test_predict_proba_of_binary_cross_entropy_is_a_stable_sigmoid(rng):
    net = gpubp.MLP([3, 2], loss="binary_cross_entropy", backend="numpy", dtype="float64", seed=0)
    X = rng.standard_normal((50, 3)) * 400            # logits far past exp's range
    z = net.forward(X)
    p = net.predict_proba(X)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    from scipy.special import expit     # scipy comes with scikit-learn

    np.testing.assert_allclose(p, expit(z), rtol=1e-12, atol=1e-300)   # subnormal tails may differ
    np.testing.assert_array_equal(net.predict(X), (z > 0).astype(int))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_network_trains_as_the_original(rng, how):
    """copy.deepcopy(net) (the usual way to keep a best model) and pickle copy each array on its own:
    the per-layer (W, b) views the passes use must be views of the copy's own flat buffers, or the
    copy's forward reads stale weights while its optimizer updates others."""
    import copy
    import pickle

    X, y = blobs(rng, n=60)
    net = gpubp.MLP([6, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    net.fit(X, y, epochs=1, batch_size=16, progress=False)
    twin = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    assert twin.optimizer._params is twin._params
    assert twin.backend is net.backend is twin.optimizer._backend    # the one shared instance, not a copy
    h_net = net.fit(X, y, epochs=3, batch_size=16, optimizer="adam", progress=False)
    h_twin = twin.fit(X, y, epochs=3, batch_size=16, optimizer="adam", progress=False)
    assert h_twin == h_net
    assert all(np.array_equal(W, W2) and np.array_equal(b, b2)
               for (W, b), (W2, b2) in zip(net.get_params(), twin.get_params()))
    assert np.array_equal(twin.forward(X), net.forward(X))
    assert np.array_equal(twin.loss_and_grads(X, y)[1][0][0], net.loss_and_grads(X, y)[1][0][0])
    net.set_standardization(X.mean(0), X.std(0))
    twin = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    assert np.array_equal(twin.predict_proba(X), net.predict_proba(X))
    assert not any(a.flags.writeable for a in twin.standardization)   # as the original's


def test_the_step_count_limit_holds_from_a_new_optimizer_and_after_steps_not_read_back(rng):
    """A new optimizer has taken 0 steps: MAX_STEPS more are allowed, not one more.  The host's copy of
    the count follows each step, so the step past the limit is refused with no read of the count."""
    from gpubp.optim import MAX_STEPS

    opt = gpubp.optim.SGD(0.1)
    opt.check_steps(MAX_STEPS)
    with pytest.raises(ValueError, match="has taken 0 steps and 2147483648 more"):
        opt.check_steps(MAX_STEPS + 1)
    X, Y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    opt.t = MAX_STEPS - 1
    net.train_step(X, Y, opt)
    with pytest.raises(ValueError, match=r"has taken 2147483647 steps and 1 more"):
        net.train_step(X, Y, opt)
    assert opt.t == MAX_STEPS


@pytest.mark.parametrize("value", [-1, 2 ** 31, True, 1.0, "3", None])
def test_the_step_count_is_an_integer_in_its_int32_range(value):
    opt = gpubp.optim.Adam()
    opt.t = 2 ** 31 - 1
    with pytest.raises(ValueError, match=r"step count t must be an integer in \[0, 2\*\*31\)"):
        opt.t = value
    assert opt.t == 2 ** 31 - 1


def test_momentum_is_switched_on_or_off_only_before_the_state_exists(rng):
    X, Y = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    for first, other in ((0.0, 0.9), (0.9, 0.0)):
        opt = gpubp.optim.SGD(0.1, momentum=first)
        opt.momentum = other                          # before binding: anything in range
        opt.momentum = first
        gpubp.MLP([3, 4, 2], backend="numpy", seed=0).train_step(X, Y, opt)
        with pytest.raises(ValueError, match="momentum cannot be switched on or off"):
            opt.momentum = other
        assert opt.momentum == first
    opt.momentum = 0.5                                # bound with momentum 0.9: a new value is taken
    assert opt.momentum == 0.5


def test_optimizer_defaults_are_docs_specs():
    """docs/spec.md: Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0), AdamW(..., weight_decay=1e-2),
    SGD(lr, momentum=0, weight_decay=0, nesterov=False)."""
    assert gpubp.optim.Adam().hyper() == {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    assert gpubp.optim.AdamW().hyper() == {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    assert gpubp.optim.SGD(0.3).hyper() == {"lr": 0.3, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}


def test_a_captured_step_counts_one_step_per_call_up_to_the_limit(rng):
    """A captured step's replays are counted on the host (a CUDA graph's replay runs no `opt.step`
    the host sees): from MAX_STEPS - 2, two calls are taken and the third is refused.  The count is
    not read in between (reading `opt.t` refreshes the host's copy from the device)."""
    from gpubp.optim import MAX_STEPS

    X, Y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    net, opt = gpubp.MLP([3, 4, 2], backend="numpy", seed=0), gpubp.optim.SGD(0.01)
    step = net.capture_train_step(X, Y, opt)
    opt.t = MAX_STEPS - 2
    step(X, Y)
    step(X, Y)
    before = [W.copy() for W, _ in net.get_params()]
    with pytest.raises(ValueError, match="more would pass its step count's limit"):
        step(X, Y)
    assert opt.t == MAX_STEPS and all(np.array_equal(W, W0) for (W, _), W0 in zip(net.get_params(), before))


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_a_step_count_that_would_wrap_is_refused_with_nothing_changed(rng, opt_name):
    """The step count is an int32 on the backend: step 2**31 wrapped it to -2**31 without a word (Adam's
    bias correction then went wrong, and `save` wrote a count `load` refuses).  fit, train_step and a
    captured step refuse a step past 2**31 - 1 on the host, before anything changes."""
    from gpubp.optim import MAX_STEPS, make_optimizer

    X, Y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    opt = make_optimizer(opt_name, lr=1e-3)
    opt.t = MAX_STEPS - 4
    net.fit(X, Y, epochs=1, batch_size=5, optimizer=opt, verbose=0)   # 2 steps: to MAX_STEPS - 2
    assert opt.t == MAX_STEPS - 2
    before = [(W.copy(), b.copy()) for W, b in net.get_params()]
    with pytest.raises(ValueError, match=r"has taken 2147483645 steps and 4 more would pass .* 2147483647"):
        net.fit(X, Y, epochs=2, batch_size=5, optimizer=opt, verbose=0)
    assert opt.t == MAX_STEPS - 2
    assert all(np.array_equal(W, W0) and np.array_equal(b, b0) for (W, b), (W0, b0) in zip(net.get_params(), before))
    net.train_step(X, Y, opt)
    step = net.capture_train_step(X, Y, opt)          # its first step is the last the count holds
    assert opt.t == MAX_STEPS
    for call in (lambda: net.train_step(X, Y, opt), lambda: step(X, Y), lambda: net.capture_train_step(X, Y, opt)):
        with pytest.raises(ValueError, match="more would pass its step count's limit"):
            call()
        assert opt.t == MAX_STEPS
    for call in (lambda: net.train_step(X, Y, opt), lambda: step(X, Y)):   # the last step the count holds
        opt.t = MAX_STEPS - 1
        call()
        assert opt.t == MAX_STEPS
    opt.t = 0                                         # as the message says: set the count (or a new optimizer)
    step(X, Y)
    assert opt.t == 1


@pytest.mark.parametrize("B, batch_size", [(7, 3), (7, 7), (1, 4), (9, 3)])
def test_history_loss_is_the_batch_size_weighted_mean_of_the_step_losses(rng, B, batch_size):
    """fit's docstring: `loss` is the mean of the epoch's step losses, each measured before its
    update, weighted by each batch's size (7 rows in batches of 3: 3, 3 and 1).  A twin network
    takes the same batches (shuffle=False) with train_step, which returns each loss before its
    update; `accuracy` is measured after the epoch, as `evaluate` gives it."""
    X, y = rng.standard_normal((B, 3)), rng.integers(0, 2, B)
    a = gpubp.MLP([3, 5, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    b = gpubp.MLP([3, 5, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    hist = a.fit(X, y, epochs=1, batch_size=batch_size, optimizer="sgd", lr=0.5, shuffle=False, progress=False)
    steps = [(b.train_step(X[i:i + batch_size], y[i:i + batch_size], "sgd", lr=0.5), len(y[i:i + batch_size]))
             for i in range(0, B, batch_size)]
    want = sum(l * n for l, n in steps) / B
    assert hist["loss"] == [pytest.approx(want, rel=1e-14)]
    assert hist["accuracy"] == [b.evaluate(X, y)["accuracy"]]
    assert a.optimizer.t == len(steps)


def test_history_loss_with_sample_weights_weighs_each_batch_by_its_weight_sum(rng):
    """With sample weights each batch's loss (its weighted mean) counts by the batch's weight sum
    (docs/spec.md): the epoch's loss is sum_b W_b L_b / sum_b W_b.  A twin takes the same batches one
    fit of one batch at a time, whose history is that batch's loss."""
    X, y = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)
    w = np.array([1.0, 3.0, 0.5, 2.0, 0.0, 4.0, 1.0, 6.0])
    a = gpubp.MLP([3, 5, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    b = gpubp.MLP([3, 5, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    hist = a.fit(X, y, epochs=1, batch_size=3, optimizer="sgd", lr=0.5, shuffle=False, sample_weight=w,
                 progress=False)
    losses, sums = [], []
    for i in range(0, 8, 3):
        h = b.fit(X[i:i + 3], y[i:i + 3], epochs=1, batch_size=3, optimizer="sgd", lr=0.5, sample_weight=w[i:i + 3],
                  shuffle=False, progress=False)     # rows in a's order: the sums, so the weights, agree bitwise
        losses.append(h["loss"][0])
        sums.append(w[i:i + 3].sum())
    assert hist["loss"] == [pytest.approx(np.dot(losses, sums) / sum(sums), rel=1e-13)]
    np.testing.assert_array_equal(a.get_params()[0][0], b.get_params()[0][0])
