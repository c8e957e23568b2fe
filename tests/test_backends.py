"""Backend selection, on any machine."""

import numpy as np
import pytest
from conftest import rel_err

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


# ---------------------------------------------------------------- the interface's default passes (gpubp.backends.base)
def _torch_sample_losses(A, Y, loss):
    import torch
    import torch.nn.functional as F

    a, y = torch.tensor(A, dtype=torch.float64), torch.tensor(Y)
    if loss == "mse":
        return F.mse_loss(a, y.double(), reduction="none").mean(1).numpy()
    if loss == "half_sse":
        return (0.5 * F.mse_loss(a, y.double(), reduction="none").sum(1)).numpy()
    if loss == "cross_entropy":
        return F.cross_entropy(a, y.long() if y.ndim == 1 else y.double(), reduction="none").numpy()
    return F.binary_cross_entropy_with_logits(a, y.double(), reduction="none").mean(1).numpy()


@pytest.mark.parametrize("loss, labels", [("mse", False), ("half_sse", False), ("cross_entropy", True),
                                          ("cross_entropy", False), ("binary_cross_entropy", False)])
def test_sample_losses_are_pytorchs_unreduced_losses(loss, labels):
    """`Backend.sample_losses` (the weighted loss's per-sample values) is PyTorch's `reduction="none"`
    loss per row (mse and bce averaged over the outputs, half_sse half the row's sum), also for logits of
    several hundred, where exp overflows unless shifted."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    A = rng.standard_normal((5, 3)) * 3
    A[0] = [800.0, -700.0, 750.0]
    if labels:
        Y = rng.integers(0, 3, 5)
    elif loss == "cross_entropy":
        Y = rng.dirichlet(np.ones(3), 5)
    else:
        Y = rng.uniform(0, 1, (5, 3))
    got = get_backend("numpy").sample_losses(A, Y, loss)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, _torch_sample_losses(A, Y, loss), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("weights", [[1.0, 3.0, 0.0, 2.0], [3e38, 1e38, 0.0, 2e38], [1e-45, 3e-45, 0.0, 2e-45],
                                     [0.0] * 4, [2.0] * 4], ids=["plain", "huge", "subnormal", "zero", "equal"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_network_loss_with_weights_is_the_weighted_mean_and_scales_each_delta_row(loss, weights, dtype):
    """docs: the loss is `sum_i w_i l_i / sum_i w_i` and a sample's delta row is the unweighted one times
    `B w_i / sum w`, for weights near float32's largest or smallest numbers alike, without a warning; all-zero
    weights give 0 and no delta."""
    import warnings

    from gpubp.backends.plan import StepPlan

    be = get_backend("numpy")
    rng = np.random.default_rng(2)
    plan = StepPlan(be, [3, 4], ["identity"], 4, dtype)
    plan.A[1][...] = rng.standard_normal((4, 4))
    Y = rng.integers(0, 4, 4) if loss == "cross_entropy" else rng.standard_normal((4, 4)).astype(dtype)
    w = np.array(weights, dtype)
    plain = plan.delta[1].copy()
    be.loss_and_delta(plan.A[1], None, Y, loss, "identity", np.zeros(1), plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        be.network_loss(plan, Y, loss, weights=w)
    w64 = w.astype(np.float64) / max(float(w.max()), 1e-300)     # the weights as stored, at a scale float64 sums
    l = be.sample_losses(plan.A[1], Y, loss).astype(np.float64)
    s, rtol = w64.sum(), 1e-12 if dtype == np.float64 else 1e-5
    assert plan.loss[0] == pytest.approx((w64 * l).sum() / s if s > 0 else 0.0, rel=rtol)
    np.testing.assert_allclose(plan.delta[1], plain * (4 * w64 / s if s > 0 else 0 * w64)[:, None], rtol=rtol)
    out = np.zeros(1, dtype)
    be.network_loss(plan, Y, loss, want_delta=False, loss_out=out, weights=w)   # into loss_out, delta untouched
    assert out[0] == plan.loss[0]


def test_check_memory_refuses_only_more_than_is_free():
    from gpubp.backends import NumpyBackend

    class Small(NumpyBackend):
        def free_memory(self):
            return 1000

    Small().check_memory(1000, "exactly what is free")
    with pytest.raises(MemoryError, match="x need 1,001 bytes, but only 1,000 bytes of numpy memory are free"):
        Small().check_memory(1001, "x")
    with pytest.raises(MemoryError):
        get_backend("numpy").check_memory(2 ** 62, "4 EiB")   # the host's free memory is known

    class Unknown(NumpyBackend):
        def free_memory(self):
            return None

    Unknown().check_memory(2 ** 62, "anything: nothing known")


def test_make_plan_refuses_a_mode_the_dtype_or_the_backend_cannot_run():
    from gpubp.backends import NumpyBackend

    class Float32Only(NumpyBackend):
        name = "f32only"
        precisions = ("float32", "tf32")

    with pytest.raises(ValueError, match="bf16"):
        get_backend("numpy").make_plan([3, 2], ["identity"], 4, np.float64, "bf16")
    with pytest.raises(ValueError, match=r"precision='bf16' is not available on the f32only backend"):
        Float32Only().make_plan([3, 2], ["identity"], 4, np.float32, "bf16")
    with pytest.raises(ValueError, match="not available on the f32only backend"):
        Float32Only().check_precision("3xtf32")
    plan = Float32Only().make_plan([3, 2], ["identity"], 4, np.float32, "tf32")
    assert plan.precision == "tf32" and plan.batch == 4


def test_a_pickled_backend_comes_back_as_the_shared_instance_or_an_equal_new_one():
    import pickle

    from gpubp.backends import NumpyBackend

    shared = get_backend("numpy")
    assert pickle.loads(pickle.dumps(shared)) is shared
    own = NumpyBackend()
    back = pickle.loads(pickle.dumps(own))
    assert type(back) is NumpyBackend and back is not own and back is not shared


def test_the_default_backward_gives_dloss_dx_with_input_grad():
    """`layer_backward` of layer 1 in a plan with input_grad writes delta[0] = delta_1 W_1 (the input has no
    activation), with dW_1 = delta_1^T X and db_1 = the column sums, as numpy computes them."""
    from gpubp.backends.plan import StepPlan

    be = get_backend("numpy")
    rng = np.random.default_rng(3)
    W1, b1, W2, b2 = (rng.standard_normal(s) for s in ((4, 3), (4,), (2, 4), (2,)))
    X = rng.standard_normal((5, 3))
    plan = be.make_plan([3, 4, 2], ["tanh", "sigmoid"], 5, np.float64, input_grad=True).bind_input(X)
    be.network_forward(plan, [(W1, b1), (W2, b2)])
    plan.delta[2][...] = rng.standard_normal((5, 2))
    grads = [(np.empty_like(W1), np.empty_like(b1)), (np.empty_like(W2), np.empty_like(b2))]
    seen = []
    be.network_backward(plan, [(W1, b1), (W2, b2)], grads, after_layer=seen.append)
    d1 = (plan.delta[2] @ W2) * (1 - np.tanh(X @ W1.T + b1) ** 2)
    np.testing.assert_allclose(plan.delta[1], d1, rtol=1e-12)
    np.testing.assert_allclose(plan.delta[0], d1 @ W1, rtol=1e-12)
    np.testing.assert_allclose(grads[0][0], d1.T @ X, rtol=1e-12)
    np.testing.assert_allclose(grads[0][1], d1.sum(0), rtol=1e-12)
    assert seen == [2, 1]


# ---------------------------------------------------------------- the bias gradient's sum
@pytest.mark.parametrize("B", [1, 7, 1023, 1024, 1025, 1536, 4096 + 511, 10000])
def test_numpy_db_is_every_row_summed_once(B):
    """Small integers sum exactly in float32: the blocked sum (DB_BLOCK rows at a time, then the blocks,
    then the rows left over) equals the exact column sums for batches below, at and around the block
    multiples; a row dropped or added would show."""
    from gpubp.backends.numpy_backend import DB_BLOCK, NumpyBackend

    assert DB_BLOCK == 512
    rng = np.random.default_rng(B)
    delta = rng.integers(-8, 9, (B, 5)).astype(np.float32)
    A_prev = rng.standard_normal((B, 3)).astype(np.float32)
    W = rng.standard_normal((5, 3)).astype(np.float32)
    dW, db = np.empty((5, 3), np.float32), np.full(5, np.nan, np.float32)
    NumpyBackend().dense_backward(delta, A_prev, W, dW, db)
    np.testing.assert_array_equal(db, delta.astype(np.int64).sum(axis=0))


def test_numpy_db_in_float32_at_a_huge_batch_is_accurate():
    """numpy adds a (B, n) array's rows one after another: 1.6e-5 relative error at B = 2^20 in float32,
    a quarter of the 1e-4 the GPU's float32 results are held to against this backend.  Summed by blocks it
    is under 2e-6, and the same bits on every call."""
    from gpubp.backends.numpy_backend import NumpyBackend

    rng = np.random.default_rng(0)
    B = 1 << 20
    delta = rng.standard_normal((B, 8)).astype(np.float32)
    A_prev = rng.standard_normal((B, 2)).astype(np.float32)
    W = rng.standard_normal((8, 2)).astype(np.float32)
    ref = delta.astype(np.float64).sum(axis=0)
    outs = []
    for _ in range(2):
        dW, db = np.empty((8, 2), np.float32), np.full(8, np.nan, np.float32)
        NumpyBackend().dense_backward(delta, A_prev, W, dW, db)
        outs.append(db)
    assert rel_err(outs[0], ref) < 2e-6
    assert rel_err(np.sum(delta, axis=0), ref) > 5e-6        # what numpy alone gives (the reason for blocks)
    assert outs[0].tobytes() == outs[1].tobytes()
