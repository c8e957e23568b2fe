"""Where the CUDA sources are, and how a kernel module is built from them.

A `ModuleSpec` names the `.cu`/`.cuh` files of one module (concatenated in
order into a single source string after the generated header of shared
constants, `kernel_constants.header()`, so CuPy's cache key covers every line:
headers are never pulled in with `-I`) and the template instantiations to
compile (`name_expressions`).  `load(spec)` compiles it with CuPy once per
process; `compile_check` compiles the same source with NVRTC and no GPU.

This module imports no CuPy at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

#: NVRTC options shared by CuPy loads and the compile check
NVRTC_OPTIONS = ("-std=c++17",)


def kernels_dir() -> Path:
    """The folder holding the `.cu` files: `gpubp/kernels` once installed, `kernels/` in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "kernels", here.parent / "kernels"):
        if (cand / "activations.cuh").is_file():
            return cand
    raise FileNotFoundError(f"gpubp's CUDA sources (kernels/*.cu) were not found beside {here}")


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    files: tuple[str, ...]
    name_expressions: tuple[str, ...] = field(default_factory=tuple)

    def source(self) -> str:
        from .kernel_constants import header

        parts = [header()]
        for f in self.files:
            text = (kernels_dir() / f).read_text()
            parts.append(f"// ---- {f}\n" + text.replace("#pragma once", ""))
        return "\n".join(parts)


@lru_cache(maxsize=None)
def load(spec: ModuleSpec):
    """The compiled `cupy.RawModule` of `spec` (compiled once, then from CuPy's cache)."""
    import cupy

    return cupy.RawModule(code=spec.source(), options=NVRTC_OPTIONS,
                          name_expressions=list(spec.name_expressions))


def all_specs() -> list[ModuleSpec]:
    """Every kernel module gpubp builds (for the compile check)."""
    from . import cuda_fused, cuda_gemm, cuda_kernels

    return list(cuda_gemm.SPECS) + list(cuda_kernels.SPECS) + list(cuda_fused.SPECS)
