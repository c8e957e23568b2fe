// runtime.h: a CPU emulator for gpubp's CUDA kernels (tests only).
//
// A kernel module's source (gpubp.backends.cuda_source.ModuleSpec.source()) is compiled by the
// host C++ compiler after this header, with the inline-PTX functions replaced by ptx.h (see
// tests/support/cuda_emu/__init__.py).  A launch runs the grid's blocks one after another; the
// threads of a block are fibers (ucontext) on one OS thread, switched only at __syncthreads,
// warp-collective operations and mbarrier waits, so a run is deterministic.  Between two
// barriers each warp runs as far as it can before the next starts, the warps in order and in
// reverse order on alternate barrier intervals (run_block), so a missing barrier between warps
// shows as stale or poisoned data.
//
// What it checks beyond the results:
// - __syncthreads reached by some threads of a block but not all, or a warp-collective operation
//   whose mask names a lane that does not take part (exited or waiting elsewhere): "deadlock";
// - shared memory: each block's static and dynamic shared memory starts poisoned (0xFF bytes:
//   NaN as float), the dynamic part starts 16 bytes past a 1024-byte boundary (no more aligned
//   than its declaration asks) and ends at a guard page, and every 32-bit shared address the
//   kernel makes (cvta, cp.async, ldmatrix, TMA, wgmma descriptors) must fall inside it;
// - cp.async copies land only when a cp.async.wait_group retires their group (the latest moment
//   the PTX ISA allows), and their destination is poisoned when they are issued (the earliest),
//   so reading a stage before its wait, or a copy issued over data other threads still read
//   (a write-after-read race), sees the poison;
// - alignment of cp.async operands (to the copy size, the source also when it is not read) and of
//   vector loads and stores (emu::vec_cast);
// - faults (a read past a global buffer's guard page) are caught and reported with the address;
// - Hopper (see the section below): mbarrier arrivals, transactions and phases, TMA tile loads
//   (poison at issue, data at the first wait on the barrier), wgmma operands read from shared
//   memory when wgmma.wait_group retires them and required unchanged since the issue (a stage
//   released early or a wgmma issued before its data is an error), warpgroup-collective instructions reached by
//   all 128 threads, setmaxnreg's register pool (an .inc the block's registers cannot satisfy
//   waits forever), and a wait on a phase that can never complete reported as a deadlock.
#pragma once
#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <csignal>
#include <cstdint>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <vector>
#include <deque>
#include <map>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("emu_smem")))

using std::exp; using std::log; using std::tanh; using std::fabs; using std::sqrt; using std::fmax;
using std::fmin; using std::isnan; using std::isinf; using std::isfinite; using std::floor; using std::ceil;
using std::abs; using std::log1p; using std::expm1; using std::pow;

struct emu_dim3 { unsigned x = 1, y = 1, z = 1; };
struct __align__(16) float4 { float x, y, z, w; };
struct __align__(8) float2 { float x, y; };
struct __align__(16) int4 { int x, y, z, w; };
struct __align__(16) uint4 { unsigned x, y, z, w; };
struct __align__(8) uint2 { unsigned x, y; };
struct __align__(8) int2 { int x, y; };
struct __align__(16) double2 { double x, y; };
struct __align__(16) longlong2 { long long x, y; };
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

