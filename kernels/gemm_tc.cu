// gemm_tc.cu: tensor-core GEMMs of a dense layer's fused backprop (the same three
// GEMMs and epilogues as gemm.cu) in three precision modes, float32 storage
// everywhere.  Concatenated after activations.cuh by gpubp/backends/cuda_source.py;
// launched by gpubp/backends/cuda_gemm_tc.py.  Needs sm_80+ (mma.sync, cp.async).
//
// Precision modes (template int PREC), emulated in numpy by gpubp/precision.py:
//   TC_TF32   operands rounded to TF32 with cvt.rna.tf32.f32 (nearest, ties away) as
//             their fragments are loaded; mma.sync m16n8k8 .tf32, float32 accumulators.
//   TC_3XTF32 each operand x split into hi = tf32(x), lo = tf32(x - hi); per k step
//             acc += lo_a hi_b; acc += hi_a lo_b; acc += hi_a hi_b (three m16n8k8 mma's,
//             small terms first): float32-level accuracy.
//   TC_BF16   operands converted float32 -> bf16 (cvt.rn.bf16x2.f32: nearest, ties to
//             even) as their fragments are loaded from shared memory; mma.sync
//             m16n8k16 .bf16, float32 accumulators.  Buffers stay float32 (16-bit storage
//             is left for later); the bf16 mode's semantics of storage are kept exactly:
//             the forward and input-gradient epilogues (one-kernel and split-K) round the
//             Z, A and delta they store to bfloat16 (epilogue.cuh), so every operand this
//             mode reads from memory is already a bf16 value.
// The epilogues (bias, activation, g', db) run in float32 on the float32 accumulators; their
// stores are epilogue.cuh's, shared with gemm_wgmma.cu.
//
// One core for all three GEMMs,  C[p][q] = sum_{r in [r_begin, r_end)} X(p, r) Y(q, r),
// with each operand in one of two layouts (as gemm.cu):
//     RC: X(p, r) = X[p * ld + r]    PC: X(p, r) = X[r * ld + p]
//   gemm_tc_fwd         Z[m][n]  = sum_k A[m][k] W[n][k]    X = A (RC, ld K)  Y = W (RC, ld K)
//   gemm_tc_bwd_data    D'[m][k] = sum_n D[m][n] W[n][k]    X = D (RC, ld N)  Y = W (PC, ld K)
//   gemm_tc_bwd_weight  dW[n][k] = sum_m D[m][n] A[m][k]    X = D (PC, ld N)  Y = A (PC, ld K)
//
// Tiles: block 128 (p) x 128 (q), BK = 16, 256 threads = 8 warps as 2 (p) x 4 (q), warp
// tile 64 x 32 = 4 m16 tiles x 4 n8 tiles, acc[4][4][4] (64 float32 per thread).
//
// Fragments (PTX ISA "Matrix Fragments for mma.m16n8k8 / m16n8k16"), lane = g * 4 + t:
//   tf32 m16n8k8:  A a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4)   [(row p, col r)]
//                  B b0 (r = t, q = g) b1 (t+4, g)
//   bf16 m16n8k16: A a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..)
//                  B b0 (r = 2t..2t+1, q = g) b1 (r = 2t+8.., q = g); low half = lower r
//   C, D (both):   c0 (g, 2t) c1 (g, 2t+1) c2 (g+8, 2t) c3 (g+8, 2t+1)
// So both operands are read as "p = base + g (+8), r = base + t (tf32) or 2t, 2t+1 (bf16)".
//
// Shared memory, per stage and operand, padded so those reads hit 32 distinct banks:
//   RC tile [128 p][BK r], pitch 20 for tf32: bank 20 g + t (20 g mod 32 = 8 distinct
//       multiples of 4); pitch 24 for bf16, read as float2 (2t, 2t+1): a half-warp (g in
//       0..3 or 4..7) covers banks 24 g mod 32 = {0, 24, 16, 8} + 2t + {0, 1}: all 32.
//   PC tile [BK r][128 p], pitch 136 for tf32: bank (136 t + g) mod 32 = 8 t + g; pitch 132
//       for bf16, two scalar reads at rows 2t and 2t + 1: bank 4 (2t + e) + g = 8 t + 4 e + g.
//   Rows stay 16-byte aligned (pitches multiples of 4).  One stage = 2 * TILE floats (TILE in
//   tc_pitch); dynamic smem = STAGES * 2 * TILE * 4 bytes (3 stages: 61440 bytes tf32 and
//   3xtf32, 73728 bf16; past 48 KB, so the launcher raises the kernel's limit).
//
// Global -> shared: cp.async, STAGES-deep pipeline as gemm.cu's v2 (prologue issues tiles
// 0 .. STAGES-2; iteration t waits for tile t, one barrier, issues tile t + STAGES - 1 into
// the stage tile t - 1 used, commits, multiplies tile t).  Per stage and operand 512 chunks
// of 4 floats, 2 per thread:  RC chunk c: p = c / 4, r = 4 (c % 4);  PC chunk c: r = c / 32,
// p = 4 (c % 32).  vec (ld % 4 == 0, base 16-byte aligned; then P == ld or r_end == ld makes
// a chunk wholly in or out): one 16-byte cp.async.cg per chunk; otherwise four 4-byte
// cp.async.ca, each masked alone.  Out-of-range elements are zero-filled (src-size 0, the
// source not read), so any M, N, K >= 1 works; zeros add nothing to the sums.
//
// Offsets that can pass 2^31 are long long.  Grid: 1-D over tiles, grouped 8 tile-rows at a
// time for L2 reuse (gemm_tc_bwd_weight adds grid.z = splits of the batch; the split-K partials
// of section 4 grid.z = slices of the reduction).  No atomics: each output is written once by one
// thread in a fixed order; bitwise reproducible on one device.

