// fused_mlp.cu: whole-network fusion for a run of NARROW dense layers (every
// width <= 128), in float32 with FFMA accumulation (no TF32).  Concatenated
// after activations.cuh by gpubp/backends/cuda_source.py; launched by
// gpubp/backends/cuda_fused.py.
//
// The idea (tiny-cuda-nn's fully fused MLP, here in fp32, with biases and any
// per-layer widths): one thread block keeps a tile of BM batch rows in shared
// memory across ALL layers of the run.  Forward: the activations of the tile
// never leave the chip between layers (each layer's output is still written to
// HBM once, because the backward pass needs it).  Backward: the deltas of the
// tile never touch HBM at all; only the delta entering the run (optional) is
// written.  The weight and bias gradients are reduced deterministically: a
// persistent grid of G blocks, block g walking the fixed tile list g, g+G, ...
// and accumulating its partial dW/db for every layer in its own workspace slice
// (L2-resident, read-modify-write once per tile and layer), then
// fused_mlp_reduce sums the G slices in block order.  No atomics anywhere:
// repeated runs on the same device give the same bits.
//
// Template parameters: BM = batch rows per tile, WMAX = 64 or 128, the padded
// width every layer of the run is computed at (the launcher picks 64 when every
// width <= 64).  Inside a tile everything is padded to WMAX columns and BM rows
// with zeros, so any widths and any batch size work:
//   - tiles are stored row-major like global memory, s[m * P + f], pitch
//     P = WMAX + 4 floats (P % 4 == 0 keeps float4 alignment; P % 32 == 4 puts
//     consecutive rows 4 banks apart, so the float4 reads below are conflict-free);
//   - every tile load zero-fills rows >= rows-in-batch and columns >= width, so
//     padded entries are finite zeros; padded OUTPUT entries may be garbage in
//     the accumulators and are replaced by 0 (forward / delta epilogues) or never
//     read (the padded dW/db workspace entries).
//   - the reduction length of each GEMM is rounded up to 4 (float4 chunks): the
//     padding columns are zero in both operands' tiles (W is staged zero-padded to
//     WMAX x WMAX), so they add exact zeros.
//
// The thread layout of every GEMM: 256 threads as a 16 x 16 grid (ty, tx), a warp
// covering 4 ty x 8 tx (lanes 0-7 share ty).  Each GEMM maps (ty, tx) to its
// outputs so that per float4 shared read a warp touches either 4 consecutive rows
// (4 distinct float4, 4 banks apart) or 8 consecutive float4 of one row (128 bytes):
// one wavefront each, no bank conflicts.
//   forward   Z[m][n]  = sum_k X[m][k] W[n][k]   m = ty + 16 i, n = tx + 16 j (both strided)
//   delta     D'[m][k] = sum_n D[m][n] W[n][k]   m = ty + 16 i, k = 4 tx + 64 h + c
//   weight    dW[n][k] = sum_m D[m][n] X[m][k]   n = 4 ty + 64 h + c, k = 4 tx + 64 h' + c'
// Reduction order: every output is accumulated sequentially along the reduction
// index from 0 (like gemm.cu), so forward values match the per-layer path to rounding.
//
// Per-layer parameters come from a device table of FM_FIELDS long longs per layer
// (built and cached by the launcher); see the FM_* field indices below.
// Offsets that can pass 2^31 (row * width) are computed in long long.

// FM_NT (threads per block), FM_FIELDS and the field indices come from the generated
// header (gpubp/backends/kernel_constants.py).  Table fields, one row per layer of the run:
//   FM_W     const float* W (n_out x n_in)
//   FM_B     const float* bias (n_out)                                  forward
//   FM_AOUT  float* A_out (B x n_out)                                     forward
//   FM_ZOUT  float* Z_out (B x n_out) or 0                                forward
//   FM_X     const float* the layer's input activation (B x n_in): forward layer 0, backward all
//   FM_ZX    const float* Z of that input (gelu/silu) or 0                backward
//   FM_NIN, FM_NOUT  the layer's widths
//   FM_ACT   the layer's activation code                                forward
//   FM_ACTX  activation code of the layer's input (g' of the delta leaving the layer)  backward
//   FM_VEC   bit flags FM_VEC_* (16-byte paths allowed): FM_VEC_W (n_in % 4 == 0, W aligned),
//            FM_VEC_X (n_in % 4 == 0, X aligned), FM_VEC_AOUT (n_out % 4 == 0, A_out aligned),
//            FM_VEC_ZX (n_in % 4 == 0, Zx aligned)
//   FM_DW    float* dW (n_out x n_in)                                      reduce
//   FM_DB    float* db (n_out)                                             reduce

