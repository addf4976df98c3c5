"""What is particular to ``kernels/implicit_gemm.cu``: its launch geometry and tiles larger than the problem.
Its runs on the shared grid, edge cases and variants are in ``test_cuda_emulated.py``."""

from __future__ import annotations

from cuda_cases import check
from emu import EmuExecutor
from helpers import Case, random_inputs

from gpuconv.cuda import implicit_gemm

STRATEGY = implicit_gemm.STRATEGY


def test_tile_larger_than_problem() -> None:
    """The largest block tile on a 2-channel, 9-pixel output: one block, mostly idle, nothing out of bounds."""
    params = max(STRATEGY.variants(), key=lambda v: v["BM"] * v["BN"])
    check("implicit_gemm", Case((1, 3, 5, 5), (2, 3, 3, 3)), "float32", params)


def test_launch_geometry() -> None:
    """Groups on z, output channels per group on y, pixels on x, one thread per thread tile."""
    ex = EmuExecutor()
    case = Case((2, 8, 7, 7), (12, 2, 3, 3), groups=4, padding=1)
    problem = case.problem()
    params = dict(STRATEGY.defaults)
    x, w, b = (ex.to_device(a) for a in random_inputs(case, "float32"))
    STRATEGY.run(ex, problem, params, x, w, b, ex.empty(problem.out_shape4, "float32"))
    (rec,) = ex.launches
    assert rec.grid == (-(-2 * 7 * 7 // params["BN"]), 1, 4)
    assert rec.block == (implicit_gemm.threads(params), 1, 1)
