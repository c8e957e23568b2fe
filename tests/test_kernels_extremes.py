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


def run_loss(be, A, Z, Y, loss, act, want_delta=True, precision="float32"):
    """(loss, delta) of `be.loss_and_delta` on host arrays; outputs start as NaN, so unwritten shows."""
    xp = be.xp
    dev = (lambda a: a) if be is NP else (lambda a: None if a is None else xp.asarray(a))
    lo = xp.asarray(np.full(1, nan, A.dtype))
    de = xp.asarray(np.full(A.shape, nan, A.dtype)) if want_delta else None
    with np.errstate(all="ignore"):
        be.loss_and_delta(dev(A), dev(Z), dev(Y), loss, act, lo, de, precision=precision)
    return np.asarray(lo).copy(), (None if de is None else np.asarray(de).copy())


def compare_loss(cuda, A, Z, Y, loss, act, what, precision="float32"):
    """The whole batch (value and delta), then every row alone (a NaN row would hide the others')."""
    for rows in [slice(None)] + [slice(i, i + 1) for i in range(A.shape[0])]:
        args = (A[rows], None if Z is None else Z[rows], Y[rows], loss, act, True, precision)
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


@pytest.mark.parametrize("loss", ["mse", "half_sse"])
def test_squared_error_losses_scale_by_the_output_width(cuda, loss):
    """mse averages over B * n, half_sse halves the sum over B: at n = 2 (the probe above) the two
    coincide, so a width of 3 tells them apart."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 3)).astype(np.float32)
    Y = rng.standard_normal((4, 3)).astype(np.float32)
    compare_loss(cuda, A, None, Y, loss, "identity", f"{loss}, width 3")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_binary_cross_entropy_agrees_with_numpy(cuda, dtype):
    z = extremes(dtype)
    A = np.stack([z, z, z], axis=1)
    Y = np.tile(np.array([0.0, 0.5, 1.0], dtype), (z.size, 1))
    compare_loss(cuda, A, None, Y, "binary_cross_entropy", "identity", "binary_cross_entropy")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_poisson_agrees_with_numpy(cuda, dtype):
    """Log-rates at every probe value against targets 0 (the deviance's e^z branch), a rate, a count,
    a huge count and the dtype's largest number: the same NaNs, the same infinities (the loss inf
    exactly where the rate e^z overflows the dtype, as the delta is), the same finite values."""
    z = extremes(dtype)
    targets = np.array([0.0, 0.5, 3.0, 1e30, float(np.finfo(dtype).max)], dtype)
    A = np.repeat(z, targets.size).reshape(-1, 1)        # every (log-rate, target) pair a row of its own
    Y = np.tile(targets, z.size).reshape(-1, 1)
    compare_loss(cuda, A, None, Y, "poisson", "identity", "poisson")


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
@pytest.mark.parametrize("width", [4, 1030])
@pytest.mark.parametrize("targets", ["labels", "one-hot", "soft"])
def test_cross_entropy_agrees_with_numpy(cuda, targets, width, dtype):
    """Label 0 (at the extreme logit of most rows), as labels or one-hot rows, or soft targets
    (0.5, 0.25, 0.25, 0: a zero weight on the row's last logit).  Width 1030: the block-per-row
    kernel, the four logits spread over its threads among logits of -1."""
    rows = ce_rows(dtype)
    B = rows.shape[0]
    cols = [0, 1, 2, 3] if width == 4 else [0, 300, 701, 1029]
    A = np.full((B, width), -1, dtype)
    A[:, cols] = rows
    if targets == "labels":
        Y = np.zeros(B, np.int32)
    else:
        Y = np.zeros((B, width), dtype)
        Y[:, cols] = [1, 0, 0, 0] if targets == "one-hot" else [0.5, 0.25, 0.25, 0]
    compare_loss(cuda, A, None, Y, "cross_entropy", "identity", f"cross_entropy/{targets}")


@pytest.mark.parametrize("loss, act", [("mse", "identity"), ("half_sse", "gelu"), ("binary_cross_entropy", "identity"),
                                       ("cross_entropy", "identity"), ("poisson", "identity")])
def test_the_loss_kernels_rounding_delta_to_bf16_agree_with_numpy(cuda, loss, act):
    """The "bf16" mode's loss kernels (delta rounded to bfloat16 as stored: inf stays inf, NaN NaN,
    the largest floats round to inf) at every probe value, next to numpy's emulation of the mode."""
    z = extremes(np.float32)
    if loss == "cross_entropy":
        A, Z, Y = ce_rows(np.float32), None, np.zeros(ce_rows(np.float32).shape[0], np.int32)
    else:
        with np.errstate(all="ignore"):
            a = activation_forward(act, z.copy(), np.empty_like(z))
        A, Z = np.stack([a, a], axis=1), np.stack([z, z], axis=1)
        Y = np.tile(np.array([0.0, 1.0] if loss in ("binary_cross_entropy", "poisson") else [0.5, -3.0], np.float32),
                    (z.size, 1))
    compare_loss(cuda, A, Z if act in NEEDS_Z else None, Y, loss, act, f"{loss}/{act} bf16", precision="bf16")


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


