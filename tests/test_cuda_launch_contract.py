"""The CUDA backend's launch contract, on the CPU: every kernel launch gpubp makes passes the
arguments, grid, block and shared memory its CUDA source declares.

A fake `cupy` (tests/support/fake_cupy.py, backed by numpy) parses the kernels'
signatures from the very source gpubp compiles, checks each launch against them,
records it, and counts device allocations; its kernels compute nothing (every
array starts zeroed).  So these tests say nothing about the numbers (the GPU
tests under tests/gpu do), only that the launchers call the kernels they mean
to, correctly, on every path: per-layer GEMMs (every tile), fused narrow runs
(float32 and TF32; and the fused kernel family, every policy, called directly), split-K, losses, optimizers, plans with dLoss/dX, captured
steps; and that a step with a warm plan allocates nothing (what CUDA-graph
capture needs).  Skipped where a real CuPy with a GPU is present.
"""

import sys
import types

import numpy as np
import pytest

import gpubp
from conftest import output_activation_for, random_targets
from gpubp.activations import ACT_CODES, ACTIVATIONS
from gpubp.backends import cubin_cache, cuda_device, cuda_fused, cuda_fused_family, cuda_gemm, cuda_source
from gpubp.backends.kernel_constants import FM, FM_FIELDS, FM_VEC
from gpubp.compile_check import all_specs
from gpubp.losses import LOSSES
from gpubp.optim import SGD, Adam, AdamW
from support.fake_cupy import UNREAD_POINTERS, CaptureError, FakeCupy, LaunchError, parse_kernels


def _real_gpu() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


pytestmark = pytest.mark.skipif(_real_gpu(), reason="a real GPU is present: tests/gpu checks the backend there")

def install_fake(monkeypatch, **kw):
    """A fake `cupy` in sys.modules, and gpubp's per-device caches emptied (both undone after the test)."""
    fake = FakeCupy(unread_pointers=UNREAD_POINTERS, extents=EXTENTS, **kw)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda_device, "_attributes", {})
    monkeypatch.setattr(cuda_device, "_ccs", {})
    monkeypatch.setattr(cuda_device, "_functions", {})
    monkeypatch.setattr(cubin_cache, "_functions", {})       # kernels loaded from cubins (sm_90a)
    monkeypatch.setattr(cuda_fused, "_grids", {})
    monkeypatch.setattr(cuda_fused_family, "_grids", {})
    monkeypatch.setattr(gpubp.backends, "_instances", {})
    return fake


def _cdiv(a, b):
    return -(-a // b)


def _gemm_tiles(P, Q, bm, grid):
    assert grid[0] == _cdiv(P, bm) * _cdiv(Q, bm), f"grid {grid} for a {P} x {Q} output in {bm} x {bm} tiles"


def _bwd_weight(p, t, grid, bm):
    _gemm_tiles(p.N, p.K, bm, grid)
    S = grid[2]
    assert p.rows_per_split * S >= p.M, f"{S} splits of {p.rows_per_split} rows miss some of {p.M}"
    assert S == 1 or p.split_stride >= p.N * p.K + p.N, "split partials overlap"
    return {"D": p.M * p.N, "A": p.M * p.K, "dW_base": (S - 1) * p.split_stride + p.N * p.K,
            "db_base": (S - 1) * p.split_stride + p.N}


_NEEDS_Z = (ACT_CODES["gelu"], ACT_CODES["silu"])

#: kernel -> the elements each pointer argument must hold, from the launch's sizes (and checks of the grid)
EXTENTS = {
    "gemm_fwd": lambda p, t, g, fake: (_gemm_tiles(p.M, p.N, 32 * t["SUB"], g) or
                                 {"A": p.M * p.K, "W": p.N * p.K, "bias": p.N, "Aout": p.M * p.N,
                                  "Zout": p.M * p.N if p.write_z else 0}),
    "gemm_bwd_data": lambda p, t, g, fake: (_gemm_tiles(p.M, p.K, 32 * t["SUB"], g) or
                                      {"D": p.M * p.N, "W": p.N * p.K, "out": p.M * p.K,
                                       "Aprev": p.M * p.K if t["ACT"] not in (0,) + _NEEDS_Z else 0,
                                       "Zprev": p.M * p.K if t["ACT"] in _NEEDS_Z else 0}),
    "gemm_bwd_weight": lambda p, t, g, fake: _bwd_weight(p, t, g, 32 * t["SUB"]),
    "gemm_bwd_weight_pipelined": lambda p, t, g, fake: _bwd_weight(p, t, g, 128),
    "gemm_splitk_reduce": lambda p, t, g, fake: {"ws": (p.S - 1) * p.split_stride + p.NK + p.N, "dW": p.NK, "db": p.N},
    "loss_pointwise": lambda p, t, g, fake: {"A": p.total, "Y": p.total, "Z": p.total if t["ACT"] in _NEEDS_Z else 0,
                                       "delta": p.total if p.write_delta else 0, "partials": g[0]},
    "ce_loss_delta": lambda p, t, g, fake: {"Zl": p.B * p.n, "Yp": 0 if t["LABELS"] == "true" else p.B * p.n,
                                      "labels": p.B if t["LABELS"] == "true" else 0,
                                      "delta": p.B * p.n if p.write_delta else 0, "partials": g[0]},
    "loss_finalize": lambda p, t, g, fake: {"partials": p.count, "out": 1},
    "sgd_update": lambda p, t, g, fake: {"p": p.n, "g": p.n, "buf": p.n},
    "adam_update": lambda p, t, g, fake: {"p": p.n, "g": p.n, "m": p.n, "v": p.n, "step": 1},
    "fused_mlp_fwd": lambda p, t, g, fake: _fused_fwd(p, t, g, fake),
    "fused_mlp_fwd_tf32": lambda p, t, g, fake: _fused_fwd(p, t, g, fake),
    "fused_mlp_bwd": lambda p, t, g, fake: _fused_bwd(p, t, g, fake),
    "fused_mlp_bwd_tf32": lambda p, t, g, fake: _fused_bwd(p, t, g, fake),
    "fused_mlp_reduce": lambda p, t, g, fake: (_fused_table(p.table, g[1], None, "reduce", t, fake) and
                                               {"ws": _reduce_ws(p, t, g)}),
    # the fused kernel family (kernels/fused_mlp_family.cu): the same table and arguments
    "fused_family_fwd": lambda p, t, g, fake: _fused_fwd(p, t, g, fake),
    "fused_family_bwd": lambda p, t, g, fake: _fused_bwd(p, t, g, fake),
    "fused_family_reduce": lambda p, t, g, fake: (_fused_table(p.table, g[1], None, "reduce", t, fake) and
                                                  {"ws": _reduce_ws(p, t, g)}),
}


def _reduce_ws(p, t, g):
    """Floats of the partials a fused reduce reads: G blocks' partials ws_stride apart, of the g[1]
    layers (grid rows) from the pointer's (a deep run's slices of layers start further in)."""
    return (p.G - 1) * p.ws_stride + g[1] * (t["WMAX"] * t["WMAX"] + t["WMAX"])


def _fused_table(table, L, B, kind, t, fake):
    """Follow every pointer of a fused run's parameter table (FM_* fields, kernels/fused_mlp.cu) to
    the live float32 device array that must hold what the kernel reads or writes there."""
    assert table.size >= L * FM_FIELDS, f"a table of {table.size} entries for {L} layers"
    rows = np.asarray(table.view(np.ndarray)).reshape(-1, FM_FIELDS)[:L]
    widths = []
    for l, r in enumerate(rows):
        f = {name: int(r[i]) for name, i in FM.items()}
        n_in, n_out = f["NIN"], f["NOUT"]
        assert 1 <= n_in <= t["WMAX"] and 1 <= n_out <= t["WMAX"], f"layer {l}: widths {n_in} -> {n_out}"
        assert l == 0 or n_in == widths[-1], f"layer {l} takes {n_in} inputs after {widths[-1]} outputs"
        widths.append(n_out)
        if kind == "fwd":
            need = {"W": n_out * n_in, "B": n_out, "AOUT": B * n_out, "X": B * n_in,
                    "ZOUT": B * n_out if f["ZOUT"] else 0}
        elif kind == "bwd":
            assert kind != "bwd" or f["ACTX"] not in _NEEDS_Z or f["ZX"], f"layer {l}: g' needs Z, ZX is 0"
            need = {"W": n_out * n_in, "X": B * n_in, "ZX": B * n_in if f["ACTX"] in _NEEDS_Z else 0}
        else:
            need = {"DW": n_out * n_in, "DB": n_out}
        for field, n in need.items():
            if n:
                a = fake.memory_at(f[field], 4 * n)
                assert a is not None and a.dtype == np.float32, \
                    f"layer {l}: {field} = {f[field]:#x} is not {n} floats of a live float32 device array"
        for bit, field, n in (("W", "W", n_in), ("X", "X", n_in), ("AOUT", "AOUT", n_out), ("ZX", "ZX", n_in)):
            if f["VEC"] & FM_VEC[bit]:
                assert n % 4 == 0 and f[field] % 16 == 0, f"layer {l}: FM_VEC_{bit} set for an unaligned {field}"
    return widths


def _fused_fwd(p, t, grid, fake):
    _tiles_of_rows(p.B, t["BM"], grid)
    _fused_table(p.table, p.L, p.B, "fwd", t, fake)
    return {}


def _tiles_of_rows(B, bm, grid):
    assert grid[0] == _cdiv(B, bm), f"grid {grid} for {B} rows in tiles of {bm}"


def _fused_bwd(p, t, grid, fake):
    assert p.n_tiles == _cdiv(p.B, t["BM"]), f"{p.n_tiles} row tiles for {p.B} rows of {t['BM']}"
    assert grid[0] <= p.n_tiles, "more blocks than row tiles"
    widths = _fused_table(p.table, p.L, p.B, "bwd", t, fake)
    n_in = int(np.asarray(p.table.view(np.ndarray)).reshape(-1, FM_FIELDS)[0, FM["NIN"]])
    assert p.ws_stride >= p.L * (t["WMAX"] ** 2 + t["WMAX"]), "workspace stride below a block's partials"
    return {"ws": grid[0] * p.ws_stride, "delta_last": p.B * widths[-1],
            "delta_in": p.B * n_in if p.want_din else 0}


@pytest.fixture
def fake(monkeypatch):
    """A fake H100 (sm_90)."""
    return install_fake(monkeypatch)


def cuda(**kw):
    from gpubp.backends.cuda_backend import CudaBackend

    return CudaBackend(**kw)


def data(sizes, loss, B, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, sizes[0])), random_targets(rng, loss, B, sizes[-1])


def net_for(be, sizes, act="relu", loss="mse", dtype="float32", precision="float32"):
    return gpubp.MLP(sizes, activation=act, output_activation=output_activation_for(loss, act), loss=loss,
                     backend=be, dtype=dtype, seed=0, precision=precision)


def warm_step(net, X, Y, opt):
    """Device copies of a batch, a plan, and one step run on them (so everything is allocated)."""
    Xd, Yd = net._inputs(X), net._targets(Y, X.shape[0])
    opt = net._bind(net._resolve_optimizer(opt))
    plan = net._plan(Xd.shape[0])
    net._step(Xd, Yd, opt, plan=plan)
    return Xd, Yd, opt, plan


def assert_prepared(fake, net, X, Y, opt="adam"):
    """A training step on a new plan launches only kernels that `prepare` compiled with the plan."""
    net._plans.clear()
    fake.reset()
    Xd, Yd = net._inputs(X), net._targets(Y, X.shape[0])
    plan = net._plan(Xd.shape[0])
    before = list(fake.compiled)
    net._step(Xd, Yd, net._bind(net._resolve_optimizer(opt)), plan=plan)
    late = fake.compiled[len(before):]
    assert not late, f"kernels compiled mid-step, not by prepare: {late}"


def assert_no_allocation(fake, net, Xd, Yd, opt, plan):
    fake.reset()
    net._step(Xd, Yd, opt, plan=plan)
    assert fake.launches, "the step launched nothing"
    assert fake.allocations == 0, f"a warm step allocated: {fake.allocation_sites}"


