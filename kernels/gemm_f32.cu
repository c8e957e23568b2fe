// gemm_f32.cu: a third float32 tile design for the three GEMMs of a dense layer's fused
// backprop (experimental, sm_80+, on no default path), with gemm.cu's epilogues:
//   gemm_f32_fwd         Z[m][n]  = sum_k A[m][k] W[n][k] + b[n]; A_out = g(Z); Z_out optional
//   gemm_f32_bwd_data    D'[m][k] = (sum_n D[m][n] W[n][k]) * g'(A_prev or Z_prev)
//   gemm_f32_bwd_weight  dW[n][k] = sum_m D[m][n] A[m][k]; db[n] = sum_m D[m][n];
//                        split over the batch (grid.z) into a workspace, then
//   gemm_f32_splitk_reduce  sums the splits in split order (no atomics: bitwise reproducible).
// Concatenated after the generated constants header and activations.cuh by cuda_source.py.
//
// As in gemm.cu, each kernel is one core  C[p][q] = sum_{r in [r_begin, r_end)} X(p, r) * Y(q, r)
// with each operand either
//   RC ("r contiguous"): X(p, r) = X[p * ld + r]    or    PC ("p contiguous"): X(p, r) = X[r * ld + p]
//   fwd:        X = A (RC, ld K)   Y = W (RC, ld K)
//   bwd_data:   X = D (RC, ld N)   Y = W (PC, ld K)
//   bwd_weight: X = D (PC, ld N)   Y = A (PC, ld K)
//
// Tile: 128 threads (4 warps), block tile 128 (p) x 128 (q), warp tile 64 x 64 (warps 2 x 2:
// wm = warp / 2 on p, wn = warp % 2 on q), thread tile 16 (p) x 8 (q) = 128 accumulators.
// Lanes: rg = lane / 8 (0..3) along p, cg = lane % 8 (0..7) along q.  So a warp reads 4
// distinct X addresses (each broadcast to 8 lanes) and 8 distinct Y addresses per shared
// load: the long side of the thread tile (16) is on X, the broadcast operand.
//
// Shared memory, per stage and operand (GEMM3_TILE = 2560 floats = 10 KB):
//   PC operand: k-major,  s[k * 128 + p]   (BK rows of 128; written by contiguous 16-byte copies)
//   RC operand: p-major,  s[p * 20 + k]    (128 rows of BK = 16, padded to 20 floats = 5
//               float4: 8 consecutive rows fall in 8 distinct 16-byte bank groups)
// so 16-byte cp.async copies fill both without a transpose.  The thread's p (or q) indices
// depend on the operand's layout, chosen so that every shared load is one 16-byte vector per
// lane and one wavefront per warp (conflict-free):
//   X PC: p = wm*64 + (i/4)*16 + rg*4 + i%4   read: float4 along p at one k   (4 rg -> 64 B)
//   X RC: p = wm*64 + i*4 + rg                read: float4 along k at one p   (4 rows, 4 groups)
//   Y PC: q = wn*64 + (j/4)*32 + cg*4 + j%4   read: float4 along q at one k   (8 cg -> 128 B)
//   Y RC: q = wn*64 + j*8 + cg                read: float4 along k at one q   (8 rows, 8 groups)
// Per k-tile of BK = 16 each thread runs 96 LDS.128 (64 of X, 32 of Y) for 2048 FFMA.
//
// Pipeline: GEMM3_STAGES = 3 stages of 16-byte cp.async.cg copies (4 per operand per thread
// per k-tile).  The prologue issues k-tiles 0 and 1 (one commit group each); iteration t waits
// for tile t (wait_group 1), __syncthreads (tile t visible; everyone done with tile t-1),
// issues tile t+2 into the stage tile t-1 used, commits (an empty group when none is left),
// then multiplies tile t.  One barrier per k-tile.
// Shared addresses (copy destinations, per-thread read offsets) are computed once before the
// fast loop; per k-tile only a stage offset changes.  The general loop recomputes its copy
// offsets from a fresh read of %tid.x (registers: see Gemm3Operand).
//
// Fast path: a k-tile whose whole 128 x BK extent of both operands is in range, with both
// operands vector-eligible (ld % 4 == 0 and a 16-byte aligned base, the launcher's vec_x /
// vec_y flags), is copied with no per-element test.  Otherwise (edge tiles) every 16-byte
// chunk is tested (vec; a chunk is wholly in or out because ld % 4 == 0 and the extent in the
// contiguous dimension is ld) or, without vec, every element is copied with its own 4-byte
// cp.async.  Out-of-range elements are zero-filled (src-size 0, the source is not read) and
// out-of-range outputs are never stored: any M, N, K >= 1.  Offsets are 64-bit where a
// product of two extents appears.
//
// Grid: 1-D grid of tiles (tiles_p * tiles_q) swizzled in groups of 8 tile rows for L2
// reuse; gemm_f32_bwd_weight adds grid.z = splits of the batch.
// Dynamic shared memory: GEMM3_SMEM_BYTES = 3 * 2 * 2560 * 4 = 61,440 B (above the 48 KB
// default: the launcher raises max_dynamic_shared_size_bytes).
// __launch_bounds__(128, 2): at most 255 registers, two blocks (8 warps) per SM.
//
// GEMM3_THREADS (128), GEMM3_BM (128), GEMM3_BK (16), GEMM3_STAGES (3) come from the generated header.

