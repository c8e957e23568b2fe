// fused_mlp_tf32.cu: the TF32 tensor-core variant of fused_mlp.cu's forward and
// backward kernels.  Concatenated after activations.cuh and fused_mlp.cu (it uses
// their FM_* table fields, FM_NT and the reduce kernel fused_mlp_reduce, whose
// workspace layout it shares) by gpubp/backends/cuda_source.py; launched by
// gpubp/backends/cuda_fused.py with precision="tf32".
//
// Same contract as the fp32 kernels: a tile of BM batch rows stays in shared memory
// across all layers, everything padded with zeros to WMAX columns / BM rows, the
// same epilogues (bias + activation; g' for the backward chain), the same
// deterministic persistent backward (per-block workspace slices, no atomics,
// reduced in block order by fused_mlp_reduce).  What changes: every tile GEMM
// (X @ W^T forward, delta @ W and delta^T @ X backward) runs on the tensor cores
// with inline PTX mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (sm_80+,
// no <mma.h>), operands rounded to TF32 with cvt.rna.tf32.f32 (round to nearest,
// ties away), fp32 accumulation.  W is rounded once when it is staged into
// shared memory (it is only ever an mma operand); activations and deltas stay
// fp32 in shared memory (A_out, g', db need the fp32 values) and are rounded as
// their fragments are loaded.  The reduction length of each mma loop is rounded
// up to 8 (the mma k); the padding is exact zeros in both operands.
//
// ---- m16n8k8 TF32 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k8", .tf32)
// lane = threadIdx.x % 32, g = lane >> 2 (groupID, 0..7), t = lane & 3 (0..3).
//   A (16 x 8, row-major, "row"): a0 = A[g][t]      a1 = A[g + 8][t]
//                                  a2 = A[g][t + 4]  a3 = A[g + 8][t + 4]
//   B (8 x 8, K x N, "col"):       b0 = B[t][g]      b1 = B[t + 4][g]
//   C, D (16 x 8, fp32):           c0 = C[g][2t]     c1 = C[g][2t + 1]
//                                  c2 = C[g + 8][2t] c3 = C[g + 8][2t + 1]
// So a warp's fragment load touches, in an R x C row-major tile, either
//   pattern 1: rows r0 + g (8 rows), columns c0 + t (4 columns)   [A, and B read along k]
//   pattern 2: rows r0 + t (4 rows), columns c0 + g (8 columns)   [B read across k, A^T]
// with r0, c0 multiples of 8 (and the +4 / +8 variants).
//
// ---- shared-memory layout: unpadded pitch WMAX, XOR swizzle per row
// Element (r, c) of every tile (sX, sD, sA, sW) lives at
//     r * WMAX + (c ^ ft_swz(r)),   ft_swz(r) = 8 (r & 3) + 4 ((r >> 2) & 1)
// (a multiple of 4 below 32: float4 / float2 groups stay contiguous and aligned,
// a 32-column block maps onto itself).  Both fragment patterns are conflict-free
// (banks = address mod 32; WMAX % 32 == 0, so a row starts at bank 0):
//   pattern 1: bank = (c0 + t) ^ ft_swz(g): bits 0-1 = t, bits 2-4 = a bijection of
//              g (ft_swz(r) / 4 = 2 (r & 3) + (r >> 2 & 1) is a permutation of 0..7) -> 32 banks;
//   pattern 2: bank = (c0 + g) ^ (8 t + 4 e) (e = 0 or 1 for the +4 rows): bits 0-1 = g & 3,
//              bit 2 = (g >> 2) ^ e, bits 3-4 = (c0 / 8) ^ t -> 32 banks;
//   float2 epilogue accesses (rows g, columns c0 + 2t, +1; a half-warp per wavefront):
//              bank = (c0 + 2t + j) ^ ft_swz(g), g in 0..3 or 4..7 -> 16 distinct pairs;
//   float4 tile copies (8 consecutive float4 of one row per quarter-warp): a permutation
//              of one 32-bank row block.
//
// ---- warp tiling (8 warps, w = warp index)
//   forward Z = X W^T and backward D' = D W (BM x WMAX outputs): warp tile 32 x 32,
//     WN = WMAX / 32 warps across the columns, 8 / WN down the rows (BM must be 256 / WN:
//     BM 128 for WMAX 64, BM 64 for WMAX 128); warp w: rows 32 (w / WN), columns 32 (w % WN);
//     per thread acc[2][4][4] = m16 tiles i x n8 tiles j x c0..c3.
//   dW = D^T A (WMAX x WMAX outputs): 32 rows (n_out) x KW columns (n_in) per warp, WMAX / 32
//     warps down, 8 / (WMAX / 32) across, KW = 16 (WMAX 64) or 64 (WMAX 128);
//     per thread acc[2][KW / 8][4].

