"""Zero-copy views shared by the CPU strategies: the padded input, one kernel tap, every receptive field.

Two layouts of the output grid are used:

* **compact**: a tap is the view ``(N, C, P, Q)`` of the (padded) input; any stride and dilation.
* **wide** (stride 1 only): the padded input is one flat buffer and a tap is the run of ``P * Wp`` consecutive
  elements starting at ``(r*dh) * Wp + s*dw`` of each channel plane, i.e. the compact view with each row
  extended to the padded width ``Wp``. The run is contiguous, so BLAS reads it in place and copies move
  long runs; the price is ``Wp - Q`` junk columns per output row, dropped by :func:`narrow`. The last taps
  read up to ``(S-1)*dw`` elements past the end of the plane, so the buffer carries that much zero slack;
  those reads only ever land in junk columns.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..problem import ConvProblem
from . import _scratch


def padded_size(problem: ConvProblem) -> tuple[int, int]:
    """``(Hp, Wp)``: the input height and width after padding."""
    t, b, l, r = problem.padding
    return problem.h + t + b, problem.w + l + r


def pad(problem: ConvProblem, x: np.ndarray, *, slack: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Copy ``x`` into a zero-bordered, C-contiguous ``(N, C, Hp, Wp)`` buffer with ``slack`` zeros after it.

    Returns ``(flat, xp)``: the whole flat buffer and its 4-d view, a scratch buffer valid until the next
    call in this thread. Only the border and the slack are zeroed; the interior is written once (cheaper
    than ``np.pad`` or ``np.zeros`` followed by a copy).
    """
    n, c, h, w = x.shape
    t, b, l, r = problem.padding
    hp, wp = h + t + b, w + l + r
    size = n * c * hp * wp
    flat = _scratch.empty("pad", (size + slack,), x.dtype)
    xp = flat[:size].reshape(n, c, hp, wp)
    xp[:, :, :t] = 0
    xp[:, :, t + h:] = 0
    xp[:, :, t:t + h, :l] = 0
    xp[:, :, t:t + h, l + w:] = 0
    xp[:, :, t:t + h, l:l + w] = x
    flat[size:] = 0
    return flat, xp


def padded(problem: ConvProblem, x: np.ndarray) -> np.ndarray:
    """``x`` zero-padded to ``(N, C, Hp, Wp)`` (scratch, see :func:`pad`); ``x`` itself when there is no padding."""
    if not any(problem.padding):
        return x
    return pad(problem, x)[1]


def wide_input(problem: ConvProblem, x: np.ndarray) -> np.ndarray:
    """The flat padded buffer for the wide layout (always a fresh copy: it needs the zero slack)."""
    return pad(problem, x, slack=(problem.s - 1) * problem.dilation[1])[0]


def wide_taps(problem: ConvProblem, flat: np.ndarray) -> np.ndarray:
    """Every tap of the wide layout as one view ``(N, C, R, S, P * Wp)`` of :func:`wide_input`'s buffer."""
    if problem.stride != (1, 1):
        raise ValueError(f"the wide layout needs stride 1, got stride={problem.stride}")
    hp, wp = padded_size(problem)
    dh, dw = problem.dilation
    e = flat.itemsize
    shape = (problem.n, problem.c, problem.r, problem.s, problem.p * wp)
    strides = (problem.c * hp * wp * e, hp * wp * e, dh * wp * e, dw * e, e)
    return as_strided(flat, shape, strides, writeable=False)


def compact_taps(problem: ConvProblem, xp: np.ndarray) -> np.ndarray:
    """Every tap of the compact layout as one view ``(N, C, R, S, P, Q)`` of the padded input ``xp``."""
    sn, sc, sh, sw = xp.strides
    (st_h, st_w), (dh, dw) = problem.stride, problem.dilation
    shape = (problem.n, problem.c, problem.r, problem.s, problem.p, problem.q)
    strides = (sn, sc, sh * dh, sw * dw, sh * st_h, sw * st_w)
    return as_strided(xp, shape, strides, writeable=False)


def narrow(problem: ConvProblem, y: np.ndarray) -> np.ndarray:
    """Drop the junk columns of a wide result ``(N, K, P * Wp)`` -> view ``(N, K, P, Q)``."""
    wp = padded_size(problem)[1]
    return y.reshape(problem.n, y.shape[1], problem.p, wp)[..., :problem.q]


def wide_pays(problem: ConvProblem, max_waste: float) -> bool:
    """Whether the wide layout applies (stride 1) and its junk columns cost at most ``max_waste`` extra work."""
    return problem.stride == (1, 1) and padded_size(problem)[1] <= (1 + max_waste) * problem.q
