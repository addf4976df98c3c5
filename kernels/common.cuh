// Shared by every kernel: default element/accumulator types, __half and __nv_bfloat16, and conversions to and from
// the accumulator.
//
// T is the element type of x, w, bias and y (float, double, __half or __nv_bfloat16); ACC_T the type sums are
// kept in (float for float and the 16-bit types, double for double). Python defines both; the defaults let a file
// compile alone. Only the tensor-core kernel is built for __nv_bfloat16.
#pragma once

#ifndef T
#define T float
#endif
#ifndef ACC_T
#define ACC_T float
#endif

// __half: the toolkit's cuda_fp16.h where the compiler can see it (nvcc, NVRTC with a toolkit include path);
// otherwise the storage type and the two conversions the kernels need, with the same PTX cuda_fp16.hpp uses.
// Users of the CuPy wheels have NVRTC but no headers, and the kernels never do arithmetic in half precision.
#if !defined(GPUCONV_EMU)
#if defined(__has_include)
#if __has_include(<cuda_fp16.h>)
#include <cuda_fp16.h>
#define GPUCONV_HAVE_CUDA_FP16 1
#endif
#endif
#if !defined(GPUCONV_HAVE_CUDA_FP16)
struct __align__(2) __half {
    unsigned short __x;
};
static __device__ __forceinline__ float __half2float(const __half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.__x));
    return f;
}
static __device__ __forceinline__ __half __float2half(const float f) {
    __half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.__x) : "f"(f));
    return h;
}
#endif
#endif  // !GPUCONV_EMU (the emulation header defines __half and its conversions)

// __nv_bfloat16 likewise: cuda_bf16.h where it can be seen, else the storage type and the two conversions
// (cvt.rn.bf16.f32 is sm_80 PTX; widening is exact: a bfloat16 is the upper half of a float).
#if !defined(GPUCONV_EMU)
#if defined(__has_include)
#if __has_include(<cuda_bf16.h>)
#include <cuda_bf16.h>
#define GPUCONV_HAVE_CUDA_BF16 1
#endif
#endif
#if !defined(GPUCONV_HAVE_CUDA_BF16)
struct __align__(2) __nv_bfloat16 {
    unsigned short __x;
};
static __device__ __forceinline__ float __bfloat162float(const __nv_bfloat16 h) {
    float f;
    asm("mov.b32 %0, {%1, %2};" : "=f"(f) : "h"((unsigned short)0), "h"(h.__x));  // {low, high} halves
    return f;
}
static __device__ __forceinline__ __nv_bfloat16 __float2bfloat16(const float f) {
    __nv_bfloat16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.__x) : "f"(f));
    return h;
}
#endif
#endif  // !GPUCONV_EMU (the emulation header defines __nv_bfloat16 and its conversions)

static __device__ __forceinline__ float to_acc(const float v) { return v; }
static __device__ __forceinline__ double to_acc(const double v) { return v; }
static __device__ __forceinline__ float to_acc(const __half v) { return __half2float(v); }
static __device__ __forceinline__ float to_acc(const __nv_bfloat16 v) { return __bfloat162float(v); }

template <class U>
__device__ __forceinline__ U from_acc(ACC_T v);
template <>
__device__ __forceinline__ float from_acc<float>(ACC_T v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ double from_acc<double>(ACC_T v) { return static_cast<double>(v); }
template <>
__device__ __forceinline__ __half from_acc<__half>(ACC_T v) { return __float2half(static_cast<float>(v)); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(ACC_T v) {
    return __float2bfloat16(static_cast<float>(v));
}

// Integer ceiling division for tile counts.
static __device__ __forceinline__ int ceil_div(const int a, const int b) { return (a + b - 1) / b; }

// Alignment of a pointer about to be used for a vector store: checked by the CPU emulation, free on the GPU.
#if defined(GPUCONV_EMU)
#define GPUCONV_CHECK_ALIGNED(p, n) ::emu::check_alignment((p), (n), __FILE__, __LINE__)
#else
#define GPUCONV_CHECK_ALIGNED(p, n) ((void)0)
#endif

// Tensor-core mma, ldmatrix, cp.async and TF32 rounding (sm_80+ PTX; emulated per the ISA's fragment layout).
#include "warp.cuh"
