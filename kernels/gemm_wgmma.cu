// gemm_wgmma.cu: the Hopper (sm_90a) forward GEMM of a dense layer with its fused epilogue,
//     Z = A(M x K) @ W(N x K)^T + bias(N),   Aout = g_ACT(Z),   Zout = Z when write_z,
// on wgmma tensor cores fed by TMA.  Concatenated after activations.cuh, epilogue.cuh, async_copy.cuh and
// hopper.cuh by gpubp/backends/cuda_gemm_wgmma.py, which builds it with NVRTC for sm_90a only
// (wgmma and setmaxnreg exist only there) and launches it.  Also the input gradient (section 2)
// and the bf16 weight gradient (section 3, MN-major operands); the tf32 weight gradient stays on
// gemm_tc.cu's mma.sync kernel.
//
// Precision (template int PREC, the codes of gemm_tc.cu): TC_TF32 or TC_BF16.  The kernel reads
// operand copies the launcher makes with the conversion kernels at the end of this file:
//   TC_TF32  float32 copies rounded with cvt.rna.tf32.f32 (wgmma's .tf32 would otherwise use
//            the top 19 bits of each float32 as they are, i.e. truncate, which is not the
//            rounding gpubp/precision.py emulates and gemm_tc.cu uses);
//   TC_BF16  bfloat16 copies (cvt.rn: nearest, ties to even), half the bytes for TMA.
// Both copies have rows padded to a multiple of 8 elements (16-byte TMA row strides for any
// K); the padding is never read (the tensor maps say K).  float32 accumulators; the epilogues
// (bias, activation; g') run in float32 on them and store through epilogue.cuh (shared with
// gemm_tc.cu): in TC_BF16 they round the Z, A and delta they store to bfloat16, the bf16 mode's
// storage (float32 buffers).
//
// Both operands are K-major, the layout TF32 wgmma requires: in the forward, A rows are batch
// rows and W rows output features, as stored; in the input gradient, D as stored and the
// transposed copy of W (K x N), so again no transposed shared-memory operand.
//
// Tiles: block tile WG_BM (128) rows x BN (128 or 256) columns; a k-tile is one 128-byte row
// of each operand: BK = 32 (tf32) or 64 (bf16) elements.  Per stage: A tile 128 x 128 bytes,
// W tile BN x 128 bytes, both written by TMA with 128-byte swizzle (1024-byte aligned).
// WG_STAGES (4) stages; shared memory = 1024 (alignment slack) + WG_STAGES * (128 + BN) * 128
// + 2 * WG_STAGES * 8 (mbarriers) bytes: 132160 (BN 128), 197696 (BN 256).
//
// Threads: 3 warpgroups (WG_THREADS = 384).  Warpgroup 0 is the producer: it gives registers
// back (setmaxnreg.dec to 40) and one thread issues the TMA loads of k-tile kt into stage
// kt % WG_STAGES after waiting for that stage's `empty` barrier (phase parity of its previous
// use), announcing the stage's bytes on its `full` barrier (arrive.expect_tx).  Warpgroups 1
// and 2 are consumers (setmaxnreg.inc to 232): consumer c owns output rows [64 c, 64 c + 64)
// of the tile; per k-tile it waits on `full`, runs 4 k-steps of wgmma m64n128 (k 8 for tf32,
// 16 for bf16; descriptors advance 32 bytes per k-step within the swizzled row) per 128
// columns of BN, commits, waits until at most this k-tile's group is pending, and releases the
// previous k-tile's stage (one arrival per consumer warpgroup on its `empty` barrier).
//
// Edges: TMA fills rows past M or N and columns past K with zeros, which add nothing; the
// epilogue masks its stores to p < M, q < N.  Output offsets are long long.  Grid: 1-D over
// tiles in gemm_tile_coords order (8 tile rows at a time, for L2 reuse).  No atomics, a fixed
// summation order: bitwise reproducible on one device.
//
// Accumulator layout of wgmma m64nNk* .f32 (PTX ISA, "Register Fragments and Shared Memory
// Matrix Layouts" for wgmma D): thread t of the warpgroup, warp w = t / 32, lane = 4 g + u:
// d[4 j + 2 h + e] is at row 16 w + g + 8 h, column 8 j + 2 u + e (j = 0 .. N/8 - 1).

#define TC_TF32 0
#define TC_BF16 2

