"""The Hopper forward GEMM of kernels/gemm_wgmma.cu (skipped without CUDA, or off compute capability 9.0).

`cuda_gemm_wgmma.gemm_fwd` (TMA-fed wgmma, "tf32" and "bf16", both block widths) against
  - gpubp.precision's emulation of the mode (same operand rounding, float32 sums per mma
    k step): at most EMUL_TOL relative to |A| |B| (summation-order noise only);
  - float64: at most precision.TOLERANCE[mode];
  - gemm_tc's mma.sync kernel of the same mode (the same rounding, another order): 2 EMUL_TOL.
Awkward sizes (1, 3, 17, 127, 129, 1000, 4097), every activation, outputs poisoned with NaN
(every element must be written, nothing past the edges may be), unaligned operand and output
views, the operand copies bit for bit against the emulation's rounding, bitwise
reproducibility, the input-gradient GEMM (`gemm_bwd_data`, on a transposed copy of W) the same
way, the plan-scratch path (memoised tensor maps) under CUDA-graph capture and
replay, and one training step of `CudaBackend(tensor_core_gemms=True, hopper=True)`.
The bf16 weight gradient (`gemm_bwd_weight`: MN-major operands, db from the copy of delta,
split over the batch with gemm_tc's ordered reduce) against the emulation and float64 at the
same cases (M is its reduction), on each of its paths (batch splits, column-sum slices, one
slice), bitwise reproducible, against gemm_tc's weight gradient, at unaligned views, under
graph capture, and at 4096^3.
"""

import zlib

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from gpubp.backends import cuda_available  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]

from gpubp import precision as P  # noqa: E402
from gpubp.activations import ACT_CODES, NEEDS_Z  # noqa: E402
from gpubp.backends import cubin_cache, cuda_device  # noqa: E402
from gpubp.backends import cuda_gemm_tc as tc  # noqa: E402
from gpubp.backends import cuda_gemm_wgmma as wg  # noqa: E402
from gpubp.backends.numpy_backend import activation_backward_inplace, activation_forward  # noqa: E402
from gpubp.backends.plan import Scratch  # noqa: E402
from support.gemm_checks import (bf16_stored, case_id, check_gemm, device_fwd_err, device_operands, host,  # noqa: E402
                                 offset_buffer, poison, rand, refs, same_bits, scaled_err, seed, sparse_cases,
                                 written)


def _plan_scratch():
    """A plan's `Scratch` over CuPy allocations (what the backend gives the launchers)."""
    return Scratch(type("B", (), {"empty": staticmethod(lambda s, d: cupy.empty(s, d))})())


@pytest.fixture(autouse=True)
def _needs_sm90():
    if cuda_device.compute_capability() != 90:
        pytest.skip("the wgmma kernels are built for sm_90a (H100, H200)")


@pytest.fixture(scope="module", autouse=True)
def _build_once():
    """The cubin (NVRTC, sm_90a) is built once, then read from the disk cache."""
    if cuda_device.compute_capability() == 90:
        cubin_cache.load(wg.SPECS[0])


MODES = tuple(wg.PREC_CODES)
EMUL_TOL = 3e-6
#: bf16 A_out: g(Z) is float32 arithmetic in both the kernel and the numpy reference, but in other
#: operation orders (activations.cuh's 0.5 z (1 + tanh(c (z + k z^3))) vs numpy_backend's) and with
#: other tanh/exp (CUDA's tanhf/expf are within 2 ulp, not numpy's): values an ulp or two apart,
#: which bfloat16 rounding makes equal except next to a rounding boundary, so a few elements are
#: the neighbouring bfloat16 (observed up to 0.035%; g from the unrounded Z, a real epilogue bug,
#: changes 15-30%)
A_FLIPS = 0.002


def _bf16_activation_stored(got, Z, act, what):
    """bf16 A_out against to_bf16(g(Z)) in float32 (Z: the stored Z), allowing A_FLIPS one-ulp
    flips.  Where g cancels (gelu's 1 + tanh, silu's sigmoid, for large negative z) g is tiny next
    to z, and two float32 implementations of it differ by ulps of z, not of g (-0.0 against
    -1.6e-07 at z = -5.2): there the values only need to agree to 2^-20 |z| (8 float32 ulps of z)."""
    want = P.to_bf16(activation_forward(act, Z, np.empty_like(Z)))
    got = np.asarray(got, np.float32)
    assert not (got.view(np.uint32) & np.uint32(0xFFFF)).any(), f"{what}: not bfloat16 values"
    near = np.abs(got.astype(np.float64) - want) <= 2.0 ** -20 * np.abs(Z)
    bf16_stored(np.where(near, want, got), want, what, flips=A_FLIPS)


