"""The training steps `gpubp bench` times side by side.

Every peer computes the same step of a dense network: hidden layers ReLU,
output layer identity (logits), softmax cross-entropy on int class labels
(mean over the batch), then an Adam or SGD update of every parameter.  Each
peer is a callable `step(X, y)` that queues one step and returns without
waiting for the device (no host sync inside), built from the same initial
parameters (`init_params`) so that their results can be compared.

- `GpubpStep`: gpubp's `MLP._step` on the numpy or the fused CUDA backend,
  or the CUDA graph that `MLP.capture_train_step` records.  The graph's
  `step(X, y)` is timed as users call it, and it is the one exception to "no
  host sync inside": even with `check_inputs=False` it range-checks the class
  labels on the device and reads the answer back (one synchronisation per
  step), so `gpubp-cuda-graph` rows include that round trip.
- `UnfusedStep`: the same math with `xp.matmul` (cuBLAS under CuPy) and one
  separate elementwise kernel per operation (bias add, ReLU, loss gradient,
  Hadamard with g', db sum, the optimizer update one tensor at a time).
  `xp` may be numpy, which is how the CPU tests check its math.
- `TorchStep`: PyTorch eager (optionally `torch.compile` of the model), on
  CPU or CUDA; TF32 is set by the caller; `autocast=True` runs forward and
  loss under `torch.autocast(device, dtype=torch.bfloat16)` (float32 master
  weights, gradients and optimizer state, as autocast users train).
- `SklearnStep`: scikit-learn's MLPClassifier, one `partial_fit` of one batch.

gpubp's own step is built from `MLP`'s methods only (`MLP._step` for one
queued step, `MLP.capture_train_step` for the graph); this module holds no
copy of gpubp's training loop.  Nothing heavy (CuPy, PyTorch, scikit-learn) is
imported until a peer is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F32 = np.float32
ADAM = dict(beta1=0.9, beta2=0.999, eps=1e-8)


@dataclass(frozen=True)
class PeerSpec:
    """What a GPU step peer runs: its library ("gpubp", "cupy" or "torch"), the
    precision mode ("float32", "tf32", "bf16", "3xtf32"; `gpubp.precision`) and how:
    gpubp's CUDA graph, gpubp's `CudaBackend(tensor_core_gemms=True)` opt-in (the
    per-layer tensor-core GEMMs), or `torch.compile`."""

    name: str
    library: str
    precision: str
    graph: bool = False
    tensor_core_gemms: bool = False
    compile: bool = False

    @property
    def opt_in(self) -> bool:
        """Whether the peer runs gpubp kernels that are off every default path (not yet verified
        on a GPU): the suite times those after the others, so that a faulting kernel cannot cost
        the other rows."""
        return self.tensor_core_gemms

    def backend_options(self) -> dict | None:
        """gpubp's `CudaBackend` keyword arguments for this peer (recorded in its rows)."""
        if self.library != "gpubp":
            return None
        return dict(fuse=True, tensor_core_gemms=self.tensor_core_gemms)


