"""The numpy emulation of the precision modes: rounding bit patterns and GEMM error bounds."""

import numpy as np
import pytest

from gpubp import precision as P


def f32(bits):
    return np.array(bits, np.uint32).view(np.float32)


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


# ---------------------------------------------------------------- TF32 (cvt.rna: ties away)
@pytest.mark.parametrize("src, want", [
    (0x3F800000, 0x3F800000),   # 1.0 exact
    (0x3F800FFF, 0x3F800000),   # below the half ulp: down
    (0x3F801000, 0x3F802000),   # exact tie, even kept lsb: away (up), not to even
    (0x3F803000, 0x3F804000),   # exact tie, odd kept lsb: away (up)
    (0xBF801000, 0xBF802000),   # negative tie: away from zero (more negative)
    (0x3F801001, 0x3F802000),   # above the tie: up
    (0x3FFFF000, 0x40000000),   # carry into the exponent: 1.99987.. -> 2.0
    (0x00000001, 0x00000000),   # smallest subnormal: rounds to zero
    (0x00001000, 0x00002000),   # subnormal tie: away
    (0x007FFFFF, 0x00800000),   # largest subnormal: up to the smallest normal
    (0x7F7FE000, 0x7F7FE000),   # largest TF32 value: exact
    (0x7F7FFFFF, 0x7F800000),   # largest float32: past the largest TF32, rounds to inf
    (0xFF7FFFFF, 0xFF800000),   # ... and -inf
    (0x7F800000, 0x7F800000),   # inf passes
    (0xFF800000, 0xFF800000),   # -inf passes
    (0x80000000, 0x80000000),   # -0 keeps its sign
])
def test_tf32_bit_patterns(src, want):
    assert bits(P.to_tf32(f32([src])))[0] == want


@pytest.mark.parametrize("nan", [0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF])
def test_nan_stays_nan(nan):
    # 0x7F800001 would become inf if its payload bits were merely cleared
    assert np.isnan(P.to_tf32(f32([nan])))[0]
    assert np.isnan(P.to_bf16(f32([nan])))[0]


def test_tf32_keeps_10_mantissa_bits_and_is_idempotent():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10000).astype(np.float32) * np.float32(1e3)
    t = P.to_tf32(x)
    assert np.all(bits(t) & 0x1FFF == 0)
    assert np.array_equal(P.to_tf32(t), t)
    assert np.all(np.abs(t - x) <= np.abs(x) * 2.0 ** -11)


# ---------------------------------------------------------------- bf16 (ties to even)
@pytest.mark.parametrize("src, want", [
    (0x3F800000, 0x3F80),
    (0x3F807FFF, 0x3F80),       # below the tie: down
    (0x3F808000, 0x3F80),       # tie, even lsb: stays (to even)
    (0x3F818000, 0x3F82),       # tie, odd lsb: up to even
    (0xBF818000, 0xBF82),       # negative tie to even
    (0x3F808001, 0x3F81),       # above the tie: up
    (0x3FFF8000, 0x4000),       # carry into the exponent
    (0x00008000, 0x0000),       # subnormal tie, even: down
    (0x00018000, 0x0002),       # subnormal tie, odd: up
    (0x7F7F0000, 0x7F7F),       # largest bf16: exact
    (0x7F7FFFFF, 0x7F80),       # largest float32: inf
    (0x7F7F7FFF, 0x7F7F),       # just below the tie at the top: stays finite
    (0x7F800000, 0x7F80),
    (0xFF800000, 0xFF80),
    (0x80000000, 0x8000),
])
def test_bf16_bit_patterns(src, want):
    x = f32([src])
    assert P.bf16_bits(x)[0] == want
    assert bits(P.to_bf16(x))[0] == want << 16


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(5000).astype(np.float32),
                        rng.integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = x[np.isfinite(x)]
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(bits(P.to_bf16(x)), bits(want))


def _near_every_rounding_boundary(drop):
    """float32 bit patterns: every kept high part (all 2^(32 - drop) of them, both signs, every
    exponent: subnormals, the largest finite values, inf and NaN included) with the dropped low
    bits 0, just below half, half (a tie), just above half and all ones."""
    hi = np.arange(1 << (32 - drop), dtype=np.uint64) << np.uint64(drop)
    half = 1 << (drop - 1)
    low = np.array([0, half - 1, half, half + 1, (1 << drop) - 1], np.uint64)
    return (hi[:, None] | low[None, :]).ravel().astype(np.uint32).view(np.float32)


