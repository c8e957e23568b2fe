// gemm.cu: the three GEMMs of a dense layer's fused backprop, with their
// epilogues (bias + activation, Hadamard with g', bias gradient), for
// T = float and double.  Concatenated after activations.cuh by cuda_source.py.
//
// Every kernel here is one templated "block-tile" GEMM core,
//     C[p][q] = sum_{r in [r_begin, r_end)} X(p, r) * Y(q, r),
// with two operand layouts, chosen per operand at compile time:
//     RC ("r contiguous"): X(p, r) = X[p * ld + r]   (row-major, reduction along a row)
//     PC ("p contiguous"): X(p, r) = X[r * ld + p]   (row-major, reduction down a column)
//   gemm_fwd        Z[m][n]  = sum_k A[m][k] W[n][k]     X = A (RC, ld K)      Y = W (RC, ld K)
//   gemm_bwd_data   D'[m][k] = sum_n D[m][n] W[n][k]     X = D (RC, ld N)      Y = W (PC, ld K)
//   gemm_bwd_weight dW[n][k] = sum_m D[m][n] A[m][k]     X = D (PC, ld N)      Y = A (PC, ld K)
//
// Tile configuration, one template int SUB (the 16/8-byte vector width in elements):
//   block tile BM x BN = (32 SUB) x (32 SUB), BK = 8, 256 threads (8 warps),
//   each thread owns a (2 SUB) x (2 SUB) register tile made of 2 x 2 sub-blocks
//   of SUB x SUB at rows {ty SUB + i, BM/2 + ty SUB + i}, cols {tx SUB + j, BN/2 + tx SUB + j},
//   so a warp's shared-memory reads are contiguous vectors (no bank conflicts)
//   and its global stores are 8 contiguous vectors per row.
//     float : SUB = 4 (128 x 128 tile, 8 x 8 per thread, float4) and SUB = 2 (64 x 64, float2)
//     double: SUB = 2 (64 x 64, double2)                          and SUB = 1 (32 x 32, scalar)
//   Each k-tile, every thread loads exactly one SUB-vector of each operand
//   (BM * BK / 256 = SUB elements), so the global->shared copy needs no loop.
//   Shared memory: sX, sY each [2 buffers][BK][BM + 4] (padding 4 makes the
//   transposed stores of RC operands conflict-free); static, <= 17.4 KB.
//   Double buffering: the next k-tile is fetched into registers while the
//   current one is multiplied, then stored to the other buffer; one
//   __syncthreads per k-tile.
//
// Vector (16-byte for SUB = 4 float / 2 double) global loads and stores are used
// only where the launcher says so (vec_* flags): leading dimension a multiple
// of SUB and base pointer aligned to SUB elements.  Then a vector starting at a
// multiple of SUB along the contiguous dimension is either wholly inside the
// matrix or wholly outside, so one bounds test covers it.  Otherwise every
// element is tested on its own (scalar path).  Out-of-range elements are loaded
// as 0 and out-of-range outputs are never stored: any M, N, K >= 1 works.
//
// Offsets that can pass 2^31 (row * width) are computed in long long.
// Grid: a 1-D grid of tiles (grid.x = tiles_p * tiles_q, no 65535 limit), swizzled
// in groups of 8 tile-rows for L2 reuse; gemm_bwd_weight adds grid.z = splits of M.
// No atomics anywhere: every output is written by exactly one thread, in a fixed
// order, so results are bitwise reproducible.

// GEMM_BK (8), GEMM_THREADS (256) and GEMM_PAD (4) come from the generated header.
// __launch_bounds__(256, 2): at most 128 registers, so two blocks share an SM (ptxas checked: no spills).

// ------------------------------------------------------------- vector types
template <typename T, int N> struct gemm_vec;
template <> struct gemm_vec<float, 4>  { typedef float4  type; };
template <> struct gemm_vec<float, 2>  { typedef float2  type; };
template <> struct gemm_vec<float, 1>  { typedef float   type; };
template <> struct gemm_vec<double, 2> { typedef double2 type; };
template <> struct gemm_vec<double, 1> { typedef double  type; };

template <typename T, int N>
union gemm_pack {
    typename gemm_vec<T, N>::type v;
    T a[N];
};

// N consecutive elements, src aligned to N * sizeof(T).
template <int N, typename T>
__device__ __forceinline__ void vld(T* dst, const T* src) {
    gemm_pack<T, N> p;
    p.v = *reinterpret_cast<const typename gemm_vec<T, N>::type*>(src);
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i] = p.a[i];
}

