"""`gpubp bench` (gpubp.bench): the cost model, the goals, the peers' math and the CPU path (no timing goals)."""

import ast
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gpubp
from gpubp.bench import cli, cost, fused_runs, gemms, goals, peers, report, rows, shapes, timing
from support.bench_rows import find_goal, kernel_row


# ----------------------------------------------------------------- cost model (docs/spec.md, "Cost of a step")
def test_step_flops_count_the_gemms_a_step_runs():
    """Hand counts, 2 FLOPs per multiply-add: the forward product and dW of every layer, delta @ W of
    every layer but the first (no step computes dLoss/dX; 6 B sum n_(l-1) n_l counted it)."""
    # [2, 3, 4], B = 5: forward 5*(2*3 + 3*4) = 90 multiply-adds, dW 90, delta_2 @ W_2 5*3*4 = 60
    assert cost.step_flops([2, 3, 4], 5) == 2 * (90 + 90 + 60)
    # the digits network [64, 128, 10] at 32: 2 * 32 * (2 * (8192 + 1280) + 1280)
    assert cost.step_flops(shapes.DEFAULT, 32) == 1_294_336
    S = 1024 * 4096 + 2 * 4096 * 4096 + 4096 * 10
    assert cost.step_flops(shapes.WIDE, 4096) == 2 * 4096 * (S + S + (S - 1024 * 4096))
    assert cost.step_flops([7, 1], 3) == 2 * 3 * 7 * 2                      # one layer: forward and dW


def test_step_min_bytes_counts_params_once_and_activations_twice():
    sizes, B = [2, 3, 4], 5
    P = (2 * 3 + 3) + (3 * 4 + 4)
    acts, x, labels = 2 * B * (3 + 4), B * 2, 4 * B
    # each weight, gradient and optimizer-state element moved once (Adam: m and v)
    assert cost.n_params(sizes) == P
    assert cost.step_min_bytes(sizes, B, "adam") == 4 * (4 * P + acts + x) + labels
    assert cost.step_min_bytes(sizes, B, "sgd") == 4 * (2 * P + acts + x) + labels
    assert cost.step_min_bytes(sizes, B, "adam", itemsize=8) == 8 * (4 * P + acts + x) + labels


def test_kernel_cost():
    B, N, K = 7, 3, 5
    assert cost.kernel_flops(B, N, K) == 2 * B * N * K
    assert cost.kernel_min_bytes("fwd", B, N, K) == 4 * (B * K + N * K + N + B * N)
    assert cost.kernel_min_bytes("bwd_data", B, N, K) == 4 * (B * N + N * K + 2 * B * K)
    assert cost.kernel_min_bytes("bwd_weight", B, N, K) == 4 * (B * N + B * K + N * K + N)


def test_input_sets_rotate_past_l2():
    l2 = 50 * 2 ** 20
    assert cost.n_sets(2 ** 30, l2) == 2                  # big sets: two
    assert cost.n_sets(1000, l2) == 8                     # tiny sets: at most eight
    n = cost.n_sets(20 * 2 ** 20, l2)
    assert n * 20 * 2 ** 20 >= 2 * l2 and 2 <= n <= 8


def test_shapes_put_the_goal_rows_first_without_repeats():
    goal_steps = shapes.goal_step_shapes()
    assert goal_steps[0] == (shapes.WIDE, 4096)
    for mode in ("quick", "full"):
        got = shapes.gpu_step_shapes(mode)
        assert got[:len(goal_steps)] == goal_steps
        assert len(got) == len({(tuple(s), b) for s, b in got})
        assert shapes.kernel_shapes(mode)[:2] == [(8192, 4096, 4096), (4096, 4096, 4096)]
        assert shapes.kernel_shapes(mode)[:2] == shapes.goal_kernel_shapes()
    full = shapes.gpu_step_shapes("full")
    assert {b for s, b in full if s == shapes.narrow(128, 8)} == {2 ** 14, 2 ** 16, 2 ** 18, 2 ** 20}
    assert {b for s, b in full if s == shapes.WIDE} == {256, 1024, 4096, 8192}
    assert {b for s, b in shapes.gpu_step_shapes("quick") if s == shapes.WIDE} == {256, 1024, 4096}
    assert shapes.narrow(64, 8) == [64] * 9 + [10]
    # tiny-cuda-nn's example network: 64 in, five hidden layers of 64, 64 out, at batch 2^20
    assert shapes.W64x5_OUT64 == [64] * 7 and (shapes.W64x5_OUT64, 2 ** 20) in goal_steps
    assert shapes.net_name(shapes.W64x5_OUT64) == "narrow w64 x5 out64"
    assert shapes.net_name(shapes.narrow(64, 5)) == "narrow w64 x5"
    # the tensor-core GEMMs where their goal is, every float32 tile where the float32 goals are
    assert shapes.kernel_precisions(8192, 4096, 4096) == ["float32", "tf32", "bf16", "3xtf32"]
    assert shapes.kernel_precisions(4096, 4096, 4096) == ["float32"]
    assert shapes.kernel_tiles(4096, 4096, 4096) and not shapes.kernel_tiles(8192, 4096, 4096)
    assert shapes.compile_step_shapes() == [(shapes.WIDE, 4096), (shapes.narrow(64, 8), 2 ** 18)]
    assert all(s in goal_steps for s in shapes.compile_step_shapes())


def test_modes_fit_a_ten_minute_gpu_call():
    """The suite's budget, plus a torch.compile row started just inside it and taking twice its
    least budget, plus start-up, stays under the 10-minute limit of one GPU command (and the
    limit benchmarks/bench_device_run.sh gives it); the compile reserve is a part of the budget,
    and quick and tiny keep none (they run no torch.compile)."""
    script = (Path(cli.__file__).resolve().parents[2] / "benchmarks" / "bench_device_run.sh").read_text()
    limits = {m: int(t) for m, t in re.findall(r"step (\w+) (\d+) bench\.log", script)}
    assert set(limits) == {"full", "quick", "goals"} and max(limits.values()) <= 570
    for name, m in shapes.MODES.items():
        assert m["suite_s"] + shapes.COMPILE_NEED_S + 60 <= limits.get(name, limits["full"]) - 30, name
        assert 0 <= m["compile_reserve_s"] <= m["suite_s"] / 2
    assert shapes.MODES["quick"]["compile_reserve_s"] == shapes.MODES["tiny"]["compile_reserve_s"] == 0


# ----------------------------------------------------------------- timing helper
def test_time_reps_bounds_repetitions_and_rotates_inputs():
    seen = []
    t = timing.time_reps(lambda i: seen.append(i), [(0,), (1,), (2,)], timing.CpuClock(), warmup=2, reps=7,
                        budget_s=10.0)
    assert t["reps"] == 7 and len(seen) == 9 and set(seen) == {0, 1, 2}
    assert 0 <= t["min_ms"] <= t["p25_ms"] <= t["median_ms"] <= t["p75_ms"]
    t = timing.time_reps(lambda: None, [()], timing.CpuClock(), warmup=0, reps=10 ** 9, budget_s=0.05)
    assert 3 <= t["reps"] < 10 ** 9                        # the time budget ends the row


class _FakeClock:
    """A clock of made-up time: each call of the timed function advances it by what it says."""
    device = "fake"

    def __init__(self):
        self.now = 0.0

    def sync(self):
        pass

    def marks(self, n):
        return [None] * n

    def mark(self, marks, i):
        marks[i] = self.now

    def elapsed_ms(self, marks):
        return [b - a for a, b in zip(marks[:-1], marks[1:])]


def test_time_reps_statistics_are_of_the_timed_repetitions_only():
    """With a made-up clock: the warm-up repetitions (1000 ms each) are in no statistic, the
    timed ones rotate on through the input sets, each timed alone between two marks."""
    clock, seen, ms = _FakeClock(), [], {0: 5.0, 1: 1.0, 2: 3.0, 3: 2.0}

    def fn(k):
        seen.append(k)
        clock.now += 1000.0 if len(seen) <= 3 else ms[k]
    t = timing.time_reps(fn, [(0,), (1,), (2,), (3,)], clock, warmup=3, reps=10, budget_s=60.0)
    timed = [ms[k] for k in seen[3:]]
    assert seen == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0] and len(timed) == 10
    assert t["reps"] == 10 and t["warmup_reps"] == 3 and t["input_sets"] == 4
    assert t["median_ms"] == float(np.median(timed)) == 2.5 and t["min_ms"] == 1.0
    assert t["p25_ms"] == float(np.percentile(timed, 25)) and t["p75_ms"] == float(np.percentile(timed, 75))
    clock, calls = _FakeClock(), []

    def rep(i):                                   # event_median_ms passes the repetition's index
        calls.append(i)
        clock.now += 1000.0 if len(calls) <= 3 else [5.0, 1.0, 3.0, 2.0, 9.0][i]
    assert timing.event_median_ms(rep, 5, clock, warmup=3) == 3.0      # median of 5, 1, 3, 2, 9
    assert calls == [0, 1, 2, 0, 1, 2, 3, 4]


def test_event_median_ms_warms_up_then_times_each_repetition_alone():
    import time

    seen = []

    def fn(i):
        seen.append(i)
        time.sleep(0.02 if i == 4 else 0.0)   # one slow repetition: the median ignores it

    ms = timing.event_median_ms(fn, 5, timing.CpuClock(), warmup=2)
    assert seen == [0, 1, 0, 1, 2, 3, 4]       # the warm-up calls, then the indices of the timed ones
    assert 0 <= ms < 10
    assert timing.event_median_ms(lambda i: time.sleep(0.01), 3, timing.CpuClock(), warmup=0) >= 10


