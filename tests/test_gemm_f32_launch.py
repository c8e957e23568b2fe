"""The launch contract of the third float32 GEMM tile (gpubp.backends.cuda_gemm_f32), on the CPU.

The fake CuPy (tests/support/fake_cupy.py) parses the kernels' signatures from the very
source gpubp compiles (kernels/gemm_f32.cu after the generated header) and checks every launch
the launchers make: argument count and C types, block size against __launch_bounds__, dynamic
shared memory against the kernel's raised limit, and (rules below) that the grid covers the
output, each pointer holds every element the launch can touch, and a vector flag is set only
where the leading dimension is a multiple of 4 and the pointers 16-byte aligned.  The kernels
compute nothing here: tests/gpu/test_gemm_f32.py checks the numbers on a GPU.
"""

import sys

import numpy as np
import pytest

from gpubp.activations import ACT_CODES, ACTIVATIONS
from gpubp.backends import cuda_device
from gpubp.backends import cuda_gemm_f32 as g3
from gpubp.backends.cuda_source import kernels_dir
from support.fake_cupy import FakeCupy, LaunchError, parse_kernels


def _real_gpu() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


pytestmark = pytest.mark.skipif(_real_gpu(), reason="a real GPU is present: tests/gpu checks these kernels")

_NEEDS_Z = (ACT_CODES["gelu"], ACT_CODES["silu"])
SIZES = (1, 3, 17, 127, 129, 1000)


def _cdiv(a, b):
    return -(-a // b)


def _grid(P, Q, grid):
    assert grid[0] == _cdiv(P, 128) * _cdiv(Q, 128) and grid[1] == 1, f"grid {grid} for {P} x {Q}"


def _vec_ok(flag, ld, *arrays):
    if flag:
        assert ld % 4 == 0, f"a vector flag with leading dimension {ld}"
        for a in arrays:
            assert a.data.ptr % 16 == 0, "a vector flag with a pointer not 16-byte aligned"


def _fwd(p, t, g, fake):
    _grid(p.M, p.N, g)
    assert g[2] == 1
    _vec_ok(p.vec_in, p.K, p.A, p.W)
    return {"A": p.M * p.K, "W": p.N * p.K, "bias": p.N, "Aout": p.M * p.N,
            "Zout": p.M * p.N if p.write_z else 0}


def _bwd_data(p, t, g, fake):
    _grid(p.M, p.K, g)
    act = int(t["ACT"])
    _vec_ok(p.vec_d, p.N, p.D)
    _vec_ok(p.vec_w, p.K, p.W)
    _vec_ok(p.vec_out, p.K, p.out, p.Aprev if act not in _NEEDS_Z else p.Zprev)
    return {"D": p.M * p.N, "W": p.N * p.K, "out": p.M * p.K,
            "Aprev": p.M * p.K if act not in (0,) + _NEEDS_Z else 0,
            "Zprev": p.M * p.K if act in _NEEDS_Z else 0}


def _bwd_weight(p, t, g, fake):
    _grid(p.N, p.K, g)
    S = g[2]
    assert p.rows_per_split * S >= p.M, f"{S} splits of {p.rows_per_split} rows miss some of {p.M}"
    assert S == 1 or (S - 1) * p.rows_per_split < p.M, "an empty split"
    assert S == 1 or (p.split_stride >= p.N * p.K + p.N and p.split_stride % 4 == 0), "split partials"
    _vec_ok(p.vec_d, p.N, p.D)
    _vec_ok(p.vec_a, p.K, p.A)
    _vec_ok(p.vec_out, p.K, p.dW_base)
    return {"D": p.M * p.N, "A": p.M * p.K, "dW_base": (S - 1) * p.split_stride + p.N * p.K,
            "db_base": (S - 1) * p.split_stride + p.N}


def _reduce(p, t, g, fake):
    return {"ws": (p.S - 1) * p.split_stride + p.NK + p.N, "dW": p.NK, "db": p.N}


EXTENTS = {"gemm_f32_fwd": _fwd, "gemm_f32_bwd_data": _bwd_data, "gemm_f32_bwd_weight": _bwd_weight,
           "gemm_f32_splitk_reduce": _reduce}


def _install(monkeypatch, **kw):
    fake = FakeCupy(extents=EXTENTS, **kw)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda_device, "_attributes", {})
    monkeypatch.setattr(cuda_device, "_ccs", {})
    monkeypatch.setattr(cuda_device, "_functions", {})
    return fake


@pytest.fixture
def fake(monkeypatch):
    """A fake H100 (sm_90, 132 SMs)."""
    return _install(monkeypatch)


