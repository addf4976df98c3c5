"""The Winograd F(2x2, 3x3), F(4x4, 3x3) and F(2x2, 5x5) CPU strategies on the shapes where their tiling can go
wrong.

``tests/test_cpu.py`` already runs every variant over the shared CASES it supports; these add odd output
sizes (the cropped last tile row/column), every padding, asymmetric padding, groups, batches, strided
inputs, non-finite values, wide reductions, F(4x4)'s chunks of tiles and its memoized filter transform.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from helpers import Case, assert_matches, random_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuconv
from gpuconv import cpu, reference
from gpuconv.cpu import winograd, winograd_gemm
from gpuconv.measure import tolerance
from gpuconv.problem import make_problem
from gpuconv.strategy import Plan

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional peer
    torch = None

PLAN = Plan("winograd", {"tile": 2, "chunk": 4}, "forced")
PLAN4 = Plan("winograd", {"tile": 4, "chunk": 4}, "forced")

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
    assert winograd.supports(p((1, 4, 8, 8), (4, 4, 5, 5))) and not winograd.supports_3x3(p((1, 4, 8, 8), (4, 4, 5, 5)))
    assert not winograd.supports(p((1, 3, 8, 8), (4, 3, 5, 5)))                # too few channels for F(2x2, 5x5)
    assert not winograd.supports(p((1, 4, 8, 8), (4, 4, 7, 7)))
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
    side = 4 * int(np.ceil(np.sqrt(winograd.min_tiles(winograd.RULES["f4"], 128))))  # enough F(4x4) tiles
    case = Case((1, 128, side, side), (128, 128, 3, 3), padding=1)
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


# ---- F(4x4, 3x3) -------------------------------------------------------------------------------------------

#: F(4x4) needs winograd.F4_MIN_CHANNELS input channels per group; every P, Q modulo 4 and every padding.
CASES4 = [
    Case((1, 16, 9, 7), (5, 16, 3, 3), padding=1),                  # P % 4 == 1, Q % 4 == 3
    Case((1, 16, 8, 8), (4, 16, 3, 3)),                             # padding 0, P = Q = 6
    Case((1, 16, 12, 12), (4, 16, 3, 3), padding=1),                # whole tiles only
    Case((1, 20, 6, 11), (3, 20, 3, 3), padding=2),                 # padding 2 (P = H + 2)
    Case((1, 16, 7, 6), (2, 16, 3, 3), padding=(0, 2)),             # different vertical and horizontal padding
    Case((1, 16, 3, 3), (2, 16, 3, 3)),                             # one output, one tile
    Case((1, 16, 3, 10), (3, 16, 3, 3), padding=(0, 1)),            # a single output row
    Case((3, 16, 9, 8), (4, 16, 3, 3), padding=1),                  # batch > 1
    Case((2, 32, 7, 7), (8, 16, 3, 3), groups=2, padding=1),        # groups
    Case((2, 48, 6, 9), (6, 16, 3, 3), groups=3, padding=1),        # groups, K/G != C/G
    Case((2, 32, 14, 14), (64, 32, 3, 3), padding=1, bias=False),
]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("case", CASES4, ids=_ids)
def test_f4x4_matches_reference(case: Case, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = case.problem(dtype)
    assert cpu.STRATEGIES["winograd"].valid(PLAN4.params, problem)
    monkeypatch.setattr(winograd._im2col, "im2col", _no_fallback)
    x, w, b = random_inputs(case, dtype)
    expected = getattr(reference, case.fn)(x, w, b, **case.kwargs)
    out = cpu.execute(problem, PLAN4, x, w, b)
    assert out.flags.c_contiguous
    assert_matches(out, expected, problem)


def _no_fallback(*args: object) -> None:
    raise AssertionError("finite inputs fell back to im2col")


@pytest.mark.parametrize("m,r", sorted(winograd_gemm.TRANSFORMS))
def test_transforms_compute_a_correlation(m: int, r: int) -> None:
    """``At [(G g) * (Bt d)]`` is the 1-d correlation of ``d`` (m + r - 1 values) with ``g`` (r taps), exactly in
    float64 up to rounding: a wrong matrix entry fails by O(1)."""
    t = winograd_gemm.TRANSFORMS[m, r]
    rng = np.random.default_rng(m)
    d, g = rng.uniform(-1, 1, m + r - 1), rng.uniform(-1, 1, r)
    expected = np.array([d[i:i + r] @ g for i in range(m)])
    np.testing.assert_allclose(t.at @ ((t.g @ g) * (t.bt @ d)), expected, rtol=0, atol=1e-13)


def test_toom_cook_reproduces_the_published_f4x4() -> None:
    """The points 0, 1, -1, 1/2, -2 give the F(4x4, 3x3) matrices of Barabasz et al. entry for entry."""
    t = winograd_gemm.toom_cook((0, 1, -1, 0.5, -2), 4, 3)
    np.testing.assert_array_equal(t.bt[0], [1, -1.5, -2, 1.5, 1, 0])
    np.testing.assert_array_equal(t.at[3], [0, 1, -1, 0.125, -8, 1])
    np.testing.assert_allclose(t.g[3], [-16 / 15, -8 / 15, -4 / 15], rtol=1e-15)
    with pytest.raises(ValueError, match="needs 5 distinct finite points"):
        winograd_gemm.toom_cook((0, 1, -1, 1, -2), 4, 3)


# ---- F(2x2, 5x5) -------------------------------------------------------------------------------------------

CASES25 = [
    Case((1, 4, 9, 7), (5, 4, 5, 5), padding=2),                    # odd P and Q: last tile row/column cropped
    Case((1, 4, 8, 8), (3, 4, 5, 5)),                               # padding 0, P = Q = 4
    Case((1, 6, 5, 6), (2, 6, 5, 5), padding=(0, 1)),               # one output row, asymmetric padding
    Case((2, 8, 11, 10), (8, 4, 5, 5), groups=2, padding="same"),   # groups, same, batch
    Case((2, 32, 14, 14), (16, 32, 5, 5), padding=2, bias=False),
]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("case", CASES25, ids=_ids)
def test_f2x2_5x5_matches_reference(case: Case, chunk: int, dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = case.problem(dtype)
    plan = Plan("winograd", {"tile": 2, "chunk": chunk}, "forced")
    assert cpu.STRATEGIES["winograd"].valid(plan.params, problem)
    assert not cpu.STRATEGIES["winograd"].valid({"tile": 4, "chunk": chunk}, problem)
    monkeypatch.setattr(winograd._im2col, "im2col", _no_fallback)
    x, w, b = random_inputs(case, dtype)
    out = cpu.execute(problem, plan, x, w, b)
    assert out.flags.c_contiguous
    assert_matches(out, getattr(reference, case.fn)(x, w, b, **case.kwargs), problem)


def test_heuristic_takes_f2x2_5x5_on_wide_layers_only() -> None:
    rule = winograd.F25_RULE
    c, side = max(rule["min_channels"], winograd.F25_MIN_CHANNELS), 2 * int(np.ceil(np.sqrt(rule["min_tiles"])))
    wide = Case((1, c, side, side), (64, c, 5, 5), padding=2).problem()
    assert cpu.heuristic(wide) == Plan("winograd", {"tile": 2, "chunk": rule["chunk"]}, "heuristic")
    thin = Case((1, c - 1, side, side), (64, c - 1, 5, 5), padding=2).problem()
    small = Case((1, c, side - 4, side - 4), (64, c, 5, 5), padding=2).problem()          # fewer tiles
    assert cpu.heuristic(thin).strategy != "winograd" and cpu.heuristic(small).strategy != "winograd"


@pytest.mark.skipif(torch is None, reason="needs PyTorch")
def test_f2x2_5x5_falls_back_on_non_finite_inputs() -> None:
    case = Case((1, 4, 9, 9), (3, 4, 5, 5), padding=2, bias=False)
    x, w, _ = random_inputs(case, "float32")
    x[0, 1, 4, 4] = np.inf
    out = gpuconv.conv2d(x, w, padding=2, strategy="winograd")
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=2).numpy()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(want))


def test_f4x4_needs_enough_channels() -> None:
    s = cpu.STRATEGIES["winograd"]
    few = Case((1, winograd.F4_MIN_CHANNELS - 1, 8, 8), (4, winograd.F4_MIN_CHANNELS - 1, 3, 3)).problem()
    enough = Case((1, 2 * winograd.F4_MIN_CHANNELS, 8, 8), (4, winograd.F4_MIN_CHANNELS, 3, 3), groups=2).problem()
    assert not s.valid(PLAN4.params, few) and s.valid(PLAN.params, few)
    assert s.valid(PLAN4.params, enough)
    assert winograd.heuristic_params(few)["tile"] == 2
    assert not s.valid({"tile": 2, "chunk": 16}, few)   # F(2x2) is not chunked: one variant only


@pytest.mark.parametrize("budget,chunks", [(1, 2 * 4), (None, 2)])
def test_f4x4_chunks(budget: int | None, chunks: int) -> None:
    """A budget below one tile row gives one row of tiles per chunk; one image's worth, one image per chunk."""
    case = Case((2, 16, 15, 13), (8, 16, 3, 3), padding=1)          # 4 x 4 tiles per image, the last cropped
    problem = case.problem("float32")
    if budget is None:
        budget = winograd_gemm.scratch_bytes(problem, 4) // 2
    th, tw = winograd_gemm.tiles(problem, 4)
    assert len(winograd_gemm.chunks(problem.n, th, tw, winograd_gemm.chunk_tiles(problem, 4, budget))) == chunks
    x, w, b = random_inputs(case, "float32")
    out = winograd_gemm.winograd(problem, x, w, 4, budget)
    assert_matches(out, reference.conv2d(x, w, None, **case.kwargs), problem)


