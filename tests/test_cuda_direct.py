"""``kernels/direct.cu`` through the CPU emulation of CUDA, against the jax reference.

Every run starts from an output full of NaN, so an output element the kernel forgets stays NaN and fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from emu import EmuExecutor
from gpuconv.cuda import direct
from gpuconv.problem import ConvProblem
from gpuconv.reference import run_problem
from helpers import CASES, Case, assert_matches, random_inputs, sample_product

STRATEGY = direct.STRATEGY

# Beyond CASES: what the direct kernel's tiling and channel blocking have to get right.
EXTRA: list[Case] = [
    Case((2, 5, 11, 37), (10, 1, 3, 3), groups=5, padding=1),                # depthwise x2, Q > one tile
    Case((1, 3, 9, 9), (9, 1, 5, 5), groups=3, stride=2, padding=2),         # depthwise x3, 5x5 stride 2
    Case((1, 6, 10, 10), (9, 2, 3, 3), groups=3, padding=1, bias=False),     # Kg=3: channel blocks straddle
    Case((1, 5, 8, 8), (3, 5, 3, 3), padding=1),                             # C=5: partial channel blocks
    Case((1, 2, 20, 20), (2, 2, 3, 3), dilation=6, padding=6),               # footprint > window: tap chunks
    Case((1, 2, 13, 41), (3, 2, 2, 5), stride=(3, 4), dilation=(2, 3)),      # big strides and dilations
]

# Non-default points: narrow and tall blocks, several outputs and channels per thread, windows sized for
# stride 2 and for 7x7 filters, channel blocks; each is checked to be a valid point of the space.
VARIANTS: list[dict[str, int]] = [
    {"BQ": 8, "BP": 4, "QPT": 4, "KPT": 1, "CB": 4, "HALO": 2, "SX": 2},
    {"BQ": 8, "BP": 8, "QPT": 2, "KPT": 2, "CB": 1, "HALO": 6, "SX": 1},
    {"BQ": 32, "BP": 2, "QPT": 1, "KPT": 4, "CB": 4, "HALO": 6, "SX": 2},
    {"BQ": 32, "BP": 8, "QPT": 2, "KPT": 2, "CB": 4, "HALO": 2, "SX": 1},
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
                         sample_product(VARIANTS, CASES + EXTRA, ["float32", "float64"], limit=36, seed=2),
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
        assert STRATEGY.valid(direct.heuristic_params(case.problem(dt)), case.problem(dt))
    params = direct.heuristic_params(case.problem(dtype))
    y, ref, problem = run_emulated(case, dtype, params, seed=6)
    assert_matches(y, ref, problem)


def test_variants_are_valid_and_distinct() -> None:
    assert STRATEGY.valid(STRATEGY.defaults)
    assert all(STRATEGY.valid(v) for v in VARIANTS)
    assert len({tuple(sorted(v.items())) for v in VARIANTS + [dict(STRATEGY.defaults)]}) == len(VARIANTS) + 1


def test_tile_larger_than_problem() -> None:
    """A 3x3 output with the largest tile: one block, most threads idle, nothing written out of bounds."""
    params = max(STRATEGY.variants(), key=lambda v: v["BQ"] * v["BP"] * v["QPT"])
    case = Case((2, 3, 5, 5), (4, 3, 3, 3))
    y, ref, problem = run_emulated(case, "float32", params)
    assert direct.launch_geometry(problem, params)["tiles_p"] == 1
    assert_matches(y, ref, problem)


@pytest.mark.parametrize(("window_len", "tile_max", "stride", "dilation", "taps"),
                         sample_product([3, 6, 11, 35], [1, 2, 8, 32], [1, 2, 3, 5], [1, 2, 7], [1, 3, 7],
                                        limit=200, seed=4))
def test_fit_footprint(window_len: int, tile_max: int, stride: int, dilation: int, taps: int) -> None:
    """The host's tiling never asks the kernel for a footprint larger than its window."""
    tile, chunk = direct.fit(window_len, tile_max, stride, dilation, taps)
    assert 1 <= tile <= tile_max and 1 <= chunk <= taps
    assert (tile - 1) * stride + (chunk - 1) * dilation + 1 <= window_len
    if (tile_max - 1) * stride + (taps - 1) * dilation + 1 <= window_len:
        assert (tile, chunk) == (tile_max, taps)  # no chunking when everything fits


def test_space_size() -> None:
    n = len(list(STRATEGY.variants()))
    assert 20 <= n <= 400, n
