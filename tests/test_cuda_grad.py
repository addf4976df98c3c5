"""The CUDA gradient strategies on the CPU emulation of their kernel sources, against PyTorch's autograd.

Every strategy of ``gpuconv.cuda.INPUT_STRATEGIES`` and ``WEIGHT_STRATEGIES`` (the dedicated kernels and the
``rewrite`` fallback) runs on the shared gradient grid (``helpers.GRAD_CASES``: gaps at stride > kernel,
dilation, groups, depthwise and channel multipliers, kernel == input, 1x1, 'same' with even kernels, ambiguous
input sizes, 1-d) plus each kernel's own edge cases. Results start as NaN (the emulated allocator poisons
memory), so an element no thread writes fails. The kernels also compile with NVRTC for compute_80 and
compute_90, and their defaults do not spill.
"""

from __future__ import annotations

import functools
import re
import shutil
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest
from emu import EmuExecutor
from helpers import GRAD_CASES, Case, assert_matches, gradient_case, gradient_problem_of, sample_product
from test_cuda_compile import ARCHS, SAMPLE, SMEM_LIMIT, RecordingExecutor, _cubin_report, ptx_of, shared_bytes

from gpuconv.cuda import TABLES, col2im, dgrad, heuristic, run_plan, wgrad
from gpuconv.cuda.source import SIMT_DTYPES as DTYPES  # the dedicated kernels' (bfloat16: rewrite only)
from gpuconv.problem import ConvProblem, make_problem
from gpuconv.strategy import Plan

DIRECTIONS = ("input", "weight")

# Beyond GRAD_CASES, what the input-gradient kernels' phases and tiles have to get right.
INPUT_EXTRA: list[Case] = [
    Case((1, 70, 6, 7), (3, 70, 3, 3), padding=1, bias=False),                 # Cg = 70: partial M tiles
    Case((2, 6, 9, 9), (40, 6, 3, 3), padding=1, bias=False),                  # Kg*R*S = 360: many slices
    Case((1, 3, 13, 14), (4, 3, 3, 3), stride=2, dilation=2, padding=2, bias=False),  # odd phases: no taps
    Case((1, 2, 17, 19), (3, 2, 3, 2), stride=3, dilation=(2, 3), bias=False),  # rstep 3; all taps one phase
    Case((1, 4, 11, 11), (6, 2, 3, 3), groups=2, stride=2, padding=1, bias=False),  # groups x phases on z
]
# Beyond GRAD_CASES, what the weight-gradient kernel's tiles and splits have to get right.
WEIGHT_EXTRA: list[Case] = [
    Case((3, 4, 20, 20), (6, 4, 3, 3), padding=1, bias=False),                 # N*P*Q = 1200: many slices
    Case((2, 3, 9, 9), (70, 3, 3, 3), padding=1, bias=False),                  # Kg = 70: partial M tiles
    Case((1, 40, 6, 6), (8, 40, 3, 3), padding=1, bias=False),                 # C*R*S = 360: several N tiles
    Case((2, 8, 10, 10), (16, 2, 3, 3), groups=4, stride=2, padding=1, bias=False),
]
EXTRA = {"input": INPUT_EXTRA, "weight": WEIGHT_EXTRA}


def cases_for(direction: str, name: str) -> list[Case]:
    strategy = TABLES[direction][name]
    return [c for c in GRAD_CASES + EXTRA[direction] if strategy.supports(gradient_problem_of(c, "float32", direction))]