// WG_THREADS (384), WG_BM (128), WG_STAGES (4) come from the generated header
// (gpubp/backends/kernel_constants.py), shared with the launcher.
static_assert(WG_THREADS == 384 && WG_BM == 128, "one producer and two consumer warpgroups of 64 rows each");
#define WG_ROW_BYTES 128
#define WG_PRODUCER_REGS 40
#define WG_CONSUMER_REGS 232

// ------------------------------------------------------------------ one wgmma, 64 x 128 x k
#define WG_D64                                                                      \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "       \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define WG_D64_OPERANDS(d)                                                                            \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),   \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),         \
    "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),       \
    "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),       \
    "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),       \
    "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),       \
    "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),       \
    "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),       \
    "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64 x 128 tile of this warpgroup) += A(64 x k) B(128 x k)^T, both K-major in shared memory,
// or with TRANS (bf16 only) both MN-major (imm-trans-a = imm-trans-b = 1: the weight gradient).
template <int PREC, bool TRANS = false>
__device__ __forceinline__ void wg_mma_64x128(float (&d)[64], unsigned long long da, unsigned long long db) {
    static_assert(!TRANS || PREC == TC_BF16, "TF32 wgmma reads K-major operands only");
    if (PREC == TC_BF16 && TRANS) {
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_D64 ", %64, %65, 1, 1, 1, 1, 1;\n"
                     : WG_D64_OPERANDS(d) : "l"(da), "l"(db));
    } else if (PREC == TC_BF16) {
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_D64 ", %64, %65, 1, 1, 1, 0, 0;\n"
                     : WG_D64_OPERANDS(d) : "l"(da), "l"(db));
    } else {
        asm volatile("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 " WG_D64 ", %64, %65, 1, 1, 1;\n"
                     : WG_D64_OPERANDS(d) : "l"(da), "l"(db));
    }
}

// Bytes of dynamic shared memory of one block (the launcher's smem_bytes computes the same).
template <int BN>
struct wg_layout {
    static constexpr int A_BYTES = WG_BM * WG_ROW_BYTES;
    static constexpr int B_BYTES = BN * WG_ROW_BYTES;
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr int SMEM = 1024 + WG_STAGES * STAGE_BYTES + 2 * WG_STAGES * 8;
};

