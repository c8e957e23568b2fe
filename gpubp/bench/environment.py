"""What a benchmark run records about its machine, and the device helpers the rows share."""

from __future__ import annotations

import gc
import os
import platform
import sys

import numpy as np


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


def versions():
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


def gpu_meta():
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