#define GEMM3_LDK GEMM3_BM               // PC stage row length (floats)
#define GEMM3_LDR (GEMM3_BK + 4)         // RC stage row length (floats)
#define GEMM3_TILE (GEMM3_BM * GEMM3_LDR)   // floats of one operand's stage (covers both layouts)
#define GEMM3_SMEM_BYTES (2 * GEMM3_STAGES * GEMM3_TILE * 4)

static_assert(GEMM3_THREADS == 128 && GEMM3_BM == 128 && GEMM3_BK == 16,
              "the thread and copy mappings below are written for 128 threads, 128 x 128 x 16");
static_assert(GEMM3_BK * GEMM3_LDK <= GEMM3_TILE, "PC stage fits the tile");

// ------------------------------------------------------------- cp.async
// cp_async16 (to a 32-bit shared address), cp_async16_always, cp_async4, cp_async_commit,
// cp_async_wait, gemm_tile_coords: kernels/async_copy.cuh.

__device__ __forceinline__ void gemm3_ld4(float* d, const float* s) {
    const float4 v = *reinterpret_cast<const float4*>(s);
    d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
}

__device__ __forceinline__ void gemm3_st4(float* d, const float* s) {
    *reinterpret_cast<float4*>(d) = make_float4(s[0], s[1], s[2], s[3]);
}

// ------------------------------------------------------------- one operand's copies
// Everything a thread needs to copy its share of one operand's k-tiles.
// Thread t's four 16-byte chunks per k-tile (c = 0..3):
//   PC: k = t / 32 + 4 c,   p = 4 (t % 32)        (a warp copies one 512-byte row run)
//   RC: p = t / 4 + 32 c,   k = 4 (t % 4)         (a warp copies 8 rows x 64 bytes)
// The struct holds only block-uniform values (the operand, its ld, the block's p origin and
// the stage-0 shared address), which ptxas keeps in uniform registers or reads from the kernel
// parameters; the thread's own offsets are recomputed from tid where they are used.  The main
// loop's 128 accumulators and operand fragments leave a handful of registers under the 255 cap:
// thread-dependent values kept live across it were spilled (ptxas spilled k_first rather than
// recompute it), so the edge path reads %tid.x afresh (gemm3_tid) instead of keeping them.
template <bool PC>
struct Gemm3Operand {
    const float* X;
    int ld;
    int p0;            // the block's first p
    unsigned sbase;    // shared address of stage 0

    __device__ __forceinline__ void init(const float* X_, int ld_, int p0_, unsigned smem_stage0) {
        X = X_; ld = ld_; p0 = p0_; sbase = smem_stage0;
    }