CASES = sparse_cases(21) + [(17, 3, 4097, "relu"),      # a long reduction: 129 k-tiles through 4 stages
                             (129, 300, 4097, "gelu"),    # W rows past one BN = 256 tile
                             (1000, 513, 65, "silu")]


def _refs(A, W, mode):
    a, w = host(A), host(W)
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    return P.matmul(a, w.T.copy(), mode).astype(np.float64), a64 @ w64.T, np.abs(a64) @ np.abs(w64).T


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fwd(case, mode):
    """Both block widths (the references are computed once for both)."""
    M, N, K, act = case
    rng = np.random.default_rng(zlib.crc32(("w" + case_id(case)).encode()))
    A, W, b = rand(rng, (M, K)), rand(rng, (N, K), 1 / np.sqrt(K)), rand(rng, (N,), 0.5)
    emul, exact, scale = _refs(A, W, mode)
    for bn in wg.BNS:
        A_out, Z_out = poison((M, N)), poison((M, N))
        wg.gemm_fwd(A, W, b, ACT_CODES[act], A_out, Z_out, precision=mode, bn=bn)
        Zk = written(Z_out, f"Z_out bn {bn}")
        if mode == "bf16":   # Z and A stored rounded to bfloat16, A from the rounded Z
            Zk = Zk.astype(np.float32)
            bf16_stored(Zk, P.to_bf16(emul.astype(np.float32) + host(b)), f"Z_out bn {bn}")
            _bf16_activation_stored(written(A_out, "A_out"), Zk, act, f"A_out bn {bn}")
        else:
            Z = Zk - host(b).astype(np.float64)
            e_emul, e_exact = scaled_err(Z, emul, scale), scaled_err(Z, exact, scale)
            assert e_emul <= EMUL_TOL, f"{mode} bn {bn}: {e_emul:.3g} from the emulation"
            assert e_exact <= P.TOLERANCE[mode], f"{mode} bn {bn}: {e_exact:.3g} from float64"
            A_ref = activation_forward(act, Zk, np.empty_like(Zk))
            e = np.abs(written(A_out, "A_out") - A_ref).max() / max(1.0, np.abs(A_ref).max())
            assert e < 1e-5, f"activation epilogue {act} bn {bn}: {e:.3g}"
        A2 = poison((M, N))
        wg.gemm_fwd(A, W, b, ACT_CODES[act], A2, None, precision=mode, bn=bn)
        assert bool((A2.view(cupy.int32) == A_out.view(cupy.int32)).all()), "A_out differs without Z_out"


# ---------------------------------------------------------------- backward, data
EMUL_TOL_GPRIME = 5e-6


