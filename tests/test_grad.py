"""The gradients and transposed convolution on the CPU: every strategy of both gradient tables against PyTorch's
autograd (and jax.vjp), conv_transpose against F.conv_transpose1d/2d, the errors, and the direction in the
tuning key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import GRAD_CASES, Case, assert_matches, gradient_case, gradient_problem_of, sample_product

import gpuconv
from gpuconv import _calls, cpu, plan, reference
from gpuconv.problem import make_problem
from gpuconv.strategy import Plan

F = torch.nn.functional


def _call(direction: str, case: Case, a: np.ndarray, b: np.ndarray, strategy: str = "auto") -> np.ndarray:
    name = f"{case.fn}_{direction}"
    if direction == "input":
        return getattr(gpuconv.grad, name)(case.x, b, a, **case.kwargs, strategy=strategy)
    return getattr(gpuconv.grad, name)(a, case.w, b, **case.kwargs, strategy=strategy)


def _strategies(direction: str) -> list[str]:
    return sorted(cpu.TABLES[direction])


@pytest.mark.parametrize("direction", ["input", "weight"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_every_strategy_matches_torch_autograd(case: Case, dtype: str, direction: str) -> None:
    a, b, expected = gradient_case(case, dtype, direction)
    problem = gradient_problem_of(case, dtype, direction)
    ran = 0
    for name in ["auto", *_strategies(direction)]:
        if name != "auto" and not cpu.TABLES[direction][name].supports(problem):
            continue
        assert_matches(_call(direction, case, a, b, name), expected, problem)
        ran += 1
    assert ran >= 2


@pytest.mark.parametrize("direction", ["input", "weight"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_every_variant_matches_torch_autograd(case: Case, direction: str) -> None:
    """Every point of every gradient strategy's space (the defaults run through the public API above)."""
    a, b, expected = gradient_case(case, "float32", direction)
    problem = gradient_problem_of(case, "float32", direction)
    for name, strategy in cpu.TABLES[direction].items():
        if strategy.supports(problem):
            for params in strategy.variants(problem):
                assert_matches(cpu.execute(problem, Plan(name, params, "forced"), a, b, None), expected, problem)


@pytest.mark.parametrize("unit", [3 * 36 * 49 * 4 // 8,   # chunks of 3 images (per_image=0 and 1)
                                  36 * 3 * 7 * 4 // 8,    # one image at a time; per_image=1 in blocks of 3, 3, 1 rows
                                  1])                     # one row at a time
