"""The ``precision=`` option: validated with one message, part of the problem and its cache key, accepted on the
CPU (which computes at full precision either way), carried by the gradients."""

from __future__ import annotations

import numpy as np
import pytest

import gpuconv
import gpuconv.grad
from gpuconv.problem import make_problem


@pytest.mark.parametrize("bad", ["x", "TF32", "high", 32, None])
def test_bad_precision_is_rejected(bad: object) -> None:
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv2d: precision must be one of \['highest', 'tf32'\], got " +
                       repr(bad).replace("(", r"\(")):
        gpuconv.conv2d(x, w, precision=bad)
    with pytest.raises(ValueError, match=r"conv1d: precision must be one of \['highest', 'tf32'\]"):
        gpuconv.conv1d(x[:, :, 0], w[:, :, 0], precision=bad)
    with pytest.raises(ValueError, match=r"conv2d_input: precision must be one of \['highest', 'tf32'\]"):
        gpuconv.grad.conv2d_input(x.shape, w, np.ones((1, 3, 3, 3), np.float32), precision=bad)


def test_cpu_computes_tf32_at_full_precision() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    exact = gpuconv.conv2d(x, w, padding=1)
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, padding=1, precision="tf32"), exact)
    np.testing.assert_array_equal(gpuconv.conv2d(x, w, padding=1, precision="highest"), exact)
    dy = rng.standard_normal(exact.shape).astype(np.float32)
    np.testing.assert_array_equal(gpuconv.grad.conv2d_weight(x, w.shape, dy, padding=1, precision="tf32"),
                                  gpuconv.grad.conv2d_weight(x, w.shape, dy, padding=1))


def test_precision_is_part_of_the_problem_and_its_key() -> None:
    a = make_problem("conv2d", (1, 4, 8, 8), (4, 4, 3, 3), "float32", False)
    b = make_problem("conv2d", (1, 4, 8, 8), (4, 4, 3, 3), "float32", False, precision="tf32")
    assert a.precision == "highest" and b.precision == "tf32"
    assert a != b and a.to_dict() != b.to_dict() and b.to_dict()["precision"] == "tf32"
