// Implicit GEMM convolution: per group g, Y_g (Kg x N*P*Q) = W_g (Kg x Cg*R*S) * X_g (Cg*R*S x N*P*Q), where
// the column matrix X_g is never written: the B-operand loads compute each element's input address (and
// return zero in the padding) on the fly.
//
// Layout: x (N, C, H, W), w (K, C/groups, R, S) = row-major (K, Cg*R*S), bias (K,), y (N, K, P, Q).
// Grid:   x = ceil(N*P*Q / BN) column tiles, y = ceil(Kg / BM) row tiles, z = groups.
// Block:  NT = (BM/TM) * (BN/TN) threads; thread (tm, tn) owns the TM x TN outputs at rows tm + i*(BM/TM)
//         and columns tn + j*(BN/TN) of the block tile (strided, not contiguous: see "Speed").
// Reduction index kr = (c * R + r) * S + s; column index j = (n * P + p) * Q + q.
//
// Each BK slice of the reduction is staged in shared memory (A as [BK][BM + 4], B as [BK][BN], both in
// ACC_T so the inner loop does no conversions), double-buffered: the global loads of slice t+1 are issued
// into registers before slice t is multiplied and written to the other buffer afterwards, so one barrier
// per slice suffices and global latency overlaps the FMAs.
//
// Speed (H100/H200), reasoning only:
// - B loads: thread tid always loads column tid % BN of the tile, so its (n, p, q) decomposition and the
//   image base address are computed once; consecutive threads take consecutive j, i.e. consecutive q:
//   coalesced for stride 1 (and partly for stride 2). Only the kr -> (c, r, s) split costs two integer
//   divisions per loaded row.
// - A loads read along kr (contiguous in w); w is small and stays in L2.
// - Inner loop: TM + TN shared loads per TM*TN FMAs. The strided thread tile makes a warp read
//   consecutive B columns (conflict-free) and at most a few distinct A addresses (broadcast); the A store
//   pitch BM + 4 spreads the transposing store over the banks.
// - Epilogue: consecutive threads store consecutive columns j: coalesced along Q; bias is fused.
// Not done: vectorized (128-bit) global/shared loads, cp.async / TMA pipelines, tensor cores.
#include "common.cuh"

#ifndef BM
#define BM 64  // output channels per block tile
#endif
#ifndef BN
#define BN 64  // output pixels (N*P*Q) per block tile
#endif
#ifndef BK
#define BK 8  // reduction slice staged per step
#endif
#ifndef TM
#define TM 4  // rows per thread
#endif
#ifndef TN
#define TN 4  // columns per thread
#endif

#define IG_MT (BM / TM)          // threads along M
#define IG_NT (BN / TN)          // threads along N
#define IG_THREADS (IG_MT * IG_NT)
#define IG_APITCH (BM + 4)
#define IG_A_PER_THREAD ((BM * BK + IG_THREADS - 1) / IG_THREADS)
#define IG_B_ROWS_STEP (IG_THREADS / BN)                       // rows of B one pass of all threads loads
#define IG_B_PER_THREAD ((BK + IG_B_ROWS_STEP - 1) / IG_B_ROWS_STEP)
static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
static_assert(IG_THREADS % BN == 0, "each thread loads one fixed column of B: BN must divide the thread count");

