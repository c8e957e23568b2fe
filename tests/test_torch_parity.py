"""Losses, gradients and optimizer steps equal PyTorch's (skipped where PyTorch is absent)."""

import numpy as np
import pytest
from conftest import ACTIVATIONS, LOSSES, output_activation_for, random_targets, rel_err

import gpubp

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional

TORCH_ACT = {
    "identity": lambda z: z,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "gelu": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
}


def torch_loss(loss, out, Y):
    if loss == "mse":
        return torch.nn.MSELoss()(out, Y)
    if loss == "half_sse":
        return 0.5 * ((out - Y) ** 2).sum() / out.shape[0]
    if loss == "cross_entropy":
        return torch.nn.CrossEntropyLoss()(out, Y)
    if loss == "poisson":
        # PyTorch's e^z - y z on log-rates, plus y log y - y (a constant of Y alone): half the deviance
        return torch.nn.PoissonNLLLoss(log_input=True, full=False)(out, Y) + (torch.xlogy(Y, Y) - Y).mean()
    return torch.nn.BCEWithLogitsLoss()(out, Y)


def torch_model(net, dtype=torch.float64):
    layers = []
    for W, b in net.get_params():
        lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.astype(np.float64)))
            lin.bias.copy_(torch.from_numpy(b.astype(np.float64)))
        layers.append(lin)

    def forward(X):
        a = X
        for lin, g in zip(layers, net.activations):
            a = TORCH_ACT[g](lin(a))
        return a

    return layers, forward


def torch_targets(loss, Y):
    Y = np.asarray(Y)
    return torch.from_numpy(Y.astype(np.int64) if Y.dtype.kind in "iu" else Y.astype(np.float64))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_loss_and_gradients_equal_torch(act, loss, rng):
    sizes, B = [7, 13, 5, 3], 11
    net = gpubp.MLP(sizes, activation=act, output_activation=output_activation_for(loss, act), loss=loss,
                    backend="numpy", dtype="float64", seed=int(rng.integers(1 << 30)))
    X = rng.standard_normal((B, sizes[0]))
    Y = random_targets(rng, loss, B, sizes[-1], labels=bool(rng.integers(2)))
    value, grads = net.loss_and_grads(X, Y)
    layers, fwd = torch_model(net)
    tl = torch_loss(loss, fwd(torch.from_numpy(X)), torch_targets(loss, Y))
    tl.backward()
    assert value == pytest.approx(tl.item(), rel=1e-12)
    for (dW, db), lin in zip(grads, layers):
        assert rel_err(dW, lin.weight.grad.numpy()) < 1e-12
        assert rel_err(db, lin.bias.grad.numpy()) < 1e-12


