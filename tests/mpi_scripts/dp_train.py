"""Run under mpiexec by tests/test_distributed.py: data-parallel training cases, each rank's result to a file.

Usage: dp_train.py OUT_PREFIX [BACKEND]; writes OUT_PREFIX.<rank>.npz with,
per case, the flat parameters, the history (or the divergence message) and
the transport used.  The cases and the data are shared with the test, which
trains one process on the same global batches.
"""

import os
import sys

import numpy as np

if os.environ.get("GPUBP_EMULATE_GPU") == "1":   # tests/gpu on the CPU kernel emulator: each rank's cupy too
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from support.emulate import install_if_requested

    install_if_requested()

N, N_VAL = 23, 7
SIZES = [5, 7, 6, 3]


def data():
    rng = np.random.default_rng(123)
    X = rng.standard_normal((N, SIZES[0]))
    Y = rng.integers(0, SIZES[-1], N)
    Xv = rng.standard_normal((N_VAL, SIZES[0]))
    Yv = rng.integers(0, SIZES[-1], N_VAL)
    W = rng.random(N)
    W[2:6] = 0.0          # in the first batch of 6 rows, one rank's share weighs nothing
    return X, Y, Xv, Yv, W


def cases():
    """name -> fit settings: batch sizes that 2 and 3 do not divide, a batch of 1 (ranks with no rows),
    the whole set in one batch, SGD with momentum, Adam and AdamW, validation sets, sample weights
    (with a global batch, and a rank's shard, that weigh nothing), sharded data, one bucket per
    layer, no overlap, a learning-rate schedule, early stopping (on every rank, and on rank 0
    alone), a run whose loss diverges and one whose update overflows the parameters (each rolled
    back alike)."""
    return {
        "b5_adam": dict(batch_size=5, optimizer=("adam", dict(lr=0.02)), epochs=3, shuffle=True),
        "b5_adam_bucket_per_layer": dict(batch_size=5, optimizer=("adam", dict(lr=0.02)), epochs=3, shuffle=True,
                                         bucket_bytes=8),
        "b5_adam_no_overlap": dict(batch_size=5, optimizer=("adam", dict(lr=0.02)), epochs=3, shuffle=True,
                                   overlap=False),
        "b1_sgd": dict(batch_size=1, optimizer=("sgd", dict(lr=0.05, momentum=0.9)), epochs=1, shuffle=True),
        "b23_adamw": dict(batch_size=23, optimizer=("adamw", dict(lr=0.05)), epochs=4, shuffle=False),
        "b4_sgd_val": dict(batch_size=4, optimizer=("sgd", dict(lr=0.1)), epochs=2, shuffle=True, validation=True),
        "b6_weights_split": dict(batch_size=6, optimizer=("adam", dict(lr=0.02)), epochs=2, shuffle=False,
                                 weights=True, validation_split=0.25),
        "sharded_b6": dict(batch_size=6, optimizer=("adam", dict(lr=0.02)), epochs=3, shuffle=True, sharded=True),
        # the last rank's shard holds no rows (on 2 and 3 ranks): it joins every step with an empty batch
        "sharded_b6_empty_rank": dict(batch_size=6, optimizer=("adam", dict(lr=0.02)), epochs=2, shuffle=True,
                                      sharded=True, empty_rank=True),
        "sharded_b7_noshuffle": dict(batch_size=7, optimizer=("sgd", dict(lr=0.1)), epochs=2, shuffle=False,
                                     sharded=True),
        "sharded_b6_weights": dict(batch_size=6, optimizer=("sgd", dict(lr=0.1, momentum=0.5)), epochs=2,
                                   shuffle=True, sharded=True, weights=True),
        # rows 11.. weigh nothing: the last rank's shard (on 2 and 3 ranks) has no weight at all
        "sharded_b6_weightless_shard": dict(batch_size=6, optimizer=("adam", dict(lr=0.02)), epochs=2,
                                            shuffle=True, sharded=True, weights="weightless_shard"),
        "diverge_b5": dict(batch_size=5, optimizer=("sgd", dict(lr=0.5)), epochs=3, shuffle=True, diverge="loss"),
        # weights near float64's largest number (a batch's sum overflows) and subnormal ones train, and report
        # their losses, as the same ratios near 1 (as in one process)
        "b6_weights_near_max": dict(batch_size=6, optimizer=("adam", dict(lr=0.02)), epochs=2, shuffle=True,
                                    weights="near_max"),
        "sharded_b6_weights_near_max": dict(batch_size=6, optimizer=("adam", dict(lr=0.02)), epochs=2,
                                            shuffle=True, sharded=True, weights="near_max"),
        "sharded_b6_weights_subnormal": dict(batch_size=6, optimizer=("sgd", dict(lr=0.1, momentum=0.5)), epochs=2,
                                             shuffle=True, sharded=True, weights="subnormal"),
        # rows 6..11 weigh nothing: the second global batch of 6 has no weight at all (loss 0, as in one process)
        "b6_weightless_batch": dict(batch_size=6, optimizer=("sgd", dict(lr=0.1, momentum=0.9)), epochs=2,
                                    shuffle=False, weights="weightless_batch"),
        # ... and row 8 of that weightless batch overflows the activations (inf - inf is NaN): its gradient
        # is still 0, as on ranks (which skip a weightless share), where one process made 0 * NaN NaN
        "b6_weightless_batch_overflows": dict(batch_size=6, optimizer=("sgd", dict(lr=0.1, momentum=0.9)), epochs=2,
                                              shuffle=False, weights="weightless_batch", act="relu"),
        # the schedule jumps to 1e308 at step 4: that update overflows the parameters after a finite loss
        "overflow_update_b5": dict(batch_size=5, optimizer=("sgd", dict(lr=1e-3, momentum=0.9)), epochs=2,
                                   shuffle=True, diverge="update", schedule="overflow"),
        "b4_schedule_early_stop": dict(batch_size=4, optimizer=("adam", dict(lr=0.3)), epochs=30, shuffle=True,
                                       validation=True, schedule="decay", early_stop="every rank"),
        # the other losses: multi-label binary cross-entropy, half the summed squares (with sample weights)
        "b5_bce": dict(batch_size=5, optimizer=("adam", dict(lr=0.02)), epochs=2, shuffle=True,
                       loss="binary_cross_entropy"),
        "b4_half_sse_weights": dict(batch_size=4, optimizer=("sgd", dict(lr=0.05, momentum=0.5)), epochs=2,
                                    shuffle=True, loss="half_sse", weights=True),
        # row 3 weighs nothing and its loss overflows to inf: it counts for nothing, in one process as on
        # ranks (a rank whose rows of a batch all weigh nothing skips them; one process made 0 * inf NaN)
        "b6_weightless_row_overflows": dict(batch_size=6, optimizer=("sgd", dict(lr=0.05)), epochs=2,
                                            shuffle=False, loss="half_sse", weights="weightless_overflow"),
        # a stopping rule on rank 0 alone stops every rank, and its restore_best puts the best epoch's
        # parameters back on every rank (rank 0 alone had them, the others kept the last epoch's)
        "b4_early_stop_rank0": dict(batch_size=4, optimizer=("adam", dict(lr=0.3)), epochs=30, shuffle=True,
                                    validation=True, early_stop="rank 0"),
    }


