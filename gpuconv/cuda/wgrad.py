"""Weight gradient as an implicit GEMM with split-K (``kernels/wgrad.cu``), reduced in a fixed order.

Per group, ``dW (Kg x Cg*R*S) = dY (Kg x N*P*Q) @ cols^T`` with the columns of x gathered while loading. The
output is small and the reduction over ``N*P*Q`` long, so the reduction is split into ``SPLIT_K`` ranges that
run as separate blocks; their partial sums go to a float workspace and a second kernel adds them in split order
(deterministic: no atomics). ``SPLIT_K`` is a runtime argument of the same binary, so it costs no compilation.
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from .executor import MAX_GRID, Executor
from .occupancy import Device, best_split, current_device, variant_blocks_per_sm
from .source import ACC_BYTES, INT32_MAX, SIMT_DTYPES, fits_smem, thread_tile_threads
from .spills import spill_free

KERNEL, FUNC, REDUCE = "wgrad", "wgrad_split_k", "wgrad_reduce"
REDUCE_THREADS = 256  # WG_REDUCE_THREADS in wgrad.cu; the reduction is memory-bound, not tuned

#: Tunables: block tile BM (output channels) x BN (weight columns C/g*R*S) x BK (pixels per slice), thread tile
#: TM x TN (compile-time; 28 float32 points, as the input gradient's), and SPLIT_K, the number of reduction
#: ranges (a launch argument).
SPACE: dict[str, list[int]] = {"BM": [32, 64, 128], "BN": [32, 64, 128], "BK": [8], "TM": [4, 8], "TN": [4, 8],
                               "SPLIT_K": [1, 2, 4, 8, 16, 32]}
DEFAULTS: dict[str, int] = {"BM": 64, "BN": 64, "BK": 8, "TM": 4, "TN": 4, "SPLIT_K": 1}
TILE_PARAMS = ("BM", "BN", "BK", "TM", "TN")  # what the kernel is compiled with

threads = thread_tile_threads

#: Accumulator dtype of the partial sums.
ACC_DTYPES = {"float16": "float32", "float32": "float32", "float64": "float64"}


def smem_bytes(params: Params, dtype: str) -> int:
    """Static shared memory: two stages of A ``[BK][BM + 4]`` and B ``[BK][BN + 4]`` in ``ACC_T``."""
    return 2 * params["BK"] * (params["BM"] + params["BN"] + 8) * ACC_BYTES[dtype]


def _threads_ok(params: Params, problem: ConvProblem | None) -> bool:
    return 64 <= threads(params) <= 512


def _registers_ok(params: Params, problem: ConvProblem | None) -> bool:
    # As the forward implicit GEMM's: accumulators plus the next slice staged in registers.
    acc = params["TM"] * params["TN"]
    staged = (params["BM"] + params["BN"]) * params["BK"] // threads(params)
    wide = problem is None or problem.dtype == "float64"
    return 8 <= acc <= (32 if wide else 64) and staged <= 16


def _fits_smem(params: Params, problem: ConvProblem | None) -> bool:
    return fits_smem(smem_bytes, params, problem)


def _grid_ok(params: Params, problem: ConvProblem | None) -> bool:
    return problem is None or problem.groups * params["SPLIT_K"] <= MAX_GRID[2]


CONSTRAINTS = (_threads_ok, _registers_ok, spill_free(KERNEL), _fits_smem, _grid_ok)  # spills: see .spills


def chunk_of(problem: ConvProblem, params: Params) -> int:
    """Pixels per split: ``N*P*Q / SPLIT_K`` rounded up to whole slices."""
    npix = problem.n * problem.p * problem.q
    per = -(-npix // params["SPLIT_K"])
    return -(-per // params["BK"]) * params["BK"]


def run(ex: Executor, problem: ConvProblem, params: Params, x: Any, dy: Any, bias: Any, dw: Any) -> None:
    """Fill ``dw (K, C/g, R, S)`` with the weight gradient from ``x (N, C, H, W)`` and ``dy (N, K, P, Q)``."""
    pr = problem
    tiles = {k: params[k] for k in TILE_PARAMS}
    splits = params["SPLIT_K"]
    ncols = pr.cg * pr.r * pr.s
    total = pr.k * ncols
    partial = ex.empty((splits * total if splits > 1 else 1,), ACC_DTYPES[pr.dtype])  # one split stores dw directly
    t, _, l, _ = pr.padding
    grid = (-(-ncols // params["BN"]), -(-pr.kg // params["BM"]), pr.groups * splits)
    ex.launch(KERNEL, FUNC, tiles, pr.dtype, grid, (threads(params), 1, 1),
              [x, dy, dw, partial, pr.n, pr.c, pr.h, pr.w, pr.k, pr.p, pr.q, pr.r, pr.s, pr.stride[0], pr.stride[1],
               t, l, pr.dilation[0], pr.dilation[1], pr.groups, splits, chunk_of(pr, params)])
    if splits > 1:
        ex.launch(KERNEL, REDUCE, tiles, pr.dtype, (-(-total // REDUCE_THREADS), 1, 1), (REDUCE_THREADS, 1, 1),
                  [partial, dw, total, splits])


def _supports(problem: ConvProblem) -> bool:
    if problem.dtype not in SIMT_DTYPES:  # bfloat16 runs on the tensor cores only
        return False
    # Pixel and column indices are int32 (a split's range end may pass N*P*Q by up to SPLIT_K slices), as are
    # dw's (the partial sums' split offsets are 64-bit); channel tiles on gridDim.y, groups (times the split) on z.
    pr = problem
    return (pr.n * pr.p * pr.q + 4096 < INT32_MAX and pr.k * pr.reduction < INT32_MAX
            and pr.groups <= MAX_GRID[2] and -(-pr.kg // 32) <= MAX_GRID[1])


STRATEGY = Strategy(
    name="implicit_gemm",
    run=run,
    supports=_supports,
    requires=f"float16, float32 or float64; N*P*Q and K*C/groups*R*S below 2**31 and at most {MAX_GRID[2]} groups",
    space=SPACE,
    constraints=CONSTRAINTS,
    defaults=DEFAULTS,
)

# Preferred tiles, largest first: (BM, BN, BK, TM, TN).
_PREFERRED: tuple[tuple[int, int, int, int, int], ...] = (
    (128, 128, 8, 8, 8),
    (64, 128, 8, 4, 8),
    (128, 64, 8, 8, 4),
    (64, 64, 8, 4, 4),
    (32, 64, 8, 4, 4),
    (32, 32, 8, 4, 4),
)
#: Fewest pixels a split should reduce: below this its blocks spend more on the prologue and the partial
#: sums' round trip than on FMAs.
MIN_SPLIT_PIXELS = 512


def heuristic_params(problem: ConvProblem, device: Device | None = None) -> dict[str, int]:
    """The largest preferred tile that wastes at most half its rows and columns, then the split with the best wave
    efficiency on ``device`` (default: the current one; blocks per SM from ptxas' figures for the tile, see
    :func:`~gpuconv.cuda.occupancy.best_split`) among those leaving each range ``MIN_SPLIT_PIXELS`` pixels."""
    dev = device if device is not None else current_device()
    ncols, npix = problem.reduction, problem.n * problem.p * problem.q
    params = dict(DEFAULTS)
    for bm, bn, bk, tm, tn in _PREFERRED:
        cand = {"BM": bm, "BN": bn, "BK": bk, "TM": tm, "TN": tn, "SPLIT_K": 1}
        if not STRATEGY.valid(cand, problem) or (bm > 32 and problem.kg <= bm // 2) or (bn > 32 and ncols <= bn // 2):
            continue
        params = cand
        break
    tiles = -(-problem.kg // params["BM"]) * -(-ncols // params["BN"]) * problem.groups
    tile = {k: params[k] for k in TILE_PARAMS}
    per_sm = variant_blocks_per_sm(dev, KERNEL, FUNC, tile, problem.dtype, threads(params),
                                   smem_bytes(params, problem.dtype))
    splits = [s for s in SPACE["SPLIT_K"] if s == 1 or (npix // s >= MIN_SPLIT_PIXELS
                                                         and STRATEGY.valid({**params, "SPLIT_K": s}, problem))]
    params["SPLIT_K"] = best_split(tiles, splits, dev.sm_count, per_sm)[0]
    return params
