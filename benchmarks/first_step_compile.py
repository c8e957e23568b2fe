"""How long the first CUDA step of a network spends compiling kernels, measured with NVRTC (no GPU).

    python benchmarks/first_step_compile.py [--arch sm_90] [--sms 132] [--all]

Lists the kernels the CUDA backend's `prepare` compiles before the first step of the
`gpubp train` default network ([64, 128, 10], relu, cross-entropy, float32, batch 32, and
its evaluation batch of 1437 rows), compiles exactly those with NVRTC the way CuPy does
(one program per kernel module), and prints the count and the wall time.  With `--all`
it also compiles every instantiation of those modules, which is what the first step
compiled before kernels were compiled per network.  The device is described by `--arch`
and `--sms` (an H100: sm_90, 132 SMs), since there may be no GPU here.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpubp import compile_check as cc
from gpubp.activations import ACT_CODES
from gpubp.backends import cuda_device, cuda_elementwise, cuda_gemm
from gpubp.backends.cuda_source import ModuleSpec


def network_kernels(sizes, activations, loss, batches, dtype=np.float32) -> dict:
    """{spec: names} a network's steps and evaluations launch (per-layer GEMM path)."""
    wanted = {cuda_gemm.SPECS[0]: set(), cuda_elementwise.SPECS[0]: set()}
    for B in batches:
        for l in range(1, len(sizes)):
            prev = ACT_CODES[activations[l - 2]] if l > 1 else None
            wanted[cuda_gemm.SPECS[0]] |= cuda_gemm.kernel_names(dtype, B, sizes[l], sizes[l - 1],
                                                                  ACT_CODES[activations[l - 1]], prev)
    wanted[cuda_elementwise.SPECS[0]] |= cuda_elementwise.kernel_names(dtype, loss, ACT_CODES[activations[-1]],
                                                                       sizes[-1])
    return wanted


def timed_compile(wanted, arch) -> tuple[int, float, list]:
    t = time.perf_counter()
    rows = []
    for spec, names in wanted.items():
        rows += cc.compile_spec(ModuleSpec(spec.name, spec.files, tuple(sorted(names))), arch)
    return sum(len(n) for n in wanted.values()), time.perf_counter() - t, [r for r in rows if r["error"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--sms", type=int, default=132, help="the device's SM count (tile and split choices)")
    ap.add_argument("--all", action="store_true", help="also compile every instantiation of the modules")
    a = ap.parse_args(argv)
    cc_num = int(a.arch.split("_")[1])
    # describe the device to the launchers' tile choices without one
    cuda_device.sm_count = cuda_gemm.sm_count = lambda: a.sms
    cuda_device.compute_capability = cuda_gemm.compute_capability = lambda: cc_num
    wanted = network_kernels([64, 128, 10], ("relu", "identity"), "cross_entropy", batches=(32, 1437))
    for spec, names in wanted.items():
        print(f"{spec.name}: {', '.join(sorted(names))}")
    n, dt, errors = timed_compile(wanted, a.arch)
    print(f"first step of the gpubp train network: {n} kernels for {a.arch} in {dt:.1f} s"
          + (f"; {len(errors)} errors" if errors else ""))
    if a.all:
        full = {spec: set(spec.name_expressions) for spec in wanted}
        n, dt, errors = timed_compile(full, a.arch)
        print(f"every instantiation of those modules: {n} kernels for {a.arch} in {dt:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
