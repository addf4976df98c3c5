"""Implicit GEMM (``kernels/implicit_gemm.cu``): a register-tiled GEMM whose B operand is gathered from the input.

Per group, ``Y (Kg x N*P*Q) = W (Kg x Cg*R*S) @ cols``; the kernel computes each ``cols`` element's input
address while loading it (zero in the padding), so unlike im2col it needs no workspace. Any sizes, strides,
dilations and groups (groups run on ``gridDim.z``). With ``SPLIT_K`` > 1 the reduction is cut into that many
ranges run by separate blocks (for layers with few output tiles and long reductions); their partial sums go
to a float workspace and a second kernel adds them in split order with the bias (deterministic: no atomics).
``SPLIT_K`` is a launch argument of the same binary, so it costs no compilation.
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from .executor import MAX_GRID, Executor
from .occupancy import Device, best_split, current_device, variant_blocks_per_sm
from .source import ACC_BYTES, INT32_MAX, ITEM_BYTES, SIMT_DTYPES, fits_smem, thread_tile_threads
from .spills import spill_free

KERNEL, FUNC, REDUCE = "implicit_gemm", "implicit_gemm_conv", "implicit_gemm_reduce"
REDUCE_THREADS = 256  # IG_REDUCE_THREADS in implicit_gemm.cu; the reduction is memory-bound, not tuned

#: Tunables: block tile BM (output channels) x BN (output pixels) x BK (reduction slice) and thread tile TM x TN
#: (compile-time), and SPLIT_K, the number of reduction ranges (a launch argument).
SPACE: dict[str, list[int]] = {
    "BM": [32, 64, 128],
    "BN": [32, 64, 128],
    "BK": [8, 16, 32],
    "TM": [4, 8],
    "TN": [4, 8],
    "SPLIT_K": [1, 2, 3, 4, 6, 8],
}
#: 128 x 64 tiles of 4 x 8 per thread: 256 threads. The defaults must be a point in every dtype, and the
#: 128 x 128 tile of 8 x 8 (the heuristic's first choice in float16 and float32) spills 8 bytes at 254 registers
#: in float64 on sm_80, which leaves no 128 x 128 tile in every dtype; of the 128 x 64 and 64 x 128 ones, this
#: needs the fewest float32 registers on the worse architecture (ptxas report: 123 on sm_90, 120 on sm_80).
DEFAULTS: dict[str, int] = {"BM": 128, "BN": 64, "BK": 8, "TM": 4, "TN": 8, "SPLIT_K": 1}
TILE_PARAMS = ("BM", "BN", "BK", "TM", "TN")  # what the kernel is compiled with

#: Accumulator dtype of the partial sums.
ACC_DTYPES = {"float16": "float32", "float32": "float32", "float64": "float64"}

threads = thread_tile_threads


def tiles(params: Params) -> dict[str, int]:
    """The compile-time tunables of ``params`` (without the launch argument SPLIT_K)."""
    return {k: params[k] for k in TILE_PARAMS}


def smem_bytes(params: Params, dtype: str) -> int:
    """Static shared memory: two stages of A ``[BK][BM]`` and B ``[BK][BN]`` in ``ACC_T``."""
    return 2 * params["BK"] * (params["BM"] + params["BN"]) * ACC_BYTES[dtype]


def _dtypes(problem: ConvProblem | None) -> tuple[str, ...]:
    return (problem.dtype,) if problem is not None else tuple(ITEM_BYTES)  # without a problem: every dtype


def _threads_ok(params: Params, problem: ConvProblem | None) -> bool:
    # 512 threads leave 128 registers a thread, and every such tile spilled (ptxas -v over the space).
    return 64 <= threads(params) <= 256


def _fits_smem(params: Params, problem: ConvProblem | None) -> bool:
    return fits_smem(smem_bytes, params, problem)


def staged_words(params: Params, dtype: str) -> int:
    """32-bit registers one thread holds for the next slice while the current one is multiplied."""
    return (params["BM"] + params["BN"]) * params["BK"] // threads(params) * ACC_BYTES[dtype] // 4


def _registers_ok(params: Params, problem: ConvProblem | None) -> bool:
    # Accumulators and the staged next slice live through the whole loop (in 32-bit registers: a double takes
    # two). ptxas -v over the whole space (sm_90): every tile staging more than 32 words spilled, and 8x8
    # accumulators only fit beside at most 16 (tests/test_cuda_spills.py checks every point of the space).
    for dtype in _dtypes(problem):
        acc = params["TM"] * params["TN"] * ACC_BYTES[dtype] // 4
        staged = staged_words(params, dtype)
        if staged > 32 or (acc >= 64 and staged > 16):
            return False
        # 4x4 tiles of 256 threads: ptxas keeps them at 128 registers and spilled from 16 staged words on.
        if threads(params) == 256 and params["TM"] * params["TN"] == 16 and staged >= 16:
            return False
    return True


def _split_ok(params: Params, problem: ConvProblem | None) -> bool:
    # Every split gets at least one slice, and groups times splits fit on gridDim.z.
    if problem is None:
        return True
    slices = -(-problem.reduction // params["BK"])
    return params["SPLIT_K"] <= slices and problem.groups * params["SPLIT_K"] <= MAX_GRID[2]


CONSTRAINTS = (_threads_ok, _fits_smem, _registers_ok, spill_free(KERNEL), _split_ok)  # spills: see .spills


def images_per_chunk(problem: ConvProblem) -> int:
    """Images per launch: the kernel's offsets into x and y are 32-bit within a launch."""
    return max(1, min(problem.n, INT32_MAX // (problem.c * problem.h * problem.w),
                      INT32_MAX // (problem.k * problem.p * problem.q)))


def run(ex: Executor, problem: ConvProblem, params: Params, x: Any, w: Any, bias: Any, y: Any) -> None:
    """Fill ``y (N, K, P, Q)`` with the convolution of ``x (N, C, H, W)`` and ``w (K, C/g, R, S)`` plus ``bias``."""
    pr = problem
    splits = params["SPLIT_K"]
    t, _, l, _ = pr.padding
    chunk = images_per_chunk(pr)
    per_image = pr.k * pr.p * pr.q
    partial = ex.empty((splits * chunk * per_image if splits > 1 else 1,), ACC_DTYPES[pr.dtype])
    for n0 in range(0, pr.n, chunk):
        nc = min(chunk, pr.n - n0)
        xc, yc = x[n0:n0 + nc], y[n0:n0 + nc]
        grid = (-(-nc * pr.p * pr.q // params["BN"]), -(-pr.kg // params["BM"]), pr.groups * splits)
        args = [xc, w, w if bias is None else bias, yc, partial,
                nc, pr.c, pr.h, pr.w, pr.k, pr.p, pr.q, pr.r, pr.s,
                pr.stride[0], pr.stride[1], t, l, pr.dilation[0], pr.dilation[1],
                pr.groups, int(bias is not None), splits]
        ex.launch(KERNEL, FUNC, tiles(params), pr.dtype, grid, (threads(params), 1, 1), args)
        if splits > 1:
            total = nc * per_image
            ex.launch(KERNEL, REDUCE, tiles(params), pr.dtype, (-(-total // REDUCE_THREADS), 1, 1),
                      (REDUCE_THREADS, 1, 1), [partial, w if bias is None else bias, yc, total, pr.k, pr.p * pr.q,
                                               splits, int(bias is not None)])


def _supports(problem: ConvProblem) -> bool:
    if problem.dtype not in SIMT_DTYPES:  # bfloat16 runs on the tensor cores only
        return False
    # Offsets within one image of x and of y are int32 (launches are chunked by image), so are the column and
    # reduction indices; groups (times the split) run on gridDim.z, channel tiles on y.
    pr = problem
    return (pr.c * pr.h * pr.w + 64 < INT32_MAX and pr.k * pr.p * pr.q < INT32_MAX
            and pr.reduction + 64 < INT32_MAX and pr.groups <= MAX_GRID[2] and -(-pr.kg // 32) <= MAX_GRID[1])


STRATEGY = Strategy(
    name="implicit_gemm",
    run=run,
    supports=_supports,
    requires=f"float16, float32 or float64; C*H*W, K*P*Q and C/groups*R*S below 2**31 and at most {MAX_GRID[2]} groups",
    space=SPACE,
    constraints=CONSTRAINTS,
    defaults=DEFAULTS,
)

# Preferred points, largest tile first: (BM, BN, BK, TM, TN). Large tiles reuse each staged value more;
# small ones keep enough blocks in flight when the GEMM is small. A point that spills in a dtype is skipped
# there (STRATEGY.valid), so each such size is followed by the tile of that size with the fewest registers that
# does not spill on sm_80 and sm_90 in float32 (ptxas report, sm_90/sm_80): 64 x 64 x 16 of 4 x 4 spills on
# sm_80 -> 64 x 64 x 8 of 4 x 8 (96/97); 32 x 64 x 32 of 4 x 4 on sm_80 -> 32 x 64 x 8 of 4 x 4 (79/77);
# 64 x 32 x 32 of 4 x 4 on sm_90 -> 64 x 32 x 8 of 4 x 4 (72/72).
_PREFERRED: tuple[tuple[int, int, int, int, int], ...] = (
    (128, 128, 8, 8, 8),
    (128, 64, 16, 8, 4),
    (64, 128, 16, 4, 8),
    (64, 64, 16, 4, 4),
    (64, 64, 8, 4, 8),
    (32, 64, 32, 4, 4),
    (32, 64, 8, 4, 4),
    (64, 32, 32, 4, 4),
    (64, 32, 8, 4, 4),
    (32, 32, 32, 4, 4),
)
#: A tile whose wave efficiency times the share of its outputs that are real reaches this is taken; below it
#: the next smaller tile is tried, and the best seen wins when none does.
GOOD_ENOUGH = 0.75
#: Fewest reduction elements (of C/groups*R*S) one split range sums: each range writes and the reduction reads
#: back a float per output (8 bytes), which costs about 160 FMAs at an H100's 20 FMAs per byte of bandwidth, so
#: shorter ranges spend more on the round trip than they gain (the wave model below does not count it).
MIN_SPLIT_REDUCTION = 512


def heuristic_params(problem: ConvProblem, device: Device | None = None) -> dict[str, int]:
    """A point of the space for ``problem`` on ``device`` (default: the current one) without tuning.

    For each preferred tile, largest first (skipping tiles that waste more than half their rows on missing
    output channels), blocks per SM come from ptxas' registers and shared memory for the tile
    (:func:`~gpuconv.cuda.occupancy.variant_blocks_per_sm`) and the split from the wave efficiency
    (:func:`~gpuconv.cuda.occupancy.best_split`, each range at least ``MIN_SPLIT_REDUCTION`` long). The run time
    of a tile goes as ``1 / (efficiency * fill)`` (``fill``: the share of computed outputs that are real), so the
    first tile reaching :data:`GOOD_ENOUGH` is taken (larger tiles reuse each staged value more), else the
    highest score.
    """
    dev = device if device is not None else current_device()
    ncols = problem.n * problem.p * problem.q
    if ncols == 0:  # an empty batch launches nothing
        return dict(DEFAULTS)
    best: tuple[float, dict[str, int]] | None = None
    for bm, bn, bk, tm, tn in _PREFERRED:
        params = {"BM": bm, "BN": bn, "BK": bk, "TM": tm, "TN": tn, "SPLIT_K": 1}
        if not STRATEGY.valid(params, problem) or (bm > 32 and problem.kg <= bm // 2):
            continue
        rows, cols = -(-problem.kg // bm), -(-ncols // bn)
        per_sm = variant_blocks_per_sm(dev, KERNEL, FUNC, tiles(params), problem.dtype, threads(params),
                                       smem_bytes(params, problem.dtype))
        splits = [s for s in SPACE["SPLIT_K"] if s == 1 or (problem.reduction // s >= MIN_SPLIT_REDUCTION
                                                             and STRATEGY.valid({**params, "SPLIT_K": s}, problem))]
        split, eff = best_split(rows * cols * problem.groups, splits, dev.sm_count, per_sm)
        params["SPLIT_K"] = split
        score = eff * problem.kg * ncols / (rows * bm * cols * bn)
        if score >= GOOD_ENOUGH:
            return params
        if best is None or score > best[0]:
            best = (score, params)
    return best[1] if best is not None else dict(DEFAULTS)
