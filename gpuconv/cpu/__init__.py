"""The CPU backend: NumPy strategies, each a function ``run(problem, x, w) -> y``.

``x`` is ``(N, C, H, W)`` and ``w`` ``(K, C/groups, R, S)`` in the compute dtype (float32 for float16
inputs, which are accumulated in float32); ``run`` returns ``(N, K, P, Q)`` in that dtype, without bias.
Inputs may be non-contiguous views. :func:`execute` does the dtype handling, bias and 1-d reshapes once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..problem import ConvProblem
from ..strategy import Plan, Strategy
from .im2col import im2col

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("im2col", im2col),
    )
}


def heuristic(problem: ConvProblem) -> Plan:
    """The strategy used when nothing is tuned for this problem."""
    return Plan("im2col", {}, "heuristic")


def execute(problem: ConvProblem, plan: Plan, x: Any, w: Any, bias: Any) -> np.ndarray:
    """Run ``plan`` on NumPy arrays and return the output in the caller's dtype and layout."""
    dtype = np.dtype(problem.dtype)
    if problem.n == 0:
        return np.zeros(problem.out_shape, dtype)
    compute = np.float32 if dtype == np.float16 else dtype
    x4 = x.reshape(problem.n, problem.c, problem.h, problem.w).astype(compute, copy=False)
    w4 = w.reshape(problem.k, problem.cg, problem.r, problem.s).astype(compute, copy=False)
    y = STRATEGIES[plan.strategy].run(problem, x4, w4)
    if bias is not None:
        y += bias.astype(compute, copy=False)[None, :, None, None]
    return y.astype(dtype, copy=False).reshape(problem.out_shape)
