"""Data-parallel step time with and without overlapping the gradient all-reduce with the backward pass.

    python benchmarks/bench_distributed.py --ranks 2            # launches mpiexec itself
    mpiexec -n 4 python benchmarks/bench_distributed.py --worker [options]

Each rank runs training steps of its share of a global batch on the chosen
backend; three variants are timed in turn (medians over `--steps` steps, the
same steps for each): the step alone (no gradient sum: the compute floor),
the step with one all-reduce of the whole gradient after the backward pass
(`overlap=False`), and with buckets started from the backward pass as layers
finish (`overlap=True`).  It also times the bare all-reduce of the flat
gradient buffer, from which the bus bandwidth `2 (N-1)/N * bytes / time` is
printed.  Rank 0 prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=2, help="processes to launch (without --worker)")
    p.add_argument("--worker", action="store_true", help="run as one rank (under mpiexec)")
    p.add_argument("--sizes", default="512,1024,1024,1024,1024,10", help="layer sizes")
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--bucket-mib", type=float, default=1.0, help="bucket size in MiB for overlap")
    p.add_argument("--backend", default="numpy", help="numpy or cuda")
    p.add_argument("--dtype", default="float32")
    return p.parse_args(argv)


def worker(args):
    from gpubp import distributed
    from gpubp.network import MLP

    comm = distributed.init(backend=args.backend, timeout=120)
    sizes = [int(s) for s in args.sizes.split(",")]
    net = MLP(sizes, loss="cross_entropy", backend=args.backend, dtype=args.dtype, seed=0)
    be = net.backend
    rng = np.random.default_rng(0)
    X = be.asarray(rng.standard_normal((args.batch, sizes[0])), net.dtype)
    Y = be.asarray(rng.integers(0, sizes[-1], args.batch).astype(np.int32), np.int32)
    opt = net._bind(net._resolve_optimizer("sgd", 1e-4))
    loss = be.zeros((1,), net.dtype)

    def step(X, Y, dp=None):
        """One training step as `fit` runs it: forward, loss, backward (summing as layers finish), update."""
        plan = net._plan(X.shape[0])
        net._forward(X, plan)
        net._loss_delta(plan, Y, loss)
        be.network_backward(plan, net._Wb, net._dWb, None if dp is None else dp.after_layer)
        if dp is not None:
            dp.finish()
        opt.step(be, net._params, net._grads)
    comm.bucket_bytes = int(args.bucket_mib * (1 << 20))
    variants = {"compute only": None}
    for name, overlap in (("all-reduce after backward", False), ("overlapped buckets", True)):
        comm.overlap = overlap
        variants[name] = distributed.DataParallel(comm, net, opt)
        variants[name].setup(X, Y, None, 1, args.batch, False)
        variants[name].begin_epoch()
    times = {name: [] for name in variants}
    for i in range(args.steps + 2):          # the variants take turns, so drifts in load hit all alike
        for name, dp in variants.items():
            comm.wait([comm.start_allreduce(np.zeros(1))], "the barrier")   # start together
            t0 = time.perf_counter()
            if dp is None:
                a, b = distributed.share(args.batch, comm.size, comm.rank)
                step(X[a:b], Y[a:b])
            else:
                s = dp.batch(0)
                step(X[s], Y[s], dp)
            be.synchronize()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    results = {name: float(np.median(t)) for name, t in times.items()}
    results["overlapped buckets buckets"] = len(variants["overlapped buckets"].buckets.buckets)
    buf = net._grads
    nbytes = buf.size * buf.itemsize
    ar = []
    for i in range(args.steps + 3):
        comm.wait([comm.start_allreduce(np.zeros(1))], "the barrier")
        t0 = time.perf_counter()
        comm.allreduce_sum(buf)
        be.synchronize()
        if i >= 3:
            ar.append(time.perf_counter() - t0)
    t_ar = float(np.median(ar))
    if comm.is_root:
        n = comm.size
        print(f"ranks {n} ({comm.transport}), backend {be.describe()}, network {sizes} ({net.n_params} "
              f"parameters, {nbytes / 2**20:.2f} MiB of {args.dtype} gradient), global batch {args.batch}")
        print(f"all-reduce of the gradient buffer: {t_ar * 1e3:.3f} ms"
              + (f", bus bandwidth {2 * (n - 1) / n * nbytes / t_ar / 1e9:.2f} GB/s" if n > 1 else ""))
        print(f"{'variant':<28} {'step ms':>9}")
        for name in ("compute only", "all-reduce after backward", "overlapped buckets"):
            extra = f"  ({results[name + ' buckets']} buckets)" if name + " buckets" in results else ""
            print(f"{name:<28} {results[name] * 1e3:>9.3f}{extra}")
        hidden = results["all-reduce after backward"] - results["overlapped buckets"]
        print(f"overlap saves {hidden * 1e3:.3f} ms per step "
              f"({hidden / max(t_ar, 1e-12) * 100:.0f}% of the bare all-reduce time)")


def main(argv=None):
    args = parse(argv)
    if args.worker:
        worker(args)
        return 0
    from gpubp.distributed import mpiexec_command

    argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    cmd = mpiexec_command(args.ranks) + [sys.executable, os.path.abspath(__file__), "--worker", *argv]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
