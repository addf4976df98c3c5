"""Direct convolution (``kernels/direct.cu``): output tiles over a shared-memory input window with its halo.

The kernel's window has a fixed size per parameter point (``window``); this module picks, per problem, the
output tile and how many filter taps one window covers so that every stride, dilation and filter size fits.
Best for depthwise and other few-channels-per-group convolutions, where a GEMM has nothing to reuse.
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from .executor import Executor
from .source import ACC_BYTES, SIMT_DTYPES, fits_smem
from .spills import spill_free

KERNEL, FUNC = "direct", "direct_conv"

#: Tunables of ``kernels/direct.cu``: threads (BQ x BP), outputs per thread along Q (QPT), output channels per
#: block (KPT), input channels per window (CB), and the window's slack for the filter (HALO) and stride (SX).
SPACE: dict[str, list[int]] = {
    "BQ": [8, 32],
    "BP": [2, 4, 8],
    "QPT": [1, 2, 4],
    "KPT": [1, 2, 4],
    "CB": [1, 4],
    "HALO": [2, 6],
    "SX": [1, 2],
}
DEFAULTS: dict[str, int] = {"BQ": 32, "BP": 4, "QPT": 1, "KPT": 1, "CB": 1, "HALO": 2, "SX": 1}



def window(params: Params) -> tuple[int, int, int]:
    """(rows, columns, row pitch) of the shared-memory window, as ``DIRECT_XH/XW/PITCH`` in the kernel."""
    rows = (params["BP"] - 1) * params["SX"] + params["HALO"] + 1
    cols = (params["BQ"] * params["QPT"] - 1) * params["SX"] + params["HALO"] + 1
    return rows, cols, cols | 1


def smem_bytes(params: Params, dtype: str) -> int:
    """Static shared memory of the kernel for ``dtype``."""
    rows, _, pitch = window(params)
    return params["CB"] * rows * pitch * ACC_BYTES[dtype]


def _fits_smem(params: Params, problem: ConvProblem | None) -> bool:
    return fits_smem(smem_bytes, params, problem)


def _threads_ok(params: Params, problem: ConvProblem | None) -> bool:
    return 32 <= params["BQ"] * params["BP"] <= 1024


def _registers_ok(params: Params, problem: ConvProblem | None) -> bool:
    # Accumulators per thread: the kernel is load-bound beyond 4. Four staged channels with several output
    # channels per thread spill (ptxas -v, sm_90: 58 of the 177 such points, at 40-64 registers, 8-16 bytes;
    # no other point spilled): the KPT weight pointers and loads of each staged channel stay live over its taps.
    # sm_80 spills 153 more points (4-40 bytes at 32-80 registers: 65 float64, 44 each in float16 and float32,
    # 123 with several output channels per thread) that no rule on these tunables separates from their
    # neighbours: they are measured, in .spills.
    return params["KPT"] * params["QPT"] <= 4 and (params["CB"] == 1 or params["KPT"] == 1)


def _useful(params: Params, problem: ConvProblem | None) -> bool:
    """Skip points that cannot help a problem: more channels per block than a group has, or per window than
    a group has."""
    if problem is None:
        return True
    return params["KPT"] <= max(1, problem.kg) * 2 - 1 and params["CB"] <= max(1, problem.cg) * 2 - 1


def fit(window_len: int, tile_max: int, stride: int, dilation: int, taps: int) -> tuple[int, int]:
    """(output tile, taps per window) along one dimension, with footprint ``(tile-1)*stride + (chunk-1)*dilation
    + 1 <= window_len``: the whole tile with all taps when it fits, else a smaller tile with all taps, else a
    tile of about half the window with the taps split into chunks."""
    ext = (taps - 1) * dilation + 1
    if (tile_max - 1) * stride + ext <= window_len:
        return tile_max, taps
    if ext <= window_len:
        return (window_len - ext) // stride + 1, taps
    tile = min(tile_max, max(1, (window_len // 2 - 1) // stride + 1))
    return tile, max(1, (window_len - (tile - 1) * stride - 1) // dilation + 1)


def launch_geometry(problem: ConvProblem, params: Params) -> dict[str, int]:
    """Tile sizes, tap chunks and grid for one problem (ints the kernel takes as arguments)."""
    rows, cols, _ = window(params)
    tile_p, chunk_r = fit(rows, params["BP"], problem.stride[0], problem.dilation[0], problem.r)
    tile_q, chunk_s = fit(cols, params["BQ"] * params["QPT"], problem.stride[1], problem.dilation[1], problem.s)
    tile_p, tile_q = min(tile_p, problem.p), min(tile_q, problem.q)
    tiles_p, tiles_q = -(-problem.p // tile_p), -(-problem.q // tile_q)
    kblocks = -(-problem.kg // params["KPT"])
    return dict(tile_p=tile_p, tile_q=tile_q, tiles_p=tiles_p, tiles_q=tiles_q, chunk_r=chunk_r, chunk_s=chunk_s,
                kblocks=kblocks)


MAX_BATCH_PER_LAUNCH = 65535  # gridDim.z


def run(ex: Executor, problem: ConvProblem, params: Params, x: Any, w: Any, bias: Any, y: Any) -> None:
    """Fill ``y (N, K, P, Q)`` with the convolution of ``x (N, C, H, W)`` and ``w (K, C/g, R, S)`` plus ``bias``."""
    geo = launch_geometry(problem, params)
    block = (params["BQ"], params["BP"], 1)
    t, _, l, _ = problem.padding
    for n0 in range(0, problem.n, MAX_BATCH_PER_LAUNCH):
        nb = min(MAX_BATCH_PER_LAUNCH, problem.n - n0)
        xs, ys = (x, y) if nb == problem.n else (x[n0:n0 + nb], y[n0:n0 + nb])
        grid = (geo["tiles_p"] * geo["tiles_q"], problem.groups * geo["kblocks"], nb)
        args = [xs, w, ex.dummy(problem.dtype) if bias is None else bias, ys,
                nb, problem.c, problem.h, problem.w, problem.k, problem.p, problem.q, problem.r, problem.s,
                problem.stride[0], problem.stride[1], t, l, problem.dilation[0], problem.dilation[1],
                problem.groups, int(bias is not None),
                geo["tile_p"], geo["tile_q"], geo["tiles_q"], geo["chunk_r"], geo["chunk_s"]]
        ex.launch(KERNEL, FUNC, params, problem.dtype, grid, block, args)


def heuristic_params(problem: ConvProblem) -> dict[str, int]:
    """A point of the space for ``problem`` without tuning: a window sized for its stride and filter, a block
    about as wide as the output, several output channels per block when a group has them."""
    reach = max((problem.r - 1) * problem.dilation[0], (problem.s - 1) * problem.dilation[1])
    wide = problem.q > 16
    qpt = 2 if problem.q > (64 if wide else 8) else 1
    kpt = 1 if problem.kg == 1 else min(4 // qpt, 2 if problem.kg < 4 else 4)
    params = {
        "BQ": 32 if wide else 8,
        "BP": 2 if problem.p <= 2 else 4 if wide else 8,  # conv1d has one output row
        "QPT": qpt,
        "KPT": kpt,
        "CB": 4 if problem.cg >= 4 and kpt == 1 else 1,  # several output channels stage one (_registers_ok)
        "HALO": 2 if reach <= 2 else 6,
        "SX": 2 if max(problem.stride) >= 2 else 1,
    }
    return params if STRATEGY.valid(params, problem) else dict(DEFAULTS)


def _supports(problem: ConvProblem) -> bool:
    if problem.dtype not in SIMT_DTYPES:  # bfloat16 runs on the tensor cores only
        return False
    # gridDim.y = groups * ceil(Kg / KPT) <= K; tile indices and N*P*Q in int32.
    return problem.k <= 65535 and problem.p * problem.q < 2**31


STRATEGY = Strategy(
    name="direct",
    run=run,
    supports=_supports,
    requires="float16, float32 or float64; at most 65535 output channels and P*Q < 2**31",
    space=SPACE,
    constraints=(_threads_ok, _registers_ok, spill_free(KERNEL), _fits_smem, _useful),  # see .spills
    defaults=DEFAULTS,
)
