// The scheduler behind cuda_emu.h: runs a grid block by block, each block's threads as fibers.
// Compiled once into an object file that is linked into every emulated kernel library.
#include "cuda_emu.h"

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <mutex>

// Defined by the linker in each kernel library that has shared memory; hidden so that one library never sees
// another's, and weak so that a library without shared memory links (they are null then).
extern "C" char __start_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_emu_shared[] __attribute__((weak, visibility("hidden")));

namespace emu {

thread_local ThreadState* current_thread = nullptr;
thread_local BlockState* current_block = nullptr;

namespace {

constexpr std::size_t kStackSize = 256 * 1024;
constexpr int kMaxThreads = 1024;

enum State { kRunnable, kAtBarrier, kAtWarpBarrier, kDone };

struct Fiber {
    ucontext_t ctx;
    ThreadState ts;
    State state;
    int barrier_line;
    char* stack;  // usable part, above a guard page
};

struct Run {
    ucontext_t scheduler;
    Fiber* fibers[kMaxThreads];
    int nthreads;
    Fiber* running;
    BlockState block;
    Body body;
    void* closure;
    bool failed;
    char* err;
    int errlen;
};

thread_local Run* current_run = nullptr;
std::mutex launch_mutex;  // shared memory is one static region per library: one grid at a time
Fiber* pool[kMaxThreads];
int pool_size = 0;
char alt_stack[64 * 1024];
constexpr int kMaxWarps = kMaxThreads / 32;
// The running grid's dynamic shared memory: `dynamic_bytes` (the launch's bytes rounded up to 16) ending at
// `dynamic_guard`, an inaccessible page.
unsigned char* dynamic_base = nullptr;
std::size_t dynamic_bytes = 0;
unsigned char* dynamic_guard = nullptr;
alignas(16) unsigned char exchange[kMaxWarps][2][32 * kExchangeBytes];

void report(Run* run, const char* fmt, ...) {
    if (run->failed) return;
    run->failed = true;
    va_list ap;
    va_start(ap, fmt);
    int used = 0;
    if (run->running != nullptr) {
        const uint3& t = run->running->ts.thread_idx;
        const uint3& b = run->block.block_idx;
        used = std::snprintf(run->err, run->errlen, "block (%u,%u,%u) thread (%u,%u,%u): ", b.x, b.y, b.z, t.x, t.y,
                             t.z);
        if (used < 0 || used >= run->errlen) used = 0;
    }
    std::vsnprintf(run->err + used, run->errlen - used, fmt, ap);
    va_end(ap);
}

Fiber* new_fiber() {
    long page = sysconf(_SC_PAGESIZE);
    void* mem = mmap(nullptr, kStackSize + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return nullptr;
    mprotect(mem, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
    Fiber* f = new Fiber();
    f->stack = static_cast<char*>(mem) + page;
    return f;
}

void fiber_main() {
    Run* run = current_run;
    run->body(run->closure);
    run->running->state = kDone;
    swapcontext(&run->running->ctx, &run->scheduler);
}

// A fault inside a kernel (out-of-bounds pointer, stack overflow) ends the launch with an error instead of the
// process: the handler runs on its own stack and jumps back to the scheduler.
void on_fault(int sig, siginfo_t* info, void*) {
    Run* run = current_run;
    if (run == nullptr || run->running == nullptr) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    const unsigned char* at = static_cast<const unsigned char*>(info->si_addr);
    if (dynamic_guard != nullptr && at >= dynamic_guard && at < dynamic_guard + sysconf(_SC_PAGESIZE))
        report(run, "access at byte %zu of dynamic shared memory, past the launch's %zu bytes",
               dynamic_bytes + static_cast<std::size_t>(at - dynamic_guard), dynamic_bytes);
    else
        report(run, "%s at address %p", sig == SIGSEGV ? "segmentation fault" : "bus error", info->si_addr);
    setcontext(&run->scheduler);
}

unsigned long long next_random(unsigned long long& s) {  // xorshift64*
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ULL;
}

// After a pass in which every fiber ran until it blocked: make runnable the lanes of each warp that all wait
// at one warp barrier; returns whether any did. A warp with some lanes at a warp barrier and others
// elsewhere (at __syncthreads, returned, or at another line) would hang on the GPU: reported.
bool release_warps(Run* run) {
    bool released = false;
    for (int w0 = 0; w0 < run->nthreads; w0 += 32) {
        const int w1 = w0 + 32 < run->nthreads ? w0 + 32 : run->nthreads;
        Fiber* at = nullptr;
        for (int i = w0; i < w1; ++i)
            if (run->fibers[i]->state == kAtWarpBarrier) at = run->fibers[i];
        if (at == nullptr) continue;
        for (int i = w0; i < w1; ++i) {
            Fiber* f = run->fibers[i];
            if (f->state != kAtWarpBarrier || f->barrier_line != at->barrier_line) {
                const uint3 &a = at->ts.thread_idx, &b = f->ts.thread_idx;
                report(run,
                       "block (%u,%u,%u) warp %d: thread (%u,%u,%u) waits at the warp collective at line %d but "
                       "thread (%u,%u,%u) %s (line %d)",
                       run->block.block_idx.x, run->block.block_idx.y, run->block.block_idx.z, w0 / 32, a.x, a.y,
                       a.z, at->barrier_line, b.x, b.y, b.z,
                       f->state == kDone ? "has returned" : f->state == kAtBarrier ? "waits at __syncthreads()"
                                                                                  : "waits at another collective",
                       f->barrier_line);
                return false;
            }
        }
        for (int i = w0; i < w1; ++i) run->fibers[i]->state = kRunnable;
        released = true;
    }
    return released;
}

// Run one block to completion; returns false after an error (already reported).
bool run_block(Run* run, unsigned long long& rng, bool shuffle) {
    if (__start_emu_shared != nullptr) std::memset(__start_emu_shared, 0xFF, __stop_emu_shared - __start_emu_shared);
    if (dynamic_bytes != 0) std::memset(dynamic_base, 0xFF, dynamic_bytes);
    const dim3& bd = run->block.block_dim;
    for (int i = 0; i < run->nthreads; ++i) {
        Fiber* f = run->fibers[i];
        f->ts.thread_idx = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
        f->ts.linear = i;
        f->ts.collectives = 0;
        f->ts.async_pending = 0;
        f->ts.async_groups = 0;
        f->state = kRunnable;
        f->barrier_line = 0;
        getcontext(&f->ctx);
        f->ctx.uc_stack.ss_sp = f->stack;
        f->ctx.uc_stack.ss_size = kStackSize;
        f->ctx.uc_link = nullptr;
        makecontext(&f->ctx, fiber_main, 0);
    }
    int order[kMaxThreads];
    for (int i = 0; i < run->nthreads; ++i) order[i] = i;
    for (int phase = 0;; ++phase) {
        if (shuffle) {
            for (int i = run->nthreads - 1; i > 0; --i) std::swap(order[i], order[next_random(rng) % (i + 1)]);
        }
        do {  // run every runnable fiber; then release the warps whose lanes all wait at a warp barrier
            for (int j = 0; j < run->nthreads; ++j) {
                Fiber* f = run->fibers[order[j]];
                if (f->state != kRunnable) continue;
                run->running = f;
                current_thread = &f->ts;
                swapcontext(&run->scheduler, &f->ctx);
                if (run->failed) return false;
            }
            run->running = nullptr;
        } while (release_warps(run));
        if (run->failed) return false;
        Fiber* done = nullptr;
        Fiber* waiting = nullptr;
        for (int i = 0; i < run->nthreads; ++i) {
            Fiber* f = run->fibers[i];
            if (f->state == kDone) {
                if (done == nullptr) done = f;
            } else if (waiting == nullptr) {
                waiting = f;
            } else if (f->barrier_line != waiting->barrier_line) {
                const uint3 &a = waiting->ts.thread_idx, &b = f->ts.thread_idx;
                report(run,
                       "block (%u,%u,%u): threads (%u,%u,%u) and (%u,%u,%u) wait at different __syncthreads() "
                       "(lines %d and %d)",
                       run->block.block_idx.x, run->block.block_idx.y, run->block.block_idx.z, a.x, a.y, a.z, b.x,
                       b.y, b.z, waiting->barrier_line, f->barrier_line);
                return false;
            }
        }
        if (waiting == nullptr) return true;
        if (done != nullptr) {
            const uint3 &a = waiting->ts.thread_idx, &b = done->ts.thread_idx;
            report(run,
                   "block (%u,%u,%u): __syncthreads() at line %d is not reached by every thread: thread (%u,%u,%u) "
                   "waits there but thread (%u,%u,%u) has returned",
                   run->block.block_idx.x, run->block.block_idx.y, run->block.block_idx.z, waiting->barrier_line,
                   a.x, a.y, a.z, b.x, b.y, b.z);
            return false;
        }
        for (int i = 0; i < run->nthreads; ++i) run->fibers[i]->state = kRunnable;
    }
}

}  // namespace

void syncthreads(int line) {
    Run* run = current_run;
    Fiber* f = run->running;
    f->state = kAtBarrier;
    f->barrier_line = line;
    swapcontext(&f->ctx, &run->scheduler);
}

void syncwarp(int line) {
    Run* run = current_run;
    Fiber* f = run->running;
    f->state = kAtWarpBarrier;
    f->barrier_line = line;
    swapcontext(&f->ctx, &run->scheduler);
}

unsigned char* dynamic_shared() { return dynamic_base; }

unsigned char* warp_exchange() {
    ThreadState& ts = current_run->running->ts;
    return exchange[ts.linear / 32][ts.collectives++ & 1u];
}

void fail(const char* what, const char* file, int line) {
    Run* run = current_run;
    report(run, "%s (%s:%d)", what, file, line);
    setcontext(&run->scheduler);
    __builtin_unreachable();
}

void check_alignment(const void* p, std::size_t align, const char* file, int line) {
    if (reinterpret_cast<std::uintptr_t>(p) % align == 0) return;
    Run* run = current_run;
    report(run, "misaligned %zu-byte load from %p (%s:%d)", align, p, file, line);
    setcontext(&run->scheduler);
}

int run_grid(Body body, void* closure, const unsigned* grid, const unsigned* block, unsigned shared,
             unsigned long long seed, char* err, int errlen) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    err[0] = '\0';
    long nthreads = static_cast<long>(block[0]) * block[1] * block[2];
    if (nthreads < 1 || nthreads > kMaxThreads || grid[0] < 1 || grid[1] < 1 || grid[2] < 1) {
        std::snprintf(err, errlen, "invalid launch: grid (%u,%u,%u), block (%u,%u,%u)", grid[0], grid[1], grid[2],
                      block[0], block[1], block[2]);
        return 1;
    }
    while (pool_size < nthreads) {
        Fiber* f = new_fiber();
        if (f == nullptr) {
            std::snprintf(err, errlen, "out of memory for %ld fiber stacks", nthreads);
            return 1;
        }
        pool[pool_size++] = f;
    }
    // Dynamic shared memory: whole pages with the region at their end, then one inaccessible page.
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t used = (static_cast<std::size_t>(shared) + 15) / 16 * 16;
    const std::size_t mapped = (used + page - 1) / page * page + page;
    void* region = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) {
        std::snprintf(err, errlen, "out of memory for %u bytes of dynamic shared memory", shared);
        return 1;
    }
    dynamic_guard = static_cast<unsigned char*>(region) + mapped - page;
    mprotect(dynamic_guard, page, PROT_NONE);
    dynamic_bytes = used;
    dynamic_base = dynamic_guard - used;

