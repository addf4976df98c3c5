"""The CPU backend: NumPy strategies, each a function ``run(problem, x, w, **params) -> y``.

``x`` is ``(N, C, H, W)`` and ``w`` ``(K, C/groups, R, S)`` in the compute dtype (float32 for float16
and bfloat16 inputs, which are accumulated in float32: ``gpuconv._dtypes.COMPUTE``); ``run`` returns
``(N, K, P, Q)`` in that dtype, without bias, possibly as a non-contiguous view. Inputs may be non-contiguous
views (transposed, sliced, negative strides). ``params`` are the strategy's tunables (:attr:`Strategy.space`).
:func:`execute` does the dtype handling, bias, 1-d reshapes and the contiguous output once.

Strategies:
    im2col: one copy of every receptive field, one batched GEMM (the fast general path).
    direct: one GEMM per kernel tap on shifted views; no column matrix (memory-light).
    fft: spectra products for large kernels (float64 transforms; non-finite inputs fall back to im2col).
    depthwise: ``groups == C``: broadcasted multiply-adds per tap.
    pointwise: 1x1 unpadded kernels: one GEMM per image, no copies.
    winograd: 3x3 stride-1 kernels: Winograd F(4x4, 3x3) or F(2x2, 3x3), 36 or 16 batched GEMMs, 4x or 2.25x
        fewer multiplies.
    blocked: im2col with the batch side by side in the columns, built per block of input channels (wider
        GEMMs on small images; the heuristic's choice for several images of at most
        :data:`BLOCKED_MAX_PIXELS` output pixels).

The gradients have tables of their own (:data:`TABLES`), with the same ``run(problem, a, b, **params)``: the
input gradient reads ``dy (N, K, P, Q)`` and ``w`` and returns ``dx (N, C, H, W)`` (``col2im``, ``direct``); the
weight gradient reads ``x`` and ``dy`` and returns ``dw (K, C/groups, R, S)`` (``im2col``, ``direct``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from .._dtypes import compute_dtype, numpy_dtype
from ..problem import ConvProblem
from ..strategy import CpuRun, Plan, Strategy
from . import _views
from . import blocked as _blocked
from . import depthwise as _depthwise
from . import direct as _direct
from . import fft as _fft
from . import grad_input as _grad_input
from . import grad_weight as _grad_weight
from . import grad_weight_winograd as _grad_weight_winograd
from . import im2col as _im2col
from . import pointwise as _pointwise
from . import winograd as _winograd
from ._machine import fingerprint as fingerprint

# The wide layout at every stride (phased above 1, see gpuconv.cpu._views); the heuristic takes it where it pays.
_WIDE = dict(space={"wide": (0, 1)}, defaults={"wide": 0})

STRATEGIES: dict[str, Strategy[CpuRun]] = {
    s.name: s
    for s in (
        Strategy("im2col", _im2col.im2col, space={"wide": (0, 1), "chunk": _views.COLUMN_CHUNKS},
                 defaults={"wide": 0, "chunk": _views.DEFAULT_COLUMN_CHUNK}, prepare=_im2col.prepare),
        Strategy("direct", _direct.direct, **_WIDE),
        Strategy("fft", _fft.fft),
        Strategy("depthwise", _depthwise.depthwise, _depthwise.supports, "groups == C (one input channel per group)",
                 space=_depthwise.SPACE, defaults=_depthwise.DEFAULTS),
        Strategy("pointwise", _pointwise.pointwise, _pointwise.supports, "a 1x1 kernel and no padding"),
        Strategy("winograd", _winograd.winograd, _winograd.supports, _winograd.REQUIRES,
                 space=_winograd.SPACE, constraints=_winograd.CONSTRAINTS, defaults=_winograd.DEFAULTS,
                 prepare=_winograd.prepare),
        Strategy("blocked", _blocked.blocked, space=_blocked.SPACE, defaults=_blocked.DEFAULTS),
    )
}



def _forward_compute(problem: ConvProblem) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The heuristic's forward runner for ``problem`` on arrays in the compute dtype, without bias (what a
    gradient rewritten as a forward convolution runs)."""
    return _compute(problem, heuristic(problem))


def _weight_winograd(problem: ConvProblem, x: np.ndarray, dy: np.ndarray, *, tile: int, chunk: int) -> np.ndarray:
    """Winograd's weight gradient; where it is not finite, the GEMM path's, which places NaN and Inf exactly."""
    dw = _grad_weight_winograd.winograd(problem, x, dy, tile, chunk)
    return _grad_weight.im2col(problem, x, dy) if dw is None else dw


INPUT_STRATEGIES: dict[str, Strategy[CpuRun]] = {
    s.name: s
    for s in (
        Strategy("col2im", _grad_input.col2im),
        Strategy("direct", functools.partial(_grad_input.direct, forward=_forward_compute),
                 _grad_input.supports_direct, "stride 1 or dilation 1",
                 prepare=functools.partial(_grad_input.prepare_direct, forward=_forward_compute)),
    )
}

