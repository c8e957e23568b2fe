"""The networks and batch sizes `gpubp bench` measures, and its timing modes."""

from __future__ import annotations

from .goals import GOALS

#: a wide network: 1024 inputs, three 4096-wide hidden layers, 10 classes
WIDE = [1024, 4096, 4096, 4096, 10]
#: `gpubp train`'s network on input of the digits data set's size
DEFAULT = [64, 128, 10]
#: an MNIST-sized network (784 inputs), the CPU comparison with PyTorch
MNIST_SIZED = [784, 512, 512, 10]
#: (width, hidden layers) of the narrow networks
NARROW = [(64, 4), (64, 8), (128, 4), (128, 8)]


def narrow(width, hidden):
    """Input `width`, `hidden` hidden layers of `width`, 10 outputs."""
    return [width] * (hidden + 1) + [10]


def net_name(sizes) -> str:
    sizes = list(sizes)
    if sizes == WIDE:
        return "wide 1024-4096x3-10"
    if sizes == DEFAULT:
        return "default 64-128-10"
    if len(sizes) > 3 and len(set(sizes[:-1])) == 1:
        return f"narrow w{sizes[0]} x{len(sizes) - 2}"
    return "-".join(map(str, sizes))


#: per mode: timed seconds and most repetitions per row, warm-up repetitions and
#: seconds (both must be reached), suite budget (s)
MODES = {
    "tiny": dict(row_s=0.05, reps=5, warmup=1, warm_s=0.02, suite_s=120),
    "quick": dict(row_s=0.35, reps=40, warmup=3, warm_s=0.15, suite_s=200),
    "full": dict(row_s=0.75, reps=100, warmup=5, warm_s=0.25, suite_s=400),
}


def _unique(shapes):
    out = []
    for s in shapes:
        if s not in out:
            out.append(s)
    return out


def goal_step_shapes():
    """`(sizes, batch)` of the training steps the goals judge, in the goals' order."""
    return _unique([(list(g.sizes), g.batch) for g in GOALS if g.sizes is not None])


def gpu_step_shapes(mode):
    """`(sizes, batch)` of the GPU step rows: the goals' shapes first, no repeats."""
    if mode == "full":
        nb, wb, db = [2 ** 14, 2 ** 16, 2 ** 18, 2 ** 20], [256, 1024, 4096, 8192], [32, 256, 2048, 16384]
    else:
        nb, wb, db = [2 ** 14, 2 ** 18], [256, 4096], [32, 2048]
    shapes = goal_step_shapes()
    shapes += [(narrow(w, h), b) for w, h in NARROW for b in nb]
    shapes += [(WIDE, b) for b in wb] + [(DEFAULT, b) for b in db]
    return _unique(shapes)


def cpu_step_shapes(mode, gpu):
    """`(sizes, batch)` of the CPU step rows (fewer when a GPU is measured too)."""
    if mode == "tiny":
        return [(DEFAULT, 32), (DEFAULT, 256)]
    shapes = [(DEFAULT, 32), (DEFAULT, 256), (DEFAULT, 2048), (MNIST_SIZED, 512), (narrow(64, 4), 2 ** 14)]
    if mode == "full" and not gpu:
        shapes += [(narrow(64, 8), 2 ** 14)]
    return shapes


def kernel_shapes(mode):
    """(batch, n_out, n_in) of the fused-kernel rows: the goals' kernel shapes first."""
    shapes = _unique([tuple(g.kernel_shape) for g in GOALS if g.kernel_shape is not None])
    shapes += [(2 ** 18, 64, 64)]
    if mode == "full":
        shapes += [(8192, 4096, 4096), (2 ** 16, 128, 128), (2 ** 20, 128, 128)]
    return _unique(shapes)
