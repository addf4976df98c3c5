"""bfloat16 as a user dtype: NumPy (``ml_dtypes.bfloat16``), PyTorch and JAX arrays through every entry point, each
against the convolution computed in float64 from the same bfloat16 inputs and held to the bfloat16 tolerance
(8 significand bits: ``gpuconv.measure.tolerance``); the ``TypeError`` where bfloat16 cannot be represented;
``precision=`` on ``conv_transpose1d/2d``. The CUDA kernel is tested on the emulation in
``test_cuda_tc_implicit_gemm.py``; here the CUDA gradients' bfloat16 path (the forward rewrite) runs there too.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import CASES, Case, assert_matches, random_inputs, sample_product

import gpuconv
import gpuconv.grad
import gpuconv.jax
import gpuconv.torch
from gpuconv import cpu
from gpuconv.measure import tolerance
from gpuconv.problem import make_problem

BF16 = ml_dtypes.bfloat16
F64 = np.float64


def _t64(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.asarray(a).astype(F64))


def _expected(case: Case, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """The float64 convolution of the bfloat16 values, rounded once to bfloat16."""
    fn = F.conv1d if case.fn == "conv1d" else F.conv2d
    return fn(_t64(x), _t64(w), _t64(b), **case.kwargs).numpy().astype(BF16)


def _problem(case: Case, **kw: Any) -> Any:
    return make_problem(case.fn, case.x, case.w, "bfloat16", case.bias, **case.kwargs, **kw)


def _bf16_torch(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.asarray(a).astype(np.float32)).to(torch.bfloat16)


def _as_numpy(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().float().numpy().astype(BF16)
    return np.asarray(t)


GRID = [c for (c,) in sample_product(CASES, limit=8, seed=21)]


def test_tolerance_follows_the_8_bit_significand() -> None:
    p = _problem(CASES[0])
    rtol, atol = tolerance(p)
    assert rtol == 2.0**-7  # one bfloat16 ulp relative (float16: 2**-10)
    rtol16, atol16 = tolerance(CASES[0].problem("float16"))
    assert rtol16 == 2.0**-10 and atol < atol16 + 1e-12  # the same float32 sum; float16's subnormal spacing is wider
    assert p.to_dict()["dtype"] == "bfloat16"


@pytest.mark.parametrize("case", GRID, ids=str)
def test_numpy_forward_auto(case: Case) -> None:
    x, w, b = random_inputs(case, "bfloat16", seed=1)
    fn = gpuconv.conv1d if case.fn == "conv1d" else gpuconv.conv2d
    y = fn(x, w, b, **case.kwargs)
    assert y.dtype == BF16
    assert_matches(y, _expected(case, x, w, b), _problem(case))


@pytest.mark.parametrize("strategy", sorted(cpu.STRATEGIES))
def test_numpy_forward_every_cpu_strategy(strategy: str) -> None:
    """Each CPU strategy computes bfloat16 in float32 (the problem keeps bfloat16: its own key)."""
    case = {"pointwise": Case((2, 8, 6, 6), (4, 8, 1, 1)), "depthwise": Case((2, 8, 9, 9), (8, 1, 3, 3), padding=1,
                                                                           groups=8),
            "fft": Case((1, 3, 20, 20), (4, 3, 7, 7), padding=3)}.get(strategy, Case((2, 16, 9, 9), (8, 16, 3, 3),
                                                                                      padding=1))
    x, w, b = random_inputs(case, "bfloat16", seed=2)
    y = gpuconv.conv2d(x, w, b, **case.kwargs, strategy=strategy)
    assert_matches(y, _expected(case, x, w, b), _problem(case))


def _grad_case(case: Case, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, w, dy in bfloat16 and the float64 gradients dx, dw of their values, rounded to bfloat16."""
    x, w, _ = random_inputs(case, "bfloat16", seed)
    tx, tw = _t64(x).requires_grad_(True), _t64(w).requires_grad_(True)
    fn = F.conv1d if case.fn == "conv1d" else F.conv2d
    y = fn(tx, tw, None, **case.kwargs)
    dy = np.random.default_rng(seed + 1).uniform(-1, 1, tuple(y.shape)).astype(BF16)
    gx, gw = torch.autograd.grad(y, (tx, tw), _t64(dy))
    return x, w, dy, gx.numpy().astype(BF16), gw.numpy().astype(BF16)


