"""Timings of the fused-MLP kernel family against the GPU-verified fused kernels and PyTorch.

    python3 benchmarks/fused_family_bench.py --out DIR [--batch 262144] [--reps 20]

Networks: w64x8 (eight 64 -> 64 layers) and w128x8 (eight 128 -> 128 layers) at batch 2^18
(`--batch`), and w64x5-2^20 (64 inputs, five hidden layers of 64, 64 outputs: six layers) at
batch 2^20 (reported in samples per second too); relu hidden layers, an identity last layer.  One timed "step" is the run's
forward and backward (dLoss/dZ of the last layer given; dW and db of every layer; no dLoss/dX,
no loss, no optimizer), the same work for every entry:
    family-{float32,tf32,bf16}   cuda_fused_family.fused_forward + fused_backward
    fused-{float32,tf32}         cuda_fused (the default path's kernels)
    torch-eager, torch-eager-tf32, torch-autocast-bf16   nn.Sequential forward + backward(delta)
The runs are those of `gpubp bench`'s fused-run rows (`gpubp.bench.fused_runs`; each gpubp run
keeps its tables and workspaces in a Scratch between calls, as a step plan does).
CUDA events around each repetition after 3 warm-ups, median of `reps`.  Writes
fused_family_bench.json and fused_family_bench.md into DIR, with TFLOP/s (`gpubp.bench.cost.step_flops`:
2 B (3 sum n_in n_out - n_0 n_1), no dLoss/dX) and each entry's ratio to the torch entry of its precision.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))   # this checkout's gpubp

import cupy

from gpubp.backends import cuda_device, cuda_fused
from gpubp.backends import cuda_fused_family as ff
from gpubp.bench import fused_runs, timing
from gpubp.bench.cost import step_flops

#: name -> (widths, batch or None for --batch)
NETS = {"w64x8": ([64] * 9, None), "w128x8": ([128] * 9, None), "w64x5-2^20": ([64] * 7, 1 << 20)}
TORCH_PEER = {"float32": "torch-eager", "tf32": "torch-eager-tf32", "bf16": "torch-autocast-bf16"}


def _torch_run(peer, widths, batch):
    import torch
    tf32 = peer == "torch-eager-tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return fused_runs.torch_run(peer, widths, batch)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=1 << 18)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cuda_device.load_kernels({ff.SPECS[0]: ff.SPECS[0].name_expressions,
                              cuda_fused.SPECS[0]: cuda_fused.SPECS[0].name_expressions})
    rows = []
    for net, (widths, batch) in NETS.items():
        batch = batch or args.batch
        flops = step_flops(widths, batch)      # forward, dW and delta @ W of every layer but the first
        entries = [(f"family-{p}", p, lambda p=p: fused_runs.gpubp_run(f"family-{p}", widths, batch))
                   for p in ff.PRECISIONS]
        entries += [(f"fused-{p}", p, lambda p=p: fused_runs.gpubp_run(f"fused-{p}", widths, batch))
                    for p in ("float32", "tf32")]
        try:
            import torch  # noqa: F401
            entries += [(TORCH_PEER[p], p, lambda p=p: _torch_run(TORCH_PEER[p], widths, batch)) for p in TORCH_PEER]
        except ImportError:
            pass
        for name, prec, make in entries:
            try:
                step = make()
                clock = timing.TorchClock() if name.startswith("torch") else timing.CupyClock()
                ms = timing.event_median_ms(lambda i: step(), args.reps, clock)
                rows.append(dict(net=net, entry=name, precision=prec, batch=batch, ms=ms,
                                 tflops=flops / ms / 1e9, samples_per_s=batch / ms * 1e3))
            except Exception as e:   # record and go on: one failing entry must not hide the others
                rows.append(dict(net=net, entry=name, precision=prec, batch=batch, error=f"{type(e).__name__}: {e}"))
            cupy.get_default_memory_pool().free_all_blocks()
            print(rows[-1], flush=True)
    by = {(r["net"], r["entry"]): r.get("ms") for r in rows}
    for r in rows:
        peer = by.get((r["net"], TORCH_PEER[r["precision"]]))
        if r.get("ms") and peer:
            r["x_torch_peer"] = peer / r["ms"]
        old = by.get((r["net"], f"fused-{r['precision']}"))
        if r.get("ms") and old and r["entry"].startswith("family"):
            r["x_fused"] = old / r["ms"]
    with open(os.path.join(args.out, "fused_family_bench.json"), "w") as f:
        json.dump(dict(device=cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), rows=rows), f, indent=1)
    lines = ["| net | entry | ms | TFLOP/s | samples/s | x torch peer | x cuda_fused |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['net']} | {r['entry']} | error: {r['error'][:80]} | | | | |")
        else:
            lines.append(f"| {r['net']} | {r['entry']} | {r['ms']:.3f} | {r['tflops']:.1f} | {r['samples_per_s']:.3g} | "
                         f"{r.get('x_torch_peer', float('nan')):.2f} | {r.get('x_fused', float('nan')):.2f} |")
    with open(os.path.join(args.out, "fused_family_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
