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