@pytest.mark.parametrize("case", GRID[:4] + [Case((2, 3, 15, 15), (4, 3, 3, 3), stride=2, padding=1)], ids=str)
def test_numpy_gradients(case: Case) -> None:
    x, w, dy, dx, dw = _grad_case(case, seed=3)
    nd = "1d" if case.fn == "conv1d" else "2d"
    got_dx = getattr(gpuconv.grad, f"conv{nd}_input")(x.shape, w, dy, **case.kwargs)
    got_dw = getattr(gpuconv.grad, f"conv{nd}_weight")(x, w.shape, dy, **case.kwargs)
    assert got_dx.dtype == BF16 and got_dw.dtype == BF16
    assert_matches(got_dx, dx, make_problem(case.fn, case.x, case.w, "bfloat16", False, **case.kwargs,
                                            direction="input"))
    assert_matches(got_dw, dw, make_problem(case.fn, case.x, case.w, "bfloat16", False, **case.kwargs,
                                            direction="weight"))


@pytest.mark.parametrize("nd", [1, 2])
def test_numpy_conv_transpose(nd: int) -> None:
    rng = np.random.default_rng(4)
    spatial, kernel = ((9,), (3,)) if nd == 1 else ((7, 6), (3, 2))
    x = rng.uniform(-1, 1, (2, 6, *spatial)).astype(BF16)
    w = rng.uniform(-1, 1, (6, 2, *kernel)).astype(BF16)
    b = rng.uniform(-1, 1, (4,)).astype(BF16)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    ours = getattr(gpuconv, f"conv_transpose{nd}d")
    theirs = getattr(F, f"conv_transpose{nd}d")
    expected = theirs(_t64(x), _t64(w), _t64(b), **kw).numpy()
    for precision in ("highest", "tf32"):
        y = ours(x, w, b, **kw, precision=precision)
        assert y.dtype == BF16 and y.shape == expected.shape
        # the transposed convolution is the input gradient of a convolution summing C_in/groups * R * S terms
        p = make_problem(f"conv{nd}d", (2, 4, *expected.shape[2:]), w.shape, "bfloat16", False, stride=2, padding=1,
                         groups=2, direction="input")
        rtol, atol = tolerance(p)
        np.testing.assert_allclose(y.astype(F64), expected, rtol=rtol, atol=atol + 2.0**-7)  # + the bias' rounding


def test_torch_public_functions_and_autograd() -> None:
    case = Case((2, 4, 9, 9), (6, 2, 3, 3), padding=1, groups=2, stride=2)
    x, w, dy, dx, dw = _grad_case(case, seed=5)
    b = np.random.default_rng(6).uniform(-1, 1, 6).astype(BF16)
    tx, tw, tb = _bf16_torch(x), _bf16_torch(w), _bf16_torch(b)
    y = gpuconv.conv2d(tx, tw, tb, **case.kwargs)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16
    assert_matches(_as_numpy(y), _expected(case, x, w, b), _problem(case))
    # a non-contiguous view is read in place (the int16 bits reinterpreted)
    wide = torch.zeros((2, 4, 9, 18), dtype=torch.bfloat16)
    wide[..., ::2] = tx
    assert_matches(_as_numpy(gpuconv.conv2d(wide[..., ::2], tw, tb, **case.kwargs)), _expected(case, x, w, b),
                   _problem(case))
    # gpuconv.torch: autograd through gpuconv.grad, in bfloat16
    ax, aw = tx.clone().requires_grad_(True), tw.clone().requires_grad_(True)
    out = gpuconv.torch.conv2d(ax, aw, None, **case.kwargs)
    out.backward(_bf16_torch(dy))
    assert ax.grad.dtype == torch.bfloat16 and aw.grad.dtype == torch.bfloat16
    assert_matches(_as_numpy(ax.grad), dx, make_problem("conv2d", case.x, case.w, "bfloat16", False, **case.kwargs,
                                                        direction="input"))
    assert_matches(_as_numpy(aw.grad), dw, make_problem("conv2d", case.x, case.w, "bfloat16", False, **case.kwargs,
                                                        direction="weight"))


