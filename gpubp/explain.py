"""One backpropagation step of a real `MLP`, traced: every z, a, dL/da, g'(z), delta, dW, db and the update.

`trace_step` builds an `MLP` (numpy backend, float64), gives it the weights,
runs the network's own forward pass, loss, backward pass and a plain SGD step,
and reads every intermediate from the step plan the network used (`.A`, `.Z`,
`.delta`) and from its gradient views (`net._dWb`).  Nothing of the training
loop is written again here; the few quantities the network never forms on its
own are derived from what it did form, with gpubp's own functions:

- `z` where the plan keeps none (activations whose derivative needs only `a`):
  `W a_prev + b`, the layer's affine map;
- `g'(z)`: the backend's `activation_backward_inplace` applied to ones;
- `dL/da` of the output layer: the loss's derivative (`mse`: 2 (a - y) / (B n),
  `half_sse`: (a - y) / B; for the logit losses and `poisson` the output is `z`
  itself and `dL/da` is the network's delta);
- `W^T delta` (= dL/da of the layer below, dL/dx for layer 1): `delta W`.

The tests check that delta = dL/da * g'(z) holds for the network's deltas.

    from gpubp.explain import trace_step, format_trace, load_example
    problem = load_example("sigmoid-2-2-1")   # the default of `gpubp explain`
    t = trace_step(**problem.trace_args())
    print(format_trace(t))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from . import activations as acts
from . import losses
from .checks import real_number

#: the named examples `gpubp explain --example NAME` knows, and their files in gpubp/examples
EXAMPLES = {
    "sigmoid-2-2-1": "sigmoid_2_2_1.json",
    "sigmoid-2-2-1-lr0.5": "sigmoid_2_2_1_lr0.5.json",
    "classic": "classic_2_2_2.json",
}

#: the example `gpubp explain` runs when no weights, layers or seed are given
DEFAULT_EXAMPLE = "sigmoid-2-2-1"

#: the top-level keys of a trace
TRACE_FIELDS = ("layer_sizes", "activations", "loss_name", "lr", "optimizer", "dtype", "backend", "batch",
                "input", "target", "forward", "output", "loss", "backward", "updated", "loss_after")

#: the keys of each entry of a trace's "backward" list (layers L down to 1)
BACKWARD_FIELDS = ("layer", "dL_da", "g_prime", "delta", "dW", "db", "W_T_delta")


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


def _make_net(layer_sizes, activations, loss, seed=0):
    from .network import MLP

    return MLP(list(layer_sizes), activation=list(activations[:-1]), output_activation=activations[-1],
               loss=loss, backend="numpy", dtype="float64", seed=seed)


def seeded_params(layer_sizes, activations, loss, seed):
    """The float64 weights `gpubp.MLP(..., seed=seed)` starts from."""
    return _make_net(layer_sizes, activations, loss, seed).get_params()


def _as_2d(x, n, what):
    a = _real_array(x, what)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != n:
        raise ValueError(f"{what} has shape {np.shape(x)}; expected {n} values per sample")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or infinity")
    return np.ascontiguousarray(a)


def _targets(Y, loss, B, n_out):
    """Targets as the network expects them; a lone integer per sample is a class label for cross_entropy.

    A target that does not fit is named in the options' terms (the target's samples and values per
    sample, the input's samples, the network's outputs), not as the shapes of `fit`'s X and Y.
    """
    try:
        losses.check_outputs(loss, n_out)
    except ValueError as e:
        raise ValueError(f"loss {e}") from None
    Y = _real_array(Y, "the target")
    if loss == "cross_entropy" and n_out > 1 and Y.size == B and (Y.ndim <= 1 or Y.shape == (B, 1)):
        if not np.all(Y == np.round(Y)):
            raise ValueError(f"a cross_entropy target is a class index (a whole number from 0 to {n_out - 1}) "
                             f"or {n_out} probabilities per sample; got {Y.reshape(-1).tolist()}")
        if not np.all((Y >= 0) & (Y < n_out)):    # before the cast: 1e20 wrapped to a negative int64
            raise ValueError(f"class labels in the target must lie in [0, {n_out}) for a network with {n_out} "
                             f"outputs; got labels from {Y.min():g} to {Y.max():g}")
        Y = Y.reshape(B).astype(np.int64)
    else:
        if Y.ndim <= 1:     # one sample's values, or (one output) one value per sample
            samples, per = (Y.size, 1) if n_out == 1 and B > 1 else (1, Y.size)
        else:
            samples, per = Y.shape[0], int(np.prod(Y.shape[1:]))
        if per != n_out or Y.ndim > 2:
            raise ValueError(f"the target has {per} values per sample; the network has {n_out} "
                             f"output{'s' if n_out != 1 else ''}" +
                             (" (or give one class index per sample)" if loss == "cross_entropy" else ""))
        if samples != B:
            raise ValueError(f"the target gives {samples} sample{'s' if samples != 1 else ''}; the input {B} "
                             "(';' separates samples)")
        Y = Y.reshape(B, n_out)     # a lone number (one sample, one output) included, as counted above
    return losses.prepare_targets(Y, loss, B, n_out, np.float64, name="the target")


def _real_array(value, what):
    """`value` as a float64 array; text, rows of different lengths or complex numbers (whose imaginary
    part a cast would drop) are refused naming `what`."""
    try:
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise TypeError
        return np.array(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must hold real numbers (rows of equal length), got {value!r}"[:300]) from None


def check_params(params, layer_sizes=None):
    """`params` as float64 `(W, b)` pairs of consistent shapes; returns `(params, layer_sizes)`."""
    out = []
    for l, pair in enumerate(params, start=1):
        if len(pair) != 2:
            raise ValueError(f"layer {l}: expected a (W, b) pair")
        W, b = _real_array(pair[0], f"layer {l}: W"), _real_array(pair[1], f"layer {l}: b").reshape(-1)
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


# ---------------------------------------------------------------- the network's own step
def _network_step(net, X, Y, lr):
    """One training step of `net` (plain SGD at `lr`), keeping copies of what its step plan held.

    This is the one place that knows the network's step internals: `net._step`
    (forward, loss and delta, backward, optimizer step: the step `fit` runs)
    returns the plan it used, whose `A`, `Z`, `delta` and `loss` are the
    step's, and `net._dWb` holds the step's gradients.
    """
    from .optim import SGD

    X = net._inputs(X)
    Y = net._targets(Y, X.shape[0])
    opt = net._bind(net._resolve_optimizer(SGD(lr)))
    plan = net._step(X, Y, opt)
    copy = lambda a: None if a is None else np.array(a, dtype=np.float64, copy=True)  # noqa: E731
    out = {"A": [copy(a) for a in plan.A], "Z": [copy(z) for z in plan.Z], "delta": [copy(d) for d in plan.delta],
           "loss": float(plan.loss[0]),
           "grads": [(np.array(dW, copy=True), np.array(db, copy=True)) for dW, db in net._dWb],
           "updated": net.get_params()}
    out["loss_after"] = float(net.loss_and_grads(X, Y)[0])
    return out


def activation_derivative(name, a, z):
    """g'(z) of activation `name` at the layer's output `a` (and `z`), by the numpy backend's own rule."""
    from .backends.numpy_backend import activation_backward_inplace

    return activation_backward_inplace(name, np.ones_like(a), a, z)


