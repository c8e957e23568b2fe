"""Small classification data sets for examples and the command line.

Every data set is built offline: scikit-learn (`gpubp[sklearn]`) ships
digits, iris, breast_cancer and wine inside its package, `moons` comes from
`sklearn.datasets.make_moons`, and `xor` is generated here (`make_xor` and
`raw_dataset("xor")` need numpy only).  `load_dataset` splits a data set
into stratified train / validation / test parts with scikit-learn's
`train_test_split` (so it needs scikit-learn for every data set, `xor`
included) and a seed, and standardises the features with the training
part's statistics only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checks import check_flag, check_positive_int, check_seed, finite_after_cast, host_array, real_number
from .losses import LABEL_LOSSES, LOSSES, REGRESSION_ONLY_LOSSES
from .optional import require

#: every data set `load_dataset` knows
DATASETS = ("digits", "iris", "breast_cancer", "wine", "moons", "xor")

#: samples generated for the synthetic data sets when not told otherwise
SYNTHETIC_SAMPLES = 1000


def make_xor(n_samples: int = SYNTHETIC_SAMPLES, noise: float = 0.0,
             seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The XOR problem: points uniform in `[-1, 1]^2`, class 1 where exactly one coordinate is positive.

    `noise` is the standard deviation of Gaussian noise added to the points
    after their labels are fixed.  Returns `(X (n, 2) float64, y (n,) int64)`.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 4:
        raise ValueError(f"n_samples must be an integer of at least 4, got {n_samples!r}")
    _check_noise(noise)
    rng = np.random.default_rng(check_seed(seed))
    X = rng.uniform(-1.0, 1.0, size=(int(n_samples), 2))
    y = ((X[:, 0] > 0) != (X[:, 1] > 0)).astype(np.int64)
    if noise:
        X = X + rng.normal(0.0, noise, size=X.shape)
    return X, y


def _check_noise(noise) -> float:
    """A noise level: a finite number >= 0 (True is not 1.0)."""
    if (x := real_number(noise)) is None or not np.isfinite(x) or x < 0:
        raise ValueError(f"noise must be a non-negative number, got {noise!r}")
    return float(x)


def raw_dataset(name: str, seed: int | None = 0, n_samples: int | None = None,
                noise: float | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The whole data set `name` as `(X float64, y int64, description)`, before any split."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if name in ("moons", "xor"):
        # checked here for both, as make_xor checks them: scikit-learn's make_moons took True for 1 sample
        # and blamed its own parameters
        n = SYNTHETIC_SAMPLES if n_samples is None else check_positive_int("n_samples", n_samples)
        if noise is not None:
            noise = _check_noise(noise)
        check_seed(seed)
        if name == "moons":
            make_moons = require("sklearn.datasets", "sklearn", "the moons data set",
                                 "scikit-learn").make_moons

            nz = 0.2 if noise is None else noise
            X, y = make_moons(n_samples=n, noise=nz, random_state=seed)
            desc = f"two interleaving half circles (sklearn make_moons, noise {nz})"
        else:
            nz = 0.0 if noise is None else noise
            X, y = make_xor(n, nz, seed)
            desc = f"XOR of the signs of two uniform coordinates (noise {nz})"
        return np.asarray(X, np.float64), np.asarray(y, np.int64), desc
    if n_samples is not None or noise is not None:
        raise ValueError(f"n_samples and noise apply to the generated data sets (moons, xor), not {name!r}")
    skd = require("sklearn.datasets", "sklearn", f"the bundled data set {name!r}", "scikit-learn")

    loader = {"digits": skd.load_digits, "iris": skd.load_iris,
              "breast_cancer": skd.load_breast_cancer, "wine": skd.load_wine}[name]
    bunch = loader()
    desc = {"digits": "8x8 images of handwritten digits (scikit-learn's copy of the UCI set)",
            "iris": "Fisher's iris measurements", "breast_cancer": "Wisconsin diagnostic breast cancer",
            "wine": "UCI wine recognition"}[name]
    return np.asarray(bunch.data, np.float64), np.asarray(bunch.target, np.int64), desc


def standardize(X_train, *others, eps: float = 1e-12) -> tuple[np.ndarray, ...]:
    """Scale features to zero mean and unit variance using `X_train`'s statistics only.

    Constant features (standard deviation 0, within the rounding of the mean, or
    below `eps`) are centred and left unscaled (their `std` is returned as 1).  Returns
    `(mean, std, X_train_scaled, *others_scaled)`.
    """
    if (x := real_number(eps)) is None or not np.isfinite(x) or x < 0:
        raise ValueError(f"eps must be a non-negative finite number, got {eps!r}")
    # checked as the network checks its inputs: masks, dates, text and NaN are refused, not averaged
    arrays = [_feature_rows(X, name) for X, name in
              zip((X_train, *others), ("X_train", *(f"others[{i}]" for i in range(len(others)))))]
    X_train = arrays[0]
    if X_train.shape[0] == 0:
        raise ValueError("X_train holds no samples: its mean and standard deviation are undefined")
    for X, i in zip(arrays[1:], range(len(others))):
        if X.shape[1] != X_train.shape[1]:
            raise ValueError(f"others[{i}] has {X.shape[1]} features; X_train has {X_train.shape[1]}")
    mean, var = X_train.mean(axis=0), X_train.var(axis=0)
    std = np.sqrt(var)
    # constant also where the std is within the rounding of the mean (scikit-learn's rule, as
    # `fit(standardize=True)`'s): 1000 rows of 1.7e9 have a float64 std near 3e-5, far above eps
    n_eps = X_train.shape[0] * np.finfo(np.float64).eps
    constant = (var <= n_eps * var + (n_eps * mean) ** 2) | (std < eps) | (std == 0)   # eps=0: no 0 / 0
    std = np.where(constant, 1.0, std)
    out = [(X - mean) / std for X in arrays]
    return (mean, std, *out)


def _feature_rows(X, name: str) -> np.ndarray:
    h = host_array(X, name)
    if h.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples, features), got shape {h.shape}")
    return finite_after_cast(h, np.float64, name)


@dataclass
class Dataset:
    """A split data set; `y_*` are integer class labels `0 .. n_classes - 1`."""

    name: str
    description: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    #: the training part's feature mean and standard deviation (None if not standardised)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def summary(self) -> str:
        return (f"{self.name}: {self.description}; {self.n_features} features, {self.n_classes} classes; "
                f"{len(self.y_train)} train / {len(self.y_val)} validation / {len(self.y_test)} test")


def _fraction(name, v, allow_zero):
    if (x := real_number(v)) is None or not np.isfinite(x) or x < 0 or x >= 1 or (x == 0 and not allow_zero):
        rng = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be a fraction in {rng}, got {v!r}")
    return float(v)


def load_dataset(name: str, test_size: float = 0.2, val_size: float = 0.0, seed=0,
                 standardize_features: bool = True, n_samples=None, noise=None) -> Dataset:
    """Load `name`, split it stratified (test, then validation from the rest) and standardise.

    `test_size` is the fraction of all samples held out for testing,
    `val_size` the fraction of all samples held out for validation (0: none).
    The split and the generated data sets are reproducible from `seed`.
    """
    train_test_split = require("sklearn.model_selection", "sklearn", "splitting the data sets",
                               "scikit-learn").train_test_split

    standardize_features = check_flag("standardize_features", standardize_features)
    test_size = _fraction("test_size", test_size, False)
    val_size = _fraction("val_size", val_size, True)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 2**32):
        raise ValueError(f"seed must be None or an integer from 0 to 2**32 - 1 (scikit-learn's split takes no "
                         f"other), got {seed!r}")
    if test_size + val_size >= 0.9:
        raise ValueError(f"test_size + val_size must leave more than 10% for training, got "
                         f"{test_size} + {val_size}")
    X, y, desc = raw_dataset(name, seed, n_samples, noise)
    n_classes = int(y.max()) + 1
    try:
        X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
        if val_size:
            X_tr, X_va, y_tr, y_va = train_test_split(X_tr, y_tr, test_size=val_size / (1 - test_size),
                                                      random_state=seed, stratify=y_tr)
        else:
            X_va, y_va = X[:0], y[:0]
    except ValueError as e:      # too few samples for a stratified split: scikit-learn's words alone name no cause
        counts = np.bincount(y, minlength=n_classes)
        raise ValueError(f"{name} has too few samples ({len(y)}; the smallest class has {int(counts.min())}) "
                         f"for a stratified split with test_size {test_size} and val_size {val_size}: every "
                         f"class needs samples in each part; use more samples (n_samples) or larger fractions "
                         f"({e})") from None
    mean = std = None
    if standardize_features:
        mean, std, X_tr, X_va, X_te = standardize(X_tr, X_va, X_te)
    return Dataset(name, desc, X_tr, y_tr, X_va, y_va, X_te, y_te, n_classes, mean, std,
                   {"seed": seed, "test_size": test_size, "val_size": val_size})


def _class_labels(y, n_classes: int) -> np.ndarray:
    """`y` as int64 class labels, checked: 1-D, whole numbers (of any numeric dtype), in `[0, n_classes)`."""
    n_classes = check_positive_int("n_classes", n_classes)
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iuf" or \
            (y.size and not (np.all(np.isfinite(y)) and np.all(y == np.floor(y)) and y.min() >= 0 and
                             y.max() < n_classes)):
        raise ValueError(f"labels must be a 1-D array of integers in [0, {n_classes})")
    return y.astype(np.int64)


def _numeric_dtype(dtype) -> np.dtype:
    """`dtype` as a numpy dtype of real numbers (bool, integers or floats), or a TypeError naming `dtype`:
    a text dtype made the zeros of one-hot rows empty strings, a date dtype made them dates."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "biuf":
        raise TypeError(f"dtype must be a real numeric dtype (a float, integer or bool type), got {dtype!r}")
    return dt