def test_torch_modules_and_1d() -> None:
    torch.manual_seed(0)
    m = gpuconv.torch.Conv1d(3, 5, 4, padding=2).to(torch.bfloat16)
    ref = torch.nn.Conv1d(3, 5, 4, padding=2)
    ref.load_state_dict({k: v.to(torch.float64) for k, v in m.state_dict().items()})
    ref = ref.to(torch.float64)
    x = torch.randn(2, 3, 30).to(torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16
    case = Case((2, 3, 30), (5, 3, 4), padding=2)
    assert_matches(_as_numpy(y), ref(x.to(torch.float64)).detach().numpy().astype(BF16), _problem(case),
                   scale=float(max(x.abs().max(), m.weight.abs().max(), 1)) ** 2)


def test_jax_public_jit_grad_and_vmap() -> None:
    case = Case((2, 4, 8, 8), (3, 4, 3, 3), padding=1)
    x, w, dy, dx, dw = _grad_case(case, seed=7)
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    assert jx.dtype == jnp.bfloat16
    y = gpuconv.conv2d(jx, jw, padding=1)  # the public function on JAX arrays
    assert isinstance(y, jax.Array) and y.dtype == jnp.bfloat16
    expected = _expected(Case(case.x, case.w, padding=1, bias=False), x, w, None)
    problem = make_problem("conv2d", case.x, case.w, "bfloat16", False, padding=1)
    assert_matches(np.asarray(y), expected, problem)
    yj = jax.jit(lambda a, b: gpuconv.jax.conv2d(a, b, padding=1))(jx, jw)
    assert yj.dtype == jnp.bfloat16
    assert_matches(np.asarray(yj), expected, problem)
    _, vjp = jax.vjp(lambda a, b: gpuconv.jax.conv2d(a, b, padding=1), jx, jw)
    gx, gw = vjp(jnp.asarray(dy))
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    assert_matches(np.asarray(gx), dx, make_problem("conv2d", case.x, case.w, "bfloat16", False, padding=1,
                                                     direction="input"))
    assert_matches(np.asarray(gw), dw, make_problem("conv2d", case.x, case.w, "bfloat16", False, padding=1,
                                                     direction="weight"))
    yv = jax.vmap(lambda a: gpuconv.jax.conv2d(a, jw, padding=1))(jnp.stack([jx, jx]))
    assert_matches(np.asarray(yv[1]), expected, problem)


def test_reference_takes_bfloat16() -> None:
    from gpuconv import reference

    case = Case((1, 5, 7, 7), (4, 5, 3, 3), padding=1)
    x, w, b = random_inputs(case, "bfloat16", seed=8)
    for args in ((x, w, b), (_bf16_torch(x), _bf16_torch(w), _bf16_torch(b))):
        y = reference.conv2d(*args, padding=1)
        assert y.dtype == BF16
        assert_matches(y, _expected(case, x, w, b), _problem(case))


@pytest.mark.parametrize("direction", ["input", "weight"])
def test_cuda_gradients_rewrite_on_the_tensor_cores_emulated(direction: str) -> None:
    """On CUDA, a bfloat16 gradient is the forward rewrite run by the tensor-core kernel (on the CPU emulation)."""
    from emu import EmuExecutor

    from gpuconv.cuda import heuristic, run_plan

    case = Case((2, 6, 9, 9), (8, 6, 3, 3), stride=2, padding=1)
    x, w, dy, dx, dw = _grad_case(case, seed=9)
    problem = make_problem("conv2d", case.x, case.w, "bfloat16", False, **case.kwargs, direction=direction)
    plan = heuristic(problem)
    assert plan.strategy == "rewrite"
    ex = EmuExecutor(seed=3)
    a, b = (dy, w) if direction == "input" else (x, dy)
    got = run_plan(ex, problem, plan, ex.to_device(a), ex.to_device(b), None)
    assert {launch.kernel for launch in ex.launches} == {"tc_implicit_gemm"}
    assert {launch.dtype for launch in ex.launches} == {"bfloat16"}
    assert_matches(got, dx if direction == "input" else dw, problem)


# ---- where bfloat16 cannot be represented -----------------------------------------------------------------

def test_without_ml_dtypes_bfloat16_is_a_type_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now raises ImportError
    with pytest.raises(TypeError, match=r"conv2d: dtype bfloat16 needs the ml_dtypes package.*pip install ml_dtypes"):
        make_problem("conv2d", (1, 3, 11, 13), (2, 3, 3, 3), "bfloat16", False)  # a shape no other test memoized
    t = torch.ones((1, 3, 13, 11), dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"conv2d: dtype bfloat16 needs the ml_dtypes package"):
        gpuconv.conv2d(t, torch.ones((2, 3, 3, 3), dtype=torch.bfloat16))
    # the other dtypes do not need it
    assert gpuconv.conv2d(np.ones((1, 3, 13, 11), np.float32), np.ones((2, 3, 3, 3), np.float32)).shape == (1, 2, 11, 9)


def test_a_cupy_that_cannot_hold_bfloat16_is_a_type_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA bfloat16 tensor that CuPy's DLPack import refuses (CuPy before 14) is a TypeError naming the dtype."""
    cupy = pytest.importorskip("cupy")
    from gpuconv._arrays import ArrayKind, to_backend

    def refuse(a: Any) -> Any:
        raise BufferError("unsupported dtype")

    monkeypatch.setattr(cupy, "from_dlpack", refuse)
    with pytest.raises(TypeError, match=r"bfloat16 torch array on CUDA cannot be imported into CuPy .*CuPy 14"):
        to_backend(torch.ones(2, dtype=torch.bfloat16), ArrayKind("cuda", "torch", 0))
    with pytest.raises(BufferError):  # other dtypes keep CuPy's own error
        to_backend(torch.ones(2, dtype=torch.float32), ArrayKind("cuda", "torch", 0))


def test_mixed_bfloat16_and_float16_are_refused() -> None:
    x = np.ones((1, 2, 5, 5), BF16)
    with pytest.raises(TypeError, match=r"conv2d: x, w and bias must share one dtype .*x: bfloat16, w: float16"):
        gpuconv.conv2d(x, np.ones((3, 2, 3, 3), np.float16))


# ---- precision= on conv_transpose ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["x", "TF32", None, 32])
def test_conv_transpose_rejects_a_bad_precision(bad: object) -> None:
    x, w = np.ones((1, 4, 5, 5), np.float32), np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv_transpose2d: precision must be one of \['highest', 'tf32'\], got "
                       + repr(bad).replace("(", r"\(")):
        gpuconv.conv_transpose2d(x, w, precision=bad)
    with pytest.raises(ValueError, match=r"conv_transpose1d: precision must be one of \['highest', 'tf32'\]"):
        gpuconv.conv_transpose1d(x[:, :, 0], w[:, :, 0], precision=bad)


