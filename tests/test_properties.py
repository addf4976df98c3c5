"""Random problems drawn by hypothesis, every applicable CPU strategy and variant against the jax.lax reference."""

from __future__ import annotations

import numpy as np
from helpers import Case, assert_matches, random_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpuconv import cpu, reference
from gpuconv.cpu import STRATEGIES
from gpuconv.strategy import Plan

settings.register_profile("gpuconv-cpu", max_examples=40, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A valid conv1d or conv2d with small sizes; every option (groups, stride, dilation, padding kinds) in play."""
    ndim = draw(st.sampled_from([1, 2, 2]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    depthwise = draw(st.booleans()) and groups > 1
    if depthwise:
        cg = 1
    kg = draw(st.integers(1, 3))
    n = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(ndim))
    dilation = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(ndim))
    mode = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    stride = (1,) * ndim if mode == "same" else tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    if mode == "int":
        pad_each = (draw(st.integers(0, 3)),) * ndim
        padding: object = pad_each[0]
    elif mode == "tuple":
        pad_each = tuple(draw(st.integers(0, 3)) for _ in range(ndim))
        padding = pad_each
    else:
        pad_each = (0,) * ndim
        padding = mode
    spatial = []
    for k, d, p in zip(kernel, dilation, pad_each):
        eff = d * (k - 1) + 1
        spatial.append(draw(st.integers(max(1, eff - 2 * p), max(1, eff - 2 * p) + 12)))
    x = (n, cg * groups, *spatial)
    w = (kg * groups, cg, *kernel)
    stride_arg = stride[0] if ndim == 1 or draw(st.booleans()) and len(set(stride)) == 1 else stride
    dilation_arg = dilation if ndim == 2 else dilation[0]
    return Case(x, w, stride=stride_arg, padding=padding, dilation=dilation_arg, groups=groups,
                bias=draw(st.booleans()))


@settings(settings.get_profile("gpuconv-cpu"))
@given(case=cases(), dtype=st.sampled_from(["float32", "float64", "float16"]), seed=st.integers(0, 2**16))
def test_every_strategy_matches_reference(case: Case, dtype: str, seed: int) -> None:
    problem = case.problem(dtype)
    x, w, b = random_inputs(case, dtype, seed)
    expected = getattr(reference, case.fn)(x, w, b, **case.kwargs)
    ran = []
    for name, strategy in STRATEGIES.items():
        if not strategy.supports(problem):
            continue
        for params in strategy.variants(problem):
            out = cpu.execute(problem, Plan(name, params, "forced"), x, w, b)
            assert_matches(out, expected, problem)
            ran.append(name)
    assert {"im2col", "direct", "fft"} <= set(ran)
    out = cpu.execute(problem, cpu.heuristic(problem), x, w, b)
    assert_matches(out, expected, problem)
    assert isinstance(out, np.ndarray) and out.flags.c_contiguous
