"""gpubp's fused MLP as a PyTorch module: `gpubp.torch.FusedMLP`.

    import torch
    from gpubp.torch import FusedMLP

    mlp = FusedMLP([64, 128, 128, 10], activation="relu", seed=0)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(mlp(x), y)
    loss.backward()
    opt.step()

The forward and backward passes run on gpubp's backends through a
`torch.autograd.Function`: CPU tensors on the numpy backend, CUDA tensors on
the cuda backend (gpubp's kernels, on PyTorch's current stream).  Tensors go
to the backend without copies: a CPU tensor shares its memory with a numpy
array (`Tensor.numpy()`, `torch.from_numpy`), a CUDA tensor with a CuPy array
through DLPack.  The parameters are ordinary `nn.Parameter`s laid out as
`nn.Linear`'s (`weight_l` of shape `(out, in)`, `bias_l` of shape `(out,)`,
l = 1..L), so torch optimizers, `state_dict`, `torch.save`,
`DistributedDataParallel` and `torch.compile` (as a graph break) work on it.

This module needs PyTorch (`pip install "gpubp[torch]"`); `import gpubp`
does not import it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import numpy as np

from .activations import GELU_C, GELU_K, LEAKY_SLOPE, NEEDS_Z, check_activation
from .backends import get_backend
from .backends.base import Backend
from .backends.numpy_backend import activation_backward_inplace
from .checks import check_sizes
from .optional import require

torch = require("torch", "torch", "gpubp.torch", package="PyTorch")   # an error naming gpubp[torch]
from torch import nn  # noqa: E402
from torch.autograd import forward_ad  # noqa: E402

#: the precisions a FusedMLP computes in (as gpubp.MLP's `precision`)
PRECISIONS = ("float32", "tf32")


def _check_precision(precision) -> str:
    """`precision` as the plain name of one of this module's PRECISIONS (numpy's str_ taken)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"FusedMLP's precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return str(precision)


_TORCH_DTYPES = (torch.float32, torch.float64)
#: the dtypes torch.autocast computes in, which FusedMLP's forward casts from under autocast
_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- backend passes
# The three functions below are the only code that calls the backend's whole-network interface.

def _forward_pass(backend: Backend, spec: "_Spec", layers, X, input_grad: bool):
    """Run the network on backend array `X` in a fresh step plan (one per forward call) and return it.

    A plan of its own per call keeps each forward's activations apart: a second forward before
    the first one's backward cannot overwrite them.
    """
    plan = backend.make_plan(spec.sizes, spec.activations, X.shape[0], X.dtype, precision=spec.precision,
                             input_grad=input_grad)
    plan.bind_input(X)
    backend.network_forward(plan, layers)
    return plan


def _backward_pass(backend: Backend, plan, layers, grads) -> None:
    """From `plan.delta[L]` (dLoss/dZ_L) fill `grads = [(dW, db), ...]`, and `plan.delta[0]` with input_grad."""
    backend.network_backward(plan, layers, grads)


def _bind_saved(plan, spec, bridge, x, hidden_A, Zs):
    """Point `plan`'s A[0..L-1] and Z at the tensors saved for backward, as unpacked (no copies).

    Backward reads the forward's state only through these: where a saved-tensor hook
    (`torch.autograd.graph.saved_tensors_hooks`, `save_on_cpu`) packed a copy, what it unpacks
    is what PyTorch's own ops would read, and not the live input the user may have changed
    since; without hooks they are the forward's own arrays.  The plan's A[L] is not read by the
    backward (which starts from delta[L]).
    """
    plan.bind_input(bridge.view(x.contiguous()))
    for l, a in enumerate(hidden_A, start=1):
        plan.A[l] = bridge.view(a.contiguous())
    Zs = iter(Zs)
    for l, g in enumerate(spec.activations, start=1):
        plan.Z[l] = bridge.view(next(Zs).contiguous()) if g in NEEDS_Z else None


