"""`gpubp explain`: one traced step of a real MLP, to the published numbers of its examples."""

import io
import json
import math
import re

import numpy as np
import pytest

from support.cli import run, strict_json, usage_error

from gpubp import explain

# the 2-2-1 example's initial weights, input, target, and the output and loss published with them
W1 = [[-0.7043063085678544, 1.0375733570462549], [-0.25599680372820793, 0.08681539438901478]]
B1 = [0.01, 0.01]
W2 = [[-1.2451748644854759, -0.9366147282565256]]
B2 = [0.01]
X, Y = [0.5, 0.8], [1.0]
PUBLISHED_OUTPUT = 0.22820603151345778
PUBLISHED_LOSS = 0.5956659297922058
# the classic 2-2-2 worked example's published numbers
CLASSIC_LOSS = "0.298371109"
CLASSIC_W2 = ("0.35891648", "0.408666186", "0.511301270", "0.561370121")
CLASSIC_W1 = ("0.149780716", "0.19956143", "0.24975114", "0.29950229")








def agrees(value, published: str) -> bool:
    decimals = len(published.split(".")[1])
    return round(float(value), decimals) == round(float(published), decimals)


def page_step(lr):
    """The 2-2-1 example's step as the visualiser computes it, written out in plain float64 numpy:
    mse = (1/k) sum (a - y)^2, output delta = (2/k)(a - y) f'(z), hidden delta = f'(z) (W^T delta),
    dW = delta a_prev^T, db = delta, w -= lr dW, b -= lr db."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    dsig = lambda z: sig(z) * (1.0 - sig(z))  # noqa: E731
    W = [np.array(W1), np.array(W2)]
    b = [np.array(B1), np.array(B2)]
    x, y = np.array(X), np.array(Y)
    z1 = W[0] @ x + b[0]
    a1 = sig(z1)
    z2 = W[1] @ a1 + b[1]
    a2 = sig(z2)
    k = a2.size
    loss = np.sum((a2 - y) ** 2) / k
    dL_da2 = 2.0 / k * (a2 - y)
    d2 = dL_da2 * dsig(z2)
    dL_da1 = W[1].T @ d2
    d1 = dL_da1 * dsig(z1)
    dW2, dW1 = np.outer(d2, a1), np.outer(d1, x)
    nW = [W[0] - lr * dW1, W[1] - lr * dW2]
    nb = [b[0] - lr * d1, b[1] - lr * d2]
    a2_after = sig(nW[1] @ sig(nW[0] @ x + nb[0]) + nb[1])
    return {"z1": z1, "a1": a1, "z2": z2, "a2": a2, "loss": loss, "dL_da2": dL_da2, "g2": dsig(z2),
            "delta2": d2, "dL_da1": dL_da1, "g1": dsig(z1), "delta1": d1, "dW2": dW2, "dW1": dW1,
            "db2": d2, "db1": d1, "dx": W[0].T @ d1, "W1_after": nW[0], "b1_after": nb[0],
            "W2_after": nW[1], "b2_after": nb[1], "loss_after": np.sum((a2_after - y) ** 2) / k}


def close(got, want):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- the 2-2-1 example and its lr 0.5 variant
@pytest.mark.parametrize("argv, lr", [((), 0.1), (("--example", "sigmoid-2-2-1"), 0.1),
                                      (("--example", "sigmoid-2-2-1-lr0.5"), 0.5),
                                      (("--lr", "0.5"), 0.5)])
def test_the_2_2_1_example_matches_the_page_to_the_last_digits(capsys, argv, lr):
    rc, out, _ = run(capsys, "explain", "--json", *argv)
    assert rc == 0
    t = strict_json(out)
    assert t["layer_sizes"] == [2, 2, 1] and t["activations"] == ["sigmoid", "sigmoid"]
    assert t["loss_name"] == "mse" and t["lr"] == lr and t["input"] == X and t["target"] == Y
    assert t["forward"][0]["W"] == W1 and t["forward"][0]["b"] == B1
    assert t["forward"][1]["W"] == W2 and t["forward"][1]["b"] == B2
    # the two numbers the page prints, to ~1e-12 (in fact to the last bit)
    assert t["output"][0] == pytest.approx(PUBLISHED_OUTPUT, rel=1e-12, abs=0)
    assert t["loss"] == pytest.approx(PUBLISHED_LOSS, rel=1e-12, abs=0)
    # everything else against the page's formulas, computed here independently of gpubp
    p = page_step(lr)
    f1, f2 = t["forward"]
    close(f1["z"], p["z1"]); close(f1["a"], p["a1"]); close(f2["z"], p["z2"]); close(f2["a"], p["a2"])
    close(t["loss"], p["loss"])
    b2, b1 = t["backward"]
    assert (b2["layer"], b1["layer"]) == (2, 1)
    for key, l, bw in (("2", 2, b2), ("1", 1, b1)):
        close(bw["dL_da"], p["dL_da" + key])
        close(bw["g_prime"], p["g" + key])
        close(bw["delta"], p["delta" + key])
        close(bw["dW"], p["dW" + key])
        close(bw["db"], p["db" + key])
    close(b2["W_T_delta"], p["dL_da1"])
    close(b1["W_T_delta"], p["dx"])
    u1, u2 = t["updated"]
    close(u1["W"], p["W1_after"]); close(u1["b"], p["b1_after"])
    close(u2["W"], p["W2_after"]); close(u2["b"], p["b2_after"])
    close(t["loss_after"], p["loss_after"])
    assert t["loss_after"] < t["loss"]


def test_the_lr_0_5_example_has_the_same_gradients_and_a_five_times_longer_step(capsys):
    t1 = strict_json(run(capsys, "explain", "--json")[1])
    t5 = strict_json(run(capsys, "explain", "--json", "--example", "sigmoid-2-2-1-lr0.5")[1])
    for a, b in zip(t1["backward"], t5["backward"]):
        assert a["dW"] == b["dW"] and a["db"] == b["db"]
    for l, (u1, u5) in enumerate(zip(t1["updated"], t5["updated"])):
        W0 = np.array(t1["forward"][l]["W"])
        close(np.array(u5["W"]) - W0, 5 * (np.array(u1["W"]) - W0))
    assert t5["loss_after"] < t1["loss_after"] < t1["loss"]     # the longer step helps here
    assert "higher learning rate" in t5["description"]


def test_the_text_prints_the_page_numbers_in_full(capsys):
    rc, out, _ = run(capsys, "explain")
    assert rc == 0
    assert f"a2 = [{PUBLISHED_OUTPUT!r}]" in out and f"loss = {PUBLISHED_LOSS!r}" in out
    p = page_step(0.1)
    for s in ("== Forward, layer 1 (sigmoid)", "== Forward, layer 2 (sigmoid)", "== Loss (mse",
              "== Backward, layer 2 (sigmoid)", "== Backward, layer 1 (sigmoid)", "== Update (plain SGD)",
              "dL/da2 = 2 (a - y) / (B n) = ", "g'(z2) = a (1 - a) = ", "dL/da1 = W2^T delta2 = ",
              "delta1 = dL/da1 * g'(z1) = ", "dW1 = delta1 x^T = ", "db2 = delta2 = ",
              f"b2 <- b2 - 0.1 db2 = [{float(p['b2_after'][0])!r}]", "loss after the step = ",
              "published 0.5956659297922058; largest difference 0.0e+00", "sigmoid_2_2_1.json"):
        assert s in out, s
    assert out.index("Forward, layer 2") < out.index("== Loss") < out.index("Backward, layer 2") \
        < out.index("Backward, layer 1") < out.index("== Update")
    rc, short, _ = run(capsys, "explain", "--digits", "4")
    assert "a2 = [0.2282]" in short and "loss = 0.5957" in short


def printed_values(text):
    """`{label: value}` of every "label = value" line of a trace's text (a matrix's continuation rows
    joined to its first), the label being all that precedes the last " = " (the formula included);
    the target line and the comparison with published numbers are left out."""
    text = text.split("== Against")[0]
    lines, out = text.splitlines(), {}
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if " = " not in line or line.startswith(("==", "target y = ")):
            continue
        label, value = line.rsplit(" = ", 1)
        while value.count("[") > value.count("]"):        # a matrix's further rows
            value += lines[i].strip()
            i += 1
        assert label.strip() not in out, f"{label!r} printed twice"
        out[label.strip()] = json.loads(value)
    return out


def text_headers(text):
    return [line[3:] for line in text.splitlines() if line.startswith("== ")]


def assert_printed(text, want, digits=None):
    """Every "label = value" line of `text` is one of `want`'s, each printed once, with `want`'s value
    (to float64 rounding), or that value rounded to `digits` significant digits."""
    got = printed_values(text)
    assert list(got) == list(want)
    for label, value in want.items():
        value = np.asarray(value, np.float64)
        if digits is None:
            np.testing.assert_allclose(np.asarray(got[label], np.float64), value, rtol=1e-12, atol=1e-15,
                                       err_msg=label)
        else:
            rounded = [float(f"{v:.{digits}g}") for v in np.ravel(value)]
            assert np.ravel(np.asarray(got[label], np.float64)).tolist() == rounded, label


def test_every_number_the_text_prints_is_the_pages(capsys):
    """Each number of the default example's text (not its JSON), under its formula, against the page's
    formulas computed here with plain numpy; every line is there once and in order, and `--digits 4`
    rounds each to 4 significant digits of the same value."""
    p = page_step(0.1)
    want = {"input  x": X, "W1": W1, "b1": B1, "z1": p["z1"], "a1": p["a1"], "W2": W2, "b2": B2,
            "z2": p["z2"], "a2": p["a2"], "output a2": p["a2"], "loss": p["loss"],
            "dL/da2 = 2 (a - y) / (B n)": p["dL_da2"], "g'(z2) = a (1 - a)": p["g2"],
            "delta2 = dL/da2 * g'(z2)": p["delta2"], "dW2 = delta2 a1^T": p["dW2"], "db2 = delta2": p["db2"],
            "W2^T delta2 = dL/da1": p["dL_da1"],
            "dL/da1 = W2^T delta2": p["dL_da1"], "g'(z1) = a (1 - a)": p["g1"],
            "delta1 = dL/da1 * g'(z1)": p["delta1"], "dW1 = delta1 x^T": p["dW1"], "db1 = delta1": p["db1"],
            "W1^T delta1 = dL/dx (the input's gradient; no weights below)": p["dx"],
            "W1 <- W1 - 0.1 dW1": p["W1_after"], "b1 <- b1 - 0.1 db1": p["b1_after"],
            "W2 <- W2 - 0.1 dW2": p["W2_after"], "b2 <- b2 - 0.1 db2": p["b2_after"],
            "loss after the step": p["loss_after"], "loss before the step": p["loss"]}
    rc, out, _ = run(capsys, "explain")
    assert rc == 0
    assert_printed(out, want)
    assert "target y = [1.0]" in out.splitlines()
    assert text_headers(out) == [
        "Problem", "Forward, layer 1 (sigmoid): z1 = W1 x + b1, a1 = g(z1)",
        "Forward, layer 2 (sigmoid): z2 = W2 a1 + b2, a2 = g(z2)", "Loss (mse: mean over all B n outputs of (a - y)^2)",
        "Backward, layer 2 (sigmoid): delta2 = dL/dz2 = dL/da2 * g'(z2)",
        "Backward, layer 1 (sigmoid): delta1 = dL/dz1 = dL/da1 * g'(z1)",
        "Update (plain SGD): W <- W - 0.1 dW, b <- b - 0.1 db", "Against the example's published numbers"]
    # the example's description leads the problem, as the weights file gives it
    description = json.loads(explain._example_text("sigmoid-2-2-1"))["description"]
    assert out.splitlines()[1] == description
    rc, short, _ = run(capsys, "explain", "--digits", "4")
    assert_printed(short, want, digits=4)
    # one significant digit is a positive number of digits too
    assert_printed(explain.format_trace(explain.trace_step(**explain.load_example("sigmoid-2-2-1").trace_args()),
                                        digits=1), want, digits=1)


def test_every_number_the_text_prints_for_three_mixed_layers_and_a_class_label():
    """A 2-3-2-3 network (tanh, relu, logits), cross_entropy on a class index: each printed number under
    its formula against the step written out here in numpy (softmax, one-hot row, relu's [z > 0] with one
    unit off); the one-hot row is as long as the output layer."""
    W = [np.array([[0.5, -0.3], [0.8, 0.2], [-0.6, 0.9]]), np.array([[0.7, -0.4, 0.3], [-0.5, 0.6, -0.8]]),
         np.array([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.4]])]
    b = [np.array([0.1, -0.2, 0.05]), np.array([0.02, -0.4]), np.array([0.0, 0.1, -0.1])]
    x, label, lr = np.array([0.4, -0.9]), 2, 0.25
    z1 = W[0] @ x + b[0]; a1 = np.tanh(z1)
    z2 = W[1] @ a1 + b[1]; a2 = np.maximum(z2, 0.0)
    z3 = W[2] @ a2 + b[2]
    assert z2[0] > 0 > z2[1]
    softmax = np.exp(z3 - z3.max()) / np.exp(z3 - z3.max()).sum()
    loss = -np.log(softmax[label])
    d3 = softmax - np.eye(3)[label]
    g2, g1 = (z2 > 0).astype(float), 1 - a1 ** 2
    d2 = (W[2].T @ d3) * g2
    d1 = (W[1].T @ d2) * g1
    dW = [np.outer(d1, x), np.outer(d2, a1), np.outer(d3, a2)]
    db = [d1, d2, d3]
    new_W = [w - lr * g for w, g in zip(W, dW)]
    new_b = [c - lr * g for c, g in zip(b, db)]
    z = np.tanh(new_W[0] @ x + new_b[0])
    z = new_W[2] @ np.maximum(new_W[1] @ z + new_b[1], 0.0) + new_b[2]
    loss_after = np.log(np.exp(z).sum()) - z[label]
    want = {"input  x": x, "W1": W[0], "b1": b[0], "z1": z1, "a1": a1, "W2": W[1], "b2": b[1], "z2": z2, "a2": a2,
            "W3": W[2], "b3": b[2], "z3": z3, "a3": z3, "output a3": z3, "loss": loss,
            "dL/da3 = dL/dz3 (the output is the logits z3) = (softmax(z) - onehot(y)) / B": d3,
            "g'(z3) = 1": np.ones(3), "delta3 = dL/da3 * g'(z3)": d3, "dW3 = delta3 a2^T": dW[2],
            "db3 = delta3": d3, "W3^T delta3 = dL/da2": W[2].T @ d3,
            "dL/da2 = W3^T delta3": W[2].T @ d3, "g'(z2) = [z > 0]": g2, "delta2 = dL/da2 * g'(z2)": d2,
            "dW2 = delta2 a1^T": dW[1], "db2 = delta2": d2, "W2^T delta2 = dL/da1": W[1].T @ d2,
            "dL/da1 = W2^T delta2": W[1].T @ d2, "g'(z1) = 1 - a^2": g1, "delta1 = dL/da1 * g'(z1)": d1,
            "dW1 = delta1 x^T": dW[0], "db1 = delta1": d1,
            "W1^T delta1 = dL/dx (the input's gradient; no weights below)": W[0].T @ d1}
    for l in (1, 2, 3):
        want[f"W{l} <- W{l} - 0.25 dW{l}"] = new_W[l - 1]
        want[f"b{l} <- b{l} - 0.25 db{l}"] = new_b[l - 1]
    want.update({"loss after the step": loss_after, "loss before the step": loss})
    t = explain.trace_step(list(zip(W, b)), x, label, ["tanh", "relu", "identity"], "cross_entropy", lr)
    text = explain.format_trace(t)
    assert_printed(text, want)
    assert "target y = 2 (a class index: y below is its one-hot row [0, 0, 1])" in text.splitlines()
    assert text_headers(text) == [
        "Problem", "Forward, layer 1 (tanh): z1 = W1 x + b1, a1 = g(z1)",
        "Forward, layer 2 (relu): z2 = W2 a1 + b2, a2 = g(z2)",
        "Forward, layer 3 (identity): z3 = W3 a2 + b3, a3 = g(z3)",
        "Loss (cross_entropy: softmax cross-entropy of the logits, mean over the batch)",
        "Backward, layer 3 (identity): delta3 = dL/dz3 = dL/da3 * g'(z3)",
        "Backward, layer 2 (relu): delta2 = dL/dz2 = dL/da2 * g'(z2)",
        "Backward, layer 1 (tanh): delta1 = dL/dz1 = dL/da1 * g'(z1)",
        "Update (plain SGD): W <- W - 0.25 dW, b <- b - 0.25 db"]
    assert "activations tanh, relu (hidden) / identity (output), loss cross_entropy" in text
    # the same sample as a batch of one row: its targets are a list of class indices, printed as such
    t = explain.trace_step(list(zip(W, b)), [x], [label], ["tanh", "relu", "identity"], "cross_entropy", lr)
    text = explain.format_trace(t)
    assert "target y = [2] (class indices: y below is their one-hot rows [[0, 0, 1]])" in text.splitlines()
    per_sample = re.compile(r"(input|[za]\d|output|dL/da|g'|delta|W\d\^T)")       # one row per sample
    assert_printed(text, {k: np.atleast_2d(v) if per_sample.match(k) else v for k, v in want.items()})

def test_mse_is_the_loss_that_reproduces_the_page():
    # half_sse halves the loss and the gradients: it would not reproduce the page
    prob = explain.load_example("sigmoid-2-2-1")
    args = prob.trace_args()
    t_mse = explain.trace_step(**args)
    t_half = explain.trace_step(**{**args, "loss": "half_sse"})
    assert t_mse["loss"] == pytest.approx(PUBLISHED_LOSS, rel=1e-15)
    assert t_half["loss"] == pytest.approx(PUBLISHED_LOSS / 2, rel=1e-15)
    close(t_half["backward"][0]["delta"], np.array(t_mse["backward"][0]["delta"]) / 2)


def test_the_gradients_agree_with_torch_autograd():
    torch = pytest.importorskip("torch")
    t = explain.trace_step(**explain.load_example("sigmoid-2-2-1").trace_args())
    Ws = [torch.tensor(W, dtype=torch.float64, requires_grad=True) for W in (W1, W2)]
    bs = [torch.tensor(b, dtype=torch.float64, requires_grad=True) for b in (B1, B2)]
    a = torch.tensor(X, dtype=torch.float64)
    for W, b in zip(Ws, bs):
        a = torch.sigmoid(W @ a + b)
    loss = torch.nn.functional.mse_loss(a, torch.tensor(Y, dtype=torch.float64))
    loss.backward()
    assert t["loss"] == pytest.approx(loss.item(), rel=1e-14)
    for bw in t["backward"]:
        l = bw["layer"] - 1
        close(bw["dW"], Ws[l].grad.numpy())
        close(bw["db"], bs[l].grad.numpy())


# ---------------------------------------------------------------- any network: the trace is the MLP's step
@pytest.mark.parametrize("activation", ["tanh", "relu", "leaky_relu", "gelu", "silu", "identity"])
def test_every_intermediate_is_consistent_with_the_networks_step(activation):
    rng = np.random.default_rng(3)
    sizes = [3, 4, 5, 2]
    params = [(rng.normal(size=(n, m)), rng.normal(size=n)) for m, n in zip(sizes[:-1], sizes[1:])]
    X = rng.normal(size=(2, 3))
    Y = rng.normal(size=(2, 2))
    t = explain.trace_step(params, X, Y, [activation, activation, "tanh"], "mse", 0.05)
    # the network's own loss and gradients
    import gpubp
    net = gpubp.MLP(sizes, activation=activation, output_activation="tanh", loss="mse", backend="numpy",
                    dtype="float64")
    net.set_params(params)
    loss, grads = net.loss_and_grads(X, Y)
    assert t["loss"] == loss
    A = [X] + [np.array(f["a"]) for f in t["forward"]]
    bw = {b["layer"]: b for b in t["backward"]}
    for l in range(1, 4):
        b = bw[l]
        assert np.array_equal(b["dW"], grads[l - 1][0]) and np.array_equal(b["db"], grads[l - 1][1])
        close(np.multiply(b["dL_da"], b["g_prime"]), b["delta"])                  # delta = dL/da * g'(z)
        close(np.array(b["delta"]).T @ A[l - 1], b["dW"])                         # dW = delta a_prev^T
        close(np.sum(b["delta"], axis=0), b["db"])
        close(np.array(b["delta"]) @ params[l - 1][0], b["W_T_delta"])
        if l > 1:
            assert b["W_T_delta"] == bw[l - 1]["dL_da"]
        W, bias = params[l - 1]
        close(t["updated"][l - 1]["W"], W - 0.05 * grads[l - 1][0])
        close(t["updated"][l - 1]["b"], bias - 0.05 * grads[l - 1][1])
        close(t["forward"][l - 1]["z"], A[l - 1] @ W.T + bias)
    # g'(z) against a central difference of the activation
    z = np.array(t["forward"][0]["z"])
    h = 1e-6
    g = lambda v: explain_activation(activation, v)  # noqa: E731
    close_fd = (g(z + h) - g(z - h)) / (2 * h)
    np.testing.assert_allclose(bw[1]["g_prime"], close_fd, rtol=1e-6, atol=1e-8)
    net.set_params(t["updated"] and [(np.array(u["W"]), np.array(u["b"])) for u in t["updated"]])
    assert t["loss_after"] == pytest.approx(net.loss_and_grads(X, Y)[0], rel=1e-15)


def explain_activation(name, z):
    from gpubp.backends.numpy_backend import activation_forward
    return activation_forward(name, np.array(z, dtype=np.float64), np.empty_like(z, dtype=np.float64))


def test_classic_example_reproduces_the_published_numbers(capsys):
    rc, out, _ = run(capsys, "explain", "--example", "classic", "--json")
    assert rc == 0
    t = strict_json(out)
    assert t["loss_name"] == "half_sse" and t["lr"] == 0.5 and t["activations"] == ["sigmoid", "sigmoid"]
    assert agrees(t["loss"], CLASSIC_LOSS)
    W2u, W1u = np.ravel(t["updated"][1]["W"]), np.ravel(t["updated"][0]["W"])
    assert all(agrees(v, p) for v, p in zip(W2u, CLASSIC_W2)), W2u
    assert all(agrees(v, p) for v, p in zip(W1u, CLASSIC_W1)), W1u
    rc, text, _ = run(capsys, "explain", "--example", "classic", "--digits", "10")
    assert "0.2983711088" in text and "0.3589164797" in text and "0.1497807161" in text
    assert "dL/da2 = (a - y) / B = " in text


def test_json_is_strict_and_complete(capsys):
    rc, out, _ = run(capsys, "explain", "--json")
    t = strict_json(out)
    assert set(explain.TRACE_FIELDS) <= set(t)
    assert {"weights_from", "description", "expected"} <= set(t)
    assert t["expected"] == {"output": [PUBLISHED_OUTPUT], "loss": PUBLISHED_LOSS}
    for b in t["backward"]:
        assert set(b) == set(explain.BACKWARD_FIELDS)
    # a non-finite number (a diverging step) becomes a string, never a bare NaN or Infinity
    text = explain.trace_json({"loss": float("inf"), "a": [1.0, float("nan")], "n": 3})
    assert strict_json(text) == {"loss": "Infinity", "a": [1.0, "NaN"], "n": 3}


def test_overriding_the_example_drops_its_published_numbers(capsys):
    t = strict_json(run(capsys, "explain", "--json", "--activation", "tanh")[1])
    assert t["activations"] == ["tanh", "sigmoid"] and "expected" not in t
    assert t["forward"][0]["W"] == W1 and t["description"].startswith("changed from")
    # a seed or other layers: the weights are MLP(seed=...)'s initialisation
    import gpubp
    params = gpubp.MLP([2, 2, 1], activation="sigmoid", output_activation="sigmoid", loss="mse",
                       backend="numpy", dtype="float64", seed=5).get_params()
    t = strict_json(run(capsys, "explain", "--json", "--seed", "5")[1])
    assert np.array_equal(t["forward"][0]["W"], params[0][0]) and "seed=5" in t["weights_from"]


@pytest.mark.parametrize("source", [("--example", "classic"), ("--weights", None)])
def test_seed_replaces_the_weights_of_an_example_or_file(capsys, tmp_path, source):
    """`--seed` takes MLP(seed=...)'s weights "instead of the example's": with --example or --weights it
    was silently ignored (the example's weights were traced, under a "changed from" description)."""
    import gpubp
    if source[1] is None:
        wf = tmp_path / "w.json"
        wf.write_text(explain._example_text("classic"))
        source = ("--weights", str(wf))
    t = strict_json(run(capsys, "explain", *source, "--seed", "5", "--json")[1])
    params = gpubp.MLP([2, 2, 2], activation="sigmoid", output_activation="sigmoid", loss="half_sse",
                       backend="numpy", dtype="float64", seed=5).get_params()
    for f, (W, b) in zip(t["forward"], params):
        assert np.array_equal(f["W"], W) and np.array_equal(f["b"], b)
    assert "seed=5" in t["weights_from"] and "expected" not in t
    # everything else is the example's
    assert t["loss_name"] == "half_sse" and t["lr"] == 0.5 and t["input"] == [0.05, 0.1]
    assert t["target"] == [0.01, 0.99] and t["activations"] == ["sigmoid", "sigmoid"]
    # and the weights no longer fix the sizes
    t = strict_json(run(capsys, "explain", *source, "--seed", "5", "--layers", "2,3,2", "--json")[1])
    assert t["layer_sizes"] == [2, 3, 2] and np.shape(t["forward"][0]["W"]) == (3, 2)


# ---------------------------------------------------------------- --step and --plot
STAGES = ["Problem", "Forward, layer 1", "Forward, layer 2", "Loss", "Backward, layer 2", "Backward, layer 1",
          "Update", "Against the example's published numbers"]


def stage_headers(out):
    # (a prompt answered from a file leaves no newline: a header may follow it on its line)
    return re.findall(r"== stage \d+/\d+: (.*)", out)


def test_step_prints_every_stage_with_headers_when_input_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    rc, out, _ = run(capsys, "explain", "--step")
    assert rc == 0
    headers = stage_headers(out)
    assert len(headers) == len(STAGES) and all(h.startswith(s) for h, s in zip(headers, STAGES)), headers
    assert all(f"== stage {i}/{len(STAGES)}: " in out for i in range(1, len(STAGES) + 1))
    assert "Enter" not in out
    assert f"a2 = [{PUBLISHED_OUTPUT!r}]" in out


def test_step_with_stdin_closed_prints_every_stage(capsys, monkeypatch):
    """`gpubp explain --step <&-`: Python's sys.stdin is None, which ended in an AttributeError."""
    monkeypatch.setattr("sys.stdin", None)
    rc, out, _ = run(capsys, "explain", "--step")
    assert rc == 0 and len(stage_headers(out)) == len(STAGES) and "Enter" not in out


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_step_waits_for_enter_between_stages_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeTerminal("\n" * 20))
    rc, out, _ = run(capsys, "explain", "--step")
    assert rc == 0 and out.count("Enter: next stage") == len(STAGES) - 1
    # each prompt comes after a stage's numbers and before the next header
    assert out.index("target y = ") < out.index("Enter: next stage") < out.index("== stage 2/")
    monkeypatch.setattr("sys.stdin", FakeTerminal("\n\nq\n"))
    rc, out, _ = run(capsys, "explain", "--step")
    assert rc == 0 and stage_headers(out)[-1].startswith("Forward, layer 2") and "Backward" not in out
    monkeypatch.setattr("sys.stdin", FakeTerminal("\n"))          # input ends: stop quietly
    rc, out, _ = run(capsys, "explain", "--step")
    assert rc == 0 and len(stage_headers(out)) == 2


