"""What the GPU tests of the GEMM kernels share (tests/gpu/test_gemm_f32.py, test_gemm_tc.py,
test_gemm_tc_splitk.py, test_gemm_wgmma.py): random float32 operands on the device, outputs
poisoned with NaN (so that an element the kernel does not write shows), host copies that must
be fully written, float64 and emulated references with |A| |B| as the error scale, and bitwise
comparison.

Imports CuPy: a test module imports it only after `pytest.importorskip("cupy")`.
"""

import zlib

import cupy
import numpy as np

from gpubp import precision as P
from gpubp.activations import ACTIVATIONS
from gpubp.backends.numpy_backend import activation_backward_inplace, activation_forward

#: awkward sizes: 1, below and above a tile edge, long
SIZES = (1, 3, 17, 127, 129, 1000, 4097)
#: the inner sizes of `sparse_cases` (4097 only as M, to keep the numpy emulation cheap)
INNER = (1, 3, 17, 127, 129, 1000)


def sparse_cases(n):
    """n sparse (M, N, K, act) combinations covering every size and activation; the largest
    products are kept small enough for the numpy emulation."""
    out = []
    for i in range(n):
        M = SIZES[i % len(SIZES)]
        N = INNER[(5 * i + 1) % len(INNER)]
        K = INNER[(i + 2) % len(INNER)]
        if M * N * K > 3e8:
            K = 129
        out.append((M, N, K, ACTIVATIONS[i % len(ACTIVATIONS)]))
    return out


def case_id(c):
    return "M{}-N{}-K{}-{}".format(*c)


def seed(text):
    """A fixed seed per test case (so that a failure replays)."""
    return zlib.crc32(text.encode())


def rand(rng, shape, scale=1.0):
    """Standard normal float32 times `scale`, on the device."""
    return cupy.asarray((rng.standard_normal(shape) * scale).astype(np.float32))


def poison(shape):
    """A float32 device array of NaN."""
    return cupy.full(shape, np.nan, dtype=np.float32)


def host(x):
    return cupy.asnumpy(x)


def written(x, what):
    """`x` on the host in float64, after checking that every element was written (no NaN left)."""
    h = host(x)
    assert np.isfinite(h).all(), f"{what}: {np.count_nonzero(~np.isfinite(h))} elements not written"
    return h.astype(np.float64)


def same_bits(x, y):
    """Whether two float32 device arrays hold the same bits."""
    return bool((x.view(cupy.int32) == y.view(cupy.int32)).all())


def device_operands(seed, *shapes):
    """Standard normal float32 arrays of `shapes`, drawn on the device in that order from
    `cupy.random.RandomState(seed)` (for shapes too large for host references)."""
    rs = cupy.random.RandomState(seed)
    return [rs.standard_normal(shape, dtype=np.float32) for shape in shapes]


def device_fwd_err(out, A, W):
    """max |out - A @ W.T| / max(|A| |W.T|), in float64 on the device."""
    A64, W64 = A.astype(np.float64), W.astype(np.float64)
    scale = float((cupy.abs(A64) @ cupy.abs(W64).T).max())
    return float(cupy.abs(out - A64 @ W64.T).max()) / scale


def offset_buffer(rng, offset, shape, scale=1.0, poison=False):
    """`(view, flat)`: a view of `shape` (or of that many elements) at element `offset` into a flat
    NaN buffer 8 elements longer; the view holds `rand(rng, shape, scale)` unless `poison`."""
    shape = shape if isinstance(shape, tuple) else (shape,)
    n = int(np.prod(shape))
    flat = cupy.full(n + 8, np.nan, dtype=np.float32)
    v = flat[offset:offset + n].reshape(shape)
    if not poison:
        v[...] = rand(rng, shape, scale)
    return v, flat


def offset_view(rng, offset, shape, scale=1.0, poison=False):
    """The view of `offset_buffer`."""
    return offset_buffer(rng, offset, shape, scale, poison)[0]


def scaled_err(out, ref, scale):
    """max |out - ref| / max(scale) (scale: |A| |B|, elementwise, float64)."""
    s = float(np.max(scale, initial=0.0))
    e = float(np.max(np.abs(out - ref), initial=0.0))
    return e / s if s > 0 else e


