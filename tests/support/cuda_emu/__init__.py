"""Run gpubp's CUDA kernels on the CPU, thread by thread (tests only).

`build(spec)` compiles a kernel module (a `gpubp.backends.cuda_source.ModuleSpec`) with the host
C++ compiler: the module's own source, its inline-PTX helpers swapped for the C++ stand-ins of
`ptx.h` (written from the PTX ISA), after `runtime.h` (fibers for threads, shared memory,
warp collectives, cp.async).  `EmuModule.launch(name, grid, block, args, shared_mem=...)` runs
one launch as CuPy's `RawKernel` call would: `name` is one of the spec's name expressions, each
argument a numpy array (a pointer; C-contiguous), a numpy scalar of the parameter's exact size,
or a 1-element structured/byte array for a struct passed by value.

Array arguments are copied into fresh buffers that end at a PROT_NONE page (less than 16 bytes
before it where the end is not 16-byte aligned: a buffer keeps its array's address modulo 16, for
the kernels' 16-byte vector accesses), so a read or write past a buffer's end faults and is
reported (`EmuError`) with the rest of the launch abandoned; the results are copied back into the
caller's arrays.  Arguments that overlap in memory share one
buffer.  What runtime.h checks besides is listed at its top.

This is a model, not the hardware: blocks run one after another, warps never run ahead of a
barrier they do not reach, float arithmetic is the host's (no fused multiply-add), and each
tensor-core instruction (mma.sync, wgmma) sums its k products exactly and rounds once, the model of
gpubp.precision.matmul (the PTX ISA leaves the order and rounding unspecified).  Agreement here is a necessary condition for a kernel,
never a substitute for running it on a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..cuda_text import match_close, strip_comments

HERE = Path(__file__).resolve().parent
#: compiler flags: optimised enough to run thousands of fibers quickly, no FMA contraction
CXXFLAGS = ("-std=c++17", "-O1", "-g0", "-fPIC", "-shared", "-fno-strict-aliasing", "-ffp-contract=off",
            "-w", "-D__CUDA_ARCH__=900", "-DGPUBP_CUDA_EMU=1")
#: the hazard check's build: every load and store calls race.h's callbacks (no sanitizer runtime:
#: the callbacks are ours); about 10 times slower
RACE_FLAGS = ("-fsanitize=kernel-address", "--param", "asan-instrumentation-with-call-threshold=0",
              "--param", "asan-stack=0", "--param", "asan-globals=0")


def race_default() -> bool:
    """Whether modules are built with the hazard check unless told: GPUBP_EMU_RACE=1."""
    return os.environ.get("GPUBP_EMU_RACE", "0") == "1"
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


#: one launch at a time in the process: a module's state (fibers, shared memory, the fault handler's
#: jump buffer) is global, and ctypes lets other Python threads run during a launch
_LAUNCH_LOCK = threading.Lock()


class EmuError(RuntimeError):
    """A kernel did something the emulator (and the hardware) refuses: see the message."""


def compiler() -> str | None:
    """The host C++ compiler the emulator uses ($CXX, else g++ or c++), or None."""
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


# ---------------------------------------------------------------------------- source transform
def _overrides() -> list[tuple[tuple[str, ...], str]]:
    """ptx.h's blocks: (names, C++ text)."""
    text = (HERE / "ptx.h").read_text()
    parts = re.split(r"^// @override ([\w ]+)\n", text, flags=re.M)
    return [(tuple(parts[i].split()), parts[i + 1]) for i in range(1, len(parts), 2)]


def _definitions(src: str, name: str) -> list[tuple[int, int]]:
    """(start, end) of every `__device__` function definition named `name` (with its template head)."""
    spans = []
    for m in re.finditer(rf"\b{name}\s*\(", src):
        # the declaration starts after the previous ';', '{' or '}' or preprocessor line
        k = max(src.rfind(c, 0, m.start()) for c in ";{}")
        start = k + 1
        for pm in re.finditer(r"^[ \t]*#[^\n]*\n", src[start:m.start()], flags=re.M):
            start_candidate = start + pm.end()
            start = max(start, start_candidate)
        head = src[start:m.start()]
        if "__device__" not in head:
            continue
        close = match_close(src, m.end() - 1, "(", ")")
        rest = src[close:]
        bm = re.match(r"[\s\w]*\{", rest)
        if not bm:
            continue          # a declaration or a call, not a definition
        end = match_close(src, close + bm.end() - 1, "{", "}")
        spans.append((start, end))
    return spans


#: a cast to a pointer of a vector type (8- or 16-byte loads and stores; gemm.cu's gemm_vec<T, N>::type
#: names one, or T itself), which runtime.h's emu::vec_cast checks for the alignment the hardware requires
_VEC_CAST = re.compile(r"reinterpret_cast\s*<\s*((?:const\s+)?(?:float[24]|u?int[24]|double2|longlong2|"
                       r"Pack(?:\s*<\s*\w+\s*>)?|typename\s+gemm_vec\s*<[^<>]*>\s*::\s*type)\s*\*)\s*>\s*\(")


