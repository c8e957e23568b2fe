"""The CUDA kernels at extreme and non-finite values, next to the numpy backend (and PyTorch).

Each kernel runs on the emulator of tests/support/cuda_emu (skipped, as tests/test_kernels_emulated.py,
without a host C++ compiler) at NaN, +-inf, +-0, the largest finite numbers, where e^z overflows
(88.7 in float32) and underflows (-103), subnormals, and where z^2 overflows (above 1.8e19 in
float32).  The rule is agreement: a NaN exactly where numpy gives a NaN, the same infinities, the
same finite values (within a few ulps: the emulator's libm is not numpy's).  A disagreement is a
step that is finite on one backend and not on the other, which the training loop's checks see on
one backend only.  Small shapes, so each case runs in milliseconds once a module is built.
"""

from __future__ import annotations

import numpy as np
import pytest

from support import cuda_emu

pytestmark = pytest.mark.skipif(cuda_emu.compiler() is None, reason="no host C++ compiler for the kernel emulator")

from gpubp.activations import ACT_CODES, ACTIVATIONS, NEEDS_Z  # noqa: E402
from gpubp.backends.numpy_backend import (NumpyBackend, activation_backward_inplace,  # noqa: E402
                                          activation_forward)

NP = NumpyBackend()
inf, nan = np.inf, np.nan
DTYPES = (np.float32, np.float64)


def extremes(dtype) -> np.ndarray:
    """The probe values of `dtype`: non-finite, signed zeros, the edges of exp, subnormals, huge."""
    fi = np.finfo(dtype)
    big, sub = float(fi.max), float(fi.smallest_subnormal)
    sq = float(np.sqrt(fi.max))              # z * z overflows just above this (1.8e19 in float32)
    v = [nan, inf, -inf, 0.0, -0.0, 1.0, -1.0, 5.0, -5.0, 10.0, -10.0,
         88.7, -88.7, 89.5, -103.0, -104.0, 709.8, -745.2,       # e^z over/underflows (float32, float64)
         sub, -sub, float(fi.tiny) / 4, -float(fi.tiny) / 4,      # subnormals
         1.1 * sq, -1.1 * sq, 3 * sq, -3 * sq, 8 * sq, -8 * sq,   # z^2, k z^3, 3k z^2 overflow
         1e38, -1e38, big, -big]
    with np.errstate(over="ignore"):
        return np.unique(np.array(v, dtype))                     # float64-only values become +-inf


