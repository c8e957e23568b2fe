"""The fused GEMMs timed alone: gpubp's GEMM variants and cuBLAS at each precision.

Shared by `gpubp bench`'s kernel rows (`gpubp.bench.rows.kernel_rows`) and the
GEMM scripts of benchmarks/ (`tc_bench.py`), so that both time the same calls on
the same operands.  Three GEMMs of a dense layer with batch M, N outputs and K
inputs (the launchers' own signatures, `gpubp.backends.cuda_gemm`):

    fwd        A_out = relu(A_prev @ W.T + b)          cuBLAS: A_prev @ W.T
    bwd_data   D_prev = (D @ W) * relu'(A_prev)         cuBLAS: D @ W
    bwd_weight dW = D.T @ A_prev, db = D.sum(0)         cuBLAS: D.T @ A_prev

gpubp's variants (`GPUBP_VARIANTS`): the default float32 dispatch, each float32
tile forced (v1, pipelined, the gemm_f32 tile) and the tensor-core GEMMs of
`cuda_gemm_tc` per precision.  cuBLAS (`CUBLAS`): SGEMM through `cupy.matmul`
(float32, as long as CUPY_TF32 is not set), TF32 and BF16 through
`torch.matmul` (TF32 allowed for the one; bfloat16 operands, converted before
timing, float32 accumulation and a bfloat16 output for the other).  cuBLAS
runs without the fused epilogues (bias, activation, g', db), so the ratios
slightly favour it.

Everything device-side is imported inside functions: the module imports
without CuPy or PyTorch.
"""

from __future__ import annotations

import math
import os

import numpy as np

KINDS = ("fwd", "bwd_data", "bwd_weight")

#: gpubp's GEMM variants: peer name -> (precision, what it launches)
GPUBP_VARIANTS = {
    "gpubp-fused": ("float32", "cuda_gemm, its own tile choice (the library's float32 path)"),
    "gpubp-gemm-v1": ("float32", "cuda_gemm tile='large' (v1)"),
    "gpubp-gemm-pipelined": ("float32", "cuda_gemm tile='pipelined' (weight gradient only)"),
    "gpubp-gemm-f32": ("float32", "cuda_gemm_f32 (kernels/gemm_f32.cu, not on the default path)"),
    "gpubp-tc-tf32": ("tf32", "cuda_gemm_tc precision='tf32' (kernels/gemm_tc.cu, opt-in)"),
    "gpubp-tc-bf16": ("bf16", "cuda_gemm_tc precision='bf16' (kernels/gemm_tc.cu, opt-in)"),
    "gpubp-tc-3xtf32": ("3xtf32", "cuda_gemm_tc precision='3xtf32' (kernels/gemm_tc.cu, opt-in)"),
}

#: the variants whose kernels are off every default path (not yet verified on a GPU)
OPT_IN_VARIANTS = ("gpubp-gemm-f32", "gpubp-tc-tf32", "gpubp-tc-bf16", "gpubp-tc-3xtf32")

#: cuBLAS at each precision: peer name -> (precision, what it runs)
CUBLAS = {
    "cublas-sgemm": ("float32", "cupy.matmul float32"),
    "cublas-tf32": ("tf32", "torch.matmul float32 with TF32 allowed"),
    "cublas-bf16": ("bf16", "torch.matmul of bfloat16 tensors (float32 accumulation)"),
}

#: the largest ||gpubp - unfused float32|| / ||unfused float32|| (Frobenius, on the first input
#: set) a GEMM row may show and still count: a few unit roundoffs of its precision times the
#: growth of a K-long float32 sum of random terms (float32 u 2^-24, tf32 2^-11, bf16 2^-8;
#: 3xtf32 is float32-accurate); well above what a correct kernel shows, far below a wrong one
REL_ERR_LIMIT = {"float32": 1e-4, "3xtf32": 1e-4, "tf32": 1e-2, "bf16": 5e-2}

#: the unfused float32 pair of each GEMM: cuBLAS plus the epilogue as separate kernels
UNFUSED = "cupy-unfused"

#: the float32 tiles each variant forces in `cuda_gemm` (None: its own choice)
_TILE = {"gpubp-fused": None, "gpubp-gemm-v1": "large", "gpubp-gemm-pipelined": "pipelined"}


def variant_applies(peer: str, kind: str) -> bool:
    """Whether `peer` has its own kernel for `kind` (the pipelined tile exists for the
    weight gradient only; for the other two it would time v1 again)."""
    return not (peer == "gpubp-gemm-pipelined" and kind != "bwd_weight")


def tc_precision(peer: str) -> str | None:
    """The tensor-core precision of a `gpubp-tc-*` variant, else None."""
    return peer[len("gpubp-tc-"):] if peer.startswith("gpubp-tc-") else None


def cublas_what(peer: str) -> str:
    what = CUBLAS[peer][1]
    if peer == "cublas-sgemm":
        what += f" (CUPY_TF32={os.environ.get('CUPY_TF32', '0')})"
    return what


