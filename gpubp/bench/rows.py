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
import re
import time

import numpy as np

from . import gemms as G
from . import peers as P
from .cost import kernel_flops, kernel_min_bytes, n_params, n_sets, run_min_bytes, step_flops, step_min_bytes
from .environment import device_free_bytes, free_device_memory, torch_cuda
from .shapes import COMPILE_NEED_S, net_name
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
        #: seconds of the budget kept for rows that run later (the torch.compile rows)
        self.reserve_s = 0.0
        #: set (to what happened) when a GPU row's error left the CUDA context unusable
        self.device_lost = None

    def host_params(self, sizes):
        """The shared initial `[(W, b), ...]` of network `sizes` (every peer starts from them)."""
        key = tuple(sizes)
        if key not in self._params:
            self._params.clear()
            self._params[key] = P.init_params(sizes, seed=0)
        return self._params[key]

    def left_s(self):
        """Seconds left of the suite's budget for the rows now running (less `reserve_s`)."""
        return self.cfg["suite_s"] - self.reserve_s - (time.perf_counter() - self.t0)

    def run(self, base, fn, need_s=0.0, gpu=False):
        """Run `fn` for one row (`gpu`: a GPU row), unless the budget is spent or the CUDA
        context was lost by an earlier row; its result, error or reason for skipping is the row."""
        row = dict(base)
        if gpu and self.device_lost:
            row["skipped"] = f"the CUDA context was lost earlier ({self.device_lost})"[:400]
        elif self.left_s() <= need_s:
            row["skipped"] = "suite time budget spent" + (f" (less {self.reserve_s:.0f} s kept for later rows)"
                                                          if self.reserve_s else "")
        else:
            try:
                row.update(fn() or {})
            except Exception as e:
                name = type(e).__name__
                if "OutOfMemory" in name:
                    row["skipped"] = f"out of memory: {e}"[:300]
                else:
                    row["error"] = f"{name}: {e}"[:500]
                    if gpu and CONTEXT_LOST.search(str(e)):
                        self.device_lost = f"{_what(row)}: {name}: {e}"[:300]
            finally:
                if gpu and not self.device_lost:
                    free_device_memory()
        self.rows.append(row)
        if self.verbose:
            print(_progress(row), flush=True)
        return row


#: CUDA errors after which the process's CUDA context is unusable (sticky): every later GPU row
#: is skipped, saying so, rather than failing in its own way
CONTEXT_LOST = re.compile(r"illegal memory access|ILLEGAL_ADDRESS|IllegalAddress|misaligned address|MISALIGNED_ADDRESS|"
                          r"MisalignedAddress|unspecified launch failure|LAUNCH_FAILED|LaunchFailure|"
                          r"illegal instruction|ILLEGAL_INSTRUCTION|IllegalInstruction|hardware stack error|"
                          r"HARDWARE_STACK_ERROR|HardwareStackError|device-side assert|ASSERT_TRIGGERED|"
                          r"AssertTriggered|invalid program counter|INVALID_PC|InvalidPc|"
                          r"not supported on global/shared address space|INVALID_ADDRESS_SPACE|InvalidAddressSpace|"
                          r"launch timed out|LAUNCH_TIMEOUT|LaunchTimeout")


def _what(r):
    return " ".join(str(x) for x in (r.get("kind"), r.get("network") or r.get("kernel") or r.get("ceiling"),
                                     r.get("batch"), r.get("peer")) if x is not None)


def _progress(r):
    what = r.get("network") or r.get("kernel") or r.get("ceiling")
    shape = f"B={r['batch']}" if "batch" in r else ""
    if "median_ms" in r:
        res = f"{r['median_ms']:.4g} ms ({r['reps']} reps)"
    else:
        res = r.get("skipped") or r.get("error") or "?"
    return f"  {r['kind']:7s} {str(what):24s} {shape:10s} {r.get('peer', ''):18s} {res}"