// ------------------------------------------------------------- small helpers
__device__ __forceinline__ int fm_round4(int x) { return (x + 3) & ~3; }

__device__ __forceinline__ float fm_c(const float4& v, int c) {   // c is a compile-time constant after unrolling
    return c == 0 ? v.x : (c == 1 ? v.y : (c == 2 ? v.z : v.w));
}

__device__ __forceinline__ void fm_thread_coords(int tid, int& ty, int& tx) {
    const int warp = tid >> 5, lane = tid & 31;
    ty = (warp >> 1) * 4 + (lane >> 3);   // 0..15
    tx = (warp & 1) * 8 + (lane & 7);     // 0..15
}

// Copy a ROWS x WMAX tile of the row-major matrix X (leading dimension n, rows
// row0 .. row0 + rows - 1 valid) into s (pitch WMAX + 4), zero outside
// [0, rows) x [0, n).  One float4 slot per thread per step; slots are row-major
// so consecutive threads read consecutive 16 bytes of a row (coalesced) and write
// consecutive float4 of a shared row (conflict-free).  vec: n % 4 == 0 and X
// 16-byte aligned (then a slot is wholly inside or wholly outside the matrix).
template <int ROWS, int WMAX>
__device__ __forceinline__ void fm_load_tile(float* s, const float* __restrict__ X, long long row0,
                                             int rows, int n, bool vec, int tid) {
    constexpr int P = WMAX + 4;
    constexpr int V = WMAX / 4;
    constexpr int ITERS = ROWS * V / FM_NT;
    static_assert(ROWS * V % FM_NT == 0, "tile slots must be a multiple of the block size");
#pragma unroll 4
    for (int it = 0; it < ITERS; ++it) {
        const int slot = tid + it * FM_NT;
        const int m = slot / V;
        const int k = (slot - m * V) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (m < rows && k < n) {
            const float* src = X + (row0 + m) * (long long)n + k;
            if (vec) {
                v = __ldg(reinterpret_cast<const float4*>(src));
            } else {
                v.x = __ldg(src);
                if (k + 1 < n) v.y = __ldg(src + 1);
                if (k + 2 < n) v.z = __ldg(src + 2);
                if (k + 3 < n) v.w = __ldg(src + 3);
            }
        }
        *reinterpret_cast<float4*>(s + m * P + k) = v;
    }
}

// The opposite: rows [0, rows) x columns [0, n) of the tile s into row-major Y (ld n).
template <int ROWS, int WMAX>
__device__ __forceinline__ void fm_store_tile(const float* s, float* Y, long long row0, int rows, int n,
                                              bool vec, int tid) {
    constexpr int P = WMAX + 4;
    constexpr int V = WMAX / 4;
    constexpr int ITERS = ROWS * V / FM_NT;
#pragma unroll 4
    for (int it = 0; it < ITERS; ++it) {
        const int slot = tid + it * FM_NT;
        const int m = slot / V;
        const int k = (slot - m * V) * 4;
        if (m < rows && k < n) {
            const float4 v = *reinterpret_cast<const float4*>(s + m * P + k);
            float* dst = Y + (row0 + m) * (long long)n + k;
            if (vec) {
                *reinterpret_cast<float4*>(dst) = v;
            } else {
                dst[0] = v.x;
                if (k + 1 < n) dst[1] = v.y;
                if (k + 2 < n) dst[2] = v.z;
                if (k + 3 < n) dst[3] = v.w;
            }
        }
    }
}

