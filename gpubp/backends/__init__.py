"""Backends: where arrays live and how the fused operations run.

`get_backend("numpy" | "cuda" | "auto")`; `available_backends()` lists the
usable ones.  See `base.Backend` for the interface.
"""

from __future__ import annotations

import sys

from .base import Backend
from .numpy_backend import NumpyBackend

BACKENDS = ("auto", "numpy", "cuda")

_instances: dict[str, Backend] = {}
_auto_said = False


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def available_backends() -> list[str]:
    return ["numpy"] + (["cuda"] if cuda_available() else [])


def get_backend(name="auto") -> Backend:
    """The backend called `name` (an instance is returned as it is)."""
    global _auto_said
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "cuda" if cuda_available() else "numpy"
        if not _auto_said:
            _auto_said = True
            print(f"gpubp: backend='auto' chose {name}", file=sys.stderr)
    if name not in _instances:
        if name == "numpy":
            _instances[name] = NumpyBackend()
        else:
            from .cuda_backend import CudaBackend  # imports cupy; raises a clear error without a GPU
            _instances[name] = CudaBackend()
    return _instances[name]


__all__ = ["Backend", "NumpyBackend", "get_backend", "available_backends", "cuda_available", "BACKENDS"]
