"""Precision modes of a network (`MLP(precision=...)`): the numpy backend's emulation of each
mode's products, float32 left exactly as it was, training, checkpoints, the CLI flag, refused
combinations, and the CUDA backend's choice (bf16 / 3xtf32 refused unless its tensor-core GEMMs
are opted into), the last on the CPU through the fake `cupy` of tests/support."""

import numpy as np
import pytest

import gpubp
from gpubp import precision as P
from gpubp.backends import NumpyBackend, cuda_gemm_tc
from gpubp.backends import numpy_backend as nb
from gpubp.data import accuracy, load_dataset
from support import tc_contract
from support.cli import run, usage_error

MODES = ("tf32", "bf16", "3xtf32")


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def stored(x, prec):
    """What mode `prec` stores of the float32 `x`: bfloat16-rounded in "bf16", `x` otherwise."""
    return P.to_bf16(x) if prec == "bf16" else x


def rel64(c, exact, scale):
    """max |c - exact| / max scale: the normwise error measure of `gpubp.precision.relative_error`."""
    return float(np.abs(np.asarray(c, np.float64) - exact).max() / scale.max())


# ---------------------------------------------------------------- layer ops, against float64 and the emulation
#: awkward shapes: K not a multiple of any mma k, a batch of one
SHAPES = [(37, 45, 19), (1, 130, 7), (64, 17, 33)]


@pytest.mark.parametrize("prec", ("float32",) + MODES)
@pytest.mark.parametrize("M, K, N", SHAPES)
def test_dense_forward_is_the_emulated_product_then_a_float32_epilogue_stored(prec, M, K, N):
    rng = np.random.default_rng(M * 1000 + K)
    A, W, b = rand(rng, M, K), rand(rng, N, K, scale=K ** -0.5), rand(rng, N)
    be = NumpyBackend()
    Z, Aout = np.empty((M, N), np.float32), np.empty((M, N), np.float32)
    be.dense_forward(A, W, b, "gelu", Aout, Z, precision=prec)
    want = P.matmul(A, W.T, prec)
    want += b                                                # bias in float32 after the product
    want = stored(want, prec)                                # bf16: Z rounded as it is stored
    assert np.array_equal(Z, want)                           # bitwise: the same computation
    assert np.array_equal(Aout, stored(nb.activation_forward("gelu", want, np.empty_like(want)), prec))
    exact = A.astype(np.float64) @ W.T.astype(np.float64) + b
    scale = np.abs(A.astype(np.float64)) @ np.abs(W.T.astype(np.float64))
    assert rel64(Z, exact, scale) <= P.TOLERANCE[prec]


@pytest.mark.parametrize("prec", ("float32",) + MODES)
@pytest.mark.parametrize("M, K, N", SHAPES)
def test_dense_backward_is_the_emulated_products_and_a_float32_db(prec, M, K, N):
    rng = np.random.default_rng(M * 7 + N)
    delta, A_prev, W = rand(rng, M, N), rand(rng, M, K), rand(rng, N, K, scale=K ** -0.5)
    A_prev = np.tanh(A_prev)                              # a tanh layer's output: g' = 1 - a^2
    delta, A_prev = stored(delta, prec), stored(A_prev, prec)     # as a step of the mode stores them
    be = NumpyBackend()
    dW, db, dprev = np.empty((N, K), np.float32), np.empty(N, np.float32), np.empty((M, K), np.float32)
    be.dense_backward(delta, A_prev, W, dW, db, dprev, "tanh", None, precision=prec)
    assert np.array_equal(dW, P.matmul(delta.T, A_prev, prec))
    assert np.array_equal(db, delta.sum(axis=0))          # float32 sum of the stored delta
    want = P.matmul(delta, W, prec)
    assert np.array_equal(dprev, stored(nb.activation_backward_inplace("tanh", want.copy(), A_prev), prec))
    d64, a64, w64 = (x.astype(np.float64) for x in (delta, A_prev, W))
    assert rel64(dW, d64.T @ a64, np.abs(d64.T) @ np.abs(a64)) <= P.TOLERANCE[prec]
    # the input gradient before g': identity as the previous activation
    be.dense_backward(delta, A_prev, W, dW, db, dprev, "identity", None, precision=prec)
    # (bf16: the stored input gradient is rounded once more, by at most 2^-9 relative)
    assert rel64(dprev, d64 @ w64, np.abs(d64) @ np.abs(w64)) <= P.TOLERANCE[prec] + (2 ** -9 if prec == "bf16" else 0)


