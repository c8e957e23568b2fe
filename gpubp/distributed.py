"""Data-parallel training over MPI (mpi4py), with NCCL for device buffers when each rank has its own GPU.

One process per rank, launched by `mpiexec -n N` or `srun`::

    comm = gpubp.distributed.init()          # before the network is made (it picks the GPU)
    net = MLP(sizes, seed=0, backend="cuda")
    net.fit(X, Y, epochs=5, batch_size=256, comm=comm)

Semantics (`MLP.fit(..., comm=comm)`):

- Every rank starts from rank 0's parameters, optimizer state and shuffling
  generator (broadcast at the start of `fit`), after a check that every rank
  trains the same network in the same way (refused with `ConfigMismatch` on
  every rank otherwise).
- Each step's global batch is cut into contiguous shares, one per rank (uneven
  shares allowed, a share may be empty); with `sharded=True` it is the
  concatenation of the ranks' local batches (`DataParallel`).  Each rank's
  gradient, a mean over its share, is scaled by the share's part of the
  global batch's rows (or sample weight) and the flat buffers are summed
  across ranks: that is the mean over the global batch, the gradient a single
  process computes, up to rounding.  Every rank then runs the same optimizer
  update.
- The sum is bucketed: a bucket (a run of whole layers, from the output
  layer down) is all-reduced, without blocking, as soon as the backward pass
  has finished its layers, while the earlier layers are still computing
  (`overlap=True`); the step waits for every bucket before the update.
- After each epoch's callbacks and after `on_train_end`, one gather decides
  whether any rank stops and compares digests of the ranks' training state:
  where a callback changed it on some ranks only, rank 0's is broadcast
  (`DataParallel.after_callbacks`).
- Arguments `fit` refuses on some rank (bad data, say) are refused on every
  rank: the first collective of `fit` gathers every rank's refusal
  (`check_fit_options`, `guard_fit`); each network stays as it was.  So are
  the callbacks' refusals in `on_train_begin` (`DataParallel.start_together`).
- Faults: every wait polls for a notice from a failed rank and has a
  deadline (`timeout`).  A rank that raises inside `fit` after that prints its error,
  tells every other rank (each prints which rank failed and why) and, after
  their answer or `grace` seconds, calls `MPI.Abort`: the whole job ends with
  a non-zero status, never hangs.  `init()` also makes an exception that
  nobody catches on any rank end the job (as `python -m mpi4py` does).  After a
  `DistributedTimeout` or `RankFailed` caught outside `fit`, the communicator
  refuses every further collective (`DistributedError`): MPI cannot cancel the
  one left pending, which the other ranks' next collective would meet.

Transports: host (numpy) buffers go through MPI.  Device (CuPy) buffers go
through NCCL when each rank of a machine has a GPU of its own; when ranks
share GPUs they are copied to the host for MPI (slower, but correct).
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback

import numpy as np

from .checks import check_flag, check_positive_int, real_number
from .losses import CLASSIFICATION_LOSSES

#: seconds a rank waits for the others in one collective before it ends the job
DEFAULT_TIMEOUT = 600.0
#: bytes of gradient per bucket (a bucket holds whole layers, so it may be larger)
DEFAULT_BUCKET_BYTES = 1 << 20

_TAG_NOTICE = 71
_TAG_ACK = 72


class DistributedError(RuntimeError):
    """A data-parallel job cannot go on."""


class RankFailed(DistributedError):
    """Another rank failed; `rank` is its number, the message its error."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank} failed: {message}")
        self.rank = rank
        self.message = message


class DistributedTimeout(DistributedError):
    """The other ranks did not join a collective within the timeout."""


class EveryRankError(DistributedError, ValueError):
    """Raised on every rank together (so no rank is left waiting); passes through `Communicator.guard`."""


class ConfigMismatch(EveryRankError):
    """Ranks were asked to train different networks or in different ways (raised on every rank)."""


def _error_line(exc) -> str:
    """`exc` as one line for the other ranks ("ValueError: ..."), or its type's name when that is empty."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip() or type(exc).__name__


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:   # pragma: no cover - depends on the installation
        raise ImportError("gpubp.distributed needs mpi4py and an MPI library: pip install "
                          "'gpubp[distributed]' (mpi4py with the mpich wheel), or mpi4py built "
                          "against the cluster's MPI") from e
    return MPI


def _is_device(a) -> bool:
    return hasattr(a, "__cuda_array_interface__")


def _nccl_dtype(nccl, dtype):
    table = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
             np.dtype(np.int32): nccl.NCCL_INT32}
    try:
        return table[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"NCCL transport takes float32, float64 or int32 buffers, got {dtype}") from None


# ------------------------------------------------------------------ pending operations
class _MPIPending:
    """A non-blocking MPI collective on a host buffer."""

    def __init__(self, request):
        self.request = request

    def done(self) -> bool:
        return self.request.Test()

    def complete(self):
        pass


class _StagedPending:
    """A device buffer all-reduced through a host copy (ranks sharing a GPU)."""

    def __init__(self, view, host, request):
        self.view, self.host, self.request = view, host, request

    def done(self) -> bool:
        return self.request.Test()

    def complete(self):
        self.view.set(self.host)


class _NCCLPending:
    """An NCCL collective on the communicator's stream; `complete` orders the compute stream after it."""

    def __init__(self, event):
        self.event = event

    def done(self) -> bool:
        return self.event.done

    def complete(self):
        import cupy

        cupy.cuda.get_current_stream().wait_event(self.event)


class _Done:
    def done(self):
        return True

    def complete(self):
        pass


