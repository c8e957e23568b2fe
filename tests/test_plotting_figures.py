"""What gpubp.plotting draws: the panels, lines, scales and labels of each figure, read off the
`Figure` before it is written (the other plot tests check that a PNG is written and refused)."""
import math
import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from gpubp import explain, plotting  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions write, in order (each still written through `_save`)."""
    figs = []
    save = plotting._save

    def keep(fig, *a, **k):
        figs.append(fig)
        return save(fig, *a, **k)

    monkeypatch.setattr(plotting, "_save", keep)
    return figs


def _lines(ax):
    return [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()]


def _png_size(path):
    """(width, height) in pixels, from the PNG's IHDR chunk."""
    png = path.read_bytes()
    assert png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _gridded(ax):
    return all(g.get_visible() for g in ax.xaxis.get_gridlines() + ax.yaxis.get_gridlines())


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_plot_history_draws_loss_and_accuracy_panels(drawn, tmp_path):
    h = {"loss": [1.0, 0.5, 0.25], "val_loss": [1.2, 0.6], "accuracy": [0.5, 0.7, 0.9], "val_accuracy": [0.4]}
    assert plotting.plot_history(h, tmp_path / "h.png", title="run 1") == tmp_path / "h.png"
    fig, = drawn
    assert _png_size(tmp_path / "h.png") == (1200, 480)             # 10 x 4 inches at 120 dpi
    plotting.plot_history(h, tmp_path / "h50.png", dpi=50)
    assert _png_size(tmp_path / "h50.png") == (500, 200)
    assert tuple(fig.get_size_inches()) == (10, 4) and len(fig.axes) == 2
    assert fig._suptitle.get_text() == "run 1"
    loss, acc = fig.axes
    assert _lines(loss) == [("train", [1, 2, 3], [1.0, 0.5, 0.25]), ("held out", [1, 2], [1.2, 0.6])]
    assert loss.get_yscale() == "log" and loss.get_title() == "loss"
    assert (loss.get_xlabel(), loss.get_ylabel()) == ("epoch", "loss")
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["train", "held out"]
    assert _lines(acc) == [("train", [1, 2, 3], [0.5, 0.7, 0.9]), ("held out", [1], [0.4])]
    assert acc.get_ylim()[1] == 1.0 and acc.get_title() == "accuracy" and acc.get_ylabel() == "accuracy"
    assert acc.get_xlabel() == "epoch"
    assert acc.get_yscale() == "linear"
    assert _gridded(loss) and _gridded(acc) and acc.get_legend() is not None
    assert fig.subplotpars.right > 0.95    # laid out tight (the default leaves 0.9)


@pytest.mark.parametrize("h, log", [({"loss": [1.0, 0.0]}, False), ({"loss": [1.0, 0.5], "val_loss": [-1.0]}, False),
                                    ({"loss": [1.0, 0.5], "val_loss": [2.0, 0.1]}, True)])
def test_plot_history_of_loss_only_is_one_panel_log_only_when_every_loss_is_positive(drawn, tmp_path, h, log):
    plotting.plot_history(h, tmp_path / "h.png")
    fig, = drawn
    assert tuple(fig.get_size_inches()) == (5.5, 4) and len(fig.axes) == 1
    assert fig._suptitle is None                       # no title given: none drawn
    assert fig.axes[0].get_yscale() == ("log" if log else "linear")
    assert len(fig.axes[0].get_lines()) == len([k for k in h if h[k]])