#: the ceiling key of each precision's cuBLAS GEMM at 4096^3 (3xTF32 promises float32: SGEMM)
GEMM_CEILING = {"float32": "gemm_tflops", "tf32": "gemm_tflops_tf32", "bf16": "gemm_tflops_bf16",
                "3xtf32": "gemm_tflops"}


def _rates(row, flops, nbytes, ceil, precision="float32"):
    """Add TFLOP/s, GB/s and their fractions of the measured ceilings (the GEMM ceiling of
    the row's precision)."""
    if "median_ms" not in row:
        return row
    s = row["median_ms"] / 1e3
    row["tflops"] = flops / s / 1e12
    row["gbs"] = nbytes / s / 1e9
    key = GEMM_CEILING[precision]
    if ceil.get(key):
        row["frac_gemm"] = row["tflops"] / ceil[key]
        row["frac_gemm_of"] = key
    if ceil.get("copy_gbs"):
        row["frac_copy"] = row["gbs"] / ceil["copy_gbs"]
    return row



# ----------------------------------------------------------------- ceilings
def measure_ceilings_gpu(suite, large=True):
    """The GPU's ceilings: a device copy and cuBLAS SGEMM, TF32 and BF16 GEMMs at 4096^3 (the rows'
    "% GEMM" columns read these) and, with `large` (not in tiny mode), at 8192^3 (reported only)."""
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

    def sgemm(m):
        rs = cupy.random.RandomState(7)
        sets = [(rs.standard_normal((m, m), dtype=np.float32), rs.standard_normal((m, m), dtype=np.float32))
                for _ in range(2)]
        C = cupy.empty((m, m), np.float32)
        t = timed(lambda A, B: cupy.matmul(A, B, out=C), sets, CupyClock(), cfg)
        t.update(flops=2 * m ** 3, tflops=2 * m ** 3 / (t["median_ms"] / 1e3) / 1e12, precision="float32", m=m,
                 what=f"cupy.matmul float32 {m}^3 (CUPY_TF32={os.environ.get('CUPY_TF32', '0')})")
        return t

    def torch_gemm(m, precision):
        import torch
        if not torch_cuda():
            raise RuntimeError("needs PyTorch with CUDA (cuBLAS TF32 and BF16 are timed through torch.matmul)")
        g = torch.Generator(device="cuda").manual_seed(7)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        sets = [tuple(torch.randn((m, m), generator=g, device="cuda").to(dtype) for _ in range(2))
                for _ in range(2)]
        C = torch.empty((m, m), dtype=dtype, device="cuda")
        was = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        try:
            t = timed(lambda A, B: torch.matmul(A, B, out=C), sets, TorchClock(), cfg)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = was
        what = ("torch.matmul float32 with TF32 allowed" if precision == "tf32" else
                "torch.matmul bfloat16 (float32 accumulation)")
        t.update(flops=2 * m ** 3, tflops=2 * m ** 3 / (t["median_ms"] / 1e3) / 1e12, precision=precision, m=m,
                 what=f"{what} {m}^3")
        return t

    # the float32 SGEMM at 4096^3 first: `gemm_tflops`, the ceiling of the "% GEMM" columns
    for name, key, fn in (("sgemm", "gemm_tflops", lambda: sgemm(4096)),
                          ("sgemm-8192", "gemm_tflops_8192", lambda: sgemm(8192)),
                          ("tf32-gemm", "gemm_tflops_tf32", lambda: torch_gemm(4096, "tf32")),
                          ("tf32-gemm-8192", "gemm_tflops_tf32_8192", lambda: torch_gemm(8192, "tf32")),
                          ("bf16-gemm", "gemm_tflops_bf16", lambda: torch_gemm(4096, "bf16")),
                          ("bf16-gemm-8192", "gemm_tflops_bf16_8192", lambda: torch_gemm(8192, "bf16"))):
        if (suite.cfg["mode"] == "tiny" or not large) and name.endswith("8192"):
            continue
        r = suite.run(dict(kind="ceiling", ceiling=name, device="cuda"), fn, gpu=True)
        ceil[key] = r.get("tflops")
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
    if suite.device_lost:
        for p in peers:
            suite.run(dict(base, peer=p, precision=P.GPU_PEER_SPECS[p].precision), lambda: None, gpu=True)
        return
    free = device_free_bytes()
    if need * 2.2 > free:
        for p in peers:
            suite.rows.append(dict(base, peer=p, precision=P.GPU_PEER_SPECS[p].precision,
                                   skipped=f"needs about {2.2 * need / 2 ** 30:.1f} GiB, "
                                           f"{free / 2 ** 30:.1f} GiB free"))
        return
    if suite.left_s() <= 0 or suite.device_lost:
        for p in peers:
            suite.run(dict(base, peer=p, precision=P.GPU_PEER_SPECS[p].precision), lambda: None, gpu=True)
        return
    data = {}            # the shape's input sets, made by the first row that needs them

    def inputs_for(torch_side):
        if "cupy" not in data:
            data["cupy"] = P.random_batches(cupy, sizes[0], sizes[-1], batch, k, seed=batch)
        if torch_side and "torch" not in data:
            data["torch"] = P.torch_batches(data["cupy"], "cuda")
        return data["torch" if torch_side else "cupy"]

    for peer in peers:
        spec = P.GPU_PEER_SPECS[peer]

        def one(spec=spec):
            extra = {}
            params = suite.host_params(sizes)
            if spec.library == "torch":
                prec = P.set_torch_tf32(spec.precision == "tf32")
                inputs, clock = inputs_for(True), TorchClock()
                try:
                    step = P.TorchStep("cuda", sizes, params, batch, opt, lr, compile=spec.compile,
                                       autocast=spec.precision == "bf16")
                    if spec.compile:                             # the first call compiles
                        t0 = time.perf_counter()
                        try:
                            step(*inputs[0])
                            clock.sync()
                        except Exception as e:                   # a peer that does not build, said so
                            return dict(build_error=f"{type(e).__name__}: {e}"[:500],
                                        error=f"torch.compile did not build: {type(e).__name__}"[:500])
                        extra["compile_s"] = round(time.perf_counter() - t0, 1)
                    t = timed(step, inputs, clock, cfg)
                finally:
                    P.set_torch_tf32(False)
                t.update(extra, torch_matmul_precision=prec, final_loss=step.loss_value())
                if spec.precision == "bf16":
                    t["autocast"] = "torch.autocast('cuda', dtype=torch.bfloat16) around forward and loss"
            else:
                inputs, clock = inputs_for(False), CupyClock()
                if spec.library == "gpubp":
                    from ..backends.cuda_backend import CudaBackend
                    step = P.GpubpStep(CudaBackend(**spec.backend_options()), sizes, params, batch, opt, lr,
                                       graph=spec.graph, first_batch=inputs[0], precision=spec.precision)
                else:
                    step = P.UnfusedStep(cupy, sizes, params, batch, opt, lr)
                t = timed(step, inputs, clock, cfg)
                t.update(extra, final_loss=step.loss_value())
            t["samples_per_s"] = batch / (t["median_ms"] / 1e3)
            if not math.isfinite(t["final_loss"]):       # a wrong step never counts for a goal
                t["check_error"] = f"the final loss is {t['final_loss']}"
            return _rates(t, flops, nbytes, suite.ceilings["cuda"], spec.precision)
        options = {"backend_options": spec.backend_options()} if spec.library == "gpubp" else {}
        suite.run(dict(base, peer=peer, precision=spec.precision, **options), one,
                  need_s=COMPILE_NEED_S if spec.compile else 0, gpu=True)
    data.clear()
    free_device_memory()


