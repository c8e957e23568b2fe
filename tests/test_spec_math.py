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
    given = P * scale
    value, grads = net.loss_and_grads(X, given)
    assert np.array_equal(given, P * scale)        # the caller's array is not normalised in place
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



def _torch_sample_losses(loss, out, Y):
    """Each row's term l_i of the spec's loss table (the unweighted loss is their mean)."""
    F = torch.nn.functional
    if loss == "mse":
        return F.mse_loss(out, Y, reduction="none").mean(dim=1)
    if loss == "half_sse":
        return 0.5 * ((out - Y) ** 2).sum(dim=1)
    if loss == "cross_entropy":
        return F.cross_entropy(out, Y, reduction="none")
    return F.binary_cross_entropy_with_logits(out, Y, reduction="none").mean(dim=1)


@pytest.mark.parametrize("loss", ["mse", "half_sse", "cross_entropy", "binary_cross_entropy"])
def test_sample_weighted_losses_are_torchs_weighted_mean_of_row_losses(loss):
    """fit(sample_weight=w): each batch's loss is sum_i w_i l_i / sum_i w_i (zero weights included, a
    short last batch, probability rows for cross_entropy), and the steps are that loss's gradient."""
    rng = np.random.default_rng(8)
    B, sizes = 23, [4, 6, 3]
    X = rng.standard_normal((B, 4))
    if loss == "cross_entropy":
        Y = rng.dirichlet(np.ones(3), B)
    elif loss == "binary_cross_entropy":
        Y = rng.uniform(0, 1, (B, 3))
    else:
        Y = rng.standard_normal((B, 3))
    w = rng.uniform(0.0, 3.0, B)
    w[[2, 11]] = 0.0
    net = gpubp.MLP(sizes, activation="silu", loss=loss, backend="numpy", dtype="float64", seed=4)
    from test_torch_parity import torch_model

    layers, forward = torch_model(net)
    topt = torch.optim.SGD([p for lin in layers for p in lin.parameters()], lr=0.05, momentum=0.5)
    hist = net.fit(X, Y, epochs=2, batch_size=10, optimizer=optim.SGD(0.05, momentum=0.5), sample_weight=w,
                   shuffle=False, progress=False)
    ref = []
    for _ in range(2):
        total = weight = 0.0
        for s in range(0, B, 10):
            wb = torch.from_numpy(w[s:s + 10])
            topt.zero_grad()
            tl = (_torch_sample_losses(loss, forward(torch.from_numpy(X[s:s + 10])), torch.from_numpy(Y[s:s + 10]))
                  * wb).sum() / wb.sum()
            tl.backward()
            topt.step()
            total, weight = total + tl.item() * float(wb.sum()), weight + float(wb.sum())
        ref.append(total / weight)
    np.testing.assert_allclose(hist["loss"], ref, rtol=1e-12)
    for (W, b), lin in zip(net.get_params(), layers):
        np.testing.assert_allclose(W, lin.weight.detach().numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(b, lin.bias.detach().numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("beta1,wd,decoupled", [(0.9, 0.0, False), (0.0, 0.1, False), (0.5, 0.0, False),
                                                (0.3, 0.2, True)])
def test_numpy_adam_is_the_cuda_kernels_float32_arithmetic_bit_for_bit(beta1, wd, decoupled):
    """The spec's order of operations, every one rounded to float32 as kernels/elementwise.cu's adam_one
    computes it (step_size = T(lr / (1 - b1^t)) and bc2_sqrt = T(sqrt(1 - b2^t)) from doubles): the
    numpy backend gives the same bits.  (Its bias correction of v divided by a float64 sqrt(1 - b2^t),
    a double division rounded once, an ulp away from the kernel's float32 one.)"""
    f = np.float32
    rng = np.random.default_rng(11)
    n, lr, beta2, eps = 257, 3e-3, 0.999, 1e-8
    p, m, v = rng.standard_normal(n).astype(f), np.zeros(n, f), np.zeros(n, f)
    P, M, V = p.copy(), m.copy(), v.copy()
    b1c, b2, b2c, T_eps, T_wd, decay = f(1 - beta1), f(beta2), f(1 - beta2), f(eps), f(wd), f(1 - lr * wd)
    for t in range(1, 30):
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3)).astype(f)
        NP.adam_update(p, g, m, v, lr, beta1, beta2, eps, wd, np.array([t], np.int32), decoupled)
        step_size, bc2_sqrt = f(lr / (1.0 - beta1 ** t)), f(math.sqrt(1.0 - beta2 ** t))
        G = g.copy()
        if wd and decoupled:
            P = P * decay
        elif wd:
            G = P * T_wd + G
        M = M + (G - M) * b1c if b1c < f(0.5) else G - (G - M) * (f(1) - b1c)
        V = V * b2 + (G * b2c) * G
        P = P - (M / (np.sqrt(V) / bc2_sqrt + T_eps)) * step_size
        assert P.dtype == M.dtype == V.dtype == f
        assert np.array_equal(p, P) and np.array_equal(m, M) and np.array_equal(v, V), f"step {t}"


