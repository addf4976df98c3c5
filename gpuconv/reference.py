"""The oracle: ``jax.lax.conv_general_dilated`` at HIGHEST precision, with the signature of :func:`gpuconv.conv2d`.

Deliberately boring: arguments go through the same validation as the fast path, then straight into XLA.
Inputs and outputs are NumPy arrays (CuPy and DLPack inputs are copied to the host). float16 problems are
computed in float32 and rounded once at the end, which is what gpuconv promises for float16.
Needs the optional ``jax`` extra; importing :mod:`gpuconv` does not import JAX.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .problem import ConvProblem, IntOrPair, Padding, problem_from_arrays


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    if hasattr(a, "detach"):  # a torch tensor that may require grad
        a = a.detach().cpu()
    return np.from_dlpack(a) if hasattr(a, "__dlpack__") else np.asarray(a)


def _jax():
    try:
        import jax
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gpuconv.reference needs JAX: pip install 'gpuconv[jax]'") from e
    jax.config.update("jax_enable_x64", True)
    return jax


def run_problem(problem: ConvProblem, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Compute ``problem`` with XLA on host arrays; the result has the problem's dtype and user-facing shape."""
    jax = _jax()
    dtype = np.dtype(problem.dtype)
    compute = np.float32 if dtype == np.float16 else dtype
    x4 = np.asarray(x, compute).reshape(problem.n, problem.c, problem.h, problem.w)
    w4 = np.asarray(w, compute).reshape(problem.k, problem.cg, problem.r, problem.s)
    t, b, l, r = problem.padding
    y = jax.lax.conv_general_dilated(
        x4, w4, window_strides=problem.stride, padding=((t, b), (l, r)), rhs_dilation=problem.dilation,
        dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=problem.groups,
        precision=jax.lax.Precision.HIGHEST)
    y = np.asarray(y, compute)
    if bias is not None:
        y = y + np.asarray(bias, compute)[None, :, None, None]
    return y.astype(dtype).reshape(problem.out_shape)


def _reference(fn: str, x: Any, w: Any, bias: Any, stride: IntOrPair, padding: Padding, dilation: IntOrPair,
               groups: int) -> np.ndarray:
    x, w = _to_numpy(x), _to_numpy(w)
    bias = None if bias is None else _to_numpy(bias)
    problem, _, unbatched = problem_from_arrays(fn, x, w, bias, stride=stride, padding=padding, dilation=dilation,
                                                groups=groups)
    y = run_problem(problem, x, w, bias)
    return y[0] if unbatched else y


def conv2d(x: Any, w: Any, bias: Any = None, stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1,
           groups: int = 1) -> np.ndarray:
    """Reference :func:`gpuconv.conv2d` through ``jax.lax.conv_general_dilated``; returns a NumPy array."""
    return _reference("conv2d", x, w, bias, stride, padding, dilation, groups)


def conv1d(x: Any, w: Any, bias: Any = None, stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1,
           groups: int = 1) -> np.ndarray:
    """Reference :func:`gpuconv.conv1d` through ``jax.lax.conv_general_dilated``; returns a NumPy array."""
    return _reference("conv1d", x, w, bias, stride, padding, dilation, groups)