def test_plot_history_with_only_held_out_accuracy_has_an_accuracy_panel(drawn, tmp_path):
    plotting.plot_history({"loss": [0.5, 0.4], "accuracy": [], "val_accuracy": [0.6, 0.8]}, tmp_path / "h.png")
    fig, = drawn
    assert len(fig.axes) == 2 and _lines(fig.axes[1]) == [("held out", [1, 2], [0.6, 0.8])]
    with pytest.raises(ValueError, match="no epochs"):
        plotting.plot_history({"loss": []}, tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()


def test_plot_grad_norms_draws_one_log_panel_per_key_and_one_line_per_layer(drawn, tmp_path):
    h = {"loss": [1.0, 0.5], "grad_norms": [[0.1, 0.2, 0.3], [0.0, None, 0.4]],
         "update_ratios": [[1e-3, 2e-3], [3e-3]]}
    plotting.plot_grad_norms(h, tmp_path / "g.png", title="flow")
    fig, = drawn
    assert _png_size(tmp_path / "g.png") == (1152, 480)             # 2 x 4.8 x 4 inches at 120 dpi
    assert tuple(fig.get_size_inches()) == (9.6, 4) and len(fig.axes) == 2
    assert fig._suptitle.get_text() == "flow"
    g, u = fig.axes
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "log"]
    assert (g.get_ylabel(), g.get_xlabel(), g.get_title()) == ("||dW||", "epoch", "||dW|| per layer")
    assert u.get_ylabel() == "||W' - W|| / ||W||"
    assert all(_gridded(ax) and ax.get_legend() is not None for ax in fig.axes)
    assert fig.subplotpars.right > 0.95
    lines = _lines(g)
    assert [name for name, _, _ in lines] == ["layer 1", "layer 2", "layer 3 (output)"]
    assert all(xs == [1, 2] for _, xs, _ in lines)
    ys = [ys for _, _, ys in lines]
    assert ys[0][0] == 0.1 and math.isnan(ys[0][1])          # 0 cannot be drawn on a log scale
    assert ys[1][0] == 0.2 and math.isnan(ys[1][1])          # nor a missing value
    assert ys[2] == [0.3, 0.4]
    lines = _lines(u)                                       # a short row: its missing layer is nan
    assert [name for name, _, _ in lines] == ["layer 1", "layer 2 (output)"]
    assert lines[0][2] == [1e-3, 3e-3] and lines[1][2][0] == 2e-3 and math.isnan(lines[1][2][1])


def _trace(sizes, X, Y, loss="mse"):
    acts = ["tanh"] * (len(sizes) - 2) + ["identity"]
    return explain.trace_step(explain.seeded_params(sizes, acts, loss, 0), X, Y, acts, loss, 0.1)