def test_print_stages_calls_wait_between_stages_only():
    t = explain.trace_step(**explain.load_example("classic").trace_args())
    printed, prompts = [], []
    n = explain.print_stages(t, interactive=True, write=printed.append, wait=lambda p: prompts.append(p) or "")
    assert n == 7 and len(prompts) == 6          # no published numbers in a bare trace: 7 stages


def test_plot_writes_a_png_of_the_network(capsys, tmp_path):
    path = tmp_path / "net.png"
    rc, out, _ = run(capsys, "explain", "--plot", str(path))
    assert rc == 0 and f"network drawn to {path}" in out
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image
    img = matplotlib.image.imread(str(path))
    assert img.shape[0] > 300 and img.shape[1] > 600
    # a batch, more edges than are labelled, cross_entropy: still drawn
    path2 = tmp_path / "big.png"
    rc, _, _ = run(capsys, "explain", "--layers", "3,4,3", "--input", "0.1,0.2,0.3;-1,0,1", "--target", "2;0",
                   "--loss", "cross_entropy", "--activation", "relu", "--plot", str(path2), "--json")
    assert rc == 0 and path2.read_bytes()[:4] == b"\x89PNG"
    assert "does not exist" in usage_error(capsys, "explain", "--plot", str(tmp_path / "no" / "x.png"))


