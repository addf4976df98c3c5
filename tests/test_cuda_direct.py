"""What is particular to ``kernels/direct.cu``: host-side tiling of the shared-memory window, and tiles larger than
the problem. Its runs on the shared grid, edge cases and variants are in ``test_cuda_emulated.py``."""

from __future__ import annotations

import pytest
from cuda_cases import check
from helpers import Case, sample_product

from gpuconv.cuda import direct

STRATEGY = direct.STRATEGY


def test_tile_larger_than_problem() -> None:
    """A 3x3 output with the largest tile: one block, most threads idle, nothing written out of bounds."""
    params = max(STRATEGY.variants(), key=lambda v: v["BQ"] * v["BP"] * v["QPT"])
    case = Case((2, 3, 5, 5), (4, 3, 3, 3))
    assert direct.launch_geometry(case.problem(), params)["tiles_p"] == 1
    check("direct", case, "float32", params)


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