def _bf16_delta_stored(got, S, g32, Z, what):
    """bf16 delta_prev against to_bf16(S g') (S: the emulated product delta W, g' in float32 by
    numpy), one-ulp flips allowed as for Z.  Near a root of g' (gelu' at z = -0.75, silu' at
    z = -1.28) and in gelu's negative tail, g' is small next to its terms and two float32
    implementations of it (other tanh/exp: CUDA's tanhf/expf are within 2 ulp) differ by ulps of
    the terms, not of g' (-1.207e-06 against -1.222e-06 at z = -0.7525): there the values only
    need to agree to 2^-20 |S| max(1, |z|)."""
    want = P.to_bf16(S * g32)
    got = np.asarray(got, np.float32)
    assert not (got.view(np.uint32) & np.uint32(0xFFFF)).any(), f"{what}: not bfloat16 values"
    near = np.abs(got.astype(np.float64) - want) <= 2.0 ** -20 * np.abs(S) * np.maximum(1.0, np.abs(Z))
    bf16_stored(np.where(near, want, got), want, what)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bwd_data(case, mode):
    M, N, K, act = case
    rng = np.random.default_rng(zlib.crc32(("d" + case_id(case)).encode()))
    delta, W = rand(rng, (M, N)), rand(rng, (N, K), 1 / np.sqrt(N))
    Zp = rng.standard_normal((M, K)).astype(np.float32)
    Ap = activation_forward(act, Zp.astype(np.float64), np.empty((M, K))).astype(np.float32)
    Z_prev, A_prev = cupy.asarray(Zp), cupy.asarray(Ap)
    d, w = host(delta), host(W)
    d64, w64 = d.astype(np.float64), w.astype(np.float64)
    gprime = activation_backward_inplace(act, np.ones((M, K)), Ap.astype(np.float64), Zp.astype(np.float64))
    scale = (np.abs(d64) @ np.abs(w64)) * np.abs(gprime)
    emul = P.matmul(d, w, mode).astype(np.float64) * gprime
    exact = (d64 @ w64) * gprime
    for bn in wg.BNS:
        out = poison((M, K))
        wg.gemm_bwd_data(delta, W, A_prev, Z_prev if act in NEEDS_Z else None, ACT_CODES[act], out,
                         precision=mode, bn=bn)
        got = written(out, f"delta_prev bn {bn}")
        if mode == "bf16":   # the stored delta: (delta W) g' rounded once to bfloat16
            g32 = activation_backward_inplace(act, np.ones((M, K), np.float32), Ap, Zp)
            _bf16_delta_stored(got, P.matmul(d, w, mode), g32, Zp, f"delta_prev bn {bn}")
            continue
        e_emul, e_exact = scaled_err(got, emul, scale), scaled_err(got, exact, scale)
        assert e_emul <= EMUL_TOL_GPRIME, f"{mode} bn {bn}: {e_emul:.3g} from the emulation"
        assert e_exact <= P.TOLERANCE[mode], f"{mode} bn {bn}: {e_exact:.3g} from float64"


@pytest.mark.parametrize("mode", MODES)
def test_bwd_data_agrees_with_gemm_tc_and_repeats_bitwise(mode):
    rng = np.random.default_rng(9)
    M, N, K = 3000, 1000, 513
    delta, W, Z = rand(rng, (M, N)), rand(rng, (N, K), 1 / np.sqrt(N)), rand(rng, (M, K))
    a, b2, ref = poison((M, K)), poison((M, K)), poison((M, K))
    wg.gemm_bwd_data(delta, W, None, Z, ACT_CODES["silu"], a, precision=mode)
    wg.gemm_bwd_data(delta, W, None, Z, ACT_CODES["silu"], b2, precision=mode)
    tc.gemm_bwd_data(delta, W, None, Z, ACT_CODES["silu"], ref, precision=mode)
    assert bool((a.view(cupy.int32) == b2.view(cupy.int32)).all()), "two runs differ in bits"
    if mode == "bf16":       # both store bfloat16: equal but for rounding-boundary flips
        bf16_stored(written(a, "wgmma"), written(ref, "gemm_tc"), f"{mode}: wgmma vs mma.sync")
        return
    d64, w64 = host(delta).astype(np.float64), host(W).astype(np.float64)
    e = scaled_err(written(a, "wgmma"), written(ref, "gemm_tc"), np.abs(d64) @ np.abs(w64))
    assert e <= 2 * EMUL_TOL_GPRIME, f"{mode}: wgmma and mma.sync differ by {e:.3g}"


def test_transposed_copies_round_like_the_emulation():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((70, 45)).astype(np.float32)
    xd = cupy.asarray(x)
    t = host(wg._copy_t(xd, "tf32", "W", None))
    assert t.shape == (45, 72)
    assert np.array_equal(t[:, :70].view(np.uint32), P.to_tf32(x).T.view(np.uint32))
    h = host(wg._copy_t(xd, "bf16", "W", None))
    assert h.dtype == np.uint16 and np.array_equal(h[:, :70], P.bf16_bits(x).T)


