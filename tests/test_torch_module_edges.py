"""gpubp.torch.FusedMLP at its edges: seed bounds, refusals (non-Sequential, mixed layers, devices it
does not run on), reset/load_state_dict in place, and what a no_grad forward keeps."""

import gc
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
nn = torch.nn

from gpubp.backends import NumpyBackend  # noqa: E402
from gpubp.torch import FusedMLP  # noqa: E402


# ------------------------------------------------------------------ seed
@pytest.mark.parametrize("seed", [-2 ** 63, -1, 200, 2 ** 64 - 1])
def test_every_seed_torchs_generator_takes_is_taken(seed):
    """The seed's range is torch.Generator's, [-2**63, 2**64): the ends and a negative seed build,
    with the numbers nn.Linear draws after torch.manual_seed(seed) (as the class docstring says)."""
    torch.Generator().manual_seed(seed)             # torch takes it
    net = FusedMLP([3, 4, 2], seed=seed)
    torch.manual_seed(seed)
    ref = [nn.Linear(3, 4), nn.Linear(4, 2)]
    for (W, b), lin in zip(net.layers(), ref):
        assert torch.equal(W, lin.weight) and torch.equal(b, lin.bias)


@pytest.mark.parametrize("seed", [-2 ** 63 - 1, 2 ** 64])
def test_a_seed_torchs_generator_refuses_is_refused(seed):
    with pytest.raises(ValueError, match="Overflow"):   # torch.Generator refuses it too
        torch.Generator().manual_seed(seed)
    with pytest.raises(ValueError, match=rf"seed must be in \[-2\*\*63, 2\*\*64\) .*got {seed}$"):
        FusedMLP([3, 4, 2], seed=seed)


# ------------------------------------------------------------------ reset_parameters
def test_reset_parameters_refuses_a_wrongly_shaped_parameter_and_changes_nothing():
    """A bias of shape (2, 5) for a layer of 5 would take the (5,) draw broadcast over it: refused
    as forward refuses it, before anything is drawn."""
    net = FusedMLP([3, 5, 2], seed=0)
    net.bias_1 = nn.Parameter(torch.ones(2, 5))
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"bias_1 has shape \(2, 5\); layer 1 .* takes \(5,\)"):
        net.reset_parameters()
    for p, q in zip(net.parameters(), before):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ load_state_dict
def test_load_state_dict_copies_into_the_parameters_as_nn_modules_does():
    """assign=False by default, as nn.Module's: the parameters stay the same objects (an optimizer
    holding them keeps working) and do not share memory with the state dict's tensors."""
    net = FusedMLP([3, 5, 2], seed=0)
    params = list(net.parameters())
    ptrs = [p.data_ptr() for p in params]
    sd = FusedMLP([3, 5, 2], seed=1).state_dict()
    net.load_state_dict(sd)
    assert all(p is q for p, q in zip(params, net.parameters()))
    assert [p.data_ptr() for p in net.parameters()] == ptrs
    for (name, t), p in zip(sd.items(), net.parameters()):
        assert torch.equal(p, t), name
        t.add_(1.0)                                  # the state dict's tensors are not the module's
        assert not torch.equal(p, t), name


# ------------------------------------------------------------------ from_sequential refusals
@pytest.mark.parametrize("make", [
    lambda: nn.ModuleList([nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)]),
    lambda: nn.Linear(3, 4),
], ids=["ModuleList", "Linear"])
def test_from_sequential_refuses_what_is_not_an_nn_sequential(make):
    m = make()
    with pytest.raises(TypeError, match=f"from_sequential takes an nn.Sequential, got {type(m).__name__}$"):
        FusedMLP.from_sequential(m)


def test_from_sequential_refuses_an_empty_sequential():
    with pytest.raises(ValueError, match="from_sequential needs at least one nn.Linear"):
        FusedMLP.from_sequential(nn.Sequential())


def test_from_sequential_names_the_sizes_that_do_not_chain():
    """The third Linear takes 3 inputs where the second gives 4 (nn.Sequential fails on it too)."""
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(RuntimeError):
        seq(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"module 4 \(Linear\(in_features=3.*\)\) takes 3 inputs but the layer "
                                         r"before gives 4$"):
        FusedMLP.from_sequential(seq)


