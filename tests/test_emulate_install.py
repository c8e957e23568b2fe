"""tests/support/emulate.py: the emulated `cupy` is installed once per process."""

import sys

from gpubp.backends import cuda_gemm_wgmma
from support import emulate


def test_a_second_install_keeps_the_first_fake(monkeypatch):
    """tests/mpi_scripts/dp_train.py installs the fake for each rank at import, and the pytest process
    imports it too (tests/test_distributed.py's helpers): a second fake replaced the first, whose arrays
    the GPU test modules collected before hold, and every later launch took them for host arrays
    (261 of tests/gpu/test_gemm.py's tests failed when test_distributed_gpu.py was collected with it)."""
    monkeypatch.setenv(emulate.ENV, "1")
    for name in ("cupy", "cupy.cuda", "cupy.cuda.nccl"):     # restored (or removed) after the test
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(cuda_gemm_wgmma, "_driver", cuda_gemm_wgmma._driver)
    assert emulate.install_if_requested()
    first = sys.modules["cupy"]
    assert first is not None and first.asarray([1.0]).shape == (1,)
    assert emulate.install_if_requested()
    assert sys.modules["cupy"] is first and sys.modules["cupy.cuda"] is first.cuda
    monkeypatch.setenv(emulate.ENV, "0")
    assert not emulate.install_if_requested() and sys.modules["cupy"] is first
