"""`gpubp bench`: gpubp's training step and fused kernels against their peers.

    gpubp bench [--out DIR] [--quick | --tiny] [--cpu-only] [--optimizer adam|sgd]

Writes DIR/bench.json (every figure, with device, driver and library
versions), DIR/bench.md (tables and the goals, PASS/MISS with the margin) and
DIR/bench.png (speed-up over PyTorch eager against batch size, one line per
network).  Every step is: hidden ReLU layers, identity output, softmax
cross-entropy on int labels, then Adam (default) or plain SGD over every
parameter.

Peers on a CUDA GPU, in the same run: gpubp's fused CUDA backend (`MLP._step`,
and the CUDA graph of `MLP.capture_train_step`), an unfused CuPy baseline of
the same math (cuBLAS GEMMs through `cupy.matmul`, one elementwise kernel per
operation and one optimizer kernel per tensor), PyTorch eager in float32
with TF32 off and on, and `torch.compile` (full mode, the two goal step shapes,
last, in the time left).  A goal step counts the faster of gpubp's two paths.  On
the CPU: gpubp's numpy backend, PyTorch CPU and scikit-learn's
MLPClassifier (one `partial_fit` of one batch per step), for small shapes.
The fused GEMM launchers (`gpubp.backends.cuda_gemm`) are also timed alone
against their unfused pairs.  Ceilings measured in the same run: a large
device-to-device copy (bytes read + written per second) and SGEMM at 4096^3
through `cupy.matmul` (float32; TF32 only if CUPY_TF32=1 is set).

Timing: warm-up, then repetitions marked by CUDA events (host clock on the
CPU) with no host sync inside a chunk of repetitions, median of at most
`reps` repetitions or a per-row time budget; inputs are random (never zeros)
and rotate among several sets so that repeated runs do not measure L2.  The
suite has an overall time budget: rows past it are recorded as skipped, and
a failing peer records its error in its row without stopping the run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------- shapes and modes
WIDE = [1024, 4096, 4096, 4096, 10]
DEFAULT = [64, 128, 10]          # `gpubp train`'s network on digits-size input
ISSUE2 = [784, 512, 512, 10]
NARROW = [(64, 4), (64, 8), (128, 4), (128, 8)]


def narrow(width, hidden):
    """Input `width`, `hidden` hidden layers of `width`, 10 outputs."""
    return [width] * (hidden + 1) + [10]


def net_name(sizes) -> str:
    sizes = list(sizes)
    if sizes == WIDE:
        return "wide 1024-4096x3-10"
    if sizes == DEFAULT:
        return "default 64-128-10"
    if len(sizes) > 3 and len(set(sizes[:-1])) == 1:
        return f"narrow w{sizes[0]} x{len(sizes) - 2}"
    return "-".join(map(str, sizes))


#: per mode: timed seconds and most repetitions per row, warm-up repetitions and
#: seconds (both must be reached), suite budget (s)
MODES = {
    "tiny": dict(row_s=0.05, reps=5, warmup=1, warm_s=0.02, suite_s=120),
    "quick": dict(row_s=0.35, reps=40, warmup=3, warm_s=0.15, suite_s=200),
    "full": dict(row_s=0.75, reps=100, warmup=5, warm_s=0.25, suite_s=400),
}

#: the goals (issue 4), checked in the markdown
GOAL_FWD = dict(shape=(4096, 4096, 4096), frac=0.80)
GOAL_WIDE = dict(sizes=WIDE, batch=4096, speedup=1.0)
GOAL_NARROW = dict(sizes=narrow(64, 8), batch=2 ** 18, speedup=3.0)


def gpu_step_shapes(mode):
    if mode == "full":
        nb, wb, db = [2 ** 14, 2 ** 16, 2 ** 18, 2 ** 20], [256, 1024, 4096, 8192], [32, 256, 2048, 16384]
    else:
        nb, wb, db = [2 ** 14, 2 ** 18], [256, 4096], [32, 2048]
    shapes = [(GOAL_WIDE["sizes"], GOAL_WIDE["batch"]), (GOAL_NARROW["sizes"], GOAL_NARROW["batch"])]
    shapes += [(narrow(w, h), b) for w, h in NARROW for b in nb]
    shapes += [(WIDE, b) for b in wb] + [(DEFAULT, b) for b in db]
    out = []
    for s in shapes:                      # goal shapes first, no repeats
        if s not in out:
            out.append(s)
    return out


def cpu_step_shapes(mode, gpu):
    if mode == "tiny":
        return [(DEFAULT, 32), (DEFAULT, 256)]
    shapes = [(DEFAULT, 32), (DEFAULT, 256), (DEFAULT, 2048), (ISSUE2, 512), (narrow(64, 4), 2 ** 14)]
    if mode == "full" and not gpu:
        shapes += [(narrow(64, 8), 2 ** 14)]
    return shapes


def kernel_shapes(mode):
    """(batch, n_out, n_in) of the fused-kernel rows."""
    shapes = [GOAL_FWD["shape"], (2 ** 18, 64, 64)]
    if mode == "full":
        shapes += [(8192, 4096, 4096), (2 ** 16, 128, 128), (2 ** 20, 128, 128)]
    return shapes


# ----------------------------------------------------------------- cost (SPEC.md "Cost")
def n_params(sizes) -> int:
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def step_flops(sizes, batch) -> int:
    """`6 B sum n_{l-1} n_l`: 2 forward, 2 for dW, 2 for delta @ W."""
    return 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


OPT_STATES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


def step_min_bytes(sizes, batch, optimizer="adam", itemsize=4, label_bytes=4) -> int:
    """Fewest bytes a step moves (SPEC.md): each weight, gradient and optimizer-state
    element once; each kept activation `A[1..L]` written once and read once; the
    input `X` read once and the int labels read once."""
    P = n_params(sizes)
    per_param = 2 + OPT_STATES[optimizer]
    return itemsize * (P * per_param + 2 * batch * sum(sizes[1:]) + batch * sizes[0]) + batch * label_bytes


def kernel_flops(batch, n_out, n_in) -> int:
    return 2 * batch * n_out * n_in


def kernel_min_bytes(kind, batch, n_out, n_in, itemsize=4) -> int:
    """fwd: read A_prev, W, b, write A; bwd_data: read delta, W, A_prev (for g'),
    write delta_prev; bwd_weight: read delta, A_prev, write dW, db."""
    B, N, K = batch, n_out, n_in
    elems = {"fwd": B * K + N * K + N + B * N,
             "bwd_data": B * N + N * K + 2 * B * K,
             "bwd_weight": B * N + B * K + N * K + N}[kind]
    return itemsize * elems


def n_sets(set_bytes, l2_bytes, cap_bytes=2 ** 31) -> int:
    """How many input sets to rotate so that together they are at least twice the L2."""
    n = math.ceil(2 * l2_bytes / max(set_bytes, 1))
    n = min(n, max(1, cap_bytes // max(set_bytes, 1)))
    return int(min(max(n, 2), 8))


# ----------------------------------------------------------------- clocks and timing
class CpuClock:
    device = "cpu"

    def sync(self):
        pass

    def marks(self, n):
        return [0.0] * n

    def mark(self, marks, i):
        marks[i] = time.perf_counter()

    def elapsed_ms(self, marks):
        return [(b - a) * 1e3 for a, b in zip(marks[:-1], marks[1:])]


class CupyClock:
    device = "cuda"

    def __init__(self):
        import cupy
        self.cp = cupy

    def sync(self):
        self.cp.cuda.get_current_stream().synchronize()

    def marks(self, n):
        return [self.cp.cuda.Event() for _ in range(n)]

    def mark(self, marks, i):
        marks[i].record()

    def elapsed_ms(self, marks):
        marks[-1].synchronize()
        return [self.cp.cuda.get_elapsed_time(a, b) for a, b in zip(marks[:-1], marks[1:])]


class TorchClock(CupyClock):
    def __init__(self):
        import torch
        self.torch = torch

    def sync(self):
        self.torch.cuda.synchronize()

    def marks(self, n):
        return [self.torch.cuda.Event(enable_timing=True) for _ in range(n)]

    def elapsed_ms(self, marks):
        marks[-1].synchronize()
        return [a.elapsed_time(b) for a, b in zip(marks[:-1], marks[1:])]


def time_reps(fn, inputs, clock, warmup, reps, budget_s, warm_s=0.0, min_reps=3) -> dict:
    """Median time of `fn(*inputs[i % n])` over repetitions: warm-up first (at
    least `warmup` repetitions and `warm_s` seconds, at most 10 `budget_s`), then
    chunks of repetitions each marked by an event (no sync inside a chunk) until
    `reps` repetitions or `budget_s` seconds (at least `min_reps`)."""
    n = len(inputs)
    t0 = time.perf_counter()
    i = 0
    while i < warmup or (time.perf_counter() - t0 < warm_s and i < 1000):
        fn(*inputs[i % n])
        i += 1
        if i >= warmup:
            clock.sync()
            if time.perf_counter() - t0 > 10 * budget_s:
                break
    clock.sync()
    warm_s = time.perf_counter() - t0
    times, chunk = [], min(min_reps, reps)
    t0 = time.perf_counter()
    while len(times) < reps:
        k = min(chunk, reps - len(times))
        marks = clock.marks(k + 1)
        clock.mark(marks, 0)
        for j in range(k):
            fn(*inputs[i % n])
            i += 1
            clock.mark(marks, j + 1)
        times += clock.elapsed_ms(marks)
        spent = time.perf_counter() - t0
        if spent >= budget_s:
            break
        per = spent / len(times)
        chunk = max(1, min(64, int((budget_s - spent) / max(per, 1e-6) / 2)))
    t = np.array(times)
    return dict(median_ms=float(np.median(t)), p25_ms=float(np.percentile(t, 25)),
                p75_ms=float(np.percentile(t, 75)), min_ms=float(t.min()), reps=len(times),
                warmup_reps=i - len(times), warmup_s=round(warm_s, 3), input_sets=n)


def timed(fn, inputs, clock, cfg, warmup=None) -> dict:
    """`time_reps` with the mode's settings."""
    return time_reps(fn, inputs, clock, cfg["warmup"] if warmup is None else warmup, cfg["reps"],
                     cfg["row_s"], cfg["warm_s"])


# ----------------------------------------------------------------- helpers
def load_peers():
    """`benchmarks/peers.py` of the checkout this gpubp comes from (loaded by path)."""
    mod = sys.modules.get("gpubp_bench_peers")
    if mod is not None:
        return mod
    cands = [Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py",
             Path.cwd() / "benchmarks" / "peers.py"]
    path = next((c for c in cands if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{cands[0]} not found: `gpubp bench` runs from a source checkout of gpubp")
    spec = importlib.util.spec_from_file_location("gpubp_bench_peers", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def cuda_status():
    """(True, None) when CuPy sees a CUDA device, else (False, the reason)."""
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        return (n > 0, None if n > 0 else "CuPy sees no CUDA device")
    except Exception as e:  # ImportError, CUDARuntimeError (no driver), ...
        return False, f"{type(e).__name__}: {e}"


def torch_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def free_device_memory():
    gc.collect()
    if "cupy" in sys.modules:
        try:
            import cupy
            cupy.get_default_memory_pool().free_all_blocks()
        except Exception:
            pass
    if "torch" in sys.modules:
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass


def device_free_bytes():
    import cupy
    free_device_memory()
    return cupy.cuda.runtime.memGetInfo()[0]


def blas_threads():
    try:
        from threadpoolctl import threadpool_info
        return max((i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"), default=None)
    except Exception:
        return None


def _versions():
    v = dict(python=platform.python_version(), numpy=np.__version__, platform=platform.platform(),
             cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
             blas_threads=blas_threads())
    for name in ("torch", "sklearn", "cupy"):
        try:
            v[name] = __import__(name).__version__
        except Exception as e:
            v[name] = f"not importable ({type(e).__name__})"
    try:
        import gpubp
        v["gpubp"] = gpubp.__version__
    except Exception:
        pass
    return v


def _gpu_meta():
    import cupy
    rt = cupy.cuda.runtime
    p = rt.getDeviceProperties(cupy.cuda.Device().id)
    name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
    meta = dict(name=name, compute_capability=f"{p['major']}.{p['minor']}",
                memory_gb=round(p["totalGlobalMem"] / 2 ** 30, 1), sms=p["multiProcessorCount"],
                l2_bytes=p.get("l2CacheSize", 50 * 2 ** 20),
                driver=rt.driverGetVersion(), cuda_runtime=rt.runtimeGetVersion(),
                cupy_tf32=os.environ.get("CUPY_TF32", "0"))
    try:
        import torch
        meta["torch_cuda"] = torch.version.cuda
    except Exception:
        pass
    return meta


class Suite:
    """Collects rows, keeps the suite's time budget, never lets one row stop the run."""

    def __init__(self, cfg, verbose=True):
        self.cfg, self.rows, self.verbose = cfg, [], verbose
        self.t0 = time.perf_counter()
        self.ceilings = {}

    def left_s(self):
        return self.cfg["suite_s"] - (time.perf_counter() - self.t0)

    def run(self, base, fn, need_s=0.0, gpu=False):
        row = dict(base)
        if self.left_s() <= need_s:
            row["skipped"] = "suite time budget spent"
        else:
            try:
                row.update(fn() or {})
            except Exception as e:
                name = type(e).__name__
                if "OutOfMemory" in name:
                    row["skipped"] = f"out of memory: {e}"[:300]
                else:
                    row["error"] = f"{name}: {e}"[:500]
            finally:
                if gpu:
                    free_device_memory()
        self.rows.append(row)
        if self.verbose:
            print(_progress(row), flush=True)
        return row


def _progress(r):
    what = r.get("network") or r.get("kernel") or r.get("ceiling")
    shape = f"B={r['batch']}" if "batch" in r else ""
    if "median_ms" in r:
        res = f"{r['median_ms']:.4g} ms ({r['reps']} reps)"
    else:
        res = r.get("skipped") or r.get("error") or "?"
    return f"  {r['kind']:7s} {str(what):24s} {shape:10s} {r.get('peer', ''):18s} {res}"


def _rates(row, flops, nbytes, ceil):
    """Add TFLOP/s, GB/s and their fractions of the measured ceilings."""
    if "median_ms" not in row:
        return row
    s = row["median_ms"] / 1e3
    row["tflops"] = flops / s / 1e12
    row["gbs"] = nbytes / s / 1e9
    if ceil.get("gemm_tflops"):
        row["frac_gemm"] = row["tflops"] / ceil["gemm_tflops"]
    if ceil.get("copy_gbs"):
        row["frac_copy"] = row["gbs"] / ceil["copy_gbs"]
    return row


# ----------------------------------------------------------------- ceilings
def measure_ceilings_gpu(suite):
    import cupy
    cfg, ceil = suite.cfg, {}
    n = 2 ** 28 if suite.cfg["mode"] != "tiny" else 2 ** 24          # 1 GiB each way
    n = min(n, device_free_bytes() // 4 // 4)

    def copy():
        src = cupy.random.standard_normal(n, dtype=np.float32)
        dst = cupy.empty_like(src)
        t = time_reps(lambda: dst.data.copy_from_device_async(src.data, src.nbytes), [()],
                      CupyClock(), cfg["warmup"], cfg["reps"], cfg["row_s"], cfg["warm_s"])
        nb = 2 * src.nbytes
        t.update(bytes=nb, gbs=nb / (t["median_ms"] / 1e3) / 1e9,
                 what=f"cudaMemcpyAsync device to device, {src.nbytes / 2 ** 20:.0f} MiB (read + write)")
        return t

    r = suite.run(dict(kind="ceiling", ceiling="copy", device="cuda"), copy, gpu=True)
    ceil["copy_gbs"] = r.get("gbs")

    def sgemm():
        m = 4096
        rs = cupy.random.RandomState(7)
        sets = [(rs.standard_normal((m, m), dtype=np.float32), rs.standard_normal((m, m), dtype=np.float32))
                for _ in range(2)]
        C = cupy.empty((m, m), np.float32)
        t = timed(lambda A, B: cupy.matmul(A, B, out=C), sets, CupyClock(), cfg)
        t.update(flops=2 * m ** 3, tflops=2 * m ** 3 / (t["median_ms"] / 1e3) / 1e12,
                 what=f"cupy.matmul float32 {m}^3 (CUPY_TF32={os.environ.get('CUPY_TF32', '0')})")
        return t

    r = suite.run(dict(kind="ceiling", ceiling="sgemm", device="cuda"), sgemm, gpu=True)
    ceil["gemm_tflops"] = r.get("tflops")
    return ceil


def measure_ceilings_cpu(suite):
    cfg, ceil = suite.cfg, {}
    tiny = cfg["mode"] == "tiny"
    rng = np.random.default_rng(7)

    def copy():
        src = rng.standard_normal(2 ** 21 if tiny else 2 ** 25, dtype=np.float32)
        dst = np.empty_like(src)
        t = timed(lambda: np.copyto(dst, src), [()], CpuClock(), cfg)
        nb = 2 * src.nbytes
        t.update(bytes=nb, gbs=nb / (t["median_ms"] / 1e3) / 1e9, what=f"np.copyto {src.nbytes >> 20} MiB")
        return t

    ceil["copy_gbs"] = suite.run(dict(kind="ceiling", ceiling="copy", device="cpu"), copy).get("gbs")

    def sgemm():
        m = 256 if tiny else 1024
        A, B = (rng.standard_normal((m, m), dtype=np.float32) for _ in range(2))
        C = np.empty((m, m), np.float32)
        t = timed(lambda: np.matmul(A, B, out=C), [()], CpuClock(), cfg)
        t.update(flops=2 * m ** 3, tflops=2 * m ** 3 / (t["median_ms"] / 1e3) / 1e12,
                 what=f"np.matmul float32 {m}^3")
        return t

    ceil["gemm_tflops"] = suite.run(dict(kind="ceiling", ceiling="sgemm", device="cpu"), sgemm).get("tflops")
    return ceil


# ----------------------------------------------------------------- step rows
_PARAMS: dict = {}


def host_params(sizes):
    key = tuple(sizes)
    if key not in _PARAMS:
        _PARAMS.clear()
        _PARAMS[key] = load_peers().init_params(sizes, seed=0)
    return _PARAMS[key]


GPU_PEERS = ("gpubp-cuda", "gpubp-cuda-graph", "gpubp-cuda-tf32", "cupy-unfused", "torch-eager",
             "torch-eager-tf32")


def gpu_step_rows(suite, sizes, batch, peers):
    import cupy
    P = load_peers()
    cfg, opt, lr = suite.cfg, suite.cfg["optimizer"], suite.cfg["lr"]
    flops, nbytes = step_flops(sizes, batch), step_min_bytes(sizes, batch, opt)
    set_bytes = 4 * batch * (sizes[0] + 1)
    k = n_sets(set_bytes, suite.l2_bytes)
    need = 4 * (4 * n_params(sizes) + 3 * batch * sum(sizes[1:]) + k * batch * (sizes[0] + 1))
    base = dict(kind="step", device="cuda", network=net_name(sizes), sizes=list(sizes), batch=batch,
                optimizer=opt, flops=flops, min_bytes=nbytes)
    free = device_free_bytes()
    if need * 2.2 > free:
        for p in peers:
            suite.rows.append(dict(base, peer=p, skipped=f"needs about {2.2 * need / 2 ** 30:.1f} GiB, "
                                                         f"{free / 2 ** 30:.1f} GiB free"))
        return
    if suite.left_s() <= 0:
        for p in peers:
            suite.run(dict(base, peer=p), lambda: None)
        return
    data = {}            # the shape's input sets, made by the first row that needs them

    def inputs_for(torch_side):
        if "cupy" not in data:
            data["cupy"] = P.random_batches(cupy, sizes[0], sizes[-1], batch, k, seed=batch)
        if torch_side and "torch" not in data:
            data["torch"] = P.torch_batches(data["cupy"], "cuda")
        return data["torch" if torch_side else "cupy"]

    for peer in peers:
        def one(peer=peer):
            prec, extra = None, {}
            params = host_params(sizes)
            if peer.startswith("torch"):
                prec = P.set_torch_tf32(peer == "torch-eager-tf32")
                inputs, clock = inputs_for(True), TorchClock()
                step = P.TorchStep("cuda", sizes, params, batch, opt, lr, compile=peer == "torch-compile")
                if peer == "torch-compile":                  # the first call compiles
                    t0 = time.perf_counter()
                    step(*inputs[0])
                    clock.sync()
                    extra["compile_s"] = round(time.perf_counter() - t0, 1)
            else:
                inputs, clock = inputs_for(False), CupyClock()
                if peer.startswith("gpubp"):
                    step = P.GpubpStep("cuda", sizes, params, batch, opt, lr, graph=peer.endswith("graph"),
                                       first_batch=inputs[0],
                                       precision="tf32" if peer.endswith("tf32") else "float32")
                else:
                    step = P.UnfusedStep(cupy, sizes, params, batch, opt, lr)
            t = timed(step, inputs, clock, cfg)
            t.update(extra, final_loss=step.loss_value())
            if prec is not None:
                t["torch_matmul_precision"] = prec
                P.set_torch_tf32(False)
            return _rates(t, flops, nbytes, suite.ceilings["cuda"])
        suite.run(dict(base, peer=peer), one, need_s=90 if peer == "torch-compile" else 0, gpu=True)
    data.clear()
    free_device_memory()


def cpu_step_rows(suite, sizes, batch, has_torch):
    P = load_peers()
    cfg, opt, lr = suite.cfg, suite.cfg["optimizer"], suite.cfg["lr"]
    flops, nbytes = step_flops(sizes, batch), step_min_bytes(sizes, batch, opt)
    base = dict(kind="step", device="cpu", network=net_name(sizes), sizes=list(sizes), batch=batch,
                optimizer=opt, flops=flops, min_bytes=nbytes)
    params = host_params(sizes)
    batches = P.random_batches(np, sizes[0], sizes[-1], batch, 4, seed=batch)
    peers = ["gpubp-numpy"] + (["torch-cpu"] if has_torch else []) + ["sklearn"]
    if importlib.util.find_spec("sklearn") is None:
        peers.remove("sklearn")
        suite.rows.append(dict(base, peer="sklearn", skipped="scikit-learn is not installed"))
    for peer in peers:
        def one(peer=peer):
            # idle BLAS/OpenMP threads of the previous peer spin for a while before they
            # sleep, stealing cores (numpy's OpenBLAS and torch's OpenMP): let them settle
            time.sleep(min(0.5, cfg["row_s"]))
            inputs = batches
            if peer == "gpubp-numpy":
                step = P.GpubpStep("numpy", sizes, params, batch, opt, lr)
            elif peer == "torch-cpu":
                step = P.TorchStep("cpu", sizes, params, batch, opt, lr)
                inputs = P.torch_batches(batches, "cpu")
            else:
                step = P.SklearnStep(sizes, params, batch, opt, lr, classes_batch=batches[0])
            t = timed(step, inputs, CpuClock(), cfg)
            t["final_loss"] = step.loss_value()
            return _rates(t, flops, nbytes, suite.ceilings["cpu"])
        suite.run(dict(base, peer=peer), one)


# ----------------------------------------------------------------- kernel rows
def kernel_rows(suite, batch, n_out, n_in):
    import cupy
    from gpubp.activations import ACT_CODES
    cfg = suite.cfg
    relu = ACT_CODES["relu"]
    set_bytes = 4 * (batch * n_in + n_out * n_in + n_out + batch * n_out)
    k = n_sets(set_bytes, suite.l2_bytes)
    need = 4 * k * set_bytes + 8 * batch * (n_in + n_out) + 8 * n_out * n_in
    shape = dict(batch=batch, n_out=n_out, n_in=n_in)
    kinds = ("fwd", "bwd_data", "bwd_weight")
    if suite.left_s() <= 0:
        for kind in kinds:
            for peer in ("gpubp-fused", "cupy-unfused"):
                suite.run(dict(kind="kernel", device="cuda", kernel=kind, peer=peer, **shape), lambda: None)
        return
    free = device_free_bytes()
    if need * 1.5 > free:
        for kind in kinds:
            for peer in ("gpubp-fused", "cupy-unfused"):
                suite.rows.append(dict(kind="kernel", device="cuda", kernel=kind, peer=peer, **shape,
                                       skipped=f"needs about {1.5 * need / 2 ** 30:.1f} GiB"))
        return
    rs = cupy.random.RandomState(batch + n_in)
    sets = []
    for _ in range(k):
        A = rs.standard_normal((batch, n_in), dtype=np.float32)
        sets.append((cupy.maximum(A, np.float32(0), out=A),              # a ReLU output
                     rs.standard_normal((n_out, n_in), dtype=np.float32) / np.float32(math.sqrt(n_in)),
                     rs.standard_normal(n_out, dtype=np.float32),
                     rs.standard_normal((batch, n_out), dtype=np.float32)))
    A_out = cupy.empty((batch, n_out), np.float32)
    D_prev = cupy.empty((batch, n_in), np.float32)
    dW, db = cupy.empty((n_out, n_in), np.float32), cupy.empty(n_out, np.float32)
    relu_bwd = cupy.ElementwiseKernel("T a", "T d", "d = a > (T)0 ? d : (T)0", "bench_relu_bwd")

    def fused(kind):
        from gpubp.backends import cuda_gemm as g
        if kind == "fwd":
            return lambda A, W, b, D: g.gemm_fwd(A, W, b, relu, A_out)
        if kind == "bwd_data":
            return lambda A, W, b, D: g.gemm_bwd_data(D, W, A, None, relu, D_prev)
        return lambda A, W, b, D: g.gemm_bwd_weight(D, A, dW, db)

    def unfused(kind):
        if kind == "fwd":
            def f(A, W, b, D):
                cupy.matmul(A, W.T, out=A_out)
                cupy.add(A_out, b, out=A_out)
                cupy.maximum(A_out, np.float32(0), out=A_out)
        elif kind == "bwd_data":
            def f(A, W, b, D):
                cupy.matmul(D, W, out=D_prev)
                relu_bwd(A, D_prev)
        else:
            def f(A, W, b, D):
                cupy.matmul(D.T, A, out=dW)
                cupy.sum(D, axis=0, out=db)
        return f

    def rel_err(kind):
        """||fused - unfused|| / ||unfused|| of the output on the first input set."""
        out = {"fwd": (A_out,), "bwd_data": (D_prev,), "bwd_weight": (dW, db)}[kind]
        fused(kind)(*sets[0])
        got = [o.copy() for o in out]
        unfused(kind)(*sets[0])
        return max(float(cupy.linalg.norm(g - o) / cupy.linalg.norm(o)) for g, o in zip(got, out))

    for kind in kinds:
        flops, nbytes = kernel_flops(batch, n_out, n_in), kernel_min_bytes(kind, batch, n_out, n_in)
        for peer, make in (("gpubp-fused", fused), ("cupy-unfused", unfused)):
            def one(kind=kind, make=make, peer=peer):
                t = timed(make(kind), sets, CupyClock(), cfg)
                if peer == "gpubp-fused":
                    try:
                        t["rel_err_vs_unfused"] = rel_err(kind)
                    except Exception as e:
                        t["check_error"] = f"{type(e).__name__}: {e}"[:300]
                return _rates(t, flops, nbytes, suite.ceilings["cuda"])
            suite.run(dict(kind="kernel", device="cuda", kernel=kind, peer=peer, flops=flops,
                           min_bytes=nbytes, **shape), one)
    sets.clear()
    free_device_memory()


# ----------------------------------------------------------------- ratios and goals
def add_ratios(rows):
    """Per row, `speedup_gpubp`: this peer's time over gpubp's on the same shape
    (> 1: gpubp is faster); gpubp-cuda for GPU rows, gpubp-numpy for CPU rows,
    and `speedup_gpubp_cuda` for CPU rows of a shape also measured on the GPU."""
    ref = {}
    for r in rows:
        if "median_ms" in r and r.get("peer") in ("gpubp-cuda", "gpubp-numpy", "gpubp-fused"):
            key = (r["kind"], r.get("kernel"), tuple(r.get("sizes", ())), r["batch"],
                   r.get("n_out"), r.get("n_in"), r["device"])
            ref[key] = r["median_ms"]
    for r in rows:
        if "median_ms" not in r or r["kind"] == "ceiling":
            continue
        key = (r["kind"], r.get("kernel"), tuple(r.get("sizes", ())), r["batch"], r.get("n_out"),
               r.get("n_in"))
        if key + (r["device"],) in ref:
            r["speedup_gpubp"] = r["median_ms"] / ref[key + (r["device"],)]
        if r["device"] == "cpu" and key + ("cuda",) in ref:
            r["speedup_gpubp_cuda"] = r["median_ms"] / ref[key + ("cuda",)]


def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and "median_ms" in r:
            return r
    return None


def check_goals(rows, ceil_gpu):
    goals = []
    B, N, K = GOAL_FWD["shape"]
    f = _find(rows, kind="kernel", kernel="fwd", peer="gpubp-fused", batch=B, n_out=N, n_in=K)
    g = dict(goal=f"fused forward GEMM+bias+ReLU at {B}x{N}x{K} >= {GOAL_FWD['frac']:.0%} of cuBLAS SGEMM 4096^3")
    if f and ceil_gpu.get("gemm_tflops"):
        frac = f["tflops"] / ceil_gpu["gemm_tflops"]
        g.update(value=frac, measured=f"{frac:.1%} ({f['tflops']:.2f} vs {ceil_gpu['gemm_tflops']:.2f} TFLOP/s)",
                 passed=frac >= GOAL_FWD["frac"], margin=f"{(frac - GOAL_FWD['frac']) * 100:+.1f} points")
    goals.append(g)
    for goal, text in ((GOAL_WIDE, "at least as fast as"),
                       (GOAL_NARROW, f"at least {GOAL_NARROW['speedup']:g}x faster than")):
        sizes, b = goal["sizes"], goal["batch"]
        g = dict(goal=f"{net_name(sizes)} step, batch {b}, float32: gpubp {text} PyTorch eager float32 (TF32 off)")
        mine = _find(rows, kind="step", device="cuda", peer="gpubp-cuda", sizes=sizes, batch=b)
        graph = _find(rows, kind="step", device="cuda", peer="gpubp-cuda-graph", sizes=sizes, batch=b)
        torch_r = _find(rows, kind="step", device="cuda", peer="torch-eager", sizes=sizes, batch=b)
        cands = [r for r in (mine, graph) if r]
        if cands and torch_r:
            best = min(cands, key=lambda r: r["median_ms"])
            s = torch_r["median_ms"] / best["median_ms"]
            g.update(value=s, passed=s >= goal["speedup"],
                     measured=f"{s:.2f}x ({best['peer']} {best['median_ms']:.3f} ms vs torch "
                              f"{torch_r['median_ms']:.3f} ms)" +
                              (f"; eager gpubp-cuda {torch_r['median_ms'] / mine['median_ms']:.2f}x"
                               if mine and best is not mine else ""),
                     margin=f"{(s / goal['speedup'] - 1) * 100:+.0f}%")
        goals.append(g)
    for g in goals:
        g["result"] = "NOT MEASURED" if "passed" not in g else ("PASS" if g["passed"] else "MISS")
    sizes, b = GOAL_NARROW["sizes"], GOAL_NARROW["batch"]     # TF32, beside the float32 goal
    tf = _find(rows, kind="step", device="cuda", peer="gpubp-cuda-tf32", sizes=sizes, batch=b)
    t32 = _find(rows, kind="step", device="cuda", peer="torch-eager", sizes=sizes, batch=b)
    ttf = _find(rows, kind="step", device="cuda", peer="torch-eager-tf32", sizes=sizes, batch=b)
    if tf and t32 and ttf:
        goals.append(dict(goal=f"(information) {net_name(sizes)} step, batch {b}, gpubp precision='tf32'",
                          result="INFO", measured=f"{t32['median_ms'] / tf['median_ms']:.2f}x PyTorch eager "
                          f"float32, {ttf['median_ms'] / tf['median_ms']:.2f}x PyTorch eager TF32 "
                          f"({tf['median_ms']:.3f} ms)", margin=""))
    return goals


# ----------------------------------------------------------------- outputs
def _fmt(x, nd=3):
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def _pct(x):
    return "" if x is None else f"{x:.0%}"


def write_markdown(res, path):
    m, L = res["meta"], []
    L.append("# gpubp bench\n")
    L.append(f"Mode `{res['config']['mode']}`, optimizer {res['config']['optimizer']} "
             f"(lr {res['config']['lr']}), step = forward, softmax cross-entropy, backward, update; "
             f"float32 throughout. Suite wall time {res['wall_s']:.0f} s.\n")
    v = m["versions"]
    L.append(f"- CPU: {v['cpu']} x{v['cpu_count']}, BLAS threads {v['blas_threads']}, torch threads "
             f"{m.get('torch_threads')}; numpy {v['numpy']}, torch {v['torch']}, scikit-learn {v['sklearn']}, "
             f"Python {v['python']}")
    if m.get("gpu"):
        g = m["gpu"]
        L.append(f"- GPU: {g['name']} (cc {g['compute_capability']}, {g['memory_gb']} GiB, {g['sms']} SMs, "
                 f"L2 {g['l2_bytes'] / 2 ** 20:.0f} MiB); driver {g['driver']}, CUDA runtime {g['cuda_runtime']}, "
                 f"CuPy {v['cupy']} (CUPY_TF32={g['cupy_tf32']}), torch CUDA {g.get('torch_cuda')}")
    else:
        L.append(f"- **No CUDA GPU: the GPU rows need CUDA** ({m.get('no_gpu_reason')}). Only the CPU rows "
                 f"were measured.")
    for note in m.get("notes", []):
        L.append(f"- {note}")
    bad = [r for r in res["rows"] if r["kind"] == "shape"]
    for r in bad:
        L.append(f"- error in {r['what']}: {r['error']}")
    L.append("")
    L.append("## Ceilings (measured in this run)\n")
    L.append("| device | what | median ms | rate |\n|---|---|---|---|")
    for r in res["rows"]:
        if r["kind"] == "ceiling":
            rate = (f"{r['gbs']:.1f} GB/s" if "gbs" in r else f"{r['tflops']:.2f} TFLOP/s" if "tflops" in r
                    else r.get("skipped") or r.get("error", ""))
            L.append(f"| {r['device']} | {r.get('what', r['ceiling'])} | {_fmt(r.get('median_ms'))} | {rate} |")
    L.append("")
    if res["goals"] and m.get("gpu"):
        L.append("## Goals (issue 4)\n")
        L.append("| goal | measured | result | margin |\n|---|---|---|---|")
        for g in res["goals"]:
            L.append(f"| {g['goal']} | {g.get('measured', '')} | **{g['result']}** | {g.get('margin', '')} |")
        L.append("")
    summary = summary_table(res["rows"])
    if summary:
        L.append("## Summary: median step time (ms) per peer\n")
        L += summary
        L.append("")
    head = ("| network | batch | peer | median ms | p25-p75 ms | reps | TFLOP/s | % SGEMM | GB/s | % copy | "
            "peer time / gpubp time |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for dev, title in (("cuda", "Training steps on the GPU"), ("cpu", "Training steps on the CPU")):
        rows = [r for r in res["rows"] if r["kind"] == "step" and r["device"] == dev]
        if not rows:
            continue
        L.append(f"## {title}\n")
        ref = "gpubp-cuda" if dev == "cuda" else "gpubp-numpy"
        L.append(f"FLOPs = 6 B sum n_(l-1) n_l; fewest bytes per SPEC.md (`gpubp.bench.step_min_bytes`). "
                 f"Last column: this peer's time over {ref}'s (> 1: gpubp faster)"
                 + ("; in brackets over gpubp-cuda's where that shape ran on the GPU." if dev == "cpu" else ".")
                 + "\n")
        L.append(head)
        for r in rows:
            L.append(_row_md(r, r["network"], r["batch"]))
        L.append("")
    rows = [r for r in res["rows"] if r["kind"] == "kernel"]
    if rows:
        L.append("## Fused kernels alone (gpubp.backends.cuda_gemm) vs their unfused pairs\n")
        L.append("fwd: GEMM+bias+ReLU vs cupy.matmul + add + maximum; bwd_data: GEMM with g' epilogue vs "
                 "cupy.matmul + multiply; bwd_weight: dW GEMM with db vs cupy.matmul + sum. "
                 "Shape is batch x n_out x n_in.\n")
        L.append(head.replace("| network | batch |", "| kernel | shape |"))
        for r in rows:
            L.append(_row_md(r, r["kernel"], f"{r['batch']}x{r['n_out']}x{r['n_in']}"))
        L.append("")
    L.append("Rows are medians of CUDA-event (GPU) or host-clock (CPU) times after warm-up, rotating among "
             "several random input sets; `skipped`/`error` rows say why. Full figures: bench.json.\n")
    Path(path).write_text("\n".join(L))


def summary_table(rows):
    """Markdown lines: one row per (device, network, batch), one column per peer, plus the
    speed-up of gpubp's faster path over PyTorch (eager, TF32 off)."""
    steps = [r for r in rows if r["kind"] == "step"]
    peers = [p for p in (*GPU_PEERS, "torch-compile", "gpubp-numpy", "torch-cpu", "sklearn")
             if any(r["peer"] == p for r in steps)]
    if not steps:
        return []
    out = ["| device | network | batch | " + " | ".join(peers) + " | gpubp speed-up over torch |",
           "|---" * (len(peers) + 4) + "|"]
    keys = []
    for r in steps:
        k = (r["device"], r["network"], r["batch"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        t = {r["peer"]: r.get("median_ms") for r in steps if (r["device"], r["network"], r["batch"]) == k}
        mine = [t.get(p) for p in ("gpubp-cuda", "gpubp-cuda-graph", "gpubp-numpy") if t.get(p)]
        ref = t.get("torch-eager") or t.get("torch-cpu")
        sp = f"{ref / min(mine):.2f}x" if mine and ref else ""
        out.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(_fmt(t.get(p), 4) if t.get(p) else
                                                               ("-" if p in t else "") for p in peers)
                   + f" | {sp} |")
    return out


def _row_md(r, what, shape):
    if "median_ms" not in r:
        why = r.get("skipped") or r.get("error", "")
        return f"| {what} | {shape} | {r['peer']} | {why.replace('|', '/')[:160]} | | | | | | | |"
    ratio = _fmt(r.get("speedup_gpubp"))
    if r.get("speedup_gpubp_cuda") is not None:
        ratio += f" [{_fmt(r['speedup_gpubp_cuda'])}]"
    peer = r["peer"] + (f" (rel. err {r['rel_err_vs_unfused']:.1e})" if "rel_err_vs_unfused" in r else "")
    return (f"| {what} | {shape} | {peer} | {_fmt(r['median_ms'], 4)} | {_fmt(r['p25_ms'])}-{_fmt(r['p75_ms'])} "
            f"| {r['reps']} | {_fmt(r.get('tflops'))} | {_pct(r.get('frac_gemm'))} | {_fmt(r.get('gbs'))} "
            f"| {_pct(r.get('frac_copy'))} | {ratio} |")


def write_plot(res, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gpu = any(r["kind"] == "step" and r["device"] == "cuda" and "median_ms" in r for r in res["rows"])
    dev, peer, ref = ("cuda", "torch-eager", "gpubp-cuda") if gpu else ("cpu", "torch-cpu", "gpubp-numpy")
    lines = {}
    for r in res["rows"]:
        if r["kind"] == "step" and r["device"] == dev and r["peer"] == peer and r.get("speedup_gpubp"):
            lines.setdefault(r["network"], []).append((r["batch"], r["speedup_gpubp"]))
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter("{x:g}x")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"speed-up: {peer} time / {ref} time")
    title = f"gpubp ({ref}) vs {peer}, {res['config']['optimizer']} step"
    if res["meta"].get("gpu"):
        title += f", {res['meta']['gpu']['name']}"
    else:
        title += " (no CUDA GPU: CPU rows only)"
    ax.set_title(title, fontsize=10)
    if lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rows measured", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


# ----------------------------------------------------------------- main
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
    meta = dict(versions=_versions(), torch_threads=torch_threads, argv=list(argv or []), notes=[])
    print(f"gpubp bench ({a.mode}, {cfg['optimizer']}), results to {out}/", flush=True)
    if has_gpu:
        meta["gpu"] = _gpu_meta()
        suite.l2_bytes = meta["gpu"]["l2_bytes"]
        print(f"GPU: {meta['gpu']['name']}", flush=True)
    else:
        meta["no_gpu_reason"] = why
        print(f"No CUDA GPU ({why}): the GPU rows need CUDA; measuring the CPU rows only.", flush=True)
    suite.l2_bytes = getattr(suite, "l2_bytes", 50 * 2 ** 20)

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
            for goal in (GOAL_WIDE, GOAL_NARROW):
                if picked(a.only, goal["sizes"]):
                    guarded(suite, gpu_step_rows, goal["sizes"], goal["batch"], ["torch-compile"])
    if not a.no_cpu:
        suite.ceilings["cpu"] = measure_ceilings_cpu(suite)
        for sizes, b in cpu_step_shapes(a.mode, has_gpu):
            if picked(a.only, sizes):
                guarded(suite, cpu_step_rows, sizes, b, has_torch)

    add_ratios(suite.rows)
    res = dict(meta=meta, config=cfg, ceilings=suite.ceilings, rows=suite.rows,
               goals=check_goals(suite.rows, suite.ceilings.get("cuda", {})) if has_gpu else [],
               wall_s=time.perf_counter() - suite.t0)
    (out / "bench.json").write_text(json.dumps(res, indent=1, default=_jsonable))
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