# ------------------------------------------------------------------ the communicator
class Communicator:
    """MPI's world communicator (or `mpi_comm`), with the collectives data-parallel training needs.

    `rank`, `size`, `is_root` (rank 0), `local_rank` / `local_size` (within
    one machine), `device` (the GPU this rank uses, or None), `transport`
    ("mpi", "mpi-host-staging" or "nccl").  Every collective waits at most
    `timeout` seconds and watches for another rank's failure.  `overlap` and
    `bucket_bytes` say how `fit` sums gradients (`GradientBuckets`).
    """

    def __init__(self, mpi_comm=None, backend="numpy", timeout=DEFAULT_TIMEOUT, grace=None,
                 overlap=True, bucket_bytes=DEFAULT_BUCKET_BYTES):
        t, g = real_number(timeout), None if grace is None else real_number(grace)
        if t is None or not (math.isfinite(t) and t > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if grace is not None and (g is None or not (math.isfinite(g) and g >= 0)):
            raise ValueError(f"grace must be a non-negative number of seconds (or None), got {grace!r}")
        bucket_bytes = check_positive_int("bucket_bytes", bucket_bytes)
        overlap = check_flag("overlap", overlap)      # not by truth value: "False" would be yes
        # a backend or its name as "numpy" or "cuda"; a misspelt "gpu" or "CUDA" is refused (it set up
        # neither the rank's GPU nor NCCL, silently)
        from .backends import backend_name
        backend = backend_name(getattr(backend, "name", backend))
        if backend == "cuda":   # before MPI starts: every rank refuses alike
            from .backends.cuda_backend import _import_cupy

            _import_cupy()      # a missing CuPy is said with the extras that bring it
        MPI = _mpi()
        #: how `fit` sums gradients: buckets of about `bucket_bytes`, started as layers finish (`overlap`)
        self.overlap = bool(overlap)
        self.bucket_bytes = int(bucket_bytes)
        self.MPI = MPI
        self.timeout = float(timeout)
        self.mpi = self._join(mpi_comm if mpi_comm is not None else MPI.COMM_WORLD)
        self._notices = self.mpi.Dup()     # failure notices and their answers, apart from the collectives
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.grace = float(min(5.0, self.timeout) if grace is None else grace)
        local = self.mpi.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.device = None
        self.transport = "mpi"
        self._nccl = None
        self._nccl_stream = None
        #: why this communicator can no longer be used (a collective that timed out or saw a failed rank
        #: is still pending here, so the ranks' next collectives would be matched out of step), or None
        self.broken = None
        if backend == "cuda":
            self._setup_cuda()

    def _join(self, base):
        """A duplicate of `base`, made once every rank has come (`Idup`, waited for with the deadline): a
        rank that stopped before (say, an exit after importing mpi4py) ends the job instead of leaving
        the others blocked here for good.  The blocking calls after it find every rank there."""
        comm, req = base.Idup()
        deadline = time.monotonic() + self.timeout
        spins = 0
        while not req.Test():
            if time.monotonic() > deadline:
                print(f"gpubp.distributed: rank {base.Get_rank()} of {base.Get_size()} waited {self.timeout:g} s "
                      f"for the other ranks in init(); another rank has stopped before it or hangs: ending the "
                      f"job", file=sys.stderr, flush=True)
                _abort(base)
            spins += 1
            if spins > 200:
                time.sleep(min(1e-3, 2e-6 * (spins - 200)))
        return comm

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self):
        dev = "" if self.device is None else f", device={self.device}"
        return f"Communicator(rank={self.rank}, size={self.size}, transport={self.transport!r}{dev})"

    # -------------------------------------------------------------- CUDA
    def _setup_cuda(self):
        """Pick the GPU by local rank; NCCL when every rank of every machine has a GPU of its own."""
        import cupy

        n_dev = cupy.cuda.runtime.getDeviceCount()
        if n_dev < 1:
            raise DistributedError(f"rank {self.rank}: the CUDA backend was asked for but no GPU is visible")
        self.device = self.local_rank % n_dev
        cupy.cuda.Device(self.device).use()
        own = self.local_size <= n_dev
        try:
            from cupy.cuda import nccl
            have_nccl = nccl.available if hasattr(nccl, "available") else True
        except ImportError:
            have_nccl = False
        flag = np.array([1 if (own and have_nccl) else 0], dtype=np.int32)
        self.wait([self._iallreduce(flag, self.MPI.MIN)], "the choice of transport")
        if self.size == 1:
            return                             # nothing to send: no NCCL communicator needed
        if not flag[0]:
            self.transport = "mpi-host-staging"
            return
        uid = nccl.get_unique_id() if self.is_root else None
        uid = self.mpi.bcast(uid, root=0)      # at start-up every rank is here; a tuple or bytes
        self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._nccl_mod = nccl
        self._nccl_stream = cupy.cuda.Stream(non_blocking=True)
        self.transport = "nccl"

    def _nccl_op(self, buf, op, *args):
        import cupy

        ready = cupy.cuda.get_current_stream().record()
        self._nccl_stream.wait_event(ready)
        ptr = buf.data.ptr
        if op == "allreduce":
            self._nccl.allReduce(ptr, ptr, buf.size, _nccl_dtype(self._nccl_mod, buf.dtype),
                                 self._nccl_mod.NCCL_SUM, self._nccl_stream.ptr)
        else:
            self._nccl.bcast(ptr, buf.size, _nccl_dtype(self._nccl_mod, buf.dtype), args[0],
                             self._nccl_stream.ptr)
        return _NCCLPending(self._nccl_stream.record())

    # -------------------------------------------------------------- starting and waiting
    def _usable(self):
        """Refuse to start a collective once one has failed here (`broken`): MPI cannot cancel the one
        left pending, so another rank's next collective would be matched with it and get its data."""
        if self.broken is not None:
            raise DistributedError(f"rank {self.rank}: this communicator cannot be used any more: {self.broken}; "
                                   f"the ranks' collectives are out of step, so the job must end")

    def _iallreduce(self, host_buf, op):
        self._usable()
        return _MPIPending(self.mpi.Iallreduce(self.MPI.IN_PLACE, host_buf, op))

    def start_allreduce(self, buf):
        """Start summing the contiguous buffer `buf` (host or device) across ranks, in place."""
        if self.size == 1:
            return _Done()
        self._usable()
        if _is_device(buf):
            if self._nccl is not None:
                return self._nccl_op(buf, "allreduce")
            host = buf.get()
            return _StagedPending(buf, host, self.mpi.Iallreduce(self.MPI.IN_PLACE, host, self.MPI.SUM))
        return self._iallreduce(buf, self.MPI.SUM)

    def wait(self, pending, what="a collective"):
        """Wait until every operation in `pending` is done, then finish them (copies back, stream order).

        Raises `RankFailed` when another rank reports a failure, and
        `DistributedTimeout` after `timeout` seconds without completion.
        """
        deadline = time.monotonic() + self.timeout
        left = [p for p in pending]
        spins = 0
        while left:
            left = [p for p in left if not p.done()]
            if not left:
                break
            try:
                self._check_notices()
            except RankFailed as e:
                self.broken = f"{what} was left unfinished when rank {e.rank} failed"
                raise
            if time.monotonic() > deadline:
                self.broken = f"{what} timed out after {self.timeout:g} s and is still pending"
                raise DistributedTimeout(
                    f"rank {self.rank} waited {self.timeout:g} s for the other ranks in {what}; "
                    f"another rank has stopped or hangs")
            spins += 1
            if spins > 200:      # spin briefly, then yield the core (ranks may share cores)
                time.sleep(min(1e-3, 2e-6 * (spins - 200)))
        for p in pending:
            p.complete()

    def allreduce_sum(self, buf, what="an all-reduce"):
        """Sum `buf` across ranks, in place, and wait for it."""
        self.wait([self.start_allreduce(buf)], what)
        return buf

    def sum_values(self, values, what="a reduction of metrics") -> np.ndarray:
        """The element-wise sums across ranks of a few numbers (float64)."""
        buf = np.array(values, dtype=np.float64).reshape(-1)
        return self.allreduce_sum(buf, what)

    def barrier(self, what="a barrier"):
        """Wait until every rank has come here (with the deadline and the watch for failed ranks of every
        collective): e.g. after rank 0 saves a checkpoint, before the other ranks load it."""
        self.sum_values([0.0], what)

    def broadcast(self, buf, root=0, what="a broadcast"):
        """Overwrite `buf` (host or device, contiguous) with rank `root`'s, in place."""
        if self.size == 1:
            return buf
        self._usable()
        if _is_device(buf):
            if self._nccl is not None:
                self.wait([self._nccl_op(buf, "bcast", root)], what)
                return buf
            host = buf.get()
            self.wait([_MPIPending(self.mpi.Ibcast(host, root=root))], what)
            buf.set(host)
            return buf
        self.wait([_MPIPending(self.mpi.Ibcast(buf, root=root))], what)
        return buf

    def broadcast_json(self, obj, root=0, what="a broadcast"):
        """Rank `root`'s JSON-serialisable `obj`, on every rank."""
        data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8) if self.rank == root else None
        n = np.array([0 if data is None else data.size], dtype=np.int64)
        self.broadcast(n, root, what)
        buf = data.copy() if data is not None else np.empty(int(n[0]), dtype=np.uint8)
        self.broadcast(buf, root, what)
        return json.loads(buf.tobytes().decode())

    def allgather_json(self, obj, what="a gather") -> list:
        """Every rank's JSON-serialisable `obj`, in rank order, on every rank."""
        mine = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)
        counts = np.zeros(self.size, dtype=np.int64)
        counts[self.rank] = mine.size
        self.allreduce_sum(counts, what)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        everything = np.zeros(int(offsets[-1]), dtype=np.uint8)
        everything[offsets[self.rank]:offsets[self.rank + 1]] = mine
        self.allreduce_sum(everything, what)          # each rank fills only its own part
        return [json.loads(everything[offsets[r]:offsets[r + 1]].tobytes().decode())
                for r in range(self.size)]

    def check_same(self, name, obj):
        """Refuse, on every rank, when the ranks' `obj` (JSON data) differ."""
        self.refuse_if_different(name, self.allgather_json(obj, f"the check of the {name}"))

    @staticmethod
    def refuse_if_different(name, everyone):
        """Raise `ConfigMismatch` naming what differs when the gathered `everyone` (one JSON value per
        rank, the same list on every rank) are not all alike."""
        if all(o == everyone[0] for o in everyone):
            return
        ref = _flatten(everyone[0])
        lines = []
        for r, o in enumerate(everyone):
            if o != everyone[0]:
                mine = _flatten(o)
                keys = sorted(k for k in set(mine) | set(ref) if mine.get(k) != ref.get(k))
                lines.append(f"rank {r} has " + ", ".join(
                    f"{k} = {_short(mine.get(k))} where rank 0 has {_short(ref.get(k))}"
                    + _first_difference(k, mine.get(k), ref.get(k)) for k in keys))
        raise ConfigMismatch(f"the ranks' {name} differ, so they cannot train together: " + "; ".join(lines))

    # -------------------------------------------------------------- faults
    def _check_notices(self):
        MPI = self.MPI
        status = MPI.Status()
        if self._notices.Iprobe(MPI.ANY_SOURCE, _TAG_NOTICE, status):
            src = status.Get_source()
            buf = bytearray(status.Get_count(MPI.BYTE))
            self._notices.Recv([buf, MPI.BYTE], src, _TAG_NOTICE)
            raise RankFailed(src, buf.decode(errors="replace"))

    def fail(self, exc: BaseException):
        """End the whole job after `exc` on this rank: print, tell the others, then `MPI.Abort`.

        Never returns.  For a `RankFailed` notice this rank prints which rank
        failed and answers it; for its own error it prints the error, tells
        every other rank and waits up to `grace` seconds for their answers.
        """
        MPI = self.MPI
        head = f"gpubp.distributed: rank {self.rank} of {self.size}"
        if self._nccl is not None:
            try:
                self._nccl.abort()             # frees peers blocked in an NCCL collective
            except Exception:
                pass
        if isinstance(exc, RankFailed):
            print(f"{head}: stopping, because rank {exc.rank} failed: {exc.message}", file=sys.stderr,
                  flush=True)
            req = self._notices.Isend([b"", MPI.BYTE], exc.rank, _TAG_ACK)
            end = time.monotonic() + self.grace + 1.0       # the failed rank aborts the job
            while time.monotonic() < end and not req.Test():
                time.sleep(1e-3)
            time.sleep(max(0.0, end - time.monotonic()))
            _abort(self.mpi)
        what = _error_line(exc)
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(f"{tb}{head} failed: {what}\n{head}: ending the job on all {self.size} ranks",
              file=sys.stderr, flush=True)
        if self.size > 1:
            msg = what.encode()
            reqs = [self._notices.Isend([msg, MPI.BYTE], r, _TAG_NOTICE) for r in range(self.size) if r != self.rank]
            answered = set()
            end = time.monotonic() + self.grace
            while time.monotonic() < end and len(answered) < self.size - 1:
                status = MPI.Status()
                for tag in (_TAG_ACK, _TAG_NOTICE):       # a rank that failed too counts as an answer
                    if self._notices.Iprobe(MPI.ANY_SOURCE, tag, status):
                        buf = bytearray(status.Get_count(MPI.BYTE))
                        self._notices.Recv([buf, MPI.BYTE], status.Get_source(), tag)
                        answered.add(status.Get_source())
                        break
                else:
                    MPI.Request.Testall(reqs)       # moves the notices along
                    time.sleep(1e-3)
        _abort(self.mpi)

    def guard(self):
        """A context manager: an exception inside it on any rank ends the job (`fail`).

        `EveryRankError` (e.g. `ConfigMismatch`) and exceptions marked by
        `DataParallel.on_every_rank` (divergence, decided on the reduced losses)
        pass through: every rank raises them together.
        """
        return _Guard(self)

    def abort(self, code=1):
        _abort(self.mpi, code)


