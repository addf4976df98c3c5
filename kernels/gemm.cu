// Register-tiled GEMM with a fused bias: C(m, j) = sum_k A(m, k) * B(k, j) + bias(m), batched over gridDim.z.
//
// Operands (z = blockIdx.z, the batch index, e.g. the convolution group):
//   A(m, k) = A[z*a_batch + m*lda + k]                                      M x K, row-major (the weights)
//   B(k, j) = B[z*b_batch + k*ldb + (j / b_cols)*b_img + j % b_cols]        K x N (im2col columns, or x itself)
//   C(m, j) = C[z*c_batch + m*ldc + (j / c_cols)*c_img + j % c_cols]        M x N (y)
//   bias(m) = bias[z*bias_batch + m] when has_bias
// The column split j -> (image, offset) lets N run over several images of an NCHW tensor, so small images
// (7x7 layers) still fill whole tiles: for a 1x1 convolution B is x itself (b_cols = H*W, b_img = C*H*W)
// and for every convolution C is y (c_cols = P*Q, c_img = K*P*Q).
//
// Grid: x = ceil(N / BN), y = ceil(M / BM), z = batch (only the product of x and y matters: see m0, n0).
// Block: (BM/TM) * (BN/TN) threads, 1-d.
// Offsets within one batch entry are 32-bit (fewer registers): the caller keeps each operand's extent below
// 2**31 elements; the batch offsets z * *_batch are 64-bit.
//
// Per block, each BK-deep slice of A and B goes global -> registers -> shared memory (ACC_T, so the inner
// loop does no conversions), double-buffered: the loads of slice t+1 are issued before slice t is
// multiplied and stored into the other buffer after it, so one barrier per slice suffices and the global
// latency overlaps the FMAs.
//
// Speed, by construction (H100/H200):
// - Global loads are 16 bytes (uint4) along the contiguous dimension of each operand whenever the block's
//   base pointer, leading dimension and image split allow (checked once per block), else element-wise
//   with the same thread-to-data map. A: two threads share a row's 32-byte sector per 8 floats of BK;
//   B: consecutive threads read consecutive columns (coalesced).
// - A is stored transposed (As[k][m], pitch BM + 16 bytes): the transposing store is conflict-free and
//   the inner loop reads A and B fragments as 16-byte vectors.
// - Thread (tm, tn) owns TM x TN outputs split into 16-byte groups: rows g*(BM/TM)*AV + tm*AV + [0, AV)
//   and columns g*(BN/TN)*BV + tn*BV + [0, BV). A warp's fragment reads are then contiguous 16-byte
//   pieces (conflict-free, broadcast across tm), and each thread stores BV consecutive outputs per row:
//   coalesced, vectorized when aligned.
// - TM*TN accumulators per thread in registers; TM + TN shared loads (as vectors) per TM*TN FMAs.
#include "fragments.cuh"

#ifndef BM
#define BM 128  // rows of C per block
#endif
#ifndef BN
#define BN 128  // columns of C per block
#endif
#ifndef BK
#define BK 8  // reduction slice per step
#endif
#ifndef TM
#define TM 8  // rows per thread
#endif
#ifndef TN
#define TN 8  // columns per thread
#endif

// C's element type: T, or with GEMM_ACC_OUT defined ACC_T (a workspace summed further, e.g. by col2im, keeps
// float16 products in float32).
#if defined(GEMM_ACC_OUT)
#define GEMM_OUT_T ACC_T
#else
#define GEMM_OUT_T T
#endif

#define GEMM_THREADS ((BM / TM) * (BN / TN))

namespace gemm_detail {
constexpr int kThreads = GEMM_THREADS;
constexpr int kVec = 16 / sizeof(T);         // elements per 16-byte global load
constexpr int kAccVec = 16 / sizeof(ACC_T);  // ACC_T elements per 16-byte shared access
constexpr int kAV = TM < kAccVec ? TM : kAccVec;
constexpr int kBV = TN < kAccVec ? TN : kAccVec;
constexpr int kAPitch = BM + kAccVec;
constexpr int kARowUnits = BK / kVec;  // 16-byte units per row of the A slice
constexpr int kBRowUnits = BN / kVec;  // 16-byte units per row of the B slice
constexpr int kALoads = (BM * kARowUnits + kThreads - 1) / kThreads;
constexpr int kBLoads = (BK * kBRowUnits + kThreads - 1) / kThreads;
constexpr int kMStride = (BM / TM) * kAV;  // between a thread's row groups
constexpr int kNStride = (BN / TN) * kBV;  // between a thread's column groups
// Ask for two resident blocks per SM when a rough register estimate (accumulators, fragments, prefetch
// registers, ~24 for addresses) leaves room: 8x8 float tiles then fit in 128 registers without spills.
constexpr int kAccWords = sizeof(ACC_T) / 4;
// C stored wider than T (GEMM_ACC_OUT with float16) keeps more live in the epilogue: at 8x8 float16 tiles
// and 128 registers ptxas spilled 40 bytes.
constexpr int kRegEstimate = (TM * TN + TM + TN + (kALoads + kBLoads) * kVec) * kAccWords + 24 +
                             (sizeof(GEMM_OUT_T) > sizeof(T) ? 2 * TN : 0);
constexpr int kMinBlocks = kRegEstimate * kThreads * 2 <= 65536 ? 2 : 1;

static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
static_assert(BK % kVec == 0 && BN % kVec == 0, "BK and BN must be multiples of a 16-byte vector");
static_assert(TM % kAV == 0 && TN % kBV == 0, "thread tiles are made of 16-byte groups");
static_assert(kThreads >= 32 && kThreads <= 1024, "threads per block");

union Raw16 {
    uint4 u;
    T e[kVec];
};
struct __align__(kBV * sizeof(GEMM_OUT_T)) OutVec {
    GEMM_OUT_T e[kBV];
};

static __device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}
}  // namespace gemm_detail

