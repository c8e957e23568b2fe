"""gpubp's CUDA kernels run on the CPU by the emulator of tests/support/cuda_emu.

The emulator's own checks first (deadlocks, faults, cp.async timing, fragment layouts), then the
CUDA backend end to end over the emulated kernels (`FakeCupy(execute=True)`): the default
kernels, which have run on an H100, check the emulator; the opt-in kernels, which have not, are
checked by it.  Agreement here is necessary, never sufficient: tests/gpu is the verdict.
"""

from __future__ import annotations

import numpy as np
import pytest

from support import cuda_emu
from support.cuda_emu import EmuError

pytestmark = pytest.mark.skipif(cuda_emu.compiler() is None, reason="no host C++ compiler for the kernel emulator")


def _module(src, *names):
    return cuda_emu.build_source(src, names, tag="selftest")


# ---------------------------------------------------------------------------- the emulator itself
def test_a_barrier_some_threads_skip_is_reported_as_a_deadlock():
    m = _module("""
    __global__ void k(float* out) {
        if (threadIdx.x < 16) __syncthreads();   // half the block waits for the other half forever
        else { __syncwarp(); }
        out[threadIdx.x] = 1.f;
    }""", "k")
    with pytest.raises(EmuError, match="deadlock"):
        m.launch("k", (1,), (64,), (np.zeros(64, np.float32),))


def test_threads_that_exit_before_a_barrier_count_as_arrived():
    m = _module("""
    __global__ void k(float* out, int n) {
        __shared__ float s[64];
        if ((int)threadIdx.x >= n) return;
        s[threadIdx.x] = (float)threadIdx.x;
        __syncthreads();
        out[threadIdx.x] = s[n - 1 - threadIdx.x];
    }""", "k")
    out = np.full(64, -1, np.float32)
    m.launch("k", (1,), (64,), (out, np.int32(40)))
    np.testing.assert_array_equal(out[:40], np.arange(39, -1, -1))
    assert (out[40:] == -1).all()


def test_a_read_past_a_global_buffer_faults_and_names_the_block():
    m = _module("""
    __global__ void k(const float* x, float* y, int n) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        y[i] = x[i] * 2.f;                        // no bounds check: the last block reads past x
    }""", "k")
    x = np.ones(100, np.float32)
    with pytest.raises(EmuError, match=r"memory fault .* block \(3,0,0\)"):
        m.launch("k", (4,), (32,), (x, np.zeros(128, np.float32), np.int32(100)))
    y = np.zeros(100, np.float32)
    m2 = _module("""
    __global__ void k(const float* x, float* y, int n) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = x[i] * 2.f;
    }""", "k")
    m2.launch("k", (4,), (32,), (x, y, np.int32(100)))
    assert (y == 2).all()


