"""Compile every CUDA kernel module with NVRTC, without a GPU, and report ptxas's resource use.

`compile_check()` builds each `ModuleSpec` of `all_specs()` from the
same single source string and options CuPy uses (plus `-Xptxas -v`) through
`cuda.bindings.nvrtc`, for each architecture asked for, and returns one row
per kernel and architecture: registers, spill stores and loads, stack frame
and static shared memory, as ptxas printed them into the program log.  No
driver and no device are needed, so it runs in CI on a CPU.

`main(argv)` prints the table and returns 1 on a compile error, a missing
kernel or any spill (the CLI's `gpubp compile-check`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

from .backends import cuda_source

DEFAULT_ARCHS = ("sm_80", "sm_90")

#: the launcher modules whose `SPECS` `all_specs()` gathers
_LAUNCHER_MODULES = ("cuda_gemm", "cuda_elementwise", "cuda_fused")

#: options CuPy adds to every NVRTC compile (cupy/cuda/compiler.py)
_CUPY_EXTRA_OPTIONS = ("-ftz=true",)

_MISSING_NVRTC = ("the compile check needs NVRTC and its Python bindings: "
                  "pip install cuda-bindings nvidia-cuda-nvrtc (or gpubp[cuda12] / gpubp[cuda13])")

_RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_RE_PROPS = re.compile(r"Function properties for (\S+)")
_RE_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_REGS = re.compile(r"Used (\d+) registers")
_RE_SMEM = re.compile(r"(\d+) bytes smem")


class NvrtcMissing(RuntimeError):
    """NVRTC or cuda-bindings is not installed."""


def parse_ptxas_log(log: str) -> dict[str, dict]:
    """Per entry function (mangled name) of a `-Xptxas -v` log: arch, registers,
    stack_frame, spill_stores, spill_loads, smem (bytes of static shared memory)."""
    kernels: dict[str, dict] = {}
    entry = None      # the entry whose "Used N registers" line comes next
    props = None      # the function whose stack/spill line comes next
    for line in log.splitlines():
        m = _RE_ENTRY.search(line)
        if m:
            entry = m.group(1)
            kernels[entry] = dict(arch=m.group(2), registers=None, stack_frame=0,
                                  spill_stores=0, spill_loads=0, smem=0)
            continue
        m = _RE_PROPS.search(line)
        if m:
            props = m.group(1)
            continue
        m = _RE_STACK.search(line)
        if m:
            if props in kernels:
                k = kernels[props]
                k["stack_frame"], k["spill_stores"], k["spill_loads"] = map(int, m.groups())
            continue
        m = _RE_REGS.search(line)
        if m and entry in kernels:
            kernels[entry]["registers"] = int(m.group(1))
            s = _RE_SMEM.search(line)
            if s:
                kernels[entry]["smem"] = int(s.group(1))
    return kernels


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise NvrtcMissing(_MISSING_NVRTC) from e
    try:
        err, *_ = nvrtc.nvrtcVersion()
    except Exception as e:  # libnvrtc.so not found
        raise NvrtcMissing(f"{_MISSING_NVRTC} ({e})") from e
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcMissing(f"{_MISSING_NVRTC} (nvrtcVersion: {err})")
    return nvrtc


def nvrtc_version() -> str:
    _, major, minor = _nvrtc().nvrtcVersion()
    return f"{major}.{minor}"


def all_specs() -> list:
    """Every kernel module gpubp builds: the `SPECS` of each launcher module."""
    import importlib

    return [s for mod in _LAUNCHER_MODULES for s in importlib.import_module(f"gpubp.backends.{mod}").SPECS]


def _gather_specs() -> tuple[list, list[dict]]:
    """The ModuleSpecs to build, and an error row for each launcher module that would not import."""
    try:
        return list(all_specs()), []
    except Exception:
        pass
    import importlib

    specs, errors = [], []
    for mod in _LAUNCHER_MODULES:
        try:
            specs += list(importlib.import_module(f"gpubp.backends.{mod}").SPECS)
        except Exception as e:
            errors.append(_row(mod, None, None, error=f"cannot import gpubp.backends.{mod}: "
                                                        f"{type(e).__name__}: {e}"))
    return specs, errors


def _row(module, arch, kernel, **kw) -> dict:
    row = dict(module=module, arch=arch, kernel=kernel, mangled=None, registers=None,
               spill_stores=None, spill_loads=None, stack_frame=None, smem=None, error=None)
    row.update(kw)
    return row


def _check(nvrtc, result, what):
    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what}: {err}")
    return result[1] if len(result) > 1 else None


def compile_spec(spec, arch: str, nvrtc=None) -> list[dict]:
    """Compile one ModuleSpec for `arch` ("sm_90"); one row per kernel, or one error row."""
    nvrtc = nvrtc or _nvrtc()
    try:
        src = spec.source()
    except Exception as e:
        return [_row(spec.name, arch, None, error=f"cannot read the sources: {type(e).__name__}: {e}")]
    prog = _check(nvrtc, nvrtc.nvrtcCreateProgram(src.encode(), f"{spec.name}.cu".encode(), 0, [], []),
                  "nvrtcCreateProgram")
    try:
        for ne in spec.name_expressions:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, ne.encode()), f"nvrtcAddNameExpression({ne})")
        opts = [f"--gpu-architecture={arch}".encode()]
        opts += [o.encode() for o in cuda_source.NVRTC_OPTIONS + _CUPY_EXTRA_OPTIONS]
        opts += [b"-Xptxas", b"-v"]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        buf = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.rstrip(b"\x00 ").decode(errors="replace")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return [_row(spec.name, arch, None, error=f"{err.name}:\n{log}")]
        lowered = {}
        for ne in spec.name_expressions:
            lowered[_check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, ne.encode()),
                           f"nvrtcGetLoweredName({ne})").decode()] = ne
    finally:
        nvrtc.nvrtcDestroyProgram(prog)

    kernels = parse_ptxas_log(log)
    rows = []
    for mangled, k in kernels.items():
        if k["arch"] != arch:
            continue
        rows.append(_row(spec.name, arch, lowered.get(mangled, mangled), mangled=mangled,
                         registers=k["registers"], spill_stores=k["spill_stores"],
                         spill_loads=k["spill_loads"], stack_frame=k["stack_frame"], smem=k["smem"]))
    for mangled, ne in lowered.items():
        if mangled not in kernels:
            rows.append(_row(spec.name, arch, ne, mangled=mangled,
                             error="no ptxas report for this kernel (not a __global__ function?)"))
    rows.sort(key=lambda r: r["kernel"] or "")
    return rows


def compile_check(archs=DEFAULT_ARCHS, specs=None) -> list[dict]:
    """One row per (module, arch, kernel); rows with `error` set for failures.

    Raises `NvrtcMissing` when NVRTC's bindings are not installed.
    """
    nvrtc = _nvrtc()
    errors: list[dict] = []
    if specs is None:
        specs, errors = _gather_specs()
    jobs = [(spec, arch) for spec in specs for arch in archs]

    def build(job):
        spec, arch = job
        try:
            return compile_spec(spec, arch, nvrtc)
        except Exception as e:
            return [_row(spec.name, arch, None, error=f"{type(e).__name__}: {e}")]

    # NVRTC programs are independent and the bindings release the GIL: one thread per build
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        built = list(pool.map(build, jobs))
    return list(errors) + [r for rows in built for r in rows]


def problems(rows) -> list[str]:
    """What makes the check fail: compile errors, spills, more than 255 registers."""
    out = []
    for r in rows:
        where = f"{r['module']} {r['arch'] or ''} {r['kernel'] or ''}".strip()
        if r["error"]:
            out.append(f"{where}: {r['error']}")
        elif r["spill_stores"] or r["spill_loads"]:
            out.append(f"{where}: spills ({r['spill_stores']} bytes stored, {r['spill_loads']} loaded)")
        elif r["registers"] is None or r["registers"] > 255:
            out.append(f"{where}: registers {r['registers']}")
    return out


def format_table(rows) -> str:
    ok = [r for r in rows if not r["error"]]
    head = ("module", "arch", "kernel", "regs", "stack", "spill st", "spill ld", "smem")
    body = [(r["module"], r["arch"], r["kernel"], str(r["registers"]), str(r["stack_frame"]),
             str(r["spill_stores"]), str(r["spill_loads"]), str(r["smem"])) for r in ok]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpubp compile-check",
                                 description="Compile every CUDA kernel with NVRTC (no GPU needed) "
                                             "and report registers, spills and shared memory.")
    ap.add_argument("--arch", action="append", metavar="sm_XX",
                    help=f"target architecture, repeatable (default: {' '.join(DEFAULT_ARCHS)})")
    args = ap.parse_args(argv)
    archs = tuple(args.arch) if args.arch else DEFAULT_ARCHS
    try:
        rows = compile_check(archs)
    except NvrtcMissing as e:
        print(f"gpubp compile-check: {e}", file=sys.stderr)
        return 2
    print(f"NVRTC {nvrtc_version()}, options {' '.join(cuda_source.NVRTC_OPTIONS + _CUPY_EXTRA_OPTIONS)}, "
          f"archs {' '.join(archs)}")
    print(format_table(rows))
    bad = problems(rows)
    n_ok = sum(1 for r in rows if not r["error"])
    if bad:
        print(f"\n{len(bad)} problem(s):", file=sys.stderr)
        for p in bad:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"\n{n_ok} kernel builds, no errors, no spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