#: seconds a rank leaves the launcher to forward what it has printed before MPI_Abort ends the job
#: (MPICH's launcher drops output still on its way when it kills the processes)
ABORT_FLUSH_S = 0.5


def _abort(mpi_comm, code=1):
    """MPI_Abort on `mpi_comm`, after ABORT_FLUSH_S seconds for this rank's last words to get out."""
    time.sleep(ABORT_FLUSH_S)
    mpi_comm.Abort(code)


class _Guard:
    def __init__(self, comm):
        self.comm = comm

    def __enter__(self):
        return self.comm

    def __exit__(self, tp, exc, tb):
        if exc is None or isinstance(exc, EveryRankError) or getattr(exc, "gpubp_every_rank", False) or \
                self.comm.size == 1:
            return False
        self.comm.fail(exc)      # does not return


def _flatten(obj, prefix="") -> dict:
    """Nested dicts as one dict of dotted keys."""
    if not isinstance(obj, dict):
        return {prefix or "(value)": obj}
    out = {}
    for k, v in obj.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _first_difference(key, mine, ref, n=80) -> str:
    """` (first at KEY[i]: ... where rank 0 has ...)` for two lists of one length whose JSON `_short` cuts
    (an `lr_schedule`'s rates differing at a late step read the same in their first `n` characters); else ''."""
    if not (isinstance(mine, list) and isinstance(ref, list) and len(mine) == len(ref)) or \
            len(json.dumps(mine)) <= n and len(json.dumps(ref)) <= n:
        return ""
    i = next((i for i, (a, b) in enumerate(zip(mine, ref)) if a != b), None)
    if i is None:
        return ""
    return f" (first at {key}[{i}]: {_short(mine[i])} where rank 0 has {_short(ref[i])})"


