"""Gradient flow: per-layer norms and update ratios, and the vanishing / exploding warnings."""

import math

import numpy as np
import pytest

import gpubp
from gpubp import gradflow
from gpubp.plotting import plot_grad_norms


def random_layers(rng, sizes, batch=4, scale=1.0):
    Wb = [rng.normal(size=(n, m)) * scale for m, n in zip(sizes[:-1], sizes[1:])]
    dW = [rng.normal(size=W.shape) for W in Wb]
    Wa = [W - 0.1 * g for W, g in zip(Wb, dW)]
    delta = [rng.normal(size=(batch, W.shape[0])) for W in Wb]
    return Wb, Wa, dW, delta


def test_layer_stats_are_the_norms_numpy_computes():
    rng = np.random.default_rng(0)
    Wb, Wa, dW, delta = random_layers(rng, [5, 7, 3, 2])
    stats = gradflow.layer_stats(Wb, Wa, dW, delta)
    assert [st["layer"] for st in stats] == [1, 2, 3]
    s = {k: [st[key] for st in stats] for k, key in gradflow.STAT_KEYS.items()}
    np.testing.assert_allclose(s["grad_norms"], [np.linalg.norm(g) for g in dW], rtol=1e-14)
    np.testing.assert_allclose(s["delta_norms"], [np.linalg.norm(d) for d in delta], rtol=1e-14)
    np.testing.assert_allclose(s["update_ratios"],
                               [np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(Wa, Wb)], rtol=1e-14)
    # plain SGD: the update ratio is lr ||dW|| / ||W||
    np.testing.assert_allclose(s["update_ratios"],
                               [0.1 * np.linalg.norm(g) / np.linalg.norm(W) for g, W in zip(dW, Wb)], rtol=1e-12)
    assert all(isinstance(v, float) for k in s for v in s[k])
    # a layer whose delta was not kept
    stats = gradflow.layer_stats(Wb, Wa, dW, [None, delta[1], delta[2]])
    assert stats[0]["delta_norm"] is None and stats[1]["delta_norm"] == pytest.approx(np.linalg.norm(delta[1]))


def test_norm_does_not_overflow_and_handles_zeros():
    big = np.full((3, 3), 1e200)
    assert gradflow.norm(big) == pytest.approx(3e200, rel=1e-14)
    assert gradflow.norm(np.full(4, 1e30, dtype=np.float32)) == pytest.approx(2e30, rel=1e-6)
    assert gradflow.norm(np.zeros((2, 2))) == 0.0
    assert math.isnan(gradflow.norm(np.array([1.0, np.nan])))
    s = gradflow.layer_stats([np.zeros((2, 2))], [np.ones((2, 2))], [np.ones((2, 2))], [np.ones((1, 2))])
    assert s[0]["update_ratio"] == math.inf


def test_layer_stats_rejects_mismatched_layers():
    rng = np.random.default_rng(1)
    Wb, Wa, dW, delta = random_layers(rng, [3, 4, 2])
    with pytest.raises(ValueError, match="dW has 1 layers, W_before has 2"):
        gradflow.layer_stats(Wb, Wa, dW[:1], delta)
    with pytest.raises(ValueError, match="layer 2: W_before"):
        gradflow.layer_stats(Wb, [Wa[0], Wa[1].T], dW, delta)
    with pytest.raises(ValueError, match=r"layer 1: delta has shape \(4, 3\)"):
        gradflow.layer_stats(Wb, Wa, dW, [np.zeros((4, 3)), delta[1]])
    with pytest.raises(TypeError, match=r"dW\[0\] \(layer 1\) must be an array"):
        gradflow.layer_stats(Wb, Wa, [[1.0]] + dW[1:], delta)
    with pytest.raises(ValueError, match="holds no layers"):
        gradflow.layer_stats([], [], [], [])


def grad_norms_of(net, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(32, net.sizes[0]))
    Y = rng.normal(size=(32, net.sizes[-1]))
    _, grads = net.loss_and_grads(X, Y)
    return [float(np.linalg.norm(dW)) for dW, _ in grads]