// ------------------------------------------------------------- the three tile GEMMs
// Forward: acc[i][j] = sum_{k < K4} sX[m_i][k] sW[n_j][k], m_i = ty + 16 i, n_j = tx + 16 j.
// Both operands are read along their rows (k contiguous) as float4: a warp reads
// 4 rows of sX (ty) and 8 rows of sW (tx) per float4 load, rows P = 4 (mod 32) banks apart.
template <int BM, int WMAX>
__device__ __forceinline__ void fm_gemm_fwd(const float* sX, const float* sW, int K4, int ty, int tx,
                                            float (&acc)[BM / 16][WMAX / 16]) {
    constexpr int P = WMAX + 4, TM = BM / 16, TN = WMAX / 16;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
    const float* xs = sX + ty * P;
    const float* ws = sW + tx * P;
#pragma unroll 2
    for (int k = 0; k < K4; k += 4) {
        float4 x[TM], w[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) x[i] = *reinterpret_cast<const float4*>(xs + i * 16 * P + k);
#pragma unroll
        for (int j = 0; j < TN; ++j) w[j] = *reinterpret_cast<const float4*>(ws + j * 16 * P + k);
#pragma unroll
        for (int c = 0; c < 4; ++c)
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(fm_c(x[i], c), fm_c(w[j], c), acc[i][j]);
    }
}

// Backward data: acc[i][4h + c] = sum_{n < N4} sD[m_i][n] sW[n][k], m_i = ty + 16 i,
// k = 4 tx + 64 h + c.  sD is read along its rows (4 n at a time), sW down its
// columns: for each of the 4 n, the thread's float4 of row n (a warp: 8 consecutive float4).
template <int BM, int WMAX>
__device__ __forceinline__ void fm_gemm_delta(const float* sD, const float* sW, int N4, int ty, int tx,
                                              float (&acc)[BM / 16][WMAX / 16]) {
    constexpr int P = WMAX + 4, TM = BM / 16, H = WMAX / 64;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 4 * H; ++j) acc[i][j] = 0.f;
    const float* ds = sD + ty * P;
    const float* ws = sW + 4 * tx;
#pragma unroll 1
    for (int n = 0; n < N4; n += 4) {
        float4 d[TM];
#pragma unroll
        for (int i = 0; i < TM; ++i) d[i] = *reinterpret_cast<const float4*>(ds + i * 16 * P + n);
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            float4 w[H];
#pragma unroll
            for (int h = 0; h < H; ++h) w[h] = *reinterpret_cast<const float4*>(ws + (n + s) * P + 64 * h);
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int h = 0; h < H; ++h)
#pragma unroll
                    for (int c = 0; c < 4; ++c)
                        acc[i][4 * h + c] = fmaf(fm_c(d[i], s), fm_c(w[h], c), acc[i][4 * h + c]);
        }
    }
}

