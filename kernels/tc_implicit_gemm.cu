// Tensor-core implicit GEMM convolution: per group g, Y_g (Kg x N*P*Q) = W_g (Kg x R*S*Cp) * X_g (R*S*Cp x N*P*Q)
// on mma.sync (float16 and bfloat16: m16n8k16; float32: m16n8k8 on TF32-rounded inputs), float32 accumulators.
//
// The operands are first packed (tc_pack_x, tc_pack_w) into channel-last layouts with the channels of a group
// padded with zeros to Cp, a multiple of one 16-byte vector (8 16-bit elements or 4 floats):
//   xp (groups, N, H, W, Cp)    wp (K, R, S, Cp)    reduction index kr = (r * S + s) * Cp + c
// so every 16-byte chunk of a reduction slice is one aligned cp.async, whatever C, the strides or the padding
// (a chunk in the zero padding of the image, past the last column or past the reduction is a zero-fill).
// float32 operands are rounded to TF32 (cvt.rna) while packing, so the inner loop converts nothing.
//
// Main kernel. Grid: x = ceil(N*P*Q / BN) column tiles, y = ceil(Kg / BM) row tiles, z = groups.
// Block: WM x WN warps; warp (wm, wn) owns the (BM/WM) x (BN/WN) outputs at rows wm*BM/WM, columns wn*BN/WN.
// Shared memory, dynamic (STAGES * (BM + BN) * TC_PITCH elements, which the launch passes: three stages of a
// 128 x 128 tile are past the 48 KiB static shared memory can hold): STAGES buffers of A [BM][BK + PAD], then
// STAGES of B [BN][BK + PAD] (both reduction-contiguous, the 16-byte PAD keeps ldmatrix rows on distinct banks),
// filled by cp.async STAGES - 1 slices ahead of the slice being multiplied: wait for slice t, one barrier, issue
// slice t + STAGES - 1 into the buffer slice t - 1 used (everyone passed the barrier, so nobody reads it any
// more), multiply slice t.
// Fragments: A with ldmatrix.x4 per 16-row tile; B with ldmatrix.x4 per pair of 8-column tiles (rows of the
// B buffer are output columns, so the non-transposed ldmatrix gives the "col" B operand directly).
// Epilogue: accumulator (row, col) pairs to y (N, K, P, Q), bias added, converted to T.
#include "common.cuh"
#include "dynamic_smem.cuh"

#ifndef BM
#define BM 64  // output channels per block tile
#endif
#ifndef BN
#define BN 64  // output pixels (N*P*Q) per block tile
#endif
#ifndef BK
#define BK 32  // reduction elements per pipeline stage
#endif
#ifndef WM
#define WM 2  // warps along M
#endif
#ifndef WN
#define WN 2  // warps along N
#endif
#ifndef STAGES
#define STAGES 3  // cp.async pipeline depth
#endif
#ifndef PACK_THREADS
#define PACK_THREADS 256
#endif

#define TC_THREADS (WM * WN * 32)
#define TC_VEC (16 / (int)sizeof(T))           // elements per 16-byte chunk
#define TC_PITCH (BK + TC_VEC)                  // shared row pitch in elements: BK + 16 bytes
#define TC_KS (sizeof(T) == 2 ? 16 : 8)         // reduction depth of one mma
#define TC_WTM (BM / WM)                        // warp tile rows
#define TC_WTN (BN / WN)                        // warp tile columns
#define TC_MT (TC_WTM / 16)                     // 16-row mma tiles per warp
#define TC_NT (TC_WTN / 8)                      // 8-column mma tiles per warp
#define TC_CPR (BK / TC_VEC)                    // chunks per shared row
#define TC_A_CHUNKS ((BM * TC_CPR + TC_THREADS - 1) / TC_THREADS)
#define TC_B_CHUNKS ((BN * TC_CPR + TC_THREADS - 1) / TC_THREADS)
#define TC_A_STAGE (BM * TC_PITCH)                // elements of one stage's A buffer
#define TC_B_STAGE (BN * TC_PITCH)
static_assert(sizeof(T) == 2 || sizeof(T) == 4, "tensor-core kernel: T is __half, __nv_bfloat16 or float");
static_assert(TC_WTM % 16 == 0 && TC_WTN % 16 == 0, "a warp tile is a multiple of 16 x 16");
static_assert(BK % 16 == 0, "BK is a multiple of 16");
static_assert(TC_THREADS % TC_CPR == 0, "each thread loads a fixed chunk column of every row it loads");
static_assert(STAGES >= 2, "at least two stages");