#define TC_TF32 0
#define TC_3XTF32 1
#define TC_BF16 2

// TC_THREADS (256), TC_BM (128) and TC_BK (16) come from the generated header
// (gpubp/backends/kernel_constants.py), shared with the launcher.
static_assert(TC_THREADS == 256 && TC_BM == 128 && TC_BK == 16,
              "the copy slots, warp tiling and column sums below assume 256 threads, 128 x 128 x 16 tiles");
// Blocks per SM asked of ptxas: the forward and input-gradient kernels (and their split-K
// partials) fit 128 registers (TC_MIN_BLOCKS_FWD = 2 blocks of 8 warps per SM, 2 x 60-72 KB of
// shared memory; from the generated header: the launcher's split choice counts on it); the
// weight gradient keeps its column sums and needs about 130-160 registers: 1 block per SM.
#define TC_MIN_BLOCKS_WGRAD 1
// RC pitch, PC pitch per mode (see the header) and the floats of one operand's stage tile:
// tf32 / 3xtf32 max(128 * 20, 16 * 136) = 2560, bf16 max(128 * 24, 16 * 132) = 3072.
template <int PREC> struct tc_pitch {
    static constexpr int RC = PREC == TC_BF16 ? TC_BK + 8 : TC_BK + 4;
    static constexpr int PC = PREC == TC_BF16 ? TC_BM + 4 : TC_BM + 8;
    static constexpr int TILE = (TC_BM * RC > TC_BK * PC) ? TC_BM * RC : TC_BK * PC;
};

// ------------------------------------------------------------- conversions, mma, cp.async
// to_tf32, bf16x2, mma_tf32, mma_bf16: kernels/mma.cuh; cp_async16, cp_async4,
// cp_async_commit, cp_async_wait, gemm_tile_coords: kernels/async_copy.cuh.

// Issue the copies of the BK-wide k-tile at r0 of operand X (tile origin p0) into s.
// P: extent in p; r_end: end of the r range; ld: leading dimension.
template <int PREC, bool PC>
__device__ __forceinline__ void tc_load_tile(float* s, const float* __restrict__ X, int ld, int P,
                                             int p0, int r0, int r_end, bool vec, int tid) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int c = tid + h * TC_THREADS;
        int p, r, so;
        if (PC) { r = c >> 5; p = (c & 31) * 4; so = r * tc_pitch<PREC>::PC + p; }
        else    { p = c >> 2; r = (c & 3) * 4;  so = p * tc_pitch<PREC>::RC + r; }
        const int gp = p0 + p, gr = r0 + r;
        if (vec) {
            const bool in = gp < P && gr < r_end;
            const float* src = in ? X + (PC ? (long long)gr * ld + gp : (long long)gp * ld + gr) : X;
            cp_async16(s + so, src, in);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int ep = PC ? gp + e : gp, er = PC ? gr : gr + e;
                const bool in = ep < P && er < r_end;
                const float* src = in ? X + (PC ? (long long)er * ld + ep : (long long)ep * ld + er) : X;
                cp_async4(s + so + e, src, in);
            }
        }
    }
}

