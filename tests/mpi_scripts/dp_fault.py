"""Run under mpiexec by tests/test_distributed.py: one rank misbehaves during data-parallel training.

Usage: dp_fault.py MODE, MODE one of
  raise     rank 1 raises at its third training step;
  train_end rank 1's callback raises in on_train_end, after the last step;
  hang      rank 1 stops answering at its third step (the others time out after 2 s);
  mismatch  rank 1 builds a different network (refused on every rank before training, each network
            as it was: no optimizer, no standardisation);
  data      rank 1 passes other data with sharded=False (refused on every rank);
  validation  rank 1 passes another validation set with sharded=False (refused on every rank);
  schedule  rank 1 passes no lr_schedule, rank 2 another one (refused on every rank);
  uncaught  rank 1 raises outside fit, in the script itself;
  exit_before_init  rank 1 starts MPI (imports mpi4py) and exits with status 0 before init();
  zero_weights  sharded=True with sample weights that are all zero on every rank (refused on every rank);
  grad_norms  rank 0 alone passes grad_norms=True (refused on every rank);
  after_timeout  rank 0 times out in a reduction rank 1 joins late, then uses the communicator again
            (refused: its next collective would be matched with the one left pending);
  sharded   rank 1 alone passes sharded=True (refused on every rank, naming fit.sharded);
  small_batch  sharded=True with a batch_size smaller than the number of ranks (refused on every
            rank, each keeping its own parameters: the networks' seeds differ);
  class_weight  sharded=True, each rank passes class weights of its own shard (refused on every rank);
  no_rows   sharded=True, no rank holds a row (refused on every rank; one rank's empty shard trains);
  no_val_rows  sharded=True, no rank holds a validation row (refused on every rank);
  bad_input  sharded=True, rank 1's rows hold a NaN (rank 1 refuses them with its ValueError, the
            others with an EveryRankError naming it; nobody ends the job);
  bad_input_everywhere  every rank passes the same bad class_weight (each raises the ValueError one
            process raises, and goes on);
  begin_refused  rank 1 alone passes an EarlyStopping monitoring val_loss, which the fit does not
            record (refused on every rank, each network as it was: the networks' seeds differ);
  checkpoint  rank 0 saves the trained network (late), every rank loads it after comm.barrier() and
            prints a digest of its parameters (argument 2: the file);
  callback_rank1  rank 1's callback halves its parameters after epoch 2 (every rank goes on with rank
            0's, rank 1 warns; each rank prints a digest of its parameters).
"""

import sys
import time

import numpy as np