def _short(v, n=80) -> str:
    s = json.dumps(v)
    return s if len(s) <= n else s[:n - 3] + "..."


def init(backend="auto", timeout=DEFAULT_TIMEOUT, grace=None, abort_on_uncaught=True, overlap=True,
         bucket_bytes=DEFAULT_BUCKET_BYTES) -> Communicator:
    """The world communicator for data-parallel training; call it once per process, before making the network.

    On the CUDA backend (`backend="cuda"`, or "auto" where a GPU is visible)
    it makes this rank's GPU (local rank modulo the machine's GPUs) current
    and, when every rank has a GPU of its own, sets up NCCL.  With
    `abort_on_uncaught`, an exception that nobody catches ends the whole job
    (`MPI.Abort`) instead of leaving the other ranks waiting.
    """
    abort_on_uncaught = check_flag("abort_on_uncaught", abort_on_uncaught)
    comm = Communicator(backend=backend, timeout=timeout, grace=grace, overlap=overlap, bucket_bytes=bucket_bytes)
    if abort_on_uncaught and comm.size > 1:
        previous = sys.excepthook

        def hook(tp, exc, tb):
            previous(tp, exc, tb)
            print(f"gpubp.distributed: rank {comm.rank} of {comm.size} ended with an uncaught "
                  f"{tp.__name__}; ending the job", file=sys.stderr, flush=True)
            comm.abort(1)

        sys.excepthook = hook
    return comm


# ------------------------------------------------------------------ splitting batches
def share(n: int, size: int, rank: int) -> tuple[int, int]:
    """The contiguous rows `[start, stop)` of `n` rows that rank `rank` of `size` takes (sizes differ by at most 1)."""
    return rank * n // size, (rank + 1) * n // size


# ------------------------------------------------------------------ gradient buckets
class GradientBuckets:
    """The flat gradient buffer cut into buckets of whole layers, summed across ranks as layers finish.

    Buckets are made from the output layer down (the order the backward pass
    finishes layers), each at least `bucket_bytes` (except the last).
    `begin(scale)` before the backward pass; `after_layer(l)` when layer l's
    gradients are final: once a bucket's layers are all final it is scaled
    and its all-reduce starts (with `overlap`; otherwise everything starts
    in `finish`); `finish()` waits for every bucket.
    """

    def __init__(self, comm: Communicator, layout, grads, overlap=True, bucket_bytes=DEFAULT_BUCKET_BYTES):
        self.comm = comm
        self.grads = grads
        self.overlap = bool(overlap)
        segs = layout.segments
        L = len(segs)
        starts = [w for w, _, _, _ in segs] + [layout.total]
        item = np.dtype(grads.dtype).itemsize
        #: (lowest layer, start, stop) per bucket, in the order they start
        self.buckets = []
        top = L
        for l in range(L, 0, -1):
            if (starts[top] - starts[l - 1]) * item >= bucket_bytes or l == 1:
                self.buckets.append((l, starts[l - 1], starts[top]))
                top = l - 1
        self._by_layer = {lo: i for i, (lo, _, _) in enumerate(self.buckets)}
        self._pending = []
        self._started = 0
        self._scale = 1.0
        self.step = 0

    def begin(self, scale: float):
        self._scale = float(scale)
        self._pending = []
        self._started = 0
        self.step += 1

    def _start(self, i):
        _, a, b = self.buckets[i]
        view = self.grads[a:b]
        if self._scale != 1.0:
            view *= self._scale
        self._pending.append(self.comm.start_allreduce(view))
        self._started = i + 1

    def after_layer(self, l: int):
        if self.overlap:
            i = self._by_layer.get(l)
            if i is not None:
                while self._started <= i:
                    self._start(self._started)
            elif self._pending:
                self._pending[-1].done()      # lets MPI progress the started buckets

    def finish(self):
        if self.overlap:
            while self._started < len(self.buckets):
                self._start(self._started)
            self.comm.wait(self._pending, f"the gradient all-reduce of step {self.step}")
        else:
            if self._scale != 1.0:
                self.grads *= self._scale
            self.comm.wait([self.comm.start_allreduce(self.grads)],
                           f"the gradient all-reduce of step {self.step}")
        self._pending = []


