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
    return torch.nn.BCEWithLogitsLoss()(out, Y)


def torch_model(net):
    layers = []
    for W, b in net.get_params():
        lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
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
    (lambda: gpubp.optim.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda: gpubp.optim.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    (lambda: gpubp.optim.AdamW(0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    (lambda: gpubp.optim.AdamW(0.02, weight_decay=0.3), lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.3)),
]


@pytest.mark.parametrize("make", OPTIMIZERS, ids=["sgd", "momentum", "momentum_wd", "adam", "adam_wd",
                                                  "adamw", "adamw_wd"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_optimizer_steps_equal_torch(make, dtype, tol, rng):
    ours, theirs = make
    sizes, B, steps = [5, 17, 3], 9, 6
    net = gpubp.MLP(sizes, activation="tanh", loss="cross_entropy", backend="numpy", dtype=dtype,
                    seed=int(rng.integers(1 << 30)))
    layers, fwd = torch_model(net)
    params = [p for lin in layers for p in (lin.weight, lin.bias)]
    topt, opt = theirs(params), ours()
    for _ in range(steps):
        X, Y = rng.standard_normal((B, sizes[0])), rng.integers(0, sizes[-1], B)
        loss = net.train_step(X, Y, opt)
        topt.zero_grad()
        tl = torch_loss("cross_entropy", fwd(torch.from_numpy(X)), torch.from_numpy(Y))
        tl.backward()
        topt.step()
        assert loss == pytest.approx(tl.item(), rel=max(tol, 1e-12) * 10)
    for (W, b), lin in zip(net.get_params(), layers):
        assert rel_err(W, lin.weight.detach().numpy()) < tol
        assert rel_err(b, lin.bias.detach().numpy()) < tol
