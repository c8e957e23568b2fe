"""pytest-benchmark cases for the CPU-side numbers (not part of the default test run).

    pytest benchmarks/test_bench_cpu.py --benchmark-only [--benchmark-group-by=param:shape]

One training step (forward, softmax cross-entropy, backward, update) per
call, on random batches rotated between calls: gpubp's numpy backend
(`MLP._step`, and `MLP.train_step` as a user calls it), PyTorch CPU (float32,
and under autocast to bfloat16 as the torch-autocast-bf16 peer runs) and
scikit-learn's MLPClassifier, with equal BLAS/OpenMP threads.  The steps are
the peers of `gpubp bench` (`gpubp.bench.peers`).  The CPU goal (the numpy
backend within 1.5x of PyTorch CPU on [784, 512, 512, 10], batch 512, SGD) is
printed by `benchmarks/bench_numpy_vs_torch.py`; here the numbers go to
pytest-benchmark's tables and `--benchmark-json`.
"""

import itertools
import os

import numpy as np
import pytest

from gpubp.bench import peers

SHAPES = {
    "mnist-sized-784-512-512-10-b512-sgd": ([784, 512, 512, 10], 512, "sgd", 1e-2),
    "default-64-128-10-b32-adam": ([64, 128, 10], 32, "adam", 1e-3),
    "default-64-128-10-b2048-adam": ([64, 128, 10], 2048, "adam", 1e-3),
}
THREADS = os.cpu_count()


@pytest.fixture(scope="module", autouse=True)
def equal_threads():
    from threadpoolctl import threadpool_limits
    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        pass
    with threadpool_limits(THREADS, user_api="blas"):
        yield


def _rotating(step, batches):
    it = itertools.cycle(batches)

    def call():
        step(*next(it))
    return call


def _setup(shape):
    sizes, B, opt, lr = SHAPES[shape]
    params = peers.init_params(sizes, seed=0)
    batches = peers.random_batches(np, sizes[0], sizes[-1], B, 4, seed=1)
    return sizes, B, opt, lr, params, batches


@pytest.mark.parametrize("shape", list(SHAPES))
def test_gpubp_numpy_step(benchmark, shape):
    sizes, B, opt, lr, params, batches = _setup(shape)
    step = peers.GpubpStep("numpy", sizes, params, B, opt, lr)
    benchmark.group = shape
    benchmark(_rotating(step, batches))
    assert np.isfinite(step.loss_value())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_gpubp_numpy_train_step(benchmark, shape):
    """The user's call: input checks, the step, and the loss read back as a float."""
    import gpubp
    from gpubp.optim import SGD, Adam
    sizes, B, opt, lr, params, batches = _setup(shape)
    net = gpubp.MLP(sizes, activation="relu", loss="cross_entropy", backend="numpy", seed=0)
    net.set_params(params)
    o = Adam(lr) if opt == "adam" else SGD(lr)
    benchmark.group = shape
    benchmark(_rotating(lambda X, y: net.train_step(X, y, o), batches))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_torch_cpu_step(benchmark, shape):
    pytest.importorskip("torch")
    sizes, B, opt, lr, params, batches = _setup(shape)
    step = peers.TorchStep("cpu", sizes, params, B, opt, lr)
    benchmark.group = shape
    benchmark(_rotating(step, peers.torch_batches(batches, "cpu")))
    assert np.isfinite(step.loss_value())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_torch_cpu_autocast_bf16_step(benchmark, shape):
    """`gpubp bench`'s torch-autocast-bf16 peer, with autocast on the CPU (bf16 products,
    float32 master weights); its agreement with the float32 step is tests/test_bench.py's."""
    pytest.importorskip("torch")
    sizes, B, opt, lr, params, batches = _setup(shape)
    step = peers.TorchStep("cpu", sizes, params, B, opt, lr, autocast=True)
    benchmark.group = shape
    benchmark(_rotating(step, peers.torch_batches(batches, "cpu")))
    assert np.isfinite(step.loss_value())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_sklearn_step(benchmark, shape):
    sizes, B, opt, lr, params, batches = _setup(shape)
    step = peers.SklearnStep(sizes, params, B, opt, lr, classes_batch=batches[0])
    benchmark.group = shape
    benchmark(_rotating(step, batches))
