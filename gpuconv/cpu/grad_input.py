"""The input gradient ``dx`` from ``dy (N, K, P, Q)`` and ``w (K, C/G, R, S)``, two ways.

col2im: per image and group one GEMM ``W^T (C/G*R*S x K/G) @ dY (K/G x P*Q)`` gives every tap's contribution
    (the column matrix of the forward, in reverse); one strided add per kernel tap scatters it onto the padded
    input grid, any stride and dilation. Images are processed in chunks that bound the column matrix.
direct: the forward convolution of ``dy`` with the flipped, transposed weight (:func:`gpuconv.adjoint.input_gradient`),
    run by the forward strategy the CPU heuristic picks for it; at a stride above 1 (undilated), one such
    convolution per stride phase of ``dx`` with that phase's taps (:func:`gpuconv.adjoint.input_gradient_phases`:
    res3's 3x3 stride-2 layer becomes convolutions with 2x2, 2x1, 1x2 and 1x1 kernels), each result written into
    every ``stride``-th row and column of ``dx``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import adjoint
from ..problem import ConvProblem
from . import _views

#: Bound on the column matrix of one chunk of images (bytes; one image is the smallest chunk). Small enough that
#: the scatter-add reads the columns the GEMM just wrote from the caches: on a 2-core Intel Xeon (2 MiB of L2 per
#: core), ResNet-50's 3x3 stride-2 and 7x7 layers at batch 8 took 0.73-0.98x the time of a 256 MiB bound.
COLS_BUDGET_BYTES = 2 * 2**20


def col2im(problem: ConvProblem, dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``dx (N, C, H, W)`` by a GEMM per image and group and a strided scatter-add per tap."""
    n, g, kg = problem.n, problem.groups, problem.kg
    r, s, p, q = problem.r, problem.s, problem.p, problem.q
    (sh, sw), (dh, dw) = problem.stride, problem.dilation
    t, _, l, _ = problem.padding
    hp, wp = _views.padded_size(problem)
    wt = w.reshape(g, kg, problem.reduction).transpose(0, 2, 1)         # G, C/G*R*S, K/G
    dxp = np.zeros((n, problem.c, hp, wp), dy.dtype)
    per_image = problem.c * r * s * p * q * dy.itemsize
    chunk = max(1, min(n, COLS_BUDGET_BYTES // max(per_image, 1)))
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        cols = np.matmul(wt, dy[i:i + m].reshape(m, g, kg, p * q))     # m, G, C/G*R*S, P*Q
        cols = cols.reshape(m, problem.c, r, s, p, q)
        for a in range(r):
            rows = slice(a * dh, a * dh + sh * (p - 1) + 1, sh)
            for b in range(s):
                dxp[i:i + m, :, rows, b * dw:b * dw + sw * (q - 1) + 1:sw] += cols[:, :, a, b]
    return dxp[:, :, t:t + problem.h, l:l + problem.w]


def supports_direct(problem: ConvProblem) -> bool:
    """Stride 1, or no dilation (the stride phases)."""
    return problem.stride == (1, 1) or problem.dilation == (1, 1)


def direct(problem: ConvProblem, dy: np.ndarray, w: np.ndarray, *,
           forward: Callable[[ConvProblem], Callable[[Any, Any], Any]]) -> np.ndarray:
    """``dx`` as a forward convolution of ``dy`` with the flipped, transposed weight (see the module docstring)."""
    return prepare_direct(problem, forward=forward)(dy, w)


def prepare_direct(problem: ConvProblem, *,
                   forward: Callable[[ConvProblem], Callable[[Any, Any], Any]]) -> Callable[[Any, Any], Any]:
    """:func:`direct` with the rewrite and the forward runner (``forward(problem) -> run(x, w)``) built once."""
    if problem.stride != (1, 1):
        return _prepare_phases(problem, forward)
    rewrite = adjoint.input_gradient(problem)
    if rewrite is None:  # every tap reads padding only: nothing flows back
        return lambda dy, w: np.zeros((problem.n, problem.c, problem.h, problem.w), dy.dtype)
    inner = forward(rewrite.forward)

    def run(dy: np.ndarray, w: np.ndarray) -> np.ndarray:
        x, wt = rewrite.operands(np, dy, w)
        return rewrite.result(np, inner(x, wt))

    return run


def _prepare_phases(problem: ConvProblem, forward: Callable[[ConvProblem], Callable[[Any, Any], Any]]
                    ) -> Callable[[Any, Any], Any]:
    phases = [(ph, forward(ph.rewrite.forward)) for ph in adjoint.input_gradient_phases(problem)]
    shape = (problem.n, problem.c, problem.h, problem.w)
    sh, sw = problem.stride
    covered = sum(ph.rows[1] * ph.cols[1] for ph, _ in phases) == problem.h * problem.w

    def run(dy: np.ndarray, w: np.ndarray) -> np.ndarray:
        dx = np.empty(shape, dy.dtype) if covered else np.zeros(shape, dy.dtype)
        for ph, inner in phases:
            (h0, hc), (w0, wc) = ph.rows, ph.cols
            x, wt = ph.rewrite.operands(np, dy, w)
            np.copyto(dx[:, :, h0:h0 + sh * (hc - 1) + 1:sh, w0:w0 + sw * (wc - 1) + 1:sw], inner(x, wt))
        return dx

    return run
