"""One differential helper and one set of problem grids, shared by the CPU, emulated-CUDA and GPU tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuconv._dtypes import numpy_dtype
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
    dt = numpy_dtype(dtype)  # bfloat16 included (ml_dtypes)
    draw = lambda shape: rng.uniform(-1, 1, shape).astype(dt)  # noqa: E731
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


#: Cases the gradients need beyond the forward grid: an input size the stride leaves ambiguous (15 and 16 both
#: give 8 outputs at stride 2), strides larger than the kernel in both axes, and large padding.
GRAD_CASES: list[Case] = CASES + [
    Case((2, 3, 15, 15), (4, 3, 3, 3), stride=2, padding=1, bias=False),
    Case((2, 3, 16, 16), (4, 3, 3, 3), stride=2, padding=1, bias=False),
    Case((1, 2, 9, 10), (3, 2, 2, 2), stride=(3, 4), bias=False),
    Case((1, 2, 4, 4), (3, 2, 3, 3), padding=3, bias=False),
    Case((2, 4, 15), (4, 2, 3), stride=2, padding=1, groups=2, bias=False),
]


def gradient_case(case: Case, dtype: str, direction: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, expected)`` for one gradient: the operands (``dy, w`` for the input gradient, ``x, dy`` for the
    weight gradient) drawn in [-1, 1) in ``dtype``, and PyTorch's autograd result on them computed in float64 and
    rounded to ``dtype``."""
    import torch

    x, w, _ = (a.astype(np.float64) if a is not None else None for a in random_inputs(case, dtype, seed))
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    fn = torch.nn.functional.conv1d if case.fn == "conv1d" else torch.nn.functional.conv2d
    y = fn(tx, tw, None, **case.kwargs)
    dy = np.random.default_rng(seed + 1).uniform(-1, 1, tuple(y.shape)).astype(dtype).astype(np.float64)
    gx, gw = torch.autograd.grad(y, (tx, tw), torch.from_numpy(dy))
    cast = lambda a: np.asarray(a).astype(dtype)  # noqa: E731
    if direction == "input":
        return cast(dy), cast(w), cast(gx.numpy())
    return cast(x), cast(dy), cast(gw.numpy())


def gradient_problem_of(case: Case, dtype: str, direction: str) -> ConvProblem:
    return make_problem(case.fn, case.x, case.w, dtype, False, **case.kwargs, direction=direction)
