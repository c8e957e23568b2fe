"""A training step of gpubp's numpy backend against PyTorch on the CPU.

    python benchmarks/bench_numpy_vs_torch.py [--sizes 784,512,512,10] [--batch 512]
        [--steps 50] [--rounds 5] [--threads N] [--profile]

Both sides: float32, the same initial parameters and batches, hidden ReLU,
softmax cross-entropy on int labels, plain SGD (lr 0.01), the same number of
threads (numpy's BLAS through threadpoolctl, `torch.set_num_threads`).  A
step is `MLP.train_step(X, y, opt)` (which returns the loss as a float) and
`zero_grad; loss = CE(model(X), y); loss.backward(); opt.step(); loss.item()`.
The two sides are timed in alternating rounds (so that load from other
processes hits both alike), each round a warm-up then `--steps` timed steps;
the median over all timed steps is reported, and the ratio numpy / torch
(goal: at most 1.5).  `--profile` adds the time of each backend call of the
numpy step, and numpy's and PyTorch's time for the same GEMM shapes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout

GOAL = 1.5


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="784,512,512,10")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=50, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before each round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--profile", action="store_true")
    return p.parse_args(argv)


def make_sides(sizes, batch, lr, seed=0):
    import torch
    import gpubp
    from gpubp.optim import SGD

    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    topt = torch.optim.SGD(model.parameters(), lr=lr)
    lossf = torch.nn.CrossEntropyLoss()

    net = gpubp.MLP(sizes, activation="relu", loss="cross_entropy", backend="numpy", dtype="float32", seed=seed)
    net.set_params([(m.weight.detach().numpy(), m.bias.detach().numpy())
                    for m in model if isinstance(m, torch.nn.Linear)])
    gopt = SGD(lr)

    def torch_step(X, y):
        topt.zero_grad(set_to_none=True)
        loss = lossf(model(X), y)
        loss.backward()
        topt.step()
        return loss.item()

    def numpy_step(X, y):
        return net.train_step(X, y, gopt)

    return net, numpy_step, torch_step


def time_steps(step, batches, warmup, steps, pause=0.5):
    # idle BLAS/OpenMP threads of the side that ran last spin for a while before
    # they sleep, stealing cores from this side: let them settle first
    time.sleep(pause)
    for i in range(warmup):
        step(*batches[i % len(batches)])
    out = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(*batches[i % len(batches)])
        out.append(time.perf_counter() - t0)
    return out


def profile_numpy(net, batches, steps):
    """Seconds per call of each backend method during `net.train_step`, by layer shape."""
    be = net.backend
    acc = defaultdict(list)
    originals = {}
    for name in ("dense_forward", "loss_and_delta", "dense_backward", "sgd_update", "adam_update"):
        fn = getattr(be, name)
        originals[name] = fn

        def wrapped(*a, _fn=fn, _name=name, **k):
            shape = "x".join(str(s) for s in a[0].shape) + ("" if len(a) < 3 or a[2] is None or
                                                             not hasattr(a[2], "shape") else
                                                             " W" + "x".join(map(str, a[2].shape)))
            t0 = time.perf_counter()
            _fn(*a, **k)
            acc[(_name, shape)].append(time.perf_counter() - t0)
        setattr(be, name, wrapped)
    try:
        from gpubp.optim import SGD
        opt = SGD(0.01)
        time.sleep(0.5)
        total = []
        for i in range(steps):
            t0 = time.perf_counter()
            net.train_step(*batches[i % len(batches)], opt)
            total.append(time.perf_counter() - t0)
    finally:
        for name in originals:
            delattr(be, name)   # drop the instance attribute: the class method shows again
    return acc, float(np.median(total))


def gemm_table(sizes, batch, reps=30):
    """numpy matmul vs torch.mm on the step's GEMM shapes (float32), median ms."""
    import torch

    rng = np.random.default_rng(0)
    rows = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        A = rng.standard_normal((batch, a), dtype=np.float32)
        W = rng.standard_normal((b, a), dtype=np.float32)
        D = rng.standard_normal((batch, b), dtype=np.float32)
        cases = {f"fwd  A{batch}x{a} @ W.T ({b}x{a})": (A, W.T, np.empty((batch, b), np.float32)),
                 f"dW   D.T ({b}x{batch}) @ A{batch}x{a}": (D.T, A, np.empty((b, a), np.float32)),
                 f"dA   D{batch}x{b} @ W{b}x{a}": (D, W, np.empty((batch, a), np.float32))}
        for name, (x, y, out) in cases.items():
            tx, ty, tout = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(out)
            tn = _median_ms(lambda: np.matmul(x, y, out=out), reps)
            tt = _median_ms(lambda: torch.mm(tx, ty, out=tout), reps)
            rows.append((name, tn, tt))
    return rows


