"""The weight gradient ``dw (K, C/G, R, S)`` from ``x (N, C, H, W)`` and ``dy (N, K, P, Q)``: GEMMs over the
``N*P*Q`` reduction.

im2col: ``dY (K/G x N*P*Q) @ cols^T (N*P*Q x C/G*R*S)`` per group, the column matrix copied a chunk of at most
    ``chunk`` MiB at a time (images, or with ``per_image=1`` rows of one image), the chunks' products accumulated.
    Chunks the size of the caches are read by the GEMM from there: on a 2-core Intel Xeon (2 MiB of L2 per core)
    8 MiB took 0.6-0.9x the time of the former 256 MiB on ResNet-50's stem, res2 3x3 and res3 3x3 stride-2 layers
    at batch 8.
direct: one GEMM per kernel tap, ``dY (K/G x N*P*Q) @ x_tap^T (N*P*Q x C/G)``, on the tap's shifted view of the
    padded input: no column matrix, one tap's copy at a time.
"""

from __future__ import annotations

import numpy as np

from ..problem import ConvProblem
from . import _views

#: Where the heuristic goes from ``im2col`` to ``direct``: a column matrix of the whole batch above this (bytes).
COLS_BUDGET_BYTES = 256 * 2**20


def _dy_by_group(problem: ConvProblem, dy: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Images ``start:stop`` of ``dy`` as ``(G, K/G, m*P*Q)`` (one copy)."""
    m, pq = stop - start, problem.p * problem.q
    d = dy[start:stop].reshape(m, problem.groups, problem.kg, pq).transpose(1, 2, 0, 3)
    return np.ascontiguousarray(d).reshape(problem.groups, problem.kg, m * pq)


def im2col(problem: ConvProblem, x: np.ndarray, dy: np.ndarray, *, per_image: int = 0,
           chunk: int = _views.DEFAULT_COLUMN_CHUNK) -> np.ndarray:
    """``dw`` by a GEMM of ``dy`` with the column matrix of ``x``, chunked over the batch.

    ``per_image=0`` copies the columns of a chunk image-minor, ``(G, C/G*R*S, m*P*Q)``, for one GEMM per group
    whose inner dimension spans the chunk (long reductions on small images); ``per_image=1`` keeps the
    forward's column layout ``(m, G, C/G*R*S, P*Q)``, a cheaper copy, and sums one GEMM per image (large images,
    where ``P*Q`` alone is a long enough reduction), in blocks of output rows where one image's columns exceed
    ``chunk`` MiB.
    """
    budget = _views.column_budget(chunk)
    if per_image:
        return _im2col_per_image(problem, x, dy, budget)
    n, g, cg, kg = problem.n, problem.groups, problem.cg, problem.kg
    r, s, p, q = problem.r, problem.s, problem.p, problem.q
    taps = _views.compact_taps(problem, _views.padded(problem, x))      # N, C, R, S, P, Q
    per_image_bytes = problem.c * r * s * p * q * x.itemsize
    chunk = max(1, min(n, budget // max(per_image_bytes, 1)))
    dw = np.zeros((g, kg, problem.reduction), x.dtype)
    cols = np.empty((g, cg, r, s, chunk, p, q), x.dtype)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        view = cols[:, :, :, :, :m]
        np.copyto(view, taps[i:i + m].reshape(m, g, cg, r, s, p, q).transpose(1, 2, 3, 4, 0, 5, 6))
        cm = view.reshape(g, problem.reduction, m * p * q) if m == chunk else \
            np.ascontiguousarray(view).reshape(g, problem.reduction, m * p * q)
        dw += np.matmul(_dy_by_group(problem, dy, i, i + m), cm.transpose(0, 2, 1))
    return dw.reshape(problem.k, cg, r, s)


def _im2col_per_image(problem: ConvProblem, x: np.ndarray, dy: np.ndarray, budget: int) -> np.ndarray:
    n, g, cg, kg = problem.n, problem.groups, problem.cg, problem.kg
    pq = problem.p * problem.q
    if problem.is_pointwise:  # x is its own column matrix
        cols_all = x.reshape(n, g, cg, pq)
        dw = np.matmul(dy.reshape(n, g, kg, pq), cols_all.transpose(0, 1, 3, 2)).sum(axis=0)
        return dw.reshape(problem.k, cg, 1, 1)
    taps = _views.compact_taps(problem, _views.padded(problem, x))      # N, C, R, S, P, Q
    per_image_bytes = problem.c * problem.r * problem.s * pq * x.itemsize
    if per_image_bytes > budget:  # blocks of rows of one image
        dw = np.zeros((g, kg, problem.reduction), x.dtype)
        for i, c0, c1, block in _views.row_blocks(problem, taps, budget):
            d = dy[i].reshape(g, kg, pq)[:, :, c0:c1]
            dw += np.matmul(d, block.reshape(g, problem.reduction, c1 - c0).transpose(0, 2, 1))
        return dw.reshape(problem.k, cg, problem.r, problem.s)
    chunk = max(1, min(n, budget // max(per_image_bytes, 1)))
    dw = np.zeros((g, kg, problem.reduction), x.dtype)
    cols = np.empty((chunk, g, cg, problem.r, problem.s, problem.p, problem.q), x.dtype)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        np.copyto(cols[:m], taps[i:i + m].reshape(m, g, cg, problem.r, problem.s, problem.p, problem.q))
        cm = cols[:m].reshape(m, g, problem.reduction, pq)
        dw += np.matmul(dy[i:i + m].reshape(m, g, kg, pq), cm.transpose(0, 1, 3, 2)).sum(axis=0)
    return dw.reshape(problem.k, cg, problem.r, problem.s)


def direct(problem: ConvProblem, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dw`` by one GEMM per kernel tap over the whole batch."""
    n, g, cg, kg = problem.n, problem.groups, problem.cg, problem.kg
    r, s, p, q = problem.r, problem.s, problem.p, problem.q
    taps = _views.compact_taps(problem, _views.padded(problem, x))      # N, C, R, S, P, Q
    d = _dy_by_group(problem, dy, 0, n)                                   # G, K/G, N*P*Q
    dw = np.empty((g, kg, cg, r, s), x.dtype)
    tap = np.empty((g, cg, n, p, q), x.dtype)
    for a in range(r):
        for b in range(s):
            np.copyto(tap, taps[:, :, a, b].reshape(n, g, cg, p, q).transpose(1, 2, 0, 3, 4))
            dw[:, :, :, a, b] = np.matmul(d, tap.reshape(g, cg, n * p * q).transpose(0, 2, 1))
    return dw.reshape(problem.k, cg, r, s)