// ============================================================= the pipeline
// C(P x Q) tile at (p0, q0) = X(P x R) Y(Q x R)^T over r in [r0, r0 + R), X and Y K-major behind
// tmX (box {BK, 128}) and tmY (box {BK, BN}).  Sets up the barriers, splits the warpgroups: the
// producer issues the loads and returns false; a consumer returns true with its 64 x BN tile in
// acc, rows [64 c, 64 c + 64) of the block tile, c = threadIdx.x / 128 - 1.
// MN (bf16 only; the weight gradient): X and Y are MN-major instead, X(p, r) at row r, column p
// of a row-major (R x P) matrix behind tmX, Y likewise (R x Q) behind tmY, both with box
// {64, BK}: a stage holds 128 / 64 = 2 chunks of X and BN / 64 of Y, each [BK rows of r][64
// elements] (8 KB), and the wgmmas read them transposed (wg_desc_mn_sw128, imm-trans 1).  The
// stage's bytes are those of the K-major layout, so wg_layout<BN> holds either.
template <int PREC, int BN, bool MN = false>
__device__ __forceinline__ bool wg_pipeline(const TensorMap128* tmX, const TensorMap128* tmY, int p0, int q0,
                                            int R, float (&acc)[BN / 128][64], int r0 = 0) {
    static_assert(PREC == TC_TF32 || PREC == TC_BF16, "tf32 or bf16");
    static_assert(BN == 128 || BN == 256, "BN is 128 or 256 (one or two m64n128 per k-step)");
    static_assert(!MN || PREC == TC_BF16, "MN-major operands: bf16 only (TF32 wgmma reads K-major)");
    constexpr unsigned MN_CHUNK = 64 * WG_ROW_BYTES;    // MN: one [64 rows of r][128 bytes] box
    constexpr int NH = BN / 128;                          // m64n128 blocks per consumer
    constexpr int BK = PREC == TC_BF16 ? 64 : 32;         // elements per 128-byte row
    constexpr int KSTEPS = 4;                             // 32 bytes each: k 16 (bf16) or 8 (tf32)
    using L = wg_layout<BN>;
    extern __shared__ __align__(16) unsigned char wg_smem_raw[];
    const unsigned base = (smem_addr(wg_smem_raw) + 1023u) & ~1023u;
    const unsigned bars = base + WG_STAGES * L::STAGE_BYTES;   // full[s] at bars + 8 s, empty[s] after
    auto full = [&](int s) { return bars + 8u * s; };
    auto empty = [&](int s) { return bars + 8u * (WG_STAGES + s); };
    auto tileX = [&](int s) { return base + s * L::STAGE_BYTES; };
    auto tileY = [&](int s) { return base + s * L::STAGE_BYTES + L::A_BYTES; };
    const int ktiles = (R + BK - 1) / BK;
    const int wg = threadIdx.x / 128;

    if (threadIdx.x == 0) {
        for (int s = 0; s < WG_STAGES; ++s) {
            mbar_init(full(s), 1);
            mbar_init(empty(s), 2);   // one arrival per consumer warpgroup
        }
        mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) {
        // ---------------------------------------------------------- producer
        regs_dec<WG_PRODUCER_REGS>();
        if (threadIdx.x == 0) {
            for (int kt = 0; kt < ktiles; ++kt) {
                const int s = kt % WG_STAGES;
                if (kt >= WG_STAGES) mbar_wait(empty(s), ((kt / WG_STAGES) - 1) & 1);
                mbar_arrive_expect_tx(full(s), L::STAGE_BYTES);
                if (MN) {
#pragma unroll
                    for (int j = 0; j < WG_BM / 64; ++j)
                        tma_load_2d(tileX(s) + j * MN_CHUNK, tmX, full(s), p0 + 64 * j, r0 + kt * BK);
#pragma unroll
                    for (int j = 0; j < BN / 64; ++j)
                        tma_load_2d(tileY(s) + j * MN_CHUNK, tmY, full(s), q0 + 64 * j, r0 + kt * BK);
                } else {
                    tma_load_2d(tileX(s), tmX, full(s), r0 + kt * BK, p0);
                    tma_load_2d(tileY(s), tmY, full(s), r0 + kt * BK, q0);
                }
            }
        }
        return false;
    }

    // -------------------------------------------------------------- consumers
    regs_inc<WG_CONSUMER_REGS>();
    const int c = wg - 1;
#pragma unroll
    for (int h = 0; h < NH; ++h)
#pragma unroll
        for (int i = 0; i < 64; ++i) acc[h][i] = 0.f;

    for (int kt = 0; kt < ktiles; ++kt) {
        const int s = kt % WG_STAGES;
        mbar_wait(full(s), (kt / WG_STAGES) & 1);
#pragma unroll
        for (int h = 0; h < NH; ++h) wg_fence_acc(acc[h]);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            if (MN) {   // k-step ks: k-rows [16 ks, 16 ks + 16) = atoms 2 ks, 2 ks + 1 of each chunk
                const unsigned long long da = wg_desc_mn_sw128(tileX(s) + c * MN_CHUNK + ks * 2048, MN_CHUNK);
#pragma unroll
                for (int h = 0; h < NH; ++h)
                    wg_mma_64x128<PREC, MN>(acc[h], da,
                                            wg_desc_mn_sw128(tileY(s) + 2 * h * MN_CHUNK + ks * 2048, MN_CHUNK));
            } else {
                const unsigned long long da = wg_desc_sw128(tileX(s) + c * 64 * WG_ROW_BYTES + ks * 32);
#pragma unroll
                for (int h = 0; h < NH; ++h)
                    wg_mma_64x128<PREC>(acc[h], da, wg_desc_sw128(tileY(s) + h * 128 * WG_ROW_BYTES + ks * 32));
            }
        }
        wg_commit();
        wg_wait<1>();                          // k-tile kt - 1's wgmmas are done reading
#pragma unroll
        for (int h = 0; h < NH; ++h) wg_fence_acc(acc[h]);
        if (kt > 0 && threadIdx.x % 128 == 0) mbar_arrive(empty((kt - 1) % WG_STAGES));
    }
    wg_wait<0>();
#pragma unroll
    for (int h = 0; h < NH; ++h) wg_fence_acc(acc[h]);   // the epilogue reads them after the wait
    return true;
}

// This consumer thread's first output row (add 8 r, r = 0, 1) and column (add 128 h + 8 j + e)
// of acc[h][4 j + 2 r + e].
#define WG_EPILOGUE_COORDS                                                                  \
    const int t = threadIdx.x % 128, w = t / 32, lane = t % 32, g = lane / 4, u = lane % 4; \
    const int prow = p0 + (threadIdx.x / 128 - 1) * 64 + 16 * w + g, qcol = q0 + 2 * u;