@pytest.mark.parametrize("mode", MODES)
def test_agrees_with_gemm_tc(mode):
    rng = np.random.default_rng(5)
    M, N, K = 1000, 513, 777
    A, W, b = rand(rng, (M, K)), rand(rng, (N, K), 1 / np.sqrt(K)), rand(rng, (N,))
    z_wg, z_tc = poison((M, N)), poison((M, N))
    wg.gemm_fwd(A, W, b, ACT_CODES["identity"], z_wg, precision=mode)
    tc.gemm_fwd(A, W, b, ACT_CODES["identity"], z_tc, precision=mode)
    if mode == "bf16":       # both store bfloat16: equal but for rounding-boundary flips
        bf16_stored(written(z_wg, "wgmma"), written(z_tc, "gemm_tc"), f"{mode}: wgmma vs mma.sync")
        return
    _, _, scale = _refs(A, W, mode)
    e = scaled_err(written(z_wg, "wgmma"), written(z_tc, "gemm_tc"), scale)
    assert e <= 2 * EMUL_TOL, f"{mode}: wgmma and mma.sync differ by {e:.3g}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("offset", [1, 3])
def test_unaligned_views(mode, offset):
    """Operands anywhere (the copies re-align them for TMA), outputs at odd offsets (scalar stores)."""
    rng = np.random.default_rng(offset)
    M, N, K = 300, 132, 136

    def view(shape, scale=1.0, poison=False):
        return offset_buffer(rng, offset, shape, scale, poison)

    (A, _), (W, _), (b, _) = view((M, K)), view((N, K), 1 / np.sqrt(K)), view((N,))
    (Z_out, zflat), (A_out, _) = view((M, N), poison=True), view((M, N), poison=True)
    wg.gemm_fwd(A, W, b, ACT_CODES["tanh"], A_out, Z_out, precision=mode)
    emul, _, scale = _refs(A, W, mode)
    if mode == "bf16":
        bf16_stored(written(Z_out, "Z_out"), P.to_bf16(emul.astype(np.float32) + host(b)), "Z_out")
    else:
        assert scaled_err(written(Z_out, "Z_out") - host(b), emul, scale) <= EMUL_TOL
    written(A_out, "A_out")
    rest = host(zflat)
    assert np.isnan(rest[:offset]).all() and np.isnan(rest[offset + M * N:]).all(), "wrote past the output"


