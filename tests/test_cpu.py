"""Every CPU strategy against the jax.lax reference (and PyTorch where installed) on the shared grid."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import reference
from gpuconv.cpu import STRATEGIES
from helpers import CASES, assert_matches, random_inputs


def _cases_for(name: str) -> list:
    return [pytest.param(c, id=str(c)) for c in CASES if STRATEGIES[name].supports(c.problem())]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_matches_reference(name: str, dtype: str) -> None:
    ran = 0
    for case in CASES:
        problem = case.problem(dtype)
        if not STRATEGIES[name].supports(problem):
            continue
        x, w, b = random_inputs(case, dtype)
        fn = getattr(gpuconv, case.fn)
        ref = getattr(reference, case.fn)(x, w, b, **case.kwargs)
        out = fn(x, w, b, **case.kwargs, strategy=name)
        assert_matches(out, ref, problem)
        ran += 1
    assert ran > 0
