// fused_mlp_family.cu: ONE templated source for the whole-run narrow-layer kernels
// (every width <= 128) with a math policy POL:
//   FF_POL_F32   float32 products, FFMA accumulation
//   FF_POL_TF32  mma.sync m16n8k8 .tf32, operands rounded with cvt.rna.tf32.f32 (nearest, ties away)
//   FF_POL_BF16  mma.sync m16n8k16 .bf16, operands rounded to bf16 (nearest, ties to even)
// float32 accumulation, float32 epilogue arithmetic (bias, activation, g', db) and float32
// global arrays for every policy; the BF16 policy stores bf16 values in them (below).  Concatenated after activations.cuh by
// gpubp/backends/cuda_source.py; launched by gpubp/backends/cuda_fused_family.py, which
// keeps the parameter table layout (FM_* fields) and launch contract of
// gpubp/backends/cuda_fused.py.  Not on any default path until a GPU has verified it.
//
// Contract (as kernels/fused_mlp.cu): one block keeps a tile of BM batch rows in shared
// memory across all layers of the run; everything is padded to WMAX columns and BM rows
// with zeros, so any widths <= WMAX and any batch size work; the backward is a persistent
// grid whose blocks accumulate per-block dW/db partials in their own workspace slice
// (layer i at i * (WMAX*WMAX + WMAX): dW [WMAX][WMAX], then db [WMAX]), reduced in block
// order by fused_family_reduce.  No atomics: repeated runs give the same bits.
//
// What the policy changes, and what is written once:
//   - written once: the cp.async tile loader (zero fill outside the matrix), the swizzled
//     shared layout, the forward epilogue (bias + activation -> next tile, Z_out, A_out
//     from registers), the backward epilogue (g' from the input activation tile or Z),
//     db, the delta write-back (to shared memory or to delta_in), the workspace update,
//     the forward / backward / reduce kernels, and one activation dispatch for each epilogue.
//   - per policy: ff_round (how W is pre-rounded in shared memory) and the three tile
//     GEMMs (ff_gemm_rows: X W^T and D W; ff_gemm_dw: D^T X).  All three policies leave
//     their accumulators in the SAME per-thread layout (the mma C fragment), so the
//     epilogues are shared: acc[i][j][2h + q] is output (m0 + 16 i + 8 h + g, c0 + 8 j + 2 t + q)
//     of the warp's 32 x 32 tile at (m0, c0), lane = 4 g + t.
//
// Precision "bf16" (the mode's storage semantics, docs/spec.md "Precision modes"): W tiles are
// rounded to bf16 values once, when staged into shared memory (kept as float32 words whose
// low 16 bits are zero, packed into bf16x2 fragments with one PRMT); everything the policy
// stores is rounded to bf16 values as it is written (ff_stored): Z_out, the next layer's input
// tile in shared memory (hence A_out, copied from it), the deltas written back to shared memory
// (which db and dW then sum) and delta_in.  The run's input X and delta_last are read as given
// (a bf16 network stores them rounded already); fragments are still rounded as they load
// (cvt.rn.bf16x2.f32: exact on bf16 values).  Float32 buffers, accumulators, biases, epilogue
// arithmetic and dW/db partials.  tf32 rounds the operands only (W pre-rounded in shared
// memory, activations/deltas at fragment load) and stores float32, as float32 does.
//
// Shared layout: every tile (rows x WMAX floats) is unpadded with an XOR swizzle per row,
//     element (r, c) at r * WMAX + (c ^ ff_swz(r)),
//     ff_swz(r) = 8 ((r & 3) ^ h) + 4 h, h = (r >> 2) & 1   (multiples of 4 below 32)
// ff_swz(r) / 4 over r & 7 is a permutation of 0..7, and the 8-float block ff_swz(r) / 8 is
// distinct over r in {0..3}, over {4..7}, over {0,2,4,6} and over {1,3,5,7}.  So these warp
// accesses hit 32 distinct banks (WMAX % 32 == 0 puts every row start at bank 0):
//   rows base + g, column cb + t (tf32 A / B fragments along k)        [c ^ s: bits 0-1 t, bits 2-4 perm(g)]
//   rows base + t (+4), columns cb + g (tf32 B across k, dW operands)  [distinct 8-blocks over t]
//   rows base + 2t + e, columns cb + g (bf16 pairs across k)           [distinct 8-blocks over t]
//   float2 at rows base + g, columns cb + 2t (bf16 pairs along k; a half-warp per wavefront)
//   float4 at rows base + g (+8, +16, +24), one column chunk (FFMA forward)
//   float4 / float2 along one row (tile copies, FFMA operands): a permutation of the row block.
//
// Pipelining: global -> shared copies are 16-byte cp.async.cg (4-byte cp.async.ca where a row
// is not 16-byte aligned), zero-filled outside the matrix.  The forward double-buffers W: the
// copy of W_{l+1} is issued before layer l's GEMM and lands while it runs.  The backward
// double-buffers the layer's input tile and W when WMAX == 64 (the next layer's, or the next
// tile's first layer's, copies run under the current layer's three GEMMs); at WMAX == 128 the
// shared memory holds one set, and the next copies are issued before the current layer's
// write-back.  A thread rounds (tf32 / bf16) exactly the W chunks it copied, after its own
// cp.async.wait_group, before the barrier that publishes them.
//
// Offsets that can pass 2^31 (row * width) are long long.

#define FF_WARPS (FM_NT / 32)

// ------------------------------------------------------------- layout, conversions, mma
__device__ __forceinline__ int ff_swz(int r) {
    const int h = (r >> 2) & 1;
    return (((r & 3) ^ h) << 3) | (h << 2);
}

template <int WMAX>
__device__ __forceinline__ int ff_off(int r, int c) { return r * WMAX + (c ^ ff_swz(r)); }

