"""`gpubp.distributed` in this process: its helpers, `Communicator` on one MPI rank, `GradientBuckets` on a
recording communicator, and whole data-parallel `fit` calls on several ranks played by threads.

The ranks of `ThreadRanks` are threads of this process, each with a `Communicator` made by the library
over `FakeMPI`: an in-process stand-in for an MPI communicator whose non-blocking collectives
(`Iallreduce`, `Ibcast`) match the ranks' calls in order and complete once every rank (or the root)
has posted its part, as MPI's do.  So the library's own code (its collectives, `wait`, `guard`,
`DataParallel`, the buckets) runs as it does under `mpiexec`, without launching processes; the
scripts of tests/mpi_scripts run unchanged on these ranks (their output is kept per rank), and the
results are checked as tests/test_distributed.py checks them.
"""

import io
import json
import math
import os
import sys
import threading
import time
import types

import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI")

from gpubp import distributed  # noqa: E402
from gpubp.distributed import (  # noqa: E402
    Communicator, ConfigMismatch, DistributedError, DistributedTimeout, EveryRankError, GradientBuckets,
    RankFailed, _error_line, _fingerprint, _flatten, _schedule_rates, _short, share)

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)
import dp_fault  # noqa: E402
import dp_train  # noqa: E402


def small_net(sizes, seed=0, loss="mse", **kw):
    """The float64 network on the numpy backend that the fits on thread ranks below train."""
    from gpubp.network import MLP

    return MLP(sizes, loss=loss, dtype="float64", seed=seed, backend="numpy", **kw)


# ------------------------------------------------------------------ ranks played by threads
class FakeAbort(BaseException):
    """`MPI_Abort` on a fake communicator: the whole (pretend) job ends."""


class _Req:
    def __init__(self, test):
        self._test = test

    def Test(self):
        return self._test()


class _Group:
    """What the ranks of one fake communicator share: the collectives posted so far, the mailboxes."""

    def __init__(self, size, world):
        self.size = size
        self.world = world         # shared by the communicators of one world: its lock, whether it ended
        self.lock = world["lock"]
        self.posted = {}           # collective number -> {rank: (kind, op or root, data)}
        self.mail = [[] for _ in range(size)]
        self.dups = []             # the communicators duplicated from this one, in the order made


class FakeMPI:
    """Rank `rank` of an in-process stand-in for an MPI intra-communicator (see the module's docstring)."""

    def __init__(self, group, rank):
        self.group, self.rank = group, rank
        self.calls = self.dups = 0

    # -- what Communicator.__init__ uses
    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.group.size

    def Dup(self):
        """The rank's k-th duplicate is every rank's k-th (as MPI matches them, in order)."""
        g, k = self.group, self.dups
        self.dups += 1
        with g.lock:
            while len(g.dups) <= k:
                g.dups.append(_Group(g.size, g.world))
            return FakeMPI(g.dups[k], self.rank)

    def Idup(self):
        return self.Dup(), _Req(lambda: True)

    def Split_type(self, kind, key=0):
        assert kind == MPI.COMM_TYPE_SHARED
        return FakeMPI(self.group, self.rank)

    def Free(self):
        pass

    def Abort(self, code=1):
        self.group.world.setdefault("aborts", []).append((self.rank, code, time.monotonic()))
        self.group.world["aborted"] = f"rank {self.rank} called Abort({code})"
        raise FakeAbort(self.group.world["aborted"])

    # -- collectives
    def _post(self, kind, buf, root=None):
        g, k = self.group, self.calls
        self.calls += 1
        with g.lock:
            g.posted.setdefault(k, {})[self.rank] = (kind, root, np.array(buf, copy=True))
        state = {"done": False}

        def test():
            if state["done"]:
                return True
            if g.world["aborted"]:
                raise FakeAbort(g.world["aborted"])
            with g.lock:
                parts = g.posted[k]
                if kind == "bcast":
                    if root not in parts:
                        return False
                    src = parts[root]
                    assert src[:2] == (kind, root) and src[2].shape == buf.shape, (k, src[:2], kind, root)
                    buf[...] = src[2]
                else:
                    if len(parts) < g.size:
                        return False
                    total = None
                    for r in range(g.size):      # in rank order: the same bits on every rank
                        kd, op, data = parts[r]
                        assert (kd, op) == (kind, root) and data.shape == buf.shape, (k, kd, op, kind, root)
                        total = data.copy() if total is None else (
                            total + data if op == "sum" else np.minimum(total, data))
                    buf[...] = total
            state["done"] = True
            return True

        return _Req(test)

    def Iallreduce(self, inplace, buf, op):
        assert inplace is MPI.IN_PLACE
        return self._post("allreduce", buf, "sum" if op == MPI.SUM else "min" if op == MPI.MIN else op)

    def Ibcast(self, buf, root=0):
        return self._post("bcast", buf, root)

    # -- point to point (failure notices)
    def Isend(self, spec, dest, tag):
        with self.group.lock:
            self.group.mail[dest].append((self.rank, tag, bytes(spec[0])))
        return _Req(lambda: True)

    def Iprobe(self, source, tag, status):
        with self.group.lock:
            for src, t, data in self.group.mail[self.rank]:
                if t == tag and source in (src, MPI.ANY_SOURCE):
                    status.Set_source(src)
                    status.Set_tag(t)
                    status.Set_elements(MPI.BYTE, len(data))
                    return True
        return False

    def Recv(self, spec, source, tag):
        with self.group.lock:
            box = self.group.mail[self.rank]
            for i, (src, t, data) in enumerate(box):
                if t == tag and src == source:
                    del box[i]
                    spec[0][:len(data)] = data
                    return
        raise AssertionError("Recv of a message not probed")


def fake_world(size):
    """The `FakeMPI` ranks of one `size`-rank world."""
    group = _Group(size, {"lock": threading.Lock(), "aborted": None})
    return [FakeMPI(group, r) for r in range(size)]


class _PerThreadOut(io.TextIOBase):
    """sys.stdout or sys.stderr while the ranks run: what a rank's thread writes goes to that rank's buffer."""

    def __init__(self, fallback, bufs):
        self.fallback, self.bufs = fallback, bufs

    def write(self, s):
        return self.bufs.get(threading.get_ident(), self.fallback).write(s)

    def flush(self):
        pass


class _MPIShim:
    """The `MPI` module as `gpubp.distributed` sees it on a thread rank: `COMM_WORLD` is the thread's
    fake one, `Request.Testall` tests fake requests; the rest (constants, `Status`) is mpi4py's."""

    class Request:
        @staticmethod
        def Testall(reqs):
            return all([r.Test() for r in reqs])

    def __init__(self):
        self.local = threading.local()

    @property
    def COMM_WORLD(self):
        return self.local.world

    def __getattr__(self, name):
        return getattr(MPI, name)


def on_ranks(size, body, monkeypatch, timeout=120.0, world=None):
    """Run `body(r)` on `size` ranks (threads) of a fake world: there `distributed.init()` (and
    `Communicator()`) make the library's communicator over the rank's `FakeMPI`.  Returns
    `(codes, stdout, stderr, results)`: per rank its exit status as a process's (0 when `body`
    returned, SystemExit's code, 1 for an abort or an exception, whose traceback goes to its stderr),
    what it printed to each stream, what `body` returned or raised.  `world`: the `fake_world` to use."""
    world = world or fake_world(size)
    shim = _MPIShim()
    monkeypatch.setattr(distributed, "_mpi", lambda: shim)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)     # init() chains a hook of its own
    results, codes = [None] * size, [None] * size
    outs, errs = [io.StringIO() for _ in range(size)], [io.StringIO() for _ in range(size)]
    obufs, ebufs = {}, {}

    def run(r):
        obufs[threading.get_ident()], ebufs[threading.get_ident()] = outs[r], errs[r]
        shim.local.world = world[r]
        try:
            results[r] = body(r)
            codes[r] = 0
        except SystemExit as e:
            results[r] = e
            codes[r] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:     # noqa: BLE001 - the rank's process would end here
            results[r], codes[r] = e, 1
            if not isinstance(e, FakeAbort):
                import traceback

                traceback.print_exception(type(e), e, e.__traceback__, file=errs[r])
            shared = world[r].group.world          # the job ends: the others' collectives fail
            shared["aborted"] = shared["aborted"] or f"rank {r} ended with {e!r}"

    threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in range(size)]
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PerThreadOut(old[0], obufs), _PerThreadOut(old[1], ebufs)
    try:
        for t in threads:
            t.start()
        end = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "the ranks did not finish"
    finally:
        sys.stdout, sys.stderr = old
    return codes, [o.getvalue() for o in outs], [e.getvalue() for e in errs], results


class _Ran:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def thread_run_mpi(monkeypatch):
    """A `run_mpi` of tests/test_distributed.py that runs the script's `main` on thread ranks."""
    def run_mpi(n, script, *args, timeout=60, **env_extra):
        # as the scripts' `if __name__ == "__main__"` call their main
        main = {"dp_train.py": lambda: dp_train.main(*args), "dp_fault.py": lambda: dp_fault.main(args[0])}[script]
        monkeypatch.setattr(sys, "argv", [script, *args])
        codes, outs, errs, _ = on_ranks(n, lambda r: main(), monkeypatch, timeout=timeout)
        return _Ran(max(codes), "".join(outs), "".join(errs))

    return run_mpi


# ------------------------------------------------------------------ tests/test_distributed.py on thread ranks
@pytest.fixture
def td(monkeypatch):
    """tests/test_distributed.py with its `run_mpi` running the scripts on thread ranks."""
    import test_distributed

    monkeypatch.setattr(test_distributed, "run_mpi", thread_run_mpi(monkeypatch))
    return test_distributed