WEIGHT_STRATEGIES: dict[str, Strategy[CpuRun]] = {
    s.name: s
    for s in (
        Strategy("im2col", _grad_weight.im2col, space={"per_image": (0, 1), "chunk": _views.COLUMN_CHUNKS},
                 defaults={"per_image": 0, "chunk": _views.DEFAULT_COLUMN_CHUNK}),
        Strategy("direct", _grad_weight.direct),
        Strategy("winograd", _weight_winograd, _winograd.supports_3x3, _winograd.REQUIRES_3X3,
                 space=_grad_weight_winograd.SPACE, defaults=_grad_weight_winograd.DEFAULTS),
    )
}

#: Every direction's strategies: what ``strategy=`` names and what the tuner searches, per direction.
TABLES: dict[str, dict[str, Strategy[CpuRun]]] = {"forward": STRATEGIES, "input": INPUT_STRATEGIES,
                                                  "weight": WEIGHT_STRATEGIES}

# im2col bounds its column matrix by processing images in chunks, but one image is the smallest chunk;
# above this many bytes per image the heuristic takes ``direct``, which never holds more than one tap.
DIRECT_ABOVE_BYTES = 512 * 2**20


def _wide(problem: ConvProblem) -> dict[str, int]:
    # The wide layout turns a gather of Q-element rows into long contiguous runs but computes Wp - Q junk
    # columns per row. For im2col and direct it pays on narrow images with little junk (ResNet-50 res2 and
    # res3, U-Net at 32-64 wide), not at 14% junk (res4) nor where rows are long already (VGG at 112-224).
    return {"wide": int(_views.wide_pays(problem, max_waste=0.08) and problem.q <= 64)}


def _depthwise_params(problem: ConvProblem) -> dict[str, int]:
    # Depthwise does no GEMM: long runs win even at 29% junk (MobileNet's 7x7 layers), and at stride 2 the
    # phased layout's extra copy of the input costs less than the strided reads of every tap.
    return {"wide": 1, "block": _depthwise.DEFAULTS["block"]}


def _no_params(problem: ConvProblem) -> dict[str, int]:
    return {}


def _cols_too_large(problem: ConvProblem) -> bool:
    cols_per_image = problem.c * problem.r * problem.s * problem.p * problem.q * np.dtype(problem.dtype).itemsize
    return cols_per_image > DIRECT_ABOVE_BYTES


#: The heuristic: the first rule whose strategy supports the problem and whose condition holds wins; each rule
#: gives that strategy's parameters for the problem.
_RULES: list[tuple[str, Callable[[ConvProblem], bool], Callable[[ConvProblem], dict[str, int]]]] = [
    ("blocked", lambda p: _narrow_images(p), lambda p: dict(_blocked.DEFAULTS)),
    ("pointwise", lambda p: True, _no_params),
    ("depthwise", lambda p: p.groups > 1, _depthwise_params),
    ("fft", lambda p: p.r * p.s >= 25 and _fft_pays(p), _no_params),
    ("winograd", lambda p: _winograd_pays(p), lambda p: _winograd.heuristic_params(p)),
    ("direct", _cols_too_large, _wide),
    ("im2col", lambda p: True, lambda p: {**_wide(p), "chunk": _views.DEFAULT_COLUMN_CHUNK}),
]


#: Output images of at most this many pixels make the per-image GEMMs of pointwise, im2col and Winograd too narrow
#: (or too short) for BLAS; ``blocked`` puts the batch side by side instead. Tuning ResNet-50 at batch 8 on a
#: 2-core Intel Xeon (AVX-512) chose it on every 7x7-output layer, 1.24-1.41x faster than the heuristic's pick
#: then (pointwise, im2col, F(4x4)); on the 14x14 outputs of res4 the per-image strategies kept winning.
BLOCKED_MAX_PIXELS = 64


def _narrow_images(problem: ConvProblem) -> bool:
    """Several images of few output pixels, one group (depthwise and grouped layers have strategies of their own)."""
    return problem.groups == 1 and problem.n >= 2 and problem.p * problem.q <= BLOCKED_MAX_PIXELS


def _weight_cols_too_large(problem: ConvProblem) -> bool:
    return problem.c * problem.r * problem.s * problem.p * problem.q * np.dtype(problem.dtype).itemsize > \
        _grad_weight.COLS_BUDGET_BYTES