def test_warnings_name_the_vanishing_layers_of_a_deep_sigmoid_network():
    net = gpubp.MLP([8] + [16] * 10 + [1], activation="sigmoid", loss="mse", backend="numpy", dtype="float64",
                    seed=0)
    g = grad_norms_of(net)
    found = gradflow.flow_warnings(g)
    expected = [l for l, v in enumerate(g[:-1], start=1) if v < 1e-6 * g[-1]]
    assert expected and expected[0] == 1                       # the first layers starve
    assert [w.layer for w in found] == expected and all(w.kind == "vanishing" for w in found)
    assert isinstance(found[0], str) and found[0] == found[0].message          # warnings.warn takes it as is
    for w in found:
        assert w.message.startswith(f"layer {w.layer}: ") and "relu" in w.message and "initialisation" in w.message
        assert w.ratio == pytest.approx(g[w.layer - 1] / g[-1])


@pytest.mark.parametrize("activation, depth", [("tanh", 4), ("relu", 4), ("relu", 10), ("sigmoid", 3)])
def test_no_warning_for_a_healthy_network(activation, depth):
    net = gpubp.MLP([8] + [16] * depth + [1], activation=activation, loss="mse", backend="numpy",
                    dtype="float64", seed=0)
    assert gradflow.flow_warnings(grad_norms_of(net)) == []


def test_exploding_and_non_finite_gradients():
    found = gradflow.flow_warnings([5e3, 2.0, 1.0])
    assert [(w.layer, w.kind) for w in found] == [(1, "exploding")]
    assert "lower learning rate" in found[0].message and found[0].ratio == 5e3
    found = gradflow.flow_warnings([math.inf, 1.0])
    assert [(w.layer, w.kind) for w in found] == [(1, "exploding")]
    found = gradflow.flow_warnings([1.0, math.nan])
    assert [(w.layer, w.kind) for w in found] == [(2, "exploding")] and "diverged" in str(found[0])
    assert gradflow.flow_warnings([1e-9, 0.0]) == []           # nothing to compare with
    # the thresholds are parameters
    assert gradflow.flow_warnings([1e-3, 1.0], vanishing=1e-2)[0].kind == "vanishing"
    with pytest.raises(ValueError, match="vanishing < 1 < exploding"):
        gradflow.flow_warnings([1.0, 1.0], vanishing=2.0)
    # what layer_stats returns works as well
    assert [w.layer for w in gradflow.flow_warnings([{"grad_norm": 1e-9}, {"grad_norm": 1.0}])] == [1]
    with pytest.raises(TypeError, match="list of per-layer floats"):
        gradflow.flow_warnings(3.0)
    # the whole history (epochs of layers), or an entry that is no number, is refused naming the layer: it
    # failed with float()'s "argument must be a string or a real number, not 'list'", and True passed as 1.0
    with pytest.raises(TypeError, match=r"one number per layer \(one epoch's entry, e\.g\. "
                                        r"history\['grad_norms'\]\[-1\], not the whole history\); layer 1 has list"):
        gradflow.flow_warnings([[1e-9, 1.0], [1e-9, 1.0]])
    for bad in (None, "0.5", True):
        with pytest.raises(TypeError, match=f"grad_norms must hold one number per layer; layer 1 has "
                                            f"{type(bad).__name__}"):
            gradflow.flow_warnings([bad, 1.0])
    assert [w.layer for w in gradflow.flow_warnings(np.array([1e-9, 1.0]))] == [1]


def test_record_and_plot_grad_norms(tmp_path):
    rng = np.random.default_rng(2)
    history = {"loss": [1.0, 0.5]}
    for _ in range(2):
        gradflow.record(history, gradflow.layer_stats(*random_layers(rng, [4, 3, 2])))
    assert [len(history[k]) for k in gradflow.HISTORY_KEYS] == [2, 2, 2]
    assert all(len(row) == 2 for k in gradflow.HISTORY_KEYS for row in history[k])
    path = plot_grad_norms(history, tmp_path / "g.png", title="gradient flow")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no gradient norms"):
        plot_grad_norms({"loss": [1.0]}, tmp_path / "none.png")