@pytest.mark.parametrize("n", [1, 2, 3])
def test_thread_ranks_train_every_case_like_one_process(n, tmp_path, td):
    """dp_train.py's cases on `n` ranks equal one process: uneven and empty shares, sample weights, sharded
    data, a bucket per layer, no overlap, schedules, early stopping (on every rank, on rank 0 alone),
    divergence (test_equals_single_process)."""
    refs = {name: td.single_process(c) for name, c in dp_train.cases().items() if not c.get("sharded")}
    td.test_equals_single_process(n, tmp_path, refs)


_REFUSALS = [
    ("test_different_networks_are_refused_on_every_rank", ()),
    ("test_different_data_without_sharding_is_refused", ()),
    ("test_different_validation_sets_without_sharding_are_refused", ()),
    ("test_different_learning_rate_schedules_are_refused", ()),
    ("test_sharded_on_some_ranks_only_is_refused_on_every_rank", ()),
    ("test_sharded_class_weights_that_differ_between_ranks_are_refused", ()),
    ("test_bad_input_on_one_rank_is_refused_on_every_rank_and_the_job_goes_on", ()),
    ("test_bad_input_on_every_rank_raises_ones_own_error_on_every_rank", ()),
    ("test_a_callback_refusing_the_fit_on_one_rank_is_a_refusal_on_every_rank", ()),
    ("test_a_communicator_is_refused_after_one_of_its_collectives_timed_out", ()),
    ("test_a_rank_that_raises_ends_the_job_with_a_clear_error", ()),
    ("test_a_rank_that_raises_after_the_last_step_ends_the_job_on_every_rank", ()),
] + [("test_a_refusal_is_made_on_every_rank_alike", p.values) for p in [
    pytest.param(3, "small_batch", "with sharded=True every rank takes a share of each batch: batch_size (2) must be "
                                   "at least the number of ranks (3)"),
    pytest.param(2, "grad_norms", "rank 0: grad_norms=True is not supported with comm"),
    pytest.param(2, "zero_weights", "the sample weights (in float64) are all zero on every rank"),
    pytest.param(2, "no_rows", "with sharded=True the ranks' shards hold no rows at all"),
    pytest.param(2, "no_val_rows", "with sharded=True the ranks' validation shards hold no rows at all"),
]]


@pytest.mark.parametrize("name, args", _REFUSALS,
                         ids=[n[len("test_"):] + (f"[{a[1]}]" if a else "") for n, a in _REFUSALS])
def test_thread_ranks_refuse_and_fail_as_under_mpiexec(name, args, td):
    """tests/test_distributed.py's checks of refusals on every rank, of a communicator refused after a
    timeout and of a failed rank ending the job, with the scripts on thread ranks."""
    getattr(td, name)(*args)


def test_thread_ranks_load_rank_0s_checkpoint_after_a_barrier(tmp_path, td):
    td.test_a_checkpoint_saved_by_rank_0_loads_on_every_rank_after_a_barrier(tmp_path)


def fit_with_a_callback_on_one_rank(monkeypatch, n_ranks, cb_rank, on_epoch_end, X, Y, sizes, fit_kw, **net_kw):
    """Fit `small_net(sizes, **net_kw)` with SGD on `n_ranks` thread ranks, rank `cb_rank` alone with the
    callback `on_epoch_end(net, epoch, logs)`.  Returns per rank (its parameters, its history) and the
    texts of the RuntimeWarnings said."""
    import warnings

    from gpubp.callbacks import LambdaCallback

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        net = small_net(sizes, **net_kw)
        cbs = [LambdaCallback(on_epoch_end=on_epoch_end)] if comm.rank == cb_rank else []
        hist = net.fit(X, Y, optimizer="sgd", progress=False, comm=comm, callbacks=cbs, **fit_kw)
        return net._params.copy(), hist

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        codes, outs, errs, results = on_ranks(n_ranks, body, monkeypatch)
    assert codes == [0] * n_ranks, errs
    return results, [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]


def test_a_callback_changing_one_ranks_network_leaves_rank_0s_everywhere_and_that_rank_warns(monkeypatch):
    """`DataParallel.after_callbacks`: rank 1's callback halves its parameters after epoch 2; every rank
    ends with the same parameters (rank 0's, trained on), and rank 1 alone warns, naming the epoch."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((40, 4)), rng.standard_normal((40, 2))

    def halve(net, epoch, logs):
        if epoch == 2:
            net._params *= 0.5

    results, said = fit_with_a_callback_on_one_rank(monkeypatch, 3, 1, halve, X, Y, [4, 8, 2],
                                                    dict(epochs=3, batch_size=8))
    ref = small_net([4, 8, 2])
    ref_hist = ref.fit(X, Y, epochs=3, batch_size=8, optimizer="sgd", progress=False)
    for params, hist in results:
        np.testing.assert_array_equal(params, results[0][0])
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(hist["loss"], ref_hist["loss"], rtol=1e-12)
    assert len(said) == 1 and said[0].startswith(
        "rank 1: a callback (on_epoch_end of epoch 2) changed the network or drew from its generator on this "
        "rank, not alike on rank 0; every rank now holds rank 0's state"), said


def test_a_callback_changing_rank_0s_network_alone_is_kept_everywhere_without_a_warning(monkeypatch):
    """`DataParallel.after_callbacks`: when rank 0's own callback changes its network, rank 0's state (the
    changed one) is broadcast and nobody warns: no rank's own change was replaced."""
    from gpubp.callbacks import LambdaCallback

    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))

    def halve(net, epoch, logs):
        net._params *= 0.5

    results, said = fit_with_a_callback_on_one_rank(monkeypatch, 2, 0, halve, X, Y, [3, 4, 2],
                                                    dict(epochs=2, batch_size=4))
    ref = small_net([3, 4, 2])
    ref.fit(X, Y, epochs=2, batch_size=4, optimizer="sgd", progress=False,
            callbacks=[LambdaCallback(on_epoch_end=halve)])
    for params, _ in results:
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)
    assert said == []


@pytest.mark.parametrize("cb_rank", [0, 1])
def test_a_callback_changing_one_ranks_learning_rate_leaves_rank_0s_everywhere(cb_rank, monkeypatch):
    """A learning-rate decay in a callback of one rank only (as `EarlyStopping` on rank 0 alone): every rank
    goes on with rank 0's rate, as one process with rank 0's callbacks.  The rate was no part of the state
    compared after the callbacks: each rank stepped with its own and the sum mixed gradients taken at
    parameters that had drifted apart, silently (rank 0's decay on 2 ranks ended 1e-2 off)."""
    from gpubp.callbacks import LambdaCallback

    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((32, 4)), rng.standard_normal((32, 2))

    def decay(net, epoch, logs):
        net.optimizer.lr = net.optimizer.lr * 0.1

    fit_kw = dict(epochs=3, batch_size=8, lr=0.5)
    results, said = fit_with_a_callback_on_one_rank(monkeypatch, 2, cb_rank, decay, X, Y, [4, 8, 2], fit_kw)
    ref = small_net([4, 8, 2])
    ref.fit(X, Y, optimizer="sgd", progress=False, callbacks=[LambdaCallback(on_epoch_end=decay)] if cb_rank == 0
            else None, **fit_kw)
    for params, _ in results:
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)
    # rank 1, whose own decay is replaced after each epoch, warns each time; rank 0's is kept without a word
    assert len(said) == 3 * cb_rank, said
    assert all(s.startswith(f"rank 1: a callback (on_epoch_end of epoch {e}) changed") for e, s in zip((1, 2, 3), said))


def test_a_callback_swapping_two_of_one_ranks_parameters_is_seen_and_undone(monkeypatch):
    """The digest of the training state compared after the callbacks sees the values themselves, not only
    their sums: rank 1's callback swaps two of its parameters (sum and sum of magnitudes unchanged); every
    rank ends with rank 0's parameters and rank 1 warns."""
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((12, 3)), rng.standard_normal((12, 2))

    def swap(net, epoch, logs):
        p = net._params      # 0 and 8: numpy's sum adds them first, in either order (the sums stay the same)
        p[0], p[8] = float(p[8]), float(p[0])

    results, said = fit_with_a_callback_on_one_rank(monkeypatch, 2, 1, swap, X, Y, [3, 4, 2],
                                                    dict(epochs=1, batch_size=4))
    ref = small_net([3, 4, 2])
    ref.fit(X, Y, epochs=1, batch_size=4, optimizer="sgd", progress=False)
    assert ref._params[0] != ref._params[8]
    for params, _ in results:
        np.testing.assert_array_equal(params, results[0][0])
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)
    assert len(said) == 1 and said[0].startswith("rank 1: a callback (on_epoch_end of epoch 1) changed"), said


def test_a_callback_drawing_from_one_ranks_generator_leaves_rank_0s_everywhere(monkeypatch):
    """The state compared after the callbacks includes the shuffling generator: rank 1's callback draws
    from it after epoch 1 (the parameters untouched); every rank then shuffles the later epochs as rank 0
    does and ends with the parameters of one process (shuffled, the same seed), and rank 1 warns."""
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((30, 4)), rng.standard_normal((30, 2))

    def draw(net, epoch, logs):
        if epoch == 1:
            net._rng.random()

    results, said = fit_with_a_callback_on_one_rank(monkeypatch, 2, 1, draw, X, Y, [4, 6, 2],
                                                    dict(epochs=3, batch_size=7), activation="tanh")
    ref = small_net([4, 6, 2], activation="tanh")
    ref.fit(X, Y, epochs=3, batch_size=7, optimizer="sgd", progress=False)
    for params, _ in results:
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)
    assert len(said) == 1 and said[0].startswith("rank 1: a callback (on_epoch_end of epoch 1) changed the network "
                                                 "or drew from its generator on this rank"), said