template <int POL> struct ff_policy {
    // reduction granule of the row GEMMs and the dW GEMM (the mma k; 4 = one float4 for FFMA)
    static constexpr int K = POL == FF_POL_BF16 ? 16 : (POL == FF_POL_TF32 ? 8 : 4);
};

__device__ __forceinline__ int ff_roundup(int x, int k) { return (x + k - 1) / k * k; }

// to_tf32, bf16x2, mma_tf32, mma_bf16: kernels/mma.cuh; cp_async16, cp_async4, cp_async_commit,
// cp_async_wait: kernels/async_copy.cuh.

// x rounded to a bf16 value, as a float32 (low 16 bits zero).
__device__ __forceinline__ float ff_bf16_round(float x) { return __uint_as_float(bf16x2(0.f, x) & 0xffff0000u); }

// Two floats that are already bf16 values -> bf16x2 (the high halves; exact).
__device__ __forceinline__ unsigned ff_pack_bf16(float lo, float hi) {
    return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632);
}

// What the BF16 policy stores (the "bf16" mode's storage, gpubp.precision.round_stored): every
// Z, A and delta it writes, to shared or global memory, rounded to a bf16 value; other policies
// store float32 as computed (no instruction added).
template <bool BF16>
__device__ __forceinline__ float ff_stored(float x) { return BF16 ? ff_bf16_round(x) : x; }

template <int POL>
__device__ __forceinline__ float ff_round(float x) {
    if (POL == FF_POL_TF32) return __uint_as_float(to_tf32(x));
    if (POL == FF_POL_BF16) return ff_bf16_round(x);
    return x;
}

// Issue the copy of a ROWS x WMAX tile of the row-major X (ld n, rows row0 .. row0 + rows - 1
// valid) into the swizzled tile s, zero outside [0, rows) x [0, n).  Slot = one float4 chunk,
// row-major over the tile: consecutive threads read consecutive 16 bytes of a row (coalesced).
// vec: n % 4 == 0 and X 16-byte aligned (a chunk is then wholly in or out).
template <int ROWS, int WMAX>
__device__ __forceinline__ void ff_load_tile(float* s, const float* __restrict__ X, long long row0, int rows,
                                             int n, bool vec, int tid) {
    constexpr int V = WMAX / 4;
    constexpr int ITERS = ROWS * V / FM_NT;
    static_assert(ROWS * V % FM_NT == 0, "tile chunks must be a multiple of the block size");
#pragma unroll 4
    for (int it = 0; it < ITERS; ++it) {
        const int slot = tid + it * FM_NT;
        const int m = slot / V;
        const int k = (slot - m * V) * 4;
        float* dst = s + ff_off<WMAX>(m, k);
        const float* row = X + (row0 + m) * (long long)n;
        if (vec) {
            const bool in = m < rows && k < n;
            cp_async16(dst, in ? row + k : X, in);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool in = m < rows && k + e < n;
                cp_async4(dst + e, in ? row + k + e : X, in);
            }
        }
    }
}

// Round (policy) the chunks of a ROWS x WMAX tile that THIS thread copied with ff_load_tile,
// after this thread's cp.async.wait_group: W pre-rounded in shared memory.
template <int POL, int ROWS, int WMAX>
__device__ __forceinline__ void ff_round_tile(float* s, int tid) {
    if (POL == FF_POL_F32) return;
    constexpr int V = WMAX / 4;
    constexpr int ITERS = ROWS * V / FM_NT;
#pragma unroll 4
    for (int it = 0; it < ITERS; ++it) {
        const int slot = tid + it * FM_NT;
        const int m = slot / V;
        const int k = (slot - m * V) * 4;
        float4* p = reinterpret_cast<float4*>(s + ff_off<WMAX>(m, k));
        float4 v = *p;
        v.x = ff_round<POL>(v.x);
        v.y = ff_round<POL>(v.y);
        v.z = ff_round<POL>(v.z);
        v.w = ff_round<POL>(v.w);
        *p = v;
    }
}

