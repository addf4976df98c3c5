"""One differential helper and one set of problem grids, shared by the CPU, emulated-CUDA and GPU tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuconv.measure import tolerance  # one formula for the tests and the tuner
from gpuconv.problem import ConvProblem, make_problem


@dataclass(frozen=True)
class Case:
    """One convolution to test: shapes and options exactly as a user passes them."""

    x: tuple[int, ...]
    w: tuple[int, ...]
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True

    @property
    def fn(self) -> str:
        return "conv1d" if len(self.x) == 3 else "conv2d"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def problem(self, dtype: str = "float32") -> ConvProblem:
        return make_problem(self.fn, self.x, self.w, dtype, self.bias, **self.kwargs)

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.kwargs.items() if v not in (1, 0))
        return f"{self.fn}x{'x'.join(map(str, self.x))}w{'x'.join(map(str, self.w))}{',' + opts if opts else ''}"


# Each case covers something named in the spec; CASES is what every backend must pass.
CASES: list[Case] = [
    Case((1, 3, 8, 8), (4, 3, 1, 1)),                                   # 1x1
    Case((2, 8, 6, 6), (16, 8, 1, 1), bias=False),                      # 1x1, batch > 1, no bias
    Case((1, 4, 9, 7), (5, 4, 3, 3), padding=1),                        # odd sizes
    Case((2, 3, 5, 5), (2, 3, 5, 5)),                                   # kernel == input
    Case((1, 3, 17, 13), (4, 3, 3, 3), stride=4),                       # large stride
    Case((1, 3, 11, 12), (4, 3, 3, 2), stride=(2, 3), padding=(1, 2)),  # tuples, non-square kernel
    Case((1, 4, 12, 12), (4, 4, 3, 3), dilation=2, padding=2),          # dilation
    Case((1, 2, 10, 9), (3, 2, 3, 3), dilation=(2, 1), padding="same"),  # same + dilation
    Case((1, 2, 8, 8), (3, 2, 4, 4), padding="same"),                   # same, even kernel: asymmetric
    Case((1, 2, 8, 8), (3, 2, 3, 3), padding="valid"),                  # valid
    Case((2, 8, 7, 7), (8, 2, 3, 3), groups=4, padding=1),              # groups
    Case((2, 6, 9, 9), (6, 1, 3, 3), groups=6, padding=1),              # depthwise
    Case((1, 4, 8, 8), (12, 1, 3, 3), groups=4, stride=2, padding=1),  # depthwise, channel multiplier 3
    Case((1, 16, 14, 14), (32, 16, 3, 3), padding=1),                   # a small real layer
    Case((1, 3, 20, 20), (4, 3, 7, 7), stride=2, padding=3),            # stem-like 7x7 stride 2
    Case((1, 2, 16, 16), (2, 2, 9, 9), padding=4),                      # large kernel (FFT territory)
    Case((2, 3, 40), (5, 3, 4)),                                        # conv1d
    Case((1, 4, 33), (6, 2, 5), stride=2, padding=3, dilation=2, groups=2),  # conv1d, everything
    Case((1, 3, 31), (4, 3, 4), padding="same"),                        # conv1d same, even kernel
]


def random_inputs(case: Case, dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """x, w, bias drawn uniformly from [-1, 1) (never zeros), in ``dtype``."""
    rng = np.random.default_rng(seed)
    draw = lambda shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    return draw(case.x), draw(case.w), (draw((case.w[0],)) if case.bias else None)


def assert_matches(actual: Any, expected: np.ndarray, problem: ConvProblem, scale: float = 1.0) -> None:
    """Shape, then dtype, then values (NaN where the reference has NaN, and nowhere else)."""
    if type(actual).__module__.split(".")[0] == "cupy":
        actual = actual.get()
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"shape {actual.shape} != reference {expected.shape}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != reference {expected.dtype}"
    rtol, atol = tolerance(problem, scale)
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol,
                               equal_nan=True)


def sample_product(*axes: list[Any], limit: int | None = None, seed: int = 0) -> list[tuple[Any, ...]]:
    """The product of ``axes``; a deterministic sample of ``limit`` of them when it is larger."""
    full = list(itertools.product(*axes))
    if limit is None or len(full) <= limit:
        return full
    idx = np.random.default_rng(seed).choice(len(full), size=limit, replace=False)
    return [full[i] for i in sorted(idx)]