def test_a_stop_decided_on_one_rank_stops_every_rank_after_that_epoch(monkeypatch):
    """`after_callbacks` returns whether any rank stops: rank 2 alone sets `stop_training` at the end of
    epoch 2 (epochs count from 1), and every rank trains exactly 2 epochs, as one process whose callback
    stops there."""
    from gpubp.callbacks import LambdaCallback

    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((30, 3)), rng.standard_normal((30, 2))

    def stop_after_2(net, epoch, logs):
        if epoch == 2:
            net.stop_training = True

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        net = small_net([3, 5, 2], seed=3)
        cbs = [LambdaCallback(on_epoch_end=stop_after_2)] if comm.rank == 2 else []
        return net.fit(X, Y, epochs=6, batch_size=7, optimizer="adam", progress=False, comm=comm,
                       callbacks=cbs), net._params.copy()

    codes, _, errs, results = on_ranks(3, body, monkeypatch)
    assert codes == [0, 0, 0], errs
    ref = small_net([3, 5, 2], seed=3)
    ref_hist = ref.fit(X, Y, epochs=6, batch_size=7, optimizer="adam", progress=False,
                       callbacks=[LambdaCallback(on_epoch_end=stop_after_2)])
    assert len(ref_hist["loss"]) == 2
    for hist, params in results:
        assert len(hist["loss"]) == 2
        np.testing.assert_allclose(hist["loss"], ref_hist["loss"], rtol=1e-12)
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ helpers
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_share_cuts_rows_into_contiguous_shares_differing_by_at_most_one(size):
    for n in range(0, 40):
        shares = [share(n, size, r) for r in range(size)]
        assert shares[0][0] == 0 and shares[-1][1] == n
        assert all(shares[r][1] == shares[r + 1][0] for r in range(size - 1))
        lens = [b - a for a, b in shares]
        assert min(lens) >= 0 and max(lens) - min(lens) <= 1 and sum(lens) == n
    assert [share(10, 3, r) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_flatten_gives_dotted_keys():
    assert _flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None, 3: "x"}) == \
        {"a.b": 1, "a.c.d": [2], "e": None, "3": "x"}
    assert _flatten(5) == {"(value)": 5}
    assert _flatten([1, 2]) == {"(value)": [1, 2]}
    assert _flatten({}) == {}
    assert _flatten({"k": 1}, "p") == {"p.k": 1}


def test_short_keeps_json_up_to_n_characters():
    assert _short([1, 2]) == "[1, 2]" and _short(None) == "null" and _short("a") == '"a"'
    s = "x" * 78                       # its JSON has 80 characters: kept
    assert _short(s) == json.dumps(s)
    long = _short("y" * 79)            # 81: cut to 80, ending in "..."
    assert len(long) == 80 and long == json.dumps("y" * 79)[:77] + "..."
    assert _short(list(range(100)), n=10) == "[0, 1, ..."


def test_error_line_is_type_and_message():
    assert _error_line(ValueError("bad X")) == "ValueError: bad X"
    assert _error_line(KeyError("k")) == "KeyError: 'k'"
    assert _error_line(RuntimeError()) == "RuntimeError"
    assert _error_line(distributed.RankFailed(2, "boom")) == "gpubp.distributed.RankFailed: rank 2 failed: boom"


def test_schedule_rates_sample_the_schedule_over_the_run():
    assert _schedule_rates(None, 100) is None
    got = _schedule_rates(lambda s: 1.0 / s, 100)
    steps = [s for s, _ in got]
    assert steps == sorted(set(steps)) and steps[:3] == [1, 2, 3] and steps[-1] == 100
    assert all(rate == 1.0 / s for s, rate in got)
    expected = {1, 2, 3, 100} | {int(round(x)) for x in np.linspace(1, 100, 16)} | \
        {int(round(x)) for x in np.geomspace(1, 100, 16)}
    assert set(steps) == expected
    assert [s for s, _ in _schedule_rates(lambda s: 0.1, 1000, n=4)] == [1, 2, 3, 10, 100, 334, 667, 1000]
    assert _schedule_rates(lambda s: 0.5, 0) == [[1, 0.5]]       # a run of no steps: step 1 still
    assert _schedule_rates(lambda s: 0.5, 2) == [[1, 0.5], [2, 0.5]]

    def odd(step):
        if step == 2:
            raise ZeroDivisionError("no")
        return float("nan") if step == 3 else np.float32(0.25)

    got = _schedule_rates(odd, 3)
    assert got == [[1, 0.25], [2, "raises ZeroDivisionError"], [3, "nan"]]
    assert type(got[0][1]) is float


def test_fingerprint_tells_shapes_dtypes_and_sampled_rows_apart():
    from gpubp.backends import get_backend

    be = get_backend("numpy")
    X = np.random.default_rng(0).standard_normal((200, 3))
    f = _fingerprint(be, X)
    assert len(f) == 16 and int(f, 16) >= 0
    assert _fingerprint(be, X.copy()) == f and _fingerprint(None, X) == f
    assert _fingerprint(be, X.astype(np.float32)) != f
    assert _fingerprint(be, X.reshape(300, 2)) != f
    for row in (0, 199):               # the first and the last rows are always read
        Z = X.copy()
        Z[row, 1] += 1.0
        assert _fingerprint(be, Z) != f
    Z = X.copy()
    Z[101, 0] = -Z[101, 0]             # with n_rows=200 every row counts
    assert _fingerprint(be, Z, 200) != _fingerprint(be, X, 200)
    small = X[:5]
    for row in range(5):               # fewer rows than n_rows: each of them
        Z = small.copy()
        Z[row, 2] += 1.0
        assert _fingerprint(be, Z) != _fingerprint(be, small)


def test_refuse_if_different_names_each_differing_field_per_rank():
    Communicator.refuse_if_different("x", [{"a": 1}, {"a": 1}])
    Communicator.refuse_if_different("x", [5])
    with pytest.raises(ConfigMismatch) as e:
        Communicator.refuse_if_different("settings", [{"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 2}},
                                                      {"a": {"b": 3, "c": 2, "d": "z"}}, {"a": {"b": 1}}])
    assert str(e.value) == ("the ranks' settings differ, so they cannot train together: "
                            "rank 2 has a.b = 3 where rank 0 has 1, a.d = \"z\" where rank 0 has null; "
                            "rank 3 has a.c = null where rank 0 has 2")
    assert isinstance(e.value, EveryRankError) and isinstance(e.value, ValueError)
    with pytest.raises(ConfigMismatch, match=r"rank 1 has \(value\) = 4 where rank 0 has 3$"):
        Communicator.refuse_if_different("counts", [3, 4])


def test_refuse_if_different_names_the_first_differing_item_of_lists_cut_short():
    # two schedules differing at step 9 only were named by their first 80 characters, the same on both
    # ranks ("... where rank 0 has ...") : the message hid what differs
    a = [[k, 0.01] for k in range(1, 17)]
    b = [list(x) for x in a]
    b[8][1] = "raises ZeroDivisionError"
    with pytest.raises(ConfigMismatch) as e:
        Communicator.refuse_if_different("settings", [{"fit": {"lr_schedule": a}}, {"fit": {"lr_schedule": b}}])
    assert ('(first at fit.lr_schedule[8]: [9, "raises ZeroDivisionError"] where rank 0 has [9, 0.01])'
            in str(e.value)), str(e.value)


def test_nccl_dtypes():
    from types import SimpleNamespace

    nccl = SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_INT32=2)
    assert distributed._nccl_dtype(nccl, np.float32) == 7
    assert distributed._nccl_dtype(nccl, "float64") == 8
    assert distributed._nccl_dtype(nccl, np.dtype(np.int32)) == 2
    for bad in (np.float16, np.int64, np.uint8):
        with pytest.raises(TypeError, match="NCCL transport takes float32, float64 or int32 buffers, got"):
            distributed._nccl_dtype(nccl, bad)


# ------------------------------------------------------------------ GradientBuckets
class _Recorder:
    """A communicator that records the gradient all-reduces: each started view (a copy, at its start)
    and the `wait` calls."""

    def __init__(self):
        self.started, self.waits = [], []

    def start_allreduce(self, view):
        self.started.append((view.copy(), view))
        return distributed._Done()

    def wait(self, pending, what):
        self.waits.append((len(pending), what))


def _buckets(overlap, bucket_bytes=1):
    from gpubp.params import ParamLayout

    layout = ParamLayout((5, 7, 6, 3))
    grads = np.arange(1.0, layout.total + 1.0)
    comm = _Recorder()
    return GradientBuckets(comm, layout, grads, overlap=overlap, bucket_bytes=bucket_bytes), comm, layout, grads


def test_buckets_start_as_their_layers_finish_scaled_once():
    b, comm, layout, grads = _buckets(True)
    orig = grads.copy()
    starts = [w for w, _, _, _ in layout.segments] + [layout.total]
    assert b.buckets == [(3, starts[2], starts[3]), (2, starts[1], starts[2]), (1, 0, starts[1])]
    b.begin(0.25)
    assert comm.started == []
    b.after_layer(3)
    assert len(comm.started) == 1
    np.testing.assert_array_equal(comm.started[0][0], orig[starts[2]:] * 0.25)
    assert np.shares_memory(comm.started[0][1], grads)
    b.after_layer(2)
    b.after_layer(1)
    assert len(comm.started) == 3 and comm.waits == []
    b.finish()
    assert comm.waits == [(3, "the gradient all-reduce of step 1")]
    np.testing.assert_array_equal(grads, orig * 0.25)      # every bucket scaled, once
    np.testing.assert_array_equal(np.concatenate([v for v, _ in reversed(comm.started)]), orig * 0.25)
    # the next step: every bucket again, nothing carried over
    b.begin(1.0)
    b.finish()
    assert len(comm.started) == 6 and comm.waits[-1] == (3, "the gradient all-reduce of step 2")
    np.testing.assert_array_equal(grads, orig * 0.25)      # a scale of 1 leaves the values as they are