def make_net(backend="numpy", c=None):
    from gpubp.network import MLP

    if c is not None and c.get("diverge"):
        return MLP(SIZES, activation="relu", loss="mse", dtype="float64", seed=1, backend=backend)
    if c is not None and c.get("act"):
        return MLP(SIZES, activation=c["act"], loss="cross_entropy", dtype="float64", seed=1, backend=backend)
    if c is not None and c.get("loss"):
        return MLP(SIZES, activation="tanh", loss=c["loss"], dtype="float64", seed=1, backend=backend)
    return MLP(SIZES, activation="tanh", loss="cross_entropy", dtype="float64", seed=1, backend=backend)


def make_opt(spec):
    from gpubp.optim import make_optimizer

    name, kw = spec
    return make_optimizer(name, kw.get("lr"), **{k: v for k, v in kw.items() if k != "lr"})


def case_data(c):
    """`(X, Y, W)` of a case (targets that make the `diverge` cases overflow)."""
    X, Y, _, _, W = data()
    if c.get("diverge"):
        Y = np.eye(SIZES[-1])[Y] * (1e10 if c["diverge"] == "loss" else 100.0)
    if c.get("loss") == "binary_cross_entropy":     # several labels per row
        Y = (np.random.default_rng(7).random((N, SIZES[-1])) < 0.4).astype(np.float64)
    if c.get("loss") == "half_sse":
        Y = np.random.default_rng(7).standard_normal((N, SIZES[-1]))
    if c.get("weights") == "weightless_overflow":     # W[3] is 0 (`data`)
        Y[3] = 1e200
    if c.get("weights") == "weightless_batch":
        W = W.copy()
        W[6:12] = 0.0
    if c.get("act"):      # row 8 (of the weightless batch, rows 6..11) overflows the first layer's unit 0
        X = X.copy()
        X[8] = 1.5e308 * np.sign(make_net("numpy", c)._Wb[0][0][0])
    if c.get("weights") == "weightless_shard":
        W = W.copy()
        W[11:] = 0.0
    if c.get("weights") == "near_max":
        W = W * 2.0 ** 1023
    if c.get("weights") == "subnormal":
        W = W * 2.0 ** -1060
    return X, Y, (W if c.get("weights") else None)


