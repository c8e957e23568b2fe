// race.h: the emulator's hazard check (tests/support/cuda_emu), compute-sanitizer racecheck's
// question asked of a model: do two threads touch the same byte, at least one writing, with no
// barrier between them?
//
// Every load and store of the kernel is seen: the module is compiled with
// -fsanitize=kernel-address and outline instrumentation, whose callbacks (__asan_loadN_noabort,
// ...) are defined here instead of by a sanitizer runtime.  Only bytes of the block's shared
// memory and of the launch's global buffers are tracked; a thread's registers and stack are not.
//
// Ordering model: a block-wide barrier (__syncthreads) orders everything before it against
// everything after it; a warp collective (__syncwarp, shuffles, mma.sync) orders the accesses of
// the lanes of that warp.  Global bytes written by one block and touched by another in the same
// launch are a hazard too (blocks run in any order on the device).  The check is exact for these
// rules, per byte, except that after several threads of one warp read a byte, a write by a third
// lane of that warp is judged against the latest of those reads.
// Not modelled: ordering through mbarriers.  TMA writes (the async proxy, runtime.h's memcpy) are
// not tracked, so the Hopper pipeline's stages are checked by the stand-ins instead (a wgmma's
// operands must not change between its issue and the wait that retires it; TMA bytes land at the
// barrier wait).
#pragma once

#define EMU_NOSAN __attribute__((no_sanitize("kernel-address"), no_sanitize_address))