// Element (p, r) of a stage tile.
template <int PREC, bool PC>
__device__ __forceinline__ float tc_at(const float* s, int p, int r) {
    return PC ? s[r * tc_pitch<PREC>::PC + p] : s[p * tc_pitch<PREC>::RC + r];
}

// bf16(X(p, r)), bf16(X(p, r + 1)) packed (r even): one 8-byte read from an RC tile.
template <int PREC, bool PC>
__device__ __forceinline__ unsigned tc_pair_bf16(const float* s, int p, int r) {
    if (PC) return bf16x2(tc_at<PREC, PC>(s, p, r), tc_at<PREC, PC>(s, p, r + 1));
    const float2 v = *reinterpret_cast<const float2*>(s + p * tc_pitch<PREC>::RC + r);
    return bf16x2(v.x, v.y);
}

// Fragment registers of one 16 (p) x k tile at (p, kb) [A role] or of an 8 (p) x k tile
// [B role, regs 0..1] for each mode; for 3xTF32 also the lo parts.
// A role: tf32 -> (g, t) (g+8, t) (g, t+4) (g+8, t+4);  bf16 -> pairs at 2t, 2t+8.
template <int PREC, bool PC>
__device__ __forceinline__ void tc_frag_a(const float* s, int p, int kb, int g, int t,
                                          unsigned (&hi)[4], unsigned (&lo)[4]) {
    if (PREC == TC_BF16) {
        const int r = kb + 2 * t;
        hi[0] = tc_pair_bf16<PREC, PC>(s, p + g, r);
        hi[1] = tc_pair_bf16<PREC, PC>(s, p + g + 8, r);
        hi[2] = tc_pair_bf16<PREC, PC>(s, p + g, r + 8);
        hi[3] = tc_pair_bf16<PREC, PC>(s, p + g + 8, r + 8);
    } else {
        const float x[4] = {tc_at<PREC, PC>(s, p + g, kb + t),     tc_at<PREC, PC>(s, p + g + 8, kb + t),
                            tc_at<PREC, PC>(s, p + g, kb + t + 4), tc_at<PREC, PC>(s, p + g + 8, kb + t + 4)};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            hi[i] = to_tf32(x[i]);
            if (PREC == TC_3XTF32) lo[i] = to_tf32(x[i] - __uint_as_float(hi[i]));
        }
    }
}

// B role: tf32 -> (q = g, r = t) (g, t+4);  bf16 -> (g, 2t..2t+1) (g, 2t+8..2t+9).
template <int PREC, bool PC>
__device__ __forceinline__ void tc_frag_b(const float* s, int q, int kb, int g, int t,
                                          unsigned (&hi)[2], unsigned (&lo)[2]) {
    if (PREC == TC_BF16) {
        const int r = kb + 2 * t;
        hi[0] = tc_pair_bf16<PREC, PC>(s, q + g, r);
        hi[1] = tc_pair_bf16<PREC, PC>(s, q + g, r + 8);
    } else {
        const float x[2] = {tc_at<PREC, PC>(s, q + g, kb + t), tc_at<PREC, PC>(s, q + g, kb + t + 4)};
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            hi[i] = to_tf32(x[i]);
            if (PREC == TC_3XTF32) lo[i] = to_tf32(x[i] - __uint_as_float(hi[i]));
        }
    }
}

