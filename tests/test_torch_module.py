"""gpubp.torch.FusedMLP: gradients, training, serialisation, compile and DDP equal PyTorch's own modules."""

import contextlib
import datetime
import io
import socket
import subprocess
import sys
import time
import warnings
import weakref

import numpy as np
import pytest
from conftest import ACTIVATIONS, rel_err

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
nn = torch.nn

import gpubp.torch as gtorch  # noqa: E402
from gpubp.backends import NumpyBackend  # noqa: E402
from gpubp.backends.numpy_backend import activation_backward_inplace  # noqa: E402
from gpubp.torch import FusedMLP  # noqa: E402

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def grads_of(module, x, weights):
    """Output, d(sum(out * weights))/dx and d/dparams, by autograd through `module`."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    (out * weights).sum().backward()
    return out.detach(), x.grad, [p.grad for p in module.parameters()]


def assert_close(out, ref, tol, what):
    err = rel_err(out.detach().double().numpy(), ref.detach().double().numpy())
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol}"


# ------------------------------------------------------------------ import and construction
def test_import_gpubp_does_not_import_torch():
    code = "import sys, gpubp; assert 'torch' not in sys.modules, 'import gpubp imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_init_equals_nn_linear_from_the_same_seed():
    torch.manual_seed(123)
    ref = [nn.Linear(4, 6), nn.Linear(6, 3)]
    net = FusedMLP([4, 6, 3], seed=123)
    torch.manual_seed(123)                      # seed=None: torch's global generator, as nn.Linear
    net2 = FusedMLP([4, 6, 3])
    for (W, b), lin in zip(net.layers(), ref):
        assert torch.equal(W, lin.weight) and torch.equal(b, lin.bias)
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(FusedMLP([4, 6, 3], seed=124).weight_1, net.weight_1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_init_equals_nn_linear_of_the_dtype_bit_for_bit(dtype):
    """nn.Linear draws its weight with kaiming_uniform_(a=sqrt(5)), whose bound
    sqrt(3) * sqrt(2 / (1 + a**2)) / sqrt(fan_in) is 1/sqrt(fan_in) only up to rounding: FusedMLP
    drew within 1/sqrt(fan_in), and its float64 weights differed from nn.Linear's in the last bit
    for most fan_in (here 5 and 8)."""
    net = FusedMLP([5, 8, 3, 2], seed=42, dtype=dtype)
    torch.manual_seed(42)
    ref = [nn.Linear(5, 8, dtype=dtype), nn.Linear(8, 3, dtype=dtype), nn.Linear(3, 2, dtype=dtype)]
    for (W, b), lin in zip(net.layers(), ref):
        assert torch.equal(W, lin.weight) and torch.equal(b, lin.bias)


def test_reset_parameters_draws_the_constructors_numbers_in_place():
    """nn.Linear's `reset_parameters`, which meta-device initialisation (`to_empty`, FSDP's) calls:
    FusedMLP had none, so its parameters could not be initialised after `to_empty` (memory left
    as it was)."""
    ref = FusedMLP([4, 6, 3], seed=7, dtype=torch.float64)
    net = FusedMLP([4, 6, 3], seed=7, dtype=torch.float64, device="meta").to_empty(device="cpu")
    params = list(net.parameters())
    net.reset_parameters()
    assert all(p is q for p, q in zip(params, net.parameters()))       # in place: optimizers keep them
    for p, q in zip(ref.parameters(), net.parameters()):
        assert torch.equal(p, q)
    torch.manual_seed(3)                       # seed=None: torch's global generator, as nn.Linear's
    ref = FusedMLP([4, 6, 3])
    net = FusedMLP.from_sequential(ref.to_sequential())
    with torch.no_grad():
        net.weight_1.zero_()
    torch.manual_seed(3)
    net.reset_parameters()
    for p, q in zip(ref.parameters(), net.parameters()):
        assert torch.equal(p, q)


def test_default_device_meta_builds_without_drawing():
    """device=None is torch's default device, as for nn.Linear: under `with torch.device("meta")`
    the parameters are meta tensors, and nothing is drawn (the global generator does not move)."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with torch.device("meta"):
        a = FusedMLP([4, 6, 3], seed=1)
        b = FusedMLP([4, 6, 3])
    assert torch.equal(torch.rand(3), expected)
    assert all(p.is_meta for p in [*a.parameters(), *b.parameters()])


def test_parameters_in_linear_layout_and_order():
    net = FusedMLP([5, 7, 2], dtype=torch.float64)
    names = [n for n, _ in net.named_parameters()]
    assert names == ["weight_1", "bias_1", "weight_2", "bias_2"]
    assert [tuple(p.shape) for p in net.parameters()] == [(7, 5), (7,), (2, 7), (2,)]
    assert all(isinstance(p, nn.Parameter) and p.dtype == torch.float64 for p in net.parameters())


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(layer_sizes=[3]), ValueError, "at least two"),
    (dict(layer_sizes=[3, 0, 2]), ValueError, "at least 1"),
    (dict(layer_sizes="32"), TypeError, "layer_sizes"),
    (dict(layer_sizes=[3, 4, 2], activation="softplus"), ValueError, "unknown activation"),
    (dict(layer_sizes=[3, 4, 2], activation=["relu", "tanh"]), ValueError, "one name per hidden layer"),
    (dict(layer_sizes=[3, 2], output_activation="soft"), ValueError, "output_activation"),
    (dict(layer_sizes=[3, 2], precision="half"), ValueError, "precision"),
    (dict(layer_sizes=[3, 2], precision="tf32", dtype=torch.float64), ValueError, "tf32"),
    (dict(layer_sizes=[3, 2], dtype=torch.float16), ValueError, "dtype"),
    (dict(layer_sizes=[3, 2], backend="tpu"), ValueError, "backend"),
    (dict(layer_sizes=[3, 2], seed=1.5), TypeError, "seed"),
    (dict(layer_sizes=[3, 2], seed=2 ** 64), ValueError, r"seed must be in \[-2\*\*63, 2\*\*64\)"),
])
def test_bad_construction_is_refused(kwargs, err, match):
    with pytest.raises(err, match=match):
        FusedMLP(**kwargs)


