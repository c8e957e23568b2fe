"""CPU-side contract of the Hopper forward GEMM (gpubp.backends.cuda_gemm_wgmma, kernels/gemm_wgmma.cu).

The fake CuPy (tests/support/fake_cupy.py) loads the cubin module from the source and lowered
names the cubin cache writes beside it, and checks every launch against the kernels' signatures
(the tensor maps as 128-byte by-value structs); the TMA descriptors are made by a stand-in for
`cuda.bindings.driver` that records each `cuTensorMapEncodeTiled` call, so the tests check the
dims, strides, box and swizzle each map describes and that it points into a live device buffer
large enough for it.  What the kernels compute is checked by tests/gpu/test_gemm_wgmma.py.
"""

import json
import os
import sys
import types

import numpy as np
import pytest

from gpubp.activations import ACT_CODES, ACTIVATIONS
from gpubp.backends import cubin_cache, cuda_device, cuda_gemm_tc
from gpubp.backends import cuda_gemm_wgmma as wg
from gpubp.backends.cuda_source import kernels_dir
from gpubp.backends.plan import Scratch
from support.fake_cupy import FakeCupy, LaunchError, parse_kernels
from support.tc_contract import TC_EXTENTS


def cdiv(a, b):
    return -(-a // b)


# ----------------------------------------------------------------- stand-ins
class FakeDriver:
    """The part of cuda.bindings.driver the launcher uses; records every encode."""

    class _Enum:
        def __init__(self, *names):
            for n in names:
                setattr(self, n, n)

    CUtensorMapDataType = _Enum("CU_TENSOR_MAP_DATA_TYPE_FLOAT32", "CU_TENSOR_MAP_DATA_TYPE_BFLOAT16")
    CUtensorMapInterleave = _Enum("CU_TENSOR_MAP_INTERLEAVE_NONE")
    CUtensorMapSwizzle = _Enum("CU_TENSOR_MAP_SWIZZLE_128B")
    CUtensorMapL2promotion = _Enum("CU_TENSOR_MAP_L2_PROMOTION_L2_256B")
    CUtensorMapFloatOOBfill = _Enum("CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE")
    cuuint64_t = int
    cuuint32_t = int

    def __init__(self):
        self.calls = []

    def cuTensorMapEncodeTiled(self, dtype, rank, ptr, dims, strides, box, estrides, interleave, swizzle, l2, oob):
        call = dict(dtype=dtype, rank=rank, ptr=ptr, dims=list(dims), strides=list(strides), box=list(box),
                    estrides=list(estrides), interleave=interleave, swizzle=swizzle, l2=l2, oob=oob)
        self.calls.append(call)
        return 0, types.SimpleNamespace(opaque=[len(self.calls)] + [ptr % 2**64] + [0] * 14)


def _extents_fwd(p, t, grid, fake):
    bn = t["BN"]
    assert grid == (cdiv(p.M, wg.BM) * cdiv(p.N, bn), 1, 1), f"grid {grid} for {p.M} x {p.N}, BN {bn}"
    if p.vec_out:
        assert p.N % 2 == 0
    need = {"bias": p.N, "Aout": p.M * p.N}
    if p.write_z:
        need["Zout"] = p.M * p.N
    return need


def _extents_copy(p, t, grid, fake):
    assert p.ld_out >= p.cols and p.ld_out % 8 == 0
    return {"x": p.rows * p.cols, "out": p.rows * p.ld_out}


def _extents_bwd_data(p, t, grid, fake):
    bn = t["BN"]
    assert grid == (cdiv(p.M, wg.BM) * cdiv(p.K, bn), 1, 1), f"grid {grid} for {p.M} x {p.K}, BN {bn}"
    if p.vec_out:
        assert p.K % 2 == 0
    need = {"out": p.M * p.K}
    act = t["ACT"]
    if act in (ACT_CODES["gelu"], ACT_CODES["silu"]):
        need["Zprev"] = p.M * p.K
    elif act != ACT_CODES["identity"]:
        need["Aprev"] = p.M * p.K
    return need


def _extents_copy_t(p, t, grid, fake):
    assert p.ld_out >= p.rows and p.ld_out % 8 == 0
    assert grid[0] * 32 >= min(p.cols, 32 * 65535) and grid[1] * 32 >= min(p.rows, 32 * 65535)
    return {"x": p.rows * p.cols, "out": p.cols * p.ld_out}


def _extents_bwd_weight(p, t, grid, fake):
    bn, S = t["BN"], grid[2]
    assert grid[:2] == (cdiv(p.N, wg.BM) * cdiv(p.K, bn), 1), f"grid {grid} for {p.N} x {p.K}, BN {bn}"
    assert p.rows_per_split % wg.WGRAD_BK == 0 or S == 1, "a split must start on a whole 64-row k-tile"
    assert S * p.rows_per_split >= p.M and (S - 1) * p.rows_per_split < p.M, "splits must cover M, none empty"
    if p.vec_out:
        assert p.K % 2 == 0 and p.split_stride % 2 == 0
    if S > 1:
        assert p.split_stride >= p.N * p.K
    return {"dW_base": (S - 1) * p.split_stride + p.N * p.K}


def _extents_colsum(p, t, grid, fake):
    assert p.ld_out >= p.cols and p.ld_out % 8 == 0
    assert grid[0] * 32 >= p.cols and grid[1] * p.rows_per_slice >= p.rows
    assert (grid[1] - 1) * p.rows_per_slice < max(p.rows, 1), "an empty slice"
    if grid[1] > 1:
        assert p.slice_stride >= p.cols
    return {"x": p.rows * p.cols, "out": p.rows * p.ld_out, "colsum": (grid[1] - 1) * p.slice_stride + p.cols}


EXTENTS = {"gemm_wgmma_fwd": _extents_fwd, "gemm_wgmma_copy_tf32": _extents_copy,
           "gemm_wgmma_copy_bf16": _extents_copy, "gemm_wgmma_bwd_data": _extents_bwd_data,
           "gemm_wgmma_copy_t_tf32": _extents_copy_t, "gemm_wgmma_copy_t_bf16": _extents_copy_t,
           "gemm_wgmma_bwd_weight": _extents_bwd_weight, "gemm_wgmma_copy_colsum_bf16": _extents_colsum,
           "gemm_tc_splitk_reduce": TC_EXTENTS["gemm_tc_splitk_reduce"]}


def _install(monkeypatch, tmp_path, **kw):
    fake = FakeCupy(extents=EXTENTS, **kw)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for mod, attr in ((cuda_device, "_attributes"), (cuda_device, "_ccs"), (cuda_device, "_functions"),
                      (cubin_cache, "_functions")):
        monkeypatch.setattr(mod, attr, {})
    builds = []

    def cubin_path(spec, arch, folder=None):
        """What cubin_cache writes (source, lowered names), without running NVRTC."""
        builds.append((spec.name, arch))
        base = tmp_path / f"{spec.name}-{arch}"
        (base.with_suffix(".cu")).write_text(spec.source())
        lowered = {ne: f"_lowered_{i}" for i, ne in enumerate(spec.name_expressions)}
        (base.with_suffix(".json")).write_text(json.dumps({"lowered": lowered}))
        (base.with_suffix(".cubin")).write_bytes(b"")
        return str(base) + ".cubin", lowered

    monkeypatch.setattr(cubin_cache, "cubin_path", cubin_path)
    driver = FakeDriver()
    monkeypatch.setattr(wg, "_driver", lambda: driver)
    fake.driver, fake.builds = driver, builds
    return fake


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake H100 (sm_90, 132 SMs)."""
    return _install(monkeypatch, tmp_path)


def _arr(fake, shape, dtype=np.float32):
    return fake.zeros(shape, dtype)


class _Backend:
    def __init__(self, fake):
        self.fake = fake

    def empty(self, shape, dtype):
        return self.fake.empty(shape, dtype)


# ----------------------------------------------------------------- the module
def test_module_names_archs_and_sass_checks():
    spec = wg.SPECS[0]
    assert spec.archs == ("sm_90a",)
    names = set(spec.name_expressions)
    # fwd and bwd_data per mode, activation and width; the bf16 weight gradient per width; 5 copies
    assert len(names) == 2 * (2 * len(ACTIVATIONS) * 2) + 2 + 5
    assert "gemm_wgmma_fwd<0, 3, 128>" in names and "gemm_wgmma_fwd<2, 6, 256>" in names
    assert {"gemm_wgmma_bwd_weight<2, 128>", "gemm_wgmma_bwd_weight<2, 256>", wg.COLSUM_NAME} <= names
    assert not any(n.startswith("gemm_wgmma_bwd_weight<0") for n in names)   # no tf32 weight gradient
    expect = {}
    for n, op in spec.sass_expect:
        expect.setdefault(n, []).append(op)
    fwd = [n for n in names if n.startswith(("gemm_wgmma_fwd<", "gemm_wgmma_bwd_data<", "gemm_wgmma_bwd_weight<"))]
    assert set(expect) == set(fwd)
    for n in fwd:
        prec = int(n.split("<")[1].split(",")[0])
        want = [("HGMMA.64x128x16.F32.BF16" if prec == 2 else "HGMMA.64x128x8.F32.TF32"), "UTMALDG"]
        if n.startswith("gemm_wgmma_bwd_weight<"):
            want.append("tnspA.tnspB")       # both operands read transposed (MN-major)
        assert expect[n] == want
    src = spec.source()
    assert "#define WG_THREADS 384" in src and "#define WG_BM 128" in src and "#define WG_STAGES 4" in src
    assert "#define WG_STAGES" not in (kernels_dir() / "gemm_wgmma.cu").read_text()
    sigs = parse_kernels(src)
    fwd_sig = sigs["gemm_wgmma_fwd"]
    assert fwd_sig.max_threads == wg.THREADS == 384
    assert [t for t, _ in fwd_sig.params[:2]] == ["TensorMap128", "TensorMap128"]
    assert [t for t, _ in sigs["gemm_wgmma_bwd_data"].params[:2]] == ["TensorMap128", "TensorMap128"]
    assert [t for t, _ in sigs["gemm_wgmma_bwd_weight"].params[:2]] == ["TensorMap128", "TensorMap128"]
    assert sigs["gemm_wgmma_bwd_weight"].max_threads == 384


def test_shared_memory_fits_an_h100_block():
    # 1024 alignment slack + 4 stages x (A 128 rows + W bn rows) x 128 bytes + 8 mbarriers
    assert wg.smem_bytes(128) == 1024 + 4 * 256 * 128 + 64 == 132160
    assert wg.smem_bytes(256) == 1024 + 4 * 384 * 128 + 64 == 197696
    assert wg.smem_bytes(256) <= 227 * 1024


def test_choose_bn():
    assert wg.choose_bn(8192, 4096, 132) == 256
    assert wg.choose_bn(256, 4096, 132) == 128      # 2 x 16 tiles of 256: too few blocks
    assert wg.choose_bn(8192, 128, 132) == 128
    assert wg.padded_cols(1) == 8 and wg.padded_cols(8) == 8 and wg.padded_cols(4097) == 4104


# ----------------------------------------------------------------- launches
def _check_map(fake, call, rows, cols, precision, box_rows):
    elem = 2 if precision == "bf16" else 4
    ld = wg.padded_cols(cols)
    assert call["dtype"] == ("CU_TENSOR_MAP_DATA_TYPE_BFLOAT16" if precision == "bf16"
                             else "CU_TENSOR_MAP_DATA_TYPE_FLOAT32")
    assert call["rank"] == 2
    assert call["dims"] == [cols, rows]                 # innermost (k) first
    assert call["strides"] == [ld * elem] and call["strides"][0] % 16 == 0
    assert call["box"] == [128 // elem, box_rows]       # one 128-byte swizzled row of k per box row
    assert call["estrides"] == [1, 1]
    assert call["swizzle"] == "CU_TENSOR_MAP_SWIZZLE_128B"
    assert call["interleave"] == "CU_TENSOR_MAP_INTERLEAVE_NONE"
    assert call["oob"] == "CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE"   # zeros past the edges
    assert call["ptr"] % 16 == 0
    buf = fake.memory_at(call["ptr"], rows * ld * elem)
    assert buf is not None, "the tensor map does not point into a live device buffer large enough"
    assert buf.dtype == (np.uint16 if precision == "bf16" else np.float32)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (3, 17, 5), (127, 129, 33), (129, 300, 4097), (8192, 4096, 1024)])
@pytest.mark.parametrize("with_z", [False, True])
def test_forward_launches(fake, precision, M, N, K, with_z):
    A, W, b = _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,))
    out, Z = _arr(fake, (M, N)), (_arr(fake, (M, N)) if with_z else None)
    wg.gemm_fwd(A, W, b, ACT_CODES["relu"], out, Z, precision=precision)
    names = [l.name for l in fake.launches]
    copy = wg.COPY_NAMES[precision]
    bn = wg.choose_bn(M, N, 132)
    assert names == [copy, copy, f"gemm_wgmma_fwd<{wg.PREC_CODES[precision]}, {ACT_CODES['relu']}, {bn}>"]
    ca, cw, f = fake.launches
    assert ca.arg("x") is A and cw.arg("x") is W
    assert (ca.arg("rows"), ca.arg("cols"), ca.arg("ld_out")) == (M, K, wg.padded_cols(K))
    assert (cw.arg("rows"), cw.arg("cols")) == (N, K)
    assert f.block == (384, 1, 1) and f.shared_mem == wg.smem_bytes(bn)
    assert (f.arg("M"), f.arg("N"), f.arg("K"), f.arg("write_z")) == (M, N, K, int(with_z))
    assert f.arg("vec_out") == int(N % 2 == 0)
    assert f.arg("Aout") is out and (f.arg("Zout") is Z if with_z else True)
    calls = fake.driver.calls
    assert len(calls) == 2
    _check_map(fake, calls[0], M, K, precision, 128)
    _check_map(fake, calls[1], N, K, precision, bn)
    assert calls[0]["ptr"] == ca.arg("out").__array_interface__["data"][0]
    assert calls[1]["ptr"] == cw.arg("out").__array_interface__["data"][0]
    # the kernel gets the bytes the driver made, in that order
    assert f.arg("tmA")["opaque"][0][0] == 1 and f.arg("tmW")["opaque"][0][0] == 2
    assert fake.builds == [("gemm_wgmma", "sm_90a")]


def test_bn_256_and_128_both_launch(fake):
    M, N, K = 300, 600, 70
    A, W, b, out = _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,)), _arr(fake, (M, N))
    for bn in (128, 256):
        fake.reset()
        fake.driver.calls.clear()
        wg.gemm_fwd(A, W, b, ACT_CODES["gelu"], out, precision="bf16", bn=bn)
        assert fake.launches[-1].name.endswith(f", {bn}>")
        assert fake.driver.calls[1]["box"] == [64, bn]


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (3, 17, 5), (127, 129, 33), (129, 4097, 300), (4096, 1024, 4096)])
@pytest.mark.parametrize("act", ["identity", "relu", "gelu"])
def test_bwd_data_launches(fake, precision, M, N, K, act):
    delta, W, out = _arr(fake, (M, N)), _arr(fake, (N, K)), _arr(fake, (M, K))
    A_prev, Z_prev = _arr(fake, (M, K)), _arr(fake, (M, K))
    wg.gemm_bwd_data(delta, W, A_prev, Z_prev, ACT_CODES[act], out, precision=precision)
    bn = wg.choose_bn(M, K, 132)
    assert [l.name for l in fake.launches] == [wg.COPY_NAMES[precision], wg.COPY_T_NAMES[precision],
                                               wg.bwd_data_name(precision, ACT_CODES[act], bn)]
    cd, ct, f = fake.launches
    assert cd.arg("x") is delta and (cd.arg("rows"), cd.arg("cols")) == (M, N)
    assert ct.arg("x") is W and (ct.arg("rows"), ct.arg("cols"), ct.arg("ld_out")) == (N, K, wg.padded_cols(N))
    assert ct.block == (32, 8, 1)
    assert f.block == (384, 1, 1) and f.shared_mem == wg.smem_bytes(bn)
    assert (f.arg("M"), f.arg("N"), f.arg("K")) == (M, N, K) and f.arg("out") is out
    if act == "gelu":
        assert f.arg("Zprev") is Z_prev
    elif act == "relu":
        assert f.arg("Aprev") is A_prev
    calls = fake.driver.calls
    assert len(calls) == 2
    _check_map(fake, calls[0], M, N, precision, 128)        # delta: reduction over N, K-major
    _check_map(fake, calls[1], K, N, precision, bn)         # W transposed: K rows of N
    assert calls[0]["ptr"] == cd.arg("out").__array_interface__["data"][0]
    assert calls[1]["ptr"] == ct.arg("out").__array_interface__["data"][0]


def test_bwd_data_checks_and_fallbacks(fake):
    delta, W, out = _arr(fake, (4, 3)), _arr(fake, (3, 8)), _arr(fake, (4, 8))
    with pytest.raises(ValueError, match="Z_prev is needed"):
        wg.gemm_bwd_data(delta, W, _arr(fake, (4, 8)), None, ACT_CODES["gelu"], out)
    with pytest.raises(ValueError, match="A_prev has shape"):
        wg.gemm_bwd_data(delta, W, _arr(fake, (4, 7)), None, ACT_CODES["relu"], out)
    with pytest.raises(ValueError, match="W has shape"):
        wg.gemm_bwd_data(delta, _arr(fake, (2, 8)), None, None, 0, out)
    assert fake.launches == []
    wg.gemm_bwd_data(_arr(fake, (4, 0)), _arr(fake, (0, 8)), None, None, 0, out, precision="bf16")
    assert [l.name for l in fake.launches] == [cuda_gemm_tc.bwd_data_name("bf16", 0)]


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_has_its_kernel(fake, act):
    A, W, b, out = _arr(fake, (5, 9)), _arr(fake, (7, 9)), _arr(fake, (7,)), _arr(fake, (5, 7))
    wg.gemm_fwd(A, W, b, ACT_CODES[act], out, precision="tf32")
    assert fake.launches[-1].name == f"gemm_wgmma_fwd<0, {ACT_CODES[act]}, 128>"


def test_with_scratch_maps_are_encoded_once_and_nothing_is_allocated_again(fake):
    scratch = Scratch(_Backend(fake))
    M, N, K = 257, 130, 100
    A, W, b, out = _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,)), _arr(fake, (M, N))
    wg.gemm_fwd(A, W, b, 0, out, precision="tf32", scratch=scratch)
    first = [l.args for l in fake.launches]
    assert len(fake.driver.calls) == 2
    fake.reset()
    wg.gemm_fwd(A, W, b, 0, out, precision="tf32", scratch=scratch)
    assert fake.allocations == 0                 # copies are the plan's buffers
    assert len(fake.driver.calls) == 2           # tensor maps memoised
    again = [l.args for l in fake.launches]
    assert again[2][0] is first[2][0] and again[2][1] is first[2][1]   # the very same map arrays
    assert again[0][1] is first[0][1]            # the same copy buffer
    # another shape gets its own copies and maps
    A2, out2 = _arr(fake, (64, K)), _arr(fake, (64, N))
    wg.gemm_fwd(A2, W, b, 0, out2, precision="tf32", scratch=scratch)
    assert len(fake.driver.calls) == 3           # only the new A copy's map (W's is the same buffer)


def test_capture_replays_with_no_host_work(fake):
    scratch = Scratch(_Backend(fake))
    M, N, K = 200, 260, 64
    A, W, b, out = _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,)), _arr(fake, (M, N))
    wg.gemm_fwd(A, W, b, 0, out, precision="bf16", scratch=scratch)   # warm-up: buffers and maps made
    stream = fake.cuda.Stream()
    n_maps = len(fake.driver.calls)
    with stream:
        stream.begin_capture()
        wg.gemm_fwd(A, W, b, 0, out, precision="bf16", scratch=scratch)
        graph = stream.end_capture()
    assert len(fake.driver.calls) == n_maps
    fake.reset()
    graph.launch(stream)
    assert [l.kernel for l in fake.launched(replay=True)] == ["gemm_wgmma_copy_bf16", "gemm_wgmma_copy_bf16",
                                                               "gemm_wgmma_fwd"]


# ----------------------------------------------------------------- refusals
def test_refusals_launch_nothing(fake):
    A, W, b, out = _arr(fake, (4, 8)), _arr(fake, (3, 8)), _arr(fake, (3,)), _arr(fake, (4, 3))
    with pytest.raises(ValueError, match="precision"):
        wg.gemm_fwd(A, W, b, 0, out, precision="3xtf32")
    with pytest.raises(TypeError, match="A_prev"):
        wg.gemm_fwd(A.astype(np.float64), W, b, 0, out)
    with pytest.raises(ValueError, match="W has shape"):
        wg.gemm_fwd(A, _arr(fake, (3, 9)), b, 0, out)
    with pytest.raises(ValueError, match="A_out has shape"):
        wg.gemm_fwd(A, W, b, 0, _arr(fake, (4, 4)))
    with pytest.raises(ValueError, match="C-contiguous"):
        wg.gemm_fwd(_arr(fake, (8, 4)).T, W, b, 0, out)
    with pytest.raises(ValueError, match="bn"):
        wg.gemm_fwd(A, W, b, 0, out, bn=64)
    assert fake.launches == [] and fake.driver.calls == []


def test_refused_below_sm90(monkeypatch, tmp_path):
    fake = _install(monkeypatch, tmp_path, attributes={"ComputeCapabilityMajor": 8})
    A, W, b, out = _arr(fake, (4, 8)), _arr(fake, (3, 8)), _arr(fake, (3,)), _arr(fake, (4, 3))
    assert not wg.available()
    with pytest.raises(RuntimeError, match="compute capability 9.0"):
        wg.gemm_fwd(A, W, b, 0, out)
    assert fake.launches == []


def test_k_zero_runs_on_gemm_tc(fake):
    A, W, b, out = _arr(fake, (4, 0)), _arr(fake, (3, 0)), _arr(fake, (3,)), _arr(fake, (4, 3))
    wg.gemm_fwd(A, W, b, 0, out, precision="bf16")
    assert [l.name for l in fake.launches] == [cuda_gemm_tc.fwd_name("bf16", 0)]


def test_empty_outputs_launch_nothing(fake):
    wg.gemm_fwd(_arr(fake, (0, 8)), _arr(fake, (3, 8)), _arr(fake, (3,)), 0, _arr(fake, (0, 3)))
    assert fake.launches == []


def test_encode_refuses_unaligned_tensors():
    drv = FakeDriver()
    with pytest.raises(ValueError, match="16-byte"):
        wg.encode_tiled(0x1004, 4, 8, 8, "tf32", 128, driver=drv)
    with pytest.raises(ValueError, match="16-byte"):
        wg.encode_tiled(0x1000, 4, 6, 6, "tf32", 128, driver=drv)    # 24-byte rows
    m = wg.encode_tiled(0x1000, 4, 6, 8, "bf16", 256, driver=drv)
    assert m.dtype == wg.TENSOR_MAP_DTYPE and m.size == 1 and m.nbytes == 128
    assert drv.calls[0]["box"] == [64, 256]


def test_fake_refuses_a_wrong_struct_argument(fake):
    spec = wg.SPECS[0]
    f = cubin_cache.function(spec, "gemm_wgmma_fwd<0, 0, 128>", wg.smem_bytes(128))
    tm = np.zeros(1, wg.TENSOR_MAP_DTYPE)
    args = [tm, tm, _arr(fake, (3,)), _arr(fake, (4, 3)), _arr(fake, (4, 3))] + [np.int32(v) for v in (4, 3, 8, 0, 0)]
    f((1, 1, 1), (384, 1, 1), tuple(args), shared_mem=wg.smem_bytes(128))
    bad = list(args)
    bad[0] = np.zeros(16, np.uint64)                 # 16 elements, not one 128-byte struct
    with pytest.raises(LaunchError, match="128-byte"):
        f((1, 1, 1), (384, 1, 1), tuple(bad), shared_mem=wg.smem_bytes(128))
    with pytest.raises(LaunchError, match="dynamic shared memory"):
        f((1, 1, 1), (384, 1, 1), tuple(args), shared_mem=wg.smem_bytes(256))


# ----------------------------------------------------------------- the cubin cache
def test_cache_key_covers_source_arch_and_nvrtc():
    k = cubin_cache.cache_key("src", "sm_90a", "13.5")
    assert k != cubin_cache.cache_key("src ", "sm_90a", "13.5")
    assert k != cubin_cache.cache_key("src", "sm_100a", "13.5")
    assert k != cubin_cache.cache_key("src", "sm_90a", "13.0")
    assert "--gpu-architecture=sm_90a" in cubin_cache.options("sm_90a")


def _counting_build(monkeypatch):
    """`compile_cubin` replaced by a stand-in that counts its builds (NVRTC's version is still read)."""
    pytest.importorskip("cuda.bindings.nvrtc")
    from gpubp.compile_check import NvrtcMissing, _nvrtc

    try:
        _nvrtc()
    except NvrtcMissing:
        pytest.skip("NVRTC is not installed")
    built = []

    def compile_cubin(spec, arch, nvrtc=None):
        built.append(arch)
        return b"CUBIN" * 100, {ne: f"low{i}" for i, ne in enumerate(spec.name_expressions)}, ""

    monkeypatch.setattr(cubin_cache, "compile_cubin", compile_cubin)
    return built


def test_cubin_path_builds_once_then_reads_the_cache(monkeypatch, tmp_path):
    built = _counting_build(monkeypatch)
    spec = wg.SPECS[0]
    p1, low1 = cubin_cache.cubin_path(spec, "sm_90a", folder=str(tmp_path))
    p2, low2 = cubin_cache.cubin_path(spec, "sm_90a", folder=str(tmp_path))
    assert built == ["sm_90a"] and p1 == p2 and low1 == low2
    assert open(p1, "rb").read() == b"CUBIN" * 100
    assert open(p1[:-len(".cubin")] + ".cu").read() == spec.source()
    meta = json.load(open(p1[:-len(".cubin")] + ".json"))
    assert meta["arch"] == "sm_90a" and set(meta["lowered"]) == set(spec.name_expressions)


@pytest.mark.parametrize("damage", [
    ("cubin", b""), ("cubin", b"CUBIN" * 50), ("cubin", b"CUBIX" + b"CUBIN" * 99),
    ("json", b"[]"), ("json", b"null"), ("json", b'{"lowered": [1, 2]}'), ("json", b'{"lowered": {'),
    ("json", b'{"lowered": {"a": "b"}}'), ("json", None), ("cubin", None)])
def test_a_damaged_cache_entry_is_built_again(monkeypatch, tmp_path, damage):
    """A truncated or altered cubin (a copy cut short, a full disk, a crash before the data reached the
    disk) was taken as it was whenever its record named the kernels: the driver then refuses the image,
    in this process and every later one, until someone deletes the cache.  A record that is JSON but not
    an object (`[]`, `null`) raised TypeError.  Each is now built again, and the files left are whole."""
    built = _counting_build(monkeypatch)
    spec = wg.SPECS[0]
    path, _ = cubin_cache.cubin_path(spec, "sm_90a", folder=str(tmp_path))
    which, data = damage
    target = path if which == "cubin" else path[:-len(".cubin")] + ".json"
    if data is None:
        os.unlink(target)
    else:
        with open(target, "wb") as f:
            f.write(data)
    again, lowered = cubin_cache.cubin_path(spec, "sm_90a", folder=str(tmp_path))
    assert built == ["sm_90a", "sm_90a"] and again == path
    assert open(path, "rb").read() == b"CUBIN" * 100 and set(lowered) == set(spec.name_expressions)
    cubin_cache.cubin_path(spec, "sm_90a", folder=str(tmp_path))
    assert len(built) == 2                  # whole again: read, not built, from now on


def test_a_cache_folder_that_cannot_be_written_keeps_the_build_for_the_process(monkeypatch, tmp_path, caplog):
    """A read-only cache (or one that cannot be made) failed the first Hopper launch with the
    PermissionError of a temporary file, after the build.  Now the build goes to a folder of the
    process's own, with a warning naming CUPY_CACHE_DIR, and later calls find it there."""
    import logging

    built = _counting_build(monkeypatch)
    spec = wg.SPECS[0]
    ro = tmp_path / "ro"
    write = cubin_cache._write_atomic

    def refuse(path, data):
        if os.path.dirname(path) == str(ro):
            raise PermissionError(13, "Permission denied", path)
        write(path, data)

    monkeypatch.setattr(cubin_cache, "_write_atomic", refuse)
    monkeypatch.setattr(cubin_cache, "_private", None)
    with caplog.at_level(logging.WARNING, logger="gpubp"):
        path, lowered = cubin_cache.cubin_path(spec, "sm_90a", folder=str(ro))
    assert "CUPY_CACHE_DIR" in caplog.text and str(ro) in caplog.text
    assert os.path.dirname(path) == cubin_cache._private and open(path, "rb").read() == b"CUBIN" * 100
    assert cubin_cache.cubin_path(spec, "sm_90a", folder=str(ro)) == (path, lowered) and len(built) == 1
    assert not any(ro.iterdir())


def test_cuda_device_refuses_cubin_modules(fake):
    with pytest.raises(ValueError, match="cubin_cache"):
        cuda_device.load_kernels({wg.SPECS[0]: ["gemm_wgmma_copy_tf32"]})


def test_cache_key_is_the_sha256_of_source_nvrtc_arch_and_options():
    """The key the module's docstring names: SHA-256 over source, NVRTC version, architecture and
    options (each ended by a NUL), its first 40 hex digits."""
    import hashlib

    opts = cubin_cache.options("sm_90a")
    assert opts[0] == "--gpu-architecture=sm_90a" and opts[-1] == "-ftz=true" and len(opts) >= 3
    parts = ["src", "13.5", "sm_90a", " ".join(opts)]
    want = hashlib.sha256("".join(p + "\0" for p in parts).encode()).hexdigest()[:40]
    assert cubin_cache.cache_key("src", "sm_90a", "13.5") == want


def test_the_default_cache_folder_is_under_cupys_and_is_made(monkeypatch, tmp_path, caplog):
    import logging

    built = _counting_build(monkeypatch)
    monkeypatch.setenv("CUPY_CACHE_DIR", str(tmp_path / "cupy" / "cache"))
    monkeypatch.setattr(cubin_cache, "_private", None)
    assert cubin_cache.cache_dir() == os.path.join(str(tmp_path / "cupy" / "cache"), "gpubp-cubin")
    with caplog.at_level(logging.INFO, logger="gpubp"):
        path, lowered = cubin_cache.cubin_path(wg.SPECS[0], "sm_90a")    # folder made, with its parents
    assert f"building {wg.SPECS[0].name} for sm_90a with NVRTC " in caplog.text
    assert f"then cached in {cubin_cache.cache_dir()}" in caplog.text
    assert os.path.dirname(path) == cubin_cache.cache_dir() and path.endswith(".cubin") and built == ["sm_90a"]
    assert sorted(os.listdir(cubin_cache.cache_dir())) == sorted(
        os.path.basename(path)[:-len("cubin")] + ext for ext in ("cu", "cubin", "json"))
    assert cubin_cache._private is None                                  # no private folder was needed


def test_compile_cubin_builds_the_modules_source_and_names_a_failed_build(monkeypatch):
    from gpubp.backends.nvrtc_program import Build

    spec, calls = wg.SPECS[0], []
    result = Build(error=None, log="the log", lowered={"k": "_Zk"}, cubin=b"BIN")

    def build(*args):
        calls.append(args)
        return result

    monkeypatch.setattr(cubin_cache, "build", build)
    monkeypatch.setattr(cubin_cache, "_nvrtc", lambda: "bindings")
    assert cubin_cache.compile_cubin(spec, "sm_90a") == (b"BIN", {"k": "_Zk"}, "the log")
    assert calls == [("bindings", spec.source(), f"{spec.name}.cu", spec.name_expressions,
                      cubin_cache.options("sm_90a"))]
    assert cubin_cache.compile_cubin(spec, "sm_90a", nvrtc="given")[0] == b"BIN" and calls[-1][0] == "given"
    result = Build(error="NVRTC_ERROR_COMPILATION", log="k.cu(3): error", lowered={})
    with pytest.raises(RuntimeError, match=rf"^NVRTC could not build {spec.name} for sm_90a "
                                           r"\(NVRTC_ERROR_COMPILATION\):\nk.cu\(3\): error$"):
        cubin_cache.compile_cubin(spec, "sm_90a")


def test_without_the_nvrtc_bindings_the_build_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)
    with pytest.raises(RuntimeError, match="pip install cuda-bindings nvidia-cuda-nvrtc"):
        cubin_cache._nvrtc()


def test_an_atomic_write_that_fails_leaves_no_file_and_raises(monkeypatch, tmp_path):
    cubin_cache._write_atomic(str(tmp_path / "a.bin"), b"data")
    assert os.listdir(tmp_path) == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"data"

    def replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cubin_cache.os, "replace", replace)
    with pytest.raises(OSError, match="No space"):
        cubin_cache._write_atomic(str(tmp_path / "b.bin"), b"data")
    assert os.listdir(tmp_path) == ["a.bin"]          # no temporary file left behind


