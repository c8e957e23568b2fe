// ptx.h: C++ stand-ins, written from the PTX ISA, for the inline-PTX helpers of kernels/*.cu(h).
// Each block starts with "// @override NAME..." and replaces every definition of those names in
// a module's source (tests/support/cuda_emu/__init__.py); a module keeping any other `asm`
// is refused, so a new PTX helper needs its stand-in here first.

// @override to_tf32 ft_tf32
// cvt.rna.tf32.f32: round to 10 mantissa bits, ties away from zero; low 13 bits zero; a carry out
// of the largest finite values gives infinity.  Bit for bit what ptxas (CUDA 13.0, sm_80 and
// sm_90a) emits for it: FSETP.GEU |x|, +INF; @!P IADD x, 0x1000; LOP3 x & 0xffffe000, so infinity
// and NaN only lose their low 13 bits (a NaN with its payload only there becomes infinity).
inline unsigned emu_tf32_bits(float x) {
    const unsigned u = __float_as_uint(x);
    return ((u & 0x7FFFFFFFu) < 0x7F800000u ? u + 0x1000u : u) & 0xFFFFE000u;
}
inline unsigned to_tf32(float x) { return emu_tf32_bits(x); }
inline unsigned ft_tf32(float x) { return emu_tf32_bits(x); }

// @override bf16x2
// cvt.rn.bf16x2.f32 d, hi, lo: each rounded to nearest even, NaN -> canonical 0x7FFF.
inline unsigned emu_bf16_bits(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFFu;
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
inline unsigned bf16x2(float lo, float hi) { return emu_bf16_bits(lo) | (emu_bf16_bits(hi) << 16); }

// @override mma_tf32 mma_bf16 ft_mma
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 and m16n8k16 ...bf16: the warp's 32 lanes
// publish their fragments; each lane then computes its four outputs.  Fragment layouts (PTX ISA,
// "Matrix Fragments for mma.m16n8k8" / "m16n8k16"), g = lane / 4, t = lane % 4:
//   tf32 A 16x8:  a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//   tf32 B 8x8:   b0 (k=t, n=g)  b1 (k=t+4, n=g)
//   bf16 A 16x16: a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..), low half first
//   bf16 B 16x8:  b0 (k=2t..2t+1, n=g)  b1 (k=2t+8.., n=g)
//   C/D 16x8:     c0 (g, 2t)  c1 (g, 2t+1)  c2 (g+8, 2t)  c3 (g+8, 2t+1)
// A .tf32 operand's low 13 bits are not read.  Products are exact in float32 (11 x 11 and
// 8 x 8 significand bits).  The PTX ISA leaves the order and rounding of the sum unspecified:
// modelled as gpubp.precision.matmul models a tensor-core k-step (and as the wgmma stand-in
// does): the instruction's K products summed exactly (float64), rounded once to float32 and
// added to c in float32.
inline float emu_tf32_val(unsigned b) { return __uint_as_float(b & 0xFFFFE000u); }
inline float emu_bf16_val(unsigned h) { return __uint_as_float((h & 0xFFFFu) << 16); }

template <bool BF16>
inline void emu_mma(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    const unsigned mine[6] = {a0, a1, a2, a3, b0, b1};
    constexpr int K = BF16 ? 16 : 8;
    float A[16][16], B[16][8];
    emu::warp_exchange(0xFFFFFFFFu, mine, 6, [&] {
        for (int lane = 0; lane < 32; ++lane) {
            const unsigned* f = emu::slot(lane);
            const int g = lane / 4, t = lane % 4;
            if (!BF16) {
                A[g][t] = emu_tf32_val(f[0]);     A[g + 8][t] = emu_tf32_val(f[1]);
                A[g][t + 4] = emu_tf32_val(f[2]); A[g + 8][t + 4] = emu_tf32_val(f[3]);
                B[t][g] = emu_tf32_val(f[4]);     B[t + 4][g] = emu_tf32_val(f[5]);
            } else {
                const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
                for (int r = 0; r < 4; ++r) {
                    A[rows[r]][cols[r]] = emu_bf16_val(f[r]);
                    A[rows[r]][cols[r] + 1] = emu_bf16_val(f[r] >> 16);
                }
                B[2 * t][g] = emu_bf16_val(f[4]);     B[2 * t + 1][g] = emu_bf16_val(f[4] >> 16);
                B[2 * t + 8][g] = emu_bf16_val(f[5]); B[2 * t + 9][g] = emu_bf16_val(f[5] >> 16);
            }
        }
    });
    const int lane = emu::S().cur->lane, g = lane / 4, t = lane % 4;
    const int rr[4] = {g, g, g + 8, g + 8}, cc[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        double step = 0.0;
        for (int k = 0; k < K; ++k) step += (double)(A[rr[i]][k] * B[k][cc[i]]);
        d[i] = d[i] + (float)step;
    }
}
inline void mma_tf32(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    emu_mma<false>(d, a0, a1, a2, a3, b0, b1);
}
inline void mma_bf16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    emu_mma<true>(d, a0, a1, a2, a3, b0, b1);
}
inline void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    emu_mma<false>(d, a[0], a[1], a[2], a[3], b[0], b[1]);
}
inline void mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    emu_mma<true>(d, a[0], a[1], a[2], a[3], b[0], b[1]);
}
inline void ft_mma(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) {
    emu_mma<false>(d, a0, a1, a2, a3, b0, b1);
}