def test_buffers_keep_their_arrays_16_byte_alignment():
    """16-byte-aligned arrays whose length is no multiple of 16 bytes, read and written in 16-byte
    packs (copies of an alignas(16) struct: aligned SSE moves on the host, which fault off 16
    bytes) and the tail one float at a time, as elementwise.cu's updates do."""
    m = _module("""
    struct alignas(16) Pack { float v[4]; };
    __global__ void k(const float* x, float* y, int n) {
        const int i = threadIdx.x;
        if (4 * i + 3 < n) {
            Pack p = reinterpret_cast<const Pack*>(x)[i];
            for (int e = 0; e < 4; ++e) p.v[e] *= 2.f;
            reinterpret_cast<Pack*>(y)[i] = p;
        } else if (i == n / 4) {
            for (int j = 4 * i; j < n; ++j) y[j] = x[j] * 2.f;
        }
    }""", "k")
    def aligned(n, fill):
        buf = np.full(n + 4, fill, np.float32)
        off = (-buf.__array_interface__["data"][0] % 16) // 4    # its first 16-byte aligned element
        return buf[off:off + n]

    for n in (17, 18, 19, 1001):
        x, y = aligned(n, 1), aligned(n, 0)
        m.launch("k", (1,), (n // 4 + 1,), (x, y, np.int32(n)))
        assert (y == 2).all(), n


def test_shared_memory_starts_poisoned_in_every_block_and_dynamic_shared_ends_at_a_guard():
    m = _module("""
    __global__ void k(float* out, int extra) {
        extern __shared__ __align__(16) float dyn[];
        __shared__ float st[32];
        out[blockIdx.x * 64 + threadIdx.x] = st[threadIdx.x];          // never written: poison
        out[blockIdx.x * 64 + 32 + threadIdx.x] = dyn[threadIdx.x + extra];
        st[threadIdx.x] = 1.f; dyn[threadIdx.x] = 1.f;
    }""", "k")
    out = np.zeros(128, np.float32)
    m.launch("k", (2,), (32,), (out, np.int32(0)), shared_mem=32 * 4)
    assert np.isnan(out).all()
    with pytest.raises(EmuError, match="dynamic shared memory"):
        m.launch("k", (1,), (32,), (out, np.int32(1)), shared_mem=32 * 4)


def test_cp_async_lands_only_at_the_wait_that_retires_its_group():
    src = """
    __global__ void k(const float* x, float* before, float* after) {
        __shared__ __align__(16) float s[128];
        const int t = threadIdx.x;
        cp_async16(&s[4 * t], x + 4 * t, true);
        cp_async_commit();
        cp_async16(&s[64 + 4 * t], x + 4 * t, t < 8);   // lanes 8.. zero-fill
        cp_async_commit();
        cp_async_wait<1>();                              // the first group only
        __syncthreads();
        before[t] = s[4 * t]; before[16 + t] = s[64 + 4 * t];
        cp_async_wait<0>();
        __syncthreads();
        after[t] = s[4 * t]; after[16 + t] = s[64 + 4 * t];
    }"""
    from gpubp.backends.cuda_source import kernels_dir

    m = _module((kernels_dir() / "async_copy.cuh").read_text() + src, "k")
    x = np.arange(64, dtype=np.float32) + 1
    before, after = np.zeros(32, np.float32), np.zeros(32, np.float32)
    m.launch("k", (1,), (16,), (x, before, after))
    np.testing.assert_array_equal(before[:16], x[::4])
    assert np.isnan(before[16:]).all()                  # the second group had not landed
    np.testing.assert_array_equal(after[16:24], x[::4][:8])
    assert (after[24:] == 0).all()


@pytest.mark.parametrize("bf16", [False, True])
def test_mma_fragments_in_the_ptx_layouts_multiply(bf16):
    # Each lane loads its fragments by the PTX ISA's layout tables; D must be A B + C.
    src = """
    template <bool BF16>
    __global__ void k(const float* A, const float* B, const float* C, float* D) {
        const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
        const int K = BF16 ? 16 : 8;
        unsigned a[4], b[2];
        if (!BF16) {
            a[0] = to_tf32(A[g * K + t]);       a[1] = to_tf32(A[(g + 8) * K + t]);
            a[2] = to_tf32(A[g * K + t + 4]);   a[3] = to_tf32(A[(g + 8) * K + t + 4]);
            b[0] = to_tf32(B[t * 8 + g]);       b[1] = to_tf32(B[(t + 4) * 8 + g]);
        } else {
            const int r[4] = {g, g + 8, g, g + 8}, c[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
            for (int i = 0; i < 4; ++i) a[i] = bf16x2(A[r[i] * K + c[i]], A[r[i] * K + c[i] + 1]);
            b[0] = bf16x2(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
            b[1] = bf16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
        }
        float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
        if (BF16) mma_bf16(d, a, b); else mma_tf32(d, a, b);
        D[g * 8 + 2 * t] = d[0]; D[g * 8 + 2 * t + 1] = d[1];
        D[(g + 8) * 8 + 2 * t] = d[2]; D[(g + 8) * 8 + 2 * t + 1] = d[3];
    }"""
    from gpubp.backends.cuda_source import kernels_dir
    from gpubp.precision import to_bf16, to_tf32

    K = 16 if bf16 else 8
    m = _module((kernels_dir() / "mma.cuh").read_text() + src, f"k<{'true' if bf16 else 'false'}>")
    rng = np.random.default_rng(3)
    A = rng.standard_normal((16, K)).astype(np.float32)
    B = rng.standard_normal((K, 8)).astype(np.float32)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    D = np.full((16, 8), np.nan, np.float32)
    m.launch(f"k<{'true' if bf16 else 'false'}>", (1,), (32,), (A, B, C, D))
    r = to_bf16 if bf16 else to_tf32
    ref = r(A).astype(np.float64) @ r(B).astype(np.float64) + C
    np.testing.assert_allclose(D, ref, rtol=1e-6, atol=1e-6)


def test_inline_ptx_without_a_stand_in_is_refused():
    with pytest.raises(EmuError, match="inline PTX"):
        _module("""__device__ unsigned lane() { unsigned r; asm("mov.u32 %0, %%laneid;" : "=r"(r)); return r; }
        __global__ void k(unsigned* o) { o[0] = lane(); }""", "k")


# ---------------------------------------------------------------------------- the backend, end to end
@pytest.fixture
def emulated(monkeypatch):
    """A fake CuPy whose launches compute (tests/support/cuda_emu)."""
    from test_cuda_launch_contract import install_fake

    return install_fake(monkeypatch, execute=True)


def _train_both(sizes, B, *, activation="tanh", loss="mse", optimizer="adam", epochs=2, batch_size=None,
                precision="float32", seed=0, **backend_kw):
    """Train the same network on numpy and on the emulated CUDA backend; both predictions."""
    import gpubp
    from conftest import output_activation_for, random_targets
    from gpubp.backends import get_backend
    from gpubp.backends.cuda_backend import CudaBackend

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, sizes[0])).astype(np.float32)
    Y = random_targets(rng, loss, B, sizes[-1], dtype=np.float32)
    out = {}
    for name, be in (("numpy", get_backend("numpy")), ("cuda", CudaBackend(**backend_kw))):
        net = gpubp.MLP(sizes, activation=activation, output_activation=output_activation_for(loss, activation),
                        loss=loss, backend=be, seed=seed, precision=precision)
        net.fit(X, Y, epochs=epochs, batch_size=batch_size or B, optimizer=optimizer, verbose=0, progress=False)
        out[name] = np.asarray(net.predict(X), np.float64)
    return out["cuda"], out["numpy"]


