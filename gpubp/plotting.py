"""Training curves, gradient norms and a traced step's network as PNGs, drawn with matplotlib's Agg
canvas (no display needed).

The figure is made with `matplotlib.figure.Figure` and `FigureCanvasAgg`
directly, so importing or calling this module never changes the user's
matplotlib backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

from .optional import require


def _check_dict(value, what: str, source: str) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict (what {source} returns), got {type(value).__name__}")


def plot_history(history: dict, path, title: str | None = None, dpi: int = 120) -> Path:
    """Write the loss (left) and accuracy (right, when recorded) curves of `history` to `path`.

    `history` is what `MLP.fit` or `gpubp train` returns: per-epoch lists
    `loss`, and optionally `accuracy`, `val_loss`, `val_accuracy`.  Returns the
    path written.
    """
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "plot", "plotting").FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_dict(history, "history", "MLP.fit")
    if not history.get("loss"):
        raise ValueError("the history holds no epochs to plot")
    has_acc = bool(history.get("accuracy") or history.get("val_accuracy"))
    fig = Figure(figsize=(10 if has_acc else 5.5, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    epochs = list(range(1, len(history["loss"]) + 1))

    ax = axes[0]
    ax.plot(epochs, history["loss"], marker=".", label="train")
    if history.get("val_loss"):
        ax.plot(epochs[:len(history["val_loss"])], history["val_loss"], marker=".", label="held out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if min(min(history["loss"]), min(history.get("val_loss") or [1.0])) > 0:
        ax.set_yscale("log")
    ax.set_title("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()

    if has_acc:
        ax = axes[1]
        if history.get("accuracy"):
            ax.plot(epochs[:len(history["accuracy"])], history["accuracy"], marker=".", label="train")
        if history.get("val_accuracy"):
            ax.plot(epochs[:len(history["val_accuracy"])], history["val_accuracy"], marker=".",
                    label="held out")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_ylim(top=1.0)
        ax.set_title("accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return _save(fig, path, dpi, title)


def _save(fig, path, dpi, title=None, tight=True) -> Path:
    """Title `fig` (when a title is given), lay out its panels (`tight`), and write it as a PNG."""
    if title:
        fig.suptitle(title)
    if tight:
        fig.tight_layout()
    from .files import atomic_write, file_to_write

    path = file_to_write(path, "plot.png")   # "out/" would be written as a file named "out"
    with atomic_write(path) as f:    # a failed write leaves no partial PNG
        fig.savefig(f, dpi=dpi, format="png")
    return path


def _new_figure(size):
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "plot", "plotting").FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


#: the history keys `plot_grad_norms` draws, with their axis labels
GRAD_NORM_KEYS = (("grad_norms", "||dW||"), ("delta_norms", "||delta||"), ("update_ratios", "||W' - W|| / ||W||"))


def plot_grad_norms(history: dict, path, title: str | None = None, dpi: int = 120) -> Path:
    """Draw each layer's gradient norms per epoch on a log scale to `path`.

    `history` holds per-epoch lists of per-layer values under any of
    `grad_norms`, `delta_norms`, `update_ratios` (see `gpubp.gradflow`); one
    panel per key present, one line per layer.  Returns the path written.
    """
    _check_dict(history, "history", "MLP.fit(..., grad_norms=True)")
    keys = [(k, label) for k, label in GRAD_NORM_KEYS if history.get(k)]
    if not keys:
        raise ValueError("the history holds no gradient norms to plot (grad_norms, delta_norms or update_ratios)")
    for key, _ in keys:
        for e, row in enumerate(history[key], start=1):
            if isinstance(row, (str, bytes)) or not hasattr(row, "__len__"):
                raise TypeError(f"history[{key!r}] must hold one list per epoch, of one value per layer (the "
                                f"history fit returns, not one epoch's entry); epoch {e} has "
                                f"{type(row).__name__} {row!r}")
    fig = _new_figure((4.8 * len(keys), 4))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, (key, label) in zip(axes, keys):
        rows = [list(r) for r in history[key]]
        n_layers = max(len(r) for r in rows)
        epochs = list(range(1, len(rows) + 1))
        for l in range(n_layers):
            ys = [r[l] if l < len(r) and r[l] is not None and r[l] > 0 else float("nan") for r in rows]
            ax.plot(epochs, ys, marker=".", label=f"layer {l + 1}" + (" (output)" if l == n_layers - 1 else ""))
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per layer")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path, dpi, title)


def _short(v) -> str:
    return "nan" if v is None else f"{float(v):.4g}"


def shown_units(n: int, max_nodes: int) -> list:
    """The units (0-based) `plot_trace` draws of a layer of `n`: all of them when `n <= max_nodes`,
    else the first and the last ones, `max_nodes - 1` in all, with `None` for the slot of the
    elided ones between them."""
    if n <= max_nodes:
        return list(range(n))
    head = max_nodes // 2
    tail = max_nodes - 1 - head
    return list(range(head)) + [None] + list(range(n - tail, n))


def plot_trace(trace: dict, path, dpi: int = 120, max_labelled_edges: int = 12, max_nodes: int = 12) -> Path:
    """Draw the network of a traced step (`gpubp.explain.trace_step`) with its values to `path`.

    Nodes show z and a (the first sample's, for a batch) and the bias b;
    input nodes their value.  Edges are drawn with a width that grows with
    |W| (blue positive, red negative) and labelled with W and dW, unless
    the network has more than `max_labelled_edges` edges.  A layer of more
    than `max_nodes` units is drawn with its first and last units and a
    marker counting the ones between (`shown_units`), so that a wide layer
    (784 inputs) gives a readable picture of ordinary size.  Returns the
    path written.
    """
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 3:
        raise ValueError(f"max_nodes must be an integer of at least 3, got {max_nodes!r}")
    _check_dict(trace, "trace", "gpubp.explain.trace_step")
    Circle = require("matplotlib.patches", "plot", "plotting").Circle   # the extra named, if missing

    sizes = trace["layer_sizes"]
    L = len(sizes) - 1
    shown = [shown_units(n, max_nodes) for n in sizes]
    # the slot (row) each shown unit takes in its layer's column
    slot = [{u: k for k, u in enumerate(units) if u is not None} for units in shown]
    # the first sample's row where vectors are rows (a batch, one sample given as a row included)
    first = lambda v: v[0] if len(v) and hasattr(v[0], "__len__") and not isinstance(v[0], str) else v  # noqa: E731
    fwd = {f["layer"]: f for f in trace["forward"]}
    bwd = {b["layer"]: b for b in trace["backward"]}
    n_edges = sum(sizes[l] * sizes[l - 1] for l in range(1, L + 1))
    label_edges = n_edges <= max_labelled_edges
    tallest = max(len(units) for units in shown)
    gap = 2.6                                   # between layers, in units of the node spacing
    inch = 1.3
    fig = _new_figure((inch * (gap * L + 1.6), inch * (tallest + 1.6)))
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.9))
    ax.set_xlim(-0.8, gap * L + 0.8)
    ax.set_ylim(-0.5 * tallest - 0.3, 0.5 * tallest + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")

    def pos(layer, i):
        k = slot[layer][i] if i is not None else shown[layer].index(None)
        return gap * layer, (len(shown[layer]) - 1) / 2 - k

    wmax = max((abs(w) for f in trace["forward"] for row in f["W"] for w in row), default=1.0) or 1.0
    for l in range(1, L + 1):
        W, dW = fwd[l]["W"], bwd[l]["dW"]
        for j in slot[l]:
            for i in slot[l - 1]:
                (x0, y0), (x1, y1) = pos(l - 1, i), pos(l, j)
                w = W[j][i]
                ax.plot([x0, x1], [y0, y1], color="tab:blue" if w >= 0 else "tab:red",
                        lw=0.6 + 3.0 * abs(w) / wmax, alpha=0.55, zorder=1)
                if label_edges:
                    t = 0.72                   # near the node the edge feeds: its inputs fan out there
                    xm, ym = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                    ax.text(xm, ym, f"W={_short(w)}\ndW={_short(dW[j][i])}", fontsize=7, ha="center",
                            va="center", zorder=3,
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="0.8", alpha=0.9))
    for l in range(L + 1):
        if None in shown[l]:
            x, y = pos(l, None)
            ax.text(x, y, f"...\n{sizes[l] - len(slot[l])} more", fontsize=7, ha="center", va="center", zorder=4)
        for i in slot[l]:
            x, y = pos(l, i)
            ax.add_patch(Circle((x, y), 0.36, fc="0.92" if l == 0 else "#fff6d5", ec="0.3", zorder=2))
            if l == 0:
                text = f"x{i + 1}\n{_short(first(trace['input'])[i])}"
            else:
                f = fwd[l]
                text = (f"z={_short(first(f['z'])[i])}\na={_short(first(f['a'])[i])}\nb={_short(f['b'][i])}")
            ax.text(x, y, text, fontsize=7, ha="center", va="center", zorder=4)
    for l in range(L + 1):
        name = "input" if l == 0 else (f"layer {l} ({trace['activations'][l - 1]})" if l < L
                                      else f"output ({trace['activations'][-1]})")
        ax.text(gap * l, 0.5 * tallest + 0.1, name, ha="center", va="bottom", fontsize=9)
    head = (f"{sizes}, loss {trace['loss_name']} {_short(trace['loss'])} -> {_short(trace['loss_after'])} "
            f"after one SGD step at lr {trace['lr']:g}")
    if trace["batch"] > 1:
        head += f"; z and a of sample 1 of {trace['batch']}, dW summed over the batch"
    if not label_edges:
        head += f"; {n_edges} edges: W and dW not labelled"
    if any(None in units for units in shown):
        head += f"; layers of more than {max_nodes} units: their first and last units drawn"
    # wrapped to the figure's width (about 12 characters of 10-point text per inch), never cut off
    fig.suptitle(textwrap.fill(head, max(40, int(fig.get_figwidth() * 12))), fontsize=10)
    return _save(fig, path, dpi, tight=False)


__all__ = ["plot_history", "plot_grad_norms", "plot_trace", "shown_units", "GRAD_NORM_KEYS"]