def agree(got, ref, what, rtol=1e-5, atol=1e-44):
    """NaN exactly where `ref` has NaN, the same infinities, finite values within `rtol` (or `atol`:
    subnormal results, a few ulps of 1e-45 by default)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, what
    bad = np.isnan(got) != np.isnan(ref)
    fin = np.isfinite(ref) & np.isfinite(got)
    bad |= np.isinf(ref) & (got != ref)
    bad |= np.isinf(got) & (got != ref)
    with np.errstate(all="ignore"):
        err = np.where(fin, np.abs(got - ref), 0)
    bad |= fin & ~(err <= rtol * np.abs(ref))
    bad &= ~(fin & (err <= atol))
    if bad.any():
        i = np.flatnonzero(bad.ravel())[:8]
        raise AssertionError(f"{what}: at {i.tolist()} got {got.ravel()[i].tolist()}, "
                             f"numpy {ref.ravel()[i].tolist()}")


# ---------------------------------------------------------------------------- activations.cuh itself
_PROBE = r"""
template <int ACT, typename T>
__global__ void probe(const T* z, T* f, T* g, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) { const T a = act_forward<ACT, T>(z[i]); f[i] = a; g[i] = act_grad<ACT, T>(a, z[i]); }
}"""


@pytest.fixture(scope="module")
def probe():
    from gpubp.backends.cuda_source import ModuleSpec

    src = ModuleSpec("activations", ("activations.cuh",)).source() + _PROBE
    names = [f"probe<{c}, {t}>" for c in ACT_CODES.values() for t in ("float", "double")]
    return cuda_emu.build_source(src, names, tag="extremes")


def numpy_g_and_grad(act, z):
    """numpy's g(z) and g'(z) (the backward's delta of ones times g')."""
    with np.errstate(all="ignore"):
        a = activation_forward(act, z.copy(), np.empty_like(z))
        return a, activation_backward_inplace(act, np.ones_like(z), a, z.copy())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation_and_its_derivative_agree_with_numpy(probe, act, dtype):
    """act_forward and act_grad (every kernel's epilogue calls these) at every probe value.  gelu's
    g' was 1 (z > 0) or 0 where numpy's and torch's are NaN: above sqrt(max) z^2 overflows, and
    0.5 z (1 - t^2) = 0 times c (1 + 3 k z^2) = inf is NaN; the kernel computed (3 k z) z, which
    overflows only above sqrt(max / 3k), so for 1.8e19 < |z| < 5e19 (float32) it gave a finite g'."""
    z = extremes(dtype)
    f, g = np.full_like(z, 7.0), np.full_like(z, 7.0)
    probe.launch(f"probe<{ACT_CODES[act]}, {'float' if dtype == np.float32 else 'double'}>", (1,), (64,),
                 (z, f, g, np.int32(z.size)))
    a, d = numpy_g_and_grad(act, z)
    agree(f, a, f"{act} g(z) at {z.tolist()}")
    agree(g, d, f"{act} g'(z) at {z.tolist()}")


def test_the_numpy_activations_agree_with_torch_but_relus_derivative_at_nan():
    """numpy (the reference) is torch's: g and g' at every probe value, float32 and float64.  The one
    difference is relu's g' at a NaN, 0 here (a > 0) and 1 in torch (its threshold_backward passes
    the gradient unless a <= 0); the NaN output reaches the loss either way."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    fns = {"identity": lambda x: x * 1, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
           "leaky_relu": lambda x: F.leaky_relu(x, 0.01), "gelu": lambda x: F.gelu(x, approximate="tanh"),
           "silu": F.silu}
    assert set(fns) == set(ACTIVATIONS)
    for dtype in DTYPES:
        z = extremes(dtype)
        for act, fn in fns.items():
            t = torch.tensor(z, requires_grad=True)
            out = fn(t)
            out.sum().backward()
            a, d = numpy_g_and_grad(act, z)
            # torch's silu is z / (1 + e^-z): -0 where numpy's z sigmoid(z) is subnormal (-1.4e-43 at z = -103)
            agree(a, out.detach().numpy(), f"{act} g numpy vs torch", rtol=1e-4, atol=1e-37)
            tg = t.grad.numpy().copy()
            if act == "relu":
                assert tg[np.isnan(z)] == 1 and d[np.isnan(z)] == 0
                tg[np.isnan(z)] = 0
            agree(d, tg, f"{act} g' numpy vs torch", rtol=1e-4, atol=1e-37)


# ---------------------------------------------------------------------------- the loss kernels
@pytest.fixture
def cuda(monkeypatch):
    """The CUDA backend over a fake CuPy whose launches run on the emulator."""
    from test_cuda_launch_contract import install_fake

    install_fake(monkeypatch, execute=True)
    from gpubp.backends.cuda_backend import CudaBackend

    return CudaBackend()


def run_loss(be, A, Z, Y, loss, act, want_delta=True):
    """(loss, delta) of `be.loss_and_delta` on host arrays; outputs start as NaN, so unwritten shows."""
    xp = be.xp
    dev = (lambda a: a) if be is NP else (lambda a: None if a is None else xp.asarray(a))
    lo = xp.asarray(np.full(1, nan, A.dtype))
    de = xp.asarray(np.full(A.shape, nan, A.dtype)) if want_delta else None
    with np.errstate(all="ignore"):
        be.loss_and_delta(dev(A), dev(Z), dev(Y), loss, act, lo, de)
    return np.asarray(lo).copy(), (None if de is None else np.asarray(de).copy())


def compare_loss(cuda, A, Z, Y, loss, act, what):
    """The whole batch (value and delta), then every row alone (a NaN row would hide the others')."""
    for rows in [slice(None)] + [slice(i, i + 1) for i in range(A.shape[0])]:
        args = (A[rows], None if Z is None else Z[rows], Y[rows], loss, act)
        (l_cu, d_cu), (l_np, d_np) = run_loss(cuda, *args), run_loss(NP, *args)
        where = f"{what}, rows {rows.start}:{rows.stop} logits/outputs {A[rows].tolist()}"
        agree(l_cu, l_np, f"loss of {where}")
        agree(d_cu, d_np, f"delta of {where}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("loss", ["mse", "half_sse"])
def test_squared_error_losses_agree_with_numpy(cuda, loss, act, dtype):
    """Outputs A = g(Z) at every probe value (a row each), targets 0.5 and -3."""
    z = extremes(dtype)
    with np.errstate(all="ignore"):
        A = activation_forward(act, z.copy(), np.empty_like(z))
    A2, Z2 = np.stack([A, A], axis=1), np.stack([z, z], axis=1)
    Y = np.tile(np.array([0.5, -3.0], dtype), (z.size, 1))
    compare_loss(cuda, A2, Z2 if act in NEEDS_Z else None, Y, loss, act, f"{loss}/{act}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_binary_cross_entropy_agrees_with_numpy(cuda, dtype):
    z = extremes(dtype)
    A = np.stack([z, z, z], axis=1)
    Y = np.tile(np.array([0.0, 0.5, 1.0], dtype), (z.size, 1))
    compare_loss(cuda, A, None, Y, "binary_cross_entropy", "identity", "binary_cross_entropy")


def ce_rows(dtype):
    """Rows of logits: huge, infinite, NaN, all equal, past exp's range, subnormal."""
    big = float(np.finfo(dtype).max)
    rows = [[1e30, -1e30, 0, 1], [-1e30, 1e30, 0, 1], [inf, 0, 0, 1], [0, inf, 0, 1], [-inf, 0, 0, 1],
            [0, -inf, 0, 1], [inf, inf, 0, 1], [-inf, -inf, -inf, -inf], [nan, 0, 0, 1], [0, nan, 0, 1],
            [big, -big, 0, 1], [-big, big, 0, 1], [88.7, -103.0, 0, 1], [200.0, -200.0, 0, 1],
            [1e-45, -1e-45, 0, 0], [0, 0, 0, 0], [-0.0, 0, 0, 0]]
    with np.errstate(over="ignore"):
        return np.array(rows, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("targets", ["labels", "one-hot", "soft"])
def test_cross_entropy_agrees_with_numpy(cuda, targets, dtype):
    """Label 0 (at the extreme logit of most rows), as labels or one-hot rows, or soft targets
    (0.5, 0.25, 0.25, 0: a zero weight on the row's last logit)."""
    A = ce_rows(dtype)
    B = A.shape[0]
    if targets == "labels":
        Y = np.zeros(B, np.int32)
    elif targets == "one-hot":
        Y = np.tile(np.array([1, 0, 0, 0], dtype), (B, 1))
    else:
        Y = np.tile(np.array([0.5, 0.25, 0.25, 0], dtype), (B, 1))
    compare_loss(cuda, A, None, Y, "cross_entropy", "identity", f"cross_entropy/{targets}")


@pytest.mark.parametrize("loss, A, Y", [
    ("mse", [[1.5e19, 1.5e19]], [[0.0, 0.0]]),                     # each square 2.25e38, the sum 4.5e38
    ("half_sse", [[1.5e19], [1.5e19]], [[0.0], [0.0]]),
    ("binary_cross_entropy", [[-3e38, -3e38]], [[1.0, 1.0]]),    # each term 3e38
    ("cross_entropy", [[0.0, -3e38], [0.0, -3e38]], [1, 1]),     # each row's loss 3e38
    ("cross_entropy", [[0.0, -3e38], [0.0, -3e38]], [[0.0, 1.0], [0.0, 1.0]]),
])
def test_a_loss_whose_float32_sum_overflows_but_whose_mean_does_not_is_finite_on_both(cuda, loss, A, Y):
    """The CUDA kernels sum the loss in double, so their loss of two float32 terms of 3e38 was 3e38;
    the numpy backend summed in float32, so its was inf: fit stopped with a FloatingPointError on
    the CPU at a step the GPU took (its delta finite on both).  Both sum in double now.  (PyTorch's
    float32 losses overflow here too; the mean it computes is the value named in docs/spec.md.)"""
    A = np.array(A, np.float32)
    Y = np.array(Y, np.int32 if loss == "cross_entropy" and np.ndim(Y) == 1 else np.float32)
    l_np, d_np = run_loss(NP, A, None, Y, loss, "identity")
    l_cu, d_cu = run_loss(cuda, A, None, Y, loss, "identity")
    assert np.isfinite(l_np[0]) and np.isfinite(d_np).all()
    expected = {"mse": 2.25e38, "half_sse": 1.125e38, "binary_cross_entropy": 3e38, "cross_entropy": 3e38}[loss]
    assert l_np[0] == pytest.approx(expected, rel=1e-6)
    agree(l_cu, l_np, loss)
    agree(d_cu, d_np, loss)