# ------------------------------------------------------------------ the fake's own checks
def test_every_name_expression_names_a_kernel_of_its_source(fake):
    """Each module's instantiations map onto a parsed kernel with the right template arity."""
    for spec in all_specs():
        mod = fake.RawModule(code=spec.source(), options=cuda_source.NVRTC_OPTIONS,
                             name_expressions=list(spec.name_expressions))
        for expr in spec.name_expressions:
            assert mod.get_function(expr).signature.params
    sigs = parse_kernels(cuda_gemm.SPECS[0].source())
    assert [t for t, _ in sigs["gemm_fwd"].params] == ["T*"] * 5 + ["int"] * 6
    assert sigs["gemm_fwd"].template == [("typename", "T"), ("int", "ACT"), ("int", "SUB")]
    assert sigs["gemm_bwd_weight"].params[8] == ("long long", "split_stride")
    assert sigs["gemm_fwd"].max_threads == 256
    fsigs = parse_kernels(cuda_fused.SPECS[0].source())
    assert fsigs["fused_mlp_bwd"].params[0] == ("long long*", "table")
    assert fsigs["fused_mlp_bwd"].max_threads == 256


def _fwd_args(fake, M=8, N=4, K=3, dtype=np.float32):
    A, W, b = fake.zeros((M, K), dtype), fake.zeros((N, K), dtype), fake.zeros((N,), dtype)
    Ao, Zo = fake.zeros((M, N), dtype), fake.zeros((M, N), dtype)
    return [A, W, b, Ao, Zo] + [np.int32(v) for v in (M, N, K, 1, 0, 0)]


@pytest.mark.parametrize("bad, message", [
    (lambda f, a: a[:-1], "10 arguments for 11"),
    (lambda f, a: a[:5] + [np.int64(8)] + a[6:], "expected numpy.int32, got int64"),
    (lambda f, a: a[:5] + [8] + a[6:], "expected numpy.int32, got int"),
    (lambda f, a: [f.zeros((8, 3), np.float64)] + a[1:], "expected a float32 array, got float64"),
    (lambda f, a: [np.zeros((8, 3), np.float32)] + a[1:], "expected a device array"),
    (lambda f, a: [f.zeros((3, 8), np.float32).T] + a[1:], "not C-contiguous"),
])
def test_the_contract_refuses_wrong_arguments(fake, bad, message):
    f = fake.RawModule(code=cuda_gemm.SPECS[0].source(),
                       name_expressions=list(cuda_gemm.SPECS[0].name_expressions)).get_function(
        "gemm_fwd<float, 3, 2>")
    f((1, 1, 1), (256, 1, 1), tuple(_fwd_args(fake)))     # the right arguments pass
    with pytest.raises(LaunchError, match=message):
        f((1, 1, 1), (256, 1, 1), tuple(bad(fake, _fwd_args(fake))))


def test_the_contract_refuses_bad_launch_shapes_and_names(fake):
    spec = cuda_gemm.SPECS[0]
    mod = fake.RawModule(code=spec.source(), name_expressions=list(spec.name_expressions))
    with pytest.raises(LaunchError, match="name_expressions"):
        mod.get_function("gemm_fwd<float, 3, 3>")
    f = mod.get_function("gemm_bwd_weight_pipelined<16, 3>")
    d, a = fake.zeros((8, 4), np.float32), fake.zeros((8, 3), np.float32)
    dW, db = fake.zeros((4, 3), np.float32), fake.zeros((4,), np.float32)
    args = (d, a, dW, db, np.int32(8), np.int32(4), np.int32(3), np.int32(8), np.int64(0), np.int32(0))
    with pytest.raises(LaunchError, match="__launch_bounds__ allows 256"):
        f((1, 1, 1), (512, 1, 1), args)
    with pytest.raises(LaunchError, match="at most 1024"):
        f((1, 1, 1), (64, 32, 1), args)
    with pytest.raises(LaunchError, match="grid"):
        f((0, 1, 1), (256, 1, 1), args)
    with pytest.raises(LaunchError, match="grid"):
        f((1, 70000, 1), (256, 1, 1), args)
    smem = cuda_gemm._pipelined_smem()
    assert smem > 48 * 1024
    with pytest.raises(LaunchError, match="max_dynamic_shared_size_bytes is 49152"):
        f((1, 1, 1), (256, 1, 1), args, shared_mem=smem)
    with pytest.raises(LaunchError, match="device allows"):
        f.max_dynamic_shared_size_bytes = 228 * 1024
    f.max_dynamic_shared_size_bytes = smem
    f((1, 1, 1), (256, 1, 1), args, shared_mem=smem)
    assert len(fake.launched("gemm_bwd_weight_pipelined")) == 1


def test_capture_refuses_allocation_and_synchronisation(fake):
    s = fake.cuda.Stream(non_blocking=True)
    a = fake.zeros((4,), np.float32)
    with s:
        s.begin_capture()
        a += 1                             # recorded, not run
        with pytest.raises(CaptureError):
            a + 1                          # allocates
        with pytest.raises(CaptureError):
            fake.asnumpy(a)                # reads back
        g = s.end_capture()
    assert a.tolist() == [0, 0, 0, 0]
    g.launch(s)
    g.launch(s)
    assert a.tolist() == [2, 2, 2, 2]
    with pytest.raises(TypeError, match="host numpy array"):
        a + np.ones(4, np.float32)


# ------------------------------------------------------------------ every activation and loss, both dtypes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
def test_every_activation_and_loss_on_the_per_layer_path(fake, dtype, loss):
    be = cuda()
    for act in ACTIVATIONS:
        sizes = (5, 7, 3)
        net = net_for(be, sizes, act, loss, dtype)
        X, Y = data(sizes, loss, 10)
        fake.reset()
        loss_value, grads = net.loss_and_grads(X, Y)
        assert loss_value == 0.0 and [g.shape for g, _ in grads] == [(7, 5), (3, 7)]
        ct = "float" if dtype == "float32" else "double"
        names = {l.name for l in fake.launches}
        small = cuda_gemm._SUBS[ct][1]
        assert {f"gemm_fwd<{ct}, {ACT_CODES[act]}, {small}>", f"gemm_bwd_data<{ct}, {ACT_CODES[act]}, {small}>",
                f"gemm_bwd_weight<{ct}, {small}>"} <= names, names
        assert f"loss_finalize<{ct}>" in names
        if loss == "cross_entropy":
            assert f"ce_loss_delta<{ct}, true, false>" in names
        net.train_step(X, Y, "adam", lr=1e-3)
        hist = net.fit(X, Y, epochs=2, batch_size=5, optimizer="sgd", lr=0.1, progress=False)
        assert hist["loss"] == [0.0, 0.0] and net.optimizer.t == 4
        assert net.evaluate(X, Y)["loss"] == 0.0
        assert net.predict(X).shape[0] == 10
        step = net.capture_train_step(X, Y, "sgd")
        fake.reset()
        step(X, Y)
        assert fake.launches and all(l.replay for l in fake.launches)
        assert_prepared(fake, net, X, Y)
        if loss == "cross_entropy":        # one-hot targets: the dense cross-entropy kernel
            net.loss_and_grads(X, np.eye(3)[Y])
            assert f"ce_loss_delta<{ct}, false, false>" in {l.name for l in fake.launches}


def test_wide_cross_entropy_takes_the_block_per_row_kernel(fake):
    net = net_for(cuda(), (4, 1100), "relu", "cross_entropy")
    X, Y = data((4, 1100), "cross_entropy", 3)
    net.loss_and_grads(X, Y)
    assert "ce_loss_delta<float, true, true>" in {l.name for l in fake.launches}


# ------------------------------------------------------------------ fused narrow runs
FUSED_SIZES = (32, 64, 48, 16)     # every width <= 64, three layers


@pytest.mark.parametrize("precision", ["float32", "tf32"])
def test_fused_runs_for_every_activation(fake, precision):
    be = cuda()
    sfx = "" if precision == "float32" else "_tf32"
    for act in ACTIVATIONS:
        net = net_for(be, FUSED_SIZES, act, "mse", precision=precision)
        X, Y = data(FUSED_SIZES, "mse", 1024)
        fake.reset()
        net.loss_and_grads(X, Y)
        names = [l.name for l in fake.launches]
        assert names == [f"fused_mlp_fwd{sfx}<128, 64>", f"loss_pointwise<float, 0, {ACT_CODES[act]}>",
                         "loss_finalize<float>", f"fused_mlp_bwd{sfx}<128, 64>", "fused_mlp_reduce<64>"], names
        fwd, bwd = fake.launches[0], fake.launches[3]
        assert fwd.shared_mem == cuda_fused.fwd_smem_bytes(64, 128, precision) > 0
        assert bwd.shared_mem == cuda_fused.bwd_smem_bytes(64, 128, precision) > 48 * 1024
        assert bwd.arg("want_din") == 0
        assert_prepared(fake, net, X, Y, "sgd")
        Xd, Yd, opt, plan = warm_step(net, X, Y, "sgd")
        assert_no_allocation(fake, net, Xd, Yd, opt, plan)
        step = net.capture_train_step(X, Y, Adam(1e-3))
        fake.reset()
        step(X, Y)
        assert [l.kernel for l in fake.launches] == ["fused_mlp_fwd" + sfx, "loss_pointwise", "loss_finalize",
                                                      "fused_mlp_bwd" + sfx, "fused_mlp_reduce", "adam_update"]