template <int N, typename T>
__device__ __forceinline__ void vst(T* dst, const T* src) {
    gemm_pack<T, N> p;
#pragma unroll
    for (int i = 0; i < N; ++i) p.a[i] = src[i];
    *reinterpret_cast<typename gemm_vec<T, N>::type*>(dst) = p.v;
}

// ------------------------------------------------------------- tile mapping
// gemm_tile_coords (kernels/async_copy.cuh): block id -> (tile row tp, tile col tq), grouped
// 8 tile-rows at a time so that blocks running together share operand tiles in L2.

// ------------------------------------------------------------- global -> registers
// One SUB-vector of the BM x BK tile (tile origin p0, r0) of operand X into v.
// PC: true when X(p, r) = X[r * ld + p].  P = extent in p; r_end = end of r range.
//   RC: the tile is BM rows of BK; thread t takes row t / (BK/SUB), columns
//       (t % (BK/SUB)) * SUB .. + SUB-1.   (RC operands always use r_end == ld.)
//   PC: the tile is BK rows of BM; thread t takes row t / 32, columns (t % 32) * SUB ...
template <typename T, int SUB, bool PC>
__device__ __forceinline__ void gemm_load(T (&v)[SUB], const T* __restrict__ X, int ld, int P,
                                          int p0, int r0, int r_end, bool vec, int tid) {
    if (!PC) {
        const int VPR = GEMM_BK / SUB;
        const int p = p0 + tid / VPR;
        const int r = r0 + (tid % VPR) * SUB;
        const T* src = X + (long long)p * ld + r;
        if (vec) {
            if (p < P && r < r_end) {
                vld<SUB>(v, src);
            } else {
#pragma unroll
                for (int i = 0; i < SUB; ++i) v[i] = T(0);
            }
        } else {
#pragma unroll
            for (int i = 0; i < SUB; ++i) v[i] = (p < P && r + i < r_end) ? src[i] : T(0);
        }
    } else {
        const int r = r0 + tid / 32;
        const int p = p0 + (tid % 32) * SUB;
        const T* src = X + (long long)r * ld + p;
        if (vec) {
            if (r < r_end && p < P) {
                vld<SUB>(v, src);
            } else {
#pragma unroll
                for (int i = 0; i < SUB; ++i) v[i] = T(0);
            }
        } else {
#pragma unroll
            for (int i = 0; i < SUB; ++i) v[i] = (r < r_end && p + i < P) ? src[i] : T(0);
        }
    }
}

// registers -> shared tile s[BK][BM + PAD] (k-major: s[k][p] = X(p0 + p, r0 + k)).
template <typename T, int SUB, bool PC>
__device__ __forceinline__ void gemm_store_smem(T* s, const T (&v)[SUB], int tid) {
    const int LDS = 32 * SUB + GEMM_PAD;
    if (!PC) {
        const int VPR = GEMM_BK / SUB;
        const int p = tid / VPR;
        const int k = (tid % VPR) * SUB;
#pragma unroll
        for (int i = 0; i < SUB; ++i) s[(k + i) * LDS + p] = v[i];   // transposed store
    } else {
        const int k = tid / 32;
        const int p = (tid % 32) * SUB;
        vst<SUB>(s + k * LDS + p, v);
    }
}