def random_sets(batch: int, n_out: int, n_in: int, n_sets: int = 2, seed: int | None = None):
    """`n_sets` random input sets `(A_prev, W, b, D)` of a layer (batch x n_out x n_in) on the
    current CUDA device: A_prev a ReLU output (its zeros drive g'), W scaled by 1/sqrt(n_in),
    b and D standard normal."""
    import cupy

    M, N, K = batch, n_out, n_in
    rs = cupy.random.RandomState(M + N + K if seed is None else seed)
    sets = []
    for _ in range(n_sets):
        A = rs.standard_normal((M, K), dtype=np.float32)
        sets.append((cupy.maximum(A, np.float32(0), out=A),
                     rs.standard_normal((N, K), dtype=np.float32) / np.float32(math.sqrt(max(K, 1))),
                     rs.standard_normal(N, dtype=np.float32),
                     rs.standard_normal((M, N), dtype=np.float32)))
    return sets


class GemmOperands:
    """Input sets `(A_prev, W, b, D)` of one layer shape (rotated between repetitions so that
    they do not all sit in L2; `random_sets` makes them) and the outputs of its three GEMMs,
    on the current CUDA device."""

    def __init__(self, sets):
        import cupy

        A, W = sets[0][0], sets[0][1]
        M, K = A.shape
        N = W.shape[0]
        self.shape = (M, N, K)
        self.sets = list(sets)
        self.A_out = cupy.empty((M, N), np.float32)
        self.D_prev = cupy.empty((M, K), np.float32)
        self.dW = cupy.empty((N, K), np.float32)
        self.db = cupy.empty(N, np.float32)
        self._scratch = {}

    def outputs(self, kind):
        """The output arrays of `kind` (written by gpubp's variants and the unfused pair)."""
        return {"fwd": (self.A_out,), "bwd_data": (self.D_prev,), "bwd_weight": (self.dW, self.db)}[kind]

    def scratch(self, peer):
        """The split-K workspace of `peer`'s weight gradient, kept between calls."""
        import cupy

        if peer not in self._scratch:
            M, N, K = self.shape
            if peer in _TILE:
                from ..backends.cuda_backend import CudaBackend
                from ..backends.plan import Scratch
                self._scratch[peer] = Scratch(CudaBackend())
            elif peer == "gpubp-gemm-f32":
                from ..backends import cuda_gemm_f32
                self._scratch[peer] = cupy.empty(max(1, cuda_gemm_f32.bwd_weight_scratch_size(M, N, K)), np.float32)
            else:
                from ..backends import cuda_gemm_tc
                self._scratch[peer] = cupy.empty(max(1, cuda_gemm_tc.bwd_weight_scratch_size(M, N, K)), np.float32)
        return self._scratch[peer]

    def release(self):
        self.sets.clear()
        self._scratch.clear()


def preload(peers, kinds=KINDS) -> None:
    """Compile the kernels of gemm_tc and gemm_f32 that `peers` launch, one NVRTC program per
    module (rather than one per kernel when each is first launched)."""
    from ..activations import ACT_CODES
    from ..backends import cuda_device

    relu = ACT_CODES["relu"]
    wanted = {}
    for peer in peers:
        prec = tc_precision(peer)
        if prec is not None:
            from ..backends import cuda_gemm_tc as tc
            names = wanted.setdefault(tc.SPECS[0], set())
            names |= {tc.fwd_name(prec, relu), tc.bwd_data_name(prec, relu), tc.bwd_weight_name(prec),
                      tc.REDUCE_NAME}
        elif peer == "gpubp-gemm-f32":
            from ..backends import cuda_gemm_f32 as f32
            wanted.setdefault(f32.SPECS[0], set()).update(
                {f32.fwd_name(relu), f32.bwd_data_name(relu), f32.BWD_WEIGHT_NAME, f32.REDUCE_NAME})
    if wanted:
        cuda_device.load_kernels(wanted)


def gpubp_gemm(peer: str, kind: str, ops: GemmOperands):
    """gpubp's `kind` GEMM as `peer` launches it: a callable `f(A_prev, W, b, D)`."""
    from ..activations import ACT_CODES

    relu = ACT_CODES["relu"]
    A_out, D_prev, dW, db = ops.A_out, ops.D_prev, ops.dW, ops.db
    if peer not in GPUBP_VARIANTS:
        raise ValueError(f"unknown gpubp GEMM variant {peer!r}; choose one of {', '.join(GPUBP_VARIANTS)}")
    if not variant_applies(peer, kind):
        raise ValueError(f"{peer} has no {kind} kernel of its own")
    prec = tc_precision(peer)
    if prec is not None:
        from ..backends import cuda_gemm_tc as mod
        kw = dict(precision=prec)
    elif peer == "gpubp-gemm-f32":
        from ..backends import cuda_gemm_f32 as mod
        kw = {}
    else:
        from ..backends import cuda_gemm as mod
        kw = dict(tile=_TILE[peer])
    if kind == "fwd":
        return lambda A, W, b, D: mod.gemm_fwd(A, W, b, relu, A_out, **kw)
    if kind == "bwd_data":
        return lambda A, W, b, D: mod.gemm_bwd_data(D, W, A, None, relu, D_prev, **kw)
    ws = ops.scratch(peer)
    return lambda A, W, b, D: mod.gemm_bwd_weight(D, A, dW, db, scratch=ws, **kw)


