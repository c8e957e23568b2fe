"""A narrow network's whole fused run timed alone: forward and backward, no loss, no optimizer.

Shared by `gpubp bench`'s run rows (`gpubp.bench.rows.run_rows`) and
benchmarks/fused_family_bench.py.  One timed call is the network's forward and
backward: dLoss/dZ of the last layer is given, dW and db of every layer are
computed, no dLoss/dX; ReLU hidden layers, an identity last layer.  The peers
(`RUN_PEERS`):

    family-{float32,tf32,bf16}   gpubp.backends.cuda_fused_family (kernels/fused_mlp_family.cu,
                                 not on any default path): fused_forward + fused_backward
    fused-{float32,tf32}         gpubp.backends.cuda_fused (the kernels the default path runs)
    torch-eager, torch-eager-tf32, torch-autocast-bf16
                                 nn.Sequential forward, then backward of the given delta

Each gpubp run keeps its parameter tables and workspaces in a `Scratch` between
calls, as a step plan does.  Everything device-side is imported inside
functions: the module imports without CuPy or PyTorch.
"""

from __future__ import annotations

import numpy as np

#: the run peers: name -> (precision, what runs)
RUN_PEERS = {
    "family-float32": ("float32", "cuda_fused_family, float32 policy (not on the default path)"),
    "family-tf32": ("tf32", "cuda_fused_family, TF32 policy (not on the default path)"),
    "family-bf16": ("bf16", "cuda_fused_family, BF16 policy (not on the default path)"),
    "fused-float32": ("float32", "cuda_fused (the default path's fused runs)"),
    "fused-tf32": ("tf32", "cuda_fused TF32 (the default path's fused runs)"),
    "torch-eager": ("float32", "nn.Sequential forward + backward(delta), TF32 off"),
    "torch-eager-tf32": ("tf32", "nn.Sequential forward + backward(delta), TF32 on"),
    "torch-autocast-bf16": ("bf16", "nn.Sequential under torch.autocast bfloat16, forward + backward(delta)"),
}

#: the run peers whose kernels are off every default path (not yet verified on a GPU)
OPT_IN_RUN_PEERS = ("family-float32", "family-tf32", "family-bf16")

#: gpubp's run peers that count for each precision (the faster one)
GPUBP_RUN_PEERS = {"float32": ("family-float32", "fused-float32"), "tf32": ("family-tf32", "fused-tf32"),
                   "bf16": ("family-bf16",)}


def gpubp_run(peer: str, widths, batch: int, seed: int = 0):
    """A callable running `peer`'s fused forward and backward of a run of layers of `widths`
    (input width first) at `batch` rows, on arrays it owns."""
    import cupy

    from ..activations import ACT_CODES
    from ..backends import cuda_fused, cuda_fused_family
    from ..backends.cuda_backend import CudaBackend
    from ..backends.plan import Scratch

    precision, _ = RUN_PEERS[peer]
    module = cuda_fused_family if peer.startswith("family-") else cuda_fused
    rs = cupy.random.RandomState(seed)
    L = len(widths) - 1
    Ws = [rs.standard_normal((widths[i + 1], widths[i]), dtype=np.float32) * np.float32(widths[i] ** -0.5)
          for i in range(L)]
    bs = [rs.standard_normal((widths[i + 1],), dtype=np.float32) for i in range(L)]
    A_in = rs.standard_normal((batch, widths[0]), dtype=np.float32)
    codes = [ACT_CODES["relu"]] * (L - 1) + [ACT_CODES["identity"]]
    A = [cupy.empty((batch, w), np.float32) for w in widths[1:]]
    Z = [None] * L
    dWs = [cupy.empty_like(W) for W in Ws]
    dbs = [cupy.empty_like(b) for b in bs]
    delta = rs.standard_normal((batch, widths[-1]), dtype=np.float32)
    scratch = Scratch(CudaBackend())

    def run():
        module.fused_forward(A_in, Ws, bs, codes, A, Z, precision=precision, scratch=scratch)
        module.fused_backward(delta, Ws, codes, A_in, A, Z, dWs, dbs, precision=precision, scratch=scratch)
    return run


class TorchRun:
    """PyTorch's forward and backward of the same network, called with no arguments (TF32 as
    the caller set it; bf16 under autocast): `model` (an nn.Sequential), its input `X` and the
    given last-layer `delta`."""

    def __init__(self, peer: str, widths, batch: int, device: str = "cuda"):
        import torch

        self.torch = torch
        self.precision, _ = RUN_PEERS[peer]
        layers = []
        for i in range(len(widths) - 1):
            layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers).to(device)
        self.X = torch.randn(batch, widths[0], device=device)
        self.delta = torch.randn(batch, widths[-1], device=device)
        self.device_type = torch.device(device).type
        #: `delta` in the output's dtype (bfloat16 under autocast), made by the first call: converting
        #: it in every call would time a cast and an allocation gpubp's runs do not have
        self._grad_out = None

    def __call__(self):
        for p in self.model.parameters():
            p.grad = None
        if self.precision == "bf16":
            with self.torch.autocast(self.device_type, dtype=self.torch.bfloat16):
                out = self.model(self.X)
        else:
            out = self.model(self.X)
        if self._grad_out is None or self._grad_out.dtype != out.dtype:
            self._grad_out = self.delta.to(out.dtype)
        out.backward(self._grad_out)


def torch_run(peer: str, widths, batch: int, device: str = "cuda") -> TorchRun:
    """A callable running PyTorch's forward and backward of the network (`TorchRun`)."""
    return TorchRun(peer, widths, batch, device)


def run_fits(peer: str, widths) -> str | None:
    """Why `peer` cannot run a fused run of `widths` on the current device, or None."""
    if not peer.startswith(("family-", "fused-")):
        return None
    from ..backends import cuda_fused, cuda_fused_family
    module = cuda_fused_family if peer.startswith("family-") else cuda_fused
    if not module.eligible(widths):
        return f"widths {list(widths)} exceed the fused runs' {module.MAX_WIDTH}"
    if not module.fits_device(widths, RUN_PEERS[peer][0]):
        return "this device's shared memory does not hold the run's kernels"
    return None
