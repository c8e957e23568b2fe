"""tests/gpu on a real GPU, or (GPUBP_EMULATE_GPU=1) on the CPU kernel emulator.

With GPUBP_EMULATE_GPU=1 and no CuPy device, `cupy` is the fake of tests/support/fake_cupy.py in
execute mode: every launch computes on the CPU through tests/support/cuda_emu (slow; a model of
the hardware, see its docstring).  It lets a session without a GPU run these tests before the
GPU does; it is never a substitute for them.
"""

import os
import sys

if os.environ.get("GPUBP_EMULATE_GPU") == "1":
    from support.fake_cupy import UNREAD_POINTERS, FakeCupy

    sys.modules["cupy"] = FakeCupy(execute=True, unread_pointers=UNREAD_POINTERS)

    # the Hopper kernels' TMA tensor maps: the fake's stand-in for cuda.bindings.driver (there is no
    # CUDA driver here), which writes the emulator's description of the tensor into each map
    from gpubp.backends import cuda_gemm_wgmma

    cuda_gemm_wgmma._driver = lambda: sys.modules["cupy"].driver