def unfused_gemm(kind: str, ops: GemmOperands):
    """The float32 unfused pair of `kind`: `cupy.matmul` plus the epilogue as separate kernels."""
    import cupy

    A_out, D_prev, dW, db = ops.A_out, ops.D_prev, ops.dW, ops.db
    if kind == "fwd":
        def f(A, W, b, D):
            cupy.matmul(A, W.T, out=A_out)
            cupy.add(A_out, b, out=A_out)
            cupy.maximum(A_out, np.float32(0), out=A_out)
    elif kind == "bwd_data":
        def f(A, W, b, D):
            cupy.matmul(D, W, out=D_prev)
            cupy.multiply(D_prev, A > 0, out=D_prev)
    else:
        def f(A, W, b, D):
            cupy.matmul(D.T, A, out=dW)
            cupy.sum(D, axis=0, out=db)
    return f


class CublasGemm:
    """cuBLAS's `kind` GEMM at `peer`'s precision on the operands of `ops`.

    `inputs` are the operand sets as that GEMM takes them (CuPy arrays, or torch tensors
    sharing or, for bfloat16, converted from them before timing); `call(A, W, b, D)` runs
    one GEMM into a preallocated output; use the object as a context manager around the
    timing (it allows TF32 in torch for "cublas-tf32", forbids it otherwise, and restores
    the setting after); `torch` says whether torch's clock must time it.  SGEMM runs through
    `cupy.matmul` unless `torch_sgemm` (then `torch.matmul` with TF32 off)."""

    def __init__(self, peer: str, kind: str, ops: GemmOperands, torch_sgemm: bool = False):
        if peer not in CUBLAS:
            raise ValueError(f"unknown cuBLAS peer {peer!r}; choose one of {', '.join(CUBLAS)}")
        self.peer, self.kind = peer, kind
        M, N, K = ops.shape
        out_shape = {"fwd": (M, N), "bwd_data": (M, K), "bwd_weight": (N, K)}[kind]
        self.torch = peer != "cublas-sgemm" or torch_sgemm
        if not self.torch:
            import cupy
            self.inputs = ops.sets
            C = cupy.empty(out_shape, np.float32)
            mm = cupy.matmul
        else:
            import torch
            dtype = torch.bfloat16 if peer == "cublas-bf16" else torch.float32
            self.inputs = [tuple(torch.from_dlpack(x).to(dtype) for x in s) for s in ops.sets]
            C = torch.empty(out_shape, dtype=dtype, device=self.inputs[0][0].device)
            mm = torch.matmul
            self._torch = torch
        if kind == "fwd":
            self.call = lambda A, W, b, D: mm(A, W.T, out=C)
        elif kind == "bwd_data":
            self.call = lambda A, W, b, D: mm(D, W, out=C)
        else:
            self.call = lambda A, W, b, D: mm(D.T, A, out=C)

    def __enter__(self):
        if self.torch:
            self._was = self._torch.backends.cuda.matmul.allow_tf32
            self._torch.backends.cuda.matmul.allow_tf32 = self.peer == "cublas-tf32"
        return self

    def __exit__(self, *exc):
        if self.torch:
            self._torch.backends.cuda.matmul.allow_tf32 = self._was
        return False

    def release(self):
        self.inputs = []


def rel_err(kind: str, ops: GemmOperands, fn) -> float:
    """max over `kind`'s outputs of ||fn's - unfused float32|| / ||unfused|| on the first input set."""
    import cupy

    out = ops.outputs(kind)
    for o in out:
        o.fill(np.nan)            # a kernel that writes nothing shows up as NaN
    fn(*ops.sets[0])
    got = [o.copy() for o in out]
    unfused_gemm(kind, ops)(*ops.sets[0])
    return max(float(cupy.linalg.norm(g - o) / cupy.linalg.norm(o)) for g, o in zip(got, out))


def rotating(fn, sets):
    """`fn(*sets[i % len(sets)])` as a function of the repetition i (`timing.event_median_ms`)."""
    return lambda i: fn(*sets[i % len(sets)])


def time_cublas(peer: str, kind: str, ops: GemmOperands, reps: int, torch_sgemm: bool = False) -> float:
    """Median ms (`timing.event_median_ms`) of `CublasGemm(peer, kind, ops, torch_sgemm)` on the
    rotated input sets, timed by the clock of the library that runs it."""
    from .timing import CupyClock, TorchClock, event_median_ms

    gemm = CublasGemm(peer, kind, ops, torch_sgemm=torch_sgemm)
    try:
        with gemm:
            return event_median_ms(rotating(gemm.call, gemm.inputs), reps,
                                   TorchClock() if gemm.torch else CupyClock())
    finally:
        gemm.release()