def output_loss_gradient(loss, a, y, delta_out):
    """dL/da of the output layer for a batch: `a` (B, n), `y` the prepared targets.

    For the logit losses and `poisson` the output activation is the identity,
    so dL/da is dL/dz, which is the network's own `delta_out`.
    """
    B, n = a.shape
    if loss == "mse":
        return 2.0 * (a - y) / (B * n)
    if loss == "half_sse":
        return (a - y) / B
    return np.array(delta_out, copy=True)


def _check_lr(lr) -> float:
    """`lr` as a float: a real number (not a bool or text), positive and finite."""
    v = real_number(lr)
    if v is None or not (math.isfinite(v) and v > 0):
        raise ValueError(f"the learning rate must be a positive number, got {lr!r}")
    return v


def trace_step(params, X, Y, activations, loss, lr):
    """One forward pass, backward pass and plain SGD update of an `MLP`, in float64, with every intermediate.

    `params` is `[(W, b), ...]` with `W` of shape `(n_out, n_in)`;
    `activations` names each layer's activation (the last is the output's);
    `X` is one sample (1-D) or a batch; `Y` its targets (class labels or
    rows for cross_entropy).  Returns a JSON-serialisable dict with the keys
    `TRACE_FIELDS`; each "backward" entry has `BACKWARD_FIELDS`.  Vectors of a
    single sample are 1-D lists.
    """
    params, sizes = check_params(params)
    L = len(params)
    if isinstance(activations, str):      # list("sigmoid") would be 7 names of one letter
        raise ValueError(f"activations must be a list with one name per layer ({L}; the last is the output's), "
                         f"got the string {activations!r}")
    activations = list(activations)
    if len(activations) != L:
        raise ValueError(f"{L} layers need {L} activations, got {len(activations)}")
    for i, a in enumerate(activations):
        acts.check_activation(a, "output_activation" if i == L - 1 else "activation")
    losses.check_loss(loss)
    losses.check_output_activation(loss, activations[-1])
    lr = _check_lr(lr)
    single = np.asarray(X).ndim == 1
    A0 = _as_2d(X, sizes[0], "the input")
    B = A0.shape[0]
    Yb = _targets(Y, loss, B, sizes[-1])

    net = _make_net(sizes, activations, loss)
    net.set_params(params)
    s = _network_step(net, A0, Yb, lr)
    A, delta = s["A"], s["delta"]
    Z = [None] + [s["Z"][l] if s["Z"][l] is not None else A[l - 1] @ params[l - 1][0].T + params[l - 1][1]
                  for l in range(1, L + 1)]

    def vec(a):
        a = np.asarray(a)
        return (a[0] if single and a.ndim == 2 else a).tolist()

    backward = []
    for l in range(L, 0, -1):
        W = params[l - 1][0]
        if l == L:
            dL_da = output_loss_gradient(loss, A[L], Yb, delta[L])
        else:
            dL_da = delta[l + 1] @ params[l][0]
        backward.append({
            "layer": l,
            "dL_da": vec(dL_da),
            "g_prime": vec(activation_derivative(activations[l - 1], A[l], Z[l])),
            "delta": vec(delta[l]),
            "dW": s["grads"][l - 1][0].tolist(),
            "db": s["grads"][l - 1][1].tolist(),
            "W_T_delta": vec(delta[l] @ W),
        })

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
        "forward": [{"layer": l, "activation": activations[l - 1], "W": params[l - 1][0].tolist(),
                     "b": params[l - 1][1].tolist(), "z": vec(Z[l]), "a": vec(A[l])} for l in range(1, L + 1)],
        "output": vec(A[L]),
        "loss": s["loss"],
        "backward": backward,
        "updated": [{"layer": l, "W": s["updated"][l - 1][0].tolist(), "b": s["updated"][l - 1][1].tolist()}
                    for l in range(1, L + 1)],
        "loss_after": s["loss_after"],
    }