@pytest.mark.parametrize("c", [256, 512])
def test_f4x4_wide_reductions_stay_within_tolerance(c: int) -> None:
    case = Case((1, c, 10, 9), (8, c, 3, 3), padding=1)
    problem = case.problem("float32")
    x, w, b = random_inputs(case, "float32")
    expected = reference.run_problem(case.problem("float64"), x.astype(np.float64), w.astype(np.float64),
                                     b.astype(np.float64)).astype(np.float32)
    assert_matches(cpu.execute(problem, PLAN4, x, w, b), expected, problem)


# ---- the memoized filter transform ---------------------------------------------------------------------------

def _bump_one_ulp(w: np.ndarray) -> None:
    w[1, 2, 0, 1] = np.nextafter(w[1, 2, 0, 1], np.inf)


@pytest.mark.parametrize("change", ["assign", "one_ulp", "negate_zero"])
@pytest.mark.parametrize("plan", [PLAN, PLAN4], ids=["f2x2", "f4x4"])
def test_memo_is_never_stale(plan: Plan, change: str) -> None:
    """An in-place change of the weights, however small, gives the new weights' result."""
    case = Case((1, 16, 8, 8), (4, 16, 3, 3), padding=1)
    problem = case.problem("float64")
    x, w, b = random_inputs(case, "float64")
    run = cpu.prepare(problem, plan)
    run(x, w, b)
    run(x, w, b)   # the second call with the same weights keeps their transform
    if change == "assign":
        w[0] *= 2
    elif change == "one_ulp":
        _bump_one_ulp(w)
    else:
        w[2, 3, 1, 1] = 0.0
        run(x, w, b)
        w[2, 3, 1, 1] = -0.0   # equal as a number, a different bit pattern: recomputed, same result
    expected = reference.conv2d(x, w, b, **case.kwargs)
    out = run(x, w, b)
    assert_matches(out, expected, problem)
    if change == "one_ulp":  # the change is far below the tolerance: compare with a fresh runner exactly
        assert np.array_equal(out, cpu.prepare(problem, plan)(x, w, b))


