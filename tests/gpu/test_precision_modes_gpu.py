"""Precision modes on the CUDA backend (skipped without CUDA, or below sm_80).

`CudaBackend(tensor_core_gemms=True)` (the opt-in that runs the per-layer GEMMs of tf32,
bf16 and 3xtf32 plans on kernels/gemm_tc.cu) against the numpy backend, which emulates
each mode (gpubp.precision): a whole step's outputs and gradients agree within STEP_TOL
(relative to the largest value compared: the kernels sum in another float32 order, and a
difference can move an operand across a rounding boundary of the mode in the next layer),
and are closer to the emulation of their mode than to float32's step (so the mode really
runs); a few epochs on digits reach float32's test accuracy within half a point.  The
default backend refuses bf16 and 3xtf32.  (Tolerances set before any GPU run.)
"""

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from gpubp.backends import cuda_available  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")]

import gpubp  # noqa: E402
from gpubp.backends import cuda_device  # noqa: E402
from gpubp.data import accuracy, load_dataset  # noqa: E402

MODES = ("tf32", "bf16", "3xtf32")
#: CUDA step vs the numpy emulation of the same mode, relative to the largest value compared
#: bf16 stores Z, A and deltas rounded: where the kernels' float32 sums fall on the other side of
#: a rounding boundary than the emulation's, a stored value is one bf16 ulp off (at most 2^-7 of it, under 8e-3).
#: tf32 rounds the next GEMM's operands the same way: such a crossing moves one operand by one TF32
#: ulp (2^-11 of it, 4.9e-4), and at B = 3 a dW element is a sum of only 3 products, so one crossing can
#: move it by up to about 2^-11 of its value: 5e-4, as test_gemm_tc_splitk's step.  (1e-4 left about 10%
#: margin over the CPU emulator of the kernels, whose tensor-core sums are exact per instruction; real
#: tensor cores sum in another order.)  A wrong kernel is off by far more, and `not_like` still requires
#: the result nearer its mode's emulation than float32's step.
STEP_TOL = {"tf32": 5e-4, "bf16": 8e-3, "3xtf32": 2e-5}


@pytest.fixture(autouse=True)
def _needs_sm80():
    if cuda_device.compute_capability() < 80:
        pytest.skip("tensor-core GEMMs need sm_80+")


def _cuda_tc():
    from gpubp.backends.cuda_backend import CudaBackend

    return CudaBackend(tensor_core_gemms=True)


def _close(got, want, tol, what, not_like=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got - want).max()) / scale
    assert err <= tol, f"{what}: {err:.2e} relative to its largest value"
    if not_like is not None:    # nearer its mode's emulation than float32's numbers, in total
        assert np.abs(got - want).sum() < np.abs(got - np.asarray(not_like, np.float64)).sum(), what


@pytest.mark.parametrize("prec", MODES)
@pytest.mark.parametrize("sizes, B", [((33, 300, 129, 5), 1000), ((64, 17, 4097, 10), 3)])
def test_a_step_matches_the_numpy_emulation(prec, sizes, B):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, sizes[0])).astype(np.float32)
    Y = rng.standard_normal((B, sizes[-1])).astype(np.float32)
    tol = STEP_TOL[prec]
    nets = [gpubp.MLP(list(sizes), activation="gelu", backend=be, precision=p, seed=3)
            for be, p in (("numpy", prec), (_cuda_tc(), prec), ("numpy", "float32"))]
    (l_ref, g_ref), (l_gpu, g_gpu), (_, g_32) = (n.loss_and_grads(X, Y) for n in nets)
    far = None if prec == "3xtf32" else nets[2].forward(X)       # 3xtf32 is float32-accurate
    out = nets[1].backend.to_numpy(nets[1].forward(X))
    if prec == "bf16":          # the outputs as stored: bfloat16 values
        assert not (out.view(np.uint32) & np.uint32(0xFFFF)).any()
    _close(out, nets[0].forward(X), tol, "outputs", far)
    assert l_gpu == pytest.approx(l_ref, rel=tol)
    for l, ((dW, db), (rW, rb), (fW, _)) in enumerate(zip(g_gpu, g_ref, g_32), start=1):
        _close(dW, rW, tol, f"layer {l} dW", None if prec == "3xtf32" else fW)
        _close(db, rb, tol, f"layer {l} db")


