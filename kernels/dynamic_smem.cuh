// Dynamic shared memory: the bytes the launch asks for (its shared-memory size), 16-byte aligned, reached through
// one function. On the GPU an `extern __shared__` array; the CPU emulation defines the function itself, as a
// region of exactly the launch's bytes that ends at an inaccessible page, so a kernel that reads or writes past
// what its launch gave it fails there.
#pragma once

#if !defined(GPUCONV_EMU)
static __device__ __forceinline__ unsigned char* dynamic_smem() {
    extern __shared__ __align__(16) unsigned char gpuconv_dynamic_smem[];
    return gpuconv_dynamic_smem;
}
#endif
