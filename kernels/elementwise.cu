// elementwise.cu: the fused loss value + delta[L] kernels and the optimizer updates
// of docs/spec.md.  activations.cuh and epilogue.cuh are prepended by
// gpubp/backends/cuda_source.py.
//
// Every kernel is templated on T = float or double, indexes with 64-bit
// integers, and is instantiated by name in gpubp/backends/cuda_elementwise.py.
//
// Loss value: each block writes the double sum of its share to partials[blockIdx.x]
// (a fixed-order tree inside the block, no atomics); loss_finalize then sums the
// partials in a fixed order and divides by the loss's denominator.  The grid of
// every loss kernel depends on the problem shape only (never on the device), so
// the value is bitwise reproducible from run to run.

// LOSS_* codes, EW_THREADS (block size of every kernel in this file) and MAX_PARTIALS
// (grid cap of the loss kernels = length of partials) come from the generated header.
#define EW_WARPS       (EW_THREADS / 32)
// Every kernel is __launch_bounds__(EW_THREADS, 4): at most 64 registers, at least
// 4 blocks (32 warps) per SM.  Without the minimum, ptxas picked a tighter budget on
// its own and spilled the cross-entropy kernel (see gpubp compile-check).

// ------------------------------------------------------------------ helpers
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float((int)0xff800000u); }
template <> __device__ __forceinline__ double neg_inf<double>() { return __longlong_as_double(0xfff0000000000000ULL); }

// NaN-propagating max (numpy's max propagates NaN).
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) { return (a != a || a > b) ? a : b; }

// Butterfly reductions: every lane ends with the same bits (x + y == y + x).
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (EW_THREADS threads), fixed order, result in every thread.
// `sm` holds EW_WARPS doubles; every thread of the block must call it.
__device__ __forceinline__ double block_sum(double v, double* sm) {
    v = warp_sum(v);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();                       // sm may still be read by a previous call
    if (lane == 0) sm[w] = v;
    __syncthreads();
    double r = 0.0;
#pragma unroll
    for (int i = 0; i < EW_WARPS; ++i) r += sm[i];
    return r;
}
template <typename T>
__device__ __forceinline__ T block_max(T v, T* sm) {
    v = warp_max(v);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sm[w] = v;
    __syncthreads();
    T r = sm[0];
#pragma unroll
    for (int i = 1; i < EW_WARPS; ++i) r = nan_max(r, sm[i]);
    return r;
}