def cpu_step_rows(suite, sizes, batch, has_torch):
    cfg, opt, lr = suite.cfg, suite.cfg["optimizer"], suite.cfg["lr"]
    flops, nbytes = step_flops(sizes, batch), step_min_bytes(sizes, batch, opt)
    base = dict(kind="step", device="cpu", network=net_name(sizes), sizes=list(sizes), batch=batch,
                optimizer=opt, flops=flops, min_bytes=nbytes)
    params = suite.host_params(sizes)
    batches = P.random_batches(np, sizes[0], sizes[-1], batch, 4, seed=batch)
    peers = list(P.CPU_PEERS)
    if not has_torch:            # a missing peer is a row saying so, as for scikit-learn below
        peers.remove("torch-cpu")
        suite.rows.append(dict(base, peer="torch-cpu", skipped="PyTorch is not importable"))
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


# ----------------------------------------------------------------- fused-run rows
def _part(peers, opt_in, part):
    """`peers` of one part: "verified" (none off the default path), "opt-in", or None (all)."""
    if part not in (None, "verified", "opt-in"):
        raise ValueError(f"part must be None, 'verified' or 'opt-in', got {part!r}")
    return [p for p in peers if part is None or (p in opt_in) == (part == "opt-in")]


def run_rows(suite, sizes, batch, has_torch_cuda=True, part=None):
    """A narrow network's whole fused run alone (forward and backward, no loss, no optimizer):
    the fused-MLP kernel family and the default path's fused kernels against PyTorch's forward
    and backward at each precision (`gpubp.bench.fused_runs`); `part` as for `kernel_rows`."""
    from . import fused_runs as FR
    cfg = suite.cfg
    flops, nbytes = step_flops(sizes, batch), run_min_bytes(sizes, batch)
    base = dict(kind="run", device="cuda", network=net_name(sizes), sizes=list(sizes), batch=batch, flops=flops,
                min_bytes=nbytes)
    for peer in _part(FR.RUN_PEERS, FR.OPT_IN_RUN_PEERS, part):
        prec, what = FR.RUN_PEERS[peer]

        def one(peer=peer, prec=prec):
            if peer.startswith("torch"):
                if not has_torch_cuda:
                    return dict(skipped="needs PyTorch with CUDA")
                P.set_torch_tf32(prec == "tf32")
                try:
                    t = timed(FR.torch_run(peer, sizes, batch), [()], TorchClock(), cfg)
                finally:
                    P.set_torch_tf32(False)
            else:
                why = FR.run_fits(peer, sizes)
                if why:
                    return dict(skipped=why)
                t = timed(FR.gpubp_run(peer, sizes, batch), [()], CupyClock(), cfg)
            t["samples_per_s"] = batch / (t["median_ms"] / 1e3)
            return _rates(t, flops, nbytes, suite.ceilings["cuda"], prec)
        suite.run(dict(base, peer=peer, precision=prec, what=what), one, gpu=True)
    free_device_memory()


