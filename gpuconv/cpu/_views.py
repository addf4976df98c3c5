"""Zero-copy views shared by the CPU strategies: the padded input, one kernel tap, every receptive field.

Two layouts of the output grid are used:

* **compact**: a tap is the view ``(N, C, P, Q)`` of the (padded) input; any stride and dilation.
* **wide** (stride 1 only): the padded input is one flat buffer and a tap is the run of ``P * Wp`` consecutive
  elements starting at ``(r*dh) * Wp + s*dw`` of each channel plane, i.e. the compact view with each row
  extended to the padded width ``Wp``. The run is contiguous, so BLAS reads it in place and copies move
  long runs; the price is ``Wp - Q`` junk columns per output row, dropped by :func:`narrow`. The last taps
  read up to ``(S-1)*dw`` elements past the end of the plane, so the buffer carries that much zero slack;
  those reads only ever land in junk columns.
* **phased** (any stride): the padded input split into its ``st_h * st_w`` stride phases (every ``st``-th row
  and column from each offset), each a zero-bordered plane of ``Hq x Wq``. Tap ``(r, s)`` reads phase
  ``(r*dh % st_h, s*dw % st_w)`` from row ``r*dh // st_h`` and column ``s*dw // st_w`` on, at stride one: a
  strided convolution becomes the wide layout over the phases, at the price of one more copy of the input.
  With stride 1 it is the wide layout itself.
"""

from __future__ import annotations

from typing import Iterator

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


def phased_input(problem: ConvProblem, x: np.ndarray) -> tuple[np.ndarray, int]:
    """The padded input split into stride phases (see the module docstring), in one flat scratch buffer.

    Returns ``(flat, wq)``: the buffer ``(N, C, st_h*st_w, Hq, Wq)`` plus zero slack, and the row pitch ``Wq``
    of every plane (what :func:`narrow` drops the junk columns with).
    """
    (st_h, st_w), (dh, dw) = problem.stride, problem.dilation
    hq = problem.p + (problem.r - 1) * dh // st_h
    wq = problem.q + (problem.s - 1) * dw // st_w
    n, c = problem.n, problem.c
    slack = (problem.s - 1) * dw // st_w
    size = n * c * st_h * st_w * hq * wq
    flat = _scratch.empty("phased", (size + slack,), x.dtype)
    planes = flat[:size].reshape(n, c, st_h, st_w, hq, wq)
    t, _, l, _ = problem.padding
    for a in range(st_h):
        rows = _phase_range(a, t, problem.h, st_h, hq)
        for b in range(st_w):
            cols = _phase_range(b, l, problem.w, st_w, wq)
            plane = planes[:, :, a, b]
            (i0, i1, h0), (j0, j1, w0) = rows, cols
            plane[:, :, :i0] = 0
            plane[:, :, i1:] = 0
            plane[:, :, i0:i1, :j0] = 0
            plane[:, :, i0:i1, j1:] = 0
            plane[:, :, i0:i1, j0:j1] = x[:, :, h0::st_h, w0::st_w][:, :, :i1 - i0, :j1 - j0]
    flat[size:] = 0
    return flat, wq