// ------------------------------------------------------------- the core
// acc[h*SUB + i][g*SUB + j] = sum_r X(p0 + h*BM/2 + ty*SUB + i, r) * Y(q0 + g*BN/2 + tx*SUB + j, r)
// over r in [r_begin, r_end).  With SUMX (PC layout of X only: the bias gradient of
// gemm_bwd_weight), xpart[i] = sum of the X values this thread loaded, i.e. X(p0 + (tid%32)*SUB + i, r)
// over r = r_begin + tid/32 + 8 j: partial column sums, finished in gemm_bwd_weight.
// sX, sY: shared, 2 * BK * (BM + PAD) elements each.
template <typename T, int SUB, bool XPC, bool YPC, bool SUMX>
__device__ __forceinline__ void gemm_core(
        const T* __restrict__ X, int ldx, int PX, bool vecx,
        const T* __restrict__ Y, int ldy, int PY, bool vecy,
        int p0, int q0, int r_begin, int r_end,
        T* sX, T* sY, int tid, int ty, int tx,
        T (&acc)[2 * SUB][2 * SUB], T (&xpart)[SUB]) {
    const int BM = 32 * SUB;
    const int LDS = BM + GEMM_PAD;
    const int BUF = GEMM_BK * LDS;
    static_assert(!SUMX || XPC, "column sums only for a p-contiguous X");
#pragma unroll
    for (int i = 0; i < 2 * SUB; ++i)
#pragma unroll
        for (int j = 0; j < 2 * SUB; ++j) acc[i][j] = T(0);
#pragma unroll
    for (int i = 0; i < SUB; ++i) xpart[i] = T(0);
    const int ntiles = r_end > r_begin ? (r_end - r_begin + GEMM_BK - 1) / GEMM_BK : 0;
    if (ntiles == 0) return;   // uniform over the block: no __syncthreads skipped unevenly

    T rx[SUB], ry[SUB];
    gemm_load<T, SUB, XPC>(rx, X, ldx, PX, p0, r_begin, r_end, vecx, tid);
    gemm_load<T, SUB, YPC>(ry, Y, ldy, PY, q0, r_begin, r_end, vecy, tid);
    if (SUMX) {
#pragma unroll
        for (int i = 0; i < SUB; ++i) xpart[i] += rx[i];
    }
    gemm_store_smem<T, SUB, XPC>(sX, rx, tid);
    gemm_store_smem<T, SUB, YPC>(sY, ry, tid);
    __syncthreads();

    for (int t = 0; t < ntiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < ntiles;
        if (more) {   // fetch the next k-tile while this one is multiplied
            const int r0 = r_begin + (t + 1) * GEMM_BK;
            gemm_load<T, SUB, XPC>(rx, X, ldx, PX, p0, r0, r_end, vecx, tid);
            gemm_load<T, SUB, YPC>(ry, Y, ldy, PY, q0, r0, r_end, vecy, tid);
        }
        const T* xs = sX + cur * BUF;
        const T* ys = sY + cur * BUF;
#pragma unroll
        for (int k = 0; k < GEMM_BK; ++k) {
            T a[2 * SUB], b[2 * SUB];
            vld<SUB>(a,       xs + k * LDS + ty * SUB);
            vld<SUB>(a + SUB, xs + k * LDS + BM / 2 + ty * SUB);
            vld<SUB>(b,       ys + k * LDS + tx * SUB);
            vld<SUB>(b + SUB, ys + k * LDS + BM / 2 + tx * SUB);
#pragma unroll
            for (int i = 0; i < 2 * SUB; ++i)
#pragma unroll
                for (int j = 0; j < 2 * SUB; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
        }
        if (more) {
            // buffer cur^1 was last read in iteration t-1, which ended with a barrier
            if (SUMX) {   // here, not at the load: using rx early would stall on the load
#pragma unroll
                for (int i = 0; i < SUB; ++i) xpart[i] += rx[i];
            }
            gemm_store_smem<T, SUB, XPC>(sX + (cur ^ 1) * BUF, rx, tid);
            gemm_store_smem<T, SUB, YPC>(sY + (cur ^ 1) * BUF, ry, tid);
        }
        __syncthreads();
    }
}

// Thread coordinates in the 16 x 16 thread grid: a warp covers 4 ty x 8 tx, so its
// shared reads per k are 4 distinct X vectors and 8 distinct Y vectors (one wavefront each).
__device__ __forceinline__ void gemm_thread_coords(int tid, int& ty, int& tx) {
    const int warp = tid >> 5, lane = tid & 31;
    ty = (warp >> 1) * 4 + (lane >> 3);
    tx = (warp & 1) * 8 + (lane & 7);
}

#define GEMM_SMEM(T, SUB)                                                              \
    __shared__ __align__(16) T sX[2 * GEMM_BK * (32 * (SUB) + GEMM_PAD)];            \
    __shared__ __align__(16) T sY[2 * GEMM_BK * (32 * (SUB) + GEMM_PAD)];

// ============================================================= 1. forward
// Zout = A(M x K) @ W(N x K)^T + bias(N); Aout = g_ACT(Z); Zout written iff write_z.
// Launch: block (256,1,1); grid (ceil(M/BM) * ceil(N/BN), 1, 1); static smem
//   2 * 2 * 8 * (32 SUB + 4) * sizeof(T) (float SUB 4: 16.5 KB, SUB 2: 8.5 KB;
//   double SUB 2: 17 KB, SUB 1: 9 KB).
// vec_a: K % SUB == 0 and A, W aligned; vec_out: N % SUB == 0 and Aout, Zout aligned.
template <typename T, int ACT, int SUB>
__global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm_fwd(const T* __restrict__ A, const T* __restrict__ W, const T* __restrict__ bias,
         T* Aout, T* Zout, int M, int N, int K, int write_z, int vec_a, int vec_out) {
    GEMM_SMEM(T, SUB)
    const int BM = 32 * SUB;
    const int tid = threadIdx.x;
    int ty, tx, tp, tq;
    gemm_thread_coords(tid, ty, tx);
    gemm_tile_coords((M + BM - 1) / BM, (N + BM - 1) / BM, tp, tq);
    const int p0 = tp * BM, q0 = tq * BM;

    T acc[2 * SUB][2 * SUB], unused[SUB];
    gemm_core<T, SUB, false, false, false>(A, K, M, vec_a != 0, W, K, N, vec_a != 0,
                                           p0, q0, 0, K, sX, sY, tid, ty, tx, acc, unused);

    // bias of this thread's 2 SUB columns
    T bv[2 * SUB];
#pragma unroll
    for (int g = 0; g < 2; ++g)
#pragma unroll
        for (int j = 0; j < SUB; ++j) {
            const int q = q0 + g * (BM / 2) + tx * SUB + j;
            bv[g * SUB + j] = q < N ? bias[q] : T(0);
        }

#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < SUB; ++i) {
            const int p = p0 + h * (BM / 2) + ty * SUB + i;
            if (p >= M) continue;
            const long long row = (long long)p * N;
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                const int q = q0 + g * (BM / 2) + tx * SUB;
                T z[SUB], a[SUB];
#pragma unroll
                for (int j = 0; j < SUB; ++j) {
                    z[j] = acc[h * SUB + i][g * SUB + j] + bv[g * SUB + j];
                    a[j] = act_forward<ACT, T>(z[j]);
                }
                if (vec_out) {
                    if (q < N) {
                        vst<SUB>(Aout + row + q, a);
                        if (write_z) vst<SUB>(Zout + row + q, z);
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < SUB; ++j)
                        if (q + j < N) {
                            Aout[row + q + j] = a[j];
                            if (write_z) Zout[row + q + j] = z[j];
                        }
                }
            }
        }
}