template <typename To, typename From> inline To emu_bits(From f) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To t; std::memcpy(&t, &f, sizeof(t)); return t;
}
inline float __uint_as_float(unsigned u) { return emu_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return emu_bits<unsigned>(f); }
inline float __int_as_float(int u) { return emu_bits<float>(u); }
inline int __float_as_int(float f) { return emu_bits<int>(f); }
inline double __longlong_as_double(long long u) { return emu_bits<double>(u); }
inline long long __double_as_longlong(double d) { return emu_bits<long long>(d); }
// PRMT default mode: byte i of the result is byte s[4i+3:4i] of {y, x} (x the low word).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long xy = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((xy >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
}
template <typename T> inline T __ldg(const T* p) { return *p; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

namespace emu {

enum Wait { RUN = 0, BLOCK_BAR = 1, WARP_BAR = 2, SPIN = 3,
            WG_BAR = 4,      // at a warpgroup-collective instruction (wgmma.wait_group)
            MBAR_WAIT = 5 }; // at mbarrier.try_wait: resumed only after some mbarrier changed

struct PendingCopy { unsigned dst; unsigned nbytes; unsigned char data[16]; };

struct Thread {
    ucontext_t ctx;
    emu_dim3 tid;
    int linear = 0, warp = 0, lane = 0;
    Wait wait = RUN;
    unsigned warp_mask = 0;      // lanes named by the warp collective this thread waits at
    bool done = false;
    std::vector<std::vector<PendingCopy>> groups;   // committed cp.async groups, oldest first
    std::vector<PendingCopy> open;                  // cp.async copies not yet committed
    unsigned wg_tag = 0;                            // the warpgroup collective waited at (WG_BAR)
    unsigned long long mbar_seen = 0;               // Hopper().events when it went to MBAR_WAIT
};

struct State {
    std::vector<Thread> threads;
    std::vector<char*> stacks;
    size_t stack_bytes = 256 * 1024;
    ucontext_t sched;
    Thread* cur = nullptr;
    emu_dim3 block_idx, block_dim, grid_dim;
    // shared memory: [static section][dynamic arena], 32-bit addresses as on the device
    char* dyn = nullptr;          // start of the block's dynamic shared memory
    size_t dyn_bytes = 0;
    char* dyn_map = nullptr;      // the mmap holding it (ends in a PROT_NONE page)
    size_t dyn_map_bytes = 0;
    unsigned dyn_addr0 = 0;       // shared address of dyn_map's first byte
    bool failed = false;
    std::string error;
    // warp collectives: per warp, 32 slots of up to 64 uint32 words
    std::vector<unsigned> xchg;
    int progress = 0;             // spins since the last change, for spin deadlocks
};
inline State& S() __attribute__((no_sanitize("kernel-address"), no_sanitize_address));
inline State& S() { static State s; return s; }

}  // namespace emu

extern "C" char __start_emu_smem[] __attribute__((weak));
extern "C" char __stop_emu_smem[] __attribute__((weak));

namespace emu {

inline void fail(const std::string& msg);

inline char* static_lo() { return (char*)((uintptr_t)__start_emu_smem & ~(uintptr_t)4095); }

// 32-bit shared address of a pointer into the block's shared memory (static or dynamic).
inline unsigned to_shared(const void* p) {
    State& s = S();
    const char* c = (const char*)p;
    if (__start_emu_smem && c >= __start_emu_smem && c < __stop_emu_smem) return (unsigned)(c - static_lo());
    if (s.dyn_map && c >= s.dyn_map && c < s.dyn_map + s.dyn_map_bytes) return s.dyn_addr0 + (unsigned)(c - s.dyn_map);
    fail("a generic pointer converted to a shared address does not point into shared memory");
    return 0;
}

// Pointer for a shared address range [a, a + n), or nullptr (and a failure) outside shared memory.
inline char* from_shared(unsigned a, unsigned n, const char* what) {
    State& s = S();
    if (__start_emu_smem) {
        const unsigned lo = (unsigned)(__start_emu_smem - static_lo()), hi = (unsigned)(__stop_emu_smem - static_lo());
        if (a >= lo && a + n <= hi) return static_lo() + a;
    }
    if (s.dyn && a >= s.dyn_addr0 + (unsigned)(s.dyn - s.dyn_map) &&
        (size_t)a + n <= s.dyn_addr0 + (size_t)(s.dyn - s.dyn_map) + s.dyn_bytes)
        return s.dyn_map + (a - s.dyn_addr0);
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s: shared address 0x%x (+%u bytes) is outside the block's shared memory", what, a, n);
    fail(buf);
    return nullptr;
}

inline void yield(Wait w) {
    State& s = S();
    Thread* t = s.cur;
    t->wait = w;
    swapcontext(&t->ctx, &s.sched);
}

inline void fail(const std::string& msg) {
    State& s = S();
    if (!s.failed) {
        char where[200];
        if (s.cur)
            std::snprintf(where, sizeof where, " (block %u,%u,%u thread %u,%u,%u)", s.block_idx.x, s.block_idx.y,
                          s.block_idx.z, s.cur->tid.x, s.cur->tid.y, s.cur->tid.z);
        else
            where[0] = 0;
        s.error = msg + where;
    }
    s.failed = true;
    if (s.cur) {               // park this fiber for good: the scheduler stops at the failure
        s.cur->wait = SPIN;
        swapcontext(&s.cur->ctx, &s.sched);
    }
}

inline unsigned warp_lanes(int warp) {   // lanes of `warp` that exist in the block
    State& s = S();
    const int n = (int)s.threads.size() - warp * 32;
    return n >= 32 ? 0xFFFFFFFFu : ((1u << n) - 1u);
}

// All lanes in `mask` meet here (a warp-collective point).  Lanes not in the block, exited, or
// waiting somewhere else make it a deadlock, reported by the scheduler.
inline void warp_sync(unsigned mask) {
    State& s = S();
    Thread* t = s.cur;
    if (!(mask >> t->lane & 1u)) fail("a warp-collective operation whose mask leaves out the calling lane");
    if (mask & ~warp_lanes(t->warp)) fail("a warp-collective mask names lanes the block does not have");
    t->warp_mask = mask;
    yield(WARP_BAR);
}

// A vector access (float2/float4/uint4/double2, elementwise.cu's Pack<T>): the kernel's
// reinterpret_cast to a pointer of such a type becomes emu::vec_cast (tests/support/cuda_emu/
// __init__.py), which requires the address to be aligned to the type's size, as the hardware
// does (PTX ISA "Addresses as Operands": ld/st.v2/.v4 addresses naturally aligned to the access
// size; a misaligned one is the GPU's "misaligned address" fault).  The host would take a
// misaligned 8-byte access, and most 16-byte ones, without complaint.  Checked at the cast: the
// kernels cast only pointers they go on to read or write.
template <typename P, typename Q>
inline P vec_cast(Q* q) {
    using E = typename std::remove_cv<typename std::remove_pointer<P>::type>::type;
    static_assert(sizeof(E) == alignof(E), "a vector type is aligned to its size");
    if ((uintptr_t)q % alignof(E)) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "misaligned address: a %zu-byte vector access at %p (%zu bytes past a "
                      "%zu-byte boundary)", sizeof(E), (const void*)q, (size_t)((uintptr_t)q % alignof(E)), alignof(E));
        fail(buf);
    }
    return reinterpret_cast<P>(q);
}

inline unsigned* slot(int lane) { State& s = S(); return &s.xchg[((size_t)s.cur->warp * 32 + lane) * 64]; }

