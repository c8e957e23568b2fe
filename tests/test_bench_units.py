"""Unit checks of `gpubp bench`'s CPU-side logic with hand-computed values: the cost model, the
timing loop on a made-up clock, the shapes, the goals' verdicts and the report's tables."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gpubp.bench import cost, timing
from support.bench_rows import find_goal, kernel_row


# ----------------------------------------------------------------- cost model (docs/spec.md, "Cost of a step")
def test_step_min_bytes_counts_each_optimizers_state_and_the_label_bytes():
    sizes, B = [2, 3, 4], 5
    P = (2 * 3 + 3) + (3 * 4 + 4)                       # 25
    acts, x = 2 * B * (3 + 4), B * 2                    # 70, 10
    # momentum keeps one state element per parameter, AdamW two
    assert cost.step_min_bytes(sizes, B, "momentum") == 4 * (3 * P + acts + x) + 4 * B == 640
    assert cost.step_min_bytes(sizes, B, "adamw") == cost.step_min_bytes(sizes, B, "adam") == 4 * (4 * P + 80) + 20
    # int64 labels: 8 bytes a sample
    assert cost.step_min_bytes(sizes, B, "sgd", label_bytes=8) == 4 * (2 * P + acts + x) + 8 * B == 560


def test_run_min_bytes_reads_params_once_writes_grads_once_and_activations_twice():
    # [2, 3, 4] at B = 5: 25 parameters read and 25 gradients written, activations 5*(3+4) written
    # and read, the input 5*2 and the given last delta 5*4 read once
    assert cost.run_min_bytes([2, 3, 4], 5) == 4 * (50 + 70 + 10 + 20) == 600
    assert cost.run_min_bytes([2, 3, 4], 5, itemsize=2) == 300
    assert cost.run_min_bytes([7, 1], 3) == 4 * (2 * 8 + 2 * 3 * 1 + 3 * (7 + 1)) == 184


def test_input_sets_are_at_least_twice_the_l2_within_the_cap():
    assert cost.n_sets(1, 2) == 4                       # 4 one-byte sets are twice a 2-byte L2
    assert cost.n_sets(3, 4) == 3                       # ceil(8 / 3)
    assert cost.n_sets(0, 3) == 6                       # an empty set counts as one byte
    assert cost.n_sets(1000, 10 ** 6, cap_bytes=5000) == 5      # the cap bounds the sets' total bytes
    assert cost.n_sets(1000, 10 ** 6, cap_bytes=2500) == 2      # never fewer than two
    assert cost.n_sets(1000, 10 ** 6, cap_bytes=999) == 2       # even when one set is above the cap
    assert cost.n_sets(1, 100, cap_bytes=3) == 3
    assert cost.n_sets(2 ** 30, 2 ** 32) == 2           # two 1 GiB sets reach the default 2 GiB cap


# ----------------------------------------------------------------- timing loop on a made-up clock
class _Clock:
    """Made-up time in seconds from 1 (binary fractions: exact sums): `perf_counter` reads it, each
    call of the timed function advances it by `step`; `chunks` records each chunk's marks."""
    device = "fake"

    def __init__(self, step):
        self.now, self.step, self.chunks, self.calls = 1.0, step, [], 0

    def fn(self, *args):
        self.calls += 1
        self.now += self.step

    def sync(self):
        pass

    def marks(self, n):
        self.chunks.append(n)
        return [None] * n

    def mark(self, marks, i):
        marks[i] = self.now

    def elapsed_ms(self, marks):
        return [(b - a) * 1e3 for a, b in zip(marks[:-1], marks[1:])]


@pytest.fixture
def clock(monkeypatch):
    def make(step):
        c = _Clock(step)
        monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: c.now))
        return c
    return make


def test_time_reps_stops_timing_at_the_budget_in_shrinking_chunks(clock):
    c = clock(0.125)
    t = timing.time_reps(c.fn, [()], c, warmup=0, reps=100, budget_s=1.25)
    # chunks of 3 (min_reps), then half the repetitions the budget left has room for: 3, 2, 1, 1
    assert c.chunks == [4, 4, 3, 2, 2] and t["reps"] == 10 and c.calls == 10
    assert t["median_ms"] == t["min_ms"] == t["p25_ms"] == t["p75_ms"] == 125.0
    assert t["warmup_reps"] == 0 and t["warmup_s"] == 0.0 and t["input_sets"] == 1


def test_time_reps_chunks_are_at_most_64_and_the_first_at_most_reps(clock):
    c = clock(2.0 ** -10)
    t = timing.time_reps(c.fn, [(), ()], c, warmup=0, reps=200, budget_s=1.0)
    assert c.chunks == [4, 65, 65, 65, 6] and t["reps"] == 200 and t["input_sets"] == 2
    c = clock(0.125)
    assert timing.time_reps(c.fn, [()], c, warmup=0, reps=2, budget_s=10.0)["reps"] == 2 and c.chunks == [3]
    c = clock(0.125)
    assert timing.time_reps(c.fn, [()], c, warmup=0, reps=7, budget_s=10.0, min_reps=5)["reps"] == 7
    assert c.chunks == [6, 3]


def test_time_reps_warms_up_for_warm_s_within_ten_budgets_and_a_thousand_calls(clock):
    c = clock(0.125)
    t = timing.time_reps(c.fn, [()], c, warmup=1, reps=1, budget_s=10.0, warm_s=0.5)
    assert t["warmup_reps"] == 4 and t["warmup_s"] == 0.5 and t["reps"] == 1      # 0.5 s of 0.125 s calls
    c = clock(0.125)
    t = timing.time_reps(c.fn, [()], c, warmup=1, reps=1, budget_s=0.125, warm_s=60.0)
    assert t["warmup_reps"] == 11                       # past 10 budgets (1.25 s) after 1.375 s
    c = clock(0.125)
    t = timing.time_reps(c.fn, [()], c, warmup=8, reps=1, budget_s=0.0625, warm_s=60.0)
    assert t["warmup_reps"] == 8                        # the warm-up repetitions asked for all run
    c = clock(0.0)
    assert timing.time_reps(c.fn, [()], c, warmup=0, reps=1, budget_s=1.0, warm_s=1.0)["warmup_reps"] == 1000
    c = clock(2.0 ** -7)
    assert timing.time_reps(c.fn, [()], c, warmup=1, reps=1, budget_s=1.0)["warmup_s"] == 0.008    # to the ms
    assert timing.CpuClock().elapsed_ms([1.0, 1.5, 3.0]) == [500.0, 1500.0]
    c, ms = clock(0.0), iter([0.0, 0.5, 0.25, 0.125, 1.0, 0.0625])        # one warm-up, then 5 timed
    c.fn = lambda: setattr(c, "now", c.now + next(ms))
    t = timing.time_reps(c.fn, [()], c, warmup=1, reps=5, budget_s=100.0)
    assert (t["min_ms"], t["p25_ms"], t["median_ms"], t["p75_ms"]) == (62.5, 125.0, 250.0, 500.0)