// ============================================================= 1. forward
// Z = A(M x K) @ W(N x K)^T + bias(N); Aout = g_ACT(Z); Zout written iff write_z.
// tmA: the (M x K) operand copy, box {BK, 128}; tmW: the (N x K) copy, box {BK, BN}; both
// 128-byte swizzle, zero fill.  bias, Aout, Zout: float32, as gemm_tc_fwd.
// Launch: block (384,1,1); grid (ceil(M/128) * ceil(N/BN), 1, 1); dynamic smem wg_layout<BN>::SMEM.
// vec_out: N % 2 == 0, Aout and Zout 8-byte aligned.
template <int PREC, int ACT, int BN>
__global__ void __launch_bounds__(WG_THREADS, 1)
gemm_wgmma_fwd(const __grid_constant__ TensorMap128 tmA, const __grid_constant__ TensorMap128 tmW,
               const float* __restrict__ bias, float* Aout, float* Zout, int M, int N, int K,
               int write_z, int vec_out) {
    constexpr int NH = BN / 128;
    int tp, tq;
    gemm_tile_coords((M + WG_BM - 1) / WG_BM, (N + BN - 1) / BN, tp, tq);
    const int p0 = tp * WG_BM, q0 = tq * BN;
    float acc[NH][64];
    if (!wg_pipeline<PREC, BN>(&tmA, &tmW, p0, q0, K, acc)) return;
    WG_EPILOGUE_COORDS
#pragma unroll
    for (int h = 0; h < NH; ++h)
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int q = qcol + 128 * h + 8 * j;
            const float b0 = q < N ? bias[q] : 0.f, b1 = q + 1 < N ? bias[q + 1] : 0.f;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int p = prow + 8 * r;
                if (p >= M) continue;
                epi_store_fwd_pair<ACT, PREC == TC_BF16>(Aout, Zout, (long long)p * N + q, q, N,
                                                         acc[h][4 * j + 2 * r], acc[h][4 * j + 2 * r + 1],
                                                         b0, b1, write_z, vec_out);
            }
        }
}

// ============================================================= 2. backward, data
// out(M x K) = (D(M x N) @ W(N x K)) * g_ACT'(.), g' from Aprev (M x K) or, for gelu/silu,
// Zprev (M x K); the one not needed is never read (may be any pointer).
// tmD: the (M x N) copy of D, box {BK, 128}; tmWt: the (K x N) transposed copy of W, box
// {BK, BN} (K-major for the reduction over N: TF32 wgmma has no transposed operands).
// Launch: block (384,1,1); grid (ceil(M/128) * ceil(K/BN), 1, 1); dynamic smem wg_layout<BN>::SMEM.
// vec_out: K % 2 == 0, out, Aprev, Zprev 8-byte aligned.
template <int PREC, int ACT, int BN>
__global__ void __launch_bounds__(WG_THREADS, 1)
gemm_wgmma_bwd_data(const __grid_constant__ TensorMap128 tmD, const __grid_constant__ TensorMap128 tmWt,
                    const float* __restrict__ Aprev, const float* __restrict__ Zprev, float* out,
                    int M, int N, int K, int vec_out) {
    constexpr int NH = BN / 128;
    int tp, tq;
    gemm_tile_coords((M + WG_BM - 1) / WG_BM, (K + BN - 1) / BN, tp, tq);
    const int p0 = tp * WG_BM, q0 = tq * BN;
    float acc[NH][64];
    if (!wg_pipeline<PREC, BN>(&tmD, &tmWt, p0, q0, N, acc)) return;
    const bool need_z = act_needs_z<ACT>::value;
    const bool need_a = !need_z && ACT != ACT_IDENTITY;
    const float* G = need_z ? Zprev : Aprev;
    constexpr bool BF16 = PREC == TC_BF16;      // the stored delta rounded to bfloat16 (epilogue.cuh)
    WG_EPILOGUE_COORDS
#pragma unroll
    for (int h = 0; h < NH; ++h)
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int q = qcol + 128 * h + 8 * j;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int p = prow + 8 * r;
                if (p >= M) continue;
                const long long o = (long long)p * K + q;
                float s0 = 0.f, s1 = 0.f;
                if (vec_out) {
                    if (q < K) {
                        if (need_z || need_a) {
                            const float2 v = *reinterpret_cast<const float2*>(G + o);
                            s0 = v.x; s1 = v.y;
                        }
                        *reinterpret_cast<float2*>(out + o) =
                            make_float2(epi_stored<BF16>(acc[h][4 * j + 2 * r] * act_grad<ACT, float>(s0, s0)),
                                        epi_stored<BF16>(acc[h][4 * j + 2 * r + 1] * act_grad<ACT, float>(s1, s1)));
                    }
                } else {
                    if (q < K) {
                        if (need_z || need_a) s0 = G[o];
                        out[o] = epi_stored<BF16>(acc[h][4 * j + 2 * r] * act_grad<ACT, float>(s0, s0));
                    }
                    if (q + 1 < K) {
                        if (need_z || need_a) s1 = G[o + 1];
                        out[o + 1] = epi_stored<BF16>(acc[h][4 * j + 2 * r + 1] * act_grad<ACT, float>(s1, s1));
                    }
                }
            }
        }
}