# ---------------------------------------------------------------------------- the optimizer updates
def run_update(be, kind, p, g, state, hp, steps):
    """`steps` updates of `p` by `g`; the parameters and the state after them, on the host."""
    xp = be.xp
    dev = (lambda a: a.copy()) if be is NP else xp.asarray
    p, g, state = dev(p), dev(g), [dev(s) for s in state]
    with np.errstate(all="ignore"):
        for t in range(1, steps + 1):
            if kind == "sgd":
                be.sgd_update(p, g, state[0] if hp["momentum"] else None, hp["lr"], hp["momentum"], hp["wd"],
                              hp.get("nesterov", False))
            else:
                step = xp.asarray(np.array([t], np.int32))
                be.adam_update(p, g, state[0], state[1], hp["lr"], 0.9, 0.999, hp["eps"], hp["wd"], step,
                               kind == "adamw")
    return [np.asarray(a).copy() for a in (p, *state)]


UPDATES = [
    ("sgd", {"lr": 0.1, "momentum": 0.0, "wd": 0.0}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "wd": 0.01}),
    ("sgd", {"lr": 1e38, "momentum": 0.9, "wd": 0.0}),         # lr near float32's largest
    ("sgd", {"lr": 1e300, "momentum": 0.0, "wd": 1e-3}),       # float32: lr rounds to inf
    ("sgd", {"lr": 0.1, "momentum": 0.9, "wd": 0.01, "nesterov": True}),
    ("sgd", {"lr": 1e38, "momentum": 0.5, "wd": 0.0, "nesterov": True}),
    ("adam", {"lr": 1e-3, "eps": 1e-8, "wd": 0.0}),
    ("adam", {"lr": 1e-3, "eps": 1e-45, "wd": 0.01}),          # eps subnormal in float32
    ("adam", {"lr": 3e37, "eps": 1e-8, "wd": 0.0}),            # lr / (1 - beta1) = 3e38, 1.9e38
    ("adam", {"lr": 1e38, "eps": 1e-8, "wd": 0.0}),            # float32: the step size rounds to inf
    ("adamw", {"lr": 1e-3, "eps": 1e-8, "wd": 0.01}),
    ("adamw", {"lr": 1e30, "eps": 1e-8, "wd": 0.1}),           # decay 1 - lr wd = -1e29
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind, hp", UPDATES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(UPDATES)])
def test_optimizer_updates_agree_with_numpy(cuda, kind, hp, dtype):
    """Gradients at every probe value (32 in 16-byte packs, the rest one by one), against parameters
    and state from 0 to huge; two steps.  A parameter is non-finite exactly where numpy's is, so
    the training loop's check of the state sees the same steps on both."""
    g = extremes(dtype)
    n = g.size
    cyc = np.array([1.0, -2.0, 0.0, 1e30, -3e38, 1e-45, 0.5], np.float64)
    with np.errstate(over="ignore"):
        p = np.resize(cyc, n).astype(dtype)
        s0 = np.resize(cyc[::-1], n).astype(dtype)
    state = [s0] if kind == "sgd" else [s0, np.abs(s0)]             # Adam's v is non-negative
    for steps in (1, 2):
        got = run_update(cuda, kind, p, g, state, hp, steps)
        ref = run_update(NP, kind, p, g, state, hp, steps)
        for name, a, b in zip(("params", "state 0", "state 1"), got, ref):
            agree(a, b, f"{kind} {hp} after {steps} steps, {name} (grads {g.tolist()})")


