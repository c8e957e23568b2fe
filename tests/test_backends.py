"""Backend selection, on any machine."""

import numpy as np
import pytest

import gpubp
from gpubp.backends import cuda_available, get_backend


def test_numpy_is_always_there():
    assert "numpy" in gpubp.available_backends()
    assert get_backend("numpy").name == "numpy"


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="(?i)gpu|cuda|cupy"):
        gpubp.MLP([2, 2], backend="cuda")


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_auto_falls_back_to_numpy():
    assert gpubp.MLP([2, 2], backend="auto").backend.name == "numpy"


def test_numpy_backend_refuses_device_arrays():
    class FakeDevice:
        __cuda_array_interface__ = {"shape": (2, 2), "typestr": "<f4", "data": (0, False), "version": 3}

    net = gpubp.MLP([2, 2], backend="numpy")
    with pytest.raises(TypeError, match="CUDA device"):
        net.forward(FakeDevice())
    with pytest.raises(TypeError, match="CUDA device"):    # every array argument, as X
        net.fit(np.ones((2, 2)), np.ones((2, 2)), epochs=1, progress=False, sample_weight=FakeDevice())
    with pytest.raises(TypeError, match="CUDA device"):
        net.set_standardization(FakeDevice(), FakeDevice())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update_without_weight_decay_is_a_plain_step(dtype):
    """`Backend.sgd_update`'s weight_decay defaults to 0: params -= lr * grads (docs/spec.md, SGD)."""
    be = get_backend("numpy")
    p, g = np.array([1.0, -2.0, 3.0], dtype), np.array([0.5, 0.25, -4.0], dtype)
    be.sgd_update(p, g, None, 0.5, 0.0)
    assert p.dtype == dtype and np.array_equal(p, np.array([0.75, -2.125, 5.0], dtype))


def test_the_numpy_backend_refuses_unknown_loss_and_activation_names():
    """A name the backend does not know is a ValueError, not a silently unwritten loss or output."""
    be = get_backend("numpy")
    A, Y, out = np.ones((2, 3)), np.zeros((2, 3)), np.full(1, 7.0)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        be.loss_and_delta(A, None, Y, "hinge", "identity", out, np.empty_like(A))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        be.sample_losses(A, Y, "hinge")
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        be.dense_forward(A, np.ones((3, 3)), np.zeros(3), "softplus", np.empty_like(A))
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        be.dense_backward(A, A, np.ones((3, 3)), np.empty((3, 3)), np.empty(3), np.empty_like(A), "softplus", A)


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_the_loss_value_alone_is_the_value_computed_with_the_delta(precision):
    """`loss_and_delta(delta_out=None)` computes only the value, in every precision mode ("bf16" rounds
    the delta it writes, and there is none)."""
    be = get_backend("numpy")
    rng = np.random.default_rng(0)
    A, Y = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    alone, with_delta, delta = np.zeros(1), np.zeros(1), np.empty_like(A)
    be.loss_and_delta(A, None, Y, "mse", "identity", alone, None, precision=precision)
    be.loss_and_delta(A, None, Y, "mse", "identity", with_delta, delta, precision=precision)
    assert alone[0] == with_delta[0] == pytest.approx(np.mean((A.astype(np.float64) - Y) ** 2), rel=1e-6)


# ---------------------------------------------------------------- step plans and their scratch (gpubp.backends.plan)
def test_scratch_get_returns_one_buffer_per_key_shape_and_dtype():
    """`Scratch.get` gives the same buffer for the same key, shape and dtype every time (its address never
    changes: a captured CUDA graph may hold it), another for any other; `nbytes` counts them all."""
    from gpubp.backends.plan import Scratch

    s = Scratch(get_backend("numpy"))
    a = s.get("t", (2, 3), np.float32)
    assert a.shape == (2, 3) and a.dtype == np.float32
    assert s.get("t", [np.int64(2), 3], "float32") is a           # the same shape and dtype, spelled otherwise
    others = [s.get("u", (2, 3), np.float32), s.get("t", (3, 2), np.float32), s.get("t", (2, 3), np.float64)]
    assert all(o is not a for o in others) and len({id(o) for o in others}) == 3
    assert s.nbytes() == 3 * 24 + 48


