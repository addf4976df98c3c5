"""What is particular to ``kernels/implicit_gemm.cu``: its launch geometry, tiles larger than the problem, the
vector and element load paths, image chunks and split-K. Its runs on the shared grid, edge cases and variants
are in ``test_cuda_emulated.py``; its inner loop's instruction mix is in ``test_cuda_sass.py``."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_cases import cases_for, check
from emu import EmuExecutor
from helpers import Case, random_inputs, sample_product

from gpuconv.cuda import implicit_gemm

STRATEGY = implicit_gemm.STRATEGY

# Stride 1 with W and Q multiples of every vector width (8 halves, 4 floats, 2 doubles): taps whose input
# column is 16-byte aligned load vectors, the others (and the image borders) elements. Then a width that is
# a multiple of 4 but not 8, stride 2 (never vectors) and a 1x1 that is all vectors.
LOAD_CASES: list[Case] = [
    Case((2, 5, 8, 16), (6, 5, 3, 3), padding=1),
    Case((1, 4, 6, 16), (5, 4, 3, 3)),
    Case((2, 3, 5, 12), (4, 3, 1, 3), padding=(0, 2), dilation=2),
    Case((1, 6, 9, 16), (8, 3, 3, 3), stride=2, padding=1, groups=2),
    Case((2, 8, 4, 8), (9, 8, 1, 1), bias=False),
]


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


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("case", LOAD_CASES, ids=str)
def test_vector_and_element_loads(case: Case, dtype: str, misalign: bool) -> None:
    """Aligned inputs take vector loads where a unit allows; shifted by one element, every load is elementwise."""
    check("implicit_gemm", case, dtype, {"BM": 32, "BN": 32, "BK": 16, "TM": 4, "TN": 4, "SPLIT_K": 1},
          misalign=misalign, seed=4)


def test_images_are_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Launches cover the batch in chunks of images (32-bit offsets within one), split-K included."""
    monkeypatch.setattr(implicit_gemm, "images_per_chunk", lambda problem: 2)
    case = Case((5, 4, 6, 6), (6, 4, 3, 3), padding=1)
    ex = check("implicit_gemm", case, "float32", {**STRATEGY.defaults, "SPLIT_K": 3})
    assert [r.func for r in ex.launches] == [implicit_gemm.FUNC, implicit_gemm.REDUCE] * 3
    assert [r.grid[0] for r in ex.launches[::2]] == [-(-n * 36 // STRATEGY.defaults["BN"]) for n in (2, 2, 1)]


# Split-K on the shared grid plus the kernel's edge cases, sampled: every split count, several tiles and
# dtypes (a split past the last slice stores zeros: the 6- and 8-way splits of short reductions).
SPLIT_TILES = [{"BM": 32, "BN": 64, "BK": 8, "TM": 4, "TN": 4}, {"BM": 64, "BN": 32, "BK": 16, "TM": 4, "TN": 8},
               dict(implicit_gemm.tiles(STRATEGY.defaults))]
SPLIT_CASES = sample_product(cases_for("implicit_gemm"), [s for s in implicit_gemm.SPACE["SPLIT_K"] if s > 1],
                             range(len(SPLIT_TILES)), ["float16", "float32", "float64"], limit=30, seed=11)


@pytest.mark.parametrize("case,split,tile,dtype", SPLIT_CASES, ids=str)
def test_split_k(case: Case, split: int, tile: int, dtype: str) -> None:
    ex = check("implicit_gemm", case, dtype, {**SPLIT_TILES[tile], "SPLIT_K": split}, seed=5)
    assert [r.func for r in ex.launches] == [implicit_gemm.FUNC, implicit_gemm.REDUCE]
    assert ex.launches[0].grid[2] == case.groups * split


def test_split_k_is_deterministic() -> None:
    """The partial sums are added in split order: bit-identical results whatever order the threads run in."""
    case = Case((1, 32, 6, 6), (8, 32, 3, 3), padding=1)  # 288-long reduction: 36 slices over 6 splits
    params = {"BM": 32, "BN": 32, "BK": 8, "TM": 4, "TN": 4, "SPLIT_K": 6}
    problem = case.problem()
    inputs = random_inputs(case, "float32")

    def run(split: int, order: int) -> np.ndarray:
        ex = EmuExecutor(seed=order)
        x, w, b = (ex.to_device(a) for a in inputs)
        y = ex.empty(problem.out_shape4, "float32")
        y[...] = np.nan
        STRATEGY.run(ex, problem, {**params, "SPLIT_K": split}, x, w, b, y)
        return np.array(y)

    runs = [run(6, order) for order in (0, 1, 2)]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    assert not np.array_equal(run(1, 0), runs[0])  # a different summation order: the split really ran