def test_a_fused_run_next_to_wide_layers(fake):
    """Layer 1 is too wide to fuse; layers 2..3 form a run, whose backward also writes delta[1]."""
    sizes = (200, 64, 64, 10)
    net = net_for(cuda(), sizes, "silu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 1024)
    fake.reset()
    net.loss_and_grads(X, Y)
    names = [l.kernel for l in fake.launches]
    assert names[:2] == ["gemm_fwd", "fused_mlp_fwd"], names
    assert names[names.index("fused_mlp_reduce") + 1] == "gemm_bwd_weight", names
    plan = net._plans[1024]
    bwd = fake.launched("fused_mlp_bwd")[0]
    assert bwd.arg("want_din") == 1 and bwd.arg("delta_in") is plan.delta[1]
    assert not any(l.kernel == "gemm_bwd_data" for l in fake.launches)     # no layer below layer 1
    assert_prepared(fake, net, X, Y)


def test_small_batches_and_fuse_false_take_the_per_layer_path(fake):
    X, Y = data(FUSED_SIZES, "mse", 1024)
    for be, B in ((cuda(fuse=False), 1024), (cuda(), 1023)):
        net = net_for(be, FUSED_SIZES)
        fake.reset()
        net.loss_and_grads(X[:B], Y[:B])
        kernels = fake.kernel_names()
        assert "fused_mlp_fwd" not in kernels and {"gemm_fwd", "gemm_bwd_data"} <= kernels


# ------------------------------------------------------------------ GEMM tiles and split-K
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tile", cuda_gemm.TILES + (None,))
def test_every_gemm_tile(fake, tile, dtype):
    sizes = (128, 256, 128)                  # aligned, every dimension fills the large tile
    net = net_for(cuda(tile=tile), sizes, "gelu", "mse", dtype)
    X, Y = data(sizes, "mse", 512)
    fake.reset()
    net.loss_and_grads(X, Y)
    names = {l.name for l in fake.launches}
    ct = "float" if dtype == "float32" else "double"
    big, small = cuda_gemm._SUBS[ct]
    sub = small if tile == "small" else big
    if tile is None:              # chosen by size: the batch (512 x 256) is too small for the large tile
        assert {f"gemm_fwd<{ct}, 5, {small}>", f"gemm_bwd_data<{ct}, 5, {small}>"} <= names, names
    else:
        assert {f"gemm_fwd<{ct}, 5, {sub}>", f"gemm_bwd_data<{ct}, 5, {sub}>"} <= names, names
    # dW (256 x 128 and 128 x 256) fills the large tile: the pipelined kernel serves aligned float32
    if dtype == "float32" and tile in (None, "pipelined"):
        assert "gemm_bwd_weight_pipelined<16, 3>" in names and not any(
            n.startswith("gemm_bwd_weight<") for n in names), names
        for l in fake.launched("gemm_bwd_weight_pipelined"):
            assert l.shared_mem == cuda_gemm._pipelined_smem() > 48 * 1024
    else:
        assert f"gemm_bwd_weight<{ct}, {sub}>" in names and "gemm_bwd_weight_pipelined<16, 3>" not in names
    assert_prepared(fake, net, X, Y)
    Xd, Yd, opt, plan = warm_step(net, X, Y, Adam(1e-3))
    assert_no_allocation(fake, net, Xd, Yd, opt, plan)


def test_split_k_workspace_comes_from_the_plan(fake):
    """A narrow layer on a tall batch splits the dW sum over the batch: partials, then a reduce."""
    sizes = (32, 32, 8)
    net = net_for(cuda(fuse=False), sizes, "tanh", "half_sse")
    X, Y = data(sizes, "half_sse", 4096)
    assert_prepared(fake, net, X, Y, "sgd")
    Xd, Yd, opt, plan = warm_step(net, X, Y, "sgd")
    fake.reset()
    net._step(Xd, Yd, opt, plan=plan)
    split = [l for l in fake.launched("gemm_bwd_weight") if l.grid[2] > 1]
    assert split and len(fake.launched("gemm_splitk_reduce")) == len(split)
    assert fake.allocations == 0, fake.allocation_sites
    ws = split[0].arg("dW_base")
    assert any(ws is b for b in plan.scratch._bufs.values())


# ------------------------------------------------------------------ plans with dLoss/dX
@pytest.mark.parametrize("sizes, fused", [((32, 64, 16), True), ((200, 64, 16), False)])
def test_input_gradient_plan(fake, sizes, fused):
    be = cuda()
    net = net_for(be, sizes, "gelu", "mse")
    X, Y = data(sizes, "mse", 1024)
    plan = be.make_plan(net.sizes, net.activations, 1024, net.dtype, input_grad=True)
    plan.bind_input(net._inputs(X))
    Yd = net._targets(Y, 1024)
    be.prepare(plan, net.loss)
    prepared = list(fake.compiled)
    done = []
    for _ in range(2):
        fake.reset()
        be.network_forward(plan, net._Wb)
        be.network_loss(plan, Yd, net.loss)
        be.network_backward(plan, net._Wb, net._dWb, after_layer=done.append)
    assert fake.allocations == 0, fake.allocation_sites
    assert fake.compiled == prepared, f"compiled mid-step: {fake.compiled[len(prepared):]}"
    assert done == [2, 1, 2, 1]
    if fused:
        bwd = fake.launched("fused_mlp_bwd")[0]
        assert bwd.arg("delta_in") is plan.delta[0] and bwd.arg("want_din") == 1
    else:
        outs = [l.arg("out") for l in fake.launched("gemm_bwd_data")]
        assert any(o is plan.delta[0] for o in outs)
        first = [l for l in fake.launched("gemm_bwd_data") if l.arg("out") is plan.delta[0]][0]
        assert first.name == "gemm_bwd_data<float, 0, 2>"      # the input has no activation


# ------------------------------------------------------------------ optimizers, fit, capture
OPTIMIZERS = [lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9, weight_decay=1e-4),
              lambda: SGD(0.1, momentum=0.5, nesterov=True),
              lambda: Adam(1e-3), lambda: Adam(1e-3, weight_decay=1e-2), lambda: AdamW(1e-3)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make_opt", OPTIMIZERS)
def test_optimizers(fake, make_opt, dtype):
    opt = make_opt()
    net = net_for(cuda(), (6, 9, 2), "leaky_relu", "mse", dtype)
    X, Y = data((6, 9, 2), "mse", 17)
    fake.reset()
    net.train_step(X, Y, opt)
    ct = "float" if dtype == "float32" else "double"
    if isinstance(opt, SGD):
        (u,) = fake.launched(f"sgd_update<{ct}>")
        assert u.arg("flags") == (1 if opt.weight_decay else 0) | (2 if opt.momentum else 0) | (4 if opt.nesterov else 0)
        assert u.arg("buf") is (opt.state["velocity"] if opt.momentum else net._params)
    else:
        (u,) = fake.launched(f"adam_update<{ct}>")
        mode = 0 if not opt.weight_decay else (2 if isinstance(opt, AdamW) else 1)
        assert u.arg("mode") == mode and u.arg("step") is opt._t
    assert u.arg("p") is net._params and u.arg("g") is net._grads
    assert_prepared(fake, net, X, Y, make_opt())
    Xd, Yd, opt, plan = warm_step(net, X, Y, opt)
    assert_no_allocation(fake, net, Xd, Yd, opt, plan)


@pytest.mark.parametrize("velocity, nesterov, words", [(None, False, "needs a velocity buffer"),
                                                       ("buffer", True, "Nesterov momentum needs a momentum")])
def test_sgd_update_refuses_momentum_settings_it_cannot_run_and_launches_nothing(fake, velocity, nesterov, words):
    """The kernel reads the velocity only with momentum (flag 2) and applies Nesterov (flag 4) only with it."""
    from gpubp.backends import cuda_elementwise

    p, g, v = (fake.asarray(np.zeros(8, np.float32)) for _ in range(3))
    fake.reset()
    with pytest.raises(ValueError, match=words):
        cuda_elementwise.sgd_update(p, g, v if velocity else None, 0.1, 0.9 if velocity is None else 0.0,
                                    nesterov=nesterov)
    assert not fake.launched("sgd_update<float>")


@pytest.mark.parametrize("sizes, B, dtype, precision", [
    ((32, 64, 48, 16), 1024, "float32", "float32"),
    ((32, 64, 48, 16), 1024, "float32", "tf32"),
    ((20, 30, 4), 50, "float64", "float32"),
])
def test_fit_evaluate_predict(fake, sizes, B, dtype, precision):
    net = net_for(cuda(), sizes, "relu", "binary_cross_entropy", dtype, precision)
    X, Y = data(sizes, "binary_cross_entropy", 2 * B)
    hist = net.fit(X, Y, epochs=2, batch_size=B, optimizer="adamw", lr=1e-3, progress=False,
                   validation=(X[:B], Y[:B]))
    assert hist["loss"] == [0.0, 0.0] and len(hist["val_loss"]) == 2
    assert net.optimizer.t == 4
    assert net.evaluate(X, Y)["loss"] == 0.0
    assert net.predict(X).shape == Y.shape
    if precision == "tf32":
        assert "fused_mlp_bwd_tf32" in fake.kernel_names()


@pytest.mark.parametrize("sizes, B, dtype, loss", [
    ((32, 64, 48, 16), 1024, "float32", "cross_entropy"),     # fused
    ((40, 130, 7), 300, "float32", "mse"),                     # per-layer, split-K
    ((9, 13, 3), 33, "float64", "cross_entropy"),
])
def test_captured_step_replays_its_launches(fake, sizes, B, dtype, loss):
    net = net_for(cuda(), sizes, "silu", loss, dtype)
    X, Y = data(sizes, loss, B)
    opt = Adam(1e-3)
    step = net.capture_train_step(X, Y, opt)       # capture fails on any allocation or sync in the step
    captured = [l.name for l in fake.launches if l.captured]
    assert captured and opt.t == 1                 # the capture ran nothing
    fake.reset()
    for _ in range(3):
        step(X, Y)
    replayed = [l.name for l in fake.launched(replay=True)]
    assert replayed == captured * 3
    assert opt.t == 4                              # the recorded in-place step count ran per replay
    assert not fake.launched(replay=False)


def test_captured_step_refuses_a_changed_optimizer(fake):
    """The graph holds the learning rate it was captured with (the sgd_update launch's argument):
    after `opt.lr` changes a replay would silently train at the old rate, so the step refuses
    and launches nothing."""
    sizes = (12, 40, 5)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 64)
    opt = SGD(0.1, momentum=0.9)
    step = net.capture_train_step(X, Y, opt, check_inputs=False)
    lrs = [l.args[4] for l in fake.launched("sgd_update")]           # (p, g, buf, n, lr, ...)
    assert lrs and all(lr == np.float32(0.1) for lr in lrs)       # the rate recorded into the graph
    fake.reset()
    opt.lr = 0.5
    with pytest.raises(ValueError, match="capture again"):
        step(X, Y)
    assert not fake.launched(), "a refused step launched"
    opt.lr = 0.1
    step(X, Y)
    assert fake.launched(replay=True)


def test_captured_step_without_checks_range_checks_wide_device_labels(fake):
    """Without input checks, device int64 labels are range-checked before their cast to the
    captured int32 buffer (2**32 + 1 would wrap to label 1)."""
    sizes = (12, 40, 5)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 64)
    step = net.capture_train_step(X, Y, SGD(0.1), check_inputs=False)
    fake.reset()
    wide = fake.asarray(Y.astype(np.int64))
    wide[3] = 2**32 + 1
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        step(X, wide)
    assert not fake.launched(), "a refused step launched"
    step(X, fake.asarray(Y.astype(np.int64)))
    assert fake.launched(replay=True)


class _CudaTensorLike:
    """A stand-in for a PyTorch CUDA tensor: `is_cuda`, DLPack on CUDA device `device` (its
    capsule is a host array's, which the fake cupy's from_dlpack takes), and, as torch does for a
    tensor that requires grad, `__cuda_array_interface__` and `__dlpack__` raising RuntimeError."""

    is_cuda = True

    def __init__(self, a, device=0, requires_grad=False):
        self._a, self._device, self._grad = np.ascontiguousarray(a), device, requires_grad
        self.dtype, self.shape = self._a.dtype, self._a.shape

    def __dlpack_device__(self):
        return (2, self._device)

    def __dlpack__(self, *args, **kwargs):
        if self._grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")
        return self._a.__dlpack__(*args, **kwargs)

    @property
    def __cuda_array_interface__(self):
        if self._grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad.")
        raise AttributeError("the fake cupy takes this object through DLPack only")


def test_cuda_tensor_inputs_through_dlpack(fake):
    """Device objects reach the backend through DLPack: one on the current device trains; one on
    another device is refused naming both devices; one that requires grad is refused with the
    backend's TypeError saying to detach it (not torch's RuntimeError from a probe of the input)."""
    sizes = (12, 40, 5)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 64)
    X32 = X.astype(np.float32)
    net.train_step(_CudaTensorLike(X32), Y, "adam", lr=1e-3)
    assert net.optimizer.t == 1
    with pytest.raises(ValueError, match="CUDA device 1 but the current device is 0"):
        net.train_step(_CudaTensorLike(X32, device=1), Y, "adam")
    with pytest.raises(TypeError, match=r"detach\(\)"):
        net.train_step(_CudaTensorLike(X32, requires_grad=True), Y, "adam")
    with pytest.raises(TypeError, match=r"detach\(\)"):
        net.predict(_CudaTensorLike(X32, requires_grad=True))
    assert net.optimizer.t == 1


class _ManagedTensorLike(_CudaTensorLike):
    """DLPack on CUDA managed memory (kDLCUDAManaged), as a tensor in unified memory reports."""

    def __dlpack_device__(self):
        return (13, self._device)


def test_cuda_managed_memory_inputs_through_dlpack(fake):
    """A DLPack object in CUDA managed memory is a device input as a kDLCUDA one is: taken through
    DLPack (a managed tensor on another device is refused naming it)."""
    sizes = (12, 40, 5)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 64)
    X32 = X.astype(np.float32)
    assert np.array_equal(net.predict(_ManagedTensorLike(X32)), net.predict(X32))
    with pytest.raises(ValueError, match="CUDA device 1 but the current device is 0"):
        net.predict(_ManagedTensorLike(X32, device=1))


