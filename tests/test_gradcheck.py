"""gpubp.gradcheck, and the explain trace against the network's own gradients."""

import math

import numpy as np
import pytest

import gpubp
from gpubp.activations import ACTIVATIONS
from gpubp.explain import load_example, trace_step
from gpubp.gradcheck import (check, finite_difference_grads, gradient_scale, max_abs_errors, random_problem,
                             relative_errors)
from gpubp.losses import FUSED_OUTPUT, LOSSES


def _net(act, loss, sizes=(4, 6, 5, 3), seed=0, out=None):
    out = "identity" if loss in FUSED_OUTPUT else (out or "identity")
    return gpubp.MLP(list(sizes), activation=act, output_activation=out, loss=loss, backend="numpy",
                     dtype="float64", seed=seed)


def test_finite_differences_of_a_known_function():
    # one linear layer, half_sse on one sample: dL/dW = (W x + b - y) x^T, dL/db = W x + b - y
    net = gpubp.MLP([3, 2], activation="relu", output_activation="identity", loss="half_sse",
                    backend="numpy", dtype="float64", seed=0)
    W = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    b = np.array([0.1, -0.2])
    net.set_params([(W, b)])
    x, y = np.array([[1.0, 2.0, -1.0]]), np.array([[0.3, -0.4]])
    r = W @ x[0] + b - y[0]
    (dW, db), = finite_difference_grads(net, x, y)
    assert np.allclose(dW, np.outer(r, x[0]), atol=1e-8) and np.allclose(db, r, atol=1e-8)
    # the parameters are restored
    W2, b2 = net.get_params()[0]
    assert np.array_equal(W2, W) and np.array_equal(b2, b)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_analytic_gradients_match_finite_differences(act, loss):
    net = _net(act, loss, seed=1, out="sigmoid" if loss == "mse" else "identity")
    X, Y = random_problem(net, batch=4, seed=1)
    _, errs, an, nu = check(net, X, Y, eps=1e-5)
    worst = max(max(e) for e in errs)
    assert worst < 1e-6, (act, loss, errs)
    # with the default eps too (rounding-limited, still well inside the bound)
    assert max(max(e) for e in relative_errors(an, finite_difference_grads(net, X, Y))) < 1e-6


def test_relative_errors_catch_a_wrong_gradient():
    net = _net("tanh", "mse")
    X, Y = random_problem(net, 5, 0)
    _, an = net.loss_and_grads(X, Y)
    nu = finite_difference_grads(net, X, Y, 1e-5)
    assert max(max(e) for e in relative_errors(an, nu)) < 1e-6
    bad = [(dW.copy(), db.copy()) for dW, db in an]
    bad[1][0][2, 3] *= 1.01                      # one entry 1% off
    errs = relative_errors(bad, nu)
    assert errs[1][0] > 1e-4 and errs[0][0] < 1e-6 and errs[1][1] < 1e-6
    assert relative_errors(bad, nu, kind="max")[1][0] > 5e-3
    bad[0][1][0] = np.nan
    assert relative_errors(bad, nu)[0][1] == float("inf")
    assert max_abs_errors(an, an) == [(0.0, 0.0)] * 3


def test_relative_errors_of_zero_gradients_and_bad_input():
    z = [(np.zeros((2, 2)), np.zeros(2))]
    assert relative_errors(z, z) == [(0.0, 0.0)]
    assert relative_errors(z, z, kind="max") == [(0.0, 0.0)]
    with pytest.raises(ValueError, match="layers"):
        relative_errors(z, z + z)
    with pytest.raises(ValueError, match="shapes"):
        relative_errors(z, [(np.zeros((2, 3)), np.zeros(2))])
    with pytest.raises(ValueError, match="kind"):
        relative_errors(z, z, kind="l1")


