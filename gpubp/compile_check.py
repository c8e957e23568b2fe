"""Compile every CUDA kernel module with NVRTC, without a GPU, and report ptxas's resource use.

`compile_check()` builds each `ModuleSpec` of `all_specs()` from the
same single source string and options CuPy uses (plus `-Xptxas -v`) through
`cuda.bindings.nvrtc`, for each architecture asked for, and returns one row
per kernel and architecture: registers, spill stores and loads, stack frame
and static shared memory, as ptxas printed them into the program log.  No
driver and no device are needed, so it runs in CI on a CPU.

Modules whose `ModuleSpec.sass_expect` names a matrix instruction per kernel
(e.g. `HMMA.1688.F32.TF32` for `mma.sync` m16n8k8 TF32) also have their cubin
disassembled with `cuobjdump --dump-sass` (PyPI's nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm, no GPU needed): each such row gets `sass_op` and
`sass_count` (how many instructions of the cubin's function hold that opcode),
and a kernel with none, or a missing cuobjdump, is a problem.  Every such row also gets
`sass_hmma`, its count of tensor-core (HMMA) instructions: a kernel expected to hold
`FFMA` (a float32 policy) must hold no HMMA at all.  A kernel may be expected to hold
several instructions (e.g. `HGMMA.64x128x8.F32.TF32` and the TMA load `UTMALDG`): the
first is `sass_op` / `sass_count`, the others' counts are in `sass_more`.

A module whose `ModuleSpec.archs` names its own targets (sm_90a for wgmma) is built for
those instead: for each of its targets whose family (sm_90 for sm_90a) is among the
architectures asked for, so the default check builds the Hopper module for sm_90a.

`main(argv)` prints the table and returns 1 on a compile error, a missing
kernel, any spill or a failed SASS check (the CLI's `gpubp compile-check`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from .backends import cuda_source, nvrtc_program

DEFAULT_ARCHS = ("sm_80", "sm_90")

#: the launcher modules whose `SPECS` `all_specs()` gathers
_LAUNCHER_MODULES = ("cuda_gemm", "cuda_elementwise", "cuda_fused", "cuda_gemm_tc", "cuda_gemm_f32",
                     "cuda_fused_family", "cuda_gemm_wgmma")

#: options CuPy adds to every NVRTC compile (cupy/cuda/compiler.py)
_CUPY_EXTRA_OPTIONS = ("-ftz=true",)

_MISSING_NVRTC = ("the compile check needs NVRTC and its Python bindings: "
                  "pip install \"gpubp[compile]\" (cuda-bindings and nvidia-cuda-nvrtc)")

_RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_RE_PROPS = re.compile(r"Function properties for (\S+)")
_RE_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_REGS = re.compile(r"Used (\d+) registers")
_RE_SMEM = re.compile(r"(\d+) bytes smem")


_MISSING_CUOBJDUMP = ("the SASS check needs cuobjdump and nvdisasm: "
                      "pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm (or gpubp[compile])")

_RE_SASS_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
#: the substring of every tensor-core MMA instruction in SASS (HMMA.1688..., HMMA.16816...)
_HMMA = "HMMA"


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


def supported_archs(nvrtc=None) -> tuple[int, ...]:
    """The compute capabilities (75, 80, 90, ...) this NVRTC compiles for."""
    nvrtc = nvrtc or _nvrtc()
    err, archs = nvrtc.nvrtcGetSupportedArchs()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcMissing(f"{_MISSING_NVRTC} (nvrtcGetSupportedArchs: {err})")
    return tuple(int(a) for a in archs)


_RE_ARCH = re.compile(r"sm_(\d+)a?")


def arch_problem(arch: str, supported) -> str | None:
    """Why `--arch ARCH` cannot be built by this NVRTC (None when it can): a name that is not
    `sm_NN` (or `sm_NNa`), or a compute capability NVRTC does not know."""
    m = _RE_ARCH.fullmatch(arch)
    if m is None:
        return f"{arch!r} is not an architecture name such as sm_90 (one per --arch)"
    if int(m.group(1)) not in supported:
        return f"NVRTC {nvrtc_version()} does not compile for {arch}"
    return None


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


def find_cuobjdump() -> str | None:
    """Path of a cuobjdump with an nvdisasm beside it or on PATH: PATH first, then the
    `nvidia/*/bin` folders of the PyPI wheels."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import nvidia
        roots = list(nvidia.__path__)
    except ImportError:
        return None
    for root in roots:
        for sub in sorted(os.listdir(root)):
            cand = os.path.join(root, sub, "bin", "cuobjdump")
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    return None


