"""docs/spec.md's formulas and conventions, one by one, against the numpy backend and PyTorch.

The broad parity tests (every activation x loss, a few optimizer steps) live in
test_torch_parity.py and test_gradients.py; these pin the cases they leave out:
optimizer options over many steps with gradients of every magnitude, the
initialisations' distributions, the schedules against torch.optim.lr_scheduler,
the losses at extreme logits and batch 1.
"""

import math
import warnings

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


# ------------------------------------------------------------------ initialisation
def _torch_init(init, n_out, n_in, gen):
    """A weight drawn by PyTorch's own initialiser for `init` (nn.Linear's default for "torch")."""
    W = torch.empty(n_out, n_in, dtype=torch.float64)
    if init == "torch":
        torch.nn.init.kaiming_uniform_(W, a=math.sqrt(5), generator=gen)   # nn.Linear.reset_parameters
    elif init == "xavier":
        torch.nn.init.xavier_uniform_(W, generator=gen)
    else:
        torch.nn.init.kaiming_normal_(W, generator=gen)   # fan_in, gain sqrt(2) (relu)
    return W.numpy()


@pytest.mark.parametrize("init", ["torch", "xavier", "kaiming"])
def test_initial_weights_have_the_distribution_of_torch_nn_init(init):
    """The spec's distributions, checked by their statistics against the formulas and against draws of
    torch.nn.init: the support (uniform: every |w| <= bound, the largest within a few N-ths of it),
    the mean and the variance, each within 6 standard errors of the sample size N (uniform: var
    b^2/3, the variance's standard error var sqrt(0.8 / N); normal: var sqrt(2 / N))."""
    sizes = [301, 203, 47]
    net = gpubp.MLP(sizes, activation="relu", init=init, backend="numpy", dtype="float64", seed=5)
    gen = torch.Generator().manual_seed(5)
    for (W, b), n_in, n_out in zip(net.get_params(), sizes[:-1], sizes[1:]):
        N = W.size
        if init == "torch":
            bound = 1 / math.sqrt(n_in)
        elif init == "xavier":
            bound = math.sqrt(6 / (n_in + n_out))
        else:
            bound = None
        var = bound ** 2 / 3 if bound is not None else 2 / n_in
        se_var = var * math.sqrt((0.8 if bound is not None else 2.0) / N)
        ref = _torch_init(init, n_out, n_in, gen)
        for w in (W, ref):
            assert abs(w.mean()) < 6 * math.sqrt(var / N)
            assert abs(w.var() - var) < 6 * se_var
            if bound is not None:
                assert np.abs(w).max() <= bound and np.abs(w).max() > bound * (1 - 20 / N)
        if init == "torch":   # nn.Linear's bias: uniform in ±1/sqrt(fan_in) too
            assert np.abs(b).max() <= 1 / math.sqrt(n_in) and abs(b.var() - var) < 6 * var * math.sqrt(0.8 / b.size)
        else:
            assert not b.any()


# ------------------------------------------------------------------ schedules
def _torch_rates(make, n):
    """The rate torch.optim gives each of n optimizer steps, the scheduler stepped after each one
    (gpubp's schedules count optimizer steps from 1, not epochs)."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched, out = make(opt), []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_step_decay_is_torchs_steplr_counted_in_optimizer_steps():
    ours = gpubp.schedules.step_decay(0.1, 3, gamma=0.5)
    ref = _torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5), 20)
    np.testing.assert_allclose([ours(k) for k in range(1, 21)], ref, rtol=1e-15)


def test_cosine_is_torchs_linear_warmup_then_cosine_annealing_and_then_holds():
    """warmup w: LinearLR(start_factor=1/w, total_iters=w-1) for w steps, then
    CosineAnnealingLR(T_max=total_steps - w, eta_min=min_lr), up to step total_steps; after it, the
    rate of step total_steps (PyTorch's cosine climbs back)."""
    L = torch.optim.lr_scheduler
    total = 12
    for warm, low in ((0, 0.0), (0, 0.01), (4, 0.0), (1, 0.02)):
        ours = gpubp.schedules.cosine(0.1, total, min_lr=low, warmup_steps=warm)
        if warm:
            first = (lambda o, w=warm: L.LinearLR(o, 1 / w, 1.0, w - 1)) if warm > 1 else \
                    (lambda o: L.ConstantLR(o, 1.0, 0))
            make = lambda o, first=first, w=warm, low=low: L.SequentialLR(   # noqa: E731
                o, [first(o), L.CosineAnnealingLR(o, total - w, eta_min=low)], [w])
        else:
            make = lambda o, low=low: L.CosineAnnealingLR(o, total, eta_min=low)   # noqa: E731
        with warnings.catch_warnings():   # SequentialLR's deprecation notices
            warnings.simplefilter("ignore")
            ref = _torch_rates(make, total)
        got = np.array([ours(k) for k in range(1, total + 4)])
        np.testing.assert_allclose(got[:total], ref, rtol=1e-12, atol=1e-17)
        assert np.all(got[total:] == got[total - 1]) and np.all(got > 0)

