"""The tensor-core GEMMs of kernels/gemm_tc.cu (skipped without CUDA, or below sm_80).

Each kernel (forward + bias + activation, input gradient * g', weight gradient + db)
in each mode ("tf32", "3xtf32", "bf16") against
  - gpubp.precision's emulation of the mode (same operand rounding, float32 sums per
    mma step): the difference may only come from the order and rounding of float32
    sums, at most EMUL_TOL relative to |A| |B| (a wrong operand rounding, a missing
    3xTF32 term or a swapped fragment is orders of magnitude above it);
  - float64: at most precision.TOLERANCE[mode] (tf32 1.5e-3, bf16 1e-2, 3xtf32 5e-6,
    relative to |A| |B|).
Awkward sizes (1, 3, 17, 127, 129, 1000, 4097), every activation, outputs poisoned with
NaN before each call (every element must be written), misaligned views (the 4-byte copy
path), the split-K weight gradient with a caller-owned scratch, bitwise reproducibility,
and the kernels' operand conversions bit for bit against the emulation's rounding.
"""


import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from gpubp.backends import cuda_available  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]

from gpubp import precision as P  # noqa: E402
from gpubp.activations import ACT_CODES, NEEDS_Z  # noqa: E402
from gpubp.backends import cuda_device  # noqa: E402
from gpubp.backends import cuda_gemm_tc as tc  # noqa: E402
from gpubp.backends.numpy_backend import activation_backward_inplace, activation_forward  # noqa: E402
from support.gemm_checks import (bf16_activation_stored, bf16_stored, case_id, host, offset_view, poison,  # noqa: E402
                                 rand, scaled_err, seed, sparse_cases, written)


@pytest.fixture(autouse=True)
def _needs_sm80():
    if cuda_device.compute_capability() < 80:
        pytest.skip("tensor-core GEMMs need sm_80+")


@pytest.fixture(scope="module", autouse=True)
def _compile_all_at_once():
    """One NVRTC program for every kernel of the module (then CuPy's disk cache), rather
    than one per kernel as each test first asks for it."""
    if cuda_device.compute_capability() >= 80:
        cuda_device.load_kernels({tc.SPECS[0]: tc.SPECS[0].name_expressions})


MODES = tuple(tc.PREC_CODES)
#: kernel vs emulation, max |diff| / max(|A| |B|): float32 summation-order noise only
EMUL_TOL = 3e-6
#: the same after the input gradient's epilogue (g' in float32 transcendentals)
EMUL_TOL_GPRIME = 5e-6


CASES = sparse_cases(21) + [(17, 3, 4097, "relu"),        # long reductions
                             (129, 127, 4097, "gelu")]


def _check_gemm(out, emul, exact, scale, mode, what, emul_tol=EMUL_TOL):
    e_emul = scaled_err(out, emul, scale)
    e_exact = scaled_err(out, exact, scale)
    assert e_emul <= emul_tol, f"{what} {mode}: {e_emul:.3g} from the emulation"
    assert e_exact <= P.TOLERANCE[mode], f"{what} {mode}: {e_exact:.3g} from float64"


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fwd(case, mode):
    M, N, K, act = case
    rng = np.random.default_rng(seed("f" + case_id(case)))
    A, W, b = rand(rng, (M, K)), rand(rng, (N, K), 1 / np.sqrt(K)), rand(rng, (N,), 0.5)
    A_out, Z_out = poison((M, N)), poison((M, N))
    tc.gemm_fwd(A, W, b, ACT_CODES[act], A_out, Z_out, precision=mode)
    a, w, bb = host(A), host(W), host(b).astype(np.float64)
    scale = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    Z = written(Z_out, "Z_out")
    if mode == "bf16":       # Z and A stored rounded to bfloat16, A from the rounded Z
        bf16_stored(Z, P.to_bf16(P.matmul(a, w.T.copy(), mode) + host(b)), "Z_out", atol=EMUL_TOL * scale.max())
        bf16_activation_stored(written(A_out, "A_out"), act, Z, "A_out")
    else:
        _check_gemm(Z - bb, P.matmul(a, w.T.copy(), mode).astype(np.float64),
                    a.astype(np.float64) @ w.astype(np.float64).T, scale, mode, "fwd")
        # the epilogue: A_out = g(Z) of the kernel's own Z, in float32 arithmetic
        A_ref = activation_forward(act, Z, np.empty_like(Z))
        e = np.abs(written(A_out, "A_out") - A_ref).max() / max(1.0, np.abs(A_ref).max())
        assert e < 1e-5, f"activation epilogue {act}: {e:.3g}"
    # without Z_out the same A_out, bit for bit
    A2 = poison((M, N))
    tc.gemm_fwd(A, W, b, ACT_CODES[act], A2, None, precision=mode)
    assert bool((A2.view(cupy.int32) == A_out.view(cupy.int32)).all())