def test_memo_survives_the_public_hot_path() -> None:
    """The memoized runner of ``gpuconv.conv2d`` sees in-place updates of the same weight array."""
    case = Case((1, 16, 8, 8), (4, 16, 3, 3), padding=1)
    x, w, b = random_inputs(case, "float32")
    first = gpuconv.conv2d(x, w, b, padding=1, strategy="winograd")
    w += 0.5
    second = gpuconv.conv2d(x, w, b, padding=1, strategy="winograd")
    assert not np.allclose(first, second)
    assert_matches(second, reference.conv2d(x, w, b, padding=1), case.problem("float32"))


@pytest.mark.parametrize("plan", [PLAN, PLAN4], ids=["f2x2", "f4x4"])
def test_memo_transforms_unchanged_weights_twice_at_most(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    memo_init = winograd_gemm.FilterMemo.__init__

    def counting_init(self, problem, m, transform=None):  # type: ignore[no-untyped-def]
        memo_init(self, problem, m, transform)
        inner = self.transform
        self.transform = lambda p, w, scratch: calls.append(scratch) or inner(p, w, scratch)

    monkeypatch.setattr(winograd_gemm.FilterMemo, "__init__", counting_init)
    case = Case((1, 16, 8, 8), (4, 16, 3, 3), padding=1)
    problem = case.problem("float32")
    x, w, b = random_inputs(case, "float32")
    run = cpu.prepare(problem, plan)
    for _ in range(3):
        run(x, w, b)
    run(x, np.array(w), b)    # another array with the same values
    assert calls == [True, False]   # into scratch when first seen, then once into an array of its own
    w[0, 0, 0, 0] += 1
    assert_matches(run(x, w, b), reference.conv2d(x, w, b, padding=1), problem)
    assert calls == [True, False, True]


@pytest.mark.skipif(torch is None, reason="needs PyTorch")
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["x", "w"])
def test_f4x4_nonfinite_placement_matches_torch(value: float, where: str) -> None:
    case = Case((2, 16, 11, 10), (3, 16, 3, 3))
    problem = case.problem("float32")
    x, w, b = random_inputs(case, "float32")
    target = x if where == "x" else w
    target[(1, 2, 4, 5) if where == "x" else (1, 2, 0, 2)] = value
    out, expected = cpu.execute(problem, PLAN4, x, w, b), _torch(case, x, w, b)
    for test in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(test(out), test(expected)), f"{test.__name__} positions differ"
    assert np.isfinite(out).any()
    assert_matches(out, expected, problem)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cg", [winograd.F4_MIN_CHANNELS, 64])
