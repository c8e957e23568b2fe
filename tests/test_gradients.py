"""Analytic gradients of the numpy backend against central finite differences, in float64."""

import numpy as np
import pytest
from conftest import ACTIVATIONS, LOSSES, output_activation_for, random_targets, rel_err

import gpubp
from gpubp.gradcheck import finite_difference_grads

SHAPES = [([3, 5, 2], 1), ([2, 7, 3, 5], 7), ([5, 1, 3], 13)]
EPS = 1e-6


def fd_close(analytic, numeric, loss) -> bool:
    """Within 1e-6 relative, or within the rounding noise of central differences.

    (L(w+eps) - L(w-eps)) / 2 eps carries an absolute error near u |L| / eps
    per entry (u = 2.2e-16), about 2e-10 here: a gradient whose norm is under
    about 1e-4 (a dead relu, a saturated sigmoid) cannot be checked to 1e-6
    relative against it, so that noise is the floor.
    """
    a, n = np.asarray(analytic), np.asarray(numeric)
    floor = 4 * np.finfo(np.float64).eps * max(abs(loss), 1.0) / EPS * np.sqrt(a.size)
    return bool(np.linalg.norm(a - n) <= 1e-6 * np.linalg.norm(n) + floor)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradients_match_finite_differences(act, loss, rng):
    for sizes, B in SHAPES:
        out_act = output_activation_for(loss, act)
        net = gpubp.MLP(sizes, activation=act, output_activation=out_act, loss=loss, backend="numpy",
                        dtype="float64", seed=int(rng.integers(1 << 30)))
        X = rng.standard_normal((B, sizes[0]))
        Y = random_targets(rng, loss, B, sizes[-1], labels=bool(rng.integers(2)))
        before = net.get_params()
        value, grads = net.loss_and_grads(X, Y)
        for (W0, b0), (W1, b1) in zip(before, net.get_params()):   # loss_and_grads changes nothing
            assert np.array_equal(W0, W1) and np.array_equal(b0, b1)
        fd = finite_difference_grads(net, X, Y, eps=EPS)
        for l, ((dW, db), (fW, fb)) in enumerate(zip(grads, fd), start=1):
            assert fd_close(dW, fW, value), f"layer {l} dW, sizes {sizes}, B={B}: {rel_err(dW, fW):.3g}"
            assert fd_close(db, fb, value), f"layer {l} db, sizes {sizes}, B={B}: {rel_err(db, fb):.3g}"


def test_gradient_check_catches_a_wrong_gradient(rng, monkeypatch):
    """The check above must be able to fail: scale the tanh derivative by 1.01 and it does."""
    import gpubp.backends.numpy_backend as nb

    real = nb.activation_backward_inplace

    def wrong(name, delta, a, z=None):
        out = real(name, delta, a, z)
        if name == "tanh":
            delta *= 1.01
        return out

    monkeypatch.setattr(nb, "activation_backward_inplace", wrong)
    net = gpubp.MLP([3, 4, 2], activation="tanh", backend="numpy", dtype="float64", seed=1)
    X, Y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    loss, grads = net.loss_and_grads(X, Y)
    fd = finite_difference_grads(net, X, Y, eps=EPS)
    assert not fd_close(grads[0][0], fd[0][0], loss)