# ------------------------------------------------------------------ gradients against autograd
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradients_equal_autograd_through_sequential(act, dtype):
    g = torch.Generator().manual_seed(7)
    net = FusedMLP([5, 8, 6, 3], activation=act, output_activation=act, seed=1, dtype=dtype)
    seq = net.to_sequential()
    x = torch.randn(9, 5, generator=g, dtype=dtype) * 2
    w = torch.randn(9, 3, generator=g, dtype=dtype)
    out, dx, dp = grads_of(net, x, w)
    ref_out, ref_dx, ref_dp = grads_of(seq, x, w)
    tol = TOL[dtype]
    assert_close(out, ref_out, tol, "output")
    assert_close(dx, ref_dx, tol, "dLoss/dx")
    names = [n for n, _ in net.named_parameters()]
    assert len(dp) == len(ref_dp) == 6
    for name, a, b in zip(names, dp, ref_dp):
        assert a.dtype == dtype and a.shape == b.shape
        assert_close(a, b, tol, f"dLoss/d{name}")



@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradcheck_float64(act):
    """torch.autograd.gradcheck (finite differences) with respect to the input and every parameter."""
    net = FusedMLP([3, 5, 2], activation=act, output_activation=act, seed=1, dtype=torch.float64)
    names = [n for n, _ in net.named_parameters()]
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def f(x, *params):
        return torch.func.functional_call(net, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(f, (x, *net.parameters()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 13])
def test_odd_batches_and_non_contiguous_tensors(batch, dtype):
    """Batch sizes 1 and a prime; a strided input and a transposed (non-contiguous) weight: the same
    outputs and gradients as nn.Sequential, and the input's gradient lands in its own strided rows."""
    g = torch.Generator().manual_seed(batch)
    net = FusedMLP([4, 7, 3], activation="tanh", output_activation="sigmoid", seed=3, dtype=dtype)
    with torch.no_grad():
        net.weight_1.data = net.weight_1.data.t().contiguous().t()
    assert not net.weight_1.is_contiguous()
    seq = net.to_sequential()
    big = torch.randn(2 * batch, 4, generator=g, dtype=dtype)
    w = torch.randn(batch, 3, generator=g, dtype=dtype)
    results = []
    for m in (net, seq):
        xb = big.clone().requires_grad_(True)
        x = xb[::2]
        assert not x.is_contiguous() or batch == 1
        out = m(x)
        (out * w).sum().backward()
        results.append((out.detach(), xb.grad, [p.grad for p in m.parameters()]))
    (out, gx, gp), (ref, ref_gx, ref_gp) = results
    tol = TOL[dtype]
    assert_close(out, ref, tol, "output")
    assert_close(gx, ref_gx, tol, "dLoss/dx")
    assert torch.equal(gx[1::2], torch.zeros_like(gx[1::2]))
    for a, b in zip(gp, ref_gp):
        assert_close(a, b, tol, "parameter gradient")

def test_mixed_activations_and_leading_dimensions():
    net = FusedMLP([4, 6, 5, 2], activation=["gelu", "leaky_relu"], output_activation="sigmoid", seed=3,
                   dtype=torch.float64)
    seq = net.to_sequential()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    w = torch.randn(2, 3, 2, dtype=torch.float64)
    out, dx, dp = grads_of(net, x, w)
    ref_out, ref_dx, ref_dp = grads_of(seq, x, w)
    assert out.shape == (2, 3, 2) and dx.shape == (2, 3, 4)
    assert_close(out, ref_out, 1e-12, "output")
    assert_close(dx, ref_dx, 1e-12, "dx")
    for a, b in zip(dp, ref_dp):
        assert_close(a, b, 1e-12, "parameter gradient")
    one = net(x[0, 0])                       # a single sample without a batch dimension
    assert one.shape == (2,) and torch.allclose(one, ref_out[0, 0], rtol=1e-12, atol=0)


def test_gradients_flow_through_a_larger_model():
    torch.manual_seed(0)
    before, after = nn.Linear(3, 6).double(), nn.Linear(4, 2).double()
    fused = FusedMLP([6, 10, 4], activation="tanh", output_activation="silu", seed=5, dtype=torch.float64)
    model = nn.Sequential(before, fused, nn.ReLU(), after)
    ref = nn.Sequential(before, fused.to_sequential(), nn.ReLU(), after)
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    losses, grads = [], []
    for m in (model, ref):
        m.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in m.parameters()])
    assert abs(losses[0] - losses[1]) < 1e-12 * abs(losses[1])
    assert len(grads[0]) == len(grads[1]) == 8
    for a, b in zip(*grads):
        assert a is not None and a.abs().sum() > 0
        assert_close(a, b, 1e-12, "gradient")


def test_only_what_requires_grad_gets_a_gradient():
    net = FusedMLP([3, 4, 2], seed=0, dtype=torch.float64)
    net.weight_1.requires_grad_(False)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    net(x).sum().backward()
    assert net.weight_1.grad is None and net.bias_1.grad is not None and x.grad is not None
    x2 = torch.randn(5, 3, dtype=torch.float64)            # input without grad: parameters only
    net.zero_grad()
    net(x2).sum().backward()
    assert net.weight_2.grad is not None