// Exchange: every lane of `mask` publishes `words` uint32s, all read them, then meet again.
template <typename F>
inline void warp_exchange(unsigned mask, const unsigned* mine, int words, F&& read) {
    std::memcpy(slot(S().cur->lane), mine, sizeof(unsigned) * words);
    warp_sync(mask);
    read();
    warp_sync(mask);
}

}  // namespace emu
#include "race.h"
namespace emu {

// ---------------------------------------------------------------- cp.async
inline void cp_issue(unsigned dst, const void* src, unsigned nbytes, unsigned src_bytes) {
    State& s = S();
    if (dst % nbytes) fail("cp.async: shared destination not aligned to the copy size");
    char* d = from_shared(dst, nbytes, "cp.async destination");
    if (!d) return;
    on_access(d, nbytes, true);   // race.h: in flight from now on
    // From the issue until the wait_group that retires it the destination is being written at a
    // time the PTX ISA leaves open: poison it now (a read or write of it by any thread before the
    // copy's wait and barrier, a write-after-read race included, sees or leaves the poison).
    std::memset(d, 0xFF, nbytes);
    PendingCopy c{dst, nbytes, {0}};
    // PTX ISA "Addresses as Operands": the address operands naturally aligned to the access size,
    // the source too when src-size 0 reads none of it (no exception is documented)
    if ((uintptr_t)src % nbytes) fail("cp.async: global source not aligned to the copy size");
    if (src_bytes) std::memcpy(c.data, src, src_bytes);
    s.cur->open.push_back(c);
}
inline void cp_commit() {
    Thread* t = S().cur;
    t->groups.push_back(std::move(t->open));
    t->open.clear();
}
inline void cp_wait(int n) {   // retire all committed groups but the newest n
    Thread* t = S().cur;
    while ((int)t->groups.size() > n) {
        for (auto& c : t->groups.front()) {
            char* d = from_shared(c.dst, c.nbytes, "cp.async destination");
            if (d) { on_access(d, c.nbytes, true); std::memcpy(d, c.data, c.nbytes); }
        }
        t->groups.erase(t->groups.begin());
    }
}

// ---------------------------------------------------------------- Hopper (sm_90a)
// mbarriers, TMA tile loads (cp.async.bulk.tensor) and wgmma, written from the PTX ISA
// ("Parallel Synchronization and Communication Instructions: mbarrier", "cp.async.bulk.tensor",
// "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions") and the CUDA driver
// API's cuTensorMapEncodeTiled (whose stand-in, tests/support/fake_cupy.py's
// TensorMapDriver, writes the map format read here).  All state is per block.

// A TMA load issued but not landed: its bytes as they will lie in shared memory.
struct TmaInflight { unsigned dst; std::vector<unsigned char> image; };

// An mbarrier object (PTX ISA "Contents of the mbarrier object": current phase, pending
// arrivals, expected arrivals, tx-count), kept here by shared address.  Its 8 bytes of shared
// memory hold a marker, so a store over a live barrier is caught at the barrier's next use.
struct Mbar {
    unsigned long long marker = 0;
    unsigned long long phase = 0;    // phases completed since mbarrier.init (parity: phase & 1)
    long long expected = 0, pending = 0, tx = 0;
    std::vector<TmaInflight> inflight;   // TMA loads completing on this barrier, not yet landed
};

// One wgmma.mma_async of a warpgroup, with the accumulator registers of each of its threads.
struct WgOp {
    bool bf16 = false, ta = false, tb = false, scale_d = true;
    int n = 0, sa = 1, sb = 1;
    unsigned long long da = 0, db = 0;
    float* d[128] = {nullptr};
    std::vector<float> A0, B0;       // the operands as they were when the first thread issued it
};
struct WgState {
    std::vector<WgOp> ops;           // every wgmma.mma_async issued, in program order
    std::vector<int> group_end;      // committed groups: group g is ops [group_end[g-1], group_end[g])
    int retired = 0;                 // groups retired (results written, operands read)
    int waits_done = 0;              // wgmma.wait_group rendezvous whose retirement has run
    int issued[128] = {0}, commits[128] = {0}, waits[128] = {0};
    bool fenced[128] = {false};
};

struct Hopper {
    std::map<unsigned, Mbar> mbars;
    std::vector<WgState> wgs;
    unsigned long long events = 0;   // mbarrier changes so far: a MBAR_WAIT thread wakes on a new one
    unsigned long long next_marker = 0x5241424D00000000ull;
    // setmaxnreg: each thread's register count and the block's pool of free registers (set up at
    // the block's first setmaxnreg), and how many threads wait in setmaxnreg.inc for registers
    std::vector<int> regs;
    long long reg_pool = 0;
    int reg_waiters = 0;
};
inline Hopper& H() { static Hopper h; return h; }
inline void hopper_reset() {
    Hopper& h = H();
    h.mbars.clear(); h.wgs.clear(); h.regs.clear(); h.reg_pool = 0; h.reg_waiters = 0;
}

inline void failf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline void failf(const char* fmt, ...) {
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fail(buf);
}

constexpr long long MBAR_MAX = (1ll << 20) - 1;   // PTX ISA: counts within [0 or -(2^20-1), 2^20-1]

inline Mbar* mbar_at(unsigned bar, const char* what) {
    Hopper& h = H();
    auto it = h.mbars.find(bar);
    if (it == h.mbars.end()) {
        failf("%s: no mbarrier was initialised at shared address 0x%x", what, bar);
        return nullptr;
    }
    const char* p = from_shared(bar, 8, what);
    if (!p) return nullptr;
    unsigned long long v;
    std::memcpy(&v, p, 8);
    if (v != it->second.marker) {
        failf("%s: the 8 bytes of the mbarrier at 0x%x were overwritten while it was in use (PTX ISA: any "
              "non-mbarrier operation on an initialised mbarrier object is undefined)", what, bar);
        return nullptr;
    }
    return &it->second;
}

// A phase completes when its pending arrivals and its tx-count are both zero; the next phase
// starts with the expected arrival count and tx-count 0.
inline void mbar_settle(Mbar& m, unsigned bar) {
    if (m.tx > MBAR_MAX || m.tx < -MBAR_MAX)
        failf("mbarrier 0x%x: tx-count %lld outside the PTX ISA's range [-(2^20-1), 2^20-1]", bar, m.tx);
    if (m.pending == 0 && m.tx == 0) {
        ++m.phase;
        m.pending = m.expected;
    }
}

inline void mbar_init(unsigned bar, unsigned count) {
    Hopper& h = H();
    if (bar % 8) failf("mbarrier.init: address 0x%x is not 8-byte aligned (PTX ISA: .b64, align 8)", bar);
    if (count < 1 || count > MBAR_MAX) failf("mbarrier.init: count %u outside [1, 2^20-1]", count);
    char* p = from_shared(bar, 8, "mbarrier.init");
    if (!p) return;
    if (h.mbars.count(bar))
        failf("mbarrier.init on the live mbarrier at 0x%x (PTX ISA: mbarrier.init on an initialised mbarrier "
              "object is undefined; mbarrier.inval it first)", bar);
    Mbar& m = h.mbars[bar];
    m.marker = h.next_marker++;
    m.expected = m.pending = count;
    std::memcpy(p, &m.marker, 8);
    ++h.events;
}

// mbarrier.arrive (and .expect_tx: tx-count += bytes first) on the barrier at `bar`.
inline void mbar_arrive(unsigned bar, bool expect_tx, unsigned bytes) {
    Mbar* m = mbar_at(bar, expect_tx ? "mbarrier.arrive.expect_tx" : "mbarrier.arrive");
    if (!m) return;
    if (expect_tx) m->tx += bytes;
    if (m->pending <= 0) failf("mbarrier.arrive on 0x%x with no arrival pending", bar);
    --m->pending;
    mbar_settle(*m, bar);
    ++H().events;
}

inline bool overlaps_mbar(unsigned lo, unsigned hi) {
    auto& mb = H().mbars;
    auto it = mb.lower_bound(lo >= 7 ? lo - 7 : 0);
    return it != mb.end() && it->first < hi;
}

// The TMA loads in flight on `bar` land now and complete their bytes on it (complete_tx).
inline void mbar_land(Mbar& m, unsigned bar) {
    if (m.inflight.empty()) return;
    std::vector<TmaInflight> done;
    done.swap(m.inflight);
    for (auto& c : done) {
        const unsigned n = (unsigned)c.image.size();
        if (overlaps_mbar(c.dst, c.dst + n))
            failf("cp.async.bulk.tensor: the box at shared 0x%x (+%u bytes) overwrites a live mbarrier", c.dst, n);
        char* d = from_shared(c.dst, n, "cp.async.bulk.tensor destination");
        if (!d) return;
        std::memcpy(d, c.image.data(), n);
        m.tx -= n;
        mbar_settle(m, bar);
    }
    ++H().events;
}

// mbarrier.try_wait.parity in a loop: returns once the phase of parity `parity` has completed
// (the current phase's parity differs from it).  Until then the thread sleeps, and wakes only
// when some mbarrier changed; if nothing can change any more, the scheduler reports a deadlock.
inline void mbar_wait_parity(unsigned bar, unsigned parity) {
    if (parity > 1) failf("mbarrier.try_wait.parity: phaseParity %u is not 0 or 1", parity);
    for (;;) {
        Mbar* m = mbar_at(bar, "mbarrier.try_wait.parity");
        if (!m) return;
        mbar_land(*m, bar);
        if ((m->phase & 1u) != parity) return;
        S().cur->mbar_seen = H().events;
        yield(MBAR_WAIT);
    }
}

// ---- tensor maps: the 16 words the fake driver's cuTensorMapEncodeTiled writes
constexpr unsigned long long TMAP_MAGIC = 0x3150414D54554D45ull;   // "EMUTMAP1"
inline unsigned long long tmap_hash(const unsigned long long* w) {    // FNV-1a over words 0..14
    unsigned long long h = 0xCBF29CE484222325ull;
    for (int i = 0; i < 15; ++i) h = (h ^ w[i]) * 0x100000001B3ull;
    return h;
}
struct TensorMapView {
    const char* base = nullptr;
    int rank = 0, esize = 0, dtype = 0, interleave = 0, swizzle = 0, oob = 0;
    unsigned box[5] = {0}, estride[5] = {0};
    unsigned long long dim[5] = {0}, stride[5] = {0};   // stride[i]: bytes between steps of dimension i (i >= 1)
};
inline bool tmap_read(const void* map, TensorMapView& v) {
    unsigned long long w[16];
    std::memcpy(w, map, sizeof w);
    if (w[0] != TMAP_MAGIC || w[15] != tmap_hash(w)) {
        fail("cp.async.bulk.tensor: the tensor map was not made by cuTensorMapEncodeTiled (the fake driver's "
             "stand-in), or its bytes were changed since");
        return false;
    }
    v.base = (const char*)w[1];
    v.rank = (int)(w[2] & 0xF); v.esize = (int)(w[2] >> 4 & 0xF); v.dtype = (int)(w[2] >> 8 & 0xFF);
    v.interleave = (int)(w[2] >> 16 & 0xF); v.swizzle = (int)(w[2] >> 20 & 0xF); v.oob = (int)(w[2] >> 28 & 0xF);
    for (int i = 0; i < 5; ++i) {
        v.estride[i] = (unsigned)(w[2] >> (32 + 4 * i) & 0xF);
        v.box[i] = (unsigned)(w[3] >> (12 * i) & 0xFFF);
        v.dim[i] = w[4 + i];
        v.stride[i] = i ? w[8 + i] : (unsigned long long)v.esize;
    }
    return true;
}

// Shared-memory swizzle of the TMA and of wgmma descriptors: within each 8 rows of `span`
// bytes, the 16-byte chunk index is XORed with the row index, as a function of the shared
// address (CuTe's Swizzle<log2(span/16), 4, 3>: address bits [4, 4+b) ^= bits [7, 7+b)).
inline unsigned swizzle_addr(unsigned a, unsigned span) {
    return span > 16 ? a ^ (((a >> 7) & (span / 16 - 1)) << 4) : a;
}

// cp.async.bulk.tensor.Nd.shared::cluster.global.tile.mbarrier::complete_tx::bytes [dst], [map, c], [bar]:
// the box of the map at element coordinates c (innermost first) into shared memory at dst,
// elements outside the tensor as zeros (OOB fill NONE); completes the box's bytes on bar.
// The destination reads as poison from the issue until a thread waits on bar, when the bytes land.
inline void tma_load(unsigned dst, const void* map, unsigned bar, const int* c, int nc) {
    TensorMapView v;
    if (!tmap_read(map, v)) return;
    if (v.rank != nc) failf("cp.async.bulk.tensor.%dd with a rank-%d tensor map", nc, v.rank);
    if (nc != 2 || v.interleave != 0 || v.estride[0] != 1 || v.estride[1] != 1 || v.oob != 0)
        fail("cp.async.bulk.tensor: the emulator models 2-D tile loads without interleave, with element "
             "strides 1 and zero OOB fill only");
    const unsigned inner = v.box[0] * v.esize, rows = v.box[1], total = inner * rows;
    const unsigned span = v.swizzle ? 16u << v.swizzle : 0u;   // CU_TENSOR_MAP_SWIZZLE_32B = 1, 64B = 2, 128B = 3
    if (span && inner != span)
        failf("cp.async.bulk.tensor: a box row of %u bytes with a %u-byte swizzle is not modelled", inner, span);
    if (dst % 128) failf("cp.async.bulk.tensor: shared destination 0x%x is not 128-byte aligned", dst);
    char* d = from_shared(dst, total, "cp.async.bulk.tensor destination");
    Mbar* m = mbar_at(bar, "cp.async.bulk.tensor mbarrier");
    if (!d || !m) return;
    if (overlaps_mbar(dst, dst + total))
        failf("cp.async.bulk.tensor: the box at shared 0x%x (+%u bytes) overwrites a live mbarrier", dst, total);
    TmaInflight f{dst, std::vector<unsigned char>(total, 0)};
    for (unsigned r = 0; r < rows; ++r) {
        const long long y = (long long)c[1] + r;
        for (unsigned e = 0; e < v.box[0]; ++e) {
            const long long x = (long long)c[0] + e;
            const unsigned at = swizzle_addr(dst + r * inner + e * v.esize, span) - dst;
            if (x >= 0 && y >= 0 && (unsigned long long)x < v.dim[0] && (unsigned long long)y < v.dim[1])
                std::memcpy(&f.image[at], v.base + y * v.stride[1] + x * v.esize, v.esize);
        }
    }
    std::memset(d, 0xFF, total);
    m->inflight.push_back(std::move(f));
    ++H().events;
}

// ---- wgmma
inline int wg_lane() { return S().cur->linear % 128; }
inline WgState& wg_state(const char* what) {
    State& s = S();
    const int g = s.cur->linear / 128;
    if ((size_t)(g + 1) * 128 > s.threads.size())
        failf("%s in a block whose threads do not fill warpgroup %d (128 threads)", what, g);
    auto& w = H().wgs;
    if ((int)w.size() <= g) w.resize(g + 1);
    return w[g];
}

// All 128 threads of the calling thread's warpgroup meet here (a .sync.aligned instruction).
inline void wg_collective(unsigned tag, const char* what) {
    wg_state(what);
    S().cur->wg_tag = tag;
    yield(WG_BAR);
}

inline void wgmma_fence() { wg_state("wgmma.fence").fenced[wg_lane()] = true; }

inline bool wgmma_operands(const WgOp& op, std::vector<float>& A, std::vector<float>& B);

// wgmma.mma_async.sync.aligned.m64nNkK.f32.{bf16,tf32} d, a-desc, b-desc, scale-d, imm-scale-a,
// imm-scale-b{, imm-trans-a, imm-trans-b}: recorded with this thread's accumulators (and, at the
// first thread's issue, its operands); it reads shared memory again and writes d when the
// wgmma.wait_group that retires its group runs.
inline void wgmma_issue(float* d, int n, bool bf16, unsigned long long da, unsigned long long db, bool ta, bool tb,
                        bool scale_d, int sa, int sb) {
    WgState& w = wg_state("wgmma.mma_async");
    const int t = wg_lane();
    if (!w.fenced[t])
        fail("wgmma.mma_async before any wgmma.fence of its warpgroup (PTX ISA: wgmma.fence must precede the "
             "first wgmma.mma_async)");
    if (!bf16 && (ta || tb)) fail("wgmma.mma_async .tf32 with a transposed operand (K-major only)");
    const int seq = w.issued[t]++;
    if (w.commits[t] < (int)w.group_end.size() && seq >= w.group_end[w.commits[t]])
        fail("threads of one warpgroup put different wgmma.mma_async into a wgmma group (PTX ISA: .aligned)");
    if (seq == (int)w.ops.size()) {
        WgOp op;
        op.bf16 = bf16; op.n = n; op.da = da; op.db = db; op.ta = ta; op.tb = tb; op.scale_d = scale_d;
        op.sa = sa; op.sb = sb;
        if (!wgmma_operands(op, op.A0, op.B0)) return;
        w.ops.push_back(std::move(op));
    } else {
        const WgOp& o = w.ops[seq];
        if (o.bf16 != bf16 || o.n != n || o.da != da || o.db != db || o.ta != ta || o.tb != tb ||
            o.scale_d != scale_d || o.sa != sa || o.sb != sb)
            failf("threads of one warpgroup issue different wgmma.mma_async (#%d: descriptors 0x%llx 0x%llx vs "
                  "0x%llx 0x%llx; PTX ISA: .aligned, and a matrix descriptor must be the same across the "
                  "warpgroup)", seq, o.da, o.db, da, db);
    }
    w.ops[seq].d[t] = d;
}

inline void wgmma_commit() {
    WgState& w = wg_state("wgmma.commit_group");
    const int t = wg_lane();
    const int c = w.commits[t]++;
    if (c == (int)w.group_end.size()) w.group_end.push_back(w.issued[t]);
    else if (w.group_end[c] != w.issued[t])
        fail("threads of one warpgroup commit different wgmma groups (PTX ISA: .aligned)");
}

// A matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address, leading and stride
// dimension byte offsets (bits 13-0, 29-16, 45-32, each (x & 0x3FFFF) >> 4), base offset
// (51-49), swizzle mode (63-62: 0 none, 1 128B, 2 64B, 3 32B).  W: 16-byte units in a row of
// the swizzle atom (1 without swizzle).
struct WgDesc { unsigned start = 0, lbo = 0, sbo = 0; int W = 1; };
inline bool wg_desc(unsigned long long x, WgDesc& o, const char* which) {
    o.start = (unsigned)(x & 0x3FFF) << 4;
    o.lbo = (unsigned)(x >> 16 & 0x3FFF) << 4;
    o.sbo = (unsigned)(x >> 32 & 0x3FFF) << 4;
    const unsigned base = (unsigned)(x >> 49 & 7), mode = (unsigned)(x >> 62);
    o.W = mode == 0 ? 1 : mode == 1 ? 8 : mode == 2 ? 4 : 2;
    if (o.W > 1 && base != 0) {
        failf("wgmma %s descriptor: base offset %u is not modelled by the emulator", which, base);
        return false;
    }
    // base offset 0 means the swizzle pattern (8 rows of 16 W bytes) starts at a 128 W-byte
    // boundary; the matrix starts at its first row
    if (o.W > 1 && (o.start / (16u * o.W)) % 8 != 0) {
        failf("wgmma %s descriptor: start 0x%x is in row %u of a %u-byte swizzle pattern, but the base offset "
              "is 0 (PTX ISA: 0 only when the pattern starts at a %u-byte boundary)", which, o.start,
              (o.start / (16u * o.W)) % 8, 16u * o.W, 128u * o.W);
        return false;
    }
    return true;
}

// Shared address of element (mn, k) (mn: row of A or column of B) of a wgmma operand, from the
// PTX ISA's canonical layouts in units of elements, T = 16 / esize elements per 16 bytes:
//   K-major,  no swizzle: ((8,m),(T,2k)) : ((1T,SBO),(1,LBO))
//   K-major,  swizzled:   ((8,m),(T,2k)) : ((W T,SBO),(1,T))
//   MN-major, no swizzle: ((T,1,m),(8,k)) : ((1,T,SBO),(1T,LBO))
//   MN-major, swizzled:   ((T,W,m),(8,k)) : ((1,T,LBO),(W T,SBO))
// then the swizzle of the address (Swizzle<log2 W, 4, 3>).
inline unsigned wg_addr(const WgDesc& o, bool mn_major, int esize, int mn, int k) {
    const int T = 16 / esize, W = o.W;
    unsigned off;
    if (!mn_major) {
        const int r = mn % 8, mb = mn / 8, e = k % T, kc = k / T;
        off = r * 16 * W + mb * o.sbo + e * esize + kc * (W == 1 ? o.lbo : 16u);
    } else {
        const int e = mn % T, c = (mn / T) % W, mb = mn / (T * W), r = k % 8, kb = k / 8;
        off = W == 1 ? e * esize + mb * o.sbo + r * 16 + kb * o.lbo
                     : e * esize + c * 16 + mb * o.lbo + r * 16 * W + kb * o.sbo;
    }
    return swizzle_addr(o.start + off, 16u * W);
}

// Operand element value: .bf16, or .tf32 (PTX ISA: the lower 13 bits of the 32-bit input are
// truncated before the multiplication).
inline float wg_value(const char* p, bool bf16) {
    unsigned u = 0;
    if (bf16) { unsigned short h; std::memcpy(&h, p, 2); u = (unsigned)h << 16; }
    else { std::memcpy(&u, p, 4); u &= 0xFFFFE000u; }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// D (64 x n) = A (64 x K) B (K x n) + (scale-d ? D : 0), read now, D in the accumulator fragment
// layout of wgmma .m64nNk16 / .m64nNk8 with .f32 D (PTX ISA Figures "WGMMA .m64nNk16/k8 register
// fragment layout for accumulator matrix D"; CUTLASS CLayout_64xN): thread t, warp w = t / 32,
// g = (t % 32) / 4, u = t % 4: d[4 j + 2 h + e] is D(16 w + g + 8 h, 8 j + 2 u + e).  The PTX ISA
// leaves the accumulation order and rounding unspecified; modelled here as gpubp.precision.matmul
// models a tensor-core k-step: the instruction's K products (exact in float32) summed exactly
// (float64), rounded once to float32 and added to D in float32.
// A (64 x K) and B (n x K) of `op` as shared memory holds them now (imm-scale applied).
inline bool wgmma_operands(const WgOp& op, std::vector<float>& A, std::vector<float>& B) {
    const int K = op.bf16 ? 16 : 8, esize = op.bf16 ? 2 : 4;
    WgDesc a, b;
    if (!wg_desc(op.da, a, "A") || !wg_desc(op.db, b, "B")) return false;
    A.assign(64 * K, 0.f);
    B.assign((size_t)op.n * K, 0.f);
    for (int m = 0; m < 64; ++m)
        for (int k = 0; k < K; ++k) {
            const char* p = from_shared(wg_addr(a, op.ta, esize, m, k), esize, "wgmma.mma_async A");
            if (!p) return false;
            A[m * K + k] = op.sa * wg_value(p, op.bf16);
        }
    for (int n = 0; n < op.n; ++n)
        for (int k = 0; k < K; ++k) {
            const char* p = from_shared(wg_addr(b, op.tb, esize, n, k), esize, "wgmma.mma_async B");
            if (!p) return false;
            B[n * K + k] = op.sb * wg_value(p, op.bf16);
        }
    return true;
}

// Retires wgmma #seq: reads its operands now (the latest moment) and requires them to be what
// they were at its issue: shared memory written, or TMA bytes landed, while it was in flight (a
// stage released before the wait_group, or a wgmma issued before its data arrived) is a race the
// PTX ISA leaves undefined.
inline void wgmma_run(WgOp& op, int seq) {
    const int K = op.bf16 ? 16 : 8;
    std::vector<float> A, B;
    if (!wgmma_operands(op, A, B)) return;
    if (std::memcmp(A.data(), op.A0.data(), A.size() * sizeof(float)) ||
        std::memcmp(B.data(), op.B0.data(), B.size() * sizeof(float))) {
        failf("wgmma.mma_async #%d: its shared-memory operands changed between its issue and the wgmma.wait_group "
              "that retired it (written or landed while in flight: a stage released before the wait, or a wgmma "
              "issued before its data arrived)", seq);
        return;
    }
    for (int t = 0; t < 128; ++t) {
        float* d = op.d[t];
        const int w = t / 32, g = (t % 32) / 4, u = t % 4;
        for (int i = 0; i < op.n / 2; ++i) {
            const int j = i / 4, h = (i / 2) % 2, e = i % 2;
            const int row = 16 * w + g + 8 * h, col = 8 * j + 2 * u + e;
            double step = 0.0;
            for (int k = 0; k < K; ++k) step += (double)(A[row * K + k] * B[col * K + k]);
            d[i] = (op.scale_d ? d[i] : 0.f) + (float)step;
        }
    }
}

// wgmma.wait_group.sync.aligned N: the warpgroup meets, then every committed group but the
// newest N is retired (its wgmmas read shared memory and write their accumulators now).
// The first of the 128 threads to go on after the rendezvous checks and retires for all of them
// (no thread has run since they met, so every thread's counts are as they were at the wait).
inline void wgmma_wait(int N) {
    WgState& w0 = wg_state("wgmma.wait_group");
    const int gen = ++w0.waits[wg_lane()];
    wg_collective(0x100u + (unsigned)N, "wgmma.wait_group");
    WgState& w = wg_state("wgmma.wait_group");
    if (w.waits_done >= gen) return;
    w.waits_done = gen;
    for (int t = 1; t < 128; ++t)
        if (w.issued[t] != w.issued[0] || w.commits[t] != w.commits[0])
            fail("threads of one warpgroup reach wgmma.wait_group after different wgmma.mma_async / "
                 "commit_group sequences (PTX ISA: .aligned)");
    const int C = (int)w.group_end.size();
    while (C - w.retired > N) {
        const int g = w.retired++;
        for (int i = g ? w.group_end[g - 1] : 0; i < w.group_end[g]; ++i) wgmma_run(w.ops[i], i);
    }
}

// ---- setmaxnreg
// setmaxnreg.{dec,inc}.sync.aligned.u32 R (PTX ISA "setmaxnreg"): executed by all warps of a
// warpgroup; .dec returns each thread's registers above R to the block's pool, .inc takes
// registers up to R from it and blocks until the pool has them (on the GPU a block whose
// warpgroups ask for more than it was launched with hangs there: reported here as a deadlock).
// The block starts with the most registers a thread can have at this block size (65536 /
// threads, rounded down to the allocation granularity of 8, at most 256; what ptxas gives a
// kernel with __launch_bounds__(threads, 1), e.g. 168 for 384 threads): the most lenient
// assumption, so a request that fails here fails on the GPU.
inline void setmaxnreg(int R, bool inc) {
    const char* what = inc ? "setmaxnreg.inc" : "setmaxnreg.dec";
    wg_collective(0x200u + 2u * (unsigned)R + (inc ? 1u : 0u), what);
    State& s = S();
    Hopper& h = H();
    if (h.regs.empty()) {
        const int n = (int)s.threads.size(), per = std::min(256, 65536 / n / 8 * 8);
        h.regs.assign(n, per);
        h.reg_pool = 0;
    }
    int& mine = h.regs[s.cur->linear];
    if (inc ? R < mine : R > mine) {
        failf("%s %d from %d registers a thread (PTX ISA: .inc raises the count, .dec lowers it)", what, R, mine);
        return;
    }
    if (!inc) { h.reg_pool += mine - R; mine = R; return; }
    ++h.reg_waiters;
    while (h.reg_pool < R - mine) yield(SPIN);   // until another warpgroup's .dec frees enough
    --h.reg_waiters;
    h.reg_pool -= R - mine;
    mine = R;
}

// ---------------------------------------------------------------- launching
struct Fault { sigjmp_buf env; volatile bool armed = false; void* addr = nullptr; int sig = 0; };
inline Fault& F() { static Fault f; return f; }
inline void on_fault(int sig, siginfo_t* info, void*) {
    Fault& f = F();
    if (!f.armed) { signal(sig, SIG_DFL); raise(sig); return; }
    f.addr = info->si_addr; f.sig = sig;
    siglongjmp(f.env, 1);
}

typedef void (*Invoker)(void* fn, void** args);

inline void fiber_main(unsigned lo, unsigned hi) {
    State& s = S();
    void** pack = (void**)(((uintptr_t)hi << 32) | lo);
    Invoker inv = (Invoker)pack[0];
    inv(pack[1], (void**)pack[2]);
    s.cur->done = true;
    s.cur->wait = RUN;
    swapcontext(&s.cur->ctx, &s.sched);
}

// Runs one block to the end; returns false on a failure (S().error says which).
inline bool run_block(Invoker inv, void* fn, void** args) {
    State& s = S();
    const int n = (int)s.threads.size();
    void* pack[3] = {(void*)inv, fn, (void*)args};
    const uintptr_t pp = (uintptr_t)pack;
    for (int i = 0; i < n; ++i) {
        Thread& t = s.threads[i];
        t.linear = i; t.warp = i / 32; t.lane = i % 32;
        t.tid.x = i % s.block_dim.x;
        t.tid.y = (i / s.block_dim.x) % s.block_dim.y;
        t.tid.z = i / (s.block_dim.x * s.block_dim.y);
        t.wait = RUN; t.done = false; t.groups.clear(); t.open.clear(); t.wg_tag = 0; t.mbar_seen = 0;
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = s.stacks[i];
        t.ctx.uc_stack.ss_size = s.stack_bytes;
        t.ctx.uc_link = nullptr;
        makecontext(&t.ctx, (void (*)())fiber_main, 2, (unsigned)(pp & 0xFFFFFFFFu), (unsigned)(pp >> 32));
    }
    const int warps = (n + 31) / 32;
    race_block_start(warps, (int32_t)(s.block_idx.x + s.grid_dim.x * (s.block_idx.y + s.grid_dim.y * s.block_idx.z)));
    hopper_reset();
    int spins = 0;
    // A warp whose lanes named in the mask all wait at a warp collective goes on (false: not yet;
    // a failure when its lanes wait at collectives with different masks).
    auto release = [&](int w) {
        unsigned waiting = 0, mask = 0;
        bool conflict = false;
        for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
            Thread& t = s.threads[w * 32 + l];
            if (!t.done && t.wait == WARP_BAR) {
                waiting |= 1u << l;
                if (mask && mask != t.warp_mask) conflict = true;
                mask = t.warp_mask;
            }
        }
        if (!waiting) return false;
        if (conflict) {
            s.error = "lanes of one warp wait at warp collectives with different masks";
            s.failed = true;
            return false;
        }
        if ((waiting & mask) != mask) return false;
        for (int l = 0; l < 32; ++l)
            if (waiting >> l & 1u) s.threads[w * 32 + l].wait = RUN;
        race_warp_sync(w);
        return true;
    };
    // Between two barriers each warp runs as far as it can (to the barrier, its end, or a wait on
    // another warp) before the next one starts, in warp order or in reverse, alternating from one
    // barrier to the next (and starting the other way in every other block): the hardware allows
    // any such order, and a race between two warps (or two threads) shows in one of the two.
    unsigned phase = s.block_idx.x + s.grid_dim.x * (s.block_idx.y + s.grid_dim.y * s.block_idx.z);
    for (;;) {
        bool changed = false;
        for (int wi = 0; wi < warps && !s.failed; ++wi) {
            const bool rev = phase & 1u;
            const int w = rev ? warps - 1 - wi : wi;
            for (;;) {
                for (int li = 0; li < 32 && !s.failed; ++li) {
                    const int i = w * 32 + (rev ? 31 - li : li);
                    if (i >= n) continue;
                    Thread& t = s.threads[i];
                    const bool woken = t.wait == MBAR_WAIT && t.mbar_seen != H().events;   // some mbarrier changed
                    if (t.done || (t.wait != RUN && t.wait != SPIN && !woken)) continue;
                    if (t.wait == SPIN) ++spins;
                    else changed = true;
                    s.cur = &t;
                    t.wait = RUN;
                    swapcontext(&s.sched, &t.ctx);
                    s.cur = nullptr;
                }
                if (s.failed || !release(w)) break;
                changed = true;
            }
        }
        if (s.failed) return false;
        int live = 0, at_block = 0, spinning = 0, at_wg = 0, at_mbar = 0;
        for (auto& t : s.threads) {
            if (t.done) continue;
            ++live;
            at_block += t.wait == BLOCK_BAR;
            spinning += t.wait == SPIN;
            at_wg += t.wait == WG_BAR;
            at_mbar += t.wait == MBAR_WAIT;
        }
        if (!live) return true;
        for (int w = 0; w < warps; ++w) changed = release(w) || changed;
        if (s.failed) return false;
        // warpgroup collectives: the 128 threads of a warpgroup all waiting at the same one go on
        for (int g = 0; at_wg && g * 128 < n; ++g) {
            int at = 0;
            unsigned tag = 0;
            for (int i = g * 128; i < n && i < g * 128 + 128; ++i) {
                Thread& t = s.threads[i];
                if (t.done || t.wait != WG_BAR) continue;
                if (at && t.wg_tag != tag) {
                    char buf[160];
                    std::snprintf(buf, sizeof buf, "threads of warpgroup %d wait at different warpgroup-collective "
                                  "instructions (block %u,%u,%u)", g, s.block_idx.x, s.block_idx.y, s.block_idx.z);
                    s.error = buf; s.failed = true;
                    return false;
                }
                tag = t.wg_tag;
                ++at;
            }
            if (at == 128) {
                for (int i = g * 128; i < g * 128 + 128; ++i) s.threads[i].wait = RUN;
                changed = true;
            }
        }
        if (changed) { spins = 0; continue; }
        if (at_block == live) {   // __syncthreads: every live thread arrived (exited ones count as arrived)
            for (auto& t : s.threads) if (!t.done) t.wait = RUN;
            race_block_barrier();
            spins = 0;
            ++phase;
            continue;
        }
        if (spinning && spins < 100000 * live) continue;
        char buf[320];
        std::snprintf(buf, sizeof buf, "deadlock in block (%u,%u,%u): %d live threads, %d at __syncthreads, %d spinning, "
                      "%d waiting on mbarrier phases that nothing can complete, %d at warpgroup collectives whose "
                      "128 threads do not all arrive, the rest at warp collectives whose lanes do not all arrive",
                      s.block_idx.x, s.block_idx.y, s.block_idx.z, live, at_block, spinning, at_mbar, at_wg);
        s.error = buf;
        if (H().reg_waiters)
            s.error += "; " + std::to_string(H().reg_waiters) + " threads wait in setmaxnreg.inc for registers the "
                       "block's pool never has (" + std::to_string(H().reg_pool) + " free)";
        s.failed = true;
        return false;
    }
}

inline void poison_static() {
    if (__start_emu_smem) std::memset(__start_emu_smem, 0xFF, __stop_emu_smem - __start_emu_smem);
}

}  // namespace emu