# ------------------------------------------------------------------ what fit does on several ranks
def _fingerprint(backend, X, n_rows=64) -> str:
    """A short digest of `X`'s shape and of up to `n_rows` rows spread over it (cheap, not a full hash)."""
    import hashlib

    idx = np.unique(np.linspace(0, X.shape[0] - 1, num=min(n_rows, X.shape[0])).astype(np.int64))
    rows = backend.to_numpy(X[backend.asarray(idx, np.int64)]) if _is_device(X) else np.asarray(X)[idx]
    h = hashlib.sha256(repr((tuple(X.shape), str(X.dtype))).encode())
    h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()[:16]


def _rng_json(net):
    """The network's shuffling generator's state as JSON data (a Philox or SFC64 one holds numpy arrays)."""
    from .network import _rng_state_for_file

    return _rng_state_for_file(net._rng)


def _schedule_rates(lr_schedule, total_steps, n=16):
    """`[[step, rate], ...]` of `lr_schedule` at steps 1, 2, 3 and up to `2 n` more spread over
    `1..total_steps` (linearly and geometrically), for comparing the ranks' schedules; None without one.
    A step whose call raises or gives no number is noted as such (the training step reports it)."""
    if lr_schedule is None:
        return None
    total = max(int(total_steps), 1)
    steps = {1, 2, 3, total} | {int(round(x)) for x in np.linspace(1, total, n)} | \
        {int(round(x)) for x in np.geomspace(1, total, n)}
    out = []
    for step in sorted(k for k in steps if 1 <= k <= total):
        try:
            rate = lr_schedule(step)
            rate = float(rate) if math.isfinite(float(rate)) else repr(rate)
        except Exception as e:     # noqa: BLE001 - compared, and raised again by the step that uses it
            rate = f"raises {type(e).__name__}"
        out.append([step, rate])
    return out