def test_event_median_ms_warms_up_three_times_unless_told(clock):
    c, seen = clock(0.125), []

    def fn(i):
        seen.append(i)
        c.fn()
    assert timing.event_median_ms(fn, 2, c) == 125.0 and seen == [0, 1, 2, 0, 1]


def test_timed_takes_the_modes_settings(clock):
    cfg = dict(warmup=2, reps=100, row_s=1.25, warm_s=0.0)
    c = clock(0.125)
    t = timing.timed(c.fn, [()], c, cfg)
    assert t["warmup_reps"] == 2 and t["reps"] == 10    # row_s is the timing budget
    c = clock(0.125)
    assert timing.timed(c.fn, [()], c, cfg, warmup=0)["warmup_reps"] == 0
    c = clock(0.125)
    assert timing.timed(c.fn, [()], c, dict(cfg, warmup=0, warm_s=0.5))["warmup_reps"] == 4


# ----------------------------------------------------------------- shapes
def _names(shape_list):
    from gpubp.bench import shapes
    return [(shapes.net_name(s), b) for s, b in shape_list]


def test_net_names():
    from gpubp.bench import shapes
    assert shapes.net_name(shapes.WIDE) == "wide 1024-4096x3-10"
    assert shapes.net_name(tuple(shapes.DEFAULT)) == "default 64-128-10"
    assert shapes.net_name(shapes.MNIST_SIZED) == "784-512-512-10"
    assert shapes.net_name(shapes.narrow(128, 4)) == "narrow w128 x4"
    assert shapes.net_name([8, 8, 8, 3]) == "narrow w8 x2 out3"
    assert shapes.net_name([5, 5, 10]) == "5-5-10"                  # one hidden layer: no narrow network
    assert shapes.net_name([4, 4, 3, 10]) == "4-4-3-10"             # hidden layers of two widths


def test_goal_step_shapes_and_the_peers_each_goal_step_needs(monkeypatch):
    from gpubp.bench import shapes
    W, N64, N128, T = shapes.WIDE, shapes.narrow(64, 8), shapes.narrow(128, 8), shapes.W64x5_OUT64
    assert shapes.goal_step_shapes() == [(W, 4096), (W, 1024), (W, 256), (N64, 2 ** 18), (N128, 2 ** 18),
                                         (T, 2 ** 20)]
    f32, tf32 = {"gpubp-cuda", "gpubp-cuda-graph"}, {"gpubp-cuda-tf32", "gpubp-cuda-tf32-default"}
    bf16, x3 = {"gpubp-cuda-bf16"}, {"gpubp-cuda-3xtf32"}
    torch = {"torch-eager", "torch-eager-tf32", "torch-autocast-bf16"}
    assert shapes.goal_step_peers(W, 4096) == f32 | tf32 | bf16 | x3 | torch
    assert shapes.goal_step_peers(tuple(W), 1024) == tf32 | bf16 | x3 | torch       # no float32 goal at 1024
    assert shapes.goal_step_peers(N64, 2 ** 18) == f32 | tf32 | bf16 | torch
    assert shapes.goal_step_peers(T, 2 ** 20) == f32 | tf32 | bf16 | {"tiny-cuda-nn"}
    assert shapes.goal_step_peers(W, 8192) == set() and shapes.goal_step_peers(N64, 2 ** 14) == set()
    # the fused runs: the narrow goal networks (one width up to 128), not a goal step of two widths
    assert shapes.run_shapes() == [(N64, 2 ** 18), (N128, 2 ** 18), (T, 2 ** 20)]
    from gpubp.bench import goals
    mixed = goals.Goal("d", "speedup", "torch-eager", "float32", 1.0, sizes=(64, 128, 10), batch=32)
    w129 = goals.Goal("w", "speedup", "torch-eager", "float32", 1.0, sizes=(129,) * 5 + (10,), batch=32)
    monkeypatch.setattr(shapes, "GOALS", (*goals.GOALS, mixed, w129))
    assert ([64, 128, 10], 32) in shapes.goal_step_shapes() and ([64, 128, 10], 32) not in shapes.run_shapes()
    assert shapes.run_shapes() == [(N64, 2 ** 18), (N128, 2 ** 18), (T, 2 ** 20)]      # nor one wider than 128


def test_gpu_and_cpu_step_shapes_per_mode():
    from gpubp.bench import shapes
    goal = _names(shapes.goal_step_shapes())
    n = "narrow w"
    assert _names(shapes.gpu_step_shapes("quick")) == goal + [
        (n + "64 x4", 2 ** 14), (n + "64 x4", 2 ** 18), (n + "64 x8", 2 ** 14), (n + "128 x4", 2 ** 14),
        (n + "128 x4", 2 ** 18), (n + "128 x8", 2 ** 14), ("default 64-128-10", 32), ("default 64-128-10", 2048)]
    full = _names(shapes.gpu_step_shapes("full"))
    assert full[:len(goal)] == goal and len(full) == len(set(full)) == 25
    assert full[-5:] == [("wide 1024-4096x3-10", 8192)] + [("default 64-128-10", b) for b in (32, 256, 2048, 16384)]
    D, M = shapes.DEFAULT, shapes.MNIST_SIZED
    five = [(D, 32), (D, 256), (D, 2048), (M, 512), (shapes.narrow(64, 4), 2 ** 14)]
    assert shapes.cpu_step_shapes("tiny", False) == [(D, 32), (D, 256)]
    assert shapes.cpu_step_shapes("quick", False) == shapes.cpu_step_shapes("full", True) == five
    assert shapes.cpu_step_shapes("full", False) == five + [(shapes.narrow(64, 8), 2 ** 14)]


def test_kernel_shapes_rows_precisions_and_tiles():
    from gpubp.bench import shapes
    big, sq, narrow = (8192, 4096, 4096), (4096, 4096, 4096), (2 ** 18, 64, 64)
    assert shapes.goal_kernel_shapes() == [big, sq]
    assert shapes.kernel_shapes("quick") == [big, sq, narrow]
    assert shapes.kernel_shapes("full") == [big, sq, narrow, (2 ** 16, 128, 128), (2 ** 20, 128, 128)]
    assert shapes.goal_kernel_rows(*big) == {("fwd", p) for p in (
        "gpubp-tc-tf32", "cublas-tf32", "gpubp-tc-bf16", "cublas-bf16", "gpubp-tc-3xtf32", "cublas-sgemm")}
    assert shapes.goal_kernel_rows(*sq) == {(k, p) for k in ("fwd", "bwd_data", "bwd_weight") for p in (
        "gpubp-fused", "gpubp-gemm-v1", "gpubp-gemm-pipelined", "gpubp-gemm-f32", "cublas-sgemm")}
    assert shapes.goal_kernel_rows(*narrow) == set()
    assert shapes.kernel_precisions(*narrow) == ["float32"] and not shapes.kernel_tiles(*narrow)