def test_the_private_folder_is_made_once_and_removed_at_exit(monkeypatch):
    import atexit
    import shutil

    registered = []
    monkeypatch.setattr(atexit, "register", lambda *a: registered.append(a))
    monkeypatch.setattr(cubin_cache, "_private", None)
    folder = cubin_cache._private_folder()
    try:
        assert os.path.isdir(folder) and cubin_cache._private_folder() == folder
        assert registered == [(shutil.rmtree, folder, True)]
    finally:
        shutil.rmtree(folder, True)


def test_load_counts_the_kernels_it_loads_and_function_refuses_an_unknown_one(fake):
    spec = wg.SPECS[0]
    assert cubin_cache.load(spec) == len(spec.name_expressions) > 1
    assert cubin_cache.load(spec) == 0 and fake.builds == [(spec.name, spec.archs[0])]
    del cubin_cache._functions[(cuda_device.device_id(), spec.name, spec.name_expressions[0])]
    assert cubin_cache.load(spec) == 1 and len(fake.builds) == 2
    with pytest.raises(ValueError, match=rf"module {spec.name!r} has no kernel 'nope'"):
        cubin_cache.function(spec, "nope")


# ----------------------------------------------------------------- the backend's opt-in
def _backend(monkeypatch, **kw):
    import gpubp.backends
    from gpubp.backends import cuda_fused
    from gpubp.backends.cuda_backend import CudaBackend

    monkeypatch.setattr(cuda_fused, "_grids", {})
    monkeypatch.setattr(gpubp.backends, "_instances", {})
    return CudaBackend(**kw)