// ------------------------------------------------------------- the core
// acc[i][j][c] = C at (p0 + wp + 16 i + g + 8 (c >> 1), q0 + wq + 8 j + 2 t + (c & 1)),
// wp = 64 (warp >> 2), wq = 32 (warp & 3).  With sumx (block-uniform, PC X only): xsum =
// sum over r of X(p0 + tid % 128, r) over the rows r of each k-tile's half tid / 128 (the
// bias gradient's partial column sums, float32, fixed order).
// Ends with all copies complete and a barrier: the caller may reuse shared memory.
template <int PREC, int STAGES, bool XPC, bool YPC>
__device__ __forceinline__ void tc_core(
        const float* __restrict__ X, int ldx, int PX, bool vecx,
        const float* __restrict__ Y, int ldy, int PY, bool vecy,
        int p0, int q0, int r_begin, int r_end, float* smem, int tid,
        float (&acc)[4][4][4], bool sumx, float& xsum) {
    static_assert(STAGES >= 2, "at least two stages");
    constexpr int TILE = tc_pitch<PREC>::TILE;
    constexpr int KSTEP = PREC == TC_BF16 ? 16 : 8;
    float* sX = smem;
    float* sY = smem + STAGES * TILE;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int wp = (warp >> 2) * 64, wq = (warp & 3) * 32;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;
    xsum = 0.f;
    const int ntiles = r_end > r_begin ? (r_end - r_begin + TC_BK - 1) / TC_BK : 0;
    if (ntiles == 0) return;   // uniform over the block

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntiles) {
            const int r0 = r_begin + s * TC_BK;
            tc_load_tile<PREC, XPC>(sX + s * TILE, X, ldx, PX, p0, r0, r_end, vecx, tid);
            tc_load_tile<PREC, YPC>(sY + s * TILE, Y, ldy, PY, q0, r0, r_end, vecy, tid);
        }
        cp_async_commit();
    }

    const int sc = tid & (TC_BM - 1), sk = (tid >> 7) * (TC_BK / 2);   // column-sum slot
    int stage = 0, wstage = STAGES - 1;
    for (int kt = 0; kt < ntiles; ++kt) {
        cp_async_wait<STAGES - 2>();   // this thread's copies of tile kt have landed
        __syncthreads();         // everyone's have; everyone is done with tile kt-1 (stage wstage)
        const int tn = kt + STAGES - 1;
        if (tn < ntiles) {
            const int r0 = r_begin + tn * TC_BK;
            tc_load_tile<PREC, XPC>(sX + wstage * TILE, X, ldx, PX, p0, r0, r_end, vecx, tid);
            tc_load_tile<PREC, YPC>(sY + wstage * TILE, Y, ldy, PY, q0, r0, r_end, vecy, tid);
        }
        cp_async_commit();

        const float* xs = sX + stage * TILE;
        const float* ys = sY + stage * TILE;
        if (sumx) {
#pragma unroll
            for (int k = 0; k < TC_BK / 2; ++k) xsum += tc_at<PREC, true>(xs, sc, sk + k);
        }
#pragma unroll
        for (int kb = 0; kb < TC_BK; kb += KSTEP) {
            unsigned bh[4][2], bl[4][2];
#pragma unroll
            for (int j = 0; j < 4; ++j) tc_frag_b<PREC, YPC>(ys, wq + 8 * j, kb, g, t, bh[j], bl[j]);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                unsigned ah[4], al[4];
                tc_frag_a<PREC, XPC>(xs, wp + 16 * i, kb, g, t, ah, al);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    if (PREC == TC_BF16) {
                        mma_bf16(acc[i][j], ah, bh[j]);
                    } else {
                        if (PREC == TC_3XTF32) {
                            mma_tf32(acc[i][j], al, bh[j]);
                            mma_tf32(acc[i][j], ah, bl[j]);
                        }
                        mma_tf32(acc[i][j], ah, bh[j]);
                    }
                }
            }
        }
        stage = stage + 1 == STAGES ? 0 : stage + 1;
        wstage = wstage + 1 == STAGES ? 0 : wstage + 1;
    }
    cp_async_wait<0>();   // only empty groups can be pending; keep the count exact anyway
    __syncthreads();
}

// The output coordinates of acc[i][j][2h + e]: row p0 + wp + 16 i + g + 8 h, column
// q0 + wq + 8 j + 2 t + e.  Pairs (e = 0, 1) are adjacent: float2 stores where vec_out.
#define TC_EPILOGUE_COORDS                                                 \
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3; \
    const int wp = p0 + (warp >> 2) * 64 + g, wq = q0 + (warp & 3) * 32 + 2 * t;

// This thread's accumulators of a block tile (rows wp + 16 i + 8 h, columns wq + 8 j, +1) stored
// into the row-major (P x Q) float32 matrix out, rows p < P and columns q < Q (float2 stores when
// vec: Q even, out 8-byte aligned).
__device__ __forceinline__ void tc_store_tile(float* out, const float (&acc)[4][4][4], int wp, int wq, int P, int Q,
                                              bool vec) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int q = wq + 8 * j;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int p = wp + 16 * i + 8 * h;
                if (p >= P) continue;
                const long long o = (long long)p * Q + q;
                if (vec) {
                    if (q < Q) *reinterpret_cast<float2*>(out + o) = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                } else {
                    if (q < Q) out[o] = acc[i][j][2 * h];
                    if (q + 1 < Q) out[o + 1] = acc[i][j][2 * h + 1];
                }
            }
    }
}