def test_conv_transpose_precision_is_in_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU computes "tf32" at full precision, and the precision reaches the planned problem (its cache key)."""
    from gpuconv import transpose

    seen: list[str] = []
    choose = transpose._plan.choose

    def spy(fn: str, problem: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(problem.precision)
        return choose(fn, problem, *args, **kwargs)

    monkeypatch.setattr(transpose._plan, "choose", spy)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 6, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    exact = gpuconv.conv_transpose2d(x, w, stride=2, padding=1)
    np.testing.assert_array_equal(gpuconv.conv_transpose2d(x, w, stride=2, padding=1, precision="tf32"), exact)
    assert seen == ["highest", "tf32"]
    np.testing.assert_array_equal(gpuconv.conv_transpose2d(x, w, stride=2, padding=1, precision="tf32"), exact)
    assert seen == ["highest", "tf32"]  # the second tf32 call is served by its own memoized runner


# ---- on a CUDA device (skipped without one): CuPy arrays of ml_dtypes.bfloat16, torch and JAX CUDA tensors -------

@pytest.mark.gpu
def test_gpu_cupy_bfloat16_through_the_tensor_cores() -> None:
    cupy = pytest.importorskip("cupy")
    from gpuconv.cuda import tc_implicit_gemm
    from gpuconv.cuda.executor import CupyExecutor

    for case in (Case((2, 16, 12, 12), (32, 16, 3, 3), padding=1), Case((2, 8, 9, 9), (8, 1, 3, 3), padding=1,
                                                                         groups=8)):
        x, w, b = random_inputs(case, "bfloat16", seed=11)
        expected, problem = _expected(case, x, w, b), _problem(case)
        y = gpuconv.conv2d(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), **case.kwargs)
        assert isinstance(y, cupy.ndarray) and y.dtype == BF16
        assert_matches(y.get(), expected, problem)
        out = cupy.full(problem.out_shape4, np.nan, BF16)  # poisoned: an unwritten element fails
        tc_implicit_gemm.STRATEGY.run(CupyExecutor(), problem, dict(tc_implicit_gemm.DEFAULTS), cupy.asarray(x),
                                      cupy.asarray(w), cupy.asarray(b), out)
        assert_matches(out.get(), expected, problem)
    case = Case((2, 6, 9, 9), (8, 6, 3, 3), stride=2, padding=1)
    x, w, dy, dx, dw = _grad_case(case, seed=12)
    got_dx = gpuconv.grad.conv2d_input(x.shape, cupy.asarray(w), cupy.asarray(dy), **case.kwargs)
    got_dw = gpuconv.grad.conv2d_weight(cupy.asarray(x), w.shape, cupy.asarray(dy), **case.kwargs)
    assert_matches(got_dx.get(), dx, make_problem("conv2d", case.x, case.w, "bfloat16", False, **case.kwargs,
                                                  direction="input"))
    assert_matches(got_dw.get(), dw, make_problem("conv2d", case.x, case.w, "bfloat16", False, **case.kwargs,
                                                  direction="weight"))


@pytest.mark.gpu
def test_gpu_torch_and_jax_bfloat16() -> None:
    pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    case = Case((2, 4, 9, 9), (6, 4, 3, 3), padding=1, bias=False)
    x, w, dy, dx, dw = _grad_case(case, seed=13)
    tx = _bf16_torch(x).cuda().requires_grad_(True)
    tw = _bf16_torch(w).cuda().requires_grad_(True)
    y = gpuconv.torch.conv2d(tx, tw, None, padding=1)
    assert y.is_cuda and y.dtype == torch.bfloat16
    assert_matches(_as_numpy(y.cpu()), _expected(case, x, w, None), _problem(case))
    y.backward(_bf16_torch(dy).cuda())
    assert_matches(_as_numpy(tx.grad.cpu()), dx, make_problem("conv2d", case.x, case.w, "bfloat16", False, padding=1,
                                                              direction="input"))
    assert_matches(_as_numpy(tw.grad.cpu()), dw, make_problem("conv2d", case.x, case.w, "bfloat16", False, padding=1,
                                                              direction="weight"))
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX sees no GPU")
    jy = gpuconv.conv2d(jax.device_put(jnp.asarray(x), gpu), jax.device_put(jnp.asarray(w), gpu), padding=1)
    assert jy.dtype == jnp.bfloat16
    assert_matches(np.asarray(jy), _expected(case, x, w, None), _problem(case))
