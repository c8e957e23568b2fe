"""The whole-network fused kernels of kernels/fused_mlp.cu against numpy in float64
(skipped without CUDA).

Awkward batch sizes (1, 3, tile +- 1, 2^16 + 3) and widths (1, 3, 5, 17, 100, 128,
mixed per layer, both the WMAX 64 and the WMAX 128 configuration), every activation
on every position (hidden layers and the activation entering the run), outputs
poisoned with NaN before each call so that every element must be written, the
scalar paths (misaligned views), the per-layer GEMM path as a second reference,
and bitwise reproducibility of dW / db over two calls.

The TF32 tensor-core variant (precision="tf32", kernels/fused_mlp_tf32.cu) runs the
same cases against the same float64 references at relative error < 5e-3 (TOL_TF32;
a numpy emulation of TF32 operand rounding on these cases gives at most ~2.3e-3),
plus an exactness check on small integers (exact in TF32 and in fp32 sums: any
fragment-mapping or swizzle error shows as a wrong value, not as noise), a check
that the tensor-core path really ran (results differ from the fp32 kernels'), and
bitwise reproducibility.
"""

import zlib

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from gpubp.backends import cuda_available  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]

from gpubp.activations import ACT_CODES, ACTIVATIONS, NEEDS_Z  # noqa: E402
from gpubp.backends import cuda_fused, cuda_gemm  # noqa: E402
from gpubp.backends.numpy_backend import activation_backward_inplace, activation_forward  # noqa: E402

TOL = 1e-5
TOL_TF32 = 5e-3
PRECISIONS = ("float32", "tf32")
_TOLS = {"float32": TOL, "tf32": TOL_TF32}


def _cc_major():
    try:
        return int(cupy.cuda.Device().compute_capability[:-1])   # "90" -> 9
    except Exception:
        return 0


def _need(precision):
    if precision == "tf32" and _cc_major() < 8:
        pytest.skip("tf32 needs compute capability 8.0+")
BATCHES = (1, 3, 127, 129, 4097, (1 << 16) + 3)
WIDTHS = ([3, 64, 64, 5], [17, 128, 100, 1], [64] * 9, [1, 1], [5, 33, 7, 128, 2], [128, 128, 128])


def rel_err(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def _seed(text):
    return zlib.crc32(text.encode())


def _poison(shape):
    return cupy.full(shape, np.nan, dtype=np.float32)


def _check(out, ref, what, tol=TOL):
    host = cupy.asnumpy(out)
    assert np.isfinite(host).all(), f"{what}: {np.count_nonzero(~np.isfinite(host))} elements not written"
    e = rel_err(host, ref)
    assert e < tol, f"{what}: relative error {e:.3g}"


def _f64(a):
    return cupy.asnumpy(a).astype(np.float64)


def _net(rng, widths, B, acts, act_in):
    """Random float32 parameters, an input that is act_in(Z_in), and a delta for the last layer."""
    L = len(widths) - 1
    Ws = [cupy.asarray((rng.standard_normal((widths[i + 1], widths[i])) / np.sqrt(widths[i])).astype(np.float32))
          for i in range(L)]
    bs = [cupy.asarray((rng.standard_normal(widths[i + 1]) * 0.5).astype(np.float32)) for i in range(L)]
    Zi = rng.standard_normal((B, widths[0]))
    Ai = activation_forward(act_in, Zi, np.empty_like(Zi))
    A_in = cupy.asarray(Ai.astype(np.float32))
    Z_in = cupy.asarray(Zi.astype(np.float32))
    delta = cupy.asarray(rng.standard_normal((B, widths[-1])).astype(np.float32))
    return Ws, bs, A_in, Z_in, delta


def _ref_forward(A_in, Ws, bs, acts):
    a = _f64(A_in)
    As, Zs = [], []
    for W, b, act in zip(Ws, bs, acts):
        z = a @ _f64(W).T + _f64(b)
        a = activation_forward(act, z, np.empty_like(z))
        As.append(a)
        Zs.append(z)
    return As, Zs


def _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, act_in, Z_in):
    """From the kernels' own forward outputs (so g' sees the same A and Z)."""
    L = len(Ws)
    d = _f64(delta)
    dWs, dbs, scale = [None] * L, [None] * L, [None] * L
    for i in range(L - 1, -1, -1):
        X = _f64(A_in) if i == 0 else _f64(A_outs[i - 1])
        dWs[i] = d.T @ X
        dbs[i] = d.sum(0)
        scale[i] = (np.abs(d).T @ np.abs(X), np.abs(d).sum(0))   # sums without cancellation
        dn = d @ _f64(Ws[i])
        if i > 0:
            z = _f64(Z_outs[i - 1]) if Z_outs[i - 1] is not None else None
            activation_backward_inplace(acts[i - 1], dn, X, z)
        else:
            activation_backward_inplace(act_in, dn, X, _f64(Z_in))
        d = dn
    return dWs, dbs, d, scale