def test_operand_copies_round_like_the_emulation():
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_normal(50000).astype(np.float32),
                        rng.integers(0, 2 ** 32, 50000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = x[np.isfinite(x)]
    x = x[:x.size // 30 * 30].reshape(-1, 30)       # 30 columns: padded rows of 32
    xd = cupy.asarray(x)
    t = host(wg._copy(xd, "tf32", "A", None))
    assert t.shape == (x.shape[0], 32)
    assert np.array_equal(t[:, :30].view(np.uint32), P.to_tf32(x).view(np.uint32))
    h = host(wg._copy(xd, "bf16", "A", None))
    assert h.dtype == np.uint16 and np.array_equal(h[:, :30], P.bf16_bits(x))


@pytest.mark.parametrize("mode", MODES)
def test_bitwise_reproducible_and_scratch_gives_the_same_bits(mode):
    rs = cupy.random.RandomState(1234)
    M, N, K = 70001, 300, 200
    A = rs.standard_normal((M, K), dtype=np.float32)
    W = rs.standard_normal((N, K), dtype=np.float32)
    b = rs.standard_normal((N,), dtype=np.float32)
    scratch = Scratch(type("B", (), {"empty": staticmethod(lambda s, d: cupy.empty(s, d))})())
    runs = []
    for s in (None, scratch, scratch):
        out = poison((M, N))
        wg.gemm_fwd(A, W, b, ACT_CODES["silu"], out, precision=mode, scratch=s)
        runs.append(out)
    for y in runs[1:]:
        assert bool((runs[0].view(cupy.int32) == y.view(cupy.int32)).all()), "runs differ in bits"


@pytest.mark.parametrize("mode", MODES)
def test_graph_capture_replays_on_new_data(mode):
    rs = cupy.random.RandomState(3)
    M, N, K = 2048, 640, 300
    A = rs.standard_normal((M, K), dtype=np.float32)
    W = rs.standard_normal((N, K), dtype=np.float32)
    b = rs.standard_normal((N,), dtype=np.float32)
    out = poison((M, N))
    scratch = Scratch(type("B", (), {"empty": staticmethod(lambda s, d: cupy.empty(s, d))})())
    wg.gemm_fwd(A, W, b, ACT_CODES["relu"], out, precision=mode, scratch=scratch)    # buffers, maps
    cupy.cuda.get_current_stream().synchronize()
    stream = cupy.cuda.Stream(non_blocking=True)     # the legacy default stream cannot be captured
    with stream:
        stream.begin_capture()
        wg.gemm_fwd(A, W, b, ACT_CODES["relu"], out, precision=mode, scratch=scratch)
        graph = stream.end_capture()
    A[...] = rs.standard_normal((M, K), dtype=np.float32)
    W *= 0.5
    out.fill(np.nan)
    graph.launch(cupy.cuda.get_current_stream())   # after the new data, as the backend replays a step
    cupy.cuda.get_current_stream().synchronize()
    ref = poison((M, N))
    wg.gemm_fwd(A, W, b, ACT_CODES["relu"], ref, precision=mode)
    assert bool((out.view(cupy.int32) == ref.view(cupy.int32)).all()), "replay differs from a direct call"


@pytest.mark.parametrize("mode", MODES)
def test_large(mode):
    rs = cupy.random.RandomState(7)
    M, N, K = 4096, 4096, 4096
    A = rs.standard_normal((M, K), dtype=np.float32)
    W = rs.standard_normal((N, K), dtype=np.float32)
    A64, W64 = A.astype(np.float64), W.astype(np.float64)
    scale = float((cupy.abs(A64) @ cupy.abs(W64).T).max())
    out = poison((M, N))
    wg.gemm_fwd(A, W, cupy.zeros(N, np.float32), ACT_CODES["identity"], out, precision=mode)
    e = float(cupy.abs(out - A64 @ W64.T).max()) / scale
    assert bool(cupy.isfinite(out).all()) and e <= P.TOLERANCE[mode], f"{e:.3g}"


@pytest.mark.parametrize("mode", MODES)
def test_training_step_with_the_hopper_forward(mode):
    """A step of CudaBackend(tensor_core_gemms=True, hopper=True) (forward and input-gradient GEMMs
    on wgmma, and in bf16 the weight gradient too) gives the loss and gradients of the gemm_tc-only
    backend to the mode's tolerance."""
    import gpubp
    from gpubp.backends.cuda_backend import CudaBackend

    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 96)).astype(np.float32)
    Y = rng.standard_normal((512, 7)).astype(np.float32)
    grads = []
    for hopper in (False, True):
        net = gpubp.MLP([96, 300, 200, 7], activation="gelu", precision=mode, seed=0,
                        backend=CudaBackend(tensor_core_gemms=True, hopper=hopper))
        loss, g = net.loss_and_grads(X, Y)
        grads.append((loss, g))
    (l0, g0), (l1, g1) = grads
    l0, l1 = float(l0), float(l1)
    assert abs(l0 - l1) <= P.TOLERANCE[mode] * max(1.0, abs(l0))
    for (dW0, _), (dW1, _) in zip(g0, g1):
        dW0, dW1 = cupy.asnumpy(dW0), cupy.asnumpy(dW1)
        s = max(1e-6, float(np.abs(dW0).max()))
        # the same rounding, another summation order: far inside the mode's error against float64
        assert float(np.abs(dW0 - dW1).max()) / s <= P.TOLERANCE[mode]


# ---------------------------------------------------------------- backward, weights (bf16)
#: dW = delta^T A_prev sums the batch (M): the cases' M runs up to 4097 (65 k-tiles of 64 rows)
DB_TOL = 1e-5


