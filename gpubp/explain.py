"""One backpropagation step, traced: every z, a, delta, dW, db and the updated parameters.

The trace is computed in float64 by the numpy backend's own operations
(`dense_forward`, `loss_and_delta`, `dense_backward`, `sgd_update`), so it
shows exactly what the library computes, step by step, for any network small
enough to read.

    from gpubp.explain import trace_step, format_trace, load_example
    problem = load_example("classic")            # the 2-2-2 worked example of docs/spec.md
    t = trace_step(**problem.trace_args())
    print(format_trace(t))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from . import activations as acts
from . import losses

#: the named examples `gpubp explain --example NAME` knows, and their files in gpubp/examples
EXAMPLES = {"sigmoid_2_2_1": None, "classic": "classic_2_2_2.json"}

#: the default example: a 2-2-1 sigmoid network on one sample (weights come from a seed)
SIGMOID_2_2_1 = {"layer_sizes": [2, 2, 1], "input": [0.5, 0.8], "target": [1.0], "activation": "sigmoid",
           "output_activation": "sigmoid", "loss": "mse", "lr": 0.1,
           "description": "the default example: 2-2-1, sigmoid everywhere, mse, learning rate 0.1"}


@dataclass
class Problem:
    """Everything one traced step needs; `params` None means "initialise from `seed`"."""

    layer_sizes: list
    input: np.ndarray
    target: np.ndarray
    activations: list            # one per layer 1..L (the last is the output activation)
    loss: str
    lr: float
    params: list | None = None
    seed: int | None = 0
    description: str = ""
    weights_from: str = ""
    expected: dict = field(default_factory=dict)

    def trace_args(self) -> dict:
        params = self.params if self.params is not None else seeded_params(
            self.layer_sizes, self.activations, self.loss, self.seed)
        return {"params": params, "X": self.input, "Y": self.target, "activations": self.activations,
                "loss": self.loss, "lr": self.lr}


def seeded_params(layer_sizes, activations, loss, seed):
    """The float64 weights `gpubp.MLP(..., seed=seed)` starts from."""
    from .network import MLP

    net = MLP(list(layer_sizes), activation=list(activations[:-1]), output_activation=activations[-1],
              loss=loss, backend="numpy", dtype="float64", seed=seed)
    return net.get_params()


def _as_2d(x, n, what):
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != n:
        raise ValueError(f"{what} has shape {np.shape(x)}; expected {n} values per sample")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or infinity")
    return np.ascontiguousarray(a)


def _targets(Y, loss, B, n_out):
    """Targets as the backend expects them; a lone integer is a class label for cross_entropy."""
    Y = np.asarray(Y)
    if loss == "cross_entropy" and n_out > 1 and Y.size == B and (Y.ndim <= 1 or Y.shape == (B, 1)) and \
            np.all(Y == np.round(Y)):
        Y = Y.reshape(B).astype(np.int64)
    return losses.prepare_targets(Y, loss, B, n_out, np.float64)


def check_params(params, layer_sizes=None):
    """`params` as float64 `(W, b)` pairs of consistent shapes; returns `(params, layer_sizes)`."""
    out = []
    for l, pair in enumerate(params, start=1):
        if len(pair) != 2:
            raise ValueError(f"layer {l}: expected a (W, b) pair")
        W = np.array(pair[0], dtype=np.float64)
        b = np.array(pair[1], dtype=np.float64).reshape(-1)
        if W.ndim != 2 or b.shape != (W.shape[0],):
            raise ValueError(f"layer {l}: W must be (n_out, n_in) and b (n_out,); got W {W.shape}, b {b.shape}")
        if out and W.shape[1] != out[-1][0].shape[0]:
            raise ValueError(f"layer {l}: W takes {W.shape[1]} inputs but layer {l - 1} has "
                             f"{out[-1][0].shape[0]} outputs")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            raise ValueError(f"layer {l}: weights contain NaN or infinity")
        out.append((np.ascontiguousarray(W), np.ascontiguousarray(b)))
    if not out:
        raise ValueError("no layers given")
    sizes = [out[0][0].shape[1]] + [W.shape[0] for W, _ in out]
    if layer_sizes is not None and list(layer_sizes) != sizes:
        raise ValueError(f"the weights give layer sizes {sizes}, not {list(layer_sizes)}")
    return out, sizes


def trace_step(params, X, Y, activations, loss, lr):
    """One forward pass, backward pass and plain SGD update, in float64, with every intermediate.

    `params` is `[(W, b), ...]` with `W` of shape `(n_out, n_in)`;
    `activations` names each layer's activation (the last is the output's);
    `X` is one sample (1-D) or a batch; `Y` its targets (class labels or
    rows for cross_entropy).  Returns a JSON-serialisable dict: see
    `TRACE_FIELDS`.  Vectors of a single sample are 1-D lists.
    """
    from .backends import get_backend

    be = get_backend("numpy")
    params, sizes = check_params(params)
    L = len(params)
    activations = list(activations)
    if len(activations) != L:
        raise ValueError(f"{L} layers need {L} activations, got {len(activations)}")
    for i, a in enumerate(activations):
        acts.check_activation(a, "output_activation" if i == L - 1 else "activation")
    losses.check_loss(loss)
    if loss in losses.LOGIT_LOSSES and activations[-1] != "identity":
        raise ValueError(f"loss {loss!r} works on logits: output_activation must be 'identity', "
                         f"got {activations[-1]!r}")
    lr = float(lr)
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a positive number, got {lr}")
    single = np.asarray(X).ndim == 1
    A0 = _as_2d(X, sizes[0], "the input")
    B = A0.shape[0]
    Yb = _targets(Y, loss, B, sizes[-1])

    def fwd(ps):
        A, Z = [A0], [None]
        for l in range(L):
            W, b = ps[l]
            a = np.empty((B, W.shape[0]))
            z = np.empty((B, W.shape[0]))
            be.dense_forward(A[-1], W, b, activations[l], a, z)
            A.append(a)
            Z.append(z)
        return A, Z

    A, Z = fwd(params)
    loss_buf = np.zeros(1)
    delta = [None] * (L + 1)
    delta[L] = np.empty((B, sizes[-1]))
    be.loss_and_delta(A[L], Z[L], Yb, loss, activations[-1], loss_buf, delta[L])
    loss_before = float(loss_buf[0])
    grads = [None] * L
    for l in range(L, 0, -1):
        W, _ = params[l - 1]
        dW, db = np.empty_like(W), np.empty(W.shape[0])
        if l > 1:
            delta[l - 1] = np.empty((B, sizes[l - 1]))
            be.dense_backward(delta[l], A[l - 1], W, dW, db, delta[l - 1], activations[l - 2], Z[l - 1])
        else:
            be.dense_backward(delta[l], A[0], W, dW, db)
        grads[l - 1] = (dW, db)
    new = []
    for (W, b), (dW, db) in zip(params, grads):
        W2, b2 = W.copy(), b.copy()
        be.sgd_update(W2, dW, None, lr, 0.0)
        be.sgd_update(b2, db, None, lr, 0.0)
        new.append((W2, b2))
    A2, Z2 = fwd(new)
    be.loss_and_delta(A2[L], Z2[L], Yb, loss, activations[-1], loss_buf, None)
    loss_after = float(loss_buf[0])

    def vec(a):
        a = np.asarray(a)
        return (a[0] if single and a.ndim == 2 else a).tolist()

    return {
        "layer_sizes": sizes,
        "activations": activations,
        "loss_name": loss,
        "lr": lr,
        "optimizer": "sgd",
        "dtype": "float64",
        "backend": "numpy",
        "batch": B,
        "input": vec(A0),
        "target": vec(Yb) if Yb.ndim == 2 else (Yb.tolist() if not single else int(Yb[0])),
        "forward": [{"layer": l, "W": params[l - 1][0].tolist(), "b": params[l - 1][1].tolist(),
                     "z": vec(Z[l]), "a": vec(A[l]), "activation": activations[l - 1]} for l in range(1, L + 1)],
        "output": vec(A[L]),
        "loss": loss_before,
        "backward": [{"layer": l, "delta": vec(delta[l]), "dW": grads[l - 1][0].tolist(),
                      "db": grads[l - 1][1].tolist()} for l in range(L, 0, -1)],
        "updated": [{"layer": l, "W": new[l - 1][0].tolist(), "b": new[l - 1][1].tolist()}
                    for l in range(1, L + 1)],
        "loss_after": loss_after,
    }


#: the top-level keys of a trace
TRACE_FIELDS = ("layer_sizes", "activations", "loss_name", "lr", "optimizer", "dtype", "backend", "batch",
                "input", "target", "forward", "output", "loss", "backward", "updated", "loss_after")


# ---------------------------------------------------------------- problems from files and options
def _example_text(name: str) -> str:
    return resources.files("gpubp").joinpath("examples", EXAMPLES[name]).read_text(encoding="utf-8")


def read_weights_file(path_or_text, *, is_text=False) -> dict:
    """A weights file: JSON with `"layers": [{"W": [[...]], "b": [...]}, ...]` and optionally
    `layer_sizes`, `input`, `target`, `activation`, `output_activation`, `loss`, `lr`,
    `description`, `expected`.  Returns the parsed dict with `params` added."""
    where = "the example" if is_text else str(path_or_text)
    try:
        text = path_or_text if is_text else Path(path_or_text).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read the weights file {where}: {e.strerror or e}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: {e}") from None
    if isinstance(d, list):
        d = {"layers": d}
    if not isinstance(d, dict) or not isinstance(d.get("layers"), list):
        raise ValueError(f'{where}: expected an object with "layers": [{{"W": [[...]], "b": [...]}}, ...]')
    pairs = []
    for l, layer in enumerate(d["layers"], start=1):
        if not isinstance(layer, dict) or "W" not in layer or "b" not in layer:
            raise ValueError(f'{where}: layer {l} must be an object with "W" and "b"')
        pairs.append((layer["W"], layer["b"]))
    try:
        d["params"], sizes = check_params(pairs, d.get("layer_sizes"))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    d["layer_sizes"] = sizes
    return d


def load_example(name: str) -> Problem:
    """The named example: "sigmoid_2_2_1" (weights from seed 0) or "classic" (the 2-2-2 worked example)."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; choose one of {', '.join(EXAMPLES)}")
    if EXAMPLES[name] is None:
        return make_problem()
    return make_problem(weights=_example_text(name), weights_is_text=True, weights_name=f"example {name!r}")


