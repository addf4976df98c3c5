"""Every CUDA strategy, run on the CPU emulation of its real kernel source, against the jax reference.

Outputs start as NaN (the emulated allocator poisons memory), so an element no thread writes fails the
comparison. Strategies added to ``gpuconv.cuda.STRATEGIES`` are picked up automatically.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from cuda_cases import GEMM_EXTRA, VARIANTS, cases_for, check, reference
from emu import EmuExecutor
from helpers import CASES, Case, assert_matches, random_inputs, sample_product

from gpuconv.cuda import STRATEGIES, gemm, heuristic, im2col, pointwise, run_plan
from gpuconv.cuda.compile import KernelError
from gpuconv.strategy import Plan

# Every strategy on the shared grid plus its kernel's own edge cases.
SUPPORTED = [(name, case) for name in sorted(STRATEGIES) for case in cases_for(name)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,case", SUPPORTED, ids=lambda v: str(v))
def test_defaults(name: str, case: Case, dtype: str) -> None:
    check(name, case, dtype, dict(STRATEGIES[name].defaults))


@pytest.mark.parametrize("name,case", [v[0] for v in sample_product(SUPPORTED, limit=24, seed=4)],
                         ids=lambda v: str(v))
def test_defaults_float16(name: str, case: Case) -> None:
    check(name, case, "float16", dict(STRATEGIES[name].defaults))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES + GEMM_EXTRA, ids=str)
def test_heuristic_plan(case: Case, dtype: str) -> None:
    """The plan ``auto`` takes without tuning: its strategy and problem-specific parameters."""
    problem = case.problem(dtype)
    plan = heuristic(problem)
    assert plan.source == "heuristic"
    assert STRATEGIES[plan.strategy].valid(plan.params, problem)
    check(plan.strategy, case, dtype, dict(plan.params), seed=1)


def _variants(name: str) -> list[dict[str, int]]:
    """Non-default points: the most uneven tile shapes and the largest tiles (larger than most test problems),
    then a deterministic sample of the rest."""
    strategy = STRATEGIES[name]
    points = [v for v in strategy.variants() if v != dict(strategy.defaults)]
    if not points:
        return []
    def shape(v: dict[str, int]) -> tuple[int, ...]:
        return tuple(v[k] for k in sorted(v))
    uneven = max(points, key=lambda v: max(shape(v)) / min(shape(v)))
    largest = max(points, key=lambda v: (np.prod(shape(v)), shape(v)))
    smallest = min(points, key=lambda v: (np.prod(shape(v)), shape(v)))
    sampled = [v[0] for v in sample_product(points, limit=3, seed=5)]
    picked = VARIANTS.get(name, []) + [uneven, largest, smallest] + sampled
    return list({tuple(sorted(v.items())): v for v in picked}.values())


VARIANT_CASES = [(name, params, case, dtype) for name in sorted(STRATEGIES) for i, params in enumerate(_variants(name))
                 for case, dtype in sample_product(cases_for(name),
                                                   ["float32", "float64"], limit=3, seed=i)]


@pytest.mark.parametrize("name,params,case,dtype", VARIANT_CASES,
                         ids=[f"{n}-" + "".join(f"{k}{v}" for k, v in sorted(p.items())) + f"-{c}-{d}"
                              for n, p, c, d in VARIANT_CASES])
def test_variants(name: str, params: dict[str, int], case: Case, dtype: str) -> None:
    check(name, case, dtype, params, seed=3)  # seed != 0: threads run in shuffled order between barriers


@pytest.mark.parametrize("name,case", [("im2col", CASES[2]), ("im2col", GEMM_EXTRA[2]), ("pointwise", GEMM_EXTRA[0]),
                                       ("pointwise", CASES[1])], ids=str)
def test_unaligned_inputs_take_the_scalar_path(name: str, case: Case) -> None:
    check(name, case, "float32", dict(STRATEGIES[name].defaults), misalign=True)


def test_im2col_chunks_images(monkeypatch: pytest.MonkeyPatch) -> None:
    case = Case((5, 3, 6, 6), (4, 3, 3, 3), padding=1)
    problem = case.problem()
    per_image = problem.groups * problem.reduction * problem.p * problem.q * 4
    monkeypatch.setattr(im2col, "WORKSPACE_BYTES", 2 * per_image)
    assert im2col.images_per_chunk(problem) == 2
    ex = check("im2col", case, "float32", dict(STRATEGIES["im2col"].defaults))
    assert [r.kernel for r in ex.launches] == ["im2col", "gemm"] * 3


def test_pointwise_chunks_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pointwise, "images_per_chunk", lambda problem: 1)
    ex = check("pointwise", CASES[1], "float32", dict(STRATEGIES["pointwise"].defaults))
    assert len(ex.launches) == CASES[1].x[0]


def test_launch_geometry() -> None:
    case = GEMM_EXTRA[2]  # K=131 output channels, 9x11 outputs, 2 images
    params = {"BM": 64, "BN": 32, "BK": 16, "TM": 4, "TN": 2}
    ex = check("im2col", case, "float32", params)
    cols, gemm_launch = ex.launches
    assert cols.block == (256, 1, 1) and cols.grid == (-(-2 * 9 * 11 // 256), -(-5 * 9 // 8), 1)
    assert gemm_launch.grid == (-(-2 * 9 * 11 // 32), -(-131 // 64), 1)
    assert gemm_launch.block == (gemm.threads(params), 1, 1) == (256, 1, 1)


def test_kernel_errors_surface_with_the_compiler_log() -> None:
    ex = EmuExecutor()
    bad = {"BM": 64, "BN": 64, "BK": 8, "TM": 3, "TN": 4}
    a = ex.empty((4, 4), np.float32)
    with pytest.raises(KernelError, match="thread tile must divide the block tile"):
        gemm.launch(ex, bad, "float32", a=a, b=a, bias=None, c=a, m=4, n=4, k=4, batch=1, lda=4, a_batch=0,
                    ldb=4, b_batch=0, b_cols=4, b_img=0, ldc=4, c_batch=0, c_cols=4, c_img=0, bias_batch=0)


def test_heuristic_prefers_pointwise_for_1x1() -> None:
    assert heuristic(CASES[0].problem()).strategy == "pointwise"
    assert heuristic(Case((1, 3, 8, 8), (4, 3, 1, 1), stride=2).problem()).strategy != "pointwise"
    assert heuristic(CASES[2].problem()).strategy in STRATEGIES


def test_spaces_are_data() -> None:
    for name, strategy in STRATEGIES.items():
        variants = list(strategy.variants())
        assert dict(strategy.defaults) in variants, name
        assert 10 <= len(variants) <= 1000, f"{name}: {len(variants)} variants"
    n = len(list(STRATEGIES["im2col"].variants()))
    assert n == len(list(STRATEGIES["pointwise"].variants()))
    # float64 tiles are staged in double: fewer points fit 48 KiB of shared memory.
    assert len(list(STRATEGIES["im2col"].variants(CASES[13].problem("float64")))) < \
        len(list(STRATEGIES["im2col"].variants(CASES[13].problem("float32"))))


@pytest.mark.parametrize("case", [CASES[16], CASES[17], CASES[2], CASES[0]], ids=str)
def test_run_plan_as_execute_does(case: Case) -> None:
    """The backend's execute path (reshapes, contiguity, allocation) on the emulated device, 1-d included."""
    problem = case.problem("float32")
    x, w, b = random_inputs(case, "float32")
    xt = np.asfortranarray(x)  # not C-contiguous: execute must copy
    y = run_plan(EmuExecutor(seed=2), problem, heuristic(problem), xt, w, b)
    assert_matches(y, reference(case, "float32", 0), problem)


