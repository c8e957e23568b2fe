"""The GEMM kernels of kernels/gemm.cu against numpy in float64 (skipped without CUDA).

Awkward sizes (1, primes, tile +- 1), every activation, both dtypes, vector and
scalar load paths (aligned and misaligned views), outputs poisoned with NaN
before each call so that every element must be written, bitwise
reproducibility of the split-K weight gradient, and one 4096^3 shape.
Every correctness case runs under each tile configuration (cuda_gemm.TILES): v1
"large" and "small", and "pipelined" (the large tile, with the cp.async-pipelined
float32 weight gradient where its operands allow; double and misaligned float
operands fall back to v1's large tile, see cuda_gemm._use_pipelined).
"""

import itertools
import zlib

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from gpubp.backends import cuda_available  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]

from gpubp.activations import ACT_CODES, ACTIVATIONS, NEEDS_Z  # noqa: E402
from gpubp.backends import cuda_device, cuda_gemm  # noqa: E402
from gpubp.backends.numpy_backend import activation_backward_inplace, activation_forward  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-12}
MS = (1, 3, 17, 127, 129, 1000, 4097)
NKS = (1, 3, 17, 64, 127, 129, 257)


def rel_err(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def _cases(n):
    """n sparse (M, N, K, act, dtype) combinations covering every M, N, K, activation and dtype."""
    out = []
    for i in range(n):
        out.append((MS[i % len(MS)], NKS[(3 * i + 1) % len(NKS)], NKS[(5 * i + 2) % len(NKS)],
                    ACTIVATIONS[i % len(ACTIVATIONS)], (np.float32, np.float64)[(i // 7) % 2]))
    return out


CASES = _cases(28)


def _id(c):
    M, N, K, act, dt = c
    return f"M{M}-N{N}-K{K}-{act}-{np.dtype(dt).name}"


def _seed(text):
    return zlib.crc32(text.encode())


TILES = list(cuda_gemm.TILES)


@pytest.fixture(params=TILES)
def tile(request):
    """Run under each tile configuration, whatever the size would pick (passed as `tile=`)."""
    return request.param


def _rand(rng, shape, dtype, scale=1.0):
    return cupy.asarray((rng.standard_normal(shape) * scale).astype(dtype))


def _poison(shape, dtype):
    return cupy.full(shape, np.nan, dtype=dtype)


def _check(out, ref, dtype, what):
    host = cupy.asnumpy(out)
    assert np.isfinite(host).all(), f"{what}: {np.count_nonzero(~np.isfinite(host))} elements not written"
    e = rel_err(host, ref)
    assert e < TOL[dtype], f"{what}: relative error {e:.3g}"


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_fwd(case, tile):
    M, N, K, act, dt = case
    rng = np.random.default_rng(_seed(_id(case)))
    A = _rand(rng, (M, K), dt)
    W = _rand(rng, (N, K), dt, 1.0 / np.sqrt(K))
    b = _rand(rng, (N,), dt, 0.5)
    A_out = _poison((M, N), dt)
    Z_out = _poison((M, N), dt) if act in NEEDS_Z else None
    cuda_gemm.gemm_fwd(A, W, b, ACT_CODES[act], A_out, Z_out, tile=tile)
    Z = cupy.asnumpy(A).astype(np.float64) @ cupy.asnumpy(W).astype(np.float64).T \
        + cupy.asnumpy(b).astype(np.float64)
    _check(A_out, activation_forward(act, Z, np.empty_like(Z)), dt, "A_out")
    if Z_out is not None:
        _check(Z_out, Z, dt, "Z_out")


# ---------------------------------------------------------------- backward, data
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bwd_data(case, tile):
    M, N, K, act, dt = case
    rng = np.random.default_rng(_seed("bd" + _id(case)))
    delta = _rand(rng, (M, N), dt)
    W = _rand(rng, (N, K), dt, 1.0 / np.sqrt(N))
    Zp = rng.standard_normal((M, K))
    Ap = activation_forward(act, Zp, np.empty_like(Zp))
    Z_prev = cupy.asarray(Zp.astype(dt))
    A_prev = cupy.asarray(Ap.astype(dt))
    out = _poison((M, K), dt)
    cuda_gemm.gemm_bwd_data(delta, W, A_prev, Z_prev if act in NEEDS_Z else None,
                            ACT_CODES[act], out, tile=tile)
    ref = cupy.asnumpy(delta).astype(np.float64) @ cupy.asnumpy(W).astype(np.float64)
    activation_backward_inplace(act, ref, cupy.asnumpy(A_prev).astype(np.float64),
                                cupy.asnumpy(Z_prev).astype(np.float64))
    _check(out, ref, dt, "delta_prev")


# ---------------------------------------------------------------- backward, weights
WCASES = [(M, N, K, dt) for (M, N, K, _, dt) in CASES[:14]] + [
    (4097, 3, 5, np.float32), (4097, 64, 64, np.float64), (1000, 257, 129, np.float32),
    (4097, 129, 127, np.float32), (1, 257, 257, np.float64), (20000, 17, 1, np.float32)]


@pytest.mark.parametrize("case", WCASES, ids=lambda c: f"M{c[0]}-N{c[1]}-K{c[2]}-{np.dtype(c[3]).name}")
def test_bwd_weight(case, tile):
    M, N, K, dt = case
    rng = np.random.default_rng(M * 1000003 + N * 1009 + K)
    delta = _rand(rng, (M, N), dt)
    A = _rand(rng, (M, K), dt)
    dW = _poison((N, K), dt)
    db = _poison((N,), dt)
    cuda_gemm.gemm_bwd_weight(delta, A, dW, db, tile=tile)
    d64, a64 = cupy.asnumpy(delta).astype(np.float64), cupy.asnumpy(A).astype(np.float64)
    _check(dW, d64.T @ a64, dt, "dW")
    _check(db, d64.sum(0), dt, "db")


# ---------------------------------------------------------------- misaligned / offset views
@pytest.mark.parametrize("offset", [0, 1, 2, 4])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_offset_views(offset, dt, tile):
    """Operands and outputs as views into flat buffers at element offsets (vector path
    only where aligned): N, K multiples of 4 so that the leading dimensions allow vectors."""
    M, N, K = 300, 132, 128
    rng = np.random.default_rng(offset)

    def view(shape, scale=1.0, poison=False):
        n = int(np.prod(shape))
        flat = cupy.full(n + 8, np.nan, dtype=dt)
        v = flat[offset:offset + n].reshape(shape)
        if not poison:
            v[...] = _rand(rng, shape, dt, scale)
        return v

    A, W, b = view((M, K)), view((N, K), 1 / np.sqrt(K)), view((N,))
    A_out, Z_out = view((M, N), poison=True), view((M, N), poison=True)
    cuda_gemm.gemm_fwd(A, W, b, ACT_CODES["gelu"], A_out, Z_out, tile=tile)
    Z = cupy.asnumpy(A).astype(np.float64) @ cupy.asnumpy(W).astype(np.float64).T + cupy.asnumpy(b)
    _check(Z_out, Z, dt, "Z_out")
    _check(A_out, activation_forward("gelu", Z, np.empty_like(Z)), dt, "A_out")

    delta = view((M, N))
    dprev = view((M, K), poison=True)
    A_prev = view((M, K))
    A_prev[...] = cupy.tanh(A_prev)
    cuda_gemm.gemm_bwd_data(delta, W, A_prev, None, ACT_CODES["tanh"], dprev, tile=tile)
    ref = cupy.asnumpy(delta).astype(np.float64) @ cupy.asnumpy(W).astype(np.float64)
    activation_backward_inplace("tanh", ref, cupy.asnumpy(A_prev).astype(np.float64))
    _check(dprev, ref, dt, "delta_prev")

    dW, db = view((N, K), poison=True), view((N,), poison=True)
    cuda_gemm.gemm_bwd_weight(delta, A_prev, dW, db, tile=tile)
    d64 = cupy.asnumpy(delta).astype(np.float64)
    _check(dW, d64.T @ cupy.asnumpy(A_prev).astype(np.float64), dt, "dW")
    _check(db, d64.sum(0), dt, "db")


# ---------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("force", [None, "large", "pipelined"])
@pytest.mark.parametrize("N,K", [(33, 64), (300, 200)])
def test_bwd_weight_bitwise_reproducible(N, K, force):
    M = (1 << 20) + 7
    rs = cupy.random.RandomState(1234)
    delta = rs.standard_normal((M, N), dtype=np.float32)
    A = rs.standard_normal((M, K), dtype=np.float32)
    outs = []
    for _ in range(2):
        dW = _poison((N, K), np.float32)
        db = _poison((N,), np.float32)
        cuda_gemm.gemm_bwd_weight(delta, A, dW, db, tile=force)
        outs.append((dW, db))
    for x, y in zip(*outs):
        assert bool((x.view(cupy.int32) == y.view(cupy.int32)).all()), "two runs differ in bits"
    ref_dW = delta.astype(np.float64).T @ A.astype(np.float64)
    ref_db = delta.astype(np.float64).sum(0)
    assert rel_err(cupy.asnumpy(outs[0][0]), cupy.asnumpy(ref_dW)) < 1e-5
    assert rel_err(cupy.asnumpy(outs[0][1]), cupy.asnumpy(ref_db)) < 1e-5


# ---------------------------------------------------------------- the pipelined tile is what runs
def test_pipelined_selected():
    """Aligned float32 operands run the pipelined weight gradient by default (not a silent fallback
    to v1); the forward and input gradient run v1's large tile; misaligned operands fall back."""
    if cuda_device.compute_capability() < 80:
        pytest.skip("the pipelined tile needs sm_80+")
    bk, st = cuda_gemm.PIPELINED
    rng = np.random.default_rng(5)
    M, N, K = 300, 132, 68
    A, W, b = _rand(rng, (M, K), np.float32), _rand(rng, (N, K), np.float32), _rand(rng, (N,), np.float32)
    out = _poison((M, N), np.float32)
    ran = cuda_gemm.gemm_fwd(A, W, b, ACT_CODES["relu"], out, tile="pipelined")
    assert ran == f"gemm_fwd<float, {ACT_CODES['relu']}, 4>"
    delta = _rand(rng, (M, N), np.float32)
    dprev = _poison((M, K), np.float32)
    ran = cuda_gemm.gemm_bwd_data(delta, W, None, None, ACT_CODES["identity"], dprev, tile="pipelined")
    assert ran.startswith("gemm_bwd_data<float")
    dW, db = _poison((N, K), np.float32), _poison((N,), np.float32)
    ran = cuda_gemm.gemm_bwd_weight(delta, A, dW, db, tile="pipelined")
    assert ran == f"gemm_bwd_weight_pipelined<{bk}, {st}>"
    d64 = cupy.asnumpy(delta).astype(np.float64)
    _check(dW, d64.T @ cupy.asnumpy(A).astype(np.float64), np.float32, "dW")
    _check(db, d64.sum(0), np.float32, "db")
    # K % 4 != 0: A cannot take 16-byte copies -> v1
    A3 = _rand(rng, (M, 67), np.float32)
    ran = cuda_gemm.gemm_bwd_weight(delta, A3, _poison((N, 67), np.float32), _poison((N,), np.float32),
                                    tile="pipelined")
    assert ran.startswith("gemm_bwd_weight<float")
    # large enough for the large tile without forcing: the default picks the pipelined tile
    M, N, K = 4096, 256, 256
    delta, A = _rand(rng, (M, N), np.float32), _rand(rng, (M, K), np.float32)
    ran = cuda_gemm.gemm_bwd_weight(delta, A, _poison((N, K), np.float32), _poison((N,), np.float32))
    assert ran == f"gemm_bwd_weight_pipelined<{bk}, {st}>"
    assert ran in cuda_gemm.kernel_names(np.float32, M, N, K, ACT_CODES["relu"])


# ---------------------------------------------------------------- one large shape
@pytest.mark.parametrize("force", ["large", "pipelined"])
def test_large_4096_float32(force):
    n = 4096
    rs = cupy.random.RandomState(7)
    A = rs.standard_normal((n, n), dtype=np.float32)
    W = rs.standard_normal((n, n), dtype=np.float32) * np.float32(1 / 64)
    b = rs.standard_normal((n,), dtype=np.float32)
    A64, W64 = A.astype(np.float64), W.astype(np.float64)

    out = _poison((n, n), np.float32)
    cuda_gemm.gemm_fwd(A, W, b, ACT_CODES["identity"], out, tile=force)
    ref = A64 @ W64.T + b.astype(np.float64)
    e = float(cupy.linalg.norm(out.astype(np.float64) - ref) / cupy.linalg.norm(ref))
    assert bool(cupy.isfinite(out).all()) and e < 1e-5, f"fwd rel err {e:.3g}"

    out = _poison((n, n), np.float32)
    cuda_gemm.gemm_bwd_data(A, W, None, None, ACT_CODES["identity"], out, tile=force)
    ref = A64 @ W64
    e = float(cupy.linalg.norm(out.astype(np.float64) - ref) / cupy.linalg.norm(ref))
    assert bool(cupy.isfinite(out).all()) and e < 1e-5, f"bwd_data rel err {e:.3g}"

    dW, db = _poison((n, n), np.float32), _poison((n,), np.float32)
    cuda_gemm.gemm_bwd_weight(A, W, dW, db, tile=force)
    ref = A64.T @ W64
    e = float(cupy.linalg.norm(dW.astype(np.float64) - ref) / cupy.linalg.norm(ref))
    assert bool(cupy.isfinite(dW).all()) and e < 1e-5, f"dW rel err {e:.3g}"
    e = float(cupy.linalg.norm(db.astype(np.float64) - A64.sum(0)) / cupy.linalg.norm(A64.sum(0)))
    assert e < 1e-5, f"db rel err {e:.3g}"
    # speed is measured by benchmarks/gemm_tiles.py and `gpubp bench`, not here


def test_specs_cover_every_instantiation():
    names = set(cuda_gemm.SPECS[0].name_expressions)
    for ct, subs in (("float", (4, 2)), ("double", (2, 1))):
        for sub, act in itertools.product(subs, range(len(ACTIVATIONS))):
            assert f"gemm_fwd<{ct}, {act}, {sub}>" in names
            assert f"gemm_bwd_data<{ct}, {act}, {sub}>" in names
    bk, st = cuda_gemm.PIPELINED
    assert f"gemm_bwd_weight_pipelined<{bk}, {st}>" in names