// The sum of the S partials of element e, slice order (split workspaces: slice z at z * split_stride).
__device__ __forceinline__ float tc_slices_sum(const float* __restrict__ ws, long long e, int S,
                                               long long split_stride) {
    float s = ws[e];
    for (int z = 1; z < S; ++z) s += ws[(long long)z * split_stride + e];
    return s;
}

// ============================================================= 1. forward
// Zout = A(M x K) @ W(N x K)^T + bias(N); Aout = g_ACT(Z); Zout written iff write_z.
// Launch: block (256,1,1); grid (ceil(M/128) * ceil(N/128), 1, 1); dynamic smem
//   STAGES * 2 * tc_pitch<PREC>::TILE * 4 bytes.
// vec_in: K % 4 == 0, A and W 16-byte aligned; vec_out: N % 2 == 0, Aout and Zout 8-byte aligned.
template <int PREC, int ACT, int STAGES>
__global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_FWD)
gemm_tc_fwd(const float* __restrict__ A, const float* __restrict__ W, const float* __restrict__ bias,
            float* Aout, float* Zout, int M, int N, int K, int write_z, int vec_in, int vec_out) {
    extern __shared__ __align__(16) float tc_smem[];
    const int tid = threadIdx.x;
    int tp, tq;
    gemm_tile_coords((M + TC_BM - 1) / TC_BM, (N + TC_BM - 1) / TC_BM, tp, tq);
    const int p0 = tp * TC_BM, q0 = tq * TC_BM;
    float acc[4][4][4], unused;
    tc_core<PREC, STAGES, false, false>(A, K, M, vec_in != 0, W, K, N, vec_in != 0,
                                        p0, q0, 0, K, tc_smem, tid, acc, false, unused);
    TC_EPILOGUE_COORDS
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int q = wq + 8 * j;
        const float b0 = q < N ? bias[q] : 0.f, b1 = q + 1 < N ? bias[q + 1] : 0.f;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int p = wp + 16 * i + 8 * h;
                if (p >= M) continue;
                epi_store_fwd_pair<ACT, PREC == TC_BF16>(Aout, Zout, (long long)p * N + q, q, N,
                                                         acc[i][j][2 * h], acc[i][j][2 * h + 1], b0, b1,
                                                         write_z, vec_out);
            }
    }
}

// ============================================================= 2. backward, data
// out(M x K) = (D(M x N) @ W(N x K)) * g_ACT'(.), g' from Aprev (M x K) or, for gelu/silu,
// Zprev (M x K); the one not needed is never read (may be any pointer).
// Launch: block (256,1,1); grid (ceil(M/128) * ceil(K/128), 1, 1); dynamic smem as gemm_tc_fwd.
// vec_d: N % 4 == 0, D 16-byte aligned; vec_w: K % 4 == 0, W 16-byte aligned;
// vec_out: K % 2 == 0, out, Aprev, Zprev 8-byte aligned.
template <int PREC, int ACT, int STAGES>
__global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_FWD)
gemm_tc_bwd_data(const float* __restrict__ D, const float* __restrict__ W, const float* __restrict__ Aprev,
                 const float* __restrict__ Zprev, float* out, int M, int N, int K,
                 int vec_d, int vec_w, int vec_out) {
    extern __shared__ __align__(16) float tc_smem[];
    const int tid = threadIdx.x;
    int tp, tq;
    gemm_tile_coords((M + TC_BM - 1) / TC_BM, (K + TC_BM - 1) / TC_BM, tp, tq);
    const int p0 = tp * TC_BM, q0 = tq * TC_BM;
    float acc[4][4][4], unused;
    tc_core<PREC, STAGES, false, true>(D, N, M, vec_d != 0, W, K, K, vec_w != 0,
                                       p0, q0, 0, N, tc_smem, tid, acc, false, unused);
    const bool need_z = act_needs_z<ACT>::value;
    const bool need_a = !need_z && ACT != ACT_IDENTITY;
    const float* G = need_z ? Zprev : Aprev;
    constexpr bool BF16 = PREC == TC_BF16;      // the stored delta rounded to bfloat16 (epilogue.cuh)
    TC_EPILOGUE_COORDS
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int q = wq + 8 * j;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int p = wp + 16 * i + 8 * h;
                if (p >= M) continue;
                const long long o = (long long)p * K + q;
                float s0 = 0.f, s1 = 0.f;
                if (vec_out) {
                    if (q < K) {
                        if (need_z || need_a) {
                            const float2 s = *reinterpret_cast<const float2*>(G + o);
                            s0 = s.x; s1 = s.y;
                        }
                        *reinterpret_cast<float2*>(out + o) =
                            make_float2(epi_stored<BF16>(acc[i][j][2 * h] * act_grad<ACT, float>(s0, s0)),
                                        epi_stored<BF16>(acc[i][j][2 * h + 1] * act_grad<ACT, float>(s1, s1)));
                    }
                } else {
                    if (q < K) {
                        if (need_z || need_a) s0 = G[o];
                        out[o] = epi_stored<BF16>(acc[i][j][2 * h] * act_grad<ACT, float>(s0, s0));
                    }
                    if (q + 1 < K) {
                        if (need_z || need_a) s1 = G[o + 1];
                        out[o + 1] = epi_stored<BF16>(acc[i][j][2 * h + 1] * act_grad<ACT, float>(s1, s1));
                    }
                }
            }
    }
}