# ---------------------------------------------------------------------------- the GEMM epilogues
#: (backend settings, precision) of every kernel family a layer's forward and input gradient run on
LAYER_KERNELS = [({"tile": "small"}, "float32"), ({"tile": "large"}, "float32"), ({"tile": "pipelined"}, "float32"),
                 ({"tensor_core_gemms": True}, "tf32"), ({"tensor_core_gemms": True}, "bf16"),
                 ({"tensor_core_gemms": True}, "3xtf32"),
                 ({"tensor_core_gemms": True, "hopper": True}, "tf32"),
                 ({"tensor_core_gemms": True, "hopper": True}, "bf16")]


def layer_case(be, act, z, precision):
    """A layer whose product is z itself (x = [z, 0, 0, 0], W = [1, 0, 0, 0], b = 0): its forward
    (A, Z), then the input gradient of a delta of ones through W = g'(z) in column 0."""
    xp = be.xp
    dev = (lambda a: a) if be is NP else xp.asarray
    B, dt = z.size, z.dtype
    X = np.zeros((B, 4), dt)
    X[:, 0] = z
    W = np.zeros((1, 4), dt)
    W[0, 0] = 1
    opts = {} if precision == "float32" else {"precision": precision}
    A, Z = dev(np.full((B, 1), nan, dt)), dev(np.full((B, 1), nan, dt))
    dprev, dW, db = (dev(np.full(s, nan, dt)) for s in ((B, 4), (1, 4), (1,)))
    with np.errstate(all="ignore"):
        be.dense_forward(dev(X), dev(W), dev(np.zeros(1, dt)), act, A, Z, **opts)
        # the input gradient of the layer above reads this layer's stored A and Z as A_prev, Z_prev
        Xa, Xz = np.zeros((B, 4), dt), np.zeros((B, 4), dt)
        Xa[:, 0], Xz[:, 0] = np.asarray(A)[:, 0], np.asarray(Z)[:, 0]
        Xa[:, 1:] = activation_forward(act, np.zeros((B, 3), dt), np.empty((B, 3), dt))
        be.dense_backward(dev(np.ones((B, 1), dt)), dev(Xa), dev(W), dW, db, dprev, act,
                          dev(Xz) if act in NEEDS_Z else None, **opts)
    return [np.asarray(a).copy() for a in (A, Z, dprev)]


@pytest.mark.parametrize("settings, precision", LAYER_KERNELS, ids=[f"{p}-{'-'.join(map(str, s.values()))}"
                                                                    for s, p in LAYER_KERNELS])
def test_the_gemm_epilogues_apply_g_and_g_prime_as_numpy(monkeypatch, settings, precision):
    """Every activation through each GEMM family's forward epilogue (z + b, g(z), both stored) and
    input-gradient epilogue (times g'), float32 (and float64 on gemm.cu), at every probe value: the epilogues call
    activations.cuh with the right operand (A, or Z for gelu and silu) in every variant."""
    from test_cuda_launch_contract import install_fake

    fake = install_fake(monkeypatch, execute=True)
    from gpubp.backends import cuda_gemm_wgmma
    from gpubp.backends.cuda_backend import CudaBackend

    monkeypatch.setattr(cuda_gemm_wgmma, "_driver", lambda: fake.driver)
    be = CudaBackend(**settings)
    for dtype in DTYPES if precision == "float32" else (np.float32,):
        z = extremes(dtype)
        for act in ACTIVATIONS:
            got, ref = layer_case(be, act, z, precision), layer_case(NP, act, z, precision)
            for name, a, b in zip(("A", "Z", "delta_prev"), got, ref):
                agree(a, b, f"{act} {precision} {settings} {np.dtype(dtype)}: {name} at z = {z.tolist()}")
    family = "gemm_wgmma" if settings.get("hopper") else "gemm_tc" if precision != "float32" else "gemm"
    assert {f"{family}_fwd", f"{family}_bwd_data"} <= fake.kernel_names(), fake.kernel_names()


