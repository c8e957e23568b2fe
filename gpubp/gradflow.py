"""Gradient flow through a network's layers: per-layer norms, update ratios, and warnings.

Everything here works on plain per-layer arrays (index 0 is layer 1, the last
entry the output layer) and imports nothing of the network, so `MLP.fit` or
anyone else can call it.  Arrays are numpy arrays or any array type with
numpy's elementwise methods (CuPy's included: the norms are reduced on the
array's own device and only the scalar comes back).

At the last step of each epoch `fit(..., grad_norms=True)` does what this does
(with the step's weights before and after it, its weight gradients and its deltas,
one array per layer; fit warns of each finding once per call)

    import warnings
    from gpubp.gradflow import GradientFlowWarning, flow_warnings, layer_stats, record

    stats = layer_stats(W_before, W_after, dW, delta)   # one dict per layer
    record(history, stats)                              # append to history[key] for each key
    for w in flow_warnings(stats):                      # vanishing / exploding, naming the layer
        warnings.warn(w, GradientFlowWarning)           # a FlowWarning is its message (a str)

which gives these history keys, each a list with one entry per epoch, each
entry a list with one float per layer (layer 1 first):

- ``history["grad_norms"]``: ||dW||, the Frobenius norm of the layer's weight
  gradient at the epoch's last step;
- ``history["delta_norms"]``: ||delta||, the norm of dLoss/dz of the layer over
  that step's batch;
- ``history["update_ratios"]``: ||W_after - W_before|| / ||W_before||, how far
  that step moved the layer's weights relative to their size (a healthy
  training step is often near 1e-3; `inf` where W_before is all zeros).

`gpubp.plotting.plot_grad_norms(history, path)` draws the three on a log scale.
"""

from __future__ import annotations

import math
import numbers

#: a layer whose ||dW|| is below this fraction of the output layer's has a vanishing gradient
VANISHING = 1e-6
#: a layer whose ||dW|| is above this multiple of the output layer's has an exploding gradient
EXPLODING = 1e3

#: the history keys `record` appends to, and the per-layer key of `layer_stats` each one takes
HISTORY_KEYS = ("grad_norms", "delta_norms", "update_ratios")
STAT_KEYS = {"grad_norms": "grad_norm", "delta_norms": "delta_norm", "update_ratios": "update_ratio"}


class GradientFlowWarning(UserWarning):
    """A layer's gradient vanishes or explodes relative to the output layer's."""


class FlowWarning(str):
    """One finding of `flow_warnings`: the message itself (a `str`), with `layer` (1-based), `kind`
    ("vanishing" or "exploding") and `ratio` (the layer's ||dW|| over the output layer's)."""

    def __new__(cls, layer: int, kind: str, ratio: float, message: str):
        self = super().__new__(cls, message)
        self.layer, self.kind, self.ratio = layer, kind, ratio
        return self

    def __getnewargs__(self):      # pickle and copy rebuild it with its attributes (str's would pass one)
        return self.layer, self.kind, self.ratio, str(self)

    @property
    def message(self) -> str:
        return str(self)


def norm(a) -> float:
    """The Frobenius (2-) norm of an array as a Python float, without overflow for large entries."""
    m = abs(a).max() if a.size else 0.0
    m = float(m)
    if m == 0.0 or not math.isfinite(m):
        return m
    s = a / m
    return m * math.sqrt(float((s * s).sum()))


def _check_layers(name, arrays, n=None, allow_none=False):
    if isinstance(arrays, (str, bytes)) or not hasattr(arrays, "__len__"):
        raise TypeError(f"{name} must be a list with one array per layer, got {type(arrays).__name__}")
    arrays = list(arrays)
    if not arrays:
        raise ValueError(f"{name} holds no layers")
    if n is not None and len(arrays) != n:
        raise ValueError(f"{name} has {len(arrays)} layers, W_before has {n}")
    for l, a in enumerate(arrays, start=1):
        if a is None and allow_none:
            continue
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name}[{l - 1}] (layer {l}) must be an array, got {type(a).__name__}")
        if getattr(a.dtype, "kind", "f") not in "fiu":
            raise TypeError(f"{name}[{l - 1}] (layer {l}) must hold real numbers, got dtype {a.dtype}")
    return arrays


