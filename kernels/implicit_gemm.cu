// Implicit GEMM convolution: per group g, Y_g (Kg x N*P*Q) = W_g (Kg x Cg*R*S) * X_g (Cg*R*S x N*P*Q), where
// the column matrix X_g is never written: the B-operand loads compute each element's input address (and
// return zero in the padding) on the fly.
//
// Layout: x (N, C, H, W), w (K, C/groups, R, S) = row-major (K, Cg*R*S), bias (K,), y (N, K, P, Q).
// Grid:   x = ceil(N*P*Q / BN) column tiles, y = ceil(Kg / BM) row tiles, z = splits * groups
//         (z = split * groups + g).
// Block:  (BM/TM) * (BN/TN) threads, 1-d.
// Reduction index kr = (c * R + r) * S + s; column index j = (n * P + p) * Q + q.
//
// Split-K: with `splits` > 1 the reduction's slices are cut into `splits` contiguous ranges run by different
// blocks; each stores its partial sums (no bias) to partial[split] laid out as y, in ACC_T, and
// implicit_gemm_reduce adds them in split order, adds the bias and converts: the same sums in the same order
// on every run (no atomics), whatever the block schedule. With one split the kernel stores y itself.
//
// The main loop, per BK slice (double-buffered shared memory, one barrier per slice; the next slice's global
// loads are issued into registers before the current one is multiplied and stored after it):
// - B (im2col) loads: a thread loads units of kVec = 16 bytes / sizeof(T) consecutive columns of one
//   reduction row, always the same columns, so each column's (n, p, q) split -- its image offset and input
//   origin -- is computed once, before the loop. A row's (c, r, s) is kept as counters (the input offset
//   c*H*W + r*dil_h*W + s*dil_w, r*dil_h, s*dil_w) advanced by BK per slice with at most one carry each:
//   no divisions in the loop. A unit whose columns lie in one output row at stride 1, all inside the image
//   and 16-byte aligned is one vector load (along W); any other unit is kVec element loads with their own
//   padding checks. The choice is made per unit at run time, so either path is correct for any problem.
// - A (weight) loads: units of kVec consecutive kr of one row (16-byte vectors where w and Cg*R*S allow,
//   element loads otherwise); consecutive threads take consecutive rows m, so the transposing store to
//   As[k][m] is conflict-free without padding.
// - Shared layout As[2][BK][BM], Bs[2][BK][BN] in ACC_T (the inner loop does no conversions). Thread
//   (tm, tn) owns TM x TN outputs split into 16-byte groups: rows grp*(BM/TM)*kAV + tm*kAV + [0, kAV) and
//   columns grp*(BN/TN)*kBV + tn*kBV + [0, kBV), so its fragments are float4 (LDS.128) reads; a warp reads
//   contiguous 16-byte pieces of B (conflict-free) and a few distinct pieces of A (broadcast).
// - TM*TN FMAs per (TM + TN) / (16 / sizeof(ACC_T)) shared loads.
// Epilogue: bias fused; a thread's kBV consecutive columns are one vector store where they lie in one image
// and y is aligned, element stores otherwise.
// Not done: cp.async / TMA pipelines, tensor cores.
#include "fragments.cuh"

#ifndef BM
#define BM 128  // output channels per block tile
#endif
#ifndef BN
#define BN 128  // output pixels (N*P*Q) per block tile
#endif
#ifndef BK
#define BK 8  // reduction slice staged per step
#endif
#ifndef TM
#define TM 8  // rows per thread
#endif
#ifndef TN
#define TN 8  // columns per thread
#endif
#ifndef IG_REDUCE_THREADS
#define IG_REDUCE_THREADS 256  // threads per block of implicit_gemm_reduce
#endif

#define IG_THREADS ((BM / TM) * (BN / TN))