// Weight gradient of one tile, accumulated into this block's workspace slice:
//   wsl[n * WMAX + k] (+)= sum_{m < rows} sD[m][n] sA[m][k],
// n = 4 ty + 64 hn + cn, k = 4 tx + 64 hk + ck (the whole padded WMAX x WMAX, so
// the workspace is read and written with float4 and no masks).  first: this is
// the block's first tile (write, not read-modify-write).  The old partial is
// fetched before the loop (its latency hides behind the FMAs) and added after
// the tile's own sum, so the order is fixed: partial + (sum over this tile's rows).
template <int WMAX>
__device__ __forceinline__ void fm_gemm_dw(const float* sD, const float* sA, int rows, float* wsl,
                                           bool first, int ty, int tx) {
    constexpr int P = WMAX + 4, H = WMAX / 64, T = 4 * H;
    float4 prev[T][H];
    if (!first) {
#pragma unroll
        for (int r = 0; r < T; ++r)
#pragma unroll
            for (int hk = 0; hk < H; ++hk)
                prev[r][hk] = *reinterpret_cast<const float4*>(
                    wsl + (4 * ty + 64 * (r / 4) + (r % 4)) * WMAX + 4 * tx + 64 * hk);
    }
    float acc[T][T];
#pragma unroll
    for (int r = 0; r < T; ++r)
#pragma unroll
        for (int q = 0; q < T; ++q) acc[r][q] = 0.f;
    const float* ds = sD + 4 * ty;
    const float* as = sA + 4 * tx;
#pragma unroll 4
    for (int m = 0; m < rows; ++m) {
        float4 d[H], a[H];
#pragma unroll
        for (int h = 0; h < H; ++h) {
            d[h] = *reinterpret_cast<const float4*>(ds + m * P + 64 * h);
            a[h] = *reinterpret_cast<const float4*>(as + m * P + 64 * h);
        }
#pragma unroll
        for (int hn = 0; hn < H; ++hn)
#pragma unroll
            for (int cn = 0; cn < 4; ++cn)
#pragma unroll
                for (int hk = 0; hk < H; ++hk)
#pragma unroll
                    for (int ck = 0; ck < 4; ++ck)
                        acc[4 * hn + cn][4 * hk + ck] =
                            fmaf(fm_c(d[hn], cn), fm_c(a[hk], ck), acc[4 * hn + cn][4 * hk + ck]);
    }
#pragma unroll
    for (int r = 0; r < T; ++r)
#pragma unroll
        for (int hk = 0; hk < H; ++hk) {
            float4 v = make_float4(acc[r][4 * hk], acc[r][4 * hk + 1], acc[r][4 * hk + 2], acc[r][4 * hk + 3]);
            if (!first) {
                v.x = prev[r][hk].x + v.x;
                v.y = prev[r][hk].y + v.y;
                v.z = prev[r][hk].z + v.z;
                v.w = prev[r][hk].w + v.w;
            }
            *reinterpret_cast<float4*>(wsl + (4 * ty + 64 * (r / 4) + (r % 4)) * WMAX + 4 * tx + 64 * hk) = v;
        }
}

// ------------------------------------------------------------- epilogues
// Forward: z = acc + b, a = g(z); sX[m][n] = a for n < n_out, else 0 (the next
// layer's zero padding); Z_out (global, may be null) gets z for valid (m, n).
template <int ACT, int BM, int WMAX>
__device__ __forceinline__ void fm_fwd_epilogue(float (&acc)[BM / 16][WMAX / 16], float* sX,
                                                const float* __restrict__ bias, float* Zout,
                                                long long row0, int rows, int n_out, int ty, int tx) {
    constexpr int P = WMAX + 4, TM = BM / 16, TN = WMAX / 16;
    float bv[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int n = tx + 16 * j;
        bv[j] = n < n_out ? __ldg(bias + n) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = ty + 16 * i;
        const bool row_ok = m < rows;
        const long long grow = (row0 + m) * (long long)n_out;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int n = tx + 16 * j;
            const float z = acc[i][j] + bv[j];
            const float a = act_forward<ACT, float>(z);
            sX[m * P + n] = n < n_out ? a : 0.f;
            if (Zout != nullptr && row_ok && n < n_out) Zout[grow + n] = z;
        }
    }
}

template <int BM, int WMAX>
__device__ __forceinline__ void fm_fwd_epilogue_any(int act, float (&acc)[BM / 16][WMAX / 16], float* sX,
                                                    const float* __restrict__ bias, float* Zout,
                                                    long long row0, int rows, int n_out, int ty, int tx) {
    switch (act) {
        case ACT_SIGMOID:    fm_fwd_epilogue<ACT_SIGMOID,    BM, WMAX>(acc, sX, bias, Zout, row0, rows, n_out, ty, tx); break;
        case ACT_TANH:       fm_fwd_epilogue<ACT_TANH,       BM, WMAX>(acc, sX, bias, Zout, row0, rows, n_out, ty, tx); break;
        case ACT_RELU:       fm_fwd_epilogue<ACT_RELU,       BM, WMAX>(acc, sX, bias, Zout, row0, rows, n_out, ty, tx); break;
        case ACT_LEAKY_RELU: fm_fwd_epilogue<ACT_LEAKY_RELU, BM, WMAX>(acc, sX, bias, Zout, row0, rows, n_out, ty, tx); break;
        case ACT_GELU:       fm_fwd_epilogue<ACT_GELU,       BM, WMAX>(acc, sX, bias, Zout, row0, rows, n_out, ty, tx); break;
        case ACT_SILU:       fm_fwd_epilogue<ACT_SILU,       BM, WMAX>(acc, sX, bias, Zout, row0, rows, n_out, ty, tx); break;
        default:             fm_fwd_epilogue<ACT_IDENTITY,   BM, WMAX>(acc, sX, bias, Zout, row0, rows, n_out, ty, tx); break;
    }
}

