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
// both operands, its pixel j = kb + kk, kept as (n, p, q) counters that step by BK per slice (slices are loaded
// in order; no division in the loop); its A elements are rows
// m = (tid + t*NT) / BK of dy, its B elements columns (tid + t*NT) / BK of cols, fixed for the whole reduction,
// so their (c, r, s) split and bounds are worked out once, before the loop.
// Consecutive threads take consecutive pixels: runs of BK consecutive q in dy, and in x at stride 1.
// Both tiles are staged k-major in shared memory as ACC_T with a pitch of 4 extra elements (the BK threads
// of a run store to different banks), double-buffered, one barrier per slice.
// Fragments: thread (tm, tn) owns rows gi*(BM/TM)*kAV + tm*kAV + [0, kAV) and columns gj*(BN/TN)*kBV + tn*kBV +
// [0, kBV), kAV = kBV = one 16-byte vector of ACC_T: every fragment read is a 16-byte shared load (LDS.128),
// and the threads of a warp read consecutive vectors (no bank conflict), as in the forward implicit GEMM.
// Epilogue: each thread stores runs of kBV consecutive columns (c, r, s) of dw or of the partial sums.
// Not done: vectorized global loads, cp.async, tensor cores.
#include "fragments.cuh"

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
#define WG_VEC (16 / (int)sizeof(ACC_T))  // ACC_T per 16-byte fragment read: kAV = kBV
static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
static_assert(WG_THREADS % BK == 0, "each thread loads one fixed reduction row: BK must divide the thread count");
static_assert(TM % WG_VEC == 0 && TN % WG_VEC == 0, "thread tiles are made of 16-byte groups");

extern "C" __global__ __launch_bounds__(WG_THREADS) void wgrad_split_k(
    const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dw, ACC_T* __restrict__ partial,
    int N, int C, int H, int W, int K, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups, int splits, int chunk)
{
    __shared__ __align__(16) ACC_T As[2][BK * WG_APITCH];
    __shared__ __align__(16) ACC_T Bs[2][BK * WG_BPITCH];

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

    // This thread's B columns (c, r, s) never change: their channel offset in an image's group and tap offsets,
    // or a column outside the tile or past Cg*R*S.
    long long b_coff[WG_B_PER_THREAD];
    int b_dh[WG_B_PER_THREAD], b_dw[WG_B_PER_THREAD];
    bool b_live[WG_B_PER_THREAD];
#pragma unroll
    for (int t = 0; t < WG_B_PER_THREAD; ++t) {
        const int col = n0 + e0 + t * kStep;
        b_live[t] = e0 + t * kStep < BN && col < ncols;
        const int c = col / rs, rem = col - (col / rs) * rs;
        const int r = rem / S, s = rem - (rem / S) * S;
        b_coff[t] = (long long)c * H * W;
        b_dh[t] = r * dil_h;
        b_dw[t] = s * dil_w;
    }

    int ld_j = kbeg + kk;  // the pixel of the next slice to load, and its (n, p, q), rem = p * Q + q
    int ld_n = ld_j / pq, ld_rem = ld_j - ld_n * pq;
    int ld_p = ld_rem / Q, ld_q = ld_rem - ld_p * Q;

    auto load_slice = [&]() {
        const bool ok = ld_j < kend;
        int ih0 = 0, iw0 = 0;
        const T* dyp = dy;
        const T* xp = x;
        if (ok) {
            ih0 = ld_p * stride_h - pad_t;
            iw0 = ld_q * stride_w - pad_l;
            dyp = dy + ((long long)ld_n * K + (long long)g * kg) * pq + ld_rem;
            xp = x + ((long long)ld_n * C + (long long)g * cg) * H * W;
        }
#pragma unroll
        for (int t = 0; t < WG_A_PER_THREAD; ++t) {
            const int m = e0 + t * kStep;
            a_reg[t] = (ok && m < BM && m0 + m < kg) ? to_acc(dyp[(long long)(m0 + m) * pq]) : ACC_T(0);
        }
#pragma unroll
        for (int t = 0; t < WG_B_PER_THREAD; ++t) {
            const int ih = ih0 + b_dh[t], iw = iw0 + b_dw[t];
            ACC_T v = ACC_T(0);
            if (ok && b_live[t] && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W)  // else zero padding
                v = to_acc(xp[b_coff[t] + (long long)ih * W + iw]);
            b_reg[t] = v;
        }
        ld_j += BK;
        ld_q += BK;
        ld_rem += BK;
        while (ld_q >= Q) {  // at most ceil(BK / Q) times
            ld_q -= Q;
            if (++ld_p == P) {
                ld_p = 0;
                ++ld_n;
                ld_rem -= pq;
            }
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
    load_slice();
    store_slice(0);
    __syncthreads();
    for (int t = 0; t < nslices; ++t) {
        const int buf = t & 1;
        const bool more = t + 1 < nslices;  // uniform across the block
        if (more) load_slice();
        const ACC_T* a_s = As[buf] + tm * WG_VEC;
        const ACC_T* b_s = Bs[buf] + tn * WG_VEC;
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            ACC_T av[TM], bv[TN];
#pragma unroll
            for (int gi = 0; gi < TM / WG_VEC; ++gi) {
                const AccVec<WG_VEC> f = *reinterpret_cast<const AccVec<WG_VEC>*>(a_s + k * WG_APITCH +
                                                                               gi * WG_MT * WG_VEC);
#pragma unroll
                for (int v = 0; v < WG_VEC; ++v) av[gi * WG_VEC + v] = f.e[v];
            }
#pragma unroll
            for (int gj = 0; gj < TN / WG_VEC; ++gj) {
                const AccVec<WG_VEC> f = *reinterpret_cast<const AccVec<WG_VEC>*>(b_s + k * WG_BPITCH +
                                                                               gj * WG_NT * WG_VEC);
#pragma unroll
                for (int v = 0; v < WG_VEC; ++v) bv[gj * WG_VEC + v] = f.e[v];
            }
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
        const int m = m0 + (i / WG_VEC) * WG_MT * WG_VEC + tm * WG_VEC + i % WG_VEC;
        if (m >= kg) continue;
        const long long row = (long long)(g * kg + m) * ncols;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int col = n0 + (j / WG_VEC) * WG_NT * WG_VEC + tn * WG_VEC + j % WG_VEC;
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
