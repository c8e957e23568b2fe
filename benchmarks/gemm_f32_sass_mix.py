"""The main loop's instruction mix of the gemm_f32 kernels, read from SASS (no GPU needed).

    python benchmarks/gemm_f32_sass_mix.py [--arch sm_90] [--kernel 'gemm_f32_fwd<3>' ...]

Compiles kernels/gemm_f32.cu with NVRTC (the options CuPy uses), disassembles the cubin with
cuobjdump (PyPI's nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm) and, per kernel, finds the
loop holding the most FFMA (the k-tile loop: the instructions from a backward branch's
target to the branch) and counts its instructions by opcode: FFMA, LDS (shared loads),
LDGSTS (cp.async), BAR, spill traffic (LDL/STL), integer/address and control instructions.
"FFMA share" = FFMA / the loop's instructions (less never-executed @!PT padding): the ceiling
on FFMA issue the loop allows.  Each kernel has two such loops: "fast" (interior k-tiles,
unmasked 16-byte copies) and "general" (the last tiles, edges, unaligned operands).
Prints one Markdown table per architecture.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gpubp import compile_check as cc  # noqa: E402
from gpubp.backends import cuda_gemm_f32 as g3  # noqa: E402
from gpubp.backends import cuda_source, nvrtc_program  # noqa: E402

DEFAULT_KERNELS = (g3.fwd_name(3), g3.bwd_data_name(3), g3.BWD_WEIGHT_NAME)
_RE_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_RE_BRA = re.compile(r"\bBRA\b[^;]*?0x([0-9a-f]+)")


def compile_cubin(names, arch: str) -> tuple[bytes, dict[str, str]]:
    """Cubin of the gemm_f32 module with `names` instantiated, and mangled name -> name."""
    opts = (f"--gpu-architecture={arch}",) + cuda_source.NVRTC_OPTIONS + cc._CUPY_EXTRA_OPTIONS
    b = nvrtc_program.build(cc._nvrtc(), g3.SPECS[0].source(), "gemm_f32.cu", names, opts)
    if b.error:
        raise RuntimeError(b.log)
    return b.cubin, {mangled: n for n, mangled in b.lowered.items()}


def functions(sass: str) -> dict[str, list[tuple[int, str, str]]]:
    """Per function of a cuobjdump listing: [(address, opcode, operands)]; an instruction
    predicated on !PT (never executed: ptxas pads cp.async sequences with them) gets the
    opcode "@!PT"."""
    out: dict[str, list] = {}
    cur = None
    for line in sass.splitlines():
        m = cc._RE_SASS_FUNCTION.match(line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = _RE_INSN.search(line)
        if cur is not None and m:
            pred = (m.group(2) or "").strip()
            cur.append((int(m.group(1), 16), "@!PT" if pred == "@!PT" else m.group(3), m.group(4)))
    return out


def k_loops(insns, min_ffma: int = 1024) -> list[tuple[str, list]]:
    """The loops (a backward branch and the instructions from its target) holding at least
    `min_ffma` FFMA, each labelled "fast" (its copies are all unmasked 16-byte
    LDGSTS...BYPASS.128: the interior loop) or "general" (masked and 4-byte copies too)."""
    out = []
    for i, (addr, op, args) in enumerate(insns):
        if op != "BRA":
            continue
        m = _RE_BRA.search(op + args)
        if not m or int(m.group(1), 16) >= addr:
            continue
        target = int(m.group(1), 16)
        body = [x for x in insns[:i + 1] if x[0] >= target]
        if sum(1 for x in body if x[1].startswith("FFMA")) < min_ffma:
            continue
        copies = [x[1] for x in body if x[1].startswith("LDGSTS")]
        fast = all(c.endswith("BYPASS.128") for c in copies)
        out.append(("fast" if fast else "general", body))
    return out


def classify(op: str) -> str:
    base = op.split(".")[0]
    if base == "FFMA":
        return "FFMA"
    if base == "LDS":
        return "LDS." + (op.split(".")[1] if "." in op and op.split(".")[1] in ("64", "128") else "32")
    if base in ("LDGSTS", "LDGDEPBAR", "DEPBAR"):
        return "cp.async (LDGSTS/DEPBAR)"
    if base in ("BAR",):
        return "BAR"
    if op == "@!PT":
        return "never executed (@!PT)"
    if base in ("LDL", "STL"):
        return "spill (LDL/STL)"
    if base in ("FADD", "FMUL", "FMNMX", "MUFU", "FSEL", "FSETP"):
        return "other float"
    if base in ("BRA", "EXIT", "BSSY", "BSYNC", "WARPSYNC", "NOP", "YIELD"):
        return "control"
    if base in ("LDG", "STG", "LDS", "STS", "LDC", "ULDC"):
        return "other memory"
    return "integer / address / predicate"


def mix(insns) -> Counter:
    return Counter(classify(op) for _, op, _ in insns)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="default: sm_80 and sm_90")
    ap.add_argument("--kernel", action="append", help=f"default: {', '.join(DEFAULT_KERNELS)}")
    args = ap.parse_args(argv)
    archs = args.arch or ["sm_80", "sm_90"]
    names = args.kernel or list(DEFAULT_KERNELS)
    cols = ["FFMA", "LDS.128", "LDS.64", "LDS.32", "cp.async (LDGSTS/DEPBAR)", "BAR", "spill (LDL/STL)",
            "integer / address / predicate", "control", "other float", "other memory", "never executed (@!PT)"]
    for arch in archs:
        cubin, lowered = compile_cubin(names, arch)
        funcs = functions(cc.dump_sass(cubin))
        print(f"\n### {arch}: main loop (one k-tile, BK {g3.BK}) of each kernel\n")
        print("| kernel | loop | instructions | " + " | ".join(cols) + " | FFMA share |")
        print("|---|---|---|" + "---|" * len(cols) + "---|")
        for mangled, name in lowered.items():
            for label, body in k_loops(funcs.get(mangled, [])):
                c = mix(body)
                issued = len(body) - c.get("never executed (@!PT)", 0)
                share = c["FFMA"] / issued if issued else 0.0
                print(f"| {name} | {label} | {issued} | " + " | ".join(str(c.get(k, 0)) for k in cols)
                      + f" | {share:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
