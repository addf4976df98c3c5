"""Input gradient as a GEMM and a fold (``kernels/gemm.cu`` then ``kernels/col2im.cu``), the adjoint of im2col.

Per group g, ``col_g (Cg*R*S x n*P*Q) = W_g^T (Cg*R*S x Kg) @ dY_g (Kg x n*P*Q)`` with the columns of ``n``
images side by side, then each input element sums the column entries of the taps that read it (a gather: one
writer per element, a fixed order, no atomics). ``W^T`` is copied once per call (the size of ``w``) so that the
GEMM reads a row-major A; ``dy`` is its B operand in place (column split by image, as the pointwise strategy
reads x). The columns are kept in the accumulator type, so float16 products are rounded once, after the fold.
Images are processed in chunks that bound the workspace and keep every in-kernel offset in int32.
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from . import gemm, im2col
from .executor import MAX_GRID, Executor
from .source import ACC_BYTES, INT32_MAX, ITEM_BYTES, SIMT_DTYPES

KERNEL, FUNC = "col2im", "col2im"
#: The fold is a memory-bound gather; its launch shape is fixed, not tuned.
COL2IM_PARAMS: dict[str, int] = {"COL2IM_THREADS": 256}
WORKSPACE_BYTES = im2col.WORKSPACE_BYTES
#: The GEMM's tiles: the subset of ``gemm.SPACE`` around its presets (which the heuristic picks from), so that its
#: float16 binaries (which store float32 columns) stay few; in float32 and float64 they are im2col's.
SPACE: dict[str, list[int]] = {"BM": [32, 64, 128], "BN": [64, 128], "BK": [8, 16], "TM": [2, 4, 8], "TN": [4, 8]}
_PITCH = 8  # the column workspace's row pitch granule, as im2col's
ACC_DTYPES = {"float16": "float32", "float32": "float32", "float64": "float64"}


def gemm_params(params: Params, dtype: str) -> dict[str, int]:
    """The GEMM's macros: the tiles, plus ``GEMM_ACC_OUT`` where T is narrower than ACC_T (float16), so that the
    columns are stored in float32; in float32 and float64 the binary is the forward im2col's GEMM."""
    return {**params, "GEMM_ACC_OUT": 1} if ITEM_BYTES[dtype] < ACC_BYTES[dtype] else dict(params)


def images_per_chunk(problem: ConvProblem) -> int:
    """How many images one GEMM + fold pass handles."""
    pr = problem
    pq, rows = pr.p * pr.q, pr.reduction
    per_image = pr.groups * rows * pq * ACC_BYTES[pr.dtype]
    limit = min(WORKSPACE_BYTES // per_image,
                (INT32_MAX - rows * _PITCH) // (rows * pq),  # one group's columns, row pitch rounded up
                INT32_MAX // (pr.k * pq),                    # offsets into the chunk of dy
                (INT32_MAX - COL2IM_PARAMS["COL2IM_THREADS"]) // (pr.c * pr.h * pr.w))  # the fold's thread index
    return max(1, min(pr.n, limit))


def run(ex: Executor, problem: ConvProblem, params: Params, dy: Any, w: Any, bias: Any, dx: Any) -> None:
    """Fill ``dx (N, C, H, W)`` with the input gradient from ``dy (N, K, P, Q)`` and ``w (K, C/g, R, S)``."""
    pr = problem
    pq, rows, g, kg = pr.p * pr.q, pr.reduction, pr.groups, pr.kg
    chunk = images_per_chunk(pr)
    wt = ex.empty((g, rows, kg), pr.dtype)
    wt[...] = w.reshape(g, kg, rows).transpose(0, 2, 1)
    workspace = ex.empty((g * rows * im2col.row_pitch(chunk * pq),), ACC_DTYPES[pr.dtype])
    t, _, l, _ = pr.padding
    threads = COL2IM_PARAMS["COL2IM_THREADS"]
    gparams = gemm_params(params, pr.dtype)
    for n0 in range(0, pr.n, chunk):
        nc = min(chunk, pr.n - n0)
        ncols = nc * pq
        ld = im2col.row_pitch(ncols)
        col = workspace[:g * rows * ld]
        gemm.launch(ex, gparams, pr.dtype, a=wt, b=dy[n0:n0 + nc], bias=None, c=col, m=rows, n=ncols, k=kg,
                    batch=g, lda=kg, a_batch=rows * kg,
                    ldb=pq, b_batch=kg * pq, b_cols=pq, b_img=pr.k * pq,
                    ldc=ld, c_batch=rows * ld, c_cols=ld, c_img=0, bias_batch=0)  # c_cols >= n: one "image"
        ex.launch(KERNEL, FUNC, COL2IM_PARAMS, pr.dtype, (-(-nc * pr.c * pr.h * pr.w // threads), 1, 1),
                  (threads, 1, 1),
                  [col, dx[n0:n0 + nc], nc, pr.c, pr.h, pr.w, pr.p, pr.q, pr.r, pr.s, pr.stride[0], pr.stride[1],
                   t, l, pr.dilation[0], pr.dilation[1], g, ld])


def heuristic_params(problem: ConvProblem) -> dict[str, int]:
    """GEMM tiles for this problem without tuning."""
    ncols = images_per_chunk(problem) * problem.p * problem.q
    return gemm.pick(problem.reduction, ncols, problem.groups, problem.dtype,
                     binary=lambda p: gemm_params(p, problem.dtype))


def _grid_ok(params: Params, problem: ConvProblem | None) -> bool:
    # The GEMM's row tiles (C/g*R*S of them) run on gridDim.y.
    return problem is None or -(-problem.reduction // params["BM"]) <= MAX_GRID[1]


def _supports(problem: ConvProblem) -> bool:
    if problem.dtype not in SIMT_DTYPES:  # bfloat16 runs on the tensor cores only
        return False
    pr = problem
    pq = pr.p * pr.q
    return (pr.groups <= MAX_GRID[1] and -(-pr.reduction // max(gemm.SPACE["BM"])) <= MAX_GRID[1]
            and pr.reduction * (pq + _PITCH) <= INT32_MAX and pr.k * pq <= INT32_MAX
            and pr.c * pr.h * pr.w <= INT32_MAX - COL2IM_PARAMS["COL2IM_THREADS"])


STRATEGY = Strategy(
    name="col2im",
    run=run,
    supports=_supports,
    requires=(f"float16, float32 or float64; at most {MAX_GRID[1]} groups, C/groups*R*S <= "
              f"{MAX_GRID[1] * max(gemm.SPACE['BM'])}, and one image's columns, dy and dx below 2**31 elements"),
    space=SPACE,
    constraints=(*gemm.CONSTRAINTS, _grid_ok),
    defaults=gemm.DEFAULTS,
)
