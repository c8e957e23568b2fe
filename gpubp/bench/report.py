"""The outputs of a run: bench.md (tables and goals), bench.png (speed-ups) and the console summary."""

from __future__ import annotations

import json

from ..files import atomic_write
from .goals import GPUBP_PEERS, TORCH_PEER, counts
from .peers import COMPILE_PEERS, CPU_PEERS, GPU_PEERS


def _fmt(x, nd=3):
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def _pct(x):
    return "" if x is None else f"{x:.0%}"


def write_markdown(res, path):
    m, L = res["meta"], []
    L.append("# gpubp bench\n")
    L.append(f"Mode `{res['config']['mode']}`, optimizer {res['config']['optimizer']} "
             f"(lr {res['config']['lr']}), step = forward, softmax cross-entropy, backward, update; "
             f"float32 unless a peer's name gives its precision mode (tf32, bf16, 3xtf32). "
             f"Suite wall time {res['wall_s']:.0f} s.\n")
    v = m["versions"]
    L.append(f"- CPU: {v['cpu']} x{v['cpu_count']}, BLAS threads {v['blas_threads']}, torch threads "
             f"{m.get('torch_threads')}; gpubp {v.get('gpubp', '?')}, numpy {v['numpy']}, torch {v['torch']}, "
             f"scikit-learn {v['sklearn']}, Python {v['python']}, {v.get('platform', '')}")
    if m.get("gpu"):
        g = m["gpu"]
        L.append(f"- GPU: {g['name']} (cc {g['compute_capability']}, {g['memory_gb']} GiB, {g['sms']} SMs, "
                 f"L2 {g['l2_bytes'] / 2 ** 20:.0f} MiB); driver {g['driver']}, CUDA runtime {g['cuda_runtime']}, "
                 f"CuPy {v['cupy']} (CUPY_TF32={g['cupy_tf32']}), torch CUDA {g.get('torch_cuda')}")
    else:
        L.append(f"- **No CUDA GPU: the GPU rows need CUDA** ({m.get('no_gpu_reason')}). Only the CPU rows "
                 f"were measured.")
    for note in m.get("notes", []):
        L.append(f"- {note}")
    bad = [r for r in res["rows"] if r["kind"] == "shape"]
    for r in bad:
        L.append(f"- error in {r['what']}: {r['error']}")
    L.append("")
    L.append("## Ceilings (measured in this run)\n")
    L.append("| device | what | median ms | rate |\n|---|---|---|---|")
    for r in res["rows"]:
        if r["kind"] == "ceiling":
            rate = (f"{r['gbs']:.1f} GB/s" if "gbs" in r else f"{r['tflops']:.2f} TFLOP/s" if "tflops" in r
                    else r.get("skipped") or r.get("error", ""))
            L.append(f"| {r['device']} | {r.get('what', r['ceiling'])} | {_fmt(r.get('median_ms'))} | {rate} |")
    L.append("")
    if res["goals"]:
        L.append("## Goals\n")
        if not m.get("gpu"):
            L.append("No CUDA GPU in this run: every goal is NOT MEASURED.\n")
        L.append("| goal | measured | result | margin |\n|---|---|---|---|")
        for g in res["goals"]:
            measured = g.get("measured", "")
            if g.get("failed_checks") and "value" in g:      # judged on the others: say which were left out
                measured += "; left out (check failed): " + "; ".join(g["failed_checks"])
            measured = measured.replace("|", "/")
            L.append(f"| {g['goal']} | {measured} | **{g['result']}** | {g.get('margin', '')} |")
        L.append("")
        sources = {g["peer"]: g["published"] for g in res["goals"] if g.get("published")}
        for name, pub in sources.items():
            fig = f"{pub['samples_per_s']:.3g} samples/s" if pub.get("samples_per_s") else "no figure recorded"
            L.append(f"Published figures of {name}: {fig}. Source: {pub['source']}\n")
    opts = sorted({(r["peer"], str(r["backend_options"])) for r in res["rows"] if r.get("backend_options")})
    if opts:
        L.append("gpubp's CUDA backend options per peer (`CudaBackend(...)`; `tensor_core_gemms=True` is the "
                 "opt-in to the tensor-core GEMMs of kernels/gemm_tc.cu): "
                 + "; ".join(f"`{p}`: {o}" for p, o in opts) + "\n")
    summary = summary_table(res["rows"])
    if summary:
        L.append("## Summary: median step time (ms) per peer\n")
        L += summary
        L.append("")
    head = ("| network | batch | peer | median ms | p25-p75 ms | reps | TFLOP/s | % cuBLAS GEMM | GB/s | % copy | "
            "peer time / gpubp time | peer time / gpubp time, same precision |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dev, title in (("cuda", "Training steps on the GPU"), ("cpu", "Training steps on the CPU")):
        rows = _by_shape([r for r in res["rows"] if r["kind"] == "step" and r["device"] == dev])
        if not rows:
            continue
        ref = "gpubp-cuda" if dev == "cuda" else "gpubp-numpy"
        # the GEMM ceiling of the device: cuBLAS on the GPU, np.matmul (float32) on the CPU
        gemm = ("% cuBLAS GEMM: of the measured cuBLAS GEMM at 4096^3 in the row's precision. " if dev == "cuda" else
                "% np.matmul GEMM: of the measured np.matmul float32 GEMM (the CPU ceiling above). ")
        _section(L, title,
                 "FLOPs = 2 B (3 sum n_(l-1) n_l - n_0 n_1) (the GEMMs; no dLoss/dX); fewest bytes per docs/spec.md "
                 "(`gpubp.bench.cost.step_min_bytes`). " + gemm +
                 f"Next to last column: this peer's time over {ref}'s (> 1: gpubp faster)"
                 + ("; in brackets over gpubp-cuda's where that shape ran on the GPU." if dev == "cpu" else
                    "; last column: over the fastest gpubp row of the peer's precision."),
                 head if dev == "cuda" else head.replace("% cuBLAS GEMM", "% np.matmul GEMM"), rows, _network_batch)
    thr = [r for r in res["rows"] if r["kind"] == "step" and r["device"] == "cuda" and r.get("samples_per_s")
           and any(g["metric"] == "samples_per_s" and g.get("sizes") == r["sizes"] and g.get("batch") == r["batch"]
                   for g in res["goals"])]
    if thr:
        L.append("## Training throughput, samples per second\n")
        L.append("| network | batch | peer | samples/s |\n|---|---|---|---|")
        for r in thr:
            L.append(f"| {r['network']} | {r['batch']} | {r['peer']} | {r['samples_per_s']:.3g} |")
        L.append("")
    rows = _by_shape([r for r in res["rows"] if r["kind"] == "run"])
    if rows:
        _section(L, "Fused narrow runs alone (gpubp.bench.fused_runs): forward and backward, no loss or update",
                 "family-*: the fused-MLP kernel family (kernels/fused_mlp_family.cu, not on the default path); "
                 "fused-*: the default path's fused kernels (kernels/fused_mlp.cu, fused_mlp_tf32.cu); torch-*: "
                 "nn.Sequential forward and backward of the same delta. FLOPs counted as for a step. "
                 "Last column: over the fastest gpubp run of the row's precision.",
                 head, rows, _network_batch)
    rows = _by_shape([r for r in res["rows"] if r["kind"] == "kernel"])
    if rows:
        _section(L, "GEMMs alone (gpubp.bench.gemms): gpubp's variants vs cuBLAS at the same precision",
                 "fwd: GEMM+bias+ReLU (cuBLAS: A @ W.T); bwd_data: GEMM with the g' epilogue (cuBLAS: D @ W); "
                 "bwd_weight: dW GEMM with db (cuBLAS: D.T @ A). cupy-unfused: cupy.matmul plus the epilogue as "
                 "separate kernels. Shape is batch x n_out x n_in. Last column: for gpubp's rows, cuBLAS's time "
                 "at the row's precision over this row's (its share of cuBLAS's speed).",
                 head.replace("| network | batch |", "| kernel | shape |")
                 .replace("peer time / gpubp time, same precision", "cuBLAS time / this time"),
                 rows, lambda r: (r["kernel"], f"{r['batch']}x{r['n_out']}x{r['n_in']}"))
    L.append("Rows are medians of CUDA-event (GPU) or host-clock (CPU) times after warm-up, rotating among "
             "several random input sets; `skipped`/`error` rows say why. Full figures: bench.json.\n")
    write_text_atomic(path, "\n".join(L))


def write_text_atomic(path, text: str) -> None:
    """Write `text` to `path` whole or not at all (`gpubp.files.atomic_write`), so that a run killed while
    writing (the session's `timeout` sends SIGTERM) leaves the previous file, never a truncated one."""
    with atomic_write(path) as f:
        f.write(text.encode())


def _network_batch(r):
    return r["network"], r["batch"]


def _section(L, title, text, head, rows, first_cells) -> None:
    """Append to `L` a section `## title`, its `text`, and a table of `rows` (`_row_md`; the first
    two cells from `first_cells(row)`) under `head`."""
    L.append(f"## {title}\n")
    L.append(text + "\n")
    L.append(head)
    for r in rows:
        L.append(_row_md(r, *first_cells(r)))
    L.append("")


def _by_shape(rows):
    """`rows` with each shape's rows together, shapes in the order first measured, rows of a
    shape in their own order (the suite times a shape's verified and opt-in peers apart)."""
    def key(r):
        return (r.get("network"), r.get("kernel"), r["batch"], r.get("n_out"), r.get("n_in"))
    first = {}
    for i, r in enumerate(rows):
        first.setdefault(key(r), i)
    return sorted(rows, key=lambda r: first[key(r)])


def summary_table(rows):
    """Markdown lines: one row per (device, network, batch), one column per peer, plus the
    speed-up of gpubp's faster path over PyTorch (eager, TF32 off; on the GPU per precision,
    over the PyTorch peer of that precision)."""
    steps = [r for r in rows if r["kind"] == "step"]
    peers = [p for p in (*GPU_PEERS, *COMPILE_PEERS, *CPU_PEERS)
             if any(r["peer"] == p for r in steps)]
    if not steps:
        return []
    out = ["| device | network | batch | " + " | ".join(peers) + " | gpubp speed-up over torch |",
           "|---" * (len(peers) + 4) + "|"]
    keys = []
    for r in steps:
        k = (r["device"], r["network"], r["batch"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        # a row that does not count (its check failed) shows "-", as one not measured
        t = {r["peer"]: r["median_ms"] if counts(r) else None for r in steps
             if (r["device"], r["network"], r["batch"]) == k}
        mine = [t.get(p) for p in ("gpubp-cuda", "gpubp-cuda-graph", "gpubp-numpy") if t.get(p)]
        ref = t.get("torch-eager") or t.get("torch-cpu")
        sp = f"{ref / min(mine):.2f}x" if mine and ref else ""
        if k[0] == "cuda":
            per = []
            for prec, gp in GPUBP_PEERS.items():
                mine, ref = [t[p] for p in gp if t.get(p)], t.get(TORCH_PEER[prec])
                if mine and ref:
                    per.append(f"{prec} {ref / min(mine):.2f}x")
            sp = ", ".join(per)
        out.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(_fmt(t.get(p), 4) if t.get(p) else
                                                               ("-" if p in t else "") for p in peers)
                   + f" | {sp} |")
    return out


def _row_md(r, what, shape):
    if "median_ms" not in r:
        why = r.get("skipped") or r.get("error", "")
        return f"| {what} | {shape} | {r['peer']} | {why.replace('|', '/')[:160]} | | | | | | | | |"
    ratio = _fmt(r.get("speedup_gpubp"))
    if r.get("speedup_gpubp_cuda") is not None:
        ratio += f" [{_fmt(r['speedup_gpubp_cuda'])}]"
    last = _pct(r.get("frac_cublas")) if r["kind"] == "kernel" else _fmt(r.get("speedup_gpubp_same_precision"))
    peer = r["peer"] + (f" (rel. err {r['rel_err_vs_unfused']:.1e})" if "rel_err_vs_unfused" in r else "")
    if "check_error" in r:                 # measured but wrong: counted for no goal or ratio
        peer += f" (**check failed**: {r['check_error'].replace('|', '/')[:120]})"
    return (f"| {what} | {shape} | {peer} | {_fmt(r['median_ms'], 4)} | {_fmt(r['p25_ms'])}-{_fmt(r['p75_ms'])} "
            f"| {r['reps']} | {_fmt(r.get('tflops'))} | {_pct(r.get('frac_gemm'))} | {_fmt(r.get('gbs'))} "
            f"| {_pct(r.get('frac_copy'))} | {ratio} | {last} |")


def write_plot(res, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gpu = any(r["kind"] == "step" and r["device"] == "cuda" and "median_ms" in r for r in res["rows"])
    dev, peer, ref = ("cuda", "torch-eager", "gpubp-cuda") if gpu else ("cpu", "torch-cpu", "gpubp-numpy")
    lines = {}
    for r in res["rows"]:
        if r["kind"] == "step" and r["device"] == dev and r["peer"] == peer and r.get("speedup_gpubp"):
            lines.setdefault(r["network"], []).append((r["batch"], r["speedup_gpubp"]))
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter("{x:g}x")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"speed-up: {peer} time / {ref} time")
    title = f"gpubp ({ref}) vs {peer}, {res['config']['optimizer']} step"
    if res["meta"].get("gpu"):
        title += f", {res['meta']['gpu']['name']}"
    else:
        title += " (no CUDA GPU: CPU rows only)"
    ax.set_title(title, fontsize=10)
    if lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no rows measured", ha="center", va="center", transform=ax.transAxes)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def to_json(res) -> str:
    """bench.json's text: strict JSON (NaN and infinity, which JSON has not, written as the strings
    "NaN", "Infinity", "-Infinity", as `gpubp explain --json` writes them), so that any JSON reader
    reads it."""
    from ..explain import strict_json

    return json.dumps(strict_json(res), indent=1, default=jsonable, allow_nan=False)

