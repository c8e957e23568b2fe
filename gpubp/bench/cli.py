"""`gpubp bench`: gpubp's training step and fused kernels against their peers.

    gpubp bench [--out DIR] [--quick | --tiny] [--cpu-only] [--optimizer adam|sgd]
                [--only TEXT] [--peers LIST] [--no-opt-in]

Writes DIR/bench.json (every figure, with device, driver and library
versions, the peers' settings and the goals), DIR/bench.md (tables and the
goals, PASS/MISS/NOT MEASURED with the margin) and DIR/bench.png (speed-up
over PyTorch eager against batch size, one line per network).  Every step is:
hidden ReLU layers, identity output, softmax cross-entropy on int labels, then
Adam (default) or plain SGD over every parameter.

Peers on a CUDA GPU, in the same run (`gpubp.bench.peers.GPU_PEER_SPECS`):
gpubp's CUDA backend (`MLP._step`) in float32 (`gpubp-cuda`, and the CUDA
graph of `MLP.capture_train_step`, `gpubp-cuda-graph`) and with
precision="tf32", "bf16" and "3xtf32" (`gpubp-cuda-tf32`, `gpubp-cuda-bf16`,
`gpubp-cuda-3xtf32`, on `CudaBackend(tensor_core_gemms=True)`, the opt-in
tensor-core GEMMs; each row records its backend options; and
`gpubp-cuda-tf32-default`, precision="tf32" on the default backend); an unfused CuPy
baseline of the same math (cuBLAS GEMMs through `cupy.matmul`, one
elementwise kernel per operation and one optimizer kernel per tensor);
PyTorch eager in float32 with TF32 off (`torch-eager`) and on
(`torch-eager-tf32`) and under `torch.autocast(bfloat16)` with float32 master
weights (`torch-autocast-bf16`); and, in full mode, last, in the time kept
for them, `torch.compile` of each (`torch-compile`, `torch-compile-tf32`,
`torch-compile-bf16`) on the wide and narrow w64 x8 goal steps (a compile
that fails is recorded as such).  On the CPU: gpubp's numpy backend, PyTorch
CPU and scikit-learn's MLPClassifier (one `partial_fit` of one batch per
step), for small shapes.

The narrow goal networks' fused runs alone (`gpubp.bench.fused_runs`:
forward and backward, no loss or update): the fused-MLP kernel family
(`cuda_fused_family`, float32 / tf32 / bf16, not on the default path) and the
default path's fused kernels against PyTorch's forward and backward at each
precision.

The GEMMs alone (`gpubp.bench.gemms`): gpubp's fused GEMM launchers (the
default float32 path; at the float32 goals' shape every float32 tile: v1,
pipelined, gemm_f32; at the tensor-core goals' shape the tensor-core GEMMs in
tf32, bf16 and 3xtf32) against cuBLAS at the same precision on the same
operands, and the float32 ones against their unfused pairs.  Ceilings
measured in the same run: a large device-to-device copy (bytes read + written
per second), cuBLAS SGEMM at 4096^3 and 8192^3 through `cupy.matmul`
(float32; TF32 only if CUPY_TF32=1 is set) and cuBLAS TF32 and BF16 GEMMs at
4096^3 and 8192^3 through `torch.matmul`.  The goals
(`gpubp.bench.goals.GOALS`) are judged from these rows; a goal whose rows
are missing is "NOT MEASURED".

Timing (`gpubp.bench.timing`): warm-up, then repetitions marked by CUDA events
(host clock on the CPU) with no host sync inside a chunk of repetitions,
median of at most `reps` repetitions or a per-row time budget; inputs are
random (never zeros) and rotate among several sets so that repeated runs do
not measure L2.  The suite has an overall time budget (`shapes.MODES`; the
rows run most wanted first: the goals' GEMMs and steps, then the rest; in each
group the rows of kernels on the default path before those of opt-in kernels):
rows past it are recorded as skipped, and a failing peer records its error in
its row without stopping the run.  An error that leaves the CUDA context
unusable (an illegal address, say) skips every later GPU row, naming the row
that caused it; a run stopped by SIGTERM or Ctrl-C writes what it measured.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from .environment import blas_threads, cuda_status, free_device_memory, gpu_meta, torch_cuda, versions
from .goals import PUBLISHED, check_goals
from .peers import COMPILE_PEERS, GPU_PEER_SPECS, GPU_PEERS
from .report import summary_table, to_json, write_markdown, write_plot, write_text_atomic
from .rows import (Suite, add_ratios, cpu_step_rows, gpu_step_rows, kernel_rows, measure_ceilings_cpu,
                   measure_ceilings_gpu, run_rows)
from .shapes import (MODES, compile_step_shapes, cpu_step_shapes, goal_kernel_rows, goal_kernel_shapes,
                     goal_step_peers, goal_step_shapes, gpu_step_shapes, kernel_precisions, kernel_shapes,
                     kernel_tiles, net_name, run_shapes)


def guarded(suite, rows_fn, *args):
    """Run `rows_fn(suite, *args)`; an exception outside its rows becomes an error row."""
    try:
        rows_fn(suite, *args)
    except Exception as e:
        suite.rows.append(dict(kind="shape", device="?", peer="-", what=f"{rows_fn.__name__}{args[:2]}",
                               error=f"{type(e).__name__}: {e}"[:500]))
        print(f"  {rows_fn.__name__}{args[:2]}: {type(e).__name__}: {e}", flush=True)
        free_device_memory()


#: the `--only` words that name a group of rows rather than part of a network's name
ONLY_GROUPS = {
    "goals": "the rows the goals judge: their GEMM shapes, and at their step shapes the peers they compare "
             "(no cupy-unfused or torch.compile rows, which no goal judges: none of the budget is kept for them)",
    "kernel": "the GEMM kernel rows only",
    "compile": "the torch.compile step rows only",
    "fused": "the fused-run rows only (narrow networks' forward and backward alone)",
}


def picked(only, what, sizes=None, batch=None, shape=None) -> bool:
    """Whether `--only ONLY` keeps a group of rows: `what` is "step" (network `sizes` at `batch`),
    "compile" (the torch.compile rows of that step), "run" (its fused run alone), "cpu" (a CPU
    step) or "kernel" (the GEMMs at `shape`, (batch, n_out, n_in)).  Without `--only` everything
    runs; a group word (`ONLY_GROUPS`) keeps its group; any other text keeps the GPU and CPU
    steps (with their torch.compile and fused-run rows) whose network name contains it."""
    if only is None:
        return True
    if only == "goals":
        if what == "kernel":
            return tuple(shape) in goal_kernel_shapes()
        return what == "step" and (list(sizes), batch) in goal_step_shapes()
    groups = {"kernel": "kernel", "compile": "compile", "fused": "run"}
    if only in groups:
        return what == groups[only]
    return what != "kernel" and only in net_name(sizes)


def network_names() -> list:
    """The names of every network some row of some mode times (GPU and CPU steps, fused runs, compile
    rows), sorted: what `--only TEXT` may name a part of."""
    shapes_ = [s for m in MODES for s, _ in gpu_step_shapes(m) + cpu_step_shapes(m, True) + cpu_step_shapes(m, False)]
    shapes_ += [s for s, _ in run_shapes() + compile_step_shapes()]
    return sorted({net_name(s) for s in shapes_})


def _peer_list(text):
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in GPU_PEER_SPECS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown peer {unknown[0] if unknown else text!r}; "
                                         f"choose from {', '.join(GPU_PEER_SPECS)}")
    return names


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
                   help="only the step rows whose network name contains TEXT (e.g. 'wide', 'narrow w64', "
                        "'out64'); or a group: " + "; ".join(f"'{k}': {v}" for k, v in ONLY_GROUPS.items()))
    p.add_argument("--no-opt-in", action="store_true",
                   help="only kernels on the default path: no opt-in peers (tensor-core GEMMs), GEMM variants "
                        "(gemm_f32, gemm_tc) or fused-family runs")
    p.add_argument("--peers", type=_peer_list, default=None, metavar="LIST",
                   help="only these GPU step peers, comma-separated (e.g. "
                        "'gpubp-cuda-bf16,torch-autocast-bf16'); default: all")
    a = p.parse_args(argv)
    if a.only is not None and a.only not in ONLY_GROUPS and not any(a.only in n for n in network_names()):
        # a typo measured nothing and wrote an empty bench.json over the last one, with exit status 0
        p.error(f"--only {a.only!r} names no group and is part of no network's name: give a group ("
                f"{', '.join(ONLY_GROUPS)}) or part of a name ({', '.join(network_names())})")
    if a.no_cpu and (a.cpu_only or a.mode == "tiny"):
        # measured nothing and wrote an empty bench.json over the last one, with exit status 0
        p.error(f"--no-cpu with {'--cpu-only' if a.cpu_only else '--tiny (which runs the CPU rows only)'} "
                "leaves nothing to measure")
    why = output_dir_problem(a.out)        # before any measuring, so no result is lost to a bad path
    if why is not None:
        p.error(f"--out {a.out!r}: {why}")
    return a


def run_gpu_rows(suite, a, cfg, has_torch_cuda, meta):
    """The GPU rows, most wanted first: the goals' GEMMs and steps, the narrow goal networks'
    fused runs alone, the other steps, the other GEMMs, and last the torch.compile rows (in
    `compile_reserve_s` of the budget kept for them, and what the others left).  Within each
    group the rows of verified kernels run before those of opt-in kernels (off every default
    path, never yet run on a GPU), so that an opt-in kernel that faults, which leaves the CUDA
    context unusable (`Suite.device_lost`), costs only the rows after it."""
    wanted = a.peers or list(GPU_PEERS) + list(COMPILE_PEERS)
    usable = [p for p in wanted if has_torch_cuda or GPU_PEER_SPECS[p].library != "torch"]
    peers = [p for p in usable if p in GPU_PEERS]
    split = {"verified": [p for p in peers if not GPU_PEER_SPECS[p].opt_in],
             "opt-in": [p for p in peers if GPU_PEER_SPECS[p].opt_in]}
    compile_peers = [p for p in usable if p in COMPILE_PEERS] if cfg["compile"] else []
    compile_shapes = [(s, b) for s, b in compile_step_shapes() if picked(a.only, "compile", s, b)]
    if compile_peers and compile_shapes:
        suite.reserve_s = min(cfg.get("compile_reserve_s", 0), 0.5 * cfg["suite_s"])
    kshapes = [k for k in kernel_shapes(a.mode) if picked(a.only, "kernel", shape=k)]
    goal_k = [k for k in kshapes if k in goal_kernel_shapes()]
    steps = [(s, b) for s, b in gpu_step_shapes(a.mode) if picked(a.only, "step", s, b)] if peers else []
    goal_s = [x for x in steps if x in goal_step_shapes()]
    runs = [(s, b) for s, b in run_shapes() if picked(a.only, "run", s, b)]

    def kernels(shapes_, part):
        for k in shapes_:
            keep = goal_kernel_rows(*k) if a.only == "goals" else None     # only the rows a goal compares
            guarded(suite, kernel_rows, *k, kernel_precisions(*k), kernel_tiles(*k), has_torch_cuda, part, keep)

    def step_rows(shapes_, part):
        for sizes, b in shapes_:
            ps = split[part]
            if a.only == "goals":               # only the peers a goal at this step compares
                need = goal_step_peers(sizes, b)
                ps = [p for p in ps if p in need]
            if ps:
                guarded(suite, gpu_step_rows, sizes, b, ps)

    parts = ("verified",) if a.no_opt_in else ("verified", "opt-in")
    if a.no_opt_in:
        meta["notes"].append("--no-opt-in: only kernels on the default path were timed (no opt-in peers, "
                             "GEMM variants or fused-family runs).")
    for part in parts:
        kernels(goal_k, part)
        step_rows(goal_s, part)
    for part in parts:
        for sizes, b in runs:
            guarded(suite, run_rows, sizes, b, has_torch_cuda, part)
    for part in parts:
        step_rows([x for x in steps if x not in goal_s], part)
    for part in parts:
        kernels([k for k in kshapes if k not in goal_k], part)
    suite.reserve_s = 0.0
    if compile_peers:
        for sizes, b in compile_shapes:
            guarded(suite, gpu_step_rows, sizes, b, compile_peers)
    elif cfg["compile"] and not has_torch_cuda:
        meta["notes"].append("torch.compile rows need PyTorch with CUDA: none were measured.")
    if suite.device_lost:
        meta["notes"].append(f"The CUDA context was lost ({suite.device_lost}); every GPU row after that one "
                             f"is skipped.")


def _stop(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


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

    # a run stopped from outside (SIGTERM from a time limit, Ctrl-C) or by an error outside the rows
    # still writes what it measured (an error: exit status 1)
    status = 0
    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        if has_gpu:
            # --only goals: no 8192^3 ceilings, which no goal and no row reads (the budget is short)
            suite.ceilings["cuda"] = measure_ceilings_gpu(suite, large=a.only != "goals")
            has_torch_cuda = has_torch and torch_cuda()
            if not has_torch_cuda:
                meta["notes"].append("PyTorch with CUDA is not importable here: no PyTorch GPU rows.")
            run_gpu_rows(suite, a, cfg, has_torch_cuda, meta)
        cpu_shapes = [(s, b) for s, b in cpu_step_shapes(a.mode, has_gpu) if picked(a.only, "cpu", s, b)]
        if not a.no_cpu and (cpu_shapes or a.only is None):
            suite.ceilings["cpu"] = measure_ceilings_cpu(suite)
            for sizes, b in cpu_shapes:
                guarded(suite, cpu_step_rows, sizes, b, has_torch)
    except KeyboardInterrupt as e:
        why = str(e) or "interrupted (Ctrl-C)"
        meta["notes"].append(f"The run was stopped early ({why}) after {time.perf_counter() - suite.t0:.0f} s: "
                             f"the rows after the last one listed were not measured.")
        print(f"stopped early: {why}; writing what was measured", flush=True)
    except Exception as e:          # outside every row (rows record their own errors): still write the rows
        status = 1
        meta["notes"].append(f"The run stopped on an error outside any row after "
                             f"{time.perf_counter() - suite.t0:.0f} s ({type(e).__name__}: {e})"[:500]
                             + ": the rows after the last one listed were not measured.")
        traceback.print_exc()
        print("stopped by an error; writing what was measured", flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    add_ratios(suite.rows)
    meta["peers"] = {n: dict(asdict(s), backend_options=s.backend_options()) for n, s in GPU_PEER_SPECS.items()}
    meta["published"] = PUBLISHED
    res = dict(meta=meta, config=cfg, ceilings=suite.ceilings, rows=suite.rows,
               goals=check_goals(suite.rows, suite.ceilings.get("cuda", {})),
               wall_s=time.perf_counter() - suite.t0)
    write_text_atomic(out / "bench.json", to_json(res))      # whole or not at all: never a truncated file
    write_markdown(res, out / "bench.md")
    written = [out / "bench.json", out / "bench.md"]
    try:
        write_plot(res, out / "bench.png")
        written.append(out / "bench.png")
    except Exception as e:  # the numbers matter more than the picture
        hint = " (the plot needs matplotlib: pip install 'gpubp[plot]')" if isinstance(e, ImportError) else ""
        stale = (out / "bench.png").exists()
        if stale:           # another run's picture beside this run's numbers would mislead
            (out / "bench.png").unlink()
        print(f"plot failed: {type(e).__name__}: {e}{hint}; no bench.png written"
              + (" (the previous run's bench.png was removed)" if stale else ""), file=sys.stderr)
    print()
    print("\n".join(summary_table(suite.rows)))
    print()
    if has_gpu:
        for g in res["goals"]:
            print(f"{g['result']:12s} {g['goal']}: {g.get('measured', '')} {g.get('margin', '')}")
    else:
        print(f"GPU rows need CUDA: none were measured ({len(res['goals'])} goals NOT MEASURED).")
    n_err = sum("error" in r for r in suite.rows)
    print(f"wrote {', '.join(map(str, written))} "
          f"({len(suite.rows)} rows, {n_err} errors, {res['wall_s']:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