@pytest.mark.parametrize("where", ["numpy", "emulated cupy"])
def test_activation_grad_formulas_equal_the_numpy_backend(where):
    """The elementwise formulas the cuda path uses for the output activation, run with numpy and with
    the fake CuPy of GPUBP_EMULATE_GPU=1 (tests/support/fake_cupy.py), as FusedMLP's CUDA bridge calls
    them: silu's `xp.ones_like` was missing from the fake (real CuPy has it), so the emulated CUDA path
    failed with an AttributeError."""
    from gpubp.backends.numpy_backend import activation_forward
    if where == "numpy":
        xp, to_xp, to_np = np, np.copy, np.asarray
    else:
        from support.fake_cupy import FakeCupy
        xp = FakeCupy(execute=True)
        to_xp, to_np = xp.asarray, xp.asnumpy
    rng = np.random.default_rng(0)
    z = rng.standard_normal((7, 5)) * 4
    z[0, :3] = [0.0, 40.0, -40.0]
    for act in ACTIVATIONS:
        a = activation_forward(act, z, np.empty_like(z))
        d = rng.standard_normal(z.shape)
        ref = activation_backward_inplace(act, d.copy(), a, z)
        out = gtorch.activation_grad_xp(xp, act, to_xp(d), to_xp(a), to_xp(z))
        assert isinstance(out, xp.ndarray), act
        assert rel_err(to_np(out), ref) < 1e-14, act



def test_activation_grad_refuses_an_unknown_name():
    """activation_grad_xp (public) takes gpubp's activation names only, as the numpy backend does: any
    other name is a ValueError, not the incoming gradient returned unchanged (the identity's)."""
    d = np.ones((2, 3))
    with pytest.raises(ValueError, match="softplus"):
        activation_backward_inplace("softplus", d.copy(), d, d)
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        gtorch.activation_grad_xp(np, "softplus", d.copy(), d, d)


# ------------------------------------------------------------------ graph state
def _spy_on_passes(monkeypatch):
    """Weak references to the hidden activation arrays of every forward pass."""
    refs = []
    real = gtorch._forward_pass

    def spy(*args, **kwargs):
        fwd = real(*args, **kwargs)
        refs.append(weakref.ref(fwd.A[1]))
        return fwd

    monkeypatch.setattr(gtorch, "_forward_pass", spy)
    return refs


