"""Run under mpiexec by tests/test_distributed.py: data-parallel training cases, each rank's result to a file.

Usage: dp_train.py OUT_PREFIX [BACKEND]; writes OUT_PREFIX.<rank>.npz with,
per case, the flat parameters and the loss history, and the transport used.  The cases (and the data) are
shared with the test through `cases()`, which computes nothing on MPI.
"""

import sys

import numpy as np

N, N_VAL = 23, 7
SIZES = [5, 7, 6, 3]


def data():
    rng = np.random.default_rng(123)
    X = rng.standard_normal((N, SIZES[0]))
    Y = rng.integers(0, SIZES[-1], N)
    Xv = rng.standard_normal((N_VAL, SIZES[0]))
    Yv = rng.integers(0, SIZES[-1], N_VAL)
    return X, Y, Xv, Yv


def cases():
    """name -> fit settings; batch sizes that 2 and 3 do not divide, a batch of 1 (ranks with no rows),
    the whole set in one batch, SGD with momentum and Adam, sharded data, one bucket per layer
    and no overlap."""
    return {
        "b5_adam": dict(batch_size=5, optimizer=("adam", dict(lr=0.02)), epochs=3, shuffle=True),
        "b5_adam_bucket_per_layer": dict(batch_size=5, optimizer=("adam", dict(lr=0.02)), epochs=3, shuffle=True,
                                         bucket_bytes=8),
        "b5_adam_no_overlap": dict(batch_size=5, optimizer=("adam", dict(lr=0.02)), epochs=3, shuffle=True,
                                   overlap=False),
        "b1_sgd": dict(batch_size=1, optimizer=("sgd", dict(lr=0.05, momentum=0.9)), epochs=1, shuffle=True),
        "b23_adamw": dict(batch_size=23, optimizer=("adamw", dict(lr=0.05)), epochs=4, shuffle=False),
        "b4_sgd_val": dict(batch_size=4, optimizer=("sgd", dict(lr=0.1)), epochs=2, shuffle=True, validation=True),
        "sharded_b6": dict(batch_size=6, optimizer=("adam", dict(lr=0.02)), epochs=3, shuffle=True, sharded=True),
        "sharded_b7_noshuffle": dict(batch_size=7, optimizer=("sgd", dict(lr=0.1)), epochs=2, shuffle=False,
                                     sharded=True),
    }


def make_net(backend="numpy"):
    from gpubp.network import MLP

    return MLP(SIZES, activation="tanh", loss="cross_entropy", dtype="float64", seed=1, backend=backend)


def make_opt(spec):
    from gpubp.optim import make_optimizer

    name, kw = spec
    lr = kw.get("lr")
    return make_optimizer(name, lr, **{k: v for k, v in kw.items() if k != "lr"})


def shard_rows(n, size, rank):
    """The rows of an `n`-row set that rank `rank` of `size` holds in the sharded cases (uneven shards)."""
    from gpubp.distributed import share

    a, b = share(n, size, rank)
    return np.arange(a, b)


def main(out, backend="numpy"):
    from gpubp import distributed

    comm = distributed.init(backend=backend, timeout=60)
    X, Y, Xv, Yv = data()
    result = {}
    for name, c in cases().items():
        net = make_net(backend)
        opt = make_opt(c["optimizer"])
        comm.overlap = c.get("overlap", True)
        comm.bucket_bytes = c.get("bucket_bytes", distributed.DEFAULT_BUCKET_BYTES)
        Xr, Yr = X, Y
        if c.get("sharded"):
            rows = shard_rows(N, comm.size, comm.rank)
            Xr, Yr = X[rows], Y[rows]
        hist = net.fit(Xr, Yr, epochs=c["epochs"], batch_size=c["batch_size"], optimizer=opt,
                       shuffle=c["shuffle"], progress=False, comm=comm, sharded=c.get("sharded", False),
                       validation=(Xv, Yv) if c.get("validation") else None)
        result[name + ".params"] = net.backend.to_numpy(net._params)
        for k, v in hist.items():
            result[f"{name}.hist.{k}"] = np.array(v)
    result["transport"] = np.array(comm.transport)
    np.savez(f"{out}.{comm.rank}.npz", **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