def test_plot_of_one_sample_given_as_a_row_draws_it(capsys, tmp_path):
    # a weights file's "input": [[0.5, 0.1]] traces a batch of 1 whose vectors are rows: plot_trace took
    # row [0.5, 0.1] for the first unit's value (the first sample only for batch > 1): TypeError from float()
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": [[0.5, 0.2]], "b": [0.1]}], "input": [[0.5, 0.1]], "target": [[1]]}))
    path = tmp_path / "row.png"
    rc, out, _ = run(capsys, "explain", "--weights", str(wf), "--plot", str(path), "--json")
    assert rc == 0 and strict_json(out)["batch"] == 1 and path.read_bytes()[:4] == b"\x89PNG"


def _without_matplotlib(monkeypatch):
    import sys
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    for name in ("matplotlib", "matplotlib.patches", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)      # import raises ImportError


def test_plot_without_matplotlib_names_the_extra(capsys, tmp_path, monkeypatch):
    """Without matplotlib, `explain --plot` printed the whole trace and then died in a traceback
    (plot_trace imported matplotlib.patches before checking for the extra)."""
    from gpubp.optional import MissingExtraError
    from gpubp.plotting import plot_trace

    t = explain.trace_step(**explain.load_example("classic").trace_args())
    _without_matplotlib(monkeypatch)
    with pytest.raises(MissingExtraError, match=r'gpubp\[plot\]'):
        plot_trace(t, tmp_path / "net.png")
    rc, out, err = run(capsys, "explain", "--plot", str(tmp_path / "net.png"))
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.strip() == 'gpubp explain: --plot needs matplotlib, which is not installed: pip install "gpubp[plot]"'
    assert not (tmp_path / "net.png").exists()