def test_no_grad_keeps_no_activations(monkeypatch):
    refs = _spy_on_passes(monkeypatch)
    net = FusedMLP([4, 8, 2], seed=0, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        y = net(x)
    assert not y.requires_grad and y.grad_fn is None
    assert refs[-1]() is None, "a no_grad forward kept its hidden activations"
    assert torch.allclose(y, net.to_sequential()(x), rtol=1e-12, atol=0)
    with torch.inference_mode():
        assert torch.allclose(net(x), y, rtol=0, atol=0)


def test_backward_frees_the_activations_and_retain_graph_works(monkeypatch):
    refs = _spy_on_passes(monkeypatch)
    net = FusedMLP([4, 8, 2], activation="gelu", output_activation="tanh", seed=0, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = net(x)
    assert refs[-1]() is not None, "the graph must keep what backward needs"
    y.sum().backward(retain_graph=True)
    g1, gx1 = net.weight_1.grad.clone(), x.grad.clone()
    y.sum().backward()                          # second backward through the retained graph
    assert torch.allclose(net.weight_1.grad, 2 * g1, rtol=1e-14, atol=0)
    assert torch.allclose(x.grad, 2 * gx1, rtol=1e-14, atol=0)
    assert refs[-1]() is None, "backward without retain_graph must free the activations"
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


def _fused_and_sequential(activation, output_activation):
    """A float64 FusedMLP, its nn.Sequential twin and an input batch for both."""
    net = FusedMLP([3, 6, 5, 2], activation=activation, output_activation=output_activation, seed=0,
                   dtype=torch.float64)
    return net, net.to_sequential(), torch.randn(4, 3, dtype=torch.float64)


def test_backward_reads_what_saved_tensor_hooks_unpack(monkeypatch):
    """Under `saved_tensors_hooks` that pack copies, backward must read the unpacked copies, as
    PyTorch's ops do: it read the plan's own view of the input, so an input changed in place
    after the forward (which the copy hides from the version check) gave wrong weight gradients
    silently; and the plan kept the activations alive that the hook had moved away."""
    refs = _spy_on_passes(monkeypatch)
    net, seq, x = _fused_and_sequential("silu", "tanh")
    grads = []
    for m in (net, seq):
        xi = x.clone().requires_grad_(False)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            y = m(xi)
        if m is net:
            assert refs[-1]() is None, "the plan kept an activation that the hook had copied"
        xi.mul_(10)                              # after the forward: the saved copy is the input
        y.pow(2).sum().backward(retain_graph=True)
        y.sum().backward()                       # and again, through the retained graph
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert_close(a, b, 1e-12, "gradient")


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing(monkeypatch, reentrant):
    """torch.utils.checkpoint: the gradients equal nn.Sequential's, and the non-reentrant form,
    whose hooks drop the saved tensors, really frees the forward's activations (the plan kept
    them) and recomputes them for the backward."""
    from torch.utils.checkpoint import checkpoint

    refs = _spy_on_passes(monkeypatch)
    net, seq, x = _fused_and_sequential("gelu", "sigmoid")
    grads = []
    for m in (net, seq):
        xi = x.clone().requires_grad_(True)
        y = checkpoint(m, xi, use_reentrant=reentrant)
        if m is net:
            assert refs[-1]() is None, "a checkpointed forward kept its activations"
        y.pow(2).sum().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    assert len(refs) == 2                        # the forward, and its recomputation for the backward
    for a, b in zip(*grads):
        assert_close(a, b, 1e-12, "gradient")


def test_second_forward_before_backward_keeps_the_first():
    net = FusedMLP([4, 8, 5, 3], activation="gelu", output_activation="sigmoid", seed=2, dtype=torch.float64)
    seq = net.to_sequential()
    x1, x2 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    for m in (net, seq):
        m.zero_grad()
        y1 = m(x1)
        y2 = m(x2)                               # same batch shape, before y1's backward
        (y1.pow(2).sum() + 3 * y2.sum()).backward()
    for a, b in zip(net.parameters(), seq.parameters()):
        assert_close(a.grad, b.grad, 1e-12, "gradient")


def test_in_place_changes_before_backward_are_refused():
    net = FusedMLP([3, 4, 2], output_activation="sigmoid", seed=0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = net(x)
    y.mul_(2)                                   # backward reads the output: refused, not wrong
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    y = net(x)
    with torch.no_grad():
        net.weight_2.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_identity_output_may_be_changed_in_place_as_after_nn_linear():
    net = FusedMLP([3, 6, 4], activation="tanh", seed=0, dtype=torch.float64)
    seq = net.to_sequential()
    x = torch.randn(5, 3, dtype=torch.float64)
    for m in (net, seq):
        nn.functional.relu(m(x), inplace=True).pow(2).sum().backward()
    for a, b in zip(net.parameters(), seq.parameters()):
        assert_close(a.grad, b.grad, 1e-12, "gradient")


def test_double_backward_is_refused():
    net = FusedMLP([3, 4, 2], seed=0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="FusedMLP does not support double backward"):
        gx.sum().backward()
    # with another term that does have a second derivative, the module's part was silently 0
    for out in (lambda x: net(x).sum(), lambda x: net(x).pow(2).sum()):
        (gx,) = torch.autograd.grad(out(x), x, create_graph=True)
        with pytest.raises(RuntimeError, match="FusedMLP does not support double backward"):
            torch.autograd.grad(gx.sum() + x.pow(2).sum(), x)
    # create_graph=True alone still gives the first-order gradients
    net.zero_grad()
    (gx,) = torch.autograd.grad(net(x).pow(2).sum(), x, create_graph=True)
    (ref,) = torch.autograd.grad(net.to_sequential()(x).pow(2).sum(), x)
    assert torch.allclose(gx, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("transform", [
    lambda net, x: torch.func.vmap(net)(x[None].expand(3, -1, -1)),
    lambda net, x: torch.func.grad(lambda t: net(t).sum())(x),
    lambda net, x: torch.func.jacrev(net)(x),
    lambda net, x: torch.func.jacfwd(net)(x),
    lambda net, x: torch.func.hessian(lambda t: net(t).sum())(x),
    lambda net, x: torch.func.vmap(lambda p, t: torch.func.functional_call(net, p, (t,)), in_dims=(0, None))(
        {k: v[None].expand(2, *v.shape) for k, v in net.named_parameters()}, x),
], ids=["vmap", "grad", "jacrev", "jacfwd", "hessian", "vmap_over_parameters"])
def test_torch_func_transforms_are_refused_in_fusedmlps_words(transform):
    """PyTorch's own error asked for a `setup_context` staticmethod, words for the author of the
    autograd.Function, not for its user."""
    net = FusedMLP([3, 4, 2], seed=0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="FusedMLP does not support torch.func transforms"):
        transform(net, x)


@pytest.mark.parametrize("batched", [
    lambda net, x: torch.autograd.functional.jacobian(net, x, vectorize=True),
    lambda net, x: torch.autograd.grad(net(x.requires_grad_(True)), x, torch.ones(2, 5, 2, dtype=x.dtype),
                                       is_grads_batched=True),
], ids=["jacobian_vectorize", "is_grads_batched"])
def test_batched_incoming_gradients_are_refused_in_fusedmlps_words(batched):
    """`jacobian(vectorize=True)` and `autograd.grad(is_grads_batched=True)` vmap the backward over
    the incoming gradients: it failed with vmap's words about `aten::copy_` from inside it."""
    net = FusedMLP([3, 4, 2], seed=0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="FusedMLP does not support torch.func transforms.*is_grads_batched"):
        batched(net, x)


def test_forward_mode_ad_is_refused_in_fusedmlps_words():
    import torch.autograd.forward_ad as fwAD
    net = FusedMLP([3, 4, 2], seed=0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match="or forward-mode AD"):
            net(fwAD.make_dual(x, torch.ones_like(x)))
        net(x)                                   # a forward without tangents still runs at a dual level
    # reverse mode, what the message points to, works: the Jacobian equals nn.Sequential's
    ref = torch.autograd.functional.jacobian(net.to_sequential(), x)
    assert torch.allclose(torch.autograd.functional.jacobian(net, x), ref, rtol=1e-12, atol=1e-14)


def test_a_derivative_through_the_incoming_gradient_is_refused():
    """The double-backward trick differentiates the input gradient with respect to the incoming
    gradient `v`: torch.autograd.functional.jvp returned zeros (FusedMLP's gradients were tied to
    the input and parameters only), and with another term the module's part was silently 0."""
    net = FusedMLP([3, 4, 2], activation="tanh", seed=0, dtype=torch.float64)
    x, u = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="FusedMLP does not support double backward"):
        torch.autograd.functional.jvp(net, x, u)
    net.requires_grad_(False)
    v = torch.zeros(5, 2, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(net(x.requires_grad_(True)), x, grad_outputs=v, create_graph=True)
    with pytest.raises(RuntimeError, match="FusedMLP does not support double backward"):
        torch.autograd.grad((gx * u).sum() + v.pow(2).sum(), v)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_values_that_are_not_finite_propagate_as_through_nn_linear_without_numpys_warnings(activation):
    """As nn.Linear, the CPU module gives inf and NaN silently: numpy's warnings ('invalid value
    encountered in matmul'), and under np.seterr(all="raise") its FloatingPointError, came from
    inside the passes."""
    net = FusedMLP([3, 4, 2], activation=activation, seed=0, dtype=torch.float64)
    x = torch.tensor([[float("inf"), 1.0, 0.0], [1e200, -1e200, 1.0], [0.5, -0.5, 1.0]], dtype=torch.float64)
    w = torch.randn(3, 2, dtype=torch.float64)
    ref_out, ref_gx, ref_gp = grads_of(net.to_sequential(), x, w)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        out, gx, gp = grads_of(net, x, w)
    assert torch.equal(out.isnan(), ref_out.isnan()) and torch.allclose(out, ref_out, equal_nan=True)
    assert torch.equal(gx.isnan(), ref_gx.isnan()) and torch.allclose(gx, ref_gx, equal_nan=True)
    assert all(torch.equal(g.isnan(), r.isnan()) for g, r in zip(gp, ref_gp))
    assert np.geterr()["invalid"] != "ignore"        # numpy's settings are the caller's again


def test_empty_batch():
    net = FusedMLP([3, 4, 2], seed=0, dtype=torch.float64)
    x = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    y = net(x)
    assert y.shape == (0, 2)
    y.sum().backward()
    assert x.grad.shape == (0, 3) and torch.equal(net.weight_1.grad, torch.zeros(4, 3, dtype=torch.float64))


# ------------------------------------------------------------------ bad input
def test_bad_inputs_are_refused_clearly():
    net = FusedMLP([3, 4, 2], seed=0)            # float32
    with pytest.raises(ValueError, match=r"dtype torch.float64.*float32.*module with \.to\(torch.float64\)"):
        net(torch.zeros(2, 3, dtype=torch.float64))
    for dt in (torch.int64, torch.bfloat16):       # the module cannot compute in these: only x is to convert
        with pytest.raises(ValueError, match=f"dtype {dt}.*x.to\\(torch.float32\\)$"):
            net(torch.zeros(2, 3, dtype=dt))
    with pytest.raises(ValueError, match=r"shape \(2, 5\).*\(\.\.\., 3\)"):
        net(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        net(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        net.half()(torch.zeros(2, 3, dtype=torch.float16))
    net = FusedMLP([3, 4, 2], seed=0, backend="cuda")
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        net(torch.zeros(2, 3))



@pytest.mark.filterwarnings("ignore:(Sparse CSR|The PyTorch API of nested):UserWarning")
@pytest.mark.parametrize("make", [
    lambda x: x.to_sparse(),
    lambda x: x.to_sparse_csr(),
    lambda x: torch.nested.nested_tensor([x[:1], x[1:]], layout=torch.jagged),
    lambda x: torch.nested.nested_tensor([x[:1], x[1:]]),
], ids=["sparse_coo", "sparse_csr", "nested_jagged", "nested_strided"])
def test_a_sparse_or_nested_input_is_refused_naming_x(make):
    """nn.Linear takes these; FusedMLP's passes take a dense array, and it failed with torch's
    words from inside ('reshape is not implemented for sparse tensors', 'cannot view shape')."""
    net = FusedMLP([3, 4, 2], seed=0)
    x = make(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"input x is a (sparse|nested) tensor.*dense"):
        net(x)


def test_an_input_on_another_device_than_the_parameters_is_refused():
    """As nn.Linear refuses an input on another device: here parameters on the meta device, x on the CPU."""
    net = FusedMLP([3, 4, 2], seed=0, device="meta")
    with pytest.raises(ValueError, match="input x is on cpu but FusedMLP's parameters are on meta"):
        net(torch.zeros(2, 3))


@pytest.mark.parametrize("name", ["weight_1", "bias_2"])
def test_parameters_of_mixed_dtypes_are_refused(name):
    """One parameter replaced by one of another dtype: the backend computes in one dtype, so forward
    refuses (nn.Linear's matmul refuses mixed dtypes too), naming weight_1's and the odd one's."""
    net = FusedMLP([3, 4, 2], seed=0)
    setattr(net, name, nn.Parameter(getattr(net, name).detach().double()))
    first, other = ("torch.float64", "torch.float32") if name == "weight_1" else ("torch.float32", "torch.float64")
    with pytest.raises(ValueError, match=f"must share one dtype and device; weight_1 is {first} on cpu, "
                                         f"a (weight|bias) is {other}"):
        net(torch.ones(5, 3))


def test_a_0d_input_is_refused_naming_its_shape():
    """A scalar tensor has no feature dimension (nn.Linear refuses it too): a ValueError, not an IndexError."""
    with pytest.raises(ValueError, match=r"input x has shape \(\); FusedMLP expects \(\.\.\., 3\)"):
        FusedMLP([3, 4, 2], seed=0)(torch.tensor(1.0))


def test_tf32_parameters_converted_to_float64_are_refused_by_forward():
    """precision='tf32' rounds float32 products; the constructor refuses it with float64, and so does
    forward once the module was converted (`.double()`) after construction."""
    net = FusedMLP([3, 4, 2], precision="tf32", seed=0).double()
    with pytest.raises(ValueError, match="precision='tf32' needs float32 parameters, got torch.float64"):
        net(torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("name, value, err, match", [
    ("weight_1", torch.zeros(5, 4), ValueError, r"weight_1 has shape \(5, 4\); layer 1 .* takes \(5, 3\)"),
    ("weight_2", torch.zeros(10), ValueError, r"weight_2 has shape \(10,\); layer 2 .* takes \(2, 5\)"),
    ("bias_1", torch.zeros(1), ValueError, r"bias_1 has shape \(1,\); layer 1 .* takes \(5,\)"),
    ("bias_2", None, TypeError, "bias_2 must be a tensor, got NoneType"),
])
@pytest.mark.parametrize("grad", [True, False])
def test_a_parameter_assigned_with_a_wrong_shape_is_refused(name, value, err, match, grad):
    """A parameter replaced after construction by one that does not fit `layer_sizes` failed deep
    in numpy ("matmul: Input operand 1 has a mismatch in its core dimension 0 ...", the kernels'
    assertions on CUDA), and a (1,)-shaped bias was broadcast over the layer without grad."""
    net = FusedMLP([3, 5, 2], seed=0)
    setattr(net, name, None if value is None else nn.Parameter(value))
    with torch.set_grad_enabled(grad), pytest.raises(err, match=match):
        net(torch.zeros(4, 3))


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_under_autocast_a_low_precision_input_is_cast(low):
    """Under torch.autocast the layers before FusedMLP give float16/bfloat16: it refused them (the
    input's dtype is not the parameters'), so no model with FusedMLP after a Linear ran under AMP.
    It now casts them to its dtype, as PyTorch's float32-policy ops do, and the gradients flow back
    through the cast; outside autocast they are refused as before."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 4)
    fused = FusedMLP([4, 6, 2], activation="tanh", seed=0)
    x = torch.randn(5, 3)
    results = []
    for cast_here in (False, True):
        lin.zero_grad()
        fused.zero_grad()
        with torch.autocast("cpu", dtype=low):
            h = lin(x)
            assert h.dtype == low
            y = fused(h.float() if cast_here else h)
            assert y.dtype == torch.float32
            y.pow(2).sum().backward()
        results.append([y.detach(), lin.weight.grad.clone()] + [p.grad.clone() for p in fused.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=f"dtype {low}"):
        fused(torch.zeros(2, 4, dtype=low))


def test_a_backend_instance_is_used():
    be = NumpyBackend()
    calls = []
    real = be.network_forward
    be.network_forward = lambda *a, **k: (calls.append(1), real(*a, **k))
    net = FusedMLP([3, 4, 2], seed=0, backend=be)
    net(torch.zeros(2, 3))
    assert calls == [1]


# ------------------------------------------------------------------ nn.Sequential
@pytest.mark.parametrize("module, name", [
    (nn.ReLU(), "relu"), (nn.Sigmoid(), "sigmoid"), (nn.Tanh(), "tanh"), (nn.LeakyReLU(), "leaky_relu"),
    (nn.GELU(approximate="tanh"), "gelu"), (nn.SiLU(), "silu"), (nn.Identity(), "identity"),
])
def test_from_sequential_each_activation(module, name):
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(3, 5), module, nn.Linear(5, 4), module, nn.Linear(4, 2)).double()
    net = FusedMLP.from_sequential(seq)
    assert net.activations == (name, name, "identity") and net.layer_sizes == (3, 5, 4, 2)
    assert net.weight_1.dtype == torch.float64
    x = torch.randn(7, 3, dtype=torch.float64)
    w = torch.randn(7, 2, dtype=torch.float64)
    out, dx, dp = grads_of(net, x, w)
    ref_out, ref_dx, ref_dp = grads_of(seq, x, w)
    assert_close(out, ref_out, 1e-12, "output")
    assert_close(dx, ref_dx, 1e-12, "dx")
    for a, b in zip(dp, ref_dp):
        assert_close(a, b, 1e-12, "gradient")
    with torch.no_grad():                        # a copy: the Sequential's parameters are its own
        net.weight_1.zero_()
    assert seq[0].weight.abs().sum() > 0


def test_sequential_round_trip():
    net = FusedMLP([4, 6, 5, 3], activation=["silu", "identity"], output_activation="tanh", seed=4)
    seq = net.to_sequential()
    assert [type(m).__name__ for m in seq] == ["Linear", "SiLU", "Linear", "Linear", "Tanh"]
    back = FusedMLP.from_sequential(seq)
    assert back.activations == net.activations and back.layer_sizes == net.layer_sizes
    for p, q in zip(net.parameters(), back.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


def test_conversions_keep_requires_grad_and_leave_torchs_generator_alone():
    """A frozen layer stayed trainable after from_sequential/to_sequential (the copies were all
    requires_grad=True), and to_sequential drew nn.Linear's initial values from torch's global
    generator before overwriting them, moving the random stream of the caller's program."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    seq[0].weight.requires_grad_(False)
    net = FusedMLP.from_sequential(seq)
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, True]
    net.bias_2.requires_grad_(False)
    torch.manual_seed(1)
    expected = torch.rand(4)
    torch.manual_seed(1)
    back = net.to_sequential()
    assert torch.equal(torch.rand(4), expected), "to_sequential drew from torch's generator"
    assert [p.requires_grad for p in back.parameters()] == [False, True, True, False]
    for p, q in zip(net.parameters(), back.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("seq, match", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 2)), "Dropout"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)), "approximate='tanh'"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2), nn.Linear(4, 2)), "negative_slope"),
    (lambda: nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2)), "no bias"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2)), "follows another"),
    (lambda: nn.Sequential(nn.ReLU(), nn.Linear(3, 4)), "before any nn.Linear"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), "takes 5 inputs"),
    (lambda: nn.Sequential(nn.Tanh()), "before any"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Softplus()), "Softplus"),
    (lambda: nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2)), "not initialised yet"),
])
def test_from_sequential_refuses_what_it_cannot_fuse(seq, match):
    with pytest.raises(ValueError, match=match):
        FusedMLP.from_sequential(seq())


