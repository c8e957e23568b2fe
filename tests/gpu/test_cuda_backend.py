"""Every CudaBackend method against the NumpyBackend reference (skipped without CUDA).

Relative error ||out - ref|| / ||ref|| below 1e-5 in float32 and 1e-12 in
float64, on fresh random inputs of awkward sizes; outputs are poisoned with NaN
before each call so that an unwritten element fails; the loss and the layer
backward are bitwise reproducible; a whole training step can be captured in a
CUDA graph (so no method synchronises or allocates once warm).
"""

import zlib

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
try:
    _N_DEV = cupy.cuda.runtime.getDeviceCount()
except Exception:  # no driver / no device
    _N_DEV = 0

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_N_DEV == 0, reason="needs a CUDA device")]

from gpubp.activations import ACTIVATIONS, NEEDS_Z  # noqa: E402
from gpubp.backends.numpy_backend import NumpyBackend, activation_forward  # noqa: E402
from gpubp.backends.plan import Scratch  # noqa: E402
from gpubp.losses import FUSED_OUTPUT, LOSSES  # noqa: E402

DTYPES = (np.float32, np.float64)
TOL = {np.float32: 1e-5, np.float64: 1e-12}
SIZES = (1, 3, 17, 127, 129, 1000, 4097)
#: (B, n) of the loss tests: every size as B and as n, both cross-entropy paths (n <= 1024, n > 1024)
LOSS_SHAPES = ((1, 1), (1, 4097), (3, 17), (17, 3), (127, 129), (129, 1000), (1000, 127),
               (4097, 17), (17, 4097), (1000, 1000))
#: (B, n_in, n_out) of the layer tests
LAYER_SHAPES = ((1, 1, 1), (3, 17, 129), (127, 1000, 3), (129, 3, 127), (1000, 129, 17),
                (4097, 17, 1000), (17, 4097, 1))
#: flat buffer lengths of the optimizer tests (a multiple of 32 as in ParamLayout, and awkward ones)
FLAT_SIZES = SIZES + (32 * 1000,)

NP = NumpyBackend()


@pytest.fixture(scope="module")
def cu():
    from gpubp.backends.cuda_backend import CudaBackend
    return CudaBackend()