# ---------------------------------------------------------------- options and errors
def test_weights_file_and_overrides(capsys, tmp_path):
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": [[0.15, 0.20], [0.25, 0.30]], "b": [0.35, 0.35]},
                                         {"W": [[0.40, 0.45], [0.50, 0.55]], "b": [0.60, 0.60]}]}))
    rc, out, _ = run(capsys, "explain", "--weights", str(wf), "--input", "0.05", "0.10", "--target", "0.01,0.99",
                     "--activation", "sigmoid", "--loss", "half_sse", "--lr", "0.5", "--json")
    assert rc == 0
    t = strict_json(out)
    assert agrees(t["loss"], CLASSIC_LOSS) and agrees(t["updated"][1]["W"][0][0], CLASSIC_W2[0])
    rc, out, _ = run(capsys, "explain", "--layers", "3,4,3", "--input", "0.1,0.2,0.3;-1,0,1", "--target", "2;0",
                     "--loss", "cross_entropy", "--activation", "relu", "--json")
    t = strict_json(out)
    assert rc == 0 and t["batch"] == 2 and t["activations"] == ["relu", "identity"] and t["target"] == [2, 0]
    assert np.shape(t["forward"][1]["z"]) == (2, 3) and np.shape(t["backward"][0]["delta"]) == (2, 3)
    # logits: dL/da of the output is its delta
    assert t["backward"][0]["dL_da"] == t["backward"][0]["delta"]


def test_the_text_of_a_batch_writes_dW_with_the_spec_transpose(capsys):
    """For a batch, delta and a_prev hold one row per sample: dW = delta^T a_prev (docs/spec.md), the sum of
    the samples' outer products; the text once wrote "delta1 x^T", a (B, B) product, for the (n, m) dW."""
    argv = ["explain", "--layers", "3,4,3", "--input", "0.1,0.2,0.3;-1,0,1", "--target", "2;0", "--loss",
            "cross_entropy", "--activation", "relu"]
    rc, text, _ = run(capsys, *argv)
    assert rc == 0
    assert "dW1 = delta1^T x (the sum over the batch of each sample's delta1 x^T) = " in text
    assert "dW2 = delta2^T a1 (the sum over the batch of each sample's delta2 a1^T) = " in text
    assert "dW1 = delta1 x^T" not in text and "dW2 = delta2 a1^T" not in text
    assert "each row of x, y, z, a, dL/da, g'(z), delta and W^T delta is one of the 2 samples" in text
    t = strict_json(run(capsys, *argv, "--json")[1])
    for l, bw in ((2, t["backward"][0]), (1, t["backward"][1])):
        a_prev = np.array(t["input"] if l == 1 else t["forward"][0]["a"])
        delta = np.array(bw["delta"])
        close(bw["dW"], delta.T @ a_prev)
        close(bw["dW"], sum(np.outer(delta[i], a_prev[i]) for i in range(2)))
    # one sample: the textbook outer product, and no note on rows
    rc, text, _ = run(capsys, "explain")
    assert "dW1 = delta1 x^T = " in text and "dW2 = delta2 a1^T = " in text and "each row" not in text


@pytest.mark.parametrize("argv, message", [
    (["--input", "1,2,3"], "network takes 2"),
    (["--weights", "/nonexistent.json"], "cannot read the weights file"),
    (["--example", "classic", "--layers", "2,3,2"], "does not match the weights"),
    (["--example", "nope"], "invalid choice"),
    (["--example", "classic", "--weights", "x.json"], "not allowed with"),
    (["--layers", "3,2,1"], "network takes 3"),
    (["--loss", "cross_entropy", "--output-activation", "sigmoid"], "must be 'identity'"),
    (["--input", "a,b"], "must be numbers"),
    (["--lr", "0"], "positive number"),
    (["--json", "--step"], "not allowed with"),
    (["--layers", f"2,{10**12},1", "--seed", "0"], "bytes of numpy memory are free"),
])
def test_bad_options_are_usage_errors(capsys, argv, message):
    assert message in usage_error(capsys, "explain", *argv)


def test_bad_weights_file(capsys, tmp_path):
    wf = tmp_path / "bad.json"
    wf.write_text('{"layers": [{"W": [[1, 2]], "b": [0]}, {"W": [[1, 2]], "b": [0]}]}')
    assert "takes 2 inputs but layer 1 has 1 outputs" in usage_error(capsys, "explain", "--weights", str(wf))
    wf.write_text("{not json")
    assert "not valid JSON" in usage_error(capsys, "explain", "--weights", str(wf))
    # an input or target that is no array of numbers is named (was numpy's "inhomogeneous shape" message)
    for key, value, what in (("target", [[1, 2], [3]], "the target"), ("input", [1, "x"], "the input"),
                             ("input", {"a": 1}, "the input")):
        d = {"layers": [{"W": [[1, 2]], "b": [0]}], "input": [1, 2], "target": [1], key: value}
        wf.write_text(json.dumps(d))
        err = usage_error(capsys, "explain", "--weights", str(wf))
        assert f"{what} must be a number, a list of numbers or a list of equally long rows" in err, err


def test_trace_step_rejects_bad_arguments():
    params = explain.load_example("classic").params
    with pytest.raises(ValueError, match="learning rate"):
        explain.trace_step(params, [0.05, 0.1], [0.01, 0.99], ["sigmoid", "sigmoid"], "half_sse", math.nan)
    with pytest.raises(ValueError, match="2 layers need 2 activations"):
        explain.trace_step(params, [0.05, 0.1], [0.01, 0.99], ["sigmoid"], "half_sse", 0.5)
    with pytest.raises(ValueError, match="NaN"):
        explain.trace_step(params, [0.05, math.nan], [0.01, 0.99], ["sigmoid", "sigmoid"], "half_sse", 0.5)


def test_no_example_names_a_document_outside_the_package():
    for name in explain.EXAMPLES:
        text = explain._example_text(name).lower()
        assert "seed" not in text and "../" not in text and "spec.md" not in text, name


# ---------------------------------------------------------------- docs/explain.md's momentum claim
def test_momentum_equals_the_texts_form_at_a_constant_rate_only():
    from gpubp.backends import get_backend
    from gpubp.optim import SGD

    rng = np.random.default_rng(4)
    grads = [rng.normal(size=5) for _ in range(6)]

    def gpubp_steps(rates):
        be, w, opt = get_backend("numpy"), np.zeros(5), SGD(rates[0], momentum=0.9)
        out = []
        for g, lr in zip(grads, rates):
            opt.lr = lr
            opt.step(be, w, g.copy())
            out.append(w.copy())
        return out

    def texts_steps(rates):                        # dw_t = -eps g_t + alpha dw_{t-1}
        w, dw, out = np.zeros(5), np.zeros(5), []
        for g, eps in zip(grads, rates):
            dw = -eps * g + 0.9 * dw
            w = w + dw
            out.append(w.copy())
        return out

    constant = [0.1] * 6
    for a, b in zip(gpubp_steps(constant), texts_steps(constant)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    cut = [0.1] * 3 + [0.01] * 3
    a, b = gpubp_steps(cut), texts_steps(cut)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-13)
    assert not np.allclose(a[3], b[3], rtol=1e-6)
    # gpubp: dw_t = -eta_t g_t + mu (eta_t / eta_{t-1}) dw_{t-1}
    np.testing.assert_allclose(a[3] - a[2], -0.01 * grads[3] + 0.9 * (0.01 / 0.1) * (a[2] - a[1]), rtol=1e-12)


# ---------------------------------------------------------------- every printed number against PyTorch autograd
def _torch_step(torch, params, X, Y, acts, loss):
    """The forward pass, loss and autograd gradients of the same network, written with torch alone."""
    F = torch.nn.functional
    act = {"identity": lambda z: z, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
           "leaky_relu": lambda z: F.leaky_relu(z, 0.01), "gelu": lambda z: F.gelu(z, approximate="tanh"),
           "silu": F.silu}
    Ws = [torch.tensor(W, dtype=torch.float64, requires_grad=True) for W, _ in params]
    bs = [torch.tensor(b, dtype=torch.float64, requires_grad=True) for _, b in params]
    a = torch.tensor(np.atleast_2d(X), dtype=torch.float64)
    zs, As = [], []
    for W, b, g in zip(Ws, bs, acts):
        z = a @ W.T + b
        a = act[g](z)
        z.retain_grad()
        a.retain_grad()
        zs.append(z)
        As.append(a)
    if loss in ("mse", "half_sse", "binary_cross_entropy", "poisson"):
        y = torch.tensor(np.reshape(Y, a.shape), dtype=torch.float64)
    if loss == "mse":
        L = F.mse_loss(a, y)
    elif loss == "half_sse":
        L = ((a - y) ** 2).sum() / (2 * a.shape[0])
    elif loss == "cross_entropy":
        L = F.cross_entropy(a, torch.tensor(np.atleast_1d(Y), dtype=torch.long))
    elif loss == "poisson":     # PyTorch's e^z - y z, plus y log y - y (of the targets alone): half the deviance
        L = F.poisson_nll_loss(a, y, log_input=True, full=False) + (torch.xlogy(y, y) - y).mean()
    else:
        L = F.binary_cross_entropy_with_logits(a, y)
    L.backward()
    gprime = []
    for z, g in zip(zs, acts):
        zz = z.detach().clone().requires_grad_(True)
        act[g](zz).sum().backward()
        gprime.append(zz.grad.numpy())
    return {"loss": L.item(), "W": Ws, "b": bs, "z": zs, "a": As, "g": gprime}


