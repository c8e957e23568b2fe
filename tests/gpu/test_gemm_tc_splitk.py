"""Split-K of the tensor-core forward and input-gradient GEMMs (kernels/gemm_tc.cu, section 4;
skipped without CUDA, or below sm_80).

At shapes whose output has few 128 x 128 tiles (small batches) the launchers cut the reduction
into S slices (`fwd_splits`, `bwd_data_splits`), write float32 partials into the caller's
scratch and sum them in slice order in an epilogue kernel.  Checked here, in every mode, at
awkward sizes (1, 3, 17, 127, 129, 1000, 4097) and every activation:
  - the split really happens (S > 1 on this device) and the scratch is written;
  - against gpubp.precision's emulation (EMUL_TOL: float32 summation order only) and float64
    (precision.TOLERANCE[mode], relative to |A| |B|);
  - against the single-kernel path (scratch=None): both within 2 EMUL_TOL of each other;
  - outputs and scratch poisoned with NaN before each call (every element written);
  - bitwise reproducible from run to run (fixed slice order, no atomics);
  - the wide network's layer at batch 256 (4096 x 4096) against float64;
  - a whole step (outputs, loss, gradients) of a network that splits at batch 128, through
    `CudaBackend(tensor_core_gemms=True)` and its plan's scratch, against the numpy emulation.
"""

import zlib

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from gpubp.backends import cuda_available  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]

from gpubp import precision as P  # noqa: E402
from gpubp.activations import ACT_CODES, ACTIVATIONS, NEEDS_Z  # noqa: E402
from gpubp.backends import cuda_device  # noqa: E402
from gpubp.backends import cuda_gemm_tc as tc  # noqa: E402
from gpubp.backends.numpy_backend import activation_backward_inplace, activation_forward  # noqa: E402
from support.gemm_checks import (bf16_activation_stored, bf16_stored, case_id, host, offset_view, poison,  # noqa: E402
                                 rand, same_bits, written)


@pytest.fixture(autouse=True)
def _needs_sm80():
    if cuda_device.compute_capability() < 80:
        pytest.skip("tensor-core GEMMs need sm_80+")


@pytest.fixture(scope="module", autouse=True)
def _compile_all_at_once():
    if cuda_device.compute_capability() >= 80:
        cuda_device.load_kernels({tc.SPECS[0]: tc.SPECS[0].name_expressions})


MODES = tuple(tc.PREC_CODES)
#: kernel vs emulation, max |diff| / max(|A| |B|): float32 summation-order noise only
EMUL_TOL = 3e-6
EMUL_TOL_GPRIME = 5e-6

#: (P, Q, R): output P x Q, reduction R; every one splits on a device of 33 SMs or more
SHAPES = [(1, 3, 4097), (3, 17, 1000), (17, 129, 4097), (127, 1, 1000), (129, 127, 4097), (1000, 3, 1000),
          (4097, 1, 1000), (17, 1000, 4097)]
CASES = [(P_, Q, R, ACTIVATIONS[i % len(ACTIVATIONS)]) for i, (P_, Q, R) in enumerate(SHAPES)]


def _err(out, ref, scale):
    return float(np.max(np.abs(out - ref), initial=0.0)) / max(float(np.max(scale, initial=0.0)), 1e-30)