#: every GPU step peer, by name, in the order they are timed (the compiled ones last)
GPU_PEER_SPECS = {s.name: s for s in (
    PeerSpec("gpubp-cuda", "gpubp", "float32"),
    PeerSpec("gpubp-cuda-graph", "gpubp", "float32", graph=True),
    PeerSpec("gpubp-cuda-tf32", "gpubp", "tf32", tensor_core_gemms=True),
    # precision="tf32" on the default backend: TF32 in the fused narrow runs, float32 per-layer GEMMs
    PeerSpec("gpubp-cuda-tf32-default", "gpubp", "tf32"),
    PeerSpec("gpubp-cuda-bf16", "gpubp", "bf16", tensor_core_gemms=True),
    PeerSpec("gpubp-cuda-3xtf32", "gpubp", "3xtf32", tensor_core_gemms=True),
    PeerSpec("cupy-unfused", "cupy", "float32"),
    PeerSpec("torch-eager", "torch", "float32"),
    PeerSpec("torch-eager-tf32", "torch", "tf32"),
    PeerSpec("torch-autocast-bf16", "torch", "bf16"),
    PeerSpec("torch-compile", "torch", "float32", compile=True),
    PeerSpec("torch-compile-tf32", "torch", "tf32", compile=True),
    PeerSpec("torch-compile-bf16", "torch", "bf16", compile=True),
)}
#: the peers of a GPU step row, in the order they are timed
GPU_PEERS = tuple(n for n, s in GPU_PEER_SPECS.items() if not s.compile)
#: the `torch.compile` peers (timed last, on a few shapes: compiling takes long)
COMPILE_PEERS = tuple(n for n, s in GPU_PEER_SPECS.items() if s.compile)
#: the peers of a CPU step row
CPU_PEERS = ("gpubp-numpy", "torch-cpu", "sklearn")


# ----------------------------------------------------------------- data
def init_params(sizes, seed=0):
    """Host `[(W, b), ...]`, float32, PyTorch's nn.Linear initialisation."""
    rng = np.random.default_rng(seed)
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / np.sqrt(n_in)
        out.append((rng.uniform(-bound, bound, (n_out, n_in)).astype(F32),
                    rng.uniform(-bound, bound, n_out).astype(F32)))
    return out


def random_batches(xp, n_in, n_classes, batch, n_sets, seed=1):
    """`n_sets` distinct `(X, y)`: X standard normal float32 (never zeros), y int32 labels."""
    if xp is np:
        rng = np.random.default_rng(seed)
        return [(rng.standard_normal((batch, n_in), dtype=F32),
                 rng.integers(0, n_classes, batch, dtype=np.int32)) for _ in range(n_sets)]
    rs = xp.random.RandomState(seed)
    return [(rs.standard_normal((batch, n_in), dtype=F32),
             rs.randint(0, n_classes, size=batch, dtype=np.int32)) for _ in range(n_sets)]


# ----------------------------------------------------------------- gpubp
class GpubpStep:
    """gpubp's `MLP._step` (forward, backward, update; no host sync), or with
    `graph=True` the CUDA graph of `MLP.capture_train_step` (copy the batch in, replay)."""

    def __init__(self, backend, sizes, params, batch=None, optimizer="adam", lr=1e-3, graph=False,
                 first_batch=None, precision="float32"):
        from ..network import MLP
        from ..optim import SGD, Adam

        self.net = MLP(list(sizes), activation="relu", output_activation="identity",
                       loss="cross_entropy", backend=backend, dtype="float32", seed=0, precision=precision)
        self.net.set_params(params)
        self.opt = Adam(lr, betas=(ADAM["beta1"], ADAM["beta2"]), eps=ADAM["eps"]) \
            if optimizer == "adam" else SGD(lr)
        self.net._bind(self.net._resolve_optimizer(self.opt))   # as train_step binds it
        self.loss = self.net.backend.zeros((1,), np.float32)
        self._replay = None
        if graph:
            X, y = first_batch
            self._replay = self.net.capture_train_step(X, y, self.opt, check_inputs=False)

    def __call__(self, X, y):
        if self._replay is not None:
            self.loss = self._replay(X, y)
        else:
            self.net._step(X, y, self.opt, self.loss)

    def params_host(self):
        return self.net.get_params()

    def loss_value(self):
        return float(self.net.backend.to_numpy(self.loss)[0])


