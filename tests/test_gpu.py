"""On a CUDA device: every CUDA strategy and the public API on CuPy arrays and torch CUDA tensors, against jax.

Skipped without a device (the ``gpu`` marker, see conftest.py). The same grids as the CPU and emulated tests.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CASES, Case, assert_matches, random_inputs, sample_product

import gpuconv
from gpuconv.problem import make_problem
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


# ---- beyond the small grid ------------------------------------------------------------------------------------

def _free_bytes() -> int:
    return int(cupy.cuda.runtime.memGetInfo()[0])


def _sampled_check(y, x, w, problem, points: list[tuple[int, int, int, int]]) -> None:
    """Compare output elements ``(n, k, p, q)`` with their float64 sums over the input window (gathered from the
    device), since a full reference of a problem this large does not fit the host's patience."""
    from gpuconv.measure import tolerance

    rtol, atol = tolerance(problem)
    t, _, l, _ = problem.padding
    wk = cupy.asnumpy(w).astype(np.float64)
    for n, k, p, q in points:
        h0, w0 = p * problem.stride[0] - t, q * problem.stride[1] - l
        acc = 0.0
        for r in range(problem.r):
            for s in range(problem.s):
                hh, ww = h0 + r * problem.dilation[0], w0 + s * problem.dilation[1]
                if 0 <= hh < problem.h and 0 <= ww < problem.w:
                    acc += float(np.dot(cupy.asnumpy(x[n, :, hh, ww]).astype(np.float64), wk[k, :, r, s]))
        got = float(y[n, k, p, q].get())
        assert abs(got - acc) <= atol + rtol * abs(acc), f"y[{n},{k},{p},{q}] = {got}, expected {acc}"