// Rows [0, rows) x columns [0, n) of the swizzled tile s into row-major Y (ld n); 16-byte
// stores where vec (n % 4 == 0, Y 16-byte aligned).  Same slots as ff_load_tile.
template <int ROWS, int WMAX>
__device__ __forceinline__ void ff_store_tile(const float* s, float* Y, long long row0, int rows, int n,
                                              bool vec, int tid) {
    constexpr int V = WMAX / 4;
    constexpr int ITERS = ROWS * V / FM_NT;
#pragma unroll 4
    for (int it = 0; it < ITERS; ++it) {
        const int slot = tid + it * FM_NT;
        const int m = slot / V;
        const int k = (slot - m * V) * 4;
        if (m < rows && k < n) {
            const float4 v = *reinterpret_cast<const float4*>(s + ff_off<WMAX>(m, k));
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

// ------------------------------------------------------------- the row GEMMs (per policy)
// The warp's 32 x 32 output tile at (m0, c0) of a BM x WMAX product, into acc[i][j][2h + q]
// = (m0 + 16 i + 8 h + g, c0 + 8 j + 2 t + q), reduction over [0, R), R a multiple of
// ff_policy<POL>::K, in increasing order:
//   MODE 0 (forward):        out[m][n] = sum_k sA[m][k] sW[n][k]
//   MODE 1 (backward data):  out[m][k] = sum_n sA[m][n] sW[n][k]     (sA is the delta tile)
// sW holds values already rounded for the policy; sA is rounded as its fragments load.
template <int POL, int WMAX, int MODE>
__device__ __forceinline__ void ff_gemm_rows(const float* sA, const float* sW, int R, int m0, int c0,
                                             int g, int t, float (&acc)[2][4][4]) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

    if (POL == FF_POL_F32) {
        if (MODE == 0) {
            // per 4 k: 4 float4 of sA (rows g, 8 distinct rows a warp) and 8 of sW (rows 2t + q);
            // 48 operand registers per step: kept rolled under the 128-register cap of 2 blocks / SM
#pragma unroll 1
            for (int k0 = 0; k0 < R; k0 += 4) {
                float4 x[2][2], w[4][2];
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        x[i][h] = *reinterpret_cast<const float4*>(sA + ff_off<WMAX>(m0 + 16 * i + 8 * h + g, k0));
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int q = 0; q < 2; ++q)
                        w[j][q] = *reinterpret_cast<const float4*>(sW + ff_off<WMAX>(c0 + 8 * j + 2 * t + q, k0));
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
#pragma unroll
                        for (int j = 0; j < 4; ++j)
#pragma unroll
                            for (int q = 0; q < 2; ++q) {
                                float s = acc[i][j][2 * h + q];
                                s = fmaf(x[i][h].x, w[j][q].x, s);
                                s = fmaf(x[i][h].y, w[j][q].y, s);
                                s = fmaf(x[i][h].z, w[j][q].z, s);
                                s = fmaf(x[i][h].w, w[j][q].w, s);
                                acc[i][j][2 * h + q] = s;
                            }
            }
        } else {
            // per 4 n: 4 float4 of sA (rows g) and, per n, 4 float2 of sW's row n (columns 2t)
#pragma unroll 1
            for (int n0 = 0; n0 < R; n0 += 4) {
                float4 d[2][2];
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        d[i][h] = *reinterpret_cast<const float4*>(sA + ff_off<WMAX>(m0 + 16 * i + 8 * h + g, n0));
#pragma unroll
                for (int s = 0; s < 4; ++s) {
                    float2 w[4];
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        w[j] = *reinterpret_cast<const float2*>(sW + ff_off<WMAX>(n0 + s, c0 + 8 * j + 2 * t));
#pragma unroll
                    for (int i = 0; i < 2; ++i)
#pragma unroll
                        for (int h = 0; h < 2; ++h) {
                            const float dv = s == 0 ? d[i][h].x : (s == 1 ? d[i][h].y : (s == 2 ? d[i][h].z : d[i][h].w));
#pragma unroll
                            for (int j = 0; j < 4; ++j) {
                                acc[i][j][2 * h] = fmaf(dv, w[j].x, acc[i][j][2 * h]);
                                acc[i][j][2 * h + 1] = fmaf(dv, w[j].y, acc[i][j][2 * h + 1]);
                            }
                        }
                }
            }
        }
    } else if (POL == FF_POL_TF32) {
        // forward rolled (the 128-register cap of 2 blocks / SM), backward unrolled by 2
#pragma unroll (MODE == 0 ? 1 : 2)
        for (int k0 = 0; k0 < R; k0 += 8) {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = m0 + 16 * i + g;
                a[i][0] = to_tf32(sA[ff_off<WMAX>(r, k0 + t)]);
                a[i][1] = to_tf32(sA[ff_off<WMAX>(r + 8, k0 + t)]);
                a[i][2] = to_tf32(sA[ff_off<WMAX>(r, k0 + t + 4)]);
                a[i][3] = to_tf32(sA[ff_off<WMAX>(r + 8, k0 + t + 4)]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (MODE == 0) {   // B[k][n] = W[n][k]
                    b[j][0] = __float_as_uint(sW[ff_off<WMAX>(c0 + 8 * j + g, k0 + t)]);
                    b[j][1] = __float_as_uint(sW[ff_off<WMAX>(c0 + 8 * j + g, k0 + t + 4)]);
                } else {           // B[n][k] = W[n][k]
                    b[j][0] = __float_as_uint(sW[ff_off<WMAX>(k0 + t, c0 + 8 * j + g)]);
                    b[j][1] = __float_as_uint(sW[ff_off<WMAX>(k0 + t + 4, c0 + 8 * j + g)]);
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    mma_tf32(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
        }
    } else {   // FF_POL_BF16
#pragma unroll (MODE == 0 ? 1 : 2)
        for (int k0 = 0; k0 < R; k0 += 16) {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = m0 + 16 * i + g;
                const float2 v0 = *reinterpret_cast<const float2*>(sA + ff_off<WMAX>(r, k0 + 2 * t));
                const float2 v1 = *reinterpret_cast<const float2*>(sA + ff_off<WMAX>(r + 8, k0 + 2 * t));
                const float2 v2 = *reinterpret_cast<const float2*>(sA + ff_off<WMAX>(r, k0 + 2 * t + 8));
                const float2 v3 = *reinterpret_cast<const float2*>(sA + ff_off<WMAX>(r + 8, k0 + 2 * t + 8));
                a[i][0] = bf16x2(v0.x, v0.y);
                a[i][1] = bf16x2(v1.x, v1.y);
                a[i][2] = bf16x2(v2.x, v2.y);
                a[i][3] = bf16x2(v3.x, v3.y);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = c0 + 8 * j + g;
                if (MODE == 0) {   // B[k][n] = W[n][k]: pairs along W's row
                    const float2 w0 = *reinterpret_cast<const float2*>(sW + ff_off<WMAX>(n, k0 + 2 * t));
                    const float2 w1 = *reinterpret_cast<const float2*>(sW + ff_off<WMAX>(n, k0 + 2 * t + 8));
                    b[j][0] = ff_pack_bf16(w0.x, w0.y);
                    b[j][1] = ff_pack_bf16(w1.x, w1.y);
                } else {           // B[n'][k] = W[n'][k]: pairs down W's column n
                    const int r = k0 + 2 * t;
                    b[j][0] = ff_pack_bf16(sW[ff_off<WMAX>(r, n)], sW[ff_off<WMAX>(r + 1, n)]);
                    b[j][1] = ff_pack_bf16(sW[ff_off<WMAX>(r + 8, n)], sW[ff_off<WMAX>(r + 9, n)]);
                }
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    mma_bf16(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
        }
    }
}

// ------------------------------------------------------------- the weight-gradient GEMM (per policy)
// This block's workspace slice of one layer (+)= sD^T sA over the tile's rows:
//   wsl[n * WMAX + k] (+)= sum_{m < R} sD[m][n] sA[m][k]
// over the whole padded WMAX x WMAX (unmasked float2 / float4 workspace accesses; the padded
// entries are never read by the reduce).  first: write, not read-modify-write; otherwise the
// old partial is added after the loop (partial + this tile's sum: a fixed order), fetched
// before the loop at WMAX 64 (latency hidden) and after it at WMAX 128 (register budget).  R: the tile's rows rounded up to ff_policy<POL>::K (rows past the batch are
// zero in both tiles).
//   mma policies: warp tile 32 (n) x KW (k), WMAX / 32 warps down n; per thread
//     acc[2][KW / 8][4] in the C-fragment layout.
//   FFMA: thread (ty, tx) of a 16 x 16 grid owns n = 4 ty + 64 hn + cn, k = 4 tx + 64 hk + ck:
//     per row m two float4 per 64 columns, 16 H^2 FFMA (H = WMAX / 64).
template <int POL, int WMAX>
__device__ __forceinline__ void ff_gemm_dw(const float* sD, const float* sA, int R, float* wsl, bool first,
                                           int tid) {
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    if (POL == FF_POL_F32) {
        constexpr int H = WMAX / 64, T = 4 * H;
        const int ty = (warp >> 1) * 4 + (lane >> 3);
        const int tx = (warp & 1) * 8 + (lane & 7);
        constexpr bool PREFETCH = WMAX <= 64;   // as in the mma path below
        float4 prev[T][H];
        if (PREFETCH && !first) {
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
#pragma unroll 4
        for (int m = 0; m < R; ++m) {
            float4 d[H], a[H];
#pragma unroll
            for (int h = 0; h < H; ++h) {
                d[h] = *reinterpret_cast<const float4*>(sD + ff_off<WMAX>(m, 4 * ty + 64 * h));
                a[h] = *reinterpret_cast<const float4*>(sA + ff_off<WMAX>(m, 4 * tx + 64 * h));
            }
#pragma unroll
            for (int hn = 0; hn < H; ++hn)
#pragma unroll
                for (int hk = 0; hk < H; ++hk) {
                    const float dn[4] = {d[hn].x, d[hn].y, d[hn].z, d[hn].w};
                    const float ak[4] = {a[hk].x, a[hk].y, a[hk].z, a[hk].w};
#pragma unroll
                    for (int cn = 0; cn < 4; ++cn)
#pragma unroll
                        for (int ck = 0; ck < 4; ++ck)
                            acc[4 * hn + cn][4 * hk + ck] = fmaf(dn[cn], ak[ck], acc[4 * hn + cn][4 * hk + ck]);
                }
        }
#pragma unroll
        for (int r = 0; r < T; ++r)
#pragma unroll
            for (int hk = 0; hk < H; ++hk) {
                float4* dst = reinterpret_cast<float4*>(wsl + (4 * ty + 64 * (r / 4) + (r % 4)) * WMAX + 4 * tx + 64 * hk);
                float4 v = make_float4(acc[r][4 * hk], acc[r][4 * hk + 1], acc[r][4 * hk + 2], acc[r][4 * hk + 3]);
                if (!first) {
                    const float4 o = PREFETCH ? prev[r][hk] : *dst;
                    v.x = o.x + v.x;
                    v.y = o.y + v.y;
                    v.z = o.z + v.z;
                    v.w = o.w + v.w;
                }
                *dst = v;
            }
    } else {
        constexpr int WNW = WMAX / 32;        // warps down n
        constexpr int WKW = FF_WARPS / WNW;   // warps across k
        constexpr int KW = WMAX / WKW;        // columns per warp: 16 (WMAX 64) or 64 (WMAX 128)
        constexpr int NJ = KW / 8;
        static_assert(WNW * WKW == FF_WARPS && KW % 8 == 0, "dW warp tiling");
        const int nw = 32 * (warp % WNW);
        const int kw = KW * (warp / WNW);
        // The old partial: fetched before the loop (its latency hidden by the MMAs) at WMAX 64; at
        // WMAX 128 (64 more registers a thread) read after the loop, keeping the kernel well under
        // 255 registers.  The sum is partial + this tile's sum either way.
        constexpr bool PREFETCH = WMAX <= 64;
        float2 prev[2][NJ][2];
        if (PREFETCH && !first) {
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < NJ; ++j)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        prev[i][j][h] = *reinterpret_cast<const float2*>(
                            wsl + (nw + 16 * i + 8 * h + g) * WMAX + kw + 8 * j + 2 * t);
        }
        float acc[2][NJ][4];
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

        if (POL == FF_POL_TF32) {
            // A[n][m] = sD[m][n] (rows m0 + t, + 4; columns n = nw + 16 i + g, + 8); B[m][k] = sA[m][k].
#pragma unroll 2
            for (int m0 = 0; m0 < R; m0 += 8) {
                unsigned a[2][4], b[NJ][2];
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int n = nw + 16 * i + g;
                    a[i][0] = to_tf32(sD[ff_off<WMAX>(m0 + t, n)]);
                    a[i][1] = to_tf32(sD[ff_off<WMAX>(m0 + t, n + 8)]);
                    a[i][2] = to_tf32(sD[ff_off<WMAX>(m0 + t + 4, n)]);
                    a[i][3] = to_tf32(sD[ff_off<WMAX>(m0 + t + 4, n + 8)]);
                }
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    const int k = kw + 8 * j + g;
                    b[j][0] = to_tf32(sA[ff_off<WMAX>(m0 + t, k)]);
                    b[j][1] = to_tf32(sA[ff_off<WMAX>(m0 + t + 4, k)]);
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < NJ; ++j)
                        mma_tf32(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
            }
        } else {
            // bf16 pairs along m: rows m0 + 2t, + 1 (and + 8, + 9)
#pragma unroll 2
            for (int m0 = 0; m0 < R; m0 += 16) {
                unsigned a[2][4], b[NJ][2];
                const int r = m0 + 2 * t;
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int n = nw + 16 * i + g;
                    a[i][0] = bf16x2(sD[ff_off<WMAX>(r, n)], sD[ff_off<WMAX>(r + 1, n)]);
                    a[i][1] = bf16x2(sD[ff_off<WMAX>(r, n + 8)], sD[ff_off<WMAX>(r + 1, n + 8)]);
                    a[i][2] = bf16x2(sD[ff_off<WMAX>(r + 8, n)], sD[ff_off<WMAX>(r + 9, n)]);
                    a[i][3] = bf16x2(sD[ff_off<WMAX>(r + 8, n + 8)], sD[ff_off<WMAX>(r + 9, n + 8)]);
                }
#pragma unroll
                for (int j = 0; j < NJ; ++j) {
                    const int k = kw + 8 * j + g;
                    b[j][0] = bf16x2(sA[ff_off<WMAX>(r, k)], sA[ff_off<WMAX>(r + 1, k)]);
                    b[j][1] = bf16x2(sA[ff_off<WMAX>(r + 8, k)], sA[ff_off<WMAX>(r + 9, k)]);
                }
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < NJ; ++j)
                        mma_bf16(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    float2* dst = reinterpret_cast<float2*>(wsl + (nw + 16 * i + 8 * h + g) * WMAX + kw + 8 * j + 2 * t);
                    float2 v = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                    if (!first) {
                        const float2 o = PREFETCH ? prev[i][j][h] : *dst;
                        v.x = o.x + v.x;
                        v.y = o.y + v.y;
                    }
                    *dst = v;
                }
    }
}

// ------------------------------------------------------------- epilogues (every policy)
// Forward, on the warp's 32 x 32 tile: z = acc + b, a = g(z); sX[m][n] = a for n < n_out,
// else 0 (the next layer's zero padding); Z_out (may be null) gets z for valid (m, n).
// A_out is copied from sX afterwards (ff_store_tile: coalesced 16-byte stores).
// BF16: z and a are stored rounded to bf16 (a = g of the rounded z).
template <int ACT, int WMAX, bool BF16>
__device__ __forceinline__ void ff_fwd_epilogue(float (&acc)[2][4][4], float* sX, const float* __restrict__ bias,
                                                float* Zout, long long row0,
                                                int rows, int n_out, int m0, int c0, int g, int t) {
    float bv[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
            const int n = c0 + 8 * j + 2 * t + q;
            bv[j][q] = n < n_out ? __ldg(bias + n) : 0.f;
        }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + 16 * i + 8 * h + g;
            const bool row_ok = m < rows;
            const long long grow = (row0 + m) * (long long)n_out;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = c0 + 8 * j + 2 * t;
                const float z0 = ff_stored<BF16>(acc[i][j][2 * h] + bv[j][0]);
                const float z1 = ff_stored<BF16>(acc[i][j][2 * h + 1] + bv[j][1]);
                float2 a;
                a.x = n < n_out ? ff_stored<BF16>(act_forward<ACT, float>(z0)) : 0.f;
                a.y = n + 1 < n_out ? ff_stored<BF16>(act_forward<ACT, float>(z1)) : 0.f;
                *reinterpret_cast<float2*>(sX + ff_off<WMAX>(m, n)) = a;
                if (Zout != nullptr && row_ok && n < n_out) {
                    Zout[grow + n] = z0;
                    if (n + 1 < n_out) Zout[grow + n + 1] = z1;
                }
            }
        }
}

template <int WMAX, bool BF16>
__device__ __forceinline__ void ff_fwd_epilogue_any(int act, float (&acc)[2][4][4], float* sX,
                                                    const float* __restrict__ bias, float* Zout,
                                                    long long row0, int rows, int n_out,
                                                    int m0, int c0, int g, int t) {
#define FF_FWD_EPI(A) ff_fwd_epilogue<A, WMAX, BF16>(acc, sX, bias, Zout, row0, rows, n_out, m0, c0, g, t)
    switch (act) {
        case ACT_SIGMOID:    FF_FWD_EPI(ACT_SIGMOID); break;
        case ACT_TANH:       FF_FWD_EPI(ACT_TANH); break;
        case ACT_RELU:       FF_FWD_EPI(ACT_RELU); break;
        case ACT_LEAKY_RELU: FF_FWD_EPI(ACT_LEAKY_RELU); break;
        case ACT_GELU:       FF_FWD_EPI(ACT_GELU); break;
        case ACT_SILU:       FF_FWD_EPI(ACT_SILU); break;
        default:             FF_FWD_EPI(ACT_IDENTITY); break;
    }
#undef FF_FWD_EPI
}

// Backward: acc (delta @ W) *= g'(.), g' from the layer's input activation sA[m][k] (float32
// in shared memory) or, for gelu/silu, from Zx (global, ld n_in; read only for valid (m, k);
// float2 reads when vecz: n_in % 4 == 0 and Zx 16-byte aligned).
template <int ACT, int WMAX>
__device__ __forceinline__ void ff_bwd_epilogue(float (&acc)[2][4][4], const float* sA,
                                                const float* __restrict__ Zx, bool vecz, long long row0,
                                                int rows, int n_in, int m0, int c0, int g, int t) {
    const bool need_z = act_needs_z<ACT>::value;
    if (ACT == ACT_IDENTITY) return;   // g' = 1
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + 16 * i + 8 * h + g;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int k = c0 + 8 * j + 2 * t;
                float2 src = make_float2(0.f, 0.f);
                if (need_z) {
                    if (m < rows && k < n_in) {
                        const float* z = Zx + (row0 + m) * (long long)n_in + k;
                        if (vecz) {
                            src = __ldg(reinterpret_cast<const float2*>(z));
                        } else {
                            src.x = __ldg(z);
                            if (k + 1 < n_in) src.y = __ldg(z + 1);
                        }
                    }
                } else {
                    src = *reinterpret_cast<const float2*>(sA + ff_off<WMAX>(m, k));
                }
                acc[i][j][2 * h] = acc[i][j][2 * h] * act_grad<ACT, float>(src.x, src.x);
                acc[i][j][2 * h + 1] = acc[i][j][2 * h + 1] * act_grad<ACT, float>(src.y, src.y);
            }
        }
}

