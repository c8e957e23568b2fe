"""Clocks and the repetition loop every benchmark row is timed with.

A clock marks points in a stream of work: host `perf_counter` on the CPU, CUDA
events (CuPy's or PyTorch's) on a GPU, so that no host synchronisation happens
inside a chunk of timed repetitions.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


class CpuClock:
    device = "cpu"

    def sync(self):
        pass

    def marks(self, n):
        return [0.0] * n

    def mark(self, marks, i):
        marks[i] = time.perf_counter()

    def elapsed_ms(self, marks):
        return [(b - a) * 1e3 for a, b in zip(marks[:-1], marks[1:])]


class CupyClock:
    device = "cuda"

    def __init__(self):
        import cupy
        self.cp = cupy

    def sync(self):
        self.cp.cuda.get_current_stream().synchronize()

    def marks(self, n):
        return [self.cp.cuda.Event() for _ in range(n)]

    def mark(self, marks, i):
        marks[i].record()

    def elapsed_ms(self, marks):
        marks[-1].synchronize()
        return [self.cp.cuda.get_elapsed_time(a, b) for a, b in zip(marks[:-1], marks[1:])]


class TorchClock(CupyClock):
    def __init__(self):
        import torch
        self.torch = torch

    def sync(self):
        self.torch.cuda.synchronize()

    def marks(self, n):
        return [self.torch.cuda.Event(enable_timing=True) for _ in range(n)]

    def elapsed_ms(self, marks):
        marks[-1].synchronize()
        return [a.elapsed_time(b) for a, b in zip(marks[:-1], marks[1:])]


def time_reps(fn, inputs, clock, warmup, reps, budget_s, warm_s=0.0, min_reps=3) -> dict:
    """Median time of `fn(*inputs[i % n])` over repetitions: warm-up first (at
    least `warmup` repetitions and `warm_s` seconds, at most 10 `budget_s`), then
    chunks of repetitions each marked by an event (no sync inside a chunk) until
    `reps` repetitions or `budget_s` seconds (at least `min_reps`)."""
    n = len(inputs)
    t0 = time.perf_counter()
    i = 0
    while i < warmup or (time.perf_counter() - t0 < warm_s and i < 1000):
        fn(*inputs[i % n])
        i += 1
        if i >= warmup:
            clock.sync()
            if time.perf_counter() - t0 > 10 * budget_s:
                break
    clock.sync()
    warm_s = time.perf_counter() - t0
    times, chunk = [], min(min_reps, reps)
    t0 = time.perf_counter()
    while len(times) < reps:
        k = min(chunk, reps - len(times))
        marks = clock.marks(k + 1)
        clock.mark(marks, 0)
        for j in range(k):
            fn(*inputs[i % n])
            i += 1
            clock.mark(marks, j + 1)
        times += clock.elapsed_ms(marks)
        spent = time.perf_counter() - t0
        if spent >= budget_s:
            break
        per = spent / len(times)
        chunk = max(1, min(64, int((budget_s - spent) / max(per, 1e-6) / 2)))
    t = np.array(times)
    return dict(median_ms=float(np.median(t)), p25_ms=float(np.percentile(t, 25)),
                p75_ms=float(np.percentile(t, 75)), min_ms=float(t.min()), reps=len(times),
                warmup_reps=i - len(times), warmup_s=round(warm_s, 3), input_sets=n)


def timed(fn, inputs, clock, cfg, warmup=None) -> dict:
    """`time_reps` with the mode's settings."""
    return time_reps(fn, inputs, clock, cfg["warmup"] if warmup is None else warmup, cfg["reps"],
                     cfg["row_s"], cfg["warm_s"])


def event_median_ms(fn, reps: int, clock, warmup: int = 3) -> float:
    """Median of `reps` timings of `fn(i)` after `warmup` calls (i = 0, 1, ...: the repetition,
    for inputs rotated between repetitions), each timed alone between two marks of `clock` and
    waited for: the plain loop of the GPU scripts in benchmarks/ (`gpubp bench` uses
    `time_reps`)."""
    for i in range(warmup):
        fn(i)
    marks = clock.marks(2)
    times = []
    for i in range(reps):
        clock.mark(marks, 0)
        fn(i)
        clock.mark(marks, 1)
        times += clock.elapsed_ms(marks)
    return statistics.median(times)
