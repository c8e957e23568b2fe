"""The fused-MLP kernel family (kernels/fused_mlp_family.cu through
gpubp/backends/cuda_fused_family.py) on a GPU, every policy (float32, tf32, bf16); skipped
without CUDA or below compute capability 8.0.

- against numpy in float64: awkward batch sizes (1, 3, tile +- 1, 2^16 + 3: several tiles per
  persistent block) and widths (1, 3, 5, 17, 100, 128, mixed per layer, both WMAX 64 and
  WMAX 128), every activation on every position, outputs poisoned with NaN before each call;
- against the GPU-verified fused kernels (cuda_fused) at float32 and tf32;
- bf16 against its numpy emulation (gpubp.precision), layer by layer from the kernels' own
  inputs, with bf16 storage (every stored Z, A and delta a bfloat16 value), and every policy EXACT on small integers (exact in bf16 / tf32 and in float32 sums:
  any fragment, swizzle, masking or prefetch mistake is a wrong value, not noise);
- the scalar paths (misaligned views), the run without delta_in, bitwise reproducibility of
  the forward and of dW / db / delta_in over two calls, and that the tensor cores ran.

Tolerances (normwise relative error against float64): float32 1e-5, tf32 5e-3, bf16 3e-2 (u =
2^-8 per rounded operand, accumulated over up to 8 layers); batch sums of rounded terms are
held to the same numbers relative to the sum of |terms| (`_check_sum`), and in tf32 / bf16 the
forward's Z and A relative to |Z| or |A| plus the 2-norm of Z's rounded terms (`_check_forward`).
"""

import zlib

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from gpubp.backends import cuda_available  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]

from gpubp import precision as P  # noqa: E402
from gpubp.activations import ACT_CODES, ACTIVATIONS, NEEDS_Z  # noqa: E402
from gpubp.backends import cuda_fused, cuda_fused_family as ff  # noqa: E402
from gpubp.backends.numpy_backend import activation_backward_inplace, activation_forward  # noqa: E402

PRECISIONS = ("float32", "tf32", "bf16")
TOLS = {"float32": 1e-5, "tf32": 5e-3, "bf16": 3e-2}
BATCHES = (1, 3, 127, 129, 4097, (1 << 16) + 3)
WIDTHS = ([3, 64, 64, 5], [17, 128, 100, 1], [64] * 9, [1, 1], [5, 33, 7, 128, 2], [128, 128, 128])


@pytest.fixture(autouse=True)
def _sm80():
    if int(cupy.cuda.Device().compute_capability) < 80:
        pytest.skip("the fused kernel family needs compute capability 8.0+")


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    """Every kernel of the family and of cuda_fused, each module in one NVRTC program."""
    if int(cupy.cuda.Device().compute_capability) >= 80:
        from gpubp.backends import cuda_device

        cuda_device.load_kernels({ff.SPECS[0]: ff.SPECS[0].name_expressions,
                                  cuda_fused.SPECS[0]: cuda_fused.SPECS[0].name_expressions})