// ============================================================= 3. backward, weights
// dW(N x K) = D(M x N)^T @ A(M x K); db(N) = column sums of D (float32, from the
// D in shared memory).  Split over the batch: split z sums rows
// [z * rows_per_split, min(M, (z + 1) * rows_per_split)) (rows_per_split a multiple of 16)
// into dW_base + z * split_stride and db_base + z * split_stride; with one split these are
// dW and db themselves, else a workspace that gemm_tc_splitk_reduce adds in split order.
// db: blocks of tile column 0 only; each thread adds 8 shared values of column tid % 128 per
// k-tile (k half tid / 128); the two halves are added in a fixed order at the end.
// Launch: block (256,1,1); grid (ceil(N/128) * ceil(K/128), 1, S); dynamic smem as gemm_tc_fwd.
// vec_d: N % 4 == 0, D 16-byte aligned; vec_a: K % 4 == 0, A 16-byte aligned;
// vec_out: K % 2 == 0, dW_base 8-byte aligned and split_stride even.
template <int PREC, int STAGES>
__global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_WGRAD)
gemm_tc_bwd_weight(const float* __restrict__ D, const float* __restrict__ A, float* dW_base, float* db_base,
                   int M, int N, int K, int rows_per_split, long long split_stride,
                   int vec_d, int vec_a, int vec_out) {
    extern __shared__ __align__(16) float tc_smem[];
    const int tid = threadIdx.x;
    int tp, tq;
    gemm_tile_coords((N + TC_BM - 1) / TC_BM, (K + TC_BM - 1) / TC_BM, tp, tq);
    const int p0 = tp * TC_BM, q0 = tq * TC_BM;
    const int r_begin = blockIdx.z * rows_per_split;
    const int r_end = min(M, r_begin + rows_per_split);
    float* dW = dW_base + (long long)blockIdx.z * split_stride;
    float* db = db_base + (long long)blockIdx.z * split_stride;
    float acc[4][4][4], dpart;
    tc_core<PREC, STAGES, true, true>(D, N, N, vec_d != 0, A, K, K, vec_a != 0,
                                      p0, q0, r_begin, r_end, tc_smem, tid, acc, tq == 0, dpart);
    if (tq == 0) {   // uniform per block; the core ended with a barrier: smem is free
        tc_smem[tid] = dpart;
        __syncthreads();
        if (tid < TC_BM && p0 + tid < N) db[p0 + tid] = tc_smem[tid] + tc_smem[TC_BM + tid];
    }
    TC_EPILOGUE_COORDS
    tc_store_tile(dW, acc, wp, wq, N, K, vec_out != 0);
}

// dW[e] = sum_z ws[z * stride + e] (e < NK), db[e - NK] likewise, z = 0 .. S-1 in order.
// Launch: block (256,1,1); any 1-D grid (grid-stride loop).
__global__ void gemm_tc_splitk_reduce(const float* __restrict__ ws, float* dW, float* db, int S,
                                      long long split_stride, long long NK, int N) {
    const long long total = NK + N;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const float s = tc_slices_sum(ws, e, S, split_stride);
        if (e < NK) dW[e] = s;
        else db[e - NK] = s;
    }
}