# --------------------------------------------------------------------------- output activation
def activation_grad_xp(xp, name: str, delta, a, z=None):
    """`delta *= g'(.)` with array-module `xp` (numpy or CuPy) elementwise math (arrays only, no scalars in `where`).

    The same formulas as `gpubp.backends.numpy_backend.activation_backward_inplace`:
    from the activation's output `a`, or for gelu/silu its input `z`.
    """
    if name == "identity":
        return delta
    if name == "relu":
        delta *= (a > 0).astype(delta.dtype)
    elif name == "leaky_relu":
        delta[...] = xp.where(a > 0, delta, delta * LEAKY_SLOPE)
    elif name == "sigmoid":
        delta *= a * (1.0 - a)
    elif name == "tanh":
        delta *= 1.0 - a * a
    elif name == "gelu":
        t = xp.tanh(GELU_C * (z + GELU_K * z * z * z))
        delta *= 0.5 * (1.0 + t) + 0.5 * GELU_C * z * (1.0 - t * t) * (1.0 + 3.0 * GELU_K * z * z)
    elif name == "silu":
        e = xp.exp(-xp.abs(z))                      # e^-|z| in (0, 1]: no overflow
        s = xp.where(z >= 0, xp.ones_like(e), e) / (1.0 + e)
        delta *= s * (1.0 + z * (1.0 - s))
    else:
        raise ValueError(f"unknown activation {name!r}")
    return delta


def _reads_output(activation: str) -> bool:
    """True when the derivative of `activation` is taken from its output A (not from Z, not constant)."""
    return activation != "identity" and activation not in NEEDS_Z


# --------------------------------------------------------------------------- devices
class _HostBridge:
    """CPU tensors <-> numpy arrays, sharing memory; the passes run with numpy's floating-point
    error handling off (`context`): inf and NaN propagate silently, as through `nn.Linear`, with
    no RuntimeWarning, nor numpy's FloatingPointError under the caller's `np.seterr(all="raise")`."""

    backend_name = "numpy"

    def __init__(self, device):
        self.device = device

    @staticmethod
    def view(t: torch.Tensor):
        return t.detach().numpy()

    @staticmethod
    def tensor(a) -> torch.Tensor:
        return torch.from_numpy(a)

    def context(self):
        return np.errstate(all="ignore")

    @staticmethod
    def activation_grad(name, delta, a, z):
        activation_backward_inplace(name, delta, a, z)


class _CudaBridge:
    """CUDA tensors <-> CuPy arrays through DLPack, on the tensor's device and PyTorch's current stream."""

    backend_name = "cuda"

    def __init__(self, device):
        try:
            import cupy
        except Exception as e:
            raise RuntimeError(f"FusedMLP on CUDA tensors runs gpubp's cuda backend, which needs CuPy; it did "
                               f"not import ({e}). Install gpubp[cuda12] or gpubp[cuda13]") from e
        self._cupy = cupy
        self.device = device

    def view(self, t: torch.Tensor):
        return self._cupy.from_dlpack(t.detach())

    @staticmethod
    def tensor(a) -> torch.Tensor:
        return torch.from_dlpack(a)

    def context(self):
        cupy = self._cupy
        idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
        stack = contextlib.ExitStack()
        stack.enter_context(cupy.cuda.Device(idx))
        stream = torch.cuda.current_stream(idx)
        stack.enter_context(cupy.cuda.ExternalStream(stream.cuda_stream, idx))
        return stack

    def activation_grad(self, name, delta, a, z):
        activation_grad_xp(self._cupy, name, delta, a, z)


def _bridge_for(device: torch.device):
    if device.type == "cpu":
        return _HostBridge(device)
    if device.type == "cuda":
        return _CudaBridge(device)
    raise ValueError(f"FusedMLP runs on CPU tensors (numpy backend) and CUDA tensors (cuda backend); "
                     f"got a tensor on {device}")


# --------------------------------------------------------------------------- the autograd function
@dataclass(frozen=True)
class _Spec:
    """What the autograd function needs to know about the network (read-only)."""

    sizes: tuple
    activations: tuple
    precision: str
    backend: object          # "auto", "numpy", "cuda" or a Backend instance

    def backend_for(self, bridge) -> Backend:
        be = self.backend
        if be == "auto":
            return get_backend(bridge.backend_name)
        be = get_backend(be)
        if be.name != bridge.backend_name:
            raise ValueError(f"this FusedMLP was built with backend={be.name!r}, which cannot take tensors on "
                             f"{bridge.device}; use backend='auto' or move the input and the module to "
                             f"{'the CPU' if be.name == 'numpy' else 'a CUDA device'}")
        return be


_DOUBLE_BACKWARD = ("FusedMLP does not support double backward: the gradients it computed under "
                    "create_graph=True cannot be differentiated again")


