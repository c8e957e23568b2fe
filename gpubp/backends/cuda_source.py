"""Where the CUDA sources are, and how a kernel module is built from them.

A `ModuleSpec` names the `.cu`/`.cuh` files of one module (concatenated in
order into a single source string after the generated header of shared
constants, `kernel_constants.header()`, so CuPy's cache key covers every line:
headers are never pulled in with `-I`) and every template instantiation the
launchers may ask for (`name_expressions`).  `cuda_device.load_functions`
compiles just the ones a network needs, with CuPy (modules that name their own
`archs`, such as sm_90a, are built by `cubin_cache` instead); `gpubp.compile_check`
compiles all of them with NVRTC and no GPU.  This module knows nothing of the
launchers (each launcher module holds its own `SPECS`).

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
    #: (name expression, SASS opcode) pairs: the compile check disassembles the cubin and
    #: fails unless each of these kernels holds that instruction (e.g. "HMMA.1688.F32.TF32")
    sass_expect: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: architectures the module is built for, when not the device's own: e.g. ("sm_90a",) for
    #: wgmma kernels, which CuPy's choice (sm_90) cannot build; such modules are compiled to a
    #: cubin by `cubin_cache` and built by the compile check only for these targets
    archs: tuple[str, ...] = field(default_factory=tuple)

    def source(self) -> str:
        from .kernel_constants import header

        parts = [header()]
        for f in self.files:
            text = _text(str(kernels_dir() / f))
            parts.append(f"// ---- {f}\n" + text.replace("#pragma once", ""))
        return "\n".join(parts)


@lru_cache(maxsize=None)
def _text(path: str) -> str:
    return Path(path).read_text()