def test_run_plan_empty_batch_and_bad_params() -> None:
    problem = Case((0, 3, 8, 8), (4, 3, 3, 3)).problem()
    ex = EmuExecutor()
    y = run_plan(ex, problem, heuristic(problem), np.ones((0, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32),
                 None)
    assert y.shape == (0, 4, 6, 6) and not ex.launches
    with pytest.raises(ValueError, match="not valid for the CUDA strategy 'im2col'"):
        run_plan(ex, CASES[2].problem(), Plan("im2col", {"BM": 48}), *random_inputs(CASES[2], "float32"))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_hand_picked_variants_are_valid_and_distinct(name: str) -> None:
    strategy, variants = STRATEGIES[name], VARIANTS[name]
    assert all(strategy.valid(v) for v in variants)
    assert len({tuple(sorted(v.items())) for v in variants + [dict(strategy.defaults)]}) == len(variants) + 1


HEURISTIC_PARAMS = {name: importlib.import_module(f"gpuconv.cuda.{name}").heuristic_params
                    for name in sorted(STRATEGIES)
                    if hasattr(importlib.import_module(f"gpuconv.cuda.{name}"), "heuristic_params")}


@pytest.mark.parametrize(("name", "case", "dtype"),
                         [(n, c, d) for n in HEURISTIC_PARAMS
                          for c, d in sample_product(cases_for(n), ["float32", "float64"], limit=6, seed=5)],
                         ids=str)
def test_heuristic_params(name: str, case: Case, dtype: str) -> None:
    """A strategy's untuned parameters for a problem are a valid point of its space and compute the problem."""
    for dt in ("float16", "float32", "float64"):
        assert STRATEGIES[name].valid(HEURISTIC_PARAMS[name](case.problem(dt)), case.problem(dt))
    check(name, case, dtype, HEURISTIC_PARAMS[name](case.problem(dtype)), seed=6)
