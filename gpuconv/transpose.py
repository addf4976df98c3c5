"""Transposed convolution with the semantics of ``torch.nn.functional.conv_transpose1d/2d``: the input gradient of
a convolution with the roles renamed (one implementation, two entry points).

``conv_transpose2d(x, w)`` with ``x (N, C_in, H, W)`` and ``w (C_in, C_out/groups, R, S)`` is
``grad.conv2d_input`` of the convolution whose input has ``C_out`` channels and the size below, whose weight is
``w`` and whose output gradient is ``x``; ``output_padding`` picks that size among the ones the stride allows.
"""

from __future__ import annotations

from typing import Any

from . import _calls
from . import plan as _plan
from ._arrays import kind_of
from .backends import get_backend
from .problem import IntOrPair, _check_dtypes, _check_same_place, _int_tuple, make_problem


def conv_transpose2d(x: Any, w: Any, bias: Any = None, stride: IntOrPair = 1, padding: IntOrPair = 0,
                     output_padding: IntOrPair = 0, groups: int = 1, dilation: IntOrPair = 1, *,
                     strategy: str = "auto", precision: str = "highest") -> Any:
    """2-d transposed convolution (the up-sampling layer of U-Net and DCGAN), as ``F.conv_transpose2d``.

    Args:
        x: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        w: ``(C_in, C_out/groups, R, S)``.
        bias: optional ``(C_out,)``.
        stride, padding, dilation: ints or pairs; ``padding`` removes ``dilation*(R-1) - padding`` ... as in
            PyTorch: the output is ``(H-1)*stride - 2*padding + dilation*(R-1) + output_padding + 1`` high.
        output_padding: extra rows/columns at the bottom/right, smaller than the stride or the dilation.
        groups: channel groups (``C_in`` and ``C_out`` divisible by it).
        strategy: ``"auto"`` or a name of the backend's input-gradient table (``gpuconv.cpu.INPUT_STRATEGIES``).
        precision: ``"highest"`` or ``"tf32"``, as in :func:`gpuconv.conv2d` (part of the problem and of the
            tuning key); keyword only.

    Returns:
        ``(N, C_out, H_out, W_out)`` of the input's dtype and kind (float16 and bfloat16 accumulated in float32).

    Raises:
        TypeError, ValueError: bad arrays or options (``precision`` included), naming the argument and the
            shapes.

    Example:
        >>> import numpy as np, gpuconv
        >>> x, w = np.ones((1, 8, 7, 7)), np.ones((8, 4, 3, 3))
        >>> gpuconv.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1).shape
        (1, 4, 14, 14)
    """
    return _transpose("conv_transpose2d", x, w, bias, stride, padding, output_padding, groups, dilation, strategy,
                      precision)


def conv_transpose1d(x: Any, w: Any, bias: Any = None, stride: IntOrPair = 1, padding: IntOrPair = 0,
                     output_padding: IntOrPair = 0, groups: int = 1, dilation: IntOrPair = 1, *,
                     strategy: str = "auto", precision: str = "highest") -> Any:
    """:func:`conv_transpose2d` with one spatial dimension: x ``(N, C_in, L)`` or ``(C_in, L)``, w
    ``(C_in, C_out/groups, R)``, as ``F.conv_transpose1d``."""
    return _transpose("conv_transpose1d", x, w, bias, stride, padding, output_padding, groups, dilation, strategy,
                      precision)


def _transpose(fn: str, x: Any, w: Any, bias: Any, stride: Any, padding: Any, output_padding: Any, groups: Any,
               dilation: Any, strategy: Any, precision: Any) -> Any:
    key = None
    if (_calls.plain(stride) and _calls.plain(padding) and _calls.plain(output_padding) and _calls.plain(dilation)
            and type(groups) is int and type(strategy) is str and type(precision) is str):
        arrays = _calls.arrays_key((x, w, bias))
        if arrays is not None:
            key = (fn, arrays, stride, padding, output_padding, dilation, groups, strategy, precision)
    run = _calls.find(key)
    if run is None:
        run = _prepare(fn, x, w, bias, stride, padding, output_padding, groups, dilation, strategy, precision)
        _calls.keep(key, run)
    return run(x, w, bias)