    // p of chunk c = 0 (PC: the first of its 4 p; RC: its row)
    __device__ __forceinline__ int p_first(int tid) const { return PC ? p0 + 4 * (tid & 31) : p0 + (tid >> 2); }
    // r of chunk c = 0 relative to the k-tile origin
    static __device__ __forceinline__ int k_first(int tid) { return PC ? tid >> 5 : 4 * (tid & 3); }
    // shared address of chunk c = 0 in stage 0
    __device__ __forceinline__ unsigned sdst(int tid) const {
        return sbase + 4u * (unsigned)(PC ? (tid >> 5) * GEMM3_LDK + 4 * (tid & 31)
                                          : (tid >> 2) * GEMM3_LDR + 4 * (tid & 3));
    }
    // element offset of chunk c = 0 at k-tile origin r0 (64-bit); chunk c adds c * cstep()
    __device__ __forceinline__ long long off(int r0, int tid) const {
        return PC ? (long long)(r0 + k_first(tid)) * ld + p_first(tid)
                  : (long long)p_first(tid) * ld + (r0 + k_first(tid));
    }
    __device__ __forceinline__ long long cstep() const { return PC ? 4LL * ld : 32LL * ld; }
    static __device__ __forceinline__ unsigned soff(int c) {
        return PC ? 4u * (unsigned)(4 * c * GEMM3_LDK) : 4u * (unsigned)(32 * c * GEMM3_LDR);
    }

    // Issue the copies of the k-tile at r0 into the stage at shared address sdst + stage_bytes.
    // fast: the whole tile is in range and 16-byte copies are allowed (no test at all);
    // else vec: each 16-byte chunk tested; else each element tested, 4-byte copies.
    __device__ __forceinline__ void load(int r0, unsigned stage_bytes, bool fast, bool vec,
                                         int P, int r_end, int tid) const {
        const unsigned d0 = sdst(tid) + stage_bytes;
        const float* src = X + off(r0, tid);
        const long long step = cstep();
        if (fast) {
#pragma unroll
            for (int c = 0; c < 4; ++c) cp_async16_always(d0 + soff(c), src + c * step);
            return;
        }
        const int k0 = r0 + k_first(tid);
        const int pf = p_first(tid);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int p = PC ? pf : pf + 32 * c;
            const int r = PC ? k0 + 4 * c : k0;
            if (vec) {   // a 16-byte chunk is wholly in or out (ld % 4 == 0, extent == ld)
                const bool in = p < P && r < r_end;
                cp_async16(d0 + soff(c), in ? src + c * step : X, in);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const bool in = PC ? (p + e < P && r < r_end) : (p < P && r + e < r_end);
                    cp_async4(d0 + soff(c) + 4u * e, in ? src + c * step + e : X, in);
                }
            }
        }
    }
};

// threadIdx.x read afresh (asm volatile: neither hoisted out of a loop nor merged with an
// earlier read), so that values derived from it are recomputed where used, not kept live.
__device__ __forceinline__ int gemm3_tid() {
    int t;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
    return t;
}

// ------------------------------------------------------------- thread mapping
// The j-th of the thread's 16 (X) or 8 (Y) indices, relative to the warp tile origin.
template <bool PC>
__device__ __forceinline__ int gemm3_x_index(int i, int rg) {
    return PC ? (i >> 2) * 16 + rg * 4 + (i & 3) : i * 4 + rg;
}
template <bool PC>
__device__ __forceinline__ int gemm3_y_index(int j, int cg) {
    return PC ? (j >> 2) * 32 + cg * 4 + (j & 3) : j * 8 + cg;
}

