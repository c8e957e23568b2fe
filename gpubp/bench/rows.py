"""The rows of a benchmark run: ceilings, training steps and fused kernels, each timed.

`Suite` collects rows and keeps the run's time budget; a row that fails
records its error (or why it was skipped) without stopping the run.  The
step rows time the peers of `gpubp.bench.peers` on the same parameters and
batches; the kernel rows time gpubp's fused GEMM launchers against their
unfused CuPy pairs.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time

import numpy as np

from . import peers as P
from .cost import kernel_flops, kernel_min_bytes, n_params, n_sets, step_flops, step_min_bytes
from .environment import device_free_bytes, free_device_memory
from .shapes import net_name
from .timing import CpuClock, CupyClock, TorchClock, time_reps, timed


class Suite:
    """Collects rows, keeps the suite's time budget, never lets one row stop the run."""

    def __init__(self, cfg, verbose=True, l2_bytes=50 * 2 ** 20):
        self.cfg, self.rows, self.verbose = cfg, [], verbose
        self.t0 = time.perf_counter()
        self.ceilings = {}
        #: the device's L2 size: input sets rotate past it
        self.l2_bytes = l2_bytes
        self._params = {}     # the initial parameters of the last network measured

    def host_params(self, sizes):
        """The shared initial `[(W, b), ...]` of network `sizes` (every peer starts from them)."""
        key = tuple(sizes)
        if key not in self._params:
            self._params.clear()
            self._params[key] = P.init_params(sizes, seed=0)
        return self._params[key]

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
def gpu_step_rows(suite, sizes, batch, peers):
    import cupy
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
            params = suite.host_params(sizes)
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
    cfg, opt, lr = suite.cfg, suite.cfg["optimizer"], suite.cfg["lr"]
    flops, nbytes = step_flops(sizes, batch), step_min_bytes(sizes, batch, opt)
    base = dict(kind="step", device="cpu", network=net_name(sizes), sizes=list(sizes), batch=batch,
                optimizer=opt, flops=flops, min_bytes=nbytes)
    params = suite.host_params(sizes)
    batches = P.random_batches(np, sizes[0], sizes[-1], batch, 4, seed=batch)
    peers = [p for p in P.CPU_PEERS if has_torch or not p.startswith("torch")]
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
    from ..activations import ACT_CODES
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
        from ..backends import cuda_gemm as g
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


# ----------------------------------------------------------------- ratios
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


