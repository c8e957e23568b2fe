"""A CPU stand-in for the part of CuPy gpubp uses, checking every kernel launch against the CUDA source.

`FakeCupy()` is a module object to install as `sys.modules["cupy"]` (the
`fake` fixture of tests/test_cuda_launch_contract.py does that and undoes it).
Arrays are numpy arrays of a subclass, `fake.ndarray`, standing for device
memory of one H100-like device (sm_90, 132 SMs; `attributes=` makes it
another).  What it checks:

- Kernels (`RawModule(...).get_function(name)`): the signature of every
  `__global__` kernel is parsed from the module's source, templates included
  (`name`'s template arguments are mapped onto the template parameters, so `T`
  becomes float or double).  A launch `f(grid, block, args, shared_mem=...)`
  must name one of the module's `name_expressions`, pass as many arguments as
  the kernel has parameters, each of exactly its C type (a pointer: a
  C-contiguous device array of the pointee's dtype; `int`: numpy.int32;
  `long long`/`int64_t`/`size_t`: numpy.int64; `float`: numpy.float32;
  `double`: numpy.float64; `bool`: numpy.bool_), a grid and block of 1 to 3
  positive ints within the device's limits (`attributes`' MaxGridDim*, MaxBlockDim*,
  MaxThreadsPerBlock: an H100's 2^31-1 x 65535 x 65535 blocks, 1024 threads) and <= the
  kernel's `__launch_bounds__`, and dynamic shared memory within the
  kernel's `max_dynamic_shared_size_bytes` (48 KB unless raised) and the
  device's opt-in limit; per-kernel `extents` rules (given by the test) say how
  many elements each pointer must hold for the launch's sizes, and may follow
  pointers kept in device memory (`memory_at`).  A violation raises `LaunchError`.  Kernels write
  nothing (arrays start zeroed).  Every launch is recorded in `fake.launches`.
- Compilation: the name expressions of every `RawModule` made are listed in
  `fake.compiled` (a module is compiled when it is made).  `RawModule(path=cubin)` reads
  the source and the lowered kernel names from `<base>.cu` and `<base>.json` beside the
  cubin (as gpubp's cubin cache writes them) and checks launches against that source.
- Structs passed by value (`const __grid_constant__ TensorMap128 map`, `STRUCT_BYTES`)
  must be 1-element host numpy arrays of the struct's size.
- Memory: every new device buffer (factory functions, copies, results of
  array operations; not views) counts in `fake.allocations`.
- Streams and graphs: between `stream.begin_capture()` and `end_capture()`
  launches are recorded into the graph (not run), in-place array operations
  too, and an allocation, a host synchronisation, a device-to-host copy or a
  launch on another stream raises `CaptureError`, as it would break a real
  capture.  `graph.launch(stream)` replays the recorded launches (recorded
  again, with `replay=True`) and in-place operations.
- Mixing a host numpy array into a device array operation raises TypeError, as
  CuPy does.
- TMA tensor maps: `fake.driver` (`TensorMapDriver`) stands for cuda.bindings.driver's
  `cuTensorMapEncodeTiled`, checking its arguments as the driver API documents and writing the
  emulator's own description of the tensor into the map's 128 bytes.

Known gaps: a device array *is* a numpy array here, so code that tests
`isinstance(x, numpy.ndarray)` or calls `numpy.asarray(x)` on it takes its
host path without complaint (CuPy would refuse the implicit conversion), and
gpubp's `CudaBackend.asarray` copies a device array it would pass through;
what kernels compute is not simulated unless `execute=True`, which runs every
launch through the CPU emulator of tests/support/cuda_emu (slow: small sizes only).
"""

from __future__ import annotations

import enum
import importlib.machinery
import os
import re
import sys
import threading
import types
import weakref
from dataclasses import dataclass, field

import numpy as np

from .cuda_text import match_close, split_top, strip_comments

#: device attributes of an H100 SXM (sm_90), as CuPy's `Device.attributes` names them
H100_ATTRIBUTES = {
    "MultiProcessorCount": 132,
    "MaxSharedMemoryPerBlock": 48 * 1024,
    "MaxSharedMemoryPerBlockOptin": 227 * 1024,
    "MaxSharedMemoryPerMultiprocessor": 228 * 1024,
    "MaxRegistersPerMultiprocessor": 65536,
    "MaxRegistersPerBlock": 65536,
    "MaxThreadsPerMultiProcessor": 2048,
    "MaxThreadsPerBlock": 1024,
    "MaxBlockDimX": 1024, "MaxBlockDimY": 1024, "MaxBlockDimZ": 64,
    "MaxGridDimX": 2**31 - 1, "MaxGridDimY": 65535, "MaxGridDimZ": 65535,
    "WarpSize": 32,
    "ComputeCapabilityMajor": 9,
    "ComputeCapabilityMinor": 0,
}
DEFAULT_DYNAMIC_SMEM = 48 * 1024
MEM_TOTAL = 80 * 2**30

#: C scalar types -> the numpy scalar type a launch must pass
SCALAR_TYPES = {"int": np.int32, "unsigned int": np.uint32, "long long": np.int64, "int64_t": np.int64,
                "long long int": np.int64, "size_t": np.uint64, "unsigned long long": np.uint64,
                "float": np.float32, "double": np.float64, "bool": np.bool_}
#: C pointee types -> the dtype of the device array a launch must pass
POINTEE_DTYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64,
                  "int64_t": np.int64, "unsigned int": np.uint32, "bool": np.bool_,
                  "unsigned char": np.uint8, "char": np.int8, "unsigned short": np.uint16}
#: structs passed by value (`const __grid_constant__ T p`) -> their size in bytes; a launch passes a
#: 1-element host numpy array of that itemsize (CuPy passes such an array's bytes by value)
STRUCT_BYTES = {"TensorMap128": 128}
#: pointers gpubp's launchers pass as placeholders that the kernel never reads, by (kernel, parameter):
#: a predicate of the launch's template arguments (FakeCupy's `unread_pointers`)
UNREAD_POINTERS = {
    # without class labels the targets are dense (Yp); `labels` gets a placeholder
    ("ce_loss_delta", "labels"): lambda t: t["LABELS"] == "false",
}


class LaunchError(AssertionError):
    """A kernel launch that breaks the kernel's contract (arguments, grid, shared memory)."""


class CaptureError(RuntimeError):
    """Something that would make a real CUDA stream capture fail."""


# ---------------------------------------------------------------------------- CUDA source parsing
@dataclass
class KernelSignature:
    """A `__global__` kernel: template parameters [(kind, name)], parameters [(C type, name)]."""

    name: str
    template: list = field(default_factory=list)
    params: list = field(default_factory=list)
    max_threads: int | None = None      # __launch_bounds__'s first argument, when a constant
    min_blocks: str | None = None
    #: default template arguments, by parameter name (`bool BF16 = false`): a name expression
    #: may leave the trailing defaulted ones out, as C++ allows
    template_defaults: dict = field(default_factory=dict)


