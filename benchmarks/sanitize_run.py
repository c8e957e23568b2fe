"""A short training run touching every kernel, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python benchmarks/sanitize_run.py [--large-only]
"""

import sys

import numpy as np

import gpubp
from gpubp.backends.cuda_backend import CudaBackend

rng = np.random.default_rng(0)
ONLY_LARGE = "--large-only" in sys.argv   # just the fused-run and large-tile kernels (racecheck is slow)
for dtype in () if ONLY_LARGE else ("float32", "float64"):
    for loss in gpubp.LOSSES:
        for act in gpubp.ACTIVATIONS:
            sizes = [13, 129, 31, 5]
            out_act = "identity" if loss in ("cross_entropy", "binary_cross_entropy") else act
            net = gpubp.MLP(sizes, activation=act, output_activation=out_act, loss=loss, backend="cuda",
                            dtype=dtype, seed=1)
            B = 67
            X = rng.standard_normal((B, sizes[0]))
            Y = (rng.integers(0, 5, B) if loss == "cross_entropy" else
                 rng.random((B, 5)) if loss == "binary_cross_entropy" else rng.standard_normal((B, 5)))
            opt = gpubp.optim.AdamW(1e-3) if act != "tanh" else gpubp.optim.SGD(0.01, momentum=0.9)
            for _ in range(2):
                net.train_step(X, Y, opt)
# fused narrow runs (float32 and TF32 kernels, both widths), awkward batch and widths
for precision, sizes in (("float32", [70, 64, 33, 64, 5]), ("tf32", [70, 64, 33, 64, 5]),
                         ("tf32", [20, 128, 97, 128, 3])):
    net = gpubp.MLP(sizes, activation="gelu", loss="cross_entropy", backend="cuda", seed=2, precision=precision)
    X, y = rng.standard_normal((1100, sizes[0])), rng.integers(0, sizes[-1], 1100)
    for _ in range(2):
        net.train_step(X, y, gpubp.optim.Adam())
# the large GEMM tiles (v1 and v2) and the batch split of the weight gradient, in a captured graph
for tile in ("large", "v2"):   # v1 and v2 large tiles
    net = gpubp.MLP([256, 256, 130, 10], loss="cross_entropy", backend=CudaBackend(tile=tile), seed=0)
    X = rng.standard_normal((5000, 256)).astype(np.float32)
    y = rng.integers(0, 10, 5000)
    step = net.capture_train_step(X, y, gpubp.optim.Adam())
    loss = step(X, y)
print("sanitize run done, loss", float(loss[0]))
