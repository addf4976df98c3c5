// im2col: unfold x into the column matrix of a GEMM convolution, one matrix per group.
//
//   col[g][(c*R + r)*S + s][j] = x[n][g*Cg + c][p*stride_h - pad_t + r*dil_h][q*stride_w - pad_l + s*dil_w]
//   (zero outside the input), with j = (n*P + p)*Q + q over the `images` images starting at x.
//
// Layout: x (images, C, H, W); col (groups, Cg*R*S, ld) with ld >= images*P*Q (the caller rounds the row
// pitch up so that rows start 16-byte aligned and the GEMM can load them as vectors); each group's rows are
// the B operand of kernels/gemm.cu with ldb = ld. Columns past images*P*Q are not written.
// Grid: x = ceil(images*P*Q / IM2COL_THREADS), y = ceil(Cg*R*S / IM2COL_ROWS), z = groups.
// Block: IM2COL_THREADS threads, 1-d.
//
// Each thread owns one column j (its n, p, q and input origin computed once) and fills IM2COL_ROWS rows of
// it; the row's (c, r, s) split is the same for the whole block. Consecutive threads write consecutive j
// (coalesced stores) and, at stride 1, read consecutive input columns (coalesced loads).
#include "common.cuh"

#ifndef IM2COL_THREADS
#define IM2COL_THREADS 256
#endif
#ifndef IM2COL_ROWS
#define IM2COL_ROWS 8
#endif

extern "C" __global__ __launch_bounds__(IM2COL_THREADS) void im2col(
    const T* __restrict__ x, T* __restrict__ col,
    int images, int C, int H, int W, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups, int ld)
{
    const int pq = P * Q;
    const int ncols = images * pq;
    const int j = blockIdx.x * IM2COL_THREADS + threadIdx.x;
    if (j >= ncols) return;  // no barriers in this kernel
    const int cg = C / groups;
    const int rs = R * S;
    const int rows = cg * rs;
    const int g = blockIdx.z;

    const int n = j / pq, rem = j - n * pq;
    const int p = rem / Q, q = rem - p * Q;
    const int ih0 = p * stride_h - pad_t;
    const int iw0 = q * stride_w - pad_l;
    const T* xg = x + ((long long)n * C + (long long)g * cg) * H * W;
    T* colg = col + (long long)g * rows * ld + j;
    const T zero = from_acc<T>(ACC_T(0));

#pragma unroll
    for (int i = 0; i < IM2COL_ROWS; ++i) {
        const int row = blockIdx.y * IM2COL_ROWS + i;
        if (row >= rows) break;
        const int c = row / rs, crs = row - c * rs;
        const int r = crs / S, s = crs - r * S;
        const int ih = ih0 + r * dil_h, iw = iw0 + s * dil_w;
        const bool inside = (unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W;
        colg[(long long)row * ld] = inside ? xg[((long long)c * H + ih) * W + iw] : zero;
    }
}