def test_captured_fused_step_owns_its_plan_through_evictions(fake):
    """A fused run's pointer table holds its plan's buffer addresses, which nothing else keeps:
    after evaluations at more batch sizes than MAX_PLANS (plans made and evicted) and a garbage
    collection, every address the captured step's tables hold is still a live float32 array."""
    import gc

    from gpubp.network import MAX_PLANS

    net = net_for(cuda(), FUSED_SIZES, "relu", "mse")
    X, Y = data(FUSED_SIZES, "mse", 1024 + 3 * MAX_PLANS)
    step = net.capture_train_step(X[:1024], Y[:1024], Adam(1e-3))
    for k in range(1, 2 * MAX_PLANS + 1):
        net.evaluate(X[:1024 + k], Y[:1024 + k])          # fused plans of other shapes
    assert len(net._plans) == MAX_PLANS and 1024 not in net._plans
    gc.collect()
    fake.reset()
    step(X[:1024], Y[:1024])
    fused = [l for l in fake.launched(replay=True) if l.kernel.startswith("fused_mlp")]
    assert {l.kernel for l in fused} == {"fused_mlp_fwd", "fused_mlp_bwd", "fused_mlp_reduce"}
    for l in fused:
        rows = np.asarray(l.args[0].view(np.ndarray)).reshape(-1, FM_FIELDS)
        for r in rows:
            for field in ("W", "X", "AOUT", "DW"):
                ptr = int(r[FM[field]])
                if ptr:
                    a = fake.memory_at(ptr, 4)
                    assert a is not None and a.dtype == np.float32, f"{l.name}: {field} {ptr:#x} is not live"


@pytest.mark.parametrize("make", [lambda: "cuda", lambda: cuda(tile="large")], ids=["default", "own"])
def test_a_copied_cuda_network_shares_its_backend(fake, make):
    """copy.deepcopy(net) (keeping a best model) copied the backend too, and the CUDA backend holds
    the cupy module, which cannot be copied: TypeError "cannot pickle 'module' object".  A backend
    holds only read-only things, so a copy (of a network, its optimizer) shares it; a pickled backend
    comes back as the default instance of its name, or as one of its settings."""
    import copy
    import pickle

    be = make()
    net = net_for(be, (6, 16, 3), "relu", "cross_entropy")
    X, Y = data((6, 16, 3), "cross_entropy", 32)
    net.train_step(X, Y, "adam")
    twin = copy.deepcopy(net)
    assert twin.backend is net.backend and twin.optimizer._backend is net.backend
    assert twin.optimizer._params is twin._params and twin._params is not net._params
    assert all(np.array_equal(a, b) for p, q in zip(net.get_params(), twin.get_params()) for a, b in zip(p, q))
    twin.train_step(X, Y, "adam")
    assert twin.optimizer.t == 2 and net.optimizer.t == 1
    back = pickle.loads(pickle.dumps(net.backend))
    if be == "cuda":
        assert back is net.backend is gpubp.backends.get_backend("cuda")
    else:
        assert back is not be and type(back) is type(be) and back.tile == "large" and back.fuse


def test_memory_refusals_come_before_any_allocation(fake, monkeypatch):
    """The constructor and a new step plan refuse what does not fit before allocating: a refused
    network allocates nothing, a refused batch only its own device copies (not the optimizer's
    state: the call leaves `net.optimizer` as it was)."""
    be = cuda()
    monkeypatch.setattr(be, "free_memory", lambda: 100_000)
    fake.reset()
    with pytest.raises(MemoryError, match=r"[\d,]+ bytes"):
        net_for(be, (1000, 1000, 10))
    assert fake.allocations == 0, fake.allocation_sites
    net = net_for(be, (12, 40, 5), "relu", "cross_entropy")
    X, Y = data((12, 40, 5), "cross_entropy", 4096)
    fake.reset()
    with pytest.raises(MemoryError, match=r"buffers for a batch of 4096 rows need [\d,]+ bytes"):
        net.train_step(X, Y, "adam")
    assert fake.allocations == 2 and all("_raw_inputs" in s or "_targets" in s for s in fake.allocation_sites), \
        fake.allocation_sites
    assert net.optimizer is None and 4096 not in net._plans
    opt = Adam(1e-3)
    fake.reset()
    with pytest.raises(MemoryError, match=r"buffers for a batch of 4096 rows"):
        net.capture_train_step(X, Y, opt)
    assert net.optimizer is None and opt.state == {}
    assert not [s for s in fake.allocation_sites if "optim.py" in s or "plan.py" in s], fake.allocation_sites
    fake.reset()
    with pytest.raises(MemoryError, match=r"buffers for a batch of 4096 rows"):
        net.fit(X, Y, epochs=1, batch_size=4096, optimizer=opt, standardize=True, progress=False)
    assert net.optimizer is None and opt.state == {} and net.standardization is None and net.target_ndim is None
    assert not [s for s in fake.allocation_sites if "optim.py" in s or "plan.py" in s], fake.allocation_sites


def test_a_new_plan_counts_the_memory_of_the_plan_it_evicts(fake, monkeypatch):
    """With MAX_PLANS plans kept, a new batch shape evicts the least recently used plan before its
    own plan's memory check: a batch that fits once that plan is gone is not refused."""
    from gpubp.backends.plan import StepPlan
    from gpubp.network import MAX_PLANS

    be = cuda()
    sizes = (12, 40, 5)
    net = net_for(be, sizes, "relu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 1000 + MAX_PLANS)
    for k in range(MAX_PLANS):
        net.train_step(X[:1000 + k], Y[:1000 + k], "sgd")
    assert len(net._plans) == MAX_PLANS
    fake.reset()                                         # its launch records hold the plans' arrays

    def live():
        return sum(a.nbytes for a in (r() for r in list(fake._live.values())) if a is not None)

    B = 1000 + MAX_PLANS
    need = StepPlan.nbytes_estimate(net.sizes, net.activations, B, net.dtype)
    inputs = B * (sizes[0] + 1) * 4                      # this batch's float32 X and int32 labels
    cap = live() + inputs + need // 2                    # room for half a plan, until one goes
    monkeypatch.setattr(be, "free_memory", lambda: cap - live())
    net.train_step(X[:B], Y[:B], "sgd")
    assert len(net._plans) == MAX_PLANS and B in net._plans and 1000 not in net._plans


def test_evaluate_and_predict_run_in_chunks(fake, monkeypatch):
    """evaluate, predict and forward on CUDA run EVAL_CHUNK rows at a time: no launch covers more rows,
    no plan is larger."""
    import gpubp.network

    monkeypatch.setattr(gpubp.network, "EVAL_CHUNK", 40)
    net = net_for(cuda(), (12, 40, 5), "relu", "cross_entropy")
    X, Y = data((12, 40, 5), "cross_entropy", 100)
    fake.reset()
    net.evaluate(X, Y)
    assert net.predict(X).shape == (100,) and net.forward(X).shape == (100, 5)
    rows = [int(l.args[5]) for l in fake.launched("gemm_fwd")]          # (A, W, b, Aout, Z, M, ...)
    assert sorted(set(rows)) == [20, 40] and sorted(net._plans) == [20, 40]


def test_a_network_used_under_another_current_device_is_refused(fake, monkeypatch):
    """Kernels launch on the current device and read the network's parameters there: a network
    made on device 0 and called under device 1 (as the refusal of an input on device 1 suggests:
    select that device) is refused before anything is copied or launched, by every pass."""
    from gpubp.backends import cuda_backend

    sizes = (12, 40, 5)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 64)
    step = net.capture_train_step(X, Y, SGD(0.1), check_inputs=False)
    monkeypatch.setattr(cuda_backend, "device_id", lambda: 1)
    fake.reset()
    for call in (lambda: net.train_step(X, Y, "sgd"), lambda: net.predict(X), lambda: net.evaluate(X, Y),
                 lambda: net.fit(X, Y, epochs=1, progress=False), lambda: net.loss_and_grads(X, Y),
                 lambda: step(X, Y)):
        with pytest.raises(ValueError, match=r"the network is on CUDA device 0 but the current device is 1; "
                                             r".*Device\(0\)"):
            call()
    assert not fake.launches and fake.allocations == 0, fake.allocation_sites


def test_set_standardization_under_another_current_device_is_refused(fake, monkeypatch):
    """set_standardization makes device copies of mean and 1/std that every forward reads where the
    kernels launch: under device 1 for a network on device 0 it is refused (naming both devices)
    before anything is copied, the standardisation unchanged; (None, None) still stops it."""
    from gpubp.backends import cuda_backend

    sizes = (6, 8, 3)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X, _ = data(sizes, "cross_entropy", 16)
    monkeypatch.setattr(cuda_backend, "device_id", lambda: 1)
    fake.reset()
    with pytest.raises(ValueError, match="the network is on CUDA device 0 but the current device is 1"):
        net.set_standardization(X.mean(axis=0), X.std(axis=0))
    assert net.standardization is None and net._std_dev is None
    assert fake.allocations == 0, fake.allocation_sites
    net.set_standardization(None, None)
    assert net.standardization is None


def test_train_step_allocates_only_the_batch_copies(fake):
    """On the per-layer path a step on a new host batch allocates its device copies and nothing else."""
    net = net_for(cuda(), (12, 40, 5), "relu", "cross_entropy")
    X, Y = data((12, 40, 5), "cross_entropy", 64)
    net.train_step(X, Y, "adam", lr=1e-3)
    fake.reset()
    net.train_step(X, Y, "adam")
    assert fake.allocations == 2, fake.allocation_sites
    assert all("_raw_inputs" in s or "_targets" in s for s in fake.allocation_sites), fake.allocation_sites


def test_fused_steps_upload_their_pointer_tables_once(fake):
    """A fused run's table holds its input's address; layer 1's input is copied into a buffer
    the plan keeps, so new batches (new addresses) need no new table (an upload and a sync)."""
    sizes = (16, 64, 64, 10)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 2048)
    net.fit(X, Y, epochs=1, batch_size=1024, progress=False)       # warm: plan, tables, copies
    assert any(l.name.startswith("fused_mlp_fwd") for l in fake.launched())
    fake.reset()
    net.fit(X, Y, epochs=3, batch_size=1024, progress=False)
    tables = [s for s in fake.allocation_sites if "_table" in s]
    assert not tables, tables


def test_random_networks_are_prepared_and_a_warm_step_allocates_nothing(monkeypatch, rng):
    """Random networks (fused runs or not, every loss, per-layer activations, both dtypes, every
    precision with and without the tensor-core and Hopper GEMMs): `prepare` compiles every kernel
    the first step launches, and a warm step allocates nothing."""
    from gpubp.backends import cuda_gemm_wgmma
    from support.random_networks import random_network

    for _ in range(40):
        c = random_network(rng, max_width=300, batches=(1, 300), fused_batches=(1024, 2500))
        precision = str(rng.choice(["float32", "tf32", "bf16", "3xtf32"]))
        tc = precision in ("bf16", "3xtf32") or bool(rng.random() < 0.5)
        hopper = tc and precision != "3xtf32" and bool(rng.random() < 0.5)
        dtype = "float64" if precision == "float32" and rng.random() < 0.3 else "float32"
        opt = str(rng.choice(["sgd", "adam", "adamw"]))
        with monkeypatch.context() as m:
            fake = install_fake(m)
            m.setattr(cuda_gemm_wgmma, "_driver", lambda: fake.driver)
            net = gpubp.MLP(c["sizes"], activation=c["activations"], output_activation=c["output_activation"],
                            loss=c["loss"], backend=cuda(tensor_core_gemms=tc, hopper=hopper), dtype=dtype,
                            seed=0, precision=precision)
            X, Y = data(c["sizes"], c["loss"], c["B"])
            where = f"{c}, {precision}, tensor_core_gemms={tc}, hopper={hopper}, {dtype}, {opt}"
            try:
                assert_prepared(fake, net, X, Y, opt)
                assert_no_allocation(fake, net, *warm_step(net, X, Y, opt))
            except AssertionError as e:
                raise AssertionError(f"{where}: {e}") from None