def _rounded_by_arithmetic(x, mbits, ties_even):
    """`x` rounded to `mbits` explicit mantissa bits in float64 arithmetic (an independent
    reference for the bit tricks): nearest, ties to even or away from zero; past the largest
    float32 to inf; subnormals on the float32 subnormal grid scaled by the dropped bits."""
    with np.errstate(invalid="ignore"):                          # signalling NaNs among x
        x64 = x.astype(np.float64)
    fin = np.isfinite(x64) & (x64 != 0)
    ax = np.where(fin, np.abs(x64), 1.0)
    _, e = np.frexp(ax)                        # ax = m 2^e, m in [0.5, 1)
    q = np.ldexp(1.0, np.maximum(e - 1, -126) - mbits)          # the spacing of the result
    t = ax / q                                  # exact: a power-of-two scaling
    fl = np.floor(t)
    frac = t - fl
    up = (frac > 0.5) | ((frac == 0.5) & ((np.mod(fl, 2) == 1) if ties_even else True))
    r = (fl + up) * q
    r = np.where(r > np.finfo(np.float32).max, np.inf, r)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(fin, np.copysign(r, x64), x64).astype(np.float32)


@pytest.mark.parametrize("name, drop, mbits, ties_even", [("tf32", 13, 10, False), ("bf16", 16, 7, True)])
def test_rounding_near_every_boundary_matches_arithmetic_rounding(name, drop, mbits, ties_even):
    x = _near_every_rounding_boundary(drop)
    got = P.to_tf32(x) if name == "tf32" else P.to_bf16(x)
    want = _rounded_by_arithmetic(x, mbits, ties_even)
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(got), nan)
    bad = np.flatnonzero(bits(got)[~nan] != bits(want)[~nan])
    assert bad.size == 0, [hex(v) for v in bits(x[~nan][bad[:4]])]


def test_bf16_near_every_boundary_matches_torch():
    torch = pytest.importorskip("torch")
    x = _near_every_rounding_boundary(16)
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    got = P.to_bf16(x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    fin = ~np.isnan(want)
    assert np.array_equal(bits(got)[fin], bits(want)[fin])


# ---------------------------------------------------------------- 3xTF32 split
def test_split_3xtf32():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(10000) * 10.0 ** rng.uniform(-20, 20, 10000)).astype(np.float32)
    hi, lo = P.split_3xtf32(x)
    assert np.array_equal(hi, P.to_tf32(x))
    assert np.all(bits(lo) & 0x1FFF == 0)
    assert np.array_equal(lo, P.to_tf32(x - hi))
    err = np.abs(x.astype(np.float64) - hi.astype(np.float64) - lo.astype(np.float64))
    assert np.all(err <= np.abs(x.astype(np.float64)) * 2.0 ** -22)
    # IEEE like the kernel: inf - inf is NaN; the largest float32 rounds to inf, remainder -inf
    hi, lo = P.split_3xtf32(f32([0x7F800000, 0xFF800000, 0x7F7FFFFF]))
    assert np.array_equal(hi, [np.inf, -np.inf, np.inf])
    assert np.isnan(lo[:2]).all() and lo[2] == -np.inf


# ---------------------------------------------------------------- GEMM emulation
SHAPES = [(1, 1, 1), (3, 17, 1), (17, 3, 127), (127, 129, 3), (129, 127, 17), (1, 129, 1000),
          (17, 3, 4097)]


def _operands(M, K, N, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)).astype(np.float32),
            rng.standard_normal((K, N)).astype(np.float32))


@pytest.mark.parametrize("prec", P.PRECISIONS)
@pytest.mark.parametrize("M, N, K", SHAPES)
def test_matmul_error_against_float64_within_the_stated_tolerance(prec, M, N, K):
    a, b = _operands(M, K, N)
    c = P.matmul(a, b, prec)
    assert c.dtype == np.float32 and c.shape == (M, N)
    assert P.relative_error(c, a, b) <= P.TOLERANCE[prec]


def test_tolerances_separate_the_modes():
    """The modes really differ by their rounding, and plain TF32 fails the 3xTF32 tolerance:
    the error tests can fail."""
    a, b = _operands(64, 512, 64, seed=3)
    err = {p: P.relative_error(P.matmul(a, b, p), a, b) for p in P.PRECISIONS}
    assert err["bf16"] > 4 * err["tf32"]
    assert err["tf32"] > P.TOLERANCE["3xtf32"]
    assert err["tf32"] > 50 * err["3xtf32"]
    assert err["3xtf32"] < 10 * err["float32"] + 1e-7


