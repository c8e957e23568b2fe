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
