"""Unit checks of `gpubp bench`'s CPU-side logic with hand-computed values: the cost model, the
timing loop on a made-up clock, the shapes, the goals' verdicts and the report's tables."""

from types import SimpleNamespace

import pytest

from gpubp.bench import cost, timing


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


# ----------------------------------------------------------------- timing loop on a made-up clock
class _Clock:
    """Made-up time in seconds (binary fractions: exact sums): `perf_counter` reads it, each
    call of the timed function advances it by `step`; `chunks` records each chunk's marks."""
    device = "fake"

    def __init__(self, step):
        self.now, self.step, self.chunks, self.calls = 0.0, step, [], 0

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
    t = timing.time_reps(c.fn, [()], c, warmup=1, reps=1, budget_s=0.0625, warm_s=60.0)
    assert t["warmup_reps"] == 6                        # past 10 budgets (0.625 s) after 0.75 s
    c = clock(0.125)
    t = timing.time_reps(c.fn, [()], c, warmup=8, reps=1, budget_s=0.0625, warm_s=60.0)
    assert t["warmup_reps"] == 8                        # the warm-up repetitions asked for all run
    c = clock(0.0)
    assert timing.time_reps(c.fn, [()], c, warmup=0, reps=1, budget_s=1.0, warm_s=1.0)["warmup_reps"] == 1000


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
    assert shapes.net_name([8, 8, 8, 8]) == "narrow w8 x2 out8"
    assert shapes.net_name([5, 5, 10]) == "5-5-10"                  # one hidden layer: no narrow network
    assert shapes.net_name([4, 4, 3, 10]) == "4-4-3-10"             # hidden layers of two widths


def test_goal_step_shapes_and_the_peers_each_goal_step_needs():
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
    # the fused runs: the narrow goal networks
    assert shapes.run_shapes() == [(N64, 2 ** 18), (N128, 2 ** 18), (T, 2 ** 20)]


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
def _goal(**kw):
    from gpubp.bench import goals
    found = [g for g in goals.GOALS if all(getattr(g, k) == v for k, v in kw.items())]
    assert len(found) == 1, (kw, found)
    return found[0]


def test_each_kind_of_goal_describes_itself():
    wide, sq = (1024, 4096, 4096, 4096, 10), (4096, 4096, 4096)
    assert _goal(sizes=wide, batch=4096, precision="float32").describe() == (
        "wide 1024-4096x3-10 step, batch 4096, gpubp float32: at least as fast as PyTorch eager float32 (TF32 off)")
    assert _goal(sizes=wide, batch=4096, precision="3xtf32").describe() == (
        "wide 1024-4096x3-10 step, batch 4096, gpubp 3xtf32: at least 1.3x faster than "
        "PyTorch eager float32 (TF32 off)")
    assert _goal(kernel="bwd_data", kernel_shape=sq).describe() == (
        "input-gradient GEMM (with g') at 4096x4096x4096, gpubp float32: at least 90% of "
        "cuBLAS SGEMM on the same operands (float32, TF32 off)")
    name = "narrow w64 x5 (64 in, 64 out) step, batch 1048576"
    assert _goal(metric="samples_per_s", precision="bf16").describe() == (
        f"(information) {name}, samples/s, gpubp bf16, against tiny-cuda-nn's published fully fused MLP figures"
        " (aim above 1e+09 samples/s)")
    assert _goal(metric="samples_per_s", precision="tf32").describe() == (
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


def _kernel_row(peer, kernel, shape, ms):
    B, N, K = shape
    return dict(kind="kernel", device="cuda", kernel=kernel, peer=peer, batch=B, n_out=N, n_in=K, median_ms=ms)


def test_judge_writes_each_metric_in_its_own_words():
    from gpubp.bench import goals
    sq = (4096, 4096, 4096)
    ks = [_kernel_row("gpubp-fused", "fwd", sq, 4.0), _kernel_row("gpubp-gemm-f32", "fwd", sq, 5.0),
          _kernel_row("cublas-sgemm", "fwd", sq, 3.0)]
    got = goals.judge(_goal(kernel="fwd", kernel_shape=sq), ks)
    assert got["measured"] == ("75.0% (gpubp-fused 4.000 ms vs cublas-sgemm 3.000 ms); gpubp-gemm-f32 60.0%")
    assert got["margin"] == "-15.0 points" and got["result"] == "MISS" and got["kernel_shape"] == list(sq)
    W = (1024, 4096, 4096, 4096, 10)
    rs = [_step_row("gpubp-cuda-bf16", W, 1024, 2.0), _step_row("torch-autocast-bf16", W, 1024, 5.0)]
    got = goals.judge(_goal(sizes=W, batch=1024, precision="bf16"), rs)
    assert got["measured"] == "2.50x (gpubp-cuda-bf16 2.000 ms vs torch-autocast-bf16 5.000 ms)"
    assert got["margin"] == "+150%" and got["result"] == "PASS" and got["sizes"] == list(W) and got["batch"] == 1024
    N = (64,) * 9 + (10,)
    rs = [_step_row("gpubp-cuda", N, 2 ** 18, 1.0), _step_row("torch-eager", N, 2 ** 18, 4.5)]
    got = goals.judge(_goal(sizes=N, precision="float32"), rs)           # 4.5x against at least 3x
    assert got["margin"] == "+50%" and got["value"] == 4.5 and got["result"] == "PASS"


def test_judge_of_a_throughput_goal_against_its_aim_and_a_published_figure(monkeypatch):
    from gpubp.bench import goals
    T, B = (64,) * 7, 2 ** 20
    rs = [_step_row(p, T, B, 1.0) for p in ("gpubp-cuda-bf16", "gpubp-cuda", "gpubp-cuda-graph")]
    got = goals.judge(_goal(metric="samples_per_s", precision="bf16"), rs)
    assert got["value"] == B / 1e-3 and got["result"] == "INFO" and "passed" not in got
    assert got["margin"] == "+5% of the aim"                            # 1.049e9 over 1e9
    assert got["measured"] == ("1.05e+09 samples/s (gpubp-cuda-bf16 1.000 ms per step); "
                               "tiny-cuda-nn publishes no figure in words (plots only)")
    fast = [_step_row("gpubp-cuda-bf16", T, B, 0.25)]
    assert goals.judge(_goal(metric="samples_per_s", precision="bf16"), fast)["margin"] == "+319% of the aim"
    got = goals.judge(_goal(metric="samples_per_s", precision="float32"), rs)     # no aim: no margin
    assert got["result"] == "INFO" and "margin" not in got and "aim" not in got
    monkeypatch.setitem(goals.PUBLISHED["tiny-cuda-nn"], "samples_per_s", 5e8)
    got = goals.judge(_goal(metric="samples_per_s", precision="bf16"), rs)
    assert got["measured"].endswith("; tiny-cuda-nn publishes 5e+08 samples/s")
    assert got["published"]["samples_per_s"] == 5e8


def test_why_a_goal_is_not_measured_is_cut_at_600_characters():
    from gpubp.bench import goals
    W = (1024, 4096, 4096, 4096, 10)
    rs = [dict(kind="step", device="cuda", peer=p, sizes=list(W), batch=4096, skipped="x" * 400)
          for p in ("gpubp-cuda", "torch-eager")]
    got = goals.judge(_goal(sizes=W, batch=4096, precision="float32"), rs)
    assert got["result"] == "NOT MEASURED"
    assert got["measured"] == ("not measured: gpubp-cuda: " + "x" * 400 + "; torch-eager: " + "x" * 400)[:600]