# ----------------------------------------------------------------- the peers' math
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_unfused_baseline_computes_gpubps_step(optimizer):
    """The unfused CuPy baseline's math (run with xp=numpy) equals gpubp's numpy step."""
    P = peers
    sizes, B = [7, 16, 16, 5], 33
    params = P.init_params(sizes, seed=3)
    batches = P.random_batches(np, sizes[0], sizes[-1], B, 3, seed=4)
    assert all(np.any(X != 0) for X, _ in batches)
    g = P.GpubpStep("numpy", sizes, params, B, optimizer, 1e-2)
    u = P.UnfusedStep(np, sizes, params, B, optimizer, 1e-2)
    for X, y in batches:
        g(X, y)
        u(X, y)
    assert u.loss_value() == pytest.approx(g.loss_value(), rel=1e-5)
    for (Wg, bg), (Wu, bu) in zip(g.params_host(), u.params_host()):
        np.testing.assert_allclose(Wu, Wg, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bu, bg, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_torch_peer_computes_the_same_step(optimizer):
    pytest.importorskip("torch")
    P = peers
    sizes, B = [6, 8, 4], 17
    params = P.init_params(sizes, seed=5)
    batches = P.random_batches(np, sizes[0], sizes[-1], B, 2, seed=6)
    u = P.UnfusedStep(np, sizes, params, B, optimizer, 1e-2)
    t = P.TorchStep("cpu", sizes, params, B, optimizer, 1e-2)
    for (X, y), (tX, ty) in zip(batches, P.torch_batches(batches, "cpu")):
        u(X, y)
        t(tX, ty)
    assert t.loss_value() == pytest.approx(u.loss_value(), rel=1e-5)
    for (Wt, bt), (Wu, bu) in zip(t.params_host(), u.params_host()):
        np.testing.assert_allclose(Wu, Wt, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bu, bt, rtol=1e-5, atol=1e-6)


@pytest.mark.torch
def test_torch_autocast_bf16_peer_computes_the_float32_step_to_bf16_tolerance():
    """`torch-autocast-bf16` (here autocast on the CPU) computes the float32 peer's step with
    bf16 products: its loss agrees with the float32 one to a few bf16 roundings (unit
    roundoff u = 2^-8); after one SGD step its gradient (the update over -lr) agrees to a
    relative 0.1 per tensor (about 25 u: the bf16 roundings of activations and deltas add up
    through three layers forward and backward, and the batch sums of the weight gradients
    cancel, which magnifies them; this network measures 0.04 at worst), and it is not the
    float32 step itself (autocast really ran); weights stay float32 (master weights)."""
    torch = pytest.importorskip("torch")
    P = peers
    sizes, B, lr = [32, 64, 64, 10], 128, 1e-2
    params = P.init_params(sizes, seed=7)
    (X, y), = P.torch_batches(P.random_batches(np, sizes[0], sizes[-1], B, 1, seed=8), "cpu")
    f32 = P.TorchStep("cpu", sizes, params, B, "sgd", lr)
    bf16 = P.TorchStep("cpu", sizes, params, B, "sgd", lr, autocast=True)
    f32(X, y)
    bf16(X, y)
    u = 2.0 ** -8                      # bf16 unit roundoff
    assert bf16.loss_value() == pytest.approx(f32.loss_value(), rel=4 * u)
    worst = 0.0
    for (W0, b0), (Wf, bf), (Wh, bh) in zip(params, f32.params_host(), bf16.params_host()):
        assert Wh.dtype == np.float32 and bh.dtype == np.float32
        for p0, pf, ph in ((W0, Wf, Wh), (b0, bf, bh)):
            gf, gh = (p0 - pf) / lr, (p0 - ph) / lr
            worst = max(worst, float(np.linalg.norm(gh - gf) / np.linalg.norm(gf)))
    assert worst < 0.1                  # bf16-level agreement (a wrong step is off by O(1))
    assert worst > 2.0 ** -20           # not float32 (which would agree to float32 rounding)
    # Adam: the same loss, float32 parameters, and the autocast context only around forward + loss
    adam = P.TorchStep("cpu", sizes, params, B, "adam", 1e-3, autocast=True)
    adam(X, y)
    assert adam.loss_value() == pytest.approx(f32.loss_value(), rel=4 * u)
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.torch
@pytest.mark.parametrize("peer", ["torch-eager", "torch-autocast-bf16"])
def test_torch_run_peers_compute_forward_and_backward_of_the_given_delta(peer):
    """The fused-run rows' PyTorch peer (here on the CPU): after one call every parameter has a
    float32 gradient, and dW of the last layer is delta.T @ A_prev (bf16 products under autocast)."""
    torch = pytest.importorskip("torch")
    run = fused_runs.torch_run(peer, [8, 16, 16, 4], 32, device="cpu")
    run()
    model = run.model
    lin = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        h = run.X
        for m in model[:-1]:
            h = m(h)
        want = run.delta.T @ h
    tol = 2e-2 if peer.endswith("bf16") else 1e-5
    torch.testing.assert_close(lin[-1].weight.grad, want, rtol=tol, atol=tol * float(want.abs().max()))


def test_peer_specs_name_each_precision_and_backend_option():
    S = peers.GPU_PEER_SPECS
    assert set(goals.GPUBP_PEERS) == {"float32", "tf32", "bf16", "3xtf32"}
    for prec, names in goals.GPUBP_PEERS.items():
        for n in names:
            assert S[n].library == "gpubp" and S[n].precision == prec
    for prec, n in goals.TORCH_PEER.items():
        assert S[n].library == "torch" and not S[n].compile
        assert S[n].precision == ("float32" if prec == "3xtf32" else prec)
    for n in ("gpubp-cuda-tf32", "gpubp-cuda-bf16", "gpubp-cuda-3xtf32"):
        assert S[n].backend_options() == {"fuse": True, "tensor_core_gemms": True}
    assert S["gpubp-cuda"].backend_options() == {"fuse": True, "tensor_core_gemms": False}
    assert S["gpubp-cuda-tf32-default"].backend_options() == {"fuse": True, "tensor_core_gemms": False}
    assert S["torch-eager"].backend_options() is None
    assert set(peers.COMPILE_PEERS) == {"torch-compile", "torch-compile-tf32", "torch-compile-bf16"}
    assert not set(peers.COMPILE_PEERS) & set(peers.GPU_PEERS)
    assert {S[n].precision for n in peers.COMPILE_PEERS} == {"float32", "tf32", "bf16"}
    assert all(n in goals.PEER_TEXT for n in peers.GPU_PEERS + peers.COMPILE_PEERS if S[n].library == "torch")


# ----------------------------------------------------------------- ratios and goals
def _row(**kw):
    return dict(kind="step", device="cuda", reps=10, p25_ms=1.0, p75_ms=1.0, min_ms=1.0, **kw)


def _kernel(peer, kernel, shape, median_ms, precision="float32"):
    return kernel_row(peer, kernel, shape, median_ms, precision=precision, reps=10, p25_ms=median_ms,
                      p75_ms=median_ms, min_ms=median_ms)


WIDE_T, N64_T = tuple(shapes.WIDE), tuple(shapes.narrow(64, 8))


def test_ratios_and_goals_pass_miss_info_and_not_measured():
    W, N, T = list(shapes.WIDE), shapes.narrow(64, 8), shapes.W64x5_OUT64
    fwd_tc, fwd32 = (8192, 4096, 4096), (4096, 4096, 4096)
    rs = [
        # wide, batch 4096: float32 passes, tf32 misses, bf16 passes (exactly 1.0), 3xtf32 misses 1.3x
        _row(peer="gpubp-cuda", precision="float32", sizes=W, batch=4096, median_ms=9.0),
        _row(peer="torch-eager", precision="float32", sizes=W, batch=4096, median_ms=10.0),
        _row(peer="gpubp-cuda-tf32", precision="tf32", sizes=W, batch=4096, median_ms=5.0),
        _row(peer="torch-eager-tf32", precision="tf32", sizes=W, batch=4096, median_ms=4.0),
        _row(peer="gpubp-cuda-bf16", precision="bf16", sizes=W, batch=4096, median_ms=3.0),
        _row(peer="torch-autocast-bf16", precision="bf16", sizes=W, batch=4096, median_ms=3.0),
        _row(peer="gpubp-cuda-3xtf32", precision="3xtf32", sizes=W, batch=4096, median_ms=8.0),
        # a torch peer of another precision does not stand in for the missing one; an error row counts for nothing
        _row(peer="torch-compile-tf32", precision="tf32", sizes=W, batch=1024, median_ms=1.0),
        _row(peer="gpubp-cuda-tf32", precision="tf32", sizes=W, batch=1024, median_ms=1.5),
        dict(kind="step", device="cuda", peer="torch-eager-tf32", sizes=W, batch=1024, error="RuntimeError: x"),
        # a fast but wrong row (its loss NaN) never counts
        _row(peer="gpubp-cuda-3xtf32", precision="3xtf32", sizes=W, batch=256, median_ms=0.1,
             check_error="the final loss is nan"),
        _row(peer="torch-eager", precision="float32", sizes=W, batch=256, median_ms=1.0),
        # narrow w64 x8: the faster float32 path counts
        _row(peer="gpubp-cuda", precision="float32", sizes=N, batch=2 ** 18, median_ms=2.0),
        _row(peer="gpubp-cuda-graph", precision="float32", sizes=N, batch=2 ** 18, median_ms=1.5),
        _row(peer="torch-eager", precision="float32", sizes=N, batch=2 ** 18, median_ms=4.0),
        _row(peer="gpubp-cuda-bf16", precision="bf16", sizes=N, batch=2 ** 18, median_ms=0.5),
        _row(peer="torch-autocast-bf16", precision="bf16", sizes=N, batch=2 ** 18, median_ms=4.5),
        # the throughput network
        _row(peer="gpubp-cuda-bf16", precision="bf16", sizes=T, batch=2 ** 20, median_ms=2.0),
        # GEMMs: tf32 at 80% of cuBLAS TF32 passes; float32 fwd: the best tile counts
        _kernel("gpubp-tc-tf32", "fwd", fwd_tc, 5.0, "tf32"), _kernel("cublas-tf32", "fwd", fwd_tc, 4.0, "tf32"),
        _kernel("gpubp-tc-3xtf32", "fwd", fwd_tc, 12.0, "3xtf32"), _kernel("cublas-sgemm", "fwd", fwd_tc, 6.0),
        _kernel("gpubp-tc-bf16", "fwd", fwd_tc, 3.0, "bf16"),            # no cuBLAS BF16 row
        _kernel("gpubp-fused", "fwd", fwd32, 4.0), _kernel("gpubp-gemm-f32", "fwd", fwd32, 3.0),
        _kernel("gpubp-gemm-v1", "fwd", fwd32, 4.1), _kernel("cublas-sgemm", "fwd", fwd32, 2.85),
        _kernel("gpubp-fused", "bwd_data", fwd32, 4.0), _kernel("cublas-sgemm", "bwd_data", fwd32, 2.8),
        dict(_kernel("gpubp-gemm-f32", "bwd_data", fwd32, 1.0), check_error="relative error 1e+00"),  # wrong
        dict(kind="ceiling", ceiling="sgemm", device="cuda", median_ms=2.0, tflops=50.0),
    ]
    rows.add_ratios(rs)
    assert rs[1]["speedup_gpubp"] == pytest.approx(10 / 9)
    assert rs[3]["speedup_gpubp_same_precision"] == pytest.approx(4.0 / 5.0)     # torch tf32 over gpubp tf32
    assert rs[3]["speedup_gpubp"] == pytest.approx(4.0 / 9.0)                    # over gpubp-cuda (float32)
    tc = [r for r in rs if r.get("peer") == "gpubp-tc-tf32"][0]
    assert tc["frac_cublas"] == pytest.approx(0.8)
    tc3 = [r for r in rs if r.get("peer") == "gpubp-tc-3xtf32"][0]
    assert tc3["frac_cublas"] == pytest.approx(0.5)                              # 3xTF32 against SGEMM
    got = {(g["name"], g["precision"], g.get("kernel")): g for g in goals.check_goals(rs)}
    wide = "wide 1024-4096x3-10 step, batch "

    def res(name, prec, kernel=None):
        return got[(name, prec, kernel)]
    assert res(wide + "4096", "float32")["result"] == "PASS"
    assert res(wide + "4096", "float32")["value"] == pytest.approx(10 / 9)
    assert res(wide + "4096", "tf32")["result"] == "MISS" and res(wide + "4096", "tf32")["margin"] == "-20%"
    assert res(wide + "4096", "bf16")["result"] == "PASS" and res(wide + "4096", "bf16")["value"] == 1.0
    r3 = res(wide + "4096", "3xtf32")
    assert r3["result"] == "MISS" and r3["value"] == pytest.approx(10 / 8) and r3["threshold"] == 1.3
    assert res(wide + "1024", "tf32")["result"] == "NOT MEASURED"                 # its torch peer errored
    assert res(wide + "256", "bf16")["result"] == "NOT MEASURED" and "value" not in res(wide + "256", "bf16")
    bad = res(wide + "256", "3xtf32")
    assert bad["result"] == "NOT MEASURED" and bad["failed_checks"] == ["gpubp-cuda-3xtf32: the final loss is nan"]
    assert "failed their check" in bad["measured"]
    n = res("narrow w64 x8 step, batch 262144", "float32")
    assert n["result"] == "MISS" and n["value"] == pytest.approx(4.0 / 1.5) and "gpubp-cuda-graph" in n["measured"]
    assert res("narrow w64 x8 step, batch 262144", "bf16")["result"] == "PASS"      # 9x >= 8x
    assert res("narrow w64 x8 step, batch 262144", "tf32")["result"] == "NOT MEASURED"
    thr = res("narrow w64 x5 (64 in, 64 out) step, batch 1048576", "bf16")
    assert thr["result"] == "INFO" and thr["value"] == pytest.approx(2 ** 20 / 2e-3) and thr["aim"] == 1e9
    assert "no figure" in thr["measured"] and thr["published"]["source"]
    assert res("narrow w64 x5 (64 in, 64 out) step, batch 1048576", "tf32")["result"] == "NOT MEASURED"
    g = {(x.kernel, x.precision, x.kernel_shape): x.name for x in goals.GOALS if x.kernel}
    assert res(g[("fwd", "tf32", fwd_tc)], "tf32", "fwd")["value"] == pytest.approx(0.8)
    assert res(g[("fwd", "tf32", fwd_tc)], "tf32", "fwd")["result"] == "PASS"
    assert res(g[("fwd", "3xtf32", fwd_tc)], "3xtf32", "fwd")["result"] == "MISS"
    assert res(g[("fwd", "bf16", fwd_tc)], "bf16", "fwd")["result"] == "NOT MEASURED"
    f = res(g[("fwd", "float32", fwd32)], "float32", "fwd")
    assert f["value"] == pytest.approx(0.95) and f["result"] == "PASS" and "gpubp-fused" in f["measured"]
    bd = res(g[("bwd_data", "float32", fwd32)], "float32", "bwd_data")
    assert bd["result"] == "MISS" and bd["value"] == pytest.approx(0.7)        # the wrong, faster tile left out
    assert bd["failed_checks"] == ["gpubp-gemm-f32: relative error 1e+00"]
    assert res(g[("bwd_weight", "float32", fwd32)], "float32", "bwd_weight")["result"] == "NOT MEASURED"
    assert all(x["result"] == "NOT MEASURED" and "passed" not in x for x in goals.check_goals([], {}))


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0, float("inf"), None])
def test_a_time_that_is_not_above_zero_never_counts_for_a_goal_or_a_ratio(bad):
    """A median time that is NaN, zero, negative, infinite or missing is no measurement: the goal is
    NOT MEASURED saying which row (never MISS or PASS on it, and no ZeroDivisionError that would
    lose the whole run's files), the other gpubp variant still counts, and no ratio divides by it."""
    W = list(shapes.WIDE)
    g32 = find_goal(metric="speedup", sizes=WIDE_T, batch=4096, precision="float32")
    torch_row = _row(peer="torch-eager", precision="float32", sizes=W, batch=4096, median_ms=10.0)
    rs = [_row(peer="gpubp-cuda", precision="float32", sizes=W, batch=4096, median_ms=bad), dict(torch_row)]
    rows.add_ratios(rs)
    assert "speedup_gpubp" not in rs[1] and "speedup_gpubp_same_precision" not in rs[1]
    got = goals.judge(g32, rs)
    assert got["result"] == "NOT MEASURED" and "value" not in got and "passed" not in got
    assert got["failed_checks"] == [f"gpubp-cuda: median time {bad!r} ms, not a number above zero"]
    # the graph row counts when the plain row's time is bad, wherever the bad row stands
    graph = _row(peer="gpubp-cuda-graph", precision="float32", sizes=W, batch=4096, median_ms=5.0)
    for rs in ([rs[0], graph, torch_row], [graph, rs[0], torch_row]):
        got = goals.judge(g32, rs)
        assert got["result"] == "PASS" and got["value"] == pytest.approx(2.0)
    # the peer's bad time: not measured either
    rs = [graph, dict(torch_row, median_ms=bad)]
    assert goals.judge(g32, rs)["result"] == "NOT MEASURED"
    # a GEMM goal and its share of cuBLAS alike
    shape = (4096, 4096, 4096)
    gk = find_goal(metric="gemm_fraction", kernel="fwd", kernel_shape=shape, precision="float32")
    ks = [_kernel("gpubp-fused", "fwd", shape, bad), _kernel("cublas-sgemm", "fwd", shape, 1.0)]
    rows.add_ratios(ks)
    assert "frac_cublas" not in ks[0] and goals.judge(gk, ks)["result"] == "NOT MEASURED"
    # information goals too (no samples/s from a bad time)
    T = shapes.W64x5_OUT64
    gi = find_goal(metric="samples_per_s", precision="bf16")
    assert goals.judge(gi, [_row(peer="gpubp-cuda-bf16", precision="bf16", sizes=T, batch=2 ** 20,
                                 median_ms=bad)])["result"] == "NOT MEASURED"


