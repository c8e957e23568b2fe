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


def on_ranks(size, body, monkeypatch, timeout=120.0):
    """Run `body(r)` on `size` ranks (threads) of a fake world: there `distributed.init()` (and
    `Communicator()`) make the library's communicator over the rank's `FakeMPI`.  Returns
    `(codes, stdout, stderr, results)`: per rank its exit status as a process's (0 when `body`
    returned, SystemExit's code, 1 for an abort or an exception, whose traceback goes to its stderr),
    what it printed to each stream, what `body` returned or raised."""
    world = fake_world(size)
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