// Backward: acc (delta @ W at m_i = ty + 16 i, k = 4 tx + 64 h + c) *= g'(.),
// g' from the layer's input activation sA[m][k] or, for gelu/silu, from Zx (global,
// ld n_in; read only for valid (m, k), 0 elsewhere).  Same expression as gemm_bwd_data.
template <int ACT, int BM, int WMAX>
__device__ __forceinline__ void fm_bwd_epilogue(float (&acc)[BM / 16][WMAX / 16], const float* sA,
                                                const float* __restrict__ Zx, bool vecz,
                                                long long row0, int rows, int n_in, int ty, int tx) {
    constexpr int P = WMAX + 4, TM = BM / 16, H = WMAX / 64;
    const bool need_z = act_needs_z<ACT>::value;
    const bool need_a = !need_z && ACT != ACT_IDENTITY;
    if (!need_z && !need_a) return;   // identity: g' = 1
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = ty + 16 * i;
#pragma unroll
        for (int h = 0; h < H; ++h) {
            const int k = 4 * tx + 64 * h;
            float4 src = make_float4(0.f, 0.f, 0.f, 0.f);
            if (need_z) {
                if (m < rows && k < n_in) {
                    const float* z = Zx + (row0 + m) * (long long)n_in + k;
                    if (vecz) {
                        src = __ldg(reinterpret_cast<const float4*>(z));
                    } else {
                        src.x = __ldg(z);
                        if (k + 1 < n_in) src.y = __ldg(z + 1);
                        if (k + 2 < n_in) src.z = __ldg(z + 2);
                        if (k + 3 < n_in) src.w = __ldg(z + 3);
                    }
                }
            } else {
                src = *reinterpret_cast<const float4*>(sA + m * P + k);
            }
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const float s = fm_c(src, c);
                acc[i][4 * h + c] = acc[i][4 * h + c] * act_grad<ACT, float>(s, s);
            }
        }
    }
}

template <int BM, int WMAX>
__device__ __forceinline__ void fm_bwd_epilogue_any(int act, float (&acc)[BM / 16][WMAX / 16], const float* sA,
                                                    const float* __restrict__ Zx, bool vecz,
                                                    long long row0, int rows, int n_in, int ty, int tx) {
    switch (act) {
        case ACT_SIGMOID:    fm_bwd_epilogue<ACT_SIGMOID,    BM, WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, ty, tx); break;
        case ACT_TANH:       fm_bwd_epilogue<ACT_TANH,       BM, WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, ty, tx); break;
        case ACT_RELU:       fm_bwd_epilogue<ACT_RELU,       BM, WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, ty, tx); break;
        case ACT_LEAKY_RELU: fm_bwd_epilogue<ACT_LEAKY_RELU, BM, WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, ty, tx); break;
        case ACT_GELU:       fm_bwd_epilogue<ACT_GELU,       BM, WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, ty, tx); break;
        case ACT_SILU:       fm_bwd_epilogue<ACT_SILU,       BM, WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, ty, tx); break;
        default: break;   // identity
    }
}