#: the fused narrow-run kernels (fused_mlp.cu, fused_mlp_tf32.cu, fused_mlp_family.cu)
FUSED_KERNELS = [("cuda_fused", "float32"), ("cuda_fused", "tf32"),
                 ("cuda_fused_family", "float32"), ("cuda_fused_family", "tf32"), ("cuda_fused_family", "bf16")]


@pytest.mark.parametrize("module, precision", FUSED_KERNELS, ids=[f"{m}-{p}" for m, p in FUSED_KERNELS])
def test_the_fused_runs_apply_g_and_g_prime_as_numpy(monkeypatch, module, precision):
    """A run of two layers whose first product is z (x = [z, 0, 0, 0], W1 = [1, 0, 0, 0]) and whose
    second is identity (W2 = [1]): the run's A1, Z1 are layer_case's forward, and its delta_in
    (identity below the run) is delta_2 W2 g1' W1 = g1'(z) in column 0, at every probe value."""
    import importlib

    from test_cuda_launch_contract import install_fake

    install_fake(monkeypatch, execute=True)
    import cupy

    mod = importlib.import_module(f"gpubp.backends.{module}")
    z = extremes(np.float32)
    B, dt = z.size, np.float32
    X = np.zeros((B, 4), dt)
    X[:, 0] = z
    W1, W2 = np.zeros((1, 4), dt), np.ones((1, 1), dt)
    W1[0, 0] = 1
    for act in ACTIVATIONS:
        codes = [ACT_CODES[act], ACT_CODES["identity"]]
        A = [cupy.asarray(np.full((B, 1), nan, dt)) for _ in range(2)]
        Z = [cupy.asarray(np.full((B, 1), nan, dt)) if act in NEEDS_Z else None, None]
        Ws = [cupy.asarray(W1), cupy.asarray(W2)]
        with np.errstate(all="ignore"):
            mod.fused_forward(cupy.asarray(X), Ws, [cupy.zeros(1, dt), cupy.zeros(1, dt)], codes, A, Z,
                              precision=precision)
            dWs = [cupy.asarray(np.full((1, 4), nan, dt)), cupy.asarray(np.full((1, 1), nan, dt))]
            dbs = [cupy.asarray(np.full(1, nan, dt)) for _ in range(2)]
            din = cupy.asarray(np.full((B, 4), nan, dt))
            mod.fused_backward(cupy.ones((B, 1), dt), Ws, codes, cupy.asarray(X), A, Z, dWs, dbs,
                               delta_in_out=din, act_code_in=ACT_CODES["identity"], precision=precision)
        rA, rZ, rd = layer_case(NP, act, z, precision)
        if precision != "float32":   # delta_1 = g1'(z) is the next product's operand: rounded as one
            from gpubp.precision import round_operand

            with np.errstate(all="ignore"):
                rd = round_operand(rd, precision)
        agree(np.asarray(A[0]), rA, f"{module} {precision} {act}: A1 at z = {z.tolist()}")
        if act in NEEDS_Z:
            agree(np.asarray(Z[0]), rZ, f"{module} {precision} {act}: Z1")
        agree(np.asarray(din)[:, 0], rd[:, 0], f"{module} {precision} {act}: delta_in = g1'(z) at z = {z.tolist()}")