def test_a_bucket_of_several_layers_starts_with_its_lowest_layer_and_finish_starts_the_rest():
    from gpubp.params import ParamLayout

    layout = ParamLayout((5, 7, 6, 3))
    starts = [w for w, _, _, _ in layout.segments] + [layout.total]
    # at least the top two layers' bytes: layers 3 and 2 together, layer 1 alone
    nbytes = (starts[3] - starts[1]) * 8
    b, comm, _, grads = _buckets(True, bucket_bytes=nbytes)
    assert b.buckets == [(2, starts[1], starts[3]), (1, 0, starts[1])]
    b.begin(2.0)
    b.after_layer(3)
    assert comm.started == []           # its bucket holds layer 2 too
    b.after_layer(2)
    assert len(comm.started) == 1 and comm.started[0][0].size == starts[3] - starts[1]
    b.finish()                          # layer 1's bucket had not started: finish starts it
    assert len(comm.started) == 2 and comm.waits == [(2, "the gradient all-reduce of step 1")]
    b.begin(1.0)
    b.after_layer(1)                    # layer 1 finishing first starts every bucket above it too
    assert len(comm.started) == 4


@pytest.mark.parametrize("scale", [0.5, 2.0, 1.0])
def test_without_overlap_the_whole_buffer_is_summed_at_the_end(scale):
    b, comm, layout, grads = _buckets(False)
    orig = grads.copy()
    b.begin(scale)
    for l in (3, 2, 1):
        b.after_layer(l)
    assert comm.started == []
    b.finish()
    assert len(comm.started) == 1 and comm.started[0][1] is grads
    np.testing.assert_array_equal(comm.started[0][0], orig * scale)
    np.testing.assert_array_equal(grads, orig * scale)
    assert comm.waits == [(1, "the gradient all-reduce of step 1")]


@pytest.mark.parametrize("scale", [2.0, 0.0, 3.0])
def test_each_bucket_is_scaled_before_its_sum_starts(scale):
    b, comm, layout, grads = _buckets(True)
    orig = grads.copy()
    b.begin(scale)
    b.finish()
    assert len(comm.started) == 3
    np.testing.assert_array_equal(grads, orig * scale)
    np.testing.assert_array_equal(np.concatenate([v for v, _ in reversed(comm.started)]), orig * scale)


def test_after_layer_between_buckets_lets_the_started_ones_progress():
    """A layer that closes no bucket polls the last started bucket (MPI progresses non-blocking
    collectives inside its calls); with nothing started it polls nothing."""
    from gpubp.params import ParamLayout

    layout = ParamLayout((5, 7, 6, 3, 4))
    starts = [w for w, _, _, _ in layout.segments] + [layout.total]
    polls = []

    class Pending:
        def done(self):
            polls.append(1)
            return False

    comm = _Recorder()
    comm.start_allreduce = lambda view: Pending()
    b = GradientBuckets(comm, layout, np.zeros(layout.total), bucket_bytes=(starts[4] - starts[2]) * 8)
    assert [lo for lo, _, _ in b.buckets] == [3, 1]
    b.begin(1.0)
    b.after_layer(4)                    # nothing started yet
    assert polls == [] and b._pending == []
    b.after_layer(3)                    # layers 4 and 3: the first bucket starts
    assert len(b._pending) == 1 and polls == []
    b.after_layer(2)
    assert polls == [1] and len(b._pending) == 1


# ------------------------------------------------------------------ Communicator on one rank
@pytest.fixture(scope="module")
def one():
    return Communicator(MPI.COMM_SELF, backend="numpy", timeout=5.0, overlap=False, bucket_bytes=100)


def test_one_rank_communicator(one):
    assert (one.rank, one.size, one.local_rank, one.local_size) == (0, 1, 0, 1)
    assert one.is_root and one.device is None and one.transport == "mpi" and one.broken is None
    assert repr(one) == "Communicator(rank=0, size=1, transport='mpi')"
    assert one.overlap is False and one.bucket_bytes == 100 and one.timeout == 5.0 and one.grace == 5.0
    got = one.sum_values([[1.5, 2], [3, 4]])
    assert got.dtype == np.float64 and got.tolist() == [1.5, 2.0, 3.0, 4.0]
    assert one.allgather_json({"b": [1, 2], "a": None}) == [{"a": None, "b": [1, 2]}]
    assert one.broadcast_json({"x": [1, "y"]}) == {"x": [1, "y"]}
    buf = np.arange(3.0)
    assert one.broadcast(buf) is buf and buf.tolist() == [0.0, 1.0, 2.0]
    assert one.allreduce_sum(buf) is buf and buf.tolist() == [0.0, 1.0, 2.0]
    one.check_same("settings", {"a": 1})
    one.barrier()
    with one.guard() as c:
        assert c is one
    with pytest.raises(KeyError):       # on one rank the guard lets every exception through
        with one.guard():
            raise KeyError("k")


@pytest.mark.parametrize("timeout, grace, want", [(2.0, None, 2.0), (600, None, 5.0), (0.5, 0, 0.0),
                                                  (1, 7.5, 7.5), (np.float32(3), None, 3.0)])
def test_grace_defaults_to_five_seconds_or_the_timeout(timeout, grace, want):
    c = Communicator(MPI.COMM_SELF, backend="numpy", timeout=timeout, grace=grace)
    assert c.grace == want and type(c.grace) is float and c.timeout == float(timeout)


@pytest.mark.parametrize("kw", [dict(timeout=0), dict(timeout=-1.0), dict(timeout=float("nan")),
                                dict(timeout=float("inf")), dict(timeout=None), dict(timeout="5"),
                                dict(grace=-0.5), dict(grace=float("inf")), dict(grace="1")])
def test_bad_timeouts_are_refused(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name} must be a "):
        Communicator(MPI.COMM_SELF, backend="numpy", **kw)


def test_a_wait_that_times_out_breaks_the_communicator():
    c = Communicator(MPI.COMM_SELF, backend="numpy", timeout=0.2)

    class Never:
        def done(self):
            return False

        def complete(self):
            raise AssertionError("completed")

    t0 = time.monotonic()
    with pytest.raises(DistributedTimeout, match=r"^rank 0 waited 0.2 s for the other ranks in the sum of X; "
                                                 r"another rank has stopped or hangs$"):
        c.wait([distributed._Done(), Never()], "the sum of X")
    assert 0.2 <= time.monotonic() - t0 < 5
    assert c.broken == "the sum of X timed out after 0.2 s and is still pending"
    with pytest.raises(DistributedError, match=r"^rank 0: this communicator cannot be used any more: the sum of X "
                                               r"timed out after 0.2 s and is still pending; the ranks' collectives"):
        c._iallreduce(np.zeros(1), MPI.SUM)


def test_wait_completes_every_operation_once_all_are_done():
    c = Communicator(MPI.COMM_SELF, backend="numpy", timeout=5.0)
    log = []

    class Later:
        def __init__(self, k, polls):
            self.k, self.polls = k, polls

        def done(self):
            self.polls -= 1
            return self.polls <= 0

        def complete(self):
            log.append(self.k)

    ops = [Later(0, 300), Later(1, 2), Later(2, 1)]
    c.wait(ops, "x")
    assert log == [0, 1, 2] and c.broken is None
    c.wait([], "nothing")


def test_a_failure_notice_during_a_wait_is_rank_failed_and_breaks_the_communicator():
    c = Communicator(MPI.COMM_SELF, backend="numpy", timeout=30.0)

    class Never:
        def done(self):
            return False

    req = c._notices.Isend([b"ValueError: bad rows", MPI.BYTE], 0, distributed._TAG_NOTICE)
    with pytest.raises(RankFailed) as e:
        c.wait([Never()], "the reduction of Y")
    req.Wait()
    assert e.value.rank == 0 and e.value.message == "ValueError: bad rows"
    assert str(e.value) == "rank 0 failed: ValueError: bad rows"
    assert c.broken == "the reduction of Y was left unfinished when rank 0 failed"
    with pytest.raises(DistributedError, match="cannot be used any more"):
        c._usable()


def test_abort_ends_the_job_with_status_1_unless_told_otherwise(monkeypatch):
    """`Communicator.abort(code=1)`: MPI_Abort with that status, after ABORT_FLUSH_S seconds for the
    rank's last words (what an uncaught error on one rank ends the job with)."""
    c = Communicator(MPI.COMM_SELF, backend="numpy", timeout=5.0)
    calls, slept = [], []
    monkeypatch.setattr(c, "mpi", types.SimpleNamespace(Abort=calls.append))
    monkeypatch.setattr(distributed.time, "sleep", slept.append)
    c.abort()
    c.abort(3)
    assert calls == [1, 3] and slept == [distributed.ABORT_FLUSH_S] * 2