def bf16_ulps(x, y):
    """How many bfloat16 ulps apart the bfloat16 values (float32 with the low 16 bits zero) `x` and
    `y` are, elementwise: the distance of their 16-bit patterns in the order of the values (-0
    and +0 are the same; across a power of two the ulp changes, the count does not)."""
    def ordered(v):
        b = (np.ascontiguousarray(v, np.float32).view(np.uint32) >> np.uint32(16)).astype(np.int64)
        mag = b & 0x7FFF
        return np.where(b & 0x8000, -mag, mag)
    return np.abs(ordered(x) - ordered(y))


def bf16_stored(got, want, what, flips=0.02, atol=0.0):
    """bf16 storage: every value a bfloat16 (low 16 bits zero), equal to the emulation's rounded
    value but where the float32 sums (another order than the emulation's) fell on the other side
    of a rounding boundary: then the neighbouring bfloat16 (one ulp apart: up to 2^-7 relative,
    2^-8 being half an ulp), in at most `flips` of the elements.
    `atol`: the bound on |kernel's float32 sum - emulation's| (summation-order noise, relative to
    |A| |B|, not to the value): where a sum cancels to far below that, the two roundings may lie
    more than one ulp apart, and then |got - want| <= atol + the larger of their bfloat16 ulps."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert not (got.view(np.uint32) & np.uint32(0xFFFF)).any(), f"{what}: not bfloat16 values"
    assert not (want.view(np.uint32) & np.uint32(0xFFFF)).any(), f"{what}: the reference is not bfloat16 values"
    off = got != want
    frac = float(off.mean()) if off.size else 0.0
    assert frac <= flips, f"{what}: {frac:.3%} differ from the emulation"
    far = bf16_ulps(got[off], want[off]) > 1
    if atol > 0 and far.any():
        g, w = got[off].astype(np.float64), want[off].astype(np.float64)
        ulp = np.spacing(np.maximum(np.abs(got[off]), np.abs(want[off]))).astype(np.float64) * 65536.0
        far &= ~(np.abs(g - w) <= atol + ulp)     # NaN, inf: far
    beyond = f" and atol {atol:.3g}" if atol else ""
    assert not far.any(), f"{what}: {int(far.sum())} values more than one bfloat16 ulp{beyond} away, first " \
                          f"{got[off][far][0]!r} for {want[off][far][0]!r}"


def bf16_activation(act, Z):
    """What the bf16 forward epilogue stores as A from its own stored Z: `to_bf16(g(Z))` with g in
    float32 (Z: the kernel's float32 Z, also as the float64 copy `written` returns)."""
    Z32 = np.asarray(Z, np.float32)
    assert np.array_equal(Z32, Z), "Z must hold float32 values"
    return P.to_bf16(activation_forward(act, Z32, np.empty_like(Z32)))


#: activations whose float32 value is one correctly rounded operation of z (or z itself): the same
#: on every device and in numpy, so their stored bfloat16 A must equal `bf16_activation` exactly
EXACT_ACTIVATIONS = ("identity", "relu", "leaky_relu")
#: float32 evaluations of the transcendental activations (numpy's, glibc's, CUDA's tanhf / expf with
#: their 1-2 ulp errors and FMA contraction) lie within ACT_F32_ULPS * 2^-24 * (|z| + |g(z)|) of the
#: exact g(z): numpy and the emulator measure under 2.5 (gelu's 1 + tanh cancels for z < 0, so the
#: bound follows |z|, not |g(z)|); 16 leaves room for the device's functions
ACT_F32_ULPS = 16.0


def bf16_activation_stored(got, act, Z, what):
    """The bf16 forward's stored A from its own stored Z (float64 copy of float32 values): for the
    exact activations bit for bit `bf16_activation(act, Z)`; for tanh, sigmoid, gelu and silu, whose
    float32 value differs by an ulp or more from device to device (and from numpy's), the bfloat16
    rounding (nearest even) of SOME value within ACT_F32_ULPS * 2^-24 * (|z| + |g(z)|) of the exact
    g(z) (float64): a different bfloat16 only where g(z) lies that close to a rounding midpoint (or
    where float32 itself cannot resolve g: gelu's far negative tail)."""
    got = np.asarray(got, np.float32)
    assert not (got.view(np.uint32) & np.uint32(0xFFFF)).any(), f"{what}: not bfloat16 values"
    want = bf16_activation(act, Z)
    if act in EXACT_ACTIVATIONS:
        bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert bad.size == 0, f"{what}: {bad.size} values differ from to_bf16(g(Z)) ({act} is exact in float32), " \
                              f"first {got.flat[bad[0]]!r} for {want.flat[bad[0]]!r}"
        return
    Z64 = np.asarray(Z, np.float64)
    g = activation_forward(act, Z64, np.empty_like(Z64))
    tol = ACT_F32_ULPS * 2.0 ** -24 * (np.abs(Z64) + np.abs(g))
    lo, hi = P.to_bf16((g - tol).astype(np.float32)), P.to_bf16((g + tol).astype(np.float32))
    assert ((want >= lo) & (want <= hi)).all(), f"{what}: numpy's float32 {act} outside the bound (ACT_F32_ULPS)"
    bad = np.flatnonzero(~((got >= lo) & (got <= hi)))
    assert bad.size == 0, f"{what}: {bad.size} values are no bfloat16 rounding of {act}(Z) to float32 accuracy, " \
                          f"first {got.flat[bad[0]]!r} (to_bf16(g(Z)) {want.flat[bad[0]]!r}, z {Z64.flat[bad[0]]!r})"


def refs(a, b, mode=None):
    """`(emul, exact, scale)` of the host float32 product a @ b: the emulation of tensor-core mode
    `mode` (gpubp.precision.matmul; None without a mode), float64, and |a| @ |b| (float64)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    emul = None if mode is None else P.matmul(a, b, mode).astype(np.float64)
    return emul, a64 @ b64, np.abs(a64) @ np.abs(b64)


def fwd_refs(A, W, mode=None):
    """`refs` of the forward GEMM A @ W.T (device operands)."""
    return refs(host(A), host(W).T.copy(), mode)


def check_gemm(out, emul, exact, scale, mode, what, emul_tol):
    """`out` within `emul_tol` of the emulation and within precision.TOLERANCE[mode] of float64,
    both relative to max(scale)."""
    e_emul = scaled_err(out, emul, scale)
    e_exact = scaled_err(out, exact, scale)
    assert e_emul <= emul_tol, f"{what} {mode}: {e_emul:.3g} from the emulation"
    assert e_exact <= P.TOLERANCE[mode], f"{what} {mode}: {e_exact:.3g} from float64"


def check_activation(A_out, Z, act, where=""):
    """The forward epilogue: A_out = g(Z) of the kernel's own Z (float64 host), in float32
    arithmetic (`where` is added to the message)."""
    A_ref = activation_forward(act, Z, np.empty_like(Z))
    e = np.abs(written(A_out, "A_out") - A_ref).max() / max(1.0, np.abs(A_ref).max())
    assert e < 1e-5, f"activation epilogue {act}{where}: {e:.3g}"


def bwd_data_operands(rng, act, M, N, K):
    """`(delta, W, A_prev, Z_prev, gprime)` of an input-gradient GEMM with activation `act`:
    delta (M x N), W (N x K, scaled by 1/sqrt(N)), the previous layer's A_prev = g(Z_prev)
    (M x K) on the device, and g'(Z_prev) on the host in float64."""
    delta, W = rand(rng, (M, N)), rand(rng, (N, K), 1 / np.sqrt(N))
    Zp = rng.standard_normal((M, K)).astype(np.float32)
    Ap = activation_forward(act, Zp.astype(np.float64), np.empty((M, K))).astype(np.float32)
    gprime = activation_backward_inplace(act, np.ones((M, K)), Ap.astype(np.float64), Zp.astype(np.float64))
    return delta, W, cupy.asarray(Ap), cupy.asarray(Zp), gprime


def bwd_data_refs(delta, W, gprime, mode=None):
    """`refs` of the input gradient (delta @ W) * g' (device delta and W)."""
    emul, exact, scale = refs(host(delta), host(W), mode)
    return None if emul is None else emul * gprime, exact * gprime, scale * np.abs(gprime)