def _median_ms(fn, reps):
    time.sleep(0.3)           # let the other library's idle threads stop spinning
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main(argv=None):
    a = parse(argv)
    import torch
    from threadpoolctl import threadpool_limits

    from gpubp.bench.cost import step_flops

    sizes = [int(s) for s in a.sizes.split(",")]
    torch.set_num_threads(a.threads)
    limits = threadpool_limits(a.threads, user_api="blas")
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((a.batch, sizes[0]), dtype=np.float32),
                rng.integers(0, sizes[-1], a.batch).astype(np.int64)) for _ in range(4)]
    tbatches = [(torch.from_numpy(X), torch.from_numpy(y)) for X, y in batches]
    net, numpy_step, torch_step = make_sides(sizes, a.batch, a.lr)

    # the same step from the same start: the losses of the first steps must agree
    l_np = [numpy_step(*batches[i]) for i in range(3)]
    l_t = [torch_step(*tbatches[i]) for i in range(3)]
    agree = max(abs(x - y) / abs(y) for x, y in zip(l_np, l_t))

    tn, tt = [], []
    for r in range(a.rounds):
        tn += time_steps(numpy_step, batches, a.warmup, a.steps)
        tt += time_steps(torch_step, tbatches, a.warmup, a.steps)
    mn, mt = np.median(tn) * 1e3, np.median(tt) * 1e3
    # the GEMMs both sides run: no dLoss/dX (the input needs no gradient), as `gpubp bench` counts
    flops = step_flops(sizes, a.batch)
    print(f"train step {sizes}, batch {a.batch}, float32, SGD lr {a.lr}, cross-entropy; "
          f"{a.threads} threads each (numpy BLAS: {limits.get_original_num_threads().get('blas')} "
          f"-> {a.threads}; torch {torch.get_num_threads()}); {a.rounds} rounds x {a.steps} steps")
    print(f"numpy {np.__version__}, torch {torch.__version__}; first-3-step loss agreement {agree:.1e}")
    print(f"  gpubp numpy backend : {mn:8.3f} ms/step (p25 {np.percentile(tn, 25) * 1e3:.3f}, "
          f"min {min(tn) * 1e3:.3f})  {flops / (mn / 1e3) / 1e9:6.1f} GFLOP/s")
    print(f"  PyTorch CPU         : {mt:8.3f} ms/step (p25 {np.percentile(tt, 25) * 1e3:.3f}, "
          f"min {min(tt) * 1e3:.3f})  {flops / (mt / 1e3) / 1e9:6.1f} GFLOP/s")
    ratio = mn / mt
    print(f"  ratio numpy / torch : {ratio:.2f}  (goal <= {GOAL}: {'PASS' if ratio <= GOAL else 'MISS'})")

    if a.profile:
        acc, total = profile_numpy(net, batches, a.steps)
        print(f"\nnumpy step by backend call (median ms per call; step median {total * 1e3:.3f} ms):")
        for (name, shape), ts in acc.items():
            print(f"  {name:15s} {shape:28s} {np.median(ts) * 1e3:8.3f}")
        print(f"  {'sum of calls':44s} {sum(np.median(ts) for ts in acc.values()) * 1e3:8.3f}")
        print("\nGEMMs of the step, median ms: numpy matmul vs torch.mm")
        for name, x, y in gemm_table(sizes, a.batch):
            print(f"  {name:40s} numpy {x:7.3f}  torch {y:7.3f}  ratio {x / y:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