def test_a_broken_communicator_of_several_ranks_starts_no_collective(monkeypatch):
    """Once a collective failed on a rank (`broken`), every further one there is refused before it
    starts, so no rank's next collective is matched with the one MPI could not cancel: broadcast,
    all-reduce, barrier and the JSON ones, on each of two ranks, with their buffers untouched."""
    def body(r):
        comm = distributed.init(backend="numpy", timeout=5.0)
        comm.broken = "a broadcast timed out after 5 s and is still pending"
        calls = []
        for name in ("Ibcast", "Iallreduce"):
            monkeypatch.setattr(comm.mpi, name, lambda *a, _n=name, **k: calls.append(_n), raising=False)
        buf = np.arange(3.0) + r
        refused = []
        for op in (lambda: comm.broadcast(buf), lambda: comm.broadcast(buf, root=1),
                   lambda: comm.allreduce_sum(buf), lambda: comm.sum_values([1.0]), lambda: comm.barrier(),
                   lambda: comm.broadcast_json({"a": 1}), lambda: comm.allgather_json([r])):
            with pytest.raises(DistributedError) as e:
                op()
            refused.append(str(e.value))
        return refused, calls, buf

    codes, outs, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    for r, (refused, calls, buf) in enumerate(results):
        assert calls == []
        np.testing.assert_array_equal(buf, np.arange(3.0) + r)
        assert refused == [f"rank {r}: this communicator cannot be used any more: a broadcast timed out after "
                           "5 s and is still pending; the ranks' collectives are out of step, so the job must "
                           "end"] * 7


# ------------------------------------------------------------------ fit's checks, init, mpiexec
class _Fake1:
    size, rank, is_root = 1, 0, True

    def __init__(self, device=None):
        self.device = device


def test_check_fit_options_on_one_rank():
    cfo = distributed.check_fit_options
    cfo(_Fake1(), False)
    cfo(_Fake1(), True, class_weight={0: 1.0}, standardize=False)
    cfo(_Fake1(), True)                             # the defaults: no grad_norms, no standardize
    cfo(_Fake1(), False, class_weight="balanced", standardize=True)     # without sharding: fine
    cfo(_Fake1(device=1), False, device=1)
    cfo(_Fake1(device=None), False, device=3)       # a numpy rank: no GPU to compare with
    cfo(_Fake1(device=2), False, device=None)       # a numpy network
    for kw, said in [
        (dict(sharded=False, grad_norms=True), "grad_norms=True is not supported with comm (data-parallel training)"),
        (dict(sharded=True, grad_norms=True, class_weight="balanced"), "grad_norms=True is not supported"),
        (dict(sharded=True, class_weight="balanced", standardize=True),
         "class_weight='balanced' with sharded=True would count each rank's classes alone"),
        (dict(sharded=True, standardize=True), "standardize=True with sharded=True would use each rank's own"),
    ]:
        with pytest.raises(EveryRankError) as e:
            cfo(_Fake1(), **kw)
        assert str(e.value).startswith(said), str(e.value)
    with pytest.raises(EveryRankError, match=r"^the network is on CUDA device 0 but this rank's GPU is device 1: "
                                             r".*cupy\.cuda\.Device\(1\)"):
        cfo(_Fake1(device=1), False, device=0)


def test_check_fit_options_gathers_the_ranks_reasons(monkeypatch):
    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        out = []
        for on in ((0, 1, 2), (1,), (0, 2), ()):
            comm._fit_checks_gathered = False
            try:
                distributed.check_fit_options(comm, False, grad_norms=comm.rank in on)
                out.append(None)
            except EveryRankError as e:
                out.append(str(e))
            assert comm._fit_checks_gathered is True
        return out

    codes, _, errs, results = on_ranks(3, body, monkeypatch)
    assert codes == [0, 0, 0], errs
    said = "grad_norms=True is not supported with comm (data-parallel training)"
    assert results == [[said, f"rank 1: {said}", f"rank 0: {said}; rank 2: {said}", None]] * 3


def test_init_makes_an_uncaught_exception_end_the_job_on_several_ranks(monkeypatch, capsys):
    original = sys.excepthook
    ready = [threading.Event() for _ in range(2)]

    def body(r):
        if r:
            ready[0].wait(10)           # rank 1's hook wraps rank 0's: the order is known
        comm = distributed.init(backend="numpy", timeout=30.0, grace=1.0)
        ready[r].set()
        return comm

    codes, _, errs, comms = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    hook = sys.excepthook
    assert hook is not original
    try:
        raise RuntimeError("boom outside fit")
    except RuntimeError as e:
        exc = e
    with pytest.raises(FakeAbort, match=r"rank 0 called Abort\(1\)"):
        hook(RuntimeError, exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "RuntimeError: boom outside fit" in err
    assert "gpubp.distributed: rank 0 of 2 ended with an uncaught RuntimeError; ending the job" in err
    assert err.index("RuntimeError: boom outside fit") < err.index("ended with an uncaught")


@pytest.mark.parametrize("size, kw", [(1, {}), (2, dict(abort_on_uncaught=False))])
def test_init_leaves_the_excepthook_alone_on_one_rank_or_when_asked(size, kw, monkeypatch):
    original = sys.excepthook
    codes, _, errs, comms = on_ranks(size, lambda r: distributed.init(backend="numpy", **kw), monkeypatch)
    assert codes == [0] * size, errs
    assert sys.excepthook is original
    assert [c.size for c in comms] == [size] * size and [c.rank for c in comms] == list(range(size))
    assert all(isinstance(c, Communicator) and c.timeout == distributed.DEFAULT_TIMEOUT for c in comms)
    assert all(c.overlap is True and c.bucket_bytes == distributed.DEFAULT_BUCKET_BYTES for c in comms)


def _exe(path, text, code=0):
    path.write_text(f"#!/bin/sh\necho '{text}'\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


def test_mpiexec_command_adds_open_mpis_options(tmp_path):
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    for text in ("mpiexec (OpenRTE) 4.1.2", "mpiexec (Open MPI) 5.0.0"):
        exe = _exe(tmp_path / "ompi", text)
        assert distributed.mpiexec_command(3, exe) == \
            [exe] + (["--allow-run-as-root"] if root else []) + ["--oversubscribe", "-n", "3"]
    exe = _exe(tmp_path / "hydra", "HYDRA build details: Version: 4.1.2")
    assert distributed.mpiexec_command(2.0, exe) == [exe, "-n", "2"]
    exe = _exe(tmp_path / "broken", "", code=1)
    assert distributed.mpiexec_command(1, exe) == [exe, "-n", "1"]
    missing = str(tmp_path / "nowhere" / "mpiexec")
    assert distributed.mpiexec_command(4, missing) == [missing, "-n", "4"]



@pytest.mark.parametrize("euid, want", [(0, ["--allow-run-as-root", "--oversubscribe"]), (1000, ["--oversubscribe"]),
                                        (None, ["--oversubscribe"])])
def test_mpiexec_command_lets_open_mpi_run_as_root_only_for_root(euid, want, tmp_path, monkeypatch):
    """Open MPI refuses to start as root without `--allow-run-as-root`: it is added for root alone (and
    where there are no user ids, as on Windows, never); MPICH's hydra gets neither option."""
    if euid is None:
        monkeypatch.delattr(os, "geteuid", raising=False)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: euid, raising=False)
    exe = _exe(tmp_path / "ompi", "mpiexec (Open MPI) 5.0.0")
    assert distributed.mpiexec_command(2, exe) == [exe] + want + ["-n", "2"]
    exe = _exe(tmp_path / "hydra", "HYDRA build details: Version: 4.1.2")
    assert distributed.mpiexec_command(2, exe) == [exe, "-n", "2"]

def test_find_mpiexec_prefers_the_one_next_to_the_interpreter(tmp_path, monkeypatch):
    env, path = tmp_path / "env", tmp_path / "path"
    env.mkdir()
    path.mkdir()
    monkeypatch.setattr(sys, "executable", str(env / "python"))
    monkeypatch.setenv("PATH", str(path))
    assert distributed.find_mpiexec() is None
    with pytest.raises(FileNotFoundError, match=r"no mpiexec found: pip install 'gpubp\[distributed\]'"):
        distributed.mpiexec_command(2)
    on_path = _exe(path / "mpiexec", "x")
    assert distributed.find_mpiexec() == on_path
    (env / "mpiexec").write_text("not executable")
    assert distributed.find_mpiexec() == on_path
    here = _exe(env / "mpiexec", "x")
    assert distributed.find_mpiexec() == here
    assert distributed.mpiexec_command(2)[0] == here


@pytest.mark.parametrize("n", [2, 3])
def test_sharded_validation_metrics_are_over_every_ranks_rows(n, monkeypatch):
    """`DataParallel.evaluate` with sharded=True: each rank evaluates its own validation shard (uneven
    here, one of them empty on 3 ranks) and the last epoch's val_loss / val_accuracy are those of the
    trained network on all the shards' rows together, as `net.evaluate` in one process gives them."""
    from gpubp.network import MLP

    X, Y, Xv, Yv, _ = dp_train.data()
    cuts = [0, 3, 7, 7][:n] + [len(Xv)]          # 3/4 rows; on 3 ranks 3/4/0

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        a, b = share(len(X), n, r)
        net = dp_train.make_net()
        hist = net.fit(X[a:b], Y[a:b], epochs=2, batch_size=6, optimizer="adam", progress=False, comm=comm,
                       sharded=True, validation=(Xv[cuts[r]:cuts[r + 1]], Yv[cuts[r]:cuts[r + 1]]))
        return hist, net

    codes, _, errs, results = on_ranks(n, body, monkeypatch)
    assert codes == [0] * n, errs
    hist, net = results[0]
    want = MLP.evaluate(net, Xv, Yv)
    assert set(want) == {"loss", "accuracy"}
    for h, _ in results:
        assert len(h["val_loss"]) == 2 and h["val_loss"] == hist["val_loss"]
        assert h["val_loss"][-1] == pytest.approx(want["loss"], rel=1e-12)
        assert h["val_accuracy"][-1] == pytest.approx(want["accuracy"], rel=1e-12)


def test_sharded_local_batches_of_one_row_train_every_row(monkeypatch):
    """batch_size equal to the number of ranks: each rank's local batch is one row, global batch i is
    the ranks' i-th rows together, and an epoch takes as many steps as the longest shard has rows
    (5 and 4 rows here: the last step has rank 0's row alone) -- one process fitting the rows in that
    interleaved order with batch_size 2 ends with the same parameters and losses."""

    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((9, 3)), rng.standard_normal((9, 2))

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        a, b = (0, 5) if r == 0 else (5, 9)
        net = small_net([3, 4, 2], activation="tanh")
        hist = net.fit(X[a:b], Y[a:b], epochs=2, batch_size=2, optimizer="sgd", shuffle=False,
                       progress=False, comm=comm, sharded=True)
        return net._params.copy(), hist["loss"]

    codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    order = [0, 5, 1, 6, 2, 7, 3, 8, 4]
    ref = small_net([3, 4, 2], activation="tanh")
    ref_loss = ref.fit(X[order], Y[order], epochs=2, batch_size=2, optimizer="sgd", shuffle=False,
                       progress=False)["loss"]
    for params, loss in results:
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)



