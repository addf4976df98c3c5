"""im2col + GEMM: one copy of every receptive field into a column matrix, one batched BLAS matmul.

Per image and group the product is ``W (K/G x C/G*R*S) @ cols (C/G*R*S x P*Q)``, so the result lands as
``(N, G, K/G, P*Q)``, which *is* the NCHW output: no transpose afterwards. Groups and images are batch
dimensions of a single ``np.matmul`` (the weight broadcast over images).
"""

from __future__ import annotations

import math

import numpy as np

from ..problem import ConvProblem
from . import _scratch, _views

# Bound on the column matrix: larger batches are processed in chunks of whole images so that a big batch
# does not allocate R*S times its input at once. One chunk covers the usual inference and training sizes.
COLS_BUDGET_BYTES = 256 * 2**20


def im2col(problem: ConvProblem, x: np.ndarray, w: np.ndarray, *, wide: int = 0) -> np.ndarray:
    """Convolve by im2col + GEMM.

    Args:
        problem: the validated problem.
        x: ``(N, C, H, W)`` in the compute dtype, any strides.
        w: ``(K, C/G, R, S)`` in the compute dtype.
        wide: use the wide layout of :mod:`gpuconv.cpu._views` (stride 1 only): the column matrix is copied
            in runs of ``P * Wp`` instead of ``Q`` elements, at the price of ``Wp - Q`` junk output columns.

    Returns:
        ``(N, K, P, Q)`` in the compute dtype.
    """
    g, kg = problem.groups, problem.kg
    wm = w.reshape(g, kg, problem.reduction)
    if wide:
        taps = _views.wide_taps(problem, _views.wide_input(problem, x))      # N, C, R, S, L
    else:
        taps = _views.compact_taps(problem, _views.padded(problem, x))       # N, C, R, S, P, Q
    n, spatial = problem.n, taps.shape[4:]
    length = math.prod(spatial)
    per_image = problem.c * problem.r * problem.s * length * x.itemsize
    chunk = max(1, min(n, COLS_BUDGET_BYTES // per_image))
    y = np.empty((n, g, kg, length), x.dtype)
    cols = _scratch.empty("cols", (chunk, g, problem.cg, problem.r, problem.s, *spatial), x.dtype)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        np.copyto(cols[:m], taps[i:i + m].reshape(m, g, problem.cg, problem.r, problem.s, *spatial))
        np.matmul(wm, cols[:m].reshape(m, g, problem.reduction, length), out=y[i:i + m])
    y = y.reshape(n, problem.k, length)
    if wide:
        return _views.narrow(problem, y)
    return y.reshape(n, problem.k, problem.p, problem.q)
