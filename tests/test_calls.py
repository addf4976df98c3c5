"""Calls as PyTorch users write them (positional options, unbatched inputs, tensors that require grad), and the
memoized hot path: a repeated call re-plans nothing, and a new decision reaches it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gpuconv
from gpuconv import conv, cpu, plan
from gpuconv.measure import mismatch
from gpuconv.problem import make_problem
from gpuconv.strategy import Plan, Strategy

rng = np.random.default_rng(7)


def _arr(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(dtype)


def test_positional_options_as_in_torch() -> None:
    torch = pytest.importorskip("torch")
    x, w, b = _arr(2, 4, 9, 9), _arr(6, 2, 3, 3), _arr(6)
    y = gpuconv.conv2d(x, w, b, 2, 1, 2, 2)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), 2, 1, 2, 2)
    problem = make_problem("conv2d", x.shape, w.shape, "float32", True, stride=2, padding=1, dilation=2, groups=2)
    assert mismatch(y, expected.numpy(), problem) is None
    np.testing.assert_array_equal(y, gpuconv.conv2d(x, w, bias=b, stride=2, padding=1, dilation=2, groups=2))
    x1, w1 = _arr(2, 4, 20), _arr(4, 4, 5)
    y1 = gpuconv.conv1d(x1, w1, None, 3, "valid", 1, 1)
    np.testing.assert_array_equal(y1, gpuconv.conv1d(x1, w1, stride=3))
    with pytest.raises(TypeError):
        gpuconv.conv2d(x, w, None, 1, 0, 1, 1, "im2col")  # strategy stays keyword-only


@pytest.mark.parametrize("strategy", ["auto", "im2col", "direct"])
def test_unbatched_input_gives_an_unbatched_result(strategy: str) -> None:
    x, w, b = _arr(4, 7, 8), _arr(3, 4, 3, 3), _arr(3)
    y = gpuconv.conv2d(x, w, b, padding=1, strategy=strategy)
    assert y.shape == (3, 7, 8)
    np.testing.assert_array_equal(y, gpuconv.conv2d(x[None], w, b, padding=1, strategy=strategy)[0])
    np.testing.assert_allclose(y, gpuconv.reference.conv2d(x, w, b, padding=1), rtol=1e-5, atol=1e-5)
    x1, w1 = _arr(4, 30), _arr(5, 4, 3)
    y1 = gpuconv.conv1d(x1, w1, stride=2, strategy=strategy)
    assert y1.shape == (5, 14)
    np.testing.assert_array_equal(y1, gpuconv.conv1d(x1[None], w1, stride=2, strategy=strategy)[0])


def test_unbatched_torch_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    x, w = torch.from_numpy(_arr(3, 10, 10)), torch.from_numpy(_arr(2, 3, 3, 3))
    y = gpuconv.conv2d(x, w, padding="same")
    assert isinstance(y, torch.Tensor) and y.shape == (2, 10, 10)
    problem = make_problem("conv2d", (1, 3, 10, 10), (2, 3, 3, 3), "float32", False, padding="same")
    assert mismatch(y.numpy(), torch.nn.functional.conv2d(x, w, padding="same").numpy(), problem) is None


def test_tensors_that_require_grad_are_read_as_constants() -> None:
    torch = pytest.importorskip("torch")
    layer = torch.nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    x = torch.from_numpy(_arr(2, 3, 6, 6, dtype=np.float64)).requires_grad_()
    y = gpuconv.conv2d(x, layer.weight, layer.bias, padding=1)
    assert isinstance(y, torch.Tensor) and not y.requires_grad
    expected = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1).detach()
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gpuconv.reference.conv2d(x, layer.weight, layer.bias, padding=1), expected.numpy(),
                               rtol=1e-12, atol=1e-12)


def test_jax_cpu_arrays_come_back_as_jax_arrays() -> None:
    jnp = pytest.importorskip("jax.numpy")
    x, w = _arr(1, 2, 6, 6), _arr(3, 2, 3, 3)
    y = gpuconv.conv2d(jnp.asarray(x), jnp.asarray(w))
    assert type(y).__module__.startswith("jax")
    np.testing.assert_array_equal(np.asarray(y), gpuconv.conv2d(x, w))


def test_a_repeated_call_plans_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = _arr(1, 3, 8, 8), _arr(4, 3, 3, 3)
    first = gpuconv.conv2d(x, w, None, 1, 1)
    calls: list[Any] = []
    real = plan._choose
    monkeypatch.setattr(plan, "_choose", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(conv, "problem_from_arrays", lambda *a, **k: pytest.fail("validated again"))
    for _ in range(3):
        np.testing.assert_array_equal(gpuconv.conv2d(x, w, None, 1, 1), first)
    assert calls == []


@pytest.mark.parametrize("bad", [True, 1.0, [1, 1]])
def test_look_alike_arguments_are_never_served_from_the_memo(bad: Any) -> None:
    x, w = _arr(1, 3, 8, 8), _arr(4, 3, 3, 3)
    gpuconv.conv2d(x, w, stride=1)
    if isinstance(bad, list):
        assert gpuconv.conv2d(x, w, stride=bad).shape == (1, 4, 6, 6)  # a list is fine, only not memoized
    else:
        with pytest.raises(TypeError, match="stride"):
            gpuconv.conv2d(x, w, stride=bad)


def test_a_new_decision_reaches_a_memoized_call(monkeypatch: pytest.MonkeyPatch) -> None:
    im2col = cpu.STRATEGIES["im2col"]
    ran: list[Any] = []

    def alt(p: Any, x: Any, w: Any, **k: Any) -> Any:
        ran.append(k)
        return im2col.run(p, x, w, **dict(im2col.defaults))

    monkeypatch.setitem(cpu.STRATEGIES, "alt", Strategy("alt", alt, space={"block": [1, 2]}, defaults={"block": 1}))
    x, w = _arr(1, 3, 8, 8), _arr(4, 3, 3, 3)
    before = gpuconv.conv2d(x, w)
    assert ran == []
    problem = make_problem("conv2d", x.shape, w.shape, "float32", False)
    plan.store_decision(problem, "cpu", Plan("alt", {"block": 2}))
    after = gpuconv.conv2d(x, w)
    assert ran == [{"block": 2}]
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