def rel_err(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def _seed(text):
    return zlib.crc32(text.encode())


def _poison(shape):
    return cupy.full(shape, np.nan, dtype=np.float32)


def _f64(a):
    return cupy.asnumpy(a).astype(np.float64)


def _host(out, what):
    host = cupy.asnumpy(out)
    assert np.isfinite(host).all(), f"{what}: {np.count_nonzero(~np.isfinite(host))} elements not written"
    return host


def _check(out, ref, what, tol):
    e = rel_err(_host(out, what), ref)
    assert e < tol, f"{what}: relative error {e:.3g}"


def _bf16_values(out, what):
    """The BF16 policy stores bfloat16 values (low 16 bits zero) in its float32 outputs."""
    host = _host(out, what)
    assert not (host.view(np.uint32) & np.uint32(0xFFFF)).any(), f"{what}: not bfloat16 values"
    return host


def _bf16_close(out, want, what, flips=0.02):
    """Stored bf16 values equal to the emulation's but where the kernel's float32 sums (another
    order) fell on the other side of a rounding boundary: at most `flips` of the elements, each
    within a couple of bf16 ulps of the largest value."""
    host = _bf16_values(out, what)
    off = host != want
    assert off.mean() <= flips, f"{what}: {off.mean():.3%} differ from the emulation"
    assert np.abs(host - want).max(initial=0.0) <= 2.0 ** -7 * max(float(np.abs(want).max()), 1e-30), what


def _check_sum(out, ref, scale, what, tol):
    """A batch sum: error relative to the sum of |terms| (rounded terms that cancel)."""
    host = _host(out, what)
    e = float(np.linalg.norm(host - ref) / max(np.linalg.norm(scale), 1e-300))
    assert e < tol, f"{what}: error {e:.3g} relative to the sum of absolute terms"


def _net(rng, widths, B, act_in):
    L = len(widths) - 1
    Ws = [cupy.asarray((rng.standard_normal((widths[i + 1], widths[i])) / np.sqrt(widths[i])).astype(np.float32))
          for i in range(L)]
    bs = [cupy.asarray((rng.standard_normal(widths[i + 1]) * 0.5).astype(np.float32)) for i in range(L)]
    Zi = rng.standard_normal((B, widths[0]))
    A_in = cupy.asarray(activation_forward(act_in, Zi, np.empty_like(Zi)).astype(np.float32))
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


def _check_forward(A_outs, Z_outs, A_in, Ws, bs, As, Zs, precision):
    """The forward's outputs against float64 (As, Zs of _ref_forward), normwise.  float32: relative
    error.  tf32 / bf16: each operand of Z_l's sum over k is rounded (relative u), so Z_l's error
    is about u times the 2-norm of its terms, T_l = sqrt(A_{l-1}^2 (W_l^2)^T), not u |Z_l|: a Z
    that cancels to near zero (a last ReLU of width 1 whose few positive inputs are such sums)
    has a larger relative error on any hardware (numpy's own bf16 emulation of the kernel,
    gpubp.precision.fused_reference, gives A_outs[2] of w17-128-100-1-B65539 a relative error of
    5.7e-2).  So Z_l and A_l = g(Z_l) (|g'| <= 1.13 for every activation) are held relative to
    |Z_l| + T_l and |A_l| + T_l, elementwise sums (T_l ~ |Z_l| where Z_l does not cancel)."""
    tol = TOLS[precision]
    a = _f64(A_in)
    for i in range(len(Ws)):
        T = np.sqrt((a * a) @ (_f64(Ws[i]) ** 2).T)
        for out, ref, what in ((A_outs[i], As[i], f"A_outs[{i}]"), (Z_outs[i], Zs[i], f"Z_outs[{i}]")):
            if out is None:
                continue
            if precision == "float32":
                _check(out, ref, what, tol)
                continue
            e = float(np.linalg.norm(_host(out, what) - ref) / max(np.linalg.norm(np.abs(ref) + T), 1e-300))
            assert e < tol, f"{what}: error {e:.3g} relative to |value| + the 2-norm of its rounded terms"
        a = As[i]


def _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, act_in, Z_in):
    """float64, from the kernels' own forward outputs (so g' sees the same A and Z)."""
    L = len(Ws)
    d = _f64(delta)
    dWs, dbs, scale = [None] * L, [None] * L, [None] * L
    for i in range(L - 1, -1, -1):
        X = _f64(A_in) if i == 0 else _f64(A_outs[i - 1])
        dWs[i], dbs[i] = d.T @ X, d.sum(0)
        scale[i] = (np.abs(d).T @ np.abs(X), np.abs(d).sum(0))
        dn = d @ _f64(Ws[i])
        if i > 0:
            z = _f64(Z_outs[i - 1]) if Z_outs[i - 1] is not None else None
            activation_backward_inplace(acts[i - 1], dn, X, z)
        else:
            activation_backward_inplace(act_in, dn, X, None if Z_in is None else _f64(Z_in))
        d = dn
    return dWs, dbs, d, scale


def _forward(A_in, Ws, bs, acts, precision, family=ff):
    B = A_in.shape[0]
    codes = [ACT_CODES[a] for a in acts]
    A_outs = [_poison((B, W.shape[0])) for W in Ws]
    Z_outs = [_poison((B, W.shape[0])) if a in NEEDS_Z else None for W, a in zip(Ws, acts)]
    family.fused_forward(A_in, Ws, bs, codes, A_outs, Z_outs, precision=precision)
    return A_outs, Z_outs


def _backward(delta, Ws, acts, A_in, A_outs, Z_outs, act_in, Z_in, precision, family=ff, want_din=True):
    B = A_in.shape[0]
    dWs = [_poison(W.shape) for W in Ws]
    dbs = [_poison((W.shape[0],)) for W in Ws]
    din = _poison(A_in.shape) if want_din else None
    family.fused_backward(delta, Ws, [ACT_CODES[a] for a in acts], A_in, A_outs, Z_outs, dWs, dbs,
                          delta_in_out=din, act_code_in=ACT_CODES[act_in] if want_din else None,
                          Z_in=Z_in if (want_din and act_in in NEEDS_Z) else None, precision=precision)
    assert B == A_in.shape[0]
    return dWs, dbs, din