def _gemm_kernels(fake):
    return [l.kernel for l in fake.launches if l.kernel.startswith("gemm")]


@pytest.mark.parametrize("prec", ["tf32", "bf16"])
def test_backend_runs_the_forward_gemms_on_hopper_when_asked(monkeypatch, fake, prec):
    import gpubp

    rng = np.random.default_rng(0)
    be = _backend(monkeypatch, tensor_core_gemms=True, hopper=True)
    net = gpubp.MLP([33, 300, 130, 5], activation="gelu", backend=be, precision=prec, seed=0)
    X = rng.standard_normal((1024, 33)).astype(np.float32)
    Y = rng.standard_normal((1024, 5)).astype(np.float32)
    plan = net._plan(1024)                  # prepare builds the cubin with the other modules
    assert fake.builds == [("gemm_wgmma", "sm_90a")]
    compiled = list(fake.compiled)
    net.train_step(X, Y, "adam")
    assert fake.compiled == compiled, "kernels compiled mid-step, not by prepare"
    kernels = _gemm_kernels(fake)
    assert kernels.count("gemm_wgmma_fwd") == 3 and "gemm_tc_fwd" not in kernels
    assert kernels.count("gemm_wgmma_bwd_data") == 2 and "gemm_tc_bwd_data" not in kernels
    copies = kernels.count(wg.COPY_NAMES[prec])
    if prec == "bf16":                                  # the weight gradient on wgmma too
        assert kernels.count("gemm_wgmma_bwd_weight") == 3 and "gemm_tc_bwd_weight" not in kernels
        # A_prev and W per forward, A_prev per weight gradient; delta is copied once per layer
        # (with its column sums) and the input gradient reads that copy
        assert copies == 3 * 2 + 3 and kernels.count(wg.COLSUM_NAME) == 3
        colsums = fake.launched(wg.COLSUM_NAME)
        for f in fake.launched("gemm_wgmma_bwd_data"):
            ptr = f.arg("tmD")["opaque"][0][1]
            assert ptr in {_ptr(c.arg("out")) for c in colsums}, "the input gradient copied delta again"
    else:                                               # tf32's stays on mma.sync
        assert kernels.count("gemm_tc_bwd_weight") == 3 and "gemm_wgmma_bwd_weight" not in kernels
        assert copies == 3 * 2 + 2                      # and the input gradient copies delta itself
    Xd, Yd = net._inputs(X), net._targets(Y, 1024)
    net._step(Xd, Yd, net.optimizer, plan=plan)
    n_maps = len(fake.driver.calls)
    fake.reset()
    net._step(Xd, Yd, net.optimizer, plan=plan)
    assert fake.allocations == 0, fake.allocation_sites
    assert len(fake.driver.calls) == n_maps, "a warm step encoded tensor maps again"


