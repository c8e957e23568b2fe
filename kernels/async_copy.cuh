// async_copy.cuh: global -> shared copies with cp.async (sm_80+), their commit groups and waits,
// and the swizzled order of a 1-D grid of output tiles, shared by every kernel module that
// pipelines its tiles (gemm.cu, gemm_tc.cu, gemm_f32.cu, fused_mlp_family.cu).
//
// cp_async16 / cp_async4: copy 16 / 4 bytes, or zero-fill them when `in` is false (src-size 0:
// the source is not read, so any address may be passed).  16-byte copies need 16-byte aligned
// source and destination.  The destination is a generic pointer into shared memory or, for
// loops that hoist their shared addresses, the 32-bit shared address itself.  Below sm_80 the
// copies are plain loads and stores, and commit / wait do nothing.
#pragma once

__device__ __forceinline__ void cp_async16(unsigned dst, const float* src, bool in) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    const int n = in ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(dst), "l"(src), "r"(n) : "memory");
#else
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (in) v = *reinterpret_cast<const float4*>(src);
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" :: "r"(dst), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w) : "memory");
#endif
}

__device__ __forceinline__ void cp_async16(float* dst, const float* src, bool in) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    cp_async16((unsigned)__cvta_generic_to_shared(dst), src, in);
#else
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (in) v = *reinterpret_cast<const float4*>(src);
    *reinterpret_cast<float4*>(dst) = v;
#endif
}

// A 16-byte copy known to be in range (no src-size operand).
__device__ __forceinline__ void cp_async16_always(unsigned dst, const float* src) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(dst), "l"(src) : "memory");
#else
    cp_async16(dst, src, true);
#endif
}

__device__ __forceinline__ void cp_async4(unsigned dst, const float* src, bool in) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    const int n = in ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" :: "r"(dst), "l"(src), "r"(n) : "memory");
#else
    const float v = in ? *src : 0.f;
    asm volatile("st.shared.f32 [%0], %1;\n" :: "r"(dst), "f"(v) : "memory");
#endif
}

__device__ __forceinline__ void cp_async4(float* dst, const float* src, bool in) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    cp_async4((unsigned)__cvta_generic_to_shared(dst), src, in);
#else
    *dst = in ? *src : 0.f;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until at most N of this thread's commit groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}

// Block id -> (tile row tp, tile col tq) of a 1-D grid over tiles_p x tiles_q output tiles,
// in groups of 8 tile rows (consecutive blocks share operand tiles in L2).
__device__ __forceinline__ void gemm_tile_coords(int tiles_p, int tiles_q, int& tp, int& tq) {
    const int G = 8;
    const int id = blockIdx.x;
    const int per_group = G * tiles_q;
    const int group = id / per_group;
    const int first = group * G;
    const int gsize = min(tiles_p - first, G);
    const int local = id - group * per_group;
    tp = first + local % gsize;
    tq = local / gsize;
}
