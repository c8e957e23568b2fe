"""gpubp.torch.FusedMLP on CUDA tensors (the cuda backend through DLPack) against PyTorch on the same device.

Skipped without CuPy, PyTorch with CUDA, or a CUDA device.
"""

import pytest

cupy = pytest.importorskip("cupy")
torch = pytest.importorskip("torch")
try:
    _N_DEV = cupy.cuda.runtime.getDeviceCount()
except Exception:  # no driver / no device
    _N_DEV = 0

pytestmark = [pytest.mark.gpu, pytest.mark.torch,
              pytest.mark.skipif(_N_DEV == 0 or not torch.cuda.is_available(),
                                 reason="needs a CUDA device seen by CuPy and PyTorch")]

from gpubp.activations import ACTIVATIONS  # noqa: E402
from gpubp.torch import FusedMLP  # noqa: E402

nn = torch.nn
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def grads_of(module, x, w):
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    (out * w).sum().backward()
    return out.detach(), x.grad, [p.grad for p in module.parameters()]


@pytest.mark.parametrize("B", [7, 1100])           # 1100 rows: the fused narrow-layer kernels take over
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_cuda_gradients_equal_autograd(act, dtype, B):
    net = FusedMLP([9, 32, 17, 5], activation=act, output_activation=act, seed=0, dtype=dtype, device="cuda")
    seq = net.to_sequential()
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(B, 9, generator=g, device="cuda", dtype=dtype)
    w = torch.randn(B, 5, generator=g, device="cuda", dtype=dtype)
    out, dx, dp = grads_of(net, x, w)
    ref_out, ref_dx, ref_dp = grads_of(seq, x, w)         # PyTorch's default: full float32 (no TF32)
    assert out.device.type == "cuda" and dx.device.type == "cuda"
    tol = TOL[dtype]
    assert rel(out, ref_out) < tol
    assert rel(dx, ref_dx) < tol
    for a, b in zip(dp, ref_dp):
        assert a.device.type == "cuda" and rel(a, b) < tol


def test_cuda_equals_cpu_and_runs_on_torchs_stream():
    net = FusedMLP([6, 16, 3], activation="gelu", seed=0, dtype=torch.float64)
    x = torch.randn(50, 6, dtype=torch.float64)
    ref = net(x)
    net_cuda = FusedMLP([6, 16, 3], activation="gelu", seed=0, dtype=torch.float64, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        xc = x.to("cuda", non_blocking=True)
        y = net_cuda(xc)                 # queued on `side`, after the copy
        y.sum().backward()
    side.synchronize()
    assert rel(y, ref) < 1e-12
    net(x).sum().backward()
    assert rel(net_cuda.weight_1.grad, net.weight_1.grad) < 1e-12


def test_cuda_no_grad_and_two_forwards():
    net = FusedMLP([5, 8, 2], activation="silu", output_activation="sigmoid", seed=0, device="cuda",
                   dtype=torch.float64)
    seq = net.to_sequential()
    x1, x2 = torch.randn(4, 5, device="cuda", dtype=torch.float64), torch.randn(4, 5, device="cuda",
                                                                             dtype=torch.float64)
    with torch.no_grad():
        assert rel(net(x1), seq(x1)) < 1e-12
    for m in (net, seq):
        y1, y2 = m(x1), m(x2)
        (y1.pow(2).sum() + y2.sum()).backward()
    for a, b in zip(net.parameters(), seq.parameters()):
        assert rel(a.grad, b.grad) < 1e-12


def test_cuda_input_on_cpu_module_is_refused():
    net = FusedMLP([3, 2], seed=0)
    with pytest.raises(ValueError, match="cuda"):
        net(torch.zeros(2, 3, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_backward_reads_the_saved_tensors_as_unpacked(dtype):
    """Backward binds the input and activations from the saved tensors: under save_on_cpu they come
    back at new addresses (the fused kernels' input copy and pointer tables are made again), and a
    second backward through a retained graph binds them into a fresh plan."""
    net = FusedMLP([9, 32, 17, 5], activation="gelu", output_activation="tanh", seed=0, dtype=dtype,
                   device="cuda")
    seq = net.to_sequential()
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(1100, 9, generator=g, device="cuda", dtype=dtype)      # 1100 rows: float32 runs fused
    grads = []
    for m in (net, seq):
        xi = x.clone().requires_grad_(True)
        with torch.autograd.graph.save_on_cpu():
            y = m(xi)
        y.pow(2).sum().backward(retain_graph=True)
        y.sum().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert a.device.type == "cuda" and rel(a, b) < TOL[dtype]


def test_cuda_autocast_input_is_cast():
    """Under torch.autocast("cuda") the bfloat16 output of an nn.Linear is cast to FusedMLP's float32."""
    torch.manual_seed(0)
    lin = nn.Linear(9, 32, device="cuda")
    fused = FusedMLP([32, 16, 5], activation="silu", seed=0, device="cuda")
    x = torch.randn(64, 9, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = lin(x)
        y = fused(h)
        ref = fused(h.float())
    assert h.dtype == torch.bfloat16 and y.dtype == torch.float32 and torch.equal(y, ref)
    y.sum().backward()
    assert lin.weight.grad is not None and fused.weight_1.grad is not None


def test_cuda_default_device_gets_the_cpu_draws():
    """Under `with torch.device("cuda")` the parameters are drawn on the CPU as documented and land on
    the GPU: `seed=` raised (its CPU generator for CUDA tensors), and without it the numbers came
    from the CUDA generator, not those of nn.Linear built on the CPU."""
    with torch.device("cuda"):
        net = FusedMLP([4, 6, 3], seed=3)
        torch.manual_seed(5)
        net2 = FusedMLP([4, 6, 3])
    ref = FusedMLP([4, 6, 3], seed=3)
    torch.manual_seed(5)
    ref2 = FusedMLP([4, 6, 3])
    assert net.weight_1.device.type == "cuda" and net2.weight_1.device.type == "cuda"
    for p, q in zip([*net.parameters(), *net2.parameters()], [*ref.parameters(), *ref2.parameters()]):
        assert torch.equal(p.cpu(), q)