def test_docs_example_warns_with_gradient_flow_warnings():
    """docs/explain.md's fit example: the warnings it shows are GradientFlowWarnings for layers 1 to 3."""
    import re
    import warnings
    from pathlib import Path

    from gpubp.gradflow import GradientFlowWarning

    doc = (Path(__file__).resolve().parents[1] / "docs" / "explain.md").read_text()
    assert "# GradientFlowWarning: layer 1: ||dW|| = 1.88e-09" in doc
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 8)), rng.normal(size=(64, 1))
    net = gpubp.MLP([8] + [16] * 10 + [1], activation="sigmoid", loss="mse", backend="numpy",
                    dtype="float64", seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.fit(X, Y, epochs=2, batch_size=32, optimizer="sgd", lr=0.1, grad_norms=True, progress=False)
    flow = [w for w in caught if issubclass(w.category, GradientFlowWarning)]
    assert [re.match(r"layer (\d+):", str(w.message)).group(1) for w in flow] == ["1", "2", "3"]
    assert str(flow[0].message).startswith("layer 1: ||dW|| = 1.88e-09 is 5.97e-09 times the output layer's (0.315)")


def test_the_plots_refuse_what_is_not_a_history_or_a_trace(tmp_path):
    # were AttributeError "'list' object has no attribute 'get'" and, for one epoch's entry given as the
    # whole history, TypeError "'float' object is not iterable"; nothing is written
    pytest.importorskip("matplotlib")
    from gpubp.plotting import plot_history, plot_trace
    out = tmp_path / "p.png"
    for f, what in ((plot_history, "history"), (plot_grad_norms, "history"), (plot_trace, "trace")):
        for bad in (None, [1.0, 0.5], "loss"):
            with pytest.raises(TypeError, match=f"^{what} must be a dict .* got {type(bad).__name__}$"):
                f(bad, out)
    with pytest.raises(TypeError,
                       match=r"history\['grad_norms'\] must hold one list per epoch.*epoch 1 has float 0.001"):
        plot_grad_norms({"grad_norms": [1e-3, 2e-3]}, out)
    assert not out.exists()


def test_the_plots_leave_no_figure_behind_and_the_users_backend_alone(tmp_path):
    """Each plot function's figures are freed: 8 more calls keep fewer than 4 more figures alive (a
    leak keeps all 8) and none goes through pyplot's registry; matplotlib's backend is the one the
    user had.  matplotlib's caches keep up to 8 recent figures alive (how many depends on what ran
    before in the process: after some test files 8 calls left 4, 16 calls 8), so the count is
    compared after 16 and after 24 calls."""
    import gc

    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from gpubp import explain
    from gpubp.plotting import plot_history, plot_trace
    backend = matplotlib.get_backend()
    rng = np.random.default_rng(0)
    history = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.7], "val_loss": [1.1, 0.6], "val_accuracy": [0.4, 0.6]}
    for _ in range(2):
        gradflow.record(history, gradflow.layer_stats(*random_layers(rng, [4, 3, 2])))
    trace = explain.trace_step(**explain.load_example("classic").trace_args())

    def live():
        gc.collect()
        return sum(isinstance(o, Figure) for o in gc.get_objects())

    for f, arg in ((plot_history, history), (plot_grad_norms, history), (plot_trace, trace)):
        counts = []
        for _ in range(3):
            for _ in range(8):
                assert f(arg, tmp_path / "p.png") == tmp_path / "p.png"
            counts.append(live())
        assert counts[2] - counts[1] < 4, (f.__name__, counts)
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in __import__("sys").modules:
        assert __import__("matplotlib.pyplot").pyplot.get_fignums() == []


def test_a_plot_to_a_name_ending_in_a_separator_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    """`Path` drops a trailing "/": plot_history(h, "out/") wrote a PNG named `out` (as MLP.save did a
    checkpoint); refused now as `gpubp train --plot out/` is, nothing written."""
    pytest.importorskip("matplotlib")
    from gpubp.plotting import plot_history

    monkeypatch.chdir(tmp_path)
    for name in ("out/", "out/.", b"out/"):
        with pytest.raises(IsADirectoryError, match="names a directory; give a file name such as 'out/plot.png'"):
            plot_history({"loss": [1.0, 0.5]}, name)
    assert list(tmp_path.iterdir()) == []


def test_a_flow_warning_survives_pickle_and_copy():
    # FlowWarning.__new__ takes four arguments and str's pickling passed one: pickle.loads and
    # copy.deepcopy of a finding raised "missing 3 required positional arguments"
    import copy
    import pickle
    w = gradflow.flow_warnings([1e-9, 1.0])[0]
    for back in (pickle.loads(pickle.dumps(w)), copy.deepcopy(w), copy.copy(w)):
        assert isinstance(back, gradflow.FlowWarning) and back == w
        assert (back.layer, back.kind, back.ratio) == (w.layer, w.kind, w.ratio)