// ============================================================= 2. backward, data
// out(M x K) = (D(M x N) @ W(N x K)) * g_ACT'(.), g' from Aprev (M x K) or, for
// gelu/silu, Zprev (M x K); the one not needed is never read (may be any pointer).
// Launch: block (256,1,1); grid (ceil(M/BM) * ceil(K/BN), 1, 1); static smem as gemm_fwd.
// vec_d: N % SUB == 0 and D aligned; vec_w: K % SUB == 0 and W aligned;
// vec_out: K % SUB == 0 and out, Aprev, Zprev aligned.
template <typename T, int ACT, int SUB>
__global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm_bwd_data(const T* __restrict__ D, const T* __restrict__ W, const T* __restrict__ Aprev,
              const T* __restrict__ Zprev, T* out, int M, int N, int K,
              int vec_d, int vec_w, int vec_out) {
    GEMM_SMEM(T, SUB)
    const int BM = 32 * SUB;
    const int tid = threadIdx.x;
    int ty, tx, tp, tq;
    gemm_thread_coords(tid, ty, tx);
    gemm_tile_coords((M + BM - 1) / BM, (K + BM - 1) / BM, tp, tq);
    const int p0 = tp * BM, q0 = tq * BM;

    T acc[2 * SUB][2 * SUB], unused[SUB];
    gemm_core<T, SUB, false, true, false>(D, N, M, vec_d != 0, W, K, K, vec_w != 0,
                                          p0, q0, 0, N, sX, sY, tid, ty, tx, acc, unused);

    const bool need_z = act_needs_z<ACT>::value;
    const bool need_a = !need_z && ACT != ACT_IDENTITY;
    const T* G = need_z ? Zprev : Aprev;   // what g' is taken from
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < SUB; ++i) {
            const int p = p0 + h * (BM / 2) + ty * SUB + i;
            if (p >= M) continue;
            const long long row = (long long)p * K;
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                const int q = q0 + g * (BM / 2) + tx * SUB;
                T src[SUB], d[SUB];
#pragma unroll
                for (int j = 0; j < SUB; ++j) src[j] = T(0);
                if (vec_out) {
                    if (q < K) {
                        if (need_z || need_a) vld<SUB>(src, G + row + q);
#pragma unroll
                        for (int j = 0; j < SUB; ++j)
                            d[j] = acc[h * SUB + i][g * SUB + j] * act_grad<ACT, T>(src[j], src[j]);
                        vst<SUB>(out + row + q, d);
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < SUB; ++j)
                        if (q + j < K) {
                            const T s = (need_z || need_a) ? G[row + q + j] : T(0);
                            out[row + q + j] = acc[h * SUB + i][g * SUB + j] * act_grad<ACT, T>(s, s);
                        }
                }
            }
        }
}

