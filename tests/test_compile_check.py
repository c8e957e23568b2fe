"""`gpubp compile-check` on a CPU: every kernel builds with NVRTC for sm_80 and sm_90,
with no spills and at most 255 registers, the tensor-core kernels hold their HMMA
instructions in SASS, and the ptxas log and SASS parsers read known text.

To stay fast, the tensor-core module and the third float32 tile (gemm_f32) are built here
with one of their seven activation epilogues (gelu: the longest, and it reads Z): the other
six differ only in the epilogue's arithmetic, which gemm.cu's kernels build in full;
`gpubp compile-check` builds all of them.  The fused-MLP kernel family (fused_mlp_family.cu)
is built with one instantiation per math policy (FFMA forward under its 128-register cap,
the TF32 backward at width 128, the tightest for registers, and the BF16 backward at width 64)."""

from dataclasses import replace

import pytest

pytest.importorskip("cuda.bindings.nvrtc", reason="needs cuda-bindings and nvidia-cuda-nvrtc")

from gpubp import compile_check as cc  # noqa: E402
from gpubp.backends.cuda_source import ModuleSpec  # noqa: E402
from support.compile_specs import FakeSpec  # noqa: E402

ARCHS = ("sm_80", "sm_90")

try:
    cc.nvrtc_version()
except cc.NvrtcMissing as e:  # bindings present, libnvrtc missing
    pytest.skip(str(e), allow_module_level=True)


#: activation codes whose gemm_tc and gemm_f32 epilogues the fast check builds (gelu)
TC_ACTS = (5,)

#: the fused-family kernels the fast check builds: one per policy (float32, tf32, bf16)
FAMILY_KEEP = ("fused_family_fwd<0, 128, 64>", "fused_family_bwd<1, 64, 128>", "fused_family_bwd<2, 128, 64>")

#: the Hopper (sm_90a) kernels the fast check builds: each precision once, both block widths
WGMMA_KEEP = ("gemm_wgmma_fwd<0, 5, 128>", "gemm_wgmma_fwd<2, 5, 256>", "gemm_wgmma_bwd_data<0, 6, 256>",
              "gemm_wgmma_bwd_weight<2, 256>",
              "gemm_wgmma_copy_tf32", "gemm_wgmma_copy_bf16", "gemm_wgmma_copy_t_tf32", "gemm_wgmma_copy_t_bf16",
              "gemm_wgmma_copy_colsum_bf16")


def _act_of(name: str) -> int:
    """The activation template argument of "gemm_tc_fwd<0, 5, 3>", "gemm_f32_fwd<5>" or
    "gemm_tc_fwd_splitk_epilogue<5>"."""
    args = name[name.index("<") + 1:name.rindex(">")].split(",")
    return int(args[1] if name.startswith(("gemm_tc_fwd<", "gemm_tc_bwd_data<")) else args[0])


def _ci_specs():
    """all_specs(), with the tensor-core and gemm_f32 modules cut to the TC_ACTS epilogues."""
    cut = {"gemm_tc": ("gemm_tc_fwd<", "gemm_tc_bwd_data<", "gemm_tc_fwd_splitk_epilogue<",
                       "gemm_tc_bwd_data_splitk_epilogue<"),
           "gemm_f32": ("gemm_f32_fwd<", "gemm_f32_bwd_data<")}
    out = []
    for spec in cc.all_specs():
        if spec.name in cut:
            keep = tuple(n for n in spec.name_expressions
                         if not n.startswith(cut[spec.name]) or _act_of(n) in TC_ACTS)
            spec = replace(spec, name_expressions=keep,
                           sass_expect=tuple(e for e in spec.sass_expect if e[0] in keep))
        elif spec.name == "gemm_wgmma":
            assert set(WGMMA_KEEP) <= set(spec.name_expressions)
            spec = replace(spec, name_expressions=WGMMA_KEEP,
                           sass_expect=tuple(e for e in spec.sass_expect if e[0] in WGMMA_KEEP))
        elif spec.name == "fused_mlp_family":
            assert set(FAMILY_KEEP) <= set(spec.name_expressions)
            spec = replace(spec, name_expressions=FAMILY_KEEP,
                           sass_expect=tuple(e for e in spec.sass_expect if e[0] in FAMILY_KEEP))
        out.append(spec)
    return out