// TF32 for float (the tensor core reads the upper 19 bits of a rounded value), identity for the 16-bit types.
static __device__ __forceinline__ float tc_operand(const float v) { return tf32_round_float(v); }
static __device__ __forceinline__ __half tc_operand(const __half v) { return v; }
static __device__ __forceinline__ __nv_bfloat16 tc_operand(const __nv_bfloat16 v) { return v; }

// x (N, C, H, W) -> xp (groups, N, H, W, Cp), zero for c >= C/groups; one thread per element of xp.
extern "C" __global__ __launch_bounds__(PACK_THREADS) void tc_pack_x(const T* __restrict__ x, T* __restrict__ xp,
                                                                     int N, int C, int H, int W, int groups, int Cp)
{
    const int cg = C / groups;
    const long long total = (long long)groups * N * H * W * Cp;
    for (long long i = blockIdx.x * (long long)PACK_THREADS + threadIdx.x; i < total;
         i += (long long)gridDim.x * PACK_THREADS) {
        const int c = (int)(i % Cp);
        long long rest = i / Cp;
        const int iw = (int)(rest % W);
        rest /= W;
        const int ih = (int)(rest % H);
        rest /= H;
        const int n = (int)(rest % N);
        const int g = (int)(rest / N);
        T v = from_acc<T>(ACC_T(0));
        if (c < cg) v = tc_operand(x[(((long long)n * C + (long long)g * cg + c) * H + ih) * W + iw]);
        xp[i] = v;
    }
}

// w (K, C/groups, R, S) -> wp (K, R, S, Cp), zero for c >= C/groups; one thread per element of wp.
extern "C" __global__ __launch_bounds__(PACK_THREADS) void tc_pack_w(const T* __restrict__ w, T* __restrict__ wp,
                                                                     int K, int cg, int R, int S, int Cp)
{
    const long long total = (long long)K * R * S * Cp;
    for (long long i = blockIdx.x * (long long)PACK_THREADS + threadIdx.x; i < total;
         i += (long long)gridDim.x * PACK_THREADS) {
        const int c = (int)(i % Cp);
        long long rest = i / Cp;
        const int s = (int)(rest % S);
        rest /= S;
        const int r = (int)(rest % R);
        const int k = (int)(rest / R);
        T v = from_acc<T>(ACC_T(0));
        if (c < cg) v = tc_operand(w[(((long long)k * cg + c) * R + r) * S + s]);
        wp[i] = v;
    }
}

// threadIdx.x, read afresh (an opaque read the compiler cannot hoist into a register kept across loops).
static __device__ __forceinline__ int thread_index_x() {
#if defined(GPUCONV_EMU)
    return (int)threadIdx.x;
#else
    int t;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
    return t;
#endif
}

// The mma of the element type, chosen by overload on a typed null pointer (T is a macro, not a template).
static __device__ __forceinline__ void tc_mma_of(const __half*, float d[4], const unsigned a[4], const unsigned b[2]) {
    mma_m16n8k16_f16(d, a, b, d);
}
static __device__ __forceinline__ void tc_mma_of(const __nv_bfloat16*, float d[4], const unsigned a[4],
                                                 const unsigned b[2]) {
    mma_m16n8k16_bf16(d, a, b, d);
}
static __device__ __forceinline__ void tc_mma_of(const float*, float d[4], const unsigned a[4], const unsigned b[2]) {
    mma_m16n8k8_tf32(d, a, b, d);
}
static __device__ __forceinline__ void tc_mma(float d[4], const unsigned a[4], const unsigned b[2]) {
    tc_mma_of(static_cast<const T*>(nullptr), d, a, b);
}

