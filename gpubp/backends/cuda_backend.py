"""The CUDA backend: CuPy device arrays and gpubp's own kernels.

Dense layers go to the fused GEMM kernels of `cuda_gemm` (kernels/gemm.cu),
runs of narrow layers to `cuda_fused` (float32, and TF32 for precision "tf32"),
with `tensor_core_gemms=True` (an opt-in, not yet verified on a GPU) the
per-layer GEMMs of "tf32", "bf16" and "3xtf32" plans to `cuda_gemm_tc`
(kernels/gemm_tc.cu), and with `hopper=True` as well the "tf32" and "bf16" forward and
input-gradient GEMMs (and the "bf16" weight gradient) on compute capability 9.0 to
`cuda_gemm_wgmma` (kernels/gemm_wgmma.cu: TMA and wgmma, built for sm_90a); the loss and the optimizer updates go to
`cuda_elementwise` (kernels/elementwise.cu).
Every method launches on CuPy's current stream and never waits for the device.
Temporaries (loss partials, split-K and fused-run workspaces, pointer tables)
live in the caller's `Scratch` (a step plan's), so with a plan a step allocates
nothing once each shape has been seen and can be captured in a CUDA graph.  The
backend itself holds only read-only things (its settings, the device's
attributes, the compiled kernels), so networks in several threads, each on its
own CuPy stream, can share it.
"""

from __future__ import annotations

import numpy as np

from ..activations import ACT_CODES
from ..precision import PRECISIONS, ROUNDED_STORAGE
from . import cubin_cache, cuda_fused, cuda_gemm, cuda_gemm_tc, cuda_gemm_wgmma, cuda_elementwise
from .cuda_device import compute_capability, device_id, load_kernels
from .base import Backend
from .plan import scratch_buffer

_INSTALL_HINT = "install gpubp[cuda12] or gpubp[cuda13] (CuPy for your CUDA version)"

# DLPack device types that live in device memory (kDLCUDA, kDLCUDAManaged)
_DLPACK_CUDA = (2, 13)


def _import_cupy():
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        raise RuntimeError(f"the cuda backend needs CuPy, which did not import ({e}); {_INSTALL_HINT}") from e
    return cupy


