"""Running CUDA strategies on the CPU emulation, and each kernel's edge cases beyond ``helpers.CASES``.

Shared by the emulated test modules. Outputs start as NaN, so an element no thread writes fails the comparison.
"""

from __future__ import annotations

import functools

import numpy as np
from emu import EmuExecutor
from helpers import CASES, Case, assert_matches, random_inputs

from gpuconv.cuda import STRATEGIES
from gpuconv.problem import ConvProblem
from gpuconv.reference import run_problem

# Shapes beyond the shared grid that stress the GEMM's edges: partial tiles in M, N and K, a reduction of many
# slices, image widths that are and are not multiples of the vector width, and many groups.
GEMM_EXTRA: list[Case] = [
    Case((3, 37, 5, 7), (70, 37, 1, 1)),                          # 1x1: K, N, M all ragged, no vector loads
    Case((2, 24, 4, 8), (40, 12, 1, 1), groups=2),                # 1x1 grouped, vectorizable columns
    Case((2, 5, 9, 11), (131, 5, 3, 3), padding=1, bias=False),  # M beyond one 128 tile
    Case((1, 40, 6, 6), (8, 40, 3, 3), padding=1),                # reduction of 360: many BK slices
]

# Beyond CASES: what the direct kernel's tiling and channel blocking have to get right.
DIRECT_EXTRA: list[Case] = [
    Case((2, 5, 11, 37), (10, 1, 3, 3), groups=5, padding=1),                # depthwise x2, Q > one tile
    Case((1, 3, 9, 9), (9, 1, 5, 5), groups=3, stride=2, padding=2),         # depthwise x3, 5x5 stride 2
    Case((1, 6, 10, 10), (9, 2, 3, 3), groups=3, padding=1, bias=False),     # Kg=3: channel blocks straddle
    Case((1, 5, 8, 8), (3, 5, 3, 3), padding=1),                             # C=5: partial channel blocks
    Case((1, 2, 20, 20), (2, 2, 3, 3), dilation=6, padding=6),               # footprint > window: tap chunks
    Case((1, 2, 13, 41), (3, 2, 2, 5), stride=(3, 4), dilation=(2, 3)),      # big strides and dilations
]

# Beyond CASES: partial tiles in every GEMM dimension, many reduction slices (the double buffer turns over),
# and groups on the grid's z dimension.
IMPLICIT_GEMM_EXTRA: list[Case] = [
    Case((1, 3, 6, 7), (70, 3, 3, 3), padding=1),                    # Kg = 70: two or three M tiles, last partial
    Case((3, 16, 5, 5), (8, 16, 3, 3), padding=1, bias=False),       # reduction 144: many BK slices; N*P*Q = 75
    Case((2, 10, 6, 6), (15, 2, 3, 1), groups=5, stride=(1, 2)),      # 5 groups, Kg = 3, reduction 6 < BK
    Case((2, 6, 9, 9), (12, 1, 3, 3), groups=6, padding=1),          # depthwise x2
    Case((1, 2, 20, 20), (2, 2, 3, 3), dilation=6, padding=6),        # far taps: mostly padding
]

# Non-default points: narrow and tall blocks, several outputs and channels per thread, windows sized for
# stride 2 and for 7x7 filters, channel blocks (only beside one output channel per thread: the space's rule);
# each is checked to be a valid point of the space.
DIRECT_VARIANTS: list[dict[str, int]] = [
    {"BQ": 8, "BP": 4, "QPT": 4, "KPT": 1, "CB": 4, "HALO": 2, "SX": 2},
    {"BQ": 8, "BP": 4, "QPT": 1, "KPT": 2, "CB": 1, "HALO": 6, "SX": 1},
    {"BQ": 32, "BP": 8, "QPT": 2, "KPT": 2, "CB": 1, "HALO": 6, "SX": 2},
    {"BQ": 32, "BP": 8, "QPT": 2, "KPT": 1, "CB": 4, "HALO": 2, "SX": 1},
]

# Non-default points: small and large block tiles, tall and wide thread tiles, every BK; each is checked to be
# a valid point of the space.
IMPLICIT_GEMM_VARIANTS: list[dict[str, int]] = [
    {"BM": 32, "BN": 32, "BK": 16, "TM": 4, "TN": 4, "SPLIT_K": 1},
    {"BM": 128, "BN": 64, "BK": 8, "TM": 8, "TN": 4, "SPLIT_K": 2},
    {"BM": 64, "BN": 128, "BK": 8, "TM": 4, "TN": 8, "SPLIT_K": 3},
    {"BM": 64, "BN": 32, "BK": 8, "TM": 4, "TN": 4, "SPLIT_K": 1},
]

# Each kernel's edge cases, by strategy; the hand-picked variants join the generated ones in the variant tests.
EXTRA: dict[str, list[Case]] = {"im2col": GEMM_EXTRA, "pointwise": GEMM_EXTRA, "direct": DIRECT_EXTRA,
                                "implicit_gemm": IMPLICIT_GEMM_EXTRA}
VARIANTS: dict[str, list[dict[str, int]]] = {"direct": DIRECT_VARIANTS, "implicit_gemm": IMPLICIT_GEMM_VARIANTS}


def cases_for(name: str) -> list[Case]:
    """The shared grid plus the strategy's own edge cases, where the strategy supports them."""
    return [c for c in CASES + EXTRA.get(name, []) if STRATEGIES[name].supports(c.problem())]


@functools.cache
def reference(case: Case, dtype: str, seed: int) -> np.ndarray:
    x, w, b = random_inputs(case, dtype, seed)
    return run_problem(case.problem(dtype), x, w, b)


def run_emulated(name: str, case: Case, dtype: str, params: dict[str, int], *, seed: int = 0,
                 misalign: bool = False) -> tuple[np.ndarray, ConvProblem, EmuExecutor]:
    """Run strategy ``name`` on the emulated device; ``misalign`` shifts x and w off 16-byte alignment."""
    problem = case.problem(dtype)
    x, w, b = random_inputs(case, dtype, seed)
    ex = EmuExecutor(seed=seed)

    def device(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if not misalign:
            return ex.to_device(a.reshape(shape))
        buf = ex.empty((a.size + 1,), a.dtype)
        view = buf[1:].reshape(shape)  # contiguous, but one element past an aligned address
        view[...] = a.reshape(shape)
        return view

    xd = device(x, (problem.n, problem.c, problem.h, problem.w))
    wd = device(w, (problem.k, problem.cg, problem.r, problem.s))
    bd = None if b is None else ex.to_device(b)
    y = ex.empty(problem.out_shape4, dtype)
    y[...] = np.nan
    STRATEGIES[name].run(ex, problem, params, xd, wd, bd, y)
    return y.reshape(problem.out_shape), problem, ex


def check(name: str, case: Case, dtype: str, params: dict[str, int], **kw: object) -> EmuExecutor:
    y, problem, ex = run_emulated(name, case, dtype, params, **kw)
    assert_matches(y, reference(case, dtype, int(kw.get("seed", 0))), problem)
    return ex