// ============================================================= 4. split-K, forward and input gradient
// When the output has too few 128 x 128 tiles to fill the device (small batches), the forward and
// input-gradient GEMMs cut their reduction into S contiguous slices (the launcher's choice,
// cuda_gemm_tc.fwd_splits / bwd_data_splits: a pure function of the shapes and the SM count).
// Slice z sums r in [z * r_per_split, min(R, (z + 1) * r_per_split)) (r_per_split a multiple of
// TC_BK; no slice is empty) into ws + z * split_stride: the P x Q row-major float32 partial sums
// of that slice, every element written by exactly one thread.  A second kernel then adds, for
// each output element, the S partials in slice order z = 0, 1, ..., S-1 (never in the order the
// blocks finished), in float32, and applies the layer's epilogue:
//   gemm_tc_fwd_splitk_epilogue       Z = (((p_0 + p_1) + ...) + p_{S-1}) + bias; Aout = g(Z)
//   gemm_tc_bwd_data_splitk_epilogue  out = (((p_0 + p_1) + ...) + p_{S-1}) * g'(.)
// No atomics, no arrival order: bitwise reproducible on one device for a given S (a different
// S, e.g. another SM count, sums in another order: the same value to float32 rounding).
//   forward:         X = A (RC, ld K), Y = W (RC, ld K), P = M, Q = N, R = K  (YPC false)
//   input gradient:  X = D (RC, ld N), Y = W (PC, ld K), P = M, Q = K, R = N  (YPC true)
// So X is always RC with ld R, and Y has ld R (RC) or Q (PC).
// Launch: block (256,1,1); grid (ceil(P/128) * ceil(Q/128), 1, S); dynamic smem as gemm_tc_fwd.
// vec_x: R % 4 == 0, X 16-byte aligned; vec_y: (YPC ? Q : R) % 4 == 0, Y 16-byte aligned (a slice
// boundary is a multiple of 16, so a 4-float chunk never straddles one); vec_out: Q % 2 == 0, ws
// 8-byte aligned, split_stride even.
template <int PREC, bool YPC, int STAGES>
__global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_FWD)
gemm_tc_splitk_partial(const float* __restrict__ X, const float* __restrict__ Y, float* ws,
                       int P, int Q, int R, int r_per_split, long long split_stride,
                       int vec_x, int vec_y, int vec_out) {
    extern __shared__ __align__(16) float tc_smem[];
    const int tid = threadIdx.x;
    int tp, tq;
    gemm_tile_coords((P + TC_BM - 1) / TC_BM, (Q + TC_BM - 1) / TC_BM, tp, tq);
    const int p0 = tp * TC_BM, q0 = tq * TC_BM;
    const int r_begin = blockIdx.z * r_per_split;
    const int r_end = min(R, r_begin + r_per_split);
    float* part = ws + (long long)blockIdx.z * split_stride;
    float acc[4][4][4], unused;
    tc_core<PREC, STAGES, false, YPC>(X, R, P, vec_x != 0, Y, YPC ? Q : R, Q, vec_y != 0,
                                      p0, q0, r_begin, r_end, tc_smem, tid, acc, false, unused);
    TC_EPILOGUE_COORDS
    tc_store_tile(part, acc, wp, wq, P, Q, vec_out != 0);
}

// The sum of the S partials of the 4 elements from e, slice order (tc_slices_sum, 16 bytes wide).
__device__ __forceinline__ float4 tc_slices_sum4(const float* __restrict__ ws, long long e, int S,
                                                 long long split_stride) {
    float4 s = *reinterpret_cast<const float4*>(ws + e);
    for (int z = 1; z < S; ++z) {
        const float4 v = *reinterpret_cast<const float4*>(ws + (long long)z * split_stride + e);
        s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
    }
    return s;
}

