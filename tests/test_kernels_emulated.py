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


def _module(src, *names, race=False):
    return cuda_emu.build_source(src, names, tag="selftest", race=race)


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


@pytest.mark.parametrize("vec, width", [("float2", 2), ("float4", 4)])
@pytest.mark.parametrize("where", ["global", "shared"])
def test_a_misaligned_vector_access_is_the_gpus_misaligned_address_fault(vec, width, where):
    """A float2 / float4 load or store needs an address aligned to its size on the GPU; the host
    takes a misaligned 8-byte access (and most 16-byte ones) without complaint, so the emulator
    checks the cast to the vector pointer."""
    m = _module(f"""
    __global__ void k(const float* x, float* y, int off) {{
        __shared__ __align__(16) float s[64];
        const int i = threadIdx.x;
        {vec} v;
        if ({int(where == "shared")}) {{
            s[i] = x[i]; s[i + 32] = x[i + 32];
            __syncthreads();
            v = *reinterpret_cast<const {vec}*>(s + off + {width} * (i % 4));
        }} else {{
            v = *reinterpret_cast<const {vec}*>(x + off + {width} * (i % 4));
        }}
        *reinterpret_cast<{vec}*>(y + {width} * i) = v;
    }}""", "k")
    x = np.arange(64, dtype=np.float32)
    y = np.zeros(32 * width, np.float32)
    m.launch("k", (1,), (32,), (x, y, np.int32(width)))          # aligned: runs
    assert y[0] == width
    with pytest.raises(EmuError, match=f"misaligned address: a {4 * width}-byte vector access"):
        m.launch("k", (1,), (32,), (x, y, np.int32(1)))


def test_every_vector_cast_of_the_kernels_is_checked_for_alignment():
    """Every module's casts to wider types become emu::vec_cast (gemm.cu's gemm_vec<T, N>::type
    included); what stays a plain reinterpret_cast points to a scalar type, whose accesses the
    host aligns as the GPU does."""
    import re

    from gpubp import compile_check

    scalars = {"float", "double", "int", "unsigned", "unsigned int", "unsigned short", "unsigned char", "char"}
    checked = {}
    for spec in compile_check.all_specs():
        src = cuda_emu.emulation_source(spec.source())
        for m in re.finditer(r"reinterpret_cast\s*<([^;]*?)>\s*\(", src):
            target = " ".join(m.group(1).split())
            assert target.endswith("*") and target.removeprefix("const ").rstrip("* ") in scalars, (spec.name, target)
        checked[spec.name] = src.count("emu::vec_cast<")
    assert all(checked[m] > 0 for m in ("gemm", "gemm_f32", "gemm_tc", "gemm_wgmma", "elementwise", "fused_mlp",
                                        "fused_mlp_family")), checked


def test_a_cp_async_source_must_be_aligned_even_when_nothing_is_read():
    from gpubp.backends.cuda_source import kernels_dir

    m = _module((kernels_dir() / "async_copy.cuh").read_text() + """
    __global__ void k(const float* x, float* y, int off) {
        __shared__ __align__(16) float s[64];
        cp_async16(&s[4 * threadIdx.x], x + off, false);     // src-size 0: zero fill
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        y[threadIdx.x] = s[4 * threadIdx.x];
    }""", "k")
    x, y = np.ones(8, np.float32), np.ones(16, np.float32)
    m.launch("k", (1,), (16,), (x, y, np.int32(4)))
    assert (y == 0).all()
    with pytest.raises(EmuError, match="cp.async: global source not aligned"):
        m.launch("k", (1,), (16,), (x, y, np.int32(1)))


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


def test_a_cp_async_destination_is_poisoned_from_its_issue():
    """A copy issued over data other threads still read (no barrier between their reads and the
    issue: a write-after-read race) is seen: its destination is undefined from the issue on."""
    src = """
    __global__ void k(const float* x, float* racing, float* after) {
        __shared__ __align__(16) float s[64];
        const int t = threadIdx.x;
        s[4 * t] = -1.f; s[4 * t + 1] = -1.f; s[4 * t + 2] = -1.f; s[4 * t + 3] = -1.f;
        __syncthreads();
        cp_async16(&s[4 * t], x + 4 * t, true);
        cp_async_commit();
        racing[t] = s[4 * (15 - t)];                     // another thread's destination, no barrier
        __syncthreads();
        cp_async_wait<0>();
        __syncthreads();
        after[t] = s[4 * t];
    }"""
    from gpubp.backends.cuda_source import kernels_dir

    m = _module((kernels_dir() / "async_copy.cuh").read_text() + src, "k")
    x = np.arange(64, dtype=np.float32) + 1
    racing, after = np.zeros(16, np.float32), np.zeros(16, np.float32)
    m.launch("k", (1,), (16,), (x, racing, after))
    # whichever of each pair of threads runs second reads the other's copy, still in flight
    assert np.isnan(racing).sum() == 8 and (np.isnan(racing) | (racing == -1)).all(), racing
    np.testing.assert_array_equal(after, x[::4])


def test_warps_run_ahead_of_each_other_between_barriers_in_both_orders():
    """Warp collectives do not keep the warps in step: warp 1 writing what warp 0 reads with no
    barrier between (a race) shows, warp 1 first in one block and warp 0 first in the other."""
    m = _module("""
    __global__ void k(float* out) {
        __shared__ float s[32];
        const int t = threadIdx.x;
        if (t < 32) s[t] = 0.f;
        __syncthreads();
        for (int i = 0; i < 4; ++i) __syncwarp();       // some warp-collective work first
        if (t >= 32) s[t - 32] = 1.f;                    // warp 1 writes what warp 0 reads
        else out[blockIdx.x * 32 + t] = s[t];
    }""", "k")
    out = np.full(64, -1, np.float32)
    m.launch("k", (2,), (64,), (out,))
    b0, b1 = out[:32], out[32:]
    assert (b0 == b0[0]).all() and (b1 == b1[0]).all() and {float(b0[0]), float(b1[0])} == {0.0, 1.0}, out


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


# ---------------------------------------------------------------------------- the hazard check (race.h)
_EXCHANGE = """
__global__ void k(float* out, int sync) {
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    if (sync == 1) __syncthreads();
    if (sync == 2) __syncwarp();
    out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}"""


@pytest.mark.parametrize("sync, block, hazard", [
    (0, 64, "(read-after-write|write-after-read) hazard on shared"),   # no barrier between write and read
    (1, 64, None),                                   # __syncthreads orders them
    (2, 32, None),                                   # lanes of one warp after __syncwarp
    (2, 64, "(read-after-write|write-after-read) hazard"),   # __syncwarp does not order two warps
    (0, 32, "(read-after-write|write-after-read) hazard"),   # a warp is not implicitly synchronous
])
def test_shared_memory_hazards_are_found_where_no_barrier_orders_the_accesses(sync, block, hazard):
    m = _module(_EXCHANGE, "k", race=True)
    out = np.zeros(64, np.float32)
    if hazard is None:
        m.launch("k", (1,), (block,), (out, np.int32(sync)))
        np.testing.assert_array_equal(out[:block], np.arange(block)[::-1])
    else:
        with pytest.raises(EmuError, match=hazard):
            m.launch("k", (1,), (block,), (out, np.int32(sync)))