def _check_sum(out, ref, scale, what, tol):
    """A sum over the batch, for TF32: error against the sum of absolute terms.

    TF32 rounds every term by up to 2^-11 relative, so a batch sum whose terms
    cancel (its norm far below the sum of |terms|) carries a larger relative
    error than its terms; the bound that holds is ||out - ref|| <= c u ||sum |terms|||.
    """
    host = cupy.asnumpy(out)
    assert np.isfinite(host).all(), f"{what}: {np.count_nonzero(~np.isfinite(host))} elements not written"
    e = float(np.linalg.norm(host - ref) / max(np.linalg.norm(scale), 1e-300))
    assert e < tol, f"{what}: error {e:.3g} relative to the sum of absolute terms"


def _run(widths, B, acts, act_in, seed, precision="float32"):
    _need(precision)
    tol = _TOLS[precision]
    rng = np.random.default_rng(seed)
    L = len(widths) - 1
    Ws, bs, A_in, Z_in, delta = _net(rng, widths, B, acts, act_in)
    codes = [ACT_CODES[a] for a in acts]
    A_outs = [_poison((B, widths[i + 1])) for i in range(L)]
    Z_outs = [_poison((B, widths[i + 1])) if acts[i] in NEEDS_Z else None for i in range(L)]
    cuda_fused.fused_forward(A_in, Ws, bs, codes, A_outs, Z_outs, precision=precision)
    As, Zs = _ref_forward(A_in, Ws, bs, acts)
    for i in range(L):
        _check(A_outs[i], As[i], f"A_outs[{i}]", tol)
        if Z_outs[i] is not None:
            _check(Z_outs[i], Zs[i], f"Z_outs[{i}]", tol)

    dWs = [_poison((widths[i + 1], widths[i])) for i in range(L)]
    dbs = [_poison((widths[i + 1],)) for i in range(L)]
    din = _poison((B, widths[0]))
    cuda_fused.fused_backward(delta, Ws, codes, A_in, A_outs, Z_outs, dWs, dbs,
                              delta_in_out=din, act_code_in=ACT_CODES[act_in],
                              Z_in=Z_in if act_in in NEEDS_Z else None, precision=precision)
    rdW, rdb, rdin, scale = _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, act_in, Z_in)
    for i in range(L):
        if precision == "tf32":   # batch sums of TF32-rounded terms: see _check_sum
            sW, sb = scale[i]
            _check_sum(dWs[i], rdW[i], sW, f"dWs[{i}]", tol)
            _check_sum(dbs[i], rdb[i], sb, f"dbs[{i}]", tol)
        else:
            _check(dWs[i], rdW[i], f"dWs[{i}]", tol)
            _check(dbs[i], rdb[i], f"dbs[{i}]", tol)
    _check(din, rdin, "delta_in", tol)
    return Ws, bs, A_in, Z_in, delta, A_outs, Z_outs, dWs, dbs, din