def _retyped(lin, weight=None, bias=None):
    if weight is not None:
        lin.weight = nn.Parameter(weight(lin.weight.detach()))
    if bias is not None:
        lin.bias = nn.Parameter(bias(lin.bias.detach()))
    return lin


def _meta(t):
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


@pytest.mark.parametrize("layers, match", [
    (lambda: [nn.Linear(3, 4), _retyped(nn.Linear(4, 2), weight=torch.Tensor.double, bias=torch.Tensor.double)],
     "layer 1 is torch.float32 on cpu, layer 2 has torch.float64/torch.float64 on cpu"),
    (lambda: [_retyped(nn.Linear(3, 4), weight=torch.Tensor.double, bias=torch.Tensor.double), nn.Linear(4, 2)],
     "layer 1 is torch.float64 on cpu, layer 2 has torch.float32/torch.float32 on cpu"),
    (lambda: [nn.Linear(3, 4), _retyped(nn.Linear(4, 2), bias=torch.Tensor.double)],
     "layer 1 is torch.float32 on cpu, layer 2 has torch.float32/torch.float64 on cpu"),
    (lambda: [nn.Linear(3, 4), _retyped(nn.Linear(4, 2), weight=_meta)],
     "layer 1 is torch.float32 on cpu, layer 2 has torch.float32/torch.float32 on meta"),
    (lambda: [nn.Linear(3, 4), _retyped(nn.Linear(4, 2), bias=_meta)],
     "layer 1 is torch.float32 on cpu, layer 2 has torch.float32/torch.float32 on cpu"),
], ids=["weight_and_bias_dtype", "first_layer_dtype", "bias_dtype", "weight_device", "bias_device"])
def test_from_sequential_refuses_layers_of_mixed_dtypes_or_devices(layers, match):
    """FusedMLP computes in one dtype on one device (nn.Sequential of layers of mixed dtypes does not
    run either: torch refuses the matmul)."""
    first, second = layers()
    seq = nn.Sequential(first, nn.Tanh(), second)
    if not any(p.is_meta for p in seq.parameters()):
        with pytest.raises(RuntimeError):
            seq(torch.zeros(2, 3, dtype=first.weight.dtype))
    with pytest.raises(ValueError, match=f"the nn.Linear layers must share one dtype and device; {match}$"):
        FusedMLP.from_sequential(seq)


# ------------------------------------------------------------------ devices
def test_tensors_on_a_device_without_a_backend_are_refused():
    """Parameters and input both on the meta device: the devices agree, but no gpubp backend runs
    there (nn.Linear would compute shapes only); a ValueError naming the device."""
    net = FusedMLP([3, 4, 2], seed=0, device="meta")
    for grad in (True, False):
        with torch.set_grad_enabled(grad), pytest.raises(
                ValueError, match="FusedMLP runs on CPU tensors .numpy backend. and CUDA tensors .cuda backend.; "
                                  "got a tensor on meta$"):
            net(torch.zeros(2, 3, device="meta"))


# ------------------------------------------------------------------ what a forward keeps
class _PooledBackend(NumpyBackend):
    """A numpy backend whose buffers are views of larger pooled arrays (as a backend with a memory
    pool hands out), recording a weak reference to each pool array."""

    def __init__(self):
        super().__init__()
        self.pools = []

    def empty(self, shape, dtype):
        pool = np.empty((shape[0] + 3, *shape[1:]), dtype=dtype)
        self.pools.append(weakref.ref(pool))
        return pool[:shape[0]]