def parse_sass(text: str, opcodes) -> dict[str, dict[str, int]]:
    """Per function (mangled name) of a `cuobjdump --dump-sass` listing, how many
    instruction lines contain each of `opcodes` (substrings such as "HMMA.1688.F32.TF32")."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = _RE_SASS_FUNCTION.match(line)
        if m:
            current = out.setdefault(m.group(1), {op: 0 for op in opcodes})
            continue
        if current is not None and "/*" in line and ";" in line:
            for op in opcodes:
                if op in line:
                    current[op] += 1
    return out


def dump_sass(cubin: bytes, cuobjdump: str | None = None) -> str:
    """`cuobjdump --dump-sass` of a cubin; raises RuntimeError when it cannot run."""
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise RuntimeError(_MISSING_CUOBJDUMP)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(tool) + os.pathsep + env.get("PATH", "")   # nvdisasm beside it
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "module.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([tool, "--dump-sass", path], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump failed ({res.returncode}): {res.stderr.strip()[:2000]}")
    return res.stdout


def _row(module, arch, kernel, **kw) -> dict:
    row = dict(module=module, arch=arch, kernel=kernel, mangled=None, registers=None,
               spill_stores=None, spill_loads=None, stack_frame=None, smem=None, error=None,
               sass_op=None, sass_count=None, sass_hmma=None, sass_more=None)
    row.update(kw)
    return row


def compile_spec(spec, arch: str, nvrtc=None) -> list[dict]:
    """Compile one ModuleSpec for `arch` ("sm_90"); one row per kernel, or one error row."""
    nvrtc = nvrtc or _nvrtc()
    try:
        src = spec.source()
    except Exception as e:
        return [_row(spec.name, arch, None, error=f"cannot read the sources: {type(e).__name__}: {e}")]
    expect, more = {}, {}
    for kname, op in getattr(spec, "sass_expect", ()) or ():
        if kname in expect:
            more.setdefault(kname, []).append(op)
        else:
            expect[kname] = op
    opts = (f"--gpu-architecture={arch}",) + cuda_source.NVRTC_OPTIONS + _CUPY_EXTRA_OPTIONS + ("-Xptxas", "-v")
    b = nvrtc_program.build(nvrtc, src, f"{spec.name}.cu", spec.name_expressions, opts, cubin=bool(expect))
    log = b.log
    if b.error:
        return [_row(spec.name, arch, None, error=f"{b.error}:\n{log}")]
    lowered = {mangled: ne for ne, mangled in b.lowered.items()}
    cubin = b.cubin

    sass, sass_error = {}, None
    if expect:
        try:
            ops = set(expect.values()) | {op for v in more.values() for op in v} | {_HMMA}
            sass = parse_sass(dump_sass(cubin), sorted(ops))
        except RuntimeError as e:
            sass_error = str(e)

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
    for r in rows:
        op = expect.get(r["kernel"])
        if op is not None and not r["error"]:
            r["sass_op"] = op
            if sass_error:
                r["error"] = f"SASS not checked: {sass_error}"
            else:
                counts = sass.get(r["mangled"], {})
                r["sass_count"] = counts.get(op, 0)
                r["sass_hmma"] = counts.get(_HMMA, 0)
                if r["kernel"] in more:
                    r["sass_more"] = {op: counts.get(op, 0) for op in more[r["kernel"]]}
    rows.sort(key=lambda r: r["kernel"] or "")
    return rows


def spec_archs(spec, archs) -> tuple[str, ...]:
    """The targets `spec` is built for when `archs` are asked: `archs`, or for a module naming its
    own (`ModuleSpec.archs`, e.g. sm_90a) those of its targets whose family is asked."""
    own = tuple(getattr(spec, "archs", ()) or ())
    if not own:
        return tuple(archs)
    families = {a.rstrip("a") for a in archs}
    return tuple(a for a in own if a.rstrip("a") in families)


def compile_check(archs=DEFAULT_ARCHS, specs=None) -> list[dict]:
    """One row per (module, arch, kernel); rows with `error` set for failures.

    Raises `NvrtcMissing` when NVRTC's bindings are not installed.
    """
    nvrtc = _nvrtc()
    errors: list[dict] = []
    if specs is None:
        specs, errors = _gather_specs()
    jobs = [(spec, arch) for spec in specs for arch in spec_archs(spec, archs)]

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
    """What makes the check fail: compile errors, spills, more than 255 registers, a kernel
    whose SASS lacks the matrix instruction its module expects, an FFMA-only kernel with HMMA."""
    out = []
    for r in rows:
        where = f"{r['module']} {r['arch'] or ''} {r['kernel'] or ''}".strip()
        if r["error"]:
            out.append(f"{where}: {r['error']}")
        elif r["spill_stores"] or r["spill_loads"]:
            out.append(f"{where}: spills ({r['spill_stores']} bytes stored, {r['spill_loads']} loaded)")
        elif r["registers"] is None or r["registers"] > 255:
            out.append(f"{where}: registers {r['registers']}")
        elif r.get("sass_op") and not r.get("sass_count"):
            out.append(f"{where}: no {r['sass_op']} instruction in its SASS")
        elif any(n == 0 for n in (r.get("sass_more") or {}).values()):
            missing = [op for op, n in r["sass_more"].items() if n == 0]
            out.append(f"{where}: no {', '.join(missing)} instruction in its SASS")
        elif r.get("sass_op") == "FFMA" and r.get("sass_hmma"):
            out.append(f"{where}: {r['sass_hmma']} HMMA instructions in a float32 (FFMA-only) kernel")
    return out


def _sass_cell(r) -> str:
    if not r.get("sass_op"):
        return "-"
    cells = [f"{r['sass_count']} {r['sass_op']}"] + [f"{n} {op}" for op, n in (r.get("sass_more") or {}).items()]
    return ", ".join(cells)


def format_table(rows) -> str:
    ok = [r for r in rows if not r["error"]]
    head = ("module", "arch", "kernel", "regs", "stack", "spill st", "spill ld", "smem", "sass")
    body = [(r["module"], r["arch"], r["kernel"], str(r["registers"]), str(r["stack_frame"]),
             str(r["spill_stores"]), str(r["spill_loads"]), str(r["smem"]),
             _sass_cell(r)) for r in ok]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 3 or i == 8 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpubp compile-check",
                                 description="Compile every CUDA kernel with NVRTC (no GPU needed) "
                                             "and report registers, spills and shared memory.")
    ap.add_argument("--arch", action="append", metavar="sm_XX",
                    help=f"target architecture, repeatable (default: {' '.join(DEFAULT_ARCHS)})")
    args = ap.parse_args(argv)
    archs = tuple(dict.fromkeys(args.arch)) if args.arch else DEFAULT_ARCHS    # each once
    try:
        supported = supported_archs()
        # a bad name is the caller's mistake (status 2), not a kernel that failed to build (status 1)
        bad = [why for why in (arch_problem(a, supported) for a in archs) if why]
        if bad:
            ap.error("--arch: " + "; ".join(bad) + "; it compiles for "
                     + " ".join(f"sm_{a}" for a in supported))
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
    n_sass = sum(1 for r in rows if r.get("sass_count"))
    print(f"\n{n_ok} kernel builds, no errors, no spills; {n_sass} with their matrix instructions "
          f"checked in SASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
