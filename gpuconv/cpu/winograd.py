"""Winograd F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5): stride-1 convolutions with 2.25x, 4x and 2.8x fewer multiplies.

The tunable ``tile`` picks the output tile: ``2`` runs F(2x2, 3x3) below, ``4`` runs F(4x4, 3x3) with every stage
a BLAS call (:mod:`gpuconv.cpu.winograd_gemm`), in chunks of at most ``chunk`` MiB of scratch; a 5x5 kernel
takes tile 2 only, on the BLAS path (36 multiplications per 2x2 outputs instead of 100). F(4x4)'s
float32 error is several times F(2x2)'s and its ratio to the tolerance (linear in the reduction length) is
largest with few channels: it is only offered with at least :data:`F4_MIN_CHANNELS` input channels per group
(:func:`f4_accurate`), where the measured error stays under half the tolerance.

:func:`prepare` keeps the filter transform of the last weights it saw (compared bit for bit on every call,
:class:`~gpuconv.cpu.winograd_gemm.FilterMemo`), so inference with fixed weights transforms them twice at most.

F(2x2): the padded input is cut into 4x4 tiles with step 2 (each yields a 2x2 block of output); per tile
``V = Bt d B``, per filter ``U = G g Gt``, then every one of the 16 transform positions is a GEMM
``V[pos] (N*tiles x C/G) @ U[pos] (C/G x K/G)`` -- one batched ``np.matmul`` over (position, group) --
and ``Y = At M A`` gives the output. The transforms only hold 0, +-1 and +-1/2: the tile transforms are
adds and subtracts of strided views, and the error stays that of a short sum, within the usual tolerance.

The work runs channels-last (NHWC). With 4x4 tiles at step 2, an NCHW transform is a strided op whose
inner loop is one row of tiles (14 elements on a 28x28 image), and NumPy's per-loop overhead dominates;
channels-last, every inner loop runs over at least ``C`` contiguous values. Layouts (TH x TW tiles):

* the padded input ``(N, 2*TH + 2, 2*TW + 2, C)``: one transposing copy of ``x`` with a zero border;
* ``V`` ``(N*TH*TW, 4, 4, C)``: all 16 positions of a tile side by side, so that each transform stage is
  three ufunc calls on runs of ``2C`` to ``8C`` values; position ``p``'s GEMM operand is the view
  ``V[:, p]``, rows ``16C`` apart, which BLAS reads in place;
* ``U`` ``(16, G, C/G, K/G)``: one small GEMM ``kron(G, G) @ w`` (9 taps -> 16 positions), a transposed view;
* ``M = V @ U`` ``(16, N*TH*TW, K)``; groups are strided views of ``V`` and ``M``;
* the output transform writes ``(N, 2*TH, 2*TW, K)`` (rows ``K + 16`` apart), copied once into the NCHW
  output, dropping the last row/column when ``P``/``Q`` is odd.

Positions are stored in the order ``(0, 3, 1, 2)`` along each axis (:data:`_ORDER`): ``Bt``'s rows 0 and 3
are both "this pair of columns minus the next pair", so one subtraction of two views of the input
computes them together.

Non-finite inputs: Winograd mixes every value of a tile into every transform position, so an Inf that
direct convolution confines to its receptive field turns into ``Inf - Inf = NaN`` across the tile. When
the result holds any non-finite value the problem is recomputed with im2col, which places NaN and Inf
exactly as PyTorch does (finite inputs take that path only if the transformed values overflow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..problem import ConvProblem
from ..strategy import Params
from . import _machine, _scratch
from . import im2col as _im2col
from . import winograd_gemm as _gemm

#: The tuning space: the output tile and, for F(4x4), the scratch budget of one chunk of tiles in MiB.
SPACE = {"tile": (2, 4), "chunk": (4, 16, 64)}
DEFAULTS = {"tile": 2, "chunk": 4}

# F(4x4)'s largest error reached 0.53 of the tolerance at 8 input channels per group (0.93 at 2), 0.46 at 16
# (``python -m benchmarks.winograd_error``, table in :mod:`gpuconv.cpu.winograd_gemm`; the same in float64).
F4_MIN_CHANNELS = 16

_ORDER = (0, 3, 1, 2)  # the transform position stored at each index of a tile axis

# U = G g Gt for all 3x3 filters at once: vec(U) = kron(G, G) vec(g), rows in the stored position order.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])[list(_ORDER)]
_KRON = {np.dtype(t): np.kron(_G, _G).astype(t) for t in (np.float32, np.float64)}  # (16, 9)


#: What :func:`supports` and :func:`supports_3x3` ask of a problem, in words (for the messages of forced strategies).
REQUIRES = ("a 3x3 kernel with at least 2 input channels per group or a 5x5 kernel with at least 4, stride 1 "
            "and dilation 1")
REQUIRES_3X3 = "a 3x3 kernel, stride 1, dilation 1 and at least 2 input channels per group"

#: The square kernels the forward pass has transforms for, and the output tiles offered for each.
TILES = {3: (2, 4), 5: (2,)}

# F(2x2, 5x5)'s largest float32 error against the float64 result of the same inputs (uniform in [-1, 1), 16
# filters, images 14x14 and 30x30 at batch 1 and 56x56 at batch 4; ``python -m benchmarks.winograd_error
# --kernel 5``) as a fraction of the tolerance: 0.62 at 2 input channels, 0.46 at 4, 0.30 at 8, 0.19 at 16,
# 0.17-0.18 at 32 and 64 (im2col: 0.05-0.13). From 4 on it stays within the bound F(4x4, 3x3) is held to.
F25_MIN_CHANNELS = 4


def supports(problem: ConvProblem) -> bool:
    """A 3x3 kernel with at least two input channels per group or a 5x5 one with :data:`F25_MIN_CHANNELS`,
    stride 1 and dilation 1.

    One input channel per group (depthwise) would make every GEMM an outer product of width one: the
    ``depthwise`` strategy's multiply-adds are the better path there, so Winograd does not claim it.
    """
    if problem.r != problem.s or problem.r not in TILES or (problem.stride, problem.dilation) != ((1, 1), (1, 1)):
        return False
    return problem.cg >= (F25_MIN_CHANNELS if problem.r == 5 else 2)


def supports_3x3(problem: ConvProblem) -> bool:
    """:func:`supports` for 3x3 kernels only (the weight gradient's transforms)."""
    return supports(problem) and problem.r == 3


def tile_offered(params: Params, problem: ConvProblem | None) -> bool:
    """Only the tiles of :data:`TILES` for the problem's kernel (5x5: F(2x2) only)."""
    return problem is None or problem.r not in TILES or params["tile"] in TILES[problem.r]


def f4_accurate(params: Params, problem: ConvProblem | None) -> bool:
    """F(4x4) only where its error stays well within the tolerance (see :data:`F4_MIN_CHANNELS`)."""
    return params["tile"] != 4 or problem is None or problem.cg >= F4_MIN_CHANNELS


def chunk_matters(params: Params, problem: ConvProblem | None) -> bool:
    """One chunk size for F(2x2, 3x3), which is not chunked. (The chunked ones keep every size even where a
    smaller one already holds all tiles: the duplicates are cheap, and each variant stays testable on small
    problems.)"""
    return _chunked(params["tile"], problem) or params["chunk"] == SPACE["chunk"][0]


def _chunked(tile: int, problem: ConvProblem | None) -> bool:
    """Whether the tile runs on :mod:`gpuconv.cpu.winograd_gemm` (in chunks), not on the F(2x2, 3x3) adds below."""
    return tile == 4 or (problem is not None and problem.r == 5)


CONSTRAINTS = (tile_offered, f4_accurate, chunk_matters)


#: ``winograd_rules.json``: ``{"schema": 2, "profiles": [...]}``, one profile per processor the grid was timed on.
RULES_PATH = Path(__file__).with_name("winograd_rules.json")
RULES_SCHEMA = 2


def same_processor(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two processor descriptions (``vendor``, ``family``, ``model_number``) name the same part."""
    keys = ("vendor", "family", "model_number")
    return all(a.get(k) is not None for k in keys) and all(a.get(k) == b.get(k) for k in keys)


def select_profile(profiles: Sequence[Mapping[str, Any]], cpu: Mapping[str, Any]) -> Mapping[str, Any]:
    """The profile timed on ``cpu`` (same vendor, family and model number), else the first of the same vendor,
    else the first: where Winograd pays moves with the processor (on a 2-core AMD EPYC, family 25 model 17,
    im2col beat F(4x4) on 32-channel 128 x 128 layers that it loses on a 2-core Intel Xeon, family 6 model 167).

    Raises:
        ValueError: no profile.
    """
    if not profiles:
        raise ValueError("winograd rules: no profile")
    for match in (lambda m: same_processor(m, cpu), lambda m: m.get("vendor") is not None
                  and m.get("vendor") == cpu.get("vendor")):
        for profile in profiles:
            if match(profile["machine"]["cpu"]):
                return profile
    return profiles[0]


def _load_rules() -> Mapping[str, Any]:
    with open(RULES_PATH) as f:
        data = json.load(f)
    if data.get("schema") != RULES_SCHEMA:
        raise ValueError(f"{RULES_PATH}: schema must be {RULES_SCHEMA}, got {data.get('schema')!r}")
    return select_profile(data["profiles"], _machine.cpu_identity())


#: The profile of ``winograd_rules.json`` for this processor (:func:`select_profile`): the grid of 3x3 and 5x5
#: layers ``python -m benchmarks.winograd_grid`` timed, the machine and its load, and the rules fitted to it.
PROFILE = _load_rules()

#: Where each tile pays against the GEMM path on this processor (``PROFILE["rules"]``): ``{"f4": [[channels,
#: min_tiles], ...], "f2": [...], "chunk"}``, per channel count of the grid the tiles (over the whole batch) from
#: which the tile is taken (see :func:`min_tiles`).
RULES = PROFILE["rules"]


def min_tiles(table: Sequence[Sequence[int]], channels: int) -> float:
    """The threshold of ``table`` (``[[channels, min_tiles], ...]``, channels increasing) for a layer of ``channels``
    input channels per group: the entry of the largest listed channel count at most ``channels``; infinite below
    the first.

    Example:
        >>> min_tiles([[16, 10**9], [32, 392], [256, 49]], 128)
        392
    """
    found: float = math.inf
    for c, tiles in table:
        if channels >= c:
            found = tiles
    return found


#: Where F(2x2, 5x5) beats im2col: ``{"min_tiles", "min_channels", "chunk"}``, fitted by the same command to a grid
#: of 5x5 layers (``rules["f25"]`` of the profile; on a quiet 2-core Intel Xeon, against im2col in 8 MiB column
#: chunks, it won from 32 channels and 196 tiles).
F25_RULE = RULES["f25"]


def preferred_tile(problem: ConvProblem) -> int | None:
    """The tile the rules pick for ``problem`` (:data:`RULES` for 3x3: 4 first, then 2; :data:`F25_RULE` for
    5x5), or None where im2col/direct is faster."""
    if supports(problem) and problem.r == 5:
        count = problem.n * math.prod(_gemm.tiles(problem, 2))
        return 2 if problem.cg >= F25_RULE["min_channels"] and count >= F25_RULE["min_tiles"] else None
    if not supports_3x3(problem):
        return None
    for tile, table in ((4, RULES["f4"]), (2, RULES["f2"])):
        count = problem.n * math.prod(_gemm.tiles(problem, tile))
        accurate = f4_accurate({"tile": tile}, problem)
        if accurate and count >= min_tiles(table, problem.cg):
            return tile
    return None


def heuristic_params(problem: ConvProblem) -> dict[str, int]:
    """The tile and chunk used without tuning (see :data:`RULES` and :data:`F25_RULE`)."""
    if problem.r == 5:
        return {"tile": 2, "chunk": F25_RULE["chunk"]}
    if preferred_tile(problem) == 4:
        return {"tile": 4, "chunk": RULES["chunk"]}
    return dict(DEFAULTS)


def winograd(problem: ConvProblem, x: np.ndarray, w: np.ndarray, tile: int = 2, chunk: int = 4) -> np.ndarray:
    """Convolve by Winograd F(tile x tile, r x r).

    Args:
        problem: the validated problem (see :func:`supports`).
        x: ``(N, C, H, W)`` in the compute dtype (float32 or float64), any strides.
        w: ``(K, C/G, 3, 3)`` in the compute dtype, any strides.
        tile: the output tile, one of :data:`TILES` for the kernel.
        chunk: F(4x4)'s scratch budget per chunk of tiles, in MiB.

    Returns:
        ``(N, K, P, Q)`` in the compute dtype, C-contiguous.
    """
    if _chunked(tile, problem):
        u = _gemm.filter_transform(problem, w, tile, True)
    else:
        u = _filter_transform(problem, w, scratch=True)
    return _run(problem, x, w, u, tile, chunk)


def prepare(problem: ConvProblem, tile: int = 2, chunk: int = 4) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A runner ``(x, w) -> y`` of :func:`winograd` that transforms the filters once while ``w`` is unchanged."""
    memo = _gemm.FilterMemo(problem, tile, None if _chunked(tile, problem) else _filter_transform)
    return lambda x, w: _run(problem, x, w, memo(w), tile, chunk)


def _run(problem: ConvProblem, x: np.ndarray, w: np.ndarray, u: np.ndarray, tile: int, chunk: int) -> np.ndarray:
    y = _gemm.winograd(problem, x, w, tile, chunk * 2**20, u) if _chunked(tile, problem) else _f2x2(problem, x, u)
    return _im2col.im2col(problem, x, w) if y is None else y


def _f2x2(problem: ConvProblem, x: np.ndarray, u: np.ndarray) -> np.ndarray | None:
    """F(2x2, 3x3) with the filter transform ``u`` (:func:`_filter_transform`); None when the result is not finite."""
    n, k, g, cg, kg = problem.n, problem.k, problem.groups, problem.cg, problem.kg
    th, tw = (problem.p + 1) // 2, (problem.q + 1) // 2
    rows = n * th * tw
    v = _input_transform(problem, x, th, tw).reshape(rows, 16, g, cg)
    m = _scratch.empty("winograd_m", (16, rows, k), x.dtype)
    # Per position and group: (N*TH*TW x C/G) @ (C/G x K/G), operands and result read/written in place.
    np.matmul(v.transpose(1, 2, 0, 3), u, out=m.reshape(16, rows, g, kg).transpose(0, 2, 1, 3))
    # Channels-last rows K + 16 apart: with a power-of-two K and P*Q, NCHW written (or read) K-innermost hits
    # one cache set over and over (5-8x slower at 32x32); this pitch keeps both the transform and the copy fast.
    yt = _scratch.empty("winograd_y", (n, th, 2, tw, 2, k + 16), x.dtype)[..., :k]   # N, 2*TH, 2*TW, K
    _output_transform(m.reshape(4, 4, n, th, tw, k), yt)
    if not np.isfinite(yt.sum()):
        return None
    y = np.empty(problem.out_shape4, x.dtype)
    np.copyto(y, yt.reshape(n, 2 * th, 2 * tw, k)[:, :problem.p, :problem.q].transpose(0, 3, 1, 2))
    return y


def _padded_channels_last(problem: ConvProblem, x: np.ndarray, th: int, tw: int) -> np.ndarray:
    """``x`` as ``(N, 2*TH + 2, 2*TW + 2, C)`` (scratch): zero border, one extra zero row/column when P/Q is odd.

    :func:`gpuconv.cpu._views.pad` does the same for NCHW; this copy also moves the channels last.
    """
    n, c, h, w = x.shape
    t, l = problem.padding[0], problem.padding[2]
    xp = _scratch.empty("winograd_pad", (n, 2 * th + 2, 2 * tw + 2, c), x.dtype)
    xp[:, :t] = 0
    xp[:, t + h:] = 0
    xp[:, t:t + h, :l] = 0
    xp[:, t:t + h, l + w:] = 0
    np.copyto(xp[:, t:t + h, l:l + w], x.transpose(0, 2, 3, 1))
    return xp


def _input_transform(problem: ConvProblem, x: np.ndarray, th: int, tw: int) -> np.ndarray:
    """``V = Bt d B`` for every 4x4 tile (step 2) of the padded input, as ``(N, TH, TW, 4, 4, C)``.

    ``Bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]``, rows stored in :data:`_ORDER`.
    Seen in pairs of columns ``(2t, 2t + 1)``, rows 0 and 3 are ``pair t - pair t+1``; rows 1 and 2 are
    ``2t+1 + 2t+2`` and ``2t+2 - 2t+1``. First along columns, then the same along rows.
    """
    n, c = problem.n, problem.c
    xp = _padded_channels_last(problem, x, th, tw)
    hp = xp.shape[1]
    pairs = xp.reshape(n, hp, tw + 1, 2, c)                                   # column pairs
    cols = _scratch.empty("winograd_cols", (n, hp, tw, 4, c), x.dtype)
    _pair_transform(pairs, cols, axis=2)
    v = _scratch.empty("winograd_v", (n, th, tw, 4, 4, c), x.dtype)
    _pair_transform(cols.reshape(n, th + 1, 2, tw, 4, c), v.transpose(0, 1, 3, 2, 4, 5), axis=1)
    return v


def _pair_transform(pairs: np.ndarray, out: np.ndarray, axis: int) -> None:
    """``Bt`` along ``axis`` of ``pairs`` (its pair index; the next axis holds the pair) into ``out``.

    ``pairs`` has ``T + 1`` pairs along ``axis``; ``out`` has ``T`` tiles there and the 4 stored positions
    on the next axis.
    """
    lo = (slice(None),) * axis
    this, nxt = pairs[lo + (slice(None, -1),)], pairs[lo + (slice(1, None),)]
    np.subtract(this, nxt, out=out[lo + (slice(None), slice(0, 2))])          # positions 0 and 3
    np.add(this[lo + (slice(None), 1)], nxt[lo + (slice(None), 0)], out=out[lo + (slice(None), 2)])   # 1
    np.subtract(nxt[lo + (slice(None), 0)], this[lo + (slice(None), 1)], out=out[lo + (slice(None), 3)])  # 2


def _filter_transform(problem: ConvProblem, w: np.ndarray, scratch: bool = False) -> np.ndarray:
    """``U = G g Gt`` for every filter, as a ``(16, G, C/G, K/G)`` view: each position's GEMM operand, per group;
    in a scratch buffer when ``scratch``, else a fresh array (what the memo keeps).

    Computed as ``(16, K * C/G)`` from the taps of ``w`` in their own order (a transposed operand that BLAS
    reads in place) and returned transposed, which BLAS also takes as it is; gathering ``w`` into
    ``(9, G, C/G, K/G)`` first would cost several times the product on large layers.
    """
    g, cg, kg = problem.groups, problem.cg, problem.kg
    u = _scratch.empty("winograd_u", (16, g, kg, cg), w.dtype) if scratch else np.empty((16, g, kg, cg), w.dtype)
    np.matmul(_KRON[w.dtype], w.reshape(-1, 9).T, out=u.reshape(16, -1))
    return u.transpose(0, 1, 3, 2)


def _output_transform(m: np.ndarray, yt: np.ndarray) -> None:
    """``Y = At M A`` with ``At = [[1, 1, 1, 0], [0, 1, -1, -1]]``, from ``m`` ``(4, 4, N, TH, TW, K)`` (positions
    in :data:`_ORDER`) into ``yt`` ``(N, TH, 2, TW, 2, K)``: along rows into a scratch, then along columns."""
    # In stored order (0, 3, 1, 2): out0 = m[0] + m[2] + m[3], out1 = m[2] - m[3] - m[1].
    s = _scratch.empty("winograd_s", (2, *m.shape[1:]), m.dtype)            # 2, 4, N, TH, TW, K
    np.add(m[0], m[2], out=s[0])
    s[0] += m[3]
    np.subtract(m[2], m[3], out=s[1])
    s[1] -= m[1]
    out = yt.transpose(4, 2, 0, 1, 3, 5)                                     # 2 (col), 2 (row), N, TH, TW, K
    np.add(s[:, 0], s[:, 2], out=out[0])
    out[0] += s[:, 3]
    np.subtract(s[:, 2], s[:, 3], out=out[1])
    out[1] -= s[:, 1]
