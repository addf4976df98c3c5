"""The channel-blocked, batch-wide im2col strategy where its blocks matter: several channel blocks (the
accumulation), groups, strides, dilations and padding. ``tests/test_cpu.py`` runs it over the shared grid,
where every problem fits one block."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CASES, Case, assert_matches, random_inputs

from gpuconv import cpu, reference
from gpuconv.cpu import blocked
from gpuconv.strategy import Plan

MORE = [
    Case((3, 6, 11, 12), (4, 6, 3, 3), stride=2, padding=1),
    Case((2, 8, 11, 12), (6, 4, 3, 3), stride=2, padding=1, groups=2),
    Case((2, 5, 12, 12), (4, 5, 3, 3), dilation=2, padding=2),
    Case((2, 4, 9, 9), (3, 4, 5, 5), padding=2),
]


@pytest.mark.parametrize("per_block", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", MORE + [c for c in CASES if c.w[1] >= 2], ids=str)
def test_channel_blocks_accumulate(case: Case, dtype: str, per_block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocked, "block_channels", lambda problem, block: per_block)
    problem = case.problem(dtype)
    x, w, b = random_inputs(case, dtype)
    out = cpu.execute(problem, Plan("blocked", {"block": blocked.DEFAULTS["block"]}, "forced"), x, w, b)
    assert_matches(out, getattr(reference, case.fn)(x, w, b, **case.kwargs), problem)


def test_block_channels_follow_the_budget() -> None:
    problem = Case((8, 512, 14, 14), (512, 512, 3, 3), stride=2, padding=1).problem()
    per_channel = 9 * 8 * 7 * 7 * 4
    assert blocked.block_channels(problem, 2) == 2 * 2**20 // per_channel
    assert blocked.block_channels(problem, 32) == 512     # all channels in one block
    assert blocked.block_channels(Case((1, 4, 300, 300), (4, 4, 3, 3)).problem(), 2) == 1


def test_result_is_a_view_of_k_major_storage() -> None:
    case = Case((2, 4, 8, 8), (6, 4, 3, 3), stride=2, padding=1)
    problem = case.problem("float64")
    x, w, _ = random_inputs(case, "float64")
    y = blocked.blocked(problem, x, w)
    assert y.shape == problem.out_shape4 and not y.flags.c_contiguous
    np.testing.assert_allclose(y, reference.conv2d(x, w, None, stride=2, padding=1), rtol=1e-12, atol=1e-12)


def test_the_heuristic_takes_it_for_several_small_images() -> None:
    """res5's 7x7 outputs at batch 8 (1x1, strided 1x1, 3x3): blocked; one image, 14x14 outputs, depthwise: not."""
    for case in (Case((8, 2048, 7, 7), (512, 2048, 1, 1)), Case((8, 1024, 14, 14), (2048, 1024, 1, 1), stride=2),
                 Case((8, 512, 7, 7), (512, 512, 3, 3), padding=1), Case((4, 8, 20), (4, 8, 3))):
        assert cpu.heuristic(case.problem()) == Plan("blocked", blocked.DEFAULTS, "heuristic"), case
    for case in (Case((1, 2048, 7, 7), (512, 2048, 1, 1)), Case((8, 1024, 14, 14), (512, 1024, 1, 1)),
                 Case((8, 64, 7, 7), (64, 1, 3, 3), padding=1, groups=64)):
        assert cpu.heuristic(case.problem()).strategy != "blocked", case