# ---------------------------------------------------------------------------- the training loop
@pytest.mark.parametrize("activation, loss, optimizer, lr", [
    ("identity", "mse", "sgd", 1e18),                 # the loss overflows
    ("gelu", "cross_entropy", "sgd", 1e30),
    ("silu", "binary_cross_entropy", "adam", 1e37),   # Adam's step size past float32's range
    ("relu", "half_sse", "sgd", 3e36),
    ("tanh", "mse", "adam", 1e38),                     # the update overflows after a finite loss
    ("tanh", "cross_entropy", "adamw", 1e38),
])
def test_a_fit_that_diverges_stops_at_the_same_step_with_the_same_state_on_both(cuda, activation, loss,
                                                                                optimizer, lr):
    """fit's divergence checks on the emulated GPU: the same FloatingPointError (the same step, loss
    or update named) as on numpy, and the network left as numpy's is, finite."""
    import gpubp
    from conftest import output_activation_for, random_targets

    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 3)).astype(np.float32)
    Y = random_targets(rng, loss, 12, 2, dtype=np.float32)
    out = {}
    for name, be in (("numpy", "numpy"), ("cuda", cuda)):
        net = gpubp.MLP([3, 5, 2], activation=activation, output_activation=output_activation_for(loss, activation),
                        loss=loss, backend=be, seed=1)
        with np.errstate(all="ignore"), pytest.raises(FloatingPointError) as e:
            net.fit(X, Y, epochs=3, batch_size=4, optimizer=optimizer, lr=lr, shuffle=False, verbose=0,
                    progress=False)
        params = [np.asarray(a, np.float64) for layer in net.get_params() for a in layer]
        assert all(np.isfinite(p).all() for p in params)
        out[name] = (str(e.value), params)
    assert out["cuda"][0] == out["numpy"][0]
    for a, b in zip(out["cuda"][1], out["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(b).max())))


def gemm_inf_case(be, precision, dtype):
    """A layer's three products on positive operands with an infinity at the last index of each
    reduction (and at the first): every sum is finite or +inf, never NaN, unless a kernel multiplies
    its zero padding past the edge of a tile by a real (clamped, re-read) infinite element."""
    xp = be.xp
    dev = (lambda a: a) if be is NP else xp.asarray
    rng = np.random.default_rng(5)
    M, K, N = 600, 13, 21                      # a tall batch: the weight gradients split it
    X = rng.uniform(0.5, 1, (M, K)).astype(dtype)
    W = rng.uniform(0.5, 1, (N, K)).astype(dtype)
    delta = rng.uniform(0.5, 1, (M, N)).astype(dtype)
    X[M - 1, K - 1] = X[0, 0] = inf            # forward: sums over K; weight gradient: over M
    W[N - 1, 0] = W[0, K - 1] = inf            # input gradient: sums over N
    delta[M - 1, N - 1] = delta[0, 3] = inf
    opts = {} if precision == "float32" else {"precision": precision}
    if be is not NP:                           # the split-K paths' workspaces
        from gpubp.backends.plan import Scratch

        opts["scratch"] = Scratch(be)
    A = dev(np.full((M, N), nan, dtype))
    dW, db, dprev = dev(np.full((N, K), nan, dtype)), dev(np.full(N, nan, dtype)), dev(np.full((M, K), nan, dtype))
    with np.errstate(all="ignore"):
        be.dense_forward(dev(X), dev(W), dev(np.zeros(N, dtype)), "identity", A, None, **opts)
        be.dense_backward(dev(delta), dev(X), dev(W), dW, db, dprev, "identity", None, **opts)
    return [np.asarray(a).copy() for a in (A, dW, db, dprev)]


@pytest.mark.parametrize("settings, precision", LAYER_KERNELS, ids=[f"{p}-{'-'.join(map(str, s.values()))}"
                                                                    for s, p in LAYER_KERNELS])
def test_infinities_at_the_edges_of_the_gemm_tiles_sum_as_numpy(monkeypatch, settings, precision):
    from test_cuda_launch_contract import install_fake

    fake = install_fake(monkeypatch, execute=True)
    from gpubp.backends import cuda_gemm_wgmma
    from gpubp.backends.cuda_backend import CudaBackend

    monkeypatch.setattr(cuda_gemm_wgmma, "_driver", lambda: fake.driver)
    be = CudaBackend(**settings)
    for dtype in DTYPES if precision == "float32" else (np.float32,):
        got, ref = gemm_inf_case(be, precision, dtype), gemm_inf_case(NP, precision, dtype)
        for name, a, b in zip(("A", "dW", "db", "delta_prev"), got, ref):
            assert precision == "3xtf32" or not np.isnan(b).any(), name
            agree(a, b, f"{precision} {settings} {np.dtype(dtype)}: {name}", rtol=1e-2 if precision == "bf16" else 1e-3)
    assert any(k.endswith("splitk_reduce") for k in fake.kernel_names()), fake.kernel_names()


@pytest.mark.parametrize("module, precision", FUSED_KERNELS, ids=[f"{m}-{p}" for m, p in FUSED_KERNELS])
def test_infinities_at_the_edges_of_the_fused_tiles_sum_as_numpy(monkeypatch, module, precision):
    """gemm_inf_case for a fused run of two identity layers (batch 37: a partial row tile; widths
    13, 21, 6): infinities at the first and last index of every reduction give inf, never NaN."""
    import importlib

    from test_cuda_launch_contract import install_fake

    install_fake(monkeypatch, execute=True)
    import cupy

    mod = importlib.import_module(f"gpubp.backends.{module}")
    rng = np.random.default_rng(6)
    B, widths = 37, (13, 21, 6)
    X = rng.uniform(0.5, 1, (B, widths[0])).astype(np.float32)
    Ws = [rng.uniform(0.5, 1, (widths[i + 1], widths[i])).astype(np.float32) for i in range(2)]
    d2 = rng.uniform(0.5, 1, (B, widths[2])).astype(np.float32)
    X[B - 1, -1] = X[0, 0] = inf
    Ws[1][-1, 0] = Ws[0][0, -1] = inf
    d2[B - 1, -1] = inf
    code = ACT_CODES["identity"]
    dev = cupy.asarray
    A = [dev(np.full((B, w), nan, np.float32)) for w in widths[1:]]
    dWs = [dev(np.full(W.shape, nan, np.float32)) for W in Ws]
    dbs = [dev(np.full(W.shape[0], nan, np.float32)) for W in Ws]
    din = dev(np.full((B, widths[0]), nan, np.float32))
    zeros = [dev(np.zeros(w, np.float32)) for w in widths[1:]]
    with np.errstate(all="ignore"):
        mod.fused_forward(dev(X), [dev(W) for W in Ws], zeros, [code, code], A, [None, None], precision=precision)
        mod.fused_backward(dev(d2), [dev(W) for W in Ws], [code, code], dev(X), A, [None, None], dWs, dbs,
                           delta_in_out=din, act_code_in=code, precision=precision)
    # numpy, layer by layer in the same mode
    opts = {} if precision == "float32" else {"precision": precision}
    rA = [np.empty((B, w), np.float32) for w in widths[1:]]
    rdW = [np.empty(W.shape, np.float32) for W in Ws]
    rdb = [np.empty(W.shape[0], np.float32) for W in Ws]
    d1, rdin = np.empty((B, widths[1]), np.float32), np.empty((B, widths[0]), np.float32)
    with np.errstate(all="ignore"):
        NP.dense_forward(X, Ws[0], np.zeros(widths[1], np.float32), "identity", rA[0], None, **opts)
        NP.dense_forward(rA[0], Ws[1], np.zeros(widths[2], np.float32), "identity", rA[1], None, **opts)
        NP.dense_backward(d2, rA[0], Ws[1], rdW[1], rdb[1], d1, "identity", None, **opts)
        NP.dense_backward(d1, X, Ws[0], rdW[0], rdb[0], rdin, "identity", None, **opts)
    tol = 1e-2 if precision == "bf16" else 1e-3
    for name, a, b in [("A1", A[0], rA[0]), ("A2", A[1], rA[1]), ("dW1", dWs[0], rdW[0]), ("dW2", dWs[1], rdW[1]),
                       ("db1", dbs[0], rdb[0]), ("db2", dbs[1], rdb[1]), ("delta_in", din, rdin)]:
        assert not np.isnan(b).any(), name
        agree(np.asarray(a), b, f"{module} {precision}: {name}", rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_poisson_agrees_with_numpy_at_tiny_targets(cuda, dtype):
    """Tiny positive targets (the dtype's smallest subnormal and normal, 1e-300) at every probe
    log-rate: d = z - log y passes 709.8 at large finite rates in float64, where y expm1(d) would
    overflow to inf while the value e^z - y - y d is finite; both backends give the finite value."""
    z = np.concatenate([extremes(dtype), np.array([700.0, 705.0, 709.0, 88.0], dtype)])
    fi = np.finfo(dtype)
    targets = np.array([float(fi.smallest_subnormal), float(fi.tiny), 1e-300 if dtype == np.float64 else 1e-40],
                       dtype)
    A = np.repeat(z, targets.size).reshape(-1, 1)
    Y = np.tile(targets, z.size).reshape(-1, 1)
    compare_loss(cuda, A, None, Y, "poisson", "identity", "poisson")