// ============================================================= 3. backward, weights
// dW(N x K) = D(M x N)^T @ A(M x K), db(N) = column sums of D, in one kernel.
// grid.z = S splits of the batch: split z sums rows [z*rows_per_split, min(M, (z+1)*rows_per_split))
// and writes dW_base + z*split_stride (N x K) and db_base + z*split_stride (N).
// With S == 1 the launcher passes dW and db themselves; with S > 1 a workspace
// (layout per split: [N*K partial dW][N partial db], split_stride a multiple of 4)
// that gemm_splitk_reduce sums in split order.  db: every thread sums the D vector it
// loads each k-tile (SUB adds per k-tile); the tiles of the first column (tq == 0) then
// add the 8 per-warp partials of each column in a fixed order through shared memory.
// Launch: block (256,1,1); grid (ceil(N/BM) * ceil(K/BN), 1, S); static smem as gemm_fwd.
// vec_d: N % SUB == 0 and D aligned; vec_a: K % SUB == 0 and A aligned;
// vec_out: K % SUB == 0 and dW_base aligned (split_stride % SUB == 0).
template <typename T, int SUB>
__global__ void __launch_bounds__(GEMM_THREADS, 2)
gemm_bwd_weight(const T* __restrict__ D, const T* __restrict__ A, T* dW_base, T* db_base,
                int M, int N, int K, int rows_per_split, long long split_stride,
                int vec_d, int vec_a, int vec_out) {
    GEMM_SMEM(T, SUB)
    const int BM = 32 * SUB;
    const int tid = threadIdx.x;
    int ty, tx, tp, tq;
    gemm_thread_coords(tid, ty, tx);
    gemm_tile_coords((N + BM - 1) / BM, (K + BM - 1) / BM, tp, tq);
    const int p0 = tp * BM, q0 = tq * BM;
    const int r_begin = blockIdx.z * rows_per_split;
    const int r_end = min(M, r_begin + rows_per_split);
    T* dW = dW_base + (long long)blockIdx.z * split_stride;
    T* db = db_base + (long long)blockIdx.z * split_stride;

    T acc[2 * SUB][2 * SUB], dpart[SUB];
    gemm_core<T, SUB, true, true, true>(D, N, N, vec_d != 0, A, K, K, vec_a != 0,
                                        p0, q0, r_begin, r_end, sX, sY, tid, ty, tx, acc, dpart);

    if (tq == 0) {   // uniform per block: finish db of rows p0 .. p0+BM-1
        // dpart of thread tid covers columns (tid%32)*SUB + i, batch rows == tid/32 (mod 8).
        // The core ended with a barrier (or never touched sX), so sX is free: stage the
        // 8 partials per column as sX[w*BM + col], then add them in warp order.
        const int w = tid / 32, c = (tid % 32) * SUB;
#pragma unroll
        for (int i = 0; i < SUB; ++i) sX[w * BM + c + i] = dpart[i];
        __syncthreads();
        if (tid < BM && p0 + tid < N) {
            T s = sX[tid];
#pragma unroll
            for (int v = 1; v < GEMM_BK; ++v) s += sX[v * BM + tid];
            db[p0 + tid] = s;
        }
    }

#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < SUB; ++i) {
            const int p = p0 + h * (BM / 2) + ty * SUB + i;
            if (p >= N) continue;
            const long long row = (long long)p * K;
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                const int q = q0 + g * (BM / 2) + tx * SUB;
                if (vec_out) {
                    if (q < K) vst<SUB>(dW + row + q, &acc[h * SUB + i][g * SUB]);
                } else {
#pragma unroll
                    for (int j = 0; j < SUB; ++j)
                        if (q + j < K) dW[row + q + j] = acc[h * SUB + i][g * SUB + j];
                }
            }
        }
}

// Sum the S partials of gemm_bwd_weight in split order (bitwise reproducible):
// dW[e] = sum_z ws[z*split_stride + e] for e < NK, db[e - NK] likewise at offset NK.
// Launch: block (256,1,1); grid (min(ceil((NK+N)/256), 8 * SMs), 1, 1), grid-stride; no smem.
template <typename T>
__global__ void __launch_bounds__(256)
gemm_splitk_reduce(const T* __restrict__ ws, T* dW, T* db, int S, long long split_stride,
                   long long NK, int N) {
    const long long total = NK + N;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        T s = ws[e];
        for (int z = 1; z < S; ++z) s += ws[(long long)z * split_stride + e];
        if (e < NK) dW[e] = s;
        else db[e - NK] = s;
    }
}