def _rel(a, b):
    assert np.linalg.norm(b) > 0, "a reference of zeros compares nothing"
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("sizes, B, activation, loss, optimizer", [
    ([7, 33, 5], 19, "tanh", "mse", "adam"),
    ([1, 17, 1], 1, "leaky_relu", "mse", "sgd"),
    ([13, 65, 31, 10], 37, "gelu", "cross_entropy", "adamw"),
    ([5, 3, 129, 2], 130, "silu", "binary_cross_entropy", "adam"),
])
def test_default_kernels_train_as_the_numpy_backend(emulated, sizes, B, activation, loss, optimizer):
    got, ref = _train_both(sizes, B, activation=activation, loss=loss, optimizer=optimizer, batch_size=max(1, B // 2))
    assert _rel(got, ref) < 1e-5
    assert {"gemm_fwd", "gemm_bwd_data", "gemm_bwd_weight"} <= emulated.kernel_names()


@pytest.mark.parametrize("precision", ["float32", "tf32"])
def test_fused_narrow_runs_train_as_the_numpy_backend(emulated, precision):
    got, ref = _train_both([9, 32, 24, 17, 3], 1031, activation="relu", epochs=1, precision=precision)
    tol = 1e-5 if precision == "float32" else 1e-3
    assert _rel(got, ref) < tol
    assert any(k.startswith("fused_mlp") for k in emulated.kernel_names()), emulated.kernel_names()