def _needs_split(split):
    if split[0] == 1:
        pytest.skip(f"no split of this shape on a device of {cuda_device.sm_count()} SMs")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fwd_split_k(case, mode):
    M, N, K, act = case
    _needs_split(tc.fwd_splits(M, N, K, cuda_device.sm_count()))
    rng = np.random.default_rng(zlib.crc32(("f" + case_id(case)).encode()))
    A, W, b = rand(rng, (M, K)), rand(rng, (N, K), 1 / np.sqrt(K)), rand(rng, (N,), 0.5)
    scratch = poison(tc.fwd_scratch_size(M, N, K))
    outs = []
    for _ in range(2):
        A_out, Z_out = poison((M, N)), poison((M, N))
        scratch[...] = np.nan
        tc.gemm_fwd(A, W, b, ACT_CODES[act], A_out, Z_out, precision=mode, scratch=scratch)
        outs.append((A_out, Z_out))
    assert bool(cupy.isfinite(scratch[:M * N]).all()), "slice 0's partials were not written to the scratch"
    (A_out, Z_out), (A2, Z2) = outs
    assert same_bits(A_out, A2) and same_bits(Z_out, Z2), "two runs differ in bits"
    a, w, bb = host(A).astype(np.float64), host(W).astype(np.float64), host(b).astype(np.float64)
    scale = np.abs(a) @ np.abs(w).T
    Z = written(Z_out, "Z_out")
    emul = P.matmul(host(A), host(W).T.copy(), mode)
    if mode == "bf16":       # Z and A stored rounded to bfloat16, A from the rounded Z
        bf16_stored(Z, P.to_bf16(emul + host(b)), "Z_out", atol=EMUL_TOL * scale.max())
        bf16_activation_stored(written(A_out, "A_out"), act, Z, "A_out")
    else:
        assert _err(Z - bb, emul.astype(np.float64), scale) <= EMUL_TOL
        assert _err(Z - bb, a @ w.T, scale) <= P.TOLERANCE[mode]
        A_ref = activation_forward(act, Z, np.empty_like(Z))
        assert np.abs(written(A_out, "A_out") - A_ref).max() / max(1.0, np.abs(A_ref).max()) < 1e-5
    # the single-kernel path: the same sums in another float32 order (bf16: and the same rounding)
    A1, Z1 = poison((M, N)), poison((M, N))
    tc.gemm_fwd(A, W, b, ACT_CODES[act], A1, Z1, precision=mode, scratch=None)
    if mode == "bf16":
        bf16_stored(written(Z1, "Z (one kernel)"), Z, "Z one kernel vs split", atol=2 * EMUL_TOL * scale.max())
    else:
        assert _err(Z, written(Z1, "Z (one kernel)"), scale) <= 2 * EMUL_TOL
    # without Z_out, the same A_out bit for bit
    A3 = poison((M, N))
    tc.gemm_fwd(A, W, b, ACT_CODES[act], A3, None, precision=mode, scratch=scratch)
    assert same_bits(A3, A_out)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bwd_data_split_k(case, mode):
    M, K, N, act = case            # output M x K, reduction over N
    _needs_split(tc.bwd_data_splits(M, N, K, cuda_device.sm_count()))
    rng = np.random.default_rng(zlib.crc32(("d" + case_id(case)).encode()))
    delta, W = rand(rng, (M, N)), rand(rng, (N, K), 1 / np.sqrt(N))
    Zp = rng.standard_normal((M, K)).astype(np.float32)
    Ap = activation_forward(act, Zp.astype(np.float64), np.empty((M, K))).astype(np.float32)
    Z_prev, A_prev = cupy.asarray(Zp), cupy.asarray(Ap)
    zarg = Z_prev if act in NEEDS_Z else None
    scratch = poison(tc.bwd_data_scratch_size(M, N, K))
    outs = []
    for _ in range(2):
        out = poison((M, K))
        scratch[...] = np.nan
        tc.gemm_bwd_data(delta, W, A_prev, zarg, ACT_CODES[act], out, precision=mode, scratch=scratch)
        outs.append(out)
    assert same_bits(*outs), "two runs differ in bits"
    d, w = host(delta).astype(np.float64), host(W).astype(np.float64)
    gprime = activation_backward_inplace(act, np.ones((M, K)), Ap.astype(np.float64), Zp.astype(np.float64))
    scale = (np.abs(d) @ np.abs(w)) * np.abs(gprime)
    got = written(outs[0], "delta_prev")
    one = poison((M, K))
    tc.gemm_bwd_data(delta, W, A_prev, zarg, ACT_CODES[act], one, precision=mode, scratch=None)
    if mode == "bf16":       # the stored delta: (delta W) g' rounded once to bfloat16
        g32 = activation_backward_inplace(act, np.ones((M, K), np.float32), Ap, Zp)
        bf16_stored(got, P.to_bf16(P.matmul(host(delta), host(W), mode) * g32), "delta_prev",
                    atol=EMUL_TOL_GPRIME * scale.max())
        bf16_stored(written(one, "delta_prev (one kernel)"), got, "delta_prev one kernel vs split",
                    atol=2 * EMUL_TOL_GPRIME * scale.max())
        return
    emul = P.matmul(host(delta), host(W), mode).astype(np.float64) * gprime
    assert _err(got, emul, scale) <= EMUL_TOL_GPRIME
    assert _err(got, (d @ w) * gprime, scale) <= P.TOLERANCE[mode]
    assert _err(got, written(one, "delta_prev (one kernel)"), scale) <= 2 * EMUL_TOL_GPRIME


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("offset", [1, 2])
def test_split_k_on_misaligned_views(mode, offset):
    """Operands, outputs and scratch at element offsets: the 4-byte copies, scalar partial stores
    and the scalar epilogue."""
    M, N, K = 129, 132, 1000
    rng = np.random.default_rng(offset)

    def view(shape, scale=1.0, poison=False):
        return offset_view(rng, offset, shape, scale, poison)

    _needs_split(tc.fwd_splits(M, N, K, cuda_device.sm_count()))
    A, W, b = view((M, K)), view((N, K), 1 / np.sqrt(K)), view((N,))
    A_out, Z_out = view((M, N), poison=True), view((M, N), poison=True)
    tc.gemm_fwd(A, W, b, ACT_CODES["gelu"], A_out, Z_out, precision=mode,
                scratch=view(tc.fwd_scratch_size(M, N, K), poison=True))
    a, w = host(A), host(W)
    scale = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    if mode == "bf16":       # stored rounded to bfloat16
        bf16_stored(written(Z_out, "Z_out"), P.to_bf16(P.matmul(a, w.T.copy(), mode) + host(b)), "Z_out",
                    atol=EMUL_TOL * scale.max())
    else:
        Z = written(Z_out, "Z_out") - host(b)
        assert _err(Z, P.matmul(a, w.T.copy(), mode).astype(np.float64), scale) <= EMUL_TOL
    written(A_out, "A_out")
    # the input gradient of a 1000-wide layer below a 129-wide one: reduction 129 is too short to
    # split, so take a reduction of 1000 (W 1000 x 132: output 129 x 132)
    delta, W2, dprev = view((M, K)), view((K, N), 1 / np.sqrt(K)), view((M, N), poison=True)
    _needs_split(tc.bwd_data_splits(M, K, N, cuda_device.sm_count()))
    tc.gemm_bwd_data(delta, W2, None, None, ACT_CODES["identity"], dprev, precision=mode,
                     scratch=view(tc.bwd_data_scratch_size(M, K, N), poison=True))
    dd, w2 = host(delta), host(W2)
    if mode == "bf16":
        bf16_stored(written(dprev, "delta_prev"), P.to_bf16(P.matmul(dd, w2, mode)), "delta_prev",
                    atol=EMUL_TOL * (np.abs(dd.astype(np.float64)) @ np.abs(w2.astype(np.float64))).max())
        return
    assert _err(written(dprev, "delta_prev"), P.matmul(dd, w2, mode).astype(np.float64),
                np.abs(dd.astype(np.float64)) @ np.abs(w2.astype(np.float64))) <= EMUL_TOL