def test_a_write_over_another_threads_read_in_the_same_interval_is_a_hazard():
    m = _module("""
    __global__ void k(float* out) {
        __shared__ float s[32];
        s[threadIdx.x] = 1.f;
        __syncthreads();
        out[threadIdx.x] = s[(threadIdx.x + 1) % 32];
        s[threadIdx.x] = 2.f;          // thread t - 1 may not have read it yet
    }""", "k", race=True)
    with pytest.raises(EmuError, match="(write-after-read|read-after-write) hazard on shared"):
        m.launch("k", (1,), (32,), (np.zeros(32, np.float32),))


def test_two_blocks_writing_one_output_is_a_hazard():
    m = _module("""
    __global__ void k(float* out, int n) {
        const int i = (blockIdx.x * blockDim.x + threadIdx.x) % n;
        out[i] = 1.f;
    }""", "k", race=True)
    m.launch("k", (2,), (32,), (np.zeros(64, np.float32), np.int32(64)))
    with pytest.raises(EmuError, match="write-after-write hazard on global .* between block 0 and block 1"):
        m.launch("k", (2,), (32,), (np.zeros(64, np.float32), np.int32(48)))


def test_reading_a_cp_async_destination_before_its_wait_and_barrier_is_a_hazard():
    from gpubp.backends.cuda_source import kernels_dir

    src = (kernels_dir() / "async_copy.cuh").read_text() + """
    __global__ void k(const float* x, float* out, int early) {
        __shared__ __align__(16) float s[64];
        cp_async16(&s[4 * threadIdx.x], x + 4 * threadIdx.x, true);
        cp_async_commit();
        if (early) out[threadIdx.x] = s[(4 * threadIdx.x + 4) % 64];   // another thread's copy, in flight
        cp_async_wait<0>();
        __syncthreads();
        out[16 + threadIdx.x] = s[(4 * threadIdx.x + 4) % 64];
    }"""
    m = _module(src, "k", race=True)
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(32, np.float32)
    m.launch("k", (1,), (16,), (x, out, np.int32(0)))
    np.testing.assert_array_equal(out[16:], x[(4 * np.arange(16) + 4) % 64])
    with pytest.raises(EmuError, match="(read-after-write|write-after-read) hazard on shared"):
        m.launch("k", (1,), (16,), (x, out, np.int32(1)))
# ---------------------------------------------------------------------------- Hopper stand-ins
# mbarriers, TMA and wgmma (tests/support/cuda_emu/ptx.h over kernels/hopper.cuh), checked against
# layouts written out here from the PTX ISA and the CUDA programming guide, not from the kernels.
_WG_MMA = """
// the name of gemm_wgmma.cu's helper, whose body the emulator replaces with its stand-in
template <int PREC, bool TRANS = false>
__device__ __forceinline__ void wg_mma_64x128(float (&d)[64], unsigned long long da, unsigned long long db) {
    asm volatile("wgmma.mma_async ...;");
}
"""


def _hopper_module(src, *names):
    from gpubp.backends.cuda_source import kernels_dir

    return _module((kernels_dir() / "hopper.cuh").read_text() + _WG_MMA + src, *names)


def _tensor_map(host, box, cols=None, swizzle=3, elem_dtype=9):
    """The tensor map of the 2-D row-major host array `host` (uint16 bf16 bits; its first `cols`
    columns, all by default), from
    the fake driver's cuTensorMapEncodeTiled (no fake device: any host memory), as the kernel
    parameter (a 1-element array of 16 uint64)."""
    from support.fake_cupy import TensorMapDriver

    drv = TensorMapDriver()
    rows, cols = host.shape[0], cols or host.shape[1]
    err, tmap = drv.cuTensorMapEncodeTiled(elem_dtype, 2, host.ctypes.data, [cols, rows], [host.strides[0]],
                                           list(box), [1, 1], 0, swizzle, 0, 0)
    assert int(err) == 0, err
    out = np.zeros(1, dtype=[("opaque", "<u8", (16,))])
    out["opaque"][0] = tmap.opaque
    return out


_TMA_BOX = """
__global__ void box(const __grid_constant__ TensorMap128 tm, unsigned char* out, int c0, int c1, int bytes,
                    int shift, int wait) {
    extern __shared__ __align__(16) unsigned char smem[];
    const unsigned s0 = smem_addr(smem), dst = ((s0 + 1023u) & ~1023u) + 128u * shift;
    const unsigned bar = dst + bytes;
    if (threadIdx.x == 0) { mbar_init(bar, 1); mbar_init_fence(); }
    __syncthreads();
    if (threadIdx.x == 0) { mbar_arrive_expect_tx(bar, bytes); tma_load_2d(dst, &tm, bar, c0, c1); }
    if (wait) mbar_wait(bar, 0);
    __syncthreads();
    for (int i = threadIdx.x; i < bytes; i += blockDim.x) out[i] = smem[dst - s0 + i];
}"""


