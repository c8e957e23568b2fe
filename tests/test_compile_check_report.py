"""gpubp.compile_check's reading and reporting, without building anything (no NVRTC needed): which
rows are problems and in what words, the table, the targets a module is built for, the --arch
names, the ptxas and SASS parsers' edge lines, where cuobjdump is found and how it is run, and
`main`'s exit statuses."""
import os
import re
import stat
import sys
import types

import pytest

from gpubp import compile_check as cc
from support.compile_specs import FakeSpec


def _ok(**kw):
    return cc._row("m", "sm_90", "k", **{**dict(mangled="_Zk", registers=40, spill_stores=0, spill_loads=0,
                                                stack_frame=0, smem=0), **kw})


@pytest.mark.parametrize("row, why", [
    (_ok(), None),
    (_ok(error="boom"), "m sm_90 k: boom"),
    (cc._row("m", None, None, error="cannot import"), "m: cannot import"),
    (_ok(spill_stores=4), "m sm_90 k: spills (4 bytes stored, 0 loaded)"),
    (_ok(spill_loads=8), "m sm_90 k: spills (0 bytes stored, 8 loaded)"),
    (_ok(registers=255), None),
    (_ok(registers=256), "m sm_90 k: registers 256"),
    (_ok(registers=None), "m sm_90 k: registers None"),
    (_ok(sass_op="HMMA.1688.F32.TF32", sass_count=0, sass_hmma=0), "m sm_90 k: no HMMA.1688.F32.TF32 instruction in its SASS"),
    (_ok(sass_op="HMMA.1688.F32.TF32", sass_count=2, sass_hmma=2), None),
    (_ok(sass_op="HGMMA", sass_count=2, sass_more={"UTMALDG": 0, "X": 1, "Y": 0}),
     "m sm_90 k: no UTMALDG, Y instruction in its SASS"),
    (_ok(sass_op="HGMMA", sass_count=2, sass_more={"UTMALDG": 3}), None),
    (_ok(sass_op="HGMMA", sass_count=2, sass_more={"UTMALDG": 1}), None),
    (_ok(sass_op="HGMMA", sass_count=2, sass_more={"UTMALDG": 0}), "m sm_90 k: no UTMALDG instruction in its SASS"),
    (_ok(sass_op="FFMA", sass_count=9, sass_hmma=2), "m sm_90 k: 2 HMMA instructions in a float32 (FFMA-only) kernel"),
    (_ok(sass_op="FFMA", sass_count=9, sass_hmma=0), None),
    (_ok(sass_op="HMMA.1688.F32.TF32", sass_count=9, sass_hmma=9), None),
])
def test_problems_names_each_failure_in_its_words(row, why):
    assert cc.problems([row]) == ([why] if why else [])


def test_problems_reports_every_failing_row_once_in_order():
    rows = [_ok(spill_stores=4, registers=300), _ok(), _ok(error="e")]
    assert cc.problems(rows) == ["m sm_90 k: spills (4 bytes stored, 0 loaded)", "m sm_90 k: e"]


def test_the_table_aligns_its_columns_and_leaves_out_error_rows():
    rows = [cc._row("elementwise", "sm_90", "loss<float>", registers=32, spill_stores=0, spill_loads=0,
                    stack_frame=8, smem=1024),
            cc._row("tc", "sm_80", "k", registers=128, spill_stores=0, spill_loads=0, stack_frame=0, smem=0,
                    sass_op="HMMA", sass_count=4, sass_more={"LDSM": 2, "X": 0}),
            cc._row("bad", "sm_90", None, error="NVRTC_ERROR_COMPILATION")]
    lines = cc.format_table(rows).split("\n")
    assert lines == [
        "module       arch   kernel       regs  stack  spill st  spill ld  smem  sass",
        "-----------  -----  -----------  ----  -----  --------  --------  ----  -------------------",
        "elementwise  sm_90  loss<float>    32      8         0         0  1024  -",
        "tc           sm_80  k             128      0         0         0     0  4 HMMA, 2 LDSM, 0 X"]
    assert cc._sass_cell(cc._row("m", "a", "k", sass_op="FFMA", sass_count=3)) == "3 FFMA"


def test_a_module_naming_its_own_targets_is_built_for_those_whose_family_is_asked():
    plain = types.SimpleNamespace(archs=())
    hopper = types.SimpleNamespace(archs=("sm_90a", "sm_100a"))
    assert cc.spec_archs(plain, ["sm_80", "sm_90"]) == ("sm_80", "sm_90")
    assert cc.spec_archs(types.SimpleNamespace(), ("sm_80",)) == ("sm_80",)
    assert cc.spec_archs(hopper, ("sm_80", "sm_90")) == ("sm_90a",)
    assert cc.spec_archs(hopper, ("sm_90a", "sm_100")) == ("sm_90a", "sm_100a")
    assert cc.spec_archs(hopper, ("sm_80",)) == ()