@pytest.mark.parametrize("mode", MODES)
def test_wide_layer_at_batch_256(mode):
    """The wide network's hidden layer at batch 256 (split on an H100: 64 tiles, 4 slices), with
    and without the split, against float64 on the device; bitwise reproducible."""
    M, N, K = 256, 4096, 4096
    rs = cupy.random.RandomState(5)
    A = rs.standard_normal((M, K), dtype=np.float32)
    W = rs.standard_normal((N, K), dtype=np.float32) / np.float32(64)
    b = cupy.zeros(N, np.float32)
    delta = rs.standard_normal((M, N), dtype=np.float32)
    ref_f = A.astype(np.float64) @ W.astype(np.float64).T
    ref_d = delta.astype(np.float64) @ W.astype(np.float64)
    scale_f = float((cupy.abs(A.astype(np.float64)) @ cupy.abs(W.astype(np.float64)).T).max())
    scale_d = float((cupy.abs(delta.astype(np.float64)) @ cupy.abs(W.astype(np.float64))).max())
    ws = poison(max(1, tc.fwd_scratch_size(M, N, K), tc.bwd_data_scratch_size(M, N, K)))
    for scratch in (ws, None):
        runs = []
        for _ in range(2):
            out, dprev = poison((M, N)), poison((M, K))
            tc.gemm_fwd(A, W, b, ACT_CODES["identity"], out, precision=mode, scratch=scratch)
            tc.gemm_bwd_data(delta, W, None, None, ACT_CODES["identity"], dprev, precision=mode, scratch=scratch)
            runs.append((out, dprev))
        for x, y in zip(*runs):
            assert bool(cupy.isfinite(x).all()) and same_bits(x, y)
        out, dprev = runs[0]
        assert float(cupy.abs(out - ref_f).max()) / scale_f <= P.TOLERANCE[mode]
        assert float(cupy.abs(dprev - ref_d).max()) / scale_d <= P.TOLERANCE[mode]


