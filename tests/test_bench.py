"""`gpubp bench` (gpubp.bench): the cost model, the goals, the peers' math and the CPU path (no timing goals)."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from gpubp.bench import cli, cost, goals, peers, rows, shapes, timing


# ----------------------------------------------------------------- cost model (docs/spec.md, "Cost of a step")
def test_step_flops_is_6_B_sum_of_layer_products():
    assert cost.step_flops([2, 3, 4], 5) == 6 * 5 * (2 * 3 + 3 * 4)
    assert cost.step_flops(shapes.WIDE, 4096) == 6 * 4096 * (1024 * 4096 + 2 * 4096 * 4096 + 4096 * 10)


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
    for mode in ("quick", "full"):
        got = shapes.gpu_step_shapes(mode)
        assert got[0] == (shapes.WIDE, 4096) and got[1] == (shapes.narrow(64, 8), 2 ** 18)
        assert len(got) == len({(tuple(s), b) for s, b in got})
        assert shapes.kernel_shapes(mode)[0] == (4096, 4096, 4096)
    full = shapes.gpu_step_shapes("full")
    assert {b for s, b in full if s == shapes.narrow(128, 8)} == {2 ** 14, 2 ** 16, 2 ** 18, 2 ** 20}
    assert {b for s, b in full if s == shapes.WIDE} == {256, 1024, 4096, 8192}
    assert shapes.narrow(64, 8) == [64] * 9 + [10]


# ----------------------------------------------------------------- timing helper
def test_time_reps_bounds_repetitions_and_rotates_inputs():
    seen = []
    t = timing.time_reps(lambda i: seen.append(i), [(0,), (1,), (2,)], timing.CpuClock(), warmup=2, reps=7,
                        budget_s=10.0)
    assert t["reps"] == 7 and len(seen) == 9 and set(seen) == {0, 1, 2}
    assert 0 <= t["min_ms"] <= t["p25_ms"] <= t["median_ms"] <= t["p75_ms"]
    t = timing.time_reps(lambda: None, [()], timing.CpuClock(), warmup=0, reps=10 ** 9, budget_s=0.05)
    assert 3 <= t["reps"] < 10 ** 9                        # the time budget ends the row


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


# ----------------------------------------------------------------- ratios and goals
def _row(**kw):
    return dict(kind="step", device="cuda", reps=10, p25_ms=1.0, p75_ms=1.0, min_ms=1.0, **kw)


def test_ratios_and_goals():
    wide, narrow = goals.GOALS[1], goals.GOALS[2]
    W, N = list(wide.sizes), list(narrow.sizes)
    rs = [
        _row(peer="gpubp-cuda", sizes=W, batch=wide.batch, median_ms=9.0),
        _row(peer="torch-eager", sizes=W, batch=wide.batch, median_ms=10.0),
        _row(peer="gpubp-cuda", sizes=N, batch=narrow.batch, median_ms=2.0),
        _row(peer="gpubp-cuda-graph", sizes=N, batch=narrow.batch, median_ms=1.5),
        _row(peer="torch-eager", sizes=N, batch=narrow.batch, median_ms=4.0),
        _row(peer="gpubp-cuda-tf32", sizes=N, batch=narrow.batch, median_ms=1.0),
        _row(peer="torch-eager-tf32", sizes=N, batch=narrow.batch, median_ms=3.0),
        dict(kind="kernel", device="cuda", kernel="fwd", peer="gpubp-fused", batch=4096, n_out=4096,
             n_in=4096, median_ms=3.0, tflops=40.0),
        dict(kind="ceiling", ceiling="sgemm", device="cuda", median_ms=2.0, tflops=50.0),
    ]
    rows.add_ratios(rs)
    assert rs[1]["speedup_gpubp"] == pytest.approx(10 / 9)
    assert rs[4]["speedup_gpubp"] == pytest.approx(2.0)
    got = goals.check_goals(rs, {"gemm_tflops": 50.0})
    assert [g["result"] for g in got] == ["PASS", "PASS", "MISS", "INFO", "INFO"]
    assert got[0]["value"] == pytest.approx(0.8)
    assert got[1]["value"] == pytest.approx(10 / 9)
    assert got[2]["value"] == pytest.approx(4.0 / 1.5)             # the faster float32 path counts
    assert got[2]["margin"].startswith("-") and "gpubp-cuda-graph" in got[2]["measured"]
    assert got[3]["value"] == pytest.approx(4.0) and got[4]["value"] == pytest.approx(3.0)  # tf32 rows only
    assert all(g["result"] == "NOT MEASURED" for g in goals.check_goals([], {}))


def test_goals_are_data_naming_precision_and_peers():
    for g in goals.GOALS:
        assert g.precision in goals.GPUBP_PEERS and g.peer in goals.PEER_TEXT
        assert g.precision in g.describe() and goals.PEER_TEXT[g.peer] in g.describe()
    step_goals = [(list(g.sizes), g.batch) for g in goals.GOALS if g.sizes is not None]
    # the GPU rows start with every goal's shape, and torch.compile runs them
    assert shapes.gpu_step_shapes("quick")[:2] == shapes.goal_step_shapes()
    assert step_goals and all(s in shapes.gpu_step_shapes(m) for s in step_goals for m in ("quick", "full"))
    assert shapes.kernel_shapes("quick")[0] == goals.GOALS[0].kernel_shape
    with pytest.raises(ValueError, match="precision"):
        goals.Goal("x", "speedup", "torch-eager", "float16", 1.0, sizes=(2, 2), batch=1)
    with pytest.raises(ValueError, match="peer"):
        goals.Goal("x", "speedup", "jax", "float32", 1.0, sizes=(2, 2), batch=1)
    with pytest.raises(ValueError, match="either a step"):
        goals.Goal("x", "speedup", "torch-eager", "float32", 1.0)
    # a goal judged on a precision counts only that precision's rows
    only_f32 = [_row(peer="gpubp-cuda", sizes=[2, 2], batch=1, median_ms=1.0),
                _row(peer="torch-eager", sizes=[2, 2], batch=1, median_ms=2.0)]
    g = goals.Goal("tiny", "speedup", "torch-eager", "tf32", 1.0, sizes=(2, 2), batch=1)
    assert goals.judge(g, only_f32, {})["result"] == "NOT MEASURED"


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
    assert "no_gpu_reason" in res["meta"] and res["goals"] == []
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
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "GPU rows need CUDA" in capsys.readouterr().out