#define threadIdx (emu::S().cur->tid)
#define blockIdx (emu::S().block_idx)
#define blockDim (emu::S().block_dim)
#define gridDim (emu::S().grid_dim)
#define warpSize 32

inline void __syncthreads() { emu::yield(emu::BLOCK_BAR); }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) { emu::warp_sync(mask); }
inline size_t __cvta_generic_to_shared(const void* p) { return emu::to_shared(p); }

template <typename T> inline T emu_shfl_from(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of up to 8 bytes");
    unsigned w[2] = {0, 0};
    std::memcpy(w, &v, sizeof(T));
    T r = v;
    emu::warp_exchange(mask, w, 2, [&] {
        if (src >= 0 && src < 32 && (mask >> src & 1u)) std::memcpy(&r, emu::slot(src), sizeof(T));
        else emu::fail("a shuffle reads a lane outside its mask");
    });
    return r;
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
    const int lane = emu::S().cur->lane;
    const int src = (lane ^ m) < ((lane / width) * width + width) ? (lane ^ m) : lane;
    return emu_shfl_from(mask, v, src);
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const int lane = emu::S().cur->lane;
    return emu_shfl_from(mask, v, (lane / width) * width + (src % width));
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    const int lane = emu::S().cur->lane;
    const int src = (int)(lane + d) < ((lane / width) * width + width) ? lane + (int)d : lane;
    return emu_shfl_from(mask, v, src);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    const int lane = emu::S().cur->lane;
    const int src = lane - (int)d >= (lane / width) * width ? lane - (int)d : lane;
    return emu_shfl_from(mask, v, src);
}