// ############################################################# pipelined: large fp32 tile, cp.async
// A second large-tile design for float only (double keeps v1), serving the weight gradient:
// gemm_bwd_weight_pipelined, with the same epilogue (db), masking (any M, N, K >= 1;
// out-of-range loads are zero-filled, out-of-range outputs never stored), 1-D swizzled grid and
// batch split as gemm_bwd_weight, no atomics.  Measured on an H100 it beat v1's large tile for
// the weight gradient (84% against 80% of cuBLAS) and lost to it for the forward and
// input-gradient GEMMs, whose pipelined variants were removed (benchmarks/results/h100-2026-11-22).
//
// Launch shape:
//   block (256, 1, 1) = 8 warps; block tile 128 x 128; k-tile BK (template, 16 as instantiated);
//   STAGES-deep ring of shared-memory k-tiles filled with cp.async (template, 3 as instantiated);
//   DYNAMIC shared memory GEMM2_SMEM_BYTES(BK, STAGES) = 2 * STAGES * BK * 132 * 4 bytes
//   (BK 16, 3 stages: 50,688 B, above the 48 KB default, so the launcher raises the
//   function's max_dynamic_shared_size_bytes);
//   grid as v1: (tiles_p * tiles_q, 1, splits).
//   __launch_bounds__(256, GEMM2_MIN_BLOCKS(BK)): 1 block/SM for BK 16 (2 for BK 8, <= 128
//   registers).  Instantiated as cuda_gemm.PIPELINED = (BK 16, 3 stages).
//
// Warp / thread mapping (each thread owns 8 x 8 outputs = 64 fp32 accumulators):
//   warp w = tid / 32:  wm = w / 2 (0..3) -> rows,  wn = w % 2 (0..1) -> columns;
//   warp tile = 32 rows x 64 cols at (wm * 32, wn * 64) of the block tile (4 x 2 warps).
//   lane:  lr = lane / 8 (0..3),  lc = lane % 8 (0..7)  (4 x 8 lanes).
//   thread fragment = 2 x 2 sub-blocks of 4 x 4:
//     rows  wm*32 + h*16 + lr*4 + i    (h in 0..1, i in 0..3)
//     cols  wn*64 + g*32 + lc*4 + j    (g in 0..1, j in 0..3)
//   Per k a thread reads 4 float4 from shared memory (X at h = 0, 1; Y at g = 0, 1).  Across a
//   warp an X read touches 4 distinct float4 (64 contiguous bytes, each broadcast to 8 lanes)
//   and a Y read 8 distinct float4 (128 contiguous bytes): one wavefront each, conflict-free.
//   Epilogue stores: per (h, i, g) a warp writes 4 rows x 8 contiguous float4 (128 B a row).
//
// Shared layout, per operand and stage: s[k][p] = X(p0 + p, r0 + k), k < BK, p < 128, row
// length GEMM2_LDS = 132 floats (k-major as v1; the 4-float pad keeps float4 alignment and makes
// the transposing 4-byte copies below conflict-free).
// Global -> shared (cp.async on sm_80+; a plain load + shared store below sm_80):
//   PC operand (p contiguous): 16-byte cp.async.cg, BK * 32 per tile, BK / 8 per thread:
//     thread t copies row k = t / 32 + 8 c, p = 4 (t % 32) .. + 3; a warp writes 512 contiguous
//     bytes.  Needs ld % 4 == 0 and a 16-byte aligned base (the launcher uses v1 otherwise);
//     then P == ld (true of every PC operand here) makes a float4 wholly in or out of range.
//   RC operand (r contiguous, needs a transpose): 4-byte cp.async.ca, 128 * BK per tile,
//     BK / 2 per thread: k = lane % 8 + 8 c, p = lane / 8 + 4 w + 32 d (c < BK / 8, d < 4): a
//     warp reads 4 rows x 32 contiguous bytes and writes banks (4 k + p) mod 32, all distinct.
//     4-byte copies need no alignment: any leading dimension, any offset.
//   Out-of-range elements are copied with src-size 0 (zero fill; the source is not read).
// Pipeline: the prologue issues k-tiles 0 .. STAGES-2, one commit group each.  Iteration t
//   waits for tile t (cp.async.wait_group STAGES-2), __syncthreads (tile t visible to all; every
//   thread is done with tile t-1), issues tile t+STAGES-1 into the stage tile t-1 used, commits
//   (an empty group when there is nothing left, so the group count stays exact), then
//   multiplies tile t.  One barrier per k-tile; no staging registers.
// Bias gradient (gemm_bwd_weight_pipelined, only the blocks of tile column 0 that write db): each thread
//   adds, per k-tile, BK / 2 shared values of X column tid % 128 (k half tid / 128); the two
//   halves are added in a fixed order at the end: bitwise reproducible.

