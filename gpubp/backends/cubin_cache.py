"""Kernel modules built by NVRTC for an architecture CuPy does not choose (sm_90a), kept as
cubins on disk and loaded with CuPy.

CuPy's `RawModule(code=...)` compiles for the device's own architecture (`sm_90`
on an H100), which has no `wgmma` or `setmaxnreg`: those exist only in the
architecture-specific target `sm_90a`.  So a module whose `ModuleSpec.archs`
names such a target is compiled here, with `cuda.bindings.nvrtc` (the NVRTC of
the cuda-bindings wheels, the same the compile check uses), from the same
single source string as every other module (`ModuleSpec.source()`: the
generated constants header and the `.cu`/`.cuh` files concatenated), and
loaded with `cupy.RawModule(path=cubin)`.

The cache (`cache_dir()`: `gpubp-cubin` under CuPy's kernel cache folder) holds,
per build, `<key>.cubin`, `<key>.json` (the kernels' lowered names, by name
expression, which is how a cubin's functions are found) and `<key>.cu` (the
exact source built, for reading).  The key is the SHA-256 of the source, the
NVRTC version, the architecture and the options, so an edited header or a new
NVRTC builds anew.  Files are written to a temporary name and renamed, so
processes sharing the folder never read half a file.

Loaded functions are kept per device and kernel (read-only once made, like
`cuda_device`'s); nothing else is module state.  CuPy is imported inside
functions only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading

from .cuda_device import DEFAULT_SMEM, device_id, kernel_cache_dir, opt_in_smem
from .cuda_source import NVRTC_OPTIONS, ModuleSpec
from .nvrtc_program import build

log = logging.getLogger("gpubp")

#: options of every cubin build beyond NVRTC_OPTIONS: CuPy's own default (float32 denormals
#: flush to zero), so these kernels round as the CuPy-built ones do
EXTRA_OPTIONS = ("-ftz=true",)

_functions: dict = {}   # (device, module, name expression) -> [function, dynamic smem opted in]
_lock = threading.Lock()


def cache_dir() -> str:
    return os.path.join(kernel_cache_dir(), "gpubp-cubin")


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise RuntimeError("building sm_90a kernels needs NVRTC's Python bindings: "
                           "pip install cuda-bindings nvidia-cuda-nvrtc (gpubp[compile])") from e
    return nvrtc


def options(arch: str) -> tuple[str, ...]:
    return (f"--gpu-architecture={arch}",) + NVRTC_OPTIONS + EXTRA_OPTIONS


def cache_key(source: str, arch: str, nvrtc_version: str) -> str:
    h = hashlib.sha256()
    for part in (source, nvrtc_version, arch, " ".join(options(arch))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:40]


def compile_cubin(spec: ModuleSpec, arch: str, nvrtc=None) -> tuple[bytes, dict[str, str], str]:
    """(cubin, {name expression: lowered name}, NVRTC log) of `spec` built for `arch`."""
    nvrtc = nvrtc or _nvrtc()
    b = build(nvrtc, spec.source(), f"{spec.name}.cu", spec.name_expressions, options(arch))
    if b.error:
        raise RuntimeError(f"NVRTC could not build {spec.name} for {arch} ({b.error}):\n{b.log}")
    return b.cubin, b.lowered, b.log


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cubin_path(spec: ModuleSpec, arch: str, folder: str | None = None) -> tuple[str, dict[str, str]]:
    """Path of `spec`'s cubin for `arch` in the cache (built now if missing) and its lowered names."""
    nvrtc = _nvrtc()
    _, major, minor = nvrtc.nvrtcVersion()
    src = spec.source()
    key = cache_key(src, arch, f"{major}.{minor}")
    folder = folder or cache_dir()
    base = os.path.join(folder, f"{spec.name}-{arch}-{key}")
    try:
        with open(base + ".json") as f:
            lowered = json.load(f)["lowered"]
        if os.path.isfile(base + ".cubin") and set(lowered) >= set(spec.name_expressions):
            return base + ".cubin", lowered
    except (OSError, ValueError, KeyError):
        pass
    log.info("building %s for %s with NVRTC %d.%d (first use, then cached in %s)", spec.name, arch, major,
             minor, folder)
    cubin, lowered, _ = compile_cubin(spec, arch, nvrtc)
    os.makedirs(folder, exist_ok=True)
    _write_atomic(base + ".cu", src.encode())
    _write_atomic(base + ".cubin", cubin)
    _write_atomic(base + ".json", json.dumps({"module": spec.name, "arch": arch, "nvrtc": f"{major}.{minor}",
                                              "options": list(options(arch)), "lowered": lowered}).encode())
    return base + ".cubin", lowered


def load(spec: ModuleSpec) -> int:
    """Load every kernel of `spec` (built for `spec.archs[0]`) on the current device; returns how many
    were new."""
    dev = device_id()
    with _lock:
        if all((dev, spec.name, n) in _functions for n in spec.name_expressions):
            return 0
        import cupy

        path, lowered = cubin_path(spec, spec.archs[0])
        module = cupy.RawModule(path=path)
        n = 0
        for ne in spec.name_expressions:
            if (dev, spec.name, ne) not in _functions:
                _functions[(dev, spec.name, ne)] = [module.get_function(lowered[ne]), DEFAULT_SMEM]
                n += 1
        return n


def function(spec: ModuleSpec, name: str, smem: int = 0):
    """Kernel `name` (a name expression of `spec`) on the current device, allowed `smem` bytes of
    dynamic shared memory."""
    if name not in spec.name_expressions:
        raise ValueError(f"module {spec.name!r} has no kernel {name!r}")
    key = (device_id(), spec.name, name)
    entry = _functions.get(key)
    if entry is None:
        load(spec)
        entry = _functions[key]
    return opt_in_smem(entry, name, smem)
