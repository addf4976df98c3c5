// CUDA on the CPU, for tests: the subset of CUDA C++ that the kernels in kernels/ may use.
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread; the runtime (runtime.cpp) runs the
// fibers of a block in turn until each reaches __syncthreads() or returns, checks that all of them reached
// the same barrier, and starts the next phase. Blocks run one after another. Running a block's threads
// cooperatively instead of as OS threads makes the emulation deterministic, fast on few cores, and strict:
// a missing barrier shows up as a wrong result every time (a thread runs ahead and reads shared memory
// that nobody has written yet, or overwrites a tile that others still read), and a __syncthreads() that not
// every thread reaches is reported as an error instead of hanging.
//
// Shared memory: `__shared__` variables are function-local statics placed in the section `emu_shared`,
// which the runtime fills with 0xFF bytes (NaN in every float type) before each block, so a read of
// shared memory that no thread of this block wrote shows up as NaN. (`__shared__` inside a template
// function cannot be placed in the section and is not poisoned.) The section holds the shared memory
// of every kernel in the file, so the 48 KiB per-kernel limit is checked on the PTX instead (see
// tests/test_cuda_compile.py). Dynamic shared memory (the launch's shared-memory bytes, which kernels reach
// through `dynamic_smem()`, an `extern __shared__` array on the GPU) is a region of exactly that size, rounded
// up to 16 bytes, that ends at an inaccessible page: poisoned like the static section before each block, and
// a read or write past its end fails the launch.
//
// Warps: lanes are consecutive linear thread indices, 32 to a warp. `__syncwarp()` parks a fiber until every
// live lane of its warp has reached a warp barrier at the same line (a lane waiting at __syncthreads() or
// returned instead is an error: a warp collective that not every lane executes). The warp-level primitives of
// kernels/warp.cuh (mma, ldmatrix) are built on it and on a per-warp exchange area; cp.async copies are queued
// per thread and performed only when the thread waits for their group, so a read before the wait sees stale
// shared memory.
//
// Not supported, and rejected at compile time where possible: `extern __shared__` written out (kernels call
// `dynamic_smem()` instead), shuffles and votes, atomics, streams, cooperative groups.
#pragma once

#define GPUCONV_EMU 1

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static __attribute__((section("emu_shared")))

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

// A cp.async copy issued but not yet performed: `bytes` read from `src` (the rest of 16 zero-filled).
struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes;
    int group;  // -1 until committed
};
constexpr int kMaxAsyncCopies = 256;

struct ThreadState {
    uint3 thread_idx;
    int linear;              // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
    unsigned collectives;    // warp collectives this thread has entered (selects the exchange buffer)
    int async_pending;       // entries used in `async`
    int async_groups;        // groups committed so far
    AsyncCopy async[kMaxAsyncCopies];
};

struct BlockState {
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};

extern thread_local ThreadState* current_thread;
extern thread_local BlockState* current_block;

void syncthreads(int line);
void syncwarp(int line);
// The calling warp's exchange area for its next collective: 32 slots of kExchangeBytes, slot i for lane i. Two areas alternate, so a lane that has left collective n and entered n + 1
// never overwrites what a slower lane still reads from n.
constexpr int kExchangeBytes = 128;
unsigned char* warp_exchange();
[[noreturn]] void fail(const char* what, const char* file, int line);
void check_alignment(const void* p, std::size_t align, const char* file, int line);
// The launch's dynamic shared memory: 16-byte aligned, as many bytes as the launch asked for.
unsigned char* dynamic_shared();

// ---- the launch interface used by the generated wrappers --------------------------------------------
using Body = void (*)(void*);
int run_grid(Body body, void* closure, const unsigned* grid, const unsigned* block, unsigned shared,
             unsigned long long seed, char* err, int errlen);

template <class... A, std::size_t... I>
void invoke(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
int launch(void (*f)(A...), const unsigned* grid, const unsigned* block, unsigned shared, void** args,
           unsigned long long seed, char* err, int errlen) {
    struct Closure {
        void (*f)(A...);
        void** args;
    } closure{f, args};
    Body body = [](void* c) {
        auto* cl = static_cast<Closure*>(c);
        invoke(cl->f, cl->args, std::index_sequence_for<A...>{});
    };
    return run_grid(body, &closure, grid, block, shared, seed, err, errlen);
}

}  // namespace emu

namespace emu {
inline int lane_id() { return current_thread->linear % 32; }
}  // namespace emu

// What kernels/dynamic_smem.cuh declares as an `extern __shared__` array on the GPU.
inline unsigned char* dynamic_smem() { return ::emu::dynamic_shared(); }

#define threadIdx (::emu::current_thread->thread_idx)
#define blockIdx (::emu::current_block->block_idx)
#define blockDim (::emu::current_block->block_dim)
#define gridDim (::emu::current_block->grid_dim)
#define __syncthreads() ::emu::syncthreads(__LINE__)
#define __syncwarp(...) ::emu::syncwarp(__LINE__)
#define __trap() ::emu::fail("__trap()", __FILE__, __LINE__)
#undef assert
#define assert(cond) ((cond) ? (void)0 : ::emu::fail("assertion failed: " #cond, __FILE__, __LINE__))