class _FirstOrderOnly(torch.autograd.Function):
    """The gradients FusedMLP's backward returns under `create_graph=True`, tied to the forward's
    inputs by a node whose own backward refuses, so a second derivative through the module raises
    (torch's `once_differentiable` returns them as constants when `grad_out` needs no grad, and
    ties its error to nothing: `autograd.grad(gx.sum() + x.pow(2).sum(), x)` gave `2 x`, the module's
    part silently 0)."""

    @staticmethod
    def forward(ctx, n_anchors, *tensors):
        return tuple(t.clone() for t in tensors[n_anchors:])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_DOUBLE_BACKWARD)


def _first_order_only(backward):
    """Run `backward` without a graph; under `create_graph=True` pass its gradients through
    `_FirstOrderOnly`, tied to the saved tensors that require grad (the input and parameters)
    and to the incoming gradients that do: the gradients depend on both, and a derivative with
    respect to the incoming gradient (the double-backward trick of
    `torch.autograd.functional.jvp`) was silently 0."""
    @functools.wraps(backward)
    def wrapper(ctx, *args):
        with torch.no_grad():
            grads = backward(ctx, *args)
        if not torch.is_grad_enabled():          # a plain backward: nothing to guard
            return grads
        anchors = [t for t in ctx.saved_tensors if t.requires_grad]
        anchors += [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        present = [g for g in grads if g is not None]
        if not anchors or not present:
            return grads
        tied = iter(_FirstOrderOnly.apply(len(anchors), *anchors, *present))
        return tuple(None if g is None else next(tied) for g in grads)
    return wrapper


class _FusedMLPFunction(torch.autograd.Function):
    """y = MLP(x) on gpubp's backend; inputs: spec, keep, x (B, n_0), W1, b1, ..., WL, bL."""

    @staticmethod
    def forward(ctx, spec: _Spec, keep: bool, x, *params):
        bridge = _bridge_for(x.device)
        backend = spec.backend_for(bridge)
        L = len(spec.sizes) - 1
        ctx.spec, ctx.empty = spec, x.shape[0] == 0
        if ctx.empty:                       # no samples: nothing for the backend to do
            out = x.new_empty((0, spec.sizes[-1]))
            if keep:
                ctx.save_for_backward(x, *params)
            return out
        with bridge.context():
            layers = [(bridge.view(params[2 * i]), bridge.view(params[2 * i + 1])) for i in range(L)]
            plan = _forward_pass(backend, spec, layers, bridge.view(x),
                                 input_grad=keep and ctx.needs_input_grad[2])
            out_a = plan.A[L]
            if not keep and getattr(out_a, "base", None) is not None:
                out_a = out_a.copy()        # hand out only the output, not a larger buffer it views
            out = bridge.tensor(out_a)
            if not keep:
                return out                  # the plan goes: nothing but the output is kept
            # Backward uses the plan (its deltas and scratch) and drops it.  The input and the
            # activations are saved for backward as zero-copy tensor views, and backward reads them
            # only through the saved tensors: PyTorch then checks that nothing backward reads was
            # modified in place, saved-tensor hooks see them, and a second backward through a
            # retained graph (retain_graph=True) binds them into a fresh plan; without retain_graph
            # PyTorch frees them after the backward.  The output is saved only where
            # its activation's derivative reads it, so that, as after nn.Linear, an identity (or
            # gelu/silu) output may be changed in place.
            ctx.plan, ctx.bridge, ctx.backend = plan, bridge, backend
            hidden_A = [bridge.tensor(a) for a in plan.A[1:L]]
            Zs = [bridge.tensor(z) for z in plan.Z[1:] if z is not None]
            out_saved = [out] if _reads_output(spec.activations[-1]) else []
            ctx.save_for_backward(x, *params, *hidden_A, *Zs, *out_saved)
            # from here on the saved tensors alone hold the input and the activations (backward
            # binds them again, `_bind_saved`): a hook that packed them elsewhere frees them here
            plan.A[:L] = [None] * L
            plan.Z[:] = [None] * len(plan.Z)
            del hidden_A, Zs
        return out

    @staticmethod
    @_first_order_only
    def backward(ctx, grad_out):
        spec = ctx.spec
        L = len(spec.sizes) - 1
        if _IS_LEGACY_BATCHED is not None and _IS_LEGACY_BATCHED(grad_out):
            raise RuntimeError(_NO_BATCHED_GRADS)   # vmap's own error came from inside, about aten::copy_
        saved = ctx.saved_tensors           # raises if any was modified in place or already freed
        x, params, rest = saved[0], saved[1:1 + 2 * L], saved[1 + 2 * L:]
        need_x, need_p = ctx.needs_input_grad[2], ctx.needs_input_grad[3:]
        if ctx.empty:                        # no samples: zero parameter gradients
            return (None, None, torch.zeros_like(x) if need_x else None,
                    *(torch.zeros_like(p) if n else None for p, n in zip(params, need_p)))
        bridge, backend = ctx.bridge, ctx.backend
        n_z = sum(g in NEEDS_Z for g in spec.activations)
        hidden_A, Zs, out_saved = rest[:L - 1], rest[L - 1:L - 1 + n_z], rest[L - 1 + n_z:]
        with bridge.context():
            plan, ctx.plan = ctx.plan, None
            if plan is None:                 # a second backward through a retained graph: fresh deltas
                plan = backend.make_plan(spec.sizes, spec.activations, x.shape[0], bridge.view(x).dtype,
                                         precision=spec.precision, input_grad=need_x)
            _bind_saved(plan, spec, bridge, x, hidden_A, Zs)
            params = [p.contiguous() for p in params]        # as saved (a hook may unpack any layout)
            layers = [(bridge.view(params[2 * i]), bridge.view(params[2 * i + 1])) for i in range(L)]
            delta_L = plan.delta[L]
            bridge.tensor(delta_L).copy_(grad_out)     # grad_out may be broadcast or shared: a copy
            A_L = bridge.view(out_saved[0].contiguous()) if out_saved else None   # read only by g' from A
            Z_L = plan.Z[L]
            bridge.activation_grad(spec.activations[-1], delta_L, A_L, Z_L)
            grads_t = [torch.empty_like(p) for p in params]
            grads = [(bridge.view(grads_t[2 * i]), bridge.view(grads_t[2 * i + 1])) for i in range(L)]
            _backward_pass(backend, plan, layers, grads)
            dX_t = bridge.tensor(plan.delta[0]) if need_x else None
        return (None, None, dX_t, *(g if n else None for g, n in zip(grads_t, need_p)))


_NO_TRANSFORMS = ("FusedMLP does not support torch.func transforms (vmap, grad, jacrev, jacfwd, jvp, "
                  "hessian) or forward-mode AD: its passes run outside PyTorch's operators. "
                  "Use reverse mode (loss.backward(), torch.autograd.grad, "
                  "torch.autograd.functional.jacobian) on ordinary tensors")


_NO_BATCHED_GRADS = (_NO_TRANSFORMS + "; nor batched incoming gradients (torch.autograd.grad(..., "
                     "is_grads_batched=True), torch.autograd.functional.jacobian(..., vectorize=True)): "
                     "leave them unbatched (vectorize=False)")

#: torch's test for a tensor wrapped by a torch.func transform (None where this torch has none)
_IS_FUNCTORCH_WRAPPED = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
#: torch's test for the batched incoming gradients of `is_grads_batched=True` (its legacy vmap)
_IS_LEGACY_BATCHED = getattr(getattr(torch._C, "_functorch", None), "is_legacy_batchedtensor", None)


def _refuse_transforms(tensors) -> None:
    """Refuse tensors wrapped by a torch.func transform or carrying a forward-mode tangent, in
    FusedMLP's words (PyTorch's own error asks the author of the function to add a
    `setup_context` or a `jvp`)."""
    for t in tensors:
        if (_IS_FUNCTORCH_WRAPPED is not None and _IS_FUNCTORCH_WRAPPED(t)) or forward_ad.unpack_dual(t).tangent is not None:
            raise RuntimeError(_NO_TRANSFORMS)


_NO_EXPORT = ("FusedMLP cannot be exported (torch.export, the ONNX exporter): its passes run outside "
              "PyTorch's operators; export the equivalent FusedMLP.to_sequential() instead")


_NO_JIT = ("FusedMLP cannot be compiled to TorchScript (torch.jit.trace, torch.jit.script): its passes run "
           "outside PyTorch's operators, as a Python call a TorchScript module can neither check nor save; "
           "trace or script the equivalent FusedMLP.to_sequential() instead (or use torch.compile)")


@torch.compiler.disable(reason="gpubp runs its own kernels: torch.compile treats FusedMLP as a graph break "
                               "(and torch.export cannot export it: export FusedMLP.to_sequential() instead)")
def _fused_apply(spec: _Spec, x, params):
    if torch.compiler.is_exporting():      # non-strict export traces with fake tensors, which have no data
        raise RuntimeError(_NO_EXPORT)
    if torch.jit.is_tracing():             # a trace replays `keep` as traced (under no_grad: record nothing)
        raise RuntimeError(_NO_JIT)
    _refuse_transforms((x, *params))
    keep = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    return _FusedMLPFunction.apply(spec, keep, x, *params)


# --------------------------------------------------------------------------- activation modules
def _activation_module(name: str):
    """The torch module computing gpubp activation `name` (None for identity)."""
    return {
        "identity": lambda: None,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
        "gelu": lambda: nn.GELU(approximate="tanh"),
        "silu": nn.SiLU,
    }[name]()


def _activation_name(module: nn.Module, index: int) -> str:
    """The gpubp activation that torch module `module` computes, or a ValueError saying why none does."""
    where = f"module {index} ({module!r})"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.SiLU):
        return "silu"
    if isinstance(module, nn.Identity):
        return "identity"
    if isinstance(module, nn.LeakyReLU):
        if module.negative_slope != LEAKY_SLOPE:
            raise ValueError(f"{where}: gpubp's leaky_relu has negative_slope {LEAKY_SLOPE}, got "
                             f"{module.negative_slope}")
        return "leaky_relu"
    if isinstance(module, nn.GELU):
        if module.approximate != "tanh":
            raise ValueError(f"{where}: gpubp's gelu is the tanh approximation; use "
                             f"nn.GELU(approximate='tanh') (the exact erf GELU is not supported)")
        return "gelu"
    raise ValueError(f"{where} is not supported: FusedMLP takes nn.Linear layers, each followed by at most "
                     f"one of nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU({LEAKY_SLOPE}), "
                     f"nn.GELU(approximate='tanh'), nn.SiLU, nn.Identity")