def _cases():
    out = []
    for wi, widths in enumerate(WIDTHS):
        for bi, B in enumerate(BATCHES):
            L = len(widths) - 1
            off = 3 * wi + bi          # rotate the activations so each appears everywhere
            acts = [ACTIVATIONS[(off + l) % len(ACTIVATIONS)] for l in range(L)]
            act_in = ACTIVATIONS[(off + L) % len(ACTIVATIONS)]
            out.append((widths, B, tuple(acts), act_in))
    return out


CASES = _cases()


def _id(c):
    widths, B, acts, act_in = c
    return f"w{'-'.join(map(str, widths))}-B{B}-{'.'.join(a[:4] for a in acts)}-in{act_in[:4]}"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_fused_forward_backward(case, precision):
    widths, B, acts, act_in = case
    _run(widths, B, list(acts), act_in, _seed(_id(case)), precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_everywhere(act, precision):
    """One activation on every layer and on the run's input, both configurations."""
    for widths in ([7, 64, 64, 64, 3], [9, 128, 65, 128, 4]):
        _run(widths, 300, [act] * (len(widths) - 1), act, _seed(act + str(widths)), precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_without_delta_in(precision):
    """delta_in_out=None: the first layer's delta@W is skipped, every dW/db still right."""
    _need(precision)
    tol = _TOLS[precision]
    rng = np.random.default_rng(7)
    widths, B, acts = [20, 64, 64, 10], 1000, ["tanh", "gelu", "identity"]
    Ws, bs, A_in, Z_in, delta = _net(rng, widths, B, acts, "relu")
    codes = [ACT_CODES[a] for a in acts]
    A_outs = [_poison((B, w)) for w in widths[1:]]
    Z_outs = [_poison((B, w)) if a in NEEDS_Z else None for w, a in zip(widths[1:], acts)]
    cuda_fused.fused_forward(A_in, Ws, bs, codes, A_outs, Z_outs, precision=precision)
    dWs = [_poison((widths[i + 1], widths[i])) for i in range(3)]
    dbs = [_poison((widths[i + 1],)) for i in range(3)]
    cuda_fused.fused_backward(delta, Ws, codes, A_in, A_outs, Z_outs, dWs, dbs, precision=precision)
    rdW, rdb, _, _ = _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, "identity", Z_in)
    for i in range(3):
        _check(dWs[i], rdW[i], f"dWs[{i}]", tol)
        _check(dbs[i], rdb[i], f"dbs[{i}]", tol)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("offset", [1, 2])
def test_misaligned_views(offset, precision):
    """Every array a view at an element offset into a flat buffer: the scalar (non-16-byte) paths."""
    _need(precision)
    tol = _TOLS[precision]
    rng = np.random.default_rng(offset)
    widths, B, acts, act_in = [16, 64, 128, 8], 333, ["silu", "leaky_relu", "sigmoid"], "gelu"

    def view(shape, src=None):
        n = int(np.prod(shape))
        flat = cupy.full(n + 8, np.nan, dtype=np.float32)
        v = flat[offset:offset + n].reshape(shape)
        if src is not None:
            v[...] = src
        return v

    Ws0, bs0, A0, Z0, d0 = _net(rng, widths, B, acts, act_in)
    Ws = [view(W.shape, W) for W in Ws0]
    bs = [view(b.shape, b) for b in bs0]
    A_in, Z_in, delta = view(A0.shape, A0), view(Z0.shape, Z0), view(d0.shape, d0)
    codes = [ACT_CODES[a] for a in acts]
    A_outs = [view((B, w)) for w in widths[1:]]
    Z_outs = [view((B, w)) if a in NEEDS_Z else None for w, a in zip(widths[1:], acts)]
    cuda_fused.fused_forward(A_in, Ws, bs, codes, A_outs, Z_outs, precision=precision)
    As, Zs = _ref_forward(A_in, Ws, bs, acts)
    for i in range(3):
        _check(A_outs[i], As[i], f"A_outs[{i}]", tol)
        if Z_outs[i] is not None:
            _check(Z_outs[i], Zs[i], f"Z_outs[{i}]", tol)
    dWs = [view((widths[i + 1], widths[i])) for i in range(3)]
    dbs = [view((widths[i + 1],)) for i in range(3)]
    din = view((B, widths[0]))
    cuda_fused.fused_backward(delta, Ws, codes, A_in, A_outs, Z_outs, dWs, dbs,
                              delta_in_out=din, act_code_in=ACT_CODES[act_in], Z_in=Z_in, precision=precision)
    rdW, rdb, rdin, _ = _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, act_in, Z_in)
    for i in range(3):
        _check(dWs[i], rdW[i], f"dWs[{i}]", tol)
        _check(dbs[i], rdb[i], f"dbs[{i}]", tol)
    _check(din, rdin, "delta_in", tol)