# ---------------------------------------------------------------- backward, data
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bwd_data(case, mode):
    M, N, K, act = case
    rng = np.random.default_rng(seed("d" + case_id(case)))
    delta, W = rand(rng, (M, N)), rand(rng, (N, K), 1 / np.sqrt(N))
    Zp = rng.standard_normal((M, K)).astype(np.float32)
    Ap = activation_forward(act, Zp.astype(np.float64), np.empty((M, K))).astype(np.float32)
    Z_prev, A_prev = cupy.asarray(Zp), cupy.asarray(Ap)
    out = poison((M, K))
    tc.gemm_bwd_data(delta, W, A_prev, Z_prev if act in NEEDS_Z else None, ACT_CODES[act], out,
                     precision=mode)
    d, w = host(delta), host(W)
    gprime = activation_backward_inplace(act, np.ones((M, K)), Ap.astype(np.float64), Zp.astype(np.float64))
    scale = (np.abs(d.astype(np.float64)) @ np.abs(w.astype(np.float64))) * np.abs(gprime)
    if mode == "bf16":       # the stored delta: (delta W) g' rounded once to bfloat16
        g32 = activation_backward_inplace(act, np.ones((M, K), np.float32), Ap, Zp)
        bf16_stored(written(out, "delta_prev"), P.to_bf16(P.matmul(d, w, mode) * g32), "delta_prev",
                    atol=EMUL_TOL_GPRIME * scale.max())
        return
    _check_gemm(written(out, "delta_prev"), P.matmul(d, w, mode).astype(np.float64) * gprime,
                (d.astype(np.float64) @ w.astype(np.float64)) * gprime, scale, mode, "bwd_data",
                EMUL_TOL_GPRIME)


