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
"""

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
from gpubp.backends.plan import Scratch  # noqa: E402
from support.gemm_checks import (bwd_data_operands, bwd_data_refs, case_id, check_activation, check_gemm,  # noqa: E402
                                 device_fwd_err, device_operands, fwd_refs, host, offset_buffer, poison,
                                 rand, same_bits, scaled_err, seed, sparse_cases, written)


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
#: the sparse cases, a long reduction (129 k-tiles through 4 stages), W rows past one BN = 256 tile
CASES = sparse_cases(21) + [(17, 3, 4097, "relu"), (129, 300, 4097, "gelu"), (1000, 513, 65, "silu")]


def _plan_scratch():
    """A plan's `Scratch` over CuPy allocations (what the backend gives the launchers)."""
    return Scratch(type("B", (), {"empty": staticmethod(lambda s, d: cupy.empty(s, d))})())


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fwd(case, mode):
    """Both block widths (the references are computed once for both)."""
    M, N, K, act = case
    rng = np.random.default_rng(seed("w" + case_id(case)))
    A, W, b = rand(rng, (M, K)), rand(rng, (N, K), 1 / np.sqrt(K)), rand(rng, (N,), 0.5)
    emul, exact, scale = fwd_refs(A, W, mode)
    for bn in wg.BNS:
        A_out, Z_out = poison((M, N)), poison((M, N))
        wg.gemm_fwd(A, W, b, ACT_CODES[act], A_out, Z_out, precision=mode, bn=bn)
        Zk = written(Z_out, f"Z_out bn {bn}")
        check_gemm(Zk - host(b).astype(np.float64), emul, exact, scale, mode, f"fwd bn {bn}", EMUL_TOL)
        check_activation(A_out, Zk, act, f" bn {bn}")
        A2 = poison((M, N))
        wg.gemm_fwd(A, W, b, ACT_CODES[act], A2, None, precision=mode, bn=bn)
        assert same_bits(A2, A_out), "A_out differs without Z_out"


# ---------------------------------------------------------------- backward, data
EMUL_TOL_GPRIME = 5e-6


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bwd_data(case, mode):
    M, N, K, act = case
    rng = np.random.default_rng(seed("d" + case_id(case)))
    delta, W, A_prev, Z_prev, gprime = bwd_data_operands(rng, act, M, N, K)
    emul, exact, scale = bwd_data_refs(delta, W, gprime, mode)
    for bn in wg.BNS:
        out = poison((M, K))
        wg.gemm_bwd_data(delta, W, A_prev, Z_prev if act in NEEDS_Z else None, ACT_CODES[act], out,
                         precision=mode, bn=bn)
        check_gemm(written(out, f"delta_prev bn {bn}"), emul, exact, scale, mode, f"bwd_data bn {bn}",
                   EMUL_TOL_GPRIME)


@pytest.mark.parametrize("mode", MODES)
def test_bwd_data_agrees_with_gemm_tc_and_repeats_bitwise(mode):
    rng = np.random.default_rng(9)
    M, N, K = 3000, 1000, 513
    delta, W, Z = rand(rng, (M, N)), rand(rng, (N, K), 1 / np.sqrt(N)), rand(rng, (M, K))
    a, b2, ref = poison((M, K)), poison((M, K)), poison((M, K))
    wg.gemm_bwd_data(delta, W, None, Z, ACT_CODES["silu"], a, precision=mode)
    wg.gemm_bwd_data(delta, W, None, Z, ACT_CODES["silu"], b2, precision=mode)
    tc.gemm_bwd_data(delta, W, None, Z, ACT_CODES["silu"], ref, precision=mode)
    assert same_bits(a, b2), "two runs differ in bits"
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
    _, _, scale = fwd_refs(A, W, mode)
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
    emul, _, scale = fwd_refs(A, W, mode)
    assert scaled_err(written(Z_out, "Z_out") - host(b), emul, scale) <= EMUL_TOL
    written(A_out, "A_out")
    rest = host(zflat)
    assert np.isnan(rest[:offset]).all() and np.isnan(rest[offset + M * N:]).all(), "wrote past the output"


def test_operand_copies_round_like_the_emulation():
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.standard_normal(50000).astype(np.float32),
                        rng.integers(0, 2 ** 32, 50000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = x[np.isfinite(x)][:99990].reshape(-1, 30)   # 30 columns: padded rows of 32
    xd = cupy.asarray(x)
    t = host(wg._copy(xd, "tf32", "A", None))
    assert t.shape == (x.shape[0], 32)
    assert np.array_equal(t[:, :30].view(np.uint32), P.to_tf32(x).view(np.uint32))
    h = host(wg._copy(xd, "bf16", "A", None))
    assert h.dtype == np.uint16 and np.array_equal(h[:, :30], P.bf16_bits(x))


@pytest.mark.parametrize("mode", MODES)
def test_bitwise_reproducible_and_scratch_gives_the_same_bits(mode):
    M, N, K = 70001, 300, 200
    A, W, b = device_operands(1234, (M, K), (N, K), (N,))
    scratch = _plan_scratch()
    runs = []
    for s in (None, scratch, scratch):
        out = poison((M, N))
        wg.gemm_fwd(A, W, b, ACT_CODES["silu"], out, precision=mode, scratch=s)
        runs.append(out)
    for y in runs[1:]:
        assert same_bits(runs[0], y), "runs differ in bits"


@pytest.mark.parametrize("mode", MODES)
def test_graph_capture_replays_on_new_data(mode):
    rs = cupy.random.RandomState(3)
    M, N, K = 2048, 640, 300
    A = rs.standard_normal((M, K), dtype=np.float32)
    W = rs.standard_normal((N, K), dtype=np.float32)
    b = rs.standard_normal((N,), dtype=np.float32)
    out = poison((M, N))
    scratch = _plan_scratch()
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
    assert same_bits(out, ref), "replay differs from a direct call"


@pytest.mark.parametrize("mode", MODES)
def test_large(mode):
    M, N, K = 4096, 4096, 4096
    A, W = device_operands(7, (M, K), (N, K))
    out = poison((M, N))
    wg.gemm_fwd(A, W, cupy.zeros(N, np.float32), ACT_CODES["identity"], out, precision=mode)
    e = device_fwd_err(out, A, W)
    assert bool(cupy.isfinite(out).all()) and e <= P.TOLERANCE[mode], f"{e:.3g}"


@pytest.mark.parametrize("mode", MODES)
def test_training_step_with_the_hopper_forward(mode):
    """A step of CudaBackend(tensor_core_gemms=True, hopper=True) (forward and input-gradient GEMMs
    on wgmma) gives the loss and gradients of the gemm_tc-only backend to the mode's tolerance."""
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