def test_a_no_grad_forward_hands_out_the_output_alone_not_the_buffer_it_views():
    """The class docstring: under torch.no_grad only the output is kept.  Where the backend's output
    array views a larger buffer, the output is a copy of its rows, and no buffer of the step plan
    stays alive through it."""
    be = _PooledBackend()
    net = FusedMLP([4, 6, 3], activation="tanh", output_activation="sigmoid", seed=0, dtype=torch.float64,
                   backend=be)
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        y = net(x)
    gc.collect()
    assert be.pools, "the backend's buffers were not used"
    assert all(ref() is None for ref in be.pools), "the output kept a buffer of the step plan alive"
    assert torch.allclose(y, net.to_sequential()(x), rtol=1e-12, atol=0)
    # with a graph the same backend trains as nn.Sequential does
    xg = x.clone().requires_grad_(True)
    net(xg).pow(2).sum().backward()
    seq = net.to_sequential()
    xs = x.clone().requires_grad_(True)
    seq(xs).pow(2).sum().backward()
    assert torch.allclose(xg.grad, xs.grad, rtol=1e-12, atol=1e-15)
    for p, q in zip(net.parameters(), seq.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ work asked of the backend
class _SpyBackend(NumpyBackend):
    """A numpy backend recording, for each backward, whether its plan has room for dLoss/dX."""

    def __init__(self):
        super().__init__()
        self.input_grads = []

    def network_backward(self, plan, layers, grads):
        self.input_grads.append(plan.delta[0] is not None)
        return super().network_backward(plan, layers, grads)


def test_the_input_gradient_is_computed_only_when_the_input_requires_grad():
    """As autograd skips what `needs_input_grad` says is not needed: training on data that does not
    require grad (the usual case) does not compute dLoss/dX (a (batch, n_0) product of the first
    layer); an input that requires grad gets it, equal to nn.Sequential's."""
    be = _SpyBackend()
    net = FusedMLP([4, 6, 3], activation="tanh", seed=0, dtype=torch.float64, backend=be)
    x = torch.randn(5, 4, dtype=torch.float64)
    net(x).pow(2).sum().backward()
    assert be.input_grads == [False]
    assert net.weight_1.grad is not None
    xg = x.clone().requires_grad_(True)
    net(xg).pow(2).sum().backward()
    assert be.input_grads == [False, True]
    xs = x.clone().requires_grad_(True)
    net.to_sequential()(xs).pow(2).sum().backward()
    assert torch.allclose(xg.grad, xs.grad, rtol=1e-12, atol=1e-15)


def test_from_sequential_takes_nn_identity_anywhere_as_the_no_op_it_is():
    """nn.Identity before or after a layer's activation changes nothing in the Sequential, so the
    layer keeps that activation (it is not taken for a second activation of the layer)."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Identity(), nn.Linear(5, 4), nn.Identity(), nn.Tanh(),
                        nn.Linear(4, 2), nn.Identity()).double()
    net = FusedMLP.from_sequential(seq)
    assert net.activations == ("relu", "tanh", "identity")
    x = torch.randn(6, 3, dtype=torch.float64)
    assert torch.allclose(net(x), seq(x), rtol=1e-12, atol=1e-15)


def test_from_sequential_keeps_each_frozen_bias_frozen():
    """requires_grad is kept per tensor: a frozen bias (a weight left trainable) stays frozen, and
    training then moves only what nn.Sequential's own optimizer step would move."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    seq[0].bias.requires_grad_(False)
    seq[2].bias.requires_grad_(False)
    net = FusedMLP.from_sequential(seq)
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, False]
    net(torch.randn(4, 3)).sum().backward()
    assert net.bias_1.grad is None and net.bias_2.grad is None and net.weight_2.grad is not None


# ------------------------------------------------------------------ repr
def test_repr_names_the_network_as_built():
    """print(model) shows what nn.Linear's repr would not: the sizes, activations, precision, backend
    (a Backend instance by its name) and the parameters' dtype and device."""
    assert repr(FusedMLP([3, 4, 2], seed=0)) == (
        "FusedMLP(layer_sizes=[3, 4, 2], activations=['relu', 'identity'], precision='float32', "
        "backend='auto', dtype=torch.float32, device=cpu)")
    net = FusedMLP([3, 4, 5, 2], activation=["tanh", "gelu"], output_activation="sigmoid", precision="tf32",
                   seed=0, backend=NumpyBackend())
    assert net.extra_repr() == ("layer_sizes=[3, 4, 5, 2], activations=['tanh', 'gelu', 'sigmoid'], "
                                "precision='tf32', backend='numpy', dtype=torch.float32, device=cpu")
    assert net.double().extra_repr().endswith("dtype=torch.float64, device=cpu")
    assert "device=meta" in repr(FusedMLP([3, 2], seed=0, device="meta"))