# ----------------------------------------------------------------- kernel rows
def kernel_peers(precisions, tiles=False):
    """The kernel-row peers of a shape, in the order they are timed: per precision gpubp's
    variants then cuBLAS at that precision (each once); float32 also the unfused pair, and
    with `tiles` every float32 tile forced (v1, pipelined, gemm_f32)."""
    from .goals import CUBLAS_PEER
    out = []
    for prec in precisions:
        if prec == "float32":
            out += ["gpubp-fused"] + (["gpubp-gemm-v1", "gpubp-gemm-pipelined", "gpubp-gemm-f32"] if tiles else [])
            out += [G.UNFUSED]
        else:
            out.append(f"gpubp-tc-{prec}")
        out.append(CUBLAS_PEER[prec])
    return list(dict.fromkeys(out))


def kernel_rows(suite, batch, n_out, n_in, precisions=("float32",), tiles=False, has_torch_cuda=True, part=None,
                keep=None):
    """The three GEMMs of a layer (batch x n_out x n_in) alone: gpubp's variants against cuBLAS
    at the same precision and (float32) the unfused pair; see `gpubp.bench.gemms`.  `part`:
    "verified" times only the rows of kernels on the default path (and cuBLAS), "opt-in" only
    gpubp's opt-in variants (`gemms.OPT_IN_VARIANTS`), None all.  `keep`: a set of `(kernel, peer)`,
    the only rows timed (`shapes.goal_kernel_rows` for `--only goals`), or None for all."""
    cfg = suite.cfg
    shape = dict(batch=batch, n_out=n_out, n_in=n_in)
    peers = _part(kernel_peers(precisions, tiles), G.OPT_IN_VARIANTS, part)
    if not peers:
        return
    rows = [(kind, peer) for kind in G.KINDS for peer in peers if G.variant_applies(peer, kind)
            and (keep is None or (kind, peer) in keep)]
    if not rows:
        return
    used = {p for _, p in rows}
    peers = [p for p in peers if p in used]

    def base(kind, peer):
        prec = (G.GPUBP_VARIANTS.get(peer) or G.CUBLAS.get(peer) or ("float32",))[0]
        what = (G.GPUBP_VARIANTS[peer][1] if peer in G.GPUBP_VARIANTS else G.cublas_what(peer)
                if peer in G.CUBLAS else "cupy.matmul + the epilogue as separate kernels")
        return dict(kind="kernel", device="cuda", kernel=kind, peer=peer, precision=prec, what=what, **shape,
                    flops=kernel_flops(batch, n_out, n_in), min_bytes=kernel_min_bytes(kind, batch, n_out, n_in))

    set_bytes = 4 * (batch * n_in + n_out * n_in + n_out + batch * n_out)
    k = n_sets(set_bytes, suite.l2_bytes)
    # the sets, the outputs, the split-K workspaces and (bf16) converted copies of the sets
    need = 4 * k * set_bytes + 8 * batch * (n_in + n_out) + 8 * n_out * n_in + 2 * k * set_bytes
    if suite.left_s() <= 0 or suite.device_lost:
        for kind, peer in rows:
            suite.run(base(kind, peer), lambda: None, gpu=True)
        return
    free = device_free_bytes()
    if need * 1.5 > free:
        for kind, peer in rows:
            suite.rows.append(dict(base(kind, peer), skipped=f"needs about {1.5 * need / 2 ** 30:.1f} GiB"))
        return
    ops = G.GemmOperands(G.random_sets(batch, n_out, n_in, n_sets=k, seed=batch + n_in))
    try:
        G.preload(peers)
    except Exception as e:
        # one module that does not compile (gemm_f32, say) must not cost the other variants' rows:
        # each row then compiles its own kernels on its first call and records its own error
        if suite.verbose:
            print(f"  kernel   preload of {', '.join(peers)} failed ({type(e).__name__}: {e})"[:400]
                  + "; each row compiles its own kernels", flush=True)
    for kind, peer in rows:
        def one(kind=kind, peer=peer):
            flops, nbytes = kernel_flops(batch, n_out, n_in), kernel_min_bytes(kind, batch, n_out, n_in)
            prec = base(kind, peer)["precision"]
            if peer in G.CUBLAS:
                if peer != "cublas-sgemm" and not has_torch_cuda:
                    return dict(skipped="needs PyTorch with CUDA (cuBLAS TF32 and BF16 run through torch.matmul)")
                gemm = G.CublasGemm(peer, kind, ops)
                try:
                    with gemm:
                        t = timed(gemm.call, gemm.inputs, TorchClock() if gemm.torch else CupyClock(), cfg)
                finally:
                    gemm.release()
                return _rates(t, flops, nbytes, suite.ceilings["cuda"], prec)
            fn = G.unfused_gemm(kind, ops) if peer == G.UNFUSED else G.gpubp_gemm(peer, kind, ops)
            t = timed(fn, ops.sets, CupyClock(), cfg)
            if peer != G.UNFUSED:                            # a wrong GEMM never counts for a goal
                try:
                    err = t["rel_err_vs_unfused"] = G.rel_err(kind, ops, fn)
                    if not err <= G.REL_ERR_LIMIT[prec]:
                        t["check_error"] = (f"relative error {err:.2e} against the float32 unfused GEMM, above "
                                            f"{G.REL_ERR_LIMIT[prec]:.0e} for {prec}")
                except Exception as e:
                    t["check_error"] = f"{type(e).__name__}: {e}"[:300]
            return _rates(t, flops, nbytes, suite.ceilings["cuda"], prec)
        suite.run(base(kind, peer), one, gpu=True)
    ops.release()
    free_device_memory()


