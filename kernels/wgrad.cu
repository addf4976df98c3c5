// Weight gradient as an implicit GEMM with a split reduction, reduced deterministically.
//
// Per group g: dW (Kg x Cg*R*S) = dY (Kg x N*P*Q) * cols^T (N*P*Q x Cg*R*S), where
//   cols[(c*R + r)*S + s][(n*P + p)*Q + q] = x[n][g*Cg + c][p*stride_h - pad_t + r*dil_h][q*stride_w - pad_l + s*dil_w]
// (zero in the padding) is gathered from x while loading, never written.
//
// Split-K: the reduction over the N*P*Q output pixels is long and the output (the weight) small, so its
// `splits` contiguous ranges of `chunk` pixels (a multiple of BK) run in different blocks on gridDim.z.
// With one split the kernel stores dw; otherwise each split stores its partial sums to
// partial[split][K][Cg*R*S] (ACC_T) and wgrad_reduce adds them in split order: the same sums in the same
// order on every run (no atomics), whatever the block schedule.
//
// Layout: x (N, C, H, W), dy (N, K, P, Q), dw (K, C/groups, R, S) = row-major (K, Cg*R*S).
// Grid:   x = ceil(Cg*R*S / BN), y = ceil(Kg / BM), z = groups * splits (z = g * splits + split).
// Block:  (BM/TM) * (BN/TN) threads; thread (tm, tn) owns rows tm + i*(BM/TM) and columns tn + j*(BN/TN).
//
// Loads: thread tid always loads reduction row kk = tid % BK of each slice (BK divides the thread count), for
// both operands, so it splits its pixel j = kb + kk into (n, p, q) once per slice; its A elements are rows
// m = (tid + t*NT) / BK of dy, its B elements columns (tid + t*NT) / BK of cols (a (c, r, s) split each).
// Consecutive threads take consecutive pixels: runs of BK consecutive q in dy, and in x at stride 1.
// Both tiles are staged k-major in shared memory as ACC_T with a pitch of 4 extra elements (the BK threads
// of a run store to different banks), double-buffered, one barrier per slice; the inner loop is the forward
// implicit GEMM's (TM + TN shared loads per TM*TN FMAs).
// Epilogue: consecutive threads store consecutive columns (c, r, s) of dw or of the partial sums: coalesced.
// Not done: vectorized loads, cp.async, tensor cores.
#include "common.cuh"

#ifndef BM
#define BM 64  // output channels per block tile
#endif
#ifndef BN
#define BN 64  // weight columns (Cg*R*S) per block tile
#endif
#ifndef BK
#define BK 8  // output pixels per reduction slice
#endif
#ifndef TM
#define TM 4  // rows per thread
#endif
#ifndef TN
#define TN 4  // columns per thread
#endif
#ifndef WG_REDUCE_THREADS
#define WG_REDUCE_THREADS 256  // threads per block of wgrad_reduce
#endif

#define WG_MT (BM / TM)
#define WG_NT (BN / TN)
#define WG_THREADS (WG_MT * WG_NT)
#define WG_APITCH (BM + 4)
#define WG_BPITCH (BN + 4)
#define WG_A_PER_THREAD ((BM * BK + WG_THREADS - 1) / WG_THREADS)
#define WG_B_PER_THREAD ((BN * BK + WG_THREADS - 1) / WG_THREADS)
static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
static_assert(WG_THREADS % BK == 0, "each thread loads one fixed reduction row: BK must divide the thread count");

