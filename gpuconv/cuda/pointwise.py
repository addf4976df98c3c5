"""1x1 convolutions (stride 1, no padding) as one GEMM straight on x (``kernels/gemm.cu``), no workspace.

Per group g, ``Y_g (Kg x N*H*W) = W_g (Kg x Cg) @ X_g (Cg x N*H*W)``: the GEMM's column split
(``b_cols = H*W``, ``b_img = C*H*W``) reads x in NCHW directly, images side by side.
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from . import gemm
from .executor import Executor
from .source import INT32_MAX, SIMT_DTYPES


def images_per_chunk(problem: ConvProblem) -> int:
    """Images per GEMM launch, so that every offset into x and y inside one launch fits in int32."""
    hw = problem.h * problem.w
    return max(1, min(problem.n, INT32_MAX // (max(problem.c, problem.k) * hw)))


def run(ex: Executor, problem: ConvProblem, params: Params, x: Any, w: Any, bias: Any, y: Any) -> None:
    """Fill ``y (N, K, H, W)`` with the 1x1 convolution of ``x (N, C, H, W)`` and ``w (K, C/g, 1, 1)`` plus ``bias``."""
    pr = problem
    hw, cg, kg = pr.h * pr.w, pr.cg, pr.kg
    chunk = images_per_chunk(pr)
    for n0 in range(0, pr.n, chunk):
        nc = min(chunk, pr.n - n0)
        gemm.launch(ex, params, pr.dtype, a=w, b=x[n0:n0 + nc], bias=bias, c=y[n0:n0 + nc], m=kg, n=nc * hw, k=cg,
                    batch=pr.groups, lda=cg, a_batch=kg * cg,
                    ldb=hw, b_batch=cg * hw, b_cols=hw, b_img=pr.c * hw,
                    ldc=hw, c_batch=kg * hw, c_cols=hw, c_img=pr.k * hw, bias_batch=kg)


def heuristic_params(problem: ConvProblem) -> dict[str, int]:
    """GEMM tiles for this problem without tuning."""
    return gemm.pick(problem.kg, images_per_chunk(problem) * problem.h * problem.w, problem.groups, problem.dtype)


def _supports(problem: ConvProblem) -> bool:
    if problem.dtype not in SIMT_DTYPES:  # bfloat16 runs on the tensor cores only
        return False
    return (problem.is_pointwise and problem.groups <= 65535
            and max(problem.c, problem.k) * problem.h * problem.w <= INT32_MAX)


STRATEGY = Strategy(
    name="pointwise",
    run=run,
    supports=_supports,
    requires=("float16, float32 or float64; a 1x1 kernel, stride 1, no padding, at most 65535 groups, and C*H*W, "
              "K*H*W below 2**31"),
    space=gemm.SPACE,
    constraints=gemm.CONSTRAINTS,
    defaults=gemm.DEFAULTS,
)