# ------------------------------------------------------------------ other devices
#: (name, attributes that differ from the H100's, fused float32 fits, TF32 kernels run)
DEVICES = [
    ("A100", dict(MultiProcessorCount=108, MaxSharedMemoryPerBlockOptin=163 * 1024,
                  MaxSharedMemoryPerMultiprocessor=164 * 1024, ComputeCapabilityMajor=8), True, True),
    ("A10", dict(MultiProcessorCount=72, MaxSharedMemoryPerBlockOptin=99 * 1024,
                 MaxSharedMemoryPerMultiprocessor=100 * 1024, MaxThreadsPerMultiProcessor=1536,
                 ComputeCapabilityMajor=8, ComputeCapabilityMinor=6), True, True),
    ("V100", dict(MultiProcessorCount=80, MaxSharedMemoryPerBlockOptin=96 * 1024,
                  MaxSharedMemoryPerMultiprocessor=96 * 1024, ComputeCapabilityMajor=7), True, False),
    ("T4", dict(MultiProcessorCount=40, MaxSharedMemoryPerBlockOptin=64 * 1024,
                MaxSharedMemoryPerMultiprocessor=64 * 1024, MaxThreadsPerMultiProcessor=1024,
                ComputeCapabilityMajor=7, ComputeCapabilityMinor=5), False, False),
    ("P100", dict(MultiProcessorCount=56, MaxSharedMemoryPerBlockOptin=48 * 1024,
                  MaxSharedMemoryPerMultiprocessor=64 * 1024, ComputeCapabilityMajor=6), False, False),
]


@pytest.mark.parametrize("name, attributes, fused_fits, has_tf32", DEVICES, ids=[d[0] for d in DEVICES])
@pytest.mark.parametrize("precision", ["float32", "tf32"])
def test_narrow_layers_on_other_devices(monkeypatch, name, attributes, fused_fits, has_tf32, precision):
    """The fused runs where the device has their shared memory (and TF32 kernels where it has
    tensor cores for them: elsewhere precision='tf32' computes in float32, as documented);
    per-layer GEMMs otherwise, never a refused launch."""
    fake = install_fake(monkeypatch, attributes=attributes, name=name)
    be = cuda()
    assert name in be.describe()
    net = net_for(be, FUSED_SIZES, "relu", "mse", precision=precision)
    X, Y = data(FUSED_SIZES, "mse", 1024)
    net.train_step(X, Y, "adam", lr=1e-3)
    kernels = fake.kernel_names()
    if fused_fits:
        want = "fused_mlp_bwd_tf32" if precision == "tf32" and has_tf32 else "fused_mlp_bwd"
        assert want in kernels and "gemm_fwd" not in kernels, kernels
    else:
        assert {"gemm_fwd", "gemm_bwd_data"} <= kernels and not any(k.startswith("fused") for k in kernels)
    if "pipelined" in " ".join(kernels):
        assert attributes["ComputeCapabilityMajor"] >= 8
    assert_prepared(fake, net, X, Y)


def test_data_parallel_fit_refuses_a_network_off_the_ranks_gpu(monkeypatch):
    """`distributed.init()` makes the rank's GPU current in the thread that calls it, and CUDA's
    current device is per thread: a network made in another thread (a background training thread)
    lands on device 0, whatever the rank's GPU, and its fit handed NCCL (bound to the rank's GPU)
    buffers of another device.  fit now refuses such a network on every rank, naming both devices.
    One rank here, made to stand for rank 1 of a machine with 2 GPUs (its GPU: device 1)."""
    import threading

    pytest.importorskip("mpi4py")
    from gpubp.distributed import Communicator, EveryRankError

    fake = install_fake(monkeypatch, devices=2)
    comm = Communicator(backend="cuda")
    comm.device = 1                           # as init() sets it on local rank 1 ...
    fake.cuda.Device(1).use()                 # ... and makes it current, in this thread
    X, Y = data((6, 8, 3), "cross_entropy", 32)
    seen = {}

    def background():
        net = net_for(cuda(), (6, 8, 3), "relu", "cross_entropy")
        seen["device"], before = net._params.device.id, net.get_params()
        try:
            net.fit(X, Y, epochs=1, batch_size=16, progress=False, comm=comm)
        except EveryRankError as e:
            seen["error"] = str(e)
        seen["unchanged"] = net.optimizer is None and all(
            np.array_equal(a, b) for p, q in zip(before, net.get_params()) for a, b in zip(p, q))

    t = threading.Thread(target=background)
    t.start()
    t.join()
    assert seen["device"] == 0 and seen["unchanged"]
    assert "network is on CUDA device 0 but this rank's GPU is device 1" in seen["error"]
    assert "cupy.cuda.Device(1)" in seen["error"]
    net = net_for(cuda(), (6, 8, 3), "relu", "cross_entropy")      # in init()'s thread: on the rank's GPU
    assert net._params.device.id == 1
    net.fit(X, Y, epochs=1, batch_size=16, progress=False, comm=comm)
    assert net.optimizer.t == 2


def test_the_fakes_current_device_is_per_thread(monkeypatch):
    """As CUDA's (cudaSetDevice): another thread starts on device 0 and its choice stays its own."""
    import threading

    fake = install_fake(monkeypatch, devices=2)
    fake.cuda.Device(1).use()
    seen = []

    def other():
        seen.append(fake.cuda.runtime.getDevice())
        fake.cuda.Device(0).use()
        seen.append(fake.zeros(3, np.float32).device.id)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [0, 0] and fake.cuda.runtime.getDevice() == 1 and fake.zeros(3, np.float32).device.id == 1


# ------------------------------------------------------------------ the fused launchers on their own
@pytest.mark.parametrize("precision", ["float32", "tf32"])
@pytest.mark.parametrize("with_scratch", [True, False])
def test_fused_launchers_at_width_128(fake, precision, with_scratch):
    """The width-128 run kernels (kept for benchmarks; the backend fuses widths <= 64 only)."""
    from gpubp.backends.plan import Scratch

    be = cuda()
    scratch = Scratch(be) if with_scratch else None
    widths, B, codes = (100, 128, 70), 300, [ACT_CODES["gelu"], ACT_CODES["tanh"]]
    A_in, Z_in = fake.zeros((B, 100), np.float32), fake.zeros((B, 100), np.float32)
    Ws = [fake.zeros((widths[l + 1], widths[l]), np.float32) for l in range(2)]
    bs = [fake.zeros((widths[l + 1],), np.float32) for l in range(2)]
    A = [fake.zeros((B, n), np.float32) for n in widths[1:]]
    Z = [fake.zeros((B, 128), np.float32), None]
    dWs, dbs = [fake.zeros_like(W) for W in Ws], [fake.zeros_like(b) for b in bs]
    delta_last, delta_in = fake.zeros((B, 70), np.float32), fake.zeros((B, 100), np.float32)
    for _ in range(2):
        fake.reset()
        cuda_fused.fused_forward(A_in, Ws, bs, codes, A, Z, precision=precision, scratch=scratch)
        cuda_fused.fused_backward(delta_last, Ws, codes, A_in, A, Z, dWs, dbs, delta_in_out=delta_in,
                                  act_code_in=ACT_CODES["silu"], Z_in=Z_in, precision=precision, scratch=scratch)
    sfx = "" if precision == "float32" else "_tf32"
    assert [l.name for l in fake.launches] == [f"fused_mlp_fwd{sfx}<64, 128>", f"fused_mlp_bwd{sfx}<64, 128>",
                                               "fused_mlp_reduce<128>"]
    assert fake.launches[1].shared_mem == cuda_fused.bwd_smem_bytes(128, precision=precision) > 100 * 1024
    assert (fake.allocations == 0) == with_scratch, fake.allocation_sites


# ------------------------------------------------------------------ the fused kernel family, called directly
FAMILY_POLICIES = {"float32": 0, "tf32": 1, "bf16": 2}


def _family_arrays(fake, widths, B, codes, with_z_in=True):
    L = len(widths) - 1
    A_in = fake.zeros((B, widths[0]), np.float32)
    Z_in = fake.zeros((B, widths[0]), np.float32) if with_z_in else None
    Ws = [fake.zeros((widths[l + 1], widths[l]), np.float32) for l in range(L)]
    bs = [fake.zeros((widths[l + 1],), np.float32) for l in range(L)]
    A = [fake.zeros((B, n), np.float32) for n in widths[1:]]
    Z = [fake.zeros((B, widths[l + 1]), np.float32) if codes[l] in _NEEDS_Z else None for l in range(L)]
    dWs, dbs = [fake.zeros_like(W) for W in Ws], [fake.zeros_like(b) for b in bs]
    delta_last = fake.zeros((B, widths[-1]), np.float32)
    return A_in, Z_in, Ws, bs, A, Z, dWs, dbs, delta_last


@pytest.mark.parametrize("precision", list(FAMILY_POLICIES))
@pytest.mark.parametrize("widths, B", [((100, 128, 70), 300), ((32, 64, 48, 16), 1027), ((3, 5), 1),
                                       ((64,) * 9, 4096)])
@pytest.mark.parametrize("with_scratch", [True, False])
def test_fused_family_launchers(fake, precision, widths, B, with_scratch):
    """Every policy at both widths: the kernels named by policy and tile, the shared memory the
    kernels declare (past 48 KB, so opted in), every table pointer a live array of the right size,
    and with a scratch no allocation on a repeated call."""
    from gpubp.backends.plan import Scratch

    be = cuda()
    scratch = Scratch(be) if with_scratch else None
    L = len(widths) - 1
    codes = [ACT_CODES[ACTIVATIONS[(l + 5) % len(ACTIVATIONS)]] for l in range(L)]   # gelu, silu, ...
    A_in, Z_in, Ws, bs, A, Z, dWs, dbs, delta_last = _family_arrays(fake, widths, B, codes)
    delta_in = fake.zeros((B, widths[0]), np.float32)
    for _ in range(2):
        fake.reset()
        cuda_fused_family.fused_forward(A_in, Ws, bs, codes, A, Z, precision=precision, scratch=scratch)
        cuda_fused_family.fused_backward(delta_last, Ws, codes, A_in, A, Z, dWs, dbs, delta_in_out=delta_in,
                                         act_code_in=ACT_CODES["silu"], Z_in=Z_in, precision=precision,
                                         scratch=scratch)
    wmax = 64 if max(widths) <= 64 else 128
    bm = 128 if wmax == 64 else 64
    pol = FAMILY_POLICIES[precision]
    assert [l.name for l in fake.launches] == [f"fused_family_fwd<{pol}, {bm}, {wmax}>",
                                               f"fused_family_bwd<{pol}, {bm}, {wmax}>",
                                               f"fused_family_reduce<{wmax}>"]
    fwd, bwd, red = fake.launches
    assert fwd.grid == (_cdiv(B, bm), 1, 1) and fwd.block == (256, 1, 1)
    assert fwd.shared_mem == cuda_fused_family.fwd_smem_bytes(wmax) == (bm + 2 * wmax) * wmax * 4
    nbuf = 2 if wmax == 64 else 1
    assert bwd.shared_mem == cuda_fused_family.bwd_smem_bytes(wmax) == (bm + nbuf * (bm + wmax)) * wmax * 4 + 2048
    assert bwd.shared_mem > 48 * 1024 and bwd.arg("want_din") == 1 and bwd.arg("delta_in") is delta_in
    assert bwd.grid[0] == min(_cdiv(B, bm), 132 * 1)    # one 130 KB block per H100 SM
    assert red.grid[1] == L and red.arg("G") == bwd.grid[0]
    assert (fake.allocations == 0) == with_scratch, fake.allocation_sites