namespace emu {

struct Shadow {            // one byte: the last write and the reads since, in the current epoch
    uint32_t w_epoch = 0, r_epoch = 0;
    int32_t w_block = -1, r_block = -1;    // global bytes: the block of the last write / read (-2: several)
    int16_t w_thread = -1, r_thread = -1;  // -2: several threads
    int16_t r_warp = -1;                   // -2: several warps
    uint16_t w_wep = 0, r_wep = 0;         // the warp's collective count at the access
};

struct RaceState {
    bool on = false;
    uint32_t epoch = 1;                    // block barriers passed in this launch, + blocks started
    std::vector<uint16_t> warp_epoch;      // warp collectives completed, per warp
    std::vector<Shadow> shared_static, shared_dyn;
    struct Global { char* lo; size_t n; std::vector<Shadow> sh; };
    std::vector<Global> globals;
    const char* glo = nullptr;             // the span of all global buffers, for a quick test
    const char* ghi = nullptr;
    int32_t block = 0;                     // linear id of the running block
    std::string first;                     // the first hazard found
    long hazards = 0;
};
EMU_NOSAN inline RaceState& R() { static RaceState r; return r; }

EMU_NOSAN inline Shadow* shadow_of(const char* p, bool& global) {
    State& s = S();
    RaceState& r = R();
    global = false;
    if (__start_emu_smem && p >= __start_emu_smem && p < __stop_emu_smem) return &r.shared_static[p - __start_emu_smem];
    if (s.dyn && p >= s.dyn && p < s.dyn + s.dyn_bytes) return &r.shared_dyn[p - s.dyn];
    for (auto& g : r.globals)
        if (p >= g.lo && p < g.lo + g.n) { global = true; return &g.sh[p - g.lo]; }
    return nullptr;
}

EMU_NOSAN inline void hazard(const char* kind, const char* p, bool global, int other_thread, int other_block) {
    RaceState& r = R();
    State& s = S();
    if (r.hazards++ == 0) {
        char buf[320];
        const unsigned me = s.cur ? (unsigned)s.cur->linear : 0u;
        if (other_block >= 0 && other_block != r.block)
            std::snprintf(buf, sizeof buf, "%s hazard on %s byte %p between block %d and block %d (thread %u)", kind,
                          global ? "global" : "shared", (const void*)p, other_block, r.block, me);
        else
        {
            char other[32];
            if (other_thread >= 0) std::snprintf(other, sizeof other, "thread %d", other_thread);
            else std::snprintf(other, sizeof other, "several threads");
            std::snprintf(buf, sizeof buf, "%s hazard on %s byte %p%s between %s and thread %u of block (%u,%u,%u) "
                          "with no barrier between them", kind, global ? "global" : "shared", (const void*)p,
                          global ? "" : (" (shared address " + std::to_string(to_shared(p)) + ")").c_str(), other, me,
                          s.block_idx.x, s.block_idx.y, s.block_idx.z);
        }
        r.first = buf;
    }
}

// Is an access by (thread `other`, warp collective count `wep`) of this epoch ordered before the
// current thread's access now?  Only through a later collective of the same warp.
EMU_NOSAN inline bool ordered(int other, uint16_t wep) {
    Thread* t = S().cur;
    if (other == t->linear) return true;
    if (other < 0) return false;
    return other / 32 == t->warp && wep < R().warp_epoch[t->warp];
}

// A quick test before anything else: most accesses are to the thread's own stack (registers).
EMU_NOSAN inline bool race_tracked(const void* addr, long n) {
    const RaceState& r = R();
    const char* p = (const char*)addr;
    if (!r.on) return false;
    const State& s = S();
    if (__start_emu_smem && p + n > __start_emu_smem && p < __stop_emu_smem) return true;
    if (s.dyn && p + n > s.dyn && p < s.dyn + s.dyn_bytes) return true;
    return p + n > r.glo && p < r.ghi;
}

EMU_NOSAN inline void on_access(const void* addr, long n, bool write) {
    // Out-of-line code called from here (and the first construction of R() and S()) is
    // instrumented too: its callbacks return at once.
    static bool busy = false;
    if (busy) return;
    busy = true;
    struct Done { ~Done() { busy = false; } } done;
    if (!race_tracked(addr, n)) return;
    RaceState& r = R();
    State& s = S();
    if (!s.cur || s.failed) return;
    Thread* t = s.cur;
    const uint16_t wep = r.warp_epoch[t->warp];
    for (long i = 0; i < n; ++i) {
        const char* p = (const char*)addr + i;
        bool global;
        Shadow* sh = shadow_of(p, global);
        if (!sh) { if (i == 0) return; continue; }
        if (global) {   // another block's write, or a write over another block's read
            if (sh->w_block >= 0 && sh->w_block != r.block) hazard(write ? "write-after-write" : "read-after-write", p, true, -1, sh->w_block);
            if (write && (sh->r_block == -2 || (sh->r_block >= 0 && sh->r_block != r.block)))
                hazard("write-after-read", p, true, -1, sh->r_block);
            if (write) sh->w_block = r.block;
            else sh->r_block = sh->r_block == -1 || sh->r_block == r.block ? r.block : -2;
        }
        if (write) {
            if (sh->w_epoch == r.epoch && !ordered(sh->w_thread, sh->w_wep)) hazard("write-after-write", p, global, sh->w_thread, -1);
            if (sh->r_epoch == r.epoch) {
                const bool ok = sh->r_warp == t->warp && (sh->r_thread == t->linear || sh->r_wep < wep);
                if (!ok) hazard("write-after-read", p, global, sh->r_thread, -1);
            }
            sh->w_epoch = r.epoch; sh->w_thread = (int16_t)t->linear; sh->w_wep = wep;
        } else {
            if (sh->w_epoch == r.epoch && !ordered(sh->w_thread, sh->w_wep)) hazard("read-after-write", p, global, sh->w_thread, -1);
            if (sh->r_epoch != r.epoch) {
                sh->r_epoch = r.epoch; sh->r_thread = (int16_t)t->linear; sh->r_warp = (int16_t)t->warp; sh->r_wep = wep;
            } else {
                if (sh->r_thread != t->linear) sh->r_thread = -2;
                if (sh->r_warp != t->warp) sh->r_warp = -2;
                if (wep > sh->r_wep) sh->r_wep = wep;
            }
        }
    }
}

// Scheduler hooks.
inline void race_block_start(int warps, int32_t block) {
    RaceState& r = R();
    if (!r.on) return;
    ++r.epoch;                     // epochs never repeat within a launch: old blocks' accesses never match
    r.block = block;
    r.warp_epoch.assign(warps, 0);
    r.shared_static.assign(__start_emu_smem ? (size_t)(__stop_emu_smem - __start_emu_smem) : 0, Shadow());
    r.shared_dyn.assign(S().dyn_bytes, Shadow());
}
inline void race_block_barrier() { if (R().on) ++R().epoch; }
inline void race_warp_sync(int warp) { if (R().on) ++R().warp_epoch[warp]; }

}  // namespace emu

// The instrumentation's callbacks (-fsanitize=kernel-address, outline calls).
extern "C" {
#define EMU_ASAN_CB(n)                                                                  \
    EMU_NOSAN void __asan_load##n##_noabort(void* p) { emu::on_access(p, n, false); }   \
    EMU_NOSAN void __asan_store##n##_noabort(void* p) { emu::on_access(p, n, true); }
EMU_ASAN_CB(1) EMU_ASAN_CB(2) EMU_ASAN_CB(4) EMU_ASAN_CB(8) EMU_ASAN_CB(16)
#undef EMU_ASAN_CB
EMU_NOSAN void __asan_loadN_noabort(void* p, long n) { emu::on_access(p, n, false); }
EMU_NOSAN void __asan_storeN_noabort(void* p, long n) { emu::on_access(p, n, true); }
void __asan_handle_no_return() {}
void __asan_before_dynamic_init(const char*) {}
void __asan_after_dynamic_init() {}
}
