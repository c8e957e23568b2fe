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