extern "C" __global__ __launch_bounds__(WG_THREADS) void wgrad_split_k(
    const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw, ACC_T* __restrict__ partial,
    int N, int C, int H, int W, int K, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups, int splits, int chunk)
{
    __shared__ ACC_T As[2][BK * WG_APITCH];
    __shared__ ACC_T Bs[2][BK * WG_BPITCH];

    const int cg = C / groups, kg = K / groups;
    const int rs = R * S;
    const int ncols = cg * rs;  // GEMM N dimension: columns of dw
    const int pq = P * Q;
    const int npix = N * pq;    // reduction length
    const int g = blockIdx.z / splits;
    const int split = blockIdx.z - g * splits;
    const int kbeg = split * chunk;  // may be >= npix: an empty range stores zeros
    const int kend = min(kbeg + chunk, npix);
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    const int tid = threadIdx.x;
    const int tm = tid / WG_NT, tn = tid - (tid / WG_NT) * WG_NT;
    const int kk = tid % BK;  // this thread's reduction row in every slice
    const int e0 = tid / BK;  // its first A row / B column; then every WG_THREADS / BK
    constexpr int kStep = WG_THREADS / BK;

    ACC_T a_reg[WG_A_PER_THREAD];
    ACC_T b_reg[WG_B_PER_THREAD];

    auto load_slice = [&](int kb) {
        const int j = kb + kk;
        const bool ok = j < kend;
        int ih0 = 0, iw0 = 0;
        const T* dyp = dy;
        const T* xp = x;
        if (ok) {
            const int n = j / pq, rem = j - (j / pq) * pq;
            const int p = rem / Q, q = rem - (rem / Q) * Q;
            ih0 = p * stride_h - pad_t;
            iw0 = q * stride_w - pad_l;
            dyp = dy + ((long long)n * K + (long long)g * kg) * pq + rem;
            xp = x + ((long long)n * C + (long long)g * cg) * H * W;
        }
#pragma unroll
        for (int t = 0; t < WG_A_PER_THREAD; ++t) {
            const int m = e0 + t * kStep;
            a_reg[t] = (ok && m < BM && m0 + m < kg) ? to_acc(dyp[(long long)(m0 + m) * pq]) : ACC_T(0);
        }
#pragma unroll
        for (int t = 0; t < WG_B_PER_THREAD; ++t) {
            const int col = n0 + e0 + t * kStep;
            ACC_T v = ACC_T(0);
            if (ok && e0 + t * kStep < BN && col < ncols) {
                const int c = col / rs, rem = col - (col / rs) * rs;
                const int r = rem / S, s = rem - (rem / S) * S;
                const int ih = ih0 + r * dil_h, iw = iw0 + s * dil_w;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W)  // outside: zero padding
                    v = to_acc(xp[((long long)c * H + ih) * W + iw]);
            }
            b_reg[t] = v;
        }
    };
    auto store_slice = [&](int buf) {
#pragma unroll
        for (int t = 0; t < WG_A_PER_THREAD; ++t) {
            const int m = e0 + t * kStep;
            if (m < BM) As[buf][kk * WG_APITCH + m] = a_reg[t];
        }
#pragma unroll
        for (int t = 0; t < WG_B_PER_THREAD; ++t) {
            const int n = e0 + t * kStep;
            if (n < BN) Bs[buf][kk * WG_BPITCH + n] = b_reg[t];
        }
    };

    ACC_T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = ACC_T(0);

    const int nslices = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
    load_slice(kbeg);
    store_slice(0);
    __syncthreads();
    for (int t = 0; t < nslices; ++t) {
        const int buf = t & 1;
        const bool more = t + 1 < nslices;  // uniform across the block
        if (more) load_slice(kbeg + (t + 1) * BK);
        const ACC_T* a_s = As[buf];
        const ACC_T* b_s = Bs[buf];
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            ACC_T av[TM], bv[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) av[i] = a_s[k * WG_APITCH + tm + i * WG_MT];
#pragma unroll
            for (int j = 0; j < TN; ++j) bv[j] = b_s[k * WG_BPITCH + tn + j * WG_NT];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
        }
        // Buffer buf ^ 1 was last read in step t - 1, finished by every thread before the barrier ending it.
        if (more) store_slice(buf ^ 1);
        __syncthreads();
    }

    // ---- epilogue: dw itself with one split, else this split's partial sums ----
    const long long split_off = (long long)split * K * ncols;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + tm + i * WG_MT;
        if (m >= kg) continue;
        const long long row = (long long)(g * kg + m) * ncols;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int col = n0 + tn + j * WG_NT;
            if (col >= ncols) continue;
            if (splits == 1)
                dw[row + col] = from_acc<T>(acc[i][j]);
            else
                partial[split_off + row + col] = acc[i][j];
        }
    }
}

// dw[e] = sum over split = 0, 1, ..., splits - 1 of partial[split][e], in that order; one thread per element
// (consecutive threads read consecutive partial sums: coalesced). Grid: ceil(total / WG_REDUCE_THREADS).
extern "C" __global__ __launch_bounds__(WG_REDUCE_THREADS) void wgrad_reduce(
    const ACC_T* __restrict__ partial, T* __restrict__ dw, int total, int splits)
{
    const int e = blockIdx.x * WG_REDUCE_THREADS + threadIdx.x;
    if (e >= total) return;
    ACC_T sum = ACC_T(0);
    for (int s = 0; s < splits; ++s) sum += partial[(long long)s * total + e];
    dw[e] = from_acc<T>(sum);
}