// Zout = sum of the S partials (M x N, slice order) + bias; Aout = g_ACT(Z); Zout iff write_z;
// BF16 (the bf16 mode's instantiations): Z and Aout rounded to bfloat16 as stored (epilogue.cuh).
// Launch: block (256,1,1); any 1-D grid (grid-stride loop over elements, or groups of 4 with vec).
// vec: N % 4 == 0, ws, bias, Aout, Zout 16-byte aligned, split_stride % 4 == 0.
template <int ACT, bool BF16 = false>
__global__ void gemm_tc_fwd_splitk_epilogue(const float* __restrict__ ws, const float* __restrict__ bias,
                                            float* Aout, float* Zout, int M, int N, int S,
                                            long long split_stride, int write_z, int vec) {
    const long long total = (long long)M * N;
    const long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long step = (long long)gridDim.x * blockDim.x;
    if (vec) {
        for (long long e = 4 * start; e < total; e += 4 * step) {
            const float4 s = tc_slices_sum4(ws, e, S, split_stride);
            const float4 b = *reinterpret_cast<const float4*>(bias + e % N);
            const float4 z = make_float4(epi_stored<BF16>(s.x + b.x), epi_stored<BF16>(s.y + b.y),
                                         epi_stored<BF16>(s.z + b.z), epi_stored<BF16>(s.w + b.w));
            *reinterpret_cast<float4*>(Aout + e) =
                make_float4(epi_stored<BF16>(act_forward<ACT, float>(z.x)), epi_stored<BF16>(act_forward<ACT, float>(z.y)),
                            epi_stored<BF16>(act_forward<ACT, float>(z.z)), epi_stored<BF16>(act_forward<ACT, float>(z.w)));
            if (write_z) *reinterpret_cast<float4*>(Zout + e) = z;
        }
    } else {
        for (long long e = start; e < total; e += step) {
            const float z = epi_stored<BF16>(tc_slices_sum(ws, e, S, split_stride) + bias[e % N]);
            Aout[e] = epi_stored<BF16>(act_forward<ACT, float>(z));
            if (write_z) Zout[e] = z;
        }
    }
}

// out = sum of the S partials (M x K, slice order) * g_ACT'(.), g' from Aprev or, for gelu/silu,
// Zprev (both M x K); the one not needed is never read (may be any pointer).  n = M * K.
// BF16 (the bf16 mode's instantiations): out rounded to bfloat16 as stored, once, after g'.
// Launch: block (256,1,1); any 1-D grid.  vec: K % 4 == 0, ws, out, Aprev, Zprev 16-byte aligned,
// split_stride % 4 == 0.
template <int ACT, bool BF16 = false>
__global__ void gemm_tc_bwd_data_splitk_epilogue(const float* __restrict__ ws, const float* __restrict__ Aprev,
                                                 const float* __restrict__ Zprev, float* out, long long n, int S,
                                                 long long split_stride, int vec) {
    const bool need_z = act_needs_z<ACT>::value;
    const bool need_g = need_z || ACT != ACT_IDENTITY;
    const float* G = need_z ? Zprev : Aprev;
    const long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long step = (long long)gridDim.x * blockDim.x;
    if (vec) {
        for (long long e = 4 * start; e < n; e += 4 * step) {
            const float4 s = tc_slices_sum4(ws, e, S, split_stride);
            float4 g = make_float4(0.f, 0.f, 0.f, 0.f);
            if (need_g) g = *reinterpret_cast<const float4*>(G + e);
            *reinterpret_cast<float4*>(out + e) =
                make_float4(epi_stored<BF16>(s.x * act_grad<ACT, float>(g.x, g.x)),
                            epi_stored<BF16>(s.y * act_grad<ACT, float>(g.y, g.y)),
                            epi_stored<BF16>(s.z * act_grad<ACT, float>(g.z, g.z)),
                            epi_stored<BF16>(s.w * act_grad<ACT, float>(g.w, g.w)));
        }
    } else {
        for (long long e = start; e < n; e += step) {
            const float g = need_g ? G[e] : 0.f;
            out[e] = epi_stored<BF16>(tc_slices_sum(ws, e, S, split_stride) * act_grad<ACT, float>(g, g));
        }
    }
}

// The kernels' operand conversions on n values, for checking gpubp/precision.py bit for bit:
// PREC TC_TF32: out[i] = tf32(x[i]);  TC_BF16: out[i] = bf16(x[i]) as float32 (low 16 bits
// zero);  TC_3XTF32: out[i] = hi, out[n + i] = lo.  Launch: block (256,1,1), any 1-D grid.
template <int PREC>
__global__ void gemm_tc_round(const float* __restrict__ x, float* out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        if (PREC == TC_BF16) {
            out[i] = __uint_as_float(bf16x2(v, 0.f) << 16);
        } else {
            const unsigned h = to_tf32(v);
            out[i] = __uint_as_float(h);
            if (PREC == TC_3XTF32) out[n + i] = __uint_as_float(to_tf32(v - __uint_as_float(h)));
        }
    }
}