def test_max_abs_errors_refuse_mismatched_layers_and_shapes():
    # zip cut the longer list short and numpy broadcast a (3,) dW against a (2, 3) one: both gave
    # small errors silently where relative_errors refuses
    z = [(np.zeros((2, 3)), np.zeros(2))]
    with pytest.raises(ValueError, match="the gradient lists have 1 and 2 layers"):
        max_abs_errors(z, z + z)
    with pytest.raises(ValueError, match=r"layer 1 dW: shapes \(2, 3\) and \(3,\) differ"):
        max_abs_errors(z, [(np.ones(3), np.zeros(2))])
    assert max_abs_errors(z, [(np.full((2, 3), -0.5), np.zeros(2))]) == [(0.5, 0.0)]


def test_max_relative_errors_with_floor_zero():
    # entries zero in both gave 0 / 0 = NaN (and the layer's error NaN), though the docstring says
    # gradients that are both exactly zero have error 0; a negative or NaN floor is refused
    z = [(np.zeros((2, 3)), np.array([0.0, 2.0]))]
    assert relative_errors(z, [(np.zeros((2, 3)), np.array([0.0, 1.0]))], kind="max", floor=0.0) == [(0.0, 0.5)]
    for floor in (-1e-6, float("nan"), "1e-6"):
        with pytest.raises(ValueError, match="floor must be a non-negative number"):
            relative_errors(z, z, kind="max", floor=floor)


def test_max_relative_error_with_floor_zero_ignores_entries_that_agree():
    # floor=0: the purely relative measure; a dead unit's gradient is exactly 0 in both, which is
    # no error (the docstring: 0 where both are zero), not 0/0 = NaN spoiling the layer's figure
    an = [(np.array([[1.0, 0.0]]), np.array([0.0]))]
    nu = [(np.array([[1.0 + 1e-9, 0.0]]), np.array([0.0]))]
    (ew, eb), = relative_errors(an, nu, kind="max", floor=0.0)
    assert ew == pytest.approx(1e-9, rel=1e-6) and eb == 0.0
    for bad in (-1.0, float("nan"), float("inf"), "0"):
        with pytest.raises(ValueError, match="floor"):
            relative_errors(an, nu, kind="max", floor=bad)


def test_cross_entropy_gradcheck_with_one_hot_targets():
    net = _net("gelu", "cross_entropy")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 4))
    Y = np.eye(3)[rng.integers(0, 3, 6)]
    _, errs, _, _ = check(net, X, Y, eps=1e-5)
    assert max(max(e) for e in errs) < 1e-6