# ------------------------------------------------------------------ training
def test_sgd_trajectory_equals_sequential():
    net = FusedMLP([4, 16, 8, 3], activation="tanh", seed=0, dtype=torch.float64)
    seq = net.to_sequential()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 12, 4, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (5, 12), generator=g)
    curves = []
    for m in (net, seq):
        opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
        losses = []
        for x, y in zip(X, Y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert rel_err(curves[0], curves[1]) < 1e-12
    for p, q in zip(net.parameters(), seq.parameters()):
        assert_close(p, q, 1e-12, "parameters after training")


def test_adam_trains_it():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(64, 2, generator=g)
    y = (X[:, 0] * X[:, 1] > 0).long()             # XOR of the signs: needs the hidden layer
    net = FusedMLP([2, 16, 2], activation="relu", seed=1)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(X), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


# ------------------------------------------------------------------ serialisation
def test_state_dict_round_trip_and_torch_save(tmp_path):
    net = FusedMLP([3, 5, 2], activation="gelu", seed=0)
    x = torch.randn(4, 3)
    other = FusedMLP([3, 5, 2], activation="gelu", seed=1)
    assert not torch.equal(other(x), net(x))
    other.load_state_dict(net.state_dict())
    assert torch.equal(other(x), net(x))
    path = tmp_path / "fused.pt"
    torch.save(net.state_dict(), path)
    third = FusedMLP([3, 5, 2], activation="gelu", seed=2)
    third.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(third(x), net(x))
    buf = io.BytesIO()                              # the whole module
    torch.save(net, buf)
    buf.seek(0)
    whole = torch.load(buf, weights_only=False)
    assert isinstance(whole, FusedMLP) and torch.equal(whole(x), net(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        FusedMLP([3, 6, 2]).load_state_dict(net.state_dict())


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("change, match", [
    (lambda sd: sd.pop("bias_2"), 'Missing key.*"bias_2"'),
    (lambda sd: sd.update(extra=torch.zeros(1)), 'Unexpected key.*"extra"'),
    (lambda sd: sd.update(weight_2=torch.zeros(3, 5)), "size mismatch for weight_2"),
    (lambda sd: sd.update(bias_2=[0.0, 0.0]), 'parameter named "bias_2"'),
], ids=["missing", "unexpected", "shape", "not_a_tensor"])
def test_a_refused_state_dict_changes_nothing(change, match, assign):
    """nn.Module.load_state_dict copies entry by entry and raises at the end: a state dict with one
    bad entry (or, strict, a missing or unexpected key) left FusedMLP half loaded."""
    net = FusedMLP([3, 5, 2], seed=0)
    before = {n: (p, p.detach().clone()) for n, p in net.named_parameters()}
    sd = {k: v + 1 for k, v in FusedMLP([3, 5, 2], seed=1).state_dict().items()}
    change(sd)
    y = net(torch.ones(2, 3))                    # a graph recorded before the refused load
    with pytest.raises(RuntimeError, match=match):
        net.load_state_dict(sd, assign=assign)
    for n, p in net.named_parameters():
        assert p is before[n][0] and torch.equal(p, before[n][1]), f"{n} changed"
    if assign:                                   # nothing was written in place: the graph still holds
        y.sum().backward()
    # strict=False loads the entries present, as nn.Module's (a missing key is no error then)
    sd = {k: v + 1 for k, v in net.state_dict().items()}
    del sd["bias_2"]
    assert net.load_state_dict(sd, strict=False, assign=assign).missing_keys == ["bias_2"]
    assert torch.equal(net.weight_1, before["weight_1"][1] + 1)
    assert torch.equal(net.bias_2, before["bias_2"][1])


def test_dtype_conversion_of_the_module():
    net = FusedMLP([3, 5, 2], seed=0).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    assert net(x).dtype == torch.float64
    assert torch.allclose(net(x), net.to_sequential()(x), rtol=1e-12, atol=0)


# ------------------------------------------------------------------ torch.compile
def _compile_and_compare(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), FusedMLP([6, 8, 4], activation="silu", seed=0), nn.Tanh())
    x = torch.randn(5, 3)
    ref = model(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend=backend)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6)


def test_torch_compile_graph_break_aot_eager():
    _compile_and_compare("aot_eager")
    model = nn.Sequential(nn.Linear(3, 6), FusedMLP([6, 8, 4], seed=0), nn.Tanh())
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(5, 3))
    assert explained.graph_break_count == 1 and explained.graph_count == 2
    assert "gpubp" in str(explained.break_reasons[0].reason)


