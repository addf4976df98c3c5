"""The oracle: ``jax.lax.conv_general_dilated`` at HIGHEST precision, with the signature of :func:`gpuconv.conv2d`.

Deliberately boring: arguments go through the same validation as the fast path, then straight into XLA.
Inputs and outputs are NumPy arrays (CuPy and DLPack inputs are copied to the host). float16 and bfloat16
problems are computed in float32 and rounded once at the end, which is what gpuconv promises for them.
Needs the optional ``jax`` extra; importing :mod:`gpuconv` does not import JAX.

The gradients (``conv2d_input``, ``conv2d_weight``, and the 1-d ones, with ``gpuconv.grad``'s signatures) are
computed from their definition in float64 NumPy, one kernel tap at a time; the tests hold them against PyTorch's
autograd and ``jax.grad``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import ArrayKind, to_backend
from ._dtypes import compute_dtype, numpy_dtype
from .measure import jax_dtype_scope
from .problem import ConvProblem, IntOrPair, Padding, gradient_problem, problem_from_arrays


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    if hasattr(a, "detach"):  # a torch tensor that may require grad
        return to_backend(a.detach().cpu(), ArrayKind("cpu", "torch"))  # (bfloat16 too, which DLPack is not)
    if hasattr(a, "__dlpack__") and str(getattr(a, "dtype", "")) != "bfloat16":
        return np.from_dlpack(a)
    return np.asarray(a)


def _jax():
    try:
        import jax
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gpuconv.reference needs JAX: pip install 'gpuconv[jax]'") from e
    return jax


def run_problem(problem: ConvProblem, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Compute ``problem`` with XLA on host arrays; the result has the problem's dtype and user-facing shape.

    ``x`` and ``w`` are the direction's operands: ``(x, w)`` for the forward, ``(dy, w)`` for the input gradient
    and ``(x, dy)`` for the weight gradient (computed from their definition in float64, see :func:`_gradient`).
    """
    dtype = numpy_dtype(problem.dtype)
    if problem.direction != "forward":  # x and w are the direction's operands, (dy, w) or (x, dy)
        return _gradient(problem, np.asarray(x), np.asarray(w)).astype(dtype)
    jax = _jax()
    compute = compute_dtype(problem.dtype)
    x4_shape = (problem.n, problem.c, problem.h, problem.w)
    w4_shape = (problem.k, problem.cg, problem.r, problem.s)
    t, b, l, r = problem.padding

    def forward(x4: Any, w4: Any) -> Any:
        return jax.lax.conv_general_dilated(
            x4, w4, window_strides=problem.stride, padding=((t, b), (l, r)), rhs_dilation=problem.dilation,
            dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=problem.groups,
            precision=jax.lax.Precision.HIGHEST)

    x4 = np.asarray(x, compute).reshape(x4_shape)
    w4 = np.asarray(w, compute).reshape(w4_shape)
    with jax_dtype_scope(jax, problem.dtype):  # float64 for this computation only, not for the caller
        y = np.asarray(forward(x4, w4), compute)
    if bias is not None:
        y = y + np.asarray(bias, compute)[None, :, None, None]
    return y.astype(dtype).reshape(problem.out_shape)


