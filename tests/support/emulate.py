"""`GPUBP_EMULATE_GPU=1`: run the CUDA backend on the CPU kernel emulator.

`install_if_requested()` makes `cupy` the fake of `fake_cupy` in execute mode (every launch
computed thread by thread by `cuda_emu`; slow, and a model of the hardware, never a substitute for
it), with the fake's stand-in for the CUDA driver's TMA tensor maps.  tests/conftest.py calls it for
the test process, and the scripts the tests start under mpiexec call it for each rank.
`GPUBP_EMU_DEVICES=N` (default 1) makes the fake report N devices (CUDA_VISIBLE_DEVICES can lower
it), so that ranks each "own" one and sum through the fake's `cupy.cuda.nccl` (over MPI).
"""

from __future__ import annotations

import os
import sys

ENV = "GPUBP_EMULATE_GPU"


def requested() -> bool:
    return os.environ.get(ENV) == "1"


def install_if_requested() -> bool:
    """Install the emulated `cupy` when `GPUBP_EMULATE_GPU=1`; whether it is installed.  Once per process:
    a second call (tests/mpi_scripts/dp_train.py installs it for each rank, and the pytest process that
    imports it for tests/test_distributed.py's helpers has it from tests/conftest.py already) keeps the
    first fake, whose arrays the test modules collected before hold (a new one took them for host arrays)."""
    if not requested():
        return False
    if getattr(sys.modules.get("cupy"), "_gpubp_emulated", False):
        return True
    from gpubp.backends import cuda_gemm_wgmma

    from .fake_cupy import UNREAD_POINTERS, FakeCupy

    fake = FakeCupy(execute=True, unread_pointers=UNREAD_POINTERS, devices=int(os.environ.get("GPUBP_EMU_DEVICES", "1")))
    fake._gpubp_emulated = True
    sys.modules["cupy"] = fake
    sys.modules["cupy.cuda"] = fake.cuda            # `from cupy.cuda import nccl`
    sys.modules["cupy.cuda.nccl"] = fake.cuda.nccl
    cuda_gemm_wgmma._driver = lambda: sys.modules["cupy"].driver
    return True
