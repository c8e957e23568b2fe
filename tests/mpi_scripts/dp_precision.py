"""Run under mpiexec by tests/test_distributed.py: float32 training in each precision mode on the ranks
and in one process (in this script, on rank 0, without `comm`); rank 0 writes the relative differences.

Usage: dp_precision.py OUT.json
"""

import json
import sys

import numpy as np

from gpubp import MLP, distributed
from gpubp.optim import SGD, Adam

MODES = ("float32", "3xtf32", "tf32", "bf16")


def train(mode, opt, comm, epochs):
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((296, 8)), rng.integers(0, 3, 296)
    net = MLP([8, 32, 32, 3], activation="relu", loss="cross_entropy", dtype="float32", precision=mode, seed=1,
              backend="numpy")
    o = Adam(lr=1e-2) if opt == "adam" else SGD(lr=0.1, momentum=0.9)
    kw = dict(epochs=epochs, batch_size=37, optimizer=o, verbose=0)   # 37: shares of 19 and 18 rows
    net.fit(X, Y, comm=comm, **kw) if comm is not None else net.fit(X, Y, **kw)
    return net.backend.to_numpy(net._params).astype(np.float64)


comm = distributed.init(backend="numpy")
out = {}
for mode in MODES:
    for opt in ("adam", "sgd"):
        epochs = 2 if mode in ("float32", "3xtf32") else 1
        got = train(mode, opt, comm, epochs)
        if comm.is_root:
            ref = train(mode, opt, None, epochs)
            out[f"{mode}.{opt}"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
if comm.is_root:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
