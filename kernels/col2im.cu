// col2im: fold the input gradient's column matrix back onto the input, each element gathering its own taps.
//
//   dx[n][g*Cg + c][h][w] = sum over r, s of col[g][(c*R + r)*S + s][(n*P + p)*Q + q]
//   where h + pad_t - r*dil_h = p*stride_h and w + pad_l - s*dil_w = q*stride_w (0 <= p < P, 0 <= q < Q),
//
// with col (groups, Cg*R*S, ld) = W^T * dY per group (kernels/gemm.cu) over the `images` images starting at
// dx, in ACC_T (float16 columns are kept in float32 until this sum). A gather, not a scatter: every dx element
// is written once, by one thread, from the same taps in the same order (deterministic, no atomics); an
// element no tap reaches (a gap at stride > dilated kernel, or only padding) is zero.
// Grid: x = ceil(images*C*H*W / COL2IM_THREADS). Block: COL2IM_THREADS threads, 1-d.
// Consecutive threads take consecutive w: coalesced stores, and coalesced column reads at stride 1.
#include "common.cuh"

#ifndef COL2IM_THREADS
#define COL2IM_THREADS 256
#endif

extern "C" __global__ __launch_bounds__(COL2IM_THREADS) void col2im(
    const ACC_T* __restrict__ col, T* __restrict__ dx,
    int images, int C, int H, int W, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups, int ld)
{
    const int hw = H * W;
    const int e = blockIdx.x * COL2IM_THREADS + threadIdx.x;
    if (e >= images * C * hw) return;  // no barriers in this kernel
    const int n = e / (C * hw), rem = e - n * (C * hw);
    const int ch = rem / hw, pix = rem - ch * hw;
    const int h = pix / W, w = pix - (pix / W) * W;
    const int cg = C / groups;
    const int g = ch / cg, c = ch - g * cg;
    const ACC_T* colc = col + ((long long)g * cg + c) * R * S * ld + (long long)n * P * Q;

    ACC_T sum = ACC_T(0);
    for (int r = 0; r < R; ++r) {
        const int ph = h + pad_t - r * dil_h;
        if (ph < 0) break;  // decreasing in r
        const int p = ph / stride_h;
        if (p * stride_h != ph || p >= P) continue;
        for (int s = 0; s < S; ++s) {
            const int qw = w + pad_l - s * dil_w;
            if (qw < 0) break;
            const int q = qw / stride_w;
            if (q * stride_w != qw || q >= Q) continue;
            sum += colc[(long long)(r * S + s) * ld + p * Q + q];
        }
    }
    dx[e] = from_acc<T>(sum);
}