@pytest.mark.parametrize("module", [cuda_fused, cuda_fused_family], ids=["fused", "family"])
def test_a_run_deeper_than_the_grid_is_high_is_reduced_in_slices_of_layers(monkeypatch, module):
    """The backward's reduce runs one layer per grid row: a run of more layers than the device's
    grid height (65535 on an H100; 2 on this fake) is reduced in slices of layers, each launch
    within the limit, with the same dW and db as one launch (both computed by the emulator)."""
    rng = np.random.default_rng(3)
    widths, B = (3, 5, 4, 6, 2, 3), 5
    L = len(widths) - 1
    codes = [ACT_CODES["tanh"]] * L
    host_W = [rng.standard_normal((widths[l + 1], widths[l])).astype(np.float32) for l in range(L)]
    host_A = [rng.standard_normal((B, n)).astype(np.float32) for n in widths]
    host_d = rng.standard_normal((B, widths[-1])).astype(np.float32)

    def grads(grid_y):
        fake = install_fake(monkeypatch, execute=True, attributes={"MaxGridDimY": grid_y})
        Ws = [fake.asarray(W) for W in host_W]
        A_in, A = fake.asarray(host_A[0]), [fake.asarray(a) for a in host_A[1:]]
        dWs = [fake.zeros_like(W) for W in Ws]
        dbs = [fake.zeros((n,), np.float32) for n in widths[1:]]
        module.fused_backward(fake.asarray(host_d), Ws, codes, A_in, A, [None] * L, dWs, dbs)
        reduces = [x for x in fake.launches if "_reduce<" in x.name]
        return [np.array(x) for x in dWs + dbs], [x.grid[1] for x in reduces]

    tall, rows_tall = grads(65535)
    low, rows_low = grads(2)
    assert rows_tall == [L] and rows_low == [2, 2, 1]
    for a, b in zip(tall, low):
        np.testing.assert_array_equal(a, b)
    assert all(np.abs(a).max() > 0 for a in low)


def test_fused_family_without_delta_in_passes_a_placeholder_it_never_writes(fake):
    widths, B, codes = (20, 64, 10), 129, [ACT_CODES["relu"], ACT_CODES["identity"]]
    A_in, _, Ws, bs, A, Z, dWs, dbs, delta_last = _family_arrays(fake, widths, B, codes, with_z_in=False)
    cuda_fused_family.fused_forward(A_in, Ws, bs, codes, A, Z, precision="bf16")
    cuda_fused_family.fused_backward(delta_last, Ws, codes, A_in, A, Z, dWs, dbs, precision="bf16")
    bwd = fake.launched("fused_family_bwd")[0]
    assert bwd.arg("want_din") == 0 and bwd.arg("vec_din") == 0 and bwd.arg("delta_in") is delta_last
    assert bwd.name == "fused_family_bwd<2, 128, 64>"


def test_fused_family_bad_input_launches_nothing(fake):
    widths, B, codes = (8, 16), 10, [ACT_CODES["tanh"]]
    A_in, _, Ws, bs, A, Z, dWs, dbs, delta_last = _family_arrays(fake, widths, B, codes, with_z_in=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        cuda_fused_family.fused_forward(A_in, Ws, bs, codes, A, Z, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        cuda_fused_family.fused_backward(delta_last, Ws, codes, A_in, A, Z, dWs, dbs, precision="3xtf32")
    with pytest.raises(ValueError, match="widths"):
        wide = [fake.zeros((130, 8), np.float32)]
        cuda_fused_family.fused_forward(A_in, wide, [fake.zeros((130,), np.float32)], codes,
                                        [fake.zeros((B, 130), np.float32)], [None])
    with pytest.raises(TypeError, match="float32"):
        cuda_fused_family.fused_forward(A_in.astype(np.float64), Ws, bs, codes, A, Z, precision="tf32")
    with pytest.raises(ValueError, match="delta_last"):
        cuda_fused_family.fused_backward(fake.zeros((B, 3), np.float32), Ws, codes, A_in, A, Z, dWs, dbs)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="grid_blocks"):
            cuda_fused_family.fused_backward(delta_last, Ws, codes, A_in, A, Z, dWs, dbs, grid_blocks=bad)
    assert fake.launches == []
    # an empty batch: gradients are zero, nothing is launched
    e_in, _, eWs, ebs, eA, eZ, edW, edb, edl = _family_arrays(fake, widths, 0, codes, with_z_in=False)
    for a in edW + edb:
        a.fill(7)
    cuda_fused_family.fused_forward(e_in, eWs, ebs, codes, eA, eZ, precision="bf16")
    cuda_fused_family.fused_backward(edl, eWs, codes, e_in, eA, eZ, edW, edb, precision="bf16")
    assert fake.launches == [] and all((a.view(np.ndarray) == 0).all() for a in edW + edb)


@pytest.mark.parametrize("name, attributes, fused_fits, has_tf32", DEVICES, ids=[d[0] for d in DEVICES])
def test_fused_family_fits_only_sm80_with_its_shared_memory(monkeypatch, name, attributes, fused_fits, has_tf32):
    """sm_80+ (cp.async, mma.sync) with 130 KB (width 64) / 160 KB (width 128) of shared memory:
    the A100 and H100 hold both widths; the A10 (99 KB) neither; older GPUs none."""
    fake = install_fake(monkeypatch, attributes=attributes, name=name)
    for widths in ((32, 64, 16), (32, 128, 16)):
        want = name == "A100"
        for precision in FAMILY_POLICIES:
            assert cuda_fused_family.fits_device(widths, precision) == want, (name, widths, precision)
    if attributes["ComputeCapabilityMajor"] < 8:   # a direct call is refused, naming the need
        codes = [ACT_CODES["relu"]]
        A_in, _, Ws, bs, A, Z, dWs, dbs, delta_last = _family_arrays(fake, (8, 16), 5, codes, with_z_in=False)
        with pytest.raises(RuntimeError, match="compute capability 8.0"):
            cuda_fused_family.fused_forward(A_in, Ws, bs, codes, A, Z)
        with pytest.raises(RuntimeError, match="compute capability 8.0"):
            cuda_fused_family.fused_backward(delta_last, Ws, codes, A_in, A, Z, dWs, dbs, precision="bf16")
        assert fake.launches == []


def test_fused_family_fits_the_h100(fake):
    for precision in FAMILY_POLICIES:
        assert cuda_fused_family.fits_device((32, 128, 16), precision)
        assert cuda_fused_family.kernel_names((32, 128, 16), precision) == {
            f"fused_family_fwd<{FAMILY_POLICIES[precision]}, 64, 128>",
            f"fused_family_bwd<{FAMILY_POLICIES[precision]}, 64, 128>", "fused_family_reduce<128>"}


@pytest.mark.parametrize("precision", ["float32", "tf32"])
def test_the_backend_can_switch_to_the_family_with_one_line(monkeypatch, precision):
    """The family has cuda_fused's interface: with the backend's `cuda_fused` replaced by it (the
    one-line switch, done here by monkeypatching), a training step runs the family's kernels, all
    compiled by the plan's prepare, and a warm step allocates nothing."""
    from gpubp.backends import cuda_backend

    fake = install_fake(monkeypatch)
    monkeypatch.setattr(cuda_backend, "cuda_fused", cuda_fused_family)
    be = cuda()
    net = net_for(be, FUSED_SIZES, "gelu", "mse", precision=precision)
    X, Y = data(FUSED_SIZES, "mse", 1024 + 3)
    net.train_step(X, Y, "adam", lr=1e-3)
    pol = FAMILY_POLICIES[precision]
    names = [l.name for l in fake.launches]
    assert f"fused_family_fwd<{pol}, 128, 64>" in names and f"fused_family_bwd<{pol}, 128, 64>" in names
    assert not any(n.startswith("fused_mlp") or n.startswith("gemm_") for n in names), names
    assert_prepared(fake, net, X, Y)
    Xd, Yd, opt, plan = warm_step(net, X, Y, "adam")
    fake.reset()
    net._step(Xd, Yd, opt, plan=plan)
    assert fake.allocations == 0, fake.allocation_sites


@pytest.mark.parametrize("grid_blocks, want", [(2, 2), (1, 1), (10 ** 6, 9)])
def test_fused_family_grid_blocks_sets_the_persistent_grid(fake, grid_blocks, want):
    widths, B, codes = (30, 64, 8), 128 * 8 + 1, [ACT_CODES["relu"], ACT_CODES["identity"]]
    A_in, _, Ws, bs, A, Z, dWs, dbs, delta_last = _family_arrays(fake, widths, B, codes, with_z_in=False)
    cuda_fused_family.fused_backward(delta_last, Ws, codes, A_in, A, Z, dWs, dbs, precision="tf32",
                                     grid_blocks=grid_blocks)
    bwd, red = fake.launches
    assert bwd.grid == (want, 1, 1) and bwd.arg("n_tiles") == 9 and red.arg("G") == want


@pytest.mark.parametrize("standardized", [False, True])
def test_host_inputs_to_a_network_on_another_device_are_refused(monkeypatch, standardized):
    """Kernels launch on the current device (`CudaBackend.check_current`): a network made on
    device 0, used under `cupy.cuda.Device(1)` with host inputs (which the backend would copy to
    device 1), is refused by every public pass with a ValueError naming both devices, before any
    launch, its parameters unchanged; back on device 0 it works."""
    fake = install_fake(monkeypatch, devices=2)
    sizes = (6, 8, 3)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X, Y = data(sizes, "cross_entropy", 16)
    if standardized:
        net.set_standardization(X.mean(axis=0), X.std(axis=0))
    before = net.get_params()
    fake.cuda.Device(1).use()
    calls = {"forward": lambda: net.forward(X), "predict": lambda: net.predict(X),
             "predict_proba": lambda: net.predict_proba(X), "evaluate": lambda: net.evaluate(X, Y),
             "loss_and_grads": lambda: net.loss_and_grads(X, Y),
             "train_step": lambda: net.train_step(X, Y, "sgd", lr=0.1)}
    for name, call in calls.items():
        fake.reset()
        with pytest.raises(ValueError, match="network is on CUDA device 0 but the current device is 1"):
            call()
        assert not fake.launches, name
    assert net.optimizer is None
    assert all(np.array_equal(a, b) for p, q in zip(before, net.get_params()) for a, b in zip(p, q))
    fake.cuda.Device(0).use()
    net.train_step(X, Y, "sgd", lr=0.1)
    assert net.optimizer.t == 1


def test_device_inputs_are_checked_as_host_ones(fake):
    """A device X with no rows is refused as a host one is ("X holds no samples"), by the passes and
    by fit (with standardize=True too, which reads X's statistics first), nothing changed; one of
    the network's n_0 columns predicts as the host copy (a vector of n_0 as one row); other shapes
    are refused naming (B, n_0)."""
    sizes = (6, 8, 3)
    net = net_for(cuda(), sizes, "relu", "cross_entropy")
    X0, y0 = fake.zeros((0, 6), np.float32), np.zeros(0, dtype=np.int64)
    for call in (lambda: net.forward(X0), lambda: net.predict(X0), lambda: net.evaluate(X0, y0),
                 lambda: net.loss_and_grads(X0, y0), lambda: net.train_step(X0, y0, "sgd"),
                 lambda: net.fit(X0, y0, progress=False),
                 lambda: net.fit(X0, y0, progress=False, standardize=True)):
        with pytest.raises(ValueError, match="X holds no samples"):
            call()
    assert net.optimizer is None and net.standardization is None
    X, _ = data(sizes, "cross_entropy", 4)
    Xd = fake.asarray(X.astype(np.float32))
    assert np.array_equal(net.predict(Xd), net.predict(X))
    assert np.array_equal(net.predict(Xd[1]), net.predict(X[1:2]))     # one sample as a vector: one row
    for bad in (fake.zeros((4, 8), np.float32), fake.zeros((8,), np.float32), fake.zeros((2, 4, 6), np.float32)):
        with pytest.raises(ValueError, match=r"X has shape .*expected \(B, 6\)"):
            net.predict(bad)
    with pytest.raises(TypeError, match="X is complex .*real numbers only"):     # not its real part
        net.predict(fake.asarray(X.astype(np.complex64)))
    for bad in (np.nan, np.inf):
        Xb = X.astype(np.float32)
        Xb[2, 3] = bad
        with pytest.raises(ValueError, match="X contains NaN or infinity"):
            net.predict(fake.asarray(Xb))


# ------------------------------------------------------------------ the backend's own checks and array plumbing
def test_the_backend_refuses_no_gpu_and_settings_it_cannot_run(monkeypatch):
    """No device (or a runtime that cannot count them) is a RuntimeError saying to use the numpy
    backend; an unknown tile and hopper without the tensor-core GEMMs are ValueErrors."""
    fake = install_fake(monkeypatch, devices=0)
    with pytest.raises(RuntimeError, match="found no CUDA GPU; use backend='numpy'"):
        cuda()

    def no_driver():
        raise fake.cuda.runtime.CUDARuntimeError("cudaErrorInsufficientDriver")

    fake = install_fake(monkeypatch)
    monkeypatch.setattr(fake.cuda.runtime, "getDeviceCount", no_driver)
    with pytest.raises(RuntimeError, match="found no usable CUDA GPU .*cudaErrorInsufficientDriver"):
        cuda()
    install_fake(monkeypatch)
    with pytest.raises(ValueError, match="tile must be one of"):
        cuda(tile="huge")
    with pytest.raises(ValueError, match="hopper=True needs tensor_core_gemms=True"):
        cuda(hopper=True)
    assert cuda(hopper=True, tensor_core_gemms=True).settings() == {
        "fuse": True, "tile": None, "tensor_core_gemms": True, "hopper": True}


def test_asarray_keeps_a_device_array_and_copies_only_what_the_kernels_cannot_read(fake):
    """A C-contiguous device array of the dtype is returned as it is (no copy); a strided view or
    another dtype becomes a contiguous copy of the values (a 0-d one stays 0-d); host data is copied in."""
    be = cuda()
    h = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = fake.asarray(h)
    fake.reset()
    assert be.asarray(d, np.float32) is d and fake.allocations == 0
    t = be.asarray(d.T, np.float32)
    assert t.flags.c_contiguous and np.array_equal(fake.asnumpy(t), h.T)
    w = be.asarray(d, np.float64)
    assert w.dtype == np.float64 and np.array_equal(fake.asnumpy(w), h)
    z = be.asarray(fake.asarray(np.array(5.0, np.float32)), np.float64)      # a 0-d device array
    assert z.shape == () and float(fake.asnumpy(z)) == 5.0
    for host in ([[1.0, 2.0], [3.0, 4.0]], np.array([[1, 2], [3, 4]])):
        a = be.asarray(host, np.float32)
        assert isinstance(a, fake.ndarray) and a.dtype == np.float32
        assert np.array_equal(fake.asnumpy(a), [[1, 2], [3, 4]])


def test_asarray_refuses_a_device_array_of_another_device(monkeypatch):
    fake = install_fake(monkeypatch, devices=2)
    be = cuda()
    fake.cuda.Device(1).use()
    d = fake.zeros((2, 3), np.float32)
    fake.cuda.Device(0).use()
    with pytest.raises(ValueError, match="on CUDA device 1 but the current device is 0"):
        be.asarray(d, np.float32)


class _CudaArrayInterfaceLike:
    """A foreign device array (numba's, say) that exposes only `__cuda_array_interface__`."""

    def __init__(self, d):
        self.__cuda_array_interface__ = d.__cuda_array_interface__


class _CpuTensorLike:
    """A stand-in for a CPU tensor: DLPack says host memory (kDLCPU); it exports through __array__
    only (its __dlpack__ refuses, as a CUDA consumer's import of host memory would)."""

    def __init__(self, a):
        self._a = np.asarray(a)

    def __dlpack_device__(self):
        return (1, 0)

    def __dlpack__(self, *args, **kwargs):
        raise RuntimeError("not a CUDA tensor")

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class _RaisingInterface:
    """An object whose `__cuda_array_interface__` raises (as torch's does for a tensor that requires grad)."""

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad.")


def test_foreign_device_and_host_objects_reach_the_backend(fake):
    """`__cuda_array_interface__` objects are read where they are (no copy, and `to_numpy` reads
    them too); a host DLPack object (a CPU tensor) is copied in through the host; an interface that
    raises is a TypeError naming the object; `to_numpy` of a host array is a copy."""
    be = cuda()
    h = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = fake.asarray(h)
    fake.reset()
    v = be.asarray(_CudaArrayInterfaceLike(d), np.float32)
    assert fake.allocations == 0 and v.data.ptr == d.data.ptr and np.array_equal(fake.asnumpy(v), h)
    assert np.array_equal(be.to_numpy(_CudaArrayInterfaceLike(d)), h)
    c = be.asarray(_CpuTensorLike(h), np.float32)
    assert isinstance(c, fake.ndarray) and np.array_equal(fake.asnumpy(c), h)
    with pytest.raises(TypeError, match="could not take the _RaisingInterface through __cuda_array_interface__"):
        be.asarray(_RaisingInterface(), np.float32)
    out = be.to_numpy(h)
    assert type(out) is np.ndarray and out is not h and np.array_equal(out, h)
    out[0, 0] = 7
    assert h[0, 0] == 0


def test_out_of_memory_names_the_array_and_free_memory_counts_the_pool(fake, monkeypatch):
    """CuPy's OutOfMemoryError becomes a MemoryError naming the shape, dtype, bytes and device;
    free memory is the device's free bytes plus what CuPy's pool holds free."""
    be = cuda()
    held = fake.zeros((1000,), np.float32)          # the device's free bytes are below its total

    def oom(shape, dtype=None):
        raise fake.cuda.memory.OutOfMemoryError("out of memory")

    monkeypatch.setattr(fake, "empty", oom)
    monkeypatch.setattr(fake, "zeros", oom)
    with pytest.raises(MemoryError, match=r"shape \(1000, 10\) and dtype float32 \(40,000 bytes\) on device 0"):
        be.empty((1000, 10), np.float32)
    with pytest.raises(MemoryError, match=r"shape \(7,\) and dtype float64 \(56 bytes\)"):
        be.zeros(7, np.float64)
    assert fake.cuda.Device().mem_info[0] < fake.cuda.Device().mem_info[1] and held.size
    pool = types.SimpleNamespace(free_bytes=lambda: 1000)
    monkeypatch.setattr(fake, "get_default_memory_pool", lambda: pool)
    assert be.free_memory() == fake.cuda.Device().mem_info[0] + 1000


def test_a_fused_run_from_layer_1_reads_the_forwards_copy_of_its_input(fake):
    """Layer 1's input is copied into a plan buffer whose address the fused tables hold; the
    backward of the same step reads the forward's copy (no second copy, even if the input array
    changed since), and a backward after a new input was bound copies that one."""
    be = cuda()
    net = net_for(be, FUSED_SIZES, "relu", "mse")
    X, Y = data(FUSED_SIZES, "mse", 1024)
    plan = be.make_plan(net.sizes, net.activations, 1024, net.dtype)
    Xd = net._inputs(X)
    plan.bind_input(Xd)
    Yd = net._targets(Y, 1024)
    be.prepare(plan, net.loss)
    assert fake.compiled and all(n.startswith(("fused_mlp", "loss_", "sgd_", "adam_")) for n in fake.compiled), \
        fake.compiled                               # a fused run compiles no per-layer GEMM
    fake.reset()
    be.network_forward(plan, net._Wb)
    buf = plan.scratch.get("fused_input", Xd.shape, Xd.dtype)
    want = fake.asnumpy(Xd)
    assert buf.data.ptr != Xd.data.ptr and np.array_equal(fake.asnumpy(buf), want)

    def table_x(kernel):
        rows = np.asarray(fake.launched(kernel)[-1].args[0].view(np.ndarray)).reshape(-1, FM_FIELDS)
        return int(rows[0, FM["X"]])

    assert table_x("fused_mlp_fwd") == buf.data.ptr
    Xd[...] = 0                                     # the input array changes after the forward
    be.network_loss(plan, Yd, net.loss)
    be.network_backward(plan, net._Wb, net._dWb)
    assert np.array_equal(fake.asnumpy(buf), want), "the backward copied the input again"
    assert table_x("fused_mlp_bwd") == buf.data.ptr
    other = net._inputs(2 * X)
    plan.bind_input(other)                          # a backward with no forward of this input
    be.network_backward(plan, net._Wb, net._dWb)
    assert np.array_equal(fake.asnumpy(buf), fake.asnumpy(other))


def test_precisions_the_device_or_the_settings_cannot_run_are_refused(monkeypatch):
    """Without `tensor_core_gemms`, "bf16" and "3xtf32" and any tensor-core GEMM called directly are
    refused; with it, a device below compute capability 8.0 refuses them naming its capability, and
    one of 8.0 runs them."""
    fake = install_fake(monkeypatch)
    be = cuda()
    for p in ("bf16", "3xtf32"):
        with pytest.raises(ValueError, match="is not yet available on the cuda backend"):
            be.check_precision(p)
    with pytest.raises(ValueError, match=r"precision='fp16' is not available on the cuda backend \(it runs float32, tf32\)"):
        be.check_precision("fp16")
    d, a, w = fake.zeros((8, 4), np.float32), fake.zeros((8, 3), np.float32), fake.zeros((4, 3), np.float32)
    dW, db, out = fake.zeros((4, 3), np.float32), fake.zeros((4,), np.float32), fake.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match="precision='tf32' is not yet available"):
        be.dense_forward(a, w, db, "relu", out, precision="tf32")
    with pytest.raises(ValueError, match="precision='tf32' is not yet available"):
        be.dense_backward(d, a, w, dW, db, precision="tf32")
    assert not fake.launches
    attrs = {d[0]: d[1] for d in DEVICES}
    t4, a100 = attrs["T4"], attrs["A100"]
    install_fake(monkeypatch, attributes=t4, name="T4")
    be = cuda(tensor_core_gemms=True)
    with pytest.raises(ValueError, match=r"compute capability 8.0 or newer on the cuda backend; this device is 7\.5$"):
        be.check_precision("bf16")
    assert be._precision("tf32") == "float32"
    install_fake(monkeypatch, attributes=a100, name="A100")
    be = cuda(tensor_core_gemms=True)
    be.check_precision("bf16")
    be.check_precision("3xtf32")
    assert be._precision("tf32") == "tf32"