def _arr(fake, shape, offset=0, dtype=np.float32):
    """A device array of `shape`, starting `offset` elements into a fresh allocation (offset 1:
    not 16-byte aligned)."""
    n = int(np.prod(shape))
    return fake.zeros((n + offset,), dtype)[offset:].reshape(shape)


# ----------------------------------------------------------------- the module
def test_every_name_expression_names_a_kernel_of_the_source(fake):
    spec = g3.SPECS[0]
    mod = fake.RawModule(code=spec.source(), name_expressions=list(spec.name_expressions))
    for expr in spec.name_expressions:
        assert mod.get_function(expr).signature.params
    sigs = parse_kernels(spec.source())
    assert set(sigs) == {"gemm_f32_fwd", "gemm_f32_bwd_data", "gemm_f32_bwd_weight", "gemm_f32_splitk_reduce"}
    for k in sigs.values():
        assert k.max_threads == g3.THREADS == 128
    assert [t for t, _ in sigs["gemm_f32_fwd"].params] == ["float*"] * 5 + ["int"] * 5
    assert sigs["gemm_f32_bwd_weight"].params[8] == ("long long", "split_stride")
    names = set(spec.name_expressions)
    assert len(names) == 2 * len(ACTIVATIONS) + 2
    assert dict(spec.sass_expect) == {n: "FFMA" for n in names if n != g3.REDUCE_NAME}


def test_constants_come_from_the_generated_header():
    src = g3.SPECS[0].source()
    for line in ("#define GEMM3_THREADS 128", "#define GEMM3_BM 128", "#define GEMM3_BK 16",
                 "#define GEMM3_STAGES 3"):
        assert line in src
    own = (kernels_dir() / "gemm_f32.cu").read_text()
    assert "#define GEMM3_BM " not in own and "#define GEMM3_STAGES " not in own
    # the shared-memory size the launcher asks for is the kernel's GEMM3_SMEM_BYTES
    assert "#define GEMM3_LDR (GEMM3_BK + 4)" in own and "#define GEMM3_TILE (GEMM3_BM * GEMM3_LDR)" in own
    assert "#define GEMM3_SMEM_BYTES (2 * GEMM3_STAGES * GEMM3_TILE * 4)" in own
    assert g3.SMEM_BYTES == 2 * 3 * 128 * 20 * 4 == 61440 > 48 * 1024


# ----------------------------------------------------------------- forward
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("act", range(len(ACTIVATIONS)))
def test_forward_every_activation_and_size(fake, act, offset):
    for i, M in enumerate(SIZES):
        N, K = SIZES[(i + 2) % len(SIZES)], SIZES[(i + 4) % len(SIZES)]
        A, W, b = _arr(fake, (M, K), offset), _arr(fake, (N, K), offset), _arr(fake, (N,), offset)
        A_out, Z_out = _arr(fake, (M, N), offset), _arr(fake, (M, N), offset)
        fake.reset()
        assert g3.gemm_fwd(A, W, b, act, A_out, Z_out if i % 2 else None) == g3.fwd_name(act)
        (launch,) = fake.launches
        assert launch.name == f"gemm_f32_fwd<{act}>" and launch.block == (128, 1, 1)
        assert launch.shared_mem == g3.SMEM_BYTES
        assert launch.arg("write_z") == (i % 2)
        assert launch.arg("vec_in") == (offset == 0 and K % 4 == 0)


def test_forward_vector_path_when_aligned(fake):
    A, W, b = _arr(fake, (300, 132)), _arr(fake, (260, 132)), _arr(fake, (260,))
    A_out = _arr(fake, (300, 260))
    g3.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out)
    (launch,) = fake.launches
    assert launch.arg("vec_in") == 1 and launch.grid == (3 * 3, 1, 1)
    assert launch.arg("Zout") is A_out   # a placeholder, never written (write_z 0)


# ----------------------------------------------------------------- input gradient
@pytest.mark.parametrize("act", range(len(ACTIVATIONS)))
def test_input_gradient_every_activation(fake, act):
    for offset in (0, 1):
        for i, M in enumerate(SIZES):
            N, K = SIZES[(i + 1) % len(SIZES)], SIZES[(i + 3) % len(SIZES)]
            delta, W = _arr(fake, (M, N), offset), _arr(fake, (N, K), offset)
            A_prev, Z_prev, out = _arr(fake, (M, K), offset), _arr(fake, (M, K), offset), _arr(fake, (M, K), offset)
            fake.reset()
            g3.gemm_bwd_data(delta, W, A_prev if act not in _NEEDS_Z else None,
                             Z_prev if act in _NEEDS_Z else None, act, out)
            (launch,) = fake.launches
            assert launch.name == f"gemm_f32_bwd_data<{act}>" and launch.shared_mem == g3.SMEM_BYTES
            assert launch.arg("vec_w") == (offset == 0 and K % 4 == 0)
            assert launch.arg("vec_d") == (offset == 0 and N % 4 == 0)
            assert launch.arg("vec_out") == (offset == 0 and K % 4 == 0)