extern "C" __global__ __launch_bounds__(GEMM_THREADS, gemm_detail::kMinBlocks) void gemm(
    const T* __restrict__ A, const T* __restrict__ B, const T* __restrict__ bias, GEMM_OUT_T* __restrict__ C,
    int M, int N, int K,
    int lda, int a_batch,
    int ldb, int b_batch, int b_cols, int b_img,
    int ldc, int c_batch, int c_cols, int c_img,
    int bias_batch, int has_bias)
{
    using namespace gemm_detail;
    __shared__ __align__(16) ACC_T As[2][BK][kAPitch];
    __shared__ __align__(16) ACC_T Bs[2][BK][BN];

    const int tid = threadIdx.x;
    const int z = blockIdx.z;
    // Blocks are numbered with the M tiles fastest, whatever the grid's shape: the blocks resident at one time
    // then share their B tiles (the large operand) through L2, and A (the weights) stays in L2 anyway.
    const unsigned long long id = (unsigned long long)blockIdx.y * gridDim.x + blockIdx.x;
    const int m0 = (int)(id % gridDim.y) * BM;
    const int n0 = (int)(id / gridDim.y) * BN;
    const int tn = tid % (BN / TN), tm = tid / (BN / TN);

    const T* Az = A + (long long)z * a_batch;
    const T* Bz = B + (long long)z * b_batch;
    // Block-uniform: may every in-bounds 16-byte unit be loaded as one vector?
    const bool a_vec = aligned16(Az) && lda % kVec == 0;
    const bool b_vec = aligned16(Bz) && ldb % kVec == 0 && b_cols % kVec == 0 && b_img % kVec == 0;

    // This thread's B units always cover the same columns: split them into (image, offset) once.
    int b_off[kBLoads];
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
        const int u = tid + i * kThreads;
        const int n = n0 + (u % kBRowUnits) * kVec;
        b_off[i] = (n / b_cols) * b_img + n % b_cols;
    }

    ACC_T a_reg[kALoads][kVec];
    ACC_T b_reg[kBLoads][kVec];

    // Global -> registers for the slice starting at k0; out-of-range elements are zero.
    auto load_slice = [&](const int k0) {
#pragma unroll
        for (int i = 0; i < kALoads; ++i) {
            const int u = tid + i * kThreads;
            const int m = m0 + u / kARowUnits;
            const int k = k0 + (u % kARowUnits) * kVec;
            const bool unit = (BM * kARowUnits) % kThreads == 0 || u < BM * kARowUnits;
            const T* p = Az + m * lda + k;
            if (unit && a_vec && m < M && k + kVec <= K) {
                Raw16 r;
                r.u = __ldg(reinterpret_cast<const uint4*>(p));
#pragma unroll
                for (int v = 0; v < kVec; ++v) a_reg[i][v] = to_acc(r.e[v]);
            } else {
#pragma unroll
                for (int v = 0; v < kVec; ++v) a_reg[i][v] = (unit && m < M && k + v < K) ? to_acc(p[v]) : ACC_T(0);
            }
        }
#pragma unroll
        for (int i = 0; i < kBLoads; ++i) {
            const int u = tid + i * kThreads;
            const int k = k0 + u / kBRowUnits;
            const int n = n0 + (u % kBRowUnits) * kVec;
            const bool unit = (BK * kBRowUnits) % kThreads == 0 || u < BK * kBRowUnits;
            const T* row = Bz + k * ldb;
            if (unit && b_vec && k < K && n + kVec <= N) {
                Raw16 r;
                r.u = __ldg(reinterpret_cast<const uint4*>(row + b_off[i]));
#pragma unroll
                for (int v = 0; v < kVec; ++v) b_reg[i][v] = to_acc(r.e[v]);
            } else {
#pragma unroll
                for (int v = 0; v < kVec; ++v) {
                    const int j = n + v;  // may cross into the next image
                    b_reg[i][v] = (unit && k < K && j < N) ? to_acc(row[(j / b_cols) * b_img + j % b_cols])
                                                           : ACC_T(0);
                }
            }
        }
    };

    // Registers -> shared buffer `buf` (A transposed to k-major).
    auto store_slice = [&](const int buf) {
#pragma unroll
        for (int i = 0; i < kALoads; ++i) {
            const int u = tid + i * kThreads;
            if ((BM * kARowUnits) % kThreads == 0 || u < BM * kARowUnits) {
                const int m = u / kARowUnits, k = (u % kARowUnits) * kVec;
#pragma unroll
                for (int v = 0; v < kVec; ++v) As[buf][k + v][m] = a_reg[i][v];
            }
        }
#pragma unroll
        for (int i = 0; i < kBLoads; ++i) {
            const int u = tid + i * kThreads;
            if ((BK * kBRowUnits) % kThreads == 0 || u < BK * kBRowUnits) {
                const int k = u / kBRowUnits, n = (u % kBRowUnits) * kVec;
#pragma unroll
                for (int v = 0; v < kVec; v += kAccVec) {
                    AccVec<kAccVec> chunk;
#pragma unroll
                    for (int e = 0; e < kAccVec; ++e) chunk.e[e] = b_reg[i][v + e];
                    *reinterpret_cast<AccVec<kAccVec>*>(&Bs[buf][k][n + v]) = chunk;
                }
            }
        }
    };

    ACC_T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = ACC_T(0);

    const int slices = (K + BK - 1) / BK;
    load_slice(0);
    store_slice(0);
    __syncthreads();
    for (int t = 0; t < slices; ++t) {
        const int buf = t & 1;
        const bool more = t + 1 < slices;  // uniform across the block
        if (more) load_slice((t + 1) * BK);
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            ACC_T a[TM], b[TN];
#pragma unroll
            for (int g = 0; g < TM / kAV; ++g) {
                const AccVec<kAV> f = *reinterpret_cast<const AccVec<kAV>*>(&As[buf][k][g * kMStride + tm * kAV]);
#pragma unroll
                for (int v = 0; v < kAV; ++v) a[g * kAV + v] = f.e[v];
            }
#pragma unroll
            for (int g = 0; g < TN / kBV; ++g) {
                const AccVec<kBV> f = *reinterpret_cast<const AccVec<kBV>*>(&Bs[buf][k][g * kNStride + tn * kBV]);
#pragma unroll
                for (int v = 0; v < kBV; ++v) b[g * kBV + v] = f.e[v];
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
        // The other buffer was last read in step t-1, which every thread finished before the barrier that
        // ended it; the barrier below publishes it for step t+1.
        if (more) store_slice(buf ^ 1);
        __syncthreads();
    }

    // ---- epilogue: bias, convert, store ----
    GEMM_OUT_T* Cz = C + (long long)z * c_batch;
    const bool c_vec = (reinterpret_cast<unsigned long long>(Cz) % (kBV * sizeof(GEMM_OUT_T))) == 0 &&
                       ldc % kBV == 0 && c_cols % kBV == 0 && c_img % kBV == 0;
    int c_off[TN / kBV];
#pragma unroll
    for (int g = 0; g < TN / kBV; ++g) {
        const int n = n0 + g * kNStride + tn * kBV;
        c_off[g] = (n / c_cols) * c_img + n % c_cols;
    }
#pragma unroll
    for (int gi = 0; gi < TM / kAV; ++gi) {
#pragma unroll
        for (int vi = 0; vi < kAV; ++vi) {
            const int i = gi * kAV + vi;
            const int m = m0 + gi * kMStride + tm * kAV + vi;
            if (m >= M) continue;
            const ACC_T bv = has_bias ? to_acc(bias[(long long)z * bias_batch + m]) : ACC_T(0);
            GEMM_OUT_T* row = Cz + m * ldc;
#pragma unroll
            for (int g = 0; g < TN / kBV; ++g) {
                const int n = n0 + g * kNStride + tn * kBV;
                if (c_vec && n + kBV <= N) {
                    OutVec o;
#pragma unroll
                    for (int v = 0; v < kBV; ++v) o.e[v] = from_acc<GEMM_OUT_T>(acc[i][g * kBV + v] + bv);
                    GPUCONV_CHECK_ALIGNED(row + c_off[g], sizeof(OutVec));
                    *reinterpret_cast<OutVec*>(row + c_off[g]) = o;
                } else {
#pragma unroll
                    for (int v = 0; v < kBV; ++v) {
                        const int j = n + v;
                        if (j < N)
                            row[(j / c_cols) * c_img + j % c_cols] = from_acc<GEMM_OUT_T>(acc[i][g * kBV + v] + bv);
                    }
                }
            }
        }
    }
}
