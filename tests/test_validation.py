"""Bad input gets a clear ValueError/TypeError that names the function, the argument and the shapes."""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import pytest
from helpers import CASES

import gpuconv
from gpuconv import reference
from gpuconv.problem import make_problem

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional peer
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")

rng = np.random.default_rng(0)
X = rng.uniform(-1, 1, (1, 4, 8, 8)).astype(np.float32)
W = rng.uniform(-1, 1, (6, 2, 3, 3)).astype(np.float32)
B = rng.uniform(-1, 1, (6,)).astype(np.float32)
X1 = X[:, :, 0]
W1 = W[:, :, 0]


def _arr(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(dtype)


# (id, call, exception, regex of the message)
BAD: list[tuple[str, Callable[[], Any], type, str]] = [
    # dimensions
    ("x-2d", lambda: gpuconv.conv2d(X[0, 0], W, groups=2), ValueError,
     r"conv2d: x must be 4-d \(N, C, H, W\) or 3-d \(C, H, W\), got shape \(8, 8\)"),
    ("w-3d", lambda: gpuconv.conv2d(X, W[0], groups=2), ValueError,
     r"conv2d: w must be 4-d \(K, C/groups, R, S\), got shape \(2, 3, 3\)"),
    ("x-5d", lambda: gpuconv.conv2d(X[None], W, groups=2), ValueError, r"conv2d: x must be 4-d .*\(1, 1, 4, 8, 8\)"),
    ("conv1d-x-4d", lambda: gpuconv.conv1d(X, W1, groups=2), ValueError,
     r"conv1d: x must be 3-d \(N, C, L\) or 2-d \(C, L\), got shape \(1, 4, 8, 8\)"),
    ("conv1d-w-4d", lambda: gpuconv.conv1d(X1, W, groups=2), ValueError,
     r"conv1d: w must be 3-d \(K, C/groups, R\), got shape \(6, 2, 3, 3\)"),
    ("x-no-channels", lambda: gpuconv.conv2d(_arr(1, 0, 8, 8), W), ValueError,
     r"conv2d: x must have at least one channel .* got shape \(1, 0, 8, 8\)"),
    ("w-empty", lambda: gpuconv.conv2d(X, _arr(0, 2, 3, 3), groups=2), ValueError,
     r"conv2d: w must have non-zero sizes, got shape \(0, 2, 3, 3\)"),
    # channels and groups
    ("channel-mismatch", lambda: gpuconv.conv2d(X, W), ValueError,
     r"conv2d: x has 4 channels but w expects 2 \(w.shape\[1\]=2 x groups=1\); "
     r"x.shape=\(1, 4, 8, 8\), w.shape=\(6, 2, 3, 3\)"),
    ("channel-mismatch-groups", lambda: gpuconv.conv2d(X, _arr(6, 1, 3, 3), groups=2), ValueError,
     r"conv2d: x has 4 channels but w expects 2 \(w.shape\[1\]=1 x groups=2\)"),
    ("c-not-divisible", lambda: gpuconv.conv2d(X, W, groups=3), ValueError,
     r"conv2d: x has 4 channels, which is not divisible by groups=3; x.shape=\(1, 4, 8, 8\)"),
    ("k-not-divisible", lambda: gpuconv.conv2d(X, _arr(5, 2, 3, 3), groups=2), ValueError,
     r"conv2d: w has 5 output channels \(w.shape\[0\]\), which is not divisible by groups=2; "
     r"w.shape=\(5, 2, 3, 3\)"),
    ("groups-float", lambda: gpuconv.conv2d(X, W, groups=2.0), TypeError, r"conv2d: groups must be an int, got float"),
    ("groups-bool", lambda: gpuconv.conv2d(X, W, groups=True), TypeError, r"conv2d: groups must be an int, got bool"),
    ("groups-zero", lambda: gpuconv.conv2d(X, W, groups=0), ValueError, r"conv2d: groups must be positive, got 0"),
    ("groups-negative", lambda: gpuconv.conv2d(X, W, groups=-2), ValueError,
     r"conv2d: groups must be positive, got -2"),
    # kernel size vs padded input
    ("kernel-too-tall", lambda: gpuconv.conv2d(X, _arr(6, 2, 9, 3), groups=2), ValueError,
     r"conv2d: the kernel height 9 \(R=9, dilation=1\) is larger than the padded input height 8 "
     r"\(8 \+ padding 0\+0\); x.shape=\(1, 4, 8, 8\), w.shape=\(6, 2, 9, 3\)"),
    ("kernel-too-wide-dilated", lambda: gpuconv.conv2d(X, W, groups=2, dilation=(1, 5), padding=(0, 1)), ValueError,
     r"conv2d: the kernel width 11 \(S=3, dilation=5\) is larger than the padded input width 10 "
     r"\(8 \+ padding 1\+1\)"),
    ("conv1d-kernel-too-long", lambda: gpuconv.conv1d(X1, _arr(6, 2, 12), groups=2, padding=1), ValueError,
     r"conv1d: the kernel length 12 \(R=12, dilation=1\) is larger than the padded input length 10"),
    # stride, dilation, padding
    ("stride-zero", lambda: gpuconv.conv2d(X, W, groups=2, stride=0), ValueError,
     r"conv2d: stride must be positive, got 0"),
    ("stride-negative", lambda: gpuconv.conv2d(X, W, groups=2, stride=(1, -1)), ValueError,
     r"conv2d: stride must be positive, got \(1, -1\)"),
    ("stride-float", lambda: gpuconv.conv2d(X, W, groups=2, stride=1.0), TypeError,
     r"conv2d: stride must be an int or a tuple of 2 ints, got float"),
    ("stride-tuple-of-floats", lambda: gpuconv.conv2d(X, W, groups=2, stride=(1.0, 2)), TypeError,
     r"conv2d: stride must contain ints, got \(1.0, 2\)"),
    ("stride-wrong-length", lambda: gpuconv.conv2d(X, W, groups=2, stride=(1, 1, 1)), ValueError,
     r"conv2d: stride must be an int or a tuple of 2 ints, got \(1, 1, 1\)"),
    ("dilation-zero", lambda: gpuconv.conv2d(X, W, groups=2, dilation=0), ValueError,
     r"conv2d: dilation must be positive, got 0"),
    ("conv1d-dilation-negative", lambda: gpuconv.conv1d(X1, W1, groups=2, dilation=-1), ValueError,
     r"conv1d: dilation must be positive, got -1"),
    ("padding-negative", lambda: gpuconv.conv2d(X, W, groups=2, padding=-1), ValueError,
     r"conv2d: padding must be non-negative, got -1"),
    ("padding-negative-tuple", lambda: gpuconv.conv2d(X, W, groups=2, padding=(0, -2)), ValueError,
     r"conv2d: padding must be non-negative, got \(0, -2\)"),
    ("same-with-stride", lambda: gpuconv.conv2d(X, W, groups=2, padding="same", stride=2), ValueError,
     r"conv2d: padding='same' requires stride 1, got stride=\(2, 2\)"),
    ("conv1d-same-with-stride", lambda: gpuconv.conv1d(X1, W1, groups=2, padding="same", stride=3), ValueError,
     r"conv1d: padding='same' requires stride 1, got stride=\(3,\)"),
    ("padding-unknown-string", lambda: gpuconv.conv2d(X, W, groups=2, padding="full"), ValueError,
     r"conv2d: padding must be an int, a tuple of 2 ints, 'valid' or 'same', got 'full'"),
    ("padding-3-tuple", lambda: gpuconv.conv2d(X, W, groups=2, padding=(1, 1, 1)), ValueError,
     r"conv2d: padding must be an int or a tuple of 2 ints, got \(1, 1, 1\)"),
    ("padding-4-tuple", lambda: gpuconv.conv2d(X, W, groups=2, padding=(1, 1, 1, 1)), ValueError,
     r"conv2d: padding must be an int or a tuple of 2 ints, got \(1, 1, 1, 1\)"),
    ("conv1d-padding-2-tuple", lambda: gpuconv.conv1d(X1, W1, groups=2, padding=(1, 2)), ValueError,
     r"conv1d: padding must be an int or a tuple of 1 ints, got \(1, 2\)"),
    ("padding-float", lambda: gpuconv.conv2d(X, W, groups=2, padding=1.5), TypeError,
     r"conv2d: padding must be an int or a tuple of 2 ints, got float"),
    # bias
    ("bias-wrong-length", lambda: gpuconv.conv2d(X, W, _arr(5), groups=2), ValueError,
     r"conv2d: bias must have shape \(6,\) to match w.shape\[0\], got \(5,\)"),
    ("bias-2d", lambda: gpuconv.conv2d(X, W, _arr(6, 1), groups=2), ValueError,
     r"conv2d: bias must have shape \(6,\) to match w.shape\[0\], got \(6, 1\)"),
    ("bias-list", lambda: gpuconv.conv2d(X, W, [0.0] * 6, groups=2), TypeError,
     r"conv2d: bias must be a NumPy or CuPy array \(or a DLPack array\), got list"),
    # dtypes
    ("int", lambda: gpuconv.conv2d(X.astype(np.int32), W.astype(np.int32), groups=2), TypeError,
     r"conv2d: x has dtype int32; supported dtypes are float16, bfloat16, float32, float64"),
    ("complex", lambda: gpuconv.conv2d(X.astype(np.complex64), W.astype(np.complex64), groups=2), TypeError,
     r"conv2d: x has dtype complex64; supported dtypes are float16, bfloat16, float32, float64"),
    ("bool", lambda: gpuconv.conv2d(X > 0, W > 0, groups=2), TypeError,
     r"conv2d: x has dtype bool; supported dtypes are"),
    ("int-w-only", lambda: gpuconv.conv2d(X, W.astype(np.int64), groups=2), TypeError,
     r"conv2d: w has dtype int64; supported dtypes are"),
    ("mixed-x-w", lambda: gpuconv.conv2d(X, W.astype(np.float64), groups=2), TypeError,
     r"conv2d: x, w and bias must share one dtype \(no silent casts\), got x: float32, w: float64"),
    ("mixed-x-bias", lambda: gpuconv.conv2d(X, W, B.astype(np.float16), groups=2), TypeError,
     r"conv2d: x, w and bias must share one dtype \(no silent casts\), got x: float32, w: float32, bias: float16"),
    # not arrays
    ("x-list", lambda: gpuconv.conv2d(X.tolist(), W, groups=2), TypeError,
     r"conv2d: x must be a NumPy or CuPy array \(or a DLPack array\), got list"),
    ("w-none", lambda: gpuconv.conv2d(X, None, groups=2), TypeError,
     r"conv2d: w must be a NumPy or CuPy array \(or a DLPack array\), got NoneType"),
    ("x-scalar", lambda: gpuconv.conv1d(3.0, W1, groups=2), TypeError,
     r"conv1d: x must be a NumPy or CuPy array \(or a DLPack array\), got float"),
    # strategy
    ("strategy-int", lambda: gpuconv.conv2d(X, W, groups=2, strategy=1), TypeError,
     r"conv2d: strategy must be a string, got int"),
    ("strategy-none", lambda: gpuconv.conv2d(X, W, groups=2, strategy=None), TypeError,
     r"conv2d: strategy must be a string, got NoneType"),
    ("strategy-unknown", lambda: gpuconv.conv2d(X, W, groups=2, strategy="gemm"), ValueError,
     r"conv2d: strategy must be one of \['auto', .*'im2col'.*\] on the cpu backend, got 'gemm'"),
    ("strategy-unsupported", lambda: gpuconv.conv2d(X, W, groups=2, strategy="depthwise"), ValueError,
     r"conv2d: strategy 'depthwise' cannot compute this problem: it requires groups == C .*"
     r"x.shape=\(1, 4, 8, 8\), w.shape=\(6, 2, 3, 3\)"),
]


# The oracle accepts anything np.asarray takes, so only the public functions reject these.
NON_ARRAYS = ("x-list", "w-none", "x-scalar", "bias-list")


@pytest.mark.parametrize("call,exc,message", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_message(call: Callable[[], Any], exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        call()


@pytest.mark.parametrize("call,exc,message", [pytest.param(*b[1:], id=b[0]) for b in BAD
                                               if not b[0].startswith("strategy") and b[0] not in NON_ARRAYS])
def test_reference_rejects_the_same_input(call: Callable[[], Any], exc: type, message: str) -> None:
    """The oracle validates through the same code, so it must refuse the same arguments the same way."""
    src = call.__code__
    names = {"gpuconv": reference}
    ref_call = type(call)(src, {**call.__globals__, **names})
    with pytest.raises(exc, match=message):
        ref_call()


@needs_torch
def test_torch_specific_inputs() -> None:
    tx, tw = torch.from_numpy(X), torch.from_numpy(W)
    with pytest.raises(TypeError, match=r"conv2d: x and w must be arrays of one library on one device, "
                                        r"got x: numpy array on CPU and w: torch array on CPU"):
        gpuconv.conv2d(X, tw, groups=2)
    with pytest.raises(TypeError, match=r"conv2d: x and bias must be arrays of one library on one device, "
                                        r"got x: torch array on CPU and bias: numpy array on CPU"):
        gpuconv.conv2d(tx, tw, B, groups=2)
    with pytest.raises(TypeError, match=r"conv2d: x has dtype float8_e4m3fn; supported dtypes are"):
        gpuconv.conv2d(tx.to(torch.float8_e4m3fn), tw.to(torch.float8_e4m3fn), groups=2)  # (bfloat16 is supported)
    with pytest.raises(TypeError, match=r"conv2d: x has dtype int32; supported dtypes are"):
        gpuconv.conv2d(tx.int(), tw.int(), groups=2)
    with pytest.raises(TypeError, match=r"conv2d: x, w and bias must share one dtype .*x: float32, w: float64"):
        gpuconv.conv2d(tx, tw.double(), groups=2)


def test_valid_edge_arguments_are_accepted() -> None:
    """The boundary of every rule, from the accepting side: the checks are not too strict."""
    assert gpuconv.conv2d(X, _arr(6, 2, 8, 8), groups=2).shape == (1, 6, 1, 1)  # kernel == input
    assert gpuconv.conv2d(X, _arr(6, 2, 10, 3), groups=2, padding=1).shape == (1, 6, 1, 8)  # kernel == padded
    assert gpuconv.conv2d(X, W, groups=2, padding="same", stride=1).shape == (1, 6, 8, 8)
    assert gpuconv.conv1d(X1, W1, groups=2, stride=(2,), padding=[1]).shape == (1, 6, 4)
    assert gpuconv.conv2d(X, W, groups=np.int64(2), stride=np.int32(2)).shape == (1, 6, 3, 3)


# ---- ConvProblem serialization: the problem part of a cache record -------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_problem_dict_survives_json(dtype: str) -> None:
    import json

    for case in CASES:
        problem = case.problem(dtype)
        assert json.loads(json.dumps(problem.to_dict())) == problem.to_dict()
    other = make_problem("conv2d", (0, 4, 8, 8), (6, 2, 3, 3), "float32", False, groups=2)
    assert other.to_dict() != make_problem("conv2d", (1, 4, 8, 8), (6, 2, 3, 3), "float32", False,
                                           groups=2).to_dict()


def test_error_messages_name_the_function() -> None:
    """Every message of the table starts with the public function it came from."""
    for name, call, exc, _ in BAD:
        with pytest.raises(exc) as info:
            call()
        assert re.match(r"conv[12]d: ", str(info.value)), (name, str(info.value))


def test_memoized_problems_do_not_hide_bad_arguments() -> None:
    """make_problem remembers valid problems; look-alike arguments of the wrong type must still be refused."""
    assert gpuconv.conv2d(X, W, groups=2, stride=1, padding=(1, 1)).shape == (1, 6, 8, 8)
    assert gpuconv.conv2d(X, W, groups=2, stride=1, padding=(1, 1)).shape == (1, 6, 8, 8)
    with pytest.raises(TypeError, match=r"conv2d: groups must be an int, got bool"):
        gpuconv.conv2d(X[:, :2], W[:, :2], groups=True)
    gpuconv.conv2d(X[:, :2], W[:, :2], groups=1)
    with pytest.raises(TypeError, match=r"conv2d: groups must be an int, got bool"):
        gpuconv.conv2d(X[:, :2], W[:, :2], groups=True)
    with pytest.raises(TypeError, match=r"conv2d: stride must be an int or a tuple of 2 ints, got float"):
        gpuconv.conv2d(X, W, groups=2, stride=1.0, padding=(1, 1))
    with pytest.raises(TypeError, match=r"conv2d: padding must contain ints, got \(1.0, 1\)"):
        gpuconv.conv2d(X, W, groups=2, stride=1, padding=(1.0, 1))
    a = make_problem("conv2d", (1, 4, 8, 8), (6, 2, 3, 3), "float32", False, groups=2, padding=1)
    b = make_problem("conv2d", (1, 4, 8, 8), (6, 2, 3, 3), "float32", False, groups=np.int64(2), padding=1)
    assert a == b and type(b.groups) is int