#: how strict JSON writes the non-finite numbers a diverging step can give
NON_FINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def strict_json(obj):
    """`obj` with every non-finite float replaced by a string ("NaN", "Infinity", "-Infinity"),
    so that `json.dumps(..., allow_nan=False)` writes strict JSON (RFC 8259) any parser reads
    (numpy scalars become Python numbers first; also what bench.json is written with)."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return NON_FINITE_JSON[repr(obj)]
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def trace_json(t: dict, indent: int | None = 2) -> str:
    """The trace as strict JSON: a non-finite number is written as "NaN", "Infinity" or "-Infinity"."""
    return json.dumps(strict_json(t), indent=indent, allow_nan=False)


# ---------------------------------------------------------------- problems from files and options
def _example_text(name: str) -> str:
    return resources.files("gpubp").joinpath("examples", EXAMPLES[name]).read_text(encoding="utf-8")


def example_path(name: str) -> str:
    """Where the named example lives inside the package (for messages)."""
    return f"gpubp/examples/{EXAMPLES[name]}"


#: the quantities a weights file's "expected" may give, which the text compares with the trace's
EXPECTED_KEYS = ("loss", "output", "loss_after", "W_after", "b_after")

#: the keys a weights file (and an example) may hold
WEIGHTS_FILE_KEYS = ("layers", "layer_sizes", "input", "target", "activation", "output_activation", "loss", "lr",
                     "description", "expected")


def read_weights_file(path_or_text, *, is_text=False) -> dict:
    """A weights file: JSON with `"layers": [{"W": [[...]], "b": [...]}, ...]` and optionally
    `layer_sizes`, `input`, `target`, `activation`, `output_activation`, `loss`, `lr`,
    `description`, `expected`.  Returns the parsed dict with `params` added."""
    where = "the example" if is_text else str(path_or_text)
    try:
        text = path_or_text if is_text else Path(path_or_text).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read the weights file {where}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:    # its message alone named no file
        raise ValueError(f"{where} is not UTF-8 text (byte {e.start}), so no JSON weights file") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: {e}") from None
    except RecursionError:             # arrays nested thousands deep: json's C decoder gives up
        raise ValueError(f"{where} is not valid JSON for weights: it nests too deeply") from None
    if isinstance(d, list):
        d = {"layers": d}
    if not isinstance(d, dict) or not isinstance(d.get("layers"), list):
        raise ValueError(f'{where}: expected an object with "layers": [{{"W": [[...]], "b": [...]}}, ...]')
    unknown = [k for k in d if k not in WEIGHTS_FILE_KEYS]
    if unknown:                        # a misspelt key ("learning_rate") was dropped unseen, its default used
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; a weights file holds "
                         f"{', '.join(WEIGHTS_FILE_KEYS)}")
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
    # the text prints these as they are: a wrong type was a traceback after the whole trace
    if "expected" in d and not isinstance(d["expected"], dict):
        raise ValueError(f'{where}: "expected" must be an object of published numbers, e.g. '
                         f'{{"loss": 0.5, "output": [0.2]}}, got {type(d["expected"]).__name__}')
    for key, want in d.get("expected", {}).items():    # else dropped unseen by the comparison
        if key not in EXPECTED_KEYS:
            raise ValueError(f'{where}: "expected": unknown key {key!r}; the comparison takes '
                             f'{", ".join(EXPECTED_KEYS)}')
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in _flat(want)):
            raise ValueError(f'{where}: "expected": "{key}" must be a number or a list of numbers, got {want!r}'[:300])
    if "description" in d and not isinstance(d["description"], str):
        raise ValueError(f'{where}: "description" must be a string, got {type(d["description"]).__name__}')
    if "lr" in d:                      # a rate the file gives is used as it is, never replaced
        lr = d["lr"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f'{where}: "lr" must be a positive finite number, got {lr!r}')
    return d


def load_example(name: str) -> Problem:
    """The named example (see `EXAMPLES`), as a `Problem`."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; choose one of {', '.join(EXAMPLES)}")
    return make_problem(weights=_example_text(name), weights_is_text=True,
                        weights_name=f"example {name!r} ({example_path(name)})")


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
    try:
        return np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):    # text among numbers, rows of different lengths, an object
        raise ValueError(f"{what} must be a number, a list of numbers or a list of equally long rows of "
                         f"numbers (one per sample), got {value!r}") from None