@pytest.mark.parametrize("groups", [1, 2])
def test_weight_im2col_chunks(unit: int, groups: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconv.cpu import _views

    # 4 input channels of 3 x 3 taps (36 column rows) and 7 x 7 outputs per image; chunk=8 units of `unit` bytes.
    case = Case((7, 4, 9, 9), (6, 4 // groups, 3, 3), padding=0, groups=groups)
    monkeypatch.setattr(_views, "CHUNK_UNIT", unit)
    a, b, expected = gradient_case(case, "float32", "weight")
    problem = gradient_problem_of(case, "float32", "weight")
    for per_image in (0, 1):
        plan = Plan("im2col", {"per_image": per_image, "chunk": 8}, "forced")
        assert_matches(cpu.execute(problem, plan, a, b, None), expected, problem)


@pytest.mark.parametrize("direction,case", sample_product(["input", "weight"], GRAD_CASES, limit=12, seed=3),
                         ids=str)
def test_float16_gradients(case: Case, direction: str) -> None:
    a, b, expected = gradient_case(case, "float16", direction)
    problem = gradient_problem_of(case, "float16", direction)
    for name in _strategies(direction):
        if cpu.TABLES[direction][name].supports(problem):
            assert_matches(_call(direction, case, a, b, name), expected, problem)


@pytest.mark.parametrize("direction", ["input", "weight"])
@pytest.mark.parametrize("case", GRAD_CASES[::3], ids=str)
def test_reference_gradients_agree_with_torch(case: Case, direction: str) -> None:
    """The oracle of the tuner (jax.vjp) and PyTorch's autograd give the same gradients."""
    a, b, expected = gradient_case(case, "float64", direction)
    name = f"{case.fn}_{direction}"
    if direction == "input":
        got = getattr(reference, name)(case.x, b, a, **case.kwargs)
    else:
        got = getattr(reference, name)(a, case.w, b, **case.kwargs)
    assert_matches(got, expected, gradient_problem_of(case, "float64", direction))


@pytest.mark.parametrize("case", GRAD_CASES[1::4], ids=str)
def test_jax_grad_agrees(case: Case) -> None:
    """jax.grad of jax.lax.conv_general_dilated gives what gpuconv's gradients give."""
    import jax

    problem = gradient_problem_of(case, "float64", "input")
    t, b, l, r = problem.padding
    x, w = gradient_case(case, "float64", "weight")[0], gradient_case(case, "float64", "input")[1]
    x4, w4 = x.reshape(problem.x_shape[:2] + (problem.h, problem.w)), w.reshape(problem.k, problem.cg, problem.r,
                                                                               problem.s)
    dy = np.random.default_rng(9).uniform(-1, 1, problem.out_shape4)

    def loss(x4, w4):
        y = jax.lax.conv_general_dilated(x4, w4, problem.stride, ((t, b), (l, r)), rhs_dilation=problem.dilation,
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                         feature_group_count=problem.groups, precision=jax.lax.Precision.HIGHEST)
        return (y * dy).sum()

    with jax.enable_x64(True):
        gx, gw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x4, w4)
    dyu = dy.reshape(problem.out_shape)
    got_x = _call("input", case, dyu, w)
    got_w = _call("weight", case, x, dyu)
    assert_matches(got_x, np.asarray(gx).reshape(problem.x_shape), problem)
    assert_matches(got_w, np.asarray(gw).reshape(problem.w_shape), gradient_problem_of(case, "float64", "weight"))


def test_unbatched_gradients_and_torch_tensors() -> None:
    rng = np.random.default_rng(0)
    x, w = rng.uniform(-1, 1, (3, 9, 9)), rng.uniform(-1, 1, (4, 3, 3, 3))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = F.conv2d(tx, tw, None, 2, 1)
    dy = torch.rand_like(y)
    gx, gw = torch.autograd.grad(y, (tx, tw), dy)
    dx = gpuconv.grad.conv2d_input(x.shape, w, dy.numpy(), 2, 1)
    dw = gpuconv.grad.conv2d_weight(tx, tw.shape, dy, 2, 1)   # tensors that require grad, torch.Size
    assert dx.shape == x.shape and np.abs(dx - gx.numpy()).max() < 1e-12
    assert isinstance(dw, torch.Tensor) and torch.allclose(dw, gw, atol=1e-12, rtol=0)


def test_empty_batch_gradients() -> None:
    w = np.ones((4, 3, 3, 3), np.float32)
    dy = np.ones((0, 4, 6, 6), np.float32)
    assert gpuconv.grad.conv2d_input((0, 3, 8, 8), w, dy).shape == (0, 3, 8, 8)
    dw = gpuconv.grad.conv2d_weight(np.ones((0, 3, 8, 8), np.float32), (4, 3, 3, 3), dy)
    assert dw.shape == (4, 3, 3, 3) and not dw.any()


def test_repeated_gradient_calls_take_the_memo() -> None:
    rng = np.random.default_rng(1)
    x, dy = rng.uniform(-1, 1, (2, 3, 8, 8)), rng.uniform(-1, 1, (2, 4, 8, 8))
    first = gpuconv.grad.conv2d_weight(x, (4, 3, 3, 3), dy, padding=1)
    size = len(_calls.PREPARED)
    again = gpuconv.grad.conv2d_weight(x, (4, 3, 3, 3), dy, padding=1)
    assert len(_calls.PREPARED) == size and np.array_equal(first, again)


@pytest.mark.parametrize("call,match", [
    (lambda w, dy: gpuconv.grad.conv2d_input((1, 3, 8, 8), w, dy[:, :, :5]),
     r"conv2d_input: grad_output has shape \(1, 4, 5, 6\), but the convolution of x \(1, 3, 8, 8\) with w "
     r"\(4, 3, 3, 3\) .* has output shape \(1, 4, 6, 6\)"),
    (lambda w, dy: gpuconv.grad.conv2d_input((1, 5, 8, 8), w, dy),
     r"conv2d_input: input_size has 5 channels but weight expects 3 \(weight.shape\[1\]=3 x groups=1\)"),
    (lambda w, dy: gpuconv.grad.conv2d_input("1, 3, 8, 8", w, dy),
     r"conv2d_input: input_size must be a sequence of ints, got str"),
    (lambda w, dy: gpuconv.grad.conv2d_input((1, 3, 8.0, 8), w, dy),
     r"conv2d_input: input_size must contain ints"),
    (lambda w, dy: gpuconv.grad.conv2d_weight(np.ones((1, 3, 8, 8)), (4, 3, 3, 3), dy),
     r"conv2d_weight: input and grad_output must share one dtype \(no silent casts\), got input: float64, "
     r"grad_output: float32"),
    (lambda w, dy: gpuconv.grad.conv2d_weight(np.ones((1, 3, 8, 8), np.float32), (4, 3, 3), dy),
     r"conv2d_weight: weight_size must be 4-d"),
    (lambda w, dy: gpuconv.grad.conv2d_input((1, 3, 8, 8), w, dy, strategy="im2col"),
     r"conv2d_input: strategy must be one of \['auto', 'col2im', 'direct'\] on the cpu backend for the input "
     r"gradient, got 'im2col'"),
    (lambda w, dy: gpuconv.grad.conv2d_input((1, 3, 16, 16), w, np.ones((1, 4, 6, 6), np.float32), stride=2,
                                             dilation=2, strategy="direct"),
     r"conv2d_input: strategy 'direct' cannot compute this problem: it requires stride 1 or dilation 1"),
])
def test_gradient_errors_name_the_argument(call, match: str) -> None:
    w, dy = np.ones((4, 3, 3, 3), np.float32), np.ones((1, 4, 6, 6), np.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        call(w, dy)


def test_direction_is_part_of_the_key_and_a_tuned_gradient_is_used() -> None:
    shapes = dict(x_shape=(2, 3, 8, 8), w_shape=(4, 3, 3, 3), dtype="float64", has_bias=False)
    problems = {d: make_problem("conv2d", **shapes, padding=1, direction=d) for d in ("forward", "input", "weight")}
    keys = {plan.cache_key(p, "cpu") for p in problems.values()}
    assert len(keys) == 3
    assert cpu.heuristic(problems["input"]).strategy == "direct"
    plan.store_decision(problems["input"], "cpu", Plan("col2im", {}, "tuned"))
    chosen = plan.choose("conv2d_input", problems["input"], "cpu", cpu, "auto")
    assert chosen == Plan("col2im", {}, "tuned")
    assert plan.lookup(problems["weight"], "cpu") is None
    with pytest.raises(ValueError, match="unknown strategy 'fft'"):  # a forward strategy, not the weight's
        plan.store_decision(problems["weight"], "cpu", Plan("fft", {}, "tuned"))


# ---- conv_transpose -------------------------------------------------------------------------------

TRANSPOSE_CASES = [
    # x, w, stride, padding, output_padding, groups, dilation
    ((2, 4, 5, 5), (4, 3, 3, 3), 1, 0, 0, 1, 1),
    ((2, 4, 7, 7), (4, 3, 3, 3), 2, 1, 1, 1, 1),          # the up-sampling layer: 7 -> 14
    ((1, 4, 6, 5), (4, 2, 4, 4), 2, 1, 0, 2, 1),          # DCGAN-style 4x4 stride 2, groups
    ((1, 3, 5, 6), (3, 2, 3, 2), (3, 2), (1, 0), (2, 1), 1, 1),
    ((1, 2, 4, 4), (2, 3, 3, 3), 1, 1, 1, 1, 2),          # output_padding below the dilation, at stride 1
    ((1, 6, 5, 5), (6, 1, 3, 3), 2, 1, 1, 6, 1),          # depthwise
    ((2, 2, 3, 3), (2, 5, 1, 1), 3, 0, 2, 1, 1),          # 1x1, gaps between outputs
    ((1, 2, 5, 5), (2, 2, 3, 3), 1, (2, 1), 0, 1, (2, 1)),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("xs,ws,stride,padding,output_padding,groups,dilation", TRANSPOSE_CASES)
def test_conv_transpose2d_matches_torch(xs, ws, stride, padding, output_padding, groups, dilation, dtype,
                                        bias) -> None:
    rng = np.random.default_rng(5)
    x, w = rng.uniform(-1, 1, xs).astype(dtype), rng.uniform(-1, 1, ws).astype(dtype)
    b = rng.uniform(-1, 1, ws[1] * groups).astype(dtype) if bias else None
    opts = (stride, padding, output_padding, groups, dilation)
    expected = F.conv_transpose2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(),
                                  None if b is None else torch.from_numpy(b).double(), *opts).numpy().astype(dtype)
    problem = make_problem("conv2d", expected.shape, ws, dtype, False, stride=stride, padding=padding,
                           dilation=dilation, groups=groups, direction="input")
    for strategy in ["auto", *_strategies("input")]:
        if strategy != "auto" and not cpu.INPUT_STRATEGIES[strategy].supports(problem):
            continue
        got = gpuconv.conv_transpose2d(x, w, b, *opts, strategy=strategy)
        assert_matches(got, expected, problem, scale=2.0)
    got0 = gpuconv.conv_transpose2d(x[0], w, b, *opts)
    assert_matches(got0, expected[0], problem, scale=2.0)


@pytest.mark.parametrize("stride,padding,output_padding,dilation", [(1, 0, 0, 1), (2, 1, 1, 1), (3, 2, 1, 2)])
def test_conv_transpose1d_matches_torch(stride, padding, output_padding, dilation) -> None:
    rng = np.random.default_rng(6)
    x, w, b = rng.uniform(-1, 1, (2, 4, 9)), rng.uniform(-1, 1, (4, 3, 3)), rng.uniform(-1, 1, 6)
    expected = F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w[:, :3]).repeat(1, 2, 1)[:, :3],
                                  None, stride, padding, output_padding, 2, dilation)
    got = gpuconv.conv_transpose1d(x, w[:, :3], None, stride, padding, output_padding, 2, dilation)
    assert np.abs(got - expected.numpy()).max() < 1e-12
    expected = F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b[:3]), stride,
                                  padding, output_padding, 1, dilation)
    got = gpuconv.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b[:3]), stride,
                                   padding, output_padding, 1, dilation)
    assert isinstance(got, torch.Tensor) and torch.allclose(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(stride=2, output_padding=2), r"conv_transpose2d: output_padding must be smaller than either stride or "
                                       r"dilation, got output_padding=\(2, 2\), stride=\(2, 2\)"),
    (dict(padding=5), r"conv_transpose2d: the output size \(-5, -5\) is not positive"),
    (dict(groups=3), r"conv_transpose2d: w.shape\[0\]=4 input channels are not divisible by groups=3"),
    (dict(padding="same"), r"conv_transpose2d: padding must be an int or a tuple of 2 ints, got 'same'"),
    (dict(stride=0), r"conv_transpose2d: stride must be positive"),
    (dict(bias=np.ones(4, np.float32)), r"conv_transpose2d: bias must have shape \(3,\)"),
])
def test_conv_transpose_errors(kwargs, match) -> None:
    x, w = np.ones((1, 4, 3, 3), np.float32), np.ones((4, 3, 3, 3), np.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        gpuconv.conv_transpose2d(x, w, **kwargs)


def test_conv_transpose_channel_mismatch() -> None:
    with pytest.raises(ValueError, match=r"conv_transpose2d: x has 5 channels but w expects 4 \(w.shape\[0\]\)"):
        gpuconv.conv_transpose2d(np.ones((1, 5, 3, 3)), np.ones((4, 3, 3, 3)))


def test_autotune_directions_all_then_the_gradients_use_the_decisions(tmp_path, monkeypatch, capsys) -> None:
    """``--directions all`` tunes the three convolutions of each layer; gpuconv.grad then runs the tuned plans."""
    import json

    from gpuconv.autotune import cli

    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cache"))
    plan.forget()
    shapes = tmp_path / "layers.json"
    shapes.write_text(json.dumps([{"name": "l", "x": [2, 4, 9, 9], "w": [6, 4, 3, 3], "padding": 1}]))
    args = ["--shapes", str(shapes), "--backend", "cpu", "--directions", "all", "--trials", "4", "--quiet",
            "--no-jax", "--allow-noisy"]  # a busy CI machine must not turn the decisions provisional
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "l:input" in out and "l:weight" in out and "3 tuned" in out
    for direction in ("forward", "input", "weight"):
        problem = make_problem("conv2d", (2, 4, 9, 9), (6, 4, 3, 3), "float32", False, padding=1,
                               direction=direction)
        assert plan.choose("t", problem, "cpu", cpu, "auto").source == "tuned"
    assert cli.main(args) == 0
    assert "all 3 shapes were cache hits" in capsys.readouterr().out
    assert cli.main([*args[:4], "--directions", "sideways"]) == 2
    assert "--directions must be 'all' or a comma-separated list" in capsys.readouterr().err
