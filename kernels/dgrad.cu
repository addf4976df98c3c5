// Input gradient as an implicit GEMM, split by stride phase: no zero-inserted copy of dy, no wasted taps.
//
//   dx[n][c][h][w] = sum over k, r, s of dy[n][k][p][q] * w[k][c][r][s]
//                    where h + pad_t - r*dil_h = p*stride_h and w + pad_l - s*dil_w = q*stride_w
//                    (k within c's group, 0 <= p < P, 0 <= q < Q).
//
// Stride phases: the input rows h = a + i*stride_h (phase a in [0, stride_h)) all take the same taps, the
// r with r*dil_h = a + pad_t (mod stride_h). Those form the progression r = r0 + jr*rstep with
// rstep = stride_h / gcd(stride_h, dil_h), and their output row is p = i + base - jr*pstep with
// base = (a + pad_t - r0*dil_h) / stride_h and pstep = dil_h / gcd (both divisions exact). Columns alike. So
// within one phase (a, b) the input gradient is a stride-1 correlation with Ra x Sa taps, and per group g
//   dX (Cg x N*Ha*Wa) = W^T (Cg x Kg*Ra*Sa) * dYcols (Kg*Ra*Sa x N*Ha*Wa)
// where dYcols is gathered from dy while loading (zero where p or q leaves the output), as the forward
// implicit GEMM gathers x. A phase without taps (stride larger than the dilated kernel: gaps) has an empty
// reduction and writes zeros.
//
// Layout: dy (N, K, P, Q), w (K, C/groups, R, S), dx (N, C, H, W).
// Grid:   x = ceil(N*ceil(H/stride_h)*ceil(W/stride_w) / BN) column tiles (the largest phase; blocks past a
//         smaller phase's columns return at once), y = ceil(Cg / BM), z = groups * stride_h * stride_w.
// Block:  (BM/TM) * (BN/TN) threads; thread (tm, tn) owns rows gi*(BM/TM)*V + tm*V + [0, V) and columns
//         gj*(BN/TN)*V + tn*V + [0, V), V = one 16-byte vector of ACC_T: every fragment read is one 16-byte
//         shared load (LDS.128) and a warp reads consecutive vectors, as in the forward implicit GEMM.
// Reduction index kr = (k * Ra + jr) * Sa + js; column index j = (n * Ha + i) * Wa + iw.
//
// Staging and the inner loop are the forward implicit GEMM's (kernels/implicit_gemm.cu): BK slices in shared
// memory as ACC_T, double-buffered through registers, one barrier per slice; each thread loads one fixed B
// column, so its (n, i, iw) split and dy base are computed once, and consecutive threads read consecutive q
// (coalesced at stride 1). A = W^T is read along kr (stride rstep_w in w; w stays in L2). The reduction
// positions a thread loads, (k, jr, js) of kr, are counters that step by BK per slice (slices load in order):
// BK itself is split into (k, jr, js) once per block, and each step is three adds with two carries, no
// division in the loop.
// Epilogue: runs of V consecutive iw, i.e. every stride_w-th element of a dx row.
// Not done: vectorized global loads, cp.async, tensor cores.
#include "fragments.cuh"

#ifndef BM
#define BM 64  // input channels per block tile
#endif
#ifndef BN
#define BN 64  // input pixels of one phase (N*Ha*Wa) per block tile
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

#define DG_MT (BM / TM)
#define DG_NT (BN / TN)
#define DG_THREADS (DG_MT * DG_NT)
#define DG_APITCH (BM + 4)
#define DG_A_PER_THREAD ((BM * BK + DG_THREADS - 1) / DG_THREADS)
#define DG_B_ROWS_STEP (DG_THREADS / BN)
#define DG_B_PER_THREAD ((BK + DG_B_ROWS_STEP - 1) / DG_B_ROWS_STEP)
#define DG_VEC (16 / (int)sizeof(ACC_T))  // ACC_T per 16-byte fragment read
static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
static_assert(DG_THREADS % BN == 0, "each thread loads one fixed column of B: BN must divide the thread count");
static_assert(DG_THREADS % BK == 0, "each thread loads one fixed reduction row of A: BK must divide the threads");
static_assert(TM % DG_VEC == 0 && TN % DG_VEC == 0, "thread tiles are made of 16-byte groups");

