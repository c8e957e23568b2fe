"""The goals `gpubp bench` judges, as data, and how a goal is judged from the rows.

A goal names what gpubp runs (a training step of a network at a batch size, or
one fused kernel at a shape), the precision gpubp runs it in, the peer it is
compared with, the metric and the threshold.  `metric="speedup"` is the
peer's median time over gpubp's (the faster of gpubp's paths in that
precision counts); `metric="gemm_fraction"` is gpubp's kernel's TFLOP/s over
the peer's, a ceiling measured in the same run.  A goal without a threshold
is reported for information only.
"""

from __future__ import annotations

from dataclasses import dataclass

#: gpubp's rows that count for a goal, per precision (the faster one counts)
GPUBP_PEERS = {"float32": ("gpubp-cuda", "gpubp-cuda-graph"), "tf32": ("gpubp-cuda-tf32",)}

#: what each compared peer is, in words
PEER_TEXT = {
    "torch-eager": "PyTorch eager float32 (TF32 off)",
    "torch-eager-tf32": "PyTorch eager with TF32",
    "torch-compile": "torch.compile float32",
    "cupy-unfused": "unfused CuPy (cuBLAS GEMMs, one kernel per elementwise operation)",
    "cublas-sgemm": "cuBLAS SGEMM at 4096^3 (cupy.matmul float32)",
}

METRICS = ("speedup", "gemm_fraction")


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
    #: a fused kernel: "fwd", "bwd_data" or "bwd_weight", and (batch, n_out, n_in)
    kernel: str | None = None
    kernel_shape: tuple | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.precision not in GPUBP_PEERS:
            raise ValueError(f"precision must be one of {tuple(GPUBP_PEERS)}, got {self.precision!r}")
        if self.peer not in PEER_TEXT:
            raise ValueError(f"unknown peer {self.peer!r}; choose one of {', '.join(PEER_TEXT)}")
        if (self.sizes is None) == (self.kernel_shape is None):
            raise ValueError("a goal is about either a step (sizes, batch) or a kernel (kernel, kernel_shape)")

    def describe(self) -> str:
        peer = PEER_TEXT[self.peer]
        if self.threshold is None:
            return f"(information) {self.name}, gpubp {self.precision}, against {peer}"
        if self.metric == "gemm_fraction":
            return f"{self.name}, gpubp {self.precision}: at least {self.threshold:.0%} of {peer}"
        if self.threshold == 1.0:
            return f"{self.name}, gpubp {self.precision}: at least as fast as {peer}"
        return f"{self.name}, gpubp {self.precision}: at least {self.threshold:g}x faster than {peer}"


_WIDE = (1024, 4096, 4096, 4096, 10)
_NARROW_64x8 = (64,) * 9 + (10,)

#: the goals, in the order they are reported
GOALS = (
    Goal("fused forward GEMM+bias+ReLU at 4096x4096x4096", "gemm_fraction", "cublas-sgemm", "float32", 0.80,
         kernel="fwd", kernel_shape=(4096, 4096, 4096)),
    Goal("wide 1024-4096x3-10 step, batch 4096", "speedup", "torch-eager", "float32", 1.0,
         sizes=_WIDE, batch=4096),
    Goal("narrow w64 x8 step, batch 262144", "speedup", "torch-eager", "float32", 3.0,
         sizes=_NARROW_64x8, batch=2 ** 18),
    Goal("narrow w64 x8 step, batch 262144", "speedup", "torch-eager", "tf32", None,
         sizes=_NARROW_64x8, batch=2 ** 18),
    Goal("narrow w64 x8 step, batch 262144", "speedup", "torch-eager-tf32", "tf32", None,
         sizes=_NARROW_64x8, batch=2 ** 18),
)


def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and "median_ms" in r:
            return r
    return None


def judge(goal: Goal, rows, ceilings) -> dict:
    """The goal's result from the measured rows and the GPU's ceilings (`{"gemm_tflops": ...}`).

    Returns a dict: `goal` (its description), the goal's fields, `result`
    ("PASS", "MISS", "INFO" or "NOT MEASURED"), and when measured `value`,
    `measured` (in words) and `margin`.
    """
    out = dict(goal=goal.describe(), name=goal.name, metric=goal.metric, peer=goal.peer,
               precision=goal.precision, threshold=goal.threshold)
    value = None
    if goal.metric == "gemm_fraction":
        B, N, K = goal.kernel_shape
        mine = _find(rows, kind="kernel", kernel=goal.kernel, peer="gpubp-fused", batch=B, n_out=N, n_in=K)
        ceil = (ceilings or {}).get("gemm_tflops")
        if mine and ceil and mine.get("tflops"):
            value = mine["tflops"] / ceil
            out["measured"] = f"{value:.1%} ({mine['tflops']:.2f} vs {ceil:.2f} TFLOP/s)"
            if goal.threshold is not None:
                out["margin"] = f"{(value - goal.threshold) * 100:+.1f} points"
    else:
        where = dict(kind="step", device="cuda", sizes=list(goal.sizes), batch=goal.batch)
        mine = [r for p in GPUBP_PEERS[goal.precision] if (r := _find(rows, peer=p, **where))]
        theirs = _find(rows, peer=goal.peer, **where)
        if mine and theirs:
            best = min(mine, key=lambda r: r["median_ms"])
            value = theirs["median_ms"] / best["median_ms"]
            out["measured"] = (f"{value:.2f}x ({best['peer']} {best['median_ms']:.3f} ms vs {goal.peer} "
                               f"{theirs['median_ms']:.3f} ms)")
            others = [r for r in mine if r is not best]
            if others:
                out["measured"] += "; " + ", ".join(
                    f"{r['peer']} {theirs['median_ms'] / r['median_ms']:.2f}x" for r in others)
            if goal.threshold is not None:
                out["margin"] = f"{(value / goal.threshold - 1) * 100:+.0f}%"
    if value is None:
        out["result"] = "NOT MEASURED"
    else:
        out["value"] = value
        if goal.threshold is None:
            out["result"] = "INFO"
        else:
            out["passed"] = value >= goal.threshold
            out["result"] = "PASS" if out["passed"] else "MISS"
    return out


def check_goals(rows, ceilings, goals=GOALS) -> list[dict]:
    """`judge` of every goal, in order."""
    return [judge(g, rows, ceilings) for g in goals]