def test_backend_keeps_gemm_tc_without_hopper_or_off_sm90(monkeypatch, tmp_path):
    import gpubp

    rng = np.random.default_rng(1)
    X = rng.standard_normal((256, 20)).astype(np.float32)
    Y = rng.standard_normal((256, 4)).astype(np.float32)
    for attrs, hopper in (({}, False), ({"ComputeCapabilityMajor": 8}, True)):
        fake = _install(monkeypatch, tmp_path, attributes=attrs)
        be = _backend(monkeypatch, tensor_core_gemms=True, hopper=hopper)
        net = gpubp.MLP([20, 200, 4], backend=be, precision="bf16", seed=0)
        net.train_step(X, Y, "sgd", lr=0.01)
        kernels = _gemm_kernels(fake)
        assert "gemm_tc_fwd" in kernels and "gemm_wgmma_fwd" not in kernels and fake.builds == []
    # 3xtf32 has no Hopper kernel: gemm_tc even with hopper=True on sm_90
    fake = _install(monkeypatch, tmp_path)
    be = _backend(monkeypatch, tensor_core_gemms=True, hopper=True)
    gpubp.MLP([20, 200, 4], backend=be, precision="3xtf32", seed=0).train_step(X, Y, "sgd", lr=0.01)
    assert "gemm_tc_fwd" in _gemm_kernels(fake) and "gemm_wgmma_fwd" not in _gemm_kernels(fake)