// ------------------------------------------------------------- one k-tile's products
// xs, ys: this thread's read bases in the stage (hoisted offsets added); see the mapping above.
template <bool XPC, bool YPC>
__device__ __forceinline__ void gemm3_mma_tile(const float* xs, const float* ys, float (&acc)[16][8]) {
#pragma unroll
    for (int kc = 0; kc < GEMM3_BK / 4; ++kc) {
        float yv[4][8];   // [k in chunk][j]
        if (YPC) {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                gemm3_ld4(&yv[k][0], ys + (kc * 4 + k) * GEMM3_LDK);
                gemm3_ld4(&yv[k][4], ys + (kc * 4 + k) * GEMM3_LDK + 32);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                float t[4];
                gemm3_ld4(t, ys + j * 8 * GEMM3_LDR + kc * 4);
#pragma unroll
                for (int k = 0; k < 4; ++k) yv[k][j] = t[k];
            }
        }
        if (XPC) {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                float xv[16];
#pragma unroll
                for (int g = 0; g < 4; ++g) gemm3_ld4(&xv[4 * g], xs + (kc * 4 + k) * GEMM3_LDK + 16 * g);
#pragma unroll
                for (int i = 0; i < 16; ++i)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(xv[i], yv[k][j], acc[i][j]);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; ++i) {
                float t[4];
                gemm3_ld4(t, xs + i * 4 * GEMM3_LDR + kc * 4);
#pragma unroll
                for (int k = 0; k < 4; ++k)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(t[k], yv[k][j], acc[i][j]);
            }
        }
    }
}