@pytest.mark.parametrize("loss", ["mse", "half_sse", "binary_cross_entropy"])
def test_one_output_takes_a_target_vector_and_one_sample_takes_a_row(loss):
    rng = np.random.default_rng(2)
    net = gpubp.MLP([3, 4, 1], loss=loss, backend="numpy", dtype="float64", seed=0)
    X, y = rng.standard_normal((5, 3)), rng.uniform(0, 1, 5)
    assert net.evaluate(X, y)["loss"] == net.evaluate(X, y[:, None])["loss"]
    wide = gpubp.MLP([3, 4, 2], loss=loss, backend="numpy", dtype="float64", seed=0)
    assert wide.evaluate(X[0], y[:2])["loss"] == wide.evaluate(X[:1], y[None, :2])["loss"]


def test_weight_decay_decays_the_biases_too_as_torchs_optimizers_do():
    """SGD(weight_decay) and AdamW on a step whose gradients are all zero (a loss of 0): every weight and
    every bias shrinks by the same factor, as torch.optim's do over `parameters()`."""
    net = gpubp.MLP([2, 3, 1], activation="identity", loss="mse", backend="numpy", dtype="float64", seed=0)
    X = np.zeros((1, 2))
    for opt, factor in ((optim.SGD(0.1, weight_decay=0.5), 1 - 0.1 * 0.5), (optim.AdamW(0.1, weight_decay=0.5), 1 - 0.1 * 0.5)):
        before = net.get_params()
        Y = net.forward(X)                       # the loss and every gradient are 0
        assert net.train_step(X, Y, opt) == 0.0
        for (W0, b0), (W1, b1) in zip(before, net.get_params()):
            np.testing.assert_allclose(W1, W0 * factor, rtol=1e-15)
            np.testing.assert_allclose(b1, b0 * factor, rtol=1e-15)