def _check_wgrad(delta, A, dW, db, what, emul_tol=EMUL_TOL):
    """dW against the bf16 emulation and float64, db (float32 sums of the unrounded delta) against
    float64, both relative to the sums of magnitudes."""
    d = host(delta)
    check_gemm(written(dW, f"dW {what}"), *refs(d.T.copy(), host(A), "bf16"), "bf16", f"dW {what}", emul_tol)
    d64 = d.astype(np.float64)
    e = scaled_err(written(db, f"db {what}"), d64.sum(0), np.abs(d64).sum(0))
    assert e < DB_TOL, f"db {what}: {e:.3g}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bwd_weight(case):
    """Both block widths, without and with a plan scratch (the same path, the plan's buffers)."""
    M, N, K, _ = case
    rng = np.random.default_rng(seed("g" + case_id(case)))
    delta, A = rand(rng, (M, N)), rand(rng, (M, K))
    d, a = host(delta), host(A)
    emul, exact, scale = refs(d.T.copy(), a, "bf16")
    d64 = d.astype(np.float64)
    for bn in wg.BNS:
        for scratch in (None, _plan_scratch()):
            dW, db = poison((N, K)), poison((N,))
            wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch, bn=bn)
            check_gemm(written(dW, f"dW bn {bn}"), emul, exact, scale, "bf16", f"dW bn {bn}", EMUL_TOL)
            e = scaled_err(written(db, "db"), d64.sum(0), np.abs(d64).sum(0))
            assert e < DB_TOL, f"db bn {bn}: {e:.3g}"


@pytest.mark.parametrize("M, N, K, path", [(65536, 64, 64, "splits"), (1000, 17, 129, "splits"),
                                           (300, 1100, 2000, "colsum slices"), (5, 40, 30, "one slice")])
def test_bwd_weight_split_and_slice_paths(M, N, K, path):
    """The batch split (partials in the workspace, gemm_tc's ordered reduce of dW and db), the
    column sums over several slices with an unsplit GEMM, and one slice (db written directly)."""
    plan = wg.wgrad_plan(M, N, K, cuda_device.sm_count())
    taken = "splits" if plan["S"] > 1 else ("colsum slices" if plan["Sc"] > 1 else "one slice")
    if taken != path:
        pytest.skip(f"this device's SM count takes the {taken} path for {M} x {N} x {K}")
    delta, A = device_operands(M + N + K, (M, N), (M, K))
    dW, db = poison((N, K)), poison((N,))
    scratch = _plan_scratch()
    wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)
    if M * N * K <= 3e8:
        _check_wgrad(delta, A, dW, db, path)
    else:
        d64, a64 = delta.astype(np.float64), A.astype(np.float64)
        e = float(cupy.abs(dW - d64.T @ a64).max()) / float((cupy.abs(d64).T @ cupy.abs(a64)).max())
        assert bool(cupy.isfinite(dW).all()) and e <= P.TOLERANCE["bf16"], f"{path}: {e:.3g}"
        e = float(cupy.abs(db - d64.sum(0)).max()) / float(cupy.abs(d64).sum(0).max())
        assert bool(cupy.isfinite(db).all()) and e < DB_TOL, f"db {path}: {e:.3g}"
    # the copy the GEMM read: delta rounded to bf16 bit for bit as the emulation rounds
    copy = scratch.get(("wgmma_copy", "wgrad_D"), (M, wg.padded_cols(N)), np.uint16)
    assert np.array_equal(host(copy)[:, :N], P.bf16_bits(host(delta)))