// ------------------------------------------------------------- the core
// acc[i][j] = sum_{r in [r_begin, r_end)} X(p0 + wm*64 + x_index(i), r) * Y(q0 + wn*64 + y_index(j), r),
// summed in increasing r.  With sumx (block-uniform; X must be PC), xsum = sum over r of
// X(p0 + tid, r), in increasing r.  Ends with every copy complete and a barrier when
// ntiles > 0, so the caller may reuse shared memory.
template <bool XPC, bool YPC>
__device__ __forceinline__ void gemm3_core(
        const float* __restrict__ X, int ldx, int PX, bool vecx,
        const float* __restrict__ Y, int ldy, int PY, bool vecy,
        int p0, int q0, int r_begin, int r_end, float* smem, int tid,
        float (&acc)[16][8], bool sumx, float& xsum) {
#pragma unroll
    for (int i = 0; i < 16; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
    xsum = 0.f;
    const int ntiles = r_end > r_begin ? (r_end - r_begin + GEMM3_BK - 1) / GEMM3_BK : 0;
    if (ntiles == 0) return;   // uniform over the block

    const unsigned s_base = (unsigned)__cvta_generic_to_shared(smem);
    const unsigned STAGE_BYTES = 4u * GEMM3_TILE;
    const unsigned Y_BYTES = GEMM3_STAGES * STAGE_BYTES;   // the Y stages follow the X stages
    Gemm3Operand<XPC> ox;
    Gemm3Operand<YPC> oy;
    ox.init(X, ldx, p0, s_base);
    oy.init(Y, ldy, q0, s_base + Y_BYTES);
    // interior in p and q, and 16-byte copies allowed: only the k extent is left to test
    const bool inner = vecx && vecy && p0 + GEMM3_BM <= PX && q0 + GEMM3_BM <= PY;

    const int warp = tid >> 5, lane = tid & 31;
    const int wm = warp >> 1, wn = warp & 1, rg = lane >> 3, cg = lane & 7;
    // hoisted per-thread read offsets (floats) within a stage
    const int xread = XPC ? wm * 64 + rg * 4 : (wm * 64 + rg) * GEMM3_LDR;
    const int yread = YPC ? wn * 64 + cg * 4 : (wn * 64 + cg) * GEMM3_LDR;
    const float* xs0 = smem + xread;
    const float* ys0 = smem + GEMM3_STAGES * GEMM3_TILE + yread;
    const float* xcol = smem + tid;   // column tid of a PC X stage (bias-gradient sums)

#pragma unroll
    for (int s = 0; s < GEMM3_STAGES - 1; ++s) {
        if (s < ntiles) {
            const int r0 = r_begin + s * GEMM3_BK;
            const bool fast = inner && r0 + GEMM3_BK <= r_end;
            ox.load(r0, s * STAGE_BYTES, fast, vecx, PX, r_end, tid);
            oy.load(r0, s * STAGE_BYTES, fast, vecy, PY, r_end, tid);
        }
        cp_async_commit();
    }

    int stage = 0, wstage = GEMM3_STAGES - 1, t = 0;
    if (inner) {
        // The fast loop: iterations whose prefetch (tile t + STAGES - 1) lies wholly in range.
        // No tests and no index arithmetic beyond two pointer increments: the global source of
        // chunk 0 of the next tile to fetch, per operand, and fixed chunk / tile steps.
        const int t_fast = (r_end - r_begin) / GEMM3_BK - (GEMM3_STAGES - 1);
        const unsigned xdst = ox.sdst(tid), ydst = oy.sdst(tid);
        const float* xsrc = X + ox.off(r_begin + (GEMM3_STAGES - 1) * GEMM3_BK, tid);
        const float* ysrc = Y + oy.off(r_begin + (GEMM3_STAGES - 1) * GEMM3_BK, tid);
        const long long xc = ox.cstep(), yc = oy.cstep();
        const long long xt = XPC ? (long long)GEMM3_BK * ldx : GEMM3_BK;
        const long long yt = YPC ? (long long)GEMM3_BK * ldy : GEMM3_BK;
        for (; t < t_fast; ++t) {
            cp_async_wait<GEMM3_STAGES - 2>();
            __syncthreads();
            const unsigned wb = wstage * STAGE_BYTES;
#pragma unroll
            for (int c = 0; c < 4; ++c) cp_async16_always(xdst + wb + ox.soff(c), xsrc + c * xc);
#pragma unroll
            for (int c = 0; c < 4; ++c) cp_async16_always(ydst + wb + oy.soff(c), ysrc + c * yc);
            cp_async_commit();
            xsrc += xt;
            ysrc += yt;
            const int so = stage * GEMM3_TILE;
            if (sumx) {
#pragma unroll
                for (int k = 0; k < GEMM3_BK; ++k) xsum += xcol[so + k * GEMM3_LDK];
            }
            gemm3_mma_tile<XPC, YPC>(xs0 + so, ys0 + so, acc);
            stage = stage + 1 == GEMM3_STAGES ? 0 : stage + 1;
            wstage = wstage + 1 == GEMM3_STAGES ? 0 : wstage + 1;
        }
    }
    // The general loop: the last STAGES - 1 iterations of an interior block, every iteration
    // of an edge block (or of unaligned operands).
    for (; t < ntiles; ++t) {
        cp_async_wait<GEMM3_STAGES - 2>();   // this thread's copies of tile t have landed
        __syncthreads();                  // everyone's have; everyone is done with tile t-1
        const int tn = t + GEMM3_STAGES - 1;
        if (tn < ntiles) {
            const int r0 = r_begin + tn * GEMM3_BK;
            const bool fast = inner && r0 + GEMM3_BK <= r_end;
            const int tid_now = gemm3_tid();
            ox.load(r0, wstage * STAGE_BYTES, fast, vecx, PX, r_end, tid_now);
            oy.load(r0, wstage * STAGE_BYTES, fast, vecy, PY, r_end, tid_now);
        }
        cp_async_commit();

        const int so = stage * GEMM3_TILE;
        if (sumx) {   // X is PC here: column tid of the k-major stage, zero-filled past the edges
#pragma unroll
            for (int k = 0; k < GEMM3_BK; ++k) xsum += xcol[so + k * GEMM3_LDK];
        }
        gemm3_mma_tile<XPC, YPC>(xs0 + so, ys0 + so, acc);
        stage = stage + 1 == GEMM3_STAGES ? 0 : stage + 1;
        wstage = wstage + 1 == GEMM3_STAGES ? 0 : wstage + 1;
    }
    cp_async_wait<0>();   // only empty groups can be pending; keep the count exact anyway
    __syncthreads();
}

// ============================================================= 1. forward
// Zout = A(M x K) @ W(N x K)^T + bias(N); Aout = g_ACT(Z); Zout written iff write_z.
// Launch: block (128,1,1); grid (ceil(M/128) * ceil(N/128), 1, 1); dynamic smem GEMM3_SMEM_BYTES.
// vec_in: K % 4 == 0 and A, W 16-byte aligned.  Outputs are stored one float at a time (the
// thread's 8 columns are 8 apart; a warp's store covers 4 rows x 32 contiguous bytes).
template <int ACT>
__global__ void __launch_bounds__(GEMM3_THREADS, 2)
gemm_f32_fwd(const float* __restrict__ A, const float* __restrict__ W, const float* __restrict__ bias,
             float* Aout, float* Zout, int M, int N, int K, int write_z, int vec_in) {
    extern __shared__ __align__(16) float gemm3_smem[];
    const int tid = threadIdx.x;
    int tp, tq;
    gemm_tile_coords((M + GEMM3_BM - 1) / GEMM3_BM, (N + GEMM3_BM - 1) / GEMM3_BM, tp, tq);
    const int warp = tid >> 5, lane = tid & 31;
    const int pw = tp * GEMM3_BM + (warp >> 1) * 64, qw = tq * GEMM3_BM + (warp & 1) * 64;
    const int rg = lane >> 3, cg = lane & 7;

    float acc[16][8], unused;
    gemm3_core<false, false>(A, K, M, vec_in != 0, W, K, N, vec_in != 0, tp * GEMM3_BM, tq * GEMM3_BM,
                             0, K, gemm3_smem, tid, acc, false, unused);

    float bv[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int q = qw + gemm3_y_index<false>(j, cg);
        bv[j] = q < N ? bias[q] : 0.f;
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int p = pw + gemm3_x_index<false>(i, rg);
        if (p >= M) continue;
        const long long row = (long long)p * N;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int q = qw + gemm3_y_index<false>(j, cg);
            if (q < N) {
                const float z = acc[i][j] + bv[j];
                Aout[row + q] = act_forward<ACT, float>(z);
                if (write_z) Zout[row + q] = z;
            }
        }
    }
}