def _run(widths, B, acts, act_in, seed, precision):
    tol = TOLS[precision]
    rng = np.random.default_rng(seed)
    L = len(widths) - 1
    Ws, bs, A_in, Z_in, delta = _net(rng, widths, B, act_in)
    A_outs, Z_outs = _forward(A_in, Ws, bs, acts, precision)
    As, Zs = _ref_forward(A_in, Ws, bs, acts)
    for i in range(L):
        if precision == "bf16":     # what the policy stores: bf16 values
            _bf16_values(A_outs[i], f"A_outs[{i}]")
            if Z_outs[i] is not None:
                _bf16_values(Z_outs[i], f"Z_outs[{i}]")
    _check_forward(A_outs, Z_outs, A_in, Ws, bs, As, Zs, precision)
    dWs, dbs, din = _backward(delta, Ws, acts, A_in, A_outs, Z_outs, act_in, Z_in, precision)
    rdW, rdb, rdin, scale = _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, act_in, Z_in)
    for i in range(L):
        _check_sum(dWs[i], rdW[i], scale[i][0], f"dWs[{i}]", tol)
        _check_sum(dbs[i], rdb[i], scale[i][1], f"dbs[{i}]", tol)
    if precision == "bf16":
        _bf16_values(din, "delta_in")
    _check(din, rdin, "delta_in", tol)


def _cases():
    out = []
    for wi, widths in enumerate(WIDTHS):
        for bi, B in enumerate(BATCHES):
            L = len(widths) - 1
            off = 3 * wi + bi          # rotate the activations so each appears everywhere
            acts = [ACTIVATIONS[(off + l) % len(ACTIVATIONS)] for l in range(L)]
            out.append((widths, B, tuple(acts), ACTIVATIONS[(off + L) % len(ACTIVATIONS)]))
    return out


CASES = _cases()