@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_is_refused_pointing_to_to_sequential(strict):
    """Non-strict torch.export traced the module with fake tensors and failed with ".numpy() is not
    supported for tensor subclasses"; both forms now say that FusedMLP cannot be exported and what
    can: to_sequential(), which exports."""
    net = FusedMLP([3, 4, 2], seed=0)
    x = torch.randn(5, 3)
    with pytest.raises(Exception, match=r"(?s)cannot.*export.*FusedMLP\.to_sequential\(\) instead"):
        torch.export.export(net, (x,), strict=strict)
    exported = torch.export.export(net.to_sequential(), (x,), strict=strict)
    assert torch.allclose(exported.module()(x), net(x), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.:DeprecationWarning")
@pytest.mark.parametrize("jit", ["trace", "trace_under_no_grad", "script"])
def test_torchscript_is_refused_pointing_to_to_sequential(jit):
    """torch.jit.trace failed its own check ('Graphs differed across invocations'); traced under
    torch.no_grad, the trace kept 'record nothing' and its backward failed with an IndexError;
    torch.jit.script failed on the forward's source ('Only a single generator is currently
    supported').  A TorchScript module could not hold gpubp's Python passes anyway (it cannot be
    saved): each now says so and names what can be scripted or traced, to_sequential()."""
    net = FusedMLP([3, 4, 2], seed=0)
    x = torch.randn(5, 3)
    script = {"trace": lambda m: torch.jit.trace(m, x), "script": torch.jit.script,
              "trace_under_no_grad": lambda m: torch.jit.trace(m, x, check_trace=False)}[jit]
    with torch.no_grad() if jit == "trace_under_no_grad" else contextlib.nullcontext():
        with pytest.raises(RuntimeError, match=r"(?s)TorchScript.*FusedMLP\.to_sequential\(\) instead"):
            script(net)
        scripted = script(net.to_sequential())
    assert torch.allclose(scripted(x), net(x), rtol=1e-5, atol=1e-6)


def test_torch_compile_inductor():
    try:                                            # inductor builds C++: skip where it cannot
        torch._dynamo.reset()
        torch.compile(lambda t: t * 2 + 1, backend="inductor")(torch.ones(3))
    except Exception as e:
        pytest.skip(f"torch.compile's inductor cannot build on this machine: {type(e).__name__}: {e}")
    _compile_and_compare("inductor")


# ------------------------------------------------------------------ DistributedDataParallel
#: the bound on the two-process DDP test (a fresh interpreter importing torch takes seconds, more on a busy machine)
DDP_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, X, Y, state, out_dir):
    """One DDP rank: its half of the batch, one backward; writes its gradients and a progress log."""
    import os
    import time

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    t0 = time.monotonic()
    with open(f"{out_dir}/rank{rank}.log", "a", buffering=1) as log:
        def say(what):
            log.write(f"{time.monotonic() - t0:.1f}s {what}\n")

        say("started")
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=DDP_TIMEOUT_S))
        say("joined the group")
        try:
            net = FusedMLP([4, 8, 3], activation="tanh", dtype=torch.float64)
            net.load_state_dict(state)
            model = DDP(net)
            n = X.shape[0] // world
            x, y = X[rank * n:(rank + 1) * n], Y[rank * n:(rank + 1) * n]
            nn.functional.cross_entropy(model(x), y).backward()
            say("backward done")
            torch.save([p.grad for p in net.parameters()], f"{out_dir}/grads{rank}.tmp")
            os.replace(f"{out_dir}/grads{rank}.tmp", f"{out_dir}/grads{rank}.pt")   # appears whole
        finally:
            dist.destroy_process_group()
        say("done")