# ----------------------------------------------------------------- ratios
def add_ratios(rows):
    """Per row, `speedup_gpubp`: this peer's time over gpubp's on the same shape
    (> 1: gpubp is faster); gpubp-cuda for GPU rows, gpubp-numpy for CPU rows,
    and `speedup_gpubp_cuda` for CPU rows of a shape also measured on the GPU.  As for the
    goals, a reference row must count (`goals.counts`: a time above zero, its check passed)."""
    from .goals import counts, measured
    ref = {}
    for r in rows:
        if counts(r) and r.get("peer") in ("gpubp-cuda", "gpubp-numpy", "gpubp-fused"):
            key = (r["kind"], r.get("kernel"), tuple(r.get("sizes", ())), r["batch"],
                   r.get("n_out"), r.get("n_in"), r["device"])
            ref[key] = r["median_ms"]
    for r in rows:
        if not measured(r) or r["kind"] == "ceiling":
            continue
        key = (r["kind"], r.get("kernel"), tuple(r.get("sizes", ())), r["batch"], r.get("n_out"),
               r.get("n_in"))
        if key + (r["device"],) in ref:
            r["speedup_gpubp"] = r["median_ms"] / ref[key + (r["device"],)]
        if r["device"] == "cpu" and key + ("cuda",) in ref:
            r["speedup_gpubp_cuda"] = r["median_ms"] / ref[key + ("cuda",)]
    _same_precision_ratios(rows)