#: CUDA step vs the numpy emulation of the same mode, relative to the largest value compared
#: (bf16: a stored value whose sum fell on the other side of a rounding boundary is one bf16 ulp away:
#: at most 2^-7 of it, under 8e-3; tf32: a float32 Z or A one ulp off the emulation's rounds to the
#: other TF32 neighbour (2^-11 away) in the next layer's GEMM: numpy models of correct tensor cores on
#: this network (the exact sum of the products, products added one by one in float32, the emulation
#: in 4 split-K slices) lie 0.7e-4 to 2.8e-4 from the emulation; float32's own step 5e-4, so for
#: tf32 and bf16 the sum of the differences must also be nearer the mode's emulation than float32's
#: step: there those models are 5-30x nearer)
STEP_TOL = {"tf32": 5e-4, "bf16": 8e-3, "3xtf32": 2e-5}


@pytest.mark.parametrize("mode", MODES)
def test_a_small_batch_step_with_split_k_matches_the_numpy_emulation(mode):
    """A network whose forward and input-gradient GEMMs split at batch 128 (8 output tiles of the
    1024-wide layers), through `CudaBackend(tensor_core_gemms=True)` and its plan's scratch: the
    outputs, loss and gradients against the numpy backend's emulation of the mode."""
    import gpubp
    from gpubp.backends.cuda_backend import CudaBackend

    sizes, B = [600, 1024, 1024, 10], 128
    sms = cuda_device.sm_count()
    _needs_split(tc.fwd_splits(B, 1024, 1024, sms))
    _needs_split(tc.bwd_data_splits(B, 1024, 1024, sms))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, sizes[0])).astype(np.float32)
    Y = rng.standard_normal((B, sizes[-1])).astype(np.float32)
    nets = [gpubp.MLP(sizes, activation="silu", backend=be, precision=p, seed=3)
            for be, p in (("numpy", mode), (CudaBackend(tensor_core_gemms=True), mode), ("numpy", "float32"))]
    (l_ref, g_ref), (l_gpu, g_gpu), (_, g_32) = (n.loss_and_grads(X, Y) for n in nets)
    tol = STEP_TOL[mode]
    far = mode != "3xtf32"          # 3xtf32 is float32-accurate: no nearer-than-float32 check

    def close(got, want, what, not_like=None):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        err = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)
        assert err <= tol, f"{what}: {err:.2e} relative to its largest value"
        if not_like is not None:    # nearer its mode's emulation than float32's numbers, in total
            assert np.abs(got - want).sum() < np.abs(got - np.asarray(not_like, np.float64)).sum(), what

    close(nets[1].backend.to_numpy(nets[1].forward(X)), nets[0].forward(X), "outputs",
          nets[2].forward(X) if far else None)
    assert l_gpu == pytest.approx(l_ref, rel=tol)
    for l, ((dW, db), (rW, rb), (fW, _)) in enumerate(zip(g_gpu, g_ref, g_32), start=1):
        close(dW, rW, f"layer {l} dW", fW if far else None)
        close(db, rb, f"layer {l} db")