@pytest.mark.parametrize("loss", ["mse", "half_sse", "cross_entropy", "binary_cross_entropy", "poisson"])
def test_every_number_of_the_trace_against_torch_autograd(loss):
    """z, a, the loss, dL/da, g'(z), delta, dW, db, W^T delta and the SGD update of every layer, for every
    activation, on tiny and awkward networks (1 input and 1 output, batch 1, three layers, batches), each
    against PyTorch autograd on the same float64 numbers (the spec's convention for every loss)."""
    torch = pytest.importorskip("torch")
    from gpubp.activations import ACTIVATIONS

    rng = np.random.default_rng(11)
    lr = 0.3
    for sizes, B in (([1, 1], 1), ([1, 1, 1], 1), ([3, 4, 2], 1), ([3, 4, 5, 2], 3), ([2, 3, 1], 4)):
        if loss == "cross_entropy" and sizes[-1] == 1:
            continue
        for act in ACTIVATIONS:
            out = "identity" if loss in ("cross_entropy", "binary_cross_entropy", "poisson") else act
            acts = [act] * (len(sizes) - 2) + [out]
            params = [(rng.normal(size=(n, m)), rng.normal(size=n)) for m, n in zip(sizes[:-1], sizes[1:])]
            X = rng.normal(size=(B, sizes[0])) if B > 1 else rng.normal(size=sizes[0])
            shape = (B, sizes[-1]) if B > 1 else (sizes[-1],)
            if loss == "cross_entropy":
                Y = rng.integers(0, sizes[-1], size=B) if B > 1 else int(rng.integers(0, sizes[-1]))
            elif loss == "binary_cross_entropy":
                Y = rng.uniform(size=shape)
            elif loss == "poisson":
                Y = rng.poisson(2.0, size=shape).astype(float)
            else:
                Y = rng.normal(size=shape)
            t = explain.trace_step(params, X, Y, acts, loss, lr)
            r = _torch_step(torch, params, X, Y, acts, loss)
            case = (sizes, B, act, loss)

            def same(got, want, what):
                want = np.asarray(want.detach().numpy() if hasattr(want, "detach") else want, dtype=np.float64)
                got = np.asarray(got, dtype=np.float64)
                assert got.size == want.size, (what, case)
                np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-10, atol=1e-13,
                                           err_msg=f"{what} {case}")

            same(t["loss"], np.float64(r["loss"]), "loss")
            L = len(params)
            for f in t["forward"]:
                l = f["layer"]
                same(f["z"], r["z"][l - 1], f"z{l}")
                same(f["a"], r["a"][l - 1], f"a{l}")
            for bw in t["backward"]:
                l = bw["layer"]
                same(bw["delta"], r["z"][l - 1].grad, f"delta{l}")              # dL/dz
                same(bw["g_prime"], r["g"][l - 1], f"g'(z{l})")
                same(np.multiply(bw["dL_da"], bw["g_prime"]), r["z"][l - 1].grad, f"dL/da{l} * g'(z{l})")
                if not (l == L and loss in ("cross_entropy", "binary_cross_entropy", "poisson")):
                    same(bw["dL_da"], r["a"][l - 1].grad, f"dL/da{l}")          # the fused losses: dL/dz
                same(bw["dW"], r["W"][l - 1].grad, f"dW{l}")
                same(bw["db"], r["b"][l - 1].grad, f"db{l}")
                same(bw["W_T_delta"], r["z"][l - 1].grad @ r["W"][l - 1], f"W{l}^T delta{l}")
                if l > 1:
                    same(bw["W_T_delta"], r["a"][l - 2].grad, f"dL/da{l - 1}")
            for u in t["updated"]:
                l = u["layer"]
                same(u["W"], r["W"][l - 1] - lr * r["W"][l - 1].grad, f"W{l} after")
                same(u["b"], r["b"][l - 1] - lr * r["b"][l - 1].grad, f"b{l} after")


def test_a_weights_file_may_give_a_single_number_as_input_or_target(capsys, tmp_path):
    # "input": 0.5 for a one-input network and "target": 1 for a one-output one are one sample's value,
    # as --input 0.5 and --target 1 are (a scalar input was an IndexError, a scalar target refused)
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": [[0.5]], "b": [0.1]}], "input": 0.5, "target": 1,
                              "activation": "sigmoid"}))
    rc, out, _ = run(capsys, "explain", "--weights", str(wf), "--json")
    t = strict_json(out)
    rc2, out2, _ = run(capsys, "explain", "--weights", str(wf), "--input", "0.5", "--target", "1", "--json")
    assert rc == rc2 == 0 and t["input"] == [0.5] and t["target"] == [1.0]
    assert t["updated"] == strict_json(out2)["updated"]
    wf.write_text(json.dumps({"layers": [{"W": [[0.5, 0.2]], "b": [0.1]}], "input": [0.5, 0.1], "target": 1}))
    rc, out, _ = run(capsys, "explain", "--weights", str(wf), "--json")
    assert rc == 0 and strict_json(out)["target"] == [1.0]
    wf.write_text(json.dumps({"layers": [{"W": [[0.5, 0.2]], "b": [0.1]}], "input": 0.5, "target": 1}))
    assert "the input has 1 values per sample; the network takes 2" in usage_error(capsys, "explain", "--weights",
                                                                                   str(wf))


@pytest.mark.parametrize("argv, message", [
    # cross_entropy on the 2-2-1 example: its one output is the problem, not the target's dtype
    (["--loss", "cross_entropy"], "'cross_entropy' needs at least 2 outputs"),
    # one sample of two values for a network with one output: not "Y has shape (2, 1) ... X with 1 samples"
    (["--target", "1,2"], "the target has 2 values per sample; the network has 1 output"),
    (["--target", "1;0"], "the target gives 2 samples; the input 1"),
    (["--input", "0.5,0.8;0.1,0.2", "--target", "1;0;1"], "the target gives 3 samples; the input 2"),
    (["--layers", "2,3", "--loss", "cross_entropy", "--target", "0.5"],
     "a cross_entropy target is a class index (a whole number from 0 to 2) or 3 probabilities per sample"),
    (["--layers", "2,3", "--loss", "cross_entropy", "--target", "0.5,0.5"],
     "the target has 2 values per sample; the network has 3 outputs"),
    (["--layers", "2,3", "--loss", "cross_entropy", "--target", "3"], "class labels in the target must lie in [0, 3)"),
    # a whole number past int64 wrapped in the cast to a label: "got labels from -9223372036854775808"
    (["--layers", "2,3", "--loss", "cross_entropy", "--target", "1e20"],
     "class labels in the target must lie in [0, 3) for a network with 3 outputs; got labels from 1e+20 to 1e+20"),
    (["--loss", "binary_cross_entropy", "--output-activation", "identity", "--target", "2"],
     "the target: binary_cross_entropy targets must lie in [0, 1]"),
])
def test_a_target_that_does_not_fit_is_named_in_the_options_terms(capsys, argv, message):
    err = usage_error(capsys, "explain", *argv)
    assert message in err and "Y has shape" not in err and "Y.astype" not in err, err


def test_the_text_prints_the_learning_rate_the_step_used_in_full(capsys):
    # "{lr:g}" wrote 0.1234567 as 0.123457: the update read "W - 0.123457 dW" while the step used 0.1234567
    rc, text, _ = run(capsys, "explain", "--lr", "0.1234567")
    assert rc == 0 and "0.123457" not in text
    assert "plain SGD at learning rate 0.1234567;" in text
    assert "W <- W - 0.1234567 dW, b <- b - 0.1234567 db" in text and "W1 <- W1 - 0.1234567 dW1 = " in text
    rc, text, _ = run(capsys, "explain", "--lr", "0.1234567", "--digits", "3")    # rounded like every number
    assert "W <- W - 0.123 dW" in text and "learning rate 0.123;" in text


def test_the_text_never_elides_a_large_matrix():
    # numpy summarises arrays of more than 1000 entries ("[0.1, 0.2, ..., 0.9]"): a 40-30-2 network's
    # W1 and dW1 (1200 entries) lost 1164 of their numbers, which the text promises in full
    rng = np.random.default_rng(0)
    sizes = [40, 30, 2]
    params = explain.seeded_params(sizes, ["tanh", "identity"], "mse", 0)
    t = explain.trace_step(params, rng.normal(size=40), [0.5, -0.5], ["tanh", "identity"], "mse", 0.1)
    for digits in (None, 3):
        text = explain.format_trace(t, digits)
        assert "..." not in text
        W1 = text.split("W1 = ", 1)[1].split("\nb1 = ", 1)[0]
        assert W1.count(",") == 40 * 30 - 1


def test_a_class_label_target_reads_as_a_class_index_and_its_one_hot_row(capsys):
    # the label printed as "target y = 2.0" and the gradient as "(softmax(z) - y) / B", which reads
    # as softmax(z) - 2.0; the step subtracts the one-hot row of class 2
    base = ("explain", "--layers", "3,4,3", "--input", "0.1,0.2,0.3", "--loss", "cross_entropy")
    rc, text, _ = run(capsys, *base, "--target", "2")
    assert rc == 0 and "target y = 2.0" not in text
    assert "target y = 2 (a class index: y below is its one-hot row [0, 0, 1])" in text
    assert "= (softmax(z) - onehot(y)) / B = " in text and "(softmax(z) - y)" not in text
    delta = strict_json(run(capsys, *base, "--target", "2", "--json")[1])["backward"][0]["delta"]
    assert delta[2] < 0 < min(delta[0], delta[1])
    rc, text, _ = run(capsys, "explain", "--layers", "3,4,3", "--input", "0.1,0.2,0.3;0.3,0.2,0.1",
                      "--loss", "cross_entropy", "--target", "0;2")
    assert "target y = [0, 2] (class indices: y below is their one-hot rows [[1, 0, 0], [0, 0, 1]])" in text
    # probabilities are y itself
    rc, text, _ = run(capsys, *base, "--target", "0.25,0.25,0.5")
    assert "target y = [0.25, 0.25, 0.5]\n" in text and "= (softmax(z) - y) / B = " in text