class DataParallel:
    """The hook the fit loop calls on several ranks: which rows this rank trains on, and the sums.

    Made by `MLP.fit(..., comm=comm)` with the bound optimizer.  `setup` checks
    and broadcasts once per `fit`; `epoch_order` gives the epoch's row order and
    `begin_epoch` the batches' weights; `batch(i)` is this rank's rows of step i
    (it prepares the gradient sum), `skip(i)` says that this rank has nothing
    to compute in step i (`empty_step` then joins the sum with zeros);
    `after_layer` and `finish` sum the gradients; `global_losses`,
    `epoch_loss` and `evaluate` reduce losses and metrics over the ranks.

    Without `sharded`, every rank holds the same `N` rows and takes its
    contiguous share of each global batch of `batch_size` rows (the same
    batches, in the same order, as one process).  With `sharded`, rank r
    holds rows of its own and its local batches have its share of
    `batch_size` rows (`share(batch_size, size, r)`); an epoch has as many
    steps as the rank that needs most, ranks that run out join the last
    steps with empty batches, and global batch i is the concatenation of
    the ranks' i-th local batches.  A batch's gradient is the mean over the
    global batch, weighted by the sample weights when there are some.
    """

    def __init__(self, comm: Communicator, net, optimizer, sharded=False, class_weight=None):
        self.comm = comm
        #: `fit`'s class_weight (checked), compared across the ranks in `setup`: with `sharded` the
        #: weights are each rank's own, so a dict computed from one rank's shard would pass unseen
        self.class_weight = class_weight
        self.net = net
        self.optimizer = optimizer
        self.sharded = bool(sharded)
        self.buckets = GradientBuckets(comm, net.layout, net._grads, comm.overlap, comm.bucket_bytes)
        self.n_local = self.n_global = self.n_steps = self.batch_size = 0
        self.weights = None
        self.local_w = self.global_w = None
        self.w_top = 1.0      # the sample weights' largest value over all ranks (`setup`)
        self._own_state = None    # this rank's state before rank 0's was broadcast (`setup`, `start_together`)

    @property
    def is_root(self) -> bool:
        return self.comm.is_root

    # -------------------------------------------------------------- once per fit
    def setup(self, X, Y, weights, epochs, batch_size, shuffle, validation=None, lr_schedule=None) -> int:
        """Check that every rank trains alike, broadcast rank 0's state; returns the steps per epoch.

        `validation` is the `(X_val, Y_val)` pair on the backend (or None; a bool says only
        whether there is one); without `sharded` every rank must hold the same pair, as the same
        `X`, `Y`.  `lr_schedule` is compared by its rates at a spread of the run's steps."""
        net, opt, comm = self.net, self.optimizer, self.comm
        be = net.backend
        self.n_local = int(X.shape[0])
        self.batch_size = int(batch_size)
        self.weights = weights
        # the same collective on every rank whatever its settings (the steps are known before the check);
        # ranks that disagree on `sharded` are refused here, before they make different collectives
        val_rows = int(validation[0].shape[0]) if isinstance(validation, (tuple, list)) else 0
        gathered = comm.allgather_json({"sharded": self.sharded, "rows": self.n_local, "val_rows": val_rows},
                                       "the count of rows")
        comm.refuse_if_different("network configurations and training settings",
                                 [{"fit": {"sharded": g["sharded"]}} for g in gathered])
        if self.sharded:
            n_locals = [int(g["rows"]) for g in gathered]
            local_batches = [share(self.batch_size, comm.size, r)[1] - share(self.batch_size, comm.size, r)[0]
                             for r in range(comm.size)]
            self.local_batch = local_batches[comm.rank]
            self.n_global = sum(n_locals)
            self.n_steps = max(-(-n // max(lb, 1)) for n, lb in zip(n_locals, local_batches))
        else:
            self.n_global = self.n_local
            self.n_steps = -(-self.n_global // self.batch_size)
        has_validation = validation is not None and validation is not False
        plan = {"network": net.config(), "backend": be.name,
                "optimizer": {"name": opt.name, **opt.hyper()},
                "fit": {"epochs": int(epochs), "batch_size": int(batch_size), "shuffle": bool(shuffle),
                        "sharded": self.sharded, "validation": bool(has_validation),
                        "sample_weights": weights is not None,
                        "class_weight": self.class_weight if not isinstance(self.class_weight, dict) else
                        {str(int(k)): float(self.class_weight[k]) for k in sorted(self.class_weight, key=int)},
                        "lr_schedule": _schedule_rates(lr_schedule, int(epochs) * self.n_steps)},
                "standardization": None if net.standardization is None else
                _fingerprint(None, np.stack([np.asarray(a, dtype=np.float64) for a in net.standardization]))}
        # the all-reduces each step makes, as the layers each sums (`GradientBuckets`): ranks whose init()
        # cut them otherwise (bucket_bytes, overlap) would have MPI match one rank's bucket with another's
        lows = [lo for lo, _, _ in self.buckets.buckets] if self.buckets.overlap else [1]
        tops = [len(net.layout.segments)] + [lo - 1 for lo in lows[:-1]]
        plan["comm"] = {"gradient all-reduces (init's overlap, bucket_bytes)":
                        [f"layers {lo}-{top}" if lo < top else f"layer {lo}" for lo, top in zip(lows, tops)]}
        plan["network"].pop("seed", None)      # rank 0's parameters and generator are broadcast
        if not self.sharded:
            plan["data"] = {"rows": self.n_local, "X": _fingerprint(be, X), "Y": _fingerprint(be, Y)}
            if weights is not None:
                plan["data"]["weights"] = _fingerprint(be, weights)
            if isinstance(validation, (tuple, list)):     # each rank evaluates its share of the pair
                plan["data"]["validation"] = {"X": _fingerprint(be, validation[0]),
                                              "Y": _fingerprint(be, validation[1])}
        comm.check_same("network configurations and training settings", plan)
        if self.sharded and self.n_global == 0:     # a rank's shard may hold no rows, not every rank's
            raise EveryRankError("with sharded=True the ranks' shards hold no rows at all")
        if self.sharded and has_validation and sum(int(g["val_rows"]) for g in gathered) == 0:
            raise EveryRankError("with sharded=True the ranks' validation shards hold no rows at all")
        if self.sharded and min(local_batches) == 0:   # decided alike on every rank, before anything changes
            raise EveryRankError(f"with sharded=True every rank takes a share of each batch: batch_size "
                                 f"({batch_size}) must be at least the number of ranks ({comm.size})")
        if self.sharded and weights is not None and not self.any_rank(
                bool(be.to_numpy((weights > 0).any())), "the check of the sample weights"):
            # a rank's own rows may all weigh nothing (one process on all the rows accepts that), not all rows
            raise EveryRankError(f"the sample weights (in {net.dtype.name}) are all zero on every rank")
        self.w_top = 1.0
        if weights is not None:
            # the steps' weight sums are used by their ratios only: they are summed over the largest weight
            # of all the ranks, so that weights near float64's largest number do not sum to inf (inf / inf
            # made every step's loss NaN) and subnormal ones keep their digits, as in one process
            local_top = float(be.to_numpy(weights.max())) if weights.shape[0] else 0.0
            top = max(float(t) for t in comm.allgather_json(local_top, "the largest sample weight")) \
                if self.sharded else local_top     # without sharding every rank holds the same weights
            self.w_top = top if top > 0 else 1.0
        rng = net._rng.bit_generator
        # this rank's own state, put back if training is refused before its first step (`start_together`)
        self._own_state = None if comm.is_root else \
            ([b.copy() for b in net._state_buffers(opt)], rng.state)
        for i, buf in enumerate(net._state_buffers(opt)):     # parameters, step count, optimizer state
            comm.broadcast(buf, 0, "the broadcast of the parameters and optimizer state" if i == 0 else
                           "the broadcast of the optimizer state")
        rng.state = comm.broadcast_json(_rng_json(net), 0, "the broadcast of the shuffling generator")
        return self.n_steps

    def start_together(self, error=None):
        """After the callbacks' `on_train_begin` on every rank, before the first step (one gather): when
        any rank's raised (`error`, say an `EarlyStopping` monitoring a figure the fit does not record),
        every rank refuses the call, as one process does: each puts back its own state (its parameters,
        optimizer state and generator before rank 0's were broadcast) and raises, the failed ranks their
        error, the others an `EveryRankError` naming it.  A callback's refusal used to end the job."""
        what = None if error is None else _error_line(error)
        everyone = self.comm.allgather_json(what, "the callbacks' on_train_begin")
        own, self._own_state = self._own_state, None
        if all(w is None for w in everyone):
            return
        if own is not None:
            for dst, src in zip(self.net._state_buffers(self.optimizer), own[0]):
                dst[...] = src
            self.net._rng.bit_generator.state = own[1]
        if error is not None:
            raise self.on_every_rank(error)
        raise EveryRankError("the callbacks' on_train_begin refused the call: " +
                             "; ".join(f"rank {k}: {w}" for k, w in enumerate(everyone) if w is not None))

    # -------------------------------------------------------------- per epoch and step
    def epoch_order(self, shuffle):
        """This rank's row order for the epoch (numpy int64), or None for the stored order."""
        rng = self.net._rng
        if not shuffle:
            return None
        if not self.sharded:
            return rng.permutation(self.n_local)         # as one process draws it
        seed = int(rng.integers(2**63))                  # the same draw on every rank
        return np.random.default_rng([seed, self.comm.rank]).permutation(self.n_local)

    def _rows(self, i):
        if self.sharded:
            return min(i * self.local_batch, self.n_local), min((i + 1) * self.local_batch, self.n_local)
        g0 = i * self.batch_size
        a, b = share(min(self.batch_size, self.n_global - g0), self.comm.size, self.comm.rank)
        return g0 + a, g0 + b

    def begin_epoch(self, weights=None):
        """Each step's weight (its rows, or the sum of its sample weights) here and over all ranks.

        `weights` is the epoch's (shuffled) sample weights on the backend, or
        None.  One reduction per epoch."""
        rows = [self._rows(i) for i in range(self.n_steps)]
        if weights is None:
            local = np.array([b - a for a, b in rows], dtype=np.float64)
        else:
            w = self.net.backend.to_numpy(weights).astype(np.float64) / self.w_top
            local = np.array([w[a:b].sum() for a, b in rows], dtype=np.float64)
        self.local_w = local
        self.global_w = self.comm.sum_values(local, "the reduction of the batch weights")

    def batch(self, i) -> slice:
        """This rank's rows of step `i` (a slice of the epoch's order); prepares the gradient sum."""
        a, b = self._rows(i)
        g = self.global_w[i]
        self.buckets.begin(self.local_w[i] / g if g > 0 else 0.0)
        return slice(a, b)

    def skip(self, i) -> bool:
        """True when this rank has nothing to compute in step i (no rows, or rows of weight 0)."""
        return not self.local_w[i] > 0

    def after_layer(self, l):
        self.buckets.after_layer(l)

    @staticmethod
    def on_every_rank(exc):
        """Mark `exc` as raised by every rank together (a decision on reduced values): it then
        leaves `fit` as it is instead of ending the job."""
        exc.gpubp_every_rank = True
        return exc

    def empty_step(self, loss_out):
        """The step of a rank with nothing to compute: a zero gradient joins the sum (call `batch` first)."""
        loss_out[...] = 0
        self.net._grads[...] = 0
        self.buckets.finish()

    def finish(self):
        """Wait for the gradient sum (call before the optimizer's update)."""
        self.buckets.finish()

    # -------------------------------------------------------------- losses and metrics
    def global_losses(self, local_losses, start) -> np.ndarray:
        """The global batches' losses of steps `start, start+1, ...` from this rank's (one reduction).

        Not finite where any rank's loss is not finite, as one process computes it: NaN where a
        loss is NaN (or infinities of both signs meet), +-inf where a loss is infinite; 0 where a
        global batch weighs nothing (all its sample weights are 0; its gradient is 0 too)."""
        idx = slice(start, start + len(local_losses))
        vals = np.asarray(local_losses, dtype=np.float64) * self.local_w[idx]
        vals[self.local_w[idx] == 0] = 0.0
        tot = self.comm.sum_values(vals, "the reduction of the training losses")
        g = self.global_w[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(g > 0, tot / np.where(g > 0, g, 1.0), 0.0)

    # -------------------------------------------------------------- callbacks
    def _state_digest(self) -> list:
        """A digest of this rank's training state (parameters, optimizer state and hyper-parameters,
        shuffling generator): per buffer its float64 sum and sum of magnitudes (every value counts) and
        the exact bytes of up to 1024 values spread over it; equal on every rank that holds the same
        state (the same reductions of the same values on the same kind of device)."""
        import hashlib

        be = self.net.backend
        out = []
        for buf in self.net._state_buffers(self.optimizer):
            flat = buf.reshape(-1)
            sums = be.to_numpy(be.xp.stack([flat.sum(dtype=np.float64), be.xp.abs(flat).sum(dtype=np.float64)]))
            out.append([_fingerprint(be, flat, 1024)] + [repr(float(v)) for v in sums])
        out.append(hashlib.sha256(json.dumps(self.net._rng.bit_generator.state, sort_keys=True,
                                             default=str).encode()).hexdigest()[:16])
        out.append(self._hyper())
        return out

    def _hyper(self) -> dict:
        """The optimizer's hyper-parameters (its learning rate...) as JSON data: a callback may change them."""
        hyper = {} if self.optimizer is None else self.optimizer.hyper()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in hyper.items()}

    def before_callbacks(self):
        """Note this rank's state before the callbacks of an epoch's end (or of the training's) run."""
        self._digest_before = self._state_digest()

    def after_callbacks(self, stop: bool, epoch: int | None = None) -> bool:
        """After the callbacks (`before_callbacks` first): whether any rank stops, decided alike on every
        rank (one gather), and rank 0's state on every rank when a callback changed it on some ranks only.

        `EarlyStopping(restore_best=True)` given to rank 0 alone put the best epoch's parameters back on
        rank 0 and left the others with the last epoch's, silently; so does any callback that changes the
        network, its optimizer's settings (a learning-rate decay) or draws from its generator on some
        ranks: the ranks then hold rank 0's state, as they do at the start of `fit`.  A rank whose own
        callback's change is so replaced warns.  `epoch`: the epoch whose `on_epoch_end` callbacks ran, or
        None for `on_train_end`."""
        what = "the end of fit" if epoch is None else f"the decision to stop after epoch {epoch}"
        where = "on_train_end" if epoch is None else f"on_epoch_end of epoch {epoch}"
        mine = self._state_digest()
        everyone = self.comm.allgather_json({"stop": bool(stop), "state": mine}, what)
        if any(o["state"] != everyone[0]["state"] for o in everyone):
            for buf in self.net._state_buffers(self.optimizer):
                self.comm.broadcast(buf, 0, f"the broadcast of rank 0's training state after {what}")
            rng = self.net._rng.bit_generator
            rng.state = self.comm.broadcast_json(_rng_json(self.net), 0,
                                                 f"the broadcast of rank 0's generator after {what}")
            # a learning-rate decay in a callback of rank 0 alone: every rank goes on with rank 0's rate
            own = self._hyper()
            for k, v in self.comm.broadcast_json(own, 0, f"the broadcast of rank 0's optimizer settings after "
                                                         f"{what}").items():
                if v != own[k]:
                    setattr(self.optimizer, k, v)
            if mine != everyone[0]["state"] and mine != self._digest_before:
                import warnings

                from .training import _caller_level

                warnings.warn(f"rank {self.comm.rank}: a callback ({where}) changed the network or drew from its "
                              f"generator on this rank, not alike on rank 0; every rank now holds rank 0's state: "
                              f"give every rank the same callbacks", RuntimeWarning, stacklevel=_caller_level())
        return any(o["stop"] for o in everyone)

    def on_all_ranks(self, ok: bool, what: str) -> bool:
        """Whether `ok` holds on every rank (one reduction), so that every rank decides alike."""
        return float(self.comm.sum_values(np.array([0.0 if ok else 1.0]), what)[0]) == 0.0

    def any_rank(self, flag: bool, what: str) -> bool:
        """Whether `flag` holds on any rank (one reduction), so that every rank decides alike."""
        return not self.on_all_ranks(not flag, what)

    def epoch_loss(self, local_losses) -> float:
        """The epoch's mean training loss (weighted like the batches) from this rank's step losses."""
        vals = np.asarray(local_losses, dtype=np.float64) * self.local_w
        vals[self.local_w == 0] = 0.0
        tot = self.comm.sum_values([vals.sum()], "the reduction of the training loss")[0]
        return float(tot / self.global_w.sum())

    def evaluate(self, X, Y, _checked=True) -> dict:
        """`net.evaluate` over all ranks' rows (checked backend arrays): this rank's share (or shard), reduced."""
        n = int(X.shape[0])
        a, b = (0, n) if self.sharded else share(n, self.comm.size, self.comm.rank)
        vals = [0.0, 0.0, float(b - a)]
        if b > a:
            ev = self.net.evaluate(X[a:b], Y[a:b], _checked=True)
            vals = [ev["loss"] * (b - a), ev.get("accuracy", 0.0) * (b - a), float(b - a)]
        tot = self.comm.sum_values(vals, "the reduction of the metrics")
        out = {"loss": float(tot[0] / tot[2])}
        if self.net.loss in CLASSIFICATION_LOSSES:
            out["accuracy"] = float(tot[1] / tot[2])
        return out


#: what the first collective of a data-parallel `fit` is called (`check_fit_options`, `guard_fit`)
_CHECKS_GATHER = "the check of fit's arguments"


def check_fit_options(comm, sharded, grad_norms=False, class_weight=None, standardize=False, device=None):
    """Refuse the `fit` options that data-parallel training does not support (`EveryRankError`, a
    ValueError), and a network on another CUDA device (`device`, or None) than the rank's GPU.  On several
    ranks the ranks' refusals are gathered first (one collective), so that every rank refuses alike, naming
    the ranks at fault, even when only some ranks pass the option.

    `fit` calls it once its own checks of the arguments have passed, as the first collective of the
    call: a rank whose checks raised joins this gather from `guard_fit` with its error instead."""
    reason = None
    gpu = getattr(comm, "device", None)
    if grad_norms:
        reason = "grad_norms=True is not supported with comm (data-parallel training)"
    elif sharded and isinstance(class_weight, str):
        reason = (f"class_weight={class_weight!r} with sharded=True would count each rank's classes alone: pass a "
                  "dict of class weights computed over all the data")
    elif sharded and standardize:
        reason = ("standardize=True with sharded=True would use each rank's own statistics: compute the mean and "
                  "standard deviation over all the data and call set_standardization")
    elif device is not None and gpu is not None and int(device) != int(gpu):
        # init() makes the rank's GPU current in the thread that calls it; CUDA's current device is per
        # thread, so a network made in another thread lands on device 0 (and NCCL would get its buffers)
        reason = (f"the network is on CUDA device {device} but this rank's GPU is device {gpu}: init() makes it "
                  f"current only in the thread that calls it; make the network (and train it) under "
                  f"cupy.cuda.Device({gpu})")
    if getattr(comm, "size", 1) == 1:
        reasons = [reason]
    else:
        comm._fit_checks_gathered = True      # `guard_fit`: this rank has joined the gather (see there)
        reasons = comm.allgather_json(reason, _CHECKS_GATHER)
    if all(r is None for r in reasons):
        return
    if all(r == reasons[0] for r in reasons):
        raise EveryRankError(reasons[0])
    raise EveryRankError("; ".join(f"rank {k}: {r}" for k, r in enumerate(reasons) if r is not None))


def guard_fit(fit):
    """Decorator of `MLP.fit`: with `comm=`, an exception on any rank ends the whole job (`Communicator.guard`),
    except an argument refused by `fit`'s checks: those end in the ranks' first collective
    (`check_fit_options`), which a rank whose checks raised joins here with its error, so that every
    rank refuses the call (that rank with its own error, the others with an `EveryRankError` naming it),
    each leaving its network as it was, as one process refuses bad input; the job goes on."""
    import functools

    @functools.wraps(fit)
    def wrapper(self, *args, comm=None, **kwargs):
        if type(comm).__module__.split(".")[0] == "mpi4py":   # the same on every rank: nothing to end
            raise TypeError(f"comm must be the communicator of gpubp.distributed.init() (which wraps MPI's), "
                            f"got mpi4py's {type(comm).__name__}")
        if comm is not None and not all(isinstance(getattr(comm, k, None), int) for k in ("size", "rank")):
            raise TypeError(f"comm must be the communicator of gpubp.distributed.init() (or None), got "
                            f"{type(comm).__name__} {comm!r}"[:300])
        if comm is None or comm.size == 1:
            return fit(self, *args, comm=comm, **kwargs)
        with comm.guard():
            comm._fit_checks_gathered = False
            try:
                return fit(self, *args, comm=comm, **kwargs)
            except Exception as e:
                if comm._fit_checks_gathered or isinstance(e, EveryRankError):
                    raise          # raised on every rank together, or after the checks: the guard decides
                # refused by this rank's checks, before the ranks' first collective: the others wait in it
                comm._fit_checks_gathered = True
                comm.allgather_json(_error_line(e), _CHECKS_GATHER)
                raise DataParallel.on_every_rank(e)

    return wrapper


def find_mpiexec() -> str | None:
    """The `mpiexec` of this Python environment (the mpich wheel puts one next to the interpreter), else on PATH."""
    import os
    import shutil

    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    return shutil.which("mpiexec")


def mpiexec_command(n: int, mpiexec: str | None = None) -> list[str]:
    """`[mpiexec, -n, N, ...]` for `n` processes on this machine (Open MPI also gets `--oversubscribe`)."""
    import os
    import subprocess

    exe = mpiexec or find_mpiexec()
    if exe is None:
        raise FileNotFoundError("no mpiexec found: pip install 'gpubp[distributed]' (mpi4py and mpich)")
    cmd = [exe, "-n", str(int(n))]
    try:
        ver = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        ver = ""
    if "Open MPI" in ver or "OpenRTE" in ver:
        cmd.insert(1, "--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.insert(1, "--allow-run-as-root")
    return cmd