OPTIMIZERS = [
    (lambda: gpubp.optim.SGD(0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    (lambda: gpubp.optim.SGD(0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    (lambda: gpubp.optim.SGD(0.05, momentum=0.5, weight_decay=0.1),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.1)),
    (lambda: gpubp.optim.SGD(0.05, momentum=0.9, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    (lambda: gpubp.optim.SGD(0.05, momentum=0.5, weight_decay=0.1, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.1, nesterov=True)),
    (lambda: gpubp.optim.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda: gpubp.optim.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    (lambda: gpubp.optim.AdamW(0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    (lambda: gpubp.optim.AdamW(0.02, weight_decay=0.3), lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.3)),
]


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["sgd", "momentum", "momentum_wd", "nesterov", "nesterov_wd", "adam", "adam_wd",
                                                  "adamw", "adamw_wd"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_optimizer_steps_equal_torch(make, dtype, tol, rng):
    """gpubp's steps against PyTorch's in float64 (and, for float32, PyTorch's own float32 run's error).

    In float32 a gradient component near zero (|g| of order Adam's eps; rare) is
    known to a large relative error, and Adam's normalised step amplifies it: PyTorch's own float32
    run then differs from float64 by more than `tol` too (6e-5 for the replayed seed
    2961688770058308455, adamw).  gpubp must stay within `tol`, or within 4 times PyTorch's float32
    error where that is larger.
    """
    ours, theirs = make
    sizes, B, steps = [5, 17, 3], 9, 6
    net = gpubp.MLP(sizes, activation="tanh", loss="cross_entropy", backend="numpy", dtype=dtype,
                    seed=int(rng.integers(1 << 30)))
    layers, fwd = torch_model(net)
    params = [p for lin in layers for p in (lin.weight, lin.bias)]
    topt, opt = theirs(params), ours()
    layers32, fwd32 = torch_model(net, torch.float32)
    topt32 = theirs([p for lin in layers32 for p in (lin.weight, lin.bias)])
    for _ in range(steps):
        X, Y = rng.standard_normal((B, sizes[0])), rng.integers(0, sizes[-1], B)
        loss = net.train_step(X, Y, opt)
        for o, f, dt in ((topt, fwd, torch.float64), (topt32, fwd32, torch.float32)):
            o.zero_grad()
            tl = torch_loss("cross_entropy", f(torch.from_numpy(X).to(dt)), torch.from_numpy(Y))
            tl.backward()
            o.step()
            if dt == torch.float64:
                assert loss == pytest.approx(tl.item(), rel=max(tol, 1e-12) * 10)
    for (W, b), lin, lin32 in zip(net.get_params(), layers, layers32):
        for ours_p, ref, ref32 in ((W, lin.weight, lin32.weight), (b, lin.bias, lin32.bias)):
            ref = ref.detach().numpy()
            bound = tol if dtype == "float64" else max(tol, 4 * rel_err(ref32.detach().double().numpy(), ref))
            assert rel_err(ours_p, ref) < bound


@pytest.mark.parametrize("opt_name", ["adam", "adamw"])
@pytest.mark.parametrize("dtype,grad", [("float32", 1e20), ("float64", 1e155)])
def test_adam_second_moment_stays_finite_where_torchs_does(opt_name, dtype, grad):
    """`v = b2 v + (1 - b2) g^2` in PyTorch's order, `((1 - b2) g) g` (its `addcmul`): `g * g` first
    overflowed for |g| above the square root of the dtype's largest number (1.8e19 in float32), where
    PyTorch's `v` is still finite (up to |g| of 5.8e20): `v` became inf, and the parameter froze."""
    from gpubp.backends.numpy_backend import NumpyBackend

    dt, tdt = np.dtype(dtype), {"float32": torch.float32, "float64": torch.float64}[dtype]
    g = np.array([grad, -grad / 3, 1.0, 0.0], dt)
    p, m, v = np.ones(4, dt), np.zeros(4, dt), np.zeros(4, dt)
    tp = torch.ones(4, dtype=tdt, requires_grad=True)
    topt = (torch.optim.Adam if opt_name == "adam" else torch.optim.AdamW)([tp], 1e-3)
    for t in (1, 2, 3):
        NumpyBackend().adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.01 if opt_name == "adamw" else 0.0,
                                   np.array([t], np.int32), opt_name == "adamw")
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
    tv = topt.state[tp]["exp_avg_sq"].numpy()
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(p))
    np.testing.assert_allclose(v, tv, rtol=4 * np.finfo(dt).eps)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=4 * np.finfo(dt).eps)


def test_adam_fit_on_large_inputs_trains_as_torch_in_float32():
    """Inputs near 1e10 give a float32 linear model weight gradients near 1e20: PyTorch's Adam trains on,
    gpubp's stopped with a FloatingPointError ("the update of step 1 left ... not finite") when its
    second moment overflowed."""
    X = np.array([[1e10], [2e10], [-1.5e10], [3e10]])
    Y = np.array([[1.0], [-2.0], [0.5], [1.5]])
    net = gpubp.MLP([1, 1], activation="identity", loss="mse", backend="numpy", dtype="float32", seed=0)
    layers, fwd = torch_model(net, torch.float32)
    topt = torch.optim.Adam([p for lin in layers for p in lin.parameters()], 1e-3)
    hist = net.fit(X, Y, epochs=3, batch_size=2, optimizer=gpubp.optim.Adam(1e-3), shuffle=False, progress=False)
    losses = []
    for _ in range(3):
        total = 0.0
        for s in range(0, 4, 2):
            topt.zero_grad()
            loss = torch_loss("mse", fwd(torch.from_numpy(X[s:s + 2]).float()), torch.from_numpy(Y[s:s + 2]).float())
            loss.backward()
            topt.step()
            total += loss.item() * 2
        losses.append(total / 4)
    np.testing.assert_allclose(hist["loss"], losses, rtol=1e-5)
    (W, b), = net.get_params()
    np.testing.assert_allclose(W, layers[0].weight.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(b, layers[0].bias.detach().numpy(), rtol=1e-5)


def test_fit_with_class_and_sample_weights_equals_torchs_weighted_cross_entropy():
    # class_weight="balanced" (scikit-learn's compute_class_weight) times sample_weight, each batch
    # the weighted mean sum w_i l_i / sum w_i (CrossEntropyLoss(weight=...)'s "mean" with per-sample
    # weights), a short last batch, AdamW: the weights and the history's loss equal a torch loop
    sk = pytest.importorskip("sklearn.utils.class_weight")
    rng = np.random.default_rng(21)
    X = rng.standard_normal((70, 5))
    y = rng.choice(3, 70, p=[0.6, 0.3, 0.1])
    w = rng.uniform(0.2, 2.0, 70)
    net = gpubp.MLP([5, 7, 3], activation="gelu", loss="cross_entropy", backend="numpy", dtype="float64", seed=1)
    layers, forward = torch_model(net)
    opt = torch.optim.AdamW([p for lin in layers for p in lin.parameters()], 0.01, weight_decay=0.05)
    hist = net.fit(X, y, epochs=3, batch_size=16, optimizer=gpubp.optim.AdamW(0.01, weight_decay=0.05),
                   sample_weight=w, class_weight="balanced", shuffle=False, progress=False)
    cw = torch.from_numpy(sk.compute_class_weight("balanced", classes=np.arange(3), y=y))
    losses = []
    for _ in range(3):
        total = weight = 0.0
        for s in range(0, 70, 16):
            xb, yb = torch.from_numpy(X[s:s + 16]), torch.from_numpy(y[s:s + 16])
            wb = torch.from_numpy(w[s:s + 16])
            opt.zero_grad()
            # CrossEntropyLoss(weight=cw) divides by the batch's sum of class weights; with the
            # sample weights folded in, by the sum of the products
            per = F.cross_entropy(forward(xb), yb, weight=cw, reduction="none") * wb
            loss = per.sum() / (cw[yb] * wb).sum()
            loss.backward()
            opt.step()
            total += loss.item() * float((cw[yb] * wb).sum())
            weight += float((cw[yb] * wb).sum())
        losses.append(total / weight)
    assert np.allclose(hist["loss"], losses, rtol=1e-12, atol=0)
    for (W, b), lin in zip(net.get_params(), layers):
        assert np.allclose(W, lin.weight.detach().numpy(), rtol=0, atol=1e-12)
        assert np.allclose(b, lin.bias.detach().numpy(), rtol=0, atol=1e-12)


def test_shuffled_fits_with_sample_weights_continue_as_a_torch_loop_drawing_the_specs_permutations():
    # shuffle=True: one permutation per epoch from the network's generator, drawn after the initial
    # parameters (docs/spec.md, "Initial parameters"), carried on by a second fit; each sample's weight
    # goes with its row (a batch's loss sum w_i l_i / sum w_i), the last batch short, the history's
    # loss weighted by the batches' weight sums; SGD with Nesterov momentum and weight decay
    rng = np.random.default_rng(8)
    X, Y, w = rng.standard_normal((11, 4)), rng.standard_normal((11, 2)), rng.uniform(0.2, 2.0, 11)
    net = gpubp.MLP([4, 5, 2], activation="gelu", loss="mse", backend="numpy", dtype="float64", seed=3)
    layers, forward = torch_model(net)
    gen = np.random.default_rng(3)
    for n_in, n_out in [(4, 5), (5, 2)]:       # the initial draws: W then b per layer, torch's bounds
        gen.uniform(-n_in ** -0.5, n_in ** -0.5, (n_out, n_in)), gen.uniform(-n_in ** -0.5, n_in ** -0.5, n_out)
    opt = gpubp.optim.SGD(0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    topt = torch.optim.SGD([p for lin in layers for p in lin.parameters()], 0.1, momentum=0.9, weight_decay=0.01,
                           nesterov=True)
    for epochs in (2, 1):
        hist = net.fit(X, Y, epochs=epochs, batch_size=4, optimizer=opt, shuffle=True, sample_weight=w,
                       progress=False)
        losses = []
        for _ in range(epochs):
            order = gen.permutation(11)
            total = weight = 0.0
            for s in range(0, 11, 4):
                rows = order[s:s + 4]
                wb = torch.from_numpy(w[rows])
                topt.zero_grad()
                per = ((forward(torch.from_numpy(X[rows])) - torch.from_numpy(Y[rows])) ** 2).mean(dim=1)
                loss = (per * wb).sum() / wb.sum()
                loss.backward()
                topt.step()
                total += loss.item() * float(wb.sum())
                weight += float(wb.sum())
            losses.append(total / weight)
        np.testing.assert_allclose(hist["loss"], losses, rtol=1e-12, atol=0)
        for (W, b), lin in zip(net.get_params(), layers):
            np.testing.assert_allclose(W, lin.weight.detach().numpy(), rtol=0, atol=1e-12)
            np.testing.assert_allclose(b, lin.bias.detach().numpy(), rtol=0, atol=1e-12)
