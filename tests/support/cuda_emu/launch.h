// launch.h: the kernel registry and the C entry points of an emulated module (included after
// the module's source and its EMU_REGISTER lines; see tests/support/cuda_emu/__init__.py).
#pragma once
#include <type_traits>
#include <utility>

namespace emu {

template <typename... A, size_t... I>
inline void invoke_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*reinterpret_cast<std::decay_t<A>*>(args[I])...);
}
template <typename... A>
inline void invoke(void* fn, void** args) {
    invoke_impl(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}

struct Entry { std::string name; void* fn; Invoker inv; std::vector<size_t> sizes; };
inline std::vector<Entry>& registry() { static std::vector<Entry> r; return r; }

template <typename... A>
inline int reg(const char* name, void (*f)(A...)) {
    registry().push_back({name, reinterpret_cast<void*>(f), &invoke<A...>, {sizeof(std::decay_t<A>)...}});
    return 0;
}

inline void release_dyn() {
    State& s = S();
    if (s.dyn_map) munmap(s.dyn_map, s.dyn_map_bytes);
    s.dyn_map = nullptr; s.dyn = nullptr; s.dyn_bytes = 0;
}

}  // namespace emu

extern "C" {

int emu_count() { return (int)emu::registry().size(); }
const char* emu_name(int i) { return emu::registry()[i].name.c_str(); }
int emu_nparams(int i) { return (int)emu::registry()[i].sizes.size(); }
long emu_param_size(int i, int j) { return (long)emu::registry()[i].sizes[j]; }
const char* emu_error() { return emu::S().error.c_str(); }

// The hazard check (race.h): on or off, the global buffers of the next launch, what it found.
void emu_set_race(int on) { emu::R().on = on != 0; }
void emu_add_global(char* lo, long n) {
    emu::RaceState& r = emu::R();
    r.globals.push_back({lo, (size_t)n, std::vector<emu::Shadow>((size_t)n)});
    if (!r.glo || lo < r.glo) r.glo = lo;
    if (!r.ghi || lo + n > r.ghi) r.ghi = lo + n;
}
void emu_clear_globals() { emu::R().globals.clear(); emu::R().glo = emu::R().ghi = nullptr; }
long emu_hazards() { return emu::R().hazards; }
const char* emu_first_hazard() { return emu::R().first.c_str(); }
long emu_static_smem() { return __start_emu_smem ? (long)(__stop_emu_smem - __start_emu_smem) : 0; }

// Runs kernel i over the grid; 0 when it ran to the end, 1 on a failure (emu_error says which).
int emu_launch(int i, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
               long smem, void** args) {
    using namespace emu;
    State& s = S();
    s.failed = false; s.error.clear(); s.cur = nullptr;
    R().hazards = 0; R().first.clear(); R().epoch = 1;
    const emu::Entry& e = registry()[i];
    const int n = (int)(bx * by * bz);
    s.block_dim = {bx, by, bz}; s.grid_dim = {gx, gy, gz};
    // fiber stacks, each above a guard page
    while ((int)s.stacks.size() < n) {
        const size_t bytes = s.stack_bytes + 4096;
        char* m = (char*)mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        mprotect(m, 4096, PROT_NONE);
        s.stacks.push_back(m + 4096);
    }
    s.threads.assign(n, Thread());
    s.xchg.assign((size_t)((n + 31) / 32) * 32 * 64, 0u);
    // dynamic shared memory: its last byte just below a PROT_NONE page; its shared addresses
    // follow the static section's and start 16 bytes past a 1024-byte boundary: the alignment the
    // kernels' `extern __shared__ __align__(16)` asks for and no more (on the GPU where it starts
    // depends on the kernel's static shared memory), so a kernel that rounds its base up to the
    // 1024 bytes of a 128-byte swizzle pattern needs, and is checked for, the most slack there
    // is (1008 bytes); address and pointer agree modulo 16
    release_dyn();
    const size_t pages = ((size_t)smem + 15 + 4095) / 4096 + 1;
    s.dyn_map_bytes = pages * 4096;
    s.dyn_map = (char*)mmap(nullptr, s.dyn_map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char* guard = s.dyn_map + s.dyn_map_bytes - 4096;
    mprotect(guard, 4096, PROT_NONE);
    s.dyn = (char*)((uintptr_t)(guard - smem) & ~(uintptr_t)15);
    s.dyn_bytes = (size_t)smem;
    const size_t static_span = __start_emu_smem ? (size_t)(__stop_emu_smem - static_lo()) : 0;
    const unsigned dyn_off = (unsigned)(s.dyn - s.dyn_map);          // a multiple of 16
    s.dyn_addr0 = (unsigned)((static_span + 4095) / 4096 * 4096) + ((16u - dyn_off) & 1023u);

    // faults (including fiber stack overflow) jump back here
    static char altstack[64 * 1024];
    stack_t ss{}; ss.ss_sp = altstack; ss.ss_size = sizeof altstack; ss.ss_flags = 0;
    stack_t old_ss{};
    sigaltstack(&ss, &old_ss);
    struct sigaction sa{}, old_segv{}, old_bus{};
    sa.sa_sigaction = on_fault; sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    Fault& f = F();
    int rc = 0;
    if (sigsetjmp(f.env, 1) == 0) {
        f.armed = true;
        for (unsigned z = 0; z < gz && !rc; ++z)
            for (unsigned y = 0; y < gy && !rc; ++y)
                for (unsigned x = 0; x < gx && !rc; ++x) {
                    s.block_idx = {x, y, z};
                    poison_static();
                    std::memset(s.dyn, 0xFF, s.dyn_bytes);
                    if (!run_block(e.inv, e.fn, args)) rc = 1;
                }
    } else {
        char buf[240];
        std::snprintf(buf, sizeof buf, "memory fault (signal %d) at address %p in block (%u,%u,%u)%s", f.sig, f.addr,
                      s.block_idx.x, s.block_idx.y, s.block_idx.z,
                      (char*)f.addr >= s.dyn_map && (char*)f.addr < s.dyn_map + s.dyn_map_bytes
                          ? ": past the end of dynamic shared memory" : "");
        s.error = buf;
        rc = 1;
    }
    f.armed = false;
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_ss, nullptr);
    s.cur = nullptr;
    release_dyn();
    return rc;
}

}  // extern "C"
