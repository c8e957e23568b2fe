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
processes sharing the folder never read half a file; the record (`.json`,
written last) holds the cubin's SHA-256, and a build whose files do not match
it (a damaged or truncated cubin, an unreadable record) is built again rather
than handed to the driver.  Where the folder cannot be written, a process keeps
its builds in a temporary folder of its own (with a warning).

Loaded functions are kept per device and kernel (read-only once made, like
`cuda_device`'s), and the temporary folder's name once made; nothing else is
module state.  CuPy is imported inside functions only.
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
_private = None          # this process's own folder for builds the cache folder could not take


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


def _cached(base: str, spec: ModuleSpec) -> dict[str, str] | None:
    """The lowered names of the build at `base` when its files are whole and belong together, else
    None (then it is built again): the record must be a JSON object whose `lowered` maps every name
    expression of `spec` to a name, and the cubin's SHA-256 must be the one recorded with it (a
    truncated or damaged cubin, or a record of another build, would otherwise reach the driver as
    an invalid image, in this process and in every later one)."""
    try:
        with open(base + ".json") as f:
            meta = json.load(f)
        with open(base + ".cubin", "rb") as f:
            cubin = f.read()
    except (OSError, ValueError):
        return None
    lowered = meta.get("lowered") if isinstance(meta, dict) else None
    if not isinstance(lowered, dict) or not all(isinstance(lowered.get(ne), str) for ne in spec.name_expressions):
        return None
    if not cubin or meta.get("sha256") != hashlib.sha256(cubin).hexdigest():
        return None
    return lowered


def _private_folder() -> str:
    """A folder of this process's own, removed when it exits (where a cache that cannot be written
    leaves the cubins of this process)."""
    global _private
    if _private is None:
        import atexit
        import shutil

        _private = tempfile.mkdtemp(prefix="gpubp-cubin-")
        atexit.register(shutil.rmtree, _private, True)
    return _private


def cubin_path(spec: ModuleSpec, arch: str, folder: str | None = None) -> tuple[str, dict[str, str]]:
    """Path of `spec`'s cubin for `arch` in the cache (built now if missing or damaged) and its
    lowered names.  A cache folder that cannot be written (read-only, not creatable) gets a warning,
    and this process keeps its build in a temporary folder of its own."""
    nvrtc = _nvrtc()
    _, major, minor = nvrtc.nvrtcVersion()
    src = spec.source()
    key = cache_key(src, arch, f"{major}.{minor}")
    folder = folder or cache_dir()
    name = f"{spec.name}-{arch}-{key}"
    for where in (folder, _private):
        lowered = _cached(os.path.join(where, name), spec) if where else None
        if lowered is not None:
            return os.path.join(where, name) + ".cubin", lowered
    log.info("building %s for %s with NVRTC %d.%d (first use, then cached in %s)", spec.name, arch, major,
             minor, folder)
    cubin, lowered, _ = compile_cubin(spec, arch, nvrtc)
    meta = json.dumps({"module": spec.name, "arch": arch, "nvrtc": f"{major}.{minor}",
                       "options": list(options(arch)), "lowered": lowered,
                       "sha256": hashlib.sha256(cubin).hexdigest()}).encode()
    try:
        base = _store(folder, name, src, cubin, meta)
    except OSError as e:
        log.warning("cannot write the kernel cache %s (%s): the %s kernels are kept for this process only "
                    "and built again by the next; set CUPY_CACHE_DIR to a folder you can write", folder, e,
                    spec.name)
        base = _store(_private_folder(), name, src, cubin, meta)
    return base + ".cubin", lowered


def _store(folder: str, name: str, src: str, cubin: bytes, meta: bytes) -> str:
    """Write a build's files into `folder` (the record last: readers take a build only once it is
    there, and check the cubin against it); returns their path without extension."""
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, name)
    _write_atomic(base + ".cu", src.encode())
    _write_atomic(base + ".cubin", cubin)
    _write_atomic(base + ".json", meta)
    return base


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