# ----------------------------------------------------------------- unfused
class _Elementwise:
    """One kernel per elementwise operation: CuPy ElementwiseKernels, or numpy on the host."""

    def __init__(self, xp):
        self.xp = xp
        if xp is np:
            return
        self._relu_bwd = xp.ElementwiseKernel("T a", "T d", "d = a > (T)0 ? d : (T)0", "unf_relu_bwd")
        self._sgd = xp.ElementwiseKernel("T g, float32 lr", "T p", "p -= lr * g", "unf_sgd")
        self._adam = xp.ElementwiseKernel(
            "T g, float32 b1, float32 b2, float32 step, float32 inv_sqrt_bc2, float32 eps",
            "T p, T m, T v",
            "m = b1 * m + (1.0f - b1) * g; v = b2 * v + (1.0f - b2) * g * g;"
            "p -= step * m / (sqrt(v) * inv_sqrt_bc2 + eps)",
            "unf_adam")

    def relu_bwd(self, d, a):
        if self.xp is np:
            np.multiply(d, a > 0, out=d)
        else:
            self._relu_bwd(a, d)

    def sgd(self, p, g, lr):
        if self.xp is np:
            p -= F32(lr) * g
        else:
            self._sgd(g, lr, p)

    def adam(self, p, g, m, v, lr, t):
        b1, b2, eps = ADAM["beta1"], ADAM["beta2"], ADAM["eps"]
        step, inv_sqrt_bc2 = lr / (1 - b1 ** t), 1.0 / np.sqrt(1 - b2 ** t)
        if self.xp is np:
            m *= F32(b1)
            m += F32(1 - b1) * g
            v *= F32(b2)
            v += F32(1 - b2) * g * g
            p -= F32(step) * m / (np.sqrt(v) * F32(inv_sqrt_bc2) + F32(eps))
        else:
            self._adam(g, b1, b2, step, inv_sqrt_bc2, eps, p, m, v)


class UnfusedStep:
    """The same step from library GEMMs plus separate elementwise kernels, per tensor."""

    def __init__(self, xp, sizes, params, batch, optimizer="adam", lr=1e-3):
        self.xp, self.sizes, self.opt, self.lr = xp, list(sizes), optimizer, lr
        self.W = [xp.asarray(W) for W, _ in params]
        self.b = [xp.asarray(b) for _, b in params]
        self.tensors = [t for pair in zip(self.W, self.b) for t in pair]
        self.grads = [xp.zeros_like(t) for t in self.tensors]
        self.m = [xp.zeros_like(t) for t in self.tensors]
        self.v = [xp.zeros_like(t) for t in self.tensors]
        self.A = [None] + [xp.empty((batch, n), F32) for n in sizes[1:]]
        self.D = [xp.empty((batch, n), F32) for n in sizes[1:]]
        self.rows = xp.arange(batch)
        self.ew = _Elementwise(xp)
        self.loss = None
        self.t = 0

    def __call__(self, X, y):
        xp, A, D, L, B = self.xp, self.A, self.D, len(self.sizes) - 1, X.shape[0]
        A[0] = X
        for l in range(L):                                   # forward
            Z = A[l + 1]
            xp.matmul(A[l], self.W[l].T, out=Z)              # GEMM
            xp.add(Z, self.b[l], out=Z)                      # bias add
            if l < L - 1:
                xp.maximum(Z, F32(0), out=Z)                 # activation
        logits, dL = A[L], D[L - 1]                          # softmax cross-entropy
        mx = logits.max(axis=1, keepdims=True)
        xp.subtract(logits, mx, out=dL)
        picked = dL[self.rows, y]
        xp.exp(dL, out=dL)
        s = dL.sum(axis=1, keepdims=True)
        self.loss = (xp.log(s[:, 0]) - picked).mean()
        xp.divide(dL, s, out=dL)
        dL[self.rows, y] -= F32(1)
        dL *= F32(1.0 / B)                                   # loss gradient
        for l in reversed(range(L)):                         # backward
            dW, db = self.grads[2 * l], self.grads[2 * l + 1]
            xp.matmul(D[l].T, A[l], out=dW)                  # dW GEMM
            xp.sum(D[l], axis=0, out=db)                     # db sum
            if l:
                xp.matmul(D[l], self.W[l], out=D[l - 1])     # delta GEMM
                self.ew.relu_bwd(D[l - 1], A[l])             # Hadamard with g'
        self.t += 1
        for i, (p, g) in enumerate(zip(self.tensors, self.grads)):   # update, per tensor
            if self.opt == "adam":
                self.ew.adam(p, g, self.m[i], self.v[i], self.lr, self.t)
            else:
                self.ew.sgd(p, g, self.lr)

    def params_host(self):
        get = (lambda a: a) if self.xp is np else (lambda a: a.get())
        return [(get(W), get(b)) for W, b in zip(self.W, self.b)]

    def loss_value(self):
        return float(self.loss)


