"""The weight gradient of a 3x3 stride-1 convolution by Winograd: F(m x m, 3x3) transposed.

The forward's F(m, 3) computes ``y = At [(G g) * (Bt d)]``, a map ``g -> y`` that for a fixed input tile ``d``
is the matrix ``At diag(Bt d) G``. The weight gradient of that tile, ``dw_j = sum_i dy_i d_(i+j)``, is the
same matrix transposed applied to ``dy``: ``dw = Gt [(A dy) * (Bt d)]`` (in 2-d, along both axes). So, per
chunk of ``T`` tiles (``a = m + 2``; ``a x a`` input tiles at step ``m``, each meeting an ``m x m`` block of
``dy``):

1. **input transform** ``V = Bt d B`` of the overlapping input tiles, exactly as the forward F(m x m) does it
   (one strided gather into ``(a, a, T, C)``, then one GEMM with ``kron(Bt, Bt)``);
2. **gradient transform** ``E = A dy At`` of the ``m x m`` blocks of ``dy`` (zero beyond ``P`` and ``Q``),
   gathered channels-last into ``(m, m, T, K)`` and transformed by one GEMM with ``kron(A, A)`` (``a*a x m*m``);
3. **the products**: per position and group ``M[pos] += E[pos]^T (K/G x T) @ V[pos] (T x C/G)`` -- ``a*a*G``
   GEMMs whose reduction runs over the chunk's tiles, accumulated over the chunks;
4. **output transform**, once: ``dw = Gt M G``, one GEMM ``kron(G, G)^T (9 x a*a) @ M``.

``a*a`` multiplications per ``m*m`` gradient values (36 per 16 for F(4x4), 16 per 4 for F(2x2)) instead of 9
each. The transforms' matrices are the forward's (:data:`gpuconv.cpu.winograd_gemm.TRANSFORMS`), with the same
points. **Accuracy**: ``python -m benchmarks.winograd_error --direction weight`` measured the largest float32
error against the float64 result of the same inputs (uniform in [-1, 1), 16 filters, images 14x14 and 30x30 at
batch 1 and 56x56 at batch 4) as a fraction of :func:`gpuconv.measure.tolerance`::

    C          2      4      8     16     32     64    128    256    512
    im2col   0.01   0.02   0.05   0.07   0.07   0.09   0.08   0.09   0.10
    F(2x2)   0.05   0.05   0.06   0.06   0.05   0.09   0.07   0.07   0.08
    F(4x4)   0.14   0.14   0.14   0.18   0.21   0.19   0.21   0.21   0.31

(the worst F(4x4) cell of the whole grid was 0.39, at 24 channels). The sums run over the batch and the output
grid, not over the channels, so unlike the forward's F(4x4) no channel count is excluded.

Non-finite values: a NaN or Inf in ``x`` or ``dy`` reaches every tap of a tile here, where the direct sum
confines it to the taps that read it; when ``dw`` holds any non-finite value the caller recomputes it with
the GEMM path (see :func:`winograd`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..problem import ConvProblem
from . import _scratch
from . import winograd as _winograd
from . import winograd_gemm as _wg

#: The tuning space: the tile and the scratch budget of one chunk of tiles in MiB.
SPACE = {"tile": (2, 4), "chunk": (4, 16, 64)}
DEFAULTS = {"tile": 2, "chunk": 16}

# The heuristic's thresholds, from every variant timed against the GEMM path on ResNet-50's 3x3 layers at
# batch 8 (2-core Intel Xeon with AVX-512, OpenBLAS): F(4x4) won with 1568 and 392 tiles (64 and 128 channels;
# 0.69x and 0.73x the GEMM path's time) and lost with 128 and 32 (256 and 512 channels), where each of the 36
# products reduces over too few tiles for BLAS to run near its roof; F(2x2) won nowhere by more than 5%.
MIN_TILES = 256
# A 4 MiB chunk keeps the transforms in cache but shortens the products' reductions: it won on 64 channels
# (113 tiles per chunk), a whole-batch chunk on 128 (a 4 MiB chunk would hold 56).
SMALL_CHUNK_MIN_TILES = 100


def pays(problem: ConvProblem) -> bool:
    """Whether the heuristic takes F(4x4) for this weight gradient (see :data:`MIN_TILES`)."""
    return _winograd.supports_3x3(problem) and problem.n * math.prod(_wg.tiles(problem, 4)) >= MIN_TILES


def heuristic_params(problem: ConvProblem) -> dict[str, int]:
    """F(4x4), in 4 MiB chunks where they still hold :data:`SMALL_CHUNK_MIN_TILES` tiles, else whole batches."""
    small = chunk_tiles(problem, 4, SPACE["chunk"][0] * 2**20) >= SMALL_CHUNK_MIN_TILES
    return {"tile": 4, "chunk": SPACE["chunk"][0] if small else SPACE["chunk"][-1]}


def chunk_tiles(problem: ConvProblem, m: int, budget_bytes: int) -> int:
    """Tiles per chunk so that its scratch, ``a*a*T*(2C + 2K)`` values, fits ``budget_bytes``; at least one
    row of tiles."""
    a = m + 2
    per_tile = a * a * 2 * (problem.c + problem.k) * max(np.dtype(problem.dtype).itemsize, 4)
    return max(_wg.tiles(problem, m)[1], budget_bytes // per_tile)


def winograd(problem: ConvProblem, x: np.ndarray, dy: np.ndarray, tile: int, chunk: int) -> np.ndarray | None:
    """``dw (K, C/G, 3, 3)`` by F(tile x tile, 3x3) transposed, in chunks of at most ``chunk`` MiB of scratch;
    None when the result is not finite (the caller recomputes it with a strategy that places NaN and Inf
    exactly)."""
    m, a = tile, tile + 2
    n, c, k, g, cg, kg = problem.n, problem.c, problem.k, problem.groups, problem.cg, problem.kg
    th, tw = _wg.tiles(problem, m)
    kron = _wg.matrices(m, x.dtype)[1]
    kbt, kat = _wg.kron_transforms(m, x.dtype)
    ka = np.ascontiguousarray(kat.T)                                            # kron(A, A): (a*a x m*m)
    xp = _wg.padded_channels_last(problem, x, m * th + 2, m * tw + 2)
    dyp = _padded_gradient(problem, dy, m * th, m * tw)
    syn, syh, syw, syk = dyp.strides
    acc = np.zeros((a * a, g, kg, cg), x.dtype)
    part = _scratch.empty("wgw_part", acc.shape, x.dtype)
    for n0, n1, t0, t1 in _wg.chunks(n, th, tw, chunk_tiles(problem, m, chunk * 2**20)):
        nb, tb = n1 - n0, t1 - t0
        t = nb * tb * tw
        buf1 = _scratch.empty("wgw_1", (a * a * t * c,), x.dtype)
        buf2 = _scratch.empty("wgw_2", (a * a * t * max(c, k),), x.dtype)
        v = _wg.input_transform(xp[n0:n1, m * t0:], m, tb, tw, kbt, buf1, buf2)   # the forward's V
        e = _transform_gradient(dyp[n0:n1, m * t0:m * t1], (syh, syw, syn, m * syh, m * syw, syk),
                                (m, m, nb, tb, tw, k), ka, buf2)
        np.matmul(e.reshape(a * a, t, g, kg).transpose(0, 2, 3, 1), v.reshape(a * a, t, g, cg).transpose(0, 2, 1, 3),
                  out=part)
        acc += part
    dw = np.matmul(kron.T, acc.reshape(a * a, k * cg))                           # Gt M G: (9, K*C/G)
    if not np.isfinite(dw).all():
        return None
    return np.ascontiguousarray(dw.reshape(3, 3, k, cg).transpose(2, 3, 0, 1))


def _padded_gradient(problem: ConvProblem, dy: np.ndarray, hp: int, wp: int) -> np.ndarray:
    """``dy`` as ``(N, hp, wp, K)`` (scratch), zero beyond ``P`` and ``Q``."""
    n, k, p, q = dy.shape
    out = _scratch.empty("wgw_dy", (n, hp, wp, k), dy.dtype)
    out[:, p:] = 0
    out[:, :p, q:] = 0
    np.copyto(out[:, :p, :q], dy.transpose(0, 2, 3, 1))
    return out


def _transform_gradient(dyp: np.ndarray, strides: tuple[int, ...], shape: tuple[int, ...], ka: np.ndarray,
                        buf: np.ndarray) -> np.ndarray:
    """``E = A dy At`` of the chunk's ``m x m`` blocks of ``dy`` by one GEMM with ``ka = kron(A, A)``:
    ``(a, a, T*K)`` in a scratch buffer."""
    m, k = shape[0], shape[-1]
    a = m + 2
    t = shape[2] * shape[3] * shape[4]
    blocks = _scratch.empty("wgw_blocks", shape, dyp.dtype)
    np.copyto(blocks, as_strided(dyp, shape, strides))
    e = buf[:a * a * t * k].reshape(a * a, t * k)
    np.matmul(ka, blocks.reshape(m * m, t * k), out=e)                          # A dy At
    return e.reshape(a, a, t * k)
