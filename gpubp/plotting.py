"""Training curves as a PNG, drawn with matplotlib's Agg canvas (no display needed).

The figure is made with `matplotlib.figure.Figure` and `FigureCanvasAgg`
directly, so importing or calling this module never changes the user's
matplotlib backend.
"""

from __future__ import annotations

from pathlib import Path

from .optional import require


def plot_history(history: dict, path, title: str | None = None, dpi: int = 120) -> Path:
    """Write the loss (left) and accuracy (right, when recorded) curves of `history` to `path`.

    `history` is what `MLP.fit` or `gpubp train` returns: per-epoch lists
    `loss`, and optionally `accuracy`, `val_loss`, `val_accuracy`.  Returns the
    path written.
    """
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "plot", "plotting").FigureCanvasAgg
    from matplotlib.figure import Figure

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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi, format="png")
    return path


__all__ = ["plot_history"]
