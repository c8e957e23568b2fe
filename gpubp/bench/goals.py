"""The goals `gpubp bench` judges, as data, and how a goal is judged from the rows.

A goal names what gpubp runs (a training step of a network at a batch size, or
one fused GEMM at a shape), the precision gpubp runs it in, the peer it is
compared with, the metric and the threshold.  The metrics:

- `"speedup"`: the peer's median step time over gpubp's (the faster of gpubp's
  step peers in that precision, `GPUBP_PEERS`, counts);
- `"gemm_fraction"`: the cuBLAS row's median time over gpubp's kernel row at the
  same kernel, shape and precision (the faster of gpubp's GEMM variants in that
  precision, `GPUBP_KERNEL_PEERS`, counts), i.e. gpubp's share of cuBLAS's speed;
- `"samples_per_s"`: training samples per second of gpubp's step (information,
  reported beside `PUBLISHED`, what the compared project publishes).

A goal without a threshold is reported for information only (`aim` says what is
hoped for).  A goal whose rows are missing is "NOT MEASURED", never passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: gpubp's step rows that count for a goal, per precision (the faster one counts)
GPUBP_PEERS = {"float32": ("gpubp-cuda", "gpubp-cuda-graph"), "tf32": ("gpubp-cuda-tf32", "gpubp-cuda-tf32-default"),
               "bf16": ("gpubp-cuda-bf16",), "3xtf32": ("gpubp-cuda-3xtf32",)}

#: gpubp's GEMM kernel rows that count for a goal, per precision (the faster one counts)
GPUBP_KERNEL_PEERS = {"float32": ("gpubp-fused", "gpubp-gemm-v1", "gpubp-gemm-pipelined", "gpubp-gemm-f32"),
                      "tf32": ("gpubp-tc-tf32",), "bf16": ("gpubp-tc-bf16",), "3xtf32": ("gpubp-tc-3xtf32",)}

#: the PyTorch step peer of each precision (3xTF32 promises float32 accuracy: float32 is its peer)
TORCH_PEER = {"float32": "torch-eager", "tf32": "torch-eager-tf32", "bf16": "torch-autocast-bf16",
              "3xtf32": "torch-eager"}

#: the cuBLAS GEMM of each precision (3xTF32: SGEMM, the float32-accurate GEMM it must beat)
CUBLAS_PEER = {"float32": "cublas-sgemm", "tf32": "cublas-tf32", "bf16": "cublas-bf16", "3xtf32": "cublas-sgemm"}

#: what each compared peer is, in words
PEER_TEXT = {
    "torch-eager": "PyTorch eager float32 (TF32 off)",
    "torch-eager-tf32": "PyTorch eager with TF32",
    "torch-autocast-bf16": "PyTorch eager under torch.autocast bfloat16 (float32 master weights)",
    "torch-compile": "torch.compile float32",
    "torch-compile-tf32": "torch.compile with TF32",
    "torch-compile-bf16": "torch.compile under torch.autocast bfloat16",
    "cupy-unfused": "unfused CuPy (cuBLAS GEMMs, one kernel per elementwise operation)",
    "cublas-sgemm": "cuBLAS SGEMM on the same operands (float32, TF32 off)",
    "cublas-tf32": "cuBLAS TF32 GEMM on the same operands (torch.matmul with TF32)",
    "cublas-bf16": "cuBLAS BF16 GEMM on the same operands (torch.matmul of bfloat16 tensors)",
    "tiny-cuda-nn": "tiny-cuda-nn's published fully fused MLP figures",
}

METRICS = ("speedup", "gemm_fraction", "samples_per_s")

#: what other projects publish, as data: figures with their source in words.  A value of
#: None means no figure was found in words or tables (only what the source says is kept).
PUBLISHED = {
    "tiny-cuda-nn": dict(
        samples_per_s=None,
        source=("tiny-cuda-nn's README ('Performance') and figure 7 of its fully fused MLP paper "
                "(Mueller et al. 2021, real-time neural radiance caching) show training and inference "
                "throughput of 64- and 128-neuron-wide fully fused MLPs (half precision, tensor cores) on an "
                "RTX 3090 against TensorFlow 2.5 with XLA, for batches 2^14 to 2^21, as plots only: no "
                "figure in words or tables was found, so none is recorded here; the figure's caption states "
                "a 5-10x speed-up over TensorFlow at the paper's batch sizes. The README's example network is 64 wide "
                "with 5 hidden layers, as measured here (tiny-cuda-nn has no biases and needs batches that "
                "are multiples of 128)."),
    ),
}


@dataclass(frozen=True)
class Goal:
    """One goal: `name` says what runs; see the module docstring for the rest."""

    name: str
    metric: str
    peer: str
    precision: str
    threshold: float | None
    #: a training step: layer sizes and batch
    sizes: tuple | None = None
    batch: int | None = None
    #: a fused GEMM: "fwd", "bwd_data" or "bwd_weight", and (batch, n_out, n_in)
    kernel: str | None = None
    kernel_shape: tuple | None = None
    #: what an information goal hopes for (reported, never judged)
    aim: float | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.precision not in GPUBP_PEERS:
            raise ValueError(f"precision must be one of {tuple(GPUBP_PEERS)}, got {self.precision!r}")
        if self.peer not in PEER_TEXT:
            raise ValueError(f"unknown peer {self.peer!r}; choose one of {', '.join(PEER_TEXT)}")
        if (self.sizes is None) == (self.kernel_shape is None):
            raise ValueError("a goal is about either a step (sizes, batch) or a kernel (kernel, kernel_shape)")
        if (self.metric == "gemm_fraction") != (self.kernel_shape is not None):
            raise ValueError("metric 'gemm_fraction' is for kernel goals, the others for step goals")
        if self.metric == "samples_per_s" and self.peer not in PUBLISHED:
            raise ValueError(f"a samples_per_s goal compares with published figures ({', '.join(PUBLISHED)})")
        if self.metric == "samples_per_s" and self.threshold is not None:
            raise ValueError("a samples_per_s goal is information only (threshold None; use aim)")

    def describe(self) -> str:
        peer = PEER_TEXT[self.peer]
        if self.threshold is None:
            aim = f" (aim above {self.aim:.3g} samples/s)" if self.aim else ""
            unit = ", samples/s" if self.metric == "samples_per_s" else ""
            return f"(information) {self.name}{unit}, gpubp {self.precision}, against {peer}{aim}"
        if self.metric == "gemm_fraction":
            return f"{self.name}, gpubp {self.precision}: at least {self.threshold:.0%} of {peer}"
        if self.threshold == 1.0:
            return f"{self.name}, gpubp {self.precision}: at least as fast as {peer}"
        return f"{self.name}, gpubp {self.precision}: at least {self.threshold:g}x faster than {peer}"


WIDE = (1024, 4096, 4096, 4096, 10)
NARROW_64x8 = (64,) * 9 + (10,)
NARROW_128x8 = (128,) * 9 + (10,)
#: tiny-cuda-nn's example network: 64 inputs, five hidden layers of 64, 64 outputs
W64x5_OUT64 = (64,) * 7
TC_MODES = ("tf32", "bf16", "3xtf32")


def _step(name, sizes, batch, precision, threshold, peer=None):
    return Goal(name, "speedup", peer or TORCH_PEER[precision], precision, threshold, sizes=sizes, batch=batch)


def _gemm(kernel, shape, precision, threshold):
    what = {"fwd": "forward GEMM+bias+ReLU", "bwd_data": "input-gradient GEMM (with g')",
            "bwd_weight": "weight-gradient GEMM (with db)"}[kernel]
    return Goal(f"{what} at {'x'.join(map(str, shape))}", "gemm_fraction", CUBLAS_PEER[precision], precision,
                threshold, kernel=kernel, kernel_shape=shape)


#: the goals, in the order they are reported
GOALS = (
    # the wide step: the tensor-core modes against PyTorch at the same precision, float32 against eager
    *(_step("wide 1024-4096x3-10 step, batch 4096", WIDE, 4096, p, t)
      for p, t in (("float32", 1.0), ("tf32", 1.0), ("bf16", 1.0), ("3xtf32", 1.3))),
    *(_step(f"wide 1024-4096x3-10 step, batch {b}", WIDE, b, p, 1.0) for b in (1024, 256) for p in TC_MODES),
    # the GEMMs against cuBLAS at the same precision
    *(_gemm("fwd", (8192, 4096, 4096), p, 0.75) for p in TC_MODES),
    *(_gemm(k, (4096, 4096, 4096), "float32", 0.90) for k in ("fwd", "bwd_data", "bwd_weight")),
    # narrow networks (fused runs)
    *(_step("narrow w64 x8 step, batch 262144", NARROW_64x8, 2 ** 18, p, t)
      for p, t in (("float32", 3.0), ("tf32", 5.0), ("bf16", 8.0))),
    *(_step("narrow w128 x8 step, batch 262144", NARROW_128x8, 2 ** 18, p, 2.0) for p in ("float32", "tf32", "bf16")),
    # training throughput of tiny-cuda-nn's example network, beside its published figures
    *(Goal("narrow w64 x5 (64 in, 64 out) step, batch 1048576", "samples_per_s", "tiny-cuda-nn", p, None,
           sizes=W64x5_OUT64, batch=2 ** 20, aim=1e9 if p == "bf16" else None) for p in ("float32", "tf32", "bf16")),
)


def measured(r) -> bool:
    """Whether row `r` has a median time that is a finite number above zero."""
    ms = r.get("median_ms")
    return isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms) and ms > 0


def counts(r) -> bool:
    """Whether row `r` may count for a goal or a ratio: it was `measured` and its result passed
    its check (a row with a `check_error`, e.g. a non-finite loss or a GEMM far from float32,
    never counts)."""
    return measured(r) and "check_error" not in r


def _find(rows, **kw):
    """The first row with these fields that `counts`."""
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and counts(r):
            return r
    return None


def _failed_checks(rows, peers, **kw):
    """What is wrong with each row of `peers` matching `kw` that has a result but does not `count`:
    its failed check, or a median time that is not a number above zero."""
    out = []
    for r in rows:
        if (r.get("peer") in peers and ("check_error" in r or "median_ms" in r) and not counts(r)
                and all(r.get(k) == v for k, v in kw.items())):
            why = (r["check_error"] if "check_error" in r else
                   f"median time {r['median_ms']!r} ms, not a number above zero")
            out.append(f"{r['peer']}: {why}")
    return out


def _best(rows, peers, **where):
    """gpubp's fastest measured row among `peers` matching `where`, and the others measured."""
    mine = [r for p in peers if (r := _find(rows, peer=p, **where))]
    if not mine:
        return None, []
    best = min(mine, key=lambda r: r["median_ms"])
    return best, [r for r in mine if r is not best]


