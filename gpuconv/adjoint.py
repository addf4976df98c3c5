"""The two gradients of a convolution written as forward convolutions, for any array module (NumPy, CuPy).

The input gradient is the forward convolution of ``dy`` with the weight flipped in space and transposed in its
channel axes (per group), ``dy`` spread to the input's grid first where the stride is above 1 (``stride - 1``
zeros between its elements). The weight gradient is the forward convolution of ``x`` with ``dy`` as the kernel:
the batch becomes the reduction (``x``'s channels move to the batch axis, ``N`` to the channel axis) and stride
and dilation trade places. jax states the same rules (``_conv_general_dilated_transpose_lhs/rhs``).

A backend runs a rewrite with its own forward strategies; that is how a direction without a dedicated kernel
is computed, and how the CPU's stride-1 ``direct`` input gradient works. Every function here takes the array
module ``xp`` and touches the data only through it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from .problem import ConvProblem


@dataclass(frozen=True)
class Rewrite:
    """A gradient problem as a forward problem.

    Attributes:
        forward: the forward problem to run (its ``x`` and ``w`` are what ``operands`` returns).
        operands: ``operands(xp, a, b) -> (x, w)`` from the gradient's operands (``dy, w`` or ``x, dy``).
        result: ``result(xp, y) -> r`` from the forward output to the gradient (a view where possible).
    """

    forward: ConvProblem
    operands: Callable[[Any, Any, Any], tuple[Any, Any]]
    result: Callable[[Any, Any], Any]


def _forward(problem: ConvProblem, **changes: Any) -> ConvProblem:
    return dataclasses.replace(problem, direction="forward", has_bias=False, **changes)


def _flip_transpose(xp: Any, problem: ConvProblem, w: Any) -> Any:
    """``w (K, C/G, R, S)`` -> ``(C, K/G, R, S)``, flipped in R and S: the input gradient's kernel."""
    g, kg, cg = problem.groups, problem.kg, problem.cg
    wt = w.reshape(g, kg, cg, problem.r, problem.s).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
    if problem.r == problem.s == 1:
        # Nothing to flip: a transposed view (of one group), which a GEMM reads in place. A transposing copy of
        # a large 1x1 weight costs more than the GEMM that reads it (7 ms for 2048 x 512 float32 in NumPy).
        return wt.reshape(problem.c, kg, 1, 1)
    return xp.ascontiguousarray(wt).reshape(problem.c, kg, problem.r, problem.s)


def _axis_plan(size: int, pad_before: int, out: int, stride: int, dil: int, kernel: int) -> tuple[int, int, int, int]:
    """Along one axis of the input gradient: ``(length, crop, before, after)``.

    ``dy`` spread with ``stride - 1`` zeros has ``length`` elements; the forward convolution of the flipped kernel
    must see it shifted by ``dil (kernel - 1) - pad_before`` and produce ``size`` outputs, which asks for padding
    on each side, negative padding being a crop of the spread ``dy``.
    """
    length = (out - 1) * stride + 1
    before = dil * (kernel - 1) - pad_before
    after = size + dil * (kernel - 1) - length - before
    crop = max(0, -before)
    return length, crop, max(0, before), after


def input_gradient(problem: ConvProblem) -> Rewrite | None:
    """The input gradient of ``problem`` as a forward convolution, or None where no input element receives a
    gradient (every tap reads padding; the gradient is zero)."""
    th, ch, bh, ah = _axis_plan(problem.h, problem.padding[0], problem.p, problem.stride[0], problem.dilation[0],
                                problem.r)
    tw, cw, bw, aw = _axis_plan(problem.w, problem.padding[2], problem.q, problem.stride[1], problem.dilation[1],
                                problem.s)
    # what remains of the spread dy after the crops at the start (negative before) and the end (negative after)
    hz, wz = th - ch - max(0, -ah), tw - cw - max(0, -aw)
    if hz <= 0 or wz <= 0:
        return None
    fwd = _forward(problem, c=problem.k, h=hz, w=wz, k=problem.c, stride=(1, 1),
                   padding=(bh, max(0, ah), bw, max(0, aw)))
    (sh, sw), n, k = problem.stride, problem.n, problem.k

    def operands(xp: Any, dy: Any, w: Any) -> tuple[Any, Any]:
        dy4 = dy.reshape(n, k, problem.p, problem.q)
        if (sh, sw) != (1, 1):
            spread = xp.zeros((n, k, th, tw), dy4.dtype)
            spread[:, :, ::sh, ::sw] = dy4
            dy4 = spread
        z = dy4[:, :, ch:ch + hz, cw:cw + wz]
        return xp.ascontiguousarray(z), _flip_transpose(xp, problem, w.reshape(problem.k, problem.cg, problem.r,
                                                                                problem.s))

    return Rewrite(fwd, operands, lambda xp, y: y)


@dataclass(frozen=True)
class Phase:
    """One stride phase of the input gradient as a forward convolution: ``dx[:, :, rows, cols] = result``.

    Attributes:
        rewrite: the forward problem of ``dy`` with this phase's taps (every ``stride``-th of the kernel, flipped
            and transposed), its operands from ``(dy, w)``, and its result.
        rows, cols: where the result lands in ``dx``: ``(start, count)`` along H and W, at step ``stride``.
    """

    rewrite: Rewrite
    rows: tuple[int, int]
    cols: tuple[int, int]