def main(mode):
    from gpubp import distributed
    from gpubp.network import MLP

    if mode == "exit_before_init":
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_rank() == 1:
            sys.exit(0)
    comm = distributed.init(backend="numpy", timeout=2.0, grace=2.0)
    if mode == "after_timeout":
        if comm.rank == 0:
            try:
                comm.sum_values([1.0], "a lone reduction")
            except distributed.DistributedTimeout as e:
                print(f"rank 0: {e}", flush=True)
            try:
                comm.sum_values([2.0], "a second reduction")
                print("rank 0: the second reduction ran", flush=True)
            except distributed.DistributedError as e:
                print(f"rank 0: refused ({type(e).__name__}): {e}", flush=True)
        else:
            time.sleep(4.0)                        # past rank 0's deadline, then joins its first reduction
            print(f"rank 1: summed {comm.sum_values([1.0], 'the late reduction')[0]:g}", flush=True)
        return
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4))
    Y = rng.standard_normal((40, 2))
    if mode == "data" and comm.rank == 1:
        X[17, 2] += 1.0
    if mode == "bad_input" and comm.rank == 1:
        X[5, 1] = np.nan
    hidden = 9 if (mode == "mismatch" and comm.rank == 1) else 8
    net = MLP([4, hidden, 2], loss="mse", dtype="float64",
              seed=comm.rank if mode in ("small_batch", "begin_refused") else 0, backend="numpy")
    before, rng_before = net._params.copy(), net._rng.bit_generator.state
    if mode == "uncaught" and comm.rank == 1:
        raise RuntimeError("a failure outside fit on rank 1")
    if comm.rank == 1 and mode in ("raise", "hang"):
        forward, calls = net._forward, []

        def bad_forward(*a, **k):      # the forward pass of each training step
            calls.append(1)
            if len(calls) == 3:
                if mode == "raise":
                    raise RuntimeError("an injected failure on rank 1")
                time.sleep(600)
            return forward(*a, **k)

        net._forward = bad_forward
    callbacks = []
    if mode == "callback_rank1" and comm.rank == 1:
        from gpubp.callbacks import LambdaCallback

        def halve(net, epoch, logs):
            if epoch == 2:
                net._params *= 0.5

        callbacks.append(LambdaCallback(on_epoch_end=halve))
    if mode == "begin_refused" and comm.rank == 1:
        from gpubp.callbacks import EarlyStopping

        callbacks.append(EarlyStopping())
    if mode == "train_end" and comm.rank == 1:
        from gpubp.callbacks import LambdaCallback

        def on_train_end(net, logs):
            raise RuntimeError("an injected failure at the end of training on rank 1")

        callbacks.append(LambdaCallback(on_train_end=on_train_end))
    kw = {}
    if mode == "mismatch":     # refused after the statistics are set and the optimizer bound: both undone
        kw["standardize"] = True
    if mode == "validation":
        kw["validation"] = (X[:10 + (comm.rank == 1)], Y[:10 + (comm.rank == 1)])
    if mode == "zero_weights":    # rank 0's rows weigh nothing: accepted when another rank's do (not here)
        kw = dict(sharded=True, sample_weight=np.zeros(len(X)))
    if mode == "grad_norms" and comm.rank == 0:
        kw = dict(grad_norms=True)
    if mode == "sharded" and comm.rank == 1:
        kw = dict(sharded=True)
    if mode == "small_batch":
        kw = dict(sharded=True, batch_size=comm.size - 1)
    if mode == "bad_input":
        kw = dict(sharded=True, standardize=False)
    if mode == "class_weight":
        Y = rng.integers(0, 2, len(X))
        net = MLP([4, hidden, 2], loss="cross_entropy", dtype="float64", seed=0, backend="numpy")
        before, rng_before = net._params.copy(), net._rng.bit_generator.state
        kw = dict(sharded=True, class_weight={0: 1.0, 1: 2.0 + comm.rank})
    if mode == "no_rows":
        X, Y = X[:0], Y[:0]
        kw = dict(sharded=True)
    if mode == "no_val_rows":
        kw = dict(sharded=True, validation=(X[:0], Y[:0]))
    if mode == "bad_input_everywhere":
        Y = rng.integers(0, 2, len(X))
        net = MLP([4, hidden, 2], loss="cross_entropy", dtype="float64", seed=0, backend="numpy")
        before, rng_before = net._params.copy(), net._rng.bit_generator.state
        kw = dict(class_weight={0: 1.0, 5: 2.0})
    if mode == "schedule" and comm.rank != 1:
        kw["lr_schedule"] = (lambda step: 0.01 / step) if comm.rank == 0 else (lambda step: 0.01 / max(step - 5, 1))
    if mode == "checkpoint":
        import hashlib

        net.fit(X, Y, epochs=2, batch_size=8, optimizer="adam", progress=False, comm=comm)
        if comm.is_root:
            time.sleep(1.0)                    # a slow file system: the others must not read before the write
            net.save(sys.argv[2])
        comm.barrier("the save of the checkpoint")
        loaded = MLP.load(sys.argv[2], backend="numpy")
        print(f"rank {comm.rank}: trained {hashlib.sha256(net._params.tobytes()).hexdigest()[:16]} loaded "
              f"{hashlib.sha256(loaded._params.tobytes()).hexdigest()[:16]}", flush=True)
        return
    if mode == "callback_rank1":
        import hashlib
        import warnings

        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            net.fit(X, Y, epochs=3, batch_size=8, optimizer="sgd", progress=False, comm=comm, callbacks=callbacks)
        for w in seen:
            print(f"rank {comm.rank} warned: {w.category.__name__}: {w.message}", flush=True)
        print(f"rank {comm.rank}: parameters {hashlib.sha256(net._params.tobytes()).hexdigest()[:16]}", flush=True)
        return
    try:
        net.fit(X, Y, **{**dict(epochs=3, batch_size=8, optimizer="sgd", progress=False, comm=comm,
                                callbacks=callbacks), **kw})
    except (ValueError, TypeError) as e:      # ConfigMismatch among them; in bad_input*, a rank's own refusal
        if not (isinstance(e, distributed.EveryRankError) or mode.startswith("bad_input") or mode == "begin_refused"):
            raise
        same = np.array_equal(net._params, before) and net.optimizer is None and net.standardization is None \
            and net._rng.bit_generator.state == rng_before
        print(f"rank {comm.rank}: refused ({type(e).__name__}, network {'unchanged' if same else 'changed'}): {e}",
              flush=True)
        if mode.startswith("bad_input") or mode == "begin_refused":     # the job goes on: the communicator works
            print(f"rank {comm.rank}: then summed {comm.sum_values([1.0], 'a later reduction')[0]:g}", flush=True)
        sys.exit(3)
    print(f"rank {comm.rank}: trained", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
