"""Direct: one GEMM per kernel tap, accumulated; the column matrix is never built (the memory-light choice).

For tap ``(r, s)`` the contribution is ``W[:, :, r, s] (K/G x C/G) @ X_rs (C/G x P*Q)`` per image and group,
where ``X_rs`` is the input shifted by the tap. With the wide layout ``X_rs`` is a strided view BLAS reads in
place (at a stride above 1, a run of one stride phase of the input), so apart from padding (and the phase
split) nothing is copied; otherwise each tap is copied into one reused
``(N, C, P, Q)`` buffer. Extra memory: the padded input and two output-sized buffers.
"""

from __future__ import annotations

import math

import numpy as np

from ..problem import ConvProblem
from . import _scratch, _views


def direct(problem: ConvProblem, x: np.ndarray, w: np.ndarray, *, wide: int = 0) -> np.ndarray:
    """Convolve by accumulating one batched GEMM per kernel tap.

    Args:
        problem: the validated problem.
        x: ``(N, C, H, W)`` in the compute dtype, any strides.
        w: ``(K, C/G, R, S)`` in the compute dtype.
        wide: read taps in place through the wide layout (phased at strides above 1; see
            :mod:`gpuconv.cpu._views`).

    Returns:
        ``(N, K, P, Q)`` in the compute dtype.
    """
    n, g, cg, kg = problem.n, problem.groups, problem.cg, problem.kg
    # (R, S, G, K/G, C/G): each tap's weight is a contiguous stack of G matrices.
    wt = np.ascontiguousarray(w.reshape(g, kg, cg, problem.r, problem.s).transpose(3, 4, 0, 1, 2))
    taps, pitch = _views.tap_views(problem, x, wide)
    length = math.prod(taps[0][0].shape[2:])
    buf = None if wide else _scratch.empty("tap", (n, problem.c, problem.p, problem.q), x.dtype)
    y = np.empty((n, g, kg, length), x.dtype)
    tmp = _scratch.empty("tmp", y.shape, y.dtype)
    for r in range(problem.r):
        for s in range(problem.s):
            tap = taps[r][s]
            if buf is not None:
                np.copyto(buf, tap)
                tap = buf
            first = r == s == 0
            np.matmul(wt[r, s], tap.reshape(n, g, cg, length), out=y if first else tmp)
            if not first:
                y += tmp
    y = y.reshape(n, problem.k, length)
    if wide:
        return _views.narrow(problem, y, pitch)
    return y.reshape(n, problem.k, problem.p, problem.q)
