"""`gpubp compile-check` on a CPU: every kernel builds with NVRTC for sm_80 and sm_90,
with no spills and at most 255 registers, and the ptxas log parser reads known text."""

import pytest

pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-bindings and nvidia-cuda-nvrtc")

from gpubp import compile_check as cc  # noqa: E402
from gpubp.backends.cuda_source import ModuleSpec  # noqa: E402

ARCHS = ("sm_80", "sm_90")

try:
    cc.nvrtc_version()
except cc.NvrtcMissing as e:  # bindings present, libnvrtc missing
    pytest.skip(str(e), allow_module_level=True)


@pytest.fixture(scope="module")
def rows():
    return cc.compile_check(ARCHS)


def test_no_compile_errors_spills_or_register_overflow(rows):
    assert cc.problems(rows) == []
    for r in rows:
        assert r["error"] is None, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert 0 < r["registers"] <= 255, r


def test_every_name_expression_of_every_module_is_built_for_every_arch(rows):
    built = {(r["module"], r["arch"], r["kernel"]) for r in rows if not r["error"]}
    specs = cc.all_specs()
    assert {s.name for s in specs} >= {"gemm", "elementwise"}
    for spec in specs:
        assert spec.name_expressions, spec.name
        for arch in ARCHS:
            for ne in spec.name_expressions:
                assert (spec.name, arch, ne) in built


KNOWN_LOG = """\
ptxas info    : 3 bytes gmem
ptxas info    : Compiling entry function '_Z10sgd_updateIdEvPT_PKS0_S1_xS0_S0_S0_ii' for 'sm_90'
ptxas info    : Function properties for _Z10sgd_updateIdEvPT_PKS0_S1_xS0_S0_S0_ii
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
ptxas info    : Compile time = 56.312 ms
ptxas info    : Function properties for _Z6helperf
ptxas         .     16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z13loss_finalizeIdEvPKdidPT_' for 'sm_90'
ptxas info    : Function properties for _Z13loss_finalizeIdEvPKdidPT_
ptxas         .     8 bytes stack frame, 24 bytes spill stores, 48 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 64 bytes smem
ptxas info    : Compiling entry function 'old_style' for 'sm_80'
ptxas info    : Function properties for old_style
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 255 registers, 17408 bytes smem, 400 bytes cmem[0]
"""


def test_parser_reads_a_known_log():
    k = cc.parse_ptxas_log(KNOWN_LOG)
    assert set(k) == {"_Z10sgd_updateIdEvPT_PKS0_S1_xS0_S0_S0_ii", "_Z13loss_finalizeIdEvPKdidPT_",
                      "old_style"}
    assert k["_Z10sgd_updateIdEvPT_PKS0_S1_xS0_S0_S0_ii"] == dict(
        arch="sm_90", registers=32, stack_frame=0, spill_stores=0, spill_loads=0, smem=0)
    assert k["_Z13loss_finalizeIdEvPKdidPT_"] == dict(
        arch="sm_90", registers=40, stack_frame=8, spill_stores=24, spill_loads=48, smem=64)
    assert k["old_style"] == dict(arch="sm_80", registers=255, stack_frame=0, spill_stores=0,
                                  spill_loads=0, smem=17408)


def test_spills_are_problems():
    row = cc._row("m", "sm_90", "k", registers=40, spill_stores=4, spill_loads=4, stack_frame=8, smem=0)
    assert cc.problems([row]) and "spill" in cc.problems([row])[0]


class _Spec:
    """A ModuleSpec look-alike with its source given as text."""

    def __init__(self, src, names=()):
        self.name, self._src, self.name_expressions = "fake", src, tuple(names)

    def source(self):
        return self._src


def test_a_compile_error_is_a_row_not_a_crash():
    rows = cc.compile_check(("sm_90",), specs=[_Spec("__global__ void k() { this is not C++; }")])
    assert len(rows) == 1 and rows[0]["error"] and "NVRTC_ERROR" in rows[0]["error"]
    assert cc.problems(rows)


def test_a_template_kernel_is_named_by_its_name_expression():
    src = "template <typename T> __global__ void k(T* p) { p[threadIdx.x] += T(1); }"
    rows = cc.compile_check(("sm_80",), specs=[_Spec(src, ["k<float>", "k<double>"])])
    assert sorted(r["kernel"] for r in rows) == ["k<double>", "k<float>"]
    assert all(r["error"] is None and r["registers"] > 0 for r in rows)


def test_a_missing_launcher_module_is_reported(monkeypatch):
    def broken():
        raise ImportError("no module named gpubp.backends.cuda_missing")

    monkeypatch.setattr(cc, "all_specs", broken)
    monkeypatch.setattr(cc, "_LAUNCHER_MODULES", ("cuda_missing", "cuda_elementwise"))
    rows = cc.compile_check(("sm_90",))
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and "cuda_missing" in errors[0]["error"]
    assert any(r["module"] == "elementwise" and not r["error"] for r in rows)


def test_main_prints_the_table_and_fails_on_a_problem(monkeypatch, capsys):
    spec = ModuleSpec(name="elementwise", files=("activations.cuh", "elementwise.cu"),
                      name_expressions=("loss_finalize<float>",))
    monkeypatch.setattr(cc, "all_specs", lambda: [spec])
    assert cc.main(["--arch", "sm_90"]) == 0
    out = capsys.readouterr().out
    assert "loss_finalize<float>" in out and "regs" in out and "sm_90" in out
    monkeypatch.setattr(cc, "all_specs", lambda: [spec, _Spec("__global__ void k() { x; }")])
    assert cc.main(["--arch", "sm_90"]) == 1