def _prepare(fn: str, x: Any, w: Any, bias: Any, stride: Any, padding: Any, output_padding: Any, groups: Any,
             dilation: Any, strategy: Any, precision: Any = "highest") -> _calls.Runner:
    ndim = 1 if "1d" in fn else 2
    arrays = {"x": x, "w": w} if bias is None else {"x": x, "w": w, "bias": bias}
    kinds = {name: kind_of(fn, name, a) for name, a in arrays.items()}
    _check_same_place(fn, kinds)
    dtype = _check_dtypes(fn, arrays)
    x_shape, w_shape = tuple(x.shape), tuple(w.shape)
    unbatched = len(x_shape) == ndim + 1
    if unbatched:
        x_shape = (1, *x_shape)
    layout = "(N, C_in, L)" if ndim == 1 else "(N, C_in, H, W)"
    if len(x_shape) != ndim + 2:
        raise ValueError(f"{fn}: x must be {ndim + 2}-d {layout} or {ndim + 1}-d, got shape {tuple(x.shape)}")
    if len(w_shape) != ndim + 2:
        wl = "(C_in, C_out/groups, R)" if ndim == 1 else "(C_in, C_out/groups, R, S)"
        raise ValueError(f"{fn}: w must be {ndim + 2}-d {wl}, got shape {w_shape}")
    if type(groups) is bool or not isinstance(groups, int):
        raise TypeError(f"{fn}: groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"{fn}: groups must be positive, got {groups}")
    n, c_in, *spatial = x_shape
    w_in, cg_out, *kernel = w_shape
    if c_in != w_in:
        raise ValueError(f"{fn}: x has {c_in} channels but w expects {w_in} (w.shape[0]); x.shape={tuple(x.shape)},"
                         f" w.shape={w_shape}")
    if w_in % groups:
        raise ValueError(f"{fn}: w.shape[0]={w_in} input channels are not divisible by groups={groups}")
    if isinstance(padding, str):
        raise ValueError(f"{fn}: padding must be an int or a tuple of {ndim} ints, got {padding!r}")
    st = _int_tuple(fn, "stride", stride, ndim, minimum=1)
    pad = _int_tuple(fn, "padding", padding, ndim, minimum=0)
    dil = _int_tuple(fn, "dilation", dilation, ndim, minimum=1)
    opad = _int_tuple(fn, "output_padding", output_padding, ndim, minimum=0)
    for i in range(ndim):
        if opad[i] >= st[i] and opad[i] >= dil[i]:
            raise ValueError(f"{fn}: output_padding must be smaller than either stride or dilation, got "
                             f"output_padding={opad}, stride={st}, dilation={dil}")
    out = tuple((spatial[i] - 1) * st[i] - 2 * pad[i] + dil[i] * (kernel[i] - 1) + opad[i] + 1 for i in range(ndim))
    if any(v < 1 for v in out):
        raise ValueError(f"{fn}: the output size {out} is not positive (input {tuple(spatial)}, kernel "
                         f"{tuple(kernel)}, stride={st}, padding={pad}, dilation={dil}, output_padding={opad})")
    c_out = cg_out * groups
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"{fn}: bias must have shape ({c_out},) to match w.shape[1] x groups, got "
                         f"{tuple(bias.shape)}")
    problem = make_problem(fn, (n, c_out, *out), w_shape, dtype, False, stride=st, padding=pad, dilation=dil,
                           groups=groups, direction="input", precision=precision)
    kind = kinds["x"]
    backend = get_backend(kind.backend)
    chosen = _plan.choose(fn, problem, kind.backend, backend, strategy, device=kind.device)
    execute = backend.prepare(problem, chosen)
    if problem.out_shape4[2:] != ((1, *spatial) if ndim == 1 else tuple(spatial)):
        # an output_padding of a stride or more (allowed below the dilation) makes a convolution of that size
        # produce more outputs than x has: those read no x, i.e. x extended with zeros
        execute = _extended(execute, problem.out_shape, kind.backend)
    _calls.note_native(kind, x)
    bias_shape = (1, c_out) + (1,) * ndim

    def finish(y: Any, b: Any) -> Any:
        return y if b is None else y + b.reshape(bias_shape).astype(y.dtype, copy=False)

    unbatched_x = x_shape if unbatched else None
    result = problem.x_shape[1:] if unbatched else None
    if bias is None and not unbatched:
        return _calls.wrap(kind, execute, (None, None), None)
    if unbatched:
        bias_shape = bias_shape[1:]
    return _calls.wrap(kind, execute, (unbatched_x, None), result, finish)


def _extended(execute: _calls.Runner, shape: tuple[int, ...], backend: str) -> _calls.Runner:
    """``execute`` on its first operand zero-extended at the end of each axis to ``shape``."""
    if backend == "cpu":
        import numpy as xp
    else:
        import cupy as xp

    def run(a: Any, b: Any, c: Any) -> Any:
        big = xp.zeros(shape, a.dtype)
        big[tuple(slice(0, v) for v in a.shape)] = a
        return execute(big, b, c)

    return run