@functools.cache
def expected(case: Case, dtype: str, direction: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return gradient_case(case, dtype, direction, seed)


def check(direction: str, name: str, case: Case, dtype: str, params: Mapping[str, int], seed: int = 0) -> EmuExecutor:
    """Run ``name`` through ``run_plan`` (which validates ``params`` and allocates the NaN-poisoned result)."""
    a, b, want = expected(case, dtype, direction, seed)
    problem = gradient_problem_of(case, dtype, direction)
    ex = EmuExecutor(seed=seed)
    got = run_plan(ex, problem, Plan(name, dict(params), "forced"), ex.to_device(a), ex.to_device(b), None)
    assert_matches(got, want, problem)
    return ex


SUPPORTED = [(d, name, case) for d in DIRECTIONS for name in sorted(TABLES[d]) for case in cases_for(d, name)]
DEDICATED = [(d, name) for d in DIRECTIONS for name in sorted(TABLES[d]) if name != "rewrite"]


def _id(v: Any) -> str:
    return "".join(f"{k}{n}" for k, n in sorted(v.items())) if isinstance(v, dict) else str(v)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("direction,name,case", SUPPORTED, ids=_id)
def test_defaults(direction: str, name: str, case: Case, dtype: str) -> None:
    check(direction, name, case, dtype, TABLES[direction][name].defaults)


@pytest.mark.parametrize("direction,name,case", [v[0] for v in sample_product(SUPPORTED, limit=14, seed=7)],
                         ids=_id)
def test_defaults_float16(direction: str, name: str, case: Case) -> None:
    check(direction, name, case, "float16", TABLES[direction][name].defaults)


@pytest.mark.parametrize("direction,case,dtype",
                         sample_product(DIRECTIONS, GRAD_CASES + INPUT_EXTRA[:2] + WEIGHT_EXTRA[:1],
                                        ["float32", "float64"], limit=40, seed=2), ids=_id)
def test_heuristic_plan(direction: str, case: Case, dtype: str) -> None:
    """The plan ``auto`` takes without tuning, with a shuffled thread order."""
    problem = gradient_problem_of(case, dtype, direction)
    plan = heuristic(problem)
    assert plan.source == "heuristic" and plan.strategy != "rewrite"
    assert TABLES[direction][plan.strategy].valid(plan.params, problem)
    check(direction, plan.strategy, case, dtype, plan.params, seed=1)


def _variants(direction: str, name: str) -> list[dict[str, int]]:
    """Non-default points: the most uneven tile, the largest, the smallest, and a deterministic sample."""
    strategy = TABLES[direction][name]
    points = [v for v in strategy.variants() if v != dict(strategy.defaults)]
    if name == "implicit_gemm" and direction == "weight":  # one split count per tile, several tiles
        points = [v for v in points if v["SPLIT_K"] == 4]

    def shape(v: dict[str, int]) -> tuple[int, ...]:
        return tuple(v[k] for k in ("BM", "BN", "BK", "TM", "TN"))

    uneven = max(points, key=lambda v: max(shape(v)) / min(shape(v)))
    largest = max(points, key=lambda v: (np.prod(shape(v)), shape(v)))
    smallest = min(points, key=lambda v: (np.prod(shape(v)), shape(v)))
    sampled = [v[0] for v in sample_product(points, limit=1, seed=5)]
    return list({tuple(sorted(v.items())): v for v in [uneven, largest, smallest, *sampled]}.values())


def _dtypes(direction: str, name: str, params: dict[str, int]) -> list[str]:
    # float64 accumulators take twice the registers and shared memory: not every tile is a float64 point
    return [dt for dt in ("float32", "float64")
            if TABLES[direction][name].valid(params, gradient_problem_of(GRAD_CASES[0], dt, direction))]


VARIANT_CASES = [(d, name, params, case, dtype) for d, name in DEDICATED
                 for i, params in enumerate(_variants(d, name))
                 for case, dtype in sample_product(cases_for(d, name), _dtypes(d, name, params), limit=2, seed=i)]


@pytest.mark.parametrize("direction,name,params,case,dtype", VARIANT_CASES, ids=_id)
def test_variants(direction: str, name: str, params: dict[str, int], case: Case, dtype: str) -> None:
    check(direction, name, case, dtype, params, seed=3)


@pytest.mark.parametrize("split", wgrad.SPACE["SPLIT_K"][1:])
@pytest.mark.parametrize("case", [WEIGHT_EXTRA[0], GRAD_CASES[12], GRAD_CASES[17]], ids=str)
def test_weight_gradient_splits(case: Case, split: int) -> None:
    """Every split count, including splits past the end of the reduction (they store zero partial sums)."""
    params = {**wgrad.DEFAULTS, "SPLIT_K": split}
    ex = check("weight", "implicit_gemm", case, "float64" if split % 4 else "float32", params, seed=2)
    assert [r.func for r in ex.launches] == ["wgrad_split_k", "wgrad_reduce"]
    assert ex.launches[0].grid[2] == case.groups * split


def test_weight_gradient_split_is_deterministic() -> None:
    """The split reduction adds the partial sums in split order: two runs agree bit for bit, whatever the order
    the threads ran in, and one split stores dw directly."""
    case, params = WEIGHT_EXTRA[0], {**wgrad.DEFAULTS, "SPLIT_K": 8}
    problem = gradient_problem_of(case, "float32", "weight")
    a, b, _ = expected(case, "float32", "weight", 0)
    runs = []
    for seed in (1, 2):
        ex = EmuExecutor(seed=seed)
        runs.append(run_plan(ex, problem, Plan("implicit_gemm", params), ex.to_device(a), ex.to_device(b), None))
    assert np.array_equal(runs[0], runs[1])
    ex = check("weight", "implicit_gemm", case, "float32", wgrad.DEFAULTS)
    assert [r.func for r in ex.launches] == ["wgrad_split_k"]


def test_input_gradient_launch_geometry() -> None:
    """Groups times stride phases on z, input-channel tiles on y, the largest phase's pixels on x."""
    case = INPUT_EXTRA[4]  # 2 groups, stride 2, 11x11 input: phases of 6x6, 6x5, 5x6 and 5x5 pixels
    ex = check("input", "implicit_gemm", case, "float32", dgrad.DEFAULTS)
    (rec,) = ex.launches
    assert rec.grid == (-(-1 * 6 * 6 // dgrad.DEFAULTS["BN"]), 1, 2 * 2 * 2)
    assert rec.block == (dgrad.threads(dgrad.DEFAULTS), 1, 1)


def test_col2im_chunks_images(monkeypatch: pytest.MonkeyPatch) -> None:
    case = Case((5, 3, 6, 6), (4, 3, 3, 3), padding=1, bias=False)
    problem = gradient_problem_of(case, "float32", "input")
    monkeypatch.setattr(col2im, "WORKSPACE_BYTES", 2 * problem.reduction * problem.p * problem.q * 4)
    assert col2im.images_per_chunk(problem) == 2
    ex = check("input", "col2im", case, "float32", col2im.STRATEGY.defaults)
    assert [r.kernel for r in ex.launches] == ["gemm", "col2im"] * 3


def test_col2im_float16_columns_stay_float32() -> None:
    ex = check("input", "col2im", GRAD_CASES[13], "float16", col2im.STRATEGY.defaults)
    assert ex.launches[0].params.get("GEMM_ACC_OUT") == 1
    ex = check("input", "col2im", GRAD_CASES[13], "float32", col2im.STRATEGY.defaults)
    assert "GEMM_ACC_OUT" not in ex.launches[0].params  # float32: the forward im2col's GEMM binary


def test_heuristic_rules() -> None:
    def problem(direction: str, x: tuple[int, ...], w: tuple[int, ...], **kw: Any) -> ConvProblem:
        return make_problem("conv2d", x, w, "float32", False, direction=direction, **kw)

    assert heuristic(problem("input", (8, 64, 28, 28), (64, 64, 3, 3), padding=1)).strategy == "implicit_gemm"
    assert heuristic(problem("input", (8, 256, 14, 14), (256, 256, 3, 3), padding=1)).strategy == "col2im"
    big = problem("weight", (32, 64, 56, 56), (64, 64, 3, 3), padding=1)
    plan = heuristic(big)
    assert plan.strategy == "implicit_gemm" and plan.params["SPLIT_K"] > 1
    assert (big.n * big.p * big.q) // plan.params["SPLIT_K"] >= wgrad.MIN_SPLIT_PIXELS
    small = problem("weight", (1, 8, 8, 8), (8, 8, 3, 3), padding=1)  # 64 pixels: nothing to split
    assert heuristic(small).params["SPLIT_K"] == 1


@pytest.mark.parametrize("direction,name", DEDICATED, ids=str)
def test_spaces_and_heuristic_params(direction: str, name: str) -> None:
    strategy = TABLES[direction][name]
    variants = list(strategy.variants())
    assert dict(strategy.defaults) in variants
    assert 10 <= len(variants) <= 1000, f"{name}: {len(variants)} variants"
    pick = {("input", "implicit_gemm"): dgrad.heuristic_params, ("input", "col2im"): col2im.heuristic_params,
            ("weight", "implicit_gemm"): wgrad.heuristic_params}[direction, name]
    for case in cases_for(direction, name):
        for dt in DTYPES:
            problem = gradient_problem_of(case, dt, direction)
            assert strategy.valid(pick(problem), problem), (case, dt)


# ---- NVRTC: every variant compiles for both architectures (sampled unless GPUCONV_COMPILE_ALL=1) -------------

Launch = tuple[str, str, tuple[tuple[str, int], ...], str]
PROBE = dict(x=(2, 64, 16, 16), w=(64, 64, 3, 3), padding=1, stride=2)


def launches_of(direction: str, name: str, params: Mapping[str, int], dtype: str) -> list[Launch]:
    spec = dict(PROBE)
    problem = make_problem("conv2d", spec.pop("x"), spec.pop("w"), dtype, False, direction=direction, **spec)
    ex = RecordingExecutor()
    a, b = (np.ones(s, dtype) for s in _shapes4(problem))
    out = np.empty(_result4(problem), dtype)
    TABLES[direction][name].run(ex, problem, dict(params), a, b, None, out)
    assert ex.launches, f"{direction} strategy {name!r} launched nothing"
    return ex.launches


def _shapes4(pr: ConvProblem) -> tuple[tuple[int, ...], tuple[int, ...]]:
    x, w, y = (pr.n, pr.c, pr.h, pr.w), (pr.k, pr.cg, pr.r, pr.s), pr.out_shape4
    return (y, w) if pr.direction == "input" else (x, y)


def _result4(pr: ConvProblem) -> tuple[int, ...]:
    return (pr.n, pr.c, pr.h, pr.w) if pr.direction == "input" else (pr.k, pr.cg, pr.r, pr.s)


def _is_forward_binary(launch: Launch) -> bool:
    # col2im's float32/float64 GEMM is the forward im2col's binary, which tests/test_cuda_compile.py compiles.
    kernel, _, params, dtype = launch
    return kernel == "gemm" and "GEMM_ACC_OUT" not in dict(params)


def compile_points() -> list[Launch]:
    """Distinct (kernel, function, params, dtype) of every variant on the probe; a deterministic sample of each
    strategy's per dtype unless GPUCONV_COMPILE_ALL=1 (the defaults always)."""
    points: list[Launch] = []
    for direction, name in DEDICATED:
        strategy = TABLES[direction][name]
        for dtype in DTYPES:
            spec = dict(PROBE)
            problem = make_problem("conv2d", spec.pop("x"), spec.pop("w"), dtype, False, direction=direction, **spec)
            variants = [dict(strategy.defaults)] + [v[0] for v in sample_product(
                list(strategy.variants(problem)), limit=SAMPLE, seed=len(points))]
            for v in variants:
                points += [lc for lc in launches_of(direction, name, v, dtype) if not _is_forward_binary(lc)]
    return list(dict.fromkeys(points))


COMPILE_POINTS = compile_points()
DEFAULT_LAUNCHES = list(dict.fromkeys(lc for d, n in DEDICATED for dt in DTYPES
                                      for lc in launches_of(d, n, TABLES[d][n].defaults, dt)))


@pytest.mark.parametrize("kernel,func,params,dtype", COMPILE_POINTS,
                         ids=[f"{k}.{f}-{d}-" + "".join(f"{n}{v}" for n, v in p) for k, f, p, d in COMPILE_POINTS])
def test_variant_compiles(kernel: str, func: str, params: tuple[tuple[str, int], ...], dtype: str) -> None:
    defaults = {lc[:3] for lc in DEFAULT_LAUNCHES}
    archs = ARCHS if (kernel, func, params) in defaults or SAMPLE is None else \
        (ARCHS[zlib.crc32(repr(params).encode()) % len(ARCHS)],)
    for arch in archs:
        smem = shared_bytes(ptx_of(kernel, params, dtype, arch))
        assert func in smem, f"{kernel}.cu has no entry {func!r} (entries: {sorted(smem)})"
        assert smem[func] <= SMEM_LIMIT, f"{kernel}.{func} {dict(params)} {dtype}: {smem[func]} bytes of shared memory"


def test_compile_points_cover_every_kernel() -> None:
    assert {(k, f) for k, f, _, _ in COMPILE_POINTS} >= {("dgrad", "dgrad_implicit_gemm"), ("col2im", "col2im"),
                                                       ("wgrad", "wgrad_split_k"), ("wgrad", "wgrad_reduce"),
                                                       ("gemm", "gemm")}


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="needs ptxas (CUDA toolkit)")
@pytest.mark.parametrize("kernel,func,params,dtype", [lc for lc in DEFAULT_LAUNCHES if not _is_forward_binary(lc)],
                         ids=lambda v: v if isinstance(v, str) else "".join(f"{n}{x}" for n, x in v))
def test_defaults_do_not_spill(kernel: str, func: str, params: tuple[tuple[str, int], ...], dtype: str,
                               tmp_path: Path) -> None:
    lines = _cubin_report(kernel, dict(params), dtype, tmp_path).splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(rf"Compiling entry function '{func}'", line))
    block = "\n".join(lines[start:start + 4])
    regs = int(re.search(r"Used (\d+) registers", block).group(1))
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", block)]
    print(f"\n{kernel}.{func} {dict(params)} {dtype}: {regs} registers, spills {spills}")
    assert spills and not any(spills), f"{kernel}.{func} {dtype} spills at its defaults:\n{block}"