@pytest.fixture(scope="module")
def rows():
    return cc.compile_check(ARCHS, specs=_ci_specs())


def test_no_compile_errors_spills_or_register_overflow(rows):
    assert cc.problems(rows) == []
    for r in rows:
        assert r["error"] is None, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert 0 < r["registers"] <= 255, r


def test_every_name_expression_of_every_module_is_built_for_every_arch(rows):
    built = {(r["module"], r["arch"], r["kernel"]) for r in rows if not r["error"]}
    specs = _ci_specs()
    assert {s.name for s in specs} >= {"gemm", "elementwise", "gemm_tc", "gemm_f32", "fused_mlp",
                                      "fused_mlp_family", "gemm_wgmma"}
    for spec in specs:
        assert spec.name_expressions, spec.name
        for arch in cc.spec_archs(spec, ARCHS):
            for ne in spec.name_expressions:
                assert (spec.name, arch, ne) in built


def test_the_hopper_kernels_start_with_the_registers_their_setmaxnreg_budget_shares_out(rows):
    """gemm_wgmma.cu's warpgroups rebalance the block's registers with setmaxnreg: the producer's
    .dec to WG_PRODUCER_REGS must free what the two consumers' .inc to WG_CONSUMER_REGS takes from
    the block's pool, which holds what ptxas gave each thread at launch times 384 (PTX ISA: .inc
    blocks until the pool has them, a hang on the GPU).  ptxas gives 168 under
    __launch_bounds__(384, 1): 128 * 40 + 256 * 232 = 64512 = 168 * 384."""
    import re

    from gpubp.backends import cuda_gemm_wgmma
    from gpubp.backends.cuda_source import kernels_dir

    src = (kernels_dir() / "gemm_wgmma.cu").read_text()
    producer = int(re.search(r"#define WG_PRODUCER_REGS (\d+)", src).group(1))
    consumer = int(re.search(r"#define WG_CONSUMER_REGS (\d+)", src).group(1))
    threads = cuda_gemm_wgmma.THREADS
    need = 128 * producer + (threads - 128) * consumer
    pipelined = [r for r in rows if r["module"] == "gemm_wgmma" and "copy" not in r["kernel"]]
    assert pipelined
    for r in pipelined:
        assert r["registers"] * threads >= need, (r["kernel"], r["registers"], need)
        assert r["registers"] * threads <= 65536, r


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


def test_a_compile_error_is_a_row_not_a_crash():
    rows = cc.compile_check(("sm_90",), specs=[FakeSpec("__global__ void k() { this is not C++; }")])
    assert len(rows) == 1 and rows[0]["error"] and "NVRTC_ERROR" in rows[0]["error"]
    assert cc.problems(rows)


def test_a_template_kernel_is_named_by_its_name_expression():
    src = "template <typename T> __global__ void k(T* p) { p[threadIdx.x] += T(1); }"
    rows = cc.compile_check(("sm_80",), specs=[FakeSpec(src, ["k<float>", "k<double>"])])
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
    monkeypatch.setattr(cc, "all_specs", lambda: [spec, FakeSpec("__global__ void k() { x; }")])
    assert cc.main(["--arch", "sm_90"]) == 1


@pytest.mark.parametrize("arch, why", [("sm_bogus", "'sm_bogus' is not an architecture name such as sm_90"),
                                       ("90", "'90' is not an architecture name such as sm_90"),
                                       ("sm_80,sm_90", "'sm_80,sm_90' is not an architecture name"),
                                       ("sm_12", f"NVRTC {cc.nvrtc_version()} does not compile for sm_12")])
def test_an_unknown_arch_is_a_usage_error(monkeypatch, capsys, arch, why):
    # each module failed with NVRTC_ERROR_INVALID_OPTION and the check exited 1, as for kernels that
    # do not build, after printing an empty table
    monkeypatch.setattr(cc, "compile_check", lambda *a, **k: pytest.fail("compiled for a bad --arch"))
    with pytest.raises(SystemExit) as e:
        cc.main(["--arch", "sm_80", "--arch", arch])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--arch: {why}" in err and "it compiles for " in err and "sm_90" in err, err


