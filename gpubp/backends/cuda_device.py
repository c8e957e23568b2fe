"""The current CUDA device: its id, its attributes, and the kernels loaded on it.

One place for what every kernel launcher (`cuda_gemm`, `cuda_kernels`,
`cuda_fused`) and the CUDA backend ask of the device, each read once per device
and cached.  CuPy is imported inside functions only, so this module imports
without a GPU.
"""

from __future__ import annotations

from ..activations import ACTIVATIONS
from .cuda_source import ModuleSpec, load

#: the default dynamic shared-memory limit of a block; more needs an opt-in per kernel
DEFAULT_SMEM = 48 * 1024

_attributes: dict = {}
_ccs: dict = {}
_functions: dict = {}   # (device, module, kernel) -> [function, dynamic smem opted in]


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


def function(spec: ModuleSpec, name: str, smem: int = 0):
    """Kernel `name` of module `spec` on the current device, allowed `smem` bytes of dynamic
    shared memory (raising the kernel's limit past the 48 KB default when needed)."""
    key = (device_id(), spec.name, name)
    entry = _functions.get(key)
    if entry is None:
        entry = _functions[key] = [load(spec).get_function(name), DEFAULT_SMEM]
    if smem > entry[1]:
        optin = int(attributes().get("MaxSharedMemoryPerBlockOptin", DEFAULT_SMEM))
        if smem > optin:
            raise RuntimeError(f"{name} needs {smem} bytes of shared memory; this device allows {optin}")
        entry[0].max_dynamic_shared_size_bytes = smem
        entry[1] = smem
    return entry[0]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_act(code) -> int:
    """`code` as an int, if it is an activation code (gpubp.activations.ACT_CODES)."""
    c = int(code)
    if not 0 <= c < len(ACTIVATIONS):
        raise ValueError(f"activation code {code} out of range 0..{len(ACTIVATIONS) - 1}")
    return c