def test_hopper_needs_tensor_core_gemms(monkeypatch, fake):
    with pytest.raises(ValueError, match="tensor_core_gemms"):
        _backend(monkeypatch, hopper=True)


# ----------------------------------------------------------------- backward, weights (bf16)
def test_wgrad_splits_cover_the_batch_on_whole_k_tiles():
    for M in (1, 63, 255, 256, 1000, 4097, 70001):
        for N, K in ((1, 1), (10, 4096), (17, 129), (300, 300), (4096, 1024), (4096, 4096)):
            for bn in wg.BNS:
                S, rows = wg.wgrad_splits(M, N, K, 132, bn)
                tiles = cdiv(N, 128) * cdiv(K, bn)
                assert S * rows >= M and (S - 1) * rows < M
                if S > 1:
                    assert rows % 64 == 0 and rows >= 256 - 63 and S * tiles <= 132
                    assert tiles < 132 and S <= wg.WGRAD_MAX_SPLITS
                if tiles >= 132 or M < 512:
                    assert S == 1
            Sc, crows = wg.colsum_slices(M, N, 132)
            assert Sc * crows >= M and (Sc - 1) * crows < M and Sc <= wg.COLSUM_MAX_SLICES
    assert wg.wgrad_splits(4096, 10, 4096, 132, 128) == (4, 1024)      # 32 tiles: 4 splits of 1024 rows
    assert wg.wgrad_splits(4096, 4096, 4096, 132, 256) == (1, 4096)    # 512 tiles fill the device
    assert wg.wgrad_plan(4096, 4096, 4096, 132)["bn"] == 256


