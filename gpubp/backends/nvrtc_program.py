"""One NVRTC program, built through `cuda.bindings.nvrtc` (the NVRTC of the cuda-bindings
wheels, no GPU needed): its log, the lowered names of its name expressions and, when asked,
its cubin.

Shared by the cubin cache (`cubin_cache.compile_cubin`, the sm_90a builds loaded on the device)
and the compile check (`gpubp.compile_check.compile_spec`, ptxas reports and SASS), so that
both build a module the same way.  The caller imports the bindings (each says in its own words
how to install them) and passes the `nvrtc` module in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Build:
    """What one NVRTC compile gave."""

    #: NVRTC's result name when the compile failed (e.g. "NVRTC_ERROR_COMPILATION"), else None
    error: str | None
    #: the program log (warnings; with `-Xptxas -v`, ptxas's report)
    log: str
    #: name expression -> lowered (mangled) name; empty when the compile failed
    lowered: dict
    #: the cubin, when asked for and the compile succeeded
    cubin: bytes | None = None


def check(nvrtc, result, what):
    """The value of an NVRTC call's `(status, value...)` result, or RuntimeError naming `what`."""
    if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what}: {result[0]}")
    return result[1] if len(result) > 1 else None


def out_buffer(size: int) -> bytearray:
    """A buffer of `size` bytes for NVRTC to write into (`nvrtcGetProgramLog`, `nvrtcGetCUBIN`,
    `nvrtcGetPTX`: the bindings pass its memory to C as `char *`).

    It must be a fresh mutable object.  `b" " * size` handed NVRTC the memory of an immutable
    `bytes`; for size 1 (an empty log is its NUL alone) that object is CPython's one cached `b" "`
    itself, which NVRTC then overwrote with `b"\\x00"` for the whole process: every one-byte read
    of a space (`f.read(1)` returns the cached object) read 0 from then on.  joblib's pure-Python
    unpickler reads a BINGET's index so, and `joblib.load` of a scikit-learn estimator fetched memo
    entry 0 instead of 32 (a dict key 'gpubp.sklearn')."""
    return bytearray(size)


def build(nvrtc, source: str, filename: str, name_expressions, options, cubin: bool = True) -> Build:
    """Compile `source` (named `filename` in messages) with `options` (strings), instantiating
    `name_expressions`.  A compile error is returned in `Build.error` with its log; a failing
    NVRTC call around it raises RuntimeError."""
    prog = check(nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), filename.encode(), 0, [], []),
                 "nvrtcCreateProgram")
    try:
        for ne in name_expressions:
            check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, ne.encode()), f"nvrtcAddNameExpression({ne})")
        opts = [o.encode() for o in options]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        buf = out_buffer(size)
        check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        text = buf.rstrip(b"\x00 ").decode(errors="replace")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return Build(error=err.name, log=text, lowered={})
        lowered = {ne: check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, ne.encode()),
                             f"nvrtcGetLoweredName({ne})").decode() for ne in name_expressions}
        binary = None
        if cubin:
            n = check(nvrtc, nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            out = out_buffer(n)
            check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, out), "nvrtcGetCUBIN")
            binary = bytes(out)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return Build(error=None, log=text, lowered=lowered, cubin=binary)
