"""``kernels/tc_implicit_gemm.cu`` on the CPU emulation: float16 and bfloat16 (mma.m16n8k16 .f16 / .bf16) and float32
at precision "tf32" (mma.m16n8k8), against the float64 definition with tolerances from the mantissas
(``gpuconv.measure.tolerance``).

The emulated mma and ldmatrix follow the PTX ISA's fragment layouts and cp.async copies land only at their wait
(see ``kernels/warp.cuh``), so a fragment in the wrong register, a missing wait or barrier in the pipeline, or a
chunk loaded from the wrong place fails here. Outputs start as NaN. The NVRTC compiles of the tuning space are
in ``test_cuda_compile.py`` (every point under ``GPUCONV_COMPILE_ALL=1``).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import pytest
from emu import EmuExecutor
from helpers import CASES, Case, assert_matches, random_inputs, sample_product

from gpuconv.cuda import STRATEGIES, heuristic, tc_implicit_gemm
from gpuconv.cuda.compile import KernelError, compile_ptx
from gpuconv.cuda.executor import MAX_DYNAMIC_SHARED
from gpuconv.cuda.occupancy import LIMITS, Device
from gpuconv.problem import ConvProblem, make_problem
from gpuconv.reference import run_problem

STRATEGY = tc_implicit_gemm.STRATEGY
PRECISION = {"float16": "highest", "bfloat16": "highest", "float32": "tf32"}

# What the kernel's packing and pipeline have to get right beyond the shared grid: channels that are and are not
# a multiple of the 16-byte vector, reductions of many slices (the pipeline turns over several times), output
# channels beyond one tile, groups with padded channels, strides and dilations on the cp.async zero-fill.
EXTRA: list[Case] = [
    Case((2, 24, 9, 9), (40, 24, 3, 3), padding=1),                     # Cp = C: no channel padding; Kg > 32
    Case((1, 40, 6, 6), (8, 40, 3, 3), padding=1),                      # reduction 360+: many slices
    Case((1, 5, 8, 8), (70, 5, 3, 3), padding=1, bias=False),           # Kg = 70: a partial second M tile
    Case((2, 12, 7, 7), (16, 3, 3, 3), groups=4, padding=2, dilation=2),  # groups, Cg = 3 padded to 8 / 4
    Case((1, 8, 13, 11), (8, 8, 3, 5), stride=(2, 3), padding=(0, 2)),  # strides: ragged columns
    Case((3, 16, 5, 5), (8, 16, 1, 1)),                                 # 1x1: N*P*Q = 75
]


def _problem(case: Case, dtype: str) -> ConvProblem:
    return make_problem(case.fn, case.x, case.w, dtype, case.bias, precision=PRECISION[dtype], **case.kwargs)


@functools.cache
def _reference(case: Case, dtype: str, seed: int) -> np.ndarray:
    """The float64 convolution of the inputs, rounded once to ``dtype``."""
    x, w, b = random_inputs(case, dtype, seed)
    problem = dataclasses.replace(_problem(case, dtype), dtype="float64", precision="highest")
    wide = [None if a is None else a.astype(np.float64) for a in (x, w, b)]
    return run_problem(problem, *wide).astype(x.dtype)


def check(case: Case, dtype: str, params: dict[str, int], seed: int = 0) -> EmuExecutor:
    problem = _problem(case, dtype)
    assert STRATEGY.supports(problem) and STRATEGY.valid(params, problem), (case, dtype, params)
    x, w, b = random_inputs(case, dtype, seed)
    ex = EmuExecutor(seed=seed)
    y = ex.empty(problem.out_shape4, dtype)
    y[...] = np.nan
    STRATEGY.run(ex, problem, params, ex.to_device(x.reshape(problem.n, problem.c, problem.h, problem.w)),
                 ex.to_device(w.reshape(problem.k, problem.cg, problem.r, problem.s)),
                 None if b is None else ex.to_device(b), y)
    assert_matches(y.reshape(problem.out_shape), _reference(case, dtype, seed), problem)
    return ex


GRID = [(c, d) for c, d in sample_product(CASES, ["float16", "float32"], limit=16, seed=11)] + \
    [(c, "bfloat16") for (c,) in sample_product(CASES, limit=6, seed=12)] + \
    [(c, d) for c in EXTRA for d in ("float16", "bfloat16", "float32")]


@pytest.mark.parametrize("case,dtype", GRID, ids=[f"{c}-{d}" for c, d in GRID])
def test_defaults(case: Case, dtype: str) -> None:
    check(case, dtype, dict(STRATEGY.defaults))


def _variants() -> list[dict[str, int]]:
    """Points valid for both dtypes: the smallest and largest blocks, the tallest and widest, the deepest pipeline,
    a BK 16 point and the most warps."""
    points = [v for v in STRATEGY.variants() if v != dict(STRATEGY.defaults)]
    picks = [min(points, key=lambda v: (v["BM"] * v["BN"], v["STAGES"])),
             max(points, key=lambda v: (v["BM"] * v["BN"], v["STAGES"])),
             max(points, key=lambda v: (v["BM"] / v["BN"], v["STAGES"])),
             max(points, key=lambda v: (v["BN"] / v["BM"], -v["STAGES"])),
             max(points, key=lambda v: (v["STAGES"], v["BK"], v["BM"])),
             max(points, key=lambda v: (v["BK"], v["STAGES"], v["BM"] * v["BN"])),
             max(points, key=lambda v: (v["WM"] * v["WN"], -v["STAGES"]))]
    return list({tuple(sorted(v.items())): v for v in picks}.values())


VARIANTS = _variants()
VARIANT_CASES = [(v, c, d) for i, v in enumerate(VARIANTS)
                 for c, d in sample_product(EXTRA[:4], ["float16", "float32"], limit=2, seed=i)] + \
    [(v, EXTRA[i % 4], "bfloat16") for i, v in enumerate(VARIANTS[:3])]  # bfloat16: the smallest, largest, tallest


@pytest.mark.parametrize("params,case,dtype", VARIANT_CASES,
                         ids=["".join(f"{k}{n}" for k, n in p.items()) + f"-{c}-{d}" for p, c, d in VARIANT_CASES])
def test_variants(params: dict[str, int], case: Case, dtype: str) -> None:
    check(case, dtype, params, seed=5)  # seed != 0: threads run in shuffled order between barriers


def test_tf32_is_visible() -> None:
    """At precision "tf32" the products really are of rounded operands: the result differs from the exact float32
    convolution by more than float32 rounding, but stays inside the TF32 tolerance (checked in ``check``)."""
    case = EXTRA[0]
    x, w, b = random_inputs(case, "float32")
    problem = _problem(case, "float32")
    ex = EmuExecutor()
    y = ex.empty(problem.out_shape4, "float32")
    STRATEGY.run(ex, problem, dict(STRATEGY.defaults), ex.to_device(x), ex.to_device(w), ex.to_device(b), y)
    exact = _reference(case, "float32", 0)
    assert np.abs(y - exact).max() > 1e-4


def test_supports_and_heuristic() -> None:
    """float16 at any precision and float32 at "tf32" pick the tensor cores; exact float32, float64 and
    depthwise do not."""
    conv = Case((2, 32, 14, 14), (64, 32, 3, 3), padding=1)
    for dtype, precision in (("float16", "highest"), ("float16", "tf32"), ("float32", "tf32")):
        p = make_problem("conv2d", conv.x, conv.w, dtype, True, padding=1, precision=precision)
        plan = heuristic(p)
        assert plan.strategy == "tc_implicit_gemm" and STRATEGY.valid(plan.params, p)
    for dtype in ("float32", "float64"):
        p = make_problem("conv2d", conv.x, conv.w, dtype, True, padding=1)
        assert not STRATEGY.supports(p) and heuristic(p).strategy != "tc_implicit_gemm"
    assert not STRATEGY.supports(make_problem("conv2d", conv.x, conv.w, "float64", True, precision="tf32"))
    dw = make_problem("conv2d", (1, 8, 8, 8), (8, 1, 3, 3), "float16", False, groups=8)
    assert heuristic(dw).strategy == "direct"
    assert "tc_implicit_gemm" in STRATEGIES


def test_bfloat16_runs_on_the_tensor_cores_only() -> None:
    """bfloat16 at either precision, depthwise and 1x1 included, is the tensor-core kernel's; the SIMT kernels
    (forward and gradients) refuse it and their requirement says why."""
    from gpuconv.cuda import TABLES

    shapes = (((2, 32, 14, 14), (64, 32, 3, 3), 1), ((1, 8, 8, 8), (8, 1, 3, 3), 8), ((2, 16, 8, 8), (32, 16, 1, 1), 1))
    for x, w, groups in shapes:
        for precision in ("highest", "tf32"):
            p = make_problem("conv2d", x, w, "bfloat16", True, groups=groups, precision=precision)
            plan = heuristic(p)
            assert plan.strategy == "tc_implicit_gemm" and STRATEGY.valid(plan.params, p), (x, w, precision)
            assert [n for n, s in STRATEGIES.items() if s.supports(p)] == ["tc_implicit_gemm"]
    for direction in ("input", "weight"):
        p = make_problem("conv2d", (2, 16, 8, 8), (32, 16, 3, 3), "bfloat16", False, direction=direction)
        assert heuristic(p).strategy == "rewrite"  # the forward rewrite, on the tensor cores
        for name, s in TABLES[direction].items():
            assert s.supports(p) == (name == "rewrite"), name
    assert "float16, float32 or float64" in STRATEGIES["implicit_gemm"].requires
    assert "bfloat16" in STRATEGY.requires


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_each_dtype_compiles_to_its_own_mma(arch: str) -> None:
    """NVRTC: the main kernel's only mma is the dtype's (bfloat16 is not run as float16 bits)."""
    mmas = {"float16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
            "bfloat16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
            "float32": "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"}
    for dtype, mma in mmas.items():
        ptx = compile_ptx("tc_implicit_gemm", dict(STRATEGY.defaults), dtype, arch)
        assert set(re.findall(r"mma\.sync\.aligned\.[\w.]+", ptx)) == {mma}, dtype


def test_launches() -> None:
    """Two packing launches, then the GEMM: pixels on x, output-channel tiles on y, groups on z."""
    case = Case((2, 8, 7, 7), (12, 2, 3, 3), groups=4, padding=1)
    ex = check(case, "float16", dict(STRATEGY.defaults))
    pack_x, pack_w, gemm = ex.launches
    assert (pack_x.func, pack_w.func, gemm.func) == ("tc_pack_x", "tc_pack_w", "tc_implicit_gemm_conv")
    params = STRATEGY.defaults
    assert gemm.grid == (-(-2 * 7 * 7 // params["BN"]), 1, 4)
    assert gemm.block == (tc_implicit_gemm.threads(params), 1, 1)
    assert (pack_x.shared, pack_w.shared, gemm.shared) == (0, 0, tc_implicit_gemm.smem_bytes(params, "float16"))


def test_pipeline_fills_the_launch_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three stages of a 128 x 128 tile (60 KiB, past what static shared memory holds) run from dynamic shared
    memory, and its size is what the buffers need: 32 bytes less (the last B row's last chunk) fails the launch."""
    params = {"BM": 128, "BN": 128, "BK": 32, "WM": 2, "WN": 4, "STAGES": 3}
    case = EXTRA[1]  # 12 slices: every stage is filled
    assert tc_implicit_gemm.smem_bytes(params, "float16") == 3 * 256 * 80 > 48 * 1024
    check(case, "float16", params)
    full = tc_implicit_gemm.smem_bytes
    monkeypatch.setattr(tc_implicit_gemm, "smem_bytes", lambda p, d: full(p, d) - 32)
    with pytest.raises(KernelError, match="past the launch's"):
        check(case, "float16", params)


