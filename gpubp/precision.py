"""Numpy emulation of the tensor-core precision modes (pure numpy, no GPU).

The modes ("float32", "tf32", "bf16", "3xtf32") differ in how GEMM operands
are rounded before they are multiplied, and "bf16" also in what a step stores.
This module rounds float32 arrays exactly as the kernels of `kernels/gemm_tc.cu`
do, and multiplies matrices the way each mode's tensor-core GEMM does, so CPU
tests pin the semantics and the GPU tests compare the kernels with it.

Storage (`round_stored`): "float32", "tf32" and "3xtf32" store float32 values.
"bf16" is mixed precision as autocast users know it: float32 master weights,
biases, gradients, optimizer state and loss; every stored activation Z and A of
every layer and every stored delta (dLoss/dZ of every layer, dLoss/dX where a
step has an input gradient) is rounded to bfloat16 (`to_bf16`) at the moment it
is written, in float32 buffers (a bf16 value is exact in float32, so 16-bit
buffers would hold the same numbers).  Precisely, per layer, with acc the
float32 product of the bf16-rounded operands:
  - forward: Z = to_bf16(acc + b) (b float32, added before the one rounding);
    A = to_bf16(g(Z)) computed in float32 from the rounded Z (also where Z is not
    kept, and for identity, where A = Z);
  - loss: computed in float32 from the rounded output A_L; delta_L =
    to_bf16(dLoss/dA_L * g'_L), rounded once, after any sample weighting;
  - backward: delta_prev = to_bf16((delta W) * g'), rounded once after the g'
    product (dLoss/dA is never stored); g' is read from the stored, rounded A
    (relu, leaky_relu, sigmoid, tanh) or Z (gelu, silu); dW = delta^T A_prev and
    db = the float32 column sum of delta, both from the rounded stored values and
    kept in float32 (not rounded).
Where this differs from eager `torch.autocast(dtype=torch.bfloat16)`: autocast
also casts the bias to bf16 before the add, rounds dW and db to bf16 (its GEMMs
write bf16 gradients that are then upcast) and stores dLoss/dA in bf16 before
the separate g' kernel rounds again; gpubp keeps b, dW and db in float32 and
rounds each delta once, in the fused epilogue.  With bf16-representable biases
the stored Z, A and deltas of relu networks are autocast's bit for bit up to the
float32 order of the sums.  A network's outputs (`forward`, `predict`) in "bf16"
are the rounded A_L, as autocast returns bf16 outputs: what the loss saw.

Rounding (bit-exact with the kernels' conversions):
  - `to_tf32(x)`: what PTX `cvt.rna.tf32.f32` gives: 10 explicit mantissa bits,
    round to nearest with ties AWAY from zero (".rna"), returned as float32
    whose low 13 bits are zero.  Overflow past the largest TF32 value rounds to
    +-inf; inf passes through; NaN stays NaN (its payload is not kept).
    Subnormals are rounded like normal numbers (no flush here; note that the
    kernels are compiled with -ftz=true, which affects float32 arithmetic such as
    `x - hi`, not this conversion).  (As compiled for sm_80/86 the conversion adds
    half an ulp to the bits of finite values and clears the low 13 bits of every
    value, so a NaN whose payload lies only in those bits comes out as +-inf there;
    no float32 arithmetic makes such a NaN, and this is not modelled.)
  - `to_bf16(x)`: what PTX `cvt.rn.bf16x2.f32` gives: 7 explicit mantissa bits,
    round to nearest, ties to EVEN, as float32 with the low 16 bits zero
    (`bf16_bits` gives the 16-bit patterns).  Same inf/NaN/overflow rules.
  - `split_3xtf32(x)`: (hi, lo) with hi = to_tf32(x), lo = to_tf32(x - hi);
    x - hi is exact in float32, and |x - hi - lo| <= 2^-22 |x| for |x| >= 2^-115
    (below, x - hi is subnormal and lo is on TF32's subnormal grid, 2^-136: the
    error is at most 2^-137).  As in the kernel, an infinite x gives lo = NaN
    (inf - inf), and a finite x that rounds to inf (|x| from halfway between the
    largest TF32 value and 2^128 up) gives lo = -+inf: 3xTF32 GEMMs of such inputs are NaN.
    (The kernels compute x - hi with -ftz=true, subnormal inputs and result
    flushed to zero, which this does not model: where x - hi is subnormal their
    lo is 0; where x is subnormal it is 0 - hi, that is 0 if hi is subnormal and
    -hi if x rounds up to 2^-126, so such an x counts as 0 in lo_a hi_b + hi_a hi_b.)

Products (`matmul(a, b, precision)`, a (M, K) @ b (K, N), float32 in and out):
  - "float32": numpy's float32 matmul (BLAS order; the float32 reference).
  - "tf32" / "bf16": operands rounded as above.  A product of two TF32 values
    (11-bit significands) or two bf16 values (8-bit) is exact in float32, so the
    products carry no error.  The reduction follows the kernels' order: K is cut
    into consecutive steps of the mma's k (8 for tf32, 16 for bf16); each step's
    products are summed in float64 (at most 16 exact products: exact unless they
    span more than about 30 binades, where float64 rounds once before float32
    does) and rounded once to float32, and the steps are added to a float32
    accumulator in increasing k.  The tensor core's internal adder is not IEEE (its rounding of
    the in-step sum is unspecified), so the kernels agree with this to within a
    few float32 ulps of the step sums, not bitwise.  Those differences add up
    over a reduction, and in one direction where the hardware truncates, as
    published measurements of V100/A100 tensor cores found (operands aligned to
    the largest exponent, the sum rounded toward zero): modelling that, with 1 to
    3 extra alignment bits and blocks of 4 or 8 products, puts a correct 3xtf32
    GEMM 2e-6 to 7e-6 (relative to max |A| |B|) from this emulation and from
    float64 at K = 4096 in one accumulator, errors leaning toward zero (about 84%
    of them), against 7e-7 with no extra bits (the truncations then cancel); tf32
    and bf16 stay below 2.2e-6.  (A numpy model against this module, not a GPU.)
  - "3xtf32": hi/lo split of both operands; each k step adds, in this order,
    lo_a hi_b, then hi_a lo_b, then hi_a hi_b (small terms first, as the
    kernel issues its three mma's), each step sum rounded to float32 and added
    to the float32 accumulator.  lo_a lo_b is dropped.

Split-K (not emulated): at small batches the CUDA kernels cut the reduction of the forward
and input-gradient GEMMs into S contiguous slices of whole 16-wide k-tiles
(`cuda_gemm_tc.fwd_splits` / `bwd_data_splits`, from the shapes and the SM count); each slice
is summed as above into its own float32 accumulator starting at zero, and the S slice sums are
added in float32 in slice order 0, 1, ..., S-1 (the weight gradient's batch splits likewise).
That regroups the float32 additions only: operands and step sums are those above, so the
kernels stay within the same few-ulp distance of `matmul`, which keeps one accumulator.

Error of a GEMM against float64 is measured by `relative_error`:
max_ij |C - C64|_ij / max_ij (|A| |B|)_ij, the normwise form of the classical
bound |C - C64| <= gamma |A| |B|.  The tolerances the tests hold each mode to are
`TOLERANCE` (derivation: u = 2^-11 for tf32 and 2^-8 for bf16; one product of two
rounded operands is off by at most 2u + u^2; float32 accumulation adds about
(K / k) 2^-24 in the worst case and far less for random data).
"""