extern "C" __global__ __launch_bounds__(TC_THREADS) void tc_implicit_gemm_conv(
    const T* __restrict__ xp, const T* __restrict__ wp, const T* __restrict__ bias, T* __restrict__ y,
    int N, int Cp, int H, int W, int K, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups, int has_bias)
{
    T* const As = reinterpret_cast<T*>(dynamic_smem());  // stage b at As + b * TC_A_STAGE
    T* const Bs = As + STAGES * TC_A_STAGE;                 // stage b at Bs + b * TC_B_STAGE

    const int kg = K / groups;
    const int kred = R * S * Cp;  // padded reduction length, a multiple of TC_VEC
    const int pq = P * Q;
    const int ncols = N * pq;
    const int g = blockIdx.z;
    const int m0 = blockIdx.y * BM;
    const int j0 = blockIdx.x * BN;
    const int tid = threadIdx.x;
    const int lane = tid % 32, warp = tid / 32;
    const int wm0 = (warp / WN) * TC_WTM, wn0 = (warp % WN) * TC_WTN;

    const T* wg = wp + (long long)g * kg * kred;
    const T* xg = xp + (long long)g * N * H * W * Cp;

    // ---- this thread's chunks: a fixed chunk column kc and rows tid / CPR + i * (THREADS / CPR) ----
    const int kc = tid % TC_CPR;
    const int row0 = tid / TC_CPR;
    constexpr int ROW_STEP = TC_THREADS / TC_CPR;
    // The reduction position kr = (r * S + s) * Cp + c of this thread's chunk column in the next slice to load,
    // kept as counters that step by BK per slice (slices are loaded in order): divisions here, none in the loop.
    // rh = r * dil_h and sw = s * dil_w are the tap's input offsets.
    int ld_kr = kc * TC_VEC;
    int ld_c = ld_kr % Cp, ld_s = (ld_kr / Cp) % S;
    int ld_rh = (ld_kr / Cp / S) * dil_h, ld_sw = ld_s * dil_w;

    // Each chunk's source as an offset that every slice advances: A rows (output channels) by BK, into wg;
    // B rows (output columns) by the step of (rh * W + sw) * Cp + c, the same for all of them, into xg. A B row
    // keeps its input origin for the bounds test; a column past N*P*Q gets one far outside the image.
    long long a_pos[TC_A_CHUNKS];
    bool a_live[TC_A_CHUNKS];
#pragma unroll
    for (int i = 0; i < TC_A_CHUNKS; ++i) {
        const int m = m0 + row0 + i * ROW_STEP;
        a_live[i] = m < kg;
        a_pos[i] = (long long)m * kred + ld_kr;
    }
    long long b_pos[TC_B_CHUNKS];
    int b_ih[TC_B_CHUNKS], b_iw[TC_B_CHUNKS];
#pragma unroll
    for (int i = 0; i < TC_B_CHUNKS; ++i) {
        const int j = j0 + row0 + i * ROW_STEP;
        b_pos[i] = 0;
        b_ih[i] = -(1 << 30);
        b_iw[i] = 0;
        if (j < ncols) {
            const int n = j / pq, rem = j - (j / pq) * pq;
            const int p = rem / Q, q = rem - (rem / Q) * Q;
            b_ih[i] = p * stride_h - pad_t;
            b_iw[i] = q * stride_w - pad_l;
            b_pos[i] = (((long long)n * H + b_ih[i] + ld_rh) * W + b_iw[i] + ld_sw) * Cp + ld_c;
        }
    }

    // Issue the cp.async chunks of the next reduction slice into buffer `buf`, then step to the slice after it.
    // A chunk out of range (past the reduction, a missing row, the image's zero padding) is a copy of 0 source
    // bytes, which reads nothing (PTX ISA, cp.async: the src-size bytes are copied, the rest zero-filled), so its
    // source address is passed as computed, unused: selecting an in-bounds one instead cost the slice 22 of its 319
    // instructions at 128 x 128 x 32.
    auto load_slice = [&](int buf) {
        const bool k_ok = ld_kr < kred;
#pragma unroll
        for (int i = 0; i < TC_A_CHUNKS; ++i) {
            const int m = row0 + i * ROW_STEP;
            if (BM % ROW_STEP == 0 || m < BM) {
                const bool ok = k_ok && a_live[i];
                cp_async_16(As + buf * TC_A_STAGE + m * TC_PITCH + kc * TC_VEC, wg + a_pos[i], ok ? 16 : 0);
            }
            a_pos[i] += BK;
        }
#pragma unroll
        for (int i = 0; i < TC_B_CHUNKS; ++i) {
            const int jj = row0 + i * ROW_STEP;
            if (BN % ROW_STEP == 0 || jj < BN) {
                const bool ok = k_ok && (unsigned)(b_ih[i] + ld_rh) < (unsigned)H &&
                                (unsigned)(b_iw[i] + ld_sw) < (unsigned)W;
                cp_async_16(Bs + buf * TC_B_STAGE + jj * TC_PITCH + kc * TC_VEC, xg + b_pos[i], ok ? 16 : 0);
            }
        }
        ld_kr += BK;
        int step = BK;  // the change of (rh * W + sw) * Cp + c
        ld_c += BK;
        while (ld_c >= Cp) {  // at most ceil(BK / Cp) times
            ld_c -= Cp;
            ld_sw += dil_w;
            step += dil_w * Cp - Cp;
            if (++ld_s == S) {
                ld_s = 0;
                step += (dil_h * W - S * dil_w) * Cp;
                ld_sw = 0;
                ld_rh += dil_h;
            }
        }
#pragma unroll
        for (int i = 0; i < TC_B_CHUNKS; ++i) b_pos[i] += step;
    };

    float acc[TC_MT][TC_NT][4];
#pragma unroll
    for (int i = 0; i < TC_MT; ++i)
#pragma unroll
        for (int j = 0; j < TC_NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int nslices = (kred + BK - 1) / BK;
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < nslices) load_slice(st);
        cp_async_commit();  // an empty group where there is no slice: the wait counts stay uniform
    }

    // ldmatrix row addresses of this lane: A rows lane % 16 of a 16-row tile, the second 16 bytes of the
    // k step for lanes 16..31; B rows (output columns) lane % 8 + 8 * (lane / 16), second 16 bytes for
    // lanes 8..15 and 24..31 (matrices: cols 0-7 k-lo, cols 0-7 k-hi, cols 8-15 k-lo, cols 8-15 k-hi).
    const int a_row = wm0 + (lane % 16), a_koff = (lane / 16) * TC_VEC;
    const int b_row = wn0 + (lane % 8) + 8 * (lane / 16), b_koff = ((lane / 8) % 2) * TC_VEC;

    // Slice t sits in stage t % STAGES, and slice t + STAGES - 1 goes to the stage slice t - 1 used: both kept as
    // a counter that wraps, since a modulo by 3 costs more than the loop's other integer work.
    int stage = 0, previous = STAGES - 1;