def _parse_vector_text(text, what):
    rows = []
    for part in str(text).split(";"):
        part = part.strip()
        if not part:
            continue
        try:
            rows.append([float(v) for v in part.replace(",", " ").split()])
        except ValueError:
            raise ValueError(f"{what} must be numbers separated by commas or spaces (';' between samples), "
                             f"got {text!r}") from None
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"{what} must hold the same number of values for every sample, got {text!r}")
    return np.array(rows[0] if len(rows) == 1 else rows)


def parse_vector(value, what="value"):
    """Numbers from text ("0.5,0.8", "0.5 0.8", "0.1,0.2;0.3,0.4" for two samples) or a sequence."""
    if isinstance(value, str):
        return _parse_vector_text(value, what)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return _parse_vector_text(" ".join(value), what)
    return np.asarray(value, dtype=np.float64)


def make_problem(layer_sizes=None, input=None, target=None, activation=None, output_activation=None,
                 loss=None, lr=None, seed=0, weights=None, weights_is_text=False, weights_name=None) -> Problem:
    """Resolve a traced step from options: an explicit value wins, then the weights file's, then
    the default 2-2-1 sigmoid example.

    `activation` is a name or a list (one per hidden layer).  The output
    activation defaults to the hidden one for the squared-error losses
    ("sigmoid everywhere") and to identity for the logit losses.
    """
    wf = {}
    if weights is not None:
        wf = read_weights_file(weights, is_text=weights_is_text)
    base = {} if weights is not None else SIGMOID_2_2_1
    pick = lambda key, given: given if given is not None else wf.get(key, base.get(key))  # noqa: E731

    sizes = list(layer_sizes) if layer_sizes is not None else None
    if weights is not None:
        if sizes is not None and sizes != wf["layer_sizes"]:
            raise ValueError(f"--layers {sizes} does not match the weights, which give {wf['layer_sizes']}")
        sizes = wf["layer_sizes"]
    elif sizes is None:
        sizes = list(SIGMOID_2_2_1["layer_sizes"])
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"layer sizes must be at least two positive integers, got {sizes}")
    L = len(sizes) - 1

    loss_name = losses.check_loss(pick("loss", loss) or "mse")
    act = pick("activation", activation) or "sigmoid"
    hidden = list(act) if isinstance(act, (list, tuple)) else [act] * (L - 1)
    if len(hidden) == 1 and L - 1 != 1:
        hidden = hidden * (L - 1)
    if len(hidden) != L - 1:
        raise ValueError(f"{L - 1} hidden layers need 1 or {L - 1} activations, got {len(hidden)}")
    for a in hidden:
        acts.check_activation(a)
    out_act = output_activation if output_activation is not None else wf.get("output_activation")
    if out_act is None:
        if loss_name in losses.LOGIT_LOSSES:
            out_act = "identity"
        else:
            out_act = hidden[-1] if hidden and len(set(hidden)) == 1 else "identity"
    acts.check_activation(out_act, "output_activation")

    x = pick("input", input)
    y = pick("target", target)
    if x is None or y is None:
        raise ValueError("give the input and the target (--input, --target) for a network other than "
                         "the default 2-2-1 example")
    x = parse_vector(x, "the input")
    y = parse_vector(y, "the target")
    if x.shape[-1] != sizes[0]:
        raise ValueError(f"the input has {x.shape[-1]} values per sample; the network takes {sizes[0]}")
    lr_v = float(pick("lr", lr) or 0.1)

    if weights is not None:
        params, weights_from = wf["params"], weights_name or f"file {weights}"
    else:
        params, weights_from = None, f"MLP(seed={seed}) initialisation (uniform in ±1/sqrt(fan_in))"
    desc = wf.get("description", "") if weights is not None else (
        SIGMOID_2_2_1["description"] if (layer_sizes, input, target, activation, output_activation, loss, lr)
        == (None,) * 7 else "")
    return Problem(list(sizes), x, y, hidden + [out_act], loss_name, lr_v, params, seed, desc, weights_from,
                   wf.get("expected", {}))