def test_the_modes_round_differently():
    """Each mode changes the products (so a test of one cannot pass on another's code path), and
    the errors against float64 order as the modes promise."""
    rng = np.random.default_rng(3)
    A, W, b = rand(rng, 64, 200), rand(rng, 48, 200, scale=200 ** -0.5), np.zeros(48, np.float32)
    be, out = NumpyBackend(), {}
    for prec in ("float32",) + MODES:
        Z = np.empty((64, 48), np.float32)
        be.dense_forward(A, W, b, "identity", Z, precision=prec)
        out[prec] = Z
    exact = A.astype(np.float64) @ W.T.astype(np.float64)
    scale = np.abs(A.astype(np.float64)) @ np.abs(W.T.astype(np.float64))
    err = {p: rel64(z, exact, scale) for p, z in out.items()}
    assert len({z.tobytes() for z in out.values()}) == 4
    assert err["3xtf32"] < 1e-6 < err["tf32"] < err["bf16"] <= P.TOLERANCE["bf16"]
    assert err["tf32"] > 1e-5 and err["bf16"] > 1e-4           # really rounded, not float32


def test_unknown_precision_in_a_layer_op_is_refused():
    z = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        NumpyBackend().dense_forward(z, z, np.zeros(2, np.float32), "relu", z.copy(), precision="fp16")
    with pytest.raises(TypeError, match="float32"):
        NumpyBackend().dense_forward(z.astype(np.float64), z.astype(np.float64), np.zeros(2), "relu",
                                     np.zeros((2, 2)), precision="bf16")


# ---------------------------------------------------------------- float32 exactly as before
def _net(prec, sizes=(20, 31, 17, 5), act="relu", loss="mse", **kw):
    return gpubp.MLP(list(sizes), activation=act, loss=loss, backend="numpy", seed=1, precision=prec, **kw)


