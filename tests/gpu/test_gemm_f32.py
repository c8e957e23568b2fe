"""The third float32 GEMM tile, kernels/gemm_f32.cu, against float64 (skipped without CUDA or below sm_80).

Each kernel (forward + bias + activation, input gradient * g', weight gradient + db) at
awkward sizes (1, 3, 17, 127, 129, 1000, 4097 in every role), every activation, outputs
poisoned with NaN before each call (every element must be written), views at element offsets
(the masked 16-byte and 4-byte copy paths), interior tiles with whole k-tiles (the unmasked
fast loop) and with a partial last k-tile, the split-K weight gradient into a caller-owned
scratch, bitwise reproducibility of every output, and agreement with gemm.cu's v1 kernels.
Error measure: max |out - ref| / max(|A| |B|) (|A| |B| the float64 product of magnitudes),
at most TOL(K) = 3e-7 sqrt(K) + 2e-6 (float32 rounding of a K-term sum).
"""

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from gpubp.backends import cuda_available  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]

from gpubp.activations import ACT_CODES, ACTIVATIONS, NEEDS_Z  # noqa: E402
from gpubp.backends import cuda_device, cuda_gemm  # noqa: E402
from gpubp.backends import cuda_gemm_f32 as g3  # noqa: E402
from support.gemm_checks import (SIZES, bwd_data_operands, bwd_data_refs, case_id, check_activation,  # noqa: E402
                                 device_fwd_err, device_operands, fwd_refs, host, offset_view, poison,
                                 rand, refs, same_bits, scaled_err, seed, written)


@pytest.fixture(autouse=True)
def _needs_sm80():
    if cuda_device.compute_capability() < 80:
        pytest.skip("the gemm_f32 kernels need sm_80+")


@pytest.fixture(scope="module", autouse=True)
def _compile_all_at_once():
    """One NVRTC program for every kernel of the module (then CuPy's disk cache)."""
    if cuda_device.compute_capability() >= 80:
        cuda_device.load_kernels({g3.SPECS[0]: g3.SPECS[0].name_expressions})


def tol(K: int) -> float:
    return 3e-7 * np.sqrt(max(K, 1)) + 2e-6