#define FT_WARPS (FM_NT / 32)

__device__ __forceinline__ int ft_swz(int r) { return ((r & 3) << 3) | (((r >> 2) & 1) << 2); }

template <int WMAX>
__device__ __forceinline__ int ft_off(int r, int c) { return r * WMAX + (c ^ ft_swz(r)); }

__device__ __forceinline__ int ft_round8(int x) { return (x + 7) & ~7; }

// fp32 -> tf32 (round to nearest, ties away from zero); the result is a .b32 with
// the low 13 mantissa bits zero, usable as an fp32 value too.
__device__ __forceinline__ unsigned ft_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// D = A B + D on one m16n8k8 tile (fragments as documented above).
__device__ __forceinline__ void ft_mma(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                       unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Copy a ROWS x WMAX tile of the row-major X (ld n, rows [0, rows) valid) into the
// swizzled tile s, zero outside [0, rows) x [0, n); ROUND: store TF32-rounded values.
// Slots as fm_load_tile (coalesced 16-byte reads, conflict-free float4 writes).
template <int ROWS, int WMAX, bool ROUND>
__device__ __forceinline__ void ft_load_tile(float* s, const float* __restrict__ X, long long row0,
                                             int rows, int n, bool vec, int tid) {
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
        if (ROUND) {
            v.x = __uint_as_float(ft_tf32(v.x));
            v.y = __uint_as_float(ft_tf32(v.y));
            v.z = __uint_as_float(ft_tf32(v.z));
            v.w = __uint_as_float(ft_tf32(v.w));
        }
        *reinterpret_cast<float4*>(s + ft_off<WMAX>(m, k)) = v;
    }
}