# ---------------------------------------------------------------- text
def _fmt(x, digits):
    a = np.asarray(x, dtype=np.float64)
    return np.array2string(a, precision=digits, floatmode="maxprec", suppress_small=False,
                           separator=", ", max_line_width=100,
                           formatter={"float_kind": lambda v: f"{v:.{digits}g}"})


_DERIV = {"identity": "1", "sigmoid": "a (1 - a)", "tanh": "1 - a^2", "relu": "[a > 0]",
          "leaky_relu": "(1 if a > 0 else 0.01)", "gelu": "gelu'(z)", "silu": "silu'(z)"}
_LOSS_TEXT = {"mse": "mean over all outputs of (a - y)^2",
              "half_sse": "mean over samples of 1/2 sum_j (a_j - y_j)^2",
              "cross_entropy": "softmax cross-entropy of the logits",
              "binary_cross_entropy": "sigmoid binary cross-entropy of the logits"}
_DELTA_TEXT = {"mse": "2 (a - y) / (B n) * g'", "half_sse": "(a - y) / B * g'",
               "cross_entropy": "(softmax(z) - y) / B", "binary_cross_entropy": "(sigmoid(z) - y) / (B n)"}


def format_trace(t: dict, digits: int = 10, title: str = "") -> str:
    """The trace as text, numbers to `digits` significant digits."""
    out = []

    def line(prefix, x):
        # continuation rows of a matrix line up under its first row
        out.append(prefix + _fmt(x, digits).replace("\n", "\n" + " " * len(prefix)))

    L = len(t["forward"])
    if title:
        out.append(title)
    out.append(f"network {t['layer_sizes']}, activations {', '.join(t['activations'][:-1]) or '-'} "
               f"(hidden) / {t['activations'][-1]} (output), loss {t['loss_name']}, plain SGD, "
               f"learning rate {t['lr']:g}; float64 on the numpy backend, batch of {t['batch']}")
    line("input  x = ", t["input"])
    line("target y = ", t["target"])
    out.append("")
    out.append("Forward: z = W a_prev + b, a = g(z)")
    for fw in t["forward"]:
        l = fw["layer"]
        out.append(f"  layer {l} ({fw['activation']})")
        line(f"    W{l} = ", fw["W"])
        line(f"    b{l} = ", fw["b"])
        line(f"    z{l} = ", fw["z"])
        line(f"    a{l} = ", fw["a"])
    out.append(f"Loss ({t['loss_name']}: {_LOSS_TEXT[t['loss_name']]}) = {t['loss']:.{digits}g}")
    out.append("")
    out.append("Backward: delta = dLoss/dz, dW = delta a_prev^T, db = delta (summed over the batch)")
    for bw in t["backward"]:
        l = bw["layer"]
        if l == L:
            how = _DELTA_TEXT[t["loss_name"]]
            if t["loss_name"] in ("mse", "half_sse"):
                how = how.replace("g'", f"g'(z{l}), g' = {_DERIV[t['activations'][-1]]}")
        else:
            how = f"(W{l + 1}^T delta{l + 1}) * g'(z{l}), g' = {_DERIV[t['activations'][l - 1]]}"
        out.append(f"  layer {l}: delta{l} = {how}")
        line(f"    delta{l} = ", bw["delta"])
        line(f"    dW{l} = ", bw["dW"])
        line(f"    db{l} = ", bw["db"])
    out.append("")
    out.append(f"Update: W -= {t['lr']:g} dW, b -= {t['lr']:g} db")
    for up in t["updated"]:
        l = up["layer"]
        line(f"  layer {l}: W{l} = ", up["W"])
        line(f"           b{l} = ", up["b"])
    out.append(f"Loss after the step = {t['loss_after']:.{digits}g} (before {t['loss']:.{digits}g})")
    return "\n".join(out)


__all__ = ["trace_step", "format_trace", "make_problem", "load_example", "read_weights_file", "parse_vector",
           "seeded_params", "check_params", "Problem", "EXAMPLES", "SIGMOID_2_2_1", "TRACE_FIELDS"]