def test_the_elementwise_launchers_refuse_what_their_kernels_would_misread(fake):
    """Raw kernels ignore dtypes, strides and lengths: the loss and update launchers refuse arrays
    of another dtype, strided ones, mismatched shapes or lengths, a short or non-float64 partials
    scratch, bf16 storage of float64, labels that are not (B,) int32, and a missing Z for gelu,
    each before any launch."""
    from gpubp.backends import cuda_elementwise as ew

    def f32(*shape):
        return fake.zeros(shape, np.float32)

    A, Y, d, out = f32(4, 3), f32(4, 3), f32(4, 3), f32(1)
    parts = fake.zeros((ew.MAX_PARTIALS,), np.float64)
    ident, gelu = ACT_CODES["identity"], ACT_CODES["gelu"]
    ew.loss_and_delta(A, None, Y, "mse", ident, out, d, parts)             # the right arguments pass
    ew.loss_and_delta(A, None, fake.zeros((4,), np.int32), "cross_entropy", ident, out, d, parts)
    ew.sgd_update(f32(8), f32(8), None, 0.1, 0.0)                          # no weight decay, no momentum
    assert [l.name for l in fake.launches] == [
        f"loss_pointwise<float, {ew.LOSS_CODES['mse']}, {ident}>", "loss_finalize<float>",
        "ce_loss_delta<float, true, false>", "loss_finalize<float>", "sgd_update<float>"]
    assert fake.launches[-1].arg("flags") == 0
    assert fake.launches[0].arg("write_delta") == 1 and fake.launches[2].arg("write_delta") == 1
    fake.reset()
    ew.loss_and_delta(A, None, Y, "mse", ident, out, None, parts)          # the loss alone: delta unwritten
    assert fake.launches[0].arg("write_delta") == 0
    fake.reset()
    bad = [
        (lambda: ew.loss_and_delta(A, None, fake.zeros((4, 3), np.float64), "mse", ident, out, d, parts),
         TypeError, "gpubp's CUDA kernels: expected arrays of float32, got float64"),
        (lambda: ew.loss_and_delta(A, None, f32(3, 4).T, "mse", ident, out, d, parts),
         ValueError, "gpubp's CUDA kernels need C-contiguous arrays"),
        (lambda: ew.loss_and_delta(A, None, Y, "mse", ident, fake.zeros((1,), np.float64), d, parts),
         TypeError, "expected arrays of float32, got float64"),
        (lambda: ew.loss_and_delta(A, None, Y, "mse", ident, out, f32(4, 2), parts),
         ValueError, r"delta_out has shape \(4, 2\), the outputs \(4, 3\)"),
        (lambda: ew.loss_and_delta(A, None, Y, "mse", ident, out, d, fake.zeros((ew.MAX_PARTIALS,), np.float32)),
         ValueError, "partials must be a float64 array"),
        (lambda: ew.loss_and_delta(A, None, Y, "mse", ident, out, d, fake.zeros((ew.MAX_PARTIALS - 1,), np.float64)),
         ValueError, "partials must be a float64 array of at least"),
        (lambda: ew.loss_and_delta(fake.zeros((4, 3), np.float64), None, fake.zeros((4, 3), np.float64), "mse",
                                   ident, fake.zeros((1,), np.float64), None, parts, bf16=True),
         TypeError, "bf16 storage of delta needs float32 arrays"),
        (lambda: ew.loss_and_delta(A, None, fake.zeros((4,), np.int32), "cross_entropy", ident, out,
                                   fake.zeros((4, 3), np.float64), parts),
         TypeError, "expected arrays of float32, got float64"),
        (lambda: ew.loss_and_delta(A, None, fake.zeros((4,), np.int64), "cross_entropy", ident, out, d, parts),
         TypeError, r"class labels must be a C-contiguous \(4,\) int32 array"),
        (lambda: ew.loss_and_delta(A, None, f32(4, 2), "mse", ident, out, d, parts),
         ValueError, r"targets of shape \(4, 2\) for outputs of shape \(4, 3\)"),
        (lambda: ew.loss_and_delta(A, None, Y, "mse", gelu, out, d, parts),
         ValueError, "needs Z_L"),
        (lambda: ew.sgd_update(f32(8), fake.zeros((8,), np.float64), None, 0.1, 0.0),
         TypeError, "expected arrays of float32, got float64"),
        (lambda: ew.sgd_update(f32(8), f32(7), None, 0.1, 0.0),
         ValueError, "params, grads and velocity must have the same length"),
        (lambda: ew.sgd_update(f32(8), f32(8), f32(7), 0.1, 0.9),
         ValueError, "params, grads and velocity must have the same length"),
        (lambda: ew.adam_update(f32(8), f32(8), f32(8), fake.zeros((8,), np.float64), 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                fake.zeros((1,), np.int32), False),
         TypeError, "expected arrays of float32, got float64"),
        (lambda: ew.adam_update(f32(8), f32(8), f32(7), f32(8), 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                fake.zeros((1,), np.int32), False),
         ValueError, "params, grads, m and v must have the same length"),
        (lambda: ew.adam_update(f32(8), f32(8), f32(8), f32(8), 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                fake.zeros((1,), np.int64), False),
         ValueError, "Adam's step must be a 1-element int32 device array"),
    ]
    for call, error, words in bad:
        with pytest.raises(error, match=words):
            call()
    assert not fake.launches, [l.name for l in fake.launches]