// ============================================================= 2. backward, data
// out(M x K) = (D(M x N) @ W(N x K)) * g_ACT'(.), g' from Aprev (M x K) or, for gelu/silu,
// Zprev (M x K); the one not needed is never read (may be any pointer).
// Launch: block (128,1,1); grid (ceil(M/128) * ceil(K/128), 1, 1); dynamic smem GEMM3_SMEM_BYTES.
// vec_d: N % 4 == 0 and D 16-byte aligned; vec_w: K % 4 == 0 and W 16-byte aligned;
// vec_out: K % 4 == 0 and out, Aprev/Zprev 16-byte aligned (the thread's columns are 2 runs of 4).
template <int ACT>
__global__ void __launch_bounds__(GEMM3_THREADS, 2)
gemm_f32_bwd_data(const float* __restrict__ D, const float* __restrict__ W, const float* __restrict__ Aprev,
                  const float* __restrict__ Zprev, float* out, int M, int N, int K,
                  int vec_d, int vec_w, int vec_out) {
    extern __shared__ __align__(16) float gemm3_smem[];
    const int tid = threadIdx.x;
    int tp, tq;
    gemm_tile_coords((M + GEMM3_BM - 1) / GEMM3_BM, (K + GEMM3_BM - 1) / GEMM3_BM, tp, tq);
    const int warp = tid >> 5, lane = tid & 31;
    const int pw = tp * GEMM3_BM + (warp >> 1) * 64, qw = tq * GEMM3_BM + (warp & 1) * 64;
    const int rg = lane >> 3, cg = lane & 7;

    float acc[16][8], unused;
    gemm3_core<false, true>(D, N, M, vec_d != 0, W, K, K, vec_w != 0, tp * GEMM3_BM, tq * GEMM3_BM,
                            0, N, gemm3_smem, tid, acc, false, unused);

    const bool need_z = act_needs_z<ACT>::value;
    const bool need_g = need_z || ACT != ACT_IDENTITY;
    const float* G = need_z ? Zprev : Aprev;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int p = pw + gemm3_x_index<false>(i, rg);
        if (p >= M) continue;
        const long long row = (long long)p * K;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int q = qw + gemm3_y_index<true>(4 * h, cg);   // 4 contiguous columns
            float s[4] = {0.f, 0.f, 0.f, 0.f}, d[4];
            if (vec_out) {
                if (q < K) {   // K % 4 == 0: the 4 columns are wholly in or out
                    if (need_g) gemm3_ld4(s, G + row + q);
#pragma unroll
                    for (int e = 0; e < 4; ++e) d[e] = acc[i][4 * h + e] * act_grad<ACT, float>(s[e], s[e]);
                    gemm3_st4(out + row + q, d);
                }
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (q + e < K) {
                        const float g = need_g ? G[row + q + e] : 0.f;
                        out[row + q + e] = acc[i][4 * h + e] * act_grad<ACT, float>(g, g);
                    }
            }
        }
    }
}