def test_float32_is_numpys_matmul_and_never_touches_the_emulation(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the float32 path called the precision emulation")
    monkeypatch.setattr(nb, "emulated_matmul", forbidden)
    rng = np.random.default_rng(0)
    X, Y = rand(rng, 9, 20), rand(rng, 9, 5)
    net = _net("float32")
    out = net.backend.to_numpy(net.forward(X))
    A = X
    for (W, b), g in zip(net.get_params(), net.activations):
        Z = A @ W.T
        Z += b
        A = nb.activation_forward(g, Z, Z)
    assert np.array_equal(out, A)
    assert net.backend.layer_options(net._plan(9)) == {}
    net.train_step(X, Y, "adam")           # a whole step, no emulation


@pytest.mark.parametrize("prec", MODES)
def test_a_network_step_runs_every_product_in_its_mode(prec):
    """Forward, loss delta and backward of a plan in `prec` equal the layer-by-layer composition
    of the emulated products, bit for bit (so the plan's precision reaches every layer, the
    input gradient included)."""
    rng = np.random.default_rng(5)
    sizes, B = (20, 31, 17, 5), 11
    X, Y = rand(rng, B, 20), rand(rng, B, 5)
    net = _net(prec, sizes, act="silu")
    be, layers = net.backend, net.get_params()
    plan = be.make_plan(sizes, net.activations, B, np.float32, precision=prec, input_grad=True)
    plan.bind_input(X)
    be.network_forward(plan, layers)
    be.network_loss(plan, Y, "mse")
    grads = [(np.empty_like(W), np.empty_like(b)) for W, b in layers]
    be.network_backward(plan, layers, grads)

    A, Zs = [X], [None]
    for (W, b), g in zip(layers, net.activations):
        Z = stored(P.matmul(A[-1], W.T, prec) + b, prec)
        Zs.append(Z)
        A.append(stored(nb.activation_forward(g, Z, np.empty_like(Z)), prec))
    assert all(np.array_equal(plan.A[l], A[l]) for l in range(1, 4))
    assert all(np.array_equal(plan.Z[l], Zs[l]) for l in range(1, 3))     # (identity output: no Z_3)
    # mse's delta_L = (A_L - Y) 2 / (B n) g'(Z_L), in float32 from the stored A_L and Z_L
    delta = A[3] - Y
    delta *= 2.0 / (B * 5)
    delta = stored(nb.activation_backward_inplace(net.activations[-1], delta, A[3], Zs[3]), prec)
    assert np.array_equal(plan.delta[3], delta)
    for l in range(3, 0, -1):
        W = layers[l - 1][0]
        assert np.array_equal(grads[l - 1][0], P.matmul(delta.T, A[l - 1], prec)), l
        assert np.array_equal(grads[l - 1][1], delta.sum(axis=0)), l
        d = P.matmul(delta, W, prec)
        if l > 1:
            d = nb.activation_backward_inplace("silu", d, A[l - 1], Zs[l - 1])
        delta = stored(d, prec)
        assert np.array_equal(plan.delta[l - 1], delta), l
    # and not float32's numbers
    net32 = _net("float32", sizes, act="silu")
    assert not np.array_equal(net32.backend.to_numpy(net32.forward(X)), plan.A[3])


# ---------------------------------------------------------------- training
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _train(ds, prec):
    net = gpubp.MLP([64, 64, 10], loss="cross_entropy", backend="numpy", seed=0, precision=prec)
    net.fit(ds.X_train, ds.y_train, epochs=5, batch_size=64, optimizer="adam", lr=3e-3, progress=False,
            verbose=0)
    return net, accuracy(net, ds.X_test, ds.y_test)


def test_training_on_digits_reaches_float32_accuracy_in_every_mode(digits):
    ref, acc32 = _train(digits, "float32")
    assert acc32 > 0.95
    for prec in MODES:
        net, acc = _train(digits, prec)
        assert abs(acc - acc32) <= 0.005, (prec, acc, acc32)     # within half a point
        # trained on its own products: parameters near float32's, not equal to them
        p, q = net.backend.to_numpy(net._params), ref.backend.to_numpy(ref._params)
        assert not np.array_equal(p, q), prec
        assert np.abs(p - q).max() < 0.1, prec


def test_gpubp_train_on_digits_reaches_float32_test_accuracy_in_every_mode(capsys):
    """The promise as users meet it: `gpubp train --dataset digits` with its defaults (30 epochs)
    reaches the float32 test accuracy within half a point in every mode (numpy's emulation)."""
    import re

    acc = {}
    for prec in ("float32",) + MODES:
        rc, out, _ = run(capsys, "train", "--dataset", "digits", "--backend", "numpy", "--precision", prec,
                         "--no-progress")
        assert rc == 0
        acc[prec] = float(re.search(r"^test accuracy ([0-9.]+) ", out, re.M).group(1))
    assert acc["float32"] > 0.95
    assert all(abs(a - acc["float32"]) <= 0.005 for a in acc.values()), acc


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("prec", ("float32",) + MODES)
def test_checkpoint_round_trip_keeps_the_mode(tmp_path, prec):
    rng = np.random.default_rng(2)
    X, Y = rand(rng, 16, 20), rand(rng, 16, 5)
    net = _net(prec)
    net.train_step(X, Y, "adam")
    net.save(tmp_path / "n.npz")
    back = gpubp.MLP.load(tmp_path / "n.npz", backend="numpy")
    assert back.precision == prec and back.config() == net.config()
    assert np.array_equal(back.backend.to_numpy(back.forward(X)), net.backend.to_numpy(net.forward(X)))
    assert back.train_step(X, Y, "adam") == net.train_step(X, Y, "adam")
    assert np.array_equal(back.backend.to_numpy(back._params), net.backend.to_numpy(net._params))


# ---------------------------------------------------------------- refused combinations
@pytest.mark.parametrize("prec", MODES)
def test_every_mode_but_float32_needs_float32(prec):
    with pytest.raises(ValueError, match=f"precision='{prec}' needs dtype float32, got float64"):
        _net(prec, dtype="float64")
    with pytest.raises(ValueError, match="needs dtype float32"):
        NumpyBackend().make_plan((3, 2), ("identity",), 4, np.float64, precision=prec)


@pytest.mark.parametrize("bad, err", [("fp8", ValueError), ("BF16", ValueError), ("", ValueError),
                                      (32, TypeError), (None, TypeError)])
def test_unknown_precision_is_refused(bad, err):
    with pytest.raises(err, match="precision"):
        _net(bad)
    with pytest.raises(err, match="precision"):
        NumpyBackend().make_plan((3, 2), ("identity",), 4, np.float32, precision=bad)


def test_a_numpy_string_is_taken_as_the_plain_name():
    """numpy's str_ (a str subclass, what indexing an array of names gives) names a mode; it was kept
    as given, so the network's repr read precision=np.str_('tf32')."""
    net = _net(np.array(["tf32"])[0])
    assert type(net.precision) is str and "precision='tf32'" in repr(net)


def test_assigning_a_precision_applies_to_every_later_pass():
    """`net.precision` is the mode of every later pass.  It was a plain attribute: the step plans
    kept for the batch sizes already seen stayed in the old mode while new batch sizes ran the new
    one (the same network predicting in float32 on 16 rows and in bf16 on 15), and a bad name was
    stored without a word."""
    rng = np.random.default_rng(5)
    X = rand(rng, 16, 20)
    net, ref = _net("float32"), _net("bf16")
    before = net.backend.to_numpy(net.forward(X)).copy()
    net.precision = "bf16"
    for rows in (16, 15):
        got = net.backend.to_numpy(net.forward(X[:rows]))
        assert np.array_equal(got, ref.backend.to_numpy(ref.forward(X[:rows]))), rows
    assert not np.array_equal(net.backend.to_numpy(net.forward(X)), before)
    assert net.config()["precision"] == "bf16"
    for bad, err in (("TF32", ValueError), (None, TypeError), (3, TypeError), ("fp16", ValueError)):
        with pytest.raises(err, match="precision"):
            net.precision = bad
        assert net.precision == "bf16"
    n64 = _net("float32", dtype="float64")
    with pytest.raises(ValueError, match="needs dtype float32"):
        n64.precision = "tf32"
    assert n64.precision == "float32"


def test_a_captured_step_refuses_to_run_after_the_precision_changed():
    """A captured step owns a plan made in the mode of its capture: after `net.precision = ...` it
    would go on training in the old mode, so it refuses, as it does for changed hyper-parameters."""
    rng = np.random.default_rng(7)
    X, Y = rand(rng, 16, 20), rand(rng, 16, 5)
    net = _net("float32")
    step = net.capture_train_step(X, Y, "adam")
    step(X, Y)
    net.precision = "bf16"
    before = net.backend.to_numpy(net._params).copy()
    with pytest.raises(ValueError, match="precision changed since this step was captured .'float32' -> 'bf16'"):
        step(X, Y)
    assert np.array_equal(net.backend.to_numpy(net._params), before)
    net.precision = "float32"
    step(X, Y)                                  # the mode it recorded again: it runs
    assert not np.array_equal(net.backend.to_numpy(net._params), before)


def test_a_network_pickled_with_a_plain_precision_attribute_loads():
    import pickle

    rng = np.random.default_rng(6)
    X = rand(rng, 8, 20)
    net = _net("tf32")
    state = net.__getstate__()
    state["precision"] = state.pop("_precision")          # as pickles made before the property
    back = gpubp.MLP.__new__(gpubp.MLP)
    back.__setstate__(state)
    assert back.precision == "tf32"
    assert np.array_equal(back.backend.to_numpy(back.forward(X)), net.backend.to_numpy(net.forward(X)))
    assert pickle.loads(pickle.dumps(net)).precision == "tf32"


# ---------------------------------------------------------------- the command line
def test_cli_precision_flag_trains_and_saves_the_mode(capsys, tmp_path):
    ck = tmp_path / "net.npz"
    rc, out, _ = run(capsys, "train", "--dataset", "iris", "--epochs", "2", "--precision", "bf16",
                     "--backend", "numpy", "--no-progress", "--save", str(ck))
    assert rc == 0 and "precision bf16" in out
    assert gpubp.MLP.load(ck, backend="numpy").precision == "bf16"


@pytest.mark.parametrize("prec", MODES)
def test_cli_predict_runs_in_the_checkpoints_mode(capsys, tmp_path, prec):
    """`gpubp predict` has no --precision: it predicts in the mode the checkpoint was trained in."""
    ck, data, out = tmp_path / "net.npz", tmp_path / "x.npy", tmp_path / "p.npy"
    rc, _, _ = run(capsys, "train", "--dataset", "iris", "--epochs", "2", "--precision", prec,
                   "--backend", "numpy", "--no-progress", "--save", str(ck))
    assert rc == 0
    X = load_dataset("iris", seed=0).X_test
    np.save(data, X)
    rc, _, _ = run(capsys, "predict", str(ck), str(data), "--proba", "--backend", "numpy", "--out", str(out))
    assert rc == 0
    net = gpubp.MLP.load(ck, backend="numpy")
    assert net.precision == prec
    got = np.load(out)
    assert np.array_equal(got, net.predict_proba(X))
    net.precision = "float32"                  # the same weights in float32 predict other numbers
    assert not np.array_equal(got, net.predict_proba(X))


@pytest.mark.parametrize("argv, message", [
    (["--precision", "bf16", "--dtype", "float64"], "precision='bf16' needs dtype float32"),
    (["--precision", "fp16"], "invalid choice"),
])
def test_cli_bad_precision_is_a_usage_error(capsys, argv, message):
    assert message in usage_error(capsys, "train", "--backend", "numpy", *argv)


# ---------------------------------------------------------------- the CUDA backend (fake cupy, on the CPU)
def _real_gpu() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


#: what each tensor-core kernel may touch (kernels/gemm_tc.cu), checked by the fake on every launch
TC_EXTENTS = tc_contract.TC_EXTENTS

needs_fake = pytest.mark.skipif(_real_gpu(), reason="a real GPU is present: tests/gpu checks the backend there")


def _install_fake(monkeypatch, **kw):
    return tc_contract.install_fake(monkeypatch, **kw)


@pytest.fixture
def fake(monkeypatch):
    return _install_fake(monkeypatch)


def _cuda(**kw):
    from gpubp.backends.cuda_backend import CudaBackend

    return CudaBackend(**kw)


def _gemm_launches(fake):
    return [l.name for l in fake.launches if l.kernel.startswith(("gemm_", "fused_mlp"))]


@needs_fake
@pytest.mark.parametrize("prec", ("bf16", "3xtf32"))
def test_cuda_refuses_bf16_and_3xtf32_unless_opted_in(fake, prec):
    be = _cuda()
    assert prec not in be.precisions and "tf32" in be.precisions
    with pytest.raises(ValueError, match=f"precision='{prec}' is not yet available on the cuda backend.*"
                                         "tensor_core_gemms=True"):
        gpubp.MLP([8, 16, 4], backend=be, precision=prec)
    with pytest.raises(ValueError, match="not yet available on the cuda backend"):
        be.make_plan((8, 4), ("identity",), 4, np.float32, precision=prec)
    z = be.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="not yet available on the cuda backend"):
        be.dense_forward(z, z, be.zeros((4,), np.float32), "relu", z, precision=prec)
    assert not fake.launches


