"""Published answers (docs/spec.md, "Known answers"), to their published digits."""

import numpy as np
import pytest

import gpubp

CLASSIC = [
    (np.array([[0.15, 0.20], [0.25, 0.30]]), np.array([0.35, 0.35])),
    (np.array([[0.40, 0.45], [0.50, 0.55]]), np.array([0.60, 0.60])),
]
X = np.array([[0.05, 0.10]])
T = np.array([[0.01, 0.99]])


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-6)])
def test_classic_2_2_2_worked_example(dtype, tol):
    net = gpubp.MLP([2, 2, 2], activation="sigmoid", output_activation="sigmoid", loss="half_sse",
                    backend="numpy", dtype=dtype)
    net.set_params(CLASSIC)
    loss = net.train_step(X, T, gpubp.optim.SGD(0.5))
    assert loss == pytest.approx(0.298371109, abs=tol)
    (W1, _), (W2, _) = net.get_params()
    np.testing.assert_allclose(W2.ravel(), [0.35891648, 0.408666186, 0.511301270, 0.561370121], atol=tol + 5e-9)
    np.testing.assert_allclose(W1.ravel(), [0.149780716, 0.19956143, 0.24975114, 0.29950229], atol=tol + 5e-9)


def test_sigmoid_2_2_1_example_by_hand():
    """[2, 2, 1], input [0.5, 0.8], target [1], sigmoid, mse, lr 0.1: one step equals the equations."""
    net = gpubp.MLP([2, 2, 1], activation="sigmoid", output_activation="sigmoid", loss="mse",
                    backend="numpy", dtype="float64", seed=2)
    (W1, b1), (W2, b2) = net.get_params()
    x, t = np.array([0.5, 0.8]), np.array([1.0])
    sig = lambda z: 1 / (1 + np.exp(-z))
    a1 = sig(W1 @ x + b1)
    a2 = sig(W2 @ a1 + b2)
    d2 = 2 * (a2 - t) * a2 * (1 - a2)
    d1 = (W2.T @ d2) * a1 * (1 - a1)
    loss = net.train_step(x, t, gpubp.optim.SGD(0.1))
    assert loss == pytest.approx(float(((a2 - t) ** 2).mean()), rel=1e-12)
    (nW1, nb1), (nW2, nb2) = net.get_params()
    np.testing.assert_allclose(nW2, W2 - 0.1 * np.outer(d2, a1), rtol=1e-12)
    np.testing.assert_allclose(nb2, b2 - 0.1 * d2, rtol=1e-12)
    np.testing.assert_allclose(nW1, W1 - 0.1 * np.outer(d1, x), rtol=1e-12)
    np.testing.assert_allclose(nb1, b1 - 0.1 * d1, rtol=1e-12)
