"""Pointwise: a 1x1 kernel is a plain GEMM per image, ``W (K/G x C/G) @ X (C/G x H*W)``, with no column matrix."""

from __future__ import annotations

import numpy as np

from ..problem import ConvProblem


def supports(problem: ConvProblem) -> bool:
    """A 1x1 kernel without padding (any stride: a strided input is subsampled, which is the whole im2col)."""
    return problem.r == problem.s == 1 and not any(problem.padding)


def pointwise(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Convolve a 1x1 kernel as one batched matmul over images and groups.

    Args:
        problem: the validated problem (see :func:`supports`).
        x: ``(N, C, H, W)`` in the compute dtype, any strides; read in place when C-contiguous and unstrided.
        w: ``(K, C/G, 1, 1)`` in the compute dtype.

    Returns:
        ``(N, K, P, Q)`` in the compute dtype.
    """
    n, g, p, q = problem.n, problem.groups, problem.p, problem.q
    sh, sw = problem.stride
    if (sh, sw) != (1, 1):
        x = x[:, :, :(p - 1) * sh + 1:sh, :(q - 1) * sw + 1:sw]
    # reshape copies only when x is not already (C, P*Q)-contiguous per image (a view, a subsampled input).
    xm = x.reshape(n, g, problem.cg, p * q)
    y = np.empty((n, g, problem.kg, p * q), x.dtype)
    np.matmul(w.reshape(g, problem.kg, problem.cg), xm, out=y)
    return y.reshape(n, problem.k, p, q)