def _loss_and_delta(Z, Y, loss):
    out, delta = np.zeros(1, Z.dtype), np.empty_like(Z)
    NP.loss_and_delta(Z, Z.copy(), Y, loss, "identity", out, delta)
    return out[0], delta


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (1, 7), (3, 5), (6, 1), (2, 33)], ids=str)
def test_losses_at_logits_of_1e4_equal_torch_at_batch_1_and_awkward_shapes(shape, dtype):
    """Logits of +-1e4 (exp overflows in both dtypes without the max shift / e^-|z|), 0 and O(1): each
    loss's value and delta equal torch.nn.functional's loss and its gradient (mean reductions)."""
    F = torch.nn.functional
    B, n = shape
    rng = np.random.default_rng(B * 100 + n)
    Z = rng.choice([-1e4, 1e4, 0.0, 3.0, -2.5], size=shape).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    cases = [("mse", rng.uniform(0, 1, shape), F.mse_loss),
             ("half_sse", rng.uniform(0, 1, shape), lambda z, y: 0.5 * ((z - y) ** 2).sum() / z.shape[0]),
             ("binary_cross_entropy", rng.uniform(0, 1, shape), F.binary_cross_entropy_with_logits)]
    if n >= 2:
        cases += [("cross_entropy", rng.integers(0, n, B), F.cross_entropy),
                  ("cross_entropy", rng.dirichlet(np.ones(n), B), F.cross_entropy)]
    for loss, Y, ref in cases:
        Yb = Y.astype(np.int32) if Y.dtype.kind == "i" else Y.astype(dtype)
        value, delta = _loss_and_delta(Z, Yb, loss)
        zt = torch.tensor(Z, requires_grad=True)
        tl = ref(zt, torch.from_numpy(Y if Y.dtype.kind == "i" else Yb).to(torch.long if Y.dtype.kind == "i" else zt.dtype))
        tl.backward()
        assert np.isfinite(value) and value == pytest.approx(tl.item(), rel=tol), loss
        g = zt.grad.numpy()
        # (softmax - y and sigmoid - y are differences of numbers up to 1/B: that is their rounding's scale)
        assert np.max(np.abs(delta - g)) <= tol * max(np.max(np.abs(g)), 1 / B), loss


@pytest.mark.parametrize("loss", ["mse", "half_sse", "cross_entropy", "binary_cross_entropy"])
def test_evaluation_in_chunks_is_the_row_weighted_mean(loss, monkeypatch):
    """evaluate runs EVAL_CHUNK rows at a time; the loss is the row-weighted mean of the chunks' losses
    (the chunks here: 7, 7, 7, 2 rows), the accuracy the fraction of all rows: as one pass gives."""
    rng = np.random.default_rng(6)
    net = gpubp.MLP([3, 5, 4], activation="tanh", loss=loss, backend="numpy", dtype="float64", seed=2)
    X = rng.standard_normal((23, 3))
    Y = rng.integers(0, 4, 23) if loss == "cross_entropy" else rng.uniform(0, 1, (23, 4))
    whole = net.evaluate(X, Y)
    monkeypatch.setattr(gpubp.network, "EVAL_CHUNK", 7)
    chunked = net.evaluate(X, Y)
    assert chunked.keys() == whole.keys()
    for k in whole:
        assert chunked[k] == pytest.approx(whole[k], rel=1e-14)
    np.testing.assert_array_equal(net.predict(X), net.predict(X[:7]).tolist() + net.predict(X[7:]).tolist())
    two = net.forward(X[:10])                      # two chunks (7 and 3 rows): every row's output
    assert two.shape == (10, 4)
    np.testing.assert_array_equal(two, np.concatenate([net.forward(X[:7]), net.forward(X[7:10])]))