def test_f4x4_error_stays_under_half_the_tolerance(cg: int, dtype: str) -> None:
    """What :data:`winograd.F4_MIN_CHANNELS` promises: from there on, half the tolerance is still a margin."""
    case = Case((2, cg, 24, 24), (16, cg, 3, 3), padding=1)
    problem = case.problem(dtype)
    x, w, _ = random_inputs(case, dtype)
    exact = reference.run_problem(case.problem("float64"), x.astype(np.float64), w.astype(np.float64), None)
    rtol, atol = tolerance(problem)
    out = cpu.execute(problem, PLAN4, x, w, None).astype(np.float64)
    assert np.max(np.abs(out - exact) / (atol + rtol * np.abs(exact))) < 0.5


# ---- hypothesis-drawn problems with enough channels for F(4x4) ------------------------------------------------

@st.composite
def _f4_cases(draw: st.DrawFn) -> Case:
    """3x3 stride-1 problems with F4_MIN_CHANNELS to 24 input channels per group: every padding and every
    output size modulo 4 (partial last tiles), groups, empty and small batches."""
    groups = draw(st.sampled_from([1, 1, 2]))
    cg = draw(st.integers(winograd.F4_MIN_CHANNELS, 24))
    kg = draw(st.integers(1, 5))
    n = draw(st.sampled_from([0, 1, 1, 2, 3]))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2))
    spatial = tuple(draw(st.integers(max(1, 3 - 2 * p), 3 - 2 * p + 13)) for p in pads)
    padding = draw(st.sampled_from([pads, pads[0], "same"]))
    if padding == "same":
        spatial = tuple(max(s, 1) for s in spatial)
    return Case((n, cg * groups, *spatial), (kg * groups, cg, 3, 3), padding=padding, groups=groups,
                bias=draw(st.booleans()))


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=_f4_cases(), dtype=st.sampled_from(["float32", "float64", "float16"]), seed=st.integers(0, 2**16))
def test_drawn_problems_match_reference_and_torch(case: Case, dtype: str, seed: int) -> None:
    problem = case.problem(dtype)
    x, w, b = random_inputs(case, dtype, seed)
    expected = getattr(reference, case.fn)(x, w, b, **case.kwargs)
    strategy = cpu.STRATEGIES["winograd"]
    variants = [p for p in strategy.variants(problem) if p["tile"] == 4]
    assert variants
    for params in variants:
        out = cpu.execute(problem, Plan("winograd", params, "forced"), x, w, b)
        assert_matches(out, expected, problem)
        if torch is not None and problem.n > 0 and dtype != "float16":
            assert_matches(out, _torch(case, x, w, b).astype(dtype), problem)


