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

#define GEMM_BK 8
#define GEMM_THREADS 256
#define GEMM_PAD 4
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
// Block id -> (tile row tp, tile col tq), grouped 8 tile-rows at a time so that
// blocks running together share operand tiles in L2.
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