@needs_fake
def test_cuda_tf32_by_default_keeps_float32_per_layer_gemms(fake):
    rng = np.random.default_rng(0)
    net = gpubp.MLP([20, 300, 5], backend=_cuda(), precision="tf32", seed=0)
    assert net.backend.layer_options(net._plan(64)) == {}
    net.train_step(rand(rng, 64, 20), rand(rng, 64, 5), "adam")
    names = _gemm_launches(fake)
    assert names and not any(n.startswith("gemm_tc") for n in names), names


@needs_fake
@pytest.mark.parametrize("prec", MODES)
def test_opted_in_cuda_runs_per_layer_gemms_on_tensor_cores(fake, prec):
    """With tensor_core_gemms=True every per-layer GEMM of the step is a gemm_tc kernel of the
    mode (forward with Z for gelu, input gradient, split-K weight gradient and its reduction),
    each launch within its kernel's contract, compiled by `prepare`, and a warm step allocates
    nothing (so it can be captured)."""
    rng = np.random.default_rng(1)
    code = cuda_gemm_tc.PREC_CODES[prec]
    net = gpubp.MLP([33, 300, 130, 5], activation="gelu", backend=_cuda(tensor_core_gemms=True),
                    precision=prec, seed=0)
    X, Y = rand(rng, 1024, 33), rand(rng, 1024, 5)
    net._plan(1024)                        # made once per batch shape: `prepare` compiles the step's kernels
    compiled = list(fake.compiled)
    net.train_step(X, Y, "adam")
    assert fake.compiled == compiled, "kernels compiled mid-step, not by prepare"
    names = _gemm_launches(fake)
    assert names and all(n.startswith("gemm_tc") for n in names), names
    templated = [n for n in names if n != cuda_gemm_tc.REDUCE_NAME]
    assert all(n.split("<")[1].split(",")[0].strip() == str(code) for n in templated), names   # the mode's PREC
    kinds = {n.split("<")[0] for n in names}
    assert kinds == {"gemm_tc_fwd", "gemm_tc_bwd_data", "gemm_tc_bwd_weight", "gemm_tc_splitk_reduce"}, kinds
    assert any(l.kernel == "gemm_tc_bwd_weight" and l.grid[2] > 1 for l in fake.launches)   # split-K used
    # the loss kernel: bf16 stores delta_L rounded (its BF16 instantiation), the others float32
    (loss_kernel,) = [l.name for l in fake.launches if l.kernel == "loss_pointwise"]
    assert loss_kernel.endswith(", true>") == (prec == "bf16"), loss_kernel
    Xd, Yd = net._inputs(X), net._targets(Y, 1024)       # a warm step on device arrays
    net._step(Xd, Yd, net.optimizer, plan=net._plan(1024))
    fake.reset()
    net._step(Xd, Yd, net.optimizer, plan=net._plan(1024))
    assert fake.allocations == 0, fake.allocation_sites
    assert _gemm_launches(fake) == names