def test_tf32_matmul_is_exact_products_summed_per_step():
    a, b = _operands(5, 24, 4, seed=4)
    c = P.matmul(a, b, "tf32")
    ra, rb = P.to_tf32(a).astype(np.float64), P.to_tf32(b).astype(np.float64)
    want = np.zeros((5, 4), np.float32)
    for s in range(0, 24, 8):
        want += (ra[:, s:s + 8] @ rb[s:s + 8]).astype(np.float32)
    assert np.array_equal(c, want)
    # bf16: steps of 16 (the m16n8k16 k)
    ra, rb = P.to_bf16(a).astype(np.float64), P.to_bf16(b).astype(np.float64)
    want = (ra[:, :16] @ rb[:16]).astype(np.float32) + (ra[:, 16:] @ rb[16:]).astype(np.float32)
    assert np.array_equal(P.matmul(a, b, "bf16"), want)


def test_3xtf32_uses_hi_and_lo():
    a, b = _operands(8, 64, 8, seed=5)
    hi_only = P.matmul(P.to_tf32(a), P.to_tf32(b), "tf32")
    assert not np.array_equal(P.matmul(a, b, "3xtf32"), hi_only)


def test_bf16_matmul_matches_torch_on_the_same_rounded_operands():
    torch = pytest.importorskip("torch")
    a, b = _operands(33, 70, 21, seed=6)
    ours = P.matmul(a, b, "bf16")
    theirs = (torch.from_numpy(a).bfloat16().float() @ torch.from_numpy(b).bfloat16().float()).numpy()
    # same rounded operands, only the float32 summation order differs
    assert np.abs(ours - theirs).max() <= 1e-5 * (np.abs(a) @ np.abs(b)).max()


def test_bad_input():
    a, b = _operands(3, 4, 5)
    with pytest.raises(ValueError, match="precision"):
        P.matmul(a, b, "fp16")
    with pytest.raises(TypeError, match="precision"):
        P.check_precision(None)
    with pytest.raises(TypeError, match="a must be a float32"):
        P.matmul(a.astype(np.float64), b, "tf32")
    with pytest.raises(ValueError, match="shapes"):
        P.matmul(a, a, "tf32")
    with pytest.raises(TypeError, match="x must be a float32"):
        P.to_tf32(np.arange(3))