# ----------------------------------------------------------------- goals
def test_each_kind_of_goal_describes_itself():
    wide, sq = (1024, 4096, 4096, 4096, 10), (4096, 4096, 4096)
    assert find_goal(sizes=wide, batch=4096, precision="float32").describe() == (
        "wide 1024-4096x3-10 step, batch 4096, gpubp float32: at least as fast as PyTorch eager float32 (TF32 off)")
    assert find_goal(sizes=wide, batch=4096, precision="3xtf32").describe() == (
        "wide 1024-4096x3-10 step, batch 4096, gpubp 3xtf32: at least 1.3x faster than "
        "PyTorch eager float32 (TF32 off)")
    assert find_goal(kernel="bwd_data", kernel_shape=sq).describe() == (
        "input-gradient GEMM (with g') at 4096x4096x4096, gpubp float32: at least 90% of "
        "cuBLAS SGEMM on the same operands (float32, TF32 off)")
    name = "narrow w64 x5 (64 in, 64 out) step, batch 1048576"
    assert find_goal(metric="samples_per_s", precision="bf16").describe() == (
        f"(information) {name}, samples/s, gpubp bf16, against tiny-cuda-nn's published fully fused MLP figures"
        " (aim above 1e+09 samples/s)")
    assert find_goal(metric="samples_per_s", precision="tf32").describe() == (
        f"(information) {name}, samples/s, gpubp tf32, against tiny-cuda-nn's published fully fused MLP figures")


