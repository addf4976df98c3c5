"""Is a candidate's output right? Tolerances derived from the arithmetic, and a comparison that says what differs."""

from __future__ import annotations

import numpy as np

from ..problem import ConvProblem


def tolerance(problem: ConvProblem, scale: float = 1.0) -> tuple[float, float]:
    """``(rtol, atol)`` for ``problem``'s output when every input term has magnitude at most ``scale``.

    Each output is a dot product of ``problem.reduction`` terms; the rounding error of a length-n sum grows
    at most like ``n * eps * max|term|``. float16 inputs are accumulated in float32 and rounded once to
    float16, so they get one float16 ulp relative on top of the float32 sum.

    Example:
        >>> from gpuconv.problem import make_problem
        >>> rtol, atol = tolerance(make_problem("conv2d", (1, 8, 5, 5), (4, 8, 3, 3), "float32", False))
        >>> rtol < 1e-5 and atol < 1e-3
        True
    """
    compute = np.float32 if problem.dtype == "float16" else np.dtype(problem.dtype)
    eps = float(np.finfo(compute).eps)
    atol = 4 * eps * (problem.reduction + 1) * scale
    rtol = 2.0 ** -10 if problem.dtype == "float16" else 4 * eps
    if problem.dtype == "float16":
        atol += 2.0 ** -24  # float16 subnormal spacing
    return rtol, atol


def mismatch(actual: np.ndarray, expected: np.ndarray, problem: ConvProblem, scale: float = 1.0) -> str | None:
    """None when ``actual`` matches ``expected`` within :func:`tolerance`, else a one-line description.

    Shape is checked first, then dtype, then values (NaN only where the reference has NaN).
    """
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != reference {expected.shape}"
    if actual.dtype != expected.dtype:
        return f"dtype {actual.dtype} != reference {expected.dtype}"
    rtol, atol = tolerance(problem, scale)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if not np.array_equal(nan_a, nan_e):
        return f"NaN at {int(np.count_nonzero(nan_a != nan_e))} positions where the reference has none (or vice versa)"
    err = np.where(nan_e, 0.0, np.abs(a - e))
    bad = err > atol + rtol * np.abs(np.where(nan_e, 0.0, e))
    if not bad.any():
        return None
    worst = np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), err.shape)
    return (f"{int(bad.sum())} of {bad.size} values differ from the reference; worst at {tuple(map(int, worst))}: "
            f"{a[worst]:.6g} vs {e[worst]:.6g} (rtol={rtol:.2g}, atol={atol:.2g})")