@pytest.mark.parametrize("layers, n, message", [
    ("2,2,1", 2, "the network has 1 hidden layer: give 1 activation, got 2 (relu, tanh)"),
    ("2,3,3,1", 3, "the network has 2 hidden layers: give 1 activation for all or 2, one per hidden layer, "
                   "got 3 (relu, tanh, relu)"),
])
def test_too_many_hidden_activations_are_counted_in_plain_words(capsys, layers, n, message):
    # was "1 hidden layers need 1 or 1 activations, got 2"
    names = ",".join(["relu", "tanh", "relu"][:n])
    err = usage_error(capsys, "explain", "--layers", layers, "--activation", names)
    assert message in err, err


def test_the_comparison_with_published_numbers_lines_up_and_counts_them(capsys, tmp_path):
    rc, text, _ = run(capsys, "explain", "--example", "classic")
    cmp = text.split("== Against the example's published numbers\n", 1)[1]
    lines = cmp.splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith("W_after: published "))
    indent = len("W_after: published [")
    # the matrices' rows line up under the first one (they began in columns 2 and 1)
    assert all(s.startswith(" " * indent) and s.lstrip().startswith("[") for s in lines[start + 1:] if s.strip())
    assert lines[start + 1].index("[") == lines[start].index("[[[") + 2 and not any(s.endswith(" ") for s in lines)
    # a published list of another length is named, not compared over the common part only
    wf = tmp_path / "w.json"
    d = json.loads(explain._example_text("sigmoid-2-2-1"))
    d["expected"] = {"output": [0.22820603151345778, 0.5], "loss": 0.5956659297922058}
    wf.write_text(json.dumps(d))
    rc, text, _ = run(capsys, "explain", "--weights", str(wf))
    assert "output: published 2 numbers, the trace has 1" in text and "loss: published 0.5956659297922058; " \
        "largest difference 0.0e+00" in text


# ---------------------------------------------------------------- trace_step's inputs, the plot of a wide layer
@pytest.mark.parametrize("loss, y", [("mse", 1.0), ("half_sse", np.float64(-0.5)), ("binary_cross_entropy", 0.25)])
def test_trace_step_takes_a_lone_number_as_the_target_of_one_sample_and_one_output(loss, y):
    # Y=1.0 for one sample of a one-output network was refused with "the target has shape (); expected
    # (1, 1) for X with 1 samples", although the check before it had counted it as 1 sample of 1 value
    params = [(np.array([[0.3, -0.2]]), np.array([0.1]))]
    t = explain.trace_step(params, [0.5, 0.8], y, ["identity"], loss, 0.1)
    assert t == explain.trace_step(params, [0.5, 0.8], [y], ["identity"], loss, 0.1)
    assert t["target"] == [float(y)]


@pytest.mark.parametrize("activation", ["relu", ["relu"], ["relu", "tanh"]])
def test_an_activation_for_a_network_without_hidden_layers_is_refused(capsys, activation):
    # `--layers 2,1 --activation relu` (or ["relu"]) traced an identity network, the activation dropped unseen
    with pytest.raises(ValueError, match=r"the network \[2, 1\] has no hidden layer to give an activation"):
        explain.make_problem(layer_sizes=[2, 1], input=[0.5, 0.8], target=[1], activation=activation)
    names = activation if isinstance(activation, str) else ",".join(activation)
    err = usage_error(capsys, "explain", "--layers", "2,1", "--activation", names)
    assert "has no hidden layer to give an activation" in err and "--output-activation" in err
    # the output's activation is still set by --output-activation, and the example's hidden one is not "given"
    assert explain.make_problem(layer_sizes=[2, 1], output_activation="relu").activations == ["relu"]
    assert explain.make_problem(layer_sizes=[2, 1]).activations == ["identity"]


@pytest.mark.parametrize("where, bad", [("W", np.array([[0.3 + 1j, -0.2]])), ("W", [[0.3, -0.2], [0.1]]),
                                        ("b", ["x"]), ("input", [0.5 + 0.5j, 0.8]), ("input", ["a", "b"]),
                                        ("target", ["one"])])
def test_values_that_are_not_real_numbers_are_refused_by_name(where, bad):
    # a complex W lost its imaginary part with a ComplexWarning and was traced; text or ragged rows gave
    # numpy's "could not convert string to float" / "inhomogeneous shape" / "float() argument" messages
    W, b, x, y = np.array([[0.3, -0.2]]), np.array([0.1]), [0.5, 0.8], [1.0]
    args = {"W": (bad, b, x, y), "b": (W, bad, x, y), "input": (W, b, bad, y), "target": (W, b, x, bad)}[where]
    name = {"W": "layer 1: W", "b": "layer 1: b", "input": "the input", "target": "the target"}[where]
    with pytest.raises(ValueError, match=f"^{name} must hold real numbers"):
        explain.trace_step([args[:2]], args[2], args[3], ["identity"], "mse", 0.1)


def test_shown_units_keep_the_first_and_last_of_a_wide_layer():
    from gpubp.plotting import shown_units
    assert shown_units(5, 12) == [0, 1, 2, 3, 4] and shown_units(12, 12) == list(range(12))
    assert shown_units(784, 12) == [0, 1, 2, 3, 4, 5, None, 779, 780, 781, 782, 783]
    assert shown_units(4, 3) == [0, None, 3]


def test_the_plot_of_a_wide_layer_is_of_ordinary_size(tmp_path):
    # a 300-input network was drawn 300 nodes tall: a 1060 x 47000 pixel PNG of 2400 edges that took
    # seconds per hundred inputs (784 inputs: 122000 pixels); now its first and last units and a marker
    pytest.importorskip("matplotlib")
    from gpubp.plotting import plot_trace
    rng = np.random.default_rng(0)
    params = explain.seeded_params([300, 4, 1], ["tanh", "identity"], "mse", 0)
    t = explain.trace_step(params, rng.normal(size=300), [0.5], ["tanh", "identity"], "mse", 0.1)
    png = plot_trace(t, tmp_path / "wide.png").read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")   # the IHDR chunk
    assert png[12:16] == b"IHDR" and height < 2500 and width < 2000, (width, height)
    with pytest.raises(ValueError, match="max_nodes"):
        plot_trace(t, tmp_path / "x.png", max_nodes=2)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("lr", [True, "0.1", None, -0.1, math.inf])
def test_make_problem_refuses_a_learning_rate_that_is_not_a_positive_number(lr):
    # make_problem read lr=True as 1.0 and lr="0.1" as 0.1 with float() (trace_step refused both)
    if lr is None:
        assert explain.make_problem(lr=lr).lr == 0.1          # None: the example's rate
        return
    with pytest.raises(ValueError, match="the learning rate must be a positive number"):
        explain.make_problem(lr=lr)
    with pytest.raises(ValueError, match="the learning rate must be a positive number"):
        explain.trace_step(**{**explain.load_example("classic").trace_args(), "lr": lr})


@pytest.mark.parametrize("digits", [0, -1, 2.5, True, "3"])
def test_the_text_refuses_digits_that_are_not_a_positive_integer(digits):
    # digits=0 printed one digit, "3" three, and -1, 2.5 or True failed in a format specifier
    t = explain.trace_step(**explain.load_example("classic").trace_args())
    for f in (explain.format_trace, explain.trace_stages, explain.print_stages):
        with pytest.raises(ValueError, match="digits must be None .every digit. or a positive integer"):
            f(t, digits)


@pytest.mark.parametrize("key, value, message", [
    ("expected", [0.2, 0.5], '"expected" must be an object of published numbers'),
    ("expected", "0.5", '"expected" must be an object of published numbers'),
    ("description", ["a", "list"], '"description" must be a string, got list'),
    # a published number under a key the comparison does not know, or one that is no number, was
    # dropped unseen: the comparison read "(nothing comparable)" or left the key out
    ("expected", {"los": 0.5}, '"expected": unknown key \'los\'; the comparison takes loss, output, '
                               'loss_after, W_after, b_after'),
    ("expected", {"loss": 0.5, "output": "0.2"}, '"expected": "output" must be a number or a list of numbers'),
    ("expected", {"output": [0.2, None]}, '"expected": "output" must be a number or a list of numbers'),
])
def test_a_weights_file_with_an_expected_or_description_of_the_wrong_type_is_a_usage_error(
        capsys, tmp_path, key, value, message):
    # the whole trace was printed and then a traceback: AttributeError 'list' object has no attribute
    # 'items' (expected) or TypeError 'sequence item 0: expected str instance' (description)
    d = json.loads(explain._example_text("sigmoid-2-2-1"))
    d[key] = value
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps(d))
    out, err = usage_error(capsys, "explain", "--weights", str(wf), with_stdout=True)
    assert message in err and out == "", err


def test_trace_step_refuses_one_string_as_the_activations():
    # "identity" for a one-layer network was read as 8 names of one letter: "1 layers need 1 activations, got 8"
    with pytest.raises(ValueError, match=r"activations must be a list with one name per layer \(1; .* got the string"):
        explain.trace_step([([[0.3, -0.2]], [0.1])], [0.5, 0.8], [1.0], "identity", "mse", 0.1)