def test_arch_names(monkeypatch):
    monkeypatch.setattr(cc, "nvrtc_version", lambda: "13.5")
    assert cc.arch_problem("sm_90", (80, 90)) is None and cc.arch_problem("sm_90a", (80, 90)) is None
    assert cc.arch_problem("sm_75", (80, 90)) == "NVRTC 13.5 does not compile for sm_75"
    assert cc.arch_problem("sm_90b", (90,)) == "'sm_90b' is not an architecture name such as sm_90 (one per --arch)"
    assert cc.arch_problem("compute_90", (90,)).startswith("'compute_90' is not")


def test_the_ptxas_parser_ignores_lines_of_functions_it_was_not_told_of():
    log = ("ptxas info    : Used 12 registers\n"                             # before any entry
           "ptxas info    : Function properties for _Z6helperf\n"
           "ptxas         .     16 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "ptxas info    : Used 7 registers, used 0 barriers\n")
    assert cc.parse_ptxas_log(log) == {"k": dict(arch="sm_80", registers=7, stack_frame=0, spill_stores=0,
                                                 spill_loads=0, smem=0)}
    assert cc.parse_ptxas_log("") == {}


def test_the_sass_parser_counts_instruction_lines_only():
    text = ("        /*0000*/   HMMA.X R4 ;   /* 0x00 */\n"          # before any function: not counted
            "\t\tFunction : f\n"
            "\t.headerflags HMMA.X\n"                               # not an instruction line
            "        /*0010*/   HMMA.X R4 ;   /* 0x00 */\n"
            "        /*0020*/   HMMA.X R4     /* no semicolon */\n"
            "\t\tFunction : g\n"
            "\t\tFunction : f\n"                                    # the same function again adds on
            "        /*0010*/   HMMA.X R4 ; HMMA.Y  /* 0x00 */\n")
    assert cc.parse_sass(text, ["HMMA.X", "HMMA.Y"]) == {"f": {"HMMA.X": 2, "HMMA.Y": 1},
                                                         "g": {"HMMA.X": 0, "HMMA.Y": 0}}


def _tool(folder, name, script):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_cuobjdump_is_found_on_path_first_then_in_the_wheels(monkeypatch, tmp_path):
    on_path = _tool(tmp_path / "path", "cuobjdump", "exit 0\n")
    wheel = tmp_path / "wheels"
    (wheel / "a_cublas" / "bin").mkdir(parents=True)
    (wheel / "b_cuobj" / "bin").mkdir(parents=True)
    (wheel / "b_cuobj" / "bin" / "cuobjdump").write_text("not executable")
    found = _tool(wheel / "c_cuobjdump" / "bin", "cuobjdump", "exit 0\n")
    _tool(wheel / "d_later" / "bin", "cuobjdump", "exit 0\n")
    monkeypatch.setitem(sys.modules, "nvidia", types.SimpleNamespace(__path__=[str(wheel)]))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert cc.find_cuobjdump() == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cc.find_cuobjdump() == str(found)
    monkeypatch.setitem(sys.modules, "nvidia", None)
    assert cc.find_cuobjdump() is None


def test_dump_sass_runs_the_tool_on_the_cubin_with_its_folder_on_path(tmp_path):
    tool = _tool(tmp_path / "bin", "cuobjdump",
                 'echo "args $1 $(basename $2) $(cat $2)"; echo "path ${PATH%%:*}"\n')
    assert cc.dump_sass(b"CUBIN", str(tool)) == f"args --dump-sass module.cubin CUBIN\npath {tool.parent}\n"
    bad = _tool(tmp_path / "bin2", "cuobjdump", 'echo "  no such file  " >&2; exit 3\n')
    with pytest.raises(RuntimeError, match=r"^cuobjdump failed \(3\): no such file$"):
        cc.dump_sass(b"CUBIN", str(bad))
    chatty = _tool(tmp_path / "bin3", "cuobjdump", 'head -c 5000 /dev/zero | tr "\\0" x >&2; exit 1\n')
    with pytest.raises(RuntimeError) as e:
        cc.dump_sass(b"CUBIN", str(chatty))
    assert str(e.value) == "cuobjdump failed (1): " + "x" * 2000        # its first 2000 characters


def test_dump_sass_without_cuobjdump_says_what_to_install(monkeypatch):
    monkeypatch.setattr(cc, "find_cuobjdump", lambda: None)
    with pytest.raises(RuntimeError, match="pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm"):
        cc.dump_sass(b"CUBIN")


def _fake_main(monkeypatch, rows):
    monkeypatch.setattr(cc, "supported_archs", lambda: (80, 90))
    monkeypatch.setattr(cc, "nvrtc_version", lambda: "13.5")
    asked = []
    monkeypatch.setattr(cc, "compile_check", lambda archs: asked.append(archs) or rows)
    return asked


def test_main_says_how_many_builds_passed_and_how_many_had_their_sass_checked(monkeypatch, capsys):
    rows = [_ok(), _ok(sass_op="HMMA", sass_count=3, sass_hmma=3)]
    asked = _fake_main(monkeypatch, rows)
    assert cc.main([]) == 0 and asked == [cc.DEFAULT_ARCHS]
    out = capsys.readouterr().out.split("\n")
    assert out[0].startswith("NVRTC 13.5, options ") and out[0].endswith(", archs sm_80 sm_90")
    assert "-ftz=true" in out[0]
    assert out[1:5] == cc.format_table(rows).split("\n")
    assert out[-2] == "2 kernel builds, no errors, no spills; 1 with their matrix instructions checked in SASS"


def test_main_lists_the_problems_and_fails(monkeypatch, capsys):
    _fake_main(monkeypatch, [_ok(), _ok(spill_loads=4), _ok(error="e")])
    assert cc.main(["--arch", "sm_80"]) == 1
    err = capsys.readouterr().err
    assert err == "\n2 problem(s):\n  m sm_90 k: spills (0 bytes stored, 4 loaded)\n  m sm_90 k: e\n"


def test_main_without_nvrtc_exits_2_saying_so(monkeypatch, capsys):
    def missing():
        raise cc.NvrtcMissing("no NVRTC here")

    monkeypatch.setattr(cc, "supported_archs", missing)
    assert cc.main([]) == 2
    assert capsys.readouterr().err == "gpubp compile-check: no NVRTC here\n"


def test_main_refuses_a_bad_arch_naming_what_it_compiles_for(monkeypatch, capsys):
    _fake_main(monkeypatch, [])
    with pytest.raises(SystemExit) as e:
        cc.main(["--arch", "sm_75", "--arch", "bogus"])
    assert e.value.code == 2
    assert ("--arch: NVRTC 13.5 does not compile for sm_75; 'bogus' is not an architecture name such as "
            "sm_90 (one per --arch); it compiles for sm_80 sm_90") in capsys.readouterr().err



# ---------------------------------------------------------------- compile_spec and compile_check, NVRTC faked
def _log(*entries):
    """A ptxas log of (mangled, arch, registers, spill stores) entries."""
    return "".join(f"ptxas info    : Compiling entry function '{m}' for '{a}'\n"
                   f"ptxas info    : Function properties for {m}\n"
                   f"ptxas         .     0 bytes stack frame, {s} bytes spill stores, 0 bytes spill loads\n"
                   f"ptxas info    : Used {r} registers\n" for m, a, r, s in entries)


def _fake_build(monkeypatch, log, lowered, error=None, sass=None):
    from gpubp.backends.nvrtc_program import Build

    calls = []

    def build(nvrtc, src, filename, names, opts, cubin=True):
        calls.append(dict(nvrtc=nvrtc, src=src, filename=filename, names=names, opts=opts, cubin=cubin))
        return Build(error=error, log=log, lowered={} if error else dict(lowered), cubin=b"BIN" if cubin else None)

    monkeypatch.setattr(cc.nvrtc_program, "build", build)
    if isinstance(sass, Exception):
        def dump(cubin):
            raise sass
    else:
        def dump(cubin):
            assert cubin == b"BIN"
            return sass
    monkeypatch.setattr(cc, "dump_sass", dump)
    return calls


def test_compile_spec_builds_with_cupys_options_and_reads_one_row_per_kernel(monkeypatch):
    lowered = {"k<float>": "_Zkf", "k<double>": "_Zkd", "ghost": "_Zghost"}
    calls = _fake_build(monkeypatch, _log(("_Zkf", "sm_80", 30, 0), ("_Zkd", "sm_80", 40, 8),
                                          ("_Zother", "sm_75", 99, 0)), lowered)
    rows = cc.compile_spec(FakeSpec(names=lowered), "sm_80", nvrtc="NV")
    assert calls == [dict(nvrtc="NV", src="SRC", filename="fake.cu", names=tuple(lowered),
                          opts=("--gpu-architecture=sm_80",) + cc.cuda_source.NVRTC_OPTIONS
                          + ("-ftz=true", "-Xptxas", "-v"), cubin=False)]
    assert [(r["kernel"], r["mangled"], r["registers"], r["spill_stores"], r["error"]) for r in rows] == [
        ("ghost", "_Zghost", None, None, "no ptxas report for this kernel (not a __global__ function?)"),
        ("k<double>", "_Zkd", 40, 8, None), ("k<float>", "_Zkf", 30, 0, None)]
    assert all(r["module"] == "fake" and r["arch"] == "sm_80" and r["sass_op"] is None for r in rows)


def test_compile_spec_turns_a_failed_build_or_source_into_one_error_row(monkeypatch):
    _fake_build(monkeypatch, "k.cu(1): error", {}, error="NVRTC_ERROR_COMPILATION")
    (row,) = cc.compile_spec(FakeSpec(names=["k"]), "sm_90", nvrtc="NV")
    assert (row["kernel"], row["error"]) == (None, "NVRTC_ERROR_COMPILATION:\nk.cu(1): error")
    (row,) = cc.compile_spec(FakeSpec(OSError("gone"), ["k"]), "sm_90", nvrtc="NV")
    assert row["error"] == "cannot read the sources: OSError: gone" and row["module"] == "fake"


SASS = ("\t\tFunction : _Zk\n"
        "        /*0000*/   HMMA.1688 R4 ;   /* 0x00 */\n"
        "        /*0010*/   UTMALDG R4 ;   /* 0x00 */\n"
        "\t\tFunction : _Zf\n"
        "        /*0000*/   FFMA R4 ;   /* 0x00 */\n"
        "        /*0010*/   FFMA R4 ;   /* 0x00 */\n")


def test_compile_spec_counts_the_expected_instructions_of_each_kernel(monkeypatch):
    lowered = {"k": "_Zk", "f": "_Zf", "p": "_Zp", "q": "_Zq"}
    calls = _fake_build(monkeypatch, _log(("_Zk", "sm_80", 30, 0), ("_Zf", "sm_80", 30, 0), ("_Zp", "sm_80", 9, 0),
                                          ("_Zq", "sm_80", 9, 0)), lowered, sass=SASS)
    spec = FakeSpec(names=lowered, sass_expect=(("k", "HMMA.1688"), ("k", "UTMALDG"), ("k", "LDSM"), ("f", "FFMA"),
                                       ("q", "HMMA.1688"), ("q", "LDSM")))
    monkeypatch.setattr(cc, "_nvrtc", lambda: "bindings")
    rows = {r["kernel"]: r for r in cc.compile_spec(spec, "sm_80")}
    assert calls[0]["cubin"] is True and calls[0]["nvrtc"] == "bindings"
    q = rows["q"]                                       # a function its SASS listing does not hold: none counted
    assert (q["sass_count"], q["sass_hmma"], q["sass_more"]) == (0, 0, {"LDSM": 0})
    k, f, p = rows["k"], rows["f"], rows["p"]
    assert (k["sass_op"], k["sass_count"], k["sass_hmma"], k["sass_more"]) == ("HMMA.1688", 1, 1,
                                                                                {"UTMALDG": 1, "LDSM": 0})
    assert (f["sass_op"], f["sass_count"], f["sass_hmma"], f["sass_more"]) == ("FFMA", 2, 0, None)
    assert (p["sass_op"], p["sass_count"], p["sass_hmma"]) == (None, None, None)
    assert cc.problems(rows.values()) == ["fake sm_80 k: no LDSM instruction in its SASS",
                                          "fake sm_80 q: no HMMA.1688 instruction in its SASS"]


def test_compile_spec_without_its_sass_marks_the_checked_kernels(monkeypatch):
    lowered = {"k": "_Zk", "p": "_Zp"}
    _fake_build(monkeypatch, _log(("_Zk", "sm_80", 30, 0), ("_Zp", "sm_80", 9, 0)), lowered,
                sass=RuntimeError("no cuobjdump"))
    spec = FakeSpec(names=lowered, sass_expect=(("k", "HMMA"),))
    rows = {r["kernel"]: r for r in cc.compile_spec(spec, "sm_80", "NV")}
    assert rows["k"]["error"] == "SASS not checked: no cuobjdump" and rows["k"]["sass_count"] is None
    assert rows["p"]["error"] is None


def test_compile_check_builds_each_spec_for_its_targets_and_rows_a_crash(monkeypatch):
    monkeypatch.setattr(cc, "_nvrtc", lambda: "NV")
    built = []

    def compile_spec(spec, arch, nvrtc):
        built.append((spec.name, arch, nvrtc))
        if spec.name == "crash":
            raise ValueError("bad spec")
        return [cc._row(spec.name, arch, "k")]

    monkeypatch.setattr(cc, "compile_spec", compile_spec)
    specs = [FakeSpec(name="a"), FakeSpec(name="hopper", archs=("sm_90a",)), FakeSpec(name="crash")]
    rows = cc.compile_check(("sm_80", "sm_90"), specs=specs)
    assert sorted(built) == [("a", "sm_80", "NV"), ("a", "sm_90", "NV"), ("crash", "sm_80", "NV"),
                             ("crash", "sm_90", "NV"), ("hopper", "sm_90a", "NV")]
    assert [(r["module"], r["arch"], r["kernel"], r["error"]) for r in rows] == [
        ("a", "sm_80", "k", None), ("a", "sm_90", "k", None), ("hopper", "sm_90a", "k", None),
        ("crash", "sm_80", None, "ValueError: bad spec"), ("crash", "sm_90", None, "ValueError: bad spec")]
    monkeypatch.setattr(cc, "_gather_specs", lambda: ([FakeSpec(name="a")], [cc._row("gone", None, None, error="x")]))
    assert [r["module"] for r in cc.compile_check(("sm_80",))] == ["gone", "a"]
    assert cc.compile_check(("sm_80",), specs=[]) == []


def test_gather_specs_rows_each_launcher_module_that_does_not_import(monkeypatch):
    def broken():
        raise ImportError("one of them")

    monkeypatch.setattr(cc, "all_specs", broken)
    monkeypatch.setattr(cc, "_LAUNCHER_MODULES", ("cuda_missing", "cuda_elementwise"))
    specs, errors = cc._gather_specs()
    from gpubp.backends import cuda_elementwise
    assert specs == list(cuda_elementwise.SPECS)
    assert [(e["module"], e["error"].split(":")[0:2]) for e in errors] == [
        ("cuda_missing", ["cannot import gpubp.backends.cuda_missing", " ModuleNotFoundError"])]
    monkeypatch.setattr(cc, "all_specs", lambda: iter(["s"]))
    assert cc._gather_specs() == (["s"], [])


class _Nvrtc:
    class nvrtcResult:
        NVRTC_SUCCESS = 0

    def __init__(self, version=(0, 13, 5), archs=(0, [75, 80, 90])):
        self.version, self.archs = version, archs

    def nvrtcVersion(self):
        if isinstance(self.version, Exception):
            raise self.version
        return self.version

    def nvrtcGetSupportedArchs(self):
        return self.archs


def _with_bindings(monkeypatch, nv):
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    bindings.nvrtc, cuda.bindings = nv, bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", nv)


def test_nvrtc_that_cannot_run_is_missing_in_words(monkeypatch):
    nv = _Nvrtc()
    _with_bindings(monkeypatch, nv)
    assert cc._nvrtc() is nv and cc.nvrtc_version() == "13.5" and cc.supported_archs() == (75, 80, 90)
    assert cc.supported_archs(_Nvrtc(archs=(0, ["90"]))) == (90,)
    with pytest.raises(cc.NvrtcMissing, match=r"gpubp\[compile\].*\(nvrtcGetSupportedArchs: 7\)$"):
        cc.supported_archs(_Nvrtc(archs=(7, [])))
    nv.version = (6, 0, 0)
    with pytest.raises(cc.NvrtcMissing, match=r"\(nvrtcVersion: 6\)$"):
        cc._nvrtc()
    nv.version = OSError("libnvrtc.so.13: cannot open")
    with pytest.raises(cc.NvrtcMissing, match=r"\(libnvrtc.so.13: cannot open\)$"):
        cc._nvrtc()
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(cc.NvrtcMissing, match=f"^{re.escape(cc._MISSING_NVRTC)}$"):
        cc._nvrtc()


def test_all_specs_gathers_every_launcher_modules_specs():
    from gpubp.backends.cuda_source import ModuleSpec

    specs = cc.all_specs()
    names = [s.name for s in specs]
    assert all(isinstance(s, ModuleSpec) for s in specs) and len(set(names)) == len(names)
    assert {"elementwise", "gemm_tc", "gemm_wgmma", "fused_mlp_family"} <= set(names)