// ---- half precision: IEEE binary16 with CUDA's conversion functions, no implicit conversions ----------
struct __align__(2) __half {
    unsigned short __x;
};

inline float __half2float(__half h) {
    _Float16 f;
    std::memcpy(&f, &h, 2);
    return static_cast<float>(f);
}
inline __half __float2half(float v) {  // round to nearest even, as cvt.rn.f16.f32
    _Float16 f = static_cast<_Float16>(v);
    __half h;
    std::memcpy(&h, &f, 2);
    return h;
}
inline __half __float2half_rn(float v) { return __float2half(v); }
inline __half __double2half(double v) {
    _Float16 f = static_cast<_Float16>(v);
    __half h;
    std::memcpy(&h, &f, 2);
    return h;
}
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short v) { return __half{v}; }

struct __align__(4) __half2 {
    __half x, y;
};

// ---- bfloat16: the upper half of an IEEE binary32, with CUDA's conversion functions -----------------------
struct __align__(2) __nv_bfloat16 {
    unsigned short __x;
};

inline float __bfloat162float(__nv_bfloat16 h) {  // exact
    const unsigned u = static_cast<unsigned>(h.__x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float v) {  // round to nearest even, as cvt.rn.bf16.f32; NaN stays NaN
    unsigned u;
    std::memcpy(&u, &v, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<unsigned short>((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{static_cast<unsigned short>(u >> 16)};
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return __nv_bfloat16{v}; }

// ---- vector types: CUDA's sizes and alignments ----------------------------------------------------------
#define EMU_VEC2(T, name) \
    struct __align__(2 * sizeof(T)) name { T x, y; }; \
    inline name make_##name(T x, T y) { return name{x, y}; }
#define EMU_VEC4(T, name, A) \
    struct __align__(A) name { T x, y, z, w; }; \
    inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
EMU_VEC2(float, float2)
EMU_VEC4(float, float4, 16)
EMU_VEC2(double, double2)
EMU_VEC4(double, double4, 16)  // CUDA 13 names the 16-byte-aligned one double4_16a; 32-byte double4_32a
EMU_VEC2(int, int2)
EMU_VEC4(int, int4, 16)
EMU_VEC2(unsigned, uint2)
EMU_VEC4(unsigned, uint4, 16)
#undef EMU_VEC2
#undef EMU_VEC4

// __ldg is where kernels do their vector loads, so it checks the alignment real hardware requires.
template <class V>
inline V emu_ldg(const V* p, const char* file, int line) {
    ::emu::check_alignment(p, alignof(V), file, line);
    return *p;
}
#define __ldg(p) emu_ldg((p), __FILE__, __LINE__)

// ---- math: CUDA's overloads of min/max for mixed operand types ----------------------------------------
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(int a, unsigned b) { return min(static_cast<unsigned>(a), b); }
inline unsigned max(int a, unsigned b) { return max(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return min(a, static_cast<unsigned>(b)); }
inline unsigned max(unsigned a, int b) { return max(a, static_cast<unsigned>(b)); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(static_cast<double>(a), b); }
inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
inline double min(double a, float b) { return std::fmin(a, static_cast<double>(b)); }
inline double max(double a, float b) { return std::fmax(a, static_cast<double>(b)); }
using std::fma;
using std::fmaf;

// ---- what the Python side checks each launch against: one code per kernel parameter --------------------
namespace emu {

template <class A>
constexpr const char* param_code() {
    if constexpr (std::is_pointer_v<A>) {
        using P = std::remove_cv_t<std::remove_pointer_t<A>>;
        if constexpr (std::is_same_v<P, float>) return "p:float32";
        else if constexpr (std::is_same_v<P, double>) return "p:float64";
        else if constexpr (std::is_same_v<P, __half>) return "p:float16";
        else if constexpr (std::is_same_v<P, __nv_bfloat16>) return "p:bfloat16";
        else if constexpr (std::is_same_v<P, int>) return "p:int32";
        else if constexpr (std::is_same_v<P, unsigned>) return "p:uint32";
        else return "p:other";
    } else if constexpr (std::is_same_v<A, int>) {
        return "i";
    } else {
        return "unsupported";  // kernels take only pointers and int scalars
    }
}

template <class... A>
const char* signature(void (*)(A...)) {
    static char buf[1024];
    if (buf[0] == '\0') {
        const char* parts[] = {param_code<A>()..., nullptr};
        std::size_t used = 0;
        for (int i = 0; parts[i] != nullptr; ++i) {
            std::size_t n = std::strlen(parts[i]);
            if (used + n + 2 >= sizeof(buf)) break;
            if (i > 0) buf[used++] = ',';
            std::memcpy(buf + used, parts[i], n);
            used += n;
        }
        buf[used] = '\0';
        if (used == 0) buf[0] = '\0';
    }
    return buf;
}

}  // namespace emu