def test_an_arch_given_twice_is_built_once(monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(cc, "compile_check", lambda archs, specs=None: asked.append(archs) or [])
    assert cc.main(["--arch", "sm_90", "--arch", "sm_80", "--arch", "sm_90"]) == 0
    assert asked == [("sm_90", "sm_80")]
    assert cc.arch_problem("sm_90a", cc.supported_archs()) is None


# ---------------------------------------------------------------- tensor-core kernels, SASS
def test_tensor_core_module_lists_every_mode_and_activation():
    from gpubp.activations import ACTIVATIONS
    from gpubp.backends import cuda_gemm_tc as tc

    (spec,) = tc.SPECS
    names = set(spec.name_expressions)
    for prec in tc.PREC_CODES:
        for act in range(len(ACTIVATIONS)):
            assert tc.fwd_name(prec, act) in names and tc.bwd_data_name(prec, act) in names
        assert tc.bwd_weight_name(prec) in names
        assert tc.partial_name(prec, False) in names and tc.partial_name(prec, True) in names
    for act in range(len(ACTIVATIONS)):
        for prec in tc.PREC_CODES:
            assert tc.fwd_epilogue_name(act, prec) in names and tc.bwd_data_epilogue_name(act, prec) in names
    # the split-K epilogues: one float32-storing instantiation (tf32, 3xtf32) and bf16's rounding one
    assert tc.fwd_epilogue_name(1, "tf32") == tc.fwd_epilogue_name(1, "3xtf32") == "gemm_tc_fwd_splitk_epilogue<1>"
    assert tc.bwd_data_epilogue_name(1, "bf16") == "gemm_tc_bwd_data_splitk_epilogue<1, true>"
    expect = dict(spec.sass_expect)
    # fwd and bwd_data per activation, bwd_weight and the two split-K partials, per mode
    assert len(expect) == 3 * (2 * len(ACTIVATIONS) + 3)
    assert expect[tc.partial_name("bf16", True)] == "HMMA.16816.F32.BF16"
    assert expect[tc.fwd_name("bf16", 3)] == "HMMA.16816.F32.BF16"
    assert expect[tc.bwd_weight_name("3xtf32")] == "HMMA.1688.F32.TF32"


def test_tensor_core_kernels_hold_their_hmma_in_sass(rows):
    from gpubp.backends import cuda_gemm_tc as tc

    tc_rows = [r for r in rows if r["module"] == "gemm_tc" and r["sass_op"]]
    # fwd + bwd_data per kept activation, bwd_weight and the two split-K partials: per mode and arch
    assert len(tc_rows) == len(ARCHS) * len(tc.PREC_CODES) * (2 * len(TC_ACTS) + 3)
    per_k_tile = {"tf32": 32, "3xtf32": 96, "bf16": 16}   # 16 mma per k step, BK 16
    for r in tc_rows:
        prec = {v: k for k, v in tc.PREC_CODES.items()}[int(r["kernel"].split("<")[1].split(",")[0].rstrip(">"))]
        assert r["sass_op"] == tc.SASS_OPCODES[prec], r
        assert r["sass_count"] == per_k_tile[prec], r   # the k-tile loop body once, fully unrolled


def test_gemm_f32_kernels_hold_two_unrolled_k_tiles_of_ffma(rows):
    """gemm_f32's fwd, bwd_data and bwd_weight: FFMA in SASS, at least 2 x 16 x 128 of them (the
    fast and the general k-loop, each one fully unrolled BK-16 tile of 16 x 8 per thread; the
    epilogues add a few), with no spills at 255 registers or fewer."""
    from gpubp.backends import cuda_gemm_f32 as g3

    f32 = [r for r in rows if r["module"] == "gemm_f32" and r["sass_op"]]
    assert {r["kernel"] for r in f32} == {g3.fwd_name(5), g3.bwd_data_name(5), g3.BWD_WEIGHT_NAME}
    assert len(f32) == 3 * len(ARCHS)
    for r in f32:
        assert r["sass_op"] == "FFMA" and r["sass_count"] >= 2 * g3.BK * 16 * 8, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["registers"] <= 255, r


KNOWN_SASS = """\
\tcode for sm_90
\t\tFunction : _Z1kPf
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
        /*0100*/                   HMMA.1688.F32.TF32 R4, R8, R12, R4 ;    /* 0x0000000c0804723c */
        /*0110*/                   HMMA.1688.F32.TF32 R16, R8, R14, R16 ;  /* 0x0000000e0810723c */
        /*0120*/                   EXIT ;                                  /* 0x000000000000794d */
\t\tFunction : _Z1gPf
        /*0000*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;   /* 0x0000000c0804723c */
"""


def test_sass_parser_counts_opcodes_per_function():
    got = cc.parse_sass(KNOWN_SASS, ["HMMA.1688.F32.TF32", "HMMA.16816.F32.BF16"])
    assert got == {"_Z1kPf": {"HMMA.1688.F32.TF32": 2, "HMMA.16816.F32.BF16": 0},
                   "_Z1gPf": {"HMMA.1688.F32.TF32": 0, "HMMA.16816.F32.BF16": 1}}


_PLAIN = "__global__ void plain(float* p) { p[threadIdx.x] *= 2.f; }"
_MMA = """__global__ void mma(float* p) {
    float d0 = p[0], d1 = p[1], d2 = p[2], d3 = p[3];
    unsigned a = threadIdx.x, b = threadIdx.y;
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%4,%4,%4}, "
                 "{%5,%5}, {%0,%1,%2,%3};" : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3) : "r"(a), "r"(b));
    p[threadIdx.x] = d0 + d1 + d2 + d3;
}"""


def _sass_spec(src, kernel, op="HMMA.1688.F32.TF32"):
    return FakeSpec(src, [kernel], sass_expect=((kernel, op),))


def test_a_kernel_without_its_matrix_instruction_fails_the_check():
    good = cc.compile_check(("sm_80",), specs=[_sass_spec(_MMA + _PLAIN, "mma")])
    (row,) = [r for r in good if r["kernel"] == "mma"]
    assert row["sass_count"] == 1 and cc.problems(good) == []
    bad = cc.compile_check(("sm_80",), specs=[_sass_spec(_MMA + _PLAIN, "plain")])
    (row,) = [r for r in bad if r["kernel"] == "plain"]
    assert row["sass_count"] == 0
    assert cc.problems(bad) == ["fake sm_80 plain: no HMMA.1688.F32.TF32 instruction in its SASS"]


def test_a_missing_cuobjdump_is_a_problem_not_a_pass(monkeypatch):
    monkeypatch.setattr(cc, "find_cuobjdump", lambda: None)
    rows = cc.compile_check(("sm_80",), specs=[_sass_spec(_MMA, "mma")])
    assert rows[0]["error"] and "cuobjdump" in rows[0]["error"]
    assert cc.problems(rows)


# ---------------------------------------------------------------- the fused-MLP kernel family
def test_fused_family_module_lists_every_policy_and_width():
    from gpubp.backends import cuda_fused_family as ff

    (spec,) = ff.SPECS
    expect = dict(spec.sass_expect)
    for wmax, (bm_f, bm_b) in ff.CONFIGS.items():
        for prec, op in (("float32", "FFMA"), ("tf32", "HMMA.1688.F32.TF32"), ("bf16", "HMMA.16816.F32.BF16")):
            assert expect[ff.fwd_name(bm_f, wmax, prec)] == op
            assert expect[ff.bwd_name(bm_b, wmax, prec)] == op
        assert ff.reduce_name(wmax) in spec.name_expressions
    assert len(spec.name_expressions) == 2 * (2 * 3 + 1) and len(expect) == 12


def test_fused_family_kernels_hold_their_instructions(rows):
    fam = [r for r in rows if r["module"] == "fused_mlp_family" and r["sass_op"]]
    assert sorted({r["kernel"] for r in fam}) == sorted(FAMILY_KEEP)
    assert len(fam) == len(ARCHS) * len(FAMILY_KEEP)
    for r in fam:
        pol = int(r["kernel"].split("<")[1].split(",")[0])
        assert r["sass_op"] == ("FFMA", "HMMA.1688.F32.TF32", "HMMA.16816.F32.BF16")[pol], r
        assert r["sass_count"] > 0, r
        if pol == 0:
            assert r["sass_hmma"] == 0, r       # the float32 policy is FFMA only
        else:
            assert r["sass_hmma"] == r["sass_count"], r   # one kind of MMA per policy


_MMA_AND_FMA = _MMA.replace("p[threadIdx.x] = d0 + d1 + d2 + d3;", "p[threadIdx.x] = d0 * d1 + d2 * d3;")


def test_an_ffma_only_kernel_with_hmma_fails_the_check():
    assert _MMA_AND_FMA != _MMA
    rows = cc.compile_check(("sm_80",), specs=[_sass_spec(_MMA_AND_FMA, "mma", op="FFMA")])
    (row,) = rows
    assert row["sass_count"] > 0 and row["sass_hmma"] == 1
    assert cc.problems(rows) == ["fake sm_80 mma: 1 HMMA instructions in a float32 (FFMA-only) kernel"]
    fine = cc.compile_check(("sm_80",), specs=[_sass_spec(_PLAIN.replace("*= 2.f", "= p[threadIdx.x] * p[1] + 1.f"),
                                                          "plain", op="FFMA")])
    assert fine[0]["sass_count"] > 0 and fine[0]["sass_hmma"] == 0 and cc.problems(fine) == []


# ---------------------------------------------------------------- the Hopper (sm_90a) module
def test_hopper_module_is_built_for_sm_90a_only(rows):
    from gpubp.backends import cuda_gemm_wgmma as wg

    (spec,) = wg.SPECS
    assert cc.spec_archs(spec, ARCHS) == ("sm_90a",)
    assert cc.spec_archs(spec, ("sm_80",)) == ()
    assert cc.spec_archs(spec, ("sm_90a",)) == ("sm_90a",)
    wg_rows = [r for r in rows if r["module"] == "gemm_wgmma"]
    assert sorted(r["kernel"] for r in wg_rows) == sorted(WGMMA_KEEP)
    assert {r["arch"] for r in wg_rows} == {"sm_90a"}
    assert all(r["arch"] in ARCHS for r in rows if r["module"] != "gemm_wgmma")


def test_hopper_kernels_hold_hgmma_and_tma_loads(rows):
    from gpubp.backends import cuda_gemm_wgmma as wg

    fwd = [r for r in rows if r["module"] == "gemm_wgmma" and r["sass_op"]]
    assert len(fwd) == 4
    for r in fwd:
        args = [int(a) for a in r["kernel"].split("<")[1].rstrip(">").split(",")]
        prec, bn = args[0], args[-1]
        assert r["sass_op"] == wg.SASS_OPCODES["bf16" if prec == 2 else "tf32"], r
        # the k-tile loop body once: 4 k-steps of one m64n128 wgmma per 128 columns of BN
        assert r["sass_count"] == 4 * bn // 128, r
        if r["kernel"].startswith("gemm_wgmma_bwd_weight<"):
            # MN-major: a TMA box per 64 columns (2 of delta, bn / 64 of A_prev), every wgmma transposed
            assert r["sass_more"] == {"UTMALDG": 2 + bn // 64, wg.WGRAD_SASS_TRANSPOSE: 4 * bn // 128}, r
        else:
            assert r["sass_more"] == {"UTMALDG": 2}, r     # the A and the W tile of a stage
        assert r["sass_hmma"] == 0, r                   # no mma.sync fallback inside


def test_a_missing_second_instruction_fails_the_check():
    spec = _sass_spec(_MMA, "mma")
    spec.sass_expect = (("mma", "HMMA.1688.F32.TF32"), ("mma", "UTMALDG"))
    rows = cc.compile_check(("sm_80",), specs=[spec])
    (row,) = rows
    assert row["sass_count"] == 1 and row["sass_more"] == {"UTMALDG": 0}
    assert cc.problems(rows) == ["fake sm_80 mma: no UTMALDG instruction in its SASS"]