// @override cp_async16 cp_async16_always cp_async4 cp_async_commit cp_async_wait
// cp.async.{cg,ca}.shared.global [dst], [src], size{, src-size}: src-size 0 zero-fills and reads
// nothing.  The bytes land when cp.async.wait_group retires the group (emu::cp_wait).
inline void cp_async16(unsigned dst, const float* src, bool in) { emu::cp_issue(dst, src, 16, in ? 16 : 0); }
inline void cp_async16(float* dst, const float* src, bool in) { emu::cp_issue(emu::to_shared(dst), src, 16, in ? 16 : 0); }
inline void cp_async16_always(unsigned dst, const float* src) { emu::cp_issue(dst, src, 16, 16); }
inline void cp_async4(unsigned dst, const float* src, bool in) { emu::cp_issue(dst, src, 4, in ? 4 : 0); }
inline void cp_async4(float* dst, const float* src, bool in) { emu::cp_issue(emu::to_shared(dst), src, 4, in ? 4 : 0); }
inline void cp_async_commit() { emu::cp_commit(); }
template <int N> inline void cp_async_wait() { emu::cp_wait(N); }

// @override gemm3_tid
inline int gemm3_tid() { return (int)threadIdx.x; }

// @override mbar_init mbar_init_fence mbar_arrive_expect_tx mbar_arrive mbar_wait
// mbarrier.init / .arrive / .arrive.expect_tx / .try_wait.parity (hopper.cuh): runtime.h's
// emu::Mbar side table (phase, pending and expected arrivals, tx-count).  A wait returns once the
// phase of that parity has completed; one that can never complete ends as a reported deadlock.
// fence.mbarrier_init.release.cluster orders the inits for other threads and the async proxy;
// the emulator's barriers are visible at once, so it does nothing here.
inline void mbar_init(unsigned bar, unsigned count) { emu::mbar_init(bar, count); }
inline void mbar_init_fence() {}
inline void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) { emu::mbar_arrive(bar, true, bytes); }
inline void mbar_arrive(unsigned bar) { emu::mbar_arrive(bar, false, 0); }
inline void mbar_wait(unsigned bar, unsigned parity) { emu::mbar_wait_parity(bar, parity); }

// @override tma_load_2d
// cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [map, {c0, c1}], [bar]
// (emu::tma_load: the box, swizzled as the map says, zero-filled outside the tensor; poison in
// shared memory until a thread waits on bar, then the bytes land and complete on bar).
inline void tma_load_2d(unsigned dst, const TensorMap128* map, unsigned bar, int c0, int c1) {
    const int c[2] = {c0, c1};
    emu::tma_load(dst, map, bar, c, 2);
}

// @override wg_fence wg_commit wg_wait wg_fence_acc
// wgmma.fence / .commit_group / .wait_group N (emu::wgmma_*): the operands of a group's wgmmas are
// read, and their accumulators written, when a wait_group retires the group.  wg_fence_acc is an
// empty inline-PTX statement that only pins registers for the compiler: nothing to do here.
inline void wg_fence() { emu::wgmma_fence(); }
inline void wg_commit() { emu::wgmma_commit(); }
template <int N> inline void wg_wait() { emu::wgmma_wait(N); }
template <int N> inline void wg_fence_acc(float (&)[N]) {}

// @override wg_mma_64x128
// gemm_wgmma.cu's three wgmma.mma_async statements: PREC 2 (TC_BF16) is m64n128k16.f32.bf16.bf16
// with scale-d 1, imm-scale-a = imm-scale-b = 1, imm-trans-a = imm-trans-b = TRANS; any other PREC
// is m64n128k8.f32.tf32.tf32 with scale-d 1, imm-scale-a = imm-scale-b = 1 (K-major only).
template <int PREC, bool TRANS = false>
inline void wg_mma_64x128(float (&d)[64], unsigned long long da, unsigned long long db) {
    static_assert(!TRANS || PREC == 2, "TF32 wgmma reads K-major operands only");
    emu::wgmma_issue(d, 128, PREC == 2, da, db, TRANS, TRANS, true, 1, 1);
}

// @override regs_dec regs_inc
// setmaxnreg.{dec,inc}.sync.aligned.u32 R: the PTX ISA's range for R checked at compile time; the
// whole warpgroup executing it and the block's register pool (emu::setmaxnreg) at run time.
template <int R> inline void regs_dec() {
    static_assert(R >= 24 && R <= 256 && R % 8 == 0, "setmaxnreg: 24..256, a multiple of 8");
    emu::setmaxnreg(R, false);
}
template <int R> inline void regs_inc() {
    static_assert(R >= 24 && R <= 256 && R % 8 == 0, "setmaxnreg: 24..256, a multiple of 8");
    emu::setmaxnreg(R, true);
}
