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
//   NaN as float), the dynamic part ends at a guard page, and every 32-bit shared address the
//   kernel makes (cvta, cp.async, ldmatrix, TMA, wgmma descriptors) must fall inside it;
// - cp.async copies land only when a cp.async.wait_group retires their group (the latest moment
//   the PTX ISA allows), and their destination is poisoned when they are issued (the earliest),
//   so reading a stage before its wait, or a copy issued over data other threads still read
//   (a write-after-read race), sees the poison;
// - alignment of 16-byte cp.async operands;
// - faults (a read past a global buffer's guard page) are caught and reported with the address.
#pragma once
#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <csignal>
#include <cstdint>
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

enum Wait { RUN = 0, BLOCK_BAR = 1, WARP_BAR = 2, SPIN = 3 };

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

inline unsigned* slot(int lane) { State& s = S(); return &s.xchg[((size_t)s.cur->warp * 32 + lane) * 64]; }

// Exchange: every lane of `mask` publishes `words` uint32s, all read them, then meet again.
template <typename F>
inline void warp_exchange(unsigned mask, const unsigned* mine, int words, F&& read) {
    std::memcpy(slot(S().cur->lane), mine, sizeof(unsigned) * words);
    warp_sync(mask);
    read();
    warp_sync(mask);
}

// ---------------------------------------------------------------- cp.async
inline void cp_issue(unsigned dst, const void* src, unsigned nbytes, unsigned src_bytes) {
    State& s = S();
    if (dst % nbytes) fail("cp.async: shared destination not aligned to the copy size");
    char* d = from_shared(dst, nbytes, "cp.async destination");
    if (!d) return;
    // From the issue until the wait_group that retires it the destination is being written at a
    // time the PTX ISA leaves open: poison it now (a read or write of it by any thread before the
    // copy's wait and barrier, a write-after-read race included, sees or leaves the poison).
    std::memset(d, 0xFF, nbytes);
    PendingCopy c{dst, nbytes, {0}};
    if (src_bytes) {
        if ((uintptr_t)src % nbytes) fail("cp.async: global source not aligned to the copy size");
        std::memcpy(c.data, src, src_bytes);
    }
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
            if (d) std::memcpy(d, c.data, c.nbytes);
        }
        t->groups.erase(t->groups.begin());
    }
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
        t.wait = RUN; t.done = false; t.groups.clear(); t.open.clear();
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = s.stacks[i];
        t.ctx.uc_stack.ss_size = s.stack_bytes;
        t.ctx.uc_link = nullptr;
        makecontext(&t.ctx, (void (*)())fiber_main, 2, (unsigned)(pp & 0xFFFFFFFFu), (unsigned)(pp >> 32));
    }
    const int warps = (n + 31) / 32;
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
                    if (t.done || (t.wait != RUN && t.wait != SPIN)) continue;
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
        int live = 0, at_block = 0, spinning = 0;
        for (auto& t : s.threads) {
            if (t.done) continue;
            ++live;
            at_block += t.wait == BLOCK_BAR;
            spinning += t.wait == SPIN;
        }
        if (!live) return true;
        for (int w = 0; w < warps; ++w) changed = release(w) || changed;
        if (s.failed) return false;
        if (changed) { spins = 0; continue; }
        if (at_block == live) {   // __syncthreads: every live thread arrived (exited ones count as arrived)
            for (auto& t : s.threads) if (!t.done) t.wait = RUN;
            spins = 0;
            ++phase;
            continue;
        }
        if (spinning && spins < 100000 * live) continue;
        char buf[200];
        std::snprintf(buf, sizeof buf, "deadlock in block (%u,%u,%u): %d live threads, %d at __syncthreads, %d spinning, "
                      "the rest at warp collectives whose lanes do not all arrive",
                      s.block_idx.x, s.block_idx.y, s.block_idx.z, live, at_block, spinning);
        s.error = buf;
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