template <int WMAX>
__device__ __forceinline__ void ff_bwd_epilogue_any(int act, float (&acc)[2][4][4], const float* sA,
                                                    const float* __restrict__ Zx, bool vecz, long long row0,
                                                    int rows, int n_in, int m0, int c0, int g, int t) {
#define FF_BWD_EPI(A) ff_bwd_epilogue<A, WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, m0, c0, g, t)
    switch (act) {
        case ACT_SIGMOID:    FF_BWD_EPI(ACT_SIGMOID); break;
        case ACT_TANH:       FF_BWD_EPI(ACT_TANH); break;
        case ACT_RELU:       FF_BWD_EPI(ACT_RELU); break;
        case ACT_LEAKY_RELU: FF_BWD_EPI(ACT_LEAKY_RELU); break;
        case ACT_GELU:       FF_BWD_EPI(ACT_GELU); break;
        case ACT_SILU:       FF_BWD_EPI(ACT_SILU); break;
        default: break;   // identity
    }
#undef FF_BWD_EPI
}

// db partials of one tile: thread (q, p) sums column pair p (float2, conflict-free: a warp
// reads 64 consecutive floats of one row, swizzled) over rows q, q + G2, ... with two
// independent chains (even / odd steps) added at the end: a fixed order.  G2 = 512 / WMAX
// row groups; scr[q * WMAX + 2p ..] gets the partials.
template <int BM, int WMAX>
__device__ __forceinline__ void ff_db_partial(const float* sD, float* scr, int rows, int tid) {
    constexpr int PAIRS = WMAX / 2;
    constexpr int G2 = FM_NT / PAIRS;
    const int q = tid / PAIRS, c = 2 * (tid % PAIRS);
    float2 s0 = make_float2(0.f, 0.f), s1 = make_float2(0.f, 0.f);
    int m = q;
    for (; m + G2 < rows; m += 2 * G2) {
        const float2 v0 = *reinterpret_cast<const float2*>(sD + ff_off<WMAX>(m, c));
        const float2 v1 = *reinterpret_cast<const float2*>(sD + ff_off<WMAX>(m + G2, c));
        s0.x += v0.x; s0.y += v0.y;
        s1.x += v1.x; s1.y += v1.y;
    }
    if (m < rows) {
        const float2 v0 = *reinterpret_cast<const float2*>(sD + ff_off<WMAX>(m, c));
        s0.x += v0.x; s0.y += v0.y;
    }
    *reinterpret_cast<float2*>(scr + q * WMAX + c) = make_float2(s0.x + s1.x, s0.y + s1.y);
}