def layer_stats(W_before, W_after, dW, delta) -> list:
    """Per-layer gradient norms and update ratios of one training step.

    `W_before`, `W_after`, `dW`: one `(n_out, n_in)` array per layer (the
    weights before and after the step, and the step's weight gradient);
    `delta`: one `(batch, n_out)` array per layer, dLoss/dz (None for a layer
    whose delta was not kept: its `delta_norm` is then None).  Returns one
    dict per layer, layer 1 first: ``{"layer": l, "grad_norm": ||dW||,
    "delta_norm": ||delta||, "update_ratio": ||W_after - W_before|| / ||W_before||}``.
    """
    W_before = _check_layers("W_before", W_before)
    L = len(W_before)
    W_after = _check_layers("W_after", W_after, L)
    dW = _check_layers("dW", dW, L)
    delta = _check_layers("delta", delta, L, allow_none=True)
    for l in range(L):
        if tuple(W_after[l].shape) != tuple(W_before[l].shape) or tuple(dW[l].shape) != tuple(W_before[l].shape):
            raise ValueError(f"layer {l + 1}: W_before {tuple(W_before[l].shape)}, W_after "
                             f"{tuple(W_after[l].shape)} and dW {tuple(dW[l].shape)} must have one shape")
        if delta[l] is not None and (delta[l].ndim < 1 or delta[l].shape[-1] != W_before[l].shape[0]):
            raise ValueError(f"layer {l + 1}: delta has shape {tuple(delta[l].shape)}; expected (batch, "
                             f"{W_before[l].shape[0]}) for W of shape {tuple(W_before[l].shape)}")
    stats = []
    for l in range(L):
        nb, nd = norm(W_before[l]), norm(W_after[l] - W_before[l])
        stats.append({"layer": l + 1, "grad_norm": norm(dW[l]),
                      "delta_norm": None if delta[l] is None else norm(delta[l]),
                      "update_ratio": nd / nb if nb > 0 else (0.0 if nd == 0 else math.inf)})
    return stats


def record(history: dict, stats: list) -> dict:
    """Append one epoch's `layer_stats` to `history`: to each key of `HISTORY_KEYS` a list with one
    value per layer.  Returns `history`."""
    for key in HISTORY_KEYS:
        history.setdefault(key, []).append([s[STAT_KEYS[key]] for s in stats])
    return history


_VANISHING_REMEDIES = ("relu-family hidden activations (relu, leaky_relu, gelu, silu) instead of sigmoid or "
                       "tanh, or another initialisation (Xavier/Glorot for tanh and sigmoid, Kaiming/He for "
                       "the relu family), or fewer layers")
_EXPLODING_REMEDIES = ("a lower learning rate, another initialisation with smaller weights (Xavier/Glorot, "
                       "Kaiming/He), or fewer layers")


def flow_warnings(grad_norms, vanishing: float = VANISHING, exploding: float = EXPLODING) -> list:
    """`FlowWarning`s for the layers whose ||dW|| falls below `vanishing` times the output layer's
    or grows past `exploding` times it.  `grad_norms` is one float per layer, the output layer
    last (an entry of ``history["grad_norms"]``), or what `layer_stats` returns.  A non-finite
    norm is reported as exploding.  Nothing is reported when the output layer's gradient is
    exactly zero (nothing to compare with).
    """
    if isinstance(grad_norms, (str, bytes)) or not hasattr(grad_norms, "__len__"):
        raise TypeError(f"grad_norms must be a list of per-layer floats, got {type(grad_norms).__name__}")
    g = []
    for l, v in enumerate(grad_norms, start=1):
        v = v["grad_norm"] if isinstance(v, dict) else v
        try:
            if isinstance(v, (str, bytes, bool)) or v is None:
                raise TypeError
            g.append(float(v))
        except (TypeError, ValueError):
            whole = " (one epoch's entry, e.g. history['grad_norms'][-1], not the whole history)" \
                if hasattr(v, "__len__") and not isinstance(v, (str, bytes)) else ""
            raise TypeError(f"grad_norms must hold one number per layer{whole}; layer {l} has "
                            f"{type(v).__name__} {v!r}"[:300]) from None
    if not g:
        raise ValueError("grad_norms holds no layers")
    for name, v in (("vanishing", vanishing), ("exploding", exploding)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a number, got {v!r}")
    if not (0 < vanishing < 1 < exploding):
        raise ValueError(f"need 0 < vanishing < 1 < exploding, got vanishing={vanishing}, exploding={exploding}")
    if any(v < 0 for v in g if not math.isnan(v)):
        raise ValueError(f"gradient norms cannot be negative, got {g}")
    L, ref = len(g), g[-1]
    out = []
    if not math.isfinite(ref):
        return [FlowWarning(L, "exploding", math.nan,
                            f"layer {L} (output): ||dW|| is {ref}: the step diverged; try {_EXPLODING_REMEDIES}")]
    if ref == 0:
        return out
    for l, v in enumerate(g[:-1], start=1):
        if not math.isfinite(v):
            out.append(FlowWarning(l, "exploding", math.inf,
                                   f"layer {l}: ||dW|| is {v}: its gradient exploded; try {_EXPLODING_REMEDIES}"))
            continue
        r = v / ref
        if r < vanishing:
            out.append(FlowWarning(
                l, "vanishing", r,
                f"layer {l}: ||dW|| = {v:.3g} is {r:.3g} times the output layer's ({ref:.3g}), below "
                f"{vanishing:g}: its gradient vanishes and it barely learns; try {_VANISHING_REMEDIES}"))
        elif r > exploding:
            out.append(FlowWarning(
                l, "exploding", r,
                f"layer {l}: ||dW|| = {v:.3g} is {r:.3g} times the output layer's ({ref:.3g}), above "
                f"{exploding:g}: its gradient explodes; try {_EXPLODING_REMEDIES}"))
    return out


__all__ = ["layer_stats", "record", "flow_warnings", "norm", "FlowWarning", "GradientFlowWarning",
           "VANISHING", "EXPLODING", "HISTORY_KEYS", "STAT_KEYS"]
