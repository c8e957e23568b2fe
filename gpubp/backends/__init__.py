"""Backends: where arrays live and how the fused operations run.

`get_backend("numpy" | "cuda" | "auto")`; `available_backends()` lists the
usable ones.  See `base.Backend` for the interface.
"""

from __future__ import annotations

import logging
import threading

from .base import Backend
from .numpy_backend import NumpyBackend

BACKENDS = ("auto", "numpy", "cuda")

log = logging.getLogger("gpubp")

# The default backend instances.  A backend holds only read-only things (compiled
# kernels, device attributes), so one instance serves every network and thread;
# the lock makes sure each is built once even when threads ask at the same time.
_instances: dict[str, Backend] = {}
_lock = threading.Lock()


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def available_backends() -> list[str]:
    return ["numpy"] + (["cuda"] if cuda_available() else [])


def backend_name(name) -> str:
    """"numpy" or "cuda" for a backend's name ("auto": "cuda" where a GPU is visible), without making
    the backend (nor importing CuPy); any other value is refused with a ValueError."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "cuda" if cuda_available() else "numpy"
    return name


def get_backend(name="auto") -> Backend:
    """The backend called `name` (an instance is returned as it is)."""
    if isinstance(name, Backend):
        return name
    auto = name == "auto"
    name = backend_name(name)
    with _lock:
        be = _instances.get(name)
        if be is None:
            if name == "numpy":
                be = NumpyBackend()
            else:
                from .cuda_backend import CudaBackend  # imports cupy; raises a clear error without a GPU
                be = CudaBackend()
            _instances[name] = be
            if auto:
                log.info("backend='auto' chose %s", be.describe())
    return be


__all__ = ["Backend", "NumpyBackend", "get_backend", "backend_name", "available_backends", "cuda_available", "BACKENDS"]