def test_a_goal_not_measured_says_why():
    """NOT MEASURED names what kept each row it needs from a result: a row skipped for the budget or
    a lost CUDA context, an error, or no row at all."""
    W = list(shapes.WIDE)
    g = find_goal(metric="speedup", sizes=WIDE_T, batch=4096, precision="bf16")
    rs = [_row(peer="gpubp-cuda-bf16", precision="bf16", sizes=W, batch=4096,
               skipped="the CUDA context was lost earlier (kernel fwd gpubp-tc-bf16)"),
          _row(peer="torch-autocast-bf16", precision="bf16", sizes=W, batch=4096, error="RuntimeError: x"),
          _row(peer="gpubp-cuda-bf16", precision="bf16", sizes=W, batch=1024, median_ms=1.0)]   # another batch
    got = goals.judge(g, rs)
    assert got["result"] == "NOT MEASURED"
    assert got["measured"] == ("not measured: gpubp-cuda-bf16: the CUDA context was lost earlier (kernel fwd "
                               "gpubp-tc-bf16); torch-autocast-bf16: RuntimeError: x")
    got = goals.judge(g, rs[:1])
    assert got["measured"].endswith("; no torch-autocast-bf16 row") and "context was lost" in got["measured"]
    assert goals.judge(g, [])["measured"] == "no row of gpubp bf16 (gpubp-cuda-bf16); no torch-autocast-bf16 row"
    gi = find_goal(metric="samples_per_s", precision="bf16")
    assert goals.judge(gi, [])["measured"] == "no row of gpubp bf16 (gpubp-cuda-bf16)"
    gk = find_goal(metric="gemm_fraction", kernel="fwd", kernel_shape=(8192, 4096, 4096), precision="bf16")
    budget = dict(_kernel("gpubp-tc-bf16", "fwd", (8192, 4096, 4096), 1.0, "bf16"), skipped="suite time budget spent")
    del budget["median_ms"]
    assert goals.judge(gk, [budget])["measured"] == ("not measured: gpubp-tc-bf16: suite time budget spent; "
                                                     "no cublas-bf16 row")


@pytest.mark.parametrize("peer_ms, result", [(3.0, "PASS"), (2.997, "MISS")])
def test_a_goal_passes_at_exactly_its_threshold(peer_ms, result):
    """At least 3x: 3.0x passes (margin +0%), just under misses; a GEMM share of exactly 75% passes."""
    N = shapes.narrow(64, 8)
    rs = [_row(peer="gpubp-cuda", precision="float32", sizes=N, batch=2 ** 18, median_ms=1.0),
          _row(peer="torch-eager", precision="float32", sizes=N, batch=2 ** 18, median_ms=peer_ms)]
    got = goals.judge(find_goal(metric="speedup", sizes=N64_T, precision="float32"), rs)
    assert got["result"] == result and got["passed"] == (result == "PASS") and got["threshold"] == 3.0
    shape = (8192, 4096, 4096)
    ks = [_kernel("gpubp-tc-bf16", "fwd", shape, 4.0, "bf16"), _kernel("cublas-bf16", "fwd", shape, peer_ms, "bf16")]
    got = goals.judge(find_goal(metric="gemm_fraction", kernel_shape=shape, precision="bf16"), ks)
    assert got["result"] == result and got["margin"] == ("+0.0 points" if result == "PASS" else "-0.1 points")


def test_two_negative_times_never_pass():
    W = list(shapes.WIDE)
    rs = [_row(peer="gpubp-cuda", precision="float32", sizes=W, batch=4096, median_ms=-1.0),
          _row(peer="torch-eager", precision="float32", sizes=W, batch=4096, median_ms=-10.0)]
    assert goals.judge(find_goal(metric="speedup", sizes=WIDE_T, batch=4096, precision="float32"), rs)["result"] \
        == "NOT MEASURED"