// ------------------------------------------------------------------ losses
// mse / half_sse / binary_cross_entropy / poisson: one element per thread-iteration.
// Launch: block EW_THREADS, grid = min(ceil(total / EW_THREADS), MAX_PARTIALS),
// grid-stride over the total = B * n elements.  partials[blockIdx.x] = the block's
// sum of the per-element loss ((a-y)^2, or max(z,0) - z y + log(1 + e^-|z|), or half the
// Poisson deviance e^z - y - y (z - log y)).
// delta (written when write_delta) = (a - y) * grad_scale * g'(.) for mse/half_sse
// (grad_scale = 2/(B n) or 1/B), = (sigmoid(z) - y) * grad_scale for BCE (1/(B n)),
// = (e^z - y) * grad_scale for poisson (1/(B n)).
// Z is read only when the activation's derivative needs it (gelu, silu).
// BF16 (T = float only; the "bf16" precision mode): delta is rounded to bfloat16 as it is stored
// (epilogue.cuh's round_bf16, once, after g'); the loss stays float32 from the stored A.
template <typename T, int LOSS, int ACT, bool BF16 = false>
__global__ void __launch_bounds__(EW_THREADS, 4)
loss_pointwise(const T* A, const T* Z, const T* Y, T* delta, double* partials,
               long long total, T grad_scale, int write_delta) {
    __shared__ double sm[EW_WARPS];
    double acc = 0.0;
    const long long stride = (long long)gridDim.x * EW_THREADS;
    for (long long i = (long long)blockIdx.x * EW_THREADS + threadIdx.x; i < total; i += stride) {
        const T a = A[i], y = Y[i];
        if (LOSS == LOSS_BCE) {
            const T e = exp(-fabs(a));                       // e^-|z| in (0, 1]
            const T l = (a > T(0) ? a : T(0)) - a * y + log1p(e);
            acc += (double)l;
            if (write_delta) {
                const T s = a >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
                delta[i] = epi_stored<BF16>((s - y) * grad_scale);
            }
        } else if (LOSS == LOSS_POISSON) {
            // a is the log-rate z.  The value in double (base.py's half_poisson_deviance):
            // y (expm1(d) - d) with d = z - log y where y > 0 (no cancellation near e^z = y),
            // e^z where y = 0; inf where the rate overflows T, as the delta made of it does.
            const T mu = exp(a);
            const double zd = (double)a, yd = (double)y;
            const double d = zd - log(yd > 0.0 ? yd : 1.0);
            // beyond d = 700 the value is e^z to the last bit (y (1 + d) = (1 + d) e^-d e^z), where
            // y expm1(d) would overflow for a tiny y though e^z need not
            acc += isinf(mu) ? -neg_inf<double>() : (yd > 0.0 && d <= 700.0 ? yd * (expm1(d) - d) : exp(zd));
            if (write_delta) delta[i] = epi_stored<BF16>((mu - y) * grad_scale);
        } else {
            const T d = a - y;
            acc += (double)d * (double)d;
            if (write_delta) {
                const T z = act_needs_z<ACT>::value ? Z[i] : a;
                delta[i] = epi_stored<BF16>(d * grad_scale * act_grad<ACT, T>(a, z));
            }
        }
    }
    const double s = block_sum(acc, sm);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// cross_entropy: softmax over each row of the logits Zl (B, n) fused with NLL.
// Targets: LABELS ? int32 class indices (B,) : probability rows Yp (B, n).
// Launch, BLOCK_ROW = false (narrow rows): one warp per row, block EW_THREADS
//   (EW_WARPS rows at a time), grid = min(ceil(B / EW_WARPS), MAX_PARTIALS).
// Launch, BLOCK_ROW = true (wide rows): one block per row, block EW_THREADS,
//   grid = min(B, MAX_PARTIALS).
// Both grid-stride over rows.  Row loss = log(sum_j e^(z_j - m)) - sum_j y_j (z_j - m)
// with m the row max, accumulated in double; partials[blockIdx.x] = the block's sum
// of its row losses.  delta (when write_delta) = (softmax(z) - y) * inv_B.
// An out-of-range label gives a NaN loss and no -1 in delta.
// BF16 (T = float only): delta rounded to bfloat16 as stored, as in loss_pointwise.
template <typename T, bool LABELS, bool BLOCK_ROW, bool BF16 = false>
__global__ void __launch_bounds__(EW_THREADS, 4)
ce_loss_delta(const T* Zl, const T* Yp, const int* labels, T* delta, double* partials,
              long long B, long long n, T inv_B, int write_delta) {
    __shared__ double smd[EW_WARPS];
    __shared__ T smt[EW_WARPS];
    const int G = BLOCK_ROW ? EW_THREADS : 32;                 // threads per row
    const int t = BLOCK_ROW ? threadIdx.x : (threadIdx.x & 31); // rank within the row's group
    const long long rows_per_step = BLOCK_ROW ? (long long)gridDim.x : (long long)gridDim.x * EW_WARPS;
    const long long r0 = BLOCK_ROW ? (long long)blockIdx.x
                                   : (long long)blockIdx.x * EW_WARPS + (threadIdx.x >> 5);
    double acc = 0.0;                                          // this group's row losses
    for (long long r = r0; r < B; r += rows_per_step) {        // uniform per block when BLOCK_ROW
        const T* z = Zl + r * n;                               // 64-bit row offsets;
        const T* yrow = Yp + r * n;                            // (unused when LABELS)
        const int nn = (int)n;                                 // 32-bit within a row (n < 2^31)
        T m = neg_inf<T>();
        for (int j = t; j < nn; j += G) m = nan_max(m, z[j]);
        m = BLOCK_ROW ? block_max(m, smt) : warp_max(m);

        double s = 0.0, yz = 0.0;
#pragma unroll 1   // unrolled, ptxas spills the double accumulators on some archs
        for (int j = t; j < nn; j += G) {
            const T sh = z[j] - m;
            s += (double)exp(sh);
            if (!LABELS) yz += (double)yrow[j] * (double)sh;
        }
        s = BLOCK_ROW ? block_sum(s, smd) : warp_sum(s);
        if (!LABELS) yz = BLOCK_ROW ? block_sum(yz, smd) : warp_sum(yz);

        int label = 0;
        bool label_ok = true;
        if (LABELS) {
            label = labels[r];
            label_ok = label >= 0 && (long long)label < n;
            yz = label_ok ? (double)(z[label] - m) : __longlong_as_double(0x7ff8000000000000ULL);
        }
        if (t == 0) acc += log(s) - yz;

        if (write_delta) {
            const T sT = (T)s;
            T* d = delta + r * n;
            for (int j = t; j < nn; j += G) {
                const T p = exp(z[j] - m) / sT;
                const T y = LABELS ? ((label_ok && j == label) ? T(1) : T(0)) : yrow[j];
                d[j] = epi_stored<BF16>((p - y) * inv_B);
            }
        }
    }
    const double bs = block_sum(acc, smd);   // only rank-0 threads hold nonzero acc
    if (threadIdx.x == 0) partials[blockIdx.x] = bs;
}

// out[0] = T(sum(partials[0 .. count)) / denom), summed in a fixed order.
// Launch: one block of EW_THREADS threads.
template <typename T>
__global__ void __launch_bounds__(EW_THREADS, 4)
loss_finalize(const double* partials, int count, double denom, T* out) {
    __shared__ double sm[EW_WARPS];
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += EW_THREADS) acc += partials[i];
    const double s = block_sum(acc, sm);
    if (threadIdx.x == 0) out[0] = (T)(s / denom);
}