def parse_kernels(source: str) -> dict[str, KernelSignature]:
    """Every `__global__` kernel of `source`, by name."""
    src = strip_comments(source)
    macros = {m.group(1): m.group(2)
              for m in re.finditer(r"^\s*#define\s+(\w+)\s+\(?(\w+)\)?\s*$", src, flags=re.M)}

    def constant(token):
        for _ in range(8):              # follow aliases: #define A B, #define B 256
            if token.isdigit():
                return int(token)
            token = macros.get(token, "")
        return None

    kernels = {}
    for m in re.finditer(r"\b__global__\b", src):
        head = src[:m.start()].rstrip()
        tm = re.search(r"template\s*<([^<>]*)>$", head)
        template, defaults = [], {}
        if tm:
            for p in split_top(tm.group(1)):
                p, _, default = p.partition("=")
                kind, pname = p.rsplit(None, 1)
                template.append(("typename" if kind in ("typename", "class") else kind, pname))
                if default.strip():
                    defaults[pname] = default.strip()
        i = m.end()
        rest = src[i:]
        vm = re.match(r"\s*void\s*", rest)
        assert vm, f"__global__ without void at {src[i:i + 60]!r}"
        i += vm.end()
        max_threads = min_blocks = None
        if src.startswith("__launch_bounds__", i):
            j = src.index("(", i)
            end = match_close(src, j)
            bounds = split_top(src[j + 1:end - 1])
            first = bounds[0].strip()
            max_threads = constant(first)
            min_blocks = bounds[1] if len(bounds) > 1 else None
            i = end
        nm = re.match(r"\s*(\w+)\s*", src[i:])
        name = nm.group(1)
        i += nm.end()
        end = match_close(src, i)
        params = []
        for p in split_top(src[i + 1:end - 1]):
            p = re.sub(r"\b(__restrict__|__restrict|const|volatile|__grid_constant__)\b", " ", p)
            pm = re.match(r"\s*(.*?)\s*(\**)\s*(\w+)\s*$", p)
            ctype = " ".join(pm.group(1).split()) + pm.group(2)
            params.append((ctype, pm.group(3)))
        kernels[name] = KernelSignature(name, template, params, max_threads, min_blocks, defaults)
    return kernels


def split_name_expression(expr: str) -> tuple[str, list[str]]:
    """`"gemm_fwd<float, 3, 4>"` -> `("gemm_fwd", ["float", "3", "4"])`."""
    m = re.fullmatch(r"\s*(\w+)\s*(?:<(.*)>)?\s*", expr)
    if not m:
        raise LaunchError(f"cannot read the kernel name expression {expr!r}")
    return m.group(1), split_top(m.group(2)) if m.group(2) is not None else []


def _normalise(expr: str) -> str:
    return re.sub(r"\s+", "", expr)


# ---------------------------------------------------------------------------- the fake module
@dataclass
class Launch:
    """One recorded kernel launch."""

    name: str                 # the name expression, e.g. "gemm_fwd<float, 3, 4>"
    kernel: str               # the kernel, e.g. "gemm_fwd"
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int
    stream: object
    replay: bool = False      # run by a graph replay
    captured: bool = False    # recorded into a graph being captured (not run then)

    def arg(self, pname: str):
        return self.args[[p for _, p in self.signature.params].index(pname)]

    signature: KernelSignature | None = None
    module: object = None     # the RawModule it came from (its `emu` runs it when executing)

    def run(self):
        """Compute the launch on the CPU (FakeCupy(execute=True)): see tests/support/cuda_emu."""
        self.module.emu.launch(self.name, self.grid, self.block, self.args, self.shared_mem)