// Rows [0, rows) x columns [0, n) of the swizzled tile s into row-major Y (ld n).
template <int ROWS, int WMAX>
__device__ __forceinline__ void ft_store_tile(const float* s, float* Y, long long row0, int rows, int n,
                                              bool vec, int tid) {
    constexpr int V = WMAX / 4;
    constexpr int ITERS = ROWS * V / FM_NT;
#pragma unroll 4
    for (int it = 0; it < ITERS; ++it) {
        const int slot = tid + it * FM_NT;
        const int m = slot / V;
        const int k = (slot - m * V) * 4;
        if (m < rows && k < n) {
            const float4 v = *reinterpret_cast<const float4*>(s + ft_off<WMAX>(m, k));
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
// A (BM x WMAX, pattern-1 fragments) times a WMAX x WMAX operand into the warp's
// 32 x 32 output tile at (m0, c0).  MODE 0 (forward): out[m][n] = sum_k A[m][k] W[n][k],
// B[k][n] = W[n][k] read along W's rows (pattern 1).  MODE 1 (backward data):
// out[m][k] = sum_n A[m][n] W[n][k], B[n][k] = W[n][k] read down W's columns
// (pattern 2).  Reduction over [0, R8), R8 a multiple of 8, sequentially in steps of 8.
// W is already TF32 in shared memory; A is rounded here.
template <int WMAX, int MODE>
__device__ __forceinline__ void ft_gemm_rows(const float* sA, const float* sW, int R8, int m0, int c0,
                                             int g, int t, float (&acc)[2][4][4]) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;
    // pattern 1 (rows ... + g, g = row & 7): column (k0 + t + 4e) ^ sg = (k0 ^ shi) + o_e
    const int sg = ft_swz(g);
    const int shi = sg & 24;
    const int o0 = t + (sg & 4), o1 = t + ((sg & 4) ^ 4);
    const float* ar = sA + (m0 + g) * WMAX;
    // MODE 0: W rows c0 + 8j + g (pattern 1, same offsets as A)
    const float* wr0 = sW + (c0 + g) * WMAX;
    // MODE 1: W rows k0 + t (+4), columns c0 + 8j + g: ((c0 + 8j) ^ 8t) + (g or g ^ 4)
    int cw[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) cw[j] = ((c0 + 8 * j) ^ (8 * t)) + g;
    const float* wt0 = sW + t * WMAX;                        // row t, e = 0
    const float* wt1 = sW + (t + 4) * WMAX + ((g ^ 4) - g);  // row t + 4, e = 1: column g ^ 4

#pragma unroll (MODE == 0 ? 2 : 1)   // 1 for the backward: no spills under its 128-register cap
    for (int k0 = 0; k0 < R8; k0 += 8) {
        const int kx = k0 ^ shi;
        unsigned a[2][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float* p = ar + 16 * i * WMAX + kx;
            a[i][0] = ft_tf32(p[o0]);
            a[i][1] = ft_tf32(p[8 * WMAX + o0]);
            a[i][2] = ft_tf32(p[o1]);
            a[i][3] = ft_tf32(p[8 * WMAX + o1]);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if (MODE == 0) {
                const float* q = wr0 + 8 * j * WMAX + kx;
                b[j][0] = __float_as_uint(q[o0]);
                b[j][1] = __float_as_uint(q[o1]);
            } else {
                b[j][0] = __float_as_uint(wt0[k0 * WMAX + cw[j]]);
                b[j][1] = __float_as_uint(wt1[k0 * WMAX + cw[j]]);
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) ft_mma(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
    }
}

// Weight gradient of one tile into this block's workspace slice:
//   wsl[n * WMAX + k] (+)= sum_{m < R8} sD[m][n] sA[m][k]
// over the warp's 32 x KW block at (nw, kw) of the padded WMAX x WMAX (no masks; the
// padded entries are never read by the reduce).  A[n][m] = sD[m][n] and B[m][k] = sA[m][k]
// are both pattern-2 loads (rows m0 + t (+4), columns ... + g), rounded here.
// first: write, not read-modify-write; otherwise the old partial is fetched before the
// loop and added after it (partial + this tile's sum: a fixed order).
template <int WMAX>
__device__ __forceinline__ void ft_gemm_dw(const float* sD, const float* sA, int R8, float* wsl, bool first,
                                           int warp, int g, int t) {
    constexpr int WNW = WMAX / 32;         // warps down n
    constexpr int WKW = FT_WARPS / WNW;    // warps across k
    constexpr int KW = WMAX / WKW;         // columns per warp: 16 or 64
    constexpr int NJ = KW / 8;
    static_assert(WNW * WKW == FT_WARPS && KW % 8 == 0, "dW warp tiling");
    const int nw = 32 * (warp % WNW);
    const int kw = KW * (warp / WNW);

    float2 prev[2][NJ][2];
    if (!first) {
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

    // row m0 + t (e = 0): column c ^ 8t; row m0 + t + 4 (e = 1): column c ^ (8t + 4), which for
    // c = base + g (base % 8 == 0) is ((base ^ 8t) + g) + ((g ^ 4) - g): same offsets, shifted base.
    int ca[2][2], cb[NJ];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) ca[i][h] = ((nw + 16 * i + 8 * h) ^ (8 * t)) + g;
#pragma unroll
    for (int j = 0; j < NJ; ++j) cb[j] = ((kw + 8 * j) ^ (8 * t)) + g;
    const int d4 = (g ^ 4) - g;
    const float* d0 = sD + t * WMAX;
    const float* d1 = sD + (t + 4) * WMAX + d4;
    const float* x0 = sA + t * WMAX;
    const float* x1 = sA + (t + 4) * WMAX + d4;

#pragma unroll 1   // unrolling spills the <128, 64> backward under its 128-register cap
    for (int m0 = 0; m0 < R8; m0 += 8) {
        const int ro = m0 * WMAX;
        unsigned a[2][4], b[NJ][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            a[i][0] = ft_tf32(d0[ro + ca[i][0]]);   // A[n = nw+16i+g][m = m0+t]
            a[i][1] = ft_tf32(d0[ro + ca[i][1]]);   // A[n + 8][m0 + t]
            a[i][2] = ft_tf32(d1[ro + ca[i][0]]);   // A[n][m0 + t + 4]
            a[i][3] = ft_tf32(d1[ro + ca[i][1]]);   // A[n + 8][m0 + t + 4]
        }
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
            b[j][0] = ft_tf32(x0[ro + cb[j]]);      // B[m0 + t][k = kw+8j+g]
            b[j][1] = ft_tf32(x1[ro + cb[j]]);      // B[m0 + t + 4][k]
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < NJ; ++j) ft_mma(acc[i][j], a[i][0], a[i][1], a[i][2], a[i][3], b[j][0], b[j][1]);
    }

#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                float2 v = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                if (!first) {
                    v.x = prev[i][j][h].x + v.x;
                    v.y = prev[i][j][h].y + v.y;
                }
                *reinterpret_cast<float2*>(wsl + (nw + 16 * i + 8 * h + g) * WMAX + kw + 8 * j + 2 * t) = v;
            }
}

// ------------------------------------------------------------- epilogues
// Forward, on the warp's 32 x 32 tile at (m0, c0): z = acc + b, a = g(z);
// sX[m][n] = a for n < n_out, else 0; Z_out (may be null) gets z for valid (m, n).
// acc[i][j][2h + q] is (m = m0 + 16i + 8h + g, n = c0 + 8j + 2t + q).
template <int ACT, int WMAX>
__device__ __forceinline__ void ft_fwd_epilogue(float (&acc)[2][4][4], float* sX, const float* __restrict__ bias,
                                                float* Zout, long long row0, int rows, int n_out,
                                                int m0, int c0, int g, int t) {
    const int sg = ft_swz(g);
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
                const float z0 = acc[i][j][2 * h] + bv[j][0];
                const float z1 = acc[i][j][2 * h + 1] + bv[j][1];
                float2 a;
                a.x = n < n_out ? act_forward<ACT, float>(z0) : 0.f;
                a.y = n + 1 < n_out ? act_forward<ACT, float>(z1) : 0.f;
                *reinterpret_cast<float2*>(sX + m * WMAX + (n ^ sg)) = a;   // (m & 7) == g
                if (Zout != nullptr && row_ok) {
                    if (n < n_out) Zout[grow + n] = z0;
                    if (n + 1 < n_out) Zout[grow + n + 1] = z1;
                }
            }
        }
}