WGRAD_SHAPES = [(1, 1, 1), (3, 17, 5), (127, 129, 33), (1000, 17, 129), (4097, 300, 127), (256, 10, 4096),
                (4096, 10, 4096), (4096, 4096, 4096)]


@pytest.mark.parametrize("M, N, K", WGRAD_SHAPES)
def test_bwd_weight_launches(fake, M, N, K):
    delta, A, dW, db = _arr(fake, (M, N)), _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,))
    wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16")
    plan = wg.wgrad_plan(M, N, K, 132)
    bn, S, Sc = plan["bn"], plan["S"], plan["Sc"]
    reduce = ["gemm_tc_splitk_reduce"] if S > 1 or Sc > 1 else []
    assert [l.name for l in fake.launches] == [wg.COLSUM_NAME, wg.COPY_NAMES["bf16"], wg.bwd_weight_name("bf16", bn)] + reduce
    cs, ca, f = fake.launches[:3]
    # delta's copy with db's column sums: Sc slices, into db itself when there is one
    assert cs.arg("x") is delta and cs.block == (32, 8, 1) and cs.grid == (cdiv(N, 32), Sc, 1)
    assert (cs.arg("rows"), cs.arg("cols"), cs.arg("ld_out")) == (M, N, wg.padded_cols(N))
    if Sc == 1:
        assert cs.arg("colsum") is db
    assert ca.arg("x") is A and (ca.arg("rows"), ca.arg("cols"), ca.arg("ld_out")) == (M, K, wg.padded_cols(K))
    assert f.block == (384, 1, 1) and f.shared_mem == wg.smem_bytes(bn) and f.grid[2] == S
    assert (f.arg("M"), f.arg("N"), f.arg("K"), f.arg("rows_per_split")) == (M, N, K, plan["rows"])
    assert f.arg("vec_out") == int(K % 2 == 0)
    if S == 1:
        assert f.arg("dW_base") is dW and f.arg("split_stride") == 0
    else:
        ws = f.arg("dW_base")
        assert ws.size == plan["ws"] and f.arg("split_stride") == cdiv(N * K + N, 4) * 4
        assert cs.arg("rows_per_slice") == plan["rows"] and cs.arg("slice_stride") == f.arg("split_stride")
    # both tensor maps MN-major: the batch is the outer dimension, boxes of 64 (128 bytes) x 64 rows
    calls = fake.driver.calls
    assert len(calls) == 2
    for call, rows, cols, copy in ((calls[0], M, N, cs.arg("out")), (calls[1], M, K, ca.arg("out"))):
        assert call["dtype"] == "CU_TENSOR_MAP_DATA_TYPE_BFLOAT16" and call["rank"] == 2
        assert call["dims"] == [cols, rows] and call["strides"] == [wg.padded_cols(cols) * 2]
        assert call["box"] == [64, 64] and call["swizzle"] == "CU_TENSOR_MAP_SWIZZLE_128B"
        assert call["oob"] == "CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE"
        assert call["ptr"] == copy.__array_interface__["data"][0]
        buf = fake.memory_at(call["ptr"], rows * wg.padded_cols(cols) * 2)
        assert buf is not None and buf.dtype == np.uint16
    assert f.arg("tmD")["opaque"][0][0] == 1 and f.arg("tmA")["opaque"][0][0] == 2
    if reduce:
        r = fake.launches[3]
        assert r.arg("dW") is dW and r.arg("db") is db
        if S > 1:   # the splits' dW and db partials together
            assert (r.arg("S"), r.arg("NK"), r.arg("N")) == (S, N * K, N) and r.arg("ws") is f.arg("dW_base")
        else:       # the column sums' slices only
            assert (r.arg("S"), r.arg("NK"), r.arg("N")) == (Sc, 0, N) and r.arg("ws") is cs.arg("colsum")
            assert r.arg("split_stride") == cs.arg("slice_stride") == cdiv(N, 4) * 4