class CudaBackend(Backend):
    """Device arrays on the current CUDA device; see the module docstring."""

    name = "cuda"
    #: the fewest batch rows and consecutive narrow layers for which a run is fused
    FUSE_MIN_BATCH = 1024
    FUSE_MIN_LAYERS = 2
    #: the widest layer fused, per precision: on an H100 the width-128 run kernels (64-row tiles,
    #: one backward block per SM) were slower than the per-layer GEMMs in float32 and in TF32
    #: (benchmarks/results/h100-2026-11-22); they stay available through `cuda_fused`
    FUSE_MAX_WIDTH = {"float32": 64, "tf32": 64}

    #: modes that run only on the tensor-core GEMMs of `cuda_gemm_tc` (kernels/gemm_tc.cu)
    TENSOR_CORE_ONLY = ("bf16", "3xtf32")

    def __init__(self, fuse: bool = True, tile: str | None = None, tensor_core_gemms: bool = False,
                 hopper: bool = False):
        """`fuse=False` runs every layer through the per-layer GEMMs; `tile` forces one GEMM
        tile configuration (`cuda_gemm.TILES`; tests and tile benchmarks use it).

        `tensor_core_gemms=True` (off by default) runs the per-layer GEMMs of "tf32", "bf16"
        and "3xtf32" plans on the tensor-core GEMMs of `cuda_gemm_tc` (kernels/gemm_tc.cu,
        compute capability 8.0+), which compute what `gpubp.precision` emulates.  Those
        kernels have not yet been verified on a GPU: until they have, this is an explicit
        opt-in, and without it "bf16" and "3xtf32" are refused (`check_precision`) rather
        than run in float32.

        `hopper=True` (off by default; needs `tensor_core_gemms=True`) runs, on a device of
        compute capability 9.0 (H100, H200), the forward and input-gradient GEMMs of "tf32"
        and "bf16" plans on `cuda_gemm_wgmma` (TMA-fed wgmma kernels built for sm_90a, not
        yet verified on a GPU), and the weight gradient of "bf16" plans too; the weight
        gradient of "tf32", "3xtf32" and other devices stay on `cuda_gemm_tc`."""
        cupy = _import_cupy()
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # no driver, driver too old, ...
            raise RuntimeError(f"the cuda backend found no usable CUDA GPU ({e}); "
                               "check the NVIDIA driver, or use backend='numpy'") from e
        if n < 1:
            raise RuntimeError("the cuda backend found no CUDA GPU; use backend='numpy'")
        if hopper and not tensor_core_gemms:
            raise ValueError("hopper=True needs tensor_core_gemms=True (it replaces some of the "
                             "tensor-core GEMMs)")
        if tile is not None and tile not in cuda_gemm.TILES:
            raise ValueError(f"tile must be one of {cuda_gemm.TILES} or None, got {tile!r}")
        self.xp = cupy
        self._cupy = cupy
        #: fuse runs of narrow layers into whole-network kernels (see `_segments`)
        self.fuse = bool(fuse)
        self.tile = tile
        #: per-layer GEMMs of tf32 / bf16 / 3xtf32 plans on kernels/gemm_tc.cu (unverified: opt-in)
        self.tensor_core_gemms = bool(tensor_core_gemms)
        #: tf32 / bf16 forward and input-gradient GEMMs on kernels/gemm_wgmma.cu on sm_90 (unverified: opt-in)
        self.hopper = bool(hopper)

    def settings(self) -> dict:
        return {"fuse": self.fuse, "tile": self.tile, "tensor_core_gemms": self.tensor_core_gemms,
                "hopper": self.hopper}

    # ----------------------------------------------------------- helpers
    def _oom(self, e, shape, dtype):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return MemoryError(f"out of GPU memory allocating an array of shape {tuple(shape)} and dtype "
                           f"{np.dtype(dtype).name} ({nbytes:,} bytes) on device {device_id()}: {e}")


    def _same_device(self, arr, what="array"):
        cur = device_id()
        if arr.device.id != cur:
            raise ValueError(f"the {what} is on CUDA device {arr.device.id} but the current device is "
                             f"{cur}; move it (or select that device with cupy.cuda.Device({arr.device.id}))")

    def check_current(self, array, what):
        """Kernels launch on the current device and read `array` there: refuse one on another device
        (a network made on device 0 used under `cupy.cuda.Device(1)`)."""
        self._same_device(array, what)

    # ----------------------------------------------------------- arrays
    def _alloc(self, make, shape, dtype):
        try:
            return make(shape, dtype=dtype)
        except self._cupy.cuda.memory.OutOfMemoryError as e:
            raise self._oom(e, shape if isinstance(shape, tuple) else (shape,), dtype) from e

    def empty(self, shape, dtype):
        return self._alloc(self._cupy.empty, shape, dtype)

    def zeros(self, shape, dtype):
        return self._alloc(self._cupy.zeros, shape, dtype)

    def asarray(self, x, dtype):
        cupy = self._cupy
        dtype = np.dtype(dtype)
        # the CuPy test first: a stand-in device array type may subclass numpy's (the tests' fake)
        if isinstance(x, np.ndarray) and not isinstance(x, cupy.ndarray):
            return self._from_host(x, dtype)
        if not isinstance(x, cupy.ndarray):
            dev = self._wrap_device_object(x)
            if dev is None:        # a host object (list, scalar, CPU tensor): one copy to the device
                return self._from_host(np.asarray(x), dtype)
            x = dev
        self._same_device(x)
        if x.dtype == dtype and x.flags.c_contiguous:
            return x
        # the shape kept: CuPy's ascontiguousarray (as numpy's) makes a 0-d array 1-d
        return self._alloc(lambda shape, dtype: cupy.ascontiguousarray(x, dtype=dtype).reshape(shape), x.shape,
                           dtype)

    def _from_host(self, h: np.ndarray, dtype):
        h = np.ascontiguousarray(h, dtype=dtype)
        return self._alloc(lambda shape, dtype: self._cupy.asarray(h), h.shape, dtype)

    def _wrap_device_object(self, x):
        """A CuPy view of a device object (no copy), or None when `x` lives on the host."""
        cupy = self._cupy
        if hasattr(x, "__dlpack_device__"):
            try:
                dev_type, dev_id = x.__dlpack_device__()
            except Exception:
                dev_type, dev_id = None, None
            if dev_type is not None and int(dev_type) in _DLPACK_CUDA:
                cur = device_id()
                if int(dev_id) != cur:
                    raise ValueError(f"the array is on CUDA device {int(dev_id)} but the current device "
                                     f"is {cur}; move it (or select that device first)")
                try:
                    return cupy.from_dlpack(x)
                except Exception as e:
                    raise TypeError(f"could not take the {type(x).__name__} through DLPack ({e}); "
                                    "for a PyTorch tensor that requires grad, pass tensor.detach()") from e
            if dev_type is not None:
                return None            # a host DLPack object (CPU tensor)
        try:
            has_cai = hasattr(x, "__cuda_array_interface__")
        except Exception:
            has_cai = True
        if has_cai:
            try:
                return cupy.asarray(x)
            except Exception as e:
                raise TypeError(f"could not take the {type(x).__name__} through "
                                f"__cuda_array_interface__ ({e})") from e
        return None

    def to_numpy(self, a):
        cupy = self._cupy
        if isinstance(a, np.ndarray) and not isinstance(a, cupy.ndarray):
            return np.array(a, copy=True)
        return cupy.asnumpy(a if isinstance(a, cupy.ndarray) else cupy.asarray(a))   # a CUDA tensor: no copy first

    def free_memory(self):
        return int(self._cupy.cuda.Device().mem_info[0]) + int(self._cupy.get_default_memory_pool().free_bytes())

    def synchronize(self):
        self._cupy.cuda.get_current_stream().synchronize()

    def describe(self):
        cupy = self._cupy
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        cc = dev.compute_capability
        free, total = dev.mem_info
        return (f"cuda: {name} (device {dev.id}, compute capability {cc[:-1]}.{cc[-1]}, "
                f"{total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free), CuPy {cupy.__version__}")

    # ----------------------------------------------------------- forward
    def capture(self, fn):
        """Record `fn()`'s launches into a CUDA graph; the returned callable replays it.

        Capture runs on a side stream (the legacy default stream cannot be
        captured); replays go to the current stream, ordered after whatever
        was queued there (the copies of a new batch into the captured inputs).
        `fn` must have run once before, so that every kernel is compiled and
        every scratch buffer exists: capture fails on any allocation or sync.
        """
        cupy = self._cupy
        cupy.cuda.get_current_stream().synchronize()
        side = cupy.cuda.Stream(non_blocking=True)
        with side:
            side.begin_capture()
            try:
                fn()
            finally:
                graph = side.end_capture()
        return lambda: graph.launch(cupy.cuda.get_current_stream())

    def dense_forward(self, A_prev, W, b, activation, A_out, Z_out=None, scratch=None, precision="float32"):
        if precision == "float32":
            cuda_gemm.gemm_fwd(A_prev, W, b, ACT_CODES[activation], A_out, Z_out, tile=self.tile)
            return
        self._check_tensor_core_gemms(precision)
        if self._use_hopper(precision):
            cuda_gemm_wgmma.gemm_fwd(A_prev, W, b, ACT_CODES[activation], A_out, Z_out, precision=precision,
                                     scratch=scratch)
            return
        ws = self._tc_workspace(scratch, cuda_gemm_tc.fwd_scratch_size(A_prev.shape[0], W.shape[0], W.shape[1]))
        cuda_gemm_tc.gemm_fwd(A_prev, W, b, ACT_CODES[activation], A_out, Z_out, precision=precision, scratch=ws)

    def _use_hopper(self, precision) -> bool:
        """Whether the forward and input-gradient GEMMs of `precision` run on the Hopper kernels
        (`hopper=True`, sm_90)."""
        return self.hopper and precision in cuda_gemm_wgmma.PREC_CODES and cuda_gemm_wgmma.available()

    def _use_hopper_wgrad(self, precision) -> bool:
        """Whether the weight gradient of `precision` runs on the Hopper kernels too ("bf16": wgmma
        reads its batch-major operands transposed; "tf32" stays on `cuda_gemm_tc`)."""
        return self._use_hopper(precision) and precision in cuda_gemm_wgmma.WGRAD_PRECISIONS

    # ----------------------------------------------------------- loss
    def loss_and_delta(self, A_L, Z_L, Y, loss, activation, loss_out, delta_out=None, scratch=None,
                       precision="float32"):
        partials = scratch_buffer(scratch, "loss_partials", shape=(cuda_elementwise.MAX_PARTIALS,),
                                  dtype=np.float64, xp=self._cupy)
        cuda_elementwise.loss_and_delta(A_L, Z_L, Y, loss, ACT_CODES[activation], loss_out, delta_out, partials,
                                        bf16=precision in ROUNDED_STORAGE)

    # ----------------------------------------------------------- backward
    def dense_backward(self, delta, A_prev, W, dW_out, db_out,
                       delta_prev_out=None, prev_activation=None, Z_prev=None, scratch=None,
                       precision="float32"):
        if precision == "float32":
            cuda_gemm.gemm_bwd_weight(delta, A_prev, dW_out, db_out, scratch=scratch, tile=self.tile)
            if delta_prev_out is not None:
                cuda_gemm.gemm_bwd_data(delta, W, A_prev, Z_prev, ACT_CODES[prev_activation], delta_prev_out,
                                        tile=self.tile)
            return
        self._check_tensor_core_gemms(precision)
        M, N = delta.shape
        K = A_prev.shape[1]
        delta_copy = None   # the Hopper weight gradient's copy of delta, read again by the input gradient
        if self._use_hopper_wgrad(precision):
            delta_copy = cuda_gemm_wgmma.gemm_bwd_weight(delta, A_prev, dW_out, db_out, precision=precision,
                                                         scratch=scratch)
        else:
            ws = self._tc_workspace(scratch, cuda_gemm_tc.bwd_weight_scratch_size(M, N, K))
            cuda_gemm_tc.gemm_bwd_weight(delta, A_prev, dW_out, db_out, precision=precision, scratch=ws)
        if delta_prev_out is not None and self._use_hopper(precision):
            cuda_gemm_wgmma.gemm_bwd_data(delta, W, A_prev, Z_prev, ACT_CODES[prev_activation], delta_prev_out,
                                          precision=precision, scratch=scratch, delta_copy=delta_copy)
        elif delta_prev_out is not None:
            ws = self._tc_workspace(scratch, cuda_gemm_tc.bwd_data_scratch_size(M, N, K))
            cuda_gemm_tc.gemm_bwd_data(delta, W, A_prev, Z_prev, ACT_CODES[prev_activation], delta_prev_out,
                                       precision=precision, scratch=ws)

    @staticmethod
    def _tc_workspace(scratch, n):
        """The tensor-core GEMMs' split workspace of `n` floats from the plan's scratch (one key: the
        GEMMs of a step run one after another on one stream, so same-sized ones share it), or None
        (no split wanted, or no scratch: the launchers then run unsplit, correct and slower)."""
        return None if scratch is None or n == 0 else scratch.get("tc_splitk", (n,), np.float32)

    # ----------------------------------------------------------- precision modes
    @property
    def precisions(self):
        """The modes this backend runs: "float32" and "tf32", and with `tensor_core_gemms` all."""
        return PRECISIONS if self.tensor_core_gemms else ("float32", "tf32")

    def check_precision(self, precision):
        """Refuse "bf16" and "3xtf32" without `tensor_core_gemms` (they are never run in float32
        instead), and on a device below compute capability 8.0 (no such tensor cores)."""
        if precision in self.TENSOR_CORE_ONLY:
            self._check_tensor_core_gemms(precision)
        super().check_precision(precision)

    def _check_tensor_core_gemms(self, precision):
        if not self.tensor_core_gemms:
            raise ValueError(
                f"precision={precision!r} is not yet available on the cuda backend: its tensor-core GEMMs "
                "(kernels/gemm_tc.cu) have not been verified on a GPU yet. Use backend='numpy', which "
                "emulates the mode, or opt in to the unverified kernels with "
                "gpubp.backends.cuda_backend.CudaBackend(tensor_core_gemms=True)")
        if compute_capability() < 80:
            raise ValueError(f"precision={precision!r} needs tensor cores of compute capability 8.0 or "
                             f"newer on the cuda backend; this device is {compute_capability() / 10:.1f}")

    def layer_options(self, plan):
        """With `tensor_core_gemms`, the per-layer GEMMs get the plan's precision (as this device
        runs it, `_precision`); without, nothing: they run in float32, as for "float32" plans."""
        precision = self._precision(plan.precision)
        return {"precision": precision} if self.tensor_core_gemms and precision != "float32" else {}

    # ----------------------------------------------------------- whole network
    @staticmethod
    def _precision(precision):
        """`precision` as this device runs it: "tf32" needs the TF32 tensor-core kernels (compute
        capability 8.0+); elsewhere a tf32 plan computes in float32, as `Backend` documents."""
        return "float32" if precision == "tf32" and compute_capability() < 80 else precision

    def _segments(self, sizes, batch, dtype, precision="float32"):
        """Split layers 1..L of a network of `sizes` into runs `(first, last, fused)` (1-based, inclusive).

        A run is fused (`cuda_fused`: row tiles stay on chip across its layers)
        when `self.fuse` is on, the precision has fused kernels ("float32", "tf32"), the
        dtype is float32, the batch has at least
        `FUSE_MIN_BATCH` rows, and at least `FUSE_MIN_LAYERS` consecutive
        layers have every width <= `FUSE_MAX_WIDTH[precision]` and fit the device
        (`cuda_fused.fits_device`: the shared memory of the fused kernels); other
        layers go through the per-layer fused GEMMs.
        """
        L = len(sizes) - 1
        ok = [self.fuse and precision in self.FUSE_MAX_WIDTH and np.dtype(dtype) == np.float32 and
              batch >= self.FUSE_MIN_BATCH and
              cuda_fused.eligible(sizes[l:l + 2]) and max(sizes[l:l + 2]) <= self.FUSE_MAX_WIDTH[precision]
              and cuda_fused.fits_device(sizes[l:l + 2], precision)
              for l in range(L)]
        segs, l = [], 0
        while l < L:
            e = l
            while e + 1 < L and ok[e + 1] == ok[l]:
                e += 1
            fused = ok[l] and e - l + 1 >= self.FUSE_MIN_LAYERS
            if fused:
                segs.append((l + 1, e + 1, True))
            else:
                segs.extend((k + 1, k + 1, False) for k in range(l, e + 1))
            l = e + 1
        return segs

    def prepare(self, plan, loss):
        """Compile, in one go, the kernels a step of `plan` launches (forward, loss, backward,
        updates), so the first step does not stop at each new kernel."""
        wanted = {cuda_gemm.SPECS[0]: set(), cuda_fused.SPECS[0]: set(), cuda_elementwise.SPECS[0]: set(),
                  cuda_gemm_tc.SPECS[0]: set()}
        sizes, acts, dt, precision = plan.sizes, plan.activations, plan.dtype, self._precision(plan.precision)
        tc = self.layer_options(plan).get("precision")     # per-layer tensor-core GEMMs, or None
        hopper_module = False                               # the sm_90a cubin (all its kernels at once)
        for first, last, fused in self._segments(sizes, plan.batch, dt, precision):
            if fused:
                wanted[cuda_fused.SPECS[0]] |= cuda_fused.kernel_names(sizes[first - 1:last + 1], precision)
                continue
            l = first
            prev = ACT_CODES[acts[l - 2]] if l > 1 else (ACT_CODES["identity"] if plan.input_grad else None)
            if tc is not None:
                hopper = self._use_hopper(tc)     # forward and input gradient on the sm_90a cubin
                hopper_module |= hopper
                if self._use_hopper_wgrad(tc):    # the weight gradient too: gemm_tc's reduce at most
                    wanted[cuda_gemm_tc.SPECS[0]] |= cuda_gemm_wgmma.gemm_tc_kernel_names(
                        tc, plan.batch, sizes[l], sizes[l - 1])
                    continue
                wanted[cuda_gemm_tc.SPECS[0]] |= cuda_gemm_tc.kernel_names(
                    tc, plan.batch, sizes[l], sizes[l - 1], ACT_CODES[acts[l - 1]], None if hopper else prev,
                    forward=not hopper)
                continue
            wanted[cuda_gemm.SPECS[0]] |= cuda_gemm.kernel_names(dt, plan.batch, sizes[l], sizes[l - 1],
                                                                  ACT_CODES[acts[l - 1]], prev, self.tile)
        wanted[cuda_elementwise.SPECS[0]] |= cuda_elementwise.kernel_names(dt, loss, ACT_CODES[acts[-1]], sizes[-1])
        if plan.precision in ROUNDED_STORAGE:   # bf16: the delta-rounding loss kernels (weighted steps round after)
            wanted[cuda_elementwise.SPECS[0]] |= cuda_elementwise.kernel_names(dt, loss, ACT_CODES[acts[-1]],
                                                                               sizes[-1], bf16=True)
        load_kernels(wanted)
        if hopper_module:
            cubin_cache.load(cuda_gemm_wgmma.SPECS[0])

    def _run_input(self, plan, first):
        """The input array of a fused run starting at layer `first`.

        A fused run's pointer table holds its input's address; inside the network that is a
        plan buffer, but a run from layer 1 would see each new batch's address, and every new
        table costs an upload from the host (a synchronisation).  So layer 1's input is copied
        (on the device, in stream order) into a buffer the plan keeps, and the table stays the
        same.  The forward copies every time (a captured graph replays the copy); the backward
        copies only when the buffer does not hold a copy of this same input array already."""
        if first > 1:
            return plan.A[first - 1]
        buf = plan.scratch.get("fused_input", plan.A[0].shape, plan.A[0].dtype)
        src = plan.A[0]
        if buf.data.ptr != src.data.ptr:
            buf[...] = src
        return buf

    def _run_input_again(self, plan, first):
        """`_run_input` for the backward of the same step: the forward's copy, when it made one of
        this input array (same address), else a fresh copy."""
        if first > 1:
            return plan.A[first - 1]
        if plan.scratch.notes.get("fused_input_of") == plan.A[0].data.ptr:
            return plan.scratch.get("fused_input", plan.A[0].shape, plan.A[0].dtype)
        return self._run_input(plan, first)

    def network_forward(self, plan, layers):
        A, Z, acts, precision = plan.A, plan.Z, plan.activations, self._precision(plan.precision)
        opts = self.layer_options(plan)
        for first, last, fused in self._segments(plan.sizes, plan.batch, plan.dtype, precision):
            if not fused:
                W, b = layers[first - 1]
                self.dense_forward(A[first - 1], W, b, acts[first - 1], A[first], Z[first], scratch=plan.scratch,
                                   **opts)
                continue
            run = range(first - 1, last)     # 0-based layer indices of the run
            if first == 1:
                plan.scratch.notes["fused_input_of"] = plan.A[0].data.ptr
            cuda_fused.fused_forward(self._run_input(plan, first),
                                     [layers[i][0] for i in run], [layers[i][1] for i in run],
                                     [ACT_CODES[acts[i]] for i in run], [A[i + 1] for i in run],
                                     [Z[i + 1] for i in run], precision=precision, scratch=plan.scratch)

    def network_backward(self, plan, layers, grads, after_layer=None):
        A, Z, delta, acts, precision = plan.A, plan.Z, plan.delta, plan.activations, self._precision(plan.precision)
        for first, last, fused in reversed(self._segments(plan.sizes, plan.batch, plan.dtype, precision)):
            if not fused:
                self.layer_backward(plan, first, layers, grads)
            else:
                run = range(first - 1, last)
                if first > 1:      # the delta below the run, through the previous layer's g'
                    din, act_in, z_in = delta[first - 1], ACT_CODES[acts[first - 2]], Z[first - 1]
                elif plan.input_grad:   # dLoss/dX: the input has no activation
                    din, act_in, z_in = delta[0], ACT_CODES["identity"], None
                else:
                    din, act_in, z_in = None, None, None
                cuda_fused.fused_backward(
                    delta[last], [layers[i][0] for i in run], [ACT_CODES[acts[i]] for i in run],
                    self._run_input_again(plan, first),    # what the forward read
                    [A[i + 1] for i in run], [Z[i + 1] for i in run],
                    [grads[i][0] for i in run], [grads[i][1] for i in run],
                    delta_in_out=din, act_code_in=act_in, Z_in=z_in, precision=precision,
                    scratch=plan.scratch)
            if after_layer is not None:
                for l in range(last, first - 1, -1):
                    after_layer(l)

    # ----------------------------------------------------------- updates
    def sgd_update(self, params, grads, velocity, lr, momentum, weight_decay=0.0, nesterov=False, scratch=None):
        cuda_elementwise.sgd_update(params, grads, velocity, lr, momentum, weight_decay, nesterov)

    def adam_update(self, params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                    scratch=None):
        cuda_elementwise.adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled)