class FakeCupy(types.ModuleType):
    """A `cupy` module backed by numpy; see the module docstring.

    `attributes` replaces some of the H100's (`H100_ATTRIBUTES`) to stand for another
    device, called `name`.  `unread_pointers` maps `(kernel, parameter)` to a predicate of the launch's
    template arguments (a dict) that is true when the kernel never dereferences
    that pointer: such a pointer may be any device array (launchers pass a
    placeholder there).  `extents` maps a kernel to `rule(p, t, grid)`, given the
    launch's arguments by parameter name (`p`, scalars as Python numbers), its
    template arguments (`t`), grid and this module (for `memory_at`, to follow
    pointers held in device memory): it returns `{parameter: least number of
    elements}` the kernel may touch (each pointer argument must hold that many),
    and may assert more (e.g. that the grid covers the output).
    """

    def __init__(self, unread_pointers=None, extents=None, attributes=None, name="NVIDIA H100 80GB HBM3",
                 execute=False, race=None, devices=1):
        super().__init__("cupy")
        # a module spec as an imported package has one: importlib.util.find_spec("cupy") (tests that
        # ask whether CuPy is installed) raises ValueError on a sys.modules entry whose __spec__ is None
        self.__spec__ = importlib.machinery.ModuleSpec("cupy", None, is_package=True)
        #: how many devices `cupy.cuda.runtime.getDeviceCount()` reports (CUDA_VISIBLE_DEVICES, when
        #: set, can only lower it); every device shares this process's memory, and the current one
        #: (`Device(i).use()`) is what device arrays report; as in CUDA it is per host thread, and a
        #: thread starts on device 0
        self.devices = int(devices)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            self.devices = min(self.devices, len([d for d in visible.split(",") if d.strip()]))
        self._device_of_thread = threading.local()
        #: run every launch on the CPU through tests/support/cuda_emu (kernels compute) instead of
        #: only checking it; captured launches run when their graph is launched
        self.execute = bool(execute)
        #: with execute: also check every launch for memory hazards (cuda_emu's race.h; slow);
        #: None: GPUBP_EMU_RACE=1 decides
        self.race = race
        self.device_name = f"{name} (fake)"
        self.__version__ = "13.0.0+fake"
        self.launches: list[Launch] = []
        self.allocations = 0
        self.allocated_bytes = 0
        self.allocation_sites: list[str] = []   # where each counted allocation was made (gpubp's frames)
        self.compiled: list[str] = []           # name expressions of every RawModule made, in order
        self._live: dict = {}                   # start address -> weakref to the device array owning it
        self.unread_pointers = dict(unread_pointers or {})
        self.extents = dict(extents or {})
        self.attributes = dict(H100_ATTRIBUTES, **(attributes or {}))
        self._capturing = []          # streams capturing now
        self._streams = threading.local()   # the current stream is per host thread, as in CuPy
        self.ndarray = _make_ndarray_class(self)
        self.cuda = _make_cuda(self)
        self.random = _make_random(self)
        #: stand-in for cuda.bindings.driver's tensor maps (TMA), for the emulated Hopper kernels
        self.driver = TensorMapDriver(self)
        for name in ("float16", "float32", "float64", "int8", "int32", "int64", "uint8", "uint32", "uint64",
                     "bool_", "dtype", "newaxis", "nan", "inf", "pi", "e"):
            setattr(self, name, getattr(np, name))
        for name in ("isfinite", "isnan", "isinf", "log", "exp", "expm1", "log1p", "abs", "maximum", "minimum",
                     "sqrt", "tanh", "negative", "add", "subtract", "multiply", "divide"):
            setattr(self, name, self._device_ufunc(getattr(np, name)))
        for name in ("take", "take_along_axis", "concatenate", "stack", "where", "sum", "argmax",
                     "zeros_like", "ones_like", "copy"):
            setattr(self, name, self._device_function(getattr(np, name)))

    @property
    def current_device(self) -> int:
        """This host thread's current device (cudaSetDevice is per thread; 0 until one is made current)."""
        return getattr(self._device_of_thread, "id", 0)

    @current_device.setter
    def current_device(self, device):
        self._device_of_thread.id = int(device)

    # ------------------------------------------------------------------ bookkeeping
    def reset(self):
        """Forget the recorded launches and allocation counts."""
        self.launches.clear()
        self.allocations = 0
        self.allocated_bytes = 0
        self.allocation_sites.clear()

    def launched(self, kernel=None, replay=None) -> list[Launch]:
        """The recorded launches (of `kernel`, by kernel name or name expression; replays or not)."""
        out = self.launches
        if kernel is not None:
            out = [l for l in out if kernel in (l.kernel, l.name)]
        if replay is not None:
            out = [l for l in out if l.replay == replay]
        return out

    def kernel_names(self) -> set[str]:
        return {l.kernel for l in self.launches}

    def _on_alloc(self, arr):
        if self._capturing:
            raise CaptureError(f"device allocation of {arr.shape} {arr.dtype} during a CUDA graph capture")
        self.allocations += 1
        self.allocated_bytes += int(arr.nbytes)
        self.allocation_sites.append(_caller())
        self._live[arr.__array_interface__["data"][0]] = weakref.ref(arr)

    def memory_at(self, ptr: int, nbytes: int):
        """The live device array whose memory holds bytes [ptr, ptr + nbytes), or None."""
        found = None
        for start, ref in list(self._live.items()):
            a = ref()
            if a is None:
                del self._live[start]
            elif start <= ptr and ptr + nbytes <= start + a.nbytes:
                found = a
        return found

    def _no_sync(self, what):
        if self._capturing:
            raise CaptureError(f"{what} during a CUDA graph capture")

    @property
    def _stream_stack(self):
        """This host thread's stack of streams made current (`with stream:`, `stream.use()`)."""
        stack = getattr(self._streams, "stack", None)
        if stack is None:
            stack = self._streams.stack = []
        return stack

    def current_stream(self):
        return self._stream_stack[-1] if self._stream_stack else self.cuda.Stream.null

    # ------------------------------------------------------------------ arrays
    def _check_device_args(self, args, what):
        for a in args:
            if isinstance(a, (list, tuple)):
                self._check_device_args(a, what)
            elif isinstance(a, np.ndarray) and not isinstance(a, self.ndarray):
                raise TypeError(f"cupy.{what}: unsupported type {type(a)} (a host numpy array)")

    def _to_device(self, host: np.ndarray):
        """A new device array holding a copy of `host`."""
        out = self.ndarray(host.shape, host.dtype)
        out.view(np.ndarray)[...] = host
        return out

    def _wrap(self, result):
        if isinstance(result, self.ndarray) and result.flags.owndata:
            return result
        if isinstance(result, np.ndarray):
            return self._to_device(np.asarray(result))
        if isinstance(result, tuple):
            return tuple(self._wrap(r) for r in result)
        return result

    def _device_function(self, fn):
        def call(*args, **kwargs):
            self._check_device_args(args, fn.__name__)
            self._no_sync(f"cupy.{fn.__name__}")
            plain = [a.view(np.ndarray) if isinstance(a, self.ndarray) else
                     [x.view(np.ndarray) if isinstance(x, self.ndarray) else x for x in a]
                     if isinstance(a, (list, tuple)) else a for a in args]
            return self._wrap(fn(*plain, **kwargs))

        call.__name__ = fn.__name__
        return call

    def _device_ufunc(self, uf):
        def call(*args, **kwargs):
            self._check_device_args(args, uf.__name__)
            if not any(isinstance(a, self.ndarray) for a in args):
                raise TypeError(f"cupy.{uf.__name__}: no device array among the arguments")
            return uf(*args, **kwargs)

        call.__name__ = uf.__name__
        return call

    def _new(self, shape, dtype, fill=0):
        out = self.ndarray(shape, np.dtype(dtype) if dtype is not None else np.float64)
        out.view(np.ndarray).fill(fill)
        return out

    def empty(self, shape, dtype=float, order="C"):
        """Checking launches only: zeroed, so unwritten outputs read 0.  With `execute`: every byte
        0xFF (NaN in floats, -1 in ints), as stale memory from CuPy's pool would be garbage: a kernel
        or launcher that reads memory nothing wrote shows up in the results, as initcheck would say."""
        out = self._new(shape, dtype)
        if self.execute:
            out.view(np.ndarray).reshape(-1).view(np.uint8).fill(0xFF)
        return out

    def empty_like(self, a, dtype=None, order="K", subok=None, shape=None):
        return self.empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)

    def zeros(self, shape, dtype=float, order="C"):
        return self._new(shape, dtype)

    def ones(self, shape, dtype=float):
        return self._new(shape, dtype, 1)

    def full(self, shape, fill_value, dtype=None):
        return self._new(shape, dtype if dtype is not None else np.asarray(fill_value).dtype, fill_value)

    def arange(self, *args, dtype=None):
        return self._to_device(np.arange(*args, dtype=dtype))

    def asarray(self, a, dtype=None, order=None):
        if isinstance(a, self.ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        self._no_sync("a host-to-device copy")
        if isinstance(a, self.ndarray):
            return a.astype(dtype)
        cai = getattr(a, "__cuda_array_interface__", None)
        if cai is not None:
            # CuPy wraps a __cuda_array_interface__ object's memory without a copy; here that
            # memory must be one of this fake's live device arrays
            v = self._device_view(cai["data"][0], cai["shape"], cai["typestr"], cai.get("strides"))
            if v is None:
                raise TypeError(f"the fake cupy takes no foreign device objects ({type(a).__name__}): its "
                                "__cuda_array_interface__ points outside the fake's device arrays")
            return v if dtype is None or np.dtype(dtype) == v.dtype else v.astype(dtype)
        if hasattr(a, "__dlpack_device__") and getattr(a, "__dlpack_device__")()[0] in (2, 13):
            raise TypeError(f"the fake cupy takes no foreign device objects ({type(a).__name__})")
        return self._to_device(np.asarray(a, dtype=dtype))

    def _device_view(self, ptr, shape, typestr, strides=None):
        """A view (no copy, no allocation counted) of the live device array memory at `ptr` with
        `shape`, dtype `typestr` and byte `strides` (None: C-contiguous), or None when that memory
        is not inside one of this fake's device arrays."""
        dtype, shape = np.dtype(typestr), tuple(int(n) for n in shape)
        if strides is None:
            strides = tuple(int(dtype.itemsize * np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
        lo = hi = 0
        for n, st in zip(shape, strides):
            if n == 0:
                lo = hi = 0
                break
            lo, hi = (lo + (n - 1) * st, hi) if st < 0 else (lo, hi + (n - 1) * st)
        owner = self.memory_at(ptr + lo, hi - lo + dtype.itemsize)
        if owner is None:
            return None
        return self.ndarray(shape, dtype, buffer=owner, offset=ptr - owner.__array_interface__["data"][0],
                            strides=strides)

    array = asarray

    def ascontiguousarray(self, a, dtype=None):
        if isinstance(a, self.ndarray) and a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        if not isinstance(a, self.ndarray):
            raise TypeError("cupy.ascontiguousarray takes a device array")
        return self._to_device(np.ascontiguousarray(a.view(np.ndarray), dtype=dtype))

    def asfortranarray(self, a, dtype=None):
        """A Fortran-ordered device copy of the device array `a` (as CuPy's: no copy when it is one)."""
        if not isinstance(a, self.ndarray):
            raise TypeError("cupy.asfortranarray takes a device array")
        if a.flags.f_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        self._no_sync("cupy.asfortranarray")
        host = np.asfortranarray(a.view(np.ndarray), dtype=dtype)
        out = self.ndarray(host.shape, host.dtype, order="F")
        out.view(np.ndarray)[...] = host
        return out

    def asnumpy(self, a, stream=None):
        self._no_sync("a device-to-host copy (cupy.asnumpy)")
        if isinstance(a, self.ndarray):
            return np.array(a.view(np.ndarray), copy=True)
        return np.asarray(a)

    def from_dlpack(self, x):
        """As CuPy's: a CUDA producer's memory without a copy.  Here a capsule of this fake's
        device memory (a device array's, or a wrapper's passing it on) gives a view of that array;
        any other capsule (a host array's standing for a foreign CUDA tensor) is copied in."""
        cap = x.__dlpack__()

        class _Host:                    # numpy reads the capsule as the host memory it is here
            def __dlpack__(self, *args, **kwargs):
                return cap

            def __dlpack_device__(self):
                return (1, 0)

        h = np.from_dlpack(_Host())
        i = h.__array_interface__
        v = self._device_view(i["data"][0], h.shape, h.dtype.str, h.strides) if h.size else None
        return v if v is not None else self._to_device(h)

    def get_default_memory_pool(self):
        fake = self
        return types.SimpleNamespace(free_bytes=lambda: 0, used_bytes=lambda: fake.allocated_bytes,
                                     total_bytes=lambda: fake.allocated_bytes, free_all_blocks=lambda: None)

    def get_default_pinned_memory_pool(self):
        return types.SimpleNamespace(free_all_blocks=lambda: None, n_free_blocks=lambda: 0)

    # ------------------------------------------------------------------ kernels
    def RawModule(self, code=None, *, path=None, options=(), name_expressions=None, backend="nvrtc", **kwargs):
        if kwargs:
            raise TypeError(f"the fake RawModule takes no {sorted(kwargs)}")
        if path is not None:
            return CubinModule(self, path)
        return RawModule(self, code, options, name_expressions)

    def _launch(self, fn, grid, block, args, shared_mem=0, stream=None):
        sig, targs = fn.signature, fn.template_args
        where = fn.name
        a = self.attributes           # the device's limits (an H100's unless the test made another)
        _check_dims(grid, "grid", where, (a["MaxGridDimX"], a["MaxGridDimY"], a["MaxGridDimZ"]))
        _check_dims(block, "block", where, (a["MaxBlockDimX"], a["MaxBlockDimY"], a["MaxBlockDimZ"]))
        threads = int(np.prod([int(b) for b in block]))
        if threads > a["MaxThreadsPerBlock"]:
            raise LaunchError(f"{where}: {threads} threads a block (at most {a['MaxThreadsPerBlock']})")
        if sig.max_threads is not None and threads > sig.max_threads:
            raise LaunchError(f"{where}: {threads} threads a block, __launch_bounds__ allows {sig.max_threads}")
        if not isinstance(shared_mem, (int, np.integer)) or isinstance(shared_mem, bool) or shared_mem < 0:
            raise LaunchError(f"{where}: shared_mem must be a non-negative int, got {shared_mem!r}")
        if shared_mem > fn.max_dynamic_shared_size_bytes:
            raise LaunchError(f"{where}: {shared_mem} bytes of dynamic shared memory, but the kernel's "
                              f"max_dynamic_shared_size_bytes is {fn.max_dynamic_shared_size_bytes}")
        if shared_mem > self.attributes["MaxSharedMemoryPerBlockOptin"]:
            raise LaunchError(f"{where}: {shared_mem} bytes of dynamic shared memory exceed the device's opt-in")
        if not isinstance(args, tuple):
            raise LaunchError(f"{where}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(sig.params):
            raise LaunchError(f"{where}: {len(args)} arguments for {len(sig.params)} parameters "
                              f"({', '.join(f'{t} {n}' for t, n in sig.params)})")
        for k, (arg, (ctype, pname)) in enumerate(zip(args, sig.params)):
            self._check_arg(where, k, pname, _substitute(ctype, targs), arg,
                            unread=self._unread(sig.name, pname, targs))
        rule = self.extents.get(sig.name)
        if rule is not None:
            self._check_extents(where, rule, sig, targs, args, tuple(int(g) for g in grid) + (1,) * (3 - len(grid)))
        stream = stream if stream is not None else self.current_stream()
        launch = Launch(fn.name, sig.name, tuple(int(g) for g in grid), tuple(int(b) for b in block), args,
                        int(shared_mem), stream, signature=sig, module=fn.module)
        if self._capturing:
            if stream not in self._capturing:
                raise CaptureError(f"{where} launched on a stream that is not capturing, during a capture")
            launch.captured = True
            stream._graph_ops.append(launch)
        self.launches.append(launch)
        if self.execute and not self._capturing:
            launch.run()

    def _check_extents(self, where, rule, sig, targs, args, grid):
        p = types.SimpleNamespace(**{n: a.item() if isinstance(a, np.generic) else a
                                     for a, (_, n) in zip(args, sig.params)})
        try:
            need = rule(p, targs, grid, self)
        except AssertionError as e:
            raise LaunchError(f"{where}: {e}") from None
        for pname, n in need.items():
            arr = getattr(p, pname)
            if arr.size < n:
                raise LaunchError(f"{where}: {pname} holds {arr.size} elements, the launch reaches {n}")

    def _unread(self, kernel, pname, targs) -> bool:
        rule = self.unread_pointers.get((kernel, pname))
        return bool(rule and rule(targs))

    def _check_arg(self, where, k, pname, ctype, arg, unread=False):
        what = f"{where}: argument {k} ({ctype} {pname})"
        if ctype.endswith("*"):
            pointee = ctype[:-1].strip()
            want = POINTEE_DTYPES.get(pointee)
            if want is None:
                raise LaunchError(f"{what}: the fake knows no pointee type {pointee!r}")
            if not isinstance(arg, self.ndarray):
                raise LaunchError(f"{what}: expected a device array, got {type(arg).__name__}")
            if arg.dtype != np.dtype(want) and not unread:
                raise LaunchError(f"{what}: expected a {np.dtype(want).name} array, got {arg.dtype}")
            if not arg.flags.c_contiguous:
                raise LaunchError(f"{what}: the array is not C-contiguous (a raw pointer ignores strides)")
            return
        if ctype in STRUCT_BYTES:
            if isinstance(arg, self.ndarray) or not isinstance(arg, np.ndarray):
                raise LaunchError(f"{what}: expected a 1-element host numpy array holding the struct, "
                                  f"got {type(arg).__name__}")
            if arg.size != 1 or arg.dtype.itemsize != STRUCT_BYTES[ctype]:
                raise LaunchError(f"{what}: expected one {STRUCT_BYTES[ctype]}-byte element, got {arg.size} "
                                  f"of {arg.dtype.itemsize} bytes")
            return
        want = SCALAR_TYPES.get(ctype)
        if want is None:
            raise LaunchError(f"{what}: the fake knows no scalar type {ctype!r}")
        if type(arg) is not want:
            raise LaunchError(f"{what}: expected numpy.{want.__name__}, got {type(arg).__name__} {arg!r}")


def _caller() -> str:
    """The innermost four gpubp frames on the stack (`file:line function < ...`), or the caller."""
    frame, sites, first = sys._getframe(2), [], None
    while frame is not None and len(sites) < 4:
        path = frame.f_code.co_filename.replace(os.sep, "/")
        where = f"{os.path.basename(path)}:{frame.f_lineno} {frame.f_code.co_name}"
        if "/gpubp/" in path and "/tests/" not in path and frame.f_code.co_name != "<lambda>":
            sites.append(where)
        elif first is None and not path.endswith("fake_cupy.py"):
            first = where
        frame = frame.f_back
    return " < ".join(sites) or first or "?"


def _check_dims(dims, what, where, limits):
    if not isinstance(dims, tuple) or not 1 <= len(dims) <= 3:
        raise LaunchError(f"{where}: {what} must be a tuple of 1 to 3 ints, got {dims!r}")
    for d, lim in zip(dims, limits):
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= int(d) <= lim:
            raise LaunchError(f"{where}: {what} {dims!r} has {d!r}, not an int in 1..{lim}")


def _substitute(ctype: str, targs: dict) -> str:
    """`T*` with T = float -> `float*`."""
    base, stars = ctype.rstrip("*"), ctype[len(ctype.rstrip("*")):]
    return str(targs.get(base, base)) + stars


class RawModule:
    def __init__(self, fake, code, options, name_expressions):
        if not isinstance(code, str):
            raise TypeError("the fake RawModule needs the source as code=")
        self._fake = fake
        self.code, self.options = code, tuple(options)
        self.name_expressions = None if name_expressions is None else list(name_expressions)
        self.kernels = parse_kernels(code)
        for expr in self.name_expressions or ():
            self._resolve(expr)       # every instantiation names a kernel with matching template arity
        fake.compiled.extend(self.name_expressions or self.kernels)
        self.emu = None
        if fake.execute:
            from . import cuda_emu

            names = self.name_expressions or [k for k, sig in self.kernels.items() if not sig.template]
            self.emu = cuda_emu.build_source(code, names, tag="fake", race=fake.race)

    def _resolve(self, expr):
        kernel, args = split_name_expression(expr)
        sig = self.kernels.get(kernel)
        if sig is None:
            raise LaunchError(f"{expr}: no __global__ kernel {kernel!r} in the module")
        args = list(args)
        for _, pname in sig.template[len(args):]:
            if pname not in sig.template_defaults:
                break
            args.append(sig.template_defaults[pname])       # trailing defaulted parameters
        if len(args) != len(sig.template):
            raise LaunchError(f"{expr}: {len(args)} template arguments for {len(sig.template)} parameters")
        targs = {}
        for a, (kind, pname) in zip(args, sig.template):
            if kind == "typename" and a not in POINTEE_DTYPES:
                raise LaunchError(f"{expr}: template type {pname} = {a!r} is not a known type")
            if kind == "int" and not re.fullmatch(r"-?\d+", a):
                raise LaunchError(f"{expr}: template int {pname} = {a!r}")
            if kind == "bool" and a not in ("true", "false"):
                raise LaunchError(f"{expr}: template bool {pname} = {a!r}")
            targs[pname] = int(a) if kind == "int" else a
        return sig, targs

    def get_function(self, name):
        if self.name_expressions is not None:
            if _normalise(name) not in {_normalise(e) for e in self.name_expressions}:
                raise LaunchError(f"{name!r} is not among the module's name_expressions")
            sig, targs = self._resolve(name)
        else:
            sig, targs = self.kernels.get(name), {}
            if sig is None or sig.template:
                raise LaunchError(f"{name!r} is not a non-template kernel of the module")
        return Function(self._fake, name, sig, targs, module=self)


class CubinModule(RawModule):
    """`cupy.RawModule(path=cubin)`: the fake reads the source built into the cubin from `<base>.cu`
    and the kernels' lowered names (by name expression) from `<base>.json` beside it (as
    gpubp.backends.cubin_cache writes them); `get_function` takes a lowered name, as CuPy's does
    for a cubin."""

    def __init__(self, fake, path):
        import json

        base = str(path)[:-len(".cubin")] if str(path).endswith(".cubin") else None
        if base is None or not os.path.isfile(str(path)):
            raise LaunchError(f"RawModule(path={path!r}): no such cubin")
        with open(base + ".cu") as f:
            code = f.read()
        with open(base + ".json") as f:
            self.lowered = json.load(f)["lowered"]
        super().__init__(fake, code, (), list(self.lowered))
        self.path = str(path)

    def get_function(self, name):
        by_lowered = {v: k for k, v in self.lowered.items()}
        if name not in by_lowered:
            raise LaunchError(f"{name!r} is not a lowered name of a kernel of {self.path}")
        return super().get_function(by_lowered[name])


class Function:
    """A fake `cupy.RawKernel`: checks and records launches, computes nothing."""

    def __init__(self, fake, name, signature, template_args, module=None):
        self._fake = fake
        self.module = module
        self.name, self.signature, self.template_args = name, signature, template_args
        self._max_dyn = DEFAULT_DYNAMIC_SMEM
        self.shared_size_bytes = 0
        threads = signature.max_threads or 1024
        min_blocks = signature.min_blocks
        blocks = int(min_blocks) if min_blocks is not None and min_blocks.strip().isdigit() else 1
        self.num_regs = min(255, 65536 // (threads * blocks))
        self.max_threads_per_block = threads

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max_dyn

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        optin = self._fake.attributes["MaxSharedMemoryPerBlockOptin"]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= optin:
            raise LaunchError(f"{self.name}: max_dynamic_shared_size_bytes = {value!r} (the device allows {optin})")
        self._max_dyn = int(value)

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        self._fake._launch(self, grid, block, args, shared_mem, stream)


# ---------------------------------------------------------------------------- device arrays
def _make_ndarray_class(fake):
    """The device array type of one fake module (its allocations count in that module)."""

    class MemoryPointer:
        __slots__ = ("ptr",)

        def __init__(self, ptr):
            self.ptr = ptr

    class ndarray(np.ndarray):
        def __array_finalize__(self, obj):
            # the device it lives on: where it was allocated (a view: its base's)
            self._device_id = fake.current_device if self.flags.owndata else getattr(obj, "_device_id",
                                                                                     fake.current_device)
            if self.flags.owndata:
                fake._on_alloc(self)
            else:   # a view: its memory belongs to a device array (never to a host array)
                owner = self.base
                while isinstance(owner, np.ndarray) and not owner.flags.owndata:
                    owner = owner.base
                if not isinstance(owner, ndarray):
                    fake._on_alloc(self)

        @property
        def data(self):
            return MemoryPointer(self.__array_interface__["data"][0])

        @property
        def device(self):
            return fake.cuda.Device(self._device_id)

        def __dlpack_device__(self):
            return (2, self._device_id)     # kDLCUDA and the device, as a cupy.ndarray reports

        @property
        def __cuda_array_interface__(self):
            return {"shape": self.shape, "typestr": self.dtype.str, "version": 3, "strides": None
                    if self.flags.c_contiguous else self.strides, "data": (self.data.ptr, False)}

        def get(self, stream=None):
            return fake.asnumpy(self)

        def set(self, arr, stream=None):
            """Copy the host array `arr` in (CuPy's checks: a numpy array of this shape and dtype)."""
            if not isinstance(arr, np.ndarray) or isinstance(arr, ndarray):
                raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr).__name__}")
            if arr.dtype != self.dtype:
                raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
            if arr.shape != self.shape:
                raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
            np.ndarray.__setitem__(self.view(np.ndarray), ..., arr)

        def __setitem__(self, key, value):
            if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
                fake._no_sync("a host-to-device copy")
            elif fake._capturing:
                stream = fake._capturing[0]
                stream._graph_ops.append(("setitem", self, key, value))
                return
            np.ndarray.__setitem__(self.view(np.ndarray), key,
                                   value.view(np.ndarray) if isinstance(value, ndarray) else value)

        def fill(self, value):
            self[...] = value

        def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
            fake._check_device_args(inputs, ufunc.__name__)
            if fake._capturing:
                if method != "__call__" or out is None or not all(isinstance(o, ndarray) for o in out):
                    raise CaptureError(f"{ufunc.__name__}.{method} allocates or reads back during a capture")
                fake._capturing[0]._graph_ops.append(("ufunc", ufunc, inputs, out, kwargs))
                return out[0] if len(out) == 1 else out
            plain = [x.view(np.ndarray) if isinstance(x, ndarray) else x for x in inputs]
            if out is not None:
                getattr(ufunc, method)(*plain, out=tuple(o.view(np.ndarray) if isinstance(o, ndarray) else o
                                                         for o in out), **kwargs)
                return out[0] if len(out) == 1 else out
            return fake._wrap(getattr(ufunc, method)(*plain, **kwargs))

        def __repr__(self):
            return "fake_cupy." + np.ndarray.__repr__(self.view(np.ndarray))

    ndarray.__module__ = "cupy"
    ndarray.__qualname__ = "ndarray"
    return ndarray


def _replay_op(op):
    if isinstance(op, tuple) and op[0] == "ufunc":
        _, ufunc, inputs, out, kwargs = op
        ufunc(*inputs, out=out, **kwargs)
    elif isinstance(op, tuple) and op[0] == "setitem":
        _, arr, key, value = op
        arr[key] = value


# ---------------------------------------------------------------------------- cupy.random
def _make_random(fake):
    """`cupy.random`: `RandomState(seed)` and the module-level functions gpubp's tests and benches
    use, drawing on the host (numpy's PCG64, so the values differ from CuPy's cuRAND streams but
    are reproducible per seed) into new device arrays.  As in CuPy, the float samplers take
    `dtype` float32 or float64 only (TypeError otherwise) and `size=None` gives a 0-d array."""
    random = types.ModuleType("cupy.random")

    def _float(dtype):
        dtype = np.dtype(dtype)
        if dtype.char not in "fd":
            raise TypeError(f"cupy.random: dtype must be float32 or float64, got {dtype}")
        return dtype

    class RandomState:
        def __init__(self, seed=None):
            self.seed(seed)

        def seed(self, seed=None):
            self._rng = np.random.default_rng(seed)

        def _out(self, host, dtype):
            return fake._to_device(np.asarray(host, dtype=dtype))

        def standard_normal(self, size=None, dtype=float):
            return self._out(self._rng.standard_normal(size), _float(dtype))

        def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
            return self._out(self._rng.normal(loc, scale, size), _float(dtype))

        def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
            return self._out(self._rng.uniform(low, high, size), _float(dtype))

        def random_sample(self, size=None, dtype=float):
            return self._out(self._rng.random(size), _float(dtype))

        def rand(self, *size, dtype=float):
            return self.random_sample(size or None, dtype)

        def randn(self, *size, dtype=float):
            return self.standard_normal(size or None, dtype)

        def randint(self, low, high=None, size=None, dtype=int):
            if high is None:
                low, high = 0, low
            return self._out(self._rng.integers(low, high, size), np.dtype(dtype))

    default = RandomState()
    random.RandomState = RandomState
    random.seed = default.seed
    for name in ("standard_normal", "normal", "uniform", "random_sample", "rand", "randn", "randint"):
        setattr(random, name, getattr(default, name))
    random.random = default.random_sample
    return random


# ---------------------------------------------------------------------------- cupy.cuda
def _make_cuda(fake):
    cuda = types.ModuleType("cupy.cuda")

    class CUDARuntimeError(RuntimeError):
        pass

    class OutOfMemoryError(MemoryError):
        pass

    class Graph:
        def __init__(self, ops):
            self.ops = ops

        def launch(self, stream=None):
            fake._no_sync("a graph launch") if fake._capturing else None
            for op in self.ops:
                if isinstance(op, Launch):
                    fake.launches.append(Launch(op.name, op.kernel, op.grid, op.block, op.args, op.shared_mem,
                                                stream, replay=True, signature=op.signature, module=op.module))
                    if fake.execute:
                        fake.launches[-1].run()
                else:
                    _replay_op(op)

        def upload(self, stream=None):
            pass

    class Event:
        """Work in the fake is done when it is issued, so every event has completed."""

        done = True

        def __init__(self, block=False, disable_timing=False, interprocess=False):
            pass

        def record(self, stream=None):
            pass

        def synchronize(self):
            fake._no_sync("an event synchronisation")

    class Stream:
        null = None

        def __init__(self, null=False, non_blocking=False, ptds=False):
            self.is_null = null
            self._graph_ops = None

        @property
        def ptr(self):
            return 0 if self.is_null else id(self)

        def record(self, event=None):
            event = Event() if event is None else event
            event.record(self)
            return event

        def wait_event(self, event):
            if not isinstance(event, Event):
                raise TypeError(f"wait_event needs a cupy.cuda.Event, got {type(event).__name__}")

        def __enter__(self):
            fake._stream_stack.append(self)
            return self

        def __exit__(self, *exc):
            fake._stream_stack.pop()

        def use(self):
            fake._stream_stack[:] = [self]
            return self

        def synchronize(self):
            fake._no_sync("a stream synchronisation")

        @property
        def is_capturing(self):
            return self._graph_ops is not None

        def begin_capture(self, mode=None):
            if self.is_null:
                raise CaptureError("the legacy default stream cannot be captured")
            if self._graph_ops is not None:
                raise CaptureError("this stream is capturing already")
            self._graph_ops = []
            fake._capturing.append(self)

        def end_capture(self):
            if self._graph_ops is None:
                raise CaptureError("end_capture without begin_capture")
            ops, self._graph_ops = self._graph_ops, None
            fake._capturing.remove(self)
            return Graph(ops)

    Stream.null = Stream(null=True)

    class Device:
        def __init__(self, device=None):
            self.id = fake.current_device if device is None else int(device)
            if not 0 <= self.id < fake.devices:
                raise CUDARuntimeError(f"cudaErrorInvalidDevice: device {self.id} (the fake has {fake.devices})")

        attributes = property(lambda self: dict(fake.attributes))
        compute_capability = property(lambda self: f"{fake.attributes['ComputeCapabilityMajor']}"
                                                   f"{fake.attributes['ComputeCapabilityMinor']}")
        mem_info = property(lambda self: (MEM_TOTAL - fake.allocated_bytes, MEM_TOTAL))

        def use(self):
            fake.current_device = self.id

        def synchronize(self):
            fake._no_sync("a device synchronisation")

        def __enter__(self):     # current until the block ends, as CuPy's
            self._previous = getattr(self, "_previous", []) + [fake.current_device]
            fake.current_device = self.id
            return self

        def __exit__(self, *exc):
            fake.current_device = self._previous.pop()

        def __eq__(self, other):
            return isinstance(other, Device) and other.id == self.id

        def __hash__(self):
            return hash(self.id)

    def getDeviceProperties(i):
        Device(i)
        a = fake.attributes
        return {"name": fake.device_name.encode(), "totalGlobalMem": MEM_TOTAL,
                "multiProcessorCount": a["MultiProcessorCount"], "major": a["ComputeCapabilityMajor"],
                "minor": a["ComputeCapabilityMinor"], "sharedMemPerBlockOptin": a["MaxSharedMemoryPerBlockOptin"],
                "sharedMemPerMultiprocessor": a["MaxSharedMemoryPerMultiprocessor"],
                "regsPerMultiprocessor": a["MaxRegistersPerMultiprocessor"],
                "maxThreadsPerMultiProcessor": a["MaxThreadsPerMultiProcessor"], "clockRate": 1980000,
                "memoryClockRate": 2619000, "memoryBusWidth": 5120}

    def deviceSynchronize():
        fake._no_sync("a device synchronisation")

    cuda.runtime = types.SimpleNamespace(
        getDeviceCount=lambda: fake.devices, getDevice=lambda: fake.current_device, getDeviceProperties=getDeviceProperties,
        memGetInfo=lambda: Device().mem_info, deviceSynchronize=deviceSynchronize,
        CUDARuntimeError=CUDARuntimeError, runtimeGetVersion=lambda: 12040, driverGetVersion=lambda: 12040)
    cuda.memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
    cuda.Device, cuda.Stream, cuda.Graph, cuda.Event = Device, Stream, Graph, Event
    cuda.nccl = _make_nccl(fake)
    cuda.get_current_stream = fake.current_stream
    cuda.is_available = lambda: True
    return cuda


# ---------------------------------------------------------------------------- cupy.cuda.nccl
def _make_nccl(fake):
    """`cupy.cuda.nccl` for ranks of an MPI job that each run a fake: the collectives a
    `NcclCommunicator` offers (CuPy's signatures: device pointers, an element count, NCCL's enum
    values for types and operations, a stream pointer) carried out at once over mpi4py's
    COMM_WORLD on the device memory the pointers name, which must lie inside one live device
    array of the fake.  The unique id is a tuple of 128 ints, as CuPy's."""
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available = True
    # nccl.h: ncclInt8 0, ncclUint8 1, ncclInt32 2, ncclUint32 3, ncclInt64 4, ncclUint64 5,
    # ncclFloat16 6, ncclFloat32 7, ncclFloat64 8; ncclSum 0, ncclProd 1, ncclMax 2, ncclMin 3
    types_ = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64, 6: np.float16,
              7: np.float32, 8: np.float64}
    for code, t in types_.items():
        setattr(nccl, f"NCCL_{np.dtype(t).name.upper()}", code)
    nccl.NCCL_SUM, nccl.NCCL_PROD, nccl.NCCL_MAX, nccl.NCCL_MIN = 0, 1, 2, 3

    def get_unique_id():
        return tuple(int(b) for b in os.urandom(128))

    def _device_memory(ptr, count, datatype):
        import ctypes

        if datatype not in types_:
            raise ValueError(f"ncclInvalidArgument: data type {datatype}")
        dtype = np.dtype(types_[datatype])
        nbytes = int(count) * dtype.itemsize
        if fake.memory_at(int(ptr), nbytes) is None:
            raise ValueError(f"ncclInvalidArgument: [{ptr:#x}, +{nbytes}) is not inside one device array")
        return np.frombuffer((ctypes.c_char * nbytes).from_address(int(ptr)), dtype=dtype)

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            from mpi4py import MPI

            self._mpi = MPI
            self._comm = MPI.COMM_WORLD
            if not (isinstance(commId, tuple) and len(commId) == 128):
                raise TypeError("commId must be the tuple get_unique_id() returns")
            if (ndev, rank) != (self._comm.Get_size(), self._comm.Get_rank()):
                raise ValueError(f"ncclInvalidArgument: ndev {ndev} and rank {rank} are not this MPI job's "
                                 f"{self._comm.Get_size()} and {self._comm.Get_rank()}")
            ids = self._comm.allgather(commId)
            if any(i != ids[0] for i in ids):
                raise ValueError("ncclInvalidUsage: the ranks passed different unique ids")
            self.aborted = False

        def _check(self, stream):
            if self.aborted:
                raise RuntimeError("ncclInvalidUsage: the communicator was aborted")
            if not isinstance(stream, int):
                raise TypeError(f"stream must be a stream pointer (int), got {type(stream).__name__}")
            fake._no_sync("an NCCL collective (the fake runs it at once)")

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            self._check(stream)
            ops = {0: self._mpi.SUM, 1: self._mpi.PROD, 2: self._mpi.MAX, 3: self._mpi.MIN}
            send, recv = _device_memory(sendbuf, count, datatype), _device_memory(recvbuf, count, datatype)
            self._comm.Allreduce(self._mpi.IN_PLACE if sendbuf == recvbuf else send.copy(), recv, op=ops[op])

        def bcast(self, buff, count, datatype, root, stream):
            self._check(stream)
            self._comm.Bcast(_device_memory(buff, count, datatype), root=int(root))

        def abort(self):
            self.aborted = True

        def destroy(self):
            pass

    nccl.get_unique_id, nccl.NcclCommunicator = get_unique_id, NcclCommunicator
    return nccl


# ---------------------------------------------------------------------------- cuda.bindings.driver (TMA)
#: the emulator's tensor-map format (tests/support/cuda_emu/runtime.h, `emu::tmap_read`): 16 words
TMAP_MAGIC = int.from_bytes(b"EMUTMAP1", "little")


def tmap_hash(words) -> int:
    """FNV-1a over the map's words 0..14 (its word 15), as runtime.h's `emu::tmap_hash`."""
    h = 0xCBF29CE484222325
    for w in words[:15]:
        h = ((h ^ int(w)) * 0x100000001B3) % 2**64
    return h


class EncodeError(int):
    """A CUresult of CUDA_ERROR_INVALID_VALUE (1) that says which documented requirement failed."""

    def __new__(cls, why: str):
        e = super().__new__(cls, 1)
        e.why = why
        return e

    def __str__(self):
        return f"CUDA_ERROR_INVALID_VALUE: {self.why}"

    __repr__ = __str__


class TensorMapDriver:
    """The part of `cuda.bindings.driver` that makes TMA tensor maps (`cuTensorMapEncodeTiled`),
    for a fake device: the arguments are checked against the requirements the CUDA driver API
    documents for cuTensorMapEncodeTiled (alignment of the address and strides, dimension and box
    limits, box inner bytes within the swizzle span, element strides, OOB fill), and the map's 128
    opaque bytes hold the emulator's own description of the tensor (base address, dims, strides,
    box, element size, swizzle, OOB fill), which `emu::tma_load` reads.  Beyond the driver, the
    tensor must lie inside one live device array of the fake (`fake.memory_at`).  `calls`
    records each encode, `errors` each refusal.  The enums carry the values of cuda.h."""

    class CUresult(enum.IntEnum):
        CUDA_SUCCESS = 0
        CUDA_ERROR_INVALID_VALUE = 1

    class CUtensorMapDataType(enum.IntEnum):
        CU_TENSOR_MAP_DATA_TYPE_UINT8 = 0
        CU_TENSOR_MAP_DATA_TYPE_UINT16 = 1
        CU_TENSOR_MAP_DATA_TYPE_UINT32 = 2
        CU_TENSOR_MAP_DATA_TYPE_INT32 = 3
        CU_TENSOR_MAP_DATA_TYPE_UINT64 = 4
        CU_TENSOR_MAP_DATA_TYPE_INT64 = 5
        CU_TENSOR_MAP_DATA_TYPE_FLOAT16 = 6
        CU_TENSOR_MAP_DATA_TYPE_FLOAT32 = 7
        CU_TENSOR_MAP_DATA_TYPE_FLOAT64 = 8
        CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 = 9
        CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ = 10
        CU_TENSOR_MAP_DATA_TYPE_TFLOAT32 = 11
        CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ = 12

    class CUtensorMapInterleave(enum.IntEnum):
        CU_TENSOR_MAP_INTERLEAVE_NONE = 0
        CU_TENSOR_MAP_INTERLEAVE_16B = 1
        CU_TENSOR_MAP_INTERLEAVE_32B = 2

    class CUtensorMapSwizzle(enum.IntEnum):
        CU_TENSOR_MAP_SWIZZLE_NONE = 0
        CU_TENSOR_MAP_SWIZZLE_32B = 1
        CU_TENSOR_MAP_SWIZZLE_64B = 2
        CU_TENSOR_MAP_SWIZZLE_128B = 3

    class CUtensorMapL2promotion(enum.IntEnum):
        CU_TENSOR_MAP_L2_PROMOTION_NONE = 0
        CU_TENSOR_MAP_L2_PROMOTION_L2_64B = 1
        CU_TENSOR_MAP_L2_PROMOTION_L2_128B = 2
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B = 3

    class CUtensorMapFloatOOBfill(enum.IntEnum):
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA = 1

    class cuuint64_t(int):
        pass

    class cuuint32_t(int):
        pass

    #: bytes of an element of each data type
    ELEMENT_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 5: 8, 6: 2, 7: 4, 8: 8, 9: 2, 10: 4, 11: 4, 12: 4}
    _FLOAT_TYPES = {6, 7, 8, 9, 10, 11, 12}

    def __init__(self, fake=None):
        self.fake = fake
        self.calls: list[dict] = []
        self.errors: list[str] = []

    def cuInit(self, flags):
        return (self.CUresult.CUDA_SUCCESS,)

    def _problem(self, dtype, rank, ptr, dims, strides, box, estrides, interleave, swizzle, l2, oob):
        for value, enum_type in ((dtype, self.CUtensorMapDataType), (interleave, self.CUtensorMapInterleave),
                                 (swizzle, self.CUtensorMapSwizzle), (l2, self.CUtensorMapL2promotion),
                                 (oob, self.CUtensorMapFloatOOBfill)):
            if int(value) not in {int(m) for m in enum_type}:
                return f"{value!r} is not a {enum_type.__name__}"
        esize = self.ELEMENT_BYTES[int(dtype)]
        if not 1 <= rank <= 5 or (interleave != 0 and rank < 3):
            return f"tensorRank {rank} (1 to 5; at least 3 with interleave)"
        if len(dims) != rank or len(strides) != rank - 1 or len(box) != rank or len(estrides) != rank:
            return "globalDim, boxDim, elementStrides need tensorRank entries, globalStrides tensorRank - 1"
        align = 32 if interleave == 2 else 16
        if ptr % align:
            return f"globalAddress {ptr:#x} must be {align}-byte aligned"
        if any(not 1 <= d <= 2**32 for d in dims):
            return f"globalDim {dims}: each non-zero and at most 2^32"
        prev = dims[0] * esize
        for i, s in enumerate(strides):
            if s % align or s >= 2**40:
                return f"globalStrides {strides}: each a multiple of {align} and below 2^40"
            if s < prev:       # globalStrides[i] = globalStrides[i-1] * (globalDim[i] + padding[i]), padding >= 0
                return f"globalStrides[{i}] = {s} is less than the {prev} bytes of the dimensions below it"
            prev = s * dims[i + 1]
        if any(not 1 <= b <= 256 for b in box):
            return f"boxDim {box}: each non-zero and at most 256"
        if interleave == 0 and (box[0] * esize) % 16:
            return f"boxDim[0] * elementSize = {box[0] * esize} bytes must be a multiple of 16 without interleave"
        if any(not 1 <= e <= 8 for e in estrides):
            return f"elementStrides {estrides}: each non-zero and at most 8"
        if interleave == 2 and swizzle != 1:
            return "CU_TENSOR_MAP_INTERLEAVE_32B needs CU_TENSOR_MAP_SWIZZLE_32B"
        if interleave == 0 and swizzle != 0 and box[0] * esize > 16 << int(swizzle):
            return (f"the box's inner dimension ({box[0] * esize} bytes) exceeds the "
                    f"{16 << int(swizzle)}-byte swizzle")
        if oob == 1 and int(dtype) not in self._FLOAT_TYPES:
            return "CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA needs a floating-point data type"
        if self.fake is not None:
            span = esize + (dims[0] - 1) * esize + sum((d - 1) * s for d, s in zip(dims[1:], strides))
            if self.fake.memory_at(ptr, span) is None:
                return (f"(emulator) the tensor at {ptr:#x} ({span} bytes) is not inside one live device "
                        f"array of the fake")
        return None

    def cuTensorMapEncodeTiled(self, dtype, rank, ptr, dims, strides, box, estrides, interleave, swizzle, l2, oob):
        rank, ptr = int(rank), int(ptr)
        dims, strides = [int(d) for d in dims], [int(s) for s in strides]
        box, estrides = [int(b) for b in box], [int(e) for e in estrides]
        call = dict(dtype=dtype, rank=rank, ptr=ptr, dims=dims, strides=strides, box=box, estrides=estrides,
                    interleave=interleave, swizzle=swizzle, l2=l2, oob=oob)
        self.calls.append(call)
        why = self._problem(int(dtype), rank, ptr, dims, strides, box, estrides, int(interleave), int(swizzle),
                            int(l2), int(oob))
        if why is not None:
            self.errors.append(why)
            return EncodeError(why), None
        w = [0] * 16
        w[0], w[1] = TMAP_MAGIC, ptr
        w[2] = (rank | self.ELEMENT_BYTES[int(dtype)] << 4 | int(dtype) << 8 | int(interleave) << 16
                | int(swizzle) << 20 | int(l2) << 24 | int(oob) << 28)
        for i in range(rank):
            w[2] |= estrides[i] << (32 + 4 * i)
            w[3] |= box[i] << (12 * i)
            w[4 + i] = dims[i]
        for i, s in enumerate(strides):
            w[9 + i] = s
        w[15] = tmap_hash(w)
        return self.CUresult.CUDA_SUCCESS, types.SimpleNamespace(opaque=w)