@pytest.mark.parametrize("name,x_shape,w_shape,padding", [
    ("pointwise", (2, 8, 16384, 8200), (8, 8, 1, 1), 0),          # 2**31 + 2**21 input elements, 2 images
    ("implicit_gemm", (1, 2, 32768, 32800), (2, 2, 3, 3), 1),     # one image past 2**31 elements
], ids=["pointwise", "implicit_gemm"])
def test_past_2_31_input_elements(name: str, x_shape, w_shape, padding: int) -> None:
    from gpuconv.problem import make_problem

    problem = make_problem("conv2d", x_shape, w_shape, "float16", False, padding=padding)
    assert problem.n * problem.c * problem.h * problem.w > 2**31
    need = 2 * (int(np.prod(x_shape)) + int(np.prod(problem.out_shape))) + 2**30
    if _free_bytes() < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {_free_bytes() / 2**30:.1f} GiB free")
    rng = cupy.random.default_rng(0)
    x = rng.uniform(-1, 1, x_shape, dtype=cupy.float32).astype(cupy.float16)
    w = rng.uniform(-1, 1, w_shape, dtype=cupy.float32).astype(cupy.float16)
    y = gpuconv.conv2d(x, w, padding=padding, strategy=name)
    cupy.cuda.get_current_stream().synchronize()
    n_last, p_last, q_last = problem.n - 1, problem.p - 1, problem.q - 1
    _sampled_check(y, x, w, problem, [(0, 0, 0, 0), (n_last, problem.k - 1, p_last, q_last),
                                      (n_last, 0, p_last // 2, q_last), (n_last, 1, p_last, 3)])
    assert not bool(cupy.isnan(y[-1, :, -4:, -4:]).any())


def test_im2col_in_several_workspace_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconv.cuda import im2col

    case = Case((7, 16, 14, 14), (32, 16, 3, 3), padding=1)
    problem = case.problem("float32")
    monkeypatch.setattr(im2col, "WORKSPACE_BYTES", 2 * problem.reduction * problem.p * problem.q * 4)
    assert im2col.images_per_chunk(problem) == 2  # four chunks, the last of one image
    _run_strategy("im2col", case, "float32")
    (x, w, b), ref = _reference(case, "float32")
    for _ in range(2):  # the prepared replay of the chunked launches
        y = gpuconv.conv2d(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), padding=1, strategy="im2col")
        assert_matches(y, ref, problem)


def _offset(a: np.ndarray):
    """A C-contiguous device copy of ``a`` one element past an aligned address."""
    buf = cupy.empty(a.size + 1, a.dtype)
    view = buf[1:].reshape(a.shape)
    view[...] = cupy.asarray(a)
    return view


@pytest.mark.parametrize("name,case", _supported(CASES[:3] + LARGER[:2]), ids=str)
def test_misaligned_output_and_bias(name: str, case: Case) -> None:
    from gpuconv.cuda.executor import CupyExecutor

    strategy = _strategies()[name]
    problem = case.problem("float32")
    (x, w, b), ref = _reference(case, "float32")
    y = _offset(np.full(problem.out_shape4, np.nan, np.float32))
    strategy.run(CupyExecutor(), problem, dict(strategy.defaults),
                 cupy.asarray(x.reshape(problem.n, problem.c, problem.h, problem.w)),
                 cupy.asarray(w.reshape(problem.k, problem.cg, problem.r, problem.s)),
                 None if b is None else _offset(b), y)
    cupy.cuda.get_current_stream().synchronize()
    assert_matches(y.reshape(problem.out_shape), ref, problem)


def _variant_cases_dtype(dtype: str) -> list[tuple[str, dict[str, int], Case]]:
    out = []
    for name in sorted(_strategies()):
        strategy = _strategies()[name]
        cases = [c for n, c in _supported(CASES + LARGER) if n == name]
        variants = [v for v in strategy.variants() if v != dict(strategy.defaults)]
        for params, case in sample_product(variants, cases, limit=4, seed=len(out) + len(dtype)):
            if strategy.valid(params, case.problem(dtype)):
                out.append((name, params, case))
    return out


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_non_default_variants_in_float16_and_float64(dtype: str) -> None:
    cases = _variant_cases_dtype(dtype)
    assert cases
    for name, params, case in cases:
        _run_strategy(name, case, dtype, params)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jax_gpu_arrays_via_dlpack(dtype: str) -> None:
    jax = pytest.importorskip("jax")
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        pytest.skip("jax without a GPU backend")
    from gpuconv.measure import jax_dtype_scope

    case = LARGER[0]
    (x, w, b), ref = _reference(case, dtype)
    with jax_dtype_scope(jax, dtype):
        jx, jw, jb = (jax.device_put(a, gpus[0]) for a in (x, w, b))
        y = gpuconv.conv2d(jx, jw, jb, **case.kwargs)
        assert isinstance(y, jax.Array) and y.devices() == {gpus[0]} and str(y.dtype) == dtype
        assert_matches(np.asarray(y), ref, case.problem(dtype))


def test_torch_non_default_stream() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    import gpuconv.torch as gtorch

    case = LARGER[0]
    (x, w, b), ref = _reference(case, "float32")
    stream = torch.cuda.Stream()
    tx, tw, tb = (torch.from_numpy(a).cuda() for a in (x, w, b))
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        y = gtorch.conv2d(tx, tw, tb, **case.kwargs)
        y2 = y * 2  # ordered after the convolution on the same stream
    stream.synchronize()
    assert_matches(y.cpu().numpy(), ref, case.problem("float32"))
    assert_matches(y2.cpu().numpy() / 2, ref, case.problem("float32"))


def test_tuned_plan_is_used(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune a tiny problem with a short budget, then an ``auto`` call runs the stored decision."""
    from gpuconv import plan
    from gpuconv.autotune import tune

    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path))
    plan.forget()
    case = Case((1, 8, 12, 12), (16, 8, 3, 3), padding=1)
    problem = case.problem("float32")
    result = tune(problem, "cuda", trials=3, min_rounds=2, max_rounds=3, candidate_timeout=10.0)
    assert result.best is not None
    plan.store_decision(problem, "cuda", result.best, result.metrics(), device=cupy.cuda.Device().id)
    chosen = plan.choose("conv2d", problem, "cuda", __import__("gpuconv.cuda").cuda, "auto",
                         device=cupy.cuda.Device().id)
    assert chosen.source == "tuned" and chosen.strategy == result.best.strategy
    (x, w, b), ref = _reference(case, "float32")
    for _ in range(2):
        assert_matches(gpuconv.conv2d(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), padding=1), ref, problem)


def test_occupancy_matches_the_driver() -> None:
    """The device's SM count, the loaded defaults' registers against the stored ptxas report (where the NVRTC and
    the architecture match it), and blocks per SM (gpuconv.cuda.occupancy) against the driver's calculator."""
    import json

    from cupy_backends.cuda.libs import nvrtc

    from gpuconv.cuda import dgrad, implicit_gemm, tc_implicit_gemm
    from gpuconv.cuda.compile import get_function
    from gpuconv.cuda.occupancy import REPORT_PATH, blocks_per_sm, current_device, limits, resources

    dev = current_device()
    assert dev.sm_count == cupy.cuda.Device().attributes["MultiProcessorCount"]
    report = json.loads(REPORT_PATH.read_text())
    same = ".".join(map(str, nvrtc.getVersion())) == report["toolkit"]["nvrtc"] and dev.arch in report["archs"]
    ig = implicit_gemm
    tc = tc_implicit_gemm
    deep = {"BM": 128, "BN": 128, "BK": 32, "WM": 2, "WN": 4, "STAGES": 3}
    cases = [(ig.KERNEL, ig.FUNC, ig.tiles(ig.DEFAULTS), d, ig.threads(ig.DEFAULTS), 0) for d in DTYPES]
    cases += [(dgrad.KERNEL, dgrad.FUNC, dgrad.DEFAULTS, "float32", dgrad.threads(dgrad.DEFAULTS), 0)]
    cases += [(tc.KERNEL, tc.FUNC, p, "float16", tc.threads(p), tc.smem_bytes(p, "float16"))
              for p in (tc.DEFAULTS, deep)]  # dynamic shared memory: 20 KiB and 60 KiB
    for kernel, func, params, dtype, threads, dynamic in cases:
        fn = get_function(kernel, func, params, dtype)
        if same:
            stored = resources(kernel, func, params, dtype, dev.arch)
            assert stored is not None and fn.num_regs == stored["registers"], (kernel, params, dtype)
        driver = cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, threads, dynamic)
        assert blocks_per_sm(limits(dev.cc), threads, fn.num_regs, fn.shared_size_bytes + dynamic) == driver, \
            (kernel, params, dtype)


def test_tensor_cores_past_48_kib_of_shared_memory() -> None:
    """Three and four stages of the 128 x 128 tile (60 and 80 KiB of dynamic shared memory in float16, 108 and
    144 KiB in TF32): the function is opted in past 48 KiB, on a layer of several waves."""
    from gpuconv.cuda import tc_implicit_gemm as tc
    from gpuconv.cuda.executor import CupyExecutor

    case = Case((4, 64, 28, 28), (256, 64, 3, 3), padding=1)
    for dtype in ("float16", "float32"):
        for stages in (3, 4):
            params = {"BM": 128, "BN": 128, "BK": 32, "WM": 2, "WN": 4, "STAGES": stages}
            problem = make_problem(case.fn, case.x, case.w, dtype, case.bias, padding=1,
                                   precision="tf32" if dtype == "float32" else "highest")
            if not tc.STRATEGY.valid(params, problem):
                continue  # a spilling point left the space
            (x, w, b), ref = _reference(case, dtype)
            y = cupy.full(problem.out_shape4, np.nan, dtype)
            tc.STRATEGY.run(CupyExecutor(), problem, params, cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), y)
            cupy.cuda.get_current_stream().synchronize()
            assert_matches(y, ref, problem)