def test_bwd_weight_both_widths_launch(fake):
    M, N, K = 700, 300, 600
    delta, A, dW, db = _arr(fake, (M, N)), _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,))
    for bn in wg.BNS:
        fake.reset()
        wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", bn=bn)
        f = [l for l in fake.launches if l.kernel == "gemm_wgmma_bwd_weight"][0]
        assert f.name == wg.bwd_weight_name("bf16", bn) and f.grid[0] == 3 * cdiv(K, bn)


def test_bwd_weight_refusals_and_edges(fake):
    delta, A, dW, db = _arr(fake, (8, 3)), _arr(fake, (8, 5)), _arr(fake, (3, 5)), _arr(fake, (3,))
    with pytest.raises(ValueError, match="tf32 runs on cuda_gemm_tc"):
        wg.gemm_bwd_weight(delta, A, dW, db, precision="tf32")
    with pytest.raises(ValueError, match="A_prev has shape"):
        wg.gemm_bwd_weight(delta, _arr(fake, (7, 5)), dW, db, precision="bf16")
    with pytest.raises(ValueError, match="dW_out has shape"):
        wg.gemm_bwd_weight(delta, A, _arr(fake, (5, 3)), db, precision="bf16")
    with pytest.raises(ValueError, match="db_out has shape"):
        wg.gemm_bwd_weight(delta, A, dW, _arr(fake, (4,)), precision="bf16")
    with pytest.raises(TypeError, match="delta"):
        wg.gemm_bwd_weight(delta.astype(np.float64), A, dW, db, precision="bf16")
    with pytest.raises(ValueError, match="bn"):
        wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", bn=64)
    assert fake.launches == [] and fake.driver.calls == []
    # K == 0: db only (delta's copy and column sums), no GEMM and no tensor map
    wg.gemm_bwd_weight(delta, _arr(fake, (8, 0)), _arr(fake, (3, 0)), db, precision="bf16")
    assert [l.name for l in fake.launches] == [wg.COLSUM_NAME] and fake.driver.calls == []
    # M == 0: gemm_tc's weight gradient (zeros); N == 0: nothing
    fake.reset()
    wg.gemm_bwd_weight(_arr(fake, (0, 3)), _arr(fake, (0, 5)), dW, db, precision="bf16")
    assert [l.name for l in fake.launches] == [cuda_gemm_tc.bwd_weight_name("bf16")]
    fake.reset()
    wg.gemm_bwd_weight(_arr(fake, (8, 0)), A, _arr(fake, (0, 5)), _arr(fake, (0,)), precision="bf16")
    assert fake.launches == []


def test_bwd_weight_refused_below_sm90(monkeypatch, tmp_path):
    fake = _install(monkeypatch, tmp_path, attributes={"ComputeCapabilityMajor": 8})
    with pytest.raises(RuntimeError, match="compute capability 9.0"):
        wg.gemm_bwd_weight(_arr(fake, (4, 3)), _arr(fake, (4, 5)), _arr(fake, (3, 5)), _arr(fake, (3,)),
                           precision="bf16")
    assert fake.launches == []


