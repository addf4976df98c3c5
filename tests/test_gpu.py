"""On a CUDA device: every CUDA strategy and the public API on CuPy arrays and torch CUDA tensors, against jax.

Skipped without a device (the ``gpu`` marker, see conftest.py). The same grids as the CPU and emulated tests.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CASES, Case, assert_matches, random_inputs, sample_product

import gpuconv
from gpuconv.reference import run_problem

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")

DTYPES = ["float32", "float64", "float16"]
LARGER = [
    Case((4, 64, 28, 28), (64, 64, 3, 3), padding=1),             # many blocks, vector paths, full tiles
    Case((4, 256, 14, 14), (512, 256, 1, 1)),                      # pointwise, a ResNet bottleneck
    Case((2, 3, 64, 64), (32, 3, 7, 7), stride=2, padding=3),      # stem: reduction 147, not a tile multiple
    Case((2, 32, 15, 15), (32, 1, 3, 3), padding=1, groups=32),   # depthwise
    Case((3, 16, 1000), (32, 16, 9), padding=4),                    # long conv1d
]


def _strategies():
    from gpuconv.cuda import STRATEGIES

    return STRATEGIES


def _supported(cases: list[Case]) -> list[tuple[str, Case]]:
    return [(name, case) for name in sorted(_strategies()) for case in cases
            if _strategies()[name].supports(case.problem())]


def _reference(case: Case, dtype: str, seed: int = 0) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    x, w, b = random_inputs(case, dtype, seed)
    return (x, w, b), run_problem(case.problem(dtype), x, w, b)


def _run_strategy(name: str, case: Case, dtype: str, params: dict[str, int] | None = None,
                  misalign: bool = False) -> None:
    """The strategy's run on a NaN-filled output, so an unwritten element fails."""
    from gpuconv.cuda.executor import CupyExecutor

    strategy = _strategies()[name]
    problem = case.problem(dtype)
    (x, w, b), ref = _reference(case, dtype)

    def device(a: np.ndarray, shape: tuple[int, ...]):
        if not misalign:
            return cupy.asarray(a.reshape(shape))
        buf = cupy.empty(a.size + 1, a.dtype)
        view = buf[1:].reshape(shape)
        view[...] = cupy.asarray(a.reshape(shape))
        return view

    y = cupy.full(problem.out_shape4, np.nan, dtype)
    strategy.run(CupyExecutor(), problem, dict(params or strategy.defaults),
                 device(x, (problem.n, problem.c, problem.h, problem.w)),
                 device(w, (problem.k, problem.cg, problem.r, problem.s)),
                 None if b is None else cupy.asarray(b), y)
    cupy.cuda.get_current_stream().synchronize()
    assert_matches(y.reshape(problem.out_shape), ref, problem)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,case", _supported(CASES + LARGER), ids=str)
def test_strategy_fills_every_output(name: str, case: Case, dtype: str) -> None:
    _run_strategy(name, case, dtype)


@pytest.mark.parametrize("name,case", _supported(CASES[:3] + LARGER[:2]), ids=str)
def test_unaligned_inputs(name: str, case: Case) -> None:
    _run_strategy(name, case, "float32", misalign=True)


def _variant_cases() -> list[tuple[str, dict[str, int], Case]]:
    out = []
    for name in sorted(_strategies()):
        variants = list(_strategies()[name].variants())
        cases = [c for n, c in _supported(CASES + LARGER) if n == name]
        for (params, case) in sample_product(variants, cases, limit=12, seed=len(out)):
            out.append((name, params, case))
    return out


@pytest.mark.parametrize("name,params,case", _variant_cases(), ids=str)
def test_variants(name: str, params: dict[str, int], case: Case) -> None:
    _run_strategy(name, case, "float32", params)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES + LARGER, ids=str)
def test_public_api_auto(case: Case, dtype: str) -> None:
    (x, w, b), ref = _reference(case, dtype)
    fn = getattr(gpuconv, case.fn)
    y = fn(cupy.asarray(x), cupy.asarray(w), None if b is None else cupy.asarray(b), **case.kwargs)
    assert isinstance(y, cupy.ndarray) and y.device.id == cupy.cuda.Device().id
    assert_matches(y, ref, case.problem(dtype))


@pytest.mark.parametrize("name,case", _supported(CASES[:4]), ids=str)
def test_public_api_forced_strategy(name: str, case: Case) -> None:
    (x, w, b), ref = _reference(case, "float32")
    y = getattr(gpuconv, case.fn)(cupy.asarray(x), cupy.asarray(w), None if b is None else cupy.asarray(b),
                                  strategy=name, **case.kwargs)
    assert_matches(y, ref, case.problem("float32"))


def test_non_contiguous_inputs() -> None:
    case = CASES[2]
    (x, w, b), ref = _reference(case, "float32")
    xt = cupy.asarray(np.ascontiguousarray(x.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)  # same values, F-like
    assert not xt.flags.c_contiguous
    y = gpuconv.conv2d(xt, cupy.asarray(w), cupy.asarray(b), **case.kwargs)
    assert_matches(y, ref, case.problem("float32"))


def test_runs_on_the_current_stream() -> None:
    case = LARGER[0]
    (x, w, b), ref = _reference(case, "float32")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y = gpuconv.conv2d(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), **case.kwargs)
    stream.synchronize()
    assert_matches(y, ref, case.problem("float32"))


def test_empty_batch() -> None:
    y = gpuconv.conv2d(cupy.ones((0, 3, 8, 8), cupy.float32), cupy.ones((4, 3, 3, 3), cupy.float32))
    assert isinstance(y, cupy.ndarray) and y.shape == (0, 4, 6, 6)


def test_compile_failure_leaves_the_library_usable() -> None:
    from gpuconv.cuda.compile import KernelError, get_function

    with pytest.raises(KernelError, match="thread tile must divide the block tile"):
        get_function("gemm", "gemm", {"BM": 64, "BN": 64, "BK": 8, "TM": 3, "TN": 4}, "float32")
    with pytest.raises(KernelError, match="no function 'nope'"):
        get_function("gemm", "nope", {}, "float32")
    test_public_api_forced_strategy("im2col", CASES[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_cuda_tensors_via_dlpack(dtype: str) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    case = LARGER[0]
    (x, w, b), ref = _reference(case, dtype)
    tx, tw, tb = (torch.from_numpy(a).cuda() for a in (x, w, b))
    y = gpuconv.conv2d(tx, tw, tb, **case.kwargs)
    assert isinstance(y, torch.Tensor) and y.is_cuda and str(y.dtype) == f"torch.{dtype}"
    assert_matches(y.cpu().numpy(), ref, case.problem(dtype))
    # and against torch itself, in float64
    expected = torch.nn.functional.conv2d(tx.double(), tw.double(), tb.double(), **case.kwargs)
    assert_matches(y.cpu().numpy(), expected.cpu().numpy().astype(dtype), case.problem(dtype))


def test_float16_accumulates_in_float32() -> None:
    # A long reduction of values whose float16 running sum would lose most digits.
    case = Case((1, 512, 4, 4), (8, 512, 3, 3), padding=1)
    (x, w, b), ref = _reference(case, "float16")
    y = gpuconv.conv2d(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), padding=1)
    assert_matches(y, ref, case.problem("float16"))