#: The gradients' rules. The input gradient at stride 1 is a forward convolution (and gets the forward's
#: strategies, Winograd included); at larger strides the GEMM + scatter-add (``direct``'s stride phases, one
#: BLAS thread on a 2-core Intel Xeon, batch 8: 0.88-0.91x its time on ResNet-50's 3x3 stride-2 layers at 56x56
#: and 28x28, 1.04-1.34x on res5's and the 1x1 ones, 8.7x on the 7x7 stem, whose phases have 3 output channels;
#: the tuner may take them). The weight gradient of a 3x3
#: stride-1 layer with enough tiles is Winograd's (:mod:`gpuconv.cpu.grad_weight_winograd`); otherwise it copies the
#: column matrix where it fits one chunk of images (one GEMM per image on images of 512 outputs and more,
#: where P*Q alone is a long reduction; measured on ResNet-50 layers at batch 8, 2-core AMD EPYC);
#: beyond, one tap at a time.
_DIRECTION_RULES = {
    "forward": _RULES,
    "input": [("direct", lambda p: p.stride == (1, 1), _no_params), ("col2im", lambda p: True, _no_params)],
    "weight": [("winograd", _grad_weight_winograd.pays, _grad_weight_winograd.heuristic_params),
               ("direct", _weight_cols_too_large, _no_params),
               ("im2col", lambda p: True,
                lambda p: {"per_image": int(p.p * p.q >= 512), "chunk": _views.DEFAULT_COLUMN_CHUNK})],
}


def heuristic(problem: ConvProblem) -> Plan:
    """The strategy used when nothing is tuned for this problem, from its shape alone (the first rule of
    :data:`_RULES` that applies).

    Thresholds were measured on a 2-core AMD EPYC (no AVX-512) with NumPy's OpenBLAS; ``python -m gpuconv.demo
    --shapes resnet50`` times every strategy per layer to check them on another machine.

    An empty batch (``N == 0``) gets the plan of one image: the runner computes nothing for it, but the plan
    must still be one that supports the problem, and the cost models divide by, and index on, ``N``.
    """
    if problem.n == 0:
        problem = dataclasses.replace(problem, n=1)
    rules, table = _DIRECTION_RULES[problem.direction], TABLES[problem.direction]
    for name, applies, params in rules:
        if table[name].supports(problem) and applies(problem):
            return Plan(name, params(problem), "heuristic")
    raise AssertionError("the im2col rule applies to every problem")  # pragma: no cover


def _winograd_pays(problem: ConvProblem) -> bool:
    """Whether Winograd (F(4x4) or F(2x2)) is expected to beat im2col/direct: enough channels and tiles (5x5
    kernels: :data:`gpuconv.cpu.winograd.F25_RULE`).

    The thresholds are data (``gpuconv/cpu/winograd_rules.json``), fitted by ``python -m benchmarks.winograd_grid``
    to a grid of 3x3 layers timed against im2col in 8 MiB column chunks, one profile per processor it was timed on:
    a quiet 2-core Intel Xeon (family 6 model 167, AVX-512; F(4x4) from 392 tiles at 32 channels, 49 from 64) and
    a 2-core AMD EPYC (family 25 model 17, AVX-512; from 392 tiles at 64 channels, 196 at 128, 49 from 256), each
    threshold per channel count of the grid; a processor without a profile of its own takes its vendor's, else
    the Intel one (:func:`gpuconv.cpu.winograd.select_profile`), and
    :func:`gpuconv.cpu.winograd.preferred_tile` applies them. Few tiles
    lose: each of the 36 (16) products then reads a transformed filter as large as 4x (1.8x) the weights for a
    handful of rows (ResNet-50 res5, 512 channels at 7x7 and batch 1).
    """
    return _winograd.preferred_tile(problem) is not None


# Rates measured on a 2-core AMD EPYC (no AVX-512) with NumPy's OpenBLAS and scipy's pocketfft, used only to compare
# the cost of FFT with that of a GEMM strategy (their ratio matters, not their absolute values).
GEMM_FLOPS = 150e9       # sgemm, 2 threads
COPY_BYTES = 8e9         # strided gather into a column matrix larger than the caches
FFT_FLOPS = 10e9         # float64 rfft2/irfft2, counted as 2.5 n log2(n) per transform of n points
SPECTRUM_FLOPS = {1: 3.5e9, 2: 18e9}  # complex multiply-adds (8 flops): one image (einsum), a batch (matmul)


