"""``kernels/implicit_gemm.cu`` through the CPU emulation of CUDA, against the jax reference.

Every run starts from an output full of NaN, so an output element the kernel forgets stays NaN and fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from emu import EmuExecutor
from gpuconv.cuda import implicit_gemm
from gpuconv.problem import ConvProblem
from gpuconv.reference import run_problem
from helpers import CASES, Case, assert_matches, random_inputs, sample_product

STRATEGY = implicit_gemm.STRATEGY

# Beyond CASES: partial tiles in every GEMM dimension, many reduction slices (the double buffer turns over),
# and groups on the grid's z dimension.
EXTRA: list[Case] = [
    Case((1, 3, 6, 7), (70, 3, 3, 3), padding=1),                    # Kg = 70: two or three M tiles, last partial
    Case((3, 16, 5, 5), (8, 16, 3, 3), padding=1, bias=False),       # reduction 144: many BK slices; N*P*Q = 75
    Case((2, 10, 6, 6), (15, 2, 3, 1), groups=5, stride=(1, 2)),      # 5 groups, Kg = 3, reduction 6 < BK
    Case((2, 6, 9, 9), (12, 1, 3, 3), groups=6, padding=1),          # depthwise x2
    Case((1, 2, 20, 20), (2, 2, 3, 3), dilation=6, padding=6),        # far taps: mostly padding
]

# Non-default points: small and large block tiles, tall and wide thread tiles, every BK; each is checked to be
# a valid point of the space.
VARIANTS: list[dict[str, int]] = [
    {"BM": 32, "BN": 32, "BK": 32, "TM": 4, "TN": 2},
    {"BM": 128, "BN": 64, "BK": 8, "TM": 8, "TN": 4},
    {"BM": 32, "BN": 128, "BK": 16, "TM": 2, "TN": 8},
    {"BM": 64, "BN": 32, "BK": 16, "TM": 8, "TN": 2},
]


def run_emulated(case: Case, dtype: str, params: dict[str, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                          ConvProblem]:
    """Run the strategy on emulated device arrays; returns (output, reference, problem) in user layout."""
    problem = case.problem(dtype)
    x, w, b = random_inputs(case, dtype, seed=seed)
    ex = EmuExecutor(seed=seed)
    x4 = ex.to_device(x.reshape(problem.n, problem.c, problem.h, problem.w))
    w4 = ex.to_device(w.reshape(problem.k, problem.cg, problem.r, problem.s))
    bd = None if b is None else ex.to_device(b)
    y = ex.empty(problem.out_shape4, dtype)
    y[...] = np.nan
    STRATEGY.run(ex, problem, params, x4, w4, bd, y)
    assert ex.launches, "the strategy launched nothing"
    return y.reshape(problem.out_shape), run_problem(problem, x, w, b), problem


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES + EXTRA, ids=str)
def test_defaults(case: Case, dtype: str) -> None:
    y, ref, problem = run_emulated(case, dtype, dict(STRATEGY.defaults))
    assert_matches(y, ref, problem)


@pytest.mark.parametrize("case", sample_product(CASES + EXTRA, limit=8, seed=1), ids=lambda c: str(c[0]))
def test_defaults_float16(case: tuple[Case]) -> None:
    y, ref, problem = run_emulated(case[0], "float16", dict(STRATEGY.defaults))
    assert_matches(y, ref, problem)


@pytest.mark.parametrize(("params", "case", "dtype"),
                         sample_product(VARIANTS, CASES + EXTRA, ["float32", "float64"], limit=32, seed=2),
                         ids=lambda v: "-".join(f"{k}{v[k]}" for k in sorted(v)) if isinstance(v, dict) else str(v))
def test_variants(params: dict[str, int], case: Case, dtype: str) -> None:
    assert STRATEGY.valid(params), params
    y, ref, problem = run_emulated(case, dtype, params, seed=3)  # seed: shuffled thread order between barriers
    assert_matches(y, ref, problem)


@pytest.mark.parametrize(("case", "dtype"), sample_product(CASES + EXTRA, ["float32", "float64"], limit=10, seed=5),
                         ids=str)
def test_heuristic_params(case: Case, dtype: str) -> None:
    """The untuned choice for a problem is a valid point of the space and computes it."""
    for dt in ("float16", "float32", "float64"):
        assert STRATEGY.valid(implicit_gemm.heuristic_params(case.problem(dt)), case.problem(dt))
    params = implicit_gemm.heuristic_params(case.problem(dtype))
    y, ref, problem = run_emulated(case, dtype, params, seed=6)
    assert_matches(y, ref, problem)


def test_variants_are_valid_and_distinct() -> None:
    assert STRATEGY.valid(STRATEGY.defaults)
    assert all(STRATEGY.valid(v) for v in VARIANTS)
    assert len({tuple(sorted(v.items())) for v in VARIANTS + [dict(STRATEGY.defaults)]}) == len(VARIANTS) + 1


def test_tile_larger_than_problem() -> None:
    """The largest block tile on a 2-channel, 9-pixel output: one block, mostly idle, nothing out of bounds."""
    params = max(STRATEGY.variants(), key=lambda v: v["BM"] * v["BN"])
    case = Case((1, 3, 5, 5), (2, 3, 3, 3))
    y, ref, problem = run_emulated(case, "float32", params)
    assert_matches(y, ref, problem)


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


def test_space_size() -> None:
    n = len(list(STRATEGY.variants()))
    assert 20 <= n <= 400, n