#define GEMM2_THREADS GEMM_THREADS   // GEMM2_BM (128) comes from the generated header
#define GEMM2_LDS (GEMM2_BM + 4)
#define GEMM2_SMEM_BYTES(BK, STAGES) (2 * (STAGES) * (BK) * GEMM2_LDS * 4)
// Blocks per SM asked of ptxas: BK 8 fits 128 registers with no spills (2 blocks/SM); BK 16
// needs about 160 for the RC copies' addresses (ptxas spilled at 128), so 1 block/SM (8 warps).
#define GEMM2_MIN_BLOCKS(BK) ((BK) <= 8 ? 2 : 1)

// cp_async16 / cp_async4 / cp_async_commit / cp_async_wait: kernels/async_copy.cuh.

// Issue the copies of one BK x 128 k-tile of operand X (tile origin p0, r0) into stage s.
template <int BK, bool PC>
__device__ __forceinline__ void gemm2_load_tile(float* s, const float* __restrict__ X, int ld, int P,
                                                int p0, int r0, int r_end, int tid) {
    static_assert(BK % 8 == 0, "BK must be a multiple of 8");
    if (PC) {
        const int p = 4 * (tid & 31);
        const bool pin = p0 + p < P;
#pragma unroll
        for (int c = 0; c < BK / 8; ++c) {
            const int k = (tid >> 5) + 8 * c;
            const bool in = pin && r0 + k < r_end;
            const float* src = in ? X + (long long)(r0 + k) * ld + (p0 + p) : X;
            cp_async16(s + k * GEMM2_LDS + p, src, in);
        }
    } else {
        const int lane = tid & 31, w = tid >> 5;
#pragma unroll
        for (int d = 0; d < 4; ++d) {
            const int p = (lane >> 3) + 4 * w + 32 * d;
            const bool pin = p0 + p < P;
            const float* row = X + (long long)(p0 + p) * ld + r0;
#pragma unroll
            for (int c = 0; c < BK / 8; ++c) {
                const int k = (lane & 7) + 8 * c;
                const bool in = pin && r0 + k < r_end;
                cp_async4(s + k * GEMM2_LDS + p, in ? row + k : X, in);
            }
        }
    }
}

// acc[h*4 + i][g*4 + j] = sum_{r in [r_begin, r_end)} X(p0 + xo + h*16 + i, r) * Y(q0 + yo + g*32 + j, r)
// with xo = wm*32 + lr*4, yo = wn*64 + lc*4 (the mapping above).  With sumx (block-uniform),
// xsum = sum over r of X(p0 + tid % 128, r) for the k half tid / 128 of every k-tile.
// Ends with all copies complete and a barrier (when ntiles > 0): the caller may reuse smem.
template <int BK, int STAGES, bool XPC, bool YPC>
__device__ __forceinline__ void gemm2_core(
        const float* __restrict__ X, int ldx, int PX,
        const float* __restrict__ Y, int ldy, int PY,
        int p0, int q0, int r_begin, int r_end, float* smem, int tid, int xo, int yo,
        float (&acc)[8][8], bool sumx, float& xsum) {
    static_assert(STAGES >= 2, "at least two stages");
    const int TILE = BK * GEMM2_LDS;
    float* sX = smem;
    float* sY = smem + STAGES * TILE;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    xsum = 0.f;
    const int ntiles = r_end > r_begin ? (r_end - r_begin + BK - 1) / BK : 0;
    if (ntiles == 0) return;   // uniform over the block

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) {
            const int r0 = r_begin + s * BK;
            gemm2_load_tile<BK, XPC>(sX + s * TILE, X, ldx, PX, p0, r0, r_end, tid);
            gemm2_load_tile<BK, YPC>(sY + s * TILE, Y, ldy, PY, q0, r0, r_end, tid);
        }
        cp_async_commit();
    }

    const int sc = tid & (GEMM2_BM - 1), sk = (tid >> 7) * (BK / 2);   // column-sum slot
    int stage = 0, wstage = STAGES - 1;
    for (int t = 0; t < ntiles; ++t) {
        cp_async_wait<STAGES - 2>();   // this thread's copies of tile t have landed
        __syncthreads();            // everyone's have; everyone is done with tile t-1 (stage wstage)
        const int tn = t + STAGES - 1;
        if (tn < ntiles) {
            const int r0 = r_begin + tn * BK;
            gemm2_load_tile<BK, XPC>(sX + wstage * TILE, X, ldx, PX, p0, r0, r_end, tid);
            gemm2_load_tile<BK, YPC>(sY + wstage * TILE, Y, ldy, PY, q0, r0, r_end, tid);
        }
        cp_async_commit();

        const float* xs = sX + stage * TILE;
        const float* ys = sY + stage * TILE;
        if (sumx) {
#pragma unroll
            for (int k = 0; k < BK / 2; ++k) xsum += xs[(sk + k) * GEMM2_LDS + sc];
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[8], b[8];
            vld<4>(a,     xs + k * GEMM2_LDS + xo);
            vld<4>(a + 4, xs + k * GEMM2_LDS + xo + 16);
            vld<4>(b,     ys + k * GEMM2_LDS + yo);
            vld<4>(b + 4, ys + k * GEMM2_LDS + yo + 32);
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        stage = stage + 1 == STAGES ? 0 : stage + 1;
        wstage = wstage + 1 == STAGES ? 0 : wstage + 1;
    }
    cp_async_wait<0>();   // only empty groups can be pending; keep the count exact anyway
    __syncthreads();
}

