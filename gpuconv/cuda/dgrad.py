"""Input gradient as an implicit GEMM (``kernels/dgrad.cu``), split by stride phase.

Per group and stride phase, ``dX (Cg x N*Ha*Wa) = W^T (Cg x Kg*Ra*Sa) @ dYcols``: the input pixels of one
phase ``(h mod stride_h, w mod stride_w)`` take the same ``Ra x Sa`` taps, so a strided problem needs neither
a zero-inserted ``dy`` nor the taps that would read its zeros, and pixels no tap reaches get zeros. Any sizes,
strides, dilations and groups (groups and phases run on ``gridDim.z``); no workspace.
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from .executor import MAX_GRID, Executor
from .occupancy import Device, current_device, variant_blocks_per_sm
from .source import ACC_BYTES, INT32_MAX, SIMT_DTYPES, fits_smem, thread_tile_threads
from .spills import spill_free

KERNEL, FUNC = "dgrad", "dgrad_implicit_gemm"

#: Tunables of ``kernels/dgrad.cu``: block tile BM (input channels) x BN (input pixels of a phase) x BK
#: (reduction slice) and thread tile TM x TN (8-deep slices, 4- or 8-wide thread tiles: 28 float32 points, so
#: that compiling every variant for both architectures stays short).
SPACE: dict[str, list[int]] = {"BM": [32, 64, 128], "BN": [32, 64, 128], "BK": [8], "TM": [4, 8], "TN": [4, 8]}
DEFAULTS: dict[str, int] = {"BM": 64, "BN": 64, "BK": 8, "TM": 4, "TN": 4}
threads = thread_tile_threads


def smem_bytes(params: Params, dtype: str) -> int:
    """Static shared memory: two stages of A ``[BK][BM + 4]`` and B ``[BK][BN]`` in ``ACC_T``."""
    return 2 * params["BK"] * (params["BM"] + 4 + params["BN"]) * ACC_BYTES[dtype]


def _threads_ok(params: Params, problem: ConvProblem | None) -> bool:
    return 64 <= threads(params) <= 512


def _b_loads_ok(params: Params, problem: ConvProblem | None) -> bool:
    # Each thread loads one fixed column of the B tile (its address math is done once), so BN must divide the
    # thread count, and the rows one pass covers must divide BK so that every thread loads.
    nt = threads(params)
    return nt % params["BN"] == 0 and params["BK"] % (nt // params["BN"]) == 0


def _registers_ok(params: Params, problem: ConvProblem | None) -> bool:
    # Accumulators plus the next slice held in registers while the current one is multiplied; beyond these
    # bounds ptxas spills (8x8 float64 accumulators alone take 128 registers).
    acc = params["TM"] * params["TN"]
    staged = (params["BM"] + params["BN"]) * params["BK"] // threads(params)
    wide = problem is not None and problem.dtype == "float64"
    return 8 <= acc <= (32 if wide else 64) and staged <= 16


def _fits_smem(params: Params, problem: ConvProblem | None) -> bool:
    return fits_smem(smem_bytes, params, problem)


CONSTRAINTS = (_threads_ok, _b_loads_ok, _registers_ok, spill_free(KERNEL), _fits_smem)  # spills: see .spills


def phase_pixels(size: int, stride: int) -> int:
    """Input positions of the largest stride phase along one axis: ``ceil(size / stride)``."""
    return -(-size // stride)


def grid(problem: ConvProblem, params: Params) -> tuple[int, int, int]:
    """Column tiles of the largest phase, channel tiles, groups x phases."""
    pr = problem
    cols = pr.n * phase_pixels(pr.h, pr.stride[0]) * phase_pixels(pr.w, pr.stride[1])
    return (-(-cols // params["BN"]), -(-pr.cg // params["BM"]), pr.groups * pr.stride[0] * pr.stride[1])


def run(ex: Executor, problem: ConvProblem, params: Params, dy: Any, w: Any, bias: Any, dx: Any) -> None:
    """Fill ``dx (N, C, H, W)`` with the input gradient from ``dy (N, K, P, Q)`` and ``w (K, C/g, R, S)``."""
    pr = problem
    t, _, l, _ = pr.padding
    args = [dy, w, dx, pr.n, pr.c, pr.h, pr.w, pr.k, pr.p, pr.q, pr.r, pr.s, pr.stride[0], pr.stride[1], t, l,
            pr.dilation[0], pr.dilation[1], pr.groups]
    ex.launch(KERNEL, FUNC, params, pr.dtype, grid(pr, params), (threads(params), 1, 1), args)


def _supports(problem: ConvProblem) -> bool:
    if problem.dtype not in SIMT_DTYPES:  # bfloat16 runs on the tensor cores only
        return False
    # Column and reduction indices are int32; groups times phases run on gridDim.z, channel tiles on y.
    pr = problem
    cols = pr.n * phase_pixels(pr.h, pr.stride[0]) * phase_pixels(pr.w, pr.stride[1])
    return (cols + 128 < INT32_MAX and pr.kg * pr.r * pr.s + 32 < INT32_MAX
            and pr.groups * pr.stride[0] * pr.stride[1] <= MAX_GRID[2] and -(-pr.cg // 32) <= MAX_GRID[1])


STRATEGY = Strategy(
    name="implicit_gemm",
    run=run,
    supports=_supports,
    requires=("float16, float32 or float64; N*ceil(H/stride)*ceil(W/stride) and K/groups*R*S below 2**31, "
              f"groups*stride_h*stride_w at most {MAX_GRID[2]}"),
    space=SPACE,
    constraints=CONSTRAINTS,
    defaults=DEFAULTS,
)

# Preferred points, largest tile first: (BM, BN, BK, TM, TN), as the forward's (M is the input channels here).
_PREFERRED: tuple[tuple[int, int, int, int, int], ...] = (
    (128, 128, 8, 8, 8),
    (128, 64, 8, 8, 4),
    (64, 128, 8, 4, 8),
    (64, 64, 8, 4, 4),
    (32, 64, 8, 4, 4),
    (32, 32, 8, 4, 4),
)


def heuristic_params(problem: ConvProblem, device: Device | None = None) -> dict[str, int]:
    """The largest preferred tile that does not waste more than half of its rows on missing input channels and
    still fills one wave of ``device`` (default: the current one) with resident blocks, counting every phase's
    blocks (blocks per SM from ptxas' figures for the tile, :func:`~gpuconv.cuda.occupancy.variant_blocks_per_sm`)."""
    dev = device if device is not None else current_device()
    fallback = dict(DEFAULTS)
    for bm, bn, bk, tm, tn in _PREFERRED:
        params = {"BM": bm, "BN": bn, "BK": bk, "TM": tm, "TN": tn}
        if not STRATEGY.valid(params, problem) or (bm > 32 and problem.cg <= bm // 2):
            continue
        fallback = params
        gx, gy, gz = grid(problem, params)
        per_sm = variant_blocks_per_sm(dev, KERNEL, FUNC, params, problem.dtype, threads(params),
                                       smem_bytes(params, problem.dtype))
        if gx * gy * gz >= dev.sm_count * per_sm:
            return params
    return fallback