def test_scratch_memo_makes_each_content_once_and_keeps_the_most_recent():
    """`memo` keeps an LRU of up to MEMO_SIZE entries per key: a content made once is not made again while
    kept; the least recently used goes first, a content used again stays."""
    from gpubp.backends.plan import Scratch

    s, made = Scratch(get_backend("numpy")), []

    def memo(c, key="k"):
        return s.memo(key, bytes([c % 256, c // 256]), lambda: (made.append(c), f"obj{c}")[1])

    n = Scratch.MEMO_SIZE
    assert [memo(c) for c in range(n)] == [f"obj{c}" for c in range(n)] and made == list(range(n))
    assert [memo(c) for c in range(n)] == [f"obj{c}" for c in range(n)] and len(made) == n   # all kept
    memo(0)                                   # used again: 1 is now the least recently used
    memo(n)                                   # one too many: 1 goes
    assert made[n:] == [n]
    memo(0), memo(2), memo(n - 1), memo(n)
    assert made[n:] == [n]                    # still kept
    memo(1)
    assert made[n:] == [n, 1]
    memo(5, key="other")                      # each key has its own
    assert made[n:] == [n, 1, 5]


def test_scratch_buffer_is_the_scratch_one_or_a_fresh_array():
    from gpubp.backends.plan import Scratch, scratch_buffer

    like = np.ones((2, 5), np.float32)
    fresh = [scratch_buffer(None, "x", like), scratch_buffer(None, "x", shape=(4,), dtype=np.float64)]
    assert (fresh[0].shape, fresh[0].dtype, fresh[1].shape, fresh[1].dtype) == ((2, 5), np.float32, (4,), np.float64)
    assert scratch_buffer(None, "x", like) is not fresh[0]
    s = Scratch(get_backend("numpy"))
    kept = scratch_buffer(s, "x", like)
    assert kept is scratch_buffer(s, "x", like) is s.get("x", (2, 5), np.float32)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_numpy_step_keeps_its_temporaries_in_the_plan_and_the_optimizer(opt):
    """The numpy backend's temporaries live in the caller's Scratch (gpubp.backends.numpy_backend): after
    the first step of a batch shape, further steps reuse the same buffers."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    net = gpubp.MLP([3, 4, 2], loss="cross_entropy", backend="numpy", seed=0)
    o = gpubp.optim.SGD(0.1, weight_decay=0.1) if opt == "sgd" else gpubp.optim.Adam(weight_decay=0.1)
    net.train_step(X, Y, o)
    plan = net._plans[6]
    scratches = [plan.scratch, o._scratch]
    bufs = [dict(s._bufs) for s in scratches]
    assert all(b and s.nbytes() > 0 for b, s in zip(bufs, scratches))
    net.train_step(X * 2, Y, o)
    assert [s._bufs for s in scratches] == bufs and all(s._bufs[k] is b[k] for s, b in zip(scratches, bufs) for k in b)


@pytest.mark.parametrize("input_grad", [False, True])
def test_a_step_plan_holds_what_its_docstring_says_and_estimates_it_exactly(input_grad):
    """A[1..L] and delta[1..L] (B, n_l); Z[l] only where the activation's derivative needs Z (gelu,
    silu); delta[0] (B, n_0) only with input_grad (off by default); a 1-element loss.  nbytes_estimate
    is the bytes of exactly these: by hand, 4 rows of (5 + 2) * 2 + 5 (gelu's Z) [+ 3] float32 numbers."""
    from gpubp.backends.plan import StepPlan

    be = get_backend("numpy")
    kw = {"input_grad": True} if input_grad else {}
    plan = StepPlan(be, [3, 5, 2], ["gelu", "identity"], 4, np.float32, **kw)
    assert plan.A[0] is None and [a.shape for a in plan.A[1:]] == [(4, 5), (4, 2)]
    assert plan.Z[0] is None and plan.Z[1].shape == (4, 5) and plan.Z[2] is None
    assert [d.shape for d in plan.delta[1:]] == [(4, 5), (4, 2)]
    assert (plan.delta[0].shape == (4, 3)) if input_grad else (plan.delta[0] is None)
    assert plan.loss.shape == (1,) and plan.n_layers == 2 and plan.input_grad is input_grad
    held = sum(a.nbytes for a in plan.A[1:] + plan.Z + plan.delta if a is not None)
    assert StepPlan.nbytes_estimate([3, 5, 2], ["gelu", "identity"], 4, np.float32, input_grad) == held \
        == 4 * 4 * (19 + 3 * input_grad)
    assert StepPlan.nbytes_estimate([3, 5, 2], ["silu", "relu"], 1, np.float64) == 8 * 19


@pytest.mark.parametrize("sizes, acts, batch, words", [
    ([3], [], 1, "two positive layer sizes"),
    ([3, 0, 2], ["relu", "identity"], 1, "two positive layer sizes"),
    ([0, 2], ["identity"], 1, "two positive layer sizes"),
    ([3, 2], ["relu", "identity"], 1, "one activation per layer"),
    ([3, 2], ["identity"], 0, "positive integer"),
    ([3, 2], ["identity"], True, "positive integer"),
    ([3, 2], ["identity"], 2.5, "positive integer"),
])
def test_a_step_plan_refuses_what_is_no_network_or_batch(sizes, acts, batch, words):
    from gpubp.backends.plan import StepPlan

    with pytest.raises(ValueError, match=words):
        StepPlan(get_backend("numpy"), sizes, acts, batch, np.float32)


def test_a_step_plan_binds_only_an_input_of_its_shape_and_dtype():
    from gpubp.backends.plan import StepPlan

    plan = StepPlan(get_backend("numpy"), [3, 2], ["identity"], 4, np.float32)
    for bad in (np.zeros((4, 2), np.float32), np.zeros((3, 3), np.float32), np.zeros((4, 3), np.float64)):
        with pytest.raises(ValueError, match=r"takes inputs of shape \(4, 3\) and dtype float32"):
            plan.bind_input(bad)
        assert plan.A[0] is None
    X = np.zeros((4, 3), np.float32)
    assert plan.bind_input(X) is plan and plan.A[0] is X