namespace dgrad_detail {
// The taps of one stride phase along one axis (see the header).
struct Phase {
    int pixels;  // input positions a, a + stride, ... below `size`
    int taps;    // kernel positions r0, r0 + rstep, ... below `kernel` that reach them
    int r0, rstep;
    int base, pstep;  // output position of tap jr for pixel i: i + base - jr * pstep
};

static __device__ __forceinline__ Phase phase_of(int a, int size, int pad, int stride, int dil, int kernel) {
    Phase ph;
    ph.pixels = a < size ? (size - a + stride - 1) / stride : 0;
    int gcd = stride, b = dil;  // gcd(stride, dil) by Euclid: a few steps for real strides
    while (b != 0) {
        const int t = gcd % b;
        gcd = b;
        b = t;
    }
    ph.rstep = stride / gcd;
    ph.pstep = dil / gcd;
    const int want = (a + pad) % stride;
    ph.r0 = -1;
    for (int r = 0; r < ph.rstep && r < kernel; ++r)  // solutions repeat with period rstep
        if ((r * dil) % stride == want) {
            ph.r0 = r;
            break;
        }
    ph.taps = ph.r0 < 0 ? 0 : (kernel - 1 - ph.r0) / ph.rstep + 1;
    ph.base = ph.r0 < 0 ? 0 : (a + pad - ph.r0 * dil) / stride;
    if (ph.r0 < 0) ph.r0 = 0;
    return ph;
}

// A reduction index kr = (k * ra + jr) * sa + js as its digits (k, jr, js), jr < ra and js < sa.
struct Digits {
    int k, jr, js;
};

static __device__ __forceinline__ Digits digits_of(int kr, int ra, int sa) {
    if (ra * sa == 0) return Digits{1 << 30, 0, 0};  // no taps: k past every channel, nothing is loaded
    const int k = kr / (ra * sa), rem = kr - k * (ra * sa);
    return Digits{k, rem / sa, rem - (rem / sa) * sa};
}

// d += step, digit by digit with carries (step's digits are in range, so each carry is 0 or 1).
static __device__ __forceinline__ void advance(Digits& d, const Digits& step, int ra, int sa) {
    d.js += step.js;
    const int cs = d.js >= sa;
    d.js -= cs * sa;
    d.jr += step.jr + cs;
    const int cr = d.jr >= ra;
    d.jr -= cr * ra;
    d.k += step.k + cr;
}
}  // namespace dgrad_detail

