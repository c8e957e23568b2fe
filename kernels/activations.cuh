// activations.cuh: the activations of docs/spec.md and their derivatives, for every
// kernel's epilogue.  Prepended to each kernel source by gpubp/backends/cuda_source.py.
//
// The codes ACT_* (the positions in gpubp.activations.ACTIVATIONS), LEAKY_SLOPE,
// GELU_C and GELU_K come from the generated header (gpubp/backends/kernel_constants.py).
// act_forward<ACT>(z) = g(z); act_grad<ACT>(a, z) = g'(z), taken from the
// output a = g(z) except for GELU and SiLU, which need z (act_needs_z).
#pragma once

template <int ACT> struct act_needs_z { static constexpr bool value = (ACT == ACT_GELU || ACT == ACT_SILU); };

// 1/(1+e^-z) without overflow: e^-|z| lies in (0, 1].
template <typename T>
__device__ __forceinline__ T sigmoid_stable(T z) {
    T e = exp(-fabs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <typename T>
__device__ __forceinline__ T gelu_inner(T z) {   // tanh(c (z + k z^3))
    return tanh(T(GELU_C) * (z + T(GELU_K) * z * z * z));
}

template <int ACT, typename T>
__device__ __forceinline__ T act_forward(T z) {
    if (ACT == ACT_SIGMOID)    return sigmoid_stable(z);
    if (ACT == ACT_TANH)       return tanh(z);
    // !(z <= 0), not z > 0: a NaN z stays NaN (as np.maximum and torch.relu keep it), never 0;
    // -0 still gives +0 as np.maximum(-0., 0) does
    if (ACT == ACT_RELU)       return !(z <= T(0)) ? z : T(0);
    if (ACT == ACT_LEAKY_RELU) return z > T(0) ? z : T(LEAKY_SLOPE) * z;
    if (ACT == ACT_GELU)       return T(0.5) * z * (T(1) + gelu_inner(z));
    if (ACT == ACT_SILU)       return z * sigmoid_stable(z);
    return z;  // identity
}

// g'(z); a = g(z) is the kept output, z is read only where act_needs_z.
template <int ACT, typename T>
__device__ __forceinline__ T act_grad(T a, T z) {
    if (ACT == ACT_SIGMOID)    return a * (T(1) - a);
    if (ACT == ACT_TANH)       return T(1) - a * a;
    if (ACT == ACT_RELU)       return a > T(0) ? T(1) : T(0);
    if (ACT == ACT_LEAKY_RELU) return a > T(0) ? T(1) : T(LEAKY_SLOPE);
    if (ACT == ACT_GELU) {
        // 3k (z z), not (3k z) z: z^2 overflows above sqrt(max) (1.8e19 in float32) as in numpy and
        // torch, where 0 (1 - t^2 = 0) times inf is NaN; (3k z) z stayed finite up to sqrt(max / 3k)
        // and gave g' = 1 or 0 where both references give NaN
        T t = gelu_inner(z);
        return T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * T(GELU_C) * (T(1) + T(3.0 * GELU_K) * (z * z));
    }
    if (ACT == ACT_SILU) {
        T s = sigmoid_stable(z);
        return s * (T(1) + z * (T(1) - s));
    }
    return T(1);  // identity
}
