"""Implicit GEMM (``kernels/implicit_gemm.cu``): a register-tiled GEMM whose B operand is gathered from the input.

Per group, ``Y (Kg x N*P*Q) = W (Kg x Cg*R*S) @ cols``; the kernel computes each ``cols`` element's input
address while loading it (zero in the padding), so unlike im2col it needs no workspace. Any sizes, strides,
dilations and groups (groups run on ``gridDim.z``).
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from . import gemm
from .executor import Executor
from .source import ACC_BYTES, fits_smem, sm_count, thread_tile_threads

KERNEL, FUNC = "implicit_gemm", "implicit_gemm_conv"

#: Tunables of ``kernels/implicit_gemm.cu``: block tile BM (channels) x BN (pixels) x BK (reduction slice) and
#: thread tile TM x TN, the same candidate tiles as the explicit GEMM's (its own constraints filter them).
SPACE: dict[str, list[int]] = gemm.SPACE
DEFAULTS: dict[str, int] = {"BM": 64, "BN": 64, "BK": 8, "TM": 4, "TN": 4}



threads = thread_tile_threads


def smem_bytes(params: Params, dtype: str) -> int:
    """Static shared memory: two stages of A ``[BK][BM + 4]`` and B ``[BK][BN]`` in ``ACC_T``."""
    return 2 * params["BK"] * (params["BM"] + 4 + params["BN"]) * ACC_BYTES[dtype]


def _threads_ok(params: Params, problem: ConvProblem | None) -> bool:
    return 64 <= threads(params) <= 512


def _b_loads_ok(params: Params, problem: ConvProblem | None) -> bool:
    # Each thread loads one fixed column of the B tile (its im2col address math is done once), so BN must
    # divide the thread count, and the rows one pass covers must divide BK so that every thread loads.
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


def run(ex: Executor, problem: ConvProblem, params: Params, x: Any, w: Any, bias: Any, y: Any) -> None:
    """Fill ``y (N, K, P, Q)`` with the convolution of ``x (N, C, H, W)`` and ``w (K, C/g, R, S)`` plus ``bias``."""
    ncols = problem.n * problem.p * problem.q
    grid = (-(-ncols // params["BN"]), -(-problem.kg // params["BM"]), problem.groups)
    t, _, l, _ = problem.padding
    args = [x, w, w if bias is None else bias, y,
            problem.n, problem.c, problem.h, problem.w, problem.k, problem.p, problem.q, problem.r, problem.s,
            problem.stride[0], problem.stride[1], t, l, problem.dilation[0], problem.dilation[1],
            problem.groups, int(bias is not None)]
    ex.launch(KERNEL, FUNC, params, problem.dtype, grid, (threads(params), 1, 1), args)


def _supports(problem: ConvProblem) -> bool:
    # Column and reduction indices are int32; groups run on gridDim.z (<= 65535).
    return (problem.n * problem.p * problem.q + 128 < 2**31 and problem.reduction + 32 < 2**31
            and problem.groups <= 65535)


STRATEGY = Strategy(
    name="implicit_gemm",
    run=run,
    supports=_supports,
    requires="N*P*Q and C/groups*R*S below 2**31 and at most 65535 groups",
    space=SPACE,
    constraints=(_threads_ok, _b_loads_ok, _registers_ok, _fits_smem),
    defaults=DEFAULTS,
)


# Preferred points, largest tile first: (BM, BN, BK, TM, TN). Large tiles reuse each staged value more;
# small ones keep enough blocks in flight when the GEMM is small.
_PREFERRED: tuple[tuple[int, int, int, int, int], ...] = (
    (128, 128, 8, 8, 8),
    (128, 64, 8, 8, 4),
    (64, 128, 8, 4, 8),
    (64, 64, 8, 4, 4),
    (32, 64, 16, 2, 4),
    (64, 32, 16, 4, 2),
    (32, 32, 32, 4, 2),
)
_BLOCKS_PER_SM = 2  # the heuristic wants about two blocks per SM


def heuristic_params(problem: ConvProblem) -> dict[str, int]:
    """A point of the space for ``problem`` without tuning: the largest preferred tile that does not waste
    more than half of its rows on missing output channels and still launches about two blocks per SM."""
    ncols = problem.n * problem.p * problem.q
    min_blocks = _BLOCKS_PER_SM * sm_count()
    fallback = dict(DEFAULTS)
    for bm, bn, bk, tm, tn in _PREFERRED:
        params = {"BM": bm, "BN": bn, "BK": bk, "TM": tm, "TN": tn}
        if not STRATEGY.valid(params, problem) or (bm > 32 and problem.kg <= bm // 2):
            continue
        fallback = params
        blocks = -(-ncols // bn) * -(-problem.kg // bm) * problem.groups
        if blocks >= min_blocks:
            return params
    return fallback