template <int WMAX>
__device__ __forceinline__ void ft_fwd_epilogue_any(int act, float (&acc)[2][4][4], float* sX,
                                                    const float* __restrict__ bias, float* Zout, long long row0,
                                                    int rows, int n_out, int m0, int c0, int g, int t) {
    switch (act) {
        case ACT_SIGMOID:    ft_fwd_epilogue<ACT_SIGMOID,    WMAX>(acc, sX, bias, Zout, row0, rows, n_out, m0, c0, g, t); break;
        case ACT_TANH:       ft_fwd_epilogue<ACT_TANH,       WMAX>(acc, sX, bias, Zout, row0, rows, n_out, m0, c0, g, t); break;
        case ACT_RELU:       ft_fwd_epilogue<ACT_RELU,       WMAX>(acc, sX, bias, Zout, row0, rows, n_out, m0, c0, g, t); break;
        case ACT_LEAKY_RELU: ft_fwd_epilogue<ACT_LEAKY_RELU, WMAX>(acc, sX, bias, Zout, row0, rows, n_out, m0, c0, g, t); break;
        case ACT_GELU:       ft_fwd_epilogue<ACT_GELU,       WMAX>(acc, sX, bias, Zout, row0, rows, n_out, m0, c0, g, t); break;
        case ACT_SILU:       ft_fwd_epilogue<ACT_SILU,       WMAX>(acc, sX, bias, Zout, row0, rows, n_out, m0, c0, g, t); break;
        default:             ft_fwd_epilogue<ACT_IDENTITY,   WMAX>(acc, sX, bias, Zout, row0, rows, n_out, m0, c0, g, t); break;
    }
}

