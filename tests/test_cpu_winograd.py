"""The Winograd F(2x2, 3x3) CPU strategy on the shapes where its tiling can go wrong.

``tests/test_cpu.py`` already runs it over the shared CASES it supports; these add odd output sizes (the
cropped last tile row/column), every padding, asymmetric padding, groups, batches, strided inputs,
non-finite values and wide reductions.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from helpers import Case, assert_matches, random_inputs

import gpuconv
from gpuconv import cpu, reference
from gpuconv.cpu import winograd
from gpuconv.problem import make_problem
from gpuconv.strategy import Plan

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional peer
    torch = None

PLAN = Plan("winograd", {}, "forced")

CASES = [
    Case((1, 4, 9, 7), (5, 4, 3, 3), padding=1),                    # odd P and Q: last tile row/column cropped
    Case((1, 3, 8, 8), (4, 3, 3, 3)),                               # padding 0, even P, Q
    Case((1, 3, 9, 10), (4, 3, 3, 3)),                              # padding 0, odd P
    Case((1, 5, 6, 11), (3, 5, 3, 3), padding=2),                   # padding 2 (P = H + 2)
    Case((1, 4, 7, 6), (2, 4, 3, 3), padding=(0, 2)),               # different vertical and horizontal padding
    Case((1, 4, 10, 10), (6, 4, 3, 3), padding="same"),
    Case((1, 2, 3, 3), (2, 2, 3, 3)),                               # one output, one tile
    Case((1, 2, 3, 4), (3, 2, 3, 3), padding=(0, 1)),               # a single output row
    Case((3, 6, 9, 8), (4, 6, 3, 3), padding=1),                    # batch > 1
    Case((2, 8, 7, 7), (8, 2, 3, 3), groups=4, padding=1),          # groups
    Case((2, 12, 6, 9), (6, 4, 3, 3), groups=3, padding=1),         # groups, K/G != C/G
    Case((2, 16, 14, 14), (32, 16, 3, 3), padding=1, bias=False),
]


def _ids(case: Case) -> str:
    return str(case)


def _run(problem, x, w, b=None) -> np.ndarray:
    return cpu.execute(problem, PLAN, x, w, b)


def test_supports_exactly_3x3_stride1_undilated_with_channels() -> None:
    def p(x, w, **kw):
        return make_problem("conv2d" if len(x) == 4 else "conv1d", x, w, "float32", False, **kw)

    assert winograd.supports(p((1, 4, 8, 8), (4, 4, 3, 3), padding=1))
    assert winograd.supports(p((1, 4, 8, 8), (4, 2, 3, 3), groups=2))
    assert not winograd.supports(p((1, 4, 8, 8), (4, 4, 3, 3), stride=2))
    assert not winograd.supports(p((1, 4, 8, 8), (4, 4, 3, 3), dilation=2))
    assert not winograd.supports(p((1, 4, 8, 8), (4, 4, 5, 5)))
    assert not winograd.supports(p((1, 4, 8, 8), (4, 4, 3, 2)))
    assert not winograd.supports(p((1, 4, 8, 8), (4, 1, 3, 3), groups=4))     # depthwise
    assert not winograd.supports(p((1, 1, 8, 8), (4, 1, 3, 3)))               # one input channel
    assert not winograd.supports(p((1, 4, 16), (4, 4, 3)))                    # conv1d: R == 1


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_matches_reference(case: Case, dtype: str) -> None:
    problem = case.problem(dtype)
    assert winograd.supports(problem)
    x, w, b = random_inputs(case, dtype)
    expected = getattr(reference, case.fn)(x, w, b, **case.kwargs)
    out = _run(problem, x, w, b)
    assert out.flags.c_contiguous
    assert_matches(out, expected, problem)


@pytest.mark.parametrize("padding", [(0, 1, 2, 0), (2, 0, 0, 1), (1, 2, 1, 2)])
def test_asymmetric_padding(padding: tuple[int, int, int, int]) -> None:
    """Top != bottom and left != right (what ``padding='same'`` gives even kernels; built directly here)."""
    base = make_problem("conv2d", (2, 4, 7, 8), (3, 4, 3, 3), "float64", False)
    problem = dataclasses.replace(base, padding=padding)
    x, w, _ = random_inputs(Case((2, 4, 7, 8), (3, 4, 3, 3)), "float64")
    expected = reference.run_problem(problem, x, w)
    assert expected.shape == problem.out_shape
    assert_matches(_run(problem, x, w), expected, problem)


@pytest.mark.parametrize("how", ["transposed", "sliced", "negative"])
def test_noncontiguous_inputs(how: str) -> None:
    case = Case((2, 6, 9, 11), (4, 3, 3, 3), groups=2, padding=1)
    problem = case.problem("float32")
    x, w, b = random_inputs(case, "float32")
    expected = reference.conv2d(x, w, b, **case.kwargs)
    if how == "transposed":
        xv, wv = np.asfortranarray(x), np.asfortranarray(w)
    elif how == "sliced":
        xv = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)[..., ::2]
        xv[...] = x
        wv = np.repeat(w, 2, axis=0)[::2]
    else:
        xv, wv = np.ascontiguousarray(x[:, ::-1, ::-1])[:, ::-1, ::-1], np.ascontiguousarray(w[::-1])[::-1]
    assert not xv.flags.c_contiguous and not wv.flags.c_contiguous
    assert_matches(_run(problem, xv, wv, b), expected, problem)


@pytest.mark.parametrize("c", [256, 512])
def test_wide_reductions_stay_within_tolerance(c: int) -> None:
    """The transforms add up to 16 values before and after the GEMM; the error must still fit the tolerance."""
    case = Case((1, c, 10, 9), (8, c, 3, 3), padding=1)
    problem = case.problem("float32")
    x, w, b = random_inputs(case, "float32")
    expected = reference.run_problem(case.problem("float64"), x.astype(np.float64), w.astype(np.float64),
                                     b.astype(np.float64)).astype(np.float32)
    assert_matches(_run(problem, x, w, b), expected, problem)


def test_scratch_is_not_shared_between_results() -> None:
    case = Case((1, 4, 9, 9), (4, 4, 3, 3), padding=1)
    problem = case.problem("float32")
    first = _run(problem, *random_inputs(case, "float32", seed=1))
    kept = first.copy()
    _run(problem, *random_inputs(case, "float32", seed=2))
    assert np.array_equal(first, kept)


def test_public_api_and_heuristic() -> None:
    case = Case((1, 128, 28, 28), (128, 128, 3, 3), padding=1)
    problem = case.problem("float32")
    assert cpu.heuristic(problem).strategy == "winograd"
    x, w, b = random_inputs(case, "float32")
    out = gpuconv.conv2d(x, w, b, padding=1, strategy="winograd")
    assert_matches(out, reference.conv2d(x, w, b, padding=1), problem)


# ---- NaN and Inf: where PyTorch puts them, not spread over the 4x4 tile ------------------------------------

def _torch(case: Case, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                       None if b is None else torch.from_numpy(b), **case.kwargs)
    return y.numpy()


@pytest.mark.skipif(torch is None, reason="needs PyTorch")
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "w"])
def test_nonfinite_placement_matches_torch(value: float, where: str) -> None:
    # Unpadded: an Inf weight times a padded zero is NaN in PyTorch's dense kernel, not in every peer.
    case = Case((2, 4, 9, 10), (3, 4, 3, 3))
    problem = case.problem("float32")
    x, w, b = random_inputs(case, "float32")
    target = x if where == "x" else w
    target[(1, 2, 4, 5) if where == "x" else (1, 2, 0, 2)] = value
    out, expected = _run(problem, x, w, b), _torch(case, x, w, b)
    for test in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(test(out), test(expected)), f"{test.__name__} positions differ"
    assert np.isfinite(out).any()
    assert_matches(out, expected, problem)