// ------------------------------------------------------------------ optimizers
// 16 bytes of T, for vectorised loads and stores (float4 / double2 width).
template <typename T>
struct alignas(16) Pack { T v[16 / sizeof(T)]; };

// PyTorch SGD (dampening 0), in the numpy backend's order of operations.
// flags: bit 0 weight decay (g += wd p), bit 1 momentum (buf = mom buf + g; g = buf),
// bit 2 Nesterov, with bit 1 (g = g + mom buf, the buf just updated).
template <typename T>
__device__ __forceinline__ void sgd_one(T& p, T g, T& buf, T lr, T mom, T wd, int flags) {
    if (flags & 1) g = p * wd + g;
    if (flags & 2) {
        buf = buf * mom + g;
        g = (flags & 4) ? buf * mom + g : buf;
    }
    p = p - g * lr;
}

// Every parameter of the flat buffer in one launch.
// Launch: block EW_THREADS, grid = min(ceil(n / (V * EW_THREADS)), 65535) with
// V = 16 / sizeof(T); grid-stride.  With vec != 0 (p, g, buf 16-byte aligned) the
// first (n / V) * V elements go in 16-byte packs and the rest one by one.
// buf is read and written only when flags & 2.
template <typename T>
__global__ void __launch_bounds__(EW_THREADS, 4)
sgd_update(T* p, const T* g, T* buf, long long n, T lr, T mom, T wd, int flags, int vec) {
    constexpr int V = 16 / sizeof(T);
    const long long tid = (long long)blockIdx.x * EW_THREADS + threadIdx.x;
    const long long stride = (long long)gridDim.x * EW_THREADS;
    long long head = 0;
    if (vec) {
        const long long nv = n / V;
        Pack<T>* pp = reinterpret_cast<Pack<T>*>(p);
        const Pack<T>* gp = reinterpret_cast<const Pack<T>*>(g);
        Pack<T>* bp = reinterpret_cast<Pack<T>*>(buf);
        for (long long i = tid; i < nv; i += stride) {
            Pack<T> P = pp[i];
            const Pack<T> Gr = gp[i];
            Pack<T> M = {};
            if (flags & 2) M = bp[i];
#pragma unroll
            for (int k = 0; k < V; ++k) sgd_one(P.v[k], Gr.v[k], M.v[k], lr, mom, wd, flags);
            pp[i] = P;
            if (flags & 2) bp[i] = M;
        }
        head = nv * V;
    }
    for (long long i = head + tid; i < n; i += stride) {
        T P = p[i];
        T M = (flags & 2) ? buf[i] : T(0);
        sgd_one(P, g[i], M, lr, mom, wd, flags);
        p[i] = P;
        if (flags & 2) buf[i] = M;
    }
}