// Backward: acc (delta @ W at m = m0 + 16i + 8h + g, k = c0 + 8j + 2t + q) *= g'(.), g' from
// the layer's input activation sA[m][k] or, for gelu/silu, from Zx (global, ld n_in; read
// only for valid (m, k), 0 elsewhere; float2 reads when vecz: n_in % 4 == 0, 16-byte aligned).
template <int ACT, int WMAX>
__device__ __forceinline__ void ft_bwd_epilogue(float (&acc)[2][4][4], const float* sA,
                                                const float* __restrict__ Zx, bool vecz, long long row0,
                                                int rows, int n_in, int m0, int c0, int g, int t) {
    const bool need_z = act_needs_z<ACT>::value;
    const bool need_a = !need_z && ACT != ACT_IDENTITY;
    if (!need_z && !need_a) return;   // identity: g' = 1
    const int sg = ft_swz(g);
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
                    src = *reinterpret_cast<const float2*>(sA + m * WMAX + (k ^ sg));
                }
                acc[i][j][2 * h] = acc[i][j][2 * h] * act_grad<ACT, float>(src.x, src.x);
                acc[i][j][2 * h + 1] = acc[i][j][2 * h + 1] * act_grad<ACT, float>(src.y, src.y);
            }
        }
}

template <int WMAX>
__device__ __forceinline__ void ft_bwd_epilogue_any(int act, float (&acc)[2][4][4], const float* sA,
                                                    const float* __restrict__ Zx, bool vecz, long long row0,
                                                    int rows, int n_in, int m0, int c0, int g, int t) {
    switch (act) {
        case ACT_SIGMOID:    ft_bwd_epilogue<ACT_SIGMOID,    WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, m0, c0, g, t); break;
        case ACT_TANH:       ft_bwd_epilogue<ACT_TANH,       WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, m0, c0, g, t); break;
        case ACT_RELU:       ft_bwd_epilogue<ACT_RELU,       WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, m0, c0, g, t); break;
        case ACT_LEAKY_RELU: ft_bwd_epilogue<ACT_LEAKY_RELU, WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, m0, c0, g, t); break;
        case ACT_GELU:       ft_bwd_epilogue<ACT_GELU,       WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, m0, c0, g, t); break;
        case ACT_SILU:       ft_bwd_epilogue<ACT_SILU,       WMAX>(acc, sA, Zx, vecz, row0, rows, n_in, m0, c0, g, t); break;
        default: break;   // identity
    }
}