def test_heuristic_keeps_to_each_device_shared_memory() -> None:
    """The heuristic's pipeline fits the block limit of every compute capability it knows (99 KiB on sm_86/89),
    and no other pipeline of its tile that fits keeps more blocks resident."""
    large = make_problem("conv2d", (32, 256, 28, 28), (256, 256, 3, 3), "float32", False, padding=1,
                         precision="tf32")
    for cc, lim in LIMITS.items():
        for dtype in ("float16", "bfloat16", "float32"):
            p = dataclasses.replace(large, dtype=dtype)
            params = tc_implicit_gemm.heuristic_params(p, Device(132, cc))
            assert STRATEGY.valid(params, p) and tc_implicit_gemm.smem_bytes(params, dtype) <= lim.smem_block, \
                (cc, dtype, params)

            others = [{**params, "BK": bk, "STAGES": st} for bk, st in tc_implicit_gemm._PIPELINES]
            fitting = [o for o in others if STRATEGY.valid(o, p) and
                       tc_implicit_gemm.smem_bytes(o, dtype) <= lim.smem_block]
            assert tc_implicit_gemm.resident_blocks(params, dtype, Device(132, cc)) == \
                max(tc_implicit_gemm.resident_blocks(o, dtype, Device(132, cc)) for o in fitting), (cc, dtype, params)


def test_space_is_data() -> None:
    assert set(STRATEGY.space) == {"BM", "BN", "BK", "WM", "WN", "STAGES"}
    p16 = _problem(EXTRA[0], "float16")
    points = list(STRATEGY.variants(p16))
    assert STRATEGY.defaults in points and {v["STAGES"] for v in points} == {2, 3, 4}
    assert all(tc_implicit_gemm.smem_bytes(v, "float16") <= MAX_DYNAMIC_SHARED for v in points)
    assert any(tc_implicit_gemm.smem_bytes(v, "float16") > 48 * 1024 for v in points)  # past static's limit
    assert MAX_DYNAMIC_SHARED == max(lim.smem_block for lim in LIMITS.values())