// ============================================================= 1. forward
// For every layer l of the run: Z_l = X_l @ W_l^T + b_l, A_l = g_l(Z_l) -> A_out (and
// Z_out where given); X_0 = table[0].X, X_{l+1} = A_l kept in shared memory.
// Launch: block (256,1,1); grid (ceil(B / BM), 1, 1); BM = 256 / (WMAX / 32) (<POL, 128, 64>
//   or <POL, 64, 128>); dynamic smem (BM + 2 WMAX) * WMAX * 4 bytes: sX [BM][WMAX], then
//   sW [2][WMAX][WMAX] (WMAX 64: 65,536 B; WMAX 128: 163,840 B).
// Layer l: wait for W_l (and, at l = 0, X_0), round own W chunks | barrier | issue W_{l+1}
//   into the other buffer (its last reader, layer l-1's GEMM, finished before the previous
//   barrier); copy sX = A_{l-1} -> A_out of layer l-1 (a read, like the GEMM's) | GEMM |
//   barrier | epilogue: sX <- A_l, Z_out.  After the last layer: barrier, copy A_{L-1}.
template <int POL, int BM, int WMAX>
__global__ void __launch_bounds__(FM_NT, (WMAX <= 64 ? 2 : 1))
fused_family_fwd(const long long* __restrict__ table, int L, int B) {
    constexpr int WN = WMAX / 32;
    static_assert(WMAX % 32 == 0 && FF_WARPS % WN == 0 && BM == 32 * (FF_WARPS / WN), "forward warp tiling");
    extern __shared__ __align__(16) float ff_smem[];
    float* sX = ff_smem;
    float* sW0 = ff_smem + BM * WMAX;
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int m0 = 32 * (warp / WN), c0 = 32 * (warp % WN);
    const long long row0 = (long long)blockIdx.x * BM;
    const int rows = (int)min((long long)BM, (long long)B - row0);
    constexpr int K = ff_policy<POL>::K;

    {
        const long long* p = table;
        const int n_in = (int)p[FM_NIN];
        const int vec = (int)p[FM_VEC];
        ff_load_tile<BM, WMAX>(sX, reinterpret_cast<const float*>(p[FM_X]), row0, rows, n_in,
                               (vec & FM_VEC_X) != 0, tid);
        ff_load_tile<WMAX, WMAX>(sW0, reinterpret_cast<const float*>(p[FM_W]), 0, (int)p[FM_NOUT], n_in,
                                 (vec & FM_VEC_W) != 0, tid);
        cp_async_commit();
    }

    for (int l = 0; l < L; ++l) {
        const long long* p = table + (long long)l * FM_FIELDS;
        const int n_in = (int)p[FM_NIN];
        const int n_out = (int)p[FM_NOUT];
        float* sW = sW0 + (l & 1) * (WMAX * WMAX);
        cp_async_wait<0>();
        ff_round_tile<POL, WMAX, WMAX>(sW, tid);
        __syncthreads();   // sX = X_l, sW = W_l (rounded)
        if (l + 1 < L) {
            const long long* q = p + FM_FIELDS;
            ff_load_tile<WMAX, WMAX>(sW0 + ((l + 1) & 1) * (WMAX * WMAX), reinterpret_cast<const float*>(q[FM_W]),
                                     0, (int)q[FM_NOUT], (int)q[FM_NIN], (q[FM_VEC] & FM_VEC_W) != 0, tid);
            cp_async_commit();
        }
        if (l > 0) {
            const long long* q = p - FM_FIELDS;
            ff_store_tile<BM, WMAX>(sX, reinterpret_cast<float*>(q[FM_AOUT]), row0, rows, n_in,
                                    (q[FM_VEC] & FM_VEC_AOUT) != 0, tid);
        }
        float acc[2][4][4];
        ff_gemm_rows<POL, WMAX, 0>(sX, sW, ff_roundup(n_in, K), m0, c0, g, t, acc);
        __syncthreads();   // every read of sX for layer l is done
        ff_fwd_epilogue_any<WMAX, POL == FF_POL_BF16>((int)p[FM_ACT], acc, sX, reinterpret_cast<const float*>(p[FM_B]),
                                  reinterpret_cast<float*>(p[FM_ZOUT]), row0, rows, n_out, m0, c0, g, t);
        // the next iteration's barrier orders these sX writes before the next reads
    }
    __syncthreads();
    const long long* q = table + (long long)(L - 1) * FM_FIELDS;
    ff_store_tile<BM, WMAX>(sX, reinterpret_cast<float*>(q[FM_AOUT]), row0, rows, (int)q[FM_NOUT],
                            (q[FM_VEC] & FM_VEC_AOUT) != 0, tid);
}