def test_input_gradient_needs_its_g_prime_source(fake):
    delta, W, out = _arr(fake, (8, 4)), _arr(fake, (4, 3)), _arr(fake, (8, 3))
    with pytest.raises(ValueError, match="Z_prev"):
        g3.gemm_bwd_data(delta, W, _arr(fake, (8, 3)), None, ACT_CODES["gelu"], out)
    with pytest.raises(ValueError, match="A_prev"):
        g3.gemm_bwd_data(delta, W, None, None, ACT_CODES["tanh"], out)
    assert not fake.launches
    g3.gemm_bwd_data(delta, W, None, None, ACT_CODES["identity"], out)   # identity needs neither
    assert fake.launches[0].arg("Aprev") is out


# ----------------------------------------------------------------- weight gradient
@pytest.mark.parametrize("M", [1, 17, 255, 256, 4097, 100_003])
@pytest.mark.parametrize("N, K", [(1, 1), (3, 17), (127, 129), (1000, 4097)])
@pytest.mark.parametrize("sms", [1, 108, 132])
def test_splits_cover_the_batch_with_no_empty_split(M, N, K, sms):
    S, rows = g3.splits(M, N, K, sms)
    assert 1 <= S <= g3.MAX_SPLITS
    if S == 1:
        assert rows >= M
        return
    assert rows % g3.BK == 0
    assert (S - 1) * rows < M <= S * rows
    assert g3.tiles(N, K) < 2 * sms


def test_weight_gradient_splits_into_the_callers_scratch(fake):
    M, N, K = 4097, 33, 70
    delta, A = _arr(fake, (M, N)), _arr(fake, (M, K))
    dW, db = _arr(fake, (N, K)), _arr(fake, (N,))
    size = g3.bwd_weight_scratch_size(M, N, K)
    S, rows = g3.splits(M, N, K, 132)
    assert S > 1 and size == S * g3.split_stride(N, K)
    scratch = fake.zeros((size,), np.float32)
    fake.reset()
    assert g3.gemm_bwd_weight(delta, A, dW, db, scratch=scratch) == g3.BWD_WEIGHT_NAME
    assert fake.allocations == 0
    w, r = fake.launches
    assert w.name == "gemm_f32_bwd_weight" and w.grid == (1, 1, S) and w.shared_mem == g3.SMEM_BYTES
    assert w.arg("rows_per_split") == rows and w.arg("split_stride") == g3.split_stride(N, K)
    assert np.shares_memory(w.arg("dW_base"), scratch) and w.arg("db_base").data.ptr == \
        scratch.data.ptr + 4 * N * K
    assert r.name == "gemm_f32_splitk_reduce" and r.arg("S") == S and r.arg("dW") is dW and r.arg("db") is db
    # the vector store flag: K % 4 != 0 here
    assert w.arg("vec_out") == 0 and w.arg("vec_d") == 0 and w.arg("vec_a") == 0


def test_weight_gradient_scratch_from_a_plan_scratch_and_none(fake):
    M, N, K = 8192, 64, 64
    delta, A = _arr(fake, (M, N)), _arr(fake, (M, K))
    dW, db = _arr(fake, (N, K)), _arr(fake, (N,))

    class PlanScratch:   # the interface of gpubp.backends.plan.Scratch
        def __init__(self):
            self.bufs = {}

        def get(self, key, shape, dtype):
            return self.bufs.setdefault((key, shape), fake.zeros(shape, dtype))

    ps = PlanScratch()
    g3.gemm_bwd_weight(delta, A, dW, db, scratch=ps)
    g3.gemm_bwd_weight(delta, A, dW, db, scratch=ps)
    assert len(ps.bufs) == 1
    (ws,) = ps.bufs.values()
    split = [l for l in fake.launched("gemm_f32_bwd_weight")]
    assert all(l.grid[2] > 1 and np.shares_memory(l.arg("dW_base"), ws) for l in split)
    assert all(l.arg("vec_out") == 1 and l.arg("vec_d") == 1 for l in split)
    fake.reset()
    g3.gemm_bwd_weight(delta, A, dW, db)   # no scratch: one split, straight into dW and db
    (launch,) = fake.launches
    assert launch.grid[2] == 1 and launch.arg("dW_base") is dW and launch.arg("db_base") is db
    assert launch.arg("rows_per_split") >= M


def test_weight_gradient_large_layer_needs_no_split(fake):
    M, N, K = 4096, 4096, 4096
    assert g3.bwd_weight_scratch_size(M, N, K) == 0
    delta, A = _arr(fake, (M, N)), _arr(fake, (M, K))
    g3.gemm_bwd_weight(delta, A, _arr(fake, (N, K)), _arr(fake, (N,)))
    (launch,) = fake.launches
    assert launch.grid == (32 * 32, 1, 1) and launch.arg("vec_out") == 1