// ============================================================= 1. forward
// For every layer l of the run: Z_l = X_l @ W_l^T + b_l, A_l = g_l(Z_l), A_l -> A_out
// (and Z_l -> Z_out where given); X_0 = table[0].X, X_{l+1} = A_l kept in shared memory.
// Launch: block (256,1,1); grid (ceil(B / BM), 1, 1), one tile of BM rows per block;
//   dynamic smem (BM + WMAX) * (WMAX + 4) * 4 bytes: sX [BM][P] then sW [WMAX][P]
//   (BM 128 / WMAX 64: 52,224 B; BM 64 / WMAX 128: 101,376 B).
// Per layer: GEMM (reads sX, sW) | barrier | stage W_{l+1} into sW + epilogue into sX
//   (+ Z_out) | barrier | copy sX -> A_out (16-byte stores when aligned).  The copy
//   reads sX while the next GEMM reads it too; the next epilogue writes it only after
//   the next GEMM's barrier, which every thread reaches after its copy.
template <int BM, int WMAX>
__global__ void __launch_bounds__(FM_NT, 2)
fused_mlp_fwd(const long long* __restrict__ table, int L, int B) {
    constexpr int P = WMAX + 4;
    extern __shared__ __align__(16) float fm_smem[];
    float* sX = fm_smem;
    float* sW = fm_smem + BM * P;
    const int tid = threadIdx.x;
    int ty, tx;
    fm_thread_coords(tid, ty, tx);
    const long long row0 = (long long)blockIdx.x * BM;
    const int rows = (int)min((long long)BM, (long long)B - row0);

    {
        const long long* p = table;
        const int n_in = (int)p[FM_NIN];
        const int vec = (int)p[FM_VEC];
        fm_load_tile<BM, WMAX>(sX, reinterpret_cast<const float*>(p[FM_X]), row0, rows, n_in,
                               (vec & FM_VEC_X) != 0, tid);
        fm_load_tile<WMAX, WMAX>(sW, reinterpret_cast<const float*>(p[FM_W]), 0, (int)p[FM_NOUT], n_in,
                                 (vec & FM_VEC_W) != 0, tid);
    }
    __syncthreads();

    for (int l = 0; l < L; ++l) {
        const long long* p = table + (long long)l * FM_FIELDS;
        const int n_in = (int)p[FM_NIN];
        const int n_out = (int)p[FM_NOUT];
        float acc[BM / 16][WMAX / 16];
        fm_gemm_fwd<BM, WMAX>(sX, sW, fm_round4(n_in), ty, tx, acc);
        __syncthreads();   // every read of sX and sW for layer l is done
        if (l + 1 < L) {
            const long long* q = p + FM_FIELDS;
            fm_load_tile<WMAX, WMAX>(sW, reinterpret_cast<const float*>(q[FM_W]), 0, (int)q[FM_NOUT],
                                     (int)q[FM_NIN], (q[FM_VEC] & FM_VEC_W) != 0, tid);
        }
        fm_fwd_epilogue_any<BM, WMAX>((int)p[FM_ACT], acc, sX, reinterpret_cast<const float*>(p[FM_B]),
                                      reinterpret_cast<float*>(p[FM_ZOUT]), row0, rows, n_out, ty, tx);
        __syncthreads();   // sX holds A_l, sW holds W_{l+1}
        fm_store_tile<BM, WMAX>(sX, reinterpret_cast<float*>(p[FM_AOUT]), row0, rows, n_out,
                                (p[FM_VEC] & FM_VEC_AOUT) != 0, tid);
    }
}

