"""Gradient checks: a network's analytic gradients against central finite differences.

    from gpubp.gradcheck import finite_difference_grads, relative_errors

    fd = finite_difference_grads(net, X, Y)          # [(dW, db)] by (L(p+e) - L(p-e)) / 2e
    loss, an = net.loss_and_grads(X, Y)
    errs = relative_errors(an, fd)                   # [(W error, b error)] per layer

Finite differences are only meaningful in float64: build the network with
`dtype="float64"` (the numbers are computed in the network's own dtype and
backend, so a float64 network on the CUDA backend checks the CUDA kernels).
The error of a central difference is rounding, about `1e-16 |L| / eps`, plus
truncation, about `eps^2 |L'''|`: with `eps = 1e-6` rounding dominates and the
per-layer relative errors of small networks stay below about 1e-6; `eps = 1e-5`
(what `gpubp gradcheck` uses) balances the two and gives about 1e-7 or better.
A ReLU kink within `eps` of a pre-activation spoils any finite difference.
The rounding part is absolute, the same for every layer: a layer whose gradient
vanishes next to the loss (the first layers of a deep sigmoid network, ||dW||
about 1e-5 and below, |L| about 1) gets relative errors above 1e-6 from it although its
gradient is right; a larger `eps` (1e-3) lowers the rounding, and passes a
network of eight 8-unit sigmoid layers that fails at 1e-5.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import check_positive_int, check_seed, real_number
from .gradflow import norm


def _loss(net, X, Y) -> float:
    return float(net.loss_and_grads(X, Y)[0])


def _check_eps(eps) -> float:
    """`eps` as a float: a real number (not a bool, text or None), positive and finite."""
    e = real_number(eps)
    if e is None or not (e > 0 and np.isfinite(e)):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    return e


def finite_difference_grads(net, X, Y, eps: float = 1e-6):
    """Central differences `(L(p + eps) - L(p - eps)) / (2 eps)` for every parameter of `net`.

    Returns `[(dW, db), ...]` like `net.loss_and_grads`, as float64 numpy
    arrays.  The network's parameters are restored afterwards.
    """
    eps = _check_eps(eps)
    original = net.get_params()
    work = [(np.array(W, np.float64), np.array(b, np.float64)) for W, b in original]
    grads = [(np.zeros_like(W), np.zeros_like(b)) for W, b in work]
    try:
        for l, (W, b) in enumerate(work):
            for arr, g in ((W, grads[l][0]), (b, grads[l][1])):
                flat, gflat = arr.reshape(-1), g.reshape(-1)
                for i in range(flat.size):
                    keep = flat[i]
                    flat[i] = keep + eps
                    net.set_params(work)
                    up = _loss(net, X, Y)
                    flat[i] = keep - eps
                    net.set_params(work)
                    down = _loss(net, X, Y)
                    flat[i] = keep
                    gflat[i] = (up - down) / (2 * eps)
    finally:
        net.set_params(original)
    return grads


def _host(a) -> np.ndarray:
    if hasattr(a, "get") and not isinstance(a, np.ndarray):   # a CuPy array
        a = a.get()
    return np.asarray(a, np.float64)


def gradient_scale(*grad_lists) -> float:
    """The largest absolute gradient entry over every layer of every list given."""
    m = 0.0
    for grads in grad_lists:
        for dW, db in grads:
            for a in (dW, db):
                a = _host(a)
                if a.size:
                    m = max(m, float(np.max(np.abs(a))))
    return m


def relative_errors(analytic, numeric, kind: str = "norm", floor: float | None = None):
    """Per layer `(relative error of dW, relative error of db)`.

    `kind="norm"` (the default): `||a - n|| / max(||a||, ||n||)` over the
    layer's whole `dW` (or `db`), the usual gradient-check measure: it is not
    thrown off by single entries that are zero up to rounding (dead ReLUs,
    saturated units), where any finite difference is all rounding noise.

    `kind="max"`: the worst entry, `max_i |a_i - n_i| / max(|a_i|, |n_i|, floor)`;
    `floor` defaults to `1e-6` times the largest gradient entry of the whole
    network (at least 1e-12).  Stricter, and noisier for tiny entries.

    Both are 0 where both gradients are exactly zero, and inf where either
    holds NaN or infinity.
    """
    if kind not in ("norm", "max"):
        raise ValueError(f"kind must be 'norm' or 'max', got {kind!r}")
    if floor is not None:
        f = real_number(floor)
        if f is None or not np.isfinite(f) or f < 0:
            raise ValueError(f"floor must be a non-negative number, got {floor!r}")
        floor = f
    pairs = _layer_pairs(analytic, numeric)
    if kind == "max" and floor is None:
        floor = max(1e-6 * gradient_scale(analytic, numeric), 1e-12)
    out = []
    for layer in pairs:
        pair = []
        for a, n in layer:
            if not (np.all(np.isfinite(a)) and np.all(np.isfinite(n))):
                pair.append(float("inf"))
            elif kind == "norm":
                # scaled norms: np.linalg.norm squares the entries, inf past 1e154 and 0 below 1e-162
                with np.errstate(over="ignore"):
                    den, diff = max(norm(a), norm(n)), norm(a - n)
                # inf / inf (norms past float64's largest number) is no NaN, which a max() would skip
                pair.append(0.0 if den == 0 else math.inf if math.isinf(diff) else diff / den)
            elif a.size == 0:
                pair.append(0.0)
            else:
                den = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
                # an entry exactly zero in both (possible with floor=0) has no error
                err = np.divide(np.abs(a - n), den, out=np.zeros_like(den), where=den > 0)
                pair.append(float(np.max(err)))
        out.append(tuple(pair))
    return out


def max_abs_errors(analytic, numeric):
    """Per layer `(max |dW_a - dW_n|, max |db_a - db_n|)`."""
    return [tuple(float(np.max(np.abs(a - n), initial=0.0)) for a, n in layer)
            for layer in _layer_pairs(analytic, numeric)]


def _layer_pairs(analytic, numeric):
    """Per layer `((dW_a, dW_n), (db_a, db_n))` as float64 host arrays, checked: as many layers in
    both lists, and each pair of one shape (never broadcast, never cut short)."""
    analytic, numeric = list(analytic), list(numeric)
    if len(analytic) != len(numeric):
        raise ValueError(f"the gradient lists have {len(analytic)} and {len(numeric)} layers")
    out = []
    for l, ((aW, ab), (nW, nb)) in enumerate(zip(analytic, numeric), start=1):
        layer = []
        for a, n, what in ((aW, nW, "dW"), (ab, nb, "db")):
            a, n = _host(a), _host(n)
            if a.shape != n.shape:
                raise ValueError(f"layer {l} {what}: shapes {a.shape} and {n.shape} differ")
            layer.append((a, n))
        out.append(tuple(layer))
    return out


def random_problem(net, batch: int = 5, seed=0):
    """A random input batch and fitting targets for `net`'s loss (for checks and demos)."""
    batch = check_positive_int("batch", batch)
    rng = np.random.default_rng(check_seed(seed))
    n_in, n_out = net.sizes[0], net.sizes[-1]
    X = rng.normal(size=(batch, n_in))
    if net.loss == "cross_entropy":
        Y = rng.integers(0, n_out, size=batch)
    elif net.loss == "binary_cross_entropy":
        Y = rng.uniform(0.0, 1.0, size=(batch, n_out))
    elif net.loss == "poisson":
        Y = rng.poisson(1.5, size=(batch, n_out)).astype(np.float64)   # counts, zeros among them
    else:
        Y = rng.normal(size=(batch, n_out))
    return X, Y


def check(net, X, Y, eps: float = 1e-6, kind: str = "norm"):
    """`(loss, relative_errors(analytic, numeric, kind), analytic, numeric)` for `net` on `X`, `Y`."""
    if kind not in ("norm", "max"):      # before the finite differences' two passes per parameter
        raise ValueError(f"kind must be 'norm' or 'max', got {kind!r}")
    _check_eps(eps)
    loss, analytic = net.loss_and_grads(X, Y)
    numeric = finite_difference_grads(net, X, Y, eps)
    return loss, relative_errors(analytic, numeric, kind), analytic, numeric


__all__ = ["finite_difference_grads", "relative_errors", "max_abs_errors", "gradient_scale", "random_problem", "check"]