def fit_kwargs(c, rank=0):
    """`fit`'s keyword arguments of a case on rank `rank` (one process: rank 0's)."""
    from gpubp.callbacks import EarlyStopping

    _, _, Xv, Yv, _ = data()
    kw = dict(epochs=c["epochs"], batch_size=c["batch_size"], shuffle=c["shuffle"], progress=False)
    if c.get("schedule") == "overflow":
        kw["lr_schedule"] = lambda step: 1e-3 if step < 4 else 1e308
    elif c.get("schedule") == "decay":
        kw["lr_schedule"] = lambda step: 0.3 / (1.0 + 0.2 * step)
    if c.get("early_stop") == "every rank" or (c.get("early_stop") == "rank 0" and rank == 0):
        kw["callbacks"] = [EarlyStopping(patience=0)]
    if c.get("validation"):
        kw["validation"] = (Xv, Yv)
    if c.get("validation_split"):
        kw["validation_split"] = c["validation_split"]
    return kw


def shard_rows(n, size, rank, c=None):
    """The rows of an `n`-row set that rank `rank` of `size` holds in the sharded case `c` (uneven shards;
    with `empty_rank`, on several ranks, the last holds none)."""
    from gpubp.distributed import share

    if c is not None and c.get("empty_rank") and size > 1:
        if rank == size - 1:
            return np.arange(0)
        size -= 1
    a, b = share(n, size, rank)
    return np.arange(a, b)


def main(out, backend="numpy"):
    from gpubp import distributed

    comm = distributed.init(backend=backend, timeout=60)
    result = {}
    for name, c in cases().items():
        net = make_net(backend, c)
        opt = make_opt(c["optimizer"])
        comm.overlap = c.get("overlap", True)
        comm.bucket_bytes = c.get("bucket_bytes", distributed.DEFAULT_BUCKET_BYTES)
        X, Y, W = case_data(c)
        if c.get("sharded"):
            rows = shard_rows(N, comm.size, comm.rank, c)
            X, Y, W = X[rows], Y[rows], (None if W is None else W[rows])
        try:
            hist = net.fit(X, Y, optimizer=opt, sample_weight=W, comm=comm, sharded=c.get("sharded", False),
                           **fit_kwargs(c, comm.rank))
            for k, v in hist.items():
                result[f"{name}.hist.{k}"] = np.array(v)
        except FloatingPointError as e:
            result[f"{name}.error"] = np.array(str(e))
        result[name + ".params"] = net.backend.to_numpy(net._params)
    result["transport"] = np.array(comm.transport)
    np.savez(f"{out}.{comm.rank}.npz", **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