def test_a_row_whose_check_failed_is_no_ratio_or_summary_reference_and_is_marked(tmp_path):
    """The goals leave out a fast but wrong row (a NaN loss): the ratios, the summary's speed-ups and
    bench.md must not compare with it either (they did: 'bf16 2.00x' beside a goal NOT MEASURED)."""
    from gpubp.bench import report
    W = list(shapes.WIDE)
    rs = [_row(peer="gpubp-cuda", precision="float32", network="wide", sizes=W, batch=4096, median_ms=1.0,
               check_error="the final loss is nan"),
          _row(peer="gpubp-cuda-bf16", precision="bf16", network="wide", sizes=W, batch=4096, median_ms=1.0,
               check_error="the final loss is nan"),
          _row(peer="torch-eager", precision="float32", network="wide", sizes=W, batch=4096, median_ms=10.0),
          _row(peer="torch-autocast-bf16", precision="bf16", network="wide", sizes=W, batch=4096, median_ms=2.0)]
    ks = [dict(_kernel("gpubp-tc-bf16", "fwd", (8192, 4096, 4096), 1.0, "bf16"), check_error="relative error 1"),
          _kernel("cublas-bf16", "fwd", (8192, 4096, 4096), 2.0, "bf16")]
    rows.add_ratios(rs + ks)
    assert not any("speedup_gpubp" in r or "speedup_gpubp_same_precision" in r for r in rs)
    assert "speedup_gpubp_same_precision" not in ks[1]
    table = report.summary_table(rs)
    assert table[-1] == "| cuda | wide | 4096 | - | - | 10 | 2 |  |"
    res = dict(meta=dict(versions=dict(cpu="x", cpu_count=2, blas_threads=2, numpy="1", torch="2", sklearn="1",
                                       python="3", gpubp="0"), notes=[]),
               config=dict(mode="quick", optimizer="adam", lr=1e-3), ceilings={}, rows=rs + ks,
               goals=goals.check_goals(rs + ks), wall_s=1.0)
    report.write_markdown(res, tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    assert "| wide | 4096 | gpubp-cuda-bf16 (**check failed**: the final loss is nan) |" in md
    assert "gpubp-tc-bf16 (**check failed**: relative error 1) |" in md
    assert "bf16 5.00x" not in md and "float32 10.00x" not in md
    # a goal judged on another gpubp row says which row it left out
    rs.append(_row(peer="gpubp-cuda-graph", precision="float32", network="wide", sizes=W, batch=4096,
                   median_ms=5.0))
    res["goals"] = goals.check_goals(rs + ks)
    report.write_markdown(res, tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    line = [x for x in md.splitlines() if x.startswith("| wide 1024-4096x3-10 step, batch 4096, gpubp float32")][0]
    assert "**PASS**" in line and "left out (check failed): gpubp-cuda: the final loss is nan" in line


def test_goals_hold_every_target_of_the_tensor_core_and_narrow_work():
    """Each goal as the tensor-core and narrow-network work states it: (what, precision,
    compared peer, threshold)."""
    W, N64, N128, T = WIDE_T, N64_T, tuple(shapes.narrow(128, 8)), tuple(shapes.W64x5_OUT64)
    want = {
        (W, 4096, "float32", "torch-eager", 1.0), (W, 4096, "tf32", "torch-eager-tf32", 1.0),
        (W, 4096, "bf16", "torch-autocast-bf16", 1.0), (W, 4096, "3xtf32", "torch-eager", 1.3),
        *((W, b, p, goals.TORCH_PEER[p], 1.0) for b in (256, 1024) for p in ("tf32", "bf16", "3xtf32")),
        (N64, 2 ** 18, "float32", "torch-eager", 3.0), (N64, 2 ** 18, "tf32", "torch-eager-tf32", 5.0),
        (N64, 2 ** 18, "bf16", "torch-autocast-bf16", 8.0),
        *((N128, 2 ** 18, p, goals.TORCH_PEER[p], 2.0) for p in ("float32", "tf32", "bf16")),
    }
    steps = {(g.sizes, g.batch, g.precision, g.peer, g.threshold) for g in goals.GOALS if g.metric == "speedup"}
    assert steps == want
    kern = {(g.kernel, g.kernel_shape, g.precision, g.peer, g.threshold) for g in goals.GOALS if g.kernel}
    assert kern == {("fwd", (8192, 4096, 4096), "tf32", "cublas-tf32", 0.75),
                    ("fwd", (8192, 4096, 4096), "bf16", "cublas-bf16", 0.75),
                    ("fwd", (8192, 4096, 4096), "3xtf32", "cublas-sgemm", 0.75),
                    *((k, (4096, 4096, 4096), "float32", "cublas-sgemm", 0.90)
                      for k in ("fwd", "bwd_data", "bwd_weight"))}
    info = {(g.sizes, g.batch, g.precision, g.threshold, g.aim) for g in goals.GOALS if g.metric == "samples_per_s"}
    assert info == {(T, 2 ** 20, "float32", None, None), (T, 2 ** 20, "tf32", None, None),
                    (T, 2 ** 20, "bf16", None, 1e9)}
    # the published figures are data with a source in words; none is invented
    pub = goals.PUBLISHED["tiny-cuda-nn"]
    assert pub["samples_per_s"] is None and "plot" in pub["source"] and "64" in pub["source"]


def test_goals_are_data_naming_precision_and_peers():
    for g in goals.GOALS:
        assert g.precision in goals.GPUBP_PEERS and g.peer in goals.PEER_TEXT
        assert g.precision in g.describe() and goals.PEER_TEXT[g.peer] in g.describe()
    step_goals = [(list(g.sizes), g.batch) for g in goals.GOALS if g.sizes is not None]
    # the GPU rows start with every goal's shape
    assert shapes.gpu_step_shapes("quick")[:len(shapes.goal_step_shapes())] == shapes.goal_step_shapes()
    assert step_goals and all(s in shapes.gpu_step_shapes(m) for s in step_goals for m in ("quick", "full"))
    assert all(tuple(g.kernel_shape) in shapes.kernel_shapes("quick") for g in goals.GOALS if g.kernel)
    with pytest.raises(ValueError, match="precision"):
        goals.Goal("x", "speedup", "torch-eager", "float16", 1.0, sizes=(2, 2), batch=1)
    with pytest.raises(ValueError, match="peer"):
        goals.Goal("x", "speedup", "jax", "float32", 1.0, sizes=(2, 2), batch=1)
    with pytest.raises(ValueError, match="either a step"):
        goals.Goal("x", "speedup", "torch-eager", "float32", 1.0)
    with pytest.raises(ValueError, match="gemm_fraction"):
        goals.Goal("x", "gemm_fraction", "cublas-sgemm", "float32", 0.9, sizes=(2, 2), batch=1)
    with pytest.raises(ValueError, match="information only"):
        goals.Goal("x", "samples_per_s", "tiny-cuda-nn", "bf16", 1e9, sizes=(2, 2), batch=1)
    with pytest.raises(ValueError, match="published"):
        goals.Goal("x", "samples_per_s", "torch-eager", "bf16", None, sizes=(2, 2), batch=1)
    # a goal judged on a precision counts only that precision's rows
    only_f32 = [_row(peer="gpubp-cuda", sizes=[2, 2], batch=1, median_ms=1.0),
                _row(peer="torch-eager", sizes=[2, 2], batch=1, median_ms=2.0)]
    g = goals.Goal("tiny", "speedup", "torch-eager", "tf32", 1.0, sizes=(2, 2), batch=1)
    assert goals.judge(g, only_f32, {})["result"] == "NOT MEASURED"


# ----------------------------------------------------------------- GPU-side code on a fake CuPy
def _real_gpu() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.fixture
def fake(monkeypatch):
    """A fake H100 (tests/support/fake_cupy.py): every launch is checked against the kernel's
    CUDA signature; kernels compute nothing."""
    if _real_gpu():
        pytest.skip("a real GPU is present: the GPU run checks these paths there")
    import gpubp.backends
    from gpubp.backends import cuda_device, cuda_fused, cuda_fused_family
    from support.fake_cupy import FakeCupy
    f = FakeCupy()

    class RandomState:                  # what the bench's inputs need of cupy.random
        def __init__(self, seed):
            self.rng = np.random.default_rng(seed)

        def standard_normal(self, shape, dtype=np.float32):
            return f.asarray(self.rng.standard_normal(shape).astype(dtype))
    monkeypatch.setattr(f, "random", SimpleNamespace(RandomState=RandomState), raising=False)
    monkeypatch.setitem(sys.modules, "cupy", f)
    for mod, attr in ((cuda_device, "_attributes"), (cuda_device, "_ccs"), (cuda_device, "_functions"),
                      (cuda_fused, "_grids"), (cuda_fused_family, "_grids"), (gpubp.backends, "_instances")):
        monkeypatch.setattr(mod, attr, {})
    return f


#: the kernels (and template PREC code) each GEMM variant must launch, per GEMM
VARIANT_KERNELS = {
    # the library's own choice: today the pipelined tile for the weight gradient
    "gpubp-fused": {"fwd": "gemm_fwd", "bwd_data": "gemm_bwd_data",
                    "bwd_weight": ("gemm_bwd_weight", "gemm_bwd_weight_pipelined")},
    "gpubp-gemm-v1": {"fwd": "gemm_fwd", "bwd_data": "gemm_bwd_data", "bwd_weight": "gemm_bwd_weight"},
    "gpubp-gemm-pipelined": {"bwd_weight": "gemm_bwd_weight_pipelined"},
    "gpubp-gemm-f32": {"fwd": "gemm_f32_fwd", "bwd_data": "gemm_f32_bwd_data", "bwd_weight": "gemm_f32_bwd_weight"},
    **{f"gpubp-tc-{p}": {"fwd": "gemm_tc_fwd", "bwd_data": "gemm_tc_bwd_data", "bwd_weight": "gemm_tc_bwd_weight"}
       for p in ("tf32", "bf16", "3xtf32")},
}


@pytest.mark.parametrize("peer", list(gemms.GPUBP_VARIANTS))
def test_every_gemm_variant_launches_its_own_kernel_within_contract(fake, peer):
    """The kernel rows' calls (`gpubp.bench.gemms.gpubp_gemm`) launch, for each GEMM, the kernel the
    variant names, with the arguments its CUDA source declares; the tensor-core variants with
    their mode's PREC; `preload` compiles them up front, so the timed calls compile nothing."""
    assert set(VARIANT_KERNELS) == set(gemms.GPUBP_VARIANTS)
    M, N, K = 1024, 256, 192
    sets = gemms.random_sets(M, N, K, n_sets=2, seed=3)
    assert [tuple(x.shape) for x in sets[1]] == [(M, K), (N, K), (N,), (M, N)]
    assert all(isinstance(x, fake.ndarray) and x.dtype == np.float32 for x in sets[0])
    assert float(sets[0][0].min()) == 0.0 < float(sets[0][0].max())        # A_prev is a ReLU output
    ops = gemms.GemmOperands(sets)
    assert ops.shape == (M, N, K)
    gemms.preload([peer])
    for kind in gemms.KINDS:
        if not gemms.variant_applies(peer, kind):
            assert kind not in VARIANT_KERNELS[peer]
            with pytest.raises(ValueError, match="no"):
                gemms.gpubp_gemm(peer, kind, ops)
            continue
        fn = gemms.gpubp_gemm(peer, kind, ops)
        fn(*sets[0])                          # compiles what preload did not (cuda_gemm's own kernels)
        compiled = len(fake.compiled)
        fake.reset()
        fn(*sets[0])
        assert len(fake.compiled) == compiled, "a timed call compiled a kernel"
        want = VARIANT_KERNELS[peer][kind]
        main = [l for l in fake.launches if l.kernel in ((want,) if isinstance(want, str) else want)]
        assert main, [l.name for l in fake.launches]
        prec = gemms.tc_precision(peer)
        if prec is not None:
            from gpubp.backends import cuda_gemm_tc
            assert main[0].name.split("<")[1].split(",")[0].strip() == str(cuda_gemm_tc.PREC_CODES[prec])
    with pytest.raises(ValueError, match="unknown gpubp GEMM variant"):
        gemms.gpubp_gemm("gpubp-gemm-v9", "fwd", ops)


@pytest.mark.parametrize("peer", ["gpubp-cuda", "gpubp-cuda-graph", "gpubp-cuda-tf32", "gpubp-cuda-tf32-default",
                                  "gpubp-cuda-bf16", "gpubp-cuda-3xtf32"])
def test_gpubp_step_peers_run_on_the_backend_options_they_record(fake, peer):
    """A gpubp step peer builds as the step rows build it (`CudaBackend(**backend_options())`):
    the tensor-core peers launch gemm_tc kernels of their mode for the wide layers, the float32
    ones never do; the graph peer replays its capture."""
    from gpubp.backends.cuda_backend import CudaBackend
    spec = peers.GPU_PEER_SPECS[peer]
    sizes, B = [96, 300, 300, 10], 256
    X = fake.asarray(np.random.default_rng(0).standard_normal((B, sizes[0])).astype(np.float32))
    y = fake.asarray(np.arange(B, dtype=np.int32) % sizes[-1])
    step = peers.GpubpStep(CudaBackend(**spec.backend_options()), sizes, peers.init_params(sizes), B, "adam", 1e-3,
                           graph=spec.graph, first_batch=(X, y), precision=spec.precision)
    assert step.net.precision == spec.precision and step.net.backend.tensor_core_gemms == spec.tensor_core_gemms
    fake.reset()
    step(X, y)
    kernels = {l.kernel for l in fake.launches}
    tc = {k for k in kernels if k.startswith("gemm_tc")}
    if spec.tensor_core_gemms:
        from gpubp.backends import cuda_gemm_tc
        assert {"gemm_tc_fwd", "gemm_tc_bwd_data", "gemm_tc_bwd_weight"} <= tc
        code = str(cuda_gemm_tc.PREC_CODES[spec.precision])
        assert all(l.name.split("<")[1].split(",")[0].strip() == code for l in fake.launches
                   if l.kernel in ("gemm_tc_fwd", "gemm_tc_bwd_data", "gemm_tc_bwd_weight"))
    else:
        assert not tc and "gemm_fwd" in kernels
    if spec.graph:
        assert fake.launches and all(l.replay for l in fake.launches if l.kernel.startswith("gemm"))


@pytest.mark.parametrize("peer", [p for p in fused_runs.RUN_PEERS if not p.startswith("torch")])
@pytest.mark.parametrize("sizes", [shapes.narrow(64, 8), shapes.narrow(128, 8), shapes.W64x5_OUT64])
def test_fused_run_peers_launch_their_kernels_and_allocate_nothing_when_warm(fake, peer, sizes):
    """The fused-run rows' gpubp runs: the family's kernels of the peer's policy (or the default
    path's fused kernels), forward then backward, within their contract; a warm call allocates
    nothing (tables and workspaces kept in the run's Scratch)."""
    from gpubp.backends import cuda_fused_family
    assert fused_runs.run_fits(peer, sizes) is None
    run = fused_runs.gpubp_run(peer, sizes, 2048)
    run()
    fake.reset()
    run()
    kernels = [l.kernel for l in fake.launches]
    prec = fused_runs.RUN_PEERS[peer][0]
    if peer.startswith("family-"):
        assert kernels[:3] == ["fused_family_fwd", "fused_family_bwd", "fused_family_reduce"], kernels
        pol = str(cuda_fused_family.PRECISIONS[prec])
        assert all(l.name.split("<")[1].split(",")[0].strip() == pol for l in fake.launches[:2])
    else:
        assert kernels[0].startswith("fused_mlp_fwd") and kernels[1].startswith("fused_mlp_bwd"), kernels
        assert kernels[0].endswith("_tf32") == (prec == "tf32")
    assert fake.allocations == 0, fake.allocation_sites
    assert fused_runs.run_fits(peer, [256, 256, 10]) is not None                 # too wide for a fused run


def test_gemm_error_limits_pass_each_modes_emulated_gemm_with_room_and_catch_a_wrong_one():
    """`gemms.REL_ERR_LIMIT`, the error past which a GEMM row does not count: each mode's GEMM as
    `gpubp.precision` emulates it (K = 4096, as the GEMM goals) is at least 10x inside it, and a
    GEMM that lost 64 of its 4096 k (one dropped tile step of a 64-deep loop) is outside."""
    from gpubp import precision
    rng = np.random.default_rng(0)
    A = np.maximum(rng.standard_normal((32, 4096)).astype(np.float32), 0)      # a ReLU output
    Wt = (rng.standard_normal((4096, 64)) / 64).astype(np.float32)
    ref = A @ Wt
    for mode in ("tf32", "bf16", "3xtf32"):
        err = np.linalg.norm(precision.matmul(A, Wt, mode) - ref) / np.linalg.norm(ref)
        assert 10 * err < gemms.REL_ERR_LIMIT[mode], (mode, err)
    wrong = A[:, :-64] @ Wt[:-64]                        # 64 of the 4096 k lost (a dropped tile step)
    assert all(np.linalg.norm(wrong - ref) / np.linalg.norm(ref) > lim for lim in gemms.REL_ERR_LIMIT.values())
    assert set(gemms.REL_ERR_LIMIT) == set(goals.GPUBP_PEERS)


def test_kernel_peers_pair_each_gpubp_gemm_with_cublas_at_its_precision():
    assert rows.kernel_peers(["float32"]) == ["gpubp-fused", "cupy-unfused", "cublas-sgemm"]
    assert rows.kernel_peers(["float32"], tiles=True) == [
        "gpubp-fused", "gpubp-gemm-v1", "gpubp-gemm-pipelined", "gpubp-gemm-f32", "cupy-unfused", "cublas-sgemm"]
    assert rows.kernel_peers(["float32", "tf32", "bf16", "3xtf32"]) == [
        "gpubp-fused", "cupy-unfused", "cublas-sgemm", "gpubp-tc-tf32", "cublas-tf32", "gpubp-tc-bf16",
        "cublas-bf16", "gpubp-tc-3xtf32"]                      # 3xtf32's cuBLAS is SGEMM, timed once
    for peer, (prec, _) in gemms.GPUBP_VARIANTS.items():
        assert peer in goals.GPUBP_KERNEL_PEERS[prec]
        assert gemms.CUBLAS[goals.CUBLAS_PEER[prec]][0] == ("float32" if prec == "3xtf32" else prec)
    assert [gemms.variant_applies("gpubp-gemm-pipelined", k) for k in gemms.KINDS] == [False, False, True]


# ----------------------------------------------------------------- which rows run, in which order
def _plan_of(monkeypatch, argv, has_torch_cuda=True):
    """The GPU rows `gpubp bench argv` would run, in order, with the row functions recorded:
    ("kernel", B, N, K, precisions, tiles, part, keep), ("run", network, batch, part) and
    ("step", network, batch, peers, reserve_s)."""
    calls = []
    monkeypatch.setattr(cli, "kernel_rows",
                        lambda suite, B, N, K, precs, tiles, torch_ok, part, keep=None: calls.append(
                            ("kernel", B, N, K, precs, tiles, part, keep)))
    monkeypatch.setattr(cli, "run_rows", lambda suite, sizes, b, t, part: calls.append(
        ("run", shapes.net_name(sizes), b, part)))
    monkeypatch.setattr(cli, "gpu_step_rows",
                        lambda suite, sizes, b, ps: calls.append(("step", shapes.net_name(sizes), b, tuple(ps),
                                                                  suite.reserve_s)))
    a = cli.parse_args(argv + ["--out", "/tmp/never-written"])
    cfg = dict(shapes.MODES[a.mode], mode=a.mode, compile=a.mode == "full" and not a.no_compile)
    suite = rows.Suite(cfg, verbose=False)
    meta = dict(notes=[])
    cli.run_gpu_rows(suite, a, cfg, has_torch_cuda, meta)
    assert suite.reserve_s == 0
    return calls, meta


VERIFIED = tuple(p for p in peers.GPU_PEERS if not peers.GPU_PEER_SPECS[p].opt_in)
OPT_IN = tuple(p for p in peers.GPU_PEERS if peers.GPU_PEER_SPECS[p].opt_in)


def test_gpu_rows_run_goals_first_verified_before_opt_in_and_compile_last(monkeypatch):
    assert OPT_IN == ("gpubp-cuda-tf32", "gpubp-cuda-bf16", "gpubp-cuda-3xtf32")
    calls, _ = _plan_of(monkeypatch, [])
    goal_steps = [(shapes.net_name(s), b) for s, b in shapes.goal_step_shapes()]
    goal_k = [("kernel", 8192, 4096, 4096, ["float32", "tf32", "bf16", "3xtf32"], False),
              ("kernel", 4096, 4096, 4096, ["float32"], True)]                       # every float32 tile there
    n = len(goal_steps)
    # the goals' GEMMs and steps, verified kernels first, then the opt-in ones
    assert calls[:2] == [k + ("verified", None) for k in goal_k]
    assert [(c[1], c[2], c[3]) for c in calls[2:2 + n]] == [g + (VERIFIED,) for g in goal_steps]
    assert calls[2 + n:4 + n] == [k + ("opt-in", None) for k in goal_k]
    assert [(c[1], c[2], c[3]) for c in calls[4 + n:4 + 2 * n]] == [g + (OPT_IN,) for g in goal_steps]
    # then the narrow goal networks' fused runs, before any other step
    runs = [(shapes.net_name(s), b) for s, b in shapes.run_shapes()]
    i = 4 + 2 * n
    assert calls[i:i + 2 * len(runs)] == [("run",) + r + (part,) for part in ("verified", "opt-in") for r in runs]
    # every other step and GEMM row, and each kernel shape in both parts
    rest = calls[i + 2 * len(runs):]
    full = shapes.MODES["full"]
    comp = [c for c in rest if c[0] == "step" and c[3] == peers.COMPILE_PEERS]
    assert [(c[1], c[2]) for c in comp] == [(shapes.net_name(s), b) for s, b in shapes.compile_step_shapes()]
    assert all(c[4] == 0 for c in comp) and rest[-len(comp):] == comp                     # last, reserve released
    others = rest[:-len(comp)]
    first_opt = [c[3] for c in others if c[0] == "step"].index(OPT_IN)
    assert all(c[3] == VERIFIED for c in others[:first_opt] if c[0] == "step")
    assert all(c[4] == full["compile_reserve_s"] for c in calls if c[0] == "step" and c[3] != peers.COMPILE_PEERS)
    kernel_parts = [(c[1:4], c[6]) for c in calls if c[0] == "kernel"]
    assert sorted(kernel_parts) == sorted((k, part) for k in shapes.kernel_shapes("full")
                                          for part in ("verified", "opt-in"))
    # quick: no torch.compile and nothing kept back
    calls, _ = _plan_of(monkeypatch, ["--quick"])
    assert not any(c[0] == "step" and c[3] == peers.COMPILE_PEERS for c in calls)
    assert all(c[4] == 0 for c in calls if c[0] == "step")


def test_only_and_peers_select_rows(monkeypatch):
    calls, _ = _plan_of(monkeypatch, ["--quick", "--only", "kernel"])
    assert calls and all(c[0] == "kernel" for c in calls)
    calls, _ = _plan_of(monkeypatch, ["--only", "goals"])
    assert {c[1:4] for c in calls if c[0] == "kernel"} == set(shapes.goal_kernel_shapes())
    goal_names = {(shapes.net_name(s), b) for s, b in shapes.goal_step_shapes()}
    assert {(c[1], c[2]) for c in calls if c[0] == "step"} == goal_names
    # no goal judges a torch.compile row: none runs, and none of the budget is kept for them
    assert not any(c[0] == "step" and set(c[3]) & set(peers.COMPILE_PEERS) for c in calls)
    assert all(c[4] == 0 for c in calls if c[0] == "step") and not any(c[0] == "run" for c in calls)
    calls, _ = _plan_of(monkeypatch, ["--only", "compile"])
    assert calls and all(c[0] == "step" and c[3] == peers.COMPILE_PEERS for c in calls)
    calls, _ = _plan_of(monkeypatch, ["--only", "fused"])
    assert [c[0] for c in calls] == ["run"] * 2 * len(shapes.run_shapes())
    calls, _ = _plan_of(monkeypatch, ["--quick", "--only", "wide"])
    assert calls and all(c[0] == "step" and c[1] == "wide 1024-4096x3-10" for c in calls)
    calls, _ = _plan_of(monkeypatch, ["--quick", "--only", "out64"])
    assert [c[:3] for c in calls] == [("step", "narrow w64 x5 out64", 2 ** 20)] * 2 + \
        [("run", "narrow w64 x5 out64", 2 ** 20)] * 2
    calls, _ = _plan_of(monkeypatch, ["--quick", "--peers", "gpubp-cuda-bf16,torch-autocast-bf16"])
    steps = [c[3] for c in calls if c[0] == "step"]
    assert set(steps) == {("torch-autocast-bf16",), ("gpubp-cuda-bf16",)}
    # no PyTorch with CUDA: no torch peers, and a note says torch.compile did not run
    calls, meta = _plan_of(monkeypatch, [], has_torch_cuda=False)
    assert all(not p.startswith("torch") for c in calls if c[0] == "step" for p in c[3])
    assert any("torch.compile" in n for n in meta["notes"])
    # --no-opt-in: the default path's kernels only, and a note says so
    calls, meta = _plan_of(monkeypatch, ["--quick", "--no-opt-in"])
    assert calls and all(c[-1] == "verified" for c in calls if c[0] == "run")
    assert all(c[6] == "verified" for c in calls if c[0] == "kernel")
    assert all(c[3] == VERIFIED for c in calls if c[0] == "step") and any("--no-opt-in" in n for n in meta["notes"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--peers", "gpubp-cuda,jax"])
    assert cli.picked("narrow w64", "cpu", shapes.narrow(64, 4), 2 ** 14)
    assert not cli.picked("goals", "cpu", shapes.DEFAULT, 32) and not cli.picked("kernel", "step", shapes.WIDE, 256)


def test_only_text_that_names_nothing_is_refused(tmp_path, capsys):
    # `--only nonsense` (or a typo) measured nothing, wrote an empty bench.json over the last one and
    # exited 0
    for text in ("nonsense", "wdie", "narrow w256"):
        with pytest.raises(SystemExit) as e:
            cli.parse_args(["--out", str(tmp_path), "--only", text])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"--only {text!r} names no group and is part of no network's name" in err, err
        assert "goals, kernel, compile, fused" in err and "wide 1024-4096x3-10" in err, err
    assert not list(tmp_path.iterdir())
    for text in ("wide", "narrow w64", "out64", "784", "default", "goals", "kernel", "compile", "fused"):
        assert cli.parse_args(["--out", str(tmp_path), "--only", text]).only == text


@pytest.mark.parametrize("args, what", [(["--cpu-only", "--no-cpu"], "--cpu-only"),
                                        (["--tiny", "--no-cpu"], "--tiny (which runs the CPU rows only)")])
def test_options_that_leave_nothing_to_measure_are_refused(tmp_path, capsys, args, what):
    # each measured nothing, wrote an empty bench.json over the last one and exited 0
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--out", str(tmp_path / "out"), *args])
    assert e.value.code == 2
    assert f"--no-cpu with {what} leaves nothing to measure" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert cli.parse_args(["--out", str(tmp_path / "out"), "--no-cpu"]).no_cpu    # the GPU rows alone


def test_only_goals_selects_every_row_a_goal_needs_and_no_other(monkeypatch):
    """`--only goals` (the short GPU session's run) times, at each goal's step, gpubp's rows of the
    goal's precision and its compared peer, and at each goal's GEMM shape gpubp's variants and
    cuBLAS for that kernel: every row each goal needs, nothing no goal needs (no cupy-unfused, no
    torch.compile, no other GEMM kernel), and nothing of the budget kept back."""
    calls, _ = _plan_of(monkeypatch, ["--only", "goals"])
    steps = {}
    for c in (c for c in calls if c[0] == "step"):
        steps.setdefault((c[1], c[2]), set()).update(c[3])
        assert c[4] == 0
    kernel_calls = [c for c in calls if c[0] == "kernel"]
    timed_k = {}
    for _, B, N, K, precs, tiles, part, keep in kernel_calls:
        offered = {(kind, p) for p in rows._part(rows.kernel_peers(precs, tiles), gemms.OPT_IN_VARIANTS, part)
                   for kind in gemms.KINDS if gemms.variant_applies(p, kind)}
        timed_k.setdefault((B, N, K), set()).update(offered & keep)
    want_s, want_k = {}, {}
    for g in goals.GOALS:
        if g.sizes is not None:
            need = {p for p in (*goals.GPUBP_PEERS[g.precision], g.peer) if p in peers.GPU_PEERS}
            want_s.setdefault((shapes.net_name(g.sizes), g.batch), set()).update(need)
        else:
            need = {(g.kernel, p) for p in (*goals.GPUBP_KERNEL_PEERS[g.precision], g.peer)
                    if gemms.variant_applies(p, g.kernel)}
            want_k.setdefault(tuple(g.kernel_shape), set()).update(need)
    assert steps == want_s
    assert timed_k == want_k
    assert not any(p == gemms.UNFUSED for rs in timed_k.values() for _, p in rs)
    # kernel_rows times exactly the kept rows (here skipped: no budget), each once
    suite = rows.Suite(dict(suite_s=0.0), verbose=False)
    shape = (8192, 4096, 4096)
    for part in ("verified", "opt-in"):
        rows.kernel_rows(suite, *shape, shapes.kernel_precisions(*shape), shapes.kernel_tiles(*shape), True, part,
                         shapes.goal_kernel_rows(*shape))
    got = [(r["kernel"], r["peer"]) for r in suite.rows]
    assert sorted(got) == sorted(want_k[shape]) and all("skipped" in r for r in suite.rows)


def test_only_goals_measures_the_ceilings_the_rows_read_and_not_the_8192_ones(monkeypatch, tmp_path, capsys):
    """The 8192^3 ceilings are reported only (no goal or row reads them): `--only goals`, the short
    GPU session's run, leaves them out; the copy and the 4096^3 GEMMs (the '% GEMM' columns) stay."""
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace())
    monkeypatch.setattr(rows, "device_free_bytes", lambda: 2 ** 34)
    seen = {}
    for large in (True, False):
        suite = rows.Suite(dict(suite_s=0.0, mode="full"), verbose=False)        # no budget: rows listed, skipped
        ceil = rows.measure_ceilings_gpu(suite, large=large)
        seen[large] = [r["ceiling"] for r in suite.rows]
        assert all("skipped" in r for r in suite.rows) and set(ceil) >= {"copy_gbs", "gemm_tflops"}
    assert seen[True] == ["copy", "sgemm", "sgemm-8192", "tf32-gemm", "tf32-gemm-8192", "bf16-gemm", "bf16-gemm-8192"]
    assert seen[False] == ["copy", "sgemm", "tf32-gemm", "bf16-gemm"]
    assert set(rows.GEMM_CEILING.values()) <= {"gemm_tflops", "gemm_tflops_tf32", "gemm_tflops_bf16"}
    # and `gpubp bench` asks for them so (a made-up GPU: no row runs)
    asked = []
    monkeypatch.setattr(cli, "cuda_status", lambda: (True, ""))
    monkeypatch.setattr(cli, "torch_cuda", lambda: True)
    monkeypatch.setattr(cli, "gpu_meta", lambda: dict(name="H100", compute_capability="9.0", memory_gb=80, sms=132,
                                                      l2_bytes=50 * 2 ** 20, driver=1, cuda_runtime=1, cupy_tf32="0"))
    monkeypatch.setattr(cli, "measure_ceilings_gpu", lambda suite, large=True: asked.append(large) or {})
    monkeypatch.setattr(cli, "run_gpu_rows", lambda *a: None)
    for argv in (["--only", "goals"], ["--quick"]):
        assert cli.main(argv + ["--no-cpu", "--out", str(tmp_path)]) == 0
    assert asked == [False, True]


def test_a_lost_cuda_context_skips_every_later_gpu_row_and_says_why():
    """After a GPU row's error leaves the CUDA context unusable (an opt-in kernel that faults),
    every later GPU row is skipped naming the row that lost it; CPU rows still run; an ordinary
    error loses nothing."""
    suite = rows.Suite(dict(suite_s=100.0), verbose=False)

    def fault():
        raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")

    def ordinary():
        raise ValueError("shape mismatch")
    base = dict(kind="step", device="cuda", network="wide", batch=256)
    assert suite.run(dict(base, peer="a"), ordinary, gpu=True)["error"].startswith("ValueError")
    assert suite.device_lost is None
    assert "median_ms" in suite.run(dict(base, peer="b"), lambda: {"median_ms": 1.0}, gpu=True)
    r = suite.run(dict(base, peer="gpubp-cuda-bf16"), fault, gpu=True)
    assert "illegal memory access" in r["error"] and "gpubp-cuda-bf16" in suite.device_lost
    later = suite.run(dict(base, peer="torch-eager"), lambda: {"median_ms": 1.0}, gpu=True)
    assert "median_ms" not in later and "CUDA context was lost" in later["skipped"]
    assert "step wide 256 gpubp-cuda-bf16" in later["skipped"]
    cpu = suite.run(dict(base, device="cpu", peer="gpubp-numpy"), lambda: {"median_ms": 1.0})
    assert cpu["median_ms"] == 1.0
    for msg in ("CUDA error: an illegal memory access was encountered", "CUDA_ERROR_LAUNCH_FAILED: x",
                "cudaErrorMisalignedAddress: misaligned address", "CUDA error: unspecified launch failure",
                # the other sticky errors of the CUDA runtime, as CuPy, the driver API and PyTorch word them
                "cudaErrorInvalidPc: invalid program counter", "CUDA_ERROR_INVALID_PC",
                "cudaErrorInvalidAddressSpace: operation not supported on global/shared address space",
                "CUDA_ERROR_INVALID_ADDRESS_SPACE", "cudaErrorLaunchTimeout: the launch timed out and was terminated",
                "CUDA error: the launch timed out and was terminated"):
        assert rows.CONTEXT_LOST.search(msg), msg
    assert not rows.CONTEXT_LOST.search("cudaErrorMemoryAllocation: out of memory")


def test_suite_reserve_skips_rows_and_says_why():
    suite = rows.Suite(dict(suite_s=100.0), verbose=False)
    suite.reserve_s = 100.0
    r = suite.run(dict(kind="step", device="cuda", peer="x", batch=1), lambda: {"median_ms": 1.0})
    assert "median_ms" not in r and "kept for later rows" in r["skipped"]
    suite.reserve_s = 0.0
    assert suite.run(dict(kind="step", device="cuda", peer="x", batch=1), lambda: {"median_ms": 1.0})["median_ms"]


def test_report_of_a_gpu_run_from_synthetic_rows(tmp_path):
    """bench.md, the summary and the plot of a GPU run (rows made up, in the rows' own format):
    per-precision speed-ups, the backend options, the GEMM and fused-run tables, the
    throughput table and every goal."""
    from gpubp.bench import report
    W, T, N = list(shapes.WIDE), shapes.W64x5_OUT64, shapes.narrow(64, 8)
    meta = dict(versions=dict(cpu="x", cpu_count=2, blas_threads=2, numpy="1", torch="2", sklearn="1", cupy="13",
                              python="3"), torch_threads=2, notes=["a note"],
                gpu=dict(name="H100", compute_capability="9.0", memory_gb=80, sms=132, l2_bytes=50 * 2 ** 20,
                         driver=1, cuda_runtime=1, cupy_tf32="0", torch_cuda="12"))
    opts = {"fuse": True, "tensor_core_gemms": True}
    rs = [dict(kind="ceiling", ceiling="tf32-gemm", device="cuda", median_ms=1.0, tflops=400.0, what="tf32 4096^3"),
          _row(peer="gpubp-cuda", precision="float32", network="wide", sizes=W, batch=4096, median_ms=9.0),
          _row(peer="torch-eager", precision="float32", network="wide", sizes=W, batch=4096, median_ms=10.0),
          _row(peer="gpubp-cuda-bf16", precision="bf16", network="wide", sizes=W, batch=4096, median_ms=2.0,
               backend_options=opts),
          _row(peer="torch-autocast-bf16", precision="bf16", network="wide", sizes=W, batch=4096, median_ms=3.0),
          _row(peer="torch-compile-bf16", precision="bf16", network="wide", sizes=W, batch=4096,
               error="torch.compile did not build: X"),
          _row(peer="gpubp-cuda-bf16", precision="bf16", network=shapes.net_name(T), sizes=T, batch=2 ** 20,
               median_ms=2.0, samples_per_s=2 ** 20 / 2e-3, backend_options=opts),
          dict(_row(peer="family-bf16", precision="bf16", network=shapes.net_name(N), sizes=N, batch=2 ** 18,
                    median_ms=0.5), kind="run"),
          _kernel("gpubp-tc-tf32", "fwd", (8192, 4096, 4096), 5.0, "tf32"),
          _kernel("cublas-tf32", "fwd", (8192, 4096, 4096), 4.0, "tf32"),
          # an opt-in peer of the wide step, timed after the others: listed with its shape
          _row(peer="gpubp-cuda-tf32", precision="tf32", network="wide", sizes=W, batch=4096, median_ms=4.0,
               backend_options=opts)]
    rows.add_ratios(rs)
    res = dict(meta=meta, config=dict(mode="quick", optimizer="adam", lr=1e-3), ceilings={}, rows=rs,
               goals=goals.check_goals(rs), wall_s=1.0)
    report.write_markdown(res, tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    assert "| cuda | wide | 4096 |" in md and "float32 1.11x, bf16 1.50x" in md
    assert "`gpubp-cuda-bf16`: {'fuse': True, 'tensor_core_gemms': True}" in md
    assert "torch.compile did not build" in md and "## Fused narrow runs alone" in md
    assert "| narrow w64 x5 out64 | 1048576 | gpubp-cuda-bf16 | 5.24e+08 |" in md
    assert "| fwd | 8192x4096x4096 | gpubp-tc-tf32 |" in md and "| 80% |" in md
    assert md.count("| **PASS** |") + md.count("| **MISS** |") + md.count("| **INFO** |") \
        + md.count("| **NOT MEASURED** |") == len(goals.GOALS)
    assert "Published figures of tiny-cuda-nn" in md
    steps_md = md[md.index("## Training steps on the GPU"):]
    assert steps_md.index("| wide | 4096 | gpubp-cuda-tf32 |") < steps_md.index("| narrow w64 x5 out64 |")
    report.write_plot(res, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_bench_json_is_strict_json_when_a_loss_is_nan():
    """A step whose loss went NaN (the row's check fails) is still written to bench.json, as JSON any
    reader takes: Python's json.dumps wrote the bare NaN, which JSON has not."""
    from gpubp.bench import report
    res = dict(rows=[dict(final_loss=float("nan"), check_error="the final loss is nan", median_ms=np.float64(1.5)),
                     dict(final_loss=np.float32("inf"), x=[float("-inf"), 1.0, np.float32(2.0)])], wall_s=1.0)

    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    back = json.loads(report.to_json(res), parse_constant=refuse)
    assert back["rows"][0] == dict(final_loss="NaN", check_error="the final loss is nan", median_ms=1.5)
    assert back["rows"][1] == dict(final_loss="Infinity", x=["-Infinity", 1.0, 2.0]) and back["wall_s"] == 1.0


def test_library_never_imports_from_benchmarks():
    """The suite works from an installed wheel: nothing under gpubp/ reads benchmarks/."""
    root = Path(cli.__file__).resolve().parents[1]
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not any(n.split(".")[0] in ("benchmarks", "peers") for n in names), (path, names)
        assert "spec_from_file_location" not in path.read_text(), path


# ----------------------------------------------------------------- the CPU path end to end
def test_bench_cpu_path_writes_json_markdown_and_plot(tmp_path, capsys):
    assert cli.main(["--tiny", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["meta"]["versions"]["numpy"] == np.__version__
    assert "no_gpu_reason" in res["meta"]
    # bench.json's schema: every goal is recorded, NOT MEASURED without a GPU, never passed
    assert set(res) == {"meta", "config", "ceilings", "rows", "goals", "wall_s"}
    assert len(res["goals"]) == len(goals.GOALS)
    for g, goal in zip(res["goals"], goals.GOALS):
        assert {"goal", "name", "metric", "peer", "precision", "threshold", "result"} <= set(g)
        assert g["result"] == "NOT MEASURED" and "passed" not in g and g["name"] == goal.name
        assert ("sizes" in g) == (goal.sizes is not None) and ("kernel_shape" in g) == (goal.kernel is not None)
    # the peers' settings are recorded: the tensor-core peers ran on CudaBackend(tensor_core_gemms=True)
    ps = res["meta"]["peers"]
    assert set(ps) == set(peers.GPU_PEER_SPECS)
    assert ps["gpubp-cuda-bf16"]["backend_options"] == {"fuse": True, "tensor_core_gemms": True}
    assert ps["torch-autocast-bf16"]["precision"] == "bf16" and ps["torch-compile-bf16"]["compile"]
    assert res["meta"]["published"]["tiny-cuda-nn"]["source"]
    assert res["config"]["compile_reserve_s"] == 0 and res["config"]["suite_s"] == shapes.MODES["tiny"]["suite_s"]
    steps = [r for r in res["rows"] if r["kind"] == "step"]
    assert steps and all(r["device"] == "cpu" for r in steps)
    assert {"gpubp-numpy", "sklearn"} <= {r["peer"] for r in steps}
    for r in steps:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and r["reps"] >= 3 and r["flops"] == cost.step_flops(r["sizes"], r["batch"])
        assert r["tflops"] > 0 and r["gbs"] > 0 and "frac_gemm" in r and "frac_copy" in r
        assert np.isfinite(r["final_loss"])
        if r["peer"] != "gpubp-numpy":
            assert r["speedup_gpubp"] > 0
    assert res["ceilings"]["cpu"]["gemm_tflops"] > 0 and res["ceilings"]["cpu"]["copy_gbs"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "GPU rows need CUDA" in md and "| default 64-128-10 | 32 | gpubp-numpy |" in md
    cpu_md = md[md.index("## Training steps on the CPU"):]          # its GEMM ceiling is np.matmul's, not cuBLAS's
    assert "% np.matmul GEMM |" in cpu_md and "cuBLAS" not in cpu_md.split("\n\n")[1]
    v = res["meta"]["versions"]       # which code and libraries were measured, in bench.md too
    assert v["gpubp"] == gpubp.__version__
    assert f"gpubp {v['gpubp']}, numpy {v['numpy']}, torch {v['torch']}" in md and v["platform"] in md
    assert "every goal is NOT MEASURED" in md and md.count("**NOT MEASURED**") == len(goals.GOALS)
    assert "Published figures of tiny-cuda-nn: no figure recorded" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "GPU rows need CUDA" in capsys.readouterr().out


def test_a_plot_that_fails_is_not_reported_as_written(tmp_path, monkeypatch, capsys):
    # the last line said "wrote .../bench.png" though the plot had failed, and a bench.png left by an
    # earlier run stayed beside the new numbers
    (tmp_path / "bench.png").write_bytes(b"an earlier run's plot")

    def no_matplotlib(res, path):
        raise ModuleNotFoundError("No module named 'matplotlib'")

    monkeypatch.setattr(cli, "write_plot", no_matplotlib)
    monkeypatch.setattr(cli, "cpu_step_shapes", lambda mode, gpu: [])
    monkeypatch.setattr(cli, "measure_ceilings_cpu", lambda suite: {})
    assert cli.main(["--tiny", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "plot failed: ModuleNotFoundError: No module named 'matplotlib' (the plot needs matplotlib: pip " \
           "install 'gpubp[plot]'); no bench.png written (the previous run's bench.png was removed)" in err, err
    assert f"wrote {tmp_path / 'bench.json'}, {tmp_path / 'bench.md'} (" in out, out
    assert "bench.png" not in out.splitlines()[-1]
    assert not (tmp_path / "bench.png").exists() and (tmp_path / "bench.json").exists()


def test_an_error_outside_the_rows_still_writes_what_was_measured(tmp_path, monkeypatch, capsys):
    """An exception outside every row (here the CPU ceilings, which no row guards) ended `main`
    without a file: it must write bench.json and bench.md with the rows so far and say so, exit 1."""
    def broken(suite):
        suite.rows.append(dict(kind="ceiling", ceiling="copy", device="cpu", median_ms=1.0, gbs=1.0))
        raise RuntimeError("memGetInfo failed")
    monkeypatch.setattr(cli, "measure_ceilings_cpu", broken)
    assert cli.main(["--tiny", "--out", str(tmp_path)]) == 1
    res = json.loads((tmp_path / "bench.json").read_text())
    assert [r["ceiling"] for r in res["rows"]] == ["copy"]
    assert any("error outside any row" in n and "RuntimeError: memGetInfo failed" in n for n in res["meta"]["notes"])
    assert "RuntimeError: memGetInfo failed" in (tmp_path / "bench.md").read_text()
    assert all(g["result"] == "NOT MEASURED" for g in res["goals"])
    capsys.readouterr()


def test_a_run_stopped_by_sigterm_still_writes_what_it_measured(tmp_path):
    """A time limit (`timeout` sends SIGTERM) must not lose the rows measured so far."""
    import os
    import signal
    import subprocess
    root = Path(cli.__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "gpubp", "bench", "--quick", "--cpu-only", "--out", str(tmp_path)],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(root)))
    try:
        for line in proc.stdout:                 # wait for the first measured step row
            if line.lstrip().startswith("step"):
                break
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    res = json.loads((tmp_path / "bench.json").read_text())
    assert any("stopped early (signal SIGTERM)" in n for n in res["meta"]["notes"])
    assert any(r["kind"] == "step" and "median_ms" in r for r in res["rows"])
    assert "stopped early" in (tmp_path / "bench.md").read_text()



def test_a_run_killed_while_writing_leaves_the_previous_bench_json_and_md_whole(tmp_path, monkeypatch, capsys):
    """bench.json and bench.md were written in place: a run killed mid-write (the session's `timeout`
    SIGTERM, which after the rows is no longer turned into an exception) left a truncated bench.json,
    which no reader can load, over the last good one.  Now each is written whole or not at all."""
    before = {"bench.json": '{"an earlier run": 1}', "bench.md": "# an earlier run\n"}
    for name, text in before.items():
        (tmp_path / name).write_text(text)
    class KilledMidway:                          # half the text reaches the disk, then the signal
        def __init__(self, *a):
            self.f = open(*a)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise KeyboardInterrupt("signal SIGTERM")

    monkeypatch.setattr(cli, "cpu_step_shapes", lambda mode, gpu: [])
    monkeypatch.setattr(cli, "measure_ceilings_cpu", lambda suite: {})
    monkeypatch.setattr(gpubp.files, "open", KilledMidway, raising=False)     # what `atomic_write` opens
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--tiny", "--out", str(tmp_path)])
    monkeypatch.undo()
    capsys.readouterr()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before      # and no temporary file left
    assert json.loads((tmp_path / "bench.json").read_text()) == {"an earlier run": 1}


def test_a_cpu_step_without_pytorch_records_the_torch_peer_as_not_importable(capsys):
    """Without PyTorch the torch-cpu peer silently vanished from the CPU rows (no row, no note), so a
    report could not tell "not measured" from "never meant"; it is now a skipped row saying why, as a
    missing scikit-learn is, and the other peers still run."""
    suite = rows.Suite(dict(shapes.MODES["tiny"], mode="tiny", optimizer="sgd", lr=1e-2), verbose=False)
    suite.ceilings["cpu"] = {}
    rows.cpu_step_rows(suite, [4, 5, 3], 8, False)
    by_peer = {r["peer"]: r for r in suite.rows}
    assert by_peer["torch-cpu"]["skipped"] == "PyTorch is not importable" and "median_ms" not in by_peer["torch-cpu"]
    assert by_peer["gpubp-numpy"]["median_ms"] > 0
    assert "| - |" in "\n".join(report.summary_table(suite.rows))    # shown as not measured


def _script(name):
    """benchmarks/NAME.py imported as a module (its `main` not run)."""
    import importlib.util
    path = Path(cli.__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_script_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_numpy_vs_torch_script_counts_the_flops_of_the_step_it_times(monkeypatch, capsys):
    """benchmarks/bench_numpy_vs_torch.py counted 6 B sum n_in n_out FLOPs per step, dLoss/dX of the
    first layer included, which neither side computes (the input needs no gradient): its GFLOP/s
    were 25% high on [784, 512, 512, 10].  It counts `cost.step_flops` now, as `gpubp bench` does."""
    pytest.importorskip("torch")
    pytest.importorskip("threadpoolctl")
    mod = _script("bench_numpy_vs_torch")
    monkeypatch.setattr(mod, "time_steps", lambda step, batches, warmup, steps: [1e-3] * steps)  # 1 ms a step
    sizes, B = [784, 512, 512, 10], 64
    assert mod.main(["--sizes", ",".join(map(str, sizes)), "--batch", str(B), "--steps", "2", "--rounds", "1",
                     "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    gflops = f"{cost.step_flops(sizes, B) / 1e-3 / 1e9:6.1f} GFLOP/s"
    assert out.count(gflops) == 2, out


def test_fused_family_script_counts_the_flops_of_the_run_it_times(monkeypatch, tmp_path, capsys):
    """benchmarks/fused_family_bench.py counted 6 B sum n_in n_out FLOPs per fused run, though a run
    computes no dLoss/dX (its docstring says so): TFLOP/s 4% high on w64x8, 6% on w64x5.  Timed here with every
    device call replaced (1 ms a run): its TFLOP/s are `cost.step_flops` over the time."""
    import types
    cupy = types.SimpleNamespace(
        get_default_memory_pool=lambda: types.SimpleNamespace(free_all_blocks=lambda: None),
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"stub"})))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    mod = _script("fused_family_bench")
    monkeypatch.setattr(mod.cuda_device, "load_kernels", lambda specs: None)
    monkeypatch.setattr(mod.fused_runs, "gpubp_run", lambda peer, widths, batch: (lambda: None))
    monkeypatch.setattr(mod, "_torch_run", lambda peer, widths, batch: (lambda: None))
    monkeypatch.setattr(mod.timing, "event_median_ms", lambda fn, reps, clock, warmup=3: 1.0)
    monkeypatch.setattr(mod.timing, "TorchClock", lambda: None)
    monkeypatch.setattr(mod.timing, "CupyClock", lambda: None)
    mod.main(["--out", str(tmp_path), "--batch", "1024", "--reps", "1"])
    capsys.readouterr()
    res = json.loads((tmp_path / "fused_family_bench.json").read_text())
    widths = dict(mod.NETS)
    assert res["rows"] and all("error" not in r for r in res["rows"])
    for r in res["rows"]:
        assert r["tflops"] == pytest.approx(cost.step_flops(widths[r["net"]][0], r["batch"]) / 1e-3 / 1e12)


@pytest.mark.torch
def test_torch_autocast_run_casts_its_delta_once_not_in_every_timed_call(monkeypatch):
    """The bf16 PyTorch run cast the given float32 delta to bfloat16 in every call (`delta.to(out.dtype)`),
    timing a cast kernel and an allocation that gpubp's runs do not have; it is cast once, on the first
    (warm-up) call, and the gradient is unchanged."""
    torch = pytest.importorskip("torch")
    run = fused_runs.torch_run("torch-autocast-bf16", [8, 16, 16, 4], 32, device="cpu")
    run()
    first = [p.grad.clone() for p in run.model.parameters()]
    casts = []
    real = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: casts.append(a) or real(self, *a, **k))
    run()
    run()
    monkeypatch.undo()
    assert casts == []
    for g, p in zip(first, run.model.parameters()):
        assert torch.equal(g, p.grad)


def test_a_gemm_module_that_does_not_compile_up_front_costs_no_other_variants_rows(monkeypatch):
    """`kernel_rows` compiled every opt-in GEMM module in one `preload` outside the rows: one module's
    NVRTC error (gemm_f32, say) escaped the shape, so the tensor-core rows at that shape, and with them
    the 8192x4096x4096 goals, were lost to a "shape" error row.  Now each row still runs, compiling
    its own kernels, and a variant that cannot compile fails in its own row only."""
    def no_nvrtc(peers):
        raise RuntimeError("NVRTC_ERROR_COMPILATION in gemm_f32.cu")

    def launcher(peer, kind, ops):
        if peer == "gpubp-gemm-f32":
            no_nvrtc([peer])
        return lambda *a: None
    ops = SimpleNamespace(sets=[()], release=lambda: None)
    monkeypatch.setattr(rows, "device_free_bytes", lambda: 2 ** 40)
    monkeypatch.setattr(rows, "free_device_memory", lambda: None)
    monkeypatch.setattr(rows, "CupyClock", lambda: None)
    monkeypatch.setattr(rows, "timed", lambda fn, inputs, clock, cfg: dict(median_ms=1.0, reps=3))
    monkeypatch.setattr(gemms, "random_sets", lambda *a, **k: None)
    monkeypatch.setattr(gemms, "GemmOperands", lambda sets: ops)
    monkeypatch.setattr(gemms, "preload", no_nvrtc)
    monkeypatch.setattr(gemms, "gpubp_gemm", launcher)
    monkeypatch.setattr(gemms, "rel_err", lambda kind, ops, fn: 0.0)
    suite = rows.Suite(dict(suite_s=100.0), verbose=False)
    suite.ceilings["cuda"] = {}
    rows.kernel_rows(suite, 64, 32, 16, ("float32", "tf32"), True, True, "opt-in")
    got = {(r["kernel"], r["peer"]): r for r in suite.rows}
    assert set(got) == {(k, p) for k in gemms.KINDS for p in ("gpubp-gemm-f32", "gpubp-tc-tf32")}
    for k in gemms.KINDS:
        assert got[k, "gpubp-tc-tf32"]["median_ms"] == 1.0
        assert "NVRTC_ERROR_COMPILATION" in got[k, "gpubp-gemm-f32"]["error"]