def test_goals_are_immutable_and_refuse_an_unknown_metric():
    import dataclasses
    from gpubp.bench import goals
    g = goals.GOALS[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.threshold = 0.5
    assert hash(g) == hash(dataclasses.replace(g))
    with pytest.raises(ValueError, match="metric must be one of"):
        goals.Goal("x", "tflops", "torch-eager", "float32", 1.0, sizes=(2, 2), batch=1)
    info = goals.Goal("x", "speedup", "torch-eager", "float32", None, sizes=(2, 2), batch=1)
    assert info.describe() == "(information) x, gpubp float32, against PyTorch eager float32 (TF32 off)"


def _step_row(peer, sizes, batch, ms, **kw):
    return dict(kind="step", device="cuda", peer=peer, sizes=list(sizes), batch=batch, median_ms=ms, **kw)


def test_judge_writes_each_metric_in_its_own_words():
    from gpubp.bench import goals
    sq = (4096, 4096, 4096)
    ks = [kernel_row("gpubp-fused", "fwd", sq, 4.0), kernel_row("gpubp-gemm-f32", "fwd", sq, 5.0),
          kernel_row("cublas-sgemm", "fwd", sq, 3.0)]
    got = goals.judge(find_goal(kernel="fwd", kernel_shape=sq), ks)
    assert got["measured"] == ("75.0% (gpubp-fused 4.000 ms vs cublas-sgemm 3.000 ms); gpubp-gemm-f32 60.0%")
    assert got["margin"] == "-15.0 points" and got["result"] == "MISS" and got["kernel_shape"] == list(sq)
    W = (1024, 4096, 4096, 4096, 10)
    rs = [_step_row("gpubp-cuda-bf16", W, 1024, 2.0), _step_row("torch-autocast-bf16", W, 1024, 5.0)]
    got = goals.judge(find_goal(sizes=W, batch=1024, precision="bf16"), rs)
    assert got["measured"] == "2.50x (gpubp-cuda-bf16 2.000 ms vs torch-autocast-bf16 5.000 ms)"
    assert got["margin"] == "+150%" and got["result"] == "PASS" and got["sizes"] == list(W) and got["batch"] == 1024
    N = (64,) * 9 + (10,)
    rs = [_step_row("gpubp-cuda", N, 2 ** 18, 1.0), _step_row("torch-eager", N, 2 ** 18, 4.5)]
    got = goals.judge(find_goal(sizes=N, precision="float32"), rs)           # 4.5x against at least 3x
    assert got["margin"] == "+50%" and got["value"] == 4.5 and got["result"] == "PASS"


def test_judge_of_a_throughput_goal_against_its_aim_and_a_published_figure(monkeypatch):
    from gpubp.bench import goals
    T, B = (64,) * 7, 2 ** 20
    rs = [_step_row(p, T, B, 1.0) for p in ("gpubp-cuda-bf16", "gpubp-cuda", "gpubp-cuda-graph")]
    got = goals.judge(find_goal(metric="samples_per_s", precision="bf16"), rs)
    assert got["value"] == B / 1e-3 and got["result"] == "INFO" and "passed" not in got
    assert got["margin"] == "+5% of the aim"                            # 1.049e9 over 1e9
    assert got["measured"] == ("1.05e+09 samples/s (gpubp-cuda-bf16 1.000 ms per step); "
                               "tiny-cuda-nn publishes no figure in words (plots only)")
    fast = [_step_row("gpubp-cuda-bf16", T, B, 0.25)]
    assert goals.judge(find_goal(metric="samples_per_s", precision="bf16"), fast)["margin"] == "+319% of the aim"
    got = goals.judge(find_goal(metric="samples_per_s", precision="float32"), rs)     # no aim: no margin
    assert got["result"] == "INFO" and "margin" not in got and "aim" not in got
    monkeypatch.setitem(goals.PUBLISHED["tiny-cuda-nn"], "samples_per_s", 5e8)
    got = goals.judge(find_goal(metric="samples_per_s", precision="bf16"), rs)
    assert got["measured"].endswith("; tiny-cuda-nn publishes 5e+08 samples/s")
    assert got["published"]["samples_per_s"] == 5e8


def test_why_a_goal_is_not_measured_is_cut_at_600_characters():
    from gpubp.bench import goals
    W = (1024, 4096, 4096, 4096, 10)
    rs = [dict(kind="step", device="cuda", peer=p, sizes=list(W), batch=4096, skipped="x" * 400)
          for p in ("gpubp-cuda", "torch-eager")]
    got = goals.judge(find_goal(sizes=W, batch=4096, precision="float32"), rs)
    assert got["result"] == "NOT MEASURED"
    assert got["measured"] == ("not measured: gpubp-cuda: " + "x" * 400 + "; torch-eager: " + "x" * 400)[:600]


# ----------------------------------------------------------------- report
H100 = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "h100-2026-11-22" / "bench.json"


def test_numbers_in_the_tables():
    from gpubp.bench import report
    assert report._fmt(None) == "" and report._fmt(7) == "7" and report._fmt("x") == "x"
    assert report._fmt(1.23456) == "1.23" and report._fmt(1.23456, 4) == "1.235"
    assert report._fmt(9999.0) == "1e+04" and report._fmt(10000.0) == "1.000e+04"
    assert report._fmt(-20000.0) == "-2.000e+04" and report._fmt(-9999.0) == "-1e+04"
    assert report._pct(None) == "" and report._pct(0.756) == "76%" and report._pct(0.0) == "0%"


def test_summary_of_the_h100_run_compares_gpubps_faster_path_with_pytorch():
    """The real H100 run's rows (benchmarks/results): per shape the median of each peer, and the
    faster of gpubp-cuda / gpubp-cuda-graph over torch-eager (on the CPU gpubp-numpy over torch-cpu)."""
    from gpubp.bench import report
    table = report.summary_table(json.loads(H100.read_text())["rows"])
    assert table[0] == ("| device | network | batch | gpubp-cuda | gpubp-cuda-graph | cupy-unfused | torch-eager | "
                        "torch-eager-tf32 | torch-compile | gpubp-numpy | torch-cpu | sklearn | "
                        "gpubp speed-up over torch |")
    assert table[1] == "|---" * 13 + "|"
    assert "| cuda | wide 1024-4096x3-10 | 4096 | 22.85 | 22.84 | 19.12 | 19.11 | 4.194 | 19.04 |  |  |  | " \
           "float32 0.84x |" in table                                          # 19.11 / 22.84
    assert "| cpu | default 64-128-10 | 32 |  |  |  |  |  |  | 0.1628 | 2.089 | 2.43 | 12.83x |" in table
    assert len(table) == 2 + len({(r["device"], r["network"], r["batch"]) for r in
                                  json.loads(H100.read_text())["rows"] if r["kind"] == "step"})


def test_summary_per_precision_and_a_row_that_does_not_count():
    from gpubp.bench import report
    rs = [dict(kind="step", device="cuda", network="n", batch=8, peer=p, median_ms=ms, **kw) for p, ms, kw in (
        ("gpubp-cuda", 9.0, {}), ("gpubp-cuda-graph", 8.0, {}), ("torch-eager", 10.0, {}),
        ("gpubp-cuda-tf32", 1.0, dict(check_error="nan")), ("torch-eager-tf32", 4.0, {}),
        ("gpubp-cuda-bf16", 2.0, {}), ("torch-autocast-bf16", 3.0, {}))]
    rs += [dict(kind="step", device="cpu", network="n", batch=8, peer="gpubp-numpy", median_ms=2.0),
           dict(kind="step", device="cpu", network="n", batch=8, peer="torch-cpu", median_ms=3.0),
           dict(kind="step", device="cpu", network="n", batch=8, peer="sklearn", error="x"),
           dict(kind="ceiling", device="cpu", peer="x", median_ms=1.0)]
    assert report.summary_table(rs)[2:] == [
        "| cuda | n | 8 | 9 | 8 | - | 2 | 10 | 4 | 3 |  |  |  | float32 1.25x, bf16 1.50x |",
        "| cpu | n | 8 |  |  |  |  |  |  |  | 2 | 3 | - | 1.50x |"]
    assert report.summary_table([]) == [] and report.summary_table(rs[-1:]) == []


def test_a_table_row_in_markdown():
    from gpubp.bench import report
    base = dict(kind="step", peer="gpubp-numpy", median_ms=1.23456, p25_ms=1.0, p75_ms=2.0, reps=5)
    assert report._row_md(base, "n", 8) == "| n | 8 | gpubp-numpy | 1.235 | 1-2 | 5 |  |  |  |  |  |  |"
    r = dict(base, peer="torch-cpu", tflops=0.5, frac_gemm=0.25, gbs=3.0, frac_copy=0.5, speedup_gpubp=2.0,
             speedup_gpubp_cuda=4.0, rel_err_vs_unfused=1.5e-7, check_error="a|b")
    assert report._row_md(r, "n", 8) == ("| n | 8 | torch-cpu (rel. err 1.5e-07) (**check failed**: a/b) | 1.235 | "
                                         "1-2 | 5 | 0.5 | 25% | 3 | 50% | 2 [4] |  |")
    k = dict(base, kind="kernel", peer="gpubp-fused", frac_cublas=0.8, speedup_gpubp_same_precision=3.0)
    assert report._row_md(k, "fwd", "1x2x3").endswith("|  | 80% |")
    s = dict(kind="step", peer="gpubp-cuda", speedup_gpubp_same_precision=3.0, median_ms=1.0, p25_ms=1.0,
             p75_ms=1.0, reps=1)
    assert report._row_md(s, "n", 8).endswith("|  | 3 |")
    assert "(**check failed**: " + "E" * 120 + ") |" in report._row_md(dict(base, check_error="E" * 200), "n", 8)
    assert report._row_md(dict(peer="x", skipped="budget|spent"), "n", 8) == "| n | 8 | x | budget/spent | | | | | | | | |"
    assert report._row_md(dict(peer="x", error="E" * 200), "n", 8) == "| n | 8 | x | " + "E" * 160 + " | | | | | | | | |"


def test_rows_of_a_shape_stay_together_in_the_order_first_measured():
    from gpubp.bench import report
    rs = [dict(network="a", batch=1, i=0), dict(network="b", batch=1, i=1), dict(network="a", batch=2, i=2),
          dict(network="a", batch=1, i=3), dict(network="b", batch=1, i=4)]
    assert [r["i"] for r in report._by_shape(rs)] == [0, 3, 1, 4, 2]
    ks = [dict(kernel="fwd", batch=1, n_out=2, n_in=3, i=0), dict(kernel="fwd", batch=1, n_out=2, n_in=4, i=1),
          dict(kernel="fwd", batch=1, n_out=2, n_in=3, i=2)]
    assert [r["i"] for r in report._by_shape(ks)] == [0, 2, 1]


def _meta(**kw):
    return dict(versions=dict(cpu="cpu0", cpu_count=2, blas_threads=1, numpy="1", torch="2", sklearn="3",
                              python="3.11", gpubp="0.1", platform="linux"), torch_threads=4, **kw)


def test_markdown_of_a_cpu_run(tmp_path):
    from gpubp.bench import report
    step = dict(kind="step", device="cpu", network="n", batch=8, median_ms=2.0, p25_ms=1.0, p75_ms=3.0, reps=4)
    rs = [dict(kind="shape", what="step n 8", error="MemoryError"),
          dict(kind="ceiling", device="cpu", ceiling="copy", median_ms=1.0, gbs=12.34),
          dict(kind="ceiling", device="cpu", ceiling="gemm", what="np.matmul 1024^3", median_ms=2.0, tflops=0.5),
          dict(kind="ceiling", device="cpu", ceiling="bf16", skipped="no bf16"),
          dict(kind="ceiling", device="cpu", ceiling="fp16", error="E"),
          dict(step, peer="gpubp-numpy"), dict(step, peer="torch-cpu", median_ms=3.0, speedup_gpubp=1.5)]
    res = dict(meta=_meta(no_gpu_reason="no CUDA", notes=["note one"]), rows=rs, goals=[], wall_s=12.4,
               config=dict(mode="tiny", optimizer="sgd", lr=0.1))
    report.write_markdown(res, tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text().splitlines()
    assert md[2] == ("Mode `tiny`, optimizer sgd (lr 0.1), step = forward, softmax cross-entropy, backward, update; "
                     "float32 unless a peer's name gives its precision mode (tf32, bf16, 3xtf32). Suite wall time 12 s.")
    assert md[4:8] == [
        "- CPU: cpu0 x2, BLAS threads 1, torch threads 4; gpubp 0.1, numpy 1, torch 2, scikit-learn 3, Python 3.11, "
        "linux",
        "- **No CUDA GPU: the GPU rows need CUDA** (no CUDA). Only the CPU rows were measured.",
        "- note one", "- error in step n 8: MemoryError"]
    assert md[8:12] == ["", "## Ceilings (measured in this run)", "", "| device | what | median ms | rate |"]
    assert md[13:19] == ["| cpu | copy | 1 | 12.3 GB/s |", "| cpu | np.matmul 1024^3 | 2 | 0.50 TFLOP/s |",
                         "| cpu | bf16 |  | no bf16 |", "| cpu | fp16 |  | E |", "",
                         "## Summary: median step time (ms) per peer"]
    assert "## Goals" not in "\n".join(md) and "## Training steps on the GPU" not in md
    i = md.index("## Training steps on the CPU")
    assert md[i - 2:i] == ["| cpu | n | 8 | 2 | 3 | 1.50x |", ""]           # the summary, then a blank line
    assert "in brackets over gpubp-cuda's where that shape ran on the GPU" in md[i + 2]
    assert "% np.matmul GEMM: of the measured np.matmul float32 GEMM (the CPU ceiling above). " in md[i + 2]
    assert "Next to last column: this peer's time over gpubp-numpy's" in md[i + 2]
    assert md[i + 4].startswith("| network | batch | peer | median ms | p25-p75 ms | reps | TFLOP/s | % np.matmul GEMM |")
    assert md[i + 6:i + 8] == ["| n | 8 | gpubp-numpy | 2 | 1-3 | 4 |  |  |  |  |  |  |",
                               "| n | 8 | torch-cpu | 3 | 1-3 | 4 |  |  |  |  | 1.5 |  |"]
    assert md[i + 8] == "" and md[i + 9].startswith("Rows are medians of CUDA-event (GPU) or host-clock (CPU) times")


def test_markdown_of_a_gpu_run_names_the_gpu_and_lists_the_goals(tmp_path, monkeypatch):
    from gpubp.bench import goals, report
    gpu = dict(name="H100", compute_capability="9.0", memory_gb=80, sms=132, l2_bytes=50 * 2 ** 20, driver="d1",
               cuda_runtime="r1", cupy_tf32="0", torch_cuda="12.4")
    meta = _meta(gpu=gpu)
    meta["versions"]["cupy"] = "13.1"
    res = dict(meta=meta, rows=[], goals=goals.check_goals([])[:1], wall_s=1.0,
               config=dict(mode="quick", optimizer="adam", lr=1e-3))
    report.write_markdown(res, tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text().splitlines()
    assert md[5] == ("- GPU: H100 (cc 9.0, 80 GiB, 132 SMs, L2 50 MiB); driver d1, CUDA runtime r1, CuPy 13.1 "
                     "(CUPY_TF32=0), torch CUDA 12.4")
    i = md.index("## Goals")
    assert md[i + 2:i + 6] == ["| goal | measured | result | margin |", "|---|---|---|---|",
                               f"| {goals.GOALS[0].describe()} | no row of gpubp float32 (gpubp-cuda, "
                               "gpubp-cuda-graph); no torch-eager row | **NOT MEASURED** |  |", ""]
    # a figure the compared project publishes, and a "|" in what was measured (it would split the cell)
    monkeypatch.setitem(goals.PUBLISHED["tiny-cuda-nn"], "samples_per_s", 5e8)
    T = (64,) * 7
    rs = [dict(kind="step", device="cuda", peer="gpubp-cuda-bf16", sizes=list(T), batch=2 ** 20, skipped="a|b")]
    res["goals"] = [goals.judge(find_goal(metric="samples_per_s", precision="bf16"), rs)]
    report.write_markdown(res, tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    assert "| not measured: gpubp-cuda-bf16: a/b | **NOT MEASURED** |" in md
    assert f"Published figures of tiny-cuda-nn: 5e+08 samples/s. Source: {goals.PUBLISHED['tiny-cuda-nn']['source']}" in md
    # the throughput of the step an information goal judges, in its own table (other batches left out)
    thr = dict(kind="step", device="cuda", network="t", sizes=list(T), batch=2 ** 20, peer="gpubp-cuda-bf16",
               median_ms=1.0, p25_ms=1.0, p75_ms=1.0, reps=1, samples_per_s=1.048576e9)
    res["rows"] = [thr, dict(thr, batch=8, samples_per_s=8e3)]
    res["goals"] = [goals.judge(find_goal(metric="samples_per_s", precision="bf16"), res["rows"])]
    report.write_markdown(res, tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text().splitlines()
    i = md.index("## Training throughput, samples per second")
    assert md[i + 1:i + 6] == ["", "| network | batch | peer | samples/s |", "|---|---|---|---|",
                               "| t | 1048576 | gpubp-cuda-bf16 | 1.05e+09 |", ""]


def test_bench_json_writes_numpy_scalars_as_numbers_and_other_objects_as_text():
    import numpy as np
    from gpubp.bench import report
    assert report.jsonable(np.int64(3)) == 3 and type(report.jsonable(np.float32(0.5))) is float
    assert report.jsonable(Path("a")) == "a"
    assert json.loads(report.to_json(dict(p=Path("a"), n=np.int32(4)))) == dict(p="a", n=4)


# ----------------------------------------------------------------- rows: rates and ratios (CPU-side)
def test_rates_of_a_row_against_the_ceilings_of_its_precision():
    from gpubp.bench import rows
    ceil = dict(gemm_tflops=4.0, gemm_tflops_bf16=8.0, copy_gbs=6.0)
    r = rows._rates(dict(median_ms=500.0), 1e12, 1.5e9, ceil, "bf16")          # 2 TFLOP/s, 3 GB/s
    assert r == dict(median_ms=500.0, tflops=2.0, gbs=3.0, frac_gemm=0.25, frac_gemm_of="gemm_tflops_bf16",
                     frac_copy=0.5)
    r = rows._rates(dict(median_ms=500.0), 1e12, 1.5e9, dict(gemm_tflops=4.0), "3xtf32")      # 3xTF32: SGEMM's
    assert r["frac_gemm"] == 0.5 and r["frac_gemm_of"] == "gemm_tflops" and "frac_copy" not in r
    assert rows._rates(dict(median_ms=500.0), 1e12, 1.5e9, {}) == dict(median_ms=500.0, tflops=2.0, gbs=3.0)
    assert rows._rates(dict(skipped="x"), 1, 1, dict(gemm_tflops=1.0)) == dict(skipped="x")


def test_cpu_rows_compare_with_gpubp_numpy_and_with_gpubp_cuda_on_the_same_shape():
    from gpubp.bench import rows
    step = dict(kind="step", sizes=[2, 3], batch=8)
    rs = [dict(step, device="cuda", peer="gpubp-cuda", median_ms=0.5),
          dict(step, device="cpu", peer="gpubp-numpy", median_ms=2.0),
          dict(step, device="cpu", peer="torch-cpu", median_ms=3.0),
          dict(step, device="cpu", peer="sklearn", median_ms=4.0, batch=16),        # another shape
          dict(kind="ceiling", device="cpu", peer="gpubp-numpy", batch=8, median_ms=1.0)]
    rows.add_ratios(rs)
    assert rs[2]["speedup_gpubp"] == 1.5 and rs[2]["speedup_gpubp_cuda"] == 6.0
    assert rs[1]["speedup_gpubp"] == 1.0 and rs[1]["speedup_gpubp_cuda"] == 4.0
    assert rs[0]["speedup_gpubp"] == 1.0 and "speedup_gpubp_cuda" not in rs[0]
    assert "speedup_gpubp" not in rs[3] and "speedup_gpubp" not in rs[4]


def test_fused_runs_and_kernels_compare_within_their_precision():
    from gpubp.bench import rows
    run = dict(kind="run", device="cuda", sizes=[64, 64, 10], batch=8)
    rs = [dict(run, peer="family-tf32", precision="tf32", median_ms=2.0),
          dict(run, peer="fused-tf32", precision="tf32", median_ms=1.0),
          dict(run, peer="torch-eager-tf32", precision="tf32", median_ms=3.0),
          dict(run, peer="family-bf16", precision="bf16", median_ms=0.5, check_error="nan"),
          dict(run, peer="torch-autocast-bf16", precision="bf16", median_ms=1.0)]
    rows.add_ratios(rs)
    assert [r.get("speedup_gpubp_same_precision") for r in rs] == [2.0, 1.0, 3.0, None, None]
    k = dict(kind="kernel", device="cuda", kernel="fwd", batch=4, n_out=2, n_in=3)
    ks = [dict(k, peer="gpubp-fused", precision="float32", median_ms=2.0),
          dict(k, peer="gpubp-gemm-v1", precision="float32", median_ms=4.0),
          dict(k, peer="cublas-sgemm", precision="float32", median_ms=1.0),
          dict(k, peer="cupy-unfused", precision="float32", median_ms=3.0),
          dict(k, peer="gpubp-fused", precision="float32", median_ms=1.0, n_in=5)]      # no cuBLAS at its shape
    rows.add_ratios(ks)
    assert [r.get("frac_cublas") for r in ks] == [0.5, 0.25, None, None, None]
    assert [r.get("speedup_gpubp") for r in ks] == [1.0, 2.0, 0.5, 1.5, 1.0]           # over gpubp-fused's
    assert ks[3]["speedup_gpubp_same_precision"] == 1.5


def test_a_rows_progress_line_and_name():
    from gpubp.bench import rows
    assert rows._progress(dict(kind="step", network="n", batch=8, peer="p", median_ms=1.23456, reps=3)) == (
        "  step    n" + " " * 23 + " B=8" + " " * 7 + " p" + " " * 17 + " 1.235 ms (3 reps)")
    assert rows._progress(dict(kind="ceiling", ceiling="copy", error="E")).endswith(" " * 19 + " E")
    assert rows._progress(dict(kind="kernel", kernel="fwd", batch=4)).endswith(" ?")
    assert rows._progress(dict(kind="kernel", kernel="fwd", batch=4)).startswith("  kernel  fwd ")
    assert rows._progress(dict(kind="ceiling", ceiling="copy", error="E")).startswith("  ceiling copy ")
    assert rows._what(dict(kind="kernel", kernel="fwd", batch=4, peer="x", network=None)) == "kernel fwd 4 x"
    assert rows._what(dict(kind="ceiling", ceiling="copy")) == "ceiling copy"


def test_time_reps_waits_for_earlier_work_before_timing_and_never_inside_a_chunk(clock):
    c, log = clock(0.125), []
    c.sync = lambda: log.append("sync")
    c.mark = lambda marks, i: (log.append(f"mark{i}"), marks.__setitem__(i, c.now))
    fn = lambda: (log.append("fn"), c.fn())                             # noqa: E731
    timing.time_reps(fn, [()], c, warmup=0, reps=2, budget_s=10.0)
    assert log == ["sync", "mark0", "fn", "mark1", "fn", "mark2"]      # queued work done before the first mark
    log.clear()
    timing.time_reps(fn, [()], c, warmup=2, reps=1, budget_s=10.0)
    assert log[:log.index("mark0")] == ["fn", "fn", "sync", "sync"]


def test_cuda_clocks_mark_with_events_and_wait_for_the_last_one(monkeypatch):
    """CupyClock and TorchClock on stand-in modules: one event per mark, the stream synchronised
    by sync, the elapsed times read after waiting for the last event."""
    log = []

    class Event:
        def __init__(self, **kw):
            self.kw, self.t = kw, None

        def record(self):
            self.t = len(log)
            log.append("record")

        def synchronize(self):
            log.append(f"wait for {self.t}")

        def elapsed_time(self, other):
            return float(other.t - self.t)

    stream = SimpleNamespace(synchronize=lambda: log.append("stream sync"))
    cuda = SimpleNamespace(Event=Event, get_current_stream=lambda: stream,
                           get_elapsed_time=lambda a, b: a.elapsed_time(b), synchronize=lambda: log.append("sync"))
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace(cuda=cuda))
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    for clk, synced in ((timing.CupyClock(), "stream sync"), (timing.TorchClock(), "sync")):
        log.clear()
        clk.sync()
        marks = clk.marks(3)
        assert len(marks) == 3 and len({id(m) for m in marks}) == 3 and all(isinstance(m, Event) for m in marks)
        for i in range(3):
            clk.mark(marks, i)
            log.append("work")
        assert clk.elapsed_ms(marks) == [2.0, 2.0] and log == [synced, "record", "work", "record", "work", "record",
                                                                "work", "wait for 5"]
    assert timing.TorchClock().marks(1)[0].kw == dict(enable_timing=True)


# ----------------------------------------------------------------- the suite's bookkeeping (rows.Suite)
def test_suite_defaults_and_the_shared_initial_parameters_of_the_last_network():
    """A new suite keeps nothing back, knows of no lost context, rotates past a 50 MiB L2 unless told;
    `host_params` is PyTorch's nn.Linear initialisation with seed 0, the same object for the same
    network, and keeps only the last network's."""
    from gpubp.bench import peers as P
    from gpubp.bench import rows
    suite = rows.Suite(dict(suite_s=10.0))
    assert suite.verbose is True and suite.rows == [] and suite.ceilings == {}
    assert suite.l2_bytes == 50 * 2 ** 20 and suite.reserve_s == 0.0 and suite.device_lost is None
    assert 9.0 < suite.left_s() <= 10.0
    a = suite.host_params([3, 4, 2])
    want = P.init_params([3, 4, 2], seed=0)
    assert len(a) == 2 and all(np.array_equal(x, y) for (w, b), (v, c) in zip(a, want) for x, y in ((w, v), (b, c)))
    assert suite.host_params((3, 4, 2)) is a
    b = suite.host_params([5, 2])
    assert b[0][0].shape == (2, 5) and list(suite._params) == [(5, 2)]      # the first network's are let go
    assert suite.host_params([3, 4, 2]) is not a


def test_suite_run_records_results_errors_and_out_of_memory_cut_to_length(monkeypatch, capsys):
    """A row's result updates its base (None: the base alone); an out-of-memory error is a skipped row
    (300 characters at most), any other error an error row (500 at most); a GPU row frees the device
    memory afterwards unless the context was lost; `verbose` prints each row's progress line."""
    from gpubp.bench import rows
    freed = []
    monkeypatch.setattr(rows, "free_device_memory", lambda: freed.append(1))
    suite = rows.Suite(dict(suite_s=100.0), verbose=False)
    base = dict(kind="step", device="cuda", network="wide", batch=256, peer="p")
    assert suite.run(base, lambda: None) == base and not freed
    assert suite.run(base, lambda: {"median_ms": 2.0}, gpu=True) == dict(base, median_ms=2.0) and freed == [1]

    class OutOfMemoryError(Exception):
        pass

    def oom():
        raise OutOfMemoryError("x" * 1000)

    def bad():
        raise ValueError("y" * 1000)
    r = suite.run(base, oom, gpu=True)
    assert r["skipped"].startswith("out of memory: xxx") and len(r["skipped"]) == 300 and "error" not in r
    r = suite.run(base, bad)
    assert r["error"].startswith("ValueError: yyy") and len(r["error"]) == 500 and "skipped" not in r
    assert suite.device_lost is None and len(freed) == 2
    r = suite.run(base, lambda: (_ for _ in ()).throw(RuntimeError("illegal memory access " + "z" * 1000)), gpu=True)
    assert len(suite.device_lost) == 300 and len(freed) == 2           # a lost context is not touched again
    r = suite.run(base, lambda: {"median_ms": 1.0}, gpu=True)
    assert r["skipped"] == f"the CUDA context was lost earlier ({suite.device_lost})"
    assert suite.run(base, lambda: {"median_ms": 1.0})["median_ms"] == 1.0      # a CPU row still runs
    assert len(suite.rows) == 7 and capsys.readouterr().out == ""
    suite.verbose = True
    r = suite.run(base, lambda: {"median_ms": 3.0, "reps": 5})
    assert capsys.readouterr().out == rows._progress(r) + "\n"


def test_suite_run_skips_a_row_that_needs_more_than_the_budget_left(monkeypatch):
    """`left_s` is the budget less `reserve_s` less the time since the suite began; a row runs only
    while more than its `need_s` (default none) is left: a budget of 0 runs nothing."""
    from gpubp.bench import rows
    now = [1000.0]
    monkeypatch.setattr(rows.time, "perf_counter", lambda: now[0])
    suite = rows.Suite(dict(suite_s=50.0), verbose=False)
    now[0] += 20.0
    suite.reserve_s = 4.0
    assert suite.left_s() == 26.0
    base = dict(kind="step", device="cpu", peer="p", batch=1)
    assert suite.run(base, lambda: {"median_ms": 1.0}, need_s=25.5)["median_ms"] == 1.0
    for need in (26.0, 60.0):
        r = suite.run(base, lambda: {"median_ms": 1.0}, need_s=need)
        assert r["skipped"] == "suite time budget spent (less 4 s kept for later rows)" and "median_ms" not in r
    suite.reserve_s = 0.0
    now[0] += 29.5                                         # half a second left: enough for a row needing none
    assert suite.run(base, lambda: {"median_ms": 1.0})["median_ms"] == 1.0
    now[0] += 0.5
    assert suite.run(base, lambda: {"median_ms": 1.0})["skipped"] == "suite time budget spent"


def test_cpu_ceilings_copy_and_gemm_sizes_per_mode_and_their_rates(monkeypatch):
    """The CPU ceilings: an np.copyto of 8 MiB (--tiny) or 128 MiB and a float32 np.matmul of 256^3
    (--tiny) or 1024^3; GB/s counts the read and the write, TFLOP/s 2 m^3 (the timing made up: 2 ms)."""
    from gpubp.bench import rows
    monkeypatch.setattr(rows, "timed", lambda fn, inputs, clock, cfg: dict(median_ms=2.0, reps=3))
    for mode, mib, m in (("tiny", 8, 256), ("quick", 128, 1024)):
        suite = rows.Suite(dict(suite_s=100.0, mode=mode), verbose=False)
        ceil = rows.measure_ceilings_cpu(suite)
        copy, gemm = suite.rows
        assert (copy["ceiling"], copy["device"], copy["what"]) == ("copy", "cpu", f"np.copyto {mib} MiB")
        assert copy["bytes"] == 2 * mib * 2 ** 20 and copy["gbs"] == pytest.approx(2 * mib * 2 ** 20 / 2e-3 / 1e9)
        assert (gemm["ceiling"], gemm["what"]) == ("sgemm", f"np.matmul float32 {m}^3")
        assert gemm["flops"] == 2 * m ** 3 and gemm["tflops"] == pytest.approx(2 * m ** 3 / 2e-3 / 1e12)
        assert ceil == dict(copy_gbs=copy["gbs"], gemm_tflops=gemm["tflops"])


def test_cpu_step_rows_without_pytorch_or_scikit_learn_say_so_and_time_gpubp_numpy(monkeypatch):
    """A missing CPU peer is a row saying why, not a missing row; the rest are timed from the
    suite's shared initial parameters."""
    import importlib.util

    from gpubp.bench import rows
    real = importlib.util.find_spec
    monkeypatch.setattr(rows.importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    from gpubp.bench import peers as P
    made, real_step = [], P.GpubpStep
    monkeypatch.setattr(P, "GpubpStep", lambda *a: made.append(a[0]) or real_step(*a))
    class Stub:
        def __init__(self, name):
            made.append(name)

        def __call__(self, *a):
            pass

        def loss_value(self):
            return 0.5
    monkeypatch.setattr(P, "TorchStep", lambda *a: Stub("torch"))
    monkeypatch.setattr(P, "SklearnStep", lambda *a, **k: Stub("sklearn"))
    monkeypatch.setattr(P, "torch_batches", lambda batches, device: batches)
    timed = []

    def fake_timed(step, inputs, clock, cfg):          # one real step on the first input set
        timed.append(inputs)
        step(*inputs[0])
        return dict(median_ms=2.0, reps=3)
    monkeypatch.setattr(rows, "timed", fake_timed)
    suite = rows.Suite(dict(suite_s=100.0, optimizer="sgd", lr=1e-2, row_s=0.0), verbose=False)
    suite.ceilings["cpu"] = {}
    rows.cpu_step_rows(suite, [4, 5, 3], 64, False)
    got = {r["peer"]: r for r in suite.rows}
    assert list(got) == ["torch-cpu", "sklearn", "gpubp-numpy"]
    assert got["torch-cpu"]["skipped"] == "PyTorch is not importable" and "median_ms" not in got["torch-cpu"]
    assert got["sklearn"]["skipped"] == "scikit-learn is not installed" and "median_ms" not in got["sklearn"]
    r = got["gpubp-numpy"]
    assert (r["kind"], r["device"], r["sizes"], r["batch"], r["optimizer"]) == ("step", "cpu", [4, 5, 3], 64, "sgd")
    assert r["median_ms"] == 2.0 and r["tflops"] == pytest.approx(cost.step_flops([4, 5, 3], 64) / 2e-3 / 1e12)
    assert np.isfinite(r["final_loss"]) and "error" not in r and len(timed) == 1 and made == ["numpy"]
    X, y = timed[0][0]
    assert X.shape == (64, 4) and X.dtype == np.float32 and y.shape == (64,) and set(np.unique(y)) == {0, 1, 2}
    made.clear()
    rows.cpu_step_rows(suite, [4, 5, 3], 64, True)                 # with PyTorch: its CPU step too
    assert made == ["numpy", "torch"] and suite.rows[-1]["peer"] == "torch-cpu" and suite.rows[-1]["final_loss"] == 0.5


def test_a_part_of_the_peers_is_verified_opt_in_or_all():
    from gpubp.bench import rows
    peers, opt_in = ["a", "b", "c"], {"b"}
    assert rows._part(peers, opt_in, None) == peers
    assert rows._part(peers, opt_in, "verified") == ["a", "c"] and rows._part(peers, opt_in, "opt-in") == ["b"]
    with pytest.raises(ValueError, match="part must be None, 'verified' or 'opt-in', got 'all'"):
        rows._part(peers, opt_in, "all")


def test_kernel_peers_force_no_tiles_unless_asked():
    from gpubp.bench import rows
    assert rows.kernel_peers(["float32"]) == ["gpubp-fused", "cupy-unfused", "cublas-sgemm"]
    assert rows.kernel_peers(["bf16"]) == ["gpubp-tc-bf16", "cublas-bf16"]


# ----------------------------------------------------------------- `gpubp bench` options (cli.main's config)
@pytest.mark.parametrize("argv, want", [
    (["--tiny"], dict(mode="tiny", optimizer="adam", lr=1e-3, compile=False)),
    (["--tiny", "--optimizer", "sgd"], dict(mode="tiny", optimizer="sgd", lr=1e-2, compile=False)),
    (["--cpu-only", "--quick"], dict(mode="quick", compile=False)),
    (["--cpu-only", "--lr", "0.5", "--row-seconds", "0.25", "--reps", "7", "--suite-seconds", "9"],
     dict(mode="full", lr=0.5, row_s=0.25, reps=7, suite_s=9.0, compile=True)),
    (["--cpu-only", "--no-compile"], dict(mode="full", compile=False)),
    (["--tiny", "--cpu-only"], dict(mode="tiny", compile=False)),
])
def test_bench_options_set_the_runs_config(monkeypatch, tmp_path, argv, want):
    """The mode's settings with the options' overrides; the learning rate defaults to 1e-3 for Adam and
    1e-2 for SGD; torch.compile rows only in the full mode without --no-compile (no row is measured here)."""
    from gpubp.bench import cli, shapes
    monkeypatch.setattr(cli, "cuda_status", lambda: (False, "made up"))
    monkeypatch.setattr(cli, "measure_ceilings_cpu", lambda suite: {})
    monkeypatch.setattr(cli, "cpu_step_rows", lambda suite, sizes, b, has_torch: None)
    monkeypatch.setattr(cli, "write_plot", lambda res, path: None)
    out = tmp_path / "new" / "out"                     # made, with its parents
    assert cli.main(argv + ["--out", str(out)]) == 0
    res = json.loads((out / "bench.json").read_text())
    cfg = res["config"]
    assert {k: cfg[k] for k in want} == want
    for k in set(shapes.MODES[cfg["mode"]]) - set(want):
        assert cfg[k] == shapes.MODES[cfg["mode"]][k], k
    assert res["meta"]["no_gpu_reason"] == ("--cpu-only" if "--cpu-only" in argv else "--tiny runs the CPU rows only")
    assert res["meta"]["argv"] == argv + ["--out", str(out)]