def test_too_small_a_scratch_is_refused_before_any_launch(fake):
    M, N, K = 4097, 33, 70
    small = fake.zeros((g3.bwd_weight_scratch_size(M, N, K) - 1,), np.float32)
    with pytest.raises(ValueError, match="scratch holds"):
        g3.gemm_bwd_weight(_arr(fake, (M, N)), _arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,)),
                           scratch=small)
    assert not fake.launches


# ----------------------------------------------------------------- bad input
def test_bad_arrays_are_refused_naming_the_argument(fake):
    A, W, b, out = _arr(fake, (8, 4)), _arr(fake, (5, 4)), _arr(fake, (5,)), _arr(fake, (8, 5))
    with pytest.raises(TypeError, match="W must be a float32"):
        g3.gemm_fwd(A, _arr(fake, (5, 4), dtype=np.float64), b, 3, out)
    with pytest.raises(ValueError, match="A_prev must be C-contiguous"):
        g3.gemm_fwd(_arr(fake, (4, 8)).T, W, b, 3, out)
    with pytest.raises(ValueError, match=r"b has shape \(4,\), expected \(5,\)"):
        g3.gemm_fwd(A, W, _arr(fake, (4,)), 3, out)
    with pytest.raises(ValueError, match="A_out has shape"):
        g3.gemm_fwd(A, W, b, 3, _arr(fake, (8, 4)))
    with pytest.raises(ValueError, match="activation code"):
        g3.gemm_fwd(A, W, b, 99, out)
    with pytest.raises(ValueError, match="db_out has shape"):
        g3.gemm_bwd_weight(_arr(fake, (8, 5)), A, _arr(fake, (5, 4)), _arr(fake, (4,)))
    assert not fake.launches


def test_empty_outputs_launch_nothing(fake):
    assert g3.gemm_fwd(_arr(fake, (0, 4)), _arr(fake, (5, 4)), _arr(fake, (5,)), 3, _arr(fake, (0, 5))) is None
    assert g3.gemm_bwd_weight(_arr(fake, (8, 0)), _arr(fake, (8, 4)), _arr(fake, (0, 4)), _arr(fake, (0,))) is None
    assert not fake.launches


def test_an_empty_reduction_still_runs_the_epilogue(fake):
    """K == 0 in the forward: Z = b (an empty sum), so the kernel runs with no k-tiles."""
    g3.gemm_fwd(_arr(fake, (8, 0)), _arr(fake, (5, 0)), _arr(fake, (5,)), 3, _arr(fake, (8, 5)))
    (launch,) = fake.launches
    assert launch.arg("K") == 0


def test_devices_below_sm80_are_refused(monkeypatch):
    fake = _install(monkeypatch, attributes={"ComputeCapabilityMajor": 7, "ComputeCapabilityMinor": 5})
    with pytest.raises(RuntimeError, match="compute capability 8.0"):
        g3.gemm_fwd(_arr(fake, (8, 4)), _arr(fake, (5, 4)), _arr(fake, (5,)), 3, _arr(fake, (8, 5)))
    assert not fake.launches


def test_a_wrong_launch_is_caught_by_the_contract(fake):
    """The rules above are live: a launch whose grid misses tiles, or a vector flag on an
    unaligned leading dimension, fails."""
    spec = g3.SPECS[0]
    f = fake.RawModule(code=spec.source(), name_expressions=list(spec.name_expressions)).get_function(
        g3.fwd_name(3))
    f.max_dynamic_shared_size_bytes = g3.SMEM_BYTES
    M, N, K = 200, 130, 6
    args = [_arr(fake, (M, K)), _arr(fake, (N, K)), _arr(fake, (N,)), _arr(fake, (M, N)), _arr(fake, (M, N))]
    ok = tuple(args + [np.int32(v) for v in (M, N, K, 0, 0)])
    f((4, 1, 1), (128, 1, 1), ok, shared_mem=g3.SMEM_BYTES)
    with pytest.raises(LaunchError, match="grid"):
        f((2, 1, 1), (128, 1, 1), ok, shared_mem=g3.SMEM_BYTES)
    with pytest.raises(LaunchError, match="leading dimension 6"):
        f((4, 1, 1), (128, 1, 1), tuple(args + [np.int32(v) for v in (M, N, K, 0, 1)]), shared_mem=g3.SMEM_BYTES)
    with pytest.raises(LaunchError, match="__launch_bounds__ allows 128"):
        f((4, 1, 1), (256, 1, 1), ok, shared_mem=g3.SMEM_BYTES)