# ---------------------------------------------------------------- backward, weights
WCASES = [(M, N, K) for (M, N, K, _) in CASES[:14]] + [
    (4097, 3, 5), (4097, 64, 64), (1000, 129, 127), (4097, 129, 127), (1, 129, 129), (20000, 17, 1),
    (16384 + 3, 256, 256)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", WCASES, ids=lambda c: "M{}-N{}-K{}".format(*c))
def test_bwd_weight(case, mode):
    M, N, K = case
    rng = np.random.default_rng(M * 1000003 + N * 1009 + K)
    delta, A = rand(rng, (M, N)), rand(rng, (M, K))
    size = tc.bwd_weight_scratch_size(M, N, K)
    scratch = cupy.full(max(size, 1), np.nan, dtype=np.float32) if size else None
    dW, db = poison((N, K)), poison((N,))
    tc.gemm_bwd_weight(delta, A, dW, db, precision=mode, scratch=scratch)
    d, a = host(delta), host(A)
    d64, a64 = d.astype(np.float64), a.astype(np.float64)
    scale = np.abs(d64).T @ np.abs(a64)
    _check_gemm(written(dW, "dW"), P.matmul(d.T.copy(), a, mode).astype(np.float64), d64.T @ a64,
                scale, mode, "dW")
    e = scaled_err(written(db, "db"), d64.sum(0), np.abs(d64).sum(0))
    assert e < 1e-5, f"db: {e:.3g}"   # float32 sums of the delta as given, in any mode


def test_bwd_weight_uses_the_scratch_and_rejects_a_short_one():
    M, N, K = 65536, 64, 64   # few tiles, many rows: splits
    assert tc.bwd_weight_scratch_size(M, N, K) > 0
    rs = cupy.random.RandomState(3)
    delta = rs.standard_normal((M, N), dtype=np.float32)
    A = rs.standard_normal((M, K), dtype=np.float32)
    dW, db = poison((N, K)), poison((N,))
    with pytest.raises(ValueError, match="scratch"):
        tc.gemm_bwd_weight(delta, A, dW, db, "tf32", scratch=cupy.empty(10, np.float32))
    assert bool(cupy.isnan(dW).all()), "nothing may change on bad input"
    scratch = cupy.full(tc.bwd_weight_scratch_size(M, N, K), np.nan, dtype=np.float32)
    tc.gemm_bwd_weight(delta, A, dW, db, "tf32", scratch=scratch)
    assert bool(cupy.isfinite(scratch[:N * K]).all()), "the splits were not written to scratch"
    one = poison((N, K))
    tc.gemm_bwd_weight(delta, A, one, poison((N,)), "tf32", scratch=None)   # one split
    ref = delta.astype(np.float64).T @ A.astype(np.float64)
    for x in (dW, one):
        assert P.relative_error(host(x), host(delta).T, host(A)) <= P.TOLERANCE["tf32"]
        assert bool(cupy.isfinite(x).all())
    assert float(cupy.abs(dW - ref).max()) > 0   # not exact: TF32 really rounds


# ---------------------------------------------------------------- misaligned views
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_offset_views(offset, mode):
    """Operands and outputs at element offsets into flat buffers: 16-byte copies only where
    aligned, else the 4-byte path; N, K multiples of 4 so that only the offset decides."""
    M, N, K = 300, 132, 136
    rng = np.random.default_rng(offset)

    def view(shape, scale=1.0, poison=False):
        return offset_view(rng, offset, shape, scale, poison)

    A, W, b = view((M, K)), view((N, K), 1 / np.sqrt(K)), view((N,))
    A_out, Z_out = view((M, N), poison=True), view((M, N), poison=True)
    tc.gemm_fwd(A, W, b, ACT_CODES["gelu"], A_out, Z_out, precision=mode)
    a, w = host(A), host(W)
    scale = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    Z = written(Z_out, "Z_out")
    if mode == "bf16":       # Z and A stored rounded to bfloat16, A from the rounded Z (as test_fwd)
        bf16_stored(Z, P.to_bf16(P.matmul(a, w.T.copy(), mode) + host(b)), "Z_out", atol=EMUL_TOL * scale.max())
        bf16_activation_stored(written(A_out, "A_out"), "gelu", Z, "A_out")
    else:
        _check_gemm(Z - host(b), P.matmul(a, w.T.copy(), mode).astype(np.float64),
                    a.astype(np.float64) @ w.astype(np.float64).T, scale, mode, "fwd")
        written(A_out, "A_out")

    delta, dprev = view((M, N)), view((M, K), poison=True)
    tc.gemm_bwd_data(delta, W, None, None, ACT_CODES["identity"], dprev, precision=mode)
    d = host(delta)
    d_scale = np.abs(d.astype(np.float64)) @ np.abs(w.astype(np.float64))
    if mode == "bf16":       # the stored delta rounded to bfloat16 (as test_bwd_data)
        bf16_stored(written(dprev, "delta_prev"), P.to_bf16(P.matmul(d, w, mode)), "delta_prev",
                    atol=EMUL_TOL * d_scale.max())
    else:
        _check_gemm(written(dprev, "delta_prev"), P.matmul(d, w, mode).astype(np.float64),
                    d.astype(np.float64) @ w.astype(np.float64), d_scale, mode, "bwd_data")

    dW, db = view((N, K), poison=True), view((N,), poison=True)
    tc.gemm_bwd_weight(delta, A, dW, db, precision=mode)
    _check_gemm(written(dW, "dW"), P.matmul(d.T.copy(), a, mode).astype(np.float64),
                d.astype(np.float64).T @ a.astype(np.float64),
                np.abs(d.astype(np.float64)).T @ np.abs(a.astype(np.float64)), mode, "dW")
    written(db, "db")


# ---------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("mode", MODES)
def test_bitwise_reproducible(mode):
    rs = cupy.random.RandomState(1234)
    M, N, K = 70001, 300, 200
    A = rs.standard_normal((M, K), dtype=np.float32)
    W = rs.standard_normal((N, K), dtype=np.float32)
    b = rs.standard_normal((N,), dtype=np.float32)
    delta = rs.standard_normal((M, N), dtype=np.float32)
    scratch = cupy.empty(max(1, tc.bwd_weight_scratch_size(M, N, K)), dtype=np.float32)
    runs = []
    for _ in range(2):
        A_out, Z_out, dprev = poison((M, N)), poison((M, N)), poison((M, K))
        dW, db = poison((N, K)), poison((N,))
        tc.gemm_fwd(A, W, b, ACT_CODES["silu"], A_out, Z_out, precision=mode)
        tc.gemm_bwd_data(delta, W, None, A, ACT_CODES["gelu"], dprev, precision=mode)
        tc.gemm_bwd_weight(delta, A, dW, db, precision=mode, scratch=scratch)
        runs.append((A_out, Z_out, dprev, dW, db))
    for x, y in zip(*runs):
        assert bool(cupy.isfinite(x).all())
        assert bool((x.view(cupy.int32) == y.view(cupy.int32)).all()), "two runs differ in bits"


# ---------------------------------------------------------------- one large shape
@pytest.mark.parametrize("mode", MODES)
def test_large_4096(mode):
    n = 4096
    rs = cupy.random.RandomState(7)
    A = rs.standard_normal((n, n), dtype=np.float32)
    W = rs.standard_normal((n, n), dtype=np.float32)
    A64, W64 = A.astype(np.float64), W.astype(np.float64)
    scale = float((cupy.abs(A64) @ cupy.abs(W64).T).max())
    out = poison((n, n))
    tc.gemm_fwd(A, W, cupy.zeros(n, np.float32), ACT_CODES["identity"], out, precision=mode)
    e = float(cupy.abs(out - A64 @ W64.T).max()) / scale
    assert bool(cupy.isfinite(out).all()) and e <= P.TOLERANCE[mode], f"fwd {e:.3g}"


# ---------------------------------------------------------------- operand rounding, bit for bit
HAND = np.array([0x3F800000, 0x3F800FFF, 0x3F801000, 0x3F803000, 0xBF801000, 0x3F808000, 0x3F818000,
                 0xBF818000, 0x3FFFF000, 0x3FFF8000, 0x00000001, 0x00001000, 0x00008000, 0x00018000,
                 0x007FFFFF, 0x7F7FE000, 0x7F7F7FFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
                 0x80000000, 0x7FC00000], np.uint32).view(np.float32)


def _values():
    rng = np.random.default_rng(11)
    rnd = rng.integers(0, 2 ** 32, 100000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([HAND, rnd, rng.standard_normal(100000).astype(np.float32)])


def _same_bits(got, want):
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    bad = np.flatnonzero(got[~nan].view(np.uint32) != want[~nan].view(np.uint32))
    assert bad.size == 0, f"{bad.size} values differ, first {want[~nan][bad[0]]!r}"


def test_kernel_rounding_matches_the_emulation_bit_for_bit():
    x = _values()
    xd = cupy.asarray(x)
    _same_bits(host(tc.round_like_kernels(xd, "tf32")), P.to_tf32(x))
    _same_bits(host(tc.round_like_kernels(xd, "bf16")), P.to_bf16(x))
    hi, lo = host(tc.round_like_kernels(xd, "3xtf32"))
    ehi, elo = P.split_3xtf32(x)
    _same_bits(hi, ehi)
    # x - hi runs with -ftz=true in the kernel: subnormal differences flush to zero there
    with np.errstate(invalid="ignore", over="ignore"):
        rest = x - ehi
        normal = ~((np.abs(rest) < np.finfo(np.float32).tiny) & (rest != 0))   # NaN, inf, 0 kept
    _same_bits(lo[normal], elo[normal])