@pytest.mark.parametrize("widths", [[64] * 9, [32, 128, 128, 128, 16]])
def test_matches_per_layer_path(widths):
    """Equal to the per-layer fused GEMMs (cuda_gemm) to fp32 rounding."""
    rng = np.random.default_rng(len(widths))
    B = 5000
    L = len(widths) - 1
    acts = [ACTIVATIONS[(l + 1) % len(ACTIVATIONS)] for l in range(L)]
    codes = [ACT_CODES[a] for a in acts]
    Ws, bs, A_in, Z_in, delta = _net(rng, widths, B, acts, "tanh")
    A_outs = [_poison((B, w)) for w in widths[1:]]
    Z_outs = [_poison((B, w)) if a in NEEDS_Z else None for w, a in zip(widths[1:], acts)]
    cuda_fused.fused_forward(A_in, Ws, bs, codes, A_outs, Z_outs)
    a = A_in
    for i in range(L):
        A_ref = _poison((B, widths[i + 1]))
        cuda_gemm.gemm_fwd(a, Ws[i], bs[i], codes[i], A_ref, None)
        _check(A_outs[i], cupy.asnumpy(A_ref), f"A_outs[{i}] vs per-layer", tol=1e-6)
        a = A_outs[i]   # same input for both paths, layer by layer

    dWs = [_poison((widths[i + 1], widths[i])) for i in range(L)]
    dbs = [_poison((widths[i + 1],)) for i in range(L)]
    din = _poison((B, widths[0]))
    cuda_fused.fused_backward(delta, Ws, codes, A_in, A_outs, Z_outs, dWs, dbs,
                              delta_in_out=din, act_code_in=ACT_CODES["tanh"])
    d = delta
    for i in range(L - 1, -1, -1):
        X = A_in if i == 0 else A_outs[i - 1]
        dW, db = _poison(dWs[i].shape), _poison(dbs[i].shape)
        dn = _poison((B, widths[i]))
        code = ACT_CODES["tanh"] if i == 0 else codes[i - 1]
        Zp = None if i == 0 else Z_outs[i - 1]
        cuda_gemm.gemm_bwd_weight(d, X, dW, db)
        cuda_gemm.gemm_bwd_data(d, Ws[i], X, Zp, code, dn)
        _check(dWs[i], cupy.asnumpy(dW), f"dWs[{i}] vs per-layer")
        _check(dbs[i], cupy.asnumpy(db), f"dbs[{i}] vs per-layer")
        d = dn
    _check(din, cupy.asnumpy(d), "delta_in vs per-layer")


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("widths", [[64] * 9, [100, 128, 3]])
def test_backward_bitwise_reproducible(widths, precision):
    _need(precision)
    tol = _TOLS[precision]
    B = (1 << 18) + 5
    L = len(widths) - 1
    rs = cupy.random.RandomState(1234)
    Ws = [(rs.standard_normal((widths[i + 1], widths[i]), dtype=np.float32) / np.float32(np.sqrt(widths[i])))
          for i in range(L)]
    A_in = rs.standard_normal((B, widths[0]), dtype=np.float32)
    A_outs = [cupy.tanh(rs.standard_normal((B, w), dtype=np.float32)) for w in widths[1:]]
    delta = rs.standard_normal((B, widths[-1]), dtype=np.float32)
    codes = [ACT_CODES["tanh"]] * L
    outs = []
    for _ in range(2):
        dWs = [_poison((widths[i + 1], widths[i])) for i in range(L)]
        dbs = [_poison((widths[i + 1],)) for i in range(L)]
        din = _poison((B, widths[0]))
        cuda_fused.fused_backward(delta, Ws, codes, A_in, A_outs, [None] * L, dWs, dbs,
                                  delta_in_out=din, act_code_in=ACT_CODES["relu"], precision=precision)
        outs.append(dWs + dbs + [din])
    for x, y in zip(*outs):
        assert bool((x.view(cupy.int32) == y.view(cupy.int32)).all()), "two runs differ in bits"
    # and right
    rdW, rdb, rdin, _ = _ref_backward(delta, Ws, ["tanh"] * L, A_in, A_outs, [None] * L, "relu", None)
    for i in range(L):
        _check(outs[0][i], rdW[i], f"dWs[{i}]", tol)
        _check(outs[0][L + i], rdb[i], f"dbs[{i}]", tol)
    _check(outs[0][-1], rdin, "delta_in", tol)