def test_sharded_subnormal_sample_weights_with_an_empty_shard_train_as_one_process(monkeypatch):
    """Sample weights far below float64's smallest normal number, all on rank 0 (rank 1's shard is empty):
    the batches' weight sums are taken over the largest weight of the ranks that hold rows, so the losses and
    the parameters are one process's (fitting rank 0's rows with its local batch), to rounding -- not the
    few digits left in products of subnormal weights."""
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    w = np.linspace(1.0, 3.0, 8) * 1e-318

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        rows = slice(0, 8) if r == 0 else slice(0, 0)
        net = small_net([3, 4, 2])
        hist = net.fit(X[rows], Y[rows], epochs=2, batch_size=4, optimizer="sgd", shuffle=False, progress=False,
                       comm=comm, sharded=True, sample_weight=w[rows])
        return net._params.copy(), hist["loss"]

    codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    ref = small_net([3, 4, 2])
    ref_loss = ref.fit(X, Y, epochs=2, batch_size=2, optimizer="sgd", shuffle=False, progress=False,
                       sample_weight=w)["loss"]
    for params, loss in results:
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)

def test_validation_rows_fewer_than_the_ranks_are_evaluated_once_each(monkeypatch):
    """Without sharding each rank evaluates its share of the validation pair: 2 rows on 4 ranks leave
    ranks 0 and 2 with none (rank 2's empty share starts at row 1), and the epoch's val_loss and
    val_accuracy are still those of the trained network on the 2 rows, as `net.evaluate` gives them."""
    from gpubp.network import MLP

    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((12, 3)), rng.integers(0, 3, 12)
    Xv, yv = rng.standard_normal((2, 3)), np.array([0, 2])
    assert [share(2, 4, r) for r in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        net = small_net([3, 5, 3], loss="cross_entropy")
        hist = net.fit(X, y, epochs=2, batch_size=4, optimizer="sgd", progress=False, comm=comm,
                       validation=(Xv, yv))
        return hist, net

    codes, _, errs, results = on_ranks(4, body, monkeypatch)
    assert codes == [0] * 4, errs
    want = MLP.evaluate(results[0][1], Xv, yv)
    for hist, _ in results:
        assert hist["val_loss"][-1] == pytest.approx(want["loss"], rel=1e-12)
        assert hist["val_accuracy"][-1] == want["accuracy"]



def _fail_at_second_step(net, when):
    """Make `net`'s forward pass raise RuntimeError("an injected failure") at its second call (the time in
    `when["raised"]`)."""
    forward, calls = net._forward, []

    def bad_forward(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            when["raised"] = time.monotonic()
            raise RuntimeError("an injected failure")
        return forward(*a, **k)

    net._forward = bad_forward

def test_a_failed_rank_tells_the_others_and_ends_the_job_once_they_answered(monkeypatch):
    """`Communicator.fail`: rank 1 raises inside fit at its second step; it prints its error, tells
    every other rank, and calls MPI_Abort once both answered (not after `grace`); each other rank
    stops its wait with `RankFailed`, prints which rank failed and why, answers, and waits `grace` + 1 s
    for the failed rank to end the job before it aborts too."""

    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((24, 3)), rng.standard_normal((24, 2))
    grace, when = 3.0, {}

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0, grace=grace)
        net = small_net([3, 4, 2])
        if r == 1:
            _fail_at_second_step(net, when)
        net.fit(X, Y, epochs=2, batch_size=6, optimizer="sgd", progress=False, comm=comm)

    world = fake_world(3)
    codes, outs, errs, results = on_ranks(3, body, monkeypatch, world=world)
    assert codes == [1, 1, 1] and all(isinstance(e, FakeAbort) for e in results), results
    aborts = world[0].group.world["aborts"]
    assert sorted(r for r, _, _ in aborts) == [0, 1, 2] and all(code == 1 for _, code, _ in aborts)
    first = min(aborts, key=lambda a: a[2])
    assert first[0] == 1                                   # the failed rank ends the job
    t1 = first[2] - when["raised"]
    # once both answered, not after `grace` (which would put it at grace + ABORT_FLUSH_S or later);
    # grace is long enough that a loaded machine's scheduling delays cannot blur the two
    assert distributed.ABORT_FLUSH_S <= t1 < distributed.ABORT_FLUSH_S + 0.7 * grace, t1
    for r, _, t in aborts:
        if r != 1:
            assert t - when["raised"] >= grace + 1.0 + distributed.ABORT_FLUSH_S - 0.05, (r, t - when["raised"])
    assert "RuntimeError: an injected failure" in errs[1]
    assert "gpubp.distributed: rank 1 of 3 failed: RuntimeError: an injected failure\n" \
           "gpubp.distributed: rank 1 of 3: ending the job on all 3 ranks" in errs[1]
    for r in (0, 2):
        assert errs[r] == (f"gpubp.distributed: rank {r} of 3: stopping, because rank 1 failed: RuntimeError: an "
                           "injected failure\n"), errs[r]


class _Clock:
    """`distributed.time` on a fake clock: `sleep` moves it on and runs the events due by then (a rank's
    answer arriving, say); `monotonic` reads it.  A wait that never ends fails instead of hanging."""

    def __init__(self, events=()):
        self.t, self.slept, self.events = 100.0, [], sorted(events, key=lambda e: e[0])

    def monotonic(self):
        return self.t

    def sleep(self, s):
        assert s >= 0 and len(self.slept) < 100_000, "the rank never stopped waiting"
        self.slept.append(s)
        self.t += s
        while self.events and self.events[0][0] <= self.t - 100.0:
            self.events.pop(0)[1]()

    def poll(self):
        """A request's Test: counted as a poll, so a loop that polls without sleeping cannot spin forever."""
        self.slept.append(0.0)
        assert len(self.slept) < 100_000, "the rank polls without yielding the core"


class _LateReq:
    """A request that MPI finishes only while it is tested (it needs progress), at or after `at` s."""

    def __init__(self, clock, at, then=None):
        self.clock, self.at, self.then, self.done = clock, at, then, False

    def Test(self):
        self.clock.poll()
        if not self.done and self.clock.t - 100.0 >= self.at:
            self.done = True
            if self.then:
                self.then()
        return self.done


def _failing_rank(monkeypatch, size, rank, grace, clock, notices_at=0.0):
    """Rank `rank`'s communicator of a `size`-rank fake world, on `clock`; its notices and answers reach the
    other ranks' mailboxes only once their requests were tested (`notices_at` s on)."""
    world = fake_world(size)
    shim = _MPIShim()
    shim.local.world = world[rank]
    monkeypatch.setattr(distributed, "_mpi", lambda: shim)
    c = Communicator(world[rank], backend="numpy", timeout=30.0, grace=grace)
    monkeypatch.setattr(distributed, "time", clock)
    mail, sent = c._notices.group.mail, []

    def isend(spec, dest, tag):
        data = bytes(spec[0])
        sent.append((dest, tag))
        return _LateReq(clock, notices_at, lambda: mail[dest].append((rank, tag, data)))

    monkeypatch.setattr(c._notices, "Isend", isend)
    probe = c._notices.Iprobe
    monkeypatch.setattr(c._notices, "Iprobe", lambda *a: clock.poll() or probe(*a))
    return c, world, mail, sent


class _NCCL:
    def __init__(self, log, fails=False):
        self.log, self.fails = log, fails

    def abort(self):
        self.log.append("nccl abort")
        if self.fails:
            raise RuntimeError("NCCL error")


@pytest.mark.parametrize("answered_at, nccl_fails", [(0.0, False), (0.4, True), (None, False)])
def test_a_rank_told_of_a_failure_answers_and_aborts_grace_plus_1_s_later(answered_at, nccl_fails, monkeypatch,
                                                                          capsys):
    """`Communicator.fail(RankFailed)`: the NCCL communicator is aborted first (an error there is no matter),
    the rank prints which rank failed, answers it (testing the answer until MPI sent it, yielding the core
    meanwhile), and calls MPI_Abort `grace` + 1 s after it began, whenever the answer went (or if it never
    did): the failed rank ends the job before that."""
    grace = 0.25
    clock = _Clock()
    c, world, mail, sent = _failing_rank(monkeypatch, 3, 2, grace, clock,
                                         notices_at=1e9 if answered_at is None else answered_at)
    log = []
    c._nccl = _NCCL(log, fails=nccl_fails)
    with pytest.raises(FakeAbort, match=r"rank 2 called Abort\(1\)"):
        c.fail(RankFailed(0, "ValueError: bad rows"))
    assert log == ["nccl abort"]
    assert capsys.readouterr().err == "gpubp.distributed: rank 2 of 3: stopping, because rank 0 failed: " \
                                      "ValueError: bad rows\n"
    assert sent == [(0, distributed._TAG_ACK)]
    assert mail[0] == ([] if answered_at is None else [(2, distributed._TAG_ACK, b"")])
    assert clock.slept[-1] == distributed.ABORT_FLUSH_S
    assert clock.t - 100.0 - distributed.ABORT_FLUSH_S == pytest.approx(grace + 1.0, abs=1e-9)
    assert [a[0] for a in world[0].group.world["aborts"]] == [2]


@pytest.mark.parametrize("size, answers, want", [
    (3, [(0.3, 0, "ack"), (0.6, 2, "notice")], 0.6),   # both answered (rank 2 failed too): abort at once
    (3, [(0.3, 0, "ack")], 2.0),                        # rank 2 never answers: abort after `grace`
    (2, [], 2.0),
    (2, [(0.5, 0, "ack")], 0.5),
])
def test_a_failed_rank_tells_the_others_and_aborts_once_all_answered_or_after_grace(size, answers, want, monkeypatch,
                                                                                   capsys):
    """`Communicator.fail(exc)` for the rank's own error: it prints the traceback and what failed, sends the
    error line to every other rank (testing the sends so that MPI moves them along), takes each answer
    (an answer or another rank's own notice) and calls MPI_Abort as soon as every other rank answered, or
    `grace` s after it began."""
    grace = 2.0
    clock = _Clock()
    c, world, mail, sent = _failing_rank(monkeypatch, size, 1, grace, clock)
    tag = {"ack": distributed._TAG_ACK, "notice": distributed._TAG_NOTICE}
    clock.events = [(t, lambda src=src, k=k: mail[1].append((src, tag[k], b"" if k == "ack" else b"OSError: x")))
                    for t, src, k in answers]
    try:
        raise RuntimeError("boom")
    except RuntimeError as e:
        exc = e
    with pytest.raises(FakeAbort, match=r"rank 1 called Abort\(1\)"):
        c.fail(exc)
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n") and err.endswith(
        f"RuntimeError: boom\ngpubp.distributed: rank 1 of {size} failed: RuntimeError: boom\n"
        f"gpubp.distributed: rank 1 of {size}: ending the job on all {size} ranks\n")
    others = [r for r in range(size) if r != 1]
    assert sent == [(r, distributed._TAG_NOTICE) for r in others]
    for r in others:
        assert mail[r] == [(1, distributed._TAG_NOTICE, b"RuntimeError: boom")]
    assert mail[1] == []                                   # every answer was taken
    assert clock.slept[-1] == distributed.ABORT_FLUSH_S
    assert want - 1e-9 <= clock.t - 100.0 - distributed.ABORT_FLUSH_S <= want + 0.0011
    assert [a[0] for a in world[0].group.world["aborts"]] == [1]