def test_default_backend_refuses_bf16_and_3xtf32(tmp_path):
    from gpubp.backends.cuda_backend import CudaBackend
    from gpubp.checkpoint import CheckpointError

    for prec in ("bf16", "3xtf32"):
        with pytest.raises(ValueError, match="not yet available on the cuda backend"):
            gpubp.MLP([8, 4], backend=CudaBackend(), precision=prec)
        # a sound checkpoint of the mode: the backend is refused, the file is not called unusable
        gpubp.MLP([8, 4], backend="numpy", precision=prec).save(tmp_path / f"{prec}.npz")
        with pytest.raises(ValueError, match="tensor_core_gemms=True") as e:
            gpubp.MLP.load(tmp_path / f"{prec}.npz", backend=CudaBackend())
        assert not isinstance(e.value, CheckpointError)
        back = gpubp.MLP.load(tmp_path / f"{prec}.npz", backend=CudaBackend(tensor_core_gemms=True))
        assert back.precision == prec


def test_training_on_digits_in_every_mode():
    ds = load_dataset("digits", seed=0)

    def train(prec, be):
        net = gpubp.MLP([64, 64, 10], loss="cross_entropy", backend=be, seed=0, precision=prec)
        net.fit(ds.X_train, ds.y_train, epochs=5, batch_size=64, optimizer="adam", lr=3e-3, progress=False,
                verbose=0)
        return accuracy(net, ds.X_test, ds.y_test)

    acc32 = train("float32", "cuda")
    for prec in MODES:
        assert abs(train(prec, _cuda_tc()) - acc32) <= 0.005, prec


@pytest.mark.parametrize("prec, opt_in, B", [("3xtf32", True, 7), ("tf32", False, 1024)])
def test_a_nan_product_stays_nan_through_relu(prec, opt_in, B):
    """Finite inputs past the largest TF32 value (3.402e38) round to inf: a sum of their products
    with weights of both signs is NaN (3xtf32: every such product, hi = inf, lo = -inf), and relu
    keeps it as the numpy backend and torch.relu do (it made it 0: a finite output on the GPU
    alone).  The per-layer tensor-core GEMMs (opt-in 3xtf32) and the default backend's fused TF32
    narrow runs (B >= 1024)."""
    from gpubp.backends.cuda_backend import CudaBackend

    rng = np.random.default_rng(4)
    X = rng.standard_normal((B, 2)).astype(np.float32)
    X[0] = 3.402e38
    params = [(np.array([[1.0, -1.0], [-0.25, 1.0]] + [[0.5, 0.5]] * 14, np.float32), np.zeros(16, np.float32)),
              (np.full((16, 16), 0.1, np.float32), np.zeros(16, np.float32)),
              (np.full((1, 16), 0.1, np.float32), np.zeros(1, np.float32))]
    out = {}
    for name, be in (("numpy", "numpy"), ("cuda", CudaBackend(tensor_core_gemms=opt_in))):
        net = gpubp.MLP([2, 16, 16, 1], activation="relu", backend=be, seed=0, precision=prec)
        net.set_params(params)
        with np.errstate(over="ignore", invalid="ignore"):
            out[name] = np.asarray(net.predict(X), np.float64)
    assert np.isnan(out["numpy"][0]) and np.isfinite(out["numpy"][1:]).all()
    assert np.isnan(out["cuda"][0]) and np.isfinite(out["cuda"][1:]).all(), out["cuda"][:3]
