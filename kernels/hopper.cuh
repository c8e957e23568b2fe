// hopper.cuh: the Hopper (sm_90a) building blocks of gemm_wgmma.cu, all inline PTX:
// mbarriers, TMA tile loads (cp.async.bulk.tensor), wgmma shared-memory descriptors and
// the warpgroup fences, and setmaxnreg.  Needs sm_90a (wgmma, setmaxnreg); NVRTC builds
// it with --gpu-architecture=sm_90a only.
//
// TensorMap128: the 128-byte, 64-byte-aligned CUtensorMap made on the host by
// cuTensorMapEncodeTiled (cuda.bindings.driver) and passed by value as a
// `const __grid_constant__` kernel parameter (cuda.h is not available under NVRTC, so
// the opaque struct is declared here with the same size and alignment).
#pragma once

struct __align__(64) TensorMap128 {
    unsigned long long opaque[16];
};

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// ------------------------------------------------------------------ mbarriers
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" :: "r"(bar), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the async proxy (the TMA unit) and the other threads
// (followed by a block barrier).
__device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also announces `bytes` of transactions the TMA will complete on `bar`.
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" :: "r"(bar) : "memory");
}

// Wait until the phase of parity `parity` of `bar` has completed.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}

// ------------------------------------------------------------------ TMA
// Load the box of `map` at element coordinates (c0 innermost, c1) into shared memory at
// `dst` (aligned as the map's swizzle needs: 1024 bytes for 128B), completing on `bar`.
// Elements outside the tensor are written as zeros (the map's OOB fill NONE).
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TensorMap128* map, unsigned bar, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%2, %3}], [%4];\n"
                 :: "r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar) : "memory");
}

// ------------------------------------------------------------------ wgmma
// Shared-memory matrix descriptor of a K-major tile written by TMA with 128-byte swizzle:
// rows of 128 bytes, 8-row atoms of 1024 bytes (stride byte offset 1024), leading byte
// offset unused for swizzled K-major layouts (1), layout type 1 = SWIZZLE_128B (bits 62-63).
// `saddr` is the tile's (1024-aligned) address plus the k-step's byte offset in the row.
__device__ __forceinline__ unsigned long long wg_desc_sw128(unsigned saddr) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) |
           (1ull << 62);
}

// Shared-memory matrix descriptor of an MN-major (transposed) bf16 tile written by TMA with
// 128-byte swizzle, one box per 64 elements of M (or N): a chunk is [rows of k][128 bytes of
// M/N], so 8 k-rows make one 1024-byte swizzle atom.  The canonical layout (PTX ISA "Shared
// Memory Matrix Layout", CUTLASS's make_gmma_desc<Major::MN>) is, in 16-byte units T,
// Swizzle<3,4,3> o ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)): the leading byte offset is the step
// between 64-element chunks along M/N (`chunk_bytes`), the stride byte offset the step between
// 8-row atoms along k (1024).  `saddr`: the chunk's (1024-aligned) address plus whole atoms of k.
__device__ __forceinline__ unsigned long long wg_desc_mn_sw128(unsigned saddr, unsigned chunk_bytes) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | ((unsigned long long)((chunk_bytes >> 4) & 0x3FFF) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory"); }

// Pins the accumulator registers at this point of the program: wgmma.mma_async writes them
// asynchronously, which the compiler does not know (wait_group names no registers), so without
// this it could move ordinary reads or writes of the accumulators across the fence / wait_group
// (the PTX ISA makes any access between mma_async and the wait_group that retires it undefined).
// An empty asm that "reads and writes" each register orders them against these asm volatile
// statements (CUTLASS's warpgroup_fence_operand).  Emits no instruction.
template <int N>
__device__ __forceinline__ void wg_fence_acc(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}

// ------------------------------------------------------------------ register budgets
template <int R>
__device__ __forceinline__ void regs_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" :: "n"(R)); }
template <int R>
__device__ __forceinline__ void regs_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" :: "n"(R)); }