@pytest.mark.parametrize("n, block_row", [(1024, False), (1025, True)])
def test_cross_entropy_rows_wider_than_1024_get_a_block_each(fake, n, block_row):
    """Rows up to CE_WARP_MAX_WIDTH (1024) get a warp each (8 rows a block), wider ones a block
    each; `kernel_names` (what `prepare` compiles) names the kernel the launcher takes."""
    from gpubp.backends import cuda_elementwise as ew

    B = 100
    flag = "true" if block_row else "false"
    A, d, out = fake.zeros((B, n), np.float32), fake.zeros((B, n), np.float32), fake.zeros((1,), np.float32)
    ew.loss_and_delta(A, None, fake.zeros((B,), np.int32), "cross_entropy", ACT_CODES["identity"], out, d,
                      fake.zeros((ew.MAX_PARTIALS,), np.float64))
    (ce,) = fake.launched("ce_loss_delta")
    assert ce.name == f"ce_loss_delta<float, true, {flag}>"
    assert ce.grid[0] == (B if block_row else _cdiv(B, ew.THREADS // 32))
    assert fake.launched("loss_finalize")[0].arg("count") == ce.grid[0]
    names = ew.kernel_names(np.float32, "cross_entropy", ACT_CODES["identity"], n)
    assert {f"ce_loss_delta<float, true, {flag}>", f"ce_loss_delta<float, false, {flag}>"} <= names


def test_load_kernels_compiles_each_kernel_once_and_logs_one_line(fake, caplog, monkeypatch):
    """`load_kernels` returns how many kernels were new (0 once loaded), logs one line naming how
    many, the architecture, the modules and CuPy's cache directory (CUPY_CACHE_DIR, else
    ~/.cupy/kernel_cache), and refuses a name its module does not declare."""
    import logging
    import os

    from gpubp.backends import cuda_elementwise as ew

    spec = ew.SPECS[0]
    monkeypatch.setenv("CUPY_CACHE_DIR", "/somewhere/cache")
    assert cuda_device.kernel_cache_dir() == "/somewhere/cache"
    with caplog.at_level(logging.INFO, logger="gpubp"):
        assert cuda_device.load_kernels({spec: ["sgd_update<float>", "adam_update<float>"]}) == 2
        assert cuda_device.load_kernels({spec: ["sgd_update<float>", "adam_update<float>"]}) == 0
        assert cuda_device.load_kernels({spec: ["sgd_update<float>", "loss_finalize<float>"]}) == 1
    lines = [r.getMessage() for r in caplog.records if "compiling" in r.getMessage()]
    assert lines == ["compiling 2 CUDA kernels for sm_90 (elementwise; first use, then cached in /somewhere/cache)",
                     "compiling 1 CUDA kernel for sm_90 (elementwise; first use, then cached in /somewhere/cache)"]
    assert fake.compiled == ["adam_update<float>", "sgd_update<float>", "loss_finalize<float>"]
    monkeypatch.delenv("CUPY_CACHE_DIR")
    assert cuda_device.kernel_cache_dir() == os.path.join(os.path.expanduser("~"), ".cupy", "kernel_cache")
    with pytest.raises(ValueError, match="module 'elementwise' has no kernel 'no_such_kernel<float>'"):
        cuda_device.load_kernels({spec: ["no_such_kernel<float>"]})


def test_a_kernel_may_opt_in_to_exactly_the_devices_shared_memory(fake):
    """`function(spec, name, smem)` raises a kernel's dynamic shared-memory limit up to the device's
    opt-in maximum, that maximum included, and refuses one byte more naming both."""
    from gpubp.backends import cuda_elementwise as ew

    optin = int(fake.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"])
    f = cuda_device.function(ew.SPECS[0], "sgd_update<float>")
    assert f.max_dynamic_shared_size_bytes == cuda_device.DEFAULT_SMEM == 48 * 1024
    assert cuda_device.function(ew.SPECS[0], "sgd_update<float>", optin) is f
    assert f.max_dynamic_shared_size_bytes == optin
    with pytest.raises(RuntimeError, match=f"adam_update<float> needs {optin + 1} bytes of shared memory; "
                                           f"this device allows {optin}"):
        cuda_device.function(ew.SPECS[0], "adam_update<float>", optin + 1)


def test_prepare_compiles_only_the_gemms_a_tensor_core_plan_launches(fake):
    """With `tensor_core_gemms`, a tf32 plan's per-layer GEMMs are the tensor-core ones: `prepare`
    compiles those (and the loss and updates), none of the float32 GEMMs; and `describe` names the
    device, its compute capability and its memory."""
    from support.fake_cupy import MEM_TOTAL

    be = cuda(tensor_core_gemms=True)
    sizes = (37, 70, 3)
    net = net_for(be, sizes, "gelu", "mse", precision="tf32")
    X, Y = data(sizes, "mse", 67)
    plan = be.make_plan(net.sizes, net.activations, 67, net.dtype, precision="tf32")
    be.prepare(plan, net.loss)
    assert any(n.startswith("gemm_tc_fwd") for n in fake.compiled), fake.compiled
    assert not any(n.startswith(("gemm_fwd", "gemm_bwd")) for n in fake.compiled), fake.compiled
    assert_prepared(fake, net, X, Y)
    free = MEM_TOTAL - fake.allocated_bytes
    assert be.describe() == (f"cuda: NVIDIA H100 80GB HBM3 (fake) (device 0, compute capability 9.0, "
                             f"{MEM_TOTAL / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free), CuPy {fake.__version__}")


def test_describe_spells_a_two_digit_major_compute_capability(monkeypatch):
    fake = install_fake(monkeypatch, attributes=dict(ComputeCapabilityMajor=12, ComputeCapabilityMinor=1),
                        name="NVIDIA GB10")
    assert "cuda: NVIDIA GB10 (fake) (device 0, compute capability 12.1, " in cuda().describe()


def test_prepare_names_the_loss_kernels_of_the_output_layer(fake):
    """A bf16 plan whose input and hidden layer are wider than CE_WARP_MAX_WIDTH and whose output is not: the
    loss kernels `prepare` compiles (float32-storing and delta-rounding) are the output's."""
    be = cuda(tensor_core_gemms=True)
    sizes = (1030, 1100, 4)
    net = net_for(be, sizes, "relu", "cross_entropy", precision="bf16")
    X, Y = data(sizes, "cross_entropy", 16)
    assert_prepared(fake, net, X, Y)
    assert {"ce_loss_delta<float, true, false, true>", "ce_loss_delta<float, true, false>"} <= set(fake.compiled)


def test_a_fused_run_after_layer_1_reads_the_previous_layers_output(fake):
    """A run from layer 2 reads A[1] (no copy): its forward and backward tables hold A[1]'s address."""
    sizes = (200, 64, 64, 10)
    net = net_for(cuda(), sizes, "silu", "mse")
    X, Y = data(sizes, "mse", 1024)
    net.loss_and_grads(X, Y)
    plan = net._plans[1024]
    for kernel in ("fused_mlp_fwd", "fused_mlp_bwd"):
        rows = np.asarray(fake.launched(kernel)[-1].args[0].view(np.ndarray)).reshape(-1, FM_FIELDS)
        assert int(rows[0, FM["X"]]) == plan.A[1].data.ptr, kernel


def test_segments_fuse_only_runs_of_at_least_two_narrow_layers(fake):
    """`_segments`: a run is fused only with FUSE_MIN_LAYERS (2) consecutive narrow layers, at a
    batch of FUSE_MIN_BATCH (1024) rows or more; a lone narrow layer goes through the per-layer GEMMs."""
    be = cuda()
    seg = be._segments
    assert (be.FUSE_MIN_BATCH, be.FUSE_MIN_LAYERS) == (1024, 2)
    assert seg((32, 64, 48, 16), 1024, np.float32) == [(1, 3, True)]
    assert seg((32, 64, 48, 16), 1023, np.float32) == [(1, 1, False), (2, 2, False), (3, 3, False)]
    assert seg((200, 64, 64, 10), 1024, np.float32) == [(1, 1, False), (2, 3, True)]
    assert seg((32, 64, 200, 16), 1024, np.float32) == [(1, 1, False), (2, 2, False), (3, 3, False)]
    assert seg((200, 64, 300, 64, 16), 1024, np.float32) == [(k, k, False) for k in range(1, 5)]
    assert seg((16, 64, 65, 16, 8, 4), 1024, np.float32) == [(1, 1, False), (2, 2, False), (3, 3, False),
                                                             (4, 5, True)]
    assert seg((32, 64, 48, 16), 1024, np.float64) == [(1, 1, False), (2, 2, False), (3, 3, False)]
    # tf32 fuses the same widths (64 the last one), with kernels of its own; bf16 and 3xtf32 have no fused kernels
    assert be.FUSE_MAX_WIDTH == {"float32": 64, "tf32": 64}
    assert seg((32, 64, 48, 16), 1024, np.float32, "tf32") == [(1, 3, True)]
    assert seg((16, 64, 65, 16, 8, 4), 1024, np.float32, "tf32") == [(1, 1, False), (2, 2, False), (3, 3, False),
                                                                     (4, 5, True)]
    for p in ("bf16", "3xtf32"):
        assert seg((32, 64, 48, 16), 1024, np.float32, p) == [(1, 1, False), (2, 2, False), (3, 3, False)]