def _peer_over_best(rows, peer, mine, where, fmt):
    """`(value, measured)`: `peer`'s time over the fastest of gpubp's `mine` among the rows matching
    `where`, and in words (each value written by `fmt`, the other gpubp rows' too); (None, None)
    when either is missing."""
    best, others = _best(rows, mine, **where)
    theirs = _find(rows, peer=peer, **where)
    if not (best and theirs):
        return None, None
    value = theirs["median_ms"] / best["median_ms"]
    measured = f"{fmt(value)} ({best['peer']} {best['median_ms']:.3f} ms vs {peer} {theirs['median_ms']:.3f} ms)"
    if others:
        measured += "; " + ", ".join(f"{r['peer']} {fmt(theirs['median_ms'] / r['median_ms'])}" for r in others)
    return value, measured


def judge(goal: Goal, rows, ceilings=None) -> dict:
    """The goal's result from the measured rows (`ceilings` is kept for callers; the GEMM
    goals compare with the cuBLAS rows measured at the goal's own shape).

    Returns a dict: `goal` (its description), the goal's fields, `result`
    ("PASS", "MISS", "INFO" or "NOT MEASURED"), and when measured `value`,
    `measured` (in words) and `margin`.
    """
    out = dict(goal=goal.describe(), name=goal.name, metric=goal.metric, peer=goal.peer,
               precision=goal.precision, threshold=goal.threshold)
    if goal.sizes is not None:
        out.update(sizes=list(goal.sizes), batch=goal.batch)
    else:
        out.update(kernel=goal.kernel, kernel_shape=list(goal.kernel_shape))
    if goal.aim is not None:
        out["aim"] = goal.aim
    if goal.kernel_shape:
        B, N, K = goal.kernel_shape
        where, mine = dict(kind="kernel", kernel=goal.kernel, batch=B, n_out=N, n_in=K), GPUBP_KERNEL_PEERS
    else:
        where, mine = dict(kind="step", device="cuda", sizes=list(goal.sizes), batch=goal.batch), GPUBP_PEERS
    value = None
    if goal.metric == "samples_per_s":
        best, _ = _best(rows, mine[goal.precision], **where)
        pub = PUBLISHED[goal.peer]
        out["published"] = dict(pub)
        if best:
            value = goal.batch / (best["median_ms"] / 1e3)
            out["measured"] = f"{value:.3g} samples/s ({best['peer']} {best['median_ms']:.3f} ms per step)"
            if pub["samples_per_s"]:
                out["measured"] += f"; {goal.peer} publishes {pub['samples_per_s']:.3g} samples/s"
            else:
                out["measured"] += f"; {goal.peer} publishes no figure in words (plots only)"
            if goal.aim:
                out["margin"] = f"{(value / goal.aim - 1) * 100:+.0f}% of the aim"
    else:
        # gemm_fraction: the peer's time over gpubp's best as a share; speedup: as a factor
        share = goal.metric == "gemm_fraction"
        value, measured = _peer_over_best(rows, goal.peer, mine[goal.precision], where,
                                          (lambda v: f"{v:.1%}") if share else (lambda v: f"{v:.2f}x"))
        if value is not None:
            out["measured"] = measured
            if goal.threshold is not None:
                out["margin"] = (f"{(value - goal.threshold) * 100:+.1f} points" if share else
                                 f"{(value / goal.threshold - 1) * 100:+.0f}%")
    failed = _failed_checks(rows, set(mine[goal.precision]) | {goal.peer}, **where)
    if failed:
        out["failed_checks"] = failed          # measured but wrong: left out of the comparison
    if value is None:
        out["result"] = "NOT MEASURED"
        words = ["rows failed their check: " + "; ".join(failed)] if failed else []
        # and why the other rows it needs have no result: skipped (budget, memory, a lost CUDA context) or failed
        peers = (*mine[goal.precision], *((goal.peer,) if goal.peer not in PUBLISHED else ()))
        unrun = [f"{r['peer']}: {r.get('skipped') or r.get('error')}" for r in rows
                 if r.get("peer") in peers and ("skipped" in r or "error" in r) and "median_ms" not in r
                 and all(r.get(k) == v for k, v in where.items())]
        if unrun:
            words.append("not measured: " + "; ".join(unrun))
        here = {r.get("peer") for r in rows if all(r.get(k) == v for k, v in where.items())}
        if not here & set(mine[goal.precision]):
            words.append(f"no row of gpubp {goal.precision} ({', '.join(mine[goal.precision])})")
        if goal.peer not in PUBLISHED and goal.peer not in here:
            words.append(f"no {goal.peer} row")
        if words:
            out["measured"] = "; ".join(words)[:600]
    else:
        out["value"] = value
        if goal.threshold is None:
            out["result"] = "INFO"
        else:
            out["passed"] = value >= goal.threshold
            out["result"] = "PASS" if out["passed"] else "MISS"
    return out


def check_goals(rows, ceilings=None, goals=GOALS) -> list[dict]:
    """`judge` of every goal, in order."""
    return [judge(g, rows, ceilings) for g in goals]