extern "C" __global__ __launch_bounds__(IG_THREADS) void implicit_gemm_conv(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
    int N, int C, int H, int W, int K, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups, int has_bias)
{
    __shared__ ACC_T As[2][BK * IG_APITCH];
    __shared__ ACC_T Bs[2][BK * BN];

    const int cg = C / groups, kg = K / groups;
    const int rs = R * S;
    const int kred = cg * rs;            // reduction length
    const int pq = P * Q;
    const int ncols = N * pq;            // GEMM N dimension
    const int g = blockIdx.z;
    const int m0 = blockIdx.y * BM;      // first output channel (within the group) of the tile
    const int j0 = blockIdx.x * BN;      // first column of the tile
    const int tid = threadIdx.x;
    const int tm = tid / IG_NT, tn = tid - (tid / IG_NT) * IG_NT;

    const T* wg = w + (long long)g * kg * kred;

    // ---- this thread's fixed B column: its image base and the input origin of its output pixel ----
    const int bcol = tid % BN;
    const int brow0 = tid / BN;
    const int jb = j0 + bcol;
    const bool bcol_ok = jb < ncols;
    int ih_origin = 0, iw_origin = 0;
    long long xbase = 0;
    if (bcol_ok) {
        const int nb = jb / pq, pqb = jb - nb * pq;
        const int pb = pqb / Q, qb = pqb - pb * Q;
        ih_origin = pb * stride_h - pad_t;
        iw_origin = qb * stride_w - pad_l;
        xbase = ((long long)nb * C + (long long)g * cg) * H * W;
    }

    ACC_T a_reg[IG_A_PER_THREAD];
    ACC_T b_reg[IG_B_PER_THREAD];

    // Global -> registers for the reduction slice starting at kb.
    auto load_slice = [&](int kb) {
#pragma unroll
        for (int t = 0; t < IG_A_PER_THREAD; ++t) {
            const int e = tid + t * IG_THREADS;  // element of the BM x BK tile, kr fastest (contiguous in w)
            const int m = e / BK, kk = e - (e / BK) * BK;
            const int kr = kb + kk;
            a_reg[t] = (e < BM * BK && m0 + m < kg && kr < kred) ? to_acc(wg[(long long)(m0 + m) * kred + kr])
                                                                 : ACC_T(0);
        }
#pragma unroll
        for (int t = 0; t < IG_B_PER_THREAD; ++t) {
            const int kk = brow0 + t * IG_B_ROWS_STEP;
            const int kr = kb + kk;
            ACC_T v = ACC_T(0);
            if (bcol_ok && kk < BK && kr < kred) {
                const int c = kr / rs, rem = kr - (kr / rs) * rs;
                const int r = rem / S, s = rem - (rem / S) * S;
                const int ih = ih_origin + r * dil_h, iw = iw_origin + s * dil_w;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W)  // outside: zero padding
                    v = to_acc(x[xbase + ((long long)c * H + ih) * W + iw]);
            }
            b_reg[t] = v;
        }
    };
    // Registers -> shared buffer `buf`.
    auto store_slice = [&](int buf) {
#pragma unroll
        for (int t = 0; t < IG_A_PER_THREAD; ++t) {
            const int e = tid + t * IG_THREADS;
            if (e < BM * BK) {
                const int m = e / BK, kk = e - (e / BK) * BK;
                As[buf][kk * IG_APITCH + m] = a_reg[t];
            }
        }
#pragma unroll
        for (int t = 0; t < IG_B_PER_THREAD; ++t) {
            const int kk = brow0 + t * IG_B_ROWS_STEP;
            if (kk < BK) Bs[buf][kk * BN + bcol] = b_reg[t];
        }
    };

    ACC_T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = ACC_T(0);

    const int nslices = (kred + BK - 1) / BK;
    load_slice(0);
    store_slice(0);
    __syncthreads();
    for (int t = 0; t < nslices; ++t) {
        const int buf = t & 1;
        const bool more = t + 1 < nslices;  // uniform across the block
        if (more) load_slice((t + 1) * BK);
        const ACC_T* a_s = As[buf];
        const ACC_T* b_s = Bs[buf];
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            ACC_T a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = a_s[kk * IG_APITCH + tm + i * IG_MT];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = b_s[kk * BN + tn + j * IG_NT];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
        // Buffer buf ^ 1 was last read in step t - 1, which every thread finished before the barrier
        // that ended it, so it can be overwritten now; the barrier below publishes it for step t + 1.
        if (more) store_slice(buf ^ 1);
        __syncthreads();
    }

    // ---- epilogue: bias, convert, store (column j -> (n, p*Q + q)) ----
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int col = j0 + tn + j * IG_NT;
        if (col >= ncols) continue;
        const int n = col / pq, pqc = col - (col / pq) * pq;
        T* ycol = y + (long long)n * K * pq + pqc;
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int m = m0 + tm + i * IG_MT;
            if (m < kg) {
                const int k = g * kg + m;
                const ACC_T b = has_bias ? to_acc(bias[k]) : ACC_T(0);
                ycol[(long long)k * pq] = from_acc<T>(acc[i][j] + b);
            }
        }
    }
}
