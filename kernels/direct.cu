// Direct convolution: each block computes a tile of output pixels of one image for KPT output channels of
// one group, reading the input through a shared-memory window that holds the tile's receptive field (halo
// included) for CB input channels at a time.
//
// Layout: x (N, C, H, W), w (K, C/groups, R, S), bias (K,), y (N, K, P, Q), all contiguous.
// Grid:   x = tiles_p * tiles_q output tiles, y = groups * ceil(Kg / KPT), z = N.
// Block:  (BQ, BP) threads. Thread (tx, ty) owns output row p0 + ty and columns q0 + tx + j * BQ
//         (j < QPT) for the block's KPT channels: KPT * QPT accumulators in registers.
//
// The window is static shared memory of CB x XH x XW elements (XH, XW below). The host picks the tile
// (tile_p <= BP rows, tile_q <= BQ * QPT columns) and how many filter taps one window covers (chunk_r x
// chunk_s) so that the footprint (tile - 1) * stride + (chunk - 1) * dilation + 1 fits the window in each
// dimension; every stride, dilation and filter size is then correct with any parameter point, and the
// tuner picks SX (the stride the window is sized for) and HALO ((R-1)*dilation the window leaves room for)
// so that the common case is one window per channel block with the full tile busy.
//
// Speed (H100/H200), reasoning only: the window is filled with row-contiguous loads (threadIdx.x along W,
// so a warp reads consecutive addresses of one input row: coalesced). In the inner loop a warp reads
// consecutive smem columns (stride = conv stride; the row pitch is odd so the rows a warp spans with
// BQ < 32 land on different banks), and every thread of the block reads the same weight address, which
// the hardware serves as one broadcast load from L1. Each smem value feeds KPT FMAs and each weight QPT
// FMAs. This is the kernel for depthwise and small-C convolutions, which are bandwidth-bound: each input
// element is read from global memory about once per (output channel block), the output once.
// Not done: double-buffering the window, vector loads.
#include "common.cuh"

#ifndef BQ
#define BQ 32  // threads along Q
#endif
#ifndef BP
#define BP 4  // threads along P (one output row each)
#endif
#ifndef QPT
#define QPT 1  // output columns per thread, BQ apart
#endif
#ifndef KPT
#define KPT 1  // output channels per block (every thread computes all of them)
#endif
#ifndef CB
#define CB 1  // input channels staged per window
#endif
#ifndef HALO
#define HALO 2  // extra window rows/columns beyond the strided tile: (R-1)*dil_h that fits in one window
#endif
#ifndef SX
#define SX 1  // the stride the window is sized for
#endif

#define DIRECT_XH ((BP - 1) * SX + HALO + 1)
#define DIRECT_XW ((BQ * QPT - 1) * SX + HALO + 1)
#define DIRECT_PITCH (DIRECT_XW | 1)  // odd row pitch: rows spanned by one warp start on different banks

extern "C" __global__ __launch_bounds__(BQ * BP) void direct_conv(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
    int N, int C, int H, int W, int K, int P, int Q, int R, int S,
    int stride_h, int stride_w, int pad_t, int pad_l, int dil_h, int dil_w, int groups, int has_bias,
    int tile_p, int tile_q, int tiles_q, int chunk_r, int chunk_s)
{
    __shared__ ACC_T xs[CB * DIRECT_XH * DIRECT_PITCH];

    const int cg = C / groups, kg = K / groups;
    const int kblocks = (kg + KPT - 1) / KPT;
    const int g = blockIdx.y / kblocks;
    const int k0 = (blockIdx.y - g * kblocks) * KPT;  // first output channel of the block, within group g
    const int n = blockIdx.z;
    const int tile_row = blockIdx.x / tiles_q;
    const int p0 = tile_row * tile_p, q0 = (blockIdx.x - tile_row * tiles_q) * tile_q;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int rs = R * S;

    const T* xg = x + ((long long)n * C + (long long)g * cg) * H * W;  // image n, first channel of group g
    const T* wg = w + (long long)(g * kg + k0) * cg * rs;                // filter of the block's first channel

    ACC_T acc[KPT][QPT];
#pragma unroll
    for (int kk = 0; kk < KPT; ++kk)
#pragma unroll
        for (int j = 0; j < QPT; ++j) acc[kk][j] = ACC_T(0);

    for (int c0 = 0; c0 < cg; c0 += CB) {
        const int cn = min(CB, cg - c0);
        for (int r0 = 0; r0 < R; r0 += chunk_r) {
            const int rn = min(chunk_r, R - r0);
            const int rows = (tile_p - 1) * stride_h + (rn - 1) * dil_h + 1;  // <= DIRECT_XH (host-checked)
            const int ih0 = p0 * stride_h - pad_t + r0 * dil_h;                // input row of window row 0
            for (int s0 = 0; s0 < S; s0 += chunk_s) {
                const int sn = min(chunk_s, S - s0);
                const int cols = (tile_q - 1) * stride_w + (sn - 1) * dil_w + 1;  // <= DIRECT_XW
                const int iw0 = q0 * stride_w - pad_l + s0 * dil_w;

                __syncthreads();  // every thread is done with the previous window
                for (int cr = ty; cr < cn * rows; cr += BP) {
                    const int cc = cr / rows, row = cr - cc * rows;
                    const int ih = ih0 + row;
                    const bool row_in = ih >= 0 && ih < H;
                    const long long src = ((long long)(c0 + cc) * H + ih) * W;
                    ACC_T* dst = xs + (cc * DIRECT_XH + row) * DIRECT_PITCH;
                    for (int col = tx; col < cols; col += BQ) {
                        const int iw = iw0 + col;
                        dst[col] = (row_in && iw >= 0 && iw < W) ? to_acc(xg[src + iw]) : ACC_T(0);  // padding
                    }
                }
                __syncthreads();

                if (ty < tile_p) {
                    for (int cc = 0; cc < cn; ++cc) {
                        for (int r = 0; r < rn; ++r) {
                            // window row of output row ty, tap r0 + r
                            const ACC_T* xrow = xs + (cc * DIRECT_XH + ty * stride_h + r * dil_h) * DIRECT_PITCH;
                            const T* wtap = wg + ((long long)(c0 + cc) * R + r0 + r) * S + s0;
                            for (int s = 0; s < sn; ++s) {
                                ACC_T wv[KPT];
#pragma unroll
                                for (int kk = 0; kk < KPT; ++kk)
                                    wv[kk] = (k0 + kk < kg) ? to_acc(wtap[(long long)kk * cg * rs + s]) : ACC_T(0);
#pragma unroll
                                for (int j = 0; j < QPT; ++j) {
                                    const int q = tx + j * BQ;
                                    const ACC_T xv = q < tile_q ? xrow[q * stride_w + s * dil_w] : ACC_T(0);
#pragma unroll
                                    for (int kk = 0; kk < KPT; ++kk) acc[kk][j] += wv[kk] * xv;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    const int p = p0 + ty;
    if (ty < tile_p && p < P) {
#pragma unroll
        for (int kk = 0; kk < KPT; ++kk) {
            const int k = g * kg + k0 + kk;
            if (k0 + kk < kg) {
                const ACC_T b = has_bias ? to_acc(bias[k]) : ACC_T(0);
                T* yrow = y + (((long long)n * K + k) * P + p) * Q + q0;
#pragma unroll
                for (int j = 0; j < QPT; ++j) {
                    const int q = tx + j * BQ;
                    if (q < tile_q && q0 + q < Q) yrow[q] = from_acc<T>(acc[kk][j] + b);
                }
            }
        }
    }
}
