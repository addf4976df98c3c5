"""The public entry points: arguments to a problem, a plan and a prepared runner, memoized per call signature.

The first call with a given signature (array library, shapes, dtypes, options, strategy) validates its
arguments (:func:`gpuconv.problem.problem_from_arrays`), asks :mod:`gpuconv.plan` for a plan and lets the
backend prepare a runner for it. Later calls with the same signature build one tuple and find that runner
in a dictionary: no validation, no planning, no imports. A runner is dropped when :data:`gpuconv.plan.generation`
moves (a decision stored, the autotune switch or the cache re-read with :func:`gpuconv.plan.forget`); the
cache directory (``GPUCONV_CACHE_DIR``) is meant to be set before the first call, or followed by ``forget()``.
"""

from __future__ import annotations

from typing import Any, Callable

from . import _calls
from . import plan as _plan
from ._calls import DEVICE_TYPES as _DEVICE_TYPES
from ._calls import NATIVE as _NATIVE
from ._calls import PREPARED as _PREPARED
from ._calls import plain as _plain
from .backends import get_backend
from .problem import IntOrPair, Padding, problem_from_arrays

Runner = Callable[[Any, Any, Any], Any]


def conv2d(x: Any, w: Any, bias: Any = None, stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1,
           groups: int = 1, *, strategy: str = "auto", precision: str = "highest") -> Any:
    """2-d convolution (cross-correlation) with the semantics of ``torch.nn.functional.conv2d``.

    Args:
        x: input ``(N, C, H, W)`` or unbatched ``(C, H, W)``; a NumPy array (or a CPU DLPack array such as a
            PyTorch or JAX CPU tensor) runs on the CPU, a CuPy array (or a CUDA DLPack array) on its GPU.
        w: weight ``(K, C/groups, R, S)``, same library, device and dtype as ``x``.
        bias: optional ``(K,)``.
        stride: int or ``(sh, sw)``, positive.
        padding: int, ``(ph, pw)``, ``'valid'`` or ``'same'`` (stride 1 only; an odd total pads one more
            at the bottom/right, as PyTorch does).
        dilation: int or ``(dh, dw)``, positive.
        groups: channel groups; ``groups == C`` is depthwise.
        strategy: ``"auto"`` (tuned decision if one is cached, else a shape heuristic) or a strategy name of
            the backend (``gpuconv.cpu.STRATEGIES`` / ``gpuconv.cuda.STRATEGIES``); keyword only.
        precision: ``"highest"`` (float32 products as exact FMAs) or ``"tf32"`` (CUDA float32 may use tensor
            cores on operands rounded to TF32, summed in float32; the CPU computes at full precision either
            way); keyword only. float16 on CUDA may use tensor cores at either (products exact in float32);
            bfloat16 on CUDA always does (the tensor-core strategy is the only one built for it).

    Returns:
        ``(N, K, P, Q)`` (``(K, P, Q)`` for an unbatched input) of the input's dtype and kind (float16 and
        bfloat16, ``ml_dtypes.bfloat16`` in NumPy, are accumulated in float32). Tensors that require grad are
        read as constants: the result carries no graph.

    Raises:
        TypeError: a non-array, an unsupported or mixed dtype, arrays from different libraries or devices.
        ValueError: shapes, groups, stride, padding, dilation, strategy or precision that do not fit; the
            message names them.

    Example:
        >>> import numpy as np, gpuconv
        >>> x = np.random.rand(1, 3, 8, 8).astype(np.float32)
        >>> w = np.random.rand(4, 3, 3, 3).astype(np.float32)
        >>> gpuconv.conv2d(x, w, None, 1, "same").shape
        (1, 4, 8, 8)
    """
    return _conv("conv2d", x, w, bias, stride, padding, dilation, groups, strategy, precision)


def conv1d(x: Any, w: Any, bias: Any = None, stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1,
           groups: int = 1, *, strategy: str = "auto", precision: str = "highest") -> Any:
    """1-d convolution with the semantics of ``torch.nn.functional.conv1d``: x ``(N, C, L)`` or ``(C, L)``,
    w ``(K, C/groups, R)``.

    Arguments, return value and errors are those of :func:`conv2d` with one spatial dimension.

    Example:
        >>> import numpy as np, gpuconv
        >>> x = np.random.rand(2, 4, 100).astype(np.float32)
        >>> w = np.random.rand(8, 4, 5).astype(np.float32)
        >>> gpuconv.conv1d(x, w, stride=2).shape
        (2, 8, 48)
    """
    return _conv("conv1d", x, w, bias, stride, padding, dilation, groups, strategy, precision)


def _call_key(fn: str, x: Any, w: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any,
              strategy: Any, precision: Any) -> tuple[Any, ...] | None:
    """What decides the runner of a NumPy or CuPy call, or None where the call must take the full path."""
    tx = type(x)
    if tx not in _NATIVE or type(w) is not tx or (bias is not None and type(bias) is not tx):
        return None
    if not (_plain(stride) and _plain(padding) and _plain(dilation) and type(groups) is int
            and type(strategy) is str and type(precision) is str):
        return None
    b = None if bias is None else (bias.shape, bias.dtype)
    key = (fn, tx, x.shape, x.dtype, w.shape, w.dtype, b, stride, padding, dilation, groups, strategy, precision)
    if tx in _DEVICE_TYPES:
        key += (x.device.id, w.device.id, None if bias is None else bias.device.id)
    return key


def _conv(fn: str, x: Any, w: Any, bias: Any, stride: IntOrPair, padding: Padding, dilation: IntOrPair,
          groups: int, strategy: str, precision: str) -> Any:
    key = _call_key(fn, x, w, bias, stride, padding, dilation, groups, strategy, precision)
    if key is not None:
        found = _PREPARED.get(key)
        if found is not None and found[0] == _plan.generation:
            return found[1](x, w, bias)
    run = _prepare(fn, x, w, bias, stride, padding, dilation, groups, strategy, precision)
    _calls.keep(key, run)
    return run(x, w, bias)


def _prepare(fn: str, x: Any, w: Any, bias: Any, stride: IntOrPair, padding: Padding, dilation: IntOrPair,
             groups: int, strategy: str, precision: str = "highest") -> Runner:
    """Validate, plan, and return ``run(x, w, bias) -> y`` for arrays like these."""
    problem, kind, unbatched = problem_from_arrays(fn, x, w, bias, stride=stride, padding=padding,
                                                   dilation=dilation, groups=groups, precision=precision)
    backend = get_backend(kind.backend)
    chosen = _plan.choose(fn, problem, kind.backend, backend, strategy, device=kind.device)
    execute = backend.prepare(problem, chosen)
    _calls.note_native(kind, x)
    return _calls.wrap(kind, execute, (problem.x_shape if unbatched else None, None),
                       problem.out_shape[1:] if unbatched else None)
