"""Checks of what users pass in, shared by the network, its checkpoints and the PyTorch module.

Each check either returns the value in the form gpubp uses or raises a
`ValueError` / `TypeError` that names the argument; none changes anything.
"""

from __future__ import annotations

import math

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}


def real_number(x) -> float | None:
    """`x` as a float when it is a real number (a Python or numpy int or float, not a bool), else None.
    A Python int beyond float's range becomes an infinity of its sign, which the callers' range checks
    refuse (float() would raise OverflowError)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def check_dtype(dtype):
    try:   # None is refused: numpy reads it as float64, not as the default float32
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    # the native byte order: ">f4" is named float32 too, but kept it gave a byte-swapped network
    # (its buffers, checkpoints and what device kernels would read)
    return np.dtype(DTYPES[dt.name])


def check_precision(precision, dtype):
    """A precision mode's name (`gpubp.precision.PRECISIONS`) checked against the network's `dtype`:
    every mode but "float32" rounds float32 operands, so it needs dtype float32."""
    from .precision import check_precision as check_name

    precision = check_name(precision)
    if precision != "float32" and np.dtype(dtype) != np.float32:
        raise ValueError(f"precision={precision!r} needs dtype float32, got {np.dtype(dtype).name}")
    return precision


def check_sizes(layer_sizes):
    # a set or a dict has a length, but no order of its own: {784, 10} gave layers (10, 784)
    if isinstance(layer_sizes, (str, bytes, set, frozenset, dict)) or not hasattr(layer_sizes, "__len__"):
        raise TypeError(f"layer_sizes must be a sequence of integers, got {layer_sizes!r}")
    sizes = list(layer_sizes)
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs at least two sizes (inputs and outputs), got {sizes}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"layer_sizes must hold integers, got {s!r} in {sizes}")
        if s < 1:
            raise ValueError(f"every layer size must be at least 1, got {sizes}")
    return tuple(int(s) for s in sizes)


def check_seed(seed):
    """None or a non-negative integer (any size): what numpy's generators take and JSON can hold."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be None or a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be None or a non-negative integer, got {seed}")
    return int(seed)


def check_positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def check_flag(name, v) -> bool:
    """A yes/no argument: True or False (numpy's bools too).  Anything else is refused rather than read
    by its truth value, which would take the string "False" (say, from a configuration file) as yes."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def host_array(x, name: str) -> np.ndarray:
    """`x` as a numpy array of real numbers, with errors naming `name` for ragged, complex or
    non-numeric input."""
    if np.ma.isMaskedArray(x):
        # np.asarray drops the mask: the values under it (often fill garbage) would be used as data
        n_masked = int(np.ma.count_masked(x))
        if n_masked:
            raise ValueError(f"{name} is a masked array with {n_masked} masked value(s); gpubp does not read "
                             f"masks: fill them ({name}.filled(value)) or drop those rows first")
        x = np.ma.getdata(x)
    if getattr(x, "requires_grad", False) is True and hasattr(x, "detach"):
        raise TypeError(f"{name} is a tensor that requires grad; pass {name}.detach() (gpubp computes its own "
                        "gradients and cannot record into autograd)")
    try:
        h = np.asarray(x)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{name} is not a rectangular numeric array ({e})") from None
    if h.dtype == object and hasattr(x, "to_numpy"):
        dts = getattr(x, "dtypes", None)   # a frame's: one per column (a Series of dtypes); a Series's: one
        for dt in (list(dts.values) if hasattr(dts, "values") else [dts]):
            if getattr(dt, "kind", None) in ("m", "M"):   # pandas would make them nanoseconds: not numbers
                raise TypeError(f"{name} has a {dt} column; gpubp takes real numbers only (convert dates and "
                                "durations to numeric features first)")
        # a pandas frame of nullable numbers (Int64, Float64 columns) gives objects: as numbers, a missing
        # value (pd.NA) as NaN, which the callers refuse as such; text stays objects and is refused below
        try:
            h = x.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            pass
    if h.dtype.kind == "c":
        raise TypeError(f"{name} is complex ({h.dtype}); gpubp takes real numbers only")
    if h.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {h.dtype}")
    return h


def finite_after_cast(h: np.ndarray, dtype, name: str) -> np.ndarray:
    """`h` cast to `dtype`, refused if anything is NaN or infinite there (overflow included)."""
    with np.errstate(over="ignore", invalid="ignore"):
        a = np.ascontiguousarray(h, dtype=dtype)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        if not np.all(np.isfinite(h)):
            raise ValueError(f"{name} contains NaN or infinity")
        dt = np.dtype(dtype).name
        raise ValueError(f"{name} overflows {dt} (values beyond the range of {dt}, largest magnitude "
                         f"{float(np.abs(h).max()):.3g})")
    return a
