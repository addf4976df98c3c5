// Tests of the warp-level primitives in warp.cuh, one warp per launch: operands are loaded from global memory
// into registers by the PTX ISA's documented fragment layout (see warp.cuh), the primitive runs, and the
// registers are stored back by the same layout. LAYOUT 2 swaps the A registers a1 and a2 while loading, a
// deliberately wrong layout that the tests expect to fail.
#include "common.cuh"

#ifndef LAYOUT
#define LAYOUT 1
#endif

static __device__ __forceinline__ unsigned pack16(unsigned short lo, unsigned short hi) {
    return static_cast<unsigned>(lo) | (static_cast<unsigned>(hi) << 16);
}

// D (16x8) = A (16x16, row-major) * B (16x8, row-major K x N) + C, for 16-bit inputs given as raw bits.
// KIND 1: f16, 2: bf16.
template <int KIND>
static __device__ void mma_k16(const unsigned short* a, const unsigned short* b, const float* c, float* d) {
    const int lane = threadIdx.x, group = lane >> 2, tig = lane % 4;
    unsigned ra[4], rb[2];
    float rc[4], rd[4];
    for (int i = 0; i < 4; ++i) {
        const int row = group + 8 * (i & 1), col = 2 * tig + 8 * (i >> 1);
        ra[i] = pack16(a[row * 16 + col], a[row * 16 + col + 1]);
    }
    if (LAYOUT == 2) {
        const unsigned t = ra[1];
        ra[1] = ra[2];
        ra[2] = t;
    }
    for (int i = 0; i < 2; ++i) {
        const int k = 2 * tig + 8 * i;
        rb[i] = pack16(b[k * 8 + group], b[(k + 1) * 8 + group]);
    }
    for (int i = 0; i < 4; ++i) rc[i] = c[(group + 8 * (i >> 1)) * 8 + 2 * tig + (i & 1)];
    if (KIND == 1) mma_m16n8k16_f16(rd, ra, rb, rc);
    else mma_m16n8k16_bf16(rd, ra, rb, rc);
    for (int i = 0; i < 4; ++i) d[(group + 8 * (i >> 1)) * 8 + 2 * tig + (i & 1)] = rd[i];
}

extern "C" __global__ void mma_f16_test(const __half* a, const __half* b, const float* c, float* d) {
    mma_k16<1>(reinterpret_cast<const unsigned short*>(a), reinterpret_cast<const unsigned short*>(b), c, d);
}

extern "C" __global__ void mma_bf16_test(const unsigned* a_bits, const unsigned* b_bits, const float* c, float* d) {
    // bf16 operands arrive as their 16-bit patterns, two per word (little-endian: element 2i in the low half)
    mma_k16<2>(reinterpret_cast<const unsigned short*>(a_bits), reinterpret_cast<const unsigned short*>(b_bits), c,
               d);
}

// D (16x8) = A (16x8) * B (8x8) + C with A and B rounded to TF32 (cvt.rna) first.
extern "C" __global__ void mma_tf32_test(const float* a, const float* b, const float* c, float* d) {
    const int lane = threadIdx.x, group = lane >> 2, tig = lane % 4;
    unsigned ra[4], rb[2];
    float rc[4], rd[4];
    for (int i = 0; i < 4; ++i) ra[i] = tf32_round(a[(group + 8 * (i & 1)) * 8 + tig + 4 * (i >> 1)]);
    if (LAYOUT == 2) {
        const unsigned t = ra[1];
        ra[1] = ra[2];
        ra[2] = t;
    }
    for (int i = 0; i < 2; ++i) rb[i] = tf32_round(b[(tig + 4 * i) * 8 + group]);
    for (int i = 0; i < 4; ++i) rc[i] = c[(group + 8 * (i >> 1)) * 8 + 2 * tig + (i & 1)];
    mma_m16n8k8_tf32(rd, ra, rb, rc);
    for (int i = 0; i < 4; ++i) d[(group + 8 * (i >> 1)) * 8 + 2 * tig + (i & 1)] = rd[i];
}

// The bits cvt.rna.tf32.f32 gives for each of n floats (one warp, strided).
extern "C" __global__ void tf32_round_test(const float* x, unsigned* out, int n) {
    for (int i = threadIdx.x; i < n; i += 32) out[i] = tf32_round(x[i]);
}

// ldmatrix x1/x2/x4 from a 32 x 8 tile of 16-bit values staged in shared memory (rows padded to 24 elements,
// 48 bytes, so rows stay 16-byte aligned). Lane l points at row l of the tile; out[lane * 4 + j] = register j.
extern "C" __global__ void ldmatrix_test(const __half* tile, unsigned* out1, unsigned* out2, unsigned* out4) {
    __shared__ __align__(16) unsigned short s[32 * 24];
    const int lane = threadIdx.x;
    const unsigned short* t = reinterpret_cast<const unsigned short*>(tile);
    for (int i = lane; i < 32 * 8; i += 32) s[(i / 8) * 24 + i % 8] = t[i];
    __syncthreads();
    const void* row = s + lane * 24;
    unsigned r1[1], r2[2], r4[4];
    ldmatrix_x1(r1, row);
    ldmatrix_x2(r2, row);
    ldmatrix_x4(r4, row);
    out1[lane] = r1[0];
    for (int j = 0; j < 2; ++j) out2[lane * 2 + j] = r2[j];
    for (int j = 0; j < 4; ++j) out4[lane * 4 + j] = r4[j];
}

// cp.async: thread i copies 16 bytes (src_bytes[i] of them from src, the rest zero-filled) into shared memory;
// before[i*4..] is what the destination held before the wait (in the emulation: the poison), after[...] the
// copied data once every thread has waited and met at the barrier (read by the next thread, i + 1 mod n).
extern "C" __global__ void cp_async_test(const float* src, const int* src_bytes, float* before, float* after) {
    __shared__ __align__(16) float s[32 * 4];
    const int i = threadIdx.x, n = blockDim.x;
    cp_async_16(s + 4 * i, src + 4 * i, src_bytes[i]);
    cp_async_commit();
    for (int j = 0; j < 4; ++j) before[4 * i + j] = s[4 * i + j];
    cp_async_wait<0>();
    __syncthreads();
    const int o = (i + 1) % n;
    for (int j = 0; j < 4; ++j) after[4 * o + j] = s[4 * o + j];
}
