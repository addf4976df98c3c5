"""Winograd F(m x m, r x r) with every stage a BLAS call on strided views: F(4x4, 3x3) (and F(2x2, 3x3) for
comparison), F(2x2, 5x5).

Per chunk of ``T`` tiles (``a = m + r - 1``; ``a x a`` input tiles at step ``m``, each giving ``m x m`` outputs):

1. **gather**: one strided copy of the channels-last padded input into ``d`` ``(a, a, T, C)``, tile position
   major, so that each transform below is one GEMM over all tiles and channels at once;
2. **input transform** ``V = Bt d B``: one GEMM ``kron(Bt, Bt) (a*a x a*a) @ d (a*a x T C)``: ``V (a*a, T, C)``,
   every position a contiguous ``T x C`` matrix;
3. **the products**: per position and group, ``V[pos] (T x C/G) @ U[pos] (C/G x K/G)`` -- ``a*a*G`` GEMMs
   of one batched ``np.matmul``, the bulk of the work (``a*a / m*m`` multiplications per output instead of ``r*r``);
4. **output transform** ``Y = At M A``: one GEMM ``kron(At, At) (m*m x a*a) @ M (a*a x T K)``;
5. one strided copy per output position into the NCHW result, cropping the partial tiles of the last row
   and column.

The transforms as Kronecker products do ``a*a`` (input) and ``m*m`` (output) times the multiply-adds of two
passes with ``Bt`` and ``At``, but read and write the tiles once instead of twice: both passes were bound by
memory, and on a 2-core Intel Xeon the single GEMM took 0.3-0.9x their time (VGG-16's 64-channel layer at
224x224: 2 x 3136 tiles of 64 channels). Each GEMM is threaded by BLAS; the gather, the NCHW copies and the
channels-last copy of the input are the only single-threaded passes. Scratch buffers are reused across
stages (``V`` then ``Y`` in one, the gathered tiles in another), so a chunk holds ``a*a*T*(2C + K)`` values:
:func:`chunk_tiles` sizes ``T`` from a byte budget.

The filter transform ``U = G g Gt`` is one GEMM ``kron(G, G) (a*a x r*r) @ w (r*r x K*C/G)``;
:class:`FilterMemo` keeps it for repeated calls with unchanged weights.

**Accuracy.** The points are ``0, 1, -1, 1/2, -2`` and infinity (Barabasz et al., "Error analysis and
improving the accuracy of Winograd convolution for deep neural networks", 2020): ``Bt`` and ``At`` hold only
binary fractions, ``G`` holds thirds and fifteenths; on the same inputs Lavin's ``0, +-1, +-2`` points err
about 2x more. ``python -m benchmarks.winograd_error`` measured the largest error against the float64
result of the same float32 inputs (uniform in [-1, 1), 16 filters, images 14x14 and 30x30 at batch 1 and
56x56 at batch 4), as a fraction of :func:`gpuconv.measure.tolerance`::

    C/G        2      4      8     16     32     64    128    256
    im2col   0.07   0.08   0.07   0.08   0.06   0.04   0.03   0.02
    F(2x2)   0.11   0.08   0.06   0.05   0.05   0.04   0.04   0.04
    F(4x4)   0.93   0.61   0.48   0.42   0.33   0.30   0.35   0.26

(in units of float32 epsilon F(4x4) is 8-13x im2col's error: 247 against 50 eps at 16 channels, 2414 against
190 at 256). On ResNet-50-sized outputs (1.6M values, batch 8 at 56x56) the largest F(4x4) ratio was 0.53 at 8
channels, 0.46 at 16 and 0.40 at 64; float64 gives the same ratios (1.25 at 2 channels, 0.39 at 16).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..problem import ConvProblem
from . import _scratch


class Transforms(NamedTuple):
    """The matrices of F(m x m, r x r) in float64: ``bt (a, a)``, ``g (a, r)``, ``at (m, a)``, ``a = m + r - 1``."""

    bt: np.ndarray
    g: np.ndarray
    at: np.ndarray


def toom_cook(points: tuple[float, ...], m: int, r: int) -> Transforms:
    """F(m, r) from ``m + r - 2`` distinct finite points and infinity (Toom-Cook).

    The correlation of ``d`` (``a`` values) with ``g`` (``r`` taps) is the transpose of the linear convolution
    of ``g`` with an ``m``-vector ``h``: evaluate both polynomials at the points (and their leading
    coefficients at infinity), multiply, and interpolate. Transposed, the evaluation of ``h`` is ``At``
    (``At[i, j] = p_j^i``; infinity feeds the last output), that of ``g`` is ``G`` with the Lagrange
    denominators ``f_j = prod_(l != j) (p_j - p_l)`` moved into it, and ``Bt`` holds the interpolation
    polynomials' coefficients: row ``j`` those of ``prod_(l != j) (x - p_l)``, the last row those of
    ``prod_l (x - p_l)``.
    """
    p = np.asarray(points, float)
    n, a = len(p), m + r - 1
    if n != a - 1 or len(set(points)) != n:
        raise ValueError(f"F({m}, {r}) needs {a - 1} distinct finite points, got {points}")
    at = np.zeros((m, a))
    at[:, :n] = p[None, :] ** np.arange(m)[:, None]
    at[m - 1, n] = 1
    f = np.array([np.prod([p[j] - p[i] for i in range(n) if i != j]) for j in range(n)])
    g = np.zeros((a, r))
    g[:n] = p[:, None] ** np.arange(r)[None, :] / f[:, None]
    g[n, r - 1] = 1
    bt = np.zeros((a, a))
    for j in range(n):
        bt[j, :n] = np.poly(np.delete(p, j))[::-1]                               # ascending powers
    bt[n] = np.poly(p)[::-1]
    return Transforms(bt=bt, g=g, at=at)


#: F(m x m, r x r) by ``(m, r)``. F(2x2, 3x3) on Lavin and Gray's points 0, 1, -1; F(4x4, 3x3) on 0, 1, -1, 1/2, -2
#: (see the module docstring); F(2x2, 5x5) has as many points as F(4x4, 3x3) (``a = 6``) and takes the same.
TRANSFORMS: dict[tuple[int, int], Transforms] = {
    (2, 3): toom_cook((0, 1, -1), 2, 3),
    (4, 3): toom_cook((0, 1, -1, 0.5, -2), 4, 3),
    (2, 5): toom_cook((0, 1, -1, 0.5, -2), 2, 5),
}


def _cast(t: Transforms, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # G is rounded after the Kronecker product: one rounding per entry of kron(G, G).
    return t.bt.astype(dtype), np.kron(t.g, t.g).astype(dtype), t.at.astype(dtype)


_MATRICES = {(m, r, np.dtype(d)): _cast(t, np.dtype(d)) for (m, r), t in TRANSFORMS.items()
             for d in (np.float32, np.float64)}


def matrices(m: int, dtype: np.dtype, r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Bt, kron(G, G), At)`` of F(m x m, r x r) in ``dtype`` (float32 or float64)."""
    return _MATRICES[m, r, np.dtype(dtype)]