# ------------------------------------------------------------------ the flat parameter layout
def test_param_layout_follows_the_spec_formulas_and_training_keeps_the_padding_zero():
    from gpubp.params import ALIGN, ParamLayout

    def up(n):
        return -(-n // 32) * 32

    assert ALIGN == 32
    for sizes in ((1, 1), (3, 5, 2), (33, 31, 1, 64, 7), (100, 1)):
        lay = ParamLayout(sizes)
        w = 0
        for (w_off, n_out, n_in, b_off), (a, b) in zip(lay.segments, zip(sizes[:-1], sizes[1:])):
            assert (w_off, n_out, n_in) == (w, b, a) and b_off == up(w + a * b)
            w = up(b_off + b)
        assert lay.total == w and lay.n_params == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        assert lay.n_layers == len(sizes) - 1
        assert lay == ParamLayout(tuple(sizes)) and hash(lay) == hash(ParamLayout(tuple(sizes)))   # a value
        with pytest.raises(AttributeError):
            lay.sizes = (1, 1)                                   # frozen: a layout never changes under its buffers
        flat = np.arange(lay.total, dtype=np.float64)
        for (W, bias), (w_off, n_out, n_in, b_off) in zip(lay.views(flat), lay.segments):
            assert W.shape == (n_out, n_in) and W[0, 0] == w_off and bias[0] == b_off and W.base is flat
    # the padding stays zero through steps of every optimizer (weight decay included)
    rng = np.random.default_rng(0)
    for opt in (optim.SGD(0.1, momentum=0.9, weight_decay=0.1), optim.Adam(0.01, weight_decay=0.1), optim.AdamW(0.01)):
        net = gpubp.MLP([33, 31, 1, 7], activation="gelu", loss="cross_entropy", backend="numpy", seed=1)
        pad = np.ones(net.layout.total, bool)
        for w_off, n_out, n_in, b_off in net.layout.segments:
            pad[w_off:w_off + n_out * n_in] = False
            pad[b_off:b_off + n_out] = False
        assert pad.any()
        for _ in range(3):
            net.train_step(rng.standard_normal((5, 33)), rng.integers(0, 7, 5), opt)
        assert not net._params[pad].any() and not net._grads[pad].any()
        assert all(not s[pad].any() for s in opt.state.values())


def test_cosine_rates_stay_positive_over_a_billion_steps():
    """0.5 (1 + cos(pi f)) rounded to 0 at the last steps of a long cosine (f within 1e-9 of 1), and a
    rate of 0 is refused by the optimizers: fit stopped at that step.  Every rate is positive."""
    for total in (10 ** 9, 10 ** 12):
        s = gpubp.schedules.cosine(0.1, total)
        last = s(total)
        assert last > 0 and last == pytest.approx(0.1 * math.sin(0.5 * math.pi / total) ** 2, rel=1e-12)
        assert s(total + 5) == last and s(1) == 0.1
        optim.SGD(0.1).lr = last                    # a learning rate the optimizers take


# ------------------------------------------------------------------ activations
TORCH_ACT = {"identity": lambda z: z * 1, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
             "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, 0.01),
             "gelu": lambda z: torch.nn.functional.gelu(z, approximate="tanh"), "silu": torch.nn.functional.silu}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(TORCH_ACT))
def test_activation_and_derivative_at_zero_and_its_neighbours_equal_torch(name, dtype):
    """The convention at the kink (relu: g'(0) = 0, leaky_relu: g'(0) = s, both as PyTorch's backward),
    at -0, and at the smallest normal and subnormal numbers of either sign: g and g' equal torch's."""
    from gpubp.backends.numpy_backend import activation_backward_inplace, activation_forward

    fi = np.finfo(dtype)
    z = np.array([0.0, -0.0, fi.tiny, -fi.tiny, fi.smallest_subnormal, -fi.smallest_subnormal, 1e-3, -1e-3],
                 dtype)
    a = activation_forward(name, z.copy(), np.empty_like(z))
    d = activation_backward_inplace(name, np.ones_like(z), a, z.copy())
    zt = torch.tensor(z, requires_grad=True)
    at = TORCH_ACT[name](zt)
    at.backward(torch.ones_like(at))
    np.testing.assert_allclose(a, at.detach().numpy(), rtol=4 * fi.eps, atol=0)
    np.testing.assert_allclose(d, zt.grad.numpy(), rtol=4 * fi.eps, atol=0)
    if name == "relu":
        assert d[0] == d[1] == 0
    if name == "leaky_relu":
        assert d[0] == d[1] == dtype(0.01)