#pragma unroll 2  // two slices per iteration: fewer loop instructions per mma
    for (int t = 0; t < nslices; ++t) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (t + STAGES - 1 < nslices) load_slice(previous);
        cp_async_commit();

        const T* a_s = As + stage * TC_A_STAGE;
        const T* b_s = Bs + stage * TC_B_STAGE;
        previous = stage;
        stage = stage + 1 == STAGES ? 0 : stage + 1;
#pragma unroll
        for (int ks = 0; ks < BK; ks += TC_KS) {
            unsigned af[TC_MT][4], bf[TC_NT][2];
#pragma unroll
            for (int i = 0; i < TC_MT; ++i) ldmatrix_x4(af[i], a_s + (a_row + 16 * i) * TC_PITCH + ks + a_koff);
#pragma unroll
            for (int j = 0; j < TC_NT; j += 2) {
                unsigned r4[4];
                ldmatrix_x4(r4, b_s + (b_row + 8 * j) * TC_PITCH + ks + b_koff);
                bf[j][0] = r4[0];
                bf[j][1] = r4[1];
                bf[j + 1][0] = r4[2];
                bf[j + 1][1] = r4[3];
            }
#pragma unroll
            for (int i = 0; i < TC_MT; ++i)
#pragma unroll
                for (int j = 0; j < TC_NT; ++j) tc_mma(acc[i][j], af[i], bf[j]);
        }
    }
    cp_async_wait<0>();  // nothing may be in flight into shared memory when the block exits

    // ---- epilogue: accumulator (row, col) of the C/D layout -> y, bias, convert ----
    // The thread's coordinates are read again rather than kept live across the main loop, where ptxas
    // would otherwise spill one of them (the HMMA operands' register alignment leaves it no room).
    const int etid = thread_index_x();
    const int group = (etid % 32) >> 2, tig = etid % 4;
    const int ewm0 = ((etid / 32) / WN) * TC_WTM, ewn0 = ((etid / 32) % WN) * TC_WTN;
#pragma unroll
    for (int i = 0; i < TC_MT; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + ewm0 + 16 * i + group + 8 * h;
            if (m >= kg) continue;
            const int k = g * kg + m;
            const float b = has_bias ? to_acc(bias[k]) : 0.0f;
#pragma unroll
            for (int j = 0; j < TC_NT; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int col = j0 + ewn0 + 8 * j + 2 * tig + e;
                    if (col < ncols) {
                        const int n = col / pq, rem = col - (col / pq) * pq;
                        y[((long long)n * K + k) * pq + rem] = from_acc<T>(acc[i][j][2 * h + e] + b);
                    }
                }
            }
        }
    }
}