// Row / column offsets of this thread's fragment inside the 128 x 128 tile (h = 0, g = 0).
__device__ __forceinline__ void gemm2_thread_offsets(int tid, int& xo, int& yo) {
    const int w = tid >> 5, lane = tid & 31;
    xo = (w >> 1) * 32 + (lane >> 3) * 4;
    yo = (w & 1) * 64 + (lane & 7) * 4;
}

// ============================================================= pipelined backward, weights
// As gemm_bwd_weight: dW(N x K) = D(M x N)^T @ A(M x K), db(N) = column sums of D; grid.z =
// splits of the batch, same workspace layout and arguments (less vec_d / vec_a: both operands
// are PC and must be vector-aligned, N % 4 == 0 and K % 4 == 0; the launcher uses v1 otherwise).
// vec_out: K % 4 == 0 and dW_base 16-byte aligned (split_stride % 4 == 0).
template <int BK, int STAGES>
__global__ void __launch_bounds__(GEMM2_THREADS, GEMM2_MIN_BLOCKS(BK))
gemm_bwd_weight_pipelined(const float* __restrict__ D, const float* __restrict__ A, float* dW_base, float* db_base,
                 int M, int N, int K, int rows_per_split, long long split_stride, int vec_out) {
    extern __shared__ __align__(16) float gemm2_dsmem[];
    const int tid = threadIdx.x;
    int xo, yo, tp, tq;
    gemm2_thread_offsets(tid, xo, yo);
    gemm_tile_coords((N + GEMM2_BM - 1) / GEMM2_BM, (K + GEMM2_BM - 1) / GEMM2_BM, tp, tq);
    const int p0 = tp * GEMM2_BM, q0 = tq * GEMM2_BM;
    const int r_begin = blockIdx.z * rows_per_split;
    const int r_end = min(M, r_begin + rows_per_split);
    float* dW = dW_base + (long long)blockIdx.z * split_stride;
    float* db = db_base + (long long)blockIdx.z * split_stride;

    float acc[8][8], dpart;
    gemm2_core<BK, STAGES, true, true>(D, N, N, A, K, K, p0, q0, r_begin, r_end, gemm2_dsmem, tid,
                                       xo, yo, acc, tq == 0, dpart);

    if (tq == 0) {   // uniform per block: db of rows p0 .. p0+127, two k halves added in order
        // the core ended with a barrier (or never touched shared memory): it is free
        gemm2_dsmem[tid] = dpart;
        __syncthreads();
        if (tid < GEMM2_BM && p0 + tid < N) db[p0 + tid] = gemm2_dsmem[tid] + gemm2_dsmem[GEMM2_BM + tid];
    }

#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int p = p0 + xo + h * 16 + i;
            if (p >= N) continue;
            const long long row = (long long)p * K;
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                const int q = q0 + yo + g * 32;
                if (vec_out) {
                    if (q < K) vst<4>(dW + row + q, &acc[h * 4 + i][g * 4]);
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (q + j < K) dW[row + q + j] = acc[h * 4 + i][g * 4 + j];
                }
            }
        }
}
