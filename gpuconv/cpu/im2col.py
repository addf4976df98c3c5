"""im2col + GEMM: one copy of every receptive field into a column matrix, one batched BLAS matmul per chunk.

Per image and group the product is ``W (K/G x C/G*R*S) @ cols (C/G*R*S x P*Q)``, so the result lands as
``(N, G, K/G, P*Q)``, which *is* the NCHW output: no transpose afterwards. Groups and images are batch
dimensions of a single ``np.matmul`` (the weight broadcast over images).

The column matrix is built and multiplied a chunk at a time, of at most ``chunk`` MiB: whole images where one
fits, else rows of output of one image (the product of a row block lands in its own columns of the output).
A chunk the size of the caches is read back by the GEMM from there instead of from memory.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..problem import ConvProblem
from . import _scratch, _views


def im2col(problem: ConvProblem, x: np.ndarray, w: np.ndarray, *, wide: int = 0,
           chunk: int = _views.DEFAULT_COLUMN_CHUNK) -> np.ndarray:
    """Convolve by im2col + GEMM.

    Args:
        problem: the validated problem.
        x: ``(N, C, H, W)`` in the compute dtype, any strides.
        w: ``(K, C/G, R, S)`` in the compute dtype.
        wide: use the wide layout of :mod:`gpuconv.cpu._views` (phased at strides above 1): the column matrix
            is copied in runs of ``P * Wp`` instead of ``Q`` elements, at the price of ``Wp - Q`` junk output
            columns.
        chunk: the column matrix is built and multiplied in chunks of at most this many MiB (whole images, or
            rows of one image; at least one row; :data:`gpuconv.cpu._views.COLUMN_CHUNKS`).

    Returns:
        ``(N, K, P, Q)`` in the compute dtype.
    """
    g, kg = problem.groups, problem.kg
    wm = w.reshape(g, kg, problem.reduction)
    pitch = None
    if wide and problem.stride != (1, 1):
        views, pitch = _views.tap_views(problem, x, wide)                  # [R][S]: N, C, P * Wq
        taps = _Phased(views)
    elif wide:
        taps = _views.wide_taps(problem, _views.wide_input(problem, x))      # N, C, R, S, L
    else:
        taps = _views.compact_taps(problem, _views.padded(problem, x))       # N, C, R, S, P, Q
    n, spatial = problem.n, taps.shape[4:]
    length = math.prod(spatial)
    budget = _views.column_budget(chunk)
    per_image = problem.c * problem.r * problem.s * length * x.itemsize
    y = np.empty((n, g, kg, length), x.dtype)
    if per_image > budget and not isinstance(taps, _Phased):
        for i, c0, c1, block in _views.row_blocks(problem, taps, budget):
            np.matmul(wm, block.reshape(g, problem.reduction, c1 - c0), out=y[i, :, :, c0:c1])
    else:
        images = max(1, min(n, budget // max(per_image, 1)))
        cols = _scratch.empty("cols", (images, problem.c, problem.r, problem.s, *spatial), x.dtype)
        for i in range(0, n, images):
            m = min(images, n - i)
            if isinstance(taps, _Phased):
                taps.copy_to(cols[:m], i)
            else:
                np.copyto(cols[:m], taps[i:i + m])
            np.matmul(wm, cols[:m].reshape(m, g, problem.reduction, length), out=y[i:i + m])
    y = y.reshape(n, problem.k, length)
    if wide:
        return _views.narrow(problem, y, pitch)
    return y.reshape(n, problem.k, problem.p, problem.q)


class _Phased:
    """The phased layout's taps (one view per tap) with the copy interface of a tap view ``(N, C, R, S, L)``."""

    def __init__(self, views: list[list[np.ndarray]]) -> None:
        self.views = views
        n, c, length = views[0][0].shape
        self.shape = (n, c, len(views), len(views[0]), length)

    def copy_to(self, cols: np.ndarray, i: int) -> None:
        for r, row in enumerate(self.views):
            for s, view in enumerate(row):
                np.copyto(cols[:, :, r, s], view[i:i + cols.shape[0]])


def prepare(problem: ConvProblem, *, wide: int = 0,
            chunk: int = _views.DEFAULT_COLUMN_CHUNK) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """:func:`im2col` with everything that depends only on the problem worked out once.

    On a small problem the Python around the GEMM is most of the time: this runner builds the receptive-field
    view with one ``np.ndarray`` constructor over the (padded, C-contiguous) input instead of ``as_strided``,
    and copies small column matrices into a fresh array instead of the thread's scratch buffer.
    """
    n, g, kg = problem.n, problem.groups, problem.kg
    per_image = problem.c * problem.r * problem.s * problem.p * problem.q
    if wide or per_image * n * 8 > 2**20:  # large problems: the Python around the GEMM does not matter
        return lambda x, w: im2col(problem, x, w, wide=wide, chunk=chunk)
    (st_h, st_w), (dh, dw) = problem.stride, problem.dilation
    hp, wp = _views.padded_size(problem)
    pads = any(problem.padding)
    t, _, l, _ = problem.padding
    taps_shape = (n, problem.c, problem.r, problem.s, problem.p, problem.q)
    cols_shape = (n, g, problem.reduction, problem.p * problem.q)
    w_shape = (g, kg, problem.reduction)
    y_shape = (n, problem.k, problem.p, problem.q)
    y_gemm = (n, g, kg, problem.p * problem.q)
    pq, single = problem.p * problem.q, n == 1 and g == 1

    def run(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        if pads:
            xp = np.zeros((n, problem.c, hp, wp), x.dtype)
            xp[:, :, t:t + problem.h, l:l + problem.w] = x
        elif x.flags.c_contiguous:
            xp = x
        else:
            xp = np.ascontiguousarray(x)
        e = xp.itemsize
        sw_, sh_ = e, wp * e
        strides = (problem.c * hp * sh_, hp * sh_, sh_ * dh, sw_ * dw, sh_ * st_h, sw_ * st_w)
        taps = np.ndarray(taps_shape, xp.dtype, xp, 0, strides)
        if single:  # one image, one group: a plain 2-d product (the reshape is the one copy)
            return np.dot(w.reshape(kg, problem.reduction), taps.reshape(problem.reduction, pq)).reshape(y_shape)
        cols = np.empty(taps_shape, xp.dtype)
        np.copyto(cols, taps)
        y = np.empty(y_gemm, xp.dtype)
        np.matmul(w.reshape(w_shape), cols.reshape(cols_shape), out=y)
        return y.reshape(y_shape)

    return run
