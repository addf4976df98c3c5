"""im2col + GEMM: gather every receptive field into a column matrix, then one batched BLAS matmul."""

from __future__ import annotations

import numpy as np

from ..problem import ConvProblem


def pad_input(problem: ConvProblem, x: np.ndarray) -> np.ndarray:
    """Zero-pad the spatial dims by ``problem.padding`` (no copy when there is no padding)."""
    t, b, l, r = problem.padding
    if t == b == l == r == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))


def windows(problem: ConvProblem, xp: np.ndarray) -> np.ndarray:
    """A strided view ``(N, C, P, Q, R, S)`` of every (dilated, strided) receptive field; no copy."""
    sn, sc, sh, sw = xp.strides
    (st_h, st_w), (d_h, d_w) = problem.stride, problem.dilation
    shape = (problem.n, problem.c, problem.p, problem.q, problem.r, problem.s)
    strides = (sn, sc, sh * st_h, sw * st_w, sh * d_h, sw * d_w)
    return np.lib.stride_tricks.as_strided(xp, shape, strides, writeable=False)


def im2col(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One copy into ``(G, N*P*Q, C/G*R*S)`` columns, one batched matmul against ``(G, C/G*R*S, K/G)``."""
    g, n, p, q = problem.groups, problem.n, problem.p, problem.q
    win = windows(problem, pad_input(problem, x))                       # N, C, P, Q, R, S
    win = win.reshape(n, g, problem.cg, p, q, problem.r, problem.s)
    cols = np.ascontiguousarray(win.transpose(1, 0, 3, 4, 2, 5, 6))     # G, N, P, Q, Cg, R, S
    cols = cols.reshape(g, n * p * q, problem.reduction)
    wm = w.reshape(g, problem.kg, problem.reduction).transpose(0, 2, 1)  # G, CgRS, Kg
    y = np.matmul(cols, wm)                                              # G, NPQ, Kg
    return np.ascontiguousarray(y.reshape(g, n, p, q, problem.kg).transpose(1, 0, 4, 2, 3)).reshape(
        n, problem.k, p, q)
