"""The weight gradient by Winograd (F(m x m, 3x3) transposed): chunks, partial tiles, groups, padding, non-finite
values and the heuristic's choice, against PyTorch's autograd in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_matches

from gpuconv import cpu
from gpuconv.cpu import grad_weight_winograd
from gpuconv.problem import make_problem
from gpuconv.strategy import Plan


def _problem(x_shape, w_shape, dtype="float32", padding=1, groups=1):
    return make_problem("conv2d_weight", x_shape, w_shape, dtype, False, padding=padding, groups=groups,
                        direction="weight")


def _case(x_shape, w_shape, dtype="float32", padding=1, groups=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    problem = _problem(x_shape, w_shape, dtype, padding, groups)
    dy = rng.uniform(-1, 1, problem.out_shape4).astype(dtype)
    expected = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), w_shape, torch.from_numpy(dy).double(),
                                           padding=padding, groups=groups).numpy().astype(dtype)
    return problem, x, dy, expected


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape,w_shape,padding,groups", [
    ((2, 6, 9, 9), (4, 6, 3, 3), 1, 1),        # 9 outputs: a partial last tile of either size
    ((3, 8, 11, 13), (6, 4, 3, 3), 2, 2),      # groups, padding larger than the kernel's half, non-square
    ((1, 4, 10, 10), (8, 4, 3, 3), 0, 1),      # no padding: 8 outputs
    ((2, 16, 7, 5), (3, 16, 3, 3), (1, 0), 1),  # asymmetric padding, fewer tiles than a row of F(4x4)
])
def test_matches_autograd(x_shape, w_shape, padding, groups, dtype, tile) -> None:
    problem, x, dy, expected = _case(x_shape, w_shape, dtype, padding, groups)
    for chunk in grad_weight_winograd.SPACE["chunk"]:
        got = cpu.execute(problem, Plan("winograd", {"tile": tile, "chunk": chunk}, "forced"), x, dy, None)
        assert_matches(got, expected, problem)


def test_float64_keeps_full_accuracy() -> None:
    problem, x, dy, expected = _case((2, 32, 20, 20), (16, 32, 3, 3), "float64")
    got = cpu.execute(problem, Plan("winograd", {"tile": 4, "chunk": 4}, "forced"), x, dy, None)
    assert np.abs(got - expected).max() <= 1e-12 * np.abs(expected).max()


def test_chunks_split_the_batch_and_the_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget of one tile row per chunk: every image and every row of tiles is its own chunk, and the products
    are summed over them."""
    problem, x, dy, expected = _case((3, 8, 17, 17), (5, 8, 3, 3))
    seen = []
    real = grad_weight_winograd._wg.chunks
    monkeypatch.setattr(grad_weight_winograd, "chunk_tiles", lambda problem, m, budget: 1)
    monkeypatch.setattr(grad_weight_winograd._wg, "chunks", lambda *a: seen.append(real(*a)) or seen[-1])
    got = grad_weight_winograd.winograd(problem, x, dy, 4, 4)
    assert len(seen[0]) == 3 * 5  # three images of five tile rows
    assert_matches(got, expected, problem)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_land_where_autograd_puts_them(bad: float) -> None:
    problem, x, dy, _ = _case((2, 4, 12, 12), (3, 4, 3, 3))
    x[1, 2, 0, 0] = bad  # a corner: only the taps that read it see it
    expected = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (3, 4, 3, 3), torch.from_numpy(dy).double(),
                                           padding=1).numpy().astype(np.float32)
    assert not np.isfinite(expected).all() and np.isfinite(expected).any()
    got = cpu.execute(problem, Plan("winograd", {"tile": 4, "chunk": 16}, "forced"), x, dy, None)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    finite = np.isfinite(expected)
    assert_matches(np.where(finite, got, 0), np.where(finite, expected, 0), problem)


def test_the_heuristic_takes_winograd_with_enough_tiles() -> None:
    res2 = _problem((8, 64, 56, 56), (64, 64, 3, 3))
    assert cpu.heuristic(res2).strategy == "winograd" and cpu.heuristic(res2).params["tile"] == 4
    res5 = _problem((8, 512, 7, 7), (512, 512, 3, 3))       # 32 tiles of F(4x4): the GEMM path
    assert cpu.heuristic(res5).strategy != "winograd"
    strided = make_problem("conv2d_weight", (8, 64, 56, 56), (64, 64, 3, 3), "float32", False, padding=1, stride=2,
                           direction="weight")
    assert cpu.heuristic(strided).strategy != "winograd"
    depthwise = _problem((8, 64, 56, 56), (64, 1, 3, 3), groups=64)
    assert not cpu.WEIGHT_STRATEGIES["winograd"].supports(depthwise)
