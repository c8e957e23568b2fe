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


def narrow(width, hidden, n_out=10):
    """Input `width`, `hidden` hidden layers of `width`, `n_out` outputs."""
    return [width] * (hidden + 1) + [n_out]


#: tiny-cuda-nn's example network (64 inputs, five hidden layers of 64, 64 outputs), its throughput batch
W64x5_OUT64 = narrow(64, 5, 64)
THROUGHPUT_BATCH = 2 ** 20


def net_name(sizes) -> str:
    sizes = list(sizes)
    if sizes == WIDE:
        return "wide 1024-4096x3-10"
    if sizes == DEFAULT:
        return "default 64-128-10"
    if len(sizes) > 3 and len(set(sizes[:-1])) == 1:
        out = "" if sizes[-1] == 10 else f" out{sizes[-1]}"
        return f"narrow w{sizes[0]} x{len(sizes) - 2}{out}"
    return "-".join(map(str, sizes))


#: per mode: timed seconds and most repetitions per row, warm-up repetitions and
#: seconds (both must be reached), suite budget (s), and the part of that budget kept
#: for the `torch.compile` rows (which run last: rows before them stop when only
#: `compile_reserve_s` is left).  A GPU session's command may run 10 minutes: the
#: suite's budget leaves room for start-up, kernel compilation before the first row
#: and one row overrunning its budget.
MODES = {
    "tiny": dict(row_s=0.05, reps=5, warmup=1, warm_s=0.02, suite_s=120, compile_reserve_s=0),
    "quick": dict(row_s=0.35, reps=40, warmup=3, warm_s=0.15, suite_s=200, compile_reserve_s=0),
    "full": dict(row_s=0.75, reps=100, warmup=5, warm_s=0.25, suite_s=410, compile_reserve_s=160),
}
#: the least budget left for a torch.compile row to start (its first call compiles)
COMPILE_NEED_S = 60


def _unique(shapes):
    out = []
    for s in shapes:
        if s not in out:
            out.append(s)
    return out


def goal_step_shapes():
    """`(sizes, batch)` of the training steps the goals judge, in the goals' order."""
    return _unique([(list(g.sizes), g.batch) for g in GOALS if g.sizes is not None])


def goal_step_peers(sizes, batch):
    """The step peers the goals at step `(sizes, batch)` judge: gpubp's rows of each goal's precision
    (`goals.GPUBP_PEERS`) and the peer it is compared with."""
    from .goals import GPUBP_PEERS
    out = set()
    for g in GOALS:
        if g.sizes is not None and list(g.sizes) == list(sizes) and g.batch == batch:
            out.update(GPUBP_PEERS[g.precision], (g.peer,))
    return out


def compile_step_shapes():
    """`(sizes, batch)` the `torch.compile` peers run: the wide and the narrow w64 x8 goal steps."""
    return [(WIDE, 4096), (narrow(64, 8), 2 ** 18)]


def run_shapes():
    """`(sizes, batch)` of the fused-run rows: the narrow networks the goals judge."""
    return [(s, b) for s, b in goal_step_shapes() if len(set(s[:-1])) == 1 and s[0] <= 128]


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
    """(batch, n_out, n_in) of the GEMM kernel rows: the goals' kernel shapes first."""
    shapes = goal_kernel_shapes() + [(2 ** 18, 64, 64)]
    if mode == "full":
        shapes += [(2 ** 16, 128, 128), (2 ** 20, 128, 128)]
    return _unique(shapes)


def goal_kernel_shapes():
    """(batch, n_out, n_in) of the GEMMs the goals judge, in the goals' order."""
    return _unique([tuple(g.kernel_shape) for g in GOALS if g.kernel_shape is not None])


def goal_kernel_rows(batch, n_out, n_in):
    """The `(kernel, peer)` GEMM rows the goals at shape (batch, n_out, n_in) judge: gpubp's variants
    of each goal's precision (`goals.GPUBP_KERNEL_PEERS`) and the cuBLAS GEMM it is compared with."""
    from .goals import GPUBP_KERNEL_PEERS
    out = set()
    for g in GOALS:
        if g.kernel_shape == (batch, n_out, n_in):
            out.update((g.kernel, p) for p in (*GPUBP_KERNEL_PEERS[g.precision], g.peer))
    return out


def kernel_precisions(batch, n_out, n_in):
    """The precisions whose GEMMs are timed at a kernel shape: float32 everywhere, and the
    tensor-core modes where a goal judges them."""
    tc = {g.precision for g in GOALS if g.kernel_shape == (batch, n_out, n_in)}
    return ["float32"] + [p for p in ("tf32", "bf16", "3xtf32") if p in tc]


def kernel_tiles(batch, n_out, n_in):
    """Whether every float32 GEMM tile is timed at this shape (where a float32 goal judges it)."""
    return any(g.kernel_shape == (batch, n_out, n_in) and g.precision == "float32" for g in GOALS)