// ============================================================= 2. backward
// Per tile of BM rows, layers i = L-1 .. 0, with delta_i in sD (delta_{L-1} = delta_last):
//   sA <- X_i (the layer's input activation), sW <- W_i            | barrier
//   db partials: column sums of sD, NT/WMAX row groups -> sScr
//   dW: this block's workspace slice of layer i (+)= sD^T @ sA
//   delta_{i-1} = (sD @ sW) * g'_{i-1}(sA or Z)  (registers; skipped for i = 0 without delta_in)
//                                                                   | barrier
//   db: threads < WMAX add the NT/WMAX partials in order into the workspace
//   delta_{i-1} -> sD (i > 0) or -> delta_in (i = 0)
// Persistent: block g takes tiles g, g + G, g + 2G, ... (G = gridDim.x <= n_tiles,
// so every block has at least one tile and writes its whole workspace slice).
// Workspace: ws + g * ws_stride, per layer i at i * (WMAX*WMAX + WMAX): dW padded to
// [WMAX][WMAX] then db [WMAX]; fused_mlp_reduce sums the G slices.
// Launch: block (256,1,1); grid (G,1,1); dynamic smem (2 BM + WMAX) * (WMAX + 4) * 4 + 256 * 4
//   bytes: sD [BM][P], sA [BM][P], sW [WMAX][P], sScr [256]
//   (BM 128 / WMAX 64: 88,064 B; BM 64 / WMAX 128: 136,192 B).
template <int BM, int WMAX>
__global__ void __launch_bounds__(FM_NT, (WMAX <= 64 ? 2 : 1))
fused_mlp_bwd(const long long* __restrict__ table, int L, int B,
              const float* __restrict__ delta_last, int vec_dl,
              float* delta_in, int want_din, int vec_din,
              float* ws, long long ws_stride, int n_tiles) {
    constexpr int P = WMAX + 4, TM = BM / 16, H = WMAX / 64;
    constexpr int LS = WMAX * WMAX + WMAX;   // workspace floats per layer
    constexpr int G = FM_NT / WMAX;          // row groups of the db partial sums
    extern __shared__ __align__(16) float fm_smem[];
    float* sD = fm_smem;
    float* sA = sD + BM * P;
    float* sW = sA + BM * P;
    float* sScr = sW + WMAX * P;
    const int tid = threadIdx.x;
    int ty, tx;
    fm_thread_coords(tid, ty, tx);
    float* wsb = ws + (long long)blockIdx.x * ws_stride;
    const int n_last = (int)table[(long long)(L - 1) * FM_FIELDS + FM_NOUT];

    bool first = true;
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const long long row0 = (long long)tile * BM;
        const int rows = (int)min((long long)BM, (long long)B - row0);
        fm_load_tile<BM, WMAX>(sD, delta_last, row0, rows, n_last, vec_dl != 0, tid);

        for (int i = L - 1; i >= 0; --i) {
            const long long* p = table + (long long)i * FM_FIELDS;
            const int n_in = (int)p[FM_NIN];
            const int n_out = (int)p[FM_NOUT];
            const int vec = (int)p[FM_VEC];
            const bool need_delta = i > 0 || want_din != 0;
            fm_load_tile<BM, WMAX>(sA, reinterpret_cast<const float*>(p[FM_X]), row0, rows, n_in,
                                   (vec & FM_VEC_X) != 0, tid);
            if (need_delta)
                fm_load_tile<WMAX, WMAX>(sW, reinterpret_cast<const float*>(p[FM_W]), 0, n_out, n_in,
                                         (vec & FM_VEC_W) != 0, tid);
            __syncthreads();   // sD = delta_i, sA = X_i, sW = W_i

            float* wsl = wsb + (long long)i * LS;
            {   // db partial: thread (q, c) sums rows q, q + G, ... of column c
                const int q = tid / WMAX, c = tid % WMAX;
                float s = 0.f;
                for (int m = q; m < rows; m += G) s += sD[m * P + c];
                sScr[tid] = s;   // = sScr[q * WMAX + c]
            }
            fm_gemm_dw<WMAX>(sD, sA, rows, wsl, first, ty, tx);

            float acc[TM][4 * H];
            if (need_delta) {
                fm_gemm_delta<BM, WMAX>(sD, sW, fm_round4(n_out), ty, tx, acc);
                fm_bwd_epilogue_any<BM, WMAX>((int)p[FM_ACTX], acc, sA, reinterpret_cast<const float*>(p[FM_ZX]),
                                              (vec & FM_VEC_ZX) != 0, row0, rows, n_in, ty, tx);
            }
            __syncthreads();   // every read of sD, sA, sW, sScr-writes of this layer done

            if (tid < WMAX) {
                float s = sScr[tid];
#pragma unroll
                for (int q = 1; q < G; ++q) s += sScr[q * WMAX + tid];
                float* dst = wsl + WMAX * WMAX + tid;
                *dst = first ? s : *dst + s;
            }
            if (i > 0) {   // delta_{i-1} -> sD, zero outside [0, rows) x [0, n_in)
#pragma unroll
                for (int ii = 0; ii < TM; ++ii) {
                    const int m = ty + 16 * ii;
#pragma unroll
                    for (int h = 0; h < H; ++h) {
                        const int k = 4 * tx + 64 * h;
                        const bool ok = m < rows;
                        float4 v;
                        v.x = ok && k     < n_in ? acc[ii][4 * h]     : 0.f;
                        v.y = ok && k + 1 < n_in ? acc[ii][4 * h + 1] : 0.f;
                        v.z = ok && k + 2 < n_in ? acc[ii][4 * h + 2] : 0.f;
                        v.w = ok && k + 3 < n_in ? acc[ii][4 * h + 3] : 0.f;
                        *reinterpret_cast<float4*>(sD + m * P + k) = v;
                    }
                }
            } else if (want_din) {   // delta entering the run -> global (B x n_in)
#pragma unroll
                for (int ii = 0; ii < TM; ++ii) {
                    const int m = ty + 16 * ii;
                    if (m >= rows) continue;
                    float* drow = delta_in + (row0 + m) * (long long)n_in;
#pragma unroll
                    for (int h = 0; h < H; ++h) {
                        const int k = 4 * tx + 64 * h;
                        if (k >= n_in) continue;
                        if (vec_din) {
                            *reinterpret_cast<float4*>(drow + k) =
                                make_float4(acc[ii][4 * h], acc[ii][4 * h + 1], acc[ii][4 * h + 2], acc[ii][4 * h + 3]);
                        } else {
                            drow[k] = acc[ii][4 * h];
                            if (k + 1 < n_in) drow[k + 1] = acc[ii][4 * h + 1];
                            if (k + 2 < n_in) drow[k + 2] = acc[ii][4 * h + 2];
                            if (k + 3 < n_in) drow[k + 3] = acc[ii][4 * h + 3];
                        }
                    }
                }
            }
            // The next layer's loads (sA, sW) and the next tile's load of sD come after the
            // barrier above; the sD writes here are ordered before the next barrier.
        }
        first = false;
    }
}