def emulation_source(module_source: str) -> str:
    """The module's source with its PTX helpers replaced, `extern __shared__` arrays made
    pointers into the emulated dynamic shared memory, and casts to vector pointers checked for
    alignment (emu::vec_cast).  Raises EmuError on inline PTX left."""
    src = strip_comments(module_source)
    for names, text in _overrides():
        spans = sorted(s for n in names for s in _definitions(src, n))
        if not spans:
            continue
        out, pos = [], 0
        for i, (a, b) in enumerate(spans):
            out.append(src[pos:a])
            if i == 0:
                out.append("\n" + text + "\n")
            pos = b
        out.append(src[pos:])
        src = "".join(out)
    src = re.sub(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\s*\[\s*\]\s*;",
                 r"\1* \2 = reinterpret_cast<\1*>(emu::S().dyn);", src)
    src = _VEC_CAST.sub(r"emu::vec_cast<\1>(", src)
    left = [m.start() for m in re.finditer(r"\basm\b", src)]
    if left:
        i = left[0]
        raise EmuError("inline PTX without a stand-in in tests/support/cuda_emu/ptx.h near: "
                       + " ".join(src[max(0, i - 200):i + 80].split()))
    return src


# ---------------------------------------------------------------------------- building
def _cache_dir() -> Path:
    d = Path(os.environ.get("GPUBP_EMU_CACHE", Path(tempfile.gettempdir()) / f"gpubp-emu-{os.getuid()}"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def build_source(source: str, name_expressions, tag: str = "module", race: bool | None = None) -> "EmuModule":
    """Compile `source` (a module's CUDA text) with registrations for `name_expressions`; with
    `race` (default: `race_default()`) every launch is also checked for hazards (race.h)."""
    race = race_default() if race is None else bool(race)
    flags = CXXFLAGS + (RACE_FLAGS if race else ())
    cxx = compiler()
    if cxx is None:
        raise EmuError("no host C++ compiler (g++, c++ or clang++) found for the kernel emulator")
    body = emulation_source(source)
    regs = "\n".join(f"static int emu_reg_{i} = emu::reg({ne!r}, &{ne});".replace("'", '"')
                     for i, ne in enumerate(name_expressions))
    text = (f'#include "{HERE / "runtime.h"}"\n{body}\n#include "{HERE / "launch.h"}"\n{regs}\n')
    key = hashlib.sha256((text + "".join(flags) + cxx
                          + "".join((HERE / f).read_text() for f in ("runtime.h", "launch.h", "race.h"))).encode()).hexdigest()[:24]
    d = _cache_dir()
    so = d / f"{tag}-{key}.so"
    if not so.exists():     # per-process file names: ranks of an MPI job may build the same module at once
        cpp = d / f"{tag}-{key}.{os.getpid()}.cpp"
        cpp.write_text(text)
        tmp = d / f"{tag}-{key}.{os.getpid()}.so"
        r = subprocess.run([cxx, *flags, str(cpp), "-o", str(tmp)], capture_output=True, text=True)
        if r.returncode != 0:
            raise EmuError(f"the emulated module {tag} does not compile ({cpp}):\n{r.stderr[-4000:]}")
        os.replace(tmp, so)
        cpp.unlink()
    return EmuModule(so, list(name_expressions), race)


def build(spec, name_expressions=None, race: bool | None = None) -> "EmuModule":
    """Compile a ModuleSpec (all its name expressions, or the ones given) for the emulator."""
    names = tuple(name_expressions) if name_expressions is not None else spec.name_expressions
    return build_source(spec.source(), names, tag=spec.name, race=race)


# ---------------------------------------------------------------------------- guarded buffers
#: a buffer keeps its caller's address modulo this: the launchers choose 16-byte vector paths from
#: an array's address (cudaMalloc's are 256-byte aligned), and the host compiles 16-byte vector
#: types' accesses to aligned SSE loads, which fault where the address is not so aligned
_ALIGN = 16


class _Guarded:
    """`nbytes` of anonymous memory starting at an address equal to `like` modulo _ALIGN, ending
    less than _ALIGN bytes (right, when `like + nbytes` is aligned) below a PROT_NONE page."""

    def __init__(self, nbytes: int, like: int = 0):
        self.pages = (nbytes + _ALIGN + _PAGE - 1) // _PAGE + 1
        self.map = mmap.mmap(-1, self.pages * _PAGE)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        guard = self.base + (self.pages - 1) * _PAGE
        if _libc.mprotect(guard, _PAGE, 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")
        self.start = guard - nbytes - (guard - nbytes - like) % _ALIGN
        self.nbytes = nbytes

    def close(self):
        _libc.mprotect(self.base + (self.pages - 1) * _PAGE, _PAGE, 3)   # PROT_READ | PROT_WRITE
        self.map.close()


def _span(a: np.ndarray) -> tuple[int, int]:
    lo = a.__array_interface__["data"][0]
    return lo, lo + a.nbytes


class EmuModule:
    """One compiled module; `launch` runs a kernel."""

    def __init__(self, so: Path, name_expressions, race: bool):
        #: check every launch for shared- and global-memory hazards (race.h; built in)
        self.race = race
        self.lib = ctypes.CDLL(str(so))
        self.lib.emu_first_hazard.restype = ctypes.c_char_p
        self.lib.emu_hazards.restype = ctypes.c_long
        self.lib.emu_add_global.argtypes = (ctypes.c_void_p, ctypes.c_long)
        self.lib.emu_name.restype = ctypes.c_char_p
        self.lib.emu_error.restype = ctypes.c_char_p
        self.lib.emu_param_size.restype = ctypes.c_long
        self.lib.emu_static_smem.restype = ctypes.c_long
        self.lib.emu_launch.argtypes = [ctypes.c_int] + [ctypes.c_uint] * 6 + [ctypes.c_long, ctypes.c_void_p]
        self.index = {self.lib.emu_name(i).decode(): i for i in range(self.lib.emu_count())}
        self.launches = 0

    def _kernel(self, name: str) -> int:
        key = re.sub(r"\s+", "", name)
        for ne, i in self.index.items():
            if re.sub(r"\s+", "", ne) == key:
                return i
        raise EmuError(f"{name!r} is not one of the module's name expressions")

    def launch(self, name, grid, block, args, shared_mem: int = 0) -> None:
        with _LAUNCH_LOCK:
            self._launch(name, grid, block, args, shared_mem)

    def _launch(self, name, grid, block, args, shared_mem: int = 0) -> None:
        i = self._kernel(name)
        grid = tuple(grid) + (1,) * (3 - len(tuple(grid)))
        block = tuple(block) + (1,) * (3 - len(tuple(block)))
        nparams = self.lib.emu_nparams(i)
        if len(args) != nparams:
            raise EmuError(f"{name}: {len(args)} arguments for {nparams} parameters")
        # arrays: one guarded buffer per group of overlapping arrays
        arrays = [(k, a) for k, a in enumerate(args)
                  if isinstance(a, np.ndarray) and a.ndim > 0 and not (a.dtype.fields or a.dtype == np.void)]
        for k, a in arrays:
            if not a.flags.c_contiguous:
                raise EmuError(f"{name}: argument {k} is not C-contiguous")
        spans = sorted((_span(a) + (k,) for k, a in arrays if a.nbytes), key=lambda s: s[0])
        groups: list[list] = []
        for lo, hi, k in spans:
            if groups and lo < groups[-1][1]:
                groups[-1][1] = max(groups[-1][1], hi)
                groups[-1][2].append(k)
            else:
                groups.append([lo, hi, [k]])
        holders, values, where = [], [], {}
        try:
            for lo, hi, ks in groups:
                g = _Guarded(hi - lo, like=lo)
                ctypes.memmove(g.start, lo, hi - lo)
                holders.append((g, lo, hi))
                for k in ks:
                    where[k] = g.start + (_span(args[k])[0] - lo)
            for k, a in enumerate(args):
                size = self.lib.emu_param_size(i, k)
                if k in where or (isinstance(a, np.ndarray) and a.ndim > 0 and a.nbytes == 0
                                  and not a.dtype.fields):
                    if size != 8:
                        raise EmuError(f"{name}: argument {k} is an array but parameter {k} is not a pointer")
                    # an empty array is an address past a guard: any access faults
                    ptr = where.get(k, 0x10)
                    v = ctypes.c_void_p(ptr)
                else:
                    raw = np.asarray(a).tobytes()
                    if len(raw) != size:
                        raise EmuError(f"{name}: argument {k} has {len(raw)} bytes, parameter {k} has {size}")
                    v = ctypes.create_string_buffer(raw, size)
                values.append(v)
            ptrs = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
            self.lib.emu_set_race(int(self.race))
            self.lib.emu_clear_globals()
            if self.race:
                for g, _, _ in holders:
                    self.lib.emu_add_global(g.start, g.nbytes)
            rc = self.lib.emu_launch(i, *[int(x) for x in grid], *[int(x) for x in block], int(shared_mem), ptrs)
            self.launches += 1
            self.lib.emu_clear_globals()
            if rc != 0:
                raise EmuError(f"{name}: {self.lib.emu_error().decode()}")
            if self.race and self.lib.emu_hazards():
                raise EmuError(f"{name}: {self.lib.emu_hazards()} hazardous accesses; the first: "
                               f"{self.lib.emu_first_hazard().decode()}")
            for g, lo, hi in holders:
                ctypes.memmove(lo, g.start, hi - lo)
        finally:
            for g, _, _ in holders:
                g.close()