// ============================================================= operand copies
// out[r * ld_out + c] = tf32(x[r * cols + c]) (cvt.rna, as float32), r < rows, c < cols;
// columns cols .. ld_out - 1 are not written.  Launch: block (256,1,1), any 1-D grid.
__global__ void gemm_wgmma_copy_tf32(const float* __restrict__ x, float* out, long long rows, int cols, int ld_out) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            out[r * ld_out + c] = __uint_as_float(to_tf32(x[r * cols + c]));
}

// The same with bfloat16 (cvt.rn.bf16x2.f32: nearest, ties to even) as 16-bit patterns.
__global__ void gemm_wgmma_copy_bf16(const float* __restrict__ x, unsigned short* out, long long rows, int cols,
                                     int ld_out) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            out[r * ld_out + c] = (unsigned short)(bf16x2(x[r * cols + c], 0.f) & 0xFFFFu);
}

// Transposed copies: out[c * ld_out + r] = round(x[r * cols + c]) (the (cols x rows) transpose,
// rows padded to ld_out), through a 32 x 33 shared tile so that reads and writes are coalesced.
// Launch: block (32, 8, 1); any 2-D grid (tile loops stride by the grid).
template <int PREC, typename T>
__device__ __forceinline__ void wg_copy_t(const float* __restrict__ x, T* out, int rows, int cols, int ld_out) {
    __shared__ float tile[32][33];
    const int tiles_r = (rows + 31) / 32, tiles_c = (cols + 31) / 32;
    for (int tr = blockIdx.y; tr < tiles_r; tr += gridDim.y)
        for (int tcol = blockIdx.x; tcol < tiles_c; tcol += gridDim.x) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = tr * 32 + threadIdx.y + 8 * i, c = tcol * 32 + threadIdx.x;
                if (r < rows && c < cols) tile[threadIdx.y + 8 * i][threadIdx.x] = x[(long long)r * cols + c];
            }
            __syncthreads();
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int c = tcol * 32 + threadIdx.y + 8 * i, r = tr * 32 + threadIdx.x;
                if (r < rows && c < cols) {
                    const float v = tile[threadIdx.x][threadIdx.y + 8 * i];
                    if (PREC == TC_BF16) out[(long long)c * ld_out + r] = (T)(bf16x2(v, 0.f) & 0xFFFFu);
                    else out[(long long)c * ld_out + r] = (T)__uint_as_float(to_tf32(v));
                }
            }
            __syncthreads();
        }
}

__global__ void __launch_bounds__(256) gemm_wgmma_copy_t_tf32(const float* __restrict__ x, float* out, int rows,
                                                              int cols, int ld_out) {
    wg_copy_t<TC_TF32, float>(x, out, rows, cols, ld_out);
}

__global__ void __launch_bounds__(256) gemm_wgmma_copy_t_bf16(const float* __restrict__ x, unsigned short* out,
                                                              int rows, int cols, int ld_out) {
    wg_copy_t<TC_BF16, unsigned short>(x, out, rows, cols, ld_out);
}