@pytest.mark.parametrize("activations, loss, message", [
    (["tanhh", "sigmoid"], "mse", "unknown activation 'tanhh'"),
    (["sigmoid", "sigmoidd"], "mse", "unknown output_activation 'sigmoidd'"),
    (["sigmoid", "sigmoid"], "msee", "unknown loss 'msee'"),
])
def test_trace_step_names_a_misspelt_activation_or_loss_before_the_data(activations, loss, message):
    # the names are the options' to check: a typo among them is reported as itself, not as whatever
    # an input that does not fit the network (here 3 values for 2 inputs) makes of it
    params = [(W1, B1), (W2, B2)]
    with pytest.raises(ValueError, match=re.escape(message)):
        explain.trace_step(params, [0.5, 0.8, 0.1], Y, activations, loss, 0.1)


def test_trace_step_refuses_inputs_weights_and_targets_that_do_not_fit_in_its_own_words():
    P = [([[0.3, -0.2]], [0.1])]
    for x, message in (([0.5, 0.8, 0.1], "the input has shape (3,); expected 2 values per sample"),
                       ([[[0.5, 0.8]]], "the input has shape (1, 1, 2); expected 2 values per sample"),
                       ([0.5, math.inf], "the input contains NaN or infinity"),
                       ([[0.5, 0.8], [math.nan, 0.0]], "the input contains NaN or infinity")):
        with pytest.raises(ValueError, match=re.escape(message)):
            explain.trace_step(P, x, [1.0], ["identity"], "mse", 0.1)
    # one output cannot be a softmax over classes: refused as the loss's, not as the target's
    with pytest.raises(ValueError, match="^loss 'cross_entropy' needs at least 2 outputs"):
        explain.trace_step(P, [0.5, 0.8], [0], ["identity"], "cross_entropy", 0.1)
    for params in ([], ()):
        with pytest.raises(ValueError, match="^no layers given$"):
            explain.check_params(params)
        with pytest.raises(ValueError, match="^no layers given$"):
            explain.trace_step(params, [0.5], [1.0], [], "mse", 0.1)
    with pytest.raises(ValueError, match=re.escape("the weights give layer sizes [2, 1], not [2, 3, 1]")):
        explain.check_params(P, [2, 3, 1])
    assert explain.check_params(P, (2, 1))[1] == [2, 1]


def test_read_weights_file_reads_a_path_and_refuses_what_has_no_layers(tmp_path):
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": W1, "b": B1}, {"W": W2, "b": B2}], "lr": 0.25}))
    d = explain.read_weights_file(str(wf))             # a path, not text, unless is_text is given
    assert d["layer_sizes"] == [2, 2, 1] and d["lr"] == 0.25
    assert [(W.tolist(), b.tolist()) for W, b in d["params"]] == [(W1, B1), (W2, B2)]
    assert explain.read_weights_file(wf)["layer_sizes"] == [2, 2, 1]
    # a bare list of layers is the "layers"
    assert explain.read_weights_file(json.dumps([{"W": W2, "b": B2}]), is_text=True)["layer_sizes"] == [2, 1]
    for text in ('{"layers": 3}', '"layers"', '{"W": [[1.0]], "b": [0.0]}', "3", '{"layers": {"W": [[1]]}}'):
        with pytest.raises(ValueError, match=re.escape('the example: expected an object with "layers": [{"W": [[...]], '
                                                       '"b": [...]}, ...]')):
            explain.read_weights_file(text, is_text=True)
    # "layer_sizes" in the file must be the weights' sizes
    wf.write_text(json.dumps({"layers": [{"W": W2, "b": B2}], "layer_sizes": [2, 3, 1]}))
    with pytest.raises(ValueError, match=re.escape(f"{wf}: the weights give layer sizes [2, 1], not [2, 3, 1]")):
        explain.read_weights_file(str(wf))


def test_read_weights_file_refuses_unknown_keys_text_that_is_not_utf8_and_deep_nesting(tmp_path):
    """A key the file does not know ("learning_rate" for "lr") was dropped unseen: the trace ran at lr 0.1. A file
    that is not UTF-8 was refused without its name, and a deeply nested one was a RecursionError traceback."""
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": W2, "b": B2}], "learning_rate": 0.5, "input": X}))
    with pytest.raises(ValueError, match=re.escape(f"{wf}: unknown key 'learning_rate'")) as e:
        explain.read_weights_file(str(wf))
    assert "lr" in str(e.value)
    wf.write_bytes(b'{"layers": [], "description": "caf\xe9"}')
    with pytest.raises(ValueError, match=re.escape(f"{wf} is not UTF-8 text")):
        explain.read_weights_file(str(wf))
    wf.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=re.escape(f"{wf} is not valid JSON")):
        explain.read_weights_file(str(wf))


def test_make_problem_checks_the_output_activation_of_options_and_files(tmp_path):
    with pytest.raises(ValueError, match="unknown output_activation 'sigmoidd'"):
        explain.make_problem(output_activation="sigmoidd")
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": W1, "b": B1}, {"W": W2, "b": B2}], "input": X, "target": Y,
                              "output_activation": "softmaxx"}))
    with pytest.raises(ValueError, match="unknown output_activation 'softmaxx'"):
        explain.make_problem(weights=str(wf))


def test_a_problem_without_weights_starts_from_mlp_seed_0():
    import gpubp
    p = explain.Problem([2, 3, 1], np.array([0.5, 0.8]), np.array([1.0]), ["tanh", "identity"], "mse", 0.1)
    want = gpubp.MLP([2, 3, 1], activation="tanh", output_activation="identity", loss="mse", backend="numpy",
                     dtype="float64", seed=0).get_params()
    for (W, b), (Ww, bw) in zip(p.trace_args()["params"], want):
        assert np.array_equal(W, Ww) and np.array_equal(b, bw)


def test_trace_json_is_indented_by_two_unless_told():
    t = {"loss": 0.5, "a": [1.0, float("nan")]}
    assert explain.trace_json(t) == json.dumps({"loss": 0.5, "a": [1.0, "NaN"]}, indent=2)
    assert explain.trace_json(t, indent=None) == '{"loss": 0.5, "a": [1.0, "NaN"]}'


def test_check_params_refuses_what_is_not_a_pair_of_fitting_finite_arrays():
    for params, message in (
            ([([[0.3, -0.2]], [0.1], [0.0])], "layer 1: expected a (W, b) pair"),
            ([([0.3, -0.2], [0.1])], "layer 1: W must be (n_out, n_in) and b (n_out,); got W (2,), b (1,)"),
            ([([[0.3, -0.2]], [0.1, 0.2])], "layer 1: W must be (n_out, n_in) and b (n_out,); got W (1, 2), b (2,)"),
            ([([[0.3, -0.2]], [0.1]), ([[1.0, 2.0]], [0.0])], "layer 2: W takes 2 inputs but layer 1 has 1 outputs"),
            ([([[0.3, math.nan]], [0.1])], "layer 1: weights contain NaN or infinity"),
            ([([[0.3, -0.2]], [0.1]), ([[1.0]], [-math.inf])], "layer 2: weights contain NaN or infinity")):
        with pytest.raises(ValueError, match=re.escape(message)):
            explain.check_params(params)
    out, sizes = explain.check_params([([[0.3, -0.2]], [[0.1]])])      # b as a column reads as (n_out,)
    assert sizes == [2, 1] and out[0][1].shape == (1,) and out[0][0].dtype == np.float64


def test_weights_file_layers_and_rate_are_checked(tmp_path):
    for layers in ([[1.0]], [{"W": [[1.0]]}], [{"b": [0.0]}], ["W"]):
        with pytest.raises(ValueError, match=re.escape('the example: layer 1 must be an object with "W" and "b"')):
            explain.read_weights_file(json.dumps({"layers": layers}), is_text=True)
    layer = {"W": [[1.0]], "b": [0.0]}
    for lr in (True, "0.1", 0, -0.5, None, [0.1], 1e400):
        with pytest.raises(ValueError, match=re.escape('the example: "lr" must be a positive finite number, got')):
            explain.read_weights_file(json.dumps({"layers": [layer], "lr": lr}), is_text=True)
    for lr in (0.25, 2):
        assert explain.read_weights_file(json.dumps({"layers": [layer], "lr": lr}), is_text=True)["lr"] == lr


def test_load_example_and_make_problem_refuse_what_they_cannot_trace(tmp_path):
    with pytest.raises(ValueError, match=re.escape("unknown example 'nope'; choose one of sigmoid-2-2-1, "
                                                   "sigmoid-2-2-1-lr0.5, classic")):
        explain.load_example("nope")
    for sizes in ([2], [2, 0, 1], [2, 3, -1]):
        with pytest.raises(ValueError, match=re.escape(f"layer sizes must be at least two positive integers, "
                                                       f"got {sizes}")):
            explain.make_problem(layer_sizes=sizes)
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        explain.make_problem(layer_sizes=[2, 3, 1], activation="tanhh")
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        explain.make_problem(layer_sizes=[2, 3, 3, 1], activation=["relu", "tanhh"])
    wf = tmp_path / "w.json"
    for given in ({}, {"input": X}, {"target": Y}):
        wf.write_text(json.dumps({"layers": [{"W": W1, "b": B1}, {"W": W2, "b": B2}], **given}))
        with pytest.raises(ValueError, match=re.escape("give the input and the target (--input, --target) "
                                                       "for these weights")):
            explain.make_problem(weights=str(wf))
    p = explain.make_problem(weights=str(wf), input="0.5,0.8")
    assert p.input.tolist() == X and p.target.tolist() == Y


def test_parse_vector_reads_samples_and_refuses_ragged_or_empty_text():
    assert explain.parse_vector("0.5, 0.8").tolist() == [0.5, 0.8]
    assert explain.parse_vector("0.5 0.8").tolist() == [0.5, 0.8]
    assert explain.parse_vector("0.1,0.2; 0.3,0.4;").tolist() == [[0.1, 0.2], [0.3, 0.4]]
    assert explain.parse_vector(["0.5", "0.8"]).tolist() == [0.5, 0.8]
    assert explain.parse_vector([[1, 2], [3, 4]]).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    for text in ("1,2;3", ";", "", " ; "):
        with pytest.raises(ValueError, match="the input must hold the same number of values for every sample"):
            explain.parse_vector(text, "the input")


