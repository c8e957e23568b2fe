"""Loss names (docs/spec.md, "Losses") and the checks and conversions of targets.

The loss value and its gradient are computed by the backends
(`Backend.loss_and_delta`); this module turns what a user passes as targets
into what a backend expects, with clear errors for anything else.
"""

from __future__ import annotations

import numpy as np

from .checks import finite_after_cast, host_array

#: every loss
LOSSES = ("mse", "half_sse", "cross_entropy", "binary_cross_entropy", "poisson")

#: losses whose output layer gives logits (the output activation must be identity)
LOGIT_LOSSES = frozenset({"cross_entropy", "binary_cross_entropy"})

#: losses of classifiers (accuracy is reported for them)
CLASSIFICATION_LOSSES = LOGIT_LOSSES

#: losses that fuse the output's nonlinearity into themselves, the name of that function, and what
#: the network's raw outputs then are; their output activation must be identity
FUSED_OUTPUT = {"cross_entropy": ("softmax", "logits"), "binary_cross_entropy": ("sigmoid", "logits"),
                "poisson": ("exp", "log-rates")}

#: losses of regression only (the helpers that turn class labels into targets refuse them)
REGRESSION_ONLY_LOSSES = frozenset({"poisson"})

#: losses that train on class labels turned into targets (`gpubp.data.targets_for`, `gpubp train`)
LABEL_LOSSES = tuple(name for name in LOSSES if name not in REGRESSION_ONLY_LOSSES)


def check_loss(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"loss must be a string naming a loss, got {type(name).__name__}")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return name


def fused_output_text(loss: str) -> str:
    """What a loss of `FUSED_OUTPUT` takes as the network's outputs, in words ("logits (the softmax is
    fused into it)"), for the errors that refuse another output activation."""
    fn, outputs = FUSED_OUTPUT[loss]
    return f"{outputs} (the {fn} is fused into it)"


def check_output_activation(loss: str, out_act: str) -> None:
    """Refuse an output activation other than identity for a loss that fuses its own (`FUSED_OUTPUT`):
    the network would apply a nonlinearity the loss applies again."""
    if loss in FUSED_OUTPUT and out_act != "identity":
        raise ValueError(f"loss {loss!r} works on {fused_output_text(loss)}: output_activation must be "
                         f"'identity', got {out_act!r}")


def poisson_rates(z: np.ndarray) -> np.ndarray:
    """The rates `e^z` of `poisson`'s log-rate outputs, in `z`'s dtype; inf (no warning) where they
    overflow it, as the loss's."""
    with np.errstate(over="ignore"):
        return np.exp(z)


def check_outputs(loss: str, n_out: int) -> None:
    """Refuse `loss` on `n_out` outputs where it cannot train: the softmax of `cross_entropy` over one
    logit is 1, so its loss and every gradient would be 0 whatever the data."""
    if loss == "cross_entropy" and n_out < 2:
        raise ValueError(f"'cross_entropy' needs at least 2 outputs (a softmax over classes), got layer_sizes "
                         f"ending in {n_out}: for two classes on one output use loss='binary_cross_entropy'")


def check_target_range(Y: np.ndarray, loss: str, name: str = "Y") -> None:
    """Refuse target values outside `loss`'s range, naming `name`: `binary_cross_entropy`'s lie in
    [0, 1], `poisson`'s (counts or rates) are non-negative."""
    if loss == "binary_cross_entropy" and Y.size and (Y.min() < 0 or Y.max() > 1):
        raise ValueError(f"{name}: binary_cross_entropy targets must lie in [0, 1]; got values from "
                         f"{float(Y.min())} to {float(Y.max())}")
    if loss == "poisson" and Y.size and Y.min() < 0:
        raise ValueError(f"{name}: poisson targets are counts or rates and must be non-negative; got values "
                         f"from {float(Y.min())} to {float(Y.max())}")


def prepare_targets(Y, loss: str, batch: int, n_out: int, dtype, name: str = "Y") -> np.ndarray:
    """Check targets `Y` for `batch` samples of a network with `n_out` outputs.

    Returns a host array: `(batch,)` int32 class indices for `cross_entropy`
    given labels, else `(batch, n_out)` of `dtype` (`poisson`: counts or
    rates, non-negative).  Raises ValueError or
    TypeError naming the problem (and the argument, `name`).  Values are checked
    after the conversion to `dtype`, so one that overflows it is refused.
    """
    Y = host_array(Y, name)
    if Y.dtype.kind == "f" and not np.all(np.isfinite(Y)):   # a missing label (NaN) is named as such, not a shape
        raise ValueError(f"{name} contains NaN or infinity")
    if loss == "cross_entropy" and Y.ndim == 1 and Y.dtype.kind == "f" and Y.shape[0] == batch:
        raise ValueError(f"class labels in {name} must be integers, got dtype {Y.dtype} (pass "
                         f"{name}.astype(int) if they are whole numbers; (B, {n_out}) rows are probabilities)")
    if loss == "cross_entropy" and Y.ndim == 1 and (np.issubdtype(Y.dtype, np.integer) or Y.dtype == bool):
        if Y.shape[0] != batch:
            raise ValueError(f"{name} has {Y.shape[0]} labels but X has {batch} samples")
        if batch and (Y.min() < 0 or Y.max() >= n_out):
            raise ValueError(
                f"class labels in {name} must lie in [0, {n_out}) for a network with {n_out} outputs; "
                f"got labels from {int(Y.min())} to {int(Y.max())}")
        return Y.astype(np.int32)
    if Y.ndim == 1 and n_out == 1:
        Y = Y.reshape(-1, 1)
    elif Y.ndim == 1 and batch == 1 and Y.shape[0] == n_out:
        Y = Y.reshape(1, -1)
    if Y.ndim != 2 or Y.shape != (batch, n_out):
        hint = " (cross_entropy also takes (B,) integer class labels)" if loss == "cross_entropy" else ""
        raise ValueError(f"{name} has shape {Y.shape}; expected ({batch}, {n_out}) for X with {batch} "
                         f"samples and a network with {n_out} outputs{hint}")
    # NaN and infinity were refused above (integers and booleans are finite): what is not finite now overflowed
    Y = finite_after_cast(Y, dtype, name)
    check_target_range(Y, loss, name)
    if loss == "cross_entropy" and Y.size:
        if Y.min() < 0:
            raise ValueError(f"{name}: cross_entropy probability targets must be non-negative")
        sums = Y.sum(axis=1, dtype=np.float64)
        if np.max(np.abs(sums - 1.0)) > 1e-3:
            raise ValueError(f"{name}: cross_entropy probability targets must sum to 1 per row (one-hot or "
                             f"distributions); row sums range from {sums.min():.6g} to {sums.max():.6g}")
        # each row divided by its sum: the backends' loss, log s - sum_j y_j (z_j - m), and their delta,
        # softmax - y, are the value and gradient of one function only where rows sum to 1 (a row
        # summing to 1.0009 gave gradients 0.3% off the loss's finite differences).  In the dtype, into
        # a new array (Y may be the caller's), with no float64 copy of a large Y
        if np.any(sums != 1.0):
            Y = np.divide(Y, sums.astype(Y.dtype)[:, None])
    return np.ascontiguousarray(Y)