def test_plot_trace_draws_every_edge_by_sign_and_size_and_labels_a_small_network(drawn, tmp_path):
    t = _trace([2, 3, 1], [0.5, -1.0], [0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # a tight layout of its free-placed axes would warn
        plotting.plot_trace(t, tmp_path / "t.png")
    fig, = drawn
    ax, = fig.axes
    w_in, h_in = fig.get_size_inches()
    assert _png_size(tmp_path / "t.png") == (int(w_in * 120), int(h_in * 120))
    assert (w_in, h_in) == pytest.approx((1.3 * (2.6 * 2 + 1.6), 1.3 * (3 + 1.6)))
    assert ax.get_aspect() == 1.0 and not ax.axison            # equal scales, no axes drawn
    W = [w for f in t["forward"] for row in f["W"] for w in row]
    wmax = max(abs(w) for w in W)
    edges = ax.get_lines()
    assert len(edges) == 9
    want = sorted((round(0.6 + 3.0 * abs(w) / wmax, 9), "tab:blue" if w >= 0 else "tab:red") for w in W)
    got = sorted((round(e.get_linewidth(), 9), e.get_color()) for e in edges)
    assert got == want and {c for _, c in got} == {"tab:blue", "tab:red"}
    # layers 2.6 apart, the units of a layer one apart and centred
    assert sorted({x for e in edges for x in e.get_xdata()}) == [0.0, 2.6, 5.2]
    assert sorted({y for e in edges for y in e.get_ydata()}) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    texts = _texts(fig)
    f1 = t["forward"][0]
    w = f1["W"][0][0]
    dw = {b["layer"]: b for b in t["backward"]}[1]["dW"][0][0]
    assert sum(s.startswith("W=") for s in texts) == 9
    assert f"W={w:.4g}\ndW={dw:.4g}" in texts
    assert "x1\n0.5" in texts and "x2\n-1" in texts
    assert f"z={f1['z'][0]:.4g}\na={f1['a'][0]:.4g}\nb={f1['b'][0]:.4g}" in texts
    assert ["input", "layer 1 (tanh)", "output (identity)"] == [s for s in texts if s in
                                                                ("input", "layer 1 (tanh)", "output (identity)")]
    head = fig._suptitle.get_text().replace("\n", " ")
    assert head.startswith("[2, 3, 1], loss mse ") and "after one SGD step at lr 0.1" in head
    assert "sample 1" not in head and "not labelled" not in head and "first and last" not in head
    assert len(ax.patches) == 6
    names = {tx.get_text(): tx.get_position() for tx in ax.texts if tx.get_text() in ("input", "output (identity)")}
    assert names == {"input": (0.0, 0.5 * 3 + 0.1), "output (identity)": (5.2, 0.5 * 3 + 0.1)}   # above the nodes


def test_plot_trace_of_a_batch_and_many_edges_says_so_and_labels_no_edge(drawn, tmp_path):
    t = _trace([3, 4, 3], [[0.1, 0.2, 0.3], [-1, 0, 1]], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    plotting.plot_trace(t, tmp_path / "t.png", max_labelled_edges=23)
    fig, = drawn
    texts = _texts(fig)
    assert len(fig.axes[0].get_lines()) == 24 and not any(s.startswith("W=") for s in texts)
    assert "x1\n0.1" in texts and "x3\n0.3" in texts          # the first sample's values
    head = fig._suptitle.get_text().replace("\n", " ")
    assert "z and a of sample 1 of 2, dW summed over the batch" in head
    assert "24 edges: W and dW not labelled" in head
    plotting.plot_trace(t, tmp_path / "t.png", max_labelled_edges=24)
    assert sum(s.startswith("W=") for s in _texts(drawn[1])) == 24


def test_plot_trace_of_a_wide_layer_draws_its_ends_and_counts_the_rest(drawn, tmp_path):
    rng = np.random.default_rng(1)
    t = _trace([9, 2, 1], rng.normal(size=9), [0.5])
    plotting.plot_trace(t, tmp_path / "t.png", max_nodes=5)
    fig, = drawn
    ax, = fig.axes
    texts = _texts(fig)
    assert "...\n5 more" in texts
    assert [s.split("\n")[0] for s in texts if s.startswith("x")] == ["x1", "x2", "x8", "x9"]
    assert len(ax.get_lines()) == 4 * 2 + 2 and len(ax.patches) == 4 + 2 + 1
    # the marker takes the middle slot of the input column
    marker = next(tx for tx in ax.texts if tx.get_text() == "...\n5 more")
    assert marker.get_position() == (0.0, 0.0)
    head = fig._suptitle.get_text().replace("\n", " ")
    assert "layers of more than 5 units: their first and last units drawn" in head
    assert ax.get_ylim() == (-0.5 * 5 - 0.3, 0.5 * 5 + 0.5) and ax.get_xlim() == (-0.8, 2.6 * 2 + 0.8)
    for bad in (True, 2, 3.0):
        with pytest.raises(ValueError, match="max_nodes"):
            plotting.plot_trace(t, tmp_path / "x.png", max_nodes=bad)
    plotting.plot_trace(t, tmp_path / "t.png", max_nodes=9)     # 9 units fit in 9 slots: all drawn
    assert "...\n" not in "".join(_texts(drawn[1]))
    plotting.plot_trace(t, tmp_path / "t.png", max_nodes=3)     # the least: first, marker, last
    assert "...\n7 more" in _texts(drawn[2])


def test_plot_trace_defaults_label_at_most_12_edges_and_draw_12_units_a_layer(drawn, tmp_path):
    t = _trace([13, 1], np.linspace(-1, 1, 13), [0.5])
    plotting.plot_trace(t, tmp_path / "t.png")
    head = drawn[0]._suptitle.get_text().replace("\n", " ")
    assert "13 edges: W and dW not labelled" in head and "layers of more than 12 units" in head
    assert "...\n2 more" in _texts(drawn[0])
    t = _trace([12, 1], np.linspace(-1, 1, 12), [0.5])
    plotting.plot_trace(t, tmp_path / "t.png")
    head = drawn[1]._suptitle.get_text().replace("\n", " ")
    assert "not labelled" not in head and "more than" not in head


def test_plot_trace_of_zero_weights_draws_thin_edges(drawn, tmp_path):
    params = [(np.zeros((2, 2)), np.zeros(2)), (np.zeros((1, 2)), np.zeros(1))]
    t = explain.trace_step(params, [0.5, -1.0], [0.25], ["tanh", "identity"], "mse", 0.1)
    plotting.plot_trace(t, tmp_path / "t.png")
    assert [e.get_linewidth() for e in drawn[0].axes[0].get_lines()] == [0.6] * 6
