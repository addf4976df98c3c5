"""Depthwise (``groups == C``, any channel multiplier): broadcasted multiply-adds of shifted views, one per tap.

A GEMM would have a reduction of ``R*S`` and width one per channel, so BLAS gains nothing; instead every
tap does ``y[n, c, j] += w[c*M + j, r, s] * x_rs[n, c]``. With stride 1 the wide layout makes every operand
one long contiguous run per channel.

The taps run over one block of channels of one image at a time, sized so that the block's output, its
product scratch and its input planes stay in the core's L2 cache across all ``R*S`` taps: streaming every tap
over the whole tensor reads and writes it ``2*R*S`` times from memory instead. On a 2-core Intel Xeon
(AVX-512, 2 MiB L2) blocks of 256 KiB ran MobileNet-v2's 3x3 layers 1.5-2.7x faster than whole tensors
(32 channels at 112x112: 2.64 -> 1.20 ms; 144 at 56x56: 3.17 -> 1.54 ms); two threads over the blocks were
slower than one.
"""

from __future__ import annotations

import math

import numpy as np

from ..problem import ConvProblem
from . import _scratch, _views

#: The tuning space: the wide layout (phased at strides above 1) and the output bytes of one block of channels, in KiB.
SPACE = {"wide": (0, 1), "block": (64, 256, 1024)}
DEFAULTS = {"wide": 0, "block": 256}


def supports(problem: ConvProblem) -> bool:
    """One input channel per group: ``groups == C``."""
    return problem.cg == 1


def depthwise(problem: ConvProblem, x: np.ndarray, w: np.ndarray, *, wide: int = 0, block: int = 256) -> np.ndarray:
    """Convolve a depthwise problem tap by tap, one block of channels at a time.

    Args:
        problem: the validated problem (see :func:`supports`).
        x: ``(N, C, H, W)`` in the compute dtype, any strides.
        w: ``(C*M, 1, R, S)`` in the compute dtype, ``M = K / C`` the channel multiplier.
        wide: use the wide layout of :mod:`gpuconv.cpu._views` (its phased form at strides above 1).
        block: the output of one block of channels, in KiB (at least one channel per block).

    Returns:
        ``(N, K, P, Q)`` in the compute dtype.
    """
    n, c, m = problem.n, problem.c, problem.kg
    taps, pitch = _views.tap_views(problem, x, wide)
    spatial = taps[0][0].shape[2:]
    # (R, S, C, M, 1...): the weight of one tap, broadcast over the output grid.
    wt = np.ascontiguousarray(w.reshape(c, m, problem.r, problem.s).transpose(2, 3, 0, 1))
    wt = wt.reshape(*wt.shape, *(1,) * len(spatial))
    y = np.empty((n, c, m, *spatial), x.dtype)
    per_channel = m * math.prod(spatial) * x.itemsize
    step = max(1, block * 1024 // max(per_channel, 1))
    for i in range(n):
        for c0 in range(0, c, step):
            block_taps = [[tap[i, c0:c0 + step] for tap in row] for row in taps]
            _block(block_taps, wt[:, :, c0:c0 + step], y[i, c0:c0 + step])
    y = y.reshape(n, problem.k, math.prod(spatial))  # not -1: that is ambiguous when N == 0
    if wide:
        return _views.narrow(problem, y, pitch)
    return y.reshape(n, problem.k, problem.p, problem.q)


def _block(taps: list[list[np.ndarray]], wt: np.ndarray, y: np.ndarray) -> None:
    """``y (Cb, M, ...) = sum over taps of taps[r][s] * wt[r, s]`` for one block of channels."""
    tmp = _scratch.empty("tmp", y.shape, y.dtype)
    for r, row in enumerate(taps):
        for s, view in enumerate(row):
            tap = view[:, None]                                               # Cb, 1, ...
            if r == s == 0:
                np.multiply(tap, wt[r, s], out=y)
            else:
                np.multiply(tap, wt[r, s], out=tmp)
                y += tmp