@pytest.mark.parametrize("B", [4, 12])     # one batch; three batches of 4
def test_fit_grad_norms_are_those_of_each_epochs_last_step(B):
    """history["grad_norms"] and ["update_ratios"] are ||dW|| of the epoch's last step and
    ||W_after - W_before|| / ||W_before|| of its update (docs: "of the epoch's last step"), against
    a twin that takes the same batches with train_step and loss_and_grads."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((B, 3)), rng.integers(0, 2, B)
    a = gpubp.MLP([3, 5, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    b = gpubp.MLP([3, 5, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    hist = a.fit(X, y, epochs=1, batch_size=4, optimizer="sgd", lr=0.5, shuffle=False, grad_norms=True,
                 progress=False)
    for i in range(0, B - 4, 4):
        b.train_step(X[i:i + 4], y[i:i + 4], "sgd", lr=0.5)
    before = [W for W, _ in b.get_params()]
    _, grads = b.loss_and_grads(X[B - 4:], y[B - 4:])
    b.train_step(X[B - 4:], y[B - 4:], "sgd", lr=0.5)
    after = [W for W, _ in b.get_params()]
    np.testing.assert_allclose(hist["grad_norms"][0], [np.linalg.norm(dW) for dW, _ in grads], rtol=1e-12)
    want = [np.linalg.norm(w1 - w0) / np.linalg.norm(w0) for w0, w1 in zip(before, after)]
    np.testing.assert_allclose(hist["update_ratios"][0], want, rtol=1e-9)


def test_flow_warning_thresholds_are_strict_and_a_zero_norm_vanishes():
    # "below vanishing times the output layer's" and "past exploding times it": a ratio exactly at a
    # threshold is no finding; a layer whose ||dW|| is exactly 0 (a dead layer) has ratio 0, which vanishes
    assert gradflow.flow_warnings([1e-6, 1.0]) == []
    assert gradflow.flow_warnings([1e3, 1.0]) == []
    assert gradflow.flow_warnings([0.25, 0.5, 1.0], vanishing=0.5, exploding=4.0)[0].layer == 1
    assert gradflow.flow_warnings([0.5, 4.0, 1.0], vanishing=0.5, exploding=4.0) == []
    (w,) = gradflow.flow_warnings([0.0, 2.0])
    assert (w.layer, w.kind, w.ratio) == (1, "vanishing", 0.0)
    (w,) = gradflow.flow_warnings([2.5e-7, 0.5])
    assert (w.layer, w.kind) == (1, "vanishing") and w.ratio == pytest.approx(5e-7, rel=1e-15)
    (w,) = gradflow.flow_warnings([3e3, 2.0])
    assert (w.layer, w.kind) == (1, "exploding") and w.ratio == pytest.approx(1.5e3, rel=1e-15)
    assert "layer 1: ||dW|| = 3e+03 is 1.5e+03 times the output layer's (2), above 1000" in w
    # a non-finite norm below the output: exploding, ratio inf; a non-finite output norm: "diverged", ratio NaN
    (w,) = gradflow.flow_warnings([math.nan, 1.0, 1.0])
    assert (w.layer, w.kind, w.ratio) == (1, "exploding", math.inf)
    (w,) = gradflow.flow_warnings([1.0, math.inf])
    assert (w.layer, w.kind) == (2, "exploding") and math.isnan(w.ratio) and "diverged" in w
    # the thresholds must straddle 1, strictly; a norm cannot be negative
    for vanishing, exploding in ((0.0, 1e3), (1.0, 1e3), (1e-6, 1.0), (-1e-6, 1e3)):
        with pytest.raises(ValueError, match="vanishing < 1 < exploding"):
            gradflow.flow_warnings([1.0, 1.0], vanishing=vanishing, exploding=exploding)
    # a threshold that is no number: "'<' not supported between instances of 'int' and 'str'"
    for kw in ({"vanishing": "1e-6"}, {"exploding": None}, {"vanishing": True}):
        with pytest.raises(TypeError, match=f"{next(iter(kw))} must be a number, got {next(iter(kw.values()))!r}"):
            gradflow.flow_warnings([1.0, 1.0], **kw)
    for g in ([-1e-9, 1.0], [1.0, -1.0]):
        with pytest.raises(ValueError, match="cannot be negative"):
            gradflow.flow_warnings(g)
    with pytest.raises(ValueError, match="holds no layers"):
        gradflow.flow_warnings([])


def test_norm_of_empty_infinite_and_integer_arrays():
    # an empty array's norm is 0; an infinite entry's is inf (not inf/inf = NaN); integers are exact
    assert gradflow.norm(np.zeros((0, 3))) == 0.0
    assert gradflow.norm(np.array([1.0, -np.inf])) == math.inf
    assert gradflow.norm(np.array([[3, -4]])) == 5.0
    assert gradflow.norm(np.array([-2.0])) == 2.0
    assert isinstance(gradflow.norm(np.array([3.0, 4.0], np.float32)), float)


def test_record_appends_one_list_per_key_and_returns_the_history():
    # record works without matplotlib: it appends each stat, layer 1 first, and returns the dict it was given
    stats = [{"layer": 1, "grad_norm": 0.5, "delta_norm": None, "update_ratio": 1e-3},
             {"layer": 2, "grad_norm": 2.0, "delta_norm": 3.0, "update_ratio": 0.0}]
    history = {"loss": [1.0]}
    assert gradflow.record(history, stats) is history
    gradflow.record(history, stats[::-1])
    assert history == {"loss": [1.0], "grad_norms": [[0.5, 2.0], [2.0, 0.5]], "delta_norms": [[None, 3.0], [3.0, None]],
                       "update_ratios": [[1e-3, 0.0], [0.0, 1e-3]]}


def test_layer_stats_refuses_what_is_not_one_real_array_per_layer():
    import types
    rng = np.random.default_rng(1)
    Wb, Wa, dW, delta = random_layers(rng, [3, 4, 2])
    for bad in (3.0, "W", None):
        with pytest.raises(TypeError, match=f"W_before must be a list with one array per layer, got "
                                            f"{type(bad).__name__}"):
            gradflow.layer_stats(bad, Wa, dW, delta)
    # None is allowed for a delta that was not kept, and nowhere else
    with pytest.raises(TypeError, match=r"W_after\[1\] \(layer 2\) must be an array, got NoneType"):
        gradflow.layer_stats(Wb, [Wa[0], None], dW, delta)
    with pytest.raises(TypeError, match=r"delta\[0\] \(layer 1\) must be an array, got list"):
        gradflow.layer_stats(Wb, Wa, dW, [[[0.0] * 4], delta[1]])
    with pytest.raises(TypeError, match=r"dW\[0\] \(layer 1\) must be an array, got SimpleNamespace"):
        gradflow.layer_stats(Wb, Wa, [types.SimpleNamespace(shape=(4, 3))] + dW[1:], delta)
    for dtype in (bool, complex, object):
        with pytest.raises(TypeError, match=r"dW\[1\] \(layer 2\) must hold real numbers, got dtype"):
            gradflow.layer_stats(Wb, Wa, [dW[0], dW[1].astype(dtype)], delta)
    # integer weights are real numbers
    ints = [W.round().astype(np.int64) for W in Wb]
    assert gradflow.layer_stats(ints, ints, ints, delta)[0]["grad_norm"] == pytest.approx(np.linalg.norm(ints[0]))


def test_layer_stats_take_one_samples_delta_and_weights_of_any_size():
    rng = np.random.default_rng(1)
    Wb, Wa, dW, delta = random_layers(rng, [3, 4, 2])
    # a delta is (batch, n_out), or one sample's (n_out,); a scalar is no delta
    s = gradflow.layer_stats(Wb, Wa, dW, [np.array([3.0, 0.0, 0.0, -4.0]), delta[1]])
    assert s[0]["delta_norm"] == 5.0
    with pytest.raises(ValueError, match=r"layer 1: delta has shape \(\); expected \(batch, 4\)"):
        gradflow.layer_stats(Wb, Wa, dW, [np.array(1.0), delta[1]])
    # update ratio ||W_after - W_before|| / ||W_before||, whatever the size of W_before; all-zero weights
    # that did not move have ratio 0, that moved inf
    small = [np.array([[0.3, 0.4]])]
    s = gradflow.layer_stats(small, [np.array([[0.3, 0.45]])], small, [np.ones((1, 1))])
    assert s[0]["update_ratio"] == pytest.approx(0.1, rel=1e-12)
    zero = [np.zeros((1, 2))]
    assert gradflow.layer_stats(zero, zero, small, [np.ones((1, 1))])[0]["update_ratio"] == 0.0
    assert gradflow.layer_stats(zero, small, small, [np.ones((1, 1))])[0]["update_ratio"] == math.inf
