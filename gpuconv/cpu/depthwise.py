"""Depthwise (``groups == C``, any channel multiplier): broadcasted multiply-adds of shifted views, one per tap.

A GEMM would have a reduction of ``R*S`` and width one per channel, so BLAS gains nothing; instead every
tap does ``y[n, c, j] += w[c*M + j, r, s] * x_rs[n, c]`` for all channels at once, streaming over the
output. With stride 1 the wide layout makes every operand one long contiguous run per channel.
"""

from __future__ import annotations

import math

import numpy as np

from ..problem import ConvProblem
from . import _scratch, _views


def supports(problem: ConvProblem) -> bool:
    """One input channel per group: ``groups == C``."""
    return problem.cg == 1


def depthwise(problem: ConvProblem, x: np.ndarray, w: np.ndarray, *, wide: int = 0) -> np.ndarray:
    """Convolve a depthwise problem tap by tap.

    Args:
        problem: the validated problem (see :func:`supports`).
        x: ``(N, C, H, W)`` in the compute dtype, any strides.
        w: ``(C*M, 1, R, S)`` in the compute dtype, ``M = K / C`` the channel multiplier.
        wide: use the wide layout of :mod:`gpuconv.cpu._views` (stride 1 only).

    Returns:
        ``(N, K, P, Q)`` in the compute dtype.
    """
    n, c, m = problem.n, problem.c, problem.kg
    if wide:
        taps = _views.wide_taps(problem, _views.wide_input(problem, x))      # N, C, R, S, L
    else:
        taps = _views.compact_taps(problem, _views.padded(problem, x))       # N, C, R, S, P, Q
    spatial = taps.shape[4:]
    # (R, S, C, M, 1...): the weight of one tap, broadcast over images and the output grid.
    wt = np.ascontiguousarray(w.reshape(c, m, problem.r, problem.s).transpose(2, 3, 0, 1))
    wt = wt.reshape(*wt.shape, *(1,) * len(spatial))
    y = np.empty((n, c, m, *spatial), x.dtype)
    tmp = _scratch.empty("tmp", y.shape, y.dtype)
    for r in range(problem.r):
        for s in range(problem.s):
            tap = taps[:, :, None, r, s]                                      # N, C, 1, ...
            if r == s == 0:
                np.multiply(tap, wt[r, s], out=y)
            else:
                np.multiply(tap, wt[r, s], out=tmp)
                y += tmp
    y = y.reshape(n, problem.k, math.prod(spatial))  # not -1: that is ambiguous when N == 0
    if wide:
        return _views.narrow(problem, y)
    return y.reshape(n, problem.k, problem.p, problem.q)
