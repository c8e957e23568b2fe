"""docs/spec.md's formulas and conventions, one by one, against the numpy backend and PyTorch.

The broad parity tests (every activation x loss, a few optimizer steps) live in
test_torch_parity.py and test_gradients.py; these pin the cases they leave out:
optimizer options over many steps with gradients of every magnitude, the
initialisations' distributions, the schedules against torch.optim.lr_scheduler,
the losses at extreme logits and batch 1.
"""

import math

import numpy as np
import pytest

import gpubp
from gpubp import optim
from gpubp.backends.numpy_backend import NumpyBackend

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

NP = NumpyBackend()
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


# ------------------------------------------------------------------ optimizers
OPTIMIZER_CASES = {
    "sgd": (lambda: optim.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_wd": (lambda: optim.SGD(0.1, weight_decay=0.2), lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.2)),
    "momentum_wd": (lambda: optim.SGD(0.1, momentum=0.9, weight_decay=0.01),
                    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01)),
    "adam_l2": (lambda: optim.Adam(0.01, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    # beta1 <= 0.5: PyTorch's lerp takes its other branch, g - (g - m) beta1 (exactly g at beta1 = 0)
    "adam_beta1_0": (lambda: optim.Adam(0.01, betas=(0.0, 0.999)),
                     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.0, 0.999))),
    "adam_beta1_0.5": (lambda: optim.Adam(0.01, betas=(0.5, 0.9)),
                       lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.5, 0.9))),
    "adam_betas_0": (lambda: optim.Adam(0.01, betas=(0.0, 0.0)), lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.0, 0.0))),
    "adamw_beta1_0.3": (lambda: optim.AdamW(0.01, betas=(0.3, 0.99), weight_decay=0.5, eps=1e-3),
                        lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.3, 0.99), weight_decay=0.5, eps=1e-3)),
    "adamw": (lambda: optim.AdamW(0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
}


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-14)], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(OPTIMIZER_CASES))
def test_optimizer_equals_torch_over_many_steps_with_gradients_of_every_magnitude(case, dtype, tol):
    """200 steps from the same weights and the same gradients as torch.optim, the rate changed every
    step (as a schedule does), gradients from 1e-4 to 1e2: the parameters agree to rounding.  (Adam's
    first moment at beta1 = 0 was computed as m + (g - m), which keeps an ulp of the old m: 2% off
    PyTorch's parameters in float32.)"""
    ours, theirs = OPTIMIZER_CASES[case]
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(96).astype(dtype)
    p, tp = p0.copy(), torch.tensor(p0.copy(), requires_grad=True)
    opt, topt = ours(), theirs([tp])
    for k in range(200):
        lr = 0.01 * (1 + k % 7)
        opt.lr = lr
        for group in topt.param_groups:
            group["lr"] = lr
        g = (rng.standard_normal(96) * 10.0 ** rng.integers(-4, 3)).astype(dtype)
        opt.step(NP, p, g)
        tp.grad = torch.tensor(g)
        topt.step()
    ref = tp.detach().numpy()
    assert opt.t == 200
    assert np.max(np.abs(p - ref)) <= tol * np.max(np.abs(ref))


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize("scale", [1.0009, 0.9992])
def test_cross_entropy_probability_rows_are_normalised_so_value_and_gradient_agree(scale):
    """Rows summing to 1 within 1e-3 are accepted; the loss is that of the normalised rows (PyTorch's
    cross_entropy of them) and the gradients are its finite differences.  Used as given, a row summing
    to 1.0009 gave gradients 0.3% off the finite differences of the value."""
    from gpubp.gradcheck import finite_difference_grads, relative_errors

    rng = np.random.default_rng(3)
    net = gpubp.MLP([3, 5, 4], activation="tanh", loss="cross_entropy", backend="numpy", dtype="float64", seed=1)
    X = rng.standard_normal((6, 3)) * 3
    P = rng.dirichlet(np.ones(4), 6)
    value, grads = net.loss_and_grads(X, P * scale)
    assert value == pytest.approx(net.loss_and_grads(X, P)[0], rel=1e-14)
    assert value == pytest.approx(net.evaluate(X, P * scale)["loss"], rel=1e-14)
    errs = relative_errors(grads, finite_difference_grads(net, X, P * scale))
    assert max(max(e) for e in errs) < 1e-6
    logits = torch.from_numpy(net.forward(X))
    assert value == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.from_numpy(P)).item(), rel=1e-12)
