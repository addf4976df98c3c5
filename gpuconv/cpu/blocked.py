"""Channel-blocked im2col over the whole batch: GEMMs as wide as the batch for layers whose images are small.

im2col multiplies per image, ``W (K x C R S) @ cols (C R S x P Q)``: on a stride-2 layer of a late stage
(ResNet-50 res5, 512 channels at 7x7 outputs) that is a GEMM 49 columns wide, far below the BLAS roof
(22% of it at batch 8 on a 2-core AMD EPYC, ``python -m benchmarks.breakdown``). Here the columns of every
image sit side by side, ``cols (C R S x N P Q)``, so the batch widens the GEMM, and they are built one block
of input channels at a time, ``block`` MiB each, so that each block is still in the caches when the GEMM
reads it::

    y (K x N P Q) = sum over channel blocks b of  W[:, b] (K x Cb R S) @ cols_b (Cb R S x N P Q)

The result is ``(K, N, P, Q)``, returned as the ``(N, K, P, Q)`` view (one copy of the output, small on
these layers, where im2col has none). Groups are a batch dimension of each product; every stride, dilation
and padding is handled by the tap view of :mod:`gpuconv.cpu._views`.
"""

from __future__ import annotations

import numpy as np

from ..problem import ConvProblem
from . import _scratch, _views

SPACE = {"block": (2, 8, 32)}  # MiB of columns per channel block
DEFAULTS = {"block": 8}


def block_channels(problem: ConvProblem, block: int) -> int:
    """Input channels (per group) in one block of ``block`` MiB of columns: at least one."""
    itemsize = max(np.dtype(problem.dtype).itemsize, 4)
    per_channel = problem.groups * problem.r * problem.s * problem.n * problem.p * problem.q * itemsize
    return max(1, min(problem.cg, block * 2**20 // per_channel))


def blocked(problem: ConvProblem, x: np.ndarray, w: np.ndarray, *, block: int = DEFAULTS["block"]) -> np.ndarray:
    """Convolve by channel-blocked, batch-wide im2col.

    Args:
        problem: the validated problem.
        x: ``(N, C, H, W)`` in the compute dtype, any strides.
        w: ``(K, C/G, R, S)`` in the compute dtype, any strides.
        block: MiB of column matrix per channel block.

    Returns:
        ``(N, K, P, Q)`` in the compute dtype, a transposed view of a ``(K, N, P, Q)`` array.
    """
    n, g, cg, kg, r, s, p, q = (problem.n, problem.groups, problem.cg, problem.kg, problem.r, problem.s,
                                problem.p, problem.q)
    taps = _views.compact_taps(problem, _views.padded(problem, x))           # N, C, R, S, P, Q
    taps = taps.reshape(n, g, cg, r, s, p, q).transpose(1, 2, 3, 4, 0, 5, 6)  # G, C/G, R, S, N, P, Q
    w5 = w.reshape(g, kg, cg, r * s)
    cb = block_channels(problem, block)
    cols = _scratch.empty("blocked_cols", (g, cb, r, s, n, p, q), x.dtype)
    y = np.empty((g, kg, n * p * q), x.dtype)
    part = _scratch.empty("blocked_part", y.shape, x.dtype) if cb < cg else y
    for c0 in range(0, cg, cb):
        c1 = min(c0 + cb, cg)
        m = cols[:, :c1 - c0]
        np.copyto(m, taps[:, c0:c1])
        wb = w5[:, :, c0:c1].reshape(g, kg, (c1 - c0) * r * s)
        np.matmul(wb, m.reshape(g, (c1 - c0) * r * s, n * p * q), out=y if c0 == 0 else part)
        if c0:
            y += part
    return y.reshape(problem.k, n, p, q).transpose(1, 0, 2, 3)