def make_problem(layer_sizes=None, input=None, target=None, activation=None, output_activation=None,
                 loss=None, lr=None, seed=None, weights=None, weights_is_text=False, weights_name=None) -> Problem:
    """Resolve a traced step from options: an explicit value wins, then the weights file's, then the
    default example's (`DEFAULT_EXAMPLE`).

    With no weights file, the default example's weights are used unless
    `layer_sizes` differ from its sizes or a `seed` is given; then the weights
    are those `MLP(..., seed=seed)` starts from.  With a weights file (or a
    named example's text) and a `seed`, the file gives everything but the
    weights, which are again `MLP(..., seed=seed)`'s (for its layer sizes, or
    `layer_sizes`).  `activation` is a name or a
    list (one per hidden layer).  The output activation is, in order: the one
    given, identity for the logit losses and poisson, the weights file's, the hidden one
    when all hidden layers share it, identity.
    """
    default = read_weights_file(_example_text(DEFAULT_EXAMPLE), is_text=True)
    explicit = (layer_sizes, input, target, activation, output_activation, loss, lr, seed)
    if weights is None and seed is None and (layer_sizes is None or list(layer_sizes) == default["layer_sizes"]):
        weights, weights_is_text = _example_text(DEFAULT_EXAMPLE), True
        weights_name = f"example {DEFAULT_EXAMPLE!r} ({example_path(DEFAULT_EXAMPLE)})"
    wf = read_weights_file(weights, is_text=weights_is_text) if weights is not None else {}
    # without weights, the default example still gives the input, target, activations, loss and lr
    base = {} if weights is not None else {k: v for k, v in default.items() if k not in ("layers", "params")}
    pick = lambda key, given: given if given is not None else wf.get(key, base.get(key))  # noqa: E731

    sizes = list(layer_sizes) if layer_sizes is not None else None
    if weights is not None and seed is not None:     # the file's settings, MLP(seed=...)'s weights
        sizes = sizes if sizes is not None else wf["layer_sizes"]
    elif weights is not None:
        if sizes is not None and sizes != wf["layer_sizes"]:
            raise ValueError(f"--layers {sizes} does not match the weights, which give {wf['layer_sizes']}")
        sizes = wf["layer_sizes"]
    elif sizes is None:
        sizes = list(default["layer_sizes"])
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"layer sizes must be at least two positive integers, got {sizes}")
    L = len(sizes) - 1

    loss_name = losses.check_loss(pick("loss", loss) or "mse")
    if activation is not None and L == 1:     # nothing it could set: refused, never dropped unseen
        raise ValueError(f"the network {sizes} has no hidden layer to give an activation (--activation sets the "
                         "hidden layers; --output-activation the output)")
    act = pick("activation", activation) or "sigmoid"
    hidden = list(act) if isinstance(act, (list, tuple)) else [act] * (L - 1)
    if len(hidden) == 1 and L - 1 != 1:
        hidden = hidden * (L - 1)
    if len(hidden) != L - 1:
        need = {0: "no hidden layer to give an activation", 1: "1 hidden layer: give 1 activation"}.get(
            L - 1, f"{L - 1} hidden layers: give 1 activation for all or {L - 1}, one per hidden layer")
        raise ValueError(f"the network has {need}, got {len(hidden)} ({', '.join(map(str, hidden))})")
    for a in hidden:
        acts.check_activation(a)
    if output_activation is not None:
        out_act = output_activation
    elif loss_name in losses.FUSED_OUTPUT:
        out_act = "identity"
    elif wf.get("output_activation") is not None:
        out_act = wf["output_activation"]
    else:
        out_act = hidden[-1] if hidden and len(set(hidden)) == 1 else "identity"
    acts.check_activation(out_act, "output_activation")

    x = pick("input", input)
    y = pick("target", target)
    if x is None or y is None:
        raise ValueError("give the input and the target (--input, --target) for these weights")
    x = np.atleast_1d(parse_vector(x, "the input"))     # a lone number is one sample's one value,
    y = np.atleast_1d(parse_vector(y, "the target"))    # as "--input 0.5" gives it
    if x.shape[-1] != sizes[0]:
        raise ValueError(f"the input has {x.shape[-1]} values per sample; the network takes {sizes[0]}")
    lr_v = pick("lr", lr)
    lr_v = 0.1 if lr_v is None else _check_lr(lr_v)    # True or "0.1" is no rate (float() read them as 1, 0.1)

    if weights is not None and seed is None:
        params, weights_from = wf["params"], weights_name or f"file {weights}"
    else:
        seed = 0 if seed is None else seed
        params, weights_from = None, f"MLP(seed={seed}) initialisation (uniform in ±1/sqrt(fan_in))"
    overridden = any(v is not None for v in explicit)
    desc = wf.get("description", "") if weights is not None else ""
    if overridden and desc:
        desc = "changed from " + desc
    return Problem(list(sizes), x, y, hidden + [out_act], loss_name, lr_v, params, seed, desc, weights_from,
                   {} if overridden else wf.get("expected", {}))