def one_hot(y, n_classes: int, dtype=np.float64) -> np.ndarray:
    """Integer labels `(B,)` as one-hot rows `(B, n_classes)`."""
    dtype = _numeric_dtype(dtype)
    y = _class_labels(y, n_classes)
    out = np.zeros((y.shape[0], n_classes), dtype=dtype)
    out[np.arange(y.shape[0]), y] = 1
    return out


def _check_loss_name(loss) -> None:
    """A ValueError for a name not in `LOSSES` (None included; losses.check_loss says TypeError for it),
    or for a regression loss: these helpers are about class labels."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if loss in REGRESSION_ONLY_LOSSES:
        raise ValueError(f"loss {loss!r} is a regression loss: class labels are targets of "
                         f"{', '.join(LABEL_LOSSES)}")


def output_sizes(loss: str, n_classes: int) -> tuple[int, ...]:
    """The output-layer sizes that fit `n_classes` classes under `loss`, preferred first.

    cross_entropy: one logit per class.  binary_cross_entropy: one logit for
    two classes, else one per class (one-vs-rest on one-hot targets).  The
    squared errors: one output per class on one-hot targets, or one output
    with 0/1 targets for two classes.
    """
    n_classes = check_positive_int("n_classes", n_classes)
    _check_loss_name(loss)     # every other name was taken for a squared-error loss
    if loss == "cross_entropy":
        return (n_classes,)
    if loss == "binary_cross_entropy":
        return (1,) if n_classes == 2 else (n_classes,)
    return (n_classes, 1) if n_classes == 2 else (n_classes,)


def targets_for(y, loss: str, n_out: int, dtype=np.float64) -> np.ndarray:
    """Labels `y` as the targets of a network with `n_out` outputs trained with `loss`.

    cross_entropy keeps the integer labels; one output gets `(B, 1)` 0/1
    targets; several outputs one-hot rows.
    """
    n_out = check_positive_int("n_out", n_out)
    _check_loss_name(loss)
    dtype = _numeric_dtype(dtype)
    y = _class_labels(y, 2 if n_out == 1 else n_out)      # a label 1.7 is not truncated to 1
    if loss == "cross_entropy":
        return y
    if n_out == 1:
        return y.reshape(-1, 1).astype(dtype)
    return one_hot(y, n_out, dtype)


def labels_from_outputs(out, loss: str) -> np.ndarray:
    """Class labels from a network's raw outputs (logits, or the squared-error outputs)."""
    # the loss picks the threshold of one output (0 for logits, 0.5 for squared errors): an unknown
    # name ("bce", a typo) was taken for a squared-error loss, and text outputs were argmax'ed as text
    _check_loss_name(loss)
    out = host_array(out, "out")
    if out.ndim == 1:
        out = out.reshape(-1, 1)
    if out.ndim != 2:   # argmax(axis=1) of (B, n, m) gave (B, m) "labels"
        raise ValueError(f"out must be a network's outputs of shape (B,) or (B, n_out), got shape {out.shape}")
    if out.shape[1] == 1:
        threshold = 0.0 if loss == "binary_cross_entropy" else 0.5
        return (out[:, 0] > threshold).astype(np.int64)
    return out.argmax(axis=1)


def accuracy(net, X, y) -> float:
    """Fraction of `X` whose predicted class (see `labels_from_outputs`) equals `y`."""
    out = net.forward(X)
    labels = labels_from_outputs(net.backend.to_numpy(out), net.loss)
    y = np.asarray(y)
    if y.shape != labels.shape:      # a (B, 1) column would broadcast to (B, B) comparisons
        raise ValueError(f"y has shape {y.shape}; expected ({labels.shape[0]},), one class label per row of X")
    # labels that no output can give (1.5, "a", 7 of 3 classes) would count as wrong, silently
    try:
        y = _class_labels(y, max(2, net.sizes[-1]))
    except ValueError as e:
        raise ValueError(f"y: {e}") from None
    return float(np.mean(labels == y))


__all__ = ["DATASETS", "Dataset", "load_dataset", "raw_dataset", "make_xor", "standardize", "one_hot",
           "output_sizes", "targets_for", "labels_from_outputs", "accuracy"]
