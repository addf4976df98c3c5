"""Gradients of ``conv1d``/``conv2d`` with the signatures of ``torch.nn.grad``: ``dx`` from ``dy`` and ``w``,
``dw`` from ``x`` and ``dy``. The bias gradient is ``dy.sum((0, 2, 3))`` and needs no function here.

Each gradient is a problem of its own (the forward geometry with ``direction`` set), planned like the forward
call: a forced strategy, a tuned decision from the cache (keyed by the direction too), or the backend's
heuristic; a repeated call finds its prepared runner in one dictionary lookup.
"""

from __future__ import annotations

from typing import Any, Sequence

from . import _calls
from . import plan as _plan
from .backends import get_backend
from .problem import IntOrPair, Padding, gradient_problem


def conv2d_input(input_size: Sequence[int], weight: Any, grad_output: Any, stride: IntOrPair = 1,
                 padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1, *, strategy: str = "auto",
                 precision: str = "highest") -> Any:
    """The gradient of ``conv2d(x, weight, ...)`` with respect to ``x``, as ``torch.nn.grad.conv2d_input``.

    Args:
        input_size: the shape of ``x``, ``(N, C, H, W)`` (or ``(C, H, W)`` with an unbatched ``grad_output``).
            It settles what the stride leaves open: H = 15 and H = 16 both give 8 outputs at stride 2.
        weight: ``(K, C/groups, R, S)``.
        grad_output: ``(N, K, P, Q)``, the gradient of the forward output; same library, device and dtype.
        stride, padding, dilation, groups: as in :func:`gpuconv.conv2d` (``'same'``/``'valid'`` included).
        strategy: ``"auto"`` or a name of the backend's input-gradient table (``gpuconv.cpu.INPUT_STRATEGIES``).
        precision: ``"highest"`` or ``"tf32"``, as in :func:`gpuconv.conv2d`: part of the gradient's problem and
            plan (the CUDA gradient kernels compute exactly; a gradient run through the forward kernels may use
            tensor cores at ``"tf32"``).

    Returns:
        ``dx`` of shape ``input_size``, the dtype and kind of ``grad_output``.

    Raises:
        TypeError, ValueError: as :func:`gpuconv.conv2d`, and a ``grad_output`` whose shape is not the
        forward output's.

    Example:
        >>> import numpy as np, gpuconv.grad
        >>> w, dy = np.ones((4, 3, 3, 3)), np.ones((1, 4, 8, 8))
        >>> gpuconv.grad.conv2d_input((1, 3, 16, 16), w, dy, stride=2, padding=1).shape
        (1, 3, 16, 16)
    """
    return _gradient("conv2d_input", "input", input_size, weight, grad_output, stride, padding, dilation, groups,
                     strategy, precision)


def conv2d_weight(input: Any, weight_size: Sequence[int], grad_output: Any, stride: IntOrPair = 1,
                  padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1, *, strategy: str = "auto",
                 precision: str = "highest") -> Any:
    """The gradient of ``conv2d(input, w, ...)`` with respect to ``w``, as ``torch.nn.grad.conv2d_weight``.

    Args:
        input: the forward input ``(N, C, H, W)`` (or unbatched ``(C, H, W)``).
        weight_size: the shape of ``w``, ``(K, C/groups, R, S)``.
        grad_output: ``(N, K, P, Q)``; same library, device and dtype as ``input``.
        stride, padding, dilation, groups, strategy: as :func:`conv2d_input` (``gpuconv.cpu.WEIGHT_STRATEGIES``).

    Returns:
        ``dw`` of shape ``weight_size``, summed over the batch.

    Example:
        >>> import numpy as np, gpuconv.grad
        >>> x, dy = np.ones((2, 3, 8, 8)), np.ones((2, 4, 8, 8))
        >>> gpuconv.grad.conv2d_weight(x, (4, 3, 3, 3), dy, padding="same").shape
        (4, 3, 3, 3)
    """
    return _gradient("conv2d_weight", "weight", weight_size, input, grad_output, stride, padding, dilation, groups,
                     strategy, precision)


def conv1d_input(input_size: Sequence[int], weight: Any, grad_output: Any, stride: IntOrPair = 1,
                 padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1, *, strategy: str = "auto",
                 precision: str = "highest") -> Any:
    """:func:`conv2d_input` for ``conv1d``: ``input_size (N, C, L)``, weight ``(K, C/groups, R)``."""
    return _gradient("conv1d_input", "input", input_size, weight, grad_output, stride, padding, dilation, groups,
                     strategy, precision)


def conv1d_weight(input: Any, weight_size: Sequence[int], grad_output: Any, stride: IntOrPair = 1,
                  padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1, *, strategy: str = "auto",
                 precision: str = "highest") -> Any:
    """:func:`conv2d_weight` for ``conv1d``: input ``(N, C, L)``, ``weight_size (K, C/groups, R)``."""
    return _gradient("conv1d_weight", "weight", weight_size, input, grad_output, stride, padding, dilation, groups,
                     strategy, precision)


def _gradient(fn: str, direction: str, size: Any, a: Any, dy: Any, stride: Any, padding: Any, dilation: Any,
              groups: Any, strategy: Any, precision: Any = "highest") -> Any:
    key = None
    if (_calls.plain(stride) and _calls.plain(padding) and _calls.plain(dilation) and type(groups) is int
            and type(strategy) is str and type(precision) is str
            and type(size) in (tuple, list, type(getattr(a, "shape", None)))):
        arrays = _calls.arrays_key((a, dy))
        if arrays is not None and all(type(v) is int for v in size):
            key = (fn, tuple(size), arrays, stride, padding, dilation, groups, strategy, precision)
    run = _calls.find(key)
    if run is None:
        run = prepare_gradient(fn, direction, size, a, dy, stride, padding, dilation, groups, strategy, precision)
        _calls.keep(key, run)
    return run(dy, a, None) if direction == "input" else run(a, dy, None)


def prepare_gradient(fn: str, direction: str, size: Any, a: Any, dy: Any, stride: Any, padding: Any,
                     dilation: Any, groups: Any, strategy: Any, precision: Any = "highest") -> _calls.Runner:
    """Validate and plan a gradient; returns ``run(dy, w)`` (input) or ``run(x, dy)`` (weight) for arrays like
    these, in the caller's kind of array."""
    problem, kind, unbatched = gradient_problem(fn, direction, size, a, dy, stride=stride, padding=padding,
                                                dilation=dilation, groups=groups, precision=precision)
    backend = get_backend(kind.backend)
    chosen = _plan.choose(fn, problem, kind.backend, backend, strategy, device=kind.device)
    execute = backend.prepare(problem, chosen)
    _calls.note_native(kind, dy)
    if not unbatched:
        return _calls.wrap(kind, execute, (None, None), None)
    out4 = problem.out_shape
    if direction == "input":
        return _calls.wrap(kind, execute, (out4, None), problem.x_shape[1:])
    return _calls.wrap(kind, execute, (problem.x_shape, out4), None)