from __future__ import annotations

import numpy as np

#: every precision mode, the default first
PRECISIONS = ("float32", "tf32", "bf16", "3xtf32")

#: the k of each mode's mma instruction (the length of one exactly-summed step)
MMA_K = {"tf32": 8, "3xtf32": 8, "bf16": 16}

#: largest `relative_error` allowed against float64 for K up to a few thousand
TOLERANCE = {"float32": 1e-6, "tf32": 1.5e-3, "bf16": 1e-2, "3xtf32": 5e-6}

_TF32_DROP = 13      # low mantissa bits cleared by TF32
_BF16_DROP = 16


def check_precision(precision, what: str = "precision") -> str:
    """Return `precision` if it names a mode, else raise a ValueError naming the choices."""
    if not isinstance(precision, str):
        raise TypeError(f"{what} must be a string, one of {', '.join(PRECISIONS)}; "
                        f"got {type(precision).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown {what} {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return str(precision)   # a str subclass (numpy's str_) as the plain name: reprs, JSON, comparisons


def _as_f32(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be a float32 array, got {a.dtype}")
    return a


def _round_bits(x: np.ndarray, drop: int, ties_even: bool) -> np.ndarray:
    """Round float32 `x` to (23 - drop) mantissa bits; NaN stays NaN."""
    bits = np.ascontiguousarray(x).view(np.uint32).astype(np.uint64)   # no wrap on the add
    half = np.uint64(1 << (drop - 1))
    if ties_even:
        # add half - 1, plus 1 when the kept lsb is odd: ties go to the even neighbour
        bits = bits + (half - np.uint64(1)) + ((bits >> np.uint64(drop)) & np.uint64(1))
    else:
        bits = bits + half          # magnitude + half ulp, truncated: ties away from zero
    mask = np.uint64((0xFFFFFFFF >> drop) << drop)
    out = (bits & mask).astype(np.uint32).view(np.float32).reshape(x.shape)
    # a carry out of the largest finite value lands on the exponent field: that is inf, as
    # IEEE rounding gives; inf itself only gains low bits that the mask clears.  NaN: keep.
    nan = np.isnan(x)
    if nan.any():
        out = out.copy()
        out[nan] = np.float32(np.nan)
    return out


def to_tf32(x) -> np.ndarray:
    """float32 `x` rounded to TF32 as `cvt.rna.tf32.f32` does (ties away from zero)."""
    return _round_bits(_as_f32(x, "x"), _TF32_DROP, ties_even=False)


def to_bf16(x) -> np.ndarray:
    """float32 `x` rounded to bfloat16 (ties to even), as float32 with the low 16 bits zero."""
    return _round_bits(_as_f32(x, "x"), _BF16_DROP, ties_even=True)


def bf16_bits(x) -> np.ndarray:
    """The uint16 bit patterns of `to_bf16(x)`."""
    return (to_bf16(x).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def split_3xtf32(x) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo): hi = to_tf32(x), lo = to_tf32(x - hi) (x - hi is exact in float32)."""
    x = _as_f32(x, "x")
    hi = to_tf32(x)
    with np.errstate(invalid="ignore", over="ignore"):
        rest = (x - hi).astype(np.float32)   # IEEE, as the kernel: inf - inf is NaN
    return hi, to_tf32(rest)


#: the modes whose stored activations and deltas are rounded when written (see the docstring)
ROUNDED_STORAGE = ("bf16",)


def round_stored(x, precision: str):
    """`x` (a float32 numpy array) rounded in place to what mode `precision` stores: `to_bf16`
    in "bf16", unchanged in every other mode.  Returns `x`."""
    check_precision(precision)
    if precision in ROUNDED_STORAGE:
        x[...] = to_bf16(x)
    return x


def round_operand(x, precision: str) -> np.ndarray:
    """`x` as the tensor cores see it in mode `precision` ("3xtf32": the hi part)."""
    check_precision(precision)
    x = _as_f32(x, "x")
    if precision == "tf32" or precision == "3xtf32":
        return to_tf32(x)
    if precision == "bf16":
        return to_bf16(x)
    return x


def _stepped_sum(terms, M: int, N: int, K: int, step: int) -> np.ndarray:
    """sum_k of the products a_k b_k, step by step: each step (k in [s, s + step)) summed
    exactly in float64 and rounded to float32, steps added in float32 in increasing k.
    `terms` is a list of (a, b) float32 pairs whose products are all exact; each pair is
    one mma: its step sum is rounded and added on its own, in list order."""
    acc = np.zeros((M, N), np.float32)
    nsteps = -(-K // step)
    # several steps at a time through one float64 einsum, capped at ~64 MB of partials
    group = max(1, min(nsteps, (64 << 20) // max(1, 8 * M * N * len(terms))))
    for g0 in range(0, nsteps, group):
        g1 = min(nsteps, g0 + group)
        k0, k1 = g0 * step, min(K, g1 * step)
        parts = []
        for a, b in terms:
            pa = np.zeros((M, (g1 - g0) * step), np.float64)
            pb = np.zeros(((g1 - g0) * step, N), np.float64)
            pa[:, :k1 - k0] = a[:, k0:k1]
            pb[:k1 - k0] = b[k0:k1]
            pa = pa.reshape(M, g1 - g0, step)
            pb = pb.reshape(g1 - g0, step, N)
            parts.append(np.einsum("msk,skn->smn", pa, pb).astype(np.float32))
        for s in range(g1 - g0):
            for p in parts:
                acc += p[s]
    return acc


def matmul(a, b, precision: str = "float32") -> np.ndarray:
    """`a @ b` (float32, (M, K) @ (K, N)) as mode `precision`'s tensor-core GEMM computes it
    (see the module docstring for the rounding and the order of the sums)."""
    check_precision(precision)
    a = _as_f32(a, "a")
    b = _as_f32(b, "b")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul shapes: a {a.shape} and b {b.shape} are not (M, K) and (K, N)")
    M, K = a.shape
    N = b.shape[1]
    if precision == "float32":
        return a @ b
    step = MMA_K[precision]
    if precision == "3xtf32":
        ah, al = split_3xtf32(a)
        bh, bl = split_3xtf32(b)
        return _stepped_sum([(al, bh), (ah, bl), (ah, bh)], M, N, K, step)
    return _stepped_sum([(round_operand(a, precision), round_operand(b, precision))], M, N, K, step)


def relative_error(c, a, b) -> float:
    """max |c - a @ b| / max (|a| @ |b|), with a @ b and |a| @ |b| in float64."""
    from .checks import host_array

    a64, b64, c64 = (host_array(v, n).astype(np.float64) for v, n in ((a, "a"), (b, "b"), (c, "c")))
    # c of another shape was broadcast against a @ b: a row (N,) or (1, N) compared with every row
    if a64.ndim != 2 or b64.ndim != 2 or a64.shape[1] != b64.shape[0] or c64.shape != (a64.shape[0], b64.shape[1]):
        raise ValueError(f"relative_error shapes: c {c64.shape}, a {a64.shape} and b {b64.shape} are not (M, N), "
                         f"(M, K) and (K, N)")
    scale = float((np.abs(a64) @ np.abs(b64)).max(initial=0.0))
    err = float(np.abs(c64 - a64 @ b64).max(initial=0.0))
    return err / scale if scale > 0 else err


def fused_reference(X, layers, activations, delta_last, precision: str = "float32",
                    act_in: str | None = None, Z_in=None) -> dict:
    """What the fused-MLP kernel family (`kernels/fused_mlp_family.cu`) computes for one run of
    layers in `precision` ("float32", "tf32" or "bf16"), emulated in numpy.

    X (B, n_0), layers [(W (n_out, n_in), b (n_out,)), ...], `activations` one name per layer,
    delta_last (B, n_L) = dLoss/dZ of the last layer; all float32.  The products are
    `matmul(.., precision)` (operands rounded as the tensor cores see them, float32
    accumulation); the arithmetic of the epilogues is float32 as in the kernels: bias add,
    activations, g', db (a float32 column sum of the deltas as stored).  What is stored
    follows `round_stored`: in "bf16" every Z, A, delta passed between layers and delta_in is
    rounded to bf16 as it is written (X and delta_last are used as given: a bf16 network
    stores them rounded already).
    With `act_in` (and `Z_in` for gelu/silu) the delta entering the run, dLoss/dX * g'_in, is
    returned too.  Returns {"A": [...], "Z": [...], "dW": [...], "db": [...], "delta_in": ... or None}.

    This is, bit for bit, the numpy backend's layer ops chained in the same precision (the
    spec's semantics of each mode).  The kernels sum the batch in tiles and blocks (a different
    float32 order), so they agree with this to float32 rounding of the sums, not bitwise (in
    "bf16", a stored value whose sum fell on the other side of a rounding boundary is one
    bf16 ulp away)."""
    from .activations import check_activation
    from .backends.numpy_backend import activation_backward_inplace, activation_forward

    check_precision(precision)
    if precision == "3xtf32":
        raise ValueError("the fused kernel family has no 3xtf32 policy; choose float32, tf32 or bf16")
    X = _as_f32(X, "X")
    delta_last = _as_f32(delta_last, "delta_last")
    if len(activations) != len(layers):
        raise ValueError(f"{len(activations)} activations for {len(layers)} layers")
    acts = [check_activation(a) for a in activations]
    As, Zs = [], []
    a = X
    for l, (W, b) in enumerate(layers):
        W, b = _as_f32(W, f"layers[{l}] W"), _as_f32(b, f"layers[{l}] b")
        if W.ndim != 2 or W.shape[1] != a.shape[1] or b.shape != (W.shape[0],):
            raise ValueError(f"layers[{l}]: W {W.shape} and b {b.shape} do not follow width {a.shape[1]}")
        # float32: the numpy backend's very BLAS calls (transposed views, not contiguous copies:
        # OpenBLAS may sum a copy's product in another order), so the two agree bit for bit
        z = round_stored((matmul(a, W.T, precision) + b).astype(np.float32), precision)
        a = round_stored(activation_forward(acts[l], z, np.empty_like(z)), precision)
        As.append(a)
        Zs.append(z)
    if delta_last.shape != As[-1].shape:
        raise ValueError(f"delta_last {delta_last.shape} is not {As[-1].shape}")
    L = len(layers)
    dWs, dbs = [None] * L, [None] * L
    d = delta_last
    delta_in = None
    for i in range(L - 1, -1, -1):
        W = layers[i][0]
        Xi = X if i == 0 else As[i - 1]
        dWs[i] = matmul(d.T, Xi, precision)
        dbs[i] = d.sum(0, dtype=np.float32)
        if i == 0 and act_in is None:
            break
        dn = matmul(d, W, precision)
        if i > 0:
            activation_backward_inplace(acts[i - 1], dn, Xi, Zs[i - 1])
            round_stored(dn, precision)
        else:
            name = check_activation(act_in)
            zi = None if Z_in is None else _as_f32(Z_in, "Z_in")
            activation_backward_inplace(name, dn, Xi, zi)
            delta_in = round_stored(dn, precision)
        d = dn
    return {"A": As, "Z": Zs, "dW": dWs, "db": dbs, "delta_in": delta_in}