// ============================================================= 1. forward (TF32)
// As fused_mlp_fwd: for every layer l, Z_l = X_l @ W_l^T + b_l, A_l = g_l(Z_l) -> A_out
// (and Z_out where given); X_0 = table[0].X, X_{l+1} = A_l kept in shared memory.
// Launch: block (256,1,1); grid (ceil(B / BM), 1, 1), one tile of BM rows per block;
//   BM = 256 / (WMAX / 32): <128, 64> or <64, 128>;
//   dynamic smem (BM + WMAX) * WMAX * 4 bytes: sX [BM][WMAX] then sW [WMAX][WMAX], both
//   swizzled (BM 128 / WMAX 64: 49,152 B; BM 64 / WMAX 128: 98,304 B).
// Per layer: mma GEMM (reads sX, sW) | barrier | stage W_{l+1} (TF32-rounded) into sW +
//   epilogue into sX (+ Z_out) | barrier | copy sX -> A_out (the same ordering argument
//   as the fp32 kernel).
template <int BM, int WMAX>
__global__ void __launch_bounds__(FM_NT, 2)
fused_mlp_fwd_tf32(const long long* __restrict__ table, int L, int B) {
    constexpr int WN = WMAX / 32;
    static_assert(WMAX % 32 == 0 && FT_WARPS % WN == 0 && BM == 32 * (FT_WARPS / WN), "forward warp tiling");
    extern __shared__ __align__(16) float fm_smem[];
    float* sX = fm_smem;
    float* sW = fm_smem + BM * WMAX;
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int m0 = 32 * (warp / WN), c0 = 32 * (warp % WN);
    const long long row0 = (long long)blockIdx.x * BM;
    const int rows = (int)min((long long)BM, (long long)B - row0);

    {
        const long long* p = table;
        const int n_in = (int)p[FM_NIN];
        const int vec = (int)p[FM_VEC];
        ft_load_tile<BM, WMAX, false>(sX, reinterpret_cast<const float*>(p[FM_X]), row0, rows, n_in,
                                      (vec & FM_VEC_X) != 0, tid);
        ft_load_tile<WMAX, WMAX, true>(sW, reinterpret_cast<const float*>(p[FM_W]), 0, (int)p[FM_NOUT], n_in,
                                       (vec & FM_VEC_W) != 0, tid);
    }
    __syncthreads();

    for (int l = 0; l < L; ++l) {
        const long long* p = table + (long long)l * FM_FIELDS;
        const int n_in = (int)p[FM_NIN];
        const int n_out = (int)p[FM_NOUT];
        float acc[2][4][4];
        ft_gemm_rows<WMAX, 0>(sX, sW, ft_round8(n_in), m0, c0, g, t, acc);
        __syncthreads();   // every read of sX and sW for layer l is done
        if (l + 1 < L) {
            const long long* q = p + FM_FIELDS;
            ft_load_tile<WMAX, WMAX, true>(sW, reinterpret_cast<const float*>(q[FM_W]), 0, (int)q[FM_NOUT],
                                           (int)q[FM_NIN], (q[FM_VEC] & FM_VEC_W) != 0, tid);
        }
        ft_fwd_epilogue_any<WMAX>((int)p[FM_ACT], acc, sX, reinterpret_cast<const float*>(p[FM_B]),
                                  reinterpret_cast<float*>(p[FM_ZOUT]), row0, rows, n_out, m0, c0, g, t);
        __syncthreads();   // sX holds A_l, sW holds W_{l+1}
        ft_store_tile<BM, WMAX>(sX, reinterpret_cast<float*>(p[FM_AOUT]), row0, rows, n_out,
                                (p[FM_VEC] & FM_VEC_AOUT) != 0, tid);
    }
}