def _phase_axis(size: int, pad_before: int, out: int, stride: int, kernel: int, a: int
                ) -> tuple[int, int, int, int, int, int] | None:
    """Phase ``a`` (input positions ``h`` with ``(h + pad_before) % stride == a``) along one axis, dilation 1.

    Its taps are ``a, a + stride, ...`` (``taps`` of them); the phase's ``i``-th position ``h = stride*i + a -
    pad_before`` receives ``sum_j dy[i - j] w[a + stride*j]``: a stride-1 correlation of ``dy`` with the ``taps``
    kernel flipped, for ``i`` from ``i0`` on (``count`` positions). Returns ``(taps, start, count, crop, before,
    after)`` (``start`` the first position in ``dx``; ``dy`` cropped by ``crop`` at the start and padded by
    ``before``/``after``, a negative ``after`` a crop at its end), or None where the phase gets no gradient.
    """
    taps = len(range(a, kernel, stride))
    i0 = -(-(pad_before - a) // stride)
    count = -(-(size + pad_before - a) // stride) - i0
    if taps == 0 or count <= 0:
        return None
    before = taps - 1 - i0               # dy index of output i0's first tap: i0 - (taps - 1)
    after = count - out - before + taps - 1
    return taps, stride * i0 + a - pad_before, count, max(0, -before), max(0, before), after


def input_gradient_phases(problem: ConvProblem) -> list[Phase] | None:
    """The input gradient of an undilated ``problem`` as one stride-1 forward convolution per stride phase of
    ``dx`` (``stride_h * stride_w`` of them, fewer where a phase receives nothing): no zero-spread ``dy``, and
    ``R*S`` taps in all instead of ``stride_h * stride_w * R * S``. None when the problem is dilated."""
    if problem.dilation != (1, 1):
        return None
    (sh, sw), k = problem.stride, problem.k
    phases = []
    for a in range(sh):
        ha = _phase_axis(problem.h, problem.padding[0], problem.p, sh, problem.r, a)
        for b in range(sw):
            wb = _phase_axis(problem.w, problem.padding[2], problem.q, sw, problem.s, b)
            if ha is None or wb is None:
                continue
            (jh, h0, hc, ch, bh, ah), (jw, w0, wc, cw, bw, aw) = ha, wb
            hz, wz = problem.p - ch - max(0, -ah), problem.q - cw - max(0, -aw)
            if hz <= 0 or wz <= 0:
                continue
            fwd = _forward(problem, c=k, h=hz, w=wz, k=problem.c, r=jh, s=jw, stride=(1, 1),
                           padding=(bh, max(0, ah), bw, max(0, aw)))
            phases.append(Phase(Rewrite(fwd, _phase_operands(problem, a, b, ch, hz, cw, wz), lambda xp, y: y),
                                (h0, hc), (w0, wc)))
    return phases


def _phase_operands(problem: ConvProblem, a: int, b: int, ch: int, hz: int, cw: int, wz: int
                    ) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    (sh, sw), n, k = problem.stride, problem.n, problem.k
    g, kg, cg = problem.groups, problem.kg, problem.cg

    def operands(xp: Any, dy: Any, w: Any) -> tuple[Any, Any]:
        dy4 = dy.reshape(n, k, problem.p, problem.q)[:, :, ch:ch + hz, cw:cw + wz]
        sub = w.reshape(g, kg, cg, problem.r, problem.s)[:, :, :, a::sh, b::sw]
        wt = sub.transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]             # G, C/G, K/G, taps flipped
        return dy4, xp.ascontiguousarray(wt).reshape(problem.c, kg, *wt.shape[3:])

    return operands


def weight_gradient(problem: ConvProblem) -> Rewrite:
    """The weight gradient of ``problem`` as a forward convolution of ``x`` (channels as the batch) with ``dy``."""
    g, n, cg, kg = problem.groups, problem.n, problem.cg, problem.kg
    fwd = _forward(problem, n=cg, c=g * n, k=problem.k, r=problem.p, s=problem.q, stride=problem.dilation,
                   dilation=problem.stride)
    r, s = problem.r, problem.s

    def operands(xp: Any, x: Any, dy: Any) -> tuple[Any, Any]:
        x5 = x.reshape(n, g, cg, problem.h, problem.w).transpose(2, 1, 0, 3, 4)
        dy5 = dy.reshape(n, g, kg, problem.p, problem.q).transpose(1, 2, 0, 3, 4)
        return (xp.ascontiguousarray(x5).reshape(cg, g * n, problem.h, problem.w),
                xp.ascontiguousarray(dy5).reshape(problem.k, n, problem.p, problem.q))

    def result(xp: Any, y: Any) -> Any:
        # the forward output may be larger than the kernel: positions past R, S read no dy and are dropped
        return y[:, :, :r, :s].transpose(1, 0, 2, 3)

    return Rewrite(fwd, operands, result)