@needs_fake
@pytest.mark.parametrize("prec", MODES)
def test_opted_in_small_batches_split_k_with_the_plans_scratch(fake, prec):
    """A small batch through wide layers: the forward and input-gradient GEMMs split K (partials,
    then the ordered epilogue), their workspace comes from the plan's scratch (shared, one buffer
    per size), `prepare` compiles exactly what the step launches, a warm step allocates nothing,
    and the step can be captured into a graph that replays the same launches."""
    from gpubp.optim import Adam

    rng = np.random.default_rng(3)
    sizes, B = [600, 1024, 1024, 10], 128
    net = gpubp.MLP(sizes, activation="silu", backend=_cuda(tensor_core_gemms=True), precision=prec, seed=0)
    X, Y = rand(rng, B, 600), rand(rng, B, 10)
    plan = net._plan(B)
    compiled = set(fake.compiled)
    net.train_step(X, Y, "sgd", lr=0.01)
    launched = {l.name for l in fake.launches if l.kernel.startswith("gemm_tc")}
    assert launched <= compiled, launched - compiled
    code = cuda_gemm_tc.PREC_CODES[prec]
    # 1 x 8 output tiles of a 1024-wide layer: 264 // 8 = 33 slices allowed, K / 256 caps them
    by = {}
    for l in fake.launches:
        by.setdefault(l.kernel, []).append(l)
    parts = by["gemm_tc_splitk_partial"]
    fwd_parts = [l for l in parts if l.name == f"gemm_tc_splitk_partial<{code}, false, 3>"]
    data_parts = [l for l in parts if l.name == f"gemm_tc_splitk_partial<{code}, true, 3>"]
    assert [(l.grid, l.arg("R"), l.arg("r_per_split")) for l in fwd_parts] == [
        ((8, 1, 2), 600, 304), ((8, 1, 4), 1024, 256), ((1, 1, 4), 1024, 256)]
    # input gradients: layer 3's sums its 10 outputs (not split), layer 2's sums 1024 (split)
    assert [(l.grid, l.arg("R")) for l in data_parts] == [((8, 1, 4), 1024)]
    assert [l.name for l in by["gemm_tc_bwd_data"]] == [f"gemm_tc_bwd_data<{code}, 6, 3>"]
    assert "gemm_tc_fwd" not in by
    assert len(by["gemm_tc_fwd_splitk_epilogue"]) == 3 and len(by["gemm_tc_bwd_data_splitk_epilogue"]) == 1
    ws = [b for (key, _, _), b in plan.scratch._bufs.items() if key == "tc_splitk"]
    assert sorted(b.size for b in ws) == sorted({2 * B * 1024, 4 * B * 1024, 4 * B * 10}), \
        [b.size for b in ws]   # same-sized workspaces are one buffer
    for l in parts:
        assert any(l.arg("ws").data.ptr == b.data.ptr for b in ws)
    # warm: nothing allocated; captured: the same launches replayed
    Xd, Yd = net._inputs(X), net._targets(Y, B)
    opt = Adam(1e-3)
    net._step(Xd, Yd, opt, plan=plan)
    fake.reset()
    net._step(Xd, Yd, opt, plan=plan)
    assert fake.allocations == 0, fake.allocation_sites
    warm = [l.name for l in fake.launches]
    fake.reset()
    step = net.capture_train_step(X, Y, opt)
    captured = [l.name for l in fake.launches if l.captured]
    assert captured == warm
    fake.reset()
    step(X, Y)
    assert [l.name for l in fake.launches if l.replay] == captured