@pytest.mark.parametrize("shift", [0, 3])
def test_tma_box_lands_swizzled_with_zeros_outside_the_tensor(shift):
    """A 16 x 64 bf16 box at (c0 64, c1 30) of a 37 x 100 tensor (rows padded to 104): columns 100..127
    and rows 37..45 are zeros; element (r, e) of the box lies in row r (128 bytes) in 16-byte chunk
    (e / 8) ^ ((r + shift) % 8), the swizzle following shared address bits 7-9 (the programming
    guide's offset formula for a destination `shift` 128-byte rows past a 1024-byte boundary)."""
    m = _hopper_module(_TMA_BOX, "box")
    rng = np.random.default_rng(7)
    host = np.zeros((37, 104), np.uint16)
    host[:, :100] = rng.integers(1, 2**16, (37, 100), dtype=np.uint16)
    c0, c1, rows, cols = 64, 30, 16, 64
    out = np.zeros(rows * 128, np.uint8)
    tm = _tensor_map(host, (cols, rows), cols=100)
    m.launch("box", (1,), (128,), (tm, out, np.int32(c0), np.int32(c1), np.int32(out.size), np.int32(shift),
                                   np.int32(1)), shared_mem=4096)
    got = out.view(np.uint16).reshape(rows, cols)
    for r in range(rows):
        for e in range(cols):
            y, x = c1 + r, c0 + e
            want = host[y, x] if y < 37 and x < 100 else 0
            chunk = (e // 8) ^ ((r + shift) % 8)
            assert got[r, chunk * 8 + e % 8] == want, (r, e)


@pytest.mark.parametrize("slack, error", [(0, "not 128-byte aligned"), (1024, None),
                                          (512, "outside the block's shared memory")])
def test_dynamic_shared_memory_is_only_16_byte_aligned(slack, error):
    """Dynamic shared memory starts where the GPU may start it, 16 bytes past a 1024-byte
    boundary: a TMA box put at its start (slack 0) is not 128-byte aligned; rounded up to the
    1024-byte swizzle pattern it needs 1008 bytes of slack, which 1024 holds and 512 does not."""
    m = _hopper_module("""
    __global__ void k(const __grid_constant__ TensorMap128 tm, unsigned char* out, int slack) {
        extern __shared__ __align__(16) unsigned char smem[];
        const unsigned s0 = smem_addr(smem), dst = slack ? (s0 + 1023u) & ~1023u : s0;
        __shared__ __align__(8) unsigned long long bar_mem[1];
        const unsigned bar = smem_addr(bar_mem);
        if (threadIdx.x == 0) { mbar_init(bar, 1); mbar_init_fence(); }
        __syncthreads();
        if (threadIdx.x == 0) { mbar_arrive_expect_tx(bar, 1024); tma_load_2d(dst, &tm, bar, 0, 0); }
        mbar_wait(bar, 0);
        out[threadIdx.x] = smem[dst - s0 + threadIdx.x];
    }""", "k")
    host = np.arange(8 * 64, dtype=np.uint16).reshape(8, 64)
    out = np.zeros(32, np.uint8)
    args = (_tensor_map(host, (64, 8)), out, np.int32(slack))
    if error is None:
        m.launch("k", (1,), (32,), args, shared_mem=slack + 1024)
        assert (out == host.view(np.uint8)[0, :32]).all()
    else:
        with pytest.raises(EmuError, match=error):
            m.launch("k", (1,), (32,), args, shared_mem=slack + 1024)


def test_tma_bytes_read_before_the_wait_are_poison():
    m = _hopper_module(_TMA_BOX, "box")
    host = np.ones((8, 64), np.uint16)
    out = np.zeros(8 * 128, np.uint8)
    m.launch("box", (1,), (32,), (_tensor_map(host, (64, 8)), out, np.int32(0), np.int32(0), np.int32(out.size),
                                  np.int32(0), np.int32(0)), shared_mem=4096)
    assert (out == 0xFF).all()


def test_fake_driver_refuses_what_cuTensorMapEncodeTiled_documents_as_invalid():
    from support.fake_cupy import TensorMapDriver

    d = TensorMapDriver()

    def enc(ptr=0x1000, dims=(64, 8), strides=(128,), box=(64, 8), swizzle=3, dtype=9):
        err, _ = d.cuTensorMapEncodeTiled(dtype, 2, ptr, list(dims), list(strides), list(box), [1, 1], 0, swizzle,
                                          0, 0)
        return str(err) if int(err) else None

    assert enc() is None
    assert "16-byte aligned" in enc(ptr=0x1008)
    assert "multiple of 16" in enc(strides=(120,))
    assert "less than" in enc(dims=(100, 8), strides=(128,))           # rows shorter than the row
    assert "at most 256" in enc(box=(64, 300))
    assert "exceeds the 128-byte swizzle" in enc(dims=(128, 8), strides=(256,), box=(128, 8))
    assert "multiple of 16" in enc(box=(4, 8))                          # 8 bytes of inner box
    assert enc(dims=(128, 8), strides=(256,), box=(128, 8), swizzle=0) is None


def test_an_mbarrier_phase_that_never_completes_is_a_deadlock():
    m = _hopper_module("""
    __global__ void k(float* out, int expect_more) {
        __shared__ __align__(8) unsigned long long bar_mem[1];
        const unsigned bar = smem_addr(bar_mem);
        if (threadIdx.x == 0) mbar_init(bar, 2);     // two arrivals expected
        __syncthreads();
        if (threadIdx.x == 0) { if (expect_more) mbar_arrive_expect_tx(bar, 16); else mbar_arrive(bar); }
        if (threadIdx.x == 1) mbar_arrive(bar);
        mbar_wait(bar, 0);
        out[threadIdx.x] = 1.f;
    }""", "k")
    out = np.zeros(64, np.float32)
    m.launch("k", (1,), (64,), (out, np.int32(0)))
    assert (out == 1).all()
    with pytest.raises(EmuError, match="deadlock.* 64 waiting on mbarrier phases"):
        m.launch("k", (1,), (64,), (out, np.int32(1)))       # 16 bytes announced, none arrive


def _wg_desc(start, lbo, sbo, swizzle=1):
    """A matrix descriptor per the PTX ISA's "Matrix Descriptor Format"."""
    enc = lambda x: (x & 0x3FFFF) >> 4  # noqa: E731
    return enc(start) | enc(lbo) << 16 | enc(sbo) << 32 | swizzle << 62


_WG_RUN = """
template <int PREC, bool TRANS>
__global__ void __launch_bounds__(128) run(const unsigned char* img, int nbytes, unsigned long long da,
                                           unsigned long long db, float* out, int clobber) {
    extern __shared__ __align__(16) unsigned char smem[];
    const unsigned s0 = smem_addr(smem), base = (s0 + 1023u) & ~1023u, off = base - s0;
    for (int i = threadIdx.x; i < nbytes; i += 128) smem[off + i] = img[i];
    __syncthreads();
    float d[64];
    for (int i = 0; i < 64; ++i) d[i] = out[threadIdx.x * 64 + i];
    wg_fence();
    wg_mma_64x128<PREC, TRANS>(d, da + (base >> 4), db + (base >> 4));   // the start address field
    wg_commit();
    __syncthreads();
    if (clobber) for (int i = threadIdx.x; i < nbytes; i += 128) smem[off + i] = 0;   // before the wait
    __syncthreads();
    wg_wait<0>();
    for (int i = 0; i < 64; ++i) out[threadIdx.x * 64 + i] = d[i];
}"""


def _d_of_fragments(out):
    """D (64 x 128) from the threads' accumulators by the PTX ISA's .m64nNk16/k8 f32 D fragment
    layout: thread t, register i holds D(16 (t/32) + (t%32)/4 + 8 ((i/2)%2), 8 (i/4) + 2 (t%4) + i%2)."""
    D = np.full((64, 128), np.nan)
    for t in range(128):
        for i in range(64):
            D[16 * (t // 32) + (t % 32) // 4 + 8 * ((i // 2) % 2), 8 * (i // 4) + 2 * (t % 4) + i % 2] = out[t, i]
    return D


def _k_major_sw128(img, at, M, K, esize, bits, kofs):
    """Rows of 128 bytes, 8-row atoms of 1024 bytes (SBO): element (m, k) at byte kofs + k esize of
    row m, its 16-byte chunk index XORed with m % 8 (a 1024-aligned atom)."""
    for m in range(M):
        for k in range(K):
            b = kofs + k * esize
            pos = at + (m // 8) * 1024 + (m % 8) * 128 + ((b // 16) ^ (m % 8)) * 16 + b % 16
            img[pos:pos + esize] = np.frombuffer(bits[m, k].tobytes(), np.uint8)


def _mn_major_sw128(img, at, MN, K, bits, lbo):
    """bf16, MN-major: 64-element (128-byte) rows of MN per k, 8 k-rows a 1024-byte atom (SBO
    1024), 64-element MN chunks LBO apart; 16-byte chunk index XORed with k % 8."""
    for n in range(MN):
        for k in range(K):
            b = (n % 64) * 2
            pos = at + (n // 64) * lbo + (k // 8) * 1024 + (k % 8) * 128 + ((b // 16) ^ (k % 8)) * 16 + b % 16
            img[pos:pos + 2] = np.frombuffer(bits[n, k].tobytes(), np.uint8)


@pytest.mark.parametrize("kind, kofs", [("bf16", 0), ("bf16", 32), ("bf16 MN-major", 0), ("tf32", 0), ("tf32", 32)])
def test_wgmma_multiplies_operands_laid_out_by_hand(kind, kofs):
    """One wgmma.mma_async m64n128k16 (bf16) or k8 (tf32), scale-d 1, of A (64 x K) and B (128 x K)
    written into shared memory by the canonical 128-byte-swizzle layouts, through descriptors
    built from the ISA's bit fields; K-major operands start `kofs` bytes into their rows (a later
    k-step of a 128-byte row, as a kernel steps through a TMA tile).  Shared memory cleared after
    the issue and before the wait_group is reported."""
    from gpubp.precision import bf16_bits, to_bf16

    rng = np.random.default_rng(11)
    bf16 = kind != "tf32"
    K, esize = (16, 2) if bf16 else (8, 4)
    A = rng.standard_normal((64, K)).astype(np.float32)
    B = rng.standard_normal((128, K)).astype(np.float32)
    img = np.zeros(8192 + 16384, np.uint8)
    if bf16:
        a_bits, b_bits = bf16_bits(A), bf16_bits(B)
        a_val, b_val = to_bf16(A), to_bf16(B)
    else:   # raw float32 bits: wgmma .tf32 drops the low 13 bits itself (PTX ISA)
        a_bits, b_bits = A.view(np.uint32), B.view(np.uint32)
        a_val = (a_bits & np.uint32(0xFFFFE000)).view(np.float32)
        b_val = (b_bits & np.uint32(0xFFFFE000)).view(np.float32)
    if kind == "bf16 MN-major":
        _mn_major_sw128(img, 0, 64, K, a_bits, 2048)
        _mn_major_sw128(img, 8192, 128, K, b_bits, 2048)
        da, db = _wg_desc(0, 2048, 1024), _wg_desc(8192, 2048, 1024)
    else:
        _k_major_sw128(img, 0, 64, K, esize, a_bits, kofs)
        _k_major_sw128(img, 8192, 128, K, esize, b_bits, kofs)
        da, db = _wg_desc(kofs, 16, 1024), _wg_desc(8192 + kofs, 16, 1024)
    name = f"run<{2 if bf16 else 0}, {'true' if kind == 'bf16 MN-major' else 'false'}>"
    m = _hopper_module(_WG_RUN, name)
    C = rng.standard_normal((128, 64)).astype(np.float32)
    ref = _d_of_fragments(C) + a_val.astype(np.float64) @ b_val.astype(np.float64).T
    out = C.copy()
    m.launch(name, (1,), (128,), (img, np.int32(img.size), np.uint64(da), np.uint64(db), out, np.int32(0)),
             shared_mem=img.size + 1024)
    np.testing.assert_allclose(_d_of_fragments(out), ref, rtol=1e-6, atol=1e-6)
    # operands cleared after the issue, before the wait_group (a stage released early): caught
    with pytest.raises(EmuError, match="operands changed between its issue and the wgmma.wait_group"):
        m.launch(name, (1,), (128,), (img, np.int32(img.size), np.uint64(da), np.uint64(db), C.copy(),
                                      np.int32(1)), shared_mem=img.size + 1024)


def test_wgmma_needs_the_whole_warpgroup_and_a_fence():
    m = _hopper_module("""
    __global__ void k(float* out, int mode) {
        extern __shared__ __align__(16) unsigned char smem[];
        const unsigned long long desc = smem_addr(smem) >> 4;   // no swizzle, LBO = SBO = 0: 128 bytes
        float d[64] = {0};
        if (mode != 1) wg_fence();
        if (mode == 2 && threadIdx.x >= 96) return;      // a warp leaves: the others wait forever
        wg_mma_64x128<2>(d, desc, desc);
        wg_commit();
        wg_wait<0>();
        out[threadIdx.x] = d[0];
    }""", "k")
    out = np.zeros(128, np.float32)
    with pytest.raises(EmuError, match="before any wgmma.fence"):
        m.launch("k", (1,), (128,), (out, np.int32(1)), shared_mem=256)
    with pytest.raises(EmuError, match="deadlock.* 96 at warpgroup collectives"):
        m.launch("k", (1,), (128,), (out, np.int32(2)), shared_mem=256)
    with pytest.raises(EmuError, match="do not fill warpgroup"):
        m.launch("k", (1,), (64,), (out, np.int32(0)), shared_mem=256)


@pytest.mark.parametrize("consumer_regs, producer_regs, error", [
    (232, 40, None),                     # gemm_wgmma.cu's budget: 384 threads start with 168 each
    (240, 40, "setmaxnreg.inc for registers the block's pool never has"),   # 1024 registers short
    (232, 56, "setmaxnreg.inc for registers the block's pool never has"),   # the producer keeps too many
])
def test_setmaxnreg_inc_waits_for_registers_other_warpgroups_give_back(consumer_regs, producer_regs, error):
    """setmaxnreg.inc blocks until the block's register pool has the registers (PTX ISA): a budget
    above what the block was launched with hangs on the GPU, a deadlock here."""
    m = _hopper_module(f"""
    __global__ void k(float* out) {{
        if (threadIdx.x < 128) {{ regs_dec<{producer_regs}>(); return; }}
        regs_inc<{consumer_regs}>();
        out[threadIdx.x] = 1.f;
    }}""", "k")
    out = np.zeros(384, np.float32)
    if error is None:
        m.launch("k", (1,), (384,), (out,))
        assert (out[128:] == 1).all()
    else:
        with pytest.raises(EmuError, match=error):
            m.launch("k", (1,), (384,), (out,))


def test_setmaxnreg_is_executed_by_the_whole_warpgroup():
    m = _hopper_module("""
    __global__ void k(float* out) {
        if (threadIdx.x < 96) regs_dec<40>();     // warp 3 of the warpgroup does not
        out[threadIdx.x] = 1.f;
    }""", "k")
    with pytest.raises(EmuError, match="deadlock.* 96 at warpgroup collectives"):
        m.launch("k", (1,), (128,), (np.zeros(128, np.float32),))


# ---------------------------------------------------------------------------- independently derived
# The layout tables above were written out by the team that wrote the kernels and ptx.h, from one
# reading of the PTX ISA.  These tests take the same facts from another source, NVIDIA's CUTLASS:
# its CuTe (thread, value) -> (row, column) layouts of the instructions, transcribed below as
# (shape, stride) and evaluated here, its canonical GMMA shared-memory layouts and its
# GmmaDescriptor bit fields; and from what ptxas itself emits for the conversions.
#   mma.sync:  include/cute/atom/mma_traits_sm80.hpp (SM80_16x8x8_F32TF32TF32F32_TN;
#              SM80_16x8x16_F32BF16BF16F32_TN, whose layouts are SM80_16x8x16_F16F16F16F16_TN's)
#   wgmma:     include/cute/atom/mma_traits_sm90_gmma.hpp (CLayout_64xN; make_gmma_desc's canonical
#              layouts), include/cute/arch/mma_sm90_desc.hpp (GmmaDescriptor)
def _cute(shape, stride, i):
    """CuTe: the offset of flat index `i` in the layout shape:stride (nested tuples), its modes
    taken colexicographically (the leftmost fastest)."""
    if not isinstance(shape, tuple):
        return (i % shape) * stride
    off = 0
    for s, d in zip(shape, stride):
        n = int(np.prod(s)) if isinstance(s, tuple) else s
        off += _cute(s, d, i % n)
        i //= n
    return off


def _cute_tv(layout, rows):
    """{(thread, value): (row, col)} of a CuTe (thread, value) -> (rows x cols, column-major) layout."""
    (tshape, vshape), (tstride, vstride) = layout
    nt = int(np.prod(tshape)) if isinstance(tshape, tuple) else tshape
    nv = int(np.prod(vshape)) if isinstance(vshape, tuple) else vshape
    out = {}
    for t in range(nt):
        for v in range(nv):
            i = _cute(tshape, tstride, t) + _cute(vshape, vstride, v)
            out[t, v] = (i % rows, i // rows)
    return out


# (thread, value) layouts; A is (M x K), B is (N x K), C/D is (M x N), each column-major
_CUTE_MMA = {
    "tf32": dict(K=8, A=(((4, 8), (2, 2)), ((16, 1), (8, 64))), B=(((4, 8), 2), ((8, 1), 32))),
    "bf16": dict(K=16, A=(((4, 8), (2, 2, 2)), ((32, 1), (16, 8, 128))), B=(((4, 8), (2, 2)), ((16, 1), (8, 64)))),
}
_CUTE_SM80_16x8_ROW = (((4, 8), (2, 2)), ((32, 1), (16, 8)))   # C and D of both


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
def test_mma_fragments_follow_cutlass_cute_layouts(kind):
    """mma.sync m16n8k8 .tf32 / m16n8k16 .bf16 with every lane's registers filled by CuTe's
    layouts (a bf16 register holds values 2r (low 16 bits) and 2r + 1): D = A B + C."""
    from gpubp.backends.cuda_source import kernels_dir
    from gpubp.precision import to_bf16, to_tf32

    L = _CUTE_MMA[kind]
    K, bf16 = L["K"], kind == "bf16"
    ta, tb, tc = _cute_tv(L["A"], 16), _cute_tv(L["B"], 8), _cute_tv(_CUTE_SM80_16x8_ROW, 16)
    na, nb = (8, 4) if bf16 else (4, 2)
    # flat indices into the row-major A (16 x K), B^T (8 x K) and C (16 x 8) per lane and value
    ai = np.array([[ta[t, v][0] * K + ta[t, v][1] for v in range(na)] for t in range(32)], np.int32)
    bi = np.array([[tb[t, v][0] * K + tb[t, v][1] for v in range(nb)] for t in range(32)], np.int32)
    ci = np.array([[tc[t, v][0] * 8 + tc[t, v][1] for v in range(4)] for t in range(32)], np.int32)
    # every element of each matrix is one (lane, value)
    for idx, n in ((ai, 16 * K), (bi, 8 * K), (ci, 128)):
        assert sorted(idx.ravel()) == list(range(n))
    src = """
    template <bool BF16>
    __global__ void k(const int* ai, const int* bi, const int* ci, const float* A, const float* Bt, const float* C,
                      float* D) {
        const int l = threadIdx.x, NA = BF16 ? 8 : 4, NB = BF16 ? 4 : 2;
        auto u = [](float x) { return __float_as_uint(x); };   // operands are tf32 / bf16 values already
        unsigned a[4], b[2];
        for (int r = 0; r < 4; ++r)
            a[r] = BF16 ? (u(A[ai[l * NA + 2 * r]]) >> 16) | (u(A[ai[l * NA + 2 * r + 1]]) & 0xFFFF0000u)
                        : u(A[ai[l * NA + r]]);
        for (int r = 0; r < 2; ++r)
            b[r] = BF16 ? (u(Bt[bi[l * NB + 2 * r]]) >> 16) | (u(Bt[bi[l * NB + 2 * r + 1]]) & 0xFFFF0000u)
                        : u(Bt[bi[l * NB + r]]);
        float d[4];
        for (int i = 0; i < 4; ++i) d[i] = C[ci[l * 4 + i]];
        if (BF16) mma_bf16(d, a, b); else mma_tf32(d, a, b);
        for (int i = 0; i < 4; ++i) D[ci[l * 4 + i]] = d[i];
    }"""
    name = f"k<{'true' if bf16 else 'false'}>"
    m = _module((kernels_dir() / "mma.cuh").read_text() + src, name)
    rng = np.random.default_rng(5)
    r = to_bf16 if bf16 else to_tf32
    A = r(rng.standard_normal((16, K)).astype(np.float32))
    Bt = r(rng.standard_normal((8, K)).astype(np.float32))
    C = rng.standard_normal((16, 8)).astype(np.float32)
    D = np.full((16, 8), np.nan, np.float32)
    m.launch(name, (1,), (32,), (ai, bi, ci, A, Bt, C, D))
    np.testing.assert_allclose(D, A.astype(np.float64) @ Bt.astype(np.float64).T + C, rtol=1e-6, atol=1e-6)


def _cute_wgmma_d(n):
    """{(thread, register): (row, col)} of wgmma's f32 accumulator, CuTe's CLayout_64xN."""
    return _cute_tv((((4, 8, 4), (2, 2, n // 8)), ((128, 1, 16), (64, 8, 512))), 64)


def test_wgmma_accumulator_layout_is_cutlass_clayout_64xN():
    got = _d_of_fragments(np.arange(128 * 64).reshape(128, 64))
    for (t, i), (row, col) in _cute_wgmma_d(128).items():
        assert got[row, col] == t * 64 + i, (t, i)


def _gmma_desc_cutlass(start, lbo, sbo, layout_type=1, base_offset=0):
    """cute::GmmaDescriptor's bit fields: start_address_ (14 bits from bit 0), leading_byte_offset_
    (14 from 16), stride_byte_offset_ (14 from 32), each a byte value >> 4; base_offset_ (3 from
    49); layout_type_ (2 from 62; B128 = 1, B64 = 2, B32 = 3)."""
    f = lambda x: (x >> 4) & 0x3FFF  # noqa: E731
    return f(start) | f(lbo) << 16 | f(sbo) << 32 | (base_offset & 7) << 49 | (layout_type & 3) << 62


def _sw128(byte_address):
    """CuTe's Swizzle<3,4,3> on a shared-memory byte address: bits [4, 7) ^= bits [7, 10)."""
    return byte_address ^ ((byte_address & 0x380) >> 3)


def _gmma_operand_bytes(major, esize, start, mn_count, lbo, sbo):
    """{(mn, k): byte address} of one wgmma operand (mn_count rows of A or columns of B, the
    instruction's K = 32 / esize) at descriptor start `start`, by make_gmma_desc's canonical
    128-byte-swizzle layouts, in elements (T = 16 / esize):
      K-major:  Swizzle<3,4,3> o ((8,m),(T,2)) : ((8T,SBO),(1,T))
      MN-major: Swizzle<3,4,3> o ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))"""
    T = 16 // esize
    K = 2 * T
    out = {}
    for mn in range(mn_count):
        for k in range(K):
            if major == "K":
                e = _cute((8, mn_count // 8), (8 * T, sbo // esize), mn) + _cute((T, 2), (1, T), k)
            else:
                e = (_cute((T, 8, mn_count // (8 * T)), (1, T, lbo // esize), mn)
                     + _cute((8, 2), (8 * T, sbo // esize), k))
            out[mn, k] = _sw128(start + e * esize)
    return out


def _tma_sw128_tile(rows, row_bytes=128):
    """{(row, byte): byte offset} of a box written by TMA with CU_TENSOR_MAP_SWIZZLE_128B at a
    1024-aligned address (CUDA programming guide: the 16-byte chunk index XOR the row % 8)."""
    return {(r, b): r * row_bytes + ((b // 16) ^ (r % 8)) * 16 + b % 16
            for r in range(rows) for b in range(row_bytes)}


_WG_DESC_RUN = """
// one k-step of gemm_wgmma.cu's consumer loop on one stage: the descriptors made by hopper.cuh's
// helpers exactly as wg_pipeline makes them, written out, and the wgmma run on them
template <int PREC, bool MN>
__global__ void __launch_bounds__(128) kstep(const unsigned char* img, int nbytes, int ks, float* out,
                                            unsigned long long* desc) {
    extern __shared__ __align__(16) unsigned char smem[];
    const unsigned s0 = smem_addr(smem), base = (s0 + 1023u) & ~1023u, off = base - s0;
    for (int i = threadIdx.x; i < nbytes; i += 128) smem[off + i] = img[i];
    __syncthreads();
    const unsigned tileX = base, tileY = base + 128 * 128;   // WG_BM rows of 128 bytes, then Y
    unsigned long long da, db;
    if (MN) {
        da = wg_desc_mn_sw128(tileX + ks * 2048, 64 * 128);
        db = wg_desc_mn_sw128(tileY + ks * 2048, 64 * 128);
    } else {
        da = wg_desc_sw128(tileX + ks * 32);
        db = wg_desc_sw128(tileY + ks * 32);
    }
    if (threadIdx.x == 0) { desc[0] = da; desc[1] = db; desc[2] = base; }
    float d[64];
    for (int i = 0; i < 64; ++i) d[i] = 0.f;
    wg_fence();
    wg_mma_64x128<PREC, MN>(d, da, db);
    wg_commit();
    wg_wait<0>();
    for (int i = 0; i < 64; ++i) out[threadIdx.x * 64 + i] = d[i];
}"""


@pytest.mark.parametrize("kind", ["bf16", "tf32", "bf16 MN-major"])
def test_kernel_descriptors_read_the_tma_tile_by_cutlass_canonical_layouts(kind):
    """gemm_wgmma.cu's operands, end to end against CUTLASS: a stage laid out as TMA writes it
    (128-byte swizzle) must be, at each of the 4 k-steps, the canonical GMMA layout at the
    descriptor the kernel's helpers make (checked here in Python, chunk by chunk); those
    descriptors must be CUTLASS's GmmaDescriptor of that layout (K-major: LBO 1 (unused), SBO
    1024; MN-major: LBO the 8 KB step between 64-element chunks, SBO 1024); and the wgmma run on
    them must give D = A B^T in CuTe's accumulator layout."""
    from gpubp.precision import bf16_bits, to_bf16, to_tf32

    bf16, mn_major = kind != "tf32", kind == "bf16 MN-major"
    esize = 2 if bf16 else 4
    K = 32 // esize                      # one wgmma's k
    KT = 128 // esize if not mn_major else 64   # the stage's k: a 128-byte row, or 64 k-rows
    rng = np.random.default_rng(13)
    r = to_bf16 if bf16 else to_tf32
    X = r(rng.standard_normal((128, KT)).astype(np.float32))    # X(p, k): rows of the block tile
    Y = r(rng.standard_normal((128, KT)).astype(np.float32))    # Y(q, k)

    def bits(a):
        return bf16_bits(a) if bf16 else a.view(np.uint32)

    img = np.zeros(128 * 128 * 2, np.uint8)
    tile = _tma_sw128_tile(64 if mn_major else 128)
    # where TMA puts element (mn, k) of X / Y (relative to the stage)
    if mn_major:   # boxes {64, 64} of the (k x mn) matrices: chunk c = mn // 64, row k, byte 2 (mn % 64)
        where = lambda t0, mn, k: t0 + (mn // 64) * 8192 + tile[k, 2 * (mn % 64)]  # noqa: E731
    else:          # boxes {KT, 128}: row mn, byte k esize
        where = lambda t0, mn, k: t0 + tile[mn, k * esize]  # noqa: E731
    for t0, M in ((0, X), (16384, Y)):
        b = bits(M)
        for mn in range(128):
            for k in range(KT):
                p = where(t0, mn, k)
                img[p:p + esize] = np.frombuffer(b[mn, k].tobytes(), np.uint8)

    name = f"kstep<{2 if bf16 else 0}, {'true' if mn_major else 'false'}>"
    m = _hopper_module(_WG_DESC_RUN, name)
    for ks in range(4):
        out = np.zeros((128, 64), np.float32)
        desc = np.zeros(3, np.uint64)
        m.launch(name, (1,), (128,), (img, np.int32(img.size), np.int32(ks), out, desc), shared_mem=img.size + 1024)
        base = int(desc[2])
        lbo, sbo, step = (8192, 1024, 2048) if mn_major else (16, 1024, 32)
        for which, t0, rows in (("A", 0, 64), ("B", 16384, 128)):
            start = base + t0 + ks * step
            assert int(desc[0 if which == "A" else 1]) == _gmma_desc_cutlass(start, lbo, sbo), (which, ks)
            canon = _gmma_operand_bytes("MN" if mn_major else "K", esize, start, rows, lbo, sbo)
            for (mn, k), a in canon.items():   # the canonical layout reads what TMA wrote
                assert a - base == where(t0, mn, ks * K + k), (which, ks, mn, k)
        D = np.full((64, 128), np.nan)
        for (t, i), (row, col) in _cute_wgmma_d(128).items():
            D[row, col] = out[t, i]
        ref = X[:64, ks * K:(ks + 1) * K].astype(np.float64) @ Y[:, ks * K:(ks + 1) * K].astype(np.float64).T
        np.testing.assert_allclose(D, ref, rtol=1e-6, atol=1e-6, err_msg=f"k-step {ks}")


def _near_every_rounding_boundary(drop):
    """float32 patterns: every kept high part (both signs, every exponent, subnormals, inf and NaN)
    with the dropped low bits 0, half - 1, half (a tie), half + 1 and all ones."""
    hi = np.arange(1 << (32 - drop), dtype=np.uint64) << np.uint64(drop)
    half = 1 << (drop - 1)
    low = np.array([0, half - 1, half, half + 1, (1 << drop) - 1], np.uint64)
    return (hi[:, None] | low[None, :]).ravel().astype(np.uint32)


def test_emulated_conversions_match_the_numpy_emulation_and_ptxas():
    """ptx.h's cvt.rna.tf32.f32 and cvt.rn.bf16x2.f32 against gpubp.precision (itself checked
    against arithmetic rounding in test_precision.py) near every rounding boundary: ties, carries,
    overflow to inf, subnormals, signs.  bf16x2(lo, hi) puts lo in the low half.  NaN: what ptxas
    (CUDA 13.0, sm_80 and sm_90a) emits for cvt.rna.tf32.f32 is
        FSETP.GEU.AND P0, PT, |x|, +INF;  @!P0 IADD x, x, 0x1000;  LOP3 d = x & 0xffffe000
    i.e. finite x: (x + 0x1000) & ~0x1fff, inf and NaN: x & ~0x1fff (a NaN whose payload lies only in
    the low 13 bits becomes inf)."""
    from gpubp.backends.cuda_source import kernels_dir
    from gpubp.precision import bf16_bits, to_tf32

    m = _module((kernels_dir() / "mma.cuh").read_text() + """
    __global__ void cvt(const float* x, const float* y, unsigned* t, unsigned* b, int n) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) { t[i] = to_tf32(x[i]); b[i] = bf16x2(x[i], y[i]); }
    }""", "cvt")
    for drop in (13, 16):
        xb = _near_every_rounding_boundary(drop)
        x = xb.view(np.float32)
        y = np.ascontiguousarray(np.roll(x, 1))
        t = np.zeros(x.size, np.uint32)
        b = np.zeros(x.size, np.uint32)
        m.launch("cvt", (1,), (64,), (x, y, t, b, np.int32(x.size)))
        nan = np.isnan(x)
        with np.errstate(invalid="ignore"):
            want_t = to_tf32(x).view(np.uint32)
        assert np.array_equal(t[~nan], want_t[~nan])
        assert np.array_equal(t[nan], xb[nan] & np.uint32(0xFFFFE000))    # ptxas's sequence
        lo, hi = b & np.uint32(0xFFFF), b >> np.uint32(16)
        for half, src in ((lo, x), (hi, y)):
            n = np.isnan(src)
            assert np.array_equal(half[~n], bf16_bits(src)[~n])
            assert np.all((half[n] & 0x7F80) == 0x7F80) and np.all(half[n] & 0x7F)   # a bf16 NaN


def test_mma_cuh_conversions_compile_to_the_ptx_the_isa_specifies():
    """The kernels' own inline PTX (kernels/mma.cuh, which the emulator replaces), through NVRTC:
    to_tf32 is cvt.rna.tf32.f32 (ties away), and bf16x2(lo, hi) passes hi as the FIRST source of
    cvt.rn.bf16x2.f32 (PTX ISA: d[31:16] = convert(a), d[15:0] = convert(b)), so lo lands in the low
    half, the first element of a bf16x2 mma fragment register."""
    import re

    nvrtc = pytest.importorskip("cuda.bindings.nvrtc")
    from gpubp.backends import nvrtc_program
    from gpubp.backends.cuda_source import kernels_dir

    src = (kernels_dir() / "mma.cuh").read_text() + """
    extern "C" __global__ void k(float lo, float hi, unsigned* o) { o[0] = bf16x2(lo, hi); o[1] = to_tf32(lo); }"""
    prog = nvrtc_program.check(nvrtc, nvrtc.nvrtcCreateProgram(src.encode(), b"mma_probe.cu", 0, [], []), "create")
    try:
        res = nvrtc.nvrtcCompileProgram(prog, 1, [b"--gpu-architecture=compute_80"])
        assert res[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS, res
        size = nvrtc_program.check(nvrtc, nvrtc.nvrtcGetPTXSize(prog), "ptx size")
        buf = nvrtc_program.out_buffer(size)     # writable: NVRTC writes into it
        nvrtc_program.check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "ptx")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    ptx = buf.decode(errors="replace")
    param = {m.group(2): m.group(1) for m in re.finditer(r"ld\.param\.f32\s+(%f\d+),\s*\[k_param_(\d)\]", ptx)}
    cvt = re.search(r"cvt\.rn\.bf16x2\.f32\s+%r\d+,\s*(%f\d+),\s*(%f\d+);", ptx)
    assert cvt and param, ptx
    assert (cvt.group(1), cvt.group(2)) == (param["1"], param["0"]), ptx    # (a, b) = (hi, lo)
    assert re.search(r"cvt\.rna\.tf32\.f32\s+%r\d+,\s*" + re.escape(param["0"]) + ";", ptx), ptx


# ---------------------------------------------------------------------------- the backend, end to end
@pytest.fixture
def emulated(monkeypatch):
    """A fake CuPy whose launches compute (tests/support/cuda_emu)."""
    return _install_emulated(monkeypatch)


def _install_emulated(monkeypatch, race=None):
    from gpubp.backends import cuda_gemm_wgmma
    from test_cuda_launch_contract import install_fake

    fake = install_fake(monkeypatch, execute=True, race=race)
    monkeypatch.setattr(cuda_gemm_wgmma, "_driver", lambda: fake.driver)   # TMA maps for the emulator
    return fake


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


def test_random_networks_train_as_the_numpy_backend(emulated, rng):
    """Random networks on the default kernels (fused runs or not, per-layer activations, every loss,
    every optimizer, sample weights, a schedule, several batches of two epochs): the parameters,
    outputs and loss history equal the numpy backend's.  float64: to 1e-9.  float32: SGD's variants
    only, to 2e-5 (Adam's first steps are about lr * sign(g), so a gradient near zero whose sign the
    summation order decides moves a weight by 2 lr: float32 noise, not a kernel's error)."""
    import gpubp
    from conftest import random_targets
    from gpubp import schedules
    from gpubp.backends import get_backend
    from gpubp.backends.cuda_backend import CudaBackend
    from support.random_networks import OPTIMIZERS, random_network

    for _ in range(8):
        c = random_network(rng)
        dtype = "float64" if rng.random() < 0.4 else "float32"
        opt = str(rng.choice(list(OPTIMIZERS) if dtype == "float64" else ["sgd", "momentum", "nesterov"]))
        B, bs = c["B"], max(1, int(rng.choice([c["B"], c["B"] // 2, c["B"] // 3 + 1])))
        X = rng.standard_normal((B, c["sizes"][0])).astype(dtype)
        Y = random_targets(rng, c["loss"], B, c["sizes"][-1], dtype=np.dtype(dtype))
        w = rng.uniform(0, 2, B).astype(dtype) if rng.random() < 0.5 else None
        got = {}
        for name, be in (("numpy", get_backend("numpy")), ("cuda", CudaBackend())):
            net = gpubp.MLP(c["sizes"], activation=c["activations"], output_activation=c["output_activation"],
                            loss=c["loss"], backend=be, dtype=dtype, seed=0)
            h = net.fit(X, Y, epochs=2, batch_size=bs, optimizer=OPTIMIZERS[opt](), sample_weight=w,
                        lr_schedule=schedules.step_decay(0.01, 2, 0.5), verbose=0, progress=False)
            got[name] = (np.concatenate([np.ravel(p) for layer in net.get_params() for p in layer]),
                         be.to_numpy(net.forward(X)), np.asarray(h["loss"]))
        tol = 1e-9 if dtype == "float64" else 2e-5
        for what, a, b in zip(("parameters", "outputs", "loss history"), got["cuda"], got["numpy"]):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)     # (a relu output may be all zeros)
            assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b), (what, c, dtype, opt, bs)


@pytest.mark.parametrize("precision", ["float32", "tf32"])
def test_fused_narrow_runs_train_as_the_numpy_backend(emulated, precision):
    got, ref = _train_both([9, 32, 24, 17, 3], 1031, activation="relu", epochs=1, precision=precision)
    tol = 1e-5 if precision == "float32" else 1e-3
    assert _rel(got, ref) < tol
    assert any(k.startswith("fused_mlp") for k in emulated.kernel_names()), emulated.kernel_names()


@pytest.mark.parametrize("activation", [["gelu", "tanh", "relu", "silu"], ["tanh", "silu", "gelu", "relu"]])
def test_a_fused_run_between_per_layer_gemms_trains_as_the_numpy_backend(emulated, activation):
    """A fused run (layers 2-3) that starts after a per-layer layer and ends before one: its forward
    reads layer 1's A, its backward hands layer 1 the delta times layer 1's own g' (from Z for gelu,
    from A for tanh), and the per-layer GEMMs on both sides read and write the run's buffers; every
    layer has another activation, so one read from the wrong layer shows."""
    from gpubp.backends.cuda_backend import CudaBackend

    sizes, B = [70, 32, 24, 17, 100, 3], 1031
    assert CudaBackend()._segments(sizes, B, np.float32) == [
        (1, 1, False), (2, 3, True), (4, 4, False), (5, 5, False)]
    got, ref = _train_both(sizes, B, activation=activation, loss="cross_entropy", epochs=1)
    assert _rel(got, ref) < 1e-5
    assert any(k.startswith("fused_mlp") for k in emulated.kernel_names()), emulated.kernel_names()
    assert {"gemm_fwd", "gemm_bwd_data", "gemm_bwd_weight"} <= emulated.kernel_names()


#: emulated CUDA vs the numpy backend's emulation of the mode, after a short fit (relative error of the
#: predictions): the float32 sums run in another order, and in bf16 that can move a stored value by an ulp
TC_TOL = {"tf32": 1e-3, "bf16": 2e-2, "3xtf32": 1e-5}


@pytest.mark.parametrize("precision", ["tf32", "bf16", "3xtf32"])
def test_tensor_core_gemms_train_as_the_numpy_emulation(emulated, precision):
    got, ref = _train_both([37, 70, 129, 3], 67, activation="gelu", epochs=1, optimizer="sgd",
                           precision=precision, tensor_core_gemms=True)
    assert _rel(got, ref) < TC_TOL[precision]
    assert {"gemm_tc_fwd", "gemm_tc_bwd_data", "gemm_tc_bwd_weight"} <= emulated.kernel_names()


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_hopper_gemms_train_as_the_numpy_emulation(emulated, precision):
    got, ref = _train_both([37, 70, 129, 3], 67, activation="gelu", epochs=1, optimizer="sgd",
                           precision=precision, tensor_core_gemms=True, hopper=True)
    assert _rel(got, ref) < TC_TOL[precision]
    assert {"gemm_wgmma_fwd", "gemm_wgmma_bwd_data"} <= emulated.kernel_names()
    if precision == "bf16":
        assert "gemm_wgmma_bwd_weight" in emulated.kernel_names()


@pytest.mark.parametrize("what, sizes, B, kw", [
    ("per-layer gemm", [5, 19, 3], 11, {}),
    ("fused run", [9, 16, 8, 3], 1025, {}),
    ("fused run tf32", [9, 16, 8, 3], 1025, {"precision": "tf32"}),
    ("tensor cores tf32", [37, 21, 3], 9, {"precision": "tf32", "tensor_core_gemms": True}),
    ("tensor cores bf16", [37, 21, 3], 9, {"precision": "bf16", "tensor_core_gemms": True}),
    ("tensor cores 3xtf32", [37, 21, 3], 9, {"precision": "3xtf32", "tensor_core_gemms": True}),
    ("hopper tf32", [37, 21, 3], 9, {"precision": "tf32", "tensor_core_gemms": True, "hopper": True}),
    ("hopper bf16", [37, 21, 3], 9, {"precision": "bf16", "tensor_core_gemms": True, "hopper": True}),
])
def test_a_training_step_has_no_memory_hazards(monkeypatch, what, sizes, B, kw):
    """Every launch of a fit, checked by race.h (an EmuError names the first hazard)."""
    fake = _install_emulated(monkeypatch, race=True)
    got, ref = _train_both(sizes, B, epochs=1, **kw)
    assert _rel(got, ref) < TC_TOL.get(kw.get("precision"), 1e-5)
    assert all(l.module.emu.race for l in fake.launches)


@pytest.mark.parametrize("devices, transport", [(1, "mpi-host-staging"), (2, "nccl")])
def test_data_parallel_ranks_on_the_emulator_train_like_one_process(emulated, tmp_path, devices, transport):
    """tests/gpu/test_distributed_gpu.py's two transports, each rank's CuPy the emulator: two ranks
    sharing one device sum through host copies over MPI; with a device each, through the fake's
    `cupy.cuda.nccl` (CuPy's NcclCommunicator calls on device pointers, carried out over MPI).
    Either way the result equals one emulated process's on the same global batches."""
    pytest.importorskip("mpi4py")
    from test_distributed import MPIEXEC, check_against_one_process, dp_train, run_mpi, single_process

    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    prefix = str(tmp_path / "res")
    r = run_mpi(2, "dp_train.py", prefix, "cuda", timeout=600, GPUBP_EMULATE_GPU="1",
                GPUBP_EMU_DEVICES=str(devices))
    assert r.returncode == 0, r.stdout + r.stderr
    refs = {name: single_process(c, "cuda") for name, c in dp_train.cases().items() if not c.get("sharded")}
    _, used = check_against_one_process(2, prefix, refs, "cuda")
    assert used == transport


def test_relu_lets_a_nan_product_through_as_numpy_and_torch_do(emulated):
    """A finite input that rounds past the largest TF32 value (here 3.402e38) makes a 3xtf32 product
    NaN (hi = inf, lo = -inf: docs/spec.md, "Precision modes"), and that NaN reaches relu.  The
    kernels' relu (z > 0 ? z : 0) made it 0, a finite output where the numpy backend (np.maximum)
    and torch.relu give NaN: the same network predicted numbers on the GPU and NaN on the CPU, and a
    NaN the training loop's checks exist to catch was hidden.  relu's g' (a > 0) is 0 for a NaN on
    both backends."""
    import gpubp
    from gpubp.backends.cuda_backend import CudaBackend

    X = np.array([[3.402e38, 1.0], [1.0, -2.0]], np.float32)
    params = [(np.array([[1.0, 0.5], [0.25, 1.0]], np.float32), np.zeros(2, np.float32)),
              (np.array([[0.0, 1.0]], np.float32), np.zeros(1, np.float32))]
    outs = {}
    for name, be in (("numpy", "numpy"), ("cuda", CudaBackend(tensor_core_gemms=True))):
        net = gpubp.MLP([2, 2, 1], activation="relu", backend=be, seed=0, precision="3xtf32")
        net.set_params(params)
        with np.errstate(over="ignore", invalid="ignore"):
            outs[name] = np.asarray(net.predict(X), np.float64)
    assert np.isnan(outs["numpy"][0]) and np.isfinite(outs["numpy"][1])
    np.testing.assert_array_equal(outs["cuda"], outs["numpy"])