def _phase_range(a: int, before: int, size: int, st: int, length: int) -> tuple[int, int, int]:
    """Phase ``a`` of a padded axis: ``(i0, i1, first)``, the plane indices ``[i0, i1)`` that hold input values
    (padded index ``st*i + a``, input index ``st*i + a - before``) and the input index at ``i0``."""
    i0 = min(max(0, -(-(before - a) // st)), length)
    i1 = max(i0, min(length, -(-(size + before - a) // st)))
    return i0, i1, st * i0 + a - before


def phased_tap(problem: ConvProblem, flat: np.ndarray, wq: int, r: int, s: int) -> np.ndarray:
    """Tap ``(r, s)`` of :func:`phased_input`'s buffer as a view ``(N, C, P * Wq)``: a run of each channel's phase."""
    (st_h, st_w), (dh, dw) = problem.stride, problem.dilation
    hq = problem.p + (problem.r - 1) * dh // st_h
    phase = (r * dh % st_h) * st_w + s * dw % st_w
    start = (phase * hq + r * dh // st_h) * wq + s * dw // st_w
    e = flat.itemsize
    plane = hq * wq * e
    shape = (problem.n, problem.c, problem.p * wq)
    return as_strided(flat[start:], shape, (problem.c * st_h * st_w * plane, st_h * st_w * plane, e),
                      writeable=False)


def tap_views(problem: ConvProblem, x: np.ndarray, wide: int) -> tuple[list[list[np.ndarray]], int | None]:
    """Every tap ``[r][s]`` as a view ``(N, C, ...)`` of one copy of ``x``, and the row pitch of a wide result
    (for :func:`narrow`): the wide layout at stride 1, the phased one at larger strides, compact views
    ``(N, C, P, Q)`` when not ``wide``."""
    if wide and problem.stride == (1, 1):
        views = wide_taps(problem, wide_input(problem, x))               # N, C, R, S, P * Wp
        return [[views[:, :, r, s] for s in range(problem.s)] for r in range(problem.r)], padded_size(problem)[1]
    if wide:
        flat, wq = phased_input(problem, x)
        return [[phased_tap(problem, flat, wq, r, s) for s in range(problem.s)] for r in range(problem.r)], wq
    views = compact_taps(problem, padded(problem, x))                    # N, C, R, S, P, Q
    return [[views[:, :, r, s] for s in range(problem.s)] for r in range(problem.r)], None


def compact_taps(problem: ConvProblem, xp: np.ndarray) -> np.ndarray:
    """Every tap of the compact layout as one view ``(N, C, R, S, P, Q)`` of the padded input ``xp``."""
    sn, sc, sh, sw = xp.strides
    (st_h, st_w), (dh, dw) = problem.stride, problem.dilation
    shape = (problem.n, problem.c, problem.r, problem.s, problem.p, problem.q)
    strides = (sn, sc, sh * dh, sw * dw, sh * st_h, sw * st_w)
    return as_strided(xp, shape, strides, writeable=False)


def narrow(problem: ConvProblem, y: np.ndarray, pitch: int | None = None) -> np.ndarray:
    """Drop the junk columns of a wide result ``(N, K, P * pitch)`` -> view ``(N, K, P, Q)``; the pitch is the
    padded width ``Wp`` unless given (a phased result's ``Wq``)."""
    wp = padded_size(problem)[1] if pitch is None else pitch
    return y.reshape(problem.n, y.shape[1], problem.p, wp)[..., :problem.q]


def wide_pays(problem: ConvProblem, max_waste: float) -> bool:
    """Whether the wide layout applies (stride 1) and its junk columns cost at most ``max_waste`` extra work."""
    return problem.stride == (1, 1) and padded_size(problem)[1] <= (1 + max_waste) * problem.q


#: The tunable chunk of a column matrix (im2col's forward and weight gradient), in units of :data:`CHUNK_UNIT`
#: (MiB), and the heuristic's. A chunk the size of the caches is read back by the GEMM from there instead of from
#: memory: on a 2-core Intel Xeon (2 MiB of L2 per core) 8 MiB was fastest or within 10% of it on VGG-16, U-Net and
#: ResNet-50 layers (2, 8, 32 and 256 timed, single images of 18-110 MiB of columns and batches of 1.7-7 MiB per
#: image): 0.58x the time of one 110 MiB column matrix on VGG's 64-channel 224x224 layer, 0.64x on ResNet-50's res2
#: 3x3 at batch 8, 0.76x on its 7x7 stem; 32 MiB won by 11% on a 512-channel 28x28 layer.
COLUMN_CHUNKS = (8, 32)
DEFAULT_COLUMN_CHUNK = 8
CHUNK_UNIT = 2**20


def column_budget(chunk: int) -> int:
    """The bytes of a column chunk of ``chunk`` units (see :data:`COLUMN_CHUNKS`)."""
    return chunk * CHUNK_UNIT


def row_blocks(problem: ConvProblem, taps: np.ndarray, budget: int) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """The column matrix of one image at a time in blocks of output rows, each within ``budget`` bytes (at least
    one row): ``(image, c0, c1, block)``, ``block`` the ``(C*R*S, c1 - c0)`` columns ``c0:c1`` of that image's
    output (a scratch buffer, overwritten by the next block). ``taps`` is compact ``(N, C, R, S, P, Q)`` or wide
    ``(N, C, R, S, P * Wp)``, whose rows are ``Wp`` long."""
    crs = problem.c * problem.r * problem.s
    row = taps.shape[5] if taps.ndim == 6 else taps.shape[4] // problem.p    # one output row's columns
    rows = max(1, min(problem.p, budget // (crs * row * taps.itemsize)))
    cols = _scratch.empty("cols", (crs * rows * row,), taps.dtype)
    for i in range(problem.n):
        for r0 in range(0, problem.p, rows):
            r1 = min(problem.p, r0 + rows)
            block = cols[:crs * (r1 - r0) * row]
            if taps.ndim == 6:
                np.copyto(block.reshape(*taps.shape[1:4], r1 - r0, row), taps[i, :, :, :, r0:r1])
            else:
                np.copyto(block.reshape(*taps.shape[1:4], (r1 - r0) * row), taps[i, ..., r0 * row:r1 * row])
            yield i, r0 * row, r1 * row, block.reshape(crs, (r1 - r0) * row)