def test_adam_eps_subnormal_in_the_networks_dtype_is_refused():
    """1e-40 is positive in float32 but subnormal, and the CUDA kernels (-ftz=true) flush it to 0: the
    padding's 0 / 0 then made the parameters NaN on a GPU while the numpy backend trained.  Refused for
    float32 networks (before anything changes), taken by float64 ones."""
    X, y = np.random.default_rng(0).standard_normal((8, 3)), np.arange(8) % 2
    net = gpubp.MLP([3, 4, 2], loss="cross_entropy", backend="numpy", seed=0)
    before = net.get_params()
    with pytest.raises(ValueError, match=r"eps=1e-40 is subnormal in float32"):
        net.fit(X, y, epochs=1, optimizer=optim.Adam(1e-3, eps=1e-40), progress=False)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(before, net.get_params()))
    adam = optim.AdamW(1e-3)
    net.fit(X, y, epochs=1, optimizer=adam, progress=False)
    with pytest.raises(ValueError, match=r"subnormal in float32"):
        adam.eps = np.finfo(np.float32).tiny / 2
    assert adam.eps == 1e-8
    adam.eps = float(np.finfo(np.float32).tiny)                 # the smallest normal number is taken
    net64 = gpubp.MLP([3, 4, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    net64.fit(X, y, epochs=1, optimizer=optim.Adam(1e-3, eps=1e-40), progress=False)


def test_predictions_and_accuracy_at_the_decision_boundary():
    """docs/spec.md: binary_cross_entropy predicts `z > 0` (so 0 at z = 0, where sigmoid is 0.5, as
    scikit-learn's threshold `p > 0.5`), and its accuracy is the mean over outputs of
    `(z > 0) == (y > 0.5)` (a soft target of 0.5 counts as class 0).  Zero parameters give z = 0
    exactly; the bias then sets the logits' signs."""
    net = gpubp.MLP([2, 3], loss="binary_cross_entropy", backend="numpy", dtype="float64", seed=0)
    net.set_params([(np.zeros((3, 2)), np.zeros(3))])
    X = np.ones((4, 2))
    np.testing.assert_array_equal(net.predict(X), np.zeros((4, 3), dtype=np.int64))
    np.testing.assert_array_equal(net.predict_proba(X), np.full((4, 3), 0.5))
    Y = np.array([[0, 0.5, 1]] * 4)
    assert net.evaluate(X, Y)["accuracy"] == pytest.approx(2 / 3, rel=1e-15)
    net.set_params([(np.zeros((3, 2)), np.array([-1.0, 0.0, 0.5]))])
    np.testing.assert_array_equal(net.predict(X), [[0, 0, 1]] * 4)
    np.testing.assert_allclose(net.predict_proba(X), [[1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-0.5))]] * 4,
                               rtol=1e-15)
    assert net.evaluate(X, Y)["accuracy"] == 1.0
    assert net.evaluate(X, np.array([[1, 1, 0]] * 2 + [[0, 0.5, 1]] * 2))["accuracy"] == 0.5
    # one output trained on (N,) targets predicts (N,), as it was given
    one = gpubp.MLP([2, 1], loss="binary_cross_entropy", backend="numpy", dtype="float64", seed=0)
    assert one.predict(X).shape == (4, 1)       # before any training call: as the outputs are
    one.train_step(X, np.ones(4), "sgd", lr=0.1)
    one.set_params([(np.zeros((1, 2)), np.array([0.0]))])
    np.testing.assert_array_equal(one.predict(X), np.zeros(4, dtype=np.int64))
    # cross_entropy: the arg-max class, the first of equal logits (numpy's argmax), softmax probabilities
    ce = gpubp.MLP([2, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    ce.set_params([(np.zeros((3, 2)), np.array([0.0, 1.0, 1.0]))])
    np.testing.assert_array_equal(ce.predict(X), [1, 1, 1, 1])
    e = math.e
    np.testing.assert_allclose(ce.predict_proba(X), [[1 / (1 + 2 * e), e / (1 + 2 * e), e / (1 + 2 * e)]] * 4,
                               rtol=1e-15)
    assert ce.evaluate(X, np.array([1, 2, 1, 0]))["accuracy"] == 0.5
    probs = np.array([[0, 0.6, 0.4], [0, 0.4, 0.6], [1, 0, 0], [0.2, 0.5, 0.3]])
    assert ce.evaluate(X, probs)["accuracy"] == 0.5      # probability targets compared by their arg-max