# Bt and At hold binary fractions whose pairwise products are exact in float32: rounding after the product is exact.
_KRONS = {(m, r, np.dtype(d)): (np.kron(t.bt, t.bt).astype(d), np.kron(t.at, t.at).astype(d))
          for (m, r), t in TRANSFORMS.items() for d in (np.float32, np.float64)}


def kron_transforms(m: int, dtype: np.dtype, r: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(kron(Bt, Bt) (a*a x a*a), kron(At, At) (m*m x a*a))``: both tile transforms of F(m x m, r x r) as one
    matrix each, acting on a tile flattened row by row."""
    return _KRONS[m, r, np.dtype(dtype)]


def tiles(problem: ConvProblem, m: int) -> tuple[int, int]:
    """``(TH, TW)``: tile rows and columns covering the ``P x Q`` output."""
    return -(-problem.p // m), -(-problem.q // m)


def chunk_tiles(problem: ConvProblem, m: int, budget_bytes: int) -> int:
    """How many tiles one chunk takes so that its scratch (``a*a*T*(2C + K)`` values) fits ``budget_bytes``;
    at least one row of tiles, so every chunk is a strided view of the input."""
    a = m + problem.r - 1
    per_tile = a * a * (2 * problem.c + problem.k) * _itemsize(problem)
    return max(tiles(problem, m)[1], budget_bytes // per_tile)


def _itemsize(problem: ConvProblem) -> int:
    return max(np.dtype(problem.dtype).itemsize, 4)  # float16 is computed in float32


def filter_transform(problem: ConvProblem, w: np.ndarray, m: int, scratch: bool = False) -> np.ndarray:
    """``U = G g Gt`` of every filter as a ``(a*a, G, C/G, K/G)`` view (a transposed operand BLAS reads in
    place), computed as ``kron(G, G) @ w`` from the taps of ``w`` in their own order; in a scratch buffer
    when ``scratch`` (valid until the next call), else a fresh array."""
    a, g, cg, kg = m + problem.r - 1, problem.groups, problem.cg, problem.kg
    kron = _MATRICES[m, problem.r, w.dtype][1]
    u = _new((a * a, problem.k * cg), w.dtype, "wgemm_u" if scratch else None)
    np.matmul(kron, w.reshape(-1, problem.r * problem.s).T, out=u)
    return u.reshape(a * a, g, kg, cg).transpose(0, 1, 3, 2)


def _new(shape: tuple[int, ...], dtype: np.dtype, role: str | None) -> np.ndarray:
    # A fresh array above glibc's largest mmap threshold (32 MiB) is mapped and faulted in page by page on
    # every call: for ResNet-50 res5's 38 MB transform that is 5x the GEMM filling it. Scratch avoids it.
    return np.empty(shape, dtype) if role is None else _scratch.empty(role, shape, dtype)


class FilterMemo:
    """The filter transform of the last weights seen, reused while they are unchanged.

    ``transform(problem, w, scratch)`` computes it (by default F(m x m)'s :func:`filter_transform`).
    Weights are compared bit for bit with a private copy on every call: arrays carry no version counter,
    and an in-place update (an optimizer step, ``w[...] = ...``) keeps the same object. The comparison reads
    ``9 K C/G`` values twice; the transform it saves writes ``a*a K C/G`` (4x as many for F(4x4)). The first
    call with new weights transforms them into scratch and only keeps their copy; a second call with the
    same weights keeps a transform of its own. A runner used once (:func:`gpuconv.cpu.execute`, the tuner)
    therefore allocates no transform it would throw away.
    """

    MAX_BYTES = 256 * 2**20  # weights whose transform is larger are transformed on every call

    def __init__(self, problem: ConvProblem, m: int,
                 transform: Callable[[ConvProblem, np.ndarray, bool], np.ndarray] | None = None) -> None:
        self.problem, self.m = problem, m
        self.transform = transform or (lambda problem, w, scratch: filter_transform(problem, w, m, scratch))
        self._last: tuple[np.ndarray, np.ndarray | None] | None = None

    def __call__(self, w: np.ndarray) -> np.ndarray:
        last = self._last  # one read: another thread may replace it meanwhile
        seen = last is not None and last[0].dtype == w.dtype and _same_bits(last[0], w)
        if seen and last[1] is not None:
            return last[1]
        u = self.transform(self.problem, w, not seen)
        if seen:
            self._last = (last[0], u)
        elif u.nbytes <= self.MAX_BYTES:
            self._last = (np.array(w, order="C"), None)
        return u


def _same_bits(saved: np.ndarray, w: np.ndarray) -> bool:
    bits = np.dtype(f"u{w.dtype.itemsize}")
    return np.array_equal(saved.view(bits), np.ascontiguousarray(w).view(bits))


def winograd(problem: ConvProblem, x: np.ndarray, w: np.ndarray, m: int, budget_bytes: int,
             u: np.ndarray | None = None) -> np.ndarray | None:
    """Convolve by F(m x m, r x r) in chunks of at most ``budget_bytes`` of scratch.

    Args:
        problem: a stride-1, undilated problem whose square kernel has a :data:`TRANSFORMS` entry with ``m``.
        x: ``(N, C, H, W)`` in the compute dtype, any strides.
        w: ``(K, C/G, 3, 3)`` in the compute dtype, any strides.
        m: the output tile (a key of :data:`TRANSFORMS`).
        budget_bytes: the scratch one chunk may hold (see :func:`chunk_tiles`).
        u: the filter transform of ``w`` when already known (:class:`FilterMemo`).

    Returns:
        ``(N, K, P, Q)`` C-contiguous, or None when a chunk's result is not finite (the caller recomputes
        with a strategy that places NaN and Inf as direct convolution does).
    """
    n, c, k, g, cg, kg = problem.n, problem.c, problem.k, problem.groups, problem.cg, problem.kg
    r = problem.r
    a = m + r - 1
    th, tw = tiles(problem, m)
    kbt, kat = _KRONS[m, r, x.dtype]
    if u is None:
        u = filter_transform(problem, w, m, scratch=True)
    xp = padded_channels_last(problem, x, m * th + r - 1, m * tw + r - 1)
    y = np.empty(problem.out_shape4, x.dtype)
    per_chunk = chunk_tiles(problem, m, budget_bytes)
    for n0, n1, t0, t1 in chunks(n, th, tw, per_chunk):
        nb, tb = n1 - n0, t1 - t0
        t = nb * tb * tw
        # V and then Y in one buffer, the gathered tiles in another.
        buf1 = _scratch.empty("wgemm_1", (a * a * t * max(c, k),), x.dtype)
        buf2 = _scratch.empty("wgemm_2", (a * a * t * c,), x.dtype)
        v = input_transform(xp[n0:n1, m * t0:], m, tb, tw, kbt, buf1, buf2)
        mm = _scratch.empty("wgemm_m", (a * a, t, k), x.dtype)
        np.matmul(v.reshape(a * a, t, g, cg).transpose(0, 2, 1, 3), u,
                  out=mm.reshape(a * a, t, g, kg).transpose(0, 2, 1, 3))
        yt = buf1[:m * m * t * k].reshape(m * m, t * k)
        np.matmul(kat, mm.reshape(a * a, t * k), out=yt)                        # At M A
        if not np.isfinite(yt.sum()):
            return None
        _store(problem, yt.reshape(m, m, nb, tb, tw, k), y[n0:n1], m, t0)
    return y


def input_transform(xp: np.ndarray, m: int, tb: int, tw: int, kbt: np.ndarray, out: np.ndarray,
                    work: np.ndarray) -> np.ndarray:
    """``V = Bt d B`` of the ``a x a`` tiles at step ``m`` (``a = m + r - 1``) of ``tb`` rows of ``tw`` tiles from the
    top of every image of the channels-last ``xp`` ``(nb, ., ., C)``: ``(a, a, T*C)`` in ``out``, tile position
    major (``T = nb*tb*tw``), every position a contiguous ``T x C`` matrix. ``out`` and ``work`` are flat scratch
    of at least ``a*a*T*C`` values each: one strided gather into ``work``, then one GEMM with ``kbt``
    (``kron(Bt, Bt)``, :func:`kron_transforms`) into ``out``."""
    a, (nb, c) = math.isqrt(kbt.shape[0]), (xp.shape[0], xp.shape[3])
    sn, sh, sw, sc = xp.strides
    t = nb * tb * tw
    d = work[:a * a * t * c].reshape(a, a, nb, tb, tw, c)
    np.copyto(d, as_strided(xp, d.shape, (sh, sw, sn, m * sh, m * sw, sc)))
    v = out[:a * a * t * c].reshape(a * a, t * c)
    np.matmul(kbt, d.reshape(a * a, t * c), out=v)                              # Bt d B
    return v.reshape(a, a, t * c)


def chunks(n: int, th: int, tw: int, per_chunk: int) -> list[tuple[int, int, int, int]]:
    """``(n0, n1, t0, t1)``: whole images when one fits in ``per_chunk`` tiles, else rows of tiles of one image."""
    if per_chunk >= th * tw:
        step = per_chunk // (th * tw)
        return [(i, min(i + step, n), 0, th) for i in range(0, n, step)]
    step = max(1, per_chunk // tw)
    return [(i, i + 1, t, min(t + step, th)) for i in range(n) for t in range(0, th, step)]


def _store(problem: ConvProblem, yt: np.ndarray, y: np.ndarray, m: int, t0: int) -> None:
    """Copy ``yt`` ``(m, m, nb, tb, TW, K)`` into ``y`` ``(nb, K, P, Q)`` from tile row ``t0`` on: one strided copy
    per output position ``(u, v)`` of the tile, which crops the partial last row and column of tiles."""
    tb = yt.shape[3]
    for u in range(m):
        r0 = m * t0 + u
        rows = len(range(r0, min(m * (t0 + tb), problem.p), m))
        if rows == 0:
            continue
        for v in range(m):
            cols = len(range(v, problem.q, m))
            if cols:
                np.copyto(y[:, :, r0::m][:, :, :rows, v::m], yt[u, v, :, :rows, :cols].transpose(0, 3, 1, 2))


def padded_channels_last(problem: ConvProblem, x: np.ndarray, hp: int, wp: int) -> np.ndarray:
    """``x`` as ``(N, hp, wp, C)`` (scratch) with the problem's top/left padding and zeros to the full size."""
    n, c, h, w = x.shape
    t, l = problem.padding[0], problem.padding[2]
    xp = _scratch.empty("wgemm_pad", (n, hp, wp, c), x.dtype)
    xp[:, :t] = 0
    xp[:, t + h:] = 0
    xp[:, t:t + h, :l] = 0
    xp[:, t:t + h, l + w:] = 0
    np.copyto(xp[:, t:t + h, l:l + w], x.transpose(0, 2, 3, 1))
    return xp


def scratch_bytes(problem: ConvProblem, m: int) -> int:
    """The scratch of one chunk holding every tile (what a budget above it leaves undivided)."""
    a = m + problem.r - 1
    th, tw = tiles(problem, m)
    return a * a * problem.n * th * tw * (2 * problem.c + problem.k) * _itemsize(problem)