def rel_err(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def poisoned(shape, dtype):
    return cupy.full(shape, np.nan, dtype=dtype)


def dev(a):
    return cupy.asarray(a)


def close(out, ref, dtype, what):
    out = cupy.asnumpy(out) if isinstance(out, cupy.ndarray) else out
    assert np.all(np.isfinite(out)) or not np.all(np.isfinite(ref)), f"{what}: unwritten (NaN) elements"
    e = rel_err(out, ref)
    assert e < TOL[dtype], f"{what}: relative error {e:.3g}"


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_forward(cu, shape, act, dtype):
    B, n_in, n_out = shape
    r = rng_for("fwd", shape, act, dtype)
    A_prev = r.standard_normal((B, n_in)).astype(dtype)
    W = (r.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
    b = r.standard_normal(n_out).astype(dtype)
    need_z = act in NEEDS_Z
    A_ref = np.empty((B, n_out), dtype)
    Z_ref = np.empty((B, n_out), dtype) if need_z else None
    NP.dense_forward(A_prev, W, b, act, A_ref, Z_ref)
    A_out = poisoned((B, n_out), dtype)
    Z_out = poisoned((B, n_out), dtype) if need_z else None
    cu.dense_forward(dev(A_prev), dev(W), dev(b), act, A_out, Z_out)
    close(A_out, A_ref, dtype, "A")
    if need_z:
        close(Z_out, Z_ref, dtype, "Z")


# ------------------------------------------------------------------ loss
def _loss_cases():
    out = []
    for loss in LOSSES:
        if loss == "cross_entropy":
            out += [(loss, "identity", "labels"), (loss, "identity", "probs")]
        elif loss in FUSED_OUTPUT:
            out.append((loss, "identity", None))
        else:
            out += [(loss, act, None) for act in ACTIVATIONS]
    return out


def _loss_inputs(loss, act, target_kind, B, n, dtype):
    r = rng_for("loss", loss, act, target_kind, B, n, dtype)
    Z = (3 * r.standard_normal((B, n))).astype(dtype)
    A = activation_forward(act, Z, np.empty_like(Z))
    if target_kind == "labels":
        Y = r.integers(0, n, B).astype(np.int32)
    elif target_kind == "probs":
        p = r.random((B, n)) + 0.1
        Y = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    elif loss == "binary_cross_entropy":
        Y = r.random((B, n)).astype(dtype)
    elif loss == "poisson":      # counts, zeros among them
        Y = r.poisson(2.0, (B, n)).astype(dtype)
    else:
        Y = r.standard_normal((B, n)).astype(dtype)
    return A, (Z if act in NEEDS_Z else None), Y


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", _loss_cases(), ids=lambda c: "-".join(x for x in c if x))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_loss_and_delta(cu, shape, case, dtype):
    loss, act, target_kind = case
    B, n = shape
    A, Z, Y = _loss_inputs(loss, act, target_kind, B, n, dtype)
    loss_ref, delta_ref = np.empty(1, dtype), np.empty((B, n), dtype)
    NP.loss_and_delta(A, Z, Y, loss, act, loss_ref, delta_ref)

    dA, dZ, dY = dev(A), (dev(Z) if Z is not None else None), dev(Y)
    loss_out, delta_out = poisoned((1,), dtype), poisoned((B, n), dtype)
    cu.loss_and_delta(dA, dZ, dY, loss, act, loss_out, delta_out)
    close(loss_out, loss_ref, dtype, "loss")
    close(delta_out, delta_ref, dtype, "delta")

    # value only: nothing else is written (the kernels get A_L in place of the missing delta)
    loss_only = poisoned((1,), dtype)
    cu.loss_and_delta(dA, dZ, dY, loss, act, loss_only, None)
    close(loss_only, loss_ref, dtype, "loss (no delta)")
    assert cupy.asnumpy(dA).tobytes() == A.tobytes()
    assert cupy.asnumpy(dY).tobytes() == Y.tobytes()


@pytest.mark.parametrize("case", _loss_cases(), ids=lambda c: "-".join(x for x in c if x))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_loss_and_delta_is_bitwise_reproducible(cu, case, dtype):
    loss, act, target_kind = case
    for B, n in ((4097, 17), (129, 4097), (300000, 3)):
        A, Z, Y = _loss_inputs(loss, act, target_kind, B, n, dtype)
        args = (dev(A), dev(Z) if Z is not None else None, dev(Y), loss, act)
        outs = []
        for _ in range(2):
            lo, de = poisoned((1,), dtype), poisoned((B, n), dtype)
            cu.loss_and_delta(*args, lo, de)
            outs.append((cupy.asnumpy(lo), cupy.asnumpy(de)))
        assert outs[0][0].tobytes() == outs[1][0].tobytes(), "loss value differs between runs"
        assert outs[0][1].tobytes() == outs[1][1].tobytes(), "delta differs between runs"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_cross_entropy_is_stable_for_huge_logits(cu, dtype):
    B, n = 5, 2000
    Z = np.zeros((B, n), dtype)
    Z[:, 7] = 1e4 if dtype == np.float32 else 1e300
    Y = np.full(B, 7, np.int32)
    lo, de = poisoned((1,), dtype), poisoned((B, n), dtype)
    cu.loss_and_delta(dev(Z), None, dev(Y), "cross_entropy", "identity", lo, de)
    assert float(lo[0]) == 0.0
    assert bool(cupy.isfinite(de).all()) and float(abs(de).max()) == 0.0


# ------------------------------------------------------------------ backward
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("prev_act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_backward(cu, shape, prev_act, dtype):
    B, n_in, n_out = shape
    r = rng_for("bwd", shape, prev_act, dtype)
    delta = r.standard_normal((B, n_out)).astype(dtype)
    Z_prev = r.standard_normal((B, n_in)).astype(dtype)
    A_prev = activation_forward(prev_act, Z_prev, np.empty_like(Z_prev))
    W = r.standard_normal((n_out, n_in)).astype(dtype)
    z_arg = Z_prev if prev_act in NEEDS_Z else None
    dW_ref, db_ref, dp_ref = (np.empty((n_out, n_in), dtype), np.empty(n_out, dtype),
                              np.empty((B, n_in), dtype))
    NP.dense_backward(delta, A_prev, W, dW_ref, db_ref, dp_ref, prev_act, z_arg)

    d_delta, d_A, d_W = dev(delta), dev(A_prev), dev(W)
    d_z = dev(z_arg) if z_arg is not None else None
    dW, db, dp = poisoned((n_out, n_in), dtype), poisoned(n_out, dtype), poisoned((B, n_in), dtype)
    cu.dense_backward(d_delta, d_A, d_W, dW, db, dp, prev_act, d_z)
    close(dW, dW_ref, dtype, "dW")
    close(db, db_ref, dtype, "db")
    close(dp, dp_ref, dtype, "delta_prev")

    # the first layer: no delta_prev
    dW2, db2 = poisoned((n_out, n_in), dtype), poisoned(n_out, dtype)
    cu.dense_backward(d_delta, d_A, d_W, dW2, db2)
    close(dW2, dW_ref, dtype, "dW (first layer)")
    close(db2, db_ref, dtype, "db (first layer)")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dense_backward_is_bitwise_reproducible(cu, dtype):
    for B, n_in, n_out in ((4097, 17, 1000), (100000, 64, 10), (1000, 129, 127)):
        r = rng_for("bwd-repro", B, n_in, n_out, dtype)
        delta = dev(r.standard_normal((B, n_out)).astype(dtype))
        Z_prev = dev(r.standard_normal((B, n_in)).astype(dtype))
        A_prev = dev(np.tanh(cupy.asnumpy(Z_prev)))
        W = dev(r.standard_normal((n_out, n_in)).astype(dtype))
        outs = []
        for _ in range(2):
            dW, db, dp = poisoned((n_out, n_in), dtype), poisoned(n_out, dtype), poisoned((B, n_in), dtype)
            cu.dense_backward(delta, A_prev, W, dW, db, dp, "tanh", None)
            outs.append([cupy.asnumpy(x).tobytes() for x in (dW, db, dp)])
        assert outs[0] == outs[1], f"dense_backward differs between runs at {(B, n_in, n_out)}"


# ------------------------------------------------------------------ updates
SGD_CASES = {"plain": (0.0, 0.0, False), "momentum": (0.9, 0.0, False), "weight_decay": (0.0, 0.01, False),
             "momentum+wd": (0.9, 0.01, False), "nesterov": (0.9, 0.0, True), "nesterov+wd": (0.5, 0.01, True)}
ADAM_CASES = {"adam": (0.0, False, 0.9), "adam+l2": (0.01, False, 0.9), "adamw": (0.01, True, 0.9),
              "adamw-no-wd": (0.0, True, 0.9), "adam-beta1-0": (0.0, False, 0.0),
              "adam-beta1-0.5": (0.0, False, 0.5)}


def _flat(r, n, dtype, offset):
    """A device view of length n starting `offset` elements into its allocation (misaligned if odd)."""
    base = dev(r.standard_normal(n + offset).astype(dtype))
    return base[offset:]


@pytest.mark.parametrize("offset", (0, 1), ids=("aligned", "misaligned"))
@pytest.mark.parametrize("n", FLAT_SIZES)
@pytest.mark.parametrize("case", list(SGD_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sgd_update(cu, case, n, offset, dtype):
    momentum, wd, nesterov = SGD_CASES[case]
    r = rng_for("sgd", case, n, offset, dtype)
    p = _flat(r, n, dtype, offset)
    vel = _flat(r, n, dtype, offset)
    vel[...] = 0
    p_ref, vel_ref = cupy.asnumpy(p), cupy.asnumpy(vel)
    for step in range(5):
        g_ref = r.standard_normal(n).astype(dtype)
        g = _flat(r, n, dtype, offset)
        g[...] = dev(g_ref)
        NP.sgd_update(p_ref, g_ref, vel_ref if momentum else None, 0.05, momentum, wd, nesterov)
        cu.sgd_update(p, g, vel if momentum else None, 0.05, momentum, wd, nesterov)
    close(p, p_ref, dtype, "params")
    if momentum:
        close(vel, vel_ref, dtype, "velocity")


@pytest.mark.parametrize("offset", (0, 1), ids=("aligned", "misaligned"))
@pytest.mark.parametrize("n", FLAT_SIZES)
@pytest.mark.parametrize("case", list(ADAM_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_adam_update(cu, case, n, offset, dtype):
    wd, decoupled, beta1 = ADAM_CASES[case]
    r = rng_for("adam", case, n, offset, dtype)
    p = _flat(r, n, dtype, offset)
    m, v = _flat(r, n, dtype, offset), _flat(r, n, dtype, offset)
    m[...] = 0
    v[...] = 0
    p_ref, m_ref, v_ref = cupy.asnumpy(p), cupy.asnumpy(m), cupy.asnumpy(v)
    for step in range(1, 6):
        # at beta1 <= 0.5, gradients shrinking 1000-fold a step: m + (g - m) would keep an error of an
        # ulp of the previous m, 1e-4 relative in float32; PyTorch's lerp form g - (g - m) b1 has none
        scale = 1.0 if beta1 > 0.5 else 10.0 ** (-3 * step)
        g_ref = (r.standard_normal(n) * scale).astype(dtype)
        g = _flat(r, n, dtype, offset)
        g[...] = dev(g_ref)
        NP.adam_update(p_ref, g_ref, m_ref, v_ref, 3e-3, beta1, 0.999, 1e-8, wd,
                       np.array([step], np.int32), decoupled)
        cu.adam_update(p, g, m, v, 3e-3, beta1, 0.999, 1e-8, wd, cupy.array([step], np.int32), decoupled)
    close(p, p_ref, dtype, "params")
    close(m, m_ref, dtype, "m")
    close(v, v_ref, dtype, "v")


# ------------------------------------------------------------------ a whole step in a CUDA graph
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_a_training_step_captures_in_a_cuda_graph(cu, dtype):
    """Capture fails on any host synchronisation or fresh device allocation inside a method
    (given a warm Scratch, as `CudaBackend.capture` requires)."""
    B, n0, n1, n2 = 300, 17, 129, 10
    r = rng_for("graph", dtype)
    X = dev(r.standard_normal((B, n0)).astype(dtype))
    Y = dev(r.integers(0, n2, B).astype(np.int32))
    W1, b1 = dev(r.standard_normal((n1, n0)).astype(dtype)), cupy.zeros(n1, dtype)
    W2, b2 = dev(r.standard_normal((n2, n1)).astype(dtype)), cupy.zeros(n2, dtype)
    A1, Z1, A2 = (cupy.empty((B, n1), dtype), cupy.empty((B, n1), dtype), cupy.empty((B, n2), dtype))
    d2, d1 = cupy.empty((B, n2), dtype), cupy.empty((B, n1), dtype)
    dW1, db1, dW2, db2 = (cupy.empty_like(W1), cupy.empty_like(b1), cupy.empty_like(W2), cupy.empty_like(b2))
    flat = cupy.zeros(4096, dtype)
    gflat = dev(r.standard_normal(4096).astype(dtype))
    m, v = cupy.zeros(4096, dtype), cupy.zeros(4096, dtype)
    loss = cupy.empty(1, dtype)
    t = cupy.ones(1, np.int32)
    # the step's temporaries (loss partials, split-K workspaces) live in a Scratch the caller owns,
    # as a StepPlan's do: without one a method allocates a fresh temporary on every call, and a
    # graph must not hold memory that is freed back to the pool once the capture ends
    scratch = Scratch(cu)

    def step():
        cu.dense_forward(X, W1, b1, "gelu", A1, Z1, scratch=scratch)
        cu.dense_forward(A1, W2, b2, "identity", A2, scratch=scratch)
        cu.loss_and_delta(A2, None, Y, "cross_entropy", "identity", loss, d2, scratch=scratch)
        cu.dense_backward(d2, A1, W2, dW2, db2, d1, "gelu", Z1, scratch=scratch)
        cu.dense_backward(d1, X, W1, dW1, db1, scratch=scratch)
        cu.adam_update(flat, gflat, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.01, t, True, scratch=scratch)
        cu.sgd_update(flat, gflat, m, 1e-3, 0.9, 0.01, scratch=scratch)

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        step()                      # warm: modules compiled, scratch buffers cached
        stream.synchronize()
        loss_eager = cupy.asnumpy(loss).copy()
        stream.begin_capture()
        step()
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
    assert np.isfinite(loss_eager).all()
    assert cupy.asnumpy(loss).tobytes() == loss_eager.tobytes()


# ------------------------------------------------------------------ arrays
class _CAI:
    def __init__(self, a):
        self._a = a
        self.__cuda_array_interface__ = a.__cuda_array_interface__


class _DLPack:
    def __init__(self, a):
        self._a = a

    def __dlpack__(self, *args, **kw):
        return self._a.__dlpack__(*args, **kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_asarray_copies_host_arrays_once(cu):
    h = np.arange(12, dtype=np.float64).reshape(3, 4).T      # not C-contiguous
    d = cu.asarray(h, np.float32)
    assert isinstance(d, cupy.ndarray) and d.dtype == np.float32 and d.flags.c_contiguous
    assert np.array_equal(cu.to_numpy(d), h.astype(np.float32))
    assert np.array_equal(cu.to_numpy(cu.asarray([[1, 2], [3, 4]], np.float64)), [[1, 2], [3, 4]])


def test_asarray_takes_device_arrays_without_a_copy(cu):
    a = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    assert cu.asarray(a, np.float32) is a
    for wrapped in (_CAI(a), _DLPack(a)):
        b = cu.asarray(wrapped, np.float32)
        assert b.data.ptr == a.data.ptr and b.shape == a.shape
    t = cu.asarray(a.T, np.float32)                             # strided: one device copy
    assert t.flags.c_contiguous and bool((t == a.T).all())
    assert cu.asarray(a, np.float64).dtype == np.float64


def test_asarray_takes_torch_cuda_tensors_without_a_copy(cu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    t = torch.arange(6, dtype=torch.float32, device=f"cuda:{cupy.cuda.runtime.getDevice()}").reshape(2, 3)
    a = cu.asarray(t, np.float32)
    assert a.data.ptr == t.data_ptr()
    assert np.array_equal(cu.to_numpy(a), t.cpu().numpy())


@pytest.mark.skipif(_N_DEV < 2, reason="needs two CUDA devices")
def test_asarray_refuses_an_array_on_another_device(cu):
    with cupy.cuda.Device(1):
        a = cupy.zeros(4, cupy.float32)
    with pytest.raises(ValueError, match="on CUDA device 1 but the current device is 0"):
        cu.asarray(a, np.float32)
    with pytest.raises(ValueError, match="device 1"):
        cu.asarray(_DLPack(a), np.float32)


def test_out_of_memory_is_a_memory_error_naming_the_size(cu):
    with pytest.raises(MemoryError, match=r"\(1099511627776,\)"):
        cu.empty((2 ** 40,), np.float32)


def test_describe_and_synchronize(cu):
    text = cu.describe()
    assert "compute capability" in text and cupy.__version__ in text
    cu.synchronize()