def test_bwd_weight_agrees_with_gemm_tc_and_repeats_bitwise():
    rng = np.random.default_rng(13)
    M, N, K = 3000, 513, 1000
    delta, A = rand(rng, (M, N)), rand(rng, (M, K))
    scratch = _plan_scratch()
    runs = []
    for s in (None, scratch, scratch):
        dW, db = poison((N, K)), poison((N,))
        wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=s)
        runs.append((dW, db))
    for dW, db in runs[1:]:
        assert same_bits(dW, runs[0][0]) and same_bits(db, runs[0][1]), "runs differ in bits"
    ref_dW, ref_db = poison((N, K)), poison((N,))
    size = tc.bwd_weight_scratch_size(M, N, K)
    tc.gemm_bwd_weight(delta, A, ref_dW, ref_db, precision="bf16",
                       scratch=cupy.empty(size, np.float32) if size else None)
    d64, a64 = host(delta).astype(np.float64), host(A).astype(np.float64)
    e = scaled_err(written(runs[0][0], "wgmma dW"), written(ref_dW, "gemm_tc dW"), np.abs(d64).T @ np.abs(a64))
    assert e <= 2 * EMUL_TOL, f"dW: wgmma and mma.sync differ by {e:.3g}"
    e = scaled_err(written(runs[0][1], "wgmma db"), written(ref_db, "gemm_tc db"), np.abs(d64).sum(0))
    assert e <= 2 * DB_TOL, f"db: wgmma and mma.sync differ by {e:.3g}"


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (127, 17, 129), (1000, 300, 513), (4097, 10, 33)])
@pytest.mark.parametrize("with_scratch", [False, True])
def test_bwd_data_on_the_weight_gradients_copy_of_delta_gives_the_same_bits(M, N, K, with_scratch):
    """The backward step's path (CudaBackend.dense_backward, bf16 on Hopper): the input gradient
    reads the copy of delta the weight gradient made; the same bits as copying delta itself, and
    the copy bit for bit the emulation's bfloat16 rounding."""
    rng = np.random.default_rng(17)
    delta, A, W, Z = rand(rng, (M, N)), rand(rng, (M, K)), rand(rng, (N, K), 1 / np.sqrt(N)), rand(rng, (M, K))
    scratch = _plan_scratch() if with_scratch else None
    dW, db = poison((N, K)), poison((N,))
    d_copy = wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)
    assert np.array_equal(host(d_copy)[:, :N], P.bf16_bits(host(delta))), "the copy is not delta in bf16"
    shared, own = poison((M, K)), poison((M, K))
    wg.gemm_bwd_data(delta, W, None, Z, ACT_CODES["gelu"], shared, precision="bf16", scratch=scratch,
                     delta_copy=d_copy)
    wg.gemm_bwd_data(delta, W, None, Z, ACT_CODES["gelu"], own, precision="bf16")
    written(shared, "on the shared copy"), written(own, "on its own copy")
    assert same_bits(shared, own), "the shared copy of delta gives other bits"


@pytest.mark.parametrize("offset", [1, 3])
def test_bwd_weight_unaligned_views(offset):
    """Operands anywhere (the copies re-align them for TMA), dW and db at odd offsets (scalar stores)."""
    rng = np.random.default_rng(20 + offset)
    M, N, K = 700, 132, 136
    (delta, _), (A, _) = offset_buffer(rng, offset, (M, N)), offset_buffer(rng, offset, (M, K))
    (dW, flat), (db, _) = offset_buffer(rng, offset, (N, K), poison=True), offset_buffer(rng, offset, N, poison=True)
    wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16")
    _check_wgrad(delta, A, dW, db, f"offset {offset}")
    rest = host(flat)
    assert np.isnan(rest[:offset]).all() and np.isnan(rest[offset + N * K:]).all(), "wrote past dW"


def test_bwd_weight_graph_capture_replays_on_new_data():
    rs = cupy.random.RandomState(4)
    M, N, K = 2048, 40, 300            # few tiles: the split path and its reduce are captured too
    delta = rs.standard_normal((M, N), dtype=np.float32)
    A = rs.standard_normal((M, K), dtype=np.float32)
    dW, db = poison((N, K)), poison((N,))
    scratch = _plan_scratch()
    wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)     # buffers, maps
    cupy.cuda.get_current_stream().synchronize()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16", scratch=scratch)
        graph = stream.end_capture()
    delta[...] = rs.standard_normal((M, N), dtype=np.float32)
    A *= 0.5
    dW.fill(np.nan)
    db.fill(np.nan)
    graph.launch(cupy.cuda.get_current_stream())
    cupy.cuda.get_current_stream().synchronize()
    ref_dW, ref_db = poison((N, K)), poison((N,))
    wg.gemm_bwd_weight(delta, A, ref_dW, ref_db, precision="bf16")
    assert same_bits(dW, ref_dW) and same_bits(db, ref_db), "replay differs from a direct call"


def test_bwd_weight_large():
    M, N, K = 4096, 4096, 4096
    delta, A = device_operands(8, (M, N), (M, K))
    dW, db = poison((N, K)), poison((N,))
    wg.gemm_bwd_weight(delta, A, dW, db, precision="bf16")
    e = device_fwd_err(dW, delta.T.copy(), A.T.copy())    # dW = delta^T (A^T)^T
    assert bool(cupy.isfinite(dW).all()) and e <= P.TOLERANCE["bf16"], f"{e:.3g}"
    d64 = delta.astype(np.float64)
    e = float(cupy.abs(db - d64.sum(0)).max()) / float(cupy.abs(d64).sum(0).max())
    assert e < DB_TOL, f"db: {e:.3g}"