def test_distributed_data_parallel_gloo_two_processes(tmp_path):
    import torch.multiprocessing as mp
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    net = FusedMLP([4, 8, 3], activation="tanh", seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(10, 4, generator=g, dtype=torch.float64)
    Y = torch.randint(0, 3, (10,), generator=g)
    ctx = mp.start_processes(_ddp_worker, args=(2, _free_port(), X, Y, net.state_dict(), str(tmp_path)),
                             nprocs=2, join=False, start_method="spawn")
    # Wait for both ranks' results (not for the processes' exit, which a busy machine can hold up
    # long after the work is done), failing at once with the traceback of a rank that raised.
    results = [tmp_path / f"grads{r}.pt" for r in range(2)]
    deadline = time.monotonic() + DDP_TIMEOUT_S
    try:
        while not all(f.exists() for f in results):
            if any(p.exitcode not in (None, 0) for p in ctx.processes):
                ctx.join()                                  # raises with the failed rank's traceback
            if time.monotonic() > deadline:
                logs = {r: (tmp_path / f"rank{r}.log").read_text() if (tmp_path / f"rank{r}.log").exists()
                        else "(not started)" for r in range(2)}
                pytest.fail(f"the DDP workers gave no result in {DDP_TIMEOUT_S} s; their progress: {logs}")
            time.sleep(0.1)
        for p in ctx.processes:
            p.join(timeout=10)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    nn.functional.cross_entropy(net(X), Y).backward()           # one process, the whole batch
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        assert len(grads) == 4
        for name, (gd, p) in zip(("weight_1", "bias_1", "weight_2", "bias_2"), zip(grads, net.parameters())):
            assert_close(gd, p.grad, 1e-12, f"rank {rank} {name}")


# ------------------------------------------------------------------ precision
def test_tf32_on_numpy_is_gpubps_tf32_network_forward_and_backward():
    """precision="tf32" makes the numpy backend emulate TF32 in every product (the docstring): the
    forward is gpubp.MLP(precision="tf32")'s bit for bit, the gradients are its, and float32's differ."""
    import gpubp

    sizes = [20, 33, 17, 5]
    x = torch.randn(13, 20, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    X = x.detach().numpy()
    out = {}
    for prec in ("float32", "tf32"):
        x.grad = None
        m = FusedMLP(sizes, activation="tanh", precision=prec, seed=1, backend="numpy", dtype=torch.float32)
        y = m(x)
        y.sum().backward()
        net = gpubp.MLP(sizes, activation="tanh", backend="numpy", precision=prec, seed=0)
        net.set_params([(W.detach().numpy(), b.detach().numpy()) for W, b in m.layers()])
        assert np.array_equal(y.detach().numpy(), net.backend.to_numpy(net.forward(X))), prec
        # the backend's backward in the same mode from dLoss/dZ_L = 1 (the sum's): the module's gradients
        be, layers = net.backend, net.get_params()
        plan = be.make_plan(sizes, net.activations, 13, np.float32, precision=prec, input_grad=True)
        plan.bind_input(X)
        be.network_forward(plan, layers)
        plan.delta[-1][...] = 1.0
        grads = [(np.empty_like(W), np.empty_like(b)) for W, b in layers]
        be.network_backward(plan, layers, grads)
        for (W, b), (dW, db) in zip(m.layers(), grads):
            assert np.array_equal(W.grad.numpy(), dW) and np.array_equal(b.grad.numpy(), db), prec
        assert np.array_equal(x.grad.numpy(), plan.delta[0]), prec
        out[prec] = (y.detach().numpy(), [W.grad.numpy().copy() for W, _ in m.layers()])
    assert not np.array_equal(out["float32"][0], out["tf32"][0])
    for g32, g in zip(out["float32"][1], out["tf32"][1]):
        assert not np.array_equal(g32, g)
        assert np.abs(g32 - g).max() <= 1e-2 * np.abs(g32).max()


@pytest.mark.parametrize("bad", ["bf16", "3xtf32", "TF32", None])
def test_a_precision_assigned_after_construction_is_checked_by_forward(bad):
    """`precision` is a plain attribute; a mode FusedMLP does not take, assigned later, was run: "bf16"
    rounded the outputs to bfloat16 on the numpy backend (whose autograd bridge does not round the
    deltas as that mode stores them), "TF32" failed deep in the backend."""
    m = FusedMLP([4, 6, 2], seed=0, backend="numpy", dtype=torch.float32)
    m.precision = bad
    with pytest.raises(ValueError, match="FusedMLP's precision must be one of float32, tf32"):
        m(torch.zeros(3, 4))