def _gradient(problem: ConvProblem, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A gradient from its definition, one kernel tap at a time, in float64.

    ``dx[n, c, h*, w*] += sum_k w[k, c, r, s] dy[n, k, p, q]`` at the input position ``(p*sh + r*dh, q*sw + s*dw)``
    that tap ``(r, s)`` reads for output ``(p, q)``; ``dw[k, c, r, s] = sum_{n,p,q} dy[n, k, p, q] x[...]`` at the
    same positions. (XLA's own transpose of a convolution aborts the process on some dilated problems whose
    kernel spans the padded input, which an oracle must not do.)
    """
    n, g, cg, kg = problem.n, problem.groups, problem.cg, problem.kg
    (sh, sw), (dh, dw) = problem.stride, problem.dilation
    p, q, t, l = problem.p, problem.q, problem.padding[0], problem.padding[2]
    hp, wp = problem.h + t + problem.padding[1], problem.w + l + problem.padding[3]
    x_shape = (n, g, cg, problem.h, problem.w)
    w_shape = (g, kg, cg, problem.r, problem.s)
    y_shape = (n, g, kg, p, q)

    def window(r: int, s: int) -> tuple[slice, slice]:
        return slice(r * dh, r * dh + sh * (p - 1) + 1, sh), slice(s * dw, s * dw + sw * (q - 1) + 1, sw)

    if problem.direction == "input":
        dy, w = a.astype(np.float64).reshape(y_shape), b.astype(np.float64).reshape(w_shape)
        dxp = np.zeros((n, g, cg, hp, wp))
        for r in range(problem.r):
            for s in range(problem.s):
                rows, cols = window(r, s)
                dxp[:, :, :, rows, cols] += np.einsum("gkc,ngkpq->ngcpq", w[:, :, :, r, s], dy)
        return dxp[:, :, :, t:t + problem.h, l:l + problem.w].reshape(problem.result_shape)
    x, dy = a.astype(np.float64).reshape(x_shape), b.astype(np.float64).reshape(y_shape)
    xp = np.zeros((n, g, cg, hp, wp))
    xp[:, :, :, t:t + problem.h, l:l + problem.w] = x
    dw_ = np.zeros(w_shape)
    for r in range(problem.r):
        for s in range(problem.s):
            rows, cols = window(r, s)
            dw_[:, :, :, r, s] = np.einsum("ngkpq,ngcpq->gkc", dy, xp[:, :, :, rows, cols])
    return dw_.reshape(problem.result_shape)


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


def _gradient_reference(fn: str, direction: str, size: Any, a: Any, dy: Any, stride: IntOrPair, padding: Padding,
                        dilation: IntOrPair, groups: int) -> np.ndarray:
    a, dy = _to_numpy(a), _to_numpy(dy)
    problem, _, unbatched = gradient_problem(fn, direction, size, a, dy, stride=stride, padding=padding,
                                             dilation=dilation, groups=groups)
    dy4 = dy.reshape(problem.out_shape)
    operands = (dy4, a) if direction == "input" else (a.reshape(problem.x_shape), dy4)
    r = run_problem(problem, *operands)
    return r[0] if unbatched and direction == "input" else r


def conv2d_input(input_size: Any, weight: Any, grad_output: Any, stride: IntOrPair = 1, padding: Padding = 0,
                 dilation: IntOrPair = 1, groups: int = 1) -> np.ndarray:
    """Reference :func:`gpuconv.grad.conv2d_input`, from the definition in float64; returns a NumPy array."""
    return _gradient_reference("conv2d_input", "input", input_size, weight, grad_output, stride, padding, dilation,
                               groups)


def conv2d_weight(input: Any, weight_size: Any, grad_output: Any, stride: IntOrPair = 1, padding: Padding = 0,
                  dilation: IntOrPair = 1, groups: int = 1) -> np.ndarray:
    """Reference :func:`gpuconv.grad.conv2d_weight`, from the definition in float64; returns a NumPy array."""
    return _gradient_reference("conv2d_weight", "weight", weight_size, input, grad_output, stride, padding, dilation,
                               groups)


def conv1d_input(input_size: Any, weight: Any, grad_output: Any, stride: IntOrPair = 1, padding: Padding = 0,
                 dilation: IntOrPair = 1, groups: int = 1) -> np.ndarray:
    """Reference :func:`gpuconv.grad.conv1d_input`."""
    return _gradient_reference("conv1d_input", "input", input_size, weight, grad_output, stride, padding, dilation,
                               groups)


def conv1d_weight(input: Any, weight_size: Any, grad_output: Any, stride: IntOrPair = 1, padding: Padding = 0,
                  dilation: IntOrPair = 1, groups: int = 1) -> np.ndarray:
    """Reference :func:`gpuconv.grad.conv1d_weight`."""
    return _gradient_reference("conv1d_weight", "weight", weight_size, input, grad_output, stride, padding, dilation,
                               groups)