def _cases(n):
    """n sparse (M, N, K, act) combinations: every size in every role, every activation,
    products kept small enough for a float64 reference on the host."""
    out = []
    for i in range(n):
        M = SIZES[i % len(SIZES)]
        N = SIZES[(3 * i + i // 7 + 1) % len(SIZES)]
        K = SIZES[(5 * i + 2 * (i // 7) + 2) % len(SIZES)]
        while M * N * K > 4e9:
            K = 129
            if M * N * K > 4e9:
                N = 127
        out.append((M, N, K, ACTIVATIONS[i % len(ACTIVATIONS)]))
    out += [(256, 384, 512, "relu"),        # interior tiles, whole k-tiles: the fast loop only
            (300, 260, 1000, "gelu"),       # interior and edge tiles, a partial last k-tile
            (129, 127, 4097, "silu"),       # a long reduction with a 1-element tail
            (17, 3, 4097, "tanh")]
    return out


CASES = _cases(21)


# ---------------------------------------------------------------- forward
def _fwd_err(Z, A, W, b):
    """Z against A @ W.T + b in float64, relative to max(|A| |W.T| + |b|)."""
    _, exact, scale = fwd_refs(A, W)
    bb = host(b).astype(np.float64)
    return scaled_err(Z, exact + bb, scale + np.abs(bb))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fwd(case):
    M, N, K, act = case
    rng = np.random.default_rng(seed("f" + case_id(case)))
    A, W, b = rand(rng, (M, K)), rand(rng, (N, K), 1 / np.sqrt(K)), rand(rng, (N,), 0.5)
    A_out, Z_out = poison((M, N)), poison((M, N))
    assert g3.gemm_fwd(A, W, b, ACT_CODES[act], A_out, Z_out) == g3.fwd_name(ACT_CODES[act])
    Z = written(Z_out, "Z_out")
    e = _fwd_err(Z, A, W, b)
    assert e <= tol(K), f"fwd Z: {e:.3g}"
    check_activation(A_out, Z, act)                        # g of the kernel's own Z
    A2 = poison((M, N))                                    # without Z_out: the same A_out, bit for bit
    g3.gemm_fwd(A, W, b, ACT_CODES[act], A2, None)
    assert same_bits(A2, A_out)


# ---------------------------------------------------------------- backward, data
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bwd_data(case):
    M, N, K, act = case
    rng = np.random.default_rng(seed("d" + case_id(case)))
    delta, W, A_prev, Z_prev, gprime = bwd_data_operands(rng, act, M, N, K)
    out = poison((M, K))
    g3.gemm_bwd_data(delta, W, A_prev, Z_prev if act in NEEDS_Z else None, ACT_CODES[act], out)
    _, exact, scale = bwd_data_refs(delta, W, gprime)
    e = scaled_err(written(out, "delta_prev"), exact, scale)
    assert e <= tol(N) + 1e-6, f"bwd_data {act}: {e:.3g}"


# ---------------------------------------------------------------- backward, weights
WCASES = [(M, N, K) for (M, N, K, _) in CASES[:14]] + [
    (4097, 3, 5), (4097, 64, 64), (1000, 129, 127), (4097, 129, 127), (1, 129, 129), (20000, 17, 1),
    (16384 + 3, 256, 256), (4096, 256, 384)]


def _bwd_weight_errs(dW, db, delta, A):
    """dW against delta.T @ A and db against delta.sum(0), in float64, each relative to the
    largest sum of magnitudes."""
    d = host(delta)
    _, exact, scale = refs(d.T.copy(), host(A))
    d64 = d.astype(np.float64)
    return (scaled_err(written(dW, "dW"), exact, scale),
            scaled_err(written(db, "db"), d64.sum(0), np.abs(d64).sum(0)))


@pytest.mark.parametrize("with_scratch", [True, False])
@pytest.mark.parametrize("case", WCASES, ids=lambda c: "M{}-N{}-K{}".format(*c))
def test_bwd_weight(case, with_scratch):
    M, N, K = case
    rng = np.random.default_rng(M * 1000003 + N * 1009 + K)
    delta, A = rand(rng, (M, N)), rand(rng, (M, K))
    size = g3.bwd_weight_scratch_size(M, N, K)
    scratch = cupy.full(size, np.nan, dtype=np.float32) if (size and with_scratch) else None
    dW, db = poison((N, K)), poison((N,))
    g3.gemm_bwd_weight(delta, A, dW, db, scratch=scratch)
    e_dW, e_db = _bwd_weight_errs(dW, db, delta, A)
    assert e_dW <= tol(M), f"dW: {e_dW:.3g}"
    assert e_db <= tol(M), f"db: {e_db:.3g}"


def test_bwd_weight_scratch_is_used_and_a_short_one_refused():
    M, N, K = 65536, 64, 64   # few tiles, many rows: splits
    size = g3.bwd_weight_scratch_size(M, N, K)
    assert size > 0
    delta, A = device_operands(3, (M, N), (M, K))
    dW, db = poison((N, K)), poison((N,))
    with pytest.raises(ValueError, match="scratch"):
        g3.gemm_bwd_weight(delta, A, dW, db, scratch=cupy.empty(10, np.float32))
    assert bool(cupy.isnan(dW).all()) and bool(cupy.isnan(db).all()), "nothing may change on bad input"
    scratch = cupy.full(size, np.nan, dtype=np.float32)
    g3.gemm_bwd_weight(delta, A, dW, db, scratch=scratch)
    assert bool(cupy.isfinite(scratch[:N * K]).all()), "the splits were not written to scratch"
    one, db1 = poison((N, K)), poison((N,))
    g3.gemm_bwd_weight(delta, A, one, db1)   # one split
    ref = delta.astype(np.float64).T @ A.astype(np.float64)
    scale = float((cupy.abs(delta.astype(np.float64)).T @ cupy.abs(A.astype(np.float64))).max())
    for x in (dW, one):
        assert float(cupy.abs(x - ref).max()) / scale <= tol(M)


# ---------------------------------------------------------------- misaligned views
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_offset_views(offset):
    """Operands and outputs at element offsets into flat buffers: N, K multiples of 4, so the
    offset alone decides between the 16-byte paths (fast loop, masked chunks) and 4-byte copies."""
    M, N, K = 300, 132, 136
    rng = np.random.default_rng(offset)

    def view(shape, scale=1.0, poison=False):
        return offset_view(rng, offset, shape, scale, poison)

    A, W, b = view((M, K)), view((N, K), 1 / np.sqrt(K)), view((N,))
    A_out, Z_out = view((M, N), poison=True), view((M, N), poison=True)
    g3.gemm_fwd(A, W, b, ACT_CODES["gelu"], A_out, Z_out)
    assert _fwd_err(written(Z_out, "Z_out"), A, W, b) <= tol(K)
    written(A_out, "A_out")

    delta, dprev = view((M, N)), view((M, K), poison=True)
    g3.gemm_bwd_data(delta, W, None, None, ACT_CODES["identity"], dprev)
    _, exact, scale = refs(host(delta), host(W))
    assert scaled_err(written(dprev, "delta_prev"), exact, scale) <= tol(N)

    dW, db = view((N, K), poison=True), view((N,), poison=True)
    g3.gemm_bwd_weight(delta, A, dW, db)
    e_dW, e_db = _bwd_weight_errs(dW, db, delta, A)
    assert e_dW <= tol(M)
    assert e_db <= tol(M)


# ---------------------------------------------------------------- reproducibility, and v1
def test_bitwise_reproducible_and_weight_gradient_split_invariant_bits():
    M, N, K = 70001, 300, 200
    A, W, b, delta = device_operands(1234, (M, K), (N, K), (N,), (M, N))
    size = g3.bwd_weight_scratch_size(M, N, K)
    assert size > 0   # the split-K path is what is checked
    runs = []
    for _ in range(2):
        scratch = cupy.full(size, np.nan, dtype=np.float32)   # a fresh workspace each run
        A_out, Z_out, dprev = poison((M, N)), poison((M, N)), poison((M, K))
        dW, db = poison((N, K)), poison((N,))
        g3.gemm_fwd(A, W, b, ACT_CODES["silu"], A_out, Z_out)
        g3.gemm_bwd_data(delta, W, None, A, ACT_CODES["gelu"], dprev)
        g3.gemm_bwd_weight(delta, A, dW, db, scratch=scratch)
        runs.append((A_out, Z_out, dprev, dW, db))
    for x, y in zip(*runs):
        assert bool(cupy.isfinite(x).all())
        assert same_bits(x, y), "two runs differ in bits"


def test_agrees_with_v1_at_4096():
    """One large shape (every tile interior, the fast loop) against float64 and gemm.cu's v1."""
    n = 4096
    A, W = device_operands(7, (n, n), (n, n))
    out, v1 = poison((n, n)), poison((n, n))
    zero = cupy.zeros(n, np.float32)
    g3.gemm_fwd(A, W, zero, ACT_CODES["identity"], out)
    cuda_gemm.gemm_fwd(A, W, zero, ACT_CODES["identity"], v1, tile="large")
    e, e1 = device_fwd_err(out, A, W), device_fwd_err(v1, A, W)
    assert bool(cupy.isfinite(out).all()) and e <= tol(n), f"fwd {e:.3g}"
    assert e <= 2 * e1 + 1e-7, f"gemm_f32 {e:.3g} against v1 {e1:.3g}"