extern "C" __global__ __launch_bounds__(DG_THREADS) void dgrad_implicit_gemm(
    const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx,
    int N, int C, int H, int W, int K, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups)
{
    using namespace dgrad_detail;
    __shared__ __align__(16) ACC_T As[2][BK * DG_APITCH];
    __shared__ __align__(16) ACC_T Bs[2][BK * BN];

    const int cg = C / groups, kg = K / groups;
    const int phases = stride_h * stride_w;
    const int g = blockIdx.z / phases;
    const int phase = blockIdx.z - g * phases;
    const int a = phase / stride_w, b = phase - (phase / stride_w) * stride_w;
    const Phase ph = phase_of(a, H, pad_t, stride_h, dil_h, R);
    const Phase pw = phase_of(b, W, pad_l, stride_w, dil_w, S);
    const int hw = ph.pixels * pw.pixels;
    const int ncols = N * hw;
    const int j0 = blockIdx.x * BN;
    if (j0 >= ncols) return;  // the whole block: this phase has fewer columns than the grid covers
    const int taps = ph.taps * pw.taps;
    const int kred = kg * taps;  // zero where no tap reaches this phase
    const int m0 = blockIdx.y * BM;
    const int tid = threadIdx.x;
    const int tm = tid / DG_NT, tn = tid - (tid / DG_NT) * DG_NT;
    const int rs = R * S;

    // ---- this thread's fixed B column: (n, i, iw) and the dy base of its image and group ----
    const int bcol = tid % BN;
    const int brow0 = tid / BN;
    const int jb = j0 + bcol;
    const bool bcol_ok = jb < ncols;
    int pi = 0, qi = 0;
    long long dybase = 0;
    if (bcol_ok) {
        const int nb = jb / hw, rem = jb - nb * hw;
        const int i = rem / pw.pixels;
        pi = i + ph.base;
        qi = rem - i * pw.pixels + pw.base;
        dybase = ((long long)nb * K + (long long)g * kg) * P * Q;
    }
    // A(m, kr) = w[g*kg + k][m0 + m][r][s]
    const T* wg = w + (long long)g * kg * cg * rs;

    ACC_T a_reg[DG_A_PER_THREAD];
    ACC_T b_reg[DG_B_PER_THREAD];

    // The reduction positions of the next slice to load: A's row kk = tid % BK (every A element of a thread
    // has it, as BK divides the thread count), B's rows brow0 + t * DG_B_ROWS_STEP. kr < kred is k < kg.
    const Digits step = digits_of(BK, ph.taps, pw.taps);
    const int a_kk = tid % BK;
    Digits a_at = digits_of(a_kk, ph.taps, pw.taps);
    Digits b_at[DG_B_PER_THREAD];
#pragma unroll
    for (int t = 0; t < DG_B_PER_THREAD; ++t) b_at[t] = digits_of(brow0 + t * DG_B_ROWS_STEP, ph.taps, pw.taps);

    auto load_slice = [&]() {
        {
            const int r = ph.r0 + a_at.jr * ph.rstep, s = pw.r0 + a_at.js * pw.rstep;
            const T* wk = wg + ((long long)a_at.k * cg + m0) * rs + r * S + s;
#pragma unroll
            for (int t = 0; t < DG_A_PER_THREAD; ++t) {
                const int e = tid + t * DG_THREADS;  // element of the BM x BK tile, kr fastest
                const int m = e / BK;
                ACC_T v = ACC_T(0);
                if (e < BM * BK && m0 + m < cg && a_at.k < kg) v = to_acc(wk[(long long)m * rs]);
                a_reg[t] = v;
            }
            advance(a_at, step, ph.taps, pw.taps);
        }
#pragma unroll
        for (int t = 0; t < DG_B_PER_THREAD; ++t) {
            const int kk = brow0 + t * DG_B_ROWS_STEP;
            ACC_T v = ACC_T(0);
            if (bcol_ok && kk < BK && b_at[t].k < kg) {
                const int p = pi - b_at[t].jr * ph.pstep, q = qi - b_at[t].js * pw.pstep;
                if ((unsigned)p < (unsigned)P && (unsigned)q < (unsigned)Q)  // outside: a tap past the edge
                    v = to_acc(dy[dybase + ((long long)b_at[t].k * P + p) * Q + q]);
            }
            b_reg[t] = v;
            advance(b_at[t], step, ph.taps, pw.taps);
        }
    };
    auto store_slice = [&](int buf) {
#pragma unroll
        for (int t = 0; t < DG_A_PER_THREAD; ++t) {
            const int e = tid + t * DG_THREADS;
            if (e < BM * BK) {
                const int m = e / BK;
                As[buf][a_kk * DG_APITCH + m] = a_reg[t];
            }
        }
#pragma unroll
        for (int t = 0; t < DG_B_PER_THREAD; ++t) {
            const int kk = brow0 + t * DG_B_ROWS_STEP;
            if (kk < BK) Bs[buf][kk * BN + bcol] = b_reg[t];
        }
    };

    ACC_T acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = ACC_T(0);

    const int nslices = (kred + BK - 1) / BK;
    load_slice();
    store_slice(0);
    __syncthreads();
    for (int t = 0; t < nslices; ++t) {
        const int buf = t & 1;
        const bool more = t + 1 < nslices;  // uniform across the block
        if (more) load_slice();
        const ACC_T* a_s = As[buf] + tm * DG_VEC;
        const ACC_T* b_s = Bs[buf] + tn * DG_VEC;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            ACC_T av[TM], bv[TN];
#pragma unroll
            for (int gi = 0; gi < TM / DG_VEC; ++gi) {
                const AccVec<DG_VEC> f = *reinterpret_cast<const AccVec<DG_VEC>*>(a_s + kk * DG_APITCH +
                                                                               gi * DG_MT * DG_VEC);
#pragma unroll
                for (int v = 0; v < DG_VEC; ++v) av[gi * DG_VEC + v] = f.e[v];
            }
#pragma unroll
            for (int gj = 0; gj < TN / DG_VEC; ++gj) {
                const AccVec<DG_VEC> f = *reinterpret_cast<const AccVec<DG_VEC>*>(b_s + kk * BN + gj * DG_NT * DG_VEC);
#pragma unroll
                for (int v = 0; v < DG_VEC; ++v) bv[gj * DG_VEC + v] = f.e[v];
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

    // ---- epilogue: column j -> (n, h = a + i*stride_h, w = b + iw*stride_w) ----
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int col = j0 + (j / DG_VEC) * DG_NT * DG_VEC + tn * DG_VEC + j % DG_VEC;
        if (col >= ncols) continue;
        const int n = col / hw, rem = col - (col / hw) * hw;
        const int i = rem / pw.pixels, iw = rem - (rem / pw.pixels) * pw.pixels;
        T* dxcol = dx + ((long long)n * C + (long long)g * cg) * H * W + (long long)(a + i * stride_h) * W +
                   b + iw * stride_w;
#pragma unroll
        for (int i2 = 0; i2 < TM; ++i2) {
            const int m = m0 + (i2 / DG_VEC) * DG_MT * DG_VEC + tm * DG_VEC + i2 % DG_VEC;
            if (m < cg) dxcol[(long long)m * H * W] = from_acc<T>(acc[i2][j]);
        }
    }
}