# ---------------------------------------------------------------- the fused kernel family's emulation
def _torch_run(X, layers, acts, delta_last, act_in, Z_in):
    """dLoss/d(everything) in float64 with PyTorch autograd, for loss = sum(Z_L * delta_last)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    fns = {"identity": lambda z: z, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu,
           "leaky_relu": lambda z: F.leaky_relu(z, 0.01), "gelu": lambda z: F.gelu(z, approximate="tanh"),
           "silu": F.silu}
    zin = torch.tensor(Z_in, dtype=torch.float64, requires_grad=True)
    a = fns[act_in](zin)
    Ws = [torch.tensor(W, dtype=torch.float64, requires_grad=True) for W, _ in layers]
    bs = [torch.tensor(b, dtype=torch.float64, requires_grad=True) for _, b in layers]
    As = []
    for W, b, act in zip(Ws, bs, acts):
        z = a @ W.T + b
        a = fns[act](z)
        As.append(a)
    (z * torch.tensor(delta_last, dtype=torch.float64)).sum().backward()
    return ([x.detach().numpy() for x in As], [W.grad.numpy() for W in Ws], [b.grad.numpy() for b in bs],
            zin.grad.numpy())


def _family_case(seed, widths=(7, 33, 16, 5), B=77, acts=("gelu", "tanh", "identity"), act_in="silu"):
    rng = np.random.default_rng(seed)
    Z_in = rng.standard_normal((B, widths[0])).astype(np.float32)
    torch = pytest.importorskip("torch")
    X = torch.nn.functional.silu(torch.tensor(Z_in)).numpy() if act_in == "silu" else Z_in
    layers = [((rng.standard_normal((widths[i + 1], widths[i])) / np.sqrt(widths[i])).astype(np.float32),
               (0.5 * rng.standard_normal(widths[i + 1])).astype(np.float32)) for i in range(len(widths) - 1)]
    delta = rng.standard_normal((B, widths[-1])).astype(np.float32)
    return X.astype(np.float32), layers, list(acts), delta, act_in, Z_in


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("prec, tol", [("float32", 1e-5), ("tf32", 5e-3), ("bf16", 4e-2)])
def test_fused_reference_against_torch_float64(prec, tol):
    X, layers, acts, delta, act_in, Z_in = _family_case(1)
    r = P.fused_reference(X, layers, acts, delta, prec, act_in=act_in, Z_in=Z_in)
    As, dWs, dbs, din = _torch_run(X, layers, acts, delta, act_in, Z_in)
    errs = [_rel(r["A"][i], As[i]) for i in range(3)] + [_rel(r["dW"][i], dWs[i]) for i in range(3)]
    errs += [_rel(r["db"][i], dbs[i]) for i in range(3)] + [_rel(r["delta_in"], din)]
    assert max(errs) < tol, errs
    if prec != "float32":   # it really rounds: far from the float32 result
        f = P.fused_reference(X, layers, acts, delta, "float32", act_in=act_in, Z_in=Z_in)
        assert _rel(r["dW"][0], f["dW"][0]) > 20 * 1e-6
    for key in ("A", "Z", "dW", "db"):
        assert all(x.dtype == np.float32 for x in r[key])


def test_fused_reference_is_exact_on_bf16_values():
    """Small integers and halves are bf16 values and their sums exact in float32: every policy
    gives the float64 answer bit for bit (identity activations), so the emulation rounds the
    operands of the products and, in bf16, what it stores (exact here but for the last outputs,
    which pass 256 and are stored rounded to bf16) and nothing else."""
    rng = np.random.default_rng(3)
    X = rng.integers(-4, 5, (40, 6)).astype(np.float32)
    layers = [(rng.integers(-3, 4, (9, 6)).astype(np.float32) / 2, rng.integers(-3, 4, 9).astype(np.float32)),
              (rng.integers(-3, 4, (4, 9)).astype(np.float32) / 2, rng.integers(-3, 4, 4).astype(np.float32))]
    delta = rng.integers(-2, 3, (40, 4)).astype(np.float32)
    W0, b0 = (x.astype(np.float64) for x in layers[0])
    W1, b1 = (x.astype(np.float64) for x in layers[1])
    A0 = X @ W0.T + b0
    d0 = delta @ W1
    for prec in ("float32", "tf32", "bf16"):
        r = P.fused_reference(X, layers, ["identity", "identity"], delta, prec, act_in="identity")
        A1 = (A0 @ W1.T + b1).astype(np.float32)
        assert np.array_equal(r["A"][1], P.to_bf16(A1) if prec == "bf16" else A1)
        assert np.array_equal(r["A"][0], A0) and np.array_equal(r["Z"][0], A0)
        assert np.array_equal(r["dW"][1], delta.T.astype(np.float64) @ A0)
        assert np.array_equal(r["dW"][0], d0.T @ X)
        assert np.array_equal(r["db"][0], d0.sum(0)) and np.array_equal(r["delta_in"], d0 @ W0)


def test_fused_reference_rounds_products_and_what_bf16_stores():
    """bf16: the forward product is the emulated bf16 GEMM of the float32 input; the bias add and
    the activation are float32 on its result, and Z, A and the deltas between layers are stored
    rounded to bf16 (db sums the stored deltas; delta_last is used as given)."""
    X, layers, acts, delta, _, _ = _family_case(2, acts=("tanh", "relu", "sigmoid"))
    r = P.fused_reference(X, layers, acts, delta, "bf16")
    W0, b0 = layers[0]
    z0 = P.to_bf16(P.matmul(X, np.ascontiguousarray(W0.T), "bf16") + b0)
    assert np.array_equal(r["Z"][0], z0) and np.array_equal(r["A"][0], P.to_bf16(np.tanh(z0)))
    assert r["delta_in"] is None
    assert np.array_equal(r["db"][2], delta.sum(0, dtype=np.float32))
    d1 = P.matmul(delta, layers[2][0], "bf16")
    d1 *= r["A"][1] > 0                                        # relu's g'
    d1 = P.to_bf16(d1)
    assert np.array_equal(r["db"][1], d1.sum(0, dtype=np.float32))
    for key in ("A", "Z"):
        assert not any((x.view(np.uint32) & 0xFFFF).any() for x in r[key])


def test_fused_reference_bad_input():
    X, layers, acts, delta, _, _ = _family_case(0)
    with pytest.raises(ValueError, match="3xtf32"):
        P.fused_reference(X, layers, acts, delta, "3xtf32")
    with pytest.raises(ValueError, match="activations"):
        P.fused_reference(X, layers, acts[:2], delta, "bf16")
    with pytest.raises(ValueError, match="delta_last"):
        P.fused_reference(X, layers, acts, delta[:, :2], "bf16")
    with pytest.raises(ValueError, match=r"layers\[1\]"):
        P.fused_reference(X, [layers[0], layers[0]], acts[:2], delta, "bf16")
    with pytest.raises(TypeError, match="float32"):
        P.fused_reference(X.astype(np.float64), layers, acts, delta, "bf16")


@pytest.mark.parametrize("prec", ["float32", "tf32", "bf16"])
def test_fused_reference_is_the_numpy_backends_layer_ops(prec):
    """The emulation of a fused run is, bit for bit, the numpy backend's layer ops chained in the
    same precision: the fused family's policies have the spec's semantics of each mode (bf16:
    with its storage rounding)."""
    from gpubp.backends.numpy_backend import NumpyBackend

    be = NumpyBackend()
    X, layers, acts, delta, act_in, Z_in = _family_case(5, acts=("gelu", "sigmoid", "leaky_relu"))
    r = P.fused_reference(X, layers, acts, delta, prec, act_in=act_in, Z_in=Z_in)
    a, As, Zs = X, [], []
    for (W, b), act in zip(layers, acts):
        A_out, Z_out = np.empty((X.shape[0], W.shape[0]), np.float32), np.empty((X.shape[0], W.shape[0]), np.float32)
        be.dense_forward(a, W, b, act, A_out, Z_out, precision=prec)
        As.append(A_out)
        Zs.append(Z_out)
        a = A_out
    d = delta
    for i in range(len(layers) - 1, -1, -1):
        W = layers[i][0]
        dW, db = np.empty_like(W), np.empty(W.shape[0], np.float32)
        dp = np.empty((X.shape[0], W.shape[1]), np.float32)
        prev_act, Zp = (acts[i - 1], Zs[i - 1]) if i > 0 else (act_in, Z_in)
        be.dense_backward(d, X if i == 0 else As[i - 1], W, dW, db, dp, prev_act, Zp, precision=prec)
        assert np.array_equal(r["dW"][i], dW) and np.array_equal(r["db"][i], db), i
        d = dp
    for i in range(len(layers)):
        assert np.array_equal(r["A"][i], As[i]) and np.array_equal(r["Z"][i], Zs[i])
    assert np.array_equal(r["delta_in"], d)


# ---------------------------------------------------------------- the GPU tests' bf16 comparisons
def _gemm_checks():
    """tests/support/gemm_checks.py (which the GPU tests share) loaded on the CPU, with a stand-in
    `cupy` module for its import only (its numpy helpers are what is checked here); not kept in
    sys.modules, so the GPU tests still import it with the real CuPy."""
    import importlib.util
    import sys
    import types
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_gemm_checks_on_cpu",
                                                  Path(__file__).parent / "support" / "gemm_checks.py")
    mod = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = types.ModuleType("cupy")
    try:
        spec.loader.exec_module(mod)
    finally:
        if saved is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    return mod


def test_bf16_stored_accepts_a_rounding_flip_to_the_neighbouring_bf16_and_nothing_more():
    """A kernel whose float32 sums land on the other side of a bf16 rounding boundary stores the
    neighbouring bfloat16, one ulp away: up to 2^-7 relative (2^-8 is half an ulp).  The check
    held it to 2^-8 relative, which only a value just below a power of two meets: correct bf16
    kernels failed on their first flip."""
    gc = _gemm_checks()
    rng = np.random.default_rng(7)
    want = P.to_bf16((rng.standard_normal(4000) * 10.0 ** rng.uniform(-30, 30, 4000)).astype(np.float32))
    want[:4] = [1.0, -1.0, 2.0 ** -126, 0.0]
    up = P.to_bf16((want.view(np.uint32) + np.uint32(0x10000)).view(np.float32))    # + one ulp in magnitude
    down = (want.view(np.uint32) - np.uint32(0x10000)).view(np.float32)
    down[3] = -np.float32(2.0 ** -133)                   # below +0: the negative neighbour
    for got in (up, down):
        flipped = want.copy()
        flipped[::50] = got[::50]                        # 2% of the elements one ulp off
        gc.bf16_stored(flipped, want, "one-ulp flips")
        assert np.all(gc.bf16_ulps(flipped, want)[::50] == 1)
    assert gc.bf16_ulps(np.float32([-0.0]), np.float32([0.0]))[0] == 0
    two = want.copy()
    two[10] = (want[10:11].view(np.uint32) + np.uint32(0x20000)).view(np.float32)[0]
    with pytest.raises(AssertionError, match="more than one bfloat16 ulp"):
        gc.bf16_stored(two, want, "two ulps")
    many = want.copy()
    many[::40] = up[::40]                                # 2.5% > flips
    with pytest.raises(AssertionError, match="differ from the emulation"):
        gc.bf16_stored(many, want, "too many")
    with pytest.raises(AssertionError, match="not bfloat16"):
        gc.bf16_stored(want + np.float32(2.0 ** -20), want, "float32 values")


def test_bf16_activation_is_the_float32_epilogue_from_the_kernels_z():
    """The A_out reference of the bf16 forward tests: `to_bf16(g(Z))` in float32 from the kernel's Z,
    which the tests hold as the float64 copy `written` returns (`to_bf16` refuses float64: the
    reference raised a TypeError for every bf16 case before any comparison)."""
    gc = _gemm_checks()
    from gpubp.backends.numpy_backend import activation_forward

    rng = np.random.default_rng(8)
    Z32 = P.to_bf16(rng.standard_normal((33, 17)).astype(np.float32))
    for act in ("identity", "relu", "tanh", "gelu", "silu", "sigmoid"):
        got = gc.bf16_activation(act, Z32.astype(np.float64))
        assert got.dtype == np.float32
        assert np.array_equal(got, P.to_bf16(activation_forward(act, Z32, np.empty_like(Z32))))
    with pytest.raises(TypeError, match="float32"):
        P.to_bf16(activation_forward("tanh", Z32.astype(np.float64), np.empty(Z32.shape)))
    with pytest.raises(AssertionError, match="float32 values"):
        gc.bf16_activation("relu", Z32.astype(np.float64) + 1e-12)


def test_bf16_stored_atol_admits_a_cancelled_sum_and_no_more():
    """A sum that cancels to far below its |A| |B| scale carries the float32 summation-order noise of
    the scale (a few ulps of the partial sums, on any device), which is many bfloat16 ulps of the
    small result: with `atol` (that noise bound) such values pass, a value further off does not."""
    gc = _gemm_checks()
    want = P.to_bf16(np.linspace(-1, 1, 101, dtype=np.float32))
    want[0] = P.to_bf16(np.float32(-6.4373016e-06))
    got = want.copy()
    got[0] = P.to_bf16(np.float32(-6.4373016e-06 - 6e-8))     # 1 float32 ulp of an O(1) partial sum
    assert gc.bf16_ulps(got, want)[0] > 1
    with pytest.raises(AssertionError, match="more than one bfloat16 ulp"):
        gc.bf16_stored(got, want, "no atol")             # 1 of 101 differs: under `flips`
    gc.bf16_stored(got, want, "cancelled", atol=3e-5)
    got[0] = P.to_bf16(np.float32(-6.4373016e-06 - 1e-4))
    with pytest.raises(AssertionError, match="more than one bfloat16 ulp and atol"):
        gc.bf16_stored(got, want, "too far", atol=3e-5)
    got[0] = np.float32(np.inf)
    with pytest.raises(AssertionError, match="more than one bfloat16 ulp and atol"):
        gc.bf16_stored(got, want, "inf", atol=3e-5)


def test_bf16_activation_stored_exact_for_exact_activations_float32_accurate_for_the_others():
    """The bf16 forward's A from its own Z: identity / relu / leaky_relu bit for bit; tanh, sigmoid,
    gelu and silu (whose float32 values differ by an ulp or more between CUDA and numpy) a bfloat16
    rounding of g(Z) to float32 accuracy: a float32 evaluation with a few ulps of error passes, one
    from the unrounded Z or with the wrong constant does not."""
    gc = _gemm_checks()
    from gpubp.backends.numpy_backend import activation_forward

    rng = np.random.default_rng(12)
    Z = P.to_bf16((rng.standard_normal(20000) * 3).astype(np.float32))
    Zraw = Z + (rng.uniform(-1, 1, Z.size) * np.abs(Z) * 2.0 ** -8).astype(np.float32)   # within half an ulp
    f32 = np.float32
    for act in ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu"):
        g = activation_forward(act, Z, np.empty_like(Z))
        gc.bf16_activation_stored(P.to_bf16(g), act, Z.astype(np.float64), act)
        if act not in gc.EXACT_ACTIVATIONS:   # (identity, relu: the same bits from the unrounded Z)
            off = P.to_bf16(activation_forward(act, Zraw, np.empty_like(Z)))
            with pytest.raises(AssertionError, match="no bfloat16 rounding"):
                gc.bf16_activation_stored(off, act, Z.astype(np.float64), act + " of the unrounded Z")
        if act in gc.EXACT_ACTIVATIONS:       # one value one bfloat16 ulp off: refused
            flip = P.to_bf16(g)
            flip[7] = (flip[7:8].view(np.uint32) + np.uint32(0x10000)).view(f32)[0]
            with pytest.raises(AssertionError, match="exact in float32"):
                gc.bf16_activation_stored(flip, act, Z.astype(np.float64), act)
        else:                                 # a few float32 ulps of evaluation error: accepted
            noisy = (g.astype(np.float64) * (1 + 4 * 2.0 ** -24 * rng.choice([-1, 1], g.size))).astype(f32)
            gc.bf16_activation_stored(P.to_bf16(noisy), act, Z.astype(np.float64), act)
    # gelu with the erf form's constant in the tanh: refused
    c, k = f32(0.7978845608028654), f32(0.0447)
    wrong = f32(0.5) * Z * (f32(1) + np.tanh(c * (Z + k * Z * Z * Z)))
    with pytest.raises(AssertionError, match="no bfloat16 rounding of gelu"):
        gc.bf16_activation_stored(P.to_bf16(wrong), "gelu", Z.astype(np.float64), "gelu, wrong k")


# ---------------------------------------------------------------- 3xTF32: the split's bound, the terms' order
def test_split_3xtf32_error_bound_down_to_the_subnormals():
    """|x - hi - lo| <= 2^-22 |x| for |x| >= 2^-115; below, x - hi is subnormal and lo lies on
    TF32's subnormal grid (2^-136): at most 2^-137 off (the module docstring's statement)."""
    rng = np.random.default_rng(9)
    exps = rng.integers(0, 30, 200000, dtype=np.uint64).astype(np.uint32)        # |x| < 2^-97
    mant = rng.integers(0, 1 << 23, 200000, dtype=np.uint64).astype(np.uint32)
    x = ((exps << np.uint32(23)) | mant).view(np.float32)
    x[:1000] *= -1
    hi, lo = P.split_3xtf32(x)
    x64 = np.abs(x.astype(np.float64))
    err = np.abs(x.astype(np.float64) - hi.astype(np.float64) - lo.astype(np.float64))
    big = x64 >= 2.0 ** -115
    assert big.any() and (~big).any()
    assert np.all(err[big] <= x64[big] * 2.0 ** -22)
    assert np.all(err[~big] <= 2.0 ** -137)
    assert np.any(err[~big] > x64[~big] * 2.0 ** -22)          # the relative bound does fail there


def test_3xtf32_adds_the_three_products_per_step_small_terms_first():
    """Per k step of 8: lo_a hi_b, then hi_a lo_b, then hi_a hi_b, each step sum rounded to float32
    and added on its own (the order of the kernel's three mma's); another order gives other bits,
    so this pins the order the GPU tests compare with."""
    rng = np.random.default_rng(10)
    a = (rng.standard_normal((40, 37)) * 10.0 ** rng.uniform(-2, 2, (40, 37))).astype(np.float32)
    b = rng.standard_normal((37, 30)).astype(np.float32)
    ah, al = P.split_3xtf32(a)
    bh, bl = P.split_3xtf32(b)

    def stepped(order):
        acc = np.zeros((40, 30), np.float32)
        for s in range(0, 37, 8):
            for x, y in order:
                acc += (x[:, s:s + 8].astype(np.float64) @ y[s:s + 8].astype(np.float64)).astype(np.float32)
        return acc

    c = P.matmul(a, b, "3xtf32")
    assert np.array_equal(c, stepped([(al, bh), (ah, bl), (ah, bh)]))
    assert not np.array_equal(c, stepped([(ah, bh), (al, bh), (ah, bl)]))     # large term first
    # one float32 step sum of all three terms is another computation too
    fused = np.zeros((40, 30), np.float32)
    for s in range(0, 37, 8):
        t = sum(x[:, s:s + 8].astype(np.float64) @ y[s:s + 8].astype(np.float64)
                for x, y in [(al, bh), (ah, bl), (ah, bh)])
        fused += t.astype(np.float32)
    assert not np.array_equal(c, fused)
    assert P.relative_error(c, a, b) <= P.TOLERANCE["3xtf32"]


def test_operands_rounding_past_the_largest_value_make_infinite_or_nan_products():
    """The spec's overflow thresholds: (2 - 2^-11) 2^127 in tf32 (3xtf32: NaN), (2 - 2^-8) 2^127 in
    bf16; one float32 ulp below them the products stay finite."""
    for prec, edge in (("tf32", 0x7F7FF000), ("3xtf32", 0x7F7FF000), ("bf16", 0x7F7F8000)):
        assert f32([edge])[0] == (2 - 2.0 ** (-11 if "tf32" in prec else -8)) * 2.0 ** 127
        a = f32([[edge, 0], [edge - 1, 0]])
        b = np.array([[0.25, 1.0], [0.0, 1.0]], np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            c = P.matmul(a, b, prec)
        assert np.isfinite(c[1]).all(), prec
        if prec == "3xtf32":
            assert np.isnan(c[0]).all()
        else:
            assert np.array_equal(c[0], [np.inf, np.inf]), (prec, c[0])


@pytest.mark.parametrize("M, N", [(17, 9), (64, 64)])
@pytest.mark.parametrize("data", ["uniform01", "wide"])
def test_3xtf32_keeps_its_5e6_on_same_signed_and_wide_range_operands_at_k_4097(M, N, data):
    """The promise (<= 5e-6 relative) on the data that is hardest for float32 sums: every product
    of one sign (the rounding errors of the float32 accumulator do not cancel; measured 1.5e-6 to
    1.9e-6, where standard normal operands give 1e-7) and magnitudes over 2^60, at K = 4097 (one
    step of 8 short of a whole number).  Plain TF32 fails it on the same data."""
    rng = np.random.default_rng(11)
    K = 4097
    a = rng.uniform(0, 1, (M, K))
    b = rng.uniform(0, 1, (K, N)) if data == "uniform01" else rng.uniform(0.5, 1, (K, N))
    if data == "wide":
        a = a * 2.0 ** rng.integers(-30, 30, (M, K))
    a, b = a.astype(np.float32), b.astype(np.float32)
    assert P.relative_error(P.matmul(a, b, "3xtf32"), a, b) <= P.TOLERANCE["3xtf32"]
    assert P.relative_error(P.matmul(a, b, "tf32"), a, b) > P.TOLERANCE["3xtf32"]


def test_round_operand_per_mode():
    """What each mode's tensor cores see: float32 unchanged, tf32 and 3xtf32's hi part to_tf32,
    bf16 to_bf16 (torch's bfloat16 rounding); an unknown mode refused."""
    x = _operands(5, 7, 1, seed=11)[0]
    np.testing.assert_array_equal(P.round_operand(x, "float32"), x)
    np.testing.assert_array_equal(P.round_operand(x, "tf32"), P.to_tf32(x))
    np.testing.assert_array_equal(P.round_operand(x, "3xtf32"), P.split_3xtf32(x)[0])
    np.testing.assert_array_equal(P.round_operand(x, "bf16"), P.to_bf16(x))
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(P.round_operand(x, "bf16"), torch.from_numpy(x).bfloat16().float().numpy())
    with pytest.raises(ValueError, match="precision"):
        P.round_operand(x, "fp16")


def test_relative_error_values():
    """max |c - a @ b| / max (|a| @ |b|), by hand: operands below 1 (the scale is not floored at 1)
    and all-zero operands (scale 0: the absolute error, not 0/0)."""
    a = np.full((2, 3), 0.1)
    b = np.full((3, 2), 0.1)
    c = a @ b + np.array([[0.0, 0.003], [0.0, 0.0]])
    assert P.relative_error(c, a, b) == pytest.approx(0.003 / 0.03)
    z = np.zeros((2, 3))
    assert P.relative_error(np.full((2, 2), 0.5), z, z.T) == 0.5
    assert P.relative_error(np.zeros((2, 2)), z, z.T) == 0.0


@pytest.mark.parametrize("prec", ["tf32", "3xtf32", "bf16"])
def test_matmul_does_not_depend_on_how_its_steps_are_grouped(prec):
    """`_stepped_sum` sums several mma steps at a time, as many as ~64 MB of partials allow: a product
    large enough to take several groups (2048 x 1024 outputs) gives, row for row, the bits of the same rows
    multiplied alone (one group), including a last step that K fills only in part."""
    rng = np.random.default_rng(5)
    K = 5 * P.MMA_K[prec] + 3
    a = rng.standard_normal((2048, K)).astype(np.float32)
    b = rng.standard_normal((K, 1024)).astype(np.float32)
    full = P.matmul(a, b, prec)
    for rows in (slice(0, 3), slice(1500, 1501), slice(2045, 2048)):
        assert np.array_equal(full[rows], P.matmul(a[rows], b, prec))


@pytest.mark.parametrize("prec", ["float32", "bf16"])
def test_fused_reference_without_act_in_gives_every_layers_gradients(prec):
    """Without `act_in` no delta entering the run is computed (delta_in None), and every layer's dW and db
    are those computed with it."""
    X, layers, acts, delta, act_in, Z_in = _family_case(1)
    with_in = P.fused_reference(X, layers, acts, delta, prec, act_in=act_in, Z_in=Z_in)
    alone = P.fused_reference(X, layers, acts, delta, prec)
    assert alone["delta_in"] is None and with_in["delta_in"] is not None
    for key in ("dW", "db"):
        assert all(x is not None and np.array_equal(x, y) for x, y in zip(alone[key], with_in[key]))