def test_a_failed_rank_alone_aborts_at_once(monkeypatch, capsys):
    clock = _Clock()
    c, world, mail, sent = _failing_rank(monkeypatch, 1, 0, 2.0, clock)
    with pytest.raises(FakeAbort):
        c.fail(KeyError("k"))
    assert sent == [] and clock.slept == [distributed.ABORT_FLUSH_S]
    assert capsys.readouterr().err.endswith("gpubp.distributed: rank 0 of 1: ending the job on all 1 ranks\n")



def test_on_two_ranks_an_error_inside_fit_ends_the_job(monkeypatch):
    """`guard_fit` guards every fit of several ranks, two included: rank 1's error at its second step is
    printed and told to rank 0, and both end with MPI_Abort (here `grace=0`: the failed rank does not wait
    for the answer)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((12, 3)), rng.standard_normal((12, 2))

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0, grace=0)
        net = small_net([3, 4, 2])
        if r == 1:
            _fail_at_second_step(net, {})
        net.fit(X, Y, epochs=1, batch_size=4, optimizer="sgd", progress=False, comm=comm)

    world = fake_world(2)
    codes, outs, errs, results = on_ranks(2, body, monkeypatch, world=world)
    assert codes == [1, 1] and all(isinstance(e, FakeAbort) for e in results), results
    assert sorted(r for r, _, _ in world[0].group.world["aborts"]) == [0, 1]
    assert "gpubp.distributed: rank 1 of 2 failed: RuntimeError: an injected failure\n" in errs[1]
    assert errs[0] == "gpubp.distributed: rank 0 of 2: stopping, because rank 1 failed: RuntimeError: an " \
                      "injected failure\n", errs[0]

def test_a_missing_mpi4py_is_an_import_error_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"gpubp.distributed needs mpi4py and an MPI library: pip install "
                                          r"'gpubp\[distributed\]'"):
        distributed._mpi()
    with pytest.raises(ImportError, match="needs mpi4py"):
        distributed.init(backend="numpy")


def test_communicator_defaults():
    """README: buckets of about 1 MiB, a deadline of 600 s per wait (`init(timeout=600)`)."""
    c = Communicator(MPI.COMM_SELF)
    assert c.timeout == distributed.DEFAULT_TIMEOUT == 600.0
    assert c.overlap is True and c.bucket_bytes == distributed.DEFAULT_BUCKET_BYTES == 1 << 20
    assert c.timeout == distributed.DEFAULT_TIMEOUT and c.grace == 5.0 and c.transport == "mpi"


class _SlowJoin(FakeMPI):
    """Rank 0 of a 2-rank world whose other rank joins `init()`'s duplicate after `polls` tests (never
    when None)."""

    def __init__(self, polls):
        super().__init__(_Group(2, {"lock": threading.Lock(), "aborted": None}), 0)
        self.polls, self.tests = polls, 0

    def Idup(self):
        def test():
            self.tests += 1
            return self.polls is not None and self.tests > self.polls

        return self.Dup(), _Req(test)


def test_init_waits_for_every_rank_to_join_within_the_timeout(capsys):
    late = _SlowJoin(polls=400)
    c = Communicator(late, backend="numpy", timeout=30.0)
    assert late.tests == 401 and c.size == 2 and c.rank == 0
    never = _SlowJoin(polls=None)
    t0 = time.monotonic()
    with pytest.raises(FakeAbort, match=r"rank 0 called Abort\(1\)"):
        Communicator(never, backend="numpy", timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 5
    assert capsys.readouterr().err == ("gpubp.distributed: rank 0 of 2 waited 0.3 s for the other ranks in init(); "
                                       "another rank has stopped before it or hangs: ending the job\n")


def test_collectives_default_to_rank_0_as_root(monkeypatch):
    """`broadcast(buf)` and `broadcast_json(obj)` without `root` give rank 0's (their signatures' root=0)."""
    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        buf = np.full(3, float(r))
        assert comm.broadcast(buf) is buf          # in place, and returned (as on one rank)
        return buf.tolist(), comm.broadcast_json({"r": r}), comm.broadcast_json([r], 2)

    codes, _, errs, results = on_ranks(3, body, monkeypatch)
    assert codes == [0, 0, 0], errs
    assert results == [([0.0, 0.0, 0.0], {"r": 0}, [2])] * 3



class _DeviceBuf:
    """A device array as `Communicator` sees one (`__cuda_array_interface__`, `get`, `set`), in host memory."""

    def __init__(self, a):
        self.a = np.array(a)
        self.__cuda_array_interface__ = {"shape": self.a.shape, "typestr": self.a.dtype.str, "version": 3,
                                         "data": (self.a.ctypes.data, False), "strides": None}

    def get(self):
        return self.a.copy()

    def set(self, host):
        self.a[...] = host


def test_device_buffers_without_nccl_go_through_host_copies(monkeypatch):
    """Ranks sharing a GPU (no NCCL) broadcast and sum a device buffer through a host copy over MPI: every
    rank's buffer holds the root's values (the sums) afterwards and is returned, as a host buffer's is."""
    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        buf, summed = _DeviceBuf(np.full(4, float(r))), _DeviceBuf(np.arange(3.0) * 10 ** r)
        return comm.broadcast(buf, 1) is buf, buf.a.tolist(), comm.allreduce_sum(summed) is summed, summed.a.tolist()

    codes, _, errs, results = on_ranks(3, body, monkeypatch)
    assert codes == [0, 0, 0], errs
    assert results == [(True, [1.0] * 4, True, [0.0, 111.0, 222.0])] * 3


def test_a_broadcast_through_nccl_waits_for_it_and_returns_the_buffer(monkeypatch):
    """With NCCL (each rank its own GPU), `broadcast` hands the device buffer to NCCL on the root given,
    waits for the operation and returns the buffer, as the other transports do."""
    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        comm._nccl, calls = object(), []

        class Pending(distributed._Done):
            def complete(self):
                calls.append("waited")

        def nccl_op(buf, op, *args):
            calls.append((op, args))
            return Pending()

        monkeypatch.setattr(comm, "_nccl_op", nccl_op)
        buf = _DeviceBuf(np.full(2, float(r)))
        return comm.broadcast(buf, 1) is buf, calls

    codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    assert results == [(True, [("bcast", (1,)), "waited"])] * 2