// ============================================================= 2. backward (TF32)
// As fused_mlp_bwd (same arguments, same workspace layout: per block g at g * ws_stride,
// per layer i at i * (WMAX*WMAX + WMAX): dW [WMAX][WMAX] then db [WMAX]; reduced by
// fused_mlp_reduce<WMAX>).  Per tile of BM rows, layers i = L-1 .. 0, delta_i in sD:
//   sA <- X_i, sW <- W_i (TF32-rounded)                             | barrier
//   db partials: column sums of sD (fp32 FADD), 256/WMAX row groups -> sScr
//   dW: workspace slice (+)= sD^T @ sA        (mma, reduction over round8(rows))
//   delta_{i-1} = (sD @ sW) * g'_{i-1}        (mma, reduction over round8(n_out); registers)
//                                                                    | barrier
//   db: threads < WMAX add the partials in order into the workspace
//   delta_{i-1} -> sD (i > 0, zero outside [0, rows) x [0, n_in)) or -> delta_in (i = 0)
// Launch: block (256,1,1); grid (G,1,1), G <= n_tiles persistent blocks, block g takes
//   tiles g, g + G, ...; BM = 256 / (WMAX / 32): <128, 64> or <64, 128>;
//   dynamic smem (2 BM + WMAX) * WMAX * 4 + 256 * 4 bytes: sD [BM][WMAX], sA [BM][WMAX],
//   sW [WMAX][WMAX] (swizzled), sScr [256]  (BM 128 / WMAX 64: 82,944 B; BM 64 / WMAX 128:
//   132,096 B).
template <int BM, int WMAX>
__global__ void __launch_bounds__(FM_NT, (WMAX <= 64 ? 2 : 1))
fused_mlp_bwd_tf32(const long long* __restrict__ table, int L, int B,
                   const float* __restrict__ delta_last, int vec_dl,
                   float* delta_in, int want_din, int vec_din,
                   float* ws, long long ws_stride, int n_tiles) {
    constexpr int WN = WMAX / 32;
    static_assert(WMAX % 32 == 0 && FT_WARPS % WN == 0 && BM == 32 * (FT_WARPS / WN), "backward warp tiling");
    constexpr int LS = WMAX * WMAX + WMAX;   // workspace floats per layer
    constexpr int G = FM_NT / WMAX;          // row groups of the db partial sums
    extern __shared__ __align__(16) float fm_smem[];
    float* sD = fm_smem;
    float* sA = sD + BM * WMAX;
    float* sW = sA + BM * WMAX;
    float* sScr = sW + WMAX * WMAX;
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int m0 = 32 * (warp / WN), c0 = 32 * (warp % WN);
    const int sg = ft_swz(g);
    float* wsb = ws + (long long)blockIdx.x * ws_stride;
    const int n_last = (int)table[(long long)(L - 1) * FM_FIELDS + FM_NOUT];

    bool first = true;
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const long long row0 = (long long)tile * BM;
        const int rows = (int)min((long long)BM, (long long)B - row0);
        ft_load_tile<BM, WMAX, false>(sD, delta_last, row0, rows, n_last, vec_dl != 0, tid);

        for (int i = L - 1; i >= 0; --i) {
            const long long* p = table + (long long)i * FM_FIELDS;
            const int n_in = (int)p[FM_NIN];
            const int n_out = (int)p[FM_NOUT];
            const int vec = (int)p[FM_VEC];
            const bool need_delta = i > 0 || want_din != 0;
            ft_load_tile<BM, WMAX, false>(sA, reinterpret_cast<const float*>(p[FM_X]), row0, rows, n_in,
                                          (vec & FM_VEC_X) != 0, tid);
            if (need_delta)
                ft_load_tile<WMAX, WMAX, true>(sW, reinterpret_cast<const float*>(p[FM_W]), 0, n_out, n_in,
                                               (vec & FM_VEC_W) != 0, tid);
            __syncthreads();   // sD = delta_i, sA = X_i, sW = W_i

            float* wsl = wsb + (long long)i * LS;
            {   // db partial: thread (q, c) sums rows q, q + G, ... of column c (fp32, in order)
                const int q = tid / WMAX, c = tid % WMAX;
                float s = 0.f;
                for (int m = q; m < rows; m += G) s += sD[ft_off<WMAX>(m, c)];
                sScr[tid] = s;   // = sScr[q * WMAX + c]
            }
            ft_gemm_dw<WMAX>(sD, sA, ft_round8(rows), wsl, first, warp, g, t);

            float acc[2][4][4];
            if (need_delta) {
                ft_gemm_rows<WMAX, 1>(sD, sW, ft_round8(n_out), m0, c0, g, t, acc);
                ft_bwd_epilogue_any<WMAX>((int)p[FM_ACTX], acc, sA, reinterpret_cast<const float*>(p[FM_ZX]),
                                          (vec & FM_VEC_ZX) != 0, row0, rows, n_in, m0, c0, g, t);
            }
            __syncthreads();   // every read of sD, sA, sW and the sScr writes of this layer done

            if (tid < WMAX) {
                float s = sScr[tid];
#pragma unroll
                for (int q = 1; q < G; ++q) s += sScr[q * WMAX + tid];
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
                            v.x = ok && k < n_in ? acc[ii][j][2 * h] : 0.f;
                            v.y = ok && k + 1 < n_in ? acc[ii][j][2 * h + 1] : 0.f;
                            *reinterpret_cast<float2*>(sD + m * WMAX + (k ^ sg)) = v;
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
                                    make_float2(acc[ii][j][2 * h], acc[ii][j][2 * h + 1]);
                            } else {
                                drow[k] = acc[ii][j][2 * h];
                                if (k + 1 < n_in) drow[k + 1] = acc[ii][j][2 * h + 1];
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