// ============================================================= 2. backward
// Per tile of BM rows, layers i = L-1 .. 0, with delta_i in sD (delta_{L-1} = delta_last):
//   wait for this layer's copies (sA <- X_i, sW <- W_i), round own W chunks    | barrier
//   [NBUF == 2: issue the next layer's (or next tile's layer L-1) copies into the other buffers]
//   db partials of sD -> sScr;  dW: workspace slice (+)= sD^T sA;
//   delta_{i-1} = (sD @ sW) * g'_{i-1}(sA or Z)   (registers; skipped for i = 0 without delta_in)
//                                                                              | barrier
//   [NBUF == 1: issue the next copies]  [i = 0: issue the next tile's delta_last -> sD]
//   db: threads < WMAX add the partials in order into the workspace
//   delta_{i-1} -> sD (i > 0) or -> delta_in (i = 0)
// NBUF = 2 (double-buffered sA and sW) at WMAX 64, 1 at WMAX 128.  Persistent: block b takes
// tiles b, b + G, ... (G = gridDim.x <= n_tiles, so each block writes its whole slice).
// Launch: block (256,1,1); grid (G,1,1); dynamic smem
//   (BM + NBUF (BM + WMAX)) * WMAX * 4 + 2 * 256 * 4 bytes: sD [BM][WMAX], sA [NBUF][BM][WMAX],
//   sW [NBUF][WMAX][WMAX], sScr [2 * 256]  (<POL, 128, 64>: 133,120 B; <POL, 64, 128>: 133,120 B).
template <int POL, int BM, int WMAX>
__global__ void __launch_bounds__(FM_NT, 1)
fused_family_bwd(const long long* __restrict__ table, int L, int B,
                 const float* __restrict__ delta_last, int vec_dl,
                 float* delta_in, int want_din, int vec_din,
                 float* ws, long long ws_stride, int n_tiles) {
    constexpr int WN = WMAX / 32;
    static_assert(WMAX % 32 == 0 && FF_WARPS % WN == 0 && BM == 32 * (FF_WARPS / WN), "backward warp tiling");
    constexpr int NBUF = WMAX <= 64 ? 2 : 1;
    constexpr int LS = WMAX * WMAX + WMAX;   // workspace floats per layer
    constexpr int G2 = FM_NT / (WMAX / 2);   // row groups of the db partial sums
    constexpr int K = ff_policy<POL>::K;
    constexpr bool BF16 = POL == FF_POL_BF16;   // the deltas written back stored as bf16 values
    extern __shared__ __align__(16) float ff_smem[];
    float* sD = ff_smem;
    float* sA0 = sD + BM * WMAX;
    float* sW0 = sA0 + NBUF * BM * WMAX;
    float* sScr = sW0 + NBUF * WMAX * WMAX;
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int m0 = 32 * (warp / WN), c0 = 32 * (warp % WN);
    float* wsb = ws + (long long)blockIdx.x * ws_stride;
    const int n_last = (int)table[(long long)(L - 1) * FM_FIELDS + FM_NOUT];

    // issue the copies of layer i of the tile at row0 into buffer b
    auto issue_layer = [&](int i, long long r0, int b) {
        const long long* p = table + (long long)i * FM_FIELDS;
        const int n_in = (int)p[FM_NIN];
        const int vec = (int)p[FM_VEC];
        const int rws = (int)min((long long)BM, (long long)B - r0);
        ff_load_tile<BM, WMAX>(sA0 + b * (BM * WMAX), reinterpret_cast<const float*>(p[FM_X]), r0, rws, n_in,
                               (vec & FM_VEC_X) != 0, tid);
        if (i > 0 || want_din != 0)
            ff_load_tile<WMAX, WMAX>(sW0 + b * (WMAX * WMAX), reinterpret_cast<const float*>(p[FM_W]), 0,
                                     (int)p[FM_NOUT], n_in, (vec & FM_VEC_W) != 0, tid);
        cp_async_commit();
    };

    {
        const long long r0 = (long long)blockIdx.x * BM;
        ff_load_tile<BM, WMAX>(sD, delta_last, r0, (int)min((long long)BM, (long long)B - r0), n_last,
                               vec_dl != 0, tid);
        issue_layer(L - 1, r0, 0);
    }

    bool first = true;
    int buf = 0;
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const long long row0 = (long long)tile * BM;
        const int rows = (int)min((long long)BM, (long long)B - row0);
        const bool more_tiles = tile + (int)gridDim.x < n_tiles;
        const long long next_row0 = row0 + (long long)gridDim.x * BM;

        for (int i = L - 1; i >= 0; --i) {
            const long long* p = table + (long long)i * FM_FIELDS;
            const int n_in = (int)p[FM_NIN];
            const int n_out = (int)p[FM_NOUT];
            const int vec = (int)p[FM_VEC];
            const bool need_delta = i > 0 || want_din != 0;
            const bool has_next = i > 0 || more_tiles;
            float* sA = sA0 + buf * (BM * WMAX);
            float* sW = sW0 + buf * (WMAX * WMAX);
            cp_async_wait<0>();
            if (need_delta) ff_round_tile<POL, WMAX, WMAX>(sW, tid);
            __syncthreads();   // sD = delta_i, sA = X_i, sW = W_i (rounded)
            if (NBUF == 2 && has_next) {
                if (i > 0) issue_layer(i - 1, row0, buf ^ 1);
                else       issue_layer(L - 1, next_row0, buf ^ 1);
            }

            float* wsl = wsb + (long long)i * LS;
            ff_db_partial<BM, WMAX>(sD, sScr, rows, tid);
            ff_gemm_dw<POL, WMAX>(sD, sA, ff_roundup(rows, K), wsl, first, tid);

            float acc[2][4][4];
            if (need_delta) {
                ff_gemm_rows<POL, WMAX, 1>(sD, sW, ff_roundup(n_out, K), m0, c0, g, t, acc);
                ff_bwd_epilogue_any<WMAX>((int)p[FM_ACTX], acc, sA, reinterpret_cast<const float*>(p[FM_ZX]),
                                          (vec & FM_VEC_ZX) != 0, row0, rows, n_in, m0, c0, g, t);
            }
            __syncthreads();   // every read of sD, sA, sW of this layer and the sScr writes are done

            if (NBUF == 1 && has_next) {
                if (i > 0) issue_layer(i - 1, row0, 0);
                else       issue_layer(L - 1, next_row0, 0);
            }
            if (i == 0 && more_tiles)   // no one reads or writes sD until the next barrier
                ff_load_tile<BM, WMAX>(sD, delta_last, next_row0, (int)min((long long)BM, (long long)B - next_row0),
                                       n_last, vec_dl != 0, tid);
            cp_async_commit();

            if (tid < WMAX) {
                float s = sScr[tid];
#pragma unroll
                for (int q = 1; q < G2; ++q) s += sScr[q * WMAX + tid];
                float* dst = wsl + WMAX * WMAX + tid;
                *dst = first ? s : *dst + s;
            }
            if (i > 0) {   // delta_{i-1} -> sD, zero outside [0, rows) x [0, n_in)
#pragma unroll
                for (int ii = 0; ii < 2; ++ii)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int m = m0 + 16 * ii + 8 * h + g;
                        const bool ok = m < rows;
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                            const int k = c0 + 8 * j + 2 * t;
                            float2 v;
                            v.x = ok && k < n_in ? ff_stored<BF16>(acc[ii][j][2 * h]) : 0.f;
                            v.y = ok && k + 1 < n_in ? ff_stored<BF16>(acc[ii][j][2 * h + 1]) : 0.f;
                            *reinterpret_cast<float2*>(sD + ff_off<WMAX>(m, k)) = v;
                        }
                    }
            } else if (want_din) {   // delta entering the run -> global (B x n_in)
#pragma unroll
                for (int ii = 0; ii < 2; ++ii)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int m = m0 + 16 * ii + 8 * h + g;
                        if (m >= rows) continue;
                        float* drow = delta_in + (row0 + m) * (long long)n_in;
#pragma unroll
                        for (int j = 0; j < 4; ++j) {
                            const int k = c0 + 8 * j + 2 * t;
                            if (k >= n_in) continue;
                            if (vec_din) {
                                *reinterpret_cast<float2*>(drow + k) =
                                    make_float2(ff_stored<BF16>(acc[ii][j][2 * h]),
                                                ff_stored<BF16>(acc[ii][j][2 * h + 1]));
                            } else {
                                drow[k] = ff_stored<BF16>(acc[ii][j][2 * h]);
                                if (k + 1 < n_in) drow[k + 1] = ff_stored<BF16>(acc[ii][j][2 * h + 1]);
                            }
                        }
                    }
            }
            if (NBUF == 2) buf ^= 1;
        }
        first = false;
    }
    cp_async_wait<0>();   // nothing is pending past the last tile; keep the groups balanced anyway
}

// ============================================================= 3. reduce of the partials
// For layer i = blockIdx.y: dW_i[n][k] = sum_{b < G} ws[b * ws_stride + i * LS + n * WMAX + k],
// db_i[n] likewise at offset WMAX * WMAX + n; summed in block order b = 0, 1, ... (bitwise
// reproducible), 4 loads in flight.
// Launch: block (256,1,1); grid (ceil(max_i (n_out n_in + n_out) / 256), L, 1); no smem.
template <int WMAX>
__global__ void __launch_bounds__(256)
fused_family_reduce(const long long* __restrict__ table, const float* __restrict__ ws, long long ws_stride, int G) {
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
        int b = 0;
        for (; b + 4 <= G; b += 4) {
            const float a0 = src[(long long)b * ws_stride];
            const float a1 = src[(long long)(b + 1) * ws_stride];
            const float a2 = src[(long long)(b + 2) * ws_stride];
            const float a3 = src[(long long)(b + 3) * ws_stride];
            s += a0;
            s += a1;
            s += a2;
            s += a3;
        }
        for (; b < G; ++b) s += src[(long long)b * ws_stride];
        *dst = s;
    }
}
