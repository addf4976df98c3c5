"""im2col + GEMM (``kernels/im2col.cu`` then ``kernels/gemm.cu``): any convolution, through a column workspace.

Per group g, ``Y_g (Kg x n*P*Q) = W_g (Kg x Cg*R*S) @ col_g (Cg*R*S x n*P*Q)``, with the columns of ``n``
images side by side so that small images still fill whole GEMM tiles. Images are processed in chunks that
keep the workspace under :data:`WORKSPACE_BYTES` and every in-kernel offset in int32.
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from . import gemm
from .executor import MAX_GRID, Executor
from .source import INT32_MAX, ITEM_BYTES, SIMT_DTYPES

KERNEL, FUNC = "im2col", "im2col"
#: The im2col kernel is a plain memory-bound copy; its launch shape is fixed, not tuned.
IM2COL_PARAMS: dict[str, int] = {"IM2COL_THREADS": 256, "IM2COL_ROWS": 8}
WORKSPACE_BYTES = 256 * 2**20
MAX_GRID_YZ = MAX_GRID[1]  # rows of the column matrix run on gridDim.y, groups on gridDim.z
_PITCH = 8  # elements: 16 bytes of float16, 32 of float32, 64 of float64


def images_per_chunk(problem: ConvProblem) -> int:
    """How many images one im2col + GEMM pass handles."""
    pq, rows = problem.p * problem.q, problem.reduction
    per_image = problem.groups * rows * pq
    limit = min(WORKSPACE_BYTES // (per_image * ITEM_BYTES[problem.dtype]),
                (INT32_MAX - rows * _PITCH) // (rows * pq),  # one group's columns, row pitch rounded up
                INT32_MAX // (problem.k * pq))               # offsets into the chunk of y
    return max(1, min(problem.n, limit))


def row_pitch(ncols: int) -> int:
    """Workspace row pitch: ``ncols`` rounded up to 16 bytes in every dtype, so the GEMM loads rows as vectors."""
    return -(-ncols // _PITCH) * _PITCH


def run(ex: Executor, problem: ConvProblem, params: Params, x: Any, w: Any, bias: Any, y: Any) -> None:
    """Fill ``y (N, K, P, Q)`` with the convolution of ``x (N, C, H, W)`` and ``w (K, C/g, R, S)`` plus ``bias``."""
    pr = problem
    pq, rows, g = pr.p * pr.q, pr.reduction, pr.groups
    chunk = images_per_chunk(pr)
    workspace = ex.empty((g * rows * row_pitch(chunk * pq),), pr.dtype)
    t, _, l, _ = pr.padding
    threads, per_block = IM2COL_PARAMS["IM2COL_THREADS"], IM2COL_PARAMS["IM2COL_ROWS"]
    for n0 in range(0, pr.n, chunk):
        nc = min(chunk, pr.n - n0)
        ncols = nc * pq
        ld = row_pitch(ncols)
        col = workspace[:g * rows * ld]
        xs, ys = x[n0:n0 + nc], y[n0:n0 + nc]
        ex.launch(KERNEL, FUNC, IM2COL_PARAMS, pr.dtype, (-(-ncols // threads), -(-rows // per_block), g),
                  (threads, 1, 1),
                  [xs, col, nc, pr.c, pr.h, pr.w, pr.p, pr.q, pr.r, pr.s, pr.stride[0], pr.stride[1], t, l,
                   pr.dilation[0], pr.dilation[1], g, ld])
        gemm.launch(ex, params, pr.dtype, a=w, b=col, bias=bias, c=ys, m=pr.kg, n=ncols, k=rows, batch=g,
                    lda=rows, a_batch=pr.kg * rows,
                    ldb=ld, b_batch=rows * ld, b_cols=ld, b_img=0,  # b_cols >= n: one "image"
                    ldc=pq, c_batch=pr.kg * pq, c_cols=pq, c_img=pr.k * pq, bias_batch=pr.kg)


def heuristic_params(problem: ConvProblem) -> dict[str, int]:
    """GEMM tiles for this problem without tuning."""
    ncols = images_per_chunk(problem) * problem.p * problem.q
    return gemm.pick(problem.kg, ncols, problem.groups, problem.dtype)


def _supports(problem: ConvProblem) -> bool:
    if problem.dtype not in SIMT_DTYPES:  # bfloat16 runs on the tensor cores only
        return False
    # Rows of one group's columns run on gridDim.y in steps of IM2COL_ROWS; groups on gridDim.z.
    pq = problem.p * problem.q
    return (problem.groups <= MAX_GRID_YZ and -(-problem.reduction // IM2COL_PARAMS["IM2COL_ROWS"]) <= MAX_GRID_YZ
            and problem.reduction * (pq + _PITCH) <= INT32_MAX and problem.k * pq <= INT32_MAX)


STRATEGY = Strategy(
    name="im2col",
    run=run,
    supports=_supports,
    requires=(f"float16, float32 or float64; at most {MAX_GRID_YZ} groups, C/groups*R*S <= "
              f"{MAX_GRID_YZ * IM2COL_PARAMS['IM2COL_ROWS']}, and one "
              "image's columns and output below 2**31 elements"),
    space=gemm.SPACE,
    constraints=gemm.CONSTRAINTS,
    defaults=gemm.DEFAULTS,
)