    Run run{};
    run.nthreads = static_cast<int>(nthreads);
    for (int i = 0; i < run.nthreads; ++i) run.fibers[i] = pool[i];
    run.block.block_dim = dim3(block[0], block[1], block[2]);
    run.block.grid_dim = dim3(grid[0], grid[1], grid[2]);
    run.body = body;
    run.closure = closure;
    run.err = err;
    run.errlen = errlen;

    stack_t ss{}, old_ss{};
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof(alt_stack);
    sigaltstack(&ss, &old_ss);
    struct sigaction sa{}, old_segv{}, old_bus{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);

    current_run = &run;
    current_block = &run.block;
    unsigned long long rng = seed * 0x9E3779B97F4A7C15ULL + 1;
    bool ok = true;
    for (unsigned z = 0; ok && z < grid[2]; ++z)
        for (unsigned y = 0; ok && y < grid[1]; ++y)
            for (unsigned x = 0; ok && x < grid[0]; ++x) {
                run.block.block_idx = uint3{x, y, z};
                ok = run_block(&run, rng, seed != 0);
            }
    current_run = nullptr;
    current_block = nullptr;
    current_thread = nullptr;

    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_ss, nullptr);
    munmap(region, mapped);
    dynamic_base = dynamic_guard = nullptr;
    dynamic_bytes = 0;
    return ok ? 0 : 1;
}

}  // namespace emu