@pytest.mark.parametrize("widths", [[64] * 9, [100, 128, 3]])
def test_tf32_forward_bitwise_reproducible(widths):
    _need("tf32")
    rng = np.random.default_rng(5)
    B = 40000
    L = len(widths) - 1
    acts = ["gelu"] * L
    Ws, bs, A_in, _, _ = _net(rng, widths, B, acts, "identity")
    codes = [ACT_CODES[a] for a in acts]
    outs = []
    for _ in range(2):
        A_outs = [_poison((B, w)) for w in widths[1:]]
        Z_outs = [_poison((B, w)) for w in widths[1:]]
        cuda_fused.fused_forward(A_in, Ws, bs, codes, A_outs, Z_outs, precision="tf32")
        outs.append(A_outs + Z_outs)
    for x, y in zip(*outs):
        assert bool((x.view(cupy.int32) == y.view(cupy.int32)).all()), "two runs differ in bits"


@pytest.mark.parametrize("widths", [[5, 64, 64, 3], [17, 128, 100, 128, 9], [64] * 9, [128, 128]])
def test_tf32_exact_on_small_integers(widths):
    """Integer data exact in TF32, products and fp32 sums exact: the tf32 kernels must match
    float64 exactly, so any fragment / swizzle / masking mistake is a hard failure."""
    _need("tf32")
    rng = np.random.default_rng(len(widths) * 1000 + widths[1])
    B = 300
    L = len(widths) - 1
    # sparse +-1 weights (about 3 nonzeros per row) keep the activations and deltas small integers
    Ws = [cupy.asarray((rng.integers(-1, 2, (widths[i + 1], widths[i]))
                        * (rng.random((widths[i + 1], widths[i])) < 3.0 / widths[i])).astype(np.float32))
          for i in range(L)]
    bs = [cupy.asarray(rng.integers(-2, 3, widths[i + 1]).astype(np.float32)) for i in range(L)]
    A_in = cupy.asarray(rng.integers(-2, 3, (B, widths[0])).astype(np.float32))
    delta = cupy.asarray(rng.integers(-2, 3, (B, widths[-1])).astype(np.float32))
    acts = ["relu"] * L            # keeps the integers integral (and small enough: checked below)
    codes = [ACT_CODES[a] for a in acts]
    A_outs = [_poison((B, w)) for w in widths[1:]]
    cuda_fused.fused_forward(A_in, Ws, bs, codes, A_outs, [None] * L, precision="tf32")
    As, _ = _ref_forward(A_in, Ws, bs, acts)
    for i in range(L):
        assert np.abs(As[i]).max() < 1024, "test data grew too large for TF32 exactness"
        np.testing.assert_array_equal(cupy.asnumpy(A_outs[i]), As[i], err_msg=f"A_outs[{i}]")
    dWs = [_poison((widths[i + 1], widths[i])) for i in range(L)]
    dbs = [_poison((widths[i + 1],)) for i in range(L)]
    din = _poison((B, widths[0]))
    cuda_fused.fused_backward(delta, Ws, codes, A_in, A_outs, [None] * L, dWs, dbs,
                              delta_in_out=din, act_code_in=ACT_CODES["identity"], precision="tf32")
    rdW, rdb, rdin, _ = _ref_backward(delta, Ws, acts, A_in, A_outs, [None] * L, "identity", None)
    for i in range(L):
        assert np.abs(rdW[i]).max() < 2 ** 24 and np.abs(rdin).max() < 1024
        np.testing.assert_array_equal(cupy.asnumpy(dWs[i]), rdW[i], err_msg=f"dWs[{i}]")
        np.testing.assert_array_equal(cupy.asnumpy(dbs[i]), rdb[i], err_msg=f"dbs[{i}]")
    np.testing.assert_array_equal(cupy.asnumpy(din), rdin, err_msg="delta_in")


