"""The public entry points: argument checks, backend dispatch, and handing back the caller's kind of array."""

from __future__ import annotations

from typing import Any

from . import plan as _plan
from ._arrays import ArrayKind, dtype_name, from_backend, kind_of, to_backend
from .backends import get_backend
from .problem import DTYPES, IntOrPair, Padding, make_problem


def conv2d(x: Any, w: Any, bias: Any = None, *, stride: IntOrPair = 1, padding: Padding = 0,
           dilation: IntOrPair = 1, groups: int = 1, strategy: str = "auto") -> Any:
    """2-d convolution (cross-correlation) with the semantics of ``torch.nn.functional.conv2d``.

    Args:
        x: input ``(N, C, H, W)``; a NumPy array runs on the CPU, a CuPy array (or a CUDA DLPack array)
            on its GPU.
        w: weight ``(K, C/groups, R, S)``, same library, device and dtype as ``x``.
        bias: optional ``(K,)``.
        stride: int or ``(sh, sw)``, positive.
        padding: int, ``(ph, pw)``, ``'valid'`` or ``'same'`` (stride 1 only; an odd total pads one more
            at the bottom/right, as PyTorch does).
        dilation: int or ``(dh, dw)``, positive.
        groups: channel groups; ``groups == C`` is depthwise.
        strategy: ``"auto"`` (tuned decision if one is cached, else a shape heuristic) or a strategy name of
            the backend (``gpuconv.cpu.STRATEGIES`` / ``gpuconv.cuda.STRATEGIES``).

    Returns:
        ``(N, K, P, Q)`` of the input's dtype and kind (float16 is accumulated in float32).

    Raises:
        TypeError: a non-array, an unsupported or mixed dtype, arrays from different libraries or devices.
        ValueError: shapes, groups, stride, padding, dilation or strategy that do not fit; the message names them.

    Example:
        >>> import numpy as np, gpuconv
        >>> x = np.random.rand(1, 3, 8, 8).astype(np.float32)
        >>> w = np.random.rand(4, 3, 3, 3).astype(np.float32)
        >>> gpuconv.conv2d(x, w, padding="same").shape
        (1, 4, 8, 8)
    """
    return _conv("conv2d", x, w, bias, stride, padding, dilation, groups, strategy)


def conv1d(x: Any, w: Any, bias: Any = None, *, stride: IntOrPair = 1, padding: Padding = 0,
           dilation: IntOrPair = 1, groups: int = 1, strategy: str = "auto") -> Any:
    """1-d convolution with the semantics of ``torch.nn.functional.conv1d``: x ``(N, C, L)``, w ``(K, C/groups, R)``.

    Arguments, return value and errors are those of :func:`conv2d` with one spatial dimension.

    Example:
        >>> import numpy as np, gpuconv
        >>> x = np.random.rand(2, 4, 100).astype(np.float32)
        >>> w = np.random.rand(8, 4, 5).astype(np.float32)
        >>> gpuconv.conv1d(x, w, stride=2).shape
        (2, 8, 48)
    """
    return _conv("conv1d", x, w, bias, stride, padding, dilation, groups, strategy)


def _check_same_place(fn: str, kinds: dict[str, ArrayKind]) -> None:
    first_name, first = next(iter(kinds.items()))
    for name, kind in kinds.items():
        if (kind.backend, kind.device, kind.library) != (first.backend, first.device, first.library):
            raise TypeError(f"{fn}: {first_name} and {name} must be arrays of one library on one device, "
                            f"got {first_name}: {first.describe()} and {name}: {kind.describe()}")


def _check_dtypes(fn: str, arrays: dict[str, Any]) -> str:
    names = {name: dtype_name(fn, name, a) for name, a in arrays.items()}
    for name, dt in names.items():
        if dt not in DTYPES:
            raise TypeError(f"{fn}: {name} has dtype {dt}; supported dtypes are {', '.join(DTYPES)}")
    if len(set(names.values())) > 1:
        listing = ", ".join(f"{n}: {d}" for n, d in names.items())
        raise TypeError(f"{fn}: x, w and bias must share one dtype (no silent casts), got {listing}")
    return names["x"]


def _conv(fn: str, x: Any, w: Any, bias: Any, stride: IntOrPair, padding: Padding, dilation: IntOrPair,
          groups: int, strategy: str) -> Any:
    arrays = {"x": x, "w": w} if bias is None else {"x": x, "w": w, "bias": bias}
    kinds = {name: kind_of(fn, name, a) for name, a in arrays.items()}
    _check_same_place(fn, kinds)
    dtype = _check_dtypes(fn, arrays)
    problem = make_problem(fn, tuple(x.shape), tuple(w.shape), dtype, bias is not None,
                           stride=stride, padding=padding, dilation=dilation, groups=groups)
    if bias is not None and tuple(bias.shape) != (problem.k,):
        raise ValueError(f"{fn}: bias must have shape ({problem.k},) to match w.shape[0], got {tuple(bias.shape)}")
    kind = kinds["x"]
    backend = get_backend(kind.backend)
    chosen = _plan.choose(fn, problem, kind.backend, backend, strategy)
    args = [to_backend(a, kind) for a in (x, w)] + [None if bias is None else to_backend(bias, kind)]
    y = backend.execute(problem, chosen, *args)
    return from_backend(kind)(y)