# ---------------------------------------------------------------- text
def _number(v, digits):
    v = float(v)
    return repr(v) if digits is None else f"{v:.{digits}g}"


def _fmt(x, digits):
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        return _number(a, digits)
    return np.array2string(a, separator=", ", max_line_width=110, threshold=a.size + 1,   # never "..."
                           formatter={"float_kind": lambda v: _number(v, digits)})


#: g'(z) of each activation, as a formula
DERIVATIVE_TEXT = {"identity": "1", "sigmoid": "a (1 - a)", "tanh": "1 - a^2", "relu": "[z > 0]",
                   "leaky_relu": "(1 if z > 0 else 0.01)", "gelu": "gelu'(z) (tanh form)",
                   "silu": "s(z) (1 + z (1 - s(z)))"}
#: each loss, as a formula
LOSS_TEXT = {"mse": "mean over all B n outputs of (a - y)^2",
             "half_sse": "mean over the B samples of 1/2 sum_j (a_j - y_j)^2",
             "cross_entropy": "softmax cross-entropy of the logits, mean over the batch",
             "binary_cross_entropy": "sigmoid binary cross-entropy of the logits, mean over all outputs",
             "poisson": "half the Poisson deviance at the rates e^z of the log-rates z, e^z - y - y (z - log y), "
                        "mean over all outputs"}