def test_tf32_uses_tensor_cores():
    """On data with full fp32 mantissas the tf32 results differ from the fp32 kernels' (the
    TF32 rounding happened), yet both are close to float64."""
    _need("tf32")
    rng = np.random.default_rng(11)
    widths, B = [64, 64, 64], 2000
    Ws, bs, A_in, _, delta = _net(rng, widths, B, ["tanh", "identity"], "identity")
    codes = [ACT_CODES["tanh"], ACT_CODES["identity"]]
    out = {}
    for prec in PRECISIONS:
        A_outs = [_poison((B, w)) for w in widths[1:]]
        cuda_fused.fused_forward(A_in, Ws, bs, codes, A_outs, [None, None], precision=prec)
        dWs = [_poison((widths[i + 1], widths[i])) for i in range(2)]
        dbs = [_poison((widths[i + 1],)) for i in range(2)]
        cuda_fused.fused_backward(delta, Ws, codes, A_in, A_outs, [None, None], dWs, dbs, precision=prec)
        out[prec] = (cupy.asnumpy(A_outs[-1]), cupy.asnumpy(dWs[0]))
    for k in range(2):
        a, b = out["float32"][k], out["tf32"][k]
        assert not np.array_equal(a, b), "tf32 gave the fp32 bits: the tensor-core path did not run"
        assert rel_err(b, a) < TOL_TF32


def test_eligible():
    assert cuda_fused.eligible([64] * 9)
    assert cuda_fused.eligible([1, 128, 3])
    assert not cuda_fused.eligible([784, 64, 10])
    assert not cuda_fused.eligible([64, 129, 64])


def test_rejects_bad_input():
    W = cupy.zeros((4, 3), dtype=np.float32)
    b = cupy.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError):
        cuda_fused.fused_forward(cupy.zeros((2, 3), np.float32), [W], [b], [0],
                                 [cupy.zeros((2, 4), np.float32)], [None], precision="fp16")
    with pytest.raises(ValueError):
        cuda_fused.fused_backward(cupy.zeros((2, 4), np.float32), [W], [0], cupy.zeros((2, 3), np.float32),
                                  [cupy.zeros((2, 4), np.float32)], [None], [cupy.zeros((4, 3), np.float32)],
                                  [cupy.zeros(4, np.float32)], precision="bf16")
    with pytest.raises(TypeError):
        cuda_fused.fused_forward(cupy.zeros((2, 3)), [W.astype(np.float64)], [b.astype(np.float64)], [0],
                                 [cupy.zeros((2, 4))], [None])
    with pytest.raises(ValueError):
        cuda_fused.fused_forward(cupy.zeros((2, 5), np.float32), [W], [b], [0],
                                 [cupy.zeros((2, 4), np.float32)], [None])
    with pytest.raises(ValueError):
        big = cupy.zeros((200, 3), dtype=np.float32)
        cuda_fused.fused_forward(cupy.zeros((2, 3), np.float32), [big], [cupy.zeros(200, np.float32)], [0],
                                 [cupy.zeros((2, 200), np.float32)], [None])