def test_a_cuda_communicator_without_cupy_says_what_to_install(monkeypatch):
    """`backend="cuda"` without CuPy is refused before MPI is used, with the backend's own error (which
    names the extras that bring CuPy), not a bare ModuleNotFoundError from the GPU set-up."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match="the cuda backend needs CuPy, which did not import"):
        Communicator(MPI.COMM_SELF, backend="cuda")


def test_every_rank_starts_from_rank_0s_parameters(monkeypatch):
    """Ranks whose networks were made with different seeds train from rank 0's parameters (broadcast at
    the start of fit) and end as one process whose network has rank 0's seed."""

    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((20, 3)), rng.standard_normal((20, 2))

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        net = small_net([3, 4, 2], seed=10 + r)
        net.fit(X, Y, epochs=2, batch_size=5, optimizer="adam", progress=False, comm=comm)
        return net._params.copy()

    codes, _, errs, results = on_ranks(3, body, monkeypatch)
    assert codes == [0, 0, 0], errs
    ref = small_net([3, 4, 2], seed=10)
    ref.fit(X, Y, epochs=2, batch_size=5, optimizer="adam", progress=False)
    for p in results:
        np.testing.assert_allclose(p, ref._params, rtol=1e-12, atol=1e-14)



@pytest.mark.parametrize("kind", ["Philox", "SFC64"])
def test_a_network_whose_generator_state_holds_arrays_trains_on_several_ranks(kind, monkeypatch):
    """A network loaded from a checkpoint whose shuffling generator is a Philox or an SFC64 (kinds `load`
    accepts, whose `bit_generator.state` holds numpy arrays) trains on several ranks as in one process.
    Its state went to `json.dumps` as it was: "TypeError: Object of type ndarray is not JSON
    serializable" on every rank, which ended the job."""
    from gpubp.callbacks import LambdaCallback

    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((20, 3)), rng.standard_normal((20, 2))

    def make():
        net = small_net([3, 4, 2])
        net._rng = np.random.Generator(getattr(np.random, kind)(7))
        return net

    def draw(net, epoch, logs):        # on rank 1 alone: rank 0's generator is broadcast after the epoch
        net._rng.random()

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        net = make()
        net.fit(X, Y, epochs=2, batch_size=5, optimizer="sgd", progress=False, comm=comm,
                callbacks=[LambdaCallback(on_epoch_end=draw)] if r == 1 else None)
        return net._params.copy(), net._rng.bit_generator.state

    with pytest.warns(RuntimeWarning, match="rank 1: a callback .* drew from its generator"):
        codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    ref = make()
    ref.fit(X, Y, epochs=2, batch_size=5, optimizer="sgd", progress=False)
    for params, state in results:
        np.testing.assert_allclose(params, ref._params, rtol=1e-12, atol=1e-14)
        assert type(ref._rng.bit_generator)(0).state.keys() == state.keys()
        assert json.dumps(state, default=lambda a: a.tolist()) == \
            json.dumps(ref._rng.bit_generator.state, default=lambda a: a.tolist())


def _weighted_ranks(local_w):
    """Rank r's `DataParallel` (the `small_net` of 3-4-2, SGD) with its steps' weights `local_w[r]` and their
    sums over the ranks, as `begin_epoch` leaves them."""
    from gpubp.distributed import DataParallel

    comm = distributed.init(backend="numpy", timeout=30.0)
    dp = DataParallel(comm, small_net([3, 4, 2]), None)
    dp.local_w = np.array(local_w[comm.rank], dtype=np.float64)
    dp.global_w = np.sum(local_w, axis=0, dtype=np.float64)
    assert dp.is_root is (comm.rank == 0)
    return dp


def test_global_losses_are_the_weighted_means_over_the_ranks(monkeypatch):
    """`DataParallel.global_losses`: step i's loss over the global batch is the ranks' losses weighted by
    their share of the batch (rows or weight sums); a rank's loss counts not where its share weighs
    nothing (its loss there is NaN, an empty mean), a step weighing nothing on every rank has loss 0,
    a non-finite loss of a rank that counts makes the step's not finite; `start` picks the steps.  `epoch_loss`
    is the mean over the epoch, weighted alike."""
    # weights as `begin_epoch` makes them: rows, or sample weight sums over the largest weight (below 1)
    local_w = [[2.0, 1.0, 0.0, 3.0, 0.0, 0.25, 1.0], [2.0, 0.0, 0.0, 1.0, 1.0, 0.125, 1.0]]
    losses = [[1.0, 4.0, np.nan, 2.0, np.nan, 2.0, np.inf], [3.0, np.nan, np.nan, 6.0, 5.0, 8.0, 1.0]]

    def body(r):
        dp = _weighted_ranks(local_w)
        return dp.global_losses(losses[r], 0), dp.global_losses(losses[r][3:], 3), dp.epoch_loss(losses[r][:6] + [1.0])

    codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    want = [(1 * 2 + 3 * 2) / 4, 4.0, 0.0, (2 * 3 + 6 * 1) / 4, 5.0, (2 * 0.25 + 8 * 0.125) / 0.375]
    for got, tail, epoch in results:
        assert got.shape == (7,) and tail.shape == (4,) and not np.isfinite(got[6]) and not np.isfinite(tail[3])
        np.testing.assert_allclose(got[:6], want, rtol=1e-15)
        np.testing.assert_allclose(tail[:3], want[3:], rtol=1e-15)
        # the whole epoch's mean
        assert epoch == pytest.approx((2 + 4 + 6 + 0.5 + 1 + 6 + 6 + 5 + 1 + 1) / 12.375, rel=1e-15)


def test_sample_weights_on_some_ranks_only_are_refused_naming_who_has_them(monkeypatch):
    """A fit where rank 1 alone passes sample weights is refused on every rank (`ConfigMismatch`), the
    message saying that rank 1 has them and rank 0 has not."""
    X, Y, _, _, _ = dp_train.data()

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        w = np.linspace(0.5, 2.0, X.shape[0]) if r == 1 else None
        with pytest.raises(ConfigMismatch) as e:
            dp_train.make_net().fit(X, Y, epochs=1, batch_size=5, progress=False, comm=comm, sample_weight=w)
        return str(e.value)

    codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    for said in results:
        assert said.startswith("the ranks' network configurations and training settings differ") and \
            "fit.sample_weights = true where rank 0 has false" in said, said


@pytest.mark.parametrize("rank1", [dict(bucket_bytes=1 << 20), dict(bucket_bytes=8, overlap=False)])
def test_ranks_summing_the_gradient_in_different_all_reduces_are_refused(rank1, monkeypatch):
    """Ranks whose `init(bucket_bytes=..., overlap=...)` cut the gradient sum into other all-reduces
    (rank 0: three buckets, one per layer; rank 1: one) are refused on every rank before any step,
    each network as it was.  Their collectives were matched out of step: MPI summed rank 0's output
    layer with rank 1's whole buffer, and the garbage was reported as a diverged training."""
    X, Y, _, _, _ = dp_train.data()

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0, **(rank1 if r == 1 else dict(bucket_bytes=8)))
        net = dp_train.make_net()
        before = net._params.copy()
        with pytest.raises(ConfigMismatch) as e:
            net.fit(X, Y, epochs=1, batch_size=5, progress=False, comm=comm)
        np.testing.assert_array_equal(net._params, before)
        return str(e.value)

    codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    for said in results:
        assert """rank 1 has comm.gradient all-reduces (init's overlap, bucket_bytes) = ["layers 1-3"] where """ \
            """rank 0 has ["layer 3", "layer 2", "layer 1"]""" in said, said


@pytest.mark.parametrize("sharded", [False, True])
def test_setup_takes_a_bool_validation_as_whether_there_is_one(sharded, monkeypatch):
    """`DataParallel.setup(validation=...)`: None and False both say there is no validation pair (so ranks
    passing one or the other agree, and a sharded fit does not look for validation rows); True says there
    is one (a sharded fit then finds no validation rows on any rank and refuses)."""
    from gpubp.distributed import DataParallel
    from gpubp.optim import make_optimizer

    X, Y = np.arange(24.0).reshape(8, 3), np.arange(16.0).reshape(8, 2)

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        net = small_net([3, 4, 2])
        opt = make_optimizer("sgd")
        opt.bind(net.backend, net._params)
        dp = DataParallel(comm, net, opt, sharded=sharded)
        steps = dp.setup(X, Y, None, 1, 4, False, validation=[None, False][r])
        if not sharded:
            return steps
        with pytest.raises(EveryRankError, match="validation shards hold no rows at all"):
            dp.setup(X, Y, None, 1, 4, False, validation=True)
        return steps

    codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    assert results == [4 if sharded else 2] * 2

def test_other_validation_targets_on_one_rank_are_refused(monkeypatch):
    X, Y, Xv, Yv, _ = dp_train.data()

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        yv = Yv.copy()
        if r == 1:
            yv[3] = (yv[3] + 1) % 3
        try:
            dp_train.make_net().fit(X, Y, epochs=1, batch_size=5, progress=False, comm=comm, validation=(Xv, yv))
        except ConfigMismatch as e:
            return str(e)

    codes, _, errs, results = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
    for said in results:
        assert "rank 1 has data.validation.Y = " in said and "validation.X" not in said, said


def test_a_validation_split_leaving_no_rows_is_refused_without_sharding(monkeypatch):
    """Only a sharded fit lets a rank's part hold no rows: without sharding every rank holds the
    whole data set, and a split of 40 rows into 0 validation rows is refused as in one process."""
    rng = np.random.default_rng(4)
    X, Y = rng.standard_normal((40, 3)), rng.standard_normal((40, 2))

    def body(r):
        comm = distributed.init(backend="numpy", timeout=30.0)
        net = small_net([3, 4, 2])
        with pytest.raises(ValueError, match="validation_split=0.02 of 40 samples leaves no validation"):
            net.fit(X, Y, epochs=1, batch_size=8, validation_split=0.02, progress=False, comm=comm)

    codes, _, errs, _ = on_ranks(2, body, monkeypatch)
    assert codes == [0, 0], errs