#: dL/da of the output layer, as a formula
LOSS_GRADIENT_TEXT = {"mse": "2 (a - y) / (B n)", "half_sse": "(a - y) / B",
                      "cross_entropy": "(softmax(z) - y) / B",
                      "binary_cross_entropy": "(sigmoid(z) - y) / (B n)", "poisson": "(e^z - y) / (B n)"}


def _class_labels(t: dict):
    """The trace's targets as a list of class indices, or None where they are rows of values."""
    if t["loss_name"] != "cross_entropy":
        return None
    y = t["target"]
    if isinstance(y, int):
        return [y]
    if isinstance(y, list) and y and all(isinstance(v, int) for v in y):
        return y
    return None


def trace_stages(t: dict, digits: int | None = None) -> list:
    """The trace as `(header, text)` stages: the problem, forward layer by layer, the loss, backward
    layer by layer (output first), the update, and (when the trace holds an example's published
    numbers) the comparison with them.  `digits` None prints every number in full (shortest
    round-trip form); an integer rounds to that many significant digits."""
    if digits is not None and (isinstance(digits, (bool, np.bool_)) or not isinstance(digits, (int, np.integer))
                               or digits < 1):
        raise ValueError(f"digits must be None (every digit) or a positive integer, got {digits!r}")
    stages = []
    L = len(t["forward"])

    def block(lines_and_values):
        out = []
        for prefix, x in lines_and_values:
            if x is None:
                out.append(prefix)
            else:
                # continuation rows of a matrix line up under its first row
                out.append(prefix + _fmt(x, digits).replace("\n", "\n" + " " * len(prefix)))
        return "\n".join(out)

    lead = [f"network {t['layer_sizes']}, activations {', '.join(t['activations'][:-1]) or '-'} (hidden) / "
            f"{t['activations'][-1]} (output), loss {t['loss_name']}, plain SGD at learning rate "
            f"{_number(t['lr'], digits)}; "
            f"one step of gpubp.MLP in float64 on the numpy backend, batch of {t['batch']}"]
    if t.get("description"):
        lead.insert(0, t["description"])
    if t.get("weights_from"):
        lead.append(f"weights: {t['weights_from']}")
    if t["batch"] > 1:
        lead.append(f"each row of x, y, z, a, dL/da, g'(z), delta and W^T delta is one of the {t['batch']} "
                    "samples (the formulas are written for one sample, z = W x + b); dW and db add up the "
                    f"samples' terms, and the loss's mean over the batch is already in delta (the 1/B)")
    labels = _class_labels(t)
    if labels is None:
        target = [("target y = ", t["target"])]
    else:           # class indices: the loss and its gradient take their one-hot rows
        n = t["layer_sizes"][-1]
        hot = [[int(j == c) for j in range(n)] for c in labels]
        target = [(f"target y = {t['target']} (a class index: y below is its one-hot row {hot[0]})"
                   if t["batch"] == 1 and not isinstance(t["target"], list) else
                   f"target y = {t['target']} (class indices: y below is their one-hot rows {hot})", None)]
    stages.append(("Problem", "\n".join(lead) + "\n" + block([("input  x = ", t["input"])] + target)))
    for fw in t["forward"]:
        l = fw["layer"]
        prev = "x" if l == 1 else f"a{l - 1}"
        stages.append((f"Forward, layer {l} ({fw['activation']}): z{l} = W{l} {prev} + b{l}, a{l} = g(z{l})",
                       block([(f"W{l} = ", fw["W"]), (f"b{l} = ", fw["b"]), (f"z{l} = ", fw["z"]),
                              (f"a{l} = ", fw["a"])])))
    stages.append((f"Loss ({t['loss_name']}: {LOSS_TEXT[t['loss_name']]})",
                   block([(f"output a{L} = ", t["output"]), ("loss = ", t["loss"])])))
    for bw in t["backward"]:
        l = bw["layer"]
        act = t["activations"][l - 1]
        prev = "x" if l == 1 else f"a{l - 1}"
        if l == L:
            src = f"dL/da{l} = {LOSS_GRADIENT_TEXT[t['loss_name']]} = "
            if t["loss_name"] in losses.FUSED_OUTPUT:
                grad = LOSS_GRADIENT_TEXT[t["loss_name"]]
                if labels is not None:
                    grad = grad.replace(" - y)", " - onehot(y))")
                outputs = losses.FUSED_OUTPUT[t["loss_name"]][1]
                src = f"dL/da{l} = dL/dz{l} (the output is the {outputs} z{l}) = {grad} = "
        else:
            src = f"dL/da{l} = W{l + 1}^T delta{l + 1} = "
        passes = "dL/dx (the input's gradient; no weights below)" if l == 1 else f"dL/da{l - 1}"
        stages.append((f"Backward, layer {l} ({act}): delta{l} = dL/dz{l} = dL/da{l} * g'(z{l})",
                       block([(src, bw["dL_da"]),
                              (f"g'(z{l}) = {DERIVATIVE_TEXT[act]} = ", bw["g_prime"]),
                              (f"delta{l} = dL/da{l} * g'(z{l}) = ", bw["delta"]),
                              (f"dW{l} = delta{l} {prev}^T = " if t["batch"] == 1 else
                               f"dW{l} = delta{l}^T {prev} (the sum over the batch of each sample's delta{l} "
                               f"{prev}^T) = ", bw["dW"]),
                              (f"db{l} = delta{l}{' summed over the batch' if t['batch'] > 1 else ''} = ", bw["db"]),
                              (f"W{l}^T delta{l} = {passes} = ", bw["W_T_delta"])])))
    lr = _number(t["lr"], digits)     # the rate the step used, to the digits of the other numbers
    rows = []
    for up in t["updated"]:
        l = up["layer"]
        rows += [(f"W{l} <- W{l} - {lr} dW{l} = ", up["W"]), (f"b{l} <- b{l} - {lr} db{l} = ", up["b"])]
    rows.append(("loss after the step = ", t["loss_after"]))
    rows.append(("loss before the step = ", t["loss"]))
    stages.append((f"Update (plain SGD): W <- W - {lr} dW, b <- b - {lr} db", block(rows)))
    exp = t.get("expected") or {}
    if exp:
        stages.append(("Against the example's published numbers", _compare_expected(t, exp)))
    return stages