// PyTorch Adam (mode 0 no decay, 1 L2: g += wd p) / AdamW (mode 2: p *= decay,
// decay = 1 - lr wd), in the numpy backend's order of operations:
// m = lerp(m, g, b1c) as PyTorch computes it (m + (g - m) b1c for b1c < 0.5, else
// g - (g - m) (1 - b1c): exactly g at b1 = 0), v = v b2 + (g b2c) g,
// p -= m / (sqrt(v) / bc2_sqrt + eps) * step_size
// with b1c = 1 - b1, b2c = 1 - b2, bc2_sqrt = sqrt(1 - b2^t), step_size = lr / (1 - b1^t).
template <typename T>
__device__ __forceinline__ void adam_one(T& p, T g, T& m, T& v, T step_size, T b1c, T b2,
                                         T b2c, T bc2_sqrt, T eps, T wd, T decay, int mode) {
    if (mode == 2) p = p * decay;
    else if (mode == 1) g = p * wd + g;
    m = b1c < T(0.5) ? m + (g - m) * b1c : g - (g - m) * (T(1) - b1c);   // b1c is uniform
    v = v * b2 + (g * b2c) * g;     // PyTorch's addcmul order: g * g first overflows sooner
    const T den = sqrt(v) / bc2_sqrt + eps;
    p = p - (m / den) * step_size;
}

// Every parameter of the flat buffer in one launch.
// Launch: as sgd_update (block EW_THREADS, grid-stride, 16-byte packs when vec).
template <typename T>
__global__ void __launch_bounds__(EW_THREADS, 4)
adam_update(T* p, const T* g, T* m, T* v, long long n, const int* step, double lr, double beta1,
            double beta2, T b1c, T b2, T b2c, T eps, T wd, T decay, int mode, int vec) {
    // The step number is read from device memory (the optimizer increments it
    // before this launch), so a captured CUDA graph counts steps by itself.
    const int t = *step;
    const T step_size = T(lr / (1.0 - pow(beta1, (double)t)));
    const T bc2_sqrt = T(sqrt(1.0 - pow(beta2, (double)t)));
    constexpr int V = 16 / sizeof(T);
    const long long tid = (long long)blockIdx.x * EW_THREADS + threadIdx.x;
    const long long stride = (long long)gridDim.x * EW_THREADS;
    long long head = 0;
    if (vec) {
        const long long nv = n / V;
        Pack<T>* pp = reinterpret_cast<Pack<T>*>(p);
        const Pack<T>* gp = reinterpret_cast<const Pack<T>*>(g);
        Pack<T>* mp = reinterpret_cast<Pack<T>*>(m);
        Pack<T>* vp = reinterpret_cast<Pack<T>*>(v);
        for (long long i = tid; i < nv; i += stride) {
            Pack<T> P = pp[i], M = mp[i], Q = vp[i];
            const Pack<T> Gr = gp[i];
#pragma unroll
            for (int k = 0; k < V; ++k)
                adam_one(P.v[k], Gr.v[k], M.v[k], Q.v[k], step_size, b1c, b2, b2c, bc2_sqrt, eps, wd, decay, mode);
            pp[i] = P; mp[i] = M; vp[i] = Q;
        }
        head = nv * V;
    }
    for (long long i = head + tid; i < n; i += stride) {
        T P = p[i], M = m[i], Q = v[i];
        adam_one(P, g[i], M, Q, step_size, b1c, b2, b2c, bc2_sqrt, eps, wd, decay, mode);
        p[i] = P; m[i] = M; v[i] = Q;
    }
}