def _id(c):
    widths, B, acts, act_in = c
    return f"w{'-'.join(map(str, widths))}-B{B}-{'.'.join(a[:4] for a in acts)}-in{act_in[:4]}"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_family_against_float64(case, precision):
    widths, B, acts, act_in = case
    _run(widths, B, list(acts), act_in, _seed(_id(case)), precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_everywhere(act, precision):
    for widths in ([7, 64, 64, 64, 3], [9, 128, 65, 128, 4]):
        _run(widths, 300, [act] * (len(widths) - 1), act, _seed(act + str(widths)), precision)


@pytest.mark.parametrize("precision", ["float32", "tf32"])
@pytest.mark.parametrize("widths", [[64] * 9, [32, 128, 100, 128, 16], [3, 64, 5]])
def test_family_matches_the_existing_fused_kernels(widths, precision):
    """The same run through cuda_fused (GPU-verified) and through the family: equal to float32
    rounding (float32) or to the rounding of a few TF32 operands that land on different sides
    of a rounding boundary (tf32)."""
    tol = 1e-5 if precision == "float32" else 2e-3
    rng = np.random.default_rng(sum(widths))
    B = 5000 + 7
    L = len(widths) - 1
    acts = [ACTIVATIONS[(l + 2) % len(ACTIVATIONS)] for l in range(L)]
    Ws, bs, A_in, Z_in, delta = _net(rng, widths, B, "gelu")
    A_old, Z_old = _forward(A_in, Ws, bs, acts, precision, family=cuda_fused)
    A_new, Z_new = _forward(A_in, Ws, bs, acts, precision)
    for i in range(L):
        _check(A_new[i], cupy.asnumpy(A_old[i]), f"A_outs[{i}] vs cuda_fused", tol)
    old = _backward(delta, Ws, acts, A_in, A_old, Z_old, "gelu", Z_in, precision, family=cuda_fused)
    new = _backward(delta, Ws, acts, A_in, A_old, Z_old, "gelu", Z_in, precision)
    for what, o, n in zip(("dWs", "dbs"), old[:2], new[:2]):
        for i in range(L):
            _check(n[i], cupy.asnumpy(o[i]), f"{what}[{i}] vs cuda_fused", tol)
    _check(new[2], cupy.asnumpy(old[2]), "delta_in vs cuda_fused", tol)


@pytest.mark.parametrize("widths", [[64] * 9, [17, 128, 100, 128, 9], [5, 33, 2]])
def test_bf16_matches_its_emulation_layer_by_layer(widths):
    """Each bf16 layer against gpubp.precision's bf16 GEMM of the kernel's own input (the same
    rounded operands, exact products; only the float32 summation order differs), with what the
    policy stores rounded to bf16: Z, A, the deltas between layers (db sums them), delta_in."""
    rng = np.random.default_rng(len(widths) + widths[1])
    B = 3000 + 1
    L = len(widths) - 1
    acts = [ACTIVATIONS[(l + 1) % len(ACTIVATIONS)] for l in range(L)]
    Ws, bs, A_in, Z_in, delta = _net(rng, widths, B, "sigmoid")
    A_outs, Z_outs = _forward(A_in, Ws, bs, acts, "bf16")
    Wh = [cupy.asnumpy(W) for W in Ws]
    a = cupy.asnumpy(A_in)
    for i in range(L):
        z = P.to_bf16(P.matmul(a, np.ascontiguousarray(Wh[i].T), "bf16") + cupy.asnumpy(bs[i]))
        if Z_outs[i] is not None:
            _bf16_close(Z_outs[i], z, f"Z_outs[{i}] vs emulation")
            z = cupy.asnumpy(Z_outs[i])             # A from the kernel's own stored Z
        _bf16_close(A_outs[i], P.to_bf16(activation_forward(acts[i], z, np.empty_like(z))),
                    f"A_outs[{i}] vs emulation")
        a = cupy.asnumpy(A_outs[i])
    dWs, dbs, din = _backward(delta, Ws, acts, A_in, A_outs, Z_outs, "sigmoid", Z_in, "bf16")
    d = cupy.asnumpy(delta)
    for i in range(L - 1, -1, -1):
        X = cupy.asnumpy(A_in) if i == 0 else cupy.asnumpy(A_outs[i - 1])
        scale = np.abs(P.to_bf16(d).astype(np.float64)).T @ np.abs(P.to_bf16(X).astype(np.float64))
        _check_sum(dWs[i], P.matmul(np.ascontiguousarray(d.T), X, "bf16"), scale, f"dWs[{i}] vs emulation", 2e-3)
        _check_sum(dbs[i], d.sum(0, dtype=np.float64), np.abs(d).sum(0), f"dbs[{i}] vs emulation", 2e-3)
        dn = P.matmul(d, Wh[i], "bf16")
        if i > 0:
            activation_backward_inplace(acts[i - 1], dn, X, None if Z_outs[i - 1] is None else cupy.asnumpy(Z_outs[i - 1]))
        else:
            activation_backward_inplace("sigmoid", dn, X, None)
        d = P.to_bf16(dn)                           # the delta as the policy stores it
    _bf16_values(din, "delta_in")
    _check(din, d, "delta_in vs emulation", 2e-3)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("widths", [[5, 64, 64, 3], [17, 128, 100, 128, 9], [64] * 9, [128, 128]])
def test_exact_on_small_integers(widths, precision):
    """Small integers are exact in bf16 and tf32 and their float32 sums are exact: every policy
    must match float64 bit for bit."""
    rng = np.random.default_rng(len(widths) * 1000 + widths[1])
    B = 300
    L = len(widths) - 1
    Ws = [cupy.asarray((rng.integers(-1, 2, (widths[i + 1], widths[i]))
                        * (rng.random((widths[i + 1], widths[i])) < 3.0 / widths[i])).astype(np.float32))
          for i in range(L)]
    bs = [cupy.asarray(rng.integers(-2, 3, widths[i + 1]).astype(np.float32)) for i in range(L)]
    A_in = cupy.asarray(rng.integers(-2, 3, (B, widths[0])).astype(np.float32))
    delta = cupy.asarray(rng.integers(-2, 3, (B, widths[-1])).astype(np.float32))
    acts = ["relu"] * L
    A_outs, _ = _forward(A_in, Ws, bs, acts, precision)
    As, _ = _ref_forward(A_in, Ws, bs, acts)
    for i in range(L):
        assert np.abs(As[i]).max() < 256, "test data grew too large for bf16 exactness"
        np.testing.assert_array_equal(cupy.asnumpy(A_outs[i]), As[i], err_msg=f"A_outs[{i}]")
    dWs, dbs, din = _backward(delta, Ws, acts, A_in, A_outs, [None] * L, "identity", None, precision)
    rdW, rdb, rdin, _ = _ref_backward(delta, Ws, acts, A_in, A_outs, [None] * L, "identity", None)
    d = _f64(delta)
    for i in range(L - 1, -1, -1):    # every delta inside the run stays exact in bf16 too
        d = (d @ _f64(Ws[i])) * (1.0 if i == 0 else (As[i - 1] > 0))
        assert np.abs(d).max() < 256, "test deltas grew too large for bf16 exactness"
    for i in range(L):
        np.testing.assert_array_equal(cupy.asnumpy(dWs[i]), rdW[i], err_msg=f"dWs[{i}]")
        np.testing.assert_array_equal(cupy.asnumpy(dbs[i]), rdb[i], err_msg=f"dbs[{i}]")
    np.testing.assert_array_equal(cupy.asnumpy(din), rdin, err_msg="delta_in")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_without_delta_in(precision):
    tol = TOLS[precision]
    rng = np.random.default_rng(7)
    widths, B, acts = [20, 64, 64, 10], 1000, ["tanh", "gelu", "identity"]
    Ws, bs, A_in, Z_in, delta = _net(rng, widths, B, "relu")
    A_outs, Z_outs = _forward(A_in, Ws, bs, acts, precision)
    dWs, dbs, _ = _backward(delta, Ws, acts, A_in, A_outs, Z_outs, "relu", Z_in, precision, want_din=False)
    rdW, rdb, _, scale = _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, "identity", Z_in)
    for i in range(3):
        _check_sum(dWs[i], rdW[i], scale[i][0], f"dWs[{i}]", tol)
        _check_sum(dbs[i], rdb[i], scale[i][1], f"dbs[{i}]", tol)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("offset", [1, 2])