// ============================================================= 3. backward, weights
// dW(N x K) = D(M x N)^T @ A(M x K), db(N) = column sums of D, in one kernel.
// grid.z = S splits of the batch: split z sums rows [z*rows_per_split, min(M, (z+1)*rows_per_split))
// and writes dW_base + z*split_stride (N x K) and db_base + z*split_stride (N); with S == 1
// the launcher passes dW and db themselves, with S > 1 the caller's workspace (per split
// [N*K partial dW][N partial db], split_stride % 4 == 0) that gemm_f32_splitk_reduce sums.
// db: the blocks of tile column 0 (tq == 0) sum column tid of each staged D k-tile, in
// increasing batch row, one thread per column: bitwise reproducible.
// Launch: block (128,1,1); grid (ceil(N/128) * ceil(K/128), 1, S); dynamic smem GEMM3_SMEM_BYTES.
// vec_d: N % 4 == 0 and D aligned; vec_a: K % 4 == 0 and A aligned;
// vec_out: K % 4 == 0 and dW_base 16-byte aligned.
__global__ void __launch_bounds__(GEMM3_THREADS, 2)
gemm_f32_bwd_weight(const float* __restrict__ D, const float* __restrict__ A, float* dW_base, float* db_base,
                    int M, int N, int K, int rows_per_split, long long split_stride,
                    int vec_d, int vec_a, int vec_out) {
    extern __shared__ __align__(16) float gemm3_smem[];
    const int tid = threadIdx.x;
    int tp, tq;
    gemm_tile_coords((N + GEMM3_BM - 1) / GEMM3_BM, (K + GEMM3_BM - 1) / GEMM3_BM, tp, tq);
    const int warp = tid >> 5, lane = tid & 31;
    const int p0 = tp * GEMM3_BM;
    const int pw = p0 + (warp >> 1) * 64, qw = tq * GEMM3_BM + (warp & 1) * 64;
    const int rg = lane >> 3, cg = lane & 7;
    const int r_begin = blockIdx.z * rows_per_split;
    const int r_end = min(M, r_begin + rows_per_split);
    float* dW = dW_base + (long long)blockIdx.z * split_stride;
    float* db = db_base + (long long)blockIdx.z * split_stride;

    float acc[16][8], dsum;
    gemm3_core<true, true>(D, N, N, vec_d != 0, A, K, K, vec_a != 0, p0, tq * GEMM3_BM,
                           r_begin, r_end, gemm3_smem, tid, acc, tq == 0, dsum);
    if (tq == 0 && p0 + tid < N) db[p0 + tid] = dsum;

#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int p = pw + gemm3_x_index<true>(i, rg);
        if (p >= N) continue;
        const long long row = (long long)p * K;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int q = qw + gemm3_y_index<true>(4 * h, cg);
            if (vec_out) {
                if (q < K) gemm3_st4(dW + row + q, &acc[i][4 * h]);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (q + e < K) dW[row + q + e] = acc[i][4 * h + e];
            }
        }
    }
}

// Sum the S partials of gemm_f32_bwd_weight in split order (bitwise reproducible):
// dW[e] = sum_z ws[z*split_stride + e] for e < NK, db[e - NK] likewise at offset NK.
// Launch: block (128,1,1); grid (min(ceil((NK+N)/128), 16 * SMs), 1, 1), grid-stride; no smem.
__global__ void __launch_bounds__(GEMM3_THREADS)
gemm_f32_splitk_reduce(const float* __restrict__ ws, float* dW, float* db, int S, long long split_stride,
                       long long NK, int N) {
    const long long total = NK + N;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        float s = ws[e];
        for (int z = 1; z < S; ++z) s += ws[(long long)z * split_stride + e];
        if (e < NK) dW[e] = s;
        else db[e - NK] = s;
    }
}