namespace ig_detail {
constexpr int kThreads = IG_THREADS;
constexpr int kVec = 16 / sizeof(T);         // elements per 16-byte global load
constexpr int kAccVec = 16 / sizeof(ACC_T);  // ACC_T elements per 16-byte shared access
constexpr int kAV = TM < kAccVec ? TM : kAccVec;
constexpr int kBV = TN < kAccVec ? TN : kAccVec;
constexpr int kAUnits = BM * (BK / kVec);    // 16-byte units of the A slice (kVec consecutive kr of a row)
constexpr int kBRowUnits = BN / kVec;        // 16-byte units per row of the B slice
constexpr int kBUnits = BK * kBRowUnits;
constexpr int kALoads = (kAUnits + kThreads - 1) / kThreads;
constexpr int kBLoads = (kBUnits + kThreads - 1) / kThreads;
constexpr int kBRowStep = kThreads / kBRowUnits;  // rows between a thread's B units
constexpr int kMStride = (BM / TM) * kAV;         // between a thread's row groups
constexpr int kNStride = (BN / TN) * kBV;         // between a thread's column groups
// No minimum of resident blocks in __launch_bounds__: asking for two capped points of up to 256 threads at
// 128 registers, and ptxas spilled (measured over the whole space; see the constraints in implicit_gemm.py).
static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
static_assert(BK % kVec == 0 && BN % kVec == 0, "BK and BN must be multiples of a 16-byte vector");
static_assert(TM % kAV == 0 && TN % kBV == 0, "thread tiles are made of 16-byte groups");
static_assert(kThreads % kBRowUnits == 0, "each thread loads fixed B columns: BN / kVec must divide the threads");
static_assert(kThreads >= 32 && kThreads <= 1024, "threads per block");

union Raw16 {
    uint4 u;
    T e[kVec];
};
template <class O>
struct __align__(kBV * sizeof(O)) OutVec {
    O e[kBV];
};

static __device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

// Stores the thread's TM x TN tile to out laid out as y (N, K, P, Q), plus bias[k] when bias is not null.
template <class O>
static __device__ __forceinline__ void store_tile(const ACC_T (&acc)[TM][TN], O* __restrict__ out,
                                                  const T* __restrict__ bias, int K, int pq, int ncols, int kg,
                                                  int g, int m0, int j0, int tm, int tn) {
    const bool vec_ok = pq % kBV == 0 && (reinterpret_cast<unsigned long long>(out) % (kBV * sizeof(O))) == 0;
#pragma unroll
    for (int gj = 0; gj < TN / kBV; ++gj) {
        const int col = j0 + gj * kNStride + tn * kBV;
        if (col >= ncols) continue;
        if (vec_ok) {  // the kBV columns lie in one image, contiguous in y
            const int n = col / pq, pqc = col - n * pq;
            O* base = out + (long long)n * K * pq + pqc;
#pragma unroll
            for (int gi = 0; gi < TM / kAV; ++gi) {
#pragma unroll
                for (int vi = 0; vi < kAV; ++vi) {
                    const int m = m0 + gi * kMStride + tm * kAV + vi;
                    if (m >= kg) continue;
                    const int k = g * kg + m;
                    const ACC_T b = bias != nullptr ? to_acc(bias[k]) : ACC_T(0);
                    OutVec<O> o;
#pragma unroll
                    for (int v = 0; v < kBV; ++v) o.e[v] = from_acc<O>(acc[gi * kAV + vi][gj * kBV + v] + b);
                    GPUCONV_CHECK_ALIGNED(base + (long long)k * pq, sizeof(OutVec<O>));
                    *reinterpret_cast<OutVec<O>*>(base + (long long)k * pq) = o;
                }
            }
        } else {
#pragma unroll
            for (int v = 0; v < kBV; ++v) {
                const int c = col + v;
                if (c >= ncols) continue;
                const int n = c / pq, pqc = c - n * pq;
                O* base = out + (long long)n * K * pq + pqc;
#pragma unroll
                for (int gi = 0; gi < TM / kAV; ++gi) {
#pragma unroll
                    for (int vi = 0; vi < kAV; ++vi) {
                        const int m = m0 + gi * kMStride + tm * kAV + vi;
                        if (m >= kg) continue;
                        const int k = g * kg + m;
                        const ACC_T b = bias != nullptr ? to_acc(bias[k]) : ACC_T(0);
                        base[(long long)k * pq] = from_acc<O>(acc[gi * kAV + vi][gj * kBV + v] + b);
                    }
                }
            }
        }
    }
}
}  // namespace ig_detail

