// epilogue.cuh: what the GEMM epilogues and the loss kernel store, shared by gemm_tc.cu (its
// one-kernel and split-K epilogues), gemm_wgmma.cu and elementwise.cu.  Concatenated after
// activations.cuh (act_forward, act_grad, act_needs_z) by gpubp/backends/cuda_source.py.
//
// The forward's pair store is shared (epi_store_fwd_pair); the input-gradient epilogues keep their
// own loops, each wrapping its store in epi_stored: a shared pair store there compiled to other
// SASS for some float32-storing instantiations (register allocation), which must not move.
//
// Storage rounding of the "bf16" precision mode (docs/spec.md, "Precision modes"; emulated by
// gpubp.precision.round_stored): every stored Z, A and delta is rounded to bfloat16 when it is
// written, in float32 buffers.  BF16 is a compile-time flag: with BF16 false every function
// here is exactly the float32 store it replaces (no instruction added).
//   forward:        z = st(acc + bias);  a = st(g(z))       (g from the rounded z)
//   input gradient: out = st(acc * g'(.))                   (one rounding, after g')
// st(x) = round_bf16(x) when BF16, else x.

#pragma once

// float32 -> the nearest bfloat16 (ties to even), as float32 with the low 16 bits zero: the bits
// of gpubp.precision.to_bf16 (and of cvt.rn.bf16.f32) for every non-NaN x (overflow rounds to inf,
// inf stays inf); NaN stays NaN.  Integer arithmetic only, so any architecture compiles it.
__device__ __forceinline__ float round_bf16(float x) {
    const unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return x;                // NaN
    return __uint_as_float((u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u);
}

template <bool BF16, typename T>
__device__ __forceinline__ T epi_stored(T x) {
    if constexpr (BF16) return round_bf16(x);                     // float only (bf16 is a float32 mode)
    else return x;
}

// The forward epilogue of two adjacent outputs (row offset o = p * N + q, columns q and q + 1 < N
// each checked): z = acc + bias, Aout = g(z), Zout = z iff write_z; float2 stores where vec_out
// (N even, Aout and Zout 8-byte aligned).
template <int ACT, bool BF16>
__device__ __forceinline__ void epi_store_fwd_pair(float* Aout, float* Zout, long long o, int q, int N,
                                                   float acc0, float acc1, float b0, float b1,
                                                   int write_z, int vec_out) {
    const float z0 = epi_stored<BF16>(acc0 + b0), z1 = epi_stored<BF16>(acc1 + b1);
    const float a0 = epi_stored<BF16>(act_forward<ACT, float>(z0));
    const float a1 = epi_stored<BF16>(act_forward<ACT, float>(z1));
    if (vec_out) {
        if (q < N) {
            *reinterpret_cast<float2*>(Aout + o) = make_float2(a0, a1);
            if (write_z) *reinterpret_cast<float2*>(Zout + o) = make_float2(z0, z1);
        }
    } else {
        if (q < N)     { Aout[o] = a0;     if (write_z) Zout[o] = z0; }
        if (q + 1 < N) { Aout[o + 1] = a1; if (write_z) Zout[o + 1] = z1; }
    }
}