# --------------------------------------------------------------------------- the module
class FusedMLP(nn.Module):
    """A dense network `layer_sizes[0] -> ... -> layer_sizes[-1]` run by gpubp, as an `nn.Module`.

    Equal to `nn.Sequential(nn.Linear, act, ..., nn.Linear, output act)` (see
    `to_sequential`), computed by gpubp's backend: the numpy backend for CPU
    tensors, the cuda backend (CuPy) for CUDA tensors.

    - `activation`: the hidden layers' activation (one name, or a list with one
      per hidden layer); `output_activation` the last layer's.  Names as in
      `gpubp.ACTIVATIONS`; `gelu` is the tanh approximation, `leaky_relu` has
      slope 0.01.
    - `precision="tf32"` lets the cuda backend multiply float32 on TF32 tensor
      cores in its fused narrow-layer kernels, and makes the numpy backend
      emulate TF32's rounding in every product (as `gpubp.MLP`).
    - `dtype` (float32 or float64; default torch's default dtype) and `device`
      of the parameters, as `nn.Linear`'s.  The input must have the
      parameters' dtype and device (under `torch.autocast` a float16 or
      bfloat16 input is cast to the parameters' dtype, as for PyTorch's
      float32-policy ops); its last dimension is `layer_sizes[0]`
      and any leading dimensions are kept, as for `nn.Linear`.
    - `backend`: "auto" (by the input's device), "numpy", "cuda", or a
      `gpubp.backends.Backend` instance.
    - Parameters `weight_1, bias_1, ..., weight_L, bias_L` in `nn.Linear`'s
      layout and initialisation (uniform in ±1/sqrt(fan_in), weight then bias,
      layer by layer), drawn on the CPU from torch's global generator, or from
      a generator seeded with `seed` when given, then moved to `device`: the
      same numbers as `torch.manual_seed(seed)` and then the `nn.Linear`s of
      `to_sequential()` built on the CPU.  `reset_parameters()` draws them again.

    `load_state_dict` is `nn.Module`'s, except that one which raises (a missing
    or unexpected key, a wrong shape) leaves the module as it was.

    Values are not checked for NaN (they propagate, as through `nn.Linear`).
    Each forward runs in a step plan of its own (so forwards never share
    buffers).  One that records a graph keeps its plan (activations and room
    for the deltas) until its backward, which frees it (with
    `retain_graph=True` the activations stay for a further backward); under
    `torch.no_grad`, or when nothing requires grad, only the output is kept.
    Double backward, torch.func transforms (vmap, grad, jacrev, ...),
    batched incoming gradients (`is_grads_batched=True`, `jacobian(...,
    vectorize=True)`), forward-mode AD and TorchScript (`torch.jit.trace`,
    `torch.jit.script`: use `to_sequential()`) are not supported (each raises a
    RuntimeError saying so).
    """

    def __init__(self, layer_sizes, activation="relu", output_activation="identity", precision="float32",
                 seed=None, backend="auto", *, dtype=None, device=None):
        super().__init__()
        sizes = check_sizes(layer_sizes)
        n_hidden = len(sizes) - 2
        if isinstance(activation, (list, tuple)):
            if len(activation) != n_hidden:
                raise ValueError(f"activation lists one name per hidden layer: expected {n_hidden}, "
                                 f"got {len(activation)} ({list(activation)})")
            hidden = [check_activation(a) for a in activation]
        else:
            hidden = [check_activation(activation)] * n_hidden
        out_act = check_activation(output_activation, "output_activation")
        precision = _check_precision(precision)
        if not isinstance(backend, Backend) and backend not in ("auto", "numpy", "cuda"):
            raise ValueError(f"backend must be 'auto', 'numpy', 'cuda' or a gpubp Backend, got {backend!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None, got {seed!r}")
        if seed is not None and not -2 ** 63 <= int(seed) < 2 ** 64:    # what torch.Generator takes
            raise ValueError(f"seed must be in [-2**63, 2**64) (torch.Generator's seeds), got {seed}")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _TORCH_DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if precision == "tf32" and dtype != torch.float32:
            raise ValueError(f"precision='tf32' needs dtype torch.float32, got {dtype}")
        self.layer_sizes = sizes
        self.activations = tuple(hidden + [out_act])
        self.precision = precision
        self.seed = seed
        self.backend = backend
        # device None: torch's default device (`with torch.device(...)`, set_default_device), as nn.Linear's
        target = torch.device(device) if device is not None else torch.get_default_device()
        for l, (W, b) in enumerate(self._draw_parameters(dtype, meta=target.type == "meta"), start=1):
            self.register_parameter(f"weight_{l}", nn.Parameter(W.to(target)))
            self.register_parameter(f"bias_{l}", nn.Parameter(b.to(target)))

    def _draw_parameters(self, dtype, meta: bool = False) -> list:
        """`[(W, b), ...]` for `layer_sizes` as `nn.Linear` initialises them (uniform in
        ±1/sqrt(fan_in), weight then bias, layer by layer), drawn on the CPU in `dtype` from a
        generator seeded with `seed`, or from torch's global CPU generator when `seed` is None,
        whatever torch's default device (a CUDA one drew from the CUDA generator, and refused
        `seed`'s CPU generator).  `meta`: empty meta tensors, nothing drawn (as on the meta device)."""
        gen = None if self.seed is None or meta else torch.Generator().manual_seed(int(self.seed))
        out = []
        for n_in, n_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            bound = 1.0 / math.sqrt(n_in)
            W, b = (torch.empty(shape, dtype=dtype, device="meta" if meta else "cpu")
                    for shape in ((n_out, n_in), (n_out,)))
            if not meta:
                # nn.Linear's own calls: kaiming_uniform_'s bound is 1/sqrt(fan_in) up to rounding only,
                # which changed the last bit of float64 weights
                nn.init.kaiming_uniform_(W, a=math.sqrt(5), generator=gen)
                nn.init.uniform_(b, -bound, bound, generator=gen)
            out.append((W, b))
        return out

    def reset_parameters(self) -> None:
        """Draw the parameters again, in place, as the constructor did (`nn.Linear`'s
        `reset_parameters`): from `seed` when set (the constructor's numbers again), else from
        torch's global generator; dtype and device kept.  Initialisation from the meta device
        (`FusedMLP(..., device="meta").to_empty(device=d)`, FSDP) calls it."""
        self._check_parameter_shapes()
        with torch.no_grad():
            for (W, b), (W0, b0) in zip(self.layers(), self._draw_parameters(self.weight_1.dtype)):
                W.copy_(W0)
                b.copy_(b0)

    # ------------------------------------------------------------ basics
    @property
    def n_layers(self) -> int:
        return len(self.layer_sizes) - 1

    def layers(self) -> list:
        """`[(weight_1, bias_1), ..., (weight_L, bias_L)]`, the parameters themselves."""
        return [(getattr(self, f"weight_{l}"), getattr(self, f"bias_{l}")) for l in range(1, self.n_layers + 1)]

    def extra_repr(self) -> str:
        p = self.weight_1
        return (f"layer_sizes={list(self.layer_sizes)}, activations={list(self.activations)}, "
                f"precision={self.precision!r}, backend={getattr(self.backend, 'name', self.backend)!r}, "
                f"dtype={p.dtype}, device={p.device}")

    def _check_parameter_shapes(self) -> None:
        """Refuse parameters that are not tensors of `nn.Linear`'s shapes for `layer_sizes` (one
        assigned after construction): the backends would fail deep inside with numpy's or the
        kernels' own words, or broadcast a wrong bias."""
        for l, (W, b) in enumerate(self.layers(), start=1):
            n_in, n_out = self.layer_sizes[l - 1], self.layer_sizes[l]
            for name, t, shape in ((f"weight_{l}", W, (n_out, n_in)), (f"bias_{l}", b, (n_out,))):
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"FusedMLP's {name} must be a tensor, got {type(t).__name__}")
                if tuple(t.shape) != shape:
                    raise ValueError(f"FusedMLP's {name} has shape {tuple(t.shape)}; layer {l} of layer_sizes "
                                     f"{list(self.layer_sizes)} takes {shape}")

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: refuse in FusedMLP's words (the compiler's own error was
        about the forward's source)."""
        raise RuntimeError(_NO_JIT)

    # ------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FusedMLP takes a torch.Tensor, got {type(x).__name__}")
        if x.is_nested or x.layout != torch.strided:     # nn.Linear takes them; the backends take dense arrays
            kind, to = ("nested", "x.to_padded_tensor(0.0)") if x.is_nested else ("sparse", "x.to_dense()")
            raise ValueError(f"input x is a {kind} tensor (layout {x.layout}); FusedMLP takes a dense one: "
                             f"convert it with {to}")
        self._check_parameter_shapes()
        params = [t for Wb in self.layers() for t in Wb]
        p = params[0]
        for name, q in zip(("weight", "bias") * self.n_layers, params):
            if q.dtype != p.dtype or q.device != p.device:
                raise ValueError(f"FusedMLP's parameters must share one dtype and device; weight_1 is "
                                 f"{p.dtype} on {p.device}, a {name} is {q.dtype} on {q.device}")
        if p.dtype not in _TORCH_DTYPES:
            raise ValueError(f"FusedMLP computes in torch.float32 or torch.float64; its parameters are {p.dtype}")
        if x.dtype in _AUTOCAST_DTYPES and p.dtype != x.dtype and torch.is_autocast_enabled(x.device.type):
            # under torch.autocast FusedMLP runs as PyTorch's float32-policy ops do (softmax, the
            # losses): a float16 or bfloat16 input, what the autocast layers before it give, is
            # cast to the module's dtype (differentiably), and the output stays in that dtype
            x = x.to(p.dtype)
        if x.dtype != p.dtype:
            module_too = f" or the module with .to({x.dtype})" if x.dtype in _TORCH_DTYPES else ""
            raise ValueError(f"input x has dtype {x.dtype} but FusedMLP's parameters are {p.dtype}; convert "
                             f"with x.to({p.dtype}){module_too}")
        if x.device != p.device:
            raise ValueError(f"input x is on {x.device} but FusedMLP's parameters are on {p.device}; move "
                             f"one of them")
        # checked here too: `precision` is a plain attribute, and the backends run modes (bf16, 3xtf32)
        # whose stored-value rounding this module's autograd bridge does not follow
        _check_precision(self.precision)
        if self.precision == "tf32" and p.dtype != torch.float32:
            raise ValueError(f"precision='tf32' needs float32 parameters, got {p.dtype}")
        n0 = self.layer_sizes[0]
        if x.ndim < 1 or x.shape[-1] != n0:
            raise ValueError(f"input x has shape {tuple(x.shape)}; FusedMLP expects (..., {n0})")
        lead = x.shape[:-1]
        spec = _Spec(self.layer_sizes, self.activations, self.precision, self.backend)
        y = _fused_apply(spec, x.reshape(-1, n0).contiguous(), [q.contiguous() for q in params])
        return y.reshape(*lead, self.layer_sizes[-1])

    # ------------------------------------------------------------ state dict
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict`, all or nothing: where it raises, the module is as before.

        `nn.Module`'s copies each entry as it goes and raises at the end, so a state dict with
        a missing or unexpected key (strict) or a wrongly shaped entry left the module half
        loaded.  Here the parameters and buffers (of this module and any submodule) are kept
        aside (a copy each, for the duration of the call) and put back when it raises.
        """
        kept = [(slots, name, t, t._version, t.detach().clone())
                for m in self.modules() for slots in (m._parameters, m._buffers)
                for name, t in slots.items() if t is not None]
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except BaseException:
            with torch.no_grad():
                for slots, name, t, version, data in kept:
                    slots[name] = t          # assign=True puts the state dict's tensors in their place
                    if t._version != version:    # copied into: back (what was not stays as it was)
                        t.copy_(data)
            raise

    # ------------------------------------------------------------ nn.Sequential
    @classmethod
    def from_sequential(cls, seq: nn.Sequential, precision: str = "float32", backend="auto") -> "FusedMLP":
        """A FusedMLP computing what `seq` computes, with copies of its parameters (dtype, device and
        `requires_grad` kept).

        `seq` holds `nn.Linear` layers (with bias), each followed by at most one
        supported activation module (`nn.ReLU`, `nn.Sigmoid`, `nn.Tanh`,
        `nn.LeakyReLU` with slope 0.01, `nn.GELU(approximate="tanh")`,
        `nn.SiLU`); a Linear followed directly by a Linear, or by
        `nn.Identity`, has the identity activation.  Anything else raises a
        ValueError naming the module.
        """
        if not isinstance(seq, nn.Sequential):
            raise TypeError(f"from_sequential takes an nn.Sequential, got {type(seq).__name__}")
        linears, acts = [], []
        for i, m in enumerate(seq):
            if isinstance(m, nn.Linear):
                if nn.parameter.is_lazy(m.weight):
                    raise ValueError(f"module {i} ({m!r}) is not initialised yet (a lazy module): run the "
                                     f"Sequential on an input once first")
                if m.bias is None:
                    raise ValueError(f"module {i} ({m!r}) has no bias; FusedMLP's layers all have one")
                if linears and m.in_features != linears[-1].out_features:
                    raise ValueError(f"module {i} ({m!r}) takes {m.in_features} inputs but the layer before "
                                     f"gives {linears[-1].out_features}")
                linears.append(m)
                acts.append(None)
                continue
            name = _activation_name(m, i)
            if not linears:
                raise ValueError(f"module {i} ({m!r}) comes before any nn.Linear; FusedMLP starts with a layer")
            if name == "identity":
                continue
            if acts[-1] is not None:
                raise ValueError(f"module {i} ({m!r}) follows another activation; FusedMLP applies one "
                                 f"activation per layer")
            acts[-1] = name
        if not linears:
            raise ValueError("from_sequential needs at least one nn.Linear")
        acts = [a or "identity" for a in acts]
        W0 = linears[0].weight
        for i, lin in enumerate(linears):
            if lin.weight.dtype != W0.dtype or lin.weight.device != W0.device or \
                    lin.bias.dtype != W0.dtype or lin.bias.device != W0.device:
                raise ValueError(f"the nn.Linear layers must share one dtype and device; layer 1 is {W0.dtype} "
                                 f"on {W0.device}, layer {i + 1} has {lin.weight.dtype}/{lin.bias.dtype} on "
                                 f"{lin.weight.device}")
        sizes = [linears[0].in_features] + [lin.out_features for lin in linears]
        net = cls(sizes, activation=acts[:-1], output_activation=acts[-1], precision=precision, seed=0,
                  backend=backend, dtype=W0.dtype, device=W0.device)
        with torch.no_grad():
            for (W, b), lin in zip(net.layers(), linears):
                W.copy_(lin.weight)
                b.copy_(lin.bias)
                W.requires_grad_(lin.weight.requires_grad)     # a frozen layer stays frozen
                b.requires_grad_(lin.bias.requires_grad)
        net.seed = None
        return net

    def to_sequential(self) -> nn.Sequential:
        """An `nn.Sequential` of `nn.Linear` and activation modules computing the same, with copies
        of the parameters (each keeping its `requires_grad`).  Torch's random generator is not
        used (the `nn.Linear`s are made without drawing their initial values)."""
        mods = []
        for (W, b), g in zip(self.layers(), self.activations):
            lin = nn.utils.skip_init(nn.Linear, W.shape[1], W.shape[0], dtype=W.dtype, device=W.device)
            with torch.no_grad():
                lin.weight.copy_(W)
                lin.bias.copy_(b)
            lin.weight.requires_grad_(W.requires_grad)
            lin.bias.requires_grad_(b.requires_grad)
            mods.append(lin)
            act = _activation_module(g)
            if act is not None:
                mods.append(act)
        return nn.Sequential(*mods)


__all__ = ["FusedMLP", "PRECISIONS", "activation_grad_xp"]