# ----------------------------------------------------------------- PyTorch
def set_torch_tf32(enabled: bool) -> str:
    """Allow or forbid TF32 in float32 matmuls; returns torch's precision setting."""
    import torch

    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        torch.backends.cudnn.allow_tf32 = enabled
    except Exception:
        pass
    return torch.get_float32_matmul_precision()


class TorchStep:
    """PyTorch eager (or `torch.compile`d model): zero_grad, forward, loss, backward, step."""

    def __init__(self, device, sizes, params, batch=None, optimizer="adam", lr=1e-3, compile=False,
                 autocast=False):
        import torch

        self.torch = torch
        self.device_type = torch.device(device).type
        self.autocast = bool(autocast)
        layers = []
        for i, (W, b) in enumerate(params):
            lin = torch.nn.Linear(W.shape[1], W.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if i < len(params) - 1:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers).to(device)
        if optimizer == "adam":
            self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(ADAM["beta1"], ADAM["beta2"]),
                                        eps=ADAM["eps"])
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.lossf = torch.nn.CrossEntropyLoss()
        self.fwd = torch.compile(self.model) if compile else self.model
        self.loss = None

    def __call__(self, X, y):
        self.opt.zero_grad(set_to_none=True)
        if self.autocast:        # forward and loss in bf16 where autocast says so; backward outside
            with self.torch.autocast(self.device_type, dtype=self.torch.bfloat16):
                self.loss = self.lossf(self.fwd(X), y)
        else:
            self.loss = self.lossf(self.fwd(X), y)
        self.loss.backward()
        self.opt.step()

    def params_host(self):
        lins = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [(l.weight.detach().cpu().numpy(), l.bias.detach().cpu().numpy()) for l in lins]

    def loss_value(self):
        return float(self.loss.detach())


def torch_batches(batches, device):
    """The same batches as torch tensors on `device` (labels int64, as PyTorch wants)."""
    import torch

    out = []
    for X, y in batches:
        if isinstance(X, np.ndarray):
            tX, ty = torch.from_numpy(X), torch.from_numpy(y)
        else:                                   # CuPy: share device memory through DLPack
            tX, ty = torch.from_dlpack(X), torch.from_dlpack(y)
        out.append((tX.to(device), ty.to(device=device, dtype=torch.int64)))
    return out


# ----------------------------------------------------------------- scikit-learn
class SklearnStep:
    """scikit-learn's MLPClassifier; one `partial_fit` of one batch is one step."""

    def __init__(self, sizes, params, batch, optimizer="adam", lr=1e-3, classes_batch=None):
        from sklearn.neural_network import MLPClassifier

        kw = dict(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver=optimizer,
                  learning_rate_init=lr, batch_size=batch, alpha=0.0, shuffle=False, random_state=0)
        if optimizer == "sgd":
            kw.update(momentum=0.0, nesterovs_momentum=False)
        else:
            kw.update(beta_1=ADAM["beta1"], beta_2=ADAM["beta2"], epsilon=ADAM["eps"])
        self.clf = MLPClassifier(**kw)
        self.classes = np.arange(sizes[-1])
        X, y = classes_batch
        self.clf.partial_fit(X, y, classes=self.classes)   # allocates and initialises

    def __call__(self, X, y):
        self.clf.partial_fit(X, y)

    def loss_value(self):
        return float(self.clf.loss_)