def _compare_expected(t, exp) -> str:
    got = {"loss": t["loss"], "output": t["output"], "loss_after": t["loss_after"],
           "W_after": [u["W"] for u in t["updated"]], "b_after": [u["b"] for u in t["updated"]]}
    out = []
    for key, want in exp.items():
        if key not in got:
            continue
        have, prefix = list(_flat(got[key])), f"{key}: published "
        try:
            want_flat = [float(v) for v in _flat(want)]
        except (TypeError, ValueError):
            continue
        if len(want_flat) != len(have):      # not compared over the common part only
            out.append(f"{key}: published {len(want_flat)} number{'s' if len(want_flat) != 1 else ''}, "
                       f"the trace has {len(have)}")
            continue
        diff = max((abs(float(a) - b) for a, b in zip(have, want_flat)), default=0.0)
        shown = "\n".join(line.rstrip() for line in _fmt(want, None).replace("\n", "\n" + " " * len(prefix))
                          .split("\n"))       # continuation rows line up under the first
        out.append(f"{prefix}{shown}; largest difference {diff:.1e}")
    return "\n".join(out) or "(nothing comparable)"


def _flat(x):
    if isinstance(x, (list, tuple)):
        for v in x:
            yield from _flat(v)
    else:
        yield x


def format_trace(t: dict, digits: int | None = None, title: str = "") -> str:
    """The trace as text: every stage of `trace_stages` under its header."""
    out = [title] if title else []
    for header, text in trace_stages(t, digits):
        out.append(f"== {header}")
        out.append(text)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def print_stages(t: dict, digits: int | None = None, interactive: bool = False, write=print,
                 wait=input) -> int:
    """Print the trace one stage at a time.  `interactive`: wait for Enter (`wait`) between stages,
    stop at "q" or end of input.  Returns the number of stages printed."""
    stages = trace_stages(t, digits)
    for i, (header, text) in enumerate(stages, start=1):
        write(f"== stage {i}/{len(stages)}: {header}")
        write(text)
        if interactive and i < len(stages):
            try:
                answer = wait("-- Enter: next stage, q: quit -- ")
            except (EOFError, KeyboardInterrupt):
                write("")
                return i
            if answer.strip().lower().startswith("q"):
                return i
        else:
            write("")
    return len(stages)


__all__ = ["trace_step", "trace_json", "trace_stages", "format_trace", "print_stages", "make_problem",
           "load_example", "example_path", "read_weights_file", "parse_vector", "seeded_params", "check_params",
           "activation_derivative", "output_loss_gradient", "Problem", "EXAMPLES", "DEFAULT_EXAMPLE",
           "TRACE_FIELDS", "BACKWARD_FIELDS"]