# ---- the rules: one profile per processor the grid was timed on ---------------------------------------------

def _profile(vendor: str, family: int, model: int, min_tiles: int) -> dict:
    cpu = {"model": f"{vendor} {family}/{model}", "vendor": vendor, "family": family, "model_number": model}
    return {"machine": {"cpu": cpu}, "rules": {"f4": {"min_tiles": min_tiles}}}


def test_rules_profile_follows_the_processor() -> None:
    intel, amd, amd_other = _profile("GenuineIntel", 6, 167, 49), _profile("AuthenticAMD", 25, 17, 196), \
        _profile("AuthenticAMD", 25, 1, 98)
    profiles = [intel, amd_other, amd]
    assert winograd.select_profile(profiles, {"vendor": "AuthenticAMD", "family": 25, "model_number": 17}) is amd
    assert winograd.select_profile(profiles, {"vendor": "AuthenticAMD", "family": 23, "model_number": 49}) \
        is amd_other  # no profile of this part: the first of its vendor
    assert winograd.select_profile(profiles, {"vendor": "CentaurHauls", "family": 7, "model_number": 1}) is intel
    assert winograd.select_profile(profiles, {"vendor": None, "family": None, "model_number": None}) is intel
    with pytest.raises(ValueError, match="no profile"):
        winograd.select_profile([], {})


def test_shipped_rules_hold_a_profile_for_this_processor_or_the_default() -> None:
    import json

    from benchmarks import winograd_grid
    from gpuconv.cpu import _machine

    data = json.loads(winograd.RULES_PATH.read_text())
    assert data["schema"] == winograd.RULES_SCHEMA and data["profiles"]
    ident = _machine.cpu_identity()
    timed_here = [p for p in data["profiles"] if winograd.same_processor(p["machine"]["cpu"], ident)]
    assert winograd.PROFILE == (timed_here[0] if timed_here else winograd.select_profile(data["profiles"], ident))
    for profile in data["profiles"]:  # every profile's rules are what its stored grid fits
        assert winograd_grid.rules(profile) == profile["rules"], profile["machine"]["cpu"]


def test_rules_thresholds_per_channel_count() -> None:
    table = [[16, 10**9], [32, 392], [256, 49]]
    assert [winograd.min_tiles(table, c) for c in (8, 16, 31, 32, 255, 256, 4096)] == \
        [np.inf, 10**9, 10**9, 392, 392, 49, 49]
    for profile_rules in (winograd.RULES,):
        for key in ("f4", "f2"):
            tiles = [t for _, t in profile_rules[key]]
            assert tiles == sorted(tiles, reverse=True), f"{key} thresholds must not grow with the channels"


def test_grid_fit_follows_each_channel_count() -> None:
    """A grid where F(4x4) wins at 256 channels from few tiles and loses at 32 channels however many: one pair of
    thresholds cannot have both; the per-channel fit does, and its thresholds do not grow with the channels."""
    from benchmarks.winograd_grid import fit

    rows = []
    for c, tiles, f4_wins in ((32, 64, False), (32, 1024, False), (256, 49, True), (256, 16, False),
                              (64, 1024, True), (64, 49, False)):
        f4 = 1.0 if f4_wins else 2.0
        rows.append({"c": c, "tiles4": tiles, "tiles2": 4 * tiles, "median_s": {
            "gemm": 1.5, "f2": 3.0, **{f"f4_c{ch}": f4 for ch in winograd.SPACE["chunk"]}}})
    rule = fit(rows)
    assert rule["geomean_chosen_over_best"] == pytest.approx(1.0)
    assert winograd.min_tiles(rule["f4"], 256) <= 49 and winograd.min_tiles(rule["f4"], 32) > 1024
    assert 49 < winograd.min_tiles(rule["f4"], 64) <= 1024


def test_grid_tool_replaces_the_profile_of_its_processor() -> None:
    from benchmarks.winograd_grid import add_profile

    intel, amd = _profile("GenuineIntel", 6, 167, 49), _profile("AuthenticAMD", 25, 17, 196)
    again = _profile("AuthenticAMD", 25, 17, 392)
    assert add_profile([intel], amd) == [intel, amd]
    assert add_profile([intel, amd], again) == [intel, again]
    assert add_profile([amd, intel], _profile("GenuineIntel", 6, 85, 64))[:2] == [amd, intel]
