"""The current CUDA device: its id, its attributes, and the kernels loaded on it.

One place for what every kernel launcher (`cuda_gemm`, `cuda_elementwise`,
`cuda_fused`) and the CUDA backend ask of the device, each read once per device
and kept: device attributes and compiled kernels are read-only once made, so
every network and thread can share them.

Kernels are compiled when first needed, and only those: `load_kernels({spec:
names})` compiles the named template instantiations of each module together (one
NVRTC run per module, kept in CuPy's persistent kernel cache, so later processes
load them from disk), and `function(spec, name)` compiles a kernel nobody asked
for ahead.
The CUDA backend asks for every kernel of a step when it makes the step's plan.
CuPy is imported inside functions only, so this module imports without a GPU.
"""

from __future__ import annotations

import logging
import os
import threading

from .cuda_source import NVRTC_OPTIONS, ModuleSpec

#: the default dynamic shared-memory limit of a block; more needs an opt-in per kernel
DEFAULT_SMEM = 48 * 1024

log = logging.getLogger("gpubp")

_attributes: dict = {}
_ccs: dict = {}
_functions: dict = {}   # (device, module, kernel) -> [function, dynamic smem opted in]
_compile_lock = threading.Lock()


def device_id() -> int:
    import cupy

    return cupy.cuda.runtime.getDevice()


def attributes() -> dict:
    """CuPy's attribute dict of the current device (`MultiProcessorCount`, ...)."""
    dev = device_id()
    a = _attributes.get(dev)
    if a is None:
        import cupy

        a = _attributes[dev] = dict(cupy.cuda.Device(dev).attributes)
    return a


def sm_count() -> int:
    return int(attributes()["MultiProcessorCount"])


def compute_capability() -> int:
    """E.g. 90 for an H100."""
    dev = device_id()
    cc = _ccs.get(dev)
    if cc is None:
        import cupy

        cc = _ccs[dev] = int(cupy.cuda.Device(dev).compute_capability)
    return cc


def kernel_cache_dir() -> str:
    """Where CuPy keeps compiled kernels between processes."""
    return os.environ.get("CUPY_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cupy", "kernel_cache")


def load_kernels(wanted) -> int:
    """Compile (or load from CuPy's cache) the kernels not yet loaded on the current device, given
    as `{spec: names}`: one NVRTC program per module, one line of log for the lot.  Returns how
    many kernels were new."""
    dev = device_id()
    with _compile_lock:
        todo = {}
        for spec, names in wanted.items():
            if spec.archs:
                raise ValueError(f"module {spec.name!r} is built for {', '.join(spec.archs)} by cubin_cache, "
                                 f"not by CuPy")
            missing = sorted({n for n in names if (dev, spec.name, n) not in _functions})
            unknown = [n for n in missing if n not in spec.name_expressions]
            if unknown:
                raise ValueError(f"module {spec.name!r} has no kernel {unknown[0]!r}")
            if missing:
                todo[spec] = missing
        n = sum(len(v) for v in todo.values())
        if not n:
            return 0
        import cupy

        log.info("compiling %d CUDA kernel%s for sm_%d (%s; first use, then cached in %s)", n,
                 "" if n == 1 else "s", compute_capability(), ", ".join(s.name for s in todo),
                 kernel_cache_dir())
        for spec, missing in todo.items():
            module = cupy.RawModule(code=spec.source(), options=NVRTC_OPTIONS, name_expressions=missing)
            for name in missing:
                _functions[(dev, spec.name, name)] = [module.get_function(name), DEFAULT_SMEM]
        return n


def function(spec: ModuleSpec, name: str, smem: int = 0):
    """Kernel `name` of module `spec` on the current device, allowed `smem` bytes of dynamic
    shared memory (raising the kernel's limit past the 48 KB default when needed)."""
    key = (device_id(), spec.name, name)
    entry = _functions.get(key)
    if entry is None:
        load_kernels({spec: [name]})
        entry = _functions[key]
    return opt_in_smem(entry, name, smem)


def opt_in_smem(entry, name: str, smem: int):
    """The function of a loaded kernel's `entry` ([function, dynamic shared memory opted in]),
    its limit raised to `smem` bytes where that is more than it has (past the 48 KB default,
    up to what the device allows)."""
    if smem > entry[1]:
        optin = int(attributes().get("MaxSharedMemoryPerBlockOptin", DEFAULT_SMEM))
        if smem > optin:
            raise RuntimeError(f"{name} needs {smem} bytes of shared memory; this device allows {optin}")
        entry[0].max_dynamic_shared_size_bytes = smem
        entry[1] = smem
    return entry[0]