@needs_fake
def test_opted_in_tf32_keeps_the_fused_narrow_runs(fake):
    rng = np.random.default_rng(2)
    net = gpubp.MLP([32, 64, 48, 300, 5], backend=_cuda(tensor_core_gemms=True), precision="tf32", seed=0)
    net.train_step(rand(rng, 1024, 32), rand(rng, 1024, 5), "sgd", lr=0.01)
    kernels = {l.kernel for l in fake.launches}
    assert {"fused_mlp_fwd_tf32", "fused_mlp_bwd_tf32", "gemm_tc_fwd", "gemm_tc_bwd_weight"} <= kernels
    assert not kernels & {"gemm_fwd", "gemm_bwd_data", "gemm_bwd_weight", "gemm_bwd_weight_pipelined"}


@needs_fake
def test_opted_in_modes_need_compute_capability_8(monkeypatch):
    _install_fake(monkeypatch, attributes=dict(ComputeCapabilityMajor=7, ComputeCapabilityMinor=5,
                                               MaxSharedMemoryPerBlockOptin=64 * 1024), name="Tesla T4")
    be = _cuda(tensor_core_gemms=True)
    with pytest.raises(ValueError, match="compute capability 8.0 or newer.*7.5"):
        gpubp.MLP([8, 16, 4], backend=be, precision="bf16")
    # tf32 there computes in float32, as before (no tensor-core GEMMs asked for)
    net = gpubp.MLP([8, 16, 4], backend=be, precision="tf32")
    assert be.layer_options(net._plan(4)) == {}