@pytest.mark.parametrize("loss", LOSSES)
def test_explain_trace_equals_the_network(loss):
    """The explain trace (backend ops called one by one) gives the network's loss and gradients."""
    acts = ["tanh", "silu", "identity" if loss in FUSED_OUTPUT else "sigmoid"]
    net = gpubp.MLP([3, 4, 5, 2], activation=acts[:2], output_activation=acts[2], loss=loss, backend="numpy",
                    dtype="float64", seed=7)
    X, Y = random_problem(net, 3, 7)
    value, grads = net.loss_and_grads(X, Y)
    t = trace_step(net.get_params(), X, Y, acts, loss, 0.25)
    assert t["loss"] == pytest.approx(value, rel=1e-14, abs=1e-15)
    for bw in t["backward"]:
        dW, db = grads[bw["layer"] - 1]
        np.testing.assert_allclose(bw["dW"], dW, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(bw["db"], db, rtol=1e-12, atol=1e-15)
    # the update is plain SGD, and it lowers the loss for a small step
    for up, (W, b), (dW, db) in zip(t["updated"], net.get_params(), grads):
        np.testing.assert_allclose(up["W"], W - 0.25 * dW, rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(up["b"], b - 0.25 * db, rtol=1e-15, atol=1e-15)


PUBLISHED_W2 = ("0.35891648", "0.408666186", "0.511301270", "0.561370121")
PUBLISHED_W1 = ("0.149780716", "0.19956143", "0.24975114", "0.29950229")


def agrees_to_published_digits(value, published: str) -> bool:
    decimals = len(published.split(".")[1])
    return round(float(value), decimals) == round(float(published), decimals)


def test_classic_example_published_numbers():
    p = load_example("classic")
    t = trace_step(**p.trace_args())
    assert agrees_to_published_digits(t["loss"], "0.298371109")
    W1, W2 = np.ravel(t["updated"][0]["W"]), np.ravel(t["updated"][1]["W"])
    assert all(agrees_to_published_digits(v, s) for v, s in zip(W2, PUBLISHED_W2)), W2
    assert all(agrees_to_published_digits(v, s) for v, s in zip(W1, PUBLISHED_W1)), W1
    # and not by luck: the weights before the step do not
    assert not agrees_to_published_digits(t["forward"][1]["W"][0][0], PUBLISHED_W2[0])
    assert t["loss_after"] < t["loss"]


def test_bad_eps_batch_and_kind_are_refused_by_name_before_any_pass():
    # eps=True ran with eps 1 and eps="1e-6" or None gave "'>' not supported between instances of ...";
    # random_problem(net, 0) gave an empty batch and -1 numpy's "negative dimensions"; check(kind="Max")
    # ran every finite-difference pass (two per parameter) before refusing the kind
    net = gpubp.MLP([3, 4, 2], activation="tanh", backend="numpy", dtype="float64", seed=0)
    X, Y = random_problem(net, 4)
    for eps in (True, "1e-6", None, 0, -1e-6, math.nan, math.inf):
        with pytest.raises(ValueError, match="eps must be a positive number"):
            finite_difference_grads(net, X, Y, eps)
    for batch in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch must be a positive integer"):
            random_problem(net, batch)
    # numpy's "SeedSequence expects int or sequence of ints for entropy not abc", and seed=True a batch
    for seed in (-1, "abc", 1.5, True):
        with pytest.raises((TypeError, ValueError), match="seed must be None or a non-negative integer"):
            random_problem(net, 4, seed)
    calls = []
    original = net.loss_and_grads
    net.loss_and_grads = lambda *a, **k: calls.append(1) or original(*a, **k)
    for bad in ({"kind": "Max"}, {"eps": True}):
        with pytest.raises(ValueError, match="kind must be|eps must be"):
            check(net, X, Y, **bad)
    assert calls == []


class _CubicNet:
    """A stand-in with a network's get_params / set_params / loss_and_grads: L = sum over every parameter
    p of p^3, whose central difference is exactly 3 p^2 + eps^2; it records each loss evaluation's
    parameters."""

    def __init__(self):
        self.params = [(np.array([[0.5, -1.0, 2.0]]), np.array([0.25]))]
        self.seen = []

    def get_params(self):
        return [(W.copy(), b.copy()) for W, b in self.params]

    def set_params(self, params):
        self.params = [(np.array(W, copy=True), np.array(b, copy=True)) for W, b in params]

    def loss_and_grads(self, X, Y):
        self.seen.append(np.concatenate([np.ravel(a) for pair in self.params for a in pair]))
        return float(sum(np.sum(a ** 3) for pair in self.params for a in pair)), \
            [(3 * W ** 2, 3 * b ** 2) for W, b in self.params]


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_finite_differences_are_central_at_eps_with_the_documented_default(eps):
    # (L(p + eps e_i) - L(p - eps e_i)) / (2 eps), one parameter at a time, eps = 1e-6 when not given
    net = _CubicNet()
    p0 = np.array([0.5, -1.0, 2.0, 0.25])
    given = {} if eps is None else {"eps": eps}
    (dW, db), = finite_difference_grads(net, None, None, **given)
    e = 1e-6 if eps is None else eps
    want = []
    for i in range(4):
        for sign in (1, -1):
            p = p0.copy()
            p[i] += sign * e
            want.append(p)
    np.testing.assert_array_equal(np.array(net.seen), np.array(want))
    np.testing.assert_allclose(np.append(dW.ravel(), db), 3 * p0 ** 2 + e ** 2, rtol=1e-8 if eps is None else 1e-12)
    assert dW.shape == (1, 3) and db.shape == (1,)
    np.testing.assert_array_equal(net.params[0][0], [[0.5, -1.0, 2.0]])        # restored
    # check() uses the same default eps and returns (loss, errors, analytic, numeric)
    net = _CubicNet()
    loss, errs, an, nu = check(net, None, None, **given)
    assert loss == 0.5 ** 3 - 1 + 8 + 0.25 ** 3
    assert len(net.seen) == 1 + 8 and net.seen[1][0] == 0.5 + e and net.seen[2][0] == 0.5 - e
    np.testing.assert_allclose(nu[0][0], 3 * p0[:3][None] ** 2 + e ** 2, rtol=1e-8 if eps is None else 1e-12)
    assert errs == relative_errors(an, nu)


def test_relative_errors_against_hand_computed_values():
    # norm: ||a - n|| / max(||a||, ||n||) over the layer's dW (or db)
    (ew, eb), = relative_errors([(np.array([[3.0, 4.0]]), np.array([1.0]))],
                                [(np.zeros((1, 2)), np.array([3.0]))])
    assert ew == 1.0 and eb == pytest.approx(2 / 3, rel=1e-15)
    (ew, eb), = relative_errors([(np.array([[1.0, 0.0]]), np.array([2.0, 2.0]))],
                                [(np.array([[1.0, 1.0]]), np.array([2.0, 2.0]))])
    assert ew == pytest.approx(1 / math.sqrt(2), rel=1e-15) and eb == 0.0
    # max: max_i |a_i - n_i| / max(|a_i|, |n_i|, floor); floor by default 1e-6 times the largest entry of
    # either list (here 4), at least 1e-12; a one-entry db is an entry like any other
    an = [(np.array([[4.0, 1e-9]]), np.array([-1.0]))]
    nu = [(np.array([[4.0, 3e-9]]), np.array([-0.5]))]
    (ew, eb), = relative_errors(an, nu, kind="max")
    assert ew == pytest.approx(2e-9 / 4e-6, rel=1e-12) and eb == 0.5
    (ew, eb), = relative_errors([(np.array([[1e-20]]), np.array([0.0]))], [(np.array([[3e-20]]), np.array([0.0]))],
                                kind="max")
    assert ew == pytest.approx(2e-20 / 1e-12, rel=1e-12) and eb == 0.0
    # a floor given is the floor, for kind="max"
    (ew, eb), = relative_errors(an, nu, kind="max", floor=1.0)
    assert ew == pytest.approx(2e-9, rel=1e-12) and eb == 0.5
    (ew, eb), = relative_errors(an, nu, kind="max", floor=10.0)
    assert ew == pytest.approx(2e-10, rel=1e-12) and eb == 0.05
    # an empty layer (no weights) has no error in either measure; an infinity is inf
    empty = [(np.zeros((2, 0)), np.zeros(2))]
    assert relative_errors(empty, empty, kind="max") == [(0.0, 0.0)] == relative_errors(empty, empty)
    assert relative_errors(an, [(np.array([[4.0, math.inf]]), np.array([-0.5]))], kind="max")[0][0] == math.inf


def test_the_norm_relative_error_of_huge_and_tiny_gradients_neither_overflows_nor_underflows():
    # ||a|| squared the entries: 1.5e200 overflowed (inf / inf, a NaN the CLI's max() skipped, so a wrong
    # layer printed no FAIL) and 2e-200 underflowed to 0 (read as "both zero": error 0 for a factor 2)
    for scale in (1e200, 1e-200, 1e-310):
        (ew, eb), = relative_errors([(np.array([[1.0, 0.0]]) * scale, np.array([4.0]) * scale)],
                                    [(np.array([[1.5, 0.0]]) * scale, np.array([2.0]) * scale)])
        assert ew == pytest.approx(1 / 3, rel=1e-12) and eb == pytest.approx(0.5, rel=1e-12), scale
    (ew, eb), = relative_errors([(np.array([[3e200, 4e200]]), np.array([1e-200]))],
                                [(np.array([[3e200, 4e200]]), np.array([1e-200]))])
    assert ew == 0.0 and eb == 0.0
    # entries so large that even the scaled norms overflow: infinitely wrong, not NaN
    big = np.full((1, 4), 1.7e308)
    assert relative_errors([(big, np.ones(1))], [(-big, np.ones(1))]) == [(math.inf, 0.0)]


def test_gradient_scale_and_max_abs_errors_by_hand():
    assert gradient_scale([(np.array([[1e-3, -2e-3]]), np.array([5e-4]))]) == 2e-3
    assert gradient_scale([(np.zeros((1, 0)), np.array([-0.25]))], [(np.zeros((1, 0)), np.array([0.125]))]) == 0.25
    assert gradient_scale([(np.zeros((2, 0)), np.zeros(2))]) == 0.0
    assert max_abs_errors([(np.array([[1.0, -2.0]]), np.array([0.5]))],
                          [(np.array([[1.5, 1.0]]), np.array([0.5]))]) == [(3.0, 0.0)]
    assert max_abs_errors([(np.zeros((2, 0)), np.zeros(2))], [(np.zeros((2, 0)), np.ones(2))]) == [(0.0, 1.0)]


def test_gradients_given_as_nested_lists_are_compared_like_arrays():
    # the explain trace's dW and db are lists: they compare against finite differences as they are
    net = _net("tanh", "half_sse", sizes=(2, 3, 1), seed=4)
    X, Y = random_problem(net, 3, 4)
    t = trace_step(net.get_params(), X, Y, ["tanh", "identity"], "half_sse", 0.1)
    traced = [(bw["dW"], bw["db"]) for bw in reversed(t["backward"])]
    numeric = finite_difference_grads(net, X, Y, 1e-5)
    assert max(max(e) for e in relative_errors(traced, numeric)) < 1e-7
    assert max(max(e) for e in max_abs_errors(traced, numeric)) < 1e-8
    assert gradient_scale(traced) == max(np.max(np.abs(np.asarray(a))) for pair in traced for a in pair)


@pytest.mark.parametrize("loss", LOSSES)
def test_random_problem_fits_each_loss(loss):
    # X normal, (batch, n_in); cross_entropy: class indices covering 0 .. n_out - 1; binary_cross_entropy:
    # probabilities in [0, 1]; poisson: counts; the squared errors: normal targets (batch, n_out); batch 5 and
    # seed 0 by default
    net = _net("tanh", loss, sizes=(3, 4, 3))
    X, Y = random_problem(net, 400, 1)
    assert X.shape == (400, 3) and X.min() < -2 and X.max() > 2
    if loss == "cross_entropy":
        assert Y.shape == (400,) and Y.dtype.kind == "i" and sorted(set(Y.tolist())) == [0, 1, 2]
    elif loss == "binary_cross_entropy":
        assert Y.shape == (400, 3) and 0 <= Y.min() < 0.05 and 0.95 < Y.max() <= 1
    elif loss == "poisson":     # counts of mean 1.5: zeros among them, whole numbers, none negative
        assert Y.shape == (400, 3) and Y.min() == 0 and Y.max() >= 5 and np.array_equal(Y, np.round(Y))
        assert 1.3 < Y.mean() < 1.7
    else:
        assert Y.shape == (400, 3) and Y.min() < -2 and Y.max() > 2
    X5, Y5 = random_problem(net)
    assert X5.shape[0] == 5 and len(Y5) == 5
    X0, Y0 = random_problem(net, 5, 0)
    assert np.array_equal(X5, X0) and np.array_equal(Y5, Y0)
    assert not np.array_equal(random_problem(net, 5, 1)[0], X0)