def _shape_key(r):
    return (r["kind"], r.get("kernel"), tuple(r.get("sizes", ())), r["batch"], r.get("n_out"), r.get("n_in"),
            r["device"])


def _same_precision_ratios(rows):
    """Per GPU row with a precision: `speedup_gpubp_same_precision`, its time over the fastest of
    gpubp's rows of that precision on the same shape (`goals.GPUBP_PEERS` for steps,
    `goals.GPUBP_KERNEL_PEERS` for kernels, `fused_runs.GPUBP_RUN_PEERS` for fused runs); per
    gpubp kernel row `frac_cublas`, the time of
    cuBLAS at its precision (`goals.CUBLAS_PEER`) over its own.  Only rows that `goals.counts`
    are references (a fast row whose check failed is no one's yardstick)."""
    from .fused_runs import GPUBP_RUN_PEERS
    from .goals import CUBLAS_PEER, GPUBP_KERNEL_PEERS, GPUBP_PEERS, counts, measured
    mine = {"step": GPUBP_PEERS, "kernel": GPUBP_KERNEL_PEERS, "run": GPUBP_RUN_PEERS}
    best, by_peer = {}, {}
    for r in rows:            # the references: rows that count, as for the goals
        if not counts(r) or r["kind"] not in mine or r["device"] != "cuda":
            continue
        key = _shape_key(r)
        by_peer[key + (r["peer"],)] = r["median_ms"]
        prec = r.get("precision")
        if r["peer"] in mine[r["kind"]].get(prec, ()):
            k = key + (prec,)
            best[k] = min(best.get(k, float("inf")), r["median_ms"])
    for r in rows:
        if not measured(r) or r["kind"] not in mine or r["device"] != "cuda":
            continue
        key, prec = _shape_key(r), r.get("precision")
        if key + (prec,) in best:
            r["speedup_gpubp_same_precision"] = r["median_ms"] / best[key + (prec,)]
        if r["kind"] == "kernel" and r["peer"] in mine["kernel"].get(prec, ()):
            ref = by_peer.get(key + (CUBLAS_PEER[prec],))
            if ref:
                r["frac_cublas"] = ref / r["median_ms"]