def test_misaligned_views(offset, precision):
    """Every array a view at an element offset into a flat buffer: the 4-byte copy paths."""
    tol = TOLS[precision]
    rng = np.random.default_rng(offset)
    widths, B, acts, act_in = [16, 64, 128, 8], 333, ["silu", "leaky_relu", "sigmoid"], "gelu"

    def view(shape, src=None):
        n = int(np.prod(shape))
        flat = cupy.full(n + 8, np.nan, dtype=np.float32)
        v = flat[offset:offset + n].reshape(shape)
        if src is not None:
            v[...] = src
        return v

    Ws0, bs0, A0, Z0, d0 = _net(rng, widths, B, act_in)
    Ws = [view(W.shape, W) for W in Ws0]
    bs = [view(b.shape, b) for b in bs0]
    A_in, Z_in, delta = view(A0.shape, A0), view(Z0.shape, Z0), view(d0.shape, d0)
    codes = [ACT_CODES[a] for a in acts]
    A_outs = [view((B, w)) for w in widths[1:]]
    Z_outs = [view((B, w)) if a in NEEDS_Z else None for w, a in zip(widths[1:], acts)]
    ff.fused_forward(A_in, Ws, bs, codes, A_outs, Z_outs, precision=precision)
    As, Zs = _ref_forward(A_in, Ws, bs, acts)
    _check_forward(A_outs, Z_outs, A_in, Ws, bs, As, Zs, precision)
    dWs = [view((widths[i + 1], widths[i])) for i in range(3)]
    dbs = [view((widths[i + 1],)) for i in range(3)]
    din = view((B, widths[0]))
    ff.fused_backward(delta, Ws, codes, A_in, A_outs, Z_outs, dWs, dbs,
                      delta_in_out=din, act_code_in=ACT_CODES[act_in], Z_in=Z_in, precision=precision)
    rdW, rdb, rdin, scale = _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, act_in, Z_in)
    for i in range(3):
        _check_sum(dWs[i], rdW[i], scale[i][0], f"dWs[{i}]", tol)
        _check_sum(dbs[i], rdb[i], scale[i][1], f"dbs[{i}]", tol)
    _check(din, rdin, "delta_in", tol)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("widths", [[64] * 9, [100, 128, 3]])
