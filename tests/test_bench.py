"""`gpubp bench`: the cost model, the unfused baseline's math and the CPU path (no timing goals)."""

import json

import numpy as np
import pytest

from gpubp import bench


# ----------------------------------------------------------------- cost model (SPEC.md "Cost")
def test_step_flops_is_6_B_sum_of_layer_products():
    assert bench.step_flops([2, 3, 4], 5) == 6 * 5 * (2 * 3 + 3 * 4)
    assert bench.step_flops(bench.WIDE, 4096) == 6 * 4096 * (1024 * 4096 + 2 * 4096 * 4096 + 4096 * 10)


def test_step_min_bytes_counts_params_once_and_activations_twice():
    sizes, B = [2, 3, 4], 5
    P = (2 * 3 + 3) + (3 * 4 + 4)
    acts, x, labels = 2 * B * (3 + 4), B * 2, 4 * B
    # each weight, gradient and optimizer-state element moved once (Adam: m and v)
    assert bench.n_params(sizes) == P
    assert bench.step_min_bytes(sizes, B, "adam") == 4 * (4 * P + acts + x) + labels
    assert bench.step_min_bytes(sizes, B, "sgd") == 4 * (2 * P + acts + x) + labels
    assert bench.step_min_bytes(sizes, B, "adam", itemsize=8) == 8 * (4 * P + acts + x) + labels


def test_kernel_cost():
    B, N, K = 7, 3, 5
    assert bench.kernel_flops(B, N, K) == 2 * B * N * K
    assert bench.kernel_min_bytes("fwd", B, N, K) == 4 * (B * K + N * K + N + B * N)
    assert bench.kernel_min_bytes("bwd_data", B, N, K) == 4 * (B * N + N * K + 2 * B * K)
    assert bench.kernel_min_bytes("bwd_weight", B, N, K) == 4 * (B * N + B * K + N * K + N)


def test_input_sets_rotate_past_l2():
    l2 = 50 * 2 ** 20
    assert bench.n_sets(2 ** 30, l2) == 2                  # big sets: two
    assert bench.n_sets(1000, l2) == 8                     # tiny sets: at most eight
    n = bench.n_sets(20 * 2 ** 20, l2)
    assert n * 20 * 2 ** 20 >= 2 * l2 and 2 <= n <= 8


def test_shapes_put_the_goal_rows_first_and_fit_the_issue():
    for mode in ("quick", "full"):
        shapes = bench.gpu_step_shapes(mode)
        assert shapes[0] == (bench.WIDE, 4096) and shapes[1] == (bench.narrow(64, 8), 2 ** 18)
        assert len(shapes) == len({(tuple(s), b) for s, b in shapes})
        assert bench.kernel_shapes(mode)[0] == (4096, 4096, 4096)
    full = bench.gpu_step_shapes("full")
    assert {b for s, b in full if s == bench.narrow(128, 8)} == {2 ** 14, 2 ** 16, 2 ** 18, 2 ** 20}
    assert {b for s, b in full if s == bench.WIDE} == {256, 1024, 4096, 8192}
    assert bench.narrow(64, 8) == [64] * 9 + [10]


# ----------------------------------------------------------------- timing helper
def test_time_reps_bounds_repetitions_and_rotates_inputs():
    seen = []
    t = bench.time_reps(lambda i: seen.append(i), [(0,), (1,), (2,)], bench.CpuClock(), warmup=2, reps=7,
                        budget_s=10.0)
    assert t["reps"] == 7 and len(seen) == 9 and set(seen) == {0, 1, 2}
    assert 0 <= t["min_ms"] <= t["p25_ms"] <= t["median_ms"] <= t["p75_ms"]
    t = bench.time_reps(lambda: None, [()], bench.CpuClock(), warmup=0, reps=10 ** 9, budget_s=0.05)
    assert 3 <= t["reps"] < 10 ** 9                        # the time budget ends the row


# ----------------------------------------------------------------- the peers' math
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_unfused_baseline_computes_gpubps_step(optimizer):
    """The unfused CuPy baseline's math (run with xp=numpy) equals gpubp's numpy step."""
    P = bench.load_peers()
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
    P = bench.load_peers()
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


# ----------------------------------------------------------------- ratios and goals
def _row(**kw):
    return dict(kind="step", device="cuda", reps=10, p25_ms=1.0, p75_ms=1.0, min_ms=1.0, **kw)


def test_ratios_and_goals():
    w, n = bench.GOAL_WIDE, bench.GOAL_NARROW
    rows = [
        _row(peer="gpubp-cuda", sizes=w["sizes"], batch=w["batch"], median_ms=9.0),
        _row(peer="torch-eager", sizes=w["sizes"], batch=w["batch"], median_ms=10.0),
        _row(peer="gpubp-cuda", sizes=n["sizes"], batch=n["batch"], median_ms=2.0),
        _row(peer="gpubp-cuda-graph", sizes=n["sizes"], batch=n["batch"], median_ms=1.5),
        _row(peer="torch-eager", sizes=n["sizes"], batch=n["batch"], median_ms=4.0),
        dict(kind="kernel", device="cuda", kernel="fwd", peer="gpubp-fused", batch=4096, n_out=4096,
             n_in=4096, median_ms=3.0, tflops=40.0),
        dict(kind="ceiling", ceiling="sgemm", device="cuda", median_ms=2.0, tflops=50.0),
    ]
    bench.add_ratios(rows)
    assert rows[1]["speedup_gpubp"] == pytest.approx(10 / 9)
    assert rows[4]["speedup_gpubp"] == pytest.approx(2.0)
    goals = bench.check_goals(rows, {"gemm_tflops": 50.0})
    assert [g["result"] for g in goals] == ["PASS", "PASS", "MISS"]
    assert goals[0]["value"] == pytest.approx(0.8)
    assert goals[2]["value"] == pytest.approx(4.0 / 1.5)          # the faster gpubp path counts
    assert goals[2]["margin"].startswith("-")
    assert bench.check_goals([], {})[0]["result"] == "NOT MEASURED"


# ----------------------------------------------------------------- the CPU path end to end
def test_bench_cpu_path_writes_json_markdown_and_plot(tmp_path, capsys):
    assert bench.main(["--tiny", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["meta"]["versions"]["numpy"] == np.__version__
    assert "no_gpu_reason" in res["meta"] and res["goals"] == []
    steps = [r for r in res["rows"] if r["kind"] == "step"]
    assert steps and all(r["device"] == "cpu" for r in steps)
    assert {"gpubp-numpy", "sklearn"} <= {r["peer"] for r in steps}
    for r in steps:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and r["reps"] >= 3 and r["flops"] == bench.step_flops(r["sizes"], r["batch"])
        assert r["tflops"] > 0 and r["gbs"] > 0 and "frac_gemm" in r and "frac_copy" in r
        assert np.isfinite(r["final_loss"])
        if r["peer"] != "gpubp-numpy":
            assert r["speedup_gpubp"] > 0
    assert res["ceilings"]["cpu"]["gemm_tflops"] > 0 and res["ceilings"]["cpu"]["copy_gbs"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "GPU rows need CUDA" in md and "| default 64-128-10 | 32 | gpubp-numpy |" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "GPU rows need CUDA" in capsys.readouterr().out
