"""The gemm_f32 kernels at 4096^3, a few launches each, for Nsight Compute (needs a GPU).

    ncu --kernel-name regex:gemm_f32 ... python3 benchmarks/gemm_f32_profile.py [--reps 2]

Runs the forward (relu), the input gradient (relu from A) and the weight gradient (one split:
4096 x 4096 fills the GPU) of gemm_f32 after one warm-up call each (the warm-up compiles and
is profiled too unless ncu is given --launch-skip).  Random normal operands.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import cupy  # noqa: E402
import numpy as np  # noqa: E402

from gpubp.activations import ACT_CODES  # noqa: E402
from gpubp.backends import cuda_gemm_f32 as g3  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args(argv)
    n = args.n
    rs = cupy.random.RandomState(1)
    A = rs.standard_normal((n, n), dtype=np.float32)
    W = rs.standard_normal((n, n), dtype=np.float32)
    b = rs.standard_normal((n,), dtype=np.float32)
    D = rs.standard_normal((n, n), dtype=np.float32)
    out, dW, db = cupy.empty((n, n), np.float32), cupy.empty((n, n), np.float32), cupy.empty(n, np.float32)
    relu = ACT_CODES["relu"]
    for _ in range(1 + args.reps):
        g3.gemm_fwd(A, W, b, relu, out)
        g3.gemm_bwd_data(D, W, A, None, relu, out)
        g3.gemm_bwd_weight(D, A, dW, db)
    cupy.cuda.runtime.deviceSynchronize()
    print("gemm_f32 profile run done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
