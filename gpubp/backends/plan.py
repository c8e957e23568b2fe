"""Step plans: everything one training step of one batch shape uses, owned in one place.

A `StepPlan` holds the activations `A`, pre-activations `Z`, deltas, the loss
value and a `Scratch` of backend-private temporaries (the numpy backend's
temporaries, the CUDA backend's loss partials, split-K and fused-run
workspaces and pointer tables).  Whoever makes a plan owns it: a network keeps
one per batch shape, a captured CUDA graph keeps its own alive for as long as
it can be replayed.  A backend instance keeps no buffers of its own, so any
number of networks and threads can share it; one plan is used by one thread
(and, on CUDA, one stream) at a time.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..activations import NEEDS_Z


class Scratch:
    """Temporaries kept between calls, each made on first use.

    `get(key, shape, dtype)` returns the same buffer for the same key, shape
    and dtype every time, so its address never changes (a captured CUDA graph
    may hold it).  `memo(key, value_bytes, make)` keeps a small LRU of
    derived device objects (the fused kernels' pointer tables) keyed by their
    content.
    """

    #: most content-keyed entries kept per memo key
    MEMO_SIZE = 64

    def __init__(self, backend):
        self._backend = backend
        self._bufs: dict = {}
        self._memo: dict = {}
        #: small facts a backend keeps about the buffers between its calls (e.g. what a copy holds)
        self.notes: dict = {}

    def get(self, key, shape, dtype):
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        full = (key, shape, dtype.str)
        buf = self._bufs.get(full)
        if buf is None:
            buf = self._bufs[full] = self._backend.empty(shape, dtype)
        return buf

    def memo(self, key, content: bytes, make):
        lru = self._memo.setdefault(key, OrderedDict())
        val = lru.get(content)
        if val is None:
            val = lru[content] = make()
            if len(lru) > self.MEMO_SIZE:
                lru.popitem(last=False)
        else:
            lru.move_to_end(content)
        return val

    def nbytes(self) -> int:
        return sum(int(b.nbytes) for b in self._bufs.values())


def scratch_buffer(scratch, key, like=None, shape=None, dtype=None, xp=np):
    """A temporary from `scratch`, or a fresh array when the caller passed no scratch."""
    if like is not None:
        shape, dtype = like.shape, like.dtype
    if scratch is None:
        return xp.empty(shape, dtype=dtype)
    return scratch.get(key, shape, dtype)


class StepPlan:
    """The buffers of a step of `batch` rows through a network of `sizes` and `activations`.

    `A[0]` is the input slot (bound by the caller, `bind_input`); `A[l]`,
    `Z[l]` (only where the activation's derivative needs Z) and `delta[l]`
    (dLoss/dZ of layer l) for l = 1..L are owned by the plan; `delta[0]`
    (dLoss/dX) exists when `input_grad` is set.  `loss` is a 1-element array.
    """

    def __init__(self, backend, sizes, activations, batch, dtype, precision="float32",
                 input_grad=False):
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"a plan needs at least two positive layer sizes, got {list(sizes)}")
        activations = tuple(activations)
        if len(activations) != len(sizes) - 1:
            raise ValueError(f"a plan needs one activation per layer: {len(sizes) - 1}, got {len(activations)}")
        if isinstance(batch, bool) or int(batch) != batch or batch < 1:
            raise ValueError(f"a plan's batch must be a positive integer, got {batch!r}")
        self.backend = backend
        self.sizes = sizes
        self.activations = activations
        self.batch = int(batch)
        self.dtype = np.dtype(dtype)
        self.precision = precision
        self.input_grad = bool(input_grad)
        B = self.batch
        backend.check_memory(self.nbytes_estimate(sizes, activations, B, self.dtype, input_grad),
                             f"buffers for a batch of {B} rows")
        self.A = [None] + [backend.empty((B, n), self.dtype) for n in sizes[1:]]
        self.Z = [None] + [backend.empty((B, n), self.dtype) if g in NEEDS_Z else None
                           for n, g in zip(sizes[1:], activations)]
        self.delta = ([backend.empty((B, sizes[0]), self.dtype) if input_grad else None] +
                      [backend.empty((B, n), self.dtype) for n in sizes[1:]])
        self.loss = backend.zeros((1,), self.dtype)
        self.scratch = Scratch(backend)

    @staticmethod
    def nbytes_estimate(sizes, activations, batch, dtype, input_grad=False) -> int:
        """Bytes of a plan's activations, pre-activations and deltas (scratch not counted)."""
        item = np.dtype(dtype).itemsize
        per_row = 2 * sum(sizes[1:]) + sum(n for n, g in zip(sizes[1:], activations) if g in NEEDS_Z)
        if input_grad:
            per_row += sizes[0]
        return int(batch) * per_row * item

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def bind_input(self, X):
        """Use `X` (a `(batch, sizes[0])` backend array of the plan's dtype) as `A[0]`."""
        if tuple(X.shape) != (self.batch, self.sizes[0]) or X.dtype != self.dtype:
            raise ValueError(f"this plan takes inputs of shape {(self.batch, self.sizes[0])} and dtype "
                             f"{self.dtype.name}, got {tuple(X.shape)} {X.dtype}")
        self.A[0] = X
        return self

    def __repr__(self):
        return (f"StepPlan(sizes={list(self.sizes)}, batch={self.batch}, dtype={self.dtype.name}, "
                f"precision={self.precision!r}, input_grad={self.input_grad})")