// ============================================================= 3. reduce of the partials
// For layer i = blockIdx.y: dW_i[n][k] = sum_{g < G} ws[g * ws_stride + i * LS + n * WMAX + k],
// db_i[n] likewise at offset WMAX * WMAX + n; the sum runs in block order g = 0, 1, ...
// (bitwise reproducible), 4 loads in flight.
// Launch: block (256,1,1); grid (ceil(max_i (n_out n_in + n_out) / 256), L, 1); no smem.
template <int WMAX>
__global__ void __launch_bounds__(256)
fused_mlp_reduce(const long long* __restrict__ table, const float* __restrict__ ws, long long ws_stride, int G) {
    constexpr int LS = WMAX * WMAX + WMAX;
    const int i = blockIdx.y;
    const long long* p = table + (long long)i * FM_FIELDS;
    const int n_in = (int)p[FM_NIN];
    const int n_out = (int)p[FM_NOUT];
    const int NK = n_out * n_in;
    const int E = NK + n_out;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x) {
        long long off;
        float* dst;
        if (e < NK) {
            const int n = e / n_in, k = e - n * n_in;
            off = (long long)i * LS + n * WMAX + k;
            dst = reinterpret_cast<float*>(p[FM_DW]) + e;
        } else {
            const int n = e - NK;
            off = (long long)i * LS + WMAX * WMAX + n;
            dst = reinterpret_cast<float*>(p[FM_DB]) + n;
        }
        const float* src = ws + off;
        float s = 0.f;
        int g = 0;
        for (; g + 4 <= G; g += 4) {
            const float a0 = src[(long long)g * ws_stride];
            const float a1 = src[(long long)(g + 1) * ws_stride];
            const float a2 = src[(long long)(g + 2) * ws_stride];
            const float a3 = src[(long long)(g + 3) * ws_stride];
            s += a0;
            s += a1;
            s += a2;
            s += a3;
        }
        for (; g < G; ++g) s += src[(long long)g * ws_stride];
        *dst = s;
    }
}