// ============================================================= 3. backward, weights (bf16)
// dW(N x K) = D(M x N)^T @ A(M x K): the reduction runs over the batch, so both operands are
// read as stored, MN-major (D's rows are batch rows with the N outputs contiguous, A's likewise
// with the K inputs): the pipeline's MN mode, bf16 only (wgmma transposes bf16 operands in
// hardware, imm-trans-a = imm-trans-b = 1; TF32 wgmma reads K-major operands only, so "tf32"
// stays on gemm_tc.cu's mma.sync weight gradient).  The block tile is 128 rows of dW (outputs
// p) x BN columns (inputs q); a k-tile is 64 batch rows.
// tmD: the bf16 (M x N) copy of D, box {64, 64}; tmA: the bf16 (M x K) copy of A, box {64, 64};
// both 128-byte swizzle, zero fill (rows past M and columns past N or K read as zeros).
// Split over the batch: split z = blockIdx.z sums rows [z * rows_per_split, min(M, (z + 1) *
// rows_per_split)) (rows_per_split a multiple of 64, so only the last split has a partial
// k-tile, which TMA zero-fills) into dW_base + z * split_stride: dW itself with one split, else
// the launcher's workspace that gemm_tc.cu's gemm_tc_splitk_reduce adds in split order.  db
// (column sums of the float32 D) is not computed here: gemm_wgmma_copy_colsum_bf16 below sums it
// while it makes D's copy.
// Launch: block (384,1,1); grid (ceil(N/128) * ceil(K/BN), 1, S); dynamic smem wg_layout<BN>::SMEM.
// vec_out: K % 2 == 0, dW_base 8-byte aligned and split_stride even.
template <int PREC, int BN>
__global__ void __launch_bounds__(WG_THREADS, 1)
gemm_wgmma_bwd_weight(const __grid_constant__ TensorMap128 tmD, const __grid_constant__ TensorMap128 tmA,
                      float* dW_base, int M, int N, int K, int rows_per_split, long long split_stride,
                      int vec_out) {
    static_assert(PREC == TC_BF16, "the transposed (MN-major) operands need bf16 wgmma");
    constexpr int NH = BN / 128;
    int tp, tq;
    gemm_tile_coords((N + WG_BM - 1) / WG_BM, (K + BN - 1) / BN, tp, tq);
    const int p0 = tp * WG_BM, q0 = tq * BN;
    const int r0 = blockIdx.z * rows_per_split;
    const int R = min(M - r0, rows_per_split);
    float acc[NH][64];
    if (!wg_pipeline<PREC, BN, true>(&tmD, &tmA, p0, q0, R, acc, r0)) return;
    float* dW = dW_base + (long long)blockIdx.z * split_stride;
    WG_EPILOGUE_COORDS
#pragma unroll
    for (int h = 0; h < NH; ++h)
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int q = qcol + 128 * h + 8 * j;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int p = prow + 8 * r;
                if (p >= N) continue;
                const long long o = (long long)p * K + q;
                const float v0 = acc[h][4 * j + 2 * r], v1 = acc[h][4 * j + 2 * r + 1];
                if (vec_out) {
                    if (q < K) *reinterpret_cast<float2*>(dW + o) = make_float2(v0, v1);
                } else {
                    if (q < K) dW[o] = v0;
                    if (q + 1 < K) dW[o + 1] = v1;
                }
            }
        }
}

// The bf16 copy of D for the weight gradient (as gemm_wgmma_copy_bf16: out[r * ld_out + c] =
// bf16(x[r * cols + c]), columns cols .. ld_out - 1 not written) fused with the bias gradient's
// column sums of the float32 x, over row slices: slice z = blockIdx.y sums rows
// [z * rows_per_slice, min(rows, (z + 1) * rows_per_slice)) into colsum[z * slice_stride + c].
// Fixed order, no atomics: thread (tx, ty) of the 32 x 8 block adds, in float32, rows ty, ty + 8,
// ty + 16, ... of the slice in increasing order for column c = 32 blockIdx.x + tx, and the 8
// partials of a column are then added in ty order.  The launcher adds the slices in slice order
// (gemm_tc_splitk_reduce) or, with one slice, passes db itself as colsum.
// Launch: block (32, 8, 1); grid (ceil(cols / 32), S, 1), S * rows_per_slice >= rows.
__global__ void __launch_bounds__(256) gemm_wgmma_copy_colsum_bf16(const float* __restrict__ x,
                                                                   unsigned short* __restrict__ out,
                                                                   float* __restrict__ colsum, int rows, int cols,
                                                                   int ld_out, int rows_per_slice,
                                                                   long long slice_stride) {
    __shared__ float part[8][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int rb = blockIdx.y * rows_per_slice, re = min(rows, rb + rows_per_slice);
    float s = 0.f;
    if (c < cols) {
#pragma unroll 4
        for (int r = rb + threadIdx.y; r < re; r += 8) {
            const float v = x[(long long)r * cols + c];
            s += v;
            out[(long long)r * ld_out + c] = (unsigned short)(bf16x2(v, 0.f) & 0xFFFFu);
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float t = part[0][threadIdx.x];
#pragma unroll
        for (int j = 1; j < 8; ++j) t += part[j][threadIdx.x];
        colsum[(long long)blockIdx.y * slice_stride + c] = t;
    }
}