def test_format_trace_separates_stages_and_print_stages_waits_only_when_interactive():
    t = explain.trace_step(**explain.load_example("classic").trace_args())
    text = explain.format_trace(t, title="TITLE")
    lines = text.split("\n")
    assert lines[0] == "TITLE" and text.endswith("\n") and not text.endswith("\n\n")
    heads = [i for i, line in enumerate(lines) if line.startswith("== ")]
    assert len(heads) == len(explain.trace_stages(t)) and heads[0] == 1
    assert all(lines[i - 1] == "" for i in heads[1:])          # one empty line before every later stage
    written, asked = [], []
    assert explain.print_stages(t, write=written.append, wait=asked.append) == len(heads)
    assert asked == [] and written[0].startswith(f"== stage 1/{len(heads)}: Problem")


def test_make_problem_defaults_one_hidden_activation_for_all_rate_and_seed(tmp_path):
    # one activation in a list serves every hidden layer, as a lone name does
    for act in (["relu"], ("relu",), "relu"):
        p = explain.make_problem(layer_sizes=[2, 3, 3, 1], activation=act)
        assert p.activations == ["relu", "relu", "relu"]
    assert explain.make_problem(layer_sizes=[2, 3, 1], activation=["relu"]).activations == ["relu", "relu"]
    # other layers and no seed: MLP(seed=0)'s weights
    p = explain.make_problem(layer_sizes=[2, 3, 1])
    assert p.seed == 0 and p.params is None and "MLP(seed=0)" in p.weights_from
    # a weights file without a rate: 0.1
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": W1, "b": B1}, {"W": W2, "b": B2}], "input": X, "target": Y}))
    assert explain.make_problem(weights=str(wf)).lr == 0.1


def test_class_indices_of_a_batch_as_a_list_or_column_and_of_two_classes():
    import gpubp
    params = gpubp.MLP([2, 3, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=2).get_params()
    X2 = [[0.5, -0.2], [0.1, 0.9]]
    for y in ([2, 0], [[2], [0]], np.array([2, 0])):
        t = explain.trace_step(params, X2, y, ["tanh", "identity"], "cross_entropy", 0.1)
        assert t["target"] == [2, 0]
    # a row of two values for two samples is one sample's row, not two class indices
    with pytest.raises(ValueError, match="the target has 2 values per sample; the network has 3 outputs"):
        explain.trace_step(params, X2, [[2, 0]], ["tanh", "identity"], "cross_entropy", 0.1)
    # two outputs: a class index is still a class index (its one-hot row has two entries)
    params2 = gpubp.MLP([2, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=2).get_params()
    t = explain.trace_step(params2, [0.5, -0.2], 1, ["identity"], "cross_entropy", 0.1)
    assert t["target"] == 1 and "one-hot row [0, 1])" in explain.format_trace(t)
    z = np.array(t["forward"][0]["z"])
    assert t["loss"] == pytest.approx(np.log(np.exp(z).sum()) - z[1], rel=1e-14)
    # a target of more than two dimensions is refused, whatever its size
    P = [([[0.3, -0.2]], [0.1])]
    with pytest.raises(ValueError, match="the target has 1 values per sample"):
        explain.trace_step(P, [0.5, 0.8], [[[1.0]]], ["identity"], "mse", 0.1)


def test_print_stages_returns_the_stages_printed_and_separates_them():
    t = explain.trace_step(**explain.load_example("classic").trace_args())
    n = len(explain.trace_stages(t))
    written = []
    assert explain.print_stages(t, write=written.append) == n
    assert len(written) == 3 * n and written[2::3] == [""] * n          # header, text, an empty line
    # interactive: "q" at the second prompt stops after stage 2; end of input after stage 1
    answers = iter(["", "q"])
    assert explain.print_stages(t, interactive=True, write=lambda s: None, wait=lambda p: next(answers)) == 2

    def eof(prompt):
        raise EOFError
    assert explain.print_stages(t, interactive=True, write=lambda s: None, wait=eof) == 1


@pytest.mark.parametrize("lr", [0, 0.0, -0.0, -1e-300])
def test_a_zero_learning_rate_is_no_step(lr):
    # "positive": a rate of 0 (or below) would trace a step that changes nothing
    with pytest.raises(ValueError, match="the learning rate must be a positive number"):
        explain.trace_step([(W1, B1), (W2, B2)], X, Y, ["sigmoid", "sigmoid"], "mse", lr)
    with pytest.raises(ValueError, match="the learning rate must be a positive number"):
        explain.make_problem(lr=lr)
    assert explain.trace_step([(W1, B1), (W2, B2)], X, Y, ["sigmoid", "sigmoid"], "mse", 5e-324)["lr"] == 5e-324


def test_a_flat_target_is_one_value_per_sample_for_one_output_only():
    import gpubp
    one = gpubp.MLP([2, 1], loss="mse", backend="numpy", dtype="float64", seed=3).get_params()
    two = gpubp.MLP([2, 2], loss="mse", backend="numpy", dtype="float64", seed=3).get_params()
    X2 = [[0.5, -0.2], [0.1, 0.9]]
    for y in ([1.0, 0.0], [[1.0], [0.0]]):
        t = explain.trace_step(one, X2, y, ["identity"], "mse", 0.1)
        assert t["target"] == [[1.0], [0.0]]
        a = np.ravel(t["output"])
        assert t["loss"] == pytest.approx(((a - [1.0, 0.0]) ** 2).mean(), rel=1e-14)
    assert explain.trace_step(one, X2[0], [1.0], ["identity"], "mse", 0.1)["target"] == [1.0]
    # two outputs: a flat target is one sample's two values, which two samples do not fit
    with pytest.raises(ValueError, match=re.escape("the target gives 1 sample; the input 2")):
        explain.trace_step(two, X2, [1.0, 0.0], ["identity"], "mse", 0.1)
    assert explain.trace_step(two, X2[0], [1.0, 0.0], ["identity"], "mse", 0.1)["target"] == [1.0, 0.0]


def test_print_stages_ends_the_prompt_line_at_the_end_of_input():
    t = explain.trace_step(**explain.load_example("classic").trace_args())
    written = []

    def eof(prompt):
        raise EOFError
    assert explain.print_stages(t, interactive=True, write=written.append, wait=eof) == 1
    assert len(written) == 3 and written[0].startswith("== stage 1/") and written[2] == ""


def test_the_output_activation_follows_the_hidden_one_only_when_they_all_share_it():
    # docstring: the one given, identity for the logit losses, the file's, the hidden one when all hidden
    # layers share it, identity
    assert explain.make_problem(layer_sizes=[2, 3, 3, 1], activation=["tanh", "tanh"]).activations[-1] == "tanh"
    assert explain.make_problem(layer_sizes=[2, 3, 3, 1], activation=["relu", "tanh"]).activations == \
        ["relu", "tanh", "identity"]
    assert explain.make_problem(layer_sizes=[2, 1]).activations == ["identity"]
    assert explain.make_problem(layer_sizes=[2, 3, 1], activation="tanh", output_activation="relu").activations == \
        ["tanh", "relu"]
    assert explain.make_problem(layer_sizes=[2, 3, 2], activation="tanh", loss="cross_entropy",
                                target="1").activations == ["tanh", "identity"]


def test_a_target_of_the_wrong_width_offers_class_indices_for_cross_entropy_only():
    import gpubp
    two = gpubp.MLP([2, 2], loss="mse", backend="numpy", dtype="float64", seed=3).get_params()
    with pytest.raises(ValueError, match=re.escape("the target has 3 values per sample; the network has 2 outputs")
                       + "$"):
        explain.trace_step(two, [0.5, -0.2], [1.0, 0.0, 0.5], ["identity"], "mse", 0.1)
    with pytest.raises(ValueError, match=re.escape("the target has 3 values per sample; the network has 2 outputs "
                                                   "(or give one class index per sample)") + "$"):
        explain.trace_step(two, [0.5, -0.2], [1.0, 0.0, 0.0], ["identity"], "cross_entropy", 0.1)


def test_a_one_layer_weights_file_with_a_hidden_activation_traces_without_one(tmp_path):
    # the file's "activation" is for hidden layers: a network without any takes none of it (a name and a
    # one-name list alike, as "1 activation for all" hidden layers); --activation itself is refused
    wf = tmp_path / "w.json"
    for act in ("relu", ["relu"]):
        wf.write_text(json.dumps({"layers": [{"W": W2, "b": B2}], "input": [0.5, 0.8], "target": Y,
                                  "activation": act}))
        assert explain.make_problem(weights=str(wf)).activations == ["identity"]
    with pytest.raises(ValueError, match=re.escape("the network [2, 1] has no hidden layer to give an activation")):
        explain.make_problem(weights=str(wf), activation="relu")


def test_poisson_takes_an_identity_output_and_names_the_log_rates(capsys):
    """poisson fuses the exp into its loss (losses.FUSED_OUTPUT): the example's sigmoid output becomes
    identity, the output's gradient is said to be on the log-rates, and an output activation is refused."""
    rc, out, _ = run(capsys, "explain", "--loss", "poisson")
    assert rc == 0 and "activations sigmoid (hidden) / identity (output), loss poisson" in out
    assert "dL/da2 = dL/dz2 (the output is the log-rates z2) = (e^z - y) / (B n) = " in out
    err = usage_error(capsys, "explain", "--loss", "poisson", "--output-activation", "sigmoid")
    assert "loss 'poisson' works on log-rates (the exp is fused into it): output_activation must be 'identity'" in err


def test_trace_step_refuses_an_output_activation_on_poisson_before_reading_the_data():
    """The network's description is checked before its input and targets (a negative target, wrong for
    poisson too, is not what is reported): the fused exp and an output activation cannot go together."""
    params = [(np.full((2, 2), 0.1), np.zeros(2)), (np.full((1, 2), 0.1), np.zeros(1))]
    with pytest.raises(ValueError, match=r"loss 'poisson' works on log-rates \(the exp is fused into it\)"):
        explain.trace_step(params, [0.5, 0.8], [-1.0], ["sigmoid", "sigmoid"], "poisson", 0.1)