def _fft_pays(problem: ConvProblem) -> bool:
    """Whether FFT is predicted to take less than 3/4 of the time of im2col (large kernels, few channels)."""
    hp, wp = _views.padded_size(problem)
    fh, fw = _fft.fast_len(hp), _fft.fast_len(wp)
    n, k, c, cg = problem.n, problem.k, problem.c, problem.cg
    if n == 0:
        return False  # nothing to compute: no strategy pays more than another
    transforms = 2.5 * (n * c + k * cg + n * k) * fh * fw * np.log2(fh * fw) / FFT_FLOPS
    spectra = 8 * n * k * cg * fh * (fw // 2 + 1) / SPECTRUM_FLOPS[min(n, 2)]
    cols_bytes = n * c * problem.r * problem.s * problem.p * problem.q * 4
    gemm = problem.flops / GEMM_FLOPS + cols_bytes / COPY_BYTES
    return transforms + spectra < 0.75 * gemm


def prepare(problem: ConvProblem, plan: Plan) -> Callable[[Any, Any, Any], np.ndarray]:
    """A runner ``run(x, w, bias) -> y`` for ``plan`` on NumPy arrays of ``problem``'s shapes and dtype.

    Everything that depends only on the problem is worked out here, once; the runner returns a C-contiguous
    output in the caller's dtype and shape.
    """
    if problem.direction != "forward":
        return _prepare_gradient(problem, plan)
    dtype = numpy_dtype(problem.dtype)
    out_shape = problem.out_shape
    if problem.n == 0:
        return lambda x, w, bias: np.zeros(out_shape, dtype)
    compute = compute_dtype(problem.dtype)
    x4_shape = (problem.n, problem.c, problem.h, problem.w)
    w4_shape = (problem.k, problem.cg, problem.r, problem.s)
    compute_y = _compute(problem, plan)
    # Copies and GEMMs raise no floating-point warnings; elementwise arithmetic (bias, float16 rounding, the
    # transforms of other strategies) may, and NaN and Inf propagate silently, as in PyTorch.
    quiet = plan.strategy in ("im2col", "pointwise") and dtype == compute

    as_is = problem.ndim == 2 and dtype == compute  # x and w need no reshape or cast

    def run(x: Any, w: Any, bias: Any) -> np.ndarray:
        if as_is:
            x4, w4 = x, w
        else:
            x4 = x.reshape(x4_shape).astype(compute, copy=False)
            w4 = w.reshape(w4_shape).astype(compute, copy=False)
        if quiet and bias is None:
            y = compute_y(x4, w4)
            return y if as_is and y.flags.c_contiguous else np.ascontiguousarray(y).reshape(out_shape)
        with np.errstate(invalid="ignore", over="ignore"):
            y = compute_y(x4, w4)
            if bias is not None:
                b = bias.astype(compute, copy=False)[None, :, None, None]
                y = np.add(y, b, out=y) if y.flags.c_contiguous and y.flags.writeable else np.add(y, b)
            return np.ascontiguousarray(y.astype(dtype, copy=False)).reshape(out_shape)

    return run


def _compute(problem: ConvProblem, plan: Plan) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The strategy's own runner ``(a, b) -> result`` on 4-d arrays in the compute dtype."""
    strategy = TABLES[problem.direction][plan.strategy]
    params = dict(plan.params)
    if strategy.prepare is not None:
        return strategy.prepare(problem, **params)
    return lambda a, b: strategy.run(problem, a, b, **params)


def _shapes4(problem: ConvProblem) -> dict[str, tuple[int, int, int, int]]:
    return {"x": (problem.n, problem.c, problem.h, problem.w), "w": (problem.k, problem.cg, problem.r, problem.s),
            "y": (problem.n, problem.k, problem.p, problem.q)}


#: What each gradient reads and returns, by the names of :func:`_shapes4`.
_GRADIENT_OPERANDS = {"input": ("y", "w", "x"), "weight": ("x", "y", "w")}


def _prepare_gradient(problem: ConvProblem, plan: Plan) -> Callable[[Any, Any, Any], np.ndarray]:
    """A runner ``run(a, b, None) -> result`` of a gradient: ``(dy, w) -> dx`` or ``(x, dy) -> dw``."""
    dtype = numpy_dtype(problem.dtype)
    result_shape = problem.result_shape
    if problem.n == 0:  # no image: dx is empty and dw is zero
        return lambda a, b, bias: np.zeros(result_shape, dtype)
    compute = compute_dtype(problem.dtype)
    shapes = _shapes4(problem)
    a_name, b_name, _ = _GRADIENT_OPERANDS[problem.direction]
    a4_shape, b4_shape = shapes[a_name], shapes[b_name]
    compute_r = _compute(problem, plan)

    def run(a: Any, b: Any, bias: Any = None) -> np.ndarray:
        a4 = a.reshape(a4_shape).astype(compute, copy=False)
        b4 = b.reshape(b4_shape).astype(compute, copy=False)
        with np.errstate(invalid="ignore", over="ignore"):
            r = compute_r(a4, b4)
            return np.ascontiguousarray(r.astype(dtype, copy=False)).reshape(result_shape)

    return run


def execute(problem: ConvProblem, plan: Plan, x: Any, w: Any, bias: Any) -> np.ndarray:
    """Run ``plan`` on NumPy arrays once (:func:`prepare` and call)."""
    return prepare(problem, plan)(x, w, bias)