def _ptr(x):
    return x.__array_interface__["data"][0]


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (3, 17, 5), (1000, 17, 129), (4097, 300, 127)])
@pytest.mark.parametrize("with_scratch", [False, True])
def test_bwd_data_reads_the_copy_of_delta_the_weight_gradient_made(fake, M, N, K, with_scratch):
    scratch = Scratch(_Backend(fake)) if with_scratch else None
    delta, A, dW, db = _arr(fake, (M, N)), _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,))
    W, A_prev, dprev = _arr(fake, (N, K)), _arr(fake, (M, K)), _arr(fake, (M, K))
    d_copy = wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)
    colsum = fake.launched(wg.COLSUM_NAME)[0]
    assert colsum.arg("x") is delta and _ptr(d_copy) == _ptr(colsum.arg("out"))
    assert d_copy.shape == wg.copy_shape(M, N) == (M, wg.padded_cols(N)) and d_copy.dtype == np.uint16
    fake.reset()
    fake.driver.calls.clear()
    wg.gemm_bwd_data(delta, W, A_prev, None, ACT_CODES["relu"], dprev, precision="bf16", scratch=scratch,
                     delta_copy=d_copy)
    bn = wg.choose_bn(M, K, 132)
    # no copy of delta: the transposed copy of W, then the GEMM on the weight gradient's copy
    assert [l.name for l in fake.launches] == [wg.COPY_T_NAMES["bf16"], wg.bwd_data_name("bf16", ACT_CODES["relu"], bn)]
    assert fake.driver.calls[0]["ptr"] == _ptr(d_copy)
    _check_map(fake, fake.driver.calls[0], M, N, "bf16", 128)
    assert fake.launches[1].arg("tmD")["opaque"][0][1] == _ptr(d_copy)


def test_a_wrong_delta_copy_is_refused_before_any_launch(fake):
    M, N, K = 5, 17, 9
    delta, W, dprev = _arr(fake, (M, N)), _arr(fake, (N, K)), _arr(fake, (M, K))
    good = _arr(fake, wg.copy_shape(M, N), np.uint16)
    cases = [
        (_arr(fake, (M, N), np.uint16), ValueError, "copy"),                       # rows not padded
        (_arr(fake, (M + 1, wg.padded_cols(N)), np.uint16), ValueError, "copy"),   # another delta's
        (_arr(fake, wg.copy_shape(M, N), np.float32), ValueError, "uint16"),       # a tf32 copy for bf16
        (np.zeros(wg.copy_shape(M, N), np.uint16), TypeError, "device"),           # host memory
        (_arr(fake, (wg.padded_cols(N), M), np.uint16).T, ValueError, "C-contiguous"),
    ]
    for bad, err, msg in cases:
        with pytest.raises(err, match=msg):
            wg.gemm_bwd_data(delta, W, None, None, 0, dprev, precision="bf16", delta_copy=bad)
    with pytest.raises(ValueError, match="float32"):   # a tf32 call wants TF32 values (float32)
        wg.gemm_bwd_data(delta, W, None, None, 0, dprev, precision="tf32", delta_copy=good)
    assert fake.launches == [] and fake.driver.calls == []
    assert wg.copy_dtype("tf32") == np.float32 and wg.copy_dtype("bf16") == np.uint16


def test_bwd_weight_returns_no_copy_when_it_makes_none(fake):
    assert wg.gemm_bwd_weight(_arr(fake, (4, 0)), _arr(fake, (4, 3)), _arr(fake, (0, 3)), _arr(fake, (0,))) is None
    assert wg.gemm_bwd_weight(_arr(fake, (0, 5)), _arr(fake, (0, 3)), _arr(fake, (5, 3)), _arr(fake, (5,))) is None


@pytest.mark.parametrize("M, N, K", [(1000, 17, 129), (4096, 300, 1000)])
def test_bwd_weight_with_scratch_allocates_nothing_warm_and_keeps_its_own_copies(fake, M, N, K):
    scratch = Scratch(_Backend(fake))
    delta, A, dW, db = _arr(fake, (M, N)), _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,))
    W, dprev = _arr(fake, (N, K)), _arr(fake, (M, K))
    wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)
    first = list(fake.launches)
    n_maps = len(fake.driver.calls)
    # the forward and input gradient of the same shapes use other copy buffers
    wg.gemm_fwd(A, W, db, 0, delta, precision="bf16", scratch=scratch)
    wg.gemm_bwd_data(delta, W, None, None, 0, dprev, precision="bf16", scratch=scratch)
    others = {id(l.arg("out")) for l in fake.launches[len(first):] if l.kernel.startswith("gemm_wgmma_copy")}
    assert not others & {id(first[0].arg("out")), id(first[1].arg("out"))}, "a copy buffer is shared"
    n_maps = len(fake.driver.calls)
    fake.reset()
    wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)
    assert fake.allocations == 0, fake.allocation_sites
    assert len(fake.driver.calls) == n_maps, "tensor maps encoded again"
    again = list(fake.launches)
    assert [l.name for l in again] == [l.name for l in first]
    def same(x, y):   # the same map array, scalar value, or device memory (views made anew are fine)
        if x is y:
            return True
        if isinstance(x, np.generic):
            return x == y
        return (isinstance(x, fake.ndarray) and x.shape == y.shape and
                x.__array_interface__["data"][0] == y.__array_interface__["data"][0])

    for a, b in zip(again, first):
        for x, y in zip(a.args, b.args):
            assert same(x, y), f"{a.name}: another buffer or map"


def test_bwd_weight_capture_replays_with_no_host_work(fake):
    scratch = Scratch(_Backend(fake))
    M, N, K = 1000, 17, 129        # split: the reduce runs too
    delta, A, dW, db = _arr(fake, (M, N)), _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,))
    wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)
    n_maps = len(fake.driver.calls)
    stream = fake.cuda.Stream()
    with stream:
        stream.begin_capture()
        wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)
        graph = stream.end_capture()
    assert len(fake.driver.calls) == n_maps
    fake.reset()
    graph.launch(stream)
    assert [l.kernel for l in fake.launched(replay=True)] == [wg.COLSUM_NAME, "gemm_wgmma_copy_bf16",
                                                               "gemm_wgmma_bwd_weight", "gemm_tc_splitk_reduce"]


@pytest.mark.parametrize("batch", [64, 1024])
def test_prepare_compiles_what_the_hopper_weight_gradient_launches(monkeypatch, fake, batch):
    import gpubp

    be = _backend(monkeypatch, tensor_core_gemms=True, hopper=True)
    net = gpubp.MLP([33, 300, 5], backend=be, precision="bf16", seed=0)
    net._plan(batch)
    compiled = list(fake.compiled)
    tc_names = [n for n in compiled if n.startswith("gemm_tc")]
    want = set()
    for N, K in ((300, 33), (5, 300)):
        want |= wg.gemm_tc_kernel_names("bf16", batch, N, K, 132)
    assert set(tc_names) == want, "gemm_tc kernels other than the reduce the weight gradient needs"
    rng = np.random.default_rng(2)
    net.train_step(rng.standard_normal((batch, 33)).astype(np.float32),
                   rng.standard_normal((batch, 5)).astype(np.float32), "sgd", lr=0.01)
    assert fake.compiled == compiled, "kernels compiled mid-step, not by prepare"
