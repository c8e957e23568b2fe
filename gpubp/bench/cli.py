"""`gpubp bench`: gpubp's training step and fused kernels against their peers.

    gpubp bench [--out DIR] [--quick | --tiny] [--cpu-only] [--optimizer adam|sgd] [--only TEXT]

Writes DIR/bench.json (every figure, with device, driver and library
versions), DIR/bench.md (tables and the goals, PASS/MISS with the margin) and
DIR/bench.png (speed-up over PyTorch eager against batch size, one line per
network).  Every step is: hidden ReLU layers, identity output, softmax
cross-entropy on int labels, then Adam (default) or plain SGD over every
parameter.

Peers on a CUDA GPU, in the same run (`gpubp.bench.peers`): gpubp's fused
CUDA backend (`MLP._step`, and the CUDA graph of `MLP.capture_train_step`, in
float32 and with precision='tf32'), an unfused CuPy baseline of the same math
(cuBLAS GEMMs through `cupy.matmul`, one elementwise kernel per operation and
one optimizer kernel per tensor), PyTorch eager in float32 with TF32 off and
on, and `torch.compile` (full mode, the goals' step shapes, last, in the time
left).  On the CPU: gpubp's numpy backend, PyTorch CPU and scikit-learn's
MLPClassifier (one `partial_fit` of one batch per step), for small shapes.
The fused GEMM launchers (`gpubp.backends.cuda_gemm`) are also timed alone
against their unfused pairs.  Ceilings measured in the same run: a large
device-to-device copy (bytes read + written per second) and SGEMM at 4096^3
through `cupy.matmul` (float32; TF32 only if CUPY_TF32=1 is set).  The goals
(`gpubp.bench.goals.GOALS`) are judged from these rows.

Timing (`gpubp.bench.timing`): warm-up, then repetitions marked by CUDA events
(host clock on the CPU) with no host sync inside a chunk of repetitions,
median of at most `reps` repetitions or a per-row time budget; inputs are
random (never zeros) and rotate among several sets so that repeated runs do
not measure L2.  The suite has an overall time budget: rows past it are
recorded as skipped, and a failing peer records its error in its row without
stopping the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .environment import blas_threads, cuda_status, free_device_memory, gpu_meta, torch_cuda, versions
from .goals import check_goals
from .peers import GPU_PEERS
from .report import jsonable, summary_table, write_markdown, write_plot
from .rows import (Suite, add_ratios, cpu_step_rows, gpu_step_rows, kernel_rows, measure_ceilings_cpu,
                   measure_ceilings_gpu)
from .shapes import MODES, cpu_step_shapes, goal_step_shapes, gpu_step_shapes, kernel_shapes, net_name


def guarded(suite, rows_fn, *args):
    """Run `rows_fn(suite, *args)`; an exception outside its rows becomes an error row."""
    try:
        rows_fn(suite, *args)
    except Exception as e:
        suite.rows.append(dict(kind="shape", device="?", peer="-", what=f"{rows_fn.__name__}{args[:2]}",
                               error=f"{type(e).__name__}: {e}"[:500]))
        print(f"  {rows_fn.__name__}{args[:2]}: {type(e).__name__}: {e}", flush=True)
        free_device_memory()


def picked(only, sizes) -> bool:
    """Whether `--only TEXT` keeps the step rows of network `sizes`."""
    return only is None or only in net_name(sizes)


def parse_args(argv):
    from gpubp.cli import _positive_float as positive_float
    from gpubp.cli import _positive_int as positive_int
    from gpubp.cli import output_dir_problem

    p = argparse.ArgumentParser(prog="gpubp bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-results", help="folder for bench.json, bench.md, bench.png")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", dest="mode", const="quick",
                   help="fewer shapes and repetitions, no torch.compile (about 3-4 minutes on a GPU)")
    g.add_argument("--tiny", action="store_const", dest="mode", const="tiny",
                   help="a few tiny CPU shapes (seconds; for tests)")
    p.set_defaults(mode="full")
    p.add_argument("--cpu-only", action="store_true", help="skip the GPU rows even when CUDA is there")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (default 1e-3 Adam, 1e-2 SGD)")
    p.add_argument("--row-seconds", type=positive_float, default=None, help="timed seconds per row")
    p.add_argument("--reps", type=positive_int, default=None, help="most repetitions per row")
    p.add_argument("--suite-seconds", type=positive_float, default=None, help="overall time budget")
    p.add_argument("--only", default=None, metavar="TEXT",
                   help="only the step rows whose network name contains TEXT (e.g. 'narrow w64'); "
                        "kernel rows only when TEXT is 'kernel'")
    a = p.parse_args(argv)
    why = output_dir_problem(a.out)        # before any measuring, so no result is lost to a bad path
    if why is not None:
        p.error(f"--out {a.out!r}: {why}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = dict(MODES[a.mode], mode=a.mode, optimizer=a.optimizer,
               lr=a.lr if a.lr is not None else (1e-3 if a.optimizer == "adam" else 1e-2),
               compile=a.mode == "full" and not a.no_compile)
    for k, v in (("row_s", a.row_seconds), ("reps", a.reps), ("suite_s", a.suite_seconds)):
        if v is not None:
            cfg[k] = v
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    suite = Suite(cfg)
    has_gpu, why = (False, "--cpu-only") if a.cpu_only else cuda_status()
    if a.mode == "tiny" and not a.cpu_only:
        has_gpu, why = False, "--tiny runs the CPU rows only"
    try:
        import torch
        has_torch = True
        if blas_threads():
            torch.set_num_threads(blas_threads())   # numpy's BLAS and torch: equal threads
        torch_threads = torch.get_num_threads()
    except Exception:
        has_torch, torch_threads = False, None
    meta = dict(versions=versions(), torch_threads=torch_threads, argv=list(argv or []), notes=[])
    print(f"gpubp bench ({a.mode}, {cfg['optimizer']}), results to {out}/", flush=True)
    if has_gpu:
        meta["gpu"] = gpu_meta()
        suite.l2_bytes = meta["gpu"]["l2_bytes"]
        print(f"GPU: {meta['gpu']['name']}", flush=True)
    else:
        meta["no_gpu_reason"] = why
        print(f"No CUDA GPU ({why}): the GPU rows need CUDA; measuring the CPU rows only.", flush=True)

    if has_gpu:
        suite.ceilings["cuda"] = measure_ceilings_gpu(suite)
        has_torch_cuda = has_torch and torch_cuda()
        if not has_torch_cuda:
            meta["notes"].append("PyTorch with CUDA is not importable here: no PyTorch GPU rows.")
        kshapes = kernel_shapes(a.mode) if a.only in (None, "kernel") else []
        if kshapes:
            guarded(suite, kernel_rows, *kshapes[0])      # the forward-GEMM goal first
        peers = [p for p in GPU_PEERS if has_torch_cuda or not p.startswith("torch")]
        for sizes, b in gpu_step_shapes(a.mode):
            if picked(a.only, sizes):
                guarded(suite, gpu_step_rows, sizes, b, peers)
        for s in kshapes[1:]:
            guarded(suite, kernel_rows, *s)
        if cfg["compile"] and has_torch_cuda:        # last: compiling takes long, and only left-over time
            for sizes, b in goal_step_shapes():
                if picked(a.only, sizes):
                    guarded(suite, gpu_step_rows, sizes, b, ["torch-compile"])
    if not a.no_cpu:
        suite.ceilings["cpu"] = measure_ceilings_cpu(suite)
        for sizes, b in cpu_step_shapes(a.mode, has_gpu):
            if picked(a.only, sizes):
                guarded(suite, cpu_step_rows, sizes, b, has_torch)

    add_ratios(suite.rows)
    res = dict(meta=meta, config=cfg, ceilings=suite.ceilings, rows=suite.rows,
               goals=check_goals(suite.rows, suite.ceilings.get("cuda", {})) if has_gpu else [],
               wall_s=time.perf_counter() - suite.t0)
    (out / "bench.json").write_text(json.dumps(res, indent=1, default=jsonable))
    write_markdown(res, out / "bench.md")
    try:
        write_plot(res, out / "bench.png")
    except Exception as e:  # the numbers matter more than the picture
        print(f"plot failed: {type(e).__name__}: {e}", file=sys.stderr)
    print()
    print("\n".join(summary_table(suite.rows)))
    print()
    for g in res["goals"]:
        print(f"{g['result']:12s} {g['goal']}: {g.get('measured', '')} {g.get('margin', '')}")
    if not has_gpu:
        print("GPU rows need CUDA: none were measured.")
    n_err = sum("error" in r for r in suite.rows)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} "
          f"({len(suite.rows)} rows, {n_err} errors, {res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