def test_bitwise_reproducible(widths, precision):
    """Forward and backward twice at batch 2^17 + 5 (several tiles per persistent block): the same bits."""
    B = (1 << 17) + 5
    L = len(widths) - 1
    rs = cupy.random.RandomState(1234)
    Ws = [(rs.standard_normal((widths[i + 1], widths[i]), dtype=np.float32) / np.float32(np.sqrt(widths[i])))
          for i in range(L)]
    bs = [rs.standard_normal((widths[i + 1],), dtype=np.float32) for i in range(L)]
    A_in = rs.standard_normal((B, widths[0]), dtype=np.float32)
    delta = rs.standard_normal((B, widths[-1]), dtype=np.float32)
    acts = ["gelu"] * L
    outs = []
    for _ in range(2):
        A_outs, Z_outs = _forward(A_in, Ws, bs, acts, precision)
        dWs, dbs, din = _backward(delta, Ws, acts, A_in, A_outs, Z_outs, "relu", None, precision)
        outs.append(A_outs + Z_outs + dWs + dbs + [din])
    for x, y in zip(*outs):
        assert bool((x.view(cupy.int32) == y.view(cupy.int32)).all()), "two runs differ in bits"
    rdW, rdb, rdin, scale = _ref_backward(delta, Ws, acts, A_in, outs[0][:L], outs[0][L:2 * L], "relu", None)
    for i in range(L):
        _check_sum(outs[0][2 * L + i], rdW[i], scale[i][0], f"dWs[{i}]", TOLS[precision])
    _check(outs[0][-1], rdin, "delta_in", TOLS[precision])


def test_the_tensor_core_policies_round():
    """On data with full float32 mantissas tf32 and bf16 differ from the float32 policy (their
    rounding happened), bf16 more than tf32, all close to each other."""
    rng = np.random.default_rng(11)
    widths, B = [64, 64, 64], 2000
    acts = ["tanh", "identity"]
    Ws, bs, A_in, _, delta = _net(rng, widths, B, "identity")
    out = {}
    for prec in PRECISIONS:
        A_outs, Z_outs = _forward(A_in, Ws, bs, acts, prec)
        dWs, _, _ = _backward(delta, Ws, acts, A_in, A_outs, Z_outs, "identity", None, prec, want_din=False)
        out[prec] = (cupy.asnumpy(A_outs[-1]), cupy.asnumpy(dWs[0]))
    for k in range(2):
        f, t, b = out["float32"][k], out["tf32"][k], out["bf16"][k]
        assert not np.array_equal(f, t) and not np.array_equal(f, b)
        assert rel_err(t, f) < TOLS["tf32"] and rel_err(b, f) < TOLS["bf16"]
        assert rel_err(b, f) > rel_err(t, f)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("widths", [[33, 64, 64, 7], [9, 128, 70, 128, 3]])
def test_small_grids_carry_partials_across_tiles(widths, precision):
    """grid_blocks 1 and 3 at 11 tiles: each block walks several tiles (the cross-tile prefetch of
    the next tile's first layer and delta, the workspace read-modify-write); right for each grid,
    and bitwise equal on a repeat with the same grid."""
    tol = TOLS[precision]
    rng = np.random.default_rng(99 + len(widths))
    L = len(widths) - 1
    bm = ff.CONFIGS[64 if max(widths) <= 64 else 128][1]
    B = 10 * bm + 5
    acts = ["silu"] + ["tanh"] * (L - 1)
    Ws, bs, A_in, Z_in, delta = _net(rng, widths, B, "gelu")
    A_outs, Z_outs = _forward(A_in, Ws, bs, acts, precision)
    rdW, rdb, rdin, scale = _ref_backward(delta, Ws, acts, A_in, A_outs, Z_outs, "gelu", Z_in)
    codes = [ACT_CODES[a] for a in acts]
    for G in (1, 3):
        runs = []
        for _ in range(2):
            dWs = [_poison(W.shape) for W in Ws]
            dbs = [_poison((W.shape[0],)) for W in Ws]
            din = _poison(A_in.shape)
            ff.fused_backward(delta, Ws, codes, A_in, A_outs, Z_outs, dWs, dbs, delta_in_out=din,
                              act_code_in=ACT_CODES["gelu"], Z_in=Z_in, precision=precision, grid_blocks=G)
            runs.append(dWs + dbs + [din])
        for x, y in zip(*runs):
            assert bool((x.view(cupy.int32) == y.view(cupy.int32)).all()), f"grid {G}: two runs differ in bits"
        for i in range(L):
            _check_sum(runs[0][i], rdW[i], scale[i][0], f"grid {G} dWs[{i}]", tol)
            _check_sum(runs[0][L + i], rdb[i], scale[i][1], f"grid {G} dbs[{i}]", tol)
        _check(runs[0][-1], rdin, f"grid {G} delta_in", tol)