extern "C" __global__ __launch_bounds__(IG_THREADS) void implicit_gemm_conv(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
    ACC_T* __restrict__ partial,
    int N, int C, int H, int W, int K, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups, int has_bias, int splits)
{
    using namespace ig_detail;
    __shared__ __align__(16) ACC_T As[2][BK][BM];
    __shared__ __align__(16) ACC_T Bs[2][BK][BN];

    const int cg = C / groups, kg = K / groups;
    const int rs = R * S;
    const int kred = cg * rs;  // reduction length
    const int pq = P * Q;
    const int ncols = N * pq;  // GEMM N dimension
    const int hw = H * W;
    const int g = blockIdx.z % groups;
    const int split = blockIdx.z / groups;
    const int m0 = blockIdx.y * BM;  // first output channel (within the group) of the tile
    const int j0 = blockIdx.x * BN;  // first column of the tile
    const int tid = threadIdx.x;
    const int tn = tid % (BN / TN), tm = tid / (BN / TN);

    // This split's slices [t_begin, t_end) of the reduction; a split past the end multiplies nothing.
    const int nslices_all = (kred + BK - 1) / BK;
    const int per_split = (nslices_all + splits - 1) / splits;
    const int t_begin = split * per_split;
    const int t_end = min(nslices_all, t_begin + per_split);
    const int nslices = max(0, t_end - t_begin);
    const int kbeg = t_begin * BK;

    // ---- A: each unit's row pointer (at kbeg) and whether the row exists ----
    const T* wg = w + (long long)g * kg * kred;
    const bool a_vec = aligned16(wg) && kred % kVec == 0;  // block-uniform
    const T* a_ptr[kALoads];
    int a_kr[kALoads];  // the unit's first kr, advanced by BK per slice
    bool a_row[kALoads];
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
        const int u = tid + i * kThreads;
        const int m = u % BM, kq = u / BM;
        a_row[i] = ((kAUnits % kThreads) == 0 || u < kAUnits) && m0 + m < kg;
        a_kr[i] = kbeg + kq * kVec;
        a_ptr[i] = wg + (long long)(a_row[i] ? m0 + m : 0) * kred + a_kr[i];
    }

    // ---- B: this thread's kVec columns (fixed) and the input origin of each ----
    const int bcol = j0 + (tid % kBRowUnits) * kVec;
    const T* xg = x + (long long)g * cg * hw;
    int b_org[kVec];  // column v's input origin (image, ih0, iw0) as an offset into xg; may be negative
    int b_ih0[kVec], b_iw0[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
        const int j = bcol + v;
        if (j < ncols) {
            const int n = j / pq, pqj = j - n * pq;
            const int p = pqj / Q, q = pqj - p * Q;
            b_ih0[v] = p * stride_h - pad_t;
            b_iw0[v] = q * stride_w - pad_l;
            b_org[v] = n * C * hw + b_ih0[v] * W + b_iw0[v];
        } else {  // a missing column: every row check fails
            b_ih0[v] = -(1 << 30);
            b_iw0[v] = 0;
            b_org[v] = 0;
        }
    }
    // The whole unit is one output row at stride 1 (its first column starts a 16-byte piece of W) where Q, W
    // and x allow; the remaining conditions (inside the image, aligned) are checked per row below.
    const bool b_vec = stride_w == 1 && Q % kVec == 0 && W % kVec == 0 && aligned16(xg) && (C * hw) % kVec == 0 &&
                       bcol < ncols;

    // Per B unit row: counters of kr = (c*R + r)*S + s as c, r*dil_h, s*dil_w, advanced by BK per slice.
    const int sw_end = S * dil_w, rh_end = R * dil_h;
    const int d_c = BK / rs, d_rh = (BK % rs) / S * dil_h, d_sw = BK % S * dil_w;
    int b_c[kBLoads], b_rh[kBLoads], b_sw[kBLoads];
    bool b_unit[kBLoads];
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
        const int u = tid + i * kThreads;
        b_unit[i] = (kBUnits % kThreads) == 0 || u < kBUnits;
        const int kr = kbeg + u / kBRowUnits;
        b_c[i] = kr / rs;
        const int rem = kr - b_c[i] * rs;
        b_rh[i] = rem / S * dil_h;
        b_sw[i] = (rem - rem / S * S) * dil_w;
    }

    ACC_T a_reg[kALoads][kVec];
    ACC_T b_reg[kBLoads][kVec];

    // Global -> registers for the next slice (the one the counters point at); then the counters advance.
    auto load_slice = [&]() {
#pragma unroll
        for (int i = 0; i < kALoads; ++i) {
            const int kr = a_kr[i];
            if (a_row[i] && a_vec && kr < kred) {  // kr and kred: multiples of kVec
                Raw16 r;
                r.u = __ldg(reinterpret_cast<const uint4*>(a_ptr[i]));
#pragma unroll
                for (int v = 0; v < kVec; ++v) a_reg[i][v] = to_acc(r.e[v]);
            } else {
#pragma unroll
                for (int v = 0; v < kVec; ++v)
                    a_reg[i][v] = (a_row[i] && kr + v < kred) ? to_acc(a_ptr[i][v]) : ACC_T(0);
            }
            a_kr[i] += BK;
            a_ptr[i] += BK;
        }
#pragma unroll
        for (int i = 0; i < kBLoads; ++i) {
            const int c = b_c[i], rh = b_rh[i], sw = b_sw[i];
            const bool row_ok = b_unit[i] && c < cg;
            const int off = c * hw + rh * W + sw;  // of (c, r, s) relative to a column's origin
            const int ih = b_ih0[0] + rh, iw = b_iw0[0] + sw;
            if (row_ok && b_vec && (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W && iw % kVec == 0) {
                Raw16 r;
                r.u = __ldg(reinterpret_cast<const uint4*>(xg + (unsigned)(b_org[0] + off)));
#pragma unroll
                for (int v = 0; v < kVec; ++v) b_reg[i][v] = to_acc(r.e[v]);
            } else {
#pragma unroll
                for (int v = 0; v < kVec; ++v) {
                    const bool in = row_ok && (unsigned)(b_ih0[v] + rh) < (unsigned)H &&
                                    (unsigned)(b_iw0[v] + sw) < (unsigned)W;
                    b_reg[i][v] = in ? to_acc(xg[(unsigned)(b_org[v] + off)]) : ACC_T(0);  // outside: zero padding
                }
            }
            // kr += BK: s, then r, then c, each with at most one carry (d_sw < S*dil_w, d_rh < R*dil_h).
            int nsw = sw + d_sw, nrh = rh + d_rh, nc = c + d_c;
            if (nsw >= sw_end) {
                nsw -= sw_end;
                nrh += dil_h;
            }
            if (nrh >= rh_end) {
                nrh -= rh_end;
                nc += 1;
            }
            b_c[i] = nc;
            b_rh[i] = nrh;
            b_sw[i] = nsw;
        }
    };

    // Registers -> shared buffer `buf` (A transposed to k-major).
    auto store_slice = [&](const int buf) {
#pragma unroll
        for (int i = 0; i < kALoads; ++i) {
            const int u = tid + i * kThreads;
            if ((kAUnits % kThreads) == 0 || u < kAUnits) {
                const int m = u % BM, k = (u / BM) * kVec;
#pragma unroll
                for (int v = 0; v < kVec; ++v) As[buf][k + v][m] = a_reg[i][v];
            }
        }
#pragma unroll
        for (int i = 0; i < kBLoads; ++i) {
            const int u = tid + i * kThreads;
            if (b_unit[i]) {
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

    if (nslices > 0) {
        load_slice();
        store_slice(0);
        __syncthreads();
    }
    // The fragments' addresses in buffer 0; buffer 1 is a fixed distance further.
    const ACC_T* const a_rd = &As[0][0][tm * kAV];
    const ACC_T* const b_rd = &Bs[0][0][tn * kBV];
#pragma unroll 2
    for (int t = 0; t < nslices; ++t) {
        const int buf = t & 1;
        const bool more = t + 1 < nslices;  // uniform across the block
        if (more) load_slice();
        const ACC_T* const a_s = a_rd + buf * (BK * BM);
        const ACC_T* const b_s = b_rd + buf * (BK * BN);
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            ACC_T a[TM], b[TN];
#pragma unroll
            for (int gi = 0; gi < TM / kAV; ++gi) {
                const AccVec<kAV> f = *reinterpret_cast<const AccVec<kAV>*>(a_s + k * BM + gi * kMStride);
#pragma unroll
                for (int v = 0; v < kAV; ++v) a[gi * kAV + v] = f.e[v];
            }
#pragma unroll
            for (int gj = 0; gj < TN / kBV; ++gj) {
                const AccVec<kBV> f = *reinterpret_cast<const AccVec<kBV>*>(b_s + k * BN + gj * kNStride);
#pragma unroll
                for (int v = 0; v < kBV; ++v) b[gj * kBV + v] = f.e[v];
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

    // ---- epilogue: y with its bias, or this split's partial sums ----
    if (splits == 1)
        store_tile<T>(acc, y, has_bias ? bias : nullptr, K, pq, ncols, kg, g, m0, j0, tm, tn);
    else
        store_tile<ACC_T>(acc, partial + (long long)split * N * K * pq, nullptr, K, pq, ncols, kg, g, m0, j0, tm,
                          tn);
}

// y[e] = sum over split = 0, 1, ..., splits - 1 of partial[split][e], in that order, plus bias[k]; e indexes
// y (N, K, P, Q), so k = (e / (P*Q)) % K. One thread per element (consecutive threads read consecutive partial
// sums: coalesced). Grid: ceil(total / IG_REDUCE_THREADS), total = N*K*P*Q < 2**31 (the caller chunks by image).
extern "C" __global__ __launch_bounds__(IG_REDUCE_THREADS) void implicit_gemm_reduce(
    const ACC_T* __restrict__ partial, const T* __restrict__ bias, T* __restrict__ y, int total, int K, int pq,
    int splits, int has_bias)
{
    const int e = blockIdx.x * IG_REDUCE_THREADS + threadIdx.x;
    if (e >= total) return;
    ACC_T sum = ACC_T(0);
    for (int s = 0; s < splits; ++s) sum += partial[(long long)s * total + e];
    if (has_bias) sum += to_acc(bias[(e / pq) % K]);
    y[e] = from_acc<T>(sum);
}
