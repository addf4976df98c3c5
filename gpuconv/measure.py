"""Measuring a convolution, one way for every caller: the tuner, ``benchmarks/`` and the demo.

* inputs: :func:`random_inputs` (uniform in [-1, 1), never zeros) and how many copies to rotate;
* the correctness check: :func:`tolerance` from the arithmetic and :func:`mismatch`;
* timers: ``timer(run, plan) -> seconds`` (:class:`CpuTimer`, :class:`CudaEventTimer`), injectable so tests
  can pass a fake one;
* the ``jax.lax`` contender (:func:`jax_runner`), :func:`conv_kwargs` (a problem back to keyword arguments,
  ``'same'`` for the asymmetric padding it resolves to), and the CUDA probe :func:`cuda_available`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from ._dtypes import COMPUTE, MANTISSA_BITS, numpy_dtype
from .problem import ConvProblem, make_problem
from .strategy import Plan

# ---- inputs -------------------------------------------------------------------------------------

def random_inputs(problem: ConvProblem, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The direction's two operands (``x, w``; ``dy, w``; ``x, dy``) and the bias if the problem has one, uniform
    in [-1, 1), in the problem's dtype, on the host."""
    dtype = numpy_dtype(problem.dtype)
    draw = lambda shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    a, b = problem.operand_shapes
    return draw(a), draw(b), (draw((problem.k,)) if problem.has_bias else None)


def copies_for(problem: ConvProblem, wanted: int) -> int:
    """How many input copies to rotate: ``wanted``, fewer when one copy is already large."""
    size = numpy_dtype(problem.dtype).itemsize * sum(math.prod(s) for s in problem.operand_shapes)
    return max(1, min(wanted, (1 << 30) // max(size, 1)))


# ---- problem -> keyword arguments ----------------------------------------------------------

def conv_kwargs(problem: ConvProblem) -> dict[str, Any]:
    """``stride/padding/dilation/groups`` keywords that rebuild ``problem`` through conv1d/conv2d (torch or gpuconv).

    Asymmetric padding is only expressible as ``'same'``.

    Raises:
        ValueError: padding that is neither symmetric nor what ``'same'`` resolves to.
    """
    t, b, l, r = problem.padding
    if problem.ndim == 1:
        kw: dict[str, Any] = dict(stride=problem.stride[1], dilation=problem.dilation[1], groups=problem.groups)
        kw["padding"] = l if l == r else "same"
    else:
        kw = dict(stride=problem.stride, dilation=problem.dilation, groups=problem.groups)
        kw["padding"] = (t, l) if (t, l) == (b, r) else "same"
    fn = "conv1d" if problem.ndim == 1 else "conv2d"
    try:
        rebuilt = make_problem(fn, problem.x_shape, problem.w_shape, problem.dtype, problem.has_bias, **kw,
                               direction=problem.direction)
    except ValueError:
        rebuilt = None
    if rebuilt != problem:
        raise ValueError(f"padding {problem.padding} is neither symmetric nor 'same'; "
                         f"x.shape={problem.x_shape}, w.shape={problem.w_shape}")
    return kw


# ---- the correctness check -----------------------------------------------------------------

def tolerance(problem: ConvProblem, scale: float = 1.0) -> tuple[float, float]:
    """``(rtol, atol)`` for ``problem``'s output when every input term has magnitude at most ``scale``.

    Each result element is a sum of ``problem.sum_length`` products (the forward's dot product, or a gradient's
    sum over output channels and taps, or over the batch and the output grid); the rounding error of a
    length-n sum grows at most like ``n * eps * max|term|``. float16 and bfloat16 inputs are accumulated in
    float32 (their products are exact there) and rounded once to their dtype, so they get one ulp of it relative
    (2**-10 for float16's 11 significand bits, 2**-7 for bfloat16's 8) on top of the float32 sum. A float32
    problem at ``precision="tf32"`` adds the TF32 rounding of both operands of every product.

    Example:
        >>> from gpuconv.problem import make_problem
        >>> rtol, atol = tolerance(make_problem("conv2d", (1, 8, 5, 5), (4, 8, 3, 3), "float32", False))
        >>> rtol < 1e-5 and atol < 1e-3
        True
    """
    compute = COMPUTE[problem.dtype]
    eps = float(np.finfo(compute).eps)
    atol = 4 * eps * (problem.sum_length + 1) * scale
    narrow = compute != problem.dtype  # rounded once from the float32 sum to a 16-bit dtype
    rtol = 2.0 ** (1 - MANTISSA_BITS[problem.dtype]) if narrow else 4 * eps
    if narrow:
        atol += float(np.finfo(numpy_dtype(problem.dtype)).smallest_subnormal)  # 2**-24 float16, 2**-133 bf16
    if problem.dtype == "float32" and problem.precision == "tf32":
        # both operands rounded to 10 mantissa bits (relative error 2**-11 each): 2**-10 per product
        atol += 2.0 ** -10 * problem.sum_length * scale
    return rtol, atol


def mismatch(actual: np.ndarray, expected: np.ndarray, problem: ConvProblem, scale: float = 1.0) -> str | None:
    """None when ``actual`` matches ``expected`` within :func:`tolerance`, else a one-line description.

    Shape is checked first, then dtype, then values (NaN only where the reference has NaN).
    """
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return f"shape {actual.shape} != reference {expected.shape}"
    if actual.dtype != expected.dtype:
        return f"dtype {actual.dtype} != reference {expected.dtype}"
    rtol, atol = tolerance(problem, scale)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if not np.array_equal(nan_a, nan_e):
        return f"NaN at {int(np.count_nonzero(nan_a != nan_e))} positions where the reference has none (or vice versa)"
    err = np.where(nan_e, 0.0, np.abs(a - e))
    bad = err > atol + rtol * np.abs(np.where(nan_e, 0.0, e))
    if not bad.any():
        return None
    worst = np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), err.shape)
    return (f"{int(bad.sum())} of {bad.size} values differ from the reference; worst at {tuple(map(int, worst))}: "
            f"{a[worst]:.6g} vs {e[worst]:.6g} (rtol={rtol:.2g}, atol={atol:.2g})")


# ---- timers -------------------------------------------------------------------------------------

class Timer(Protocol):
    """What the tuner calls to time a candidate."""

    def __call__(self, run: Callable[[], Any], plan: Plan) -> float: ...


@dataclass(frozen=True)
class CpuTimer:
    """Median wall time (``time.perf_counter``) of up to ``repeat`` runs after ``warmup``, within ``budget_s``.

    At least one timed run happens however slow the candidate is; more only while the budget lasts.
    """

    warmup: int = 1
    repeat: int = 25
    budget_s: float = 0.5

    def __call__(self, run: Callable[[], Any], plan: Plan) -> float:
        for _ in range(self.warmup):
            run()
        times: list[float] = []
        deadline = time.perf_counter() + self.budget_s
        while len(times) < self.repeat and (not times or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


@dataclass(frozen=True)
class CudaEventTimer:
    """Median of ``repeat`` CUDA-event intervals on the current stream after ``warmup`` runs, within ``budget_s``.

    Each interval is bracketed by events recorded on the stream the kernel runs on, so host overhead
    between launches is excluded but launch latency inside the interval is not.
    """

    warmup: int = 3
    repeat: int = 50
    budget_s: float = 1.0

    def __call__(self, run: Callable[[], Any], plan: Plan) -> float:
        import cupy

        for _ in range(self.warmup):
            run()
        cupy.cuda.get_current_stream().synchronize()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        times: list[float] = []
        deadline = time.perf_counter() + self.budget_s
        while len(times) < self.repeat and (not times or time.perf_counter() < deadline):
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        return statistics.median(times)


def jax_runner(problem: ConvProblem, backend: str, inputs: list[tuple[Any, Any, Any]]) -> Callable[[], Any] | None:
    """A ``run`` callable for ``jax.lax.conv_general_dilated`` on the same device kind, or None without one.

    ``inputs`` are host (NumPy) copies of the direction's operands (:func:`random_inputs`); they are placed on
    the device once and rotated like the candidates' inputs. JAX runs at its default precision and in the
    problem's dtype: it is the peer being compared against, not the oracle.
    """
    try:
        import jax
        from jax import lax
    except ImportError:
        return None
    try:
        device = jax.devices("cpu" if backend == "cpu" else "gpu")[0]
    except RuntimeError:  # no such platform in this JAX install
        return None
    t, b, l, r = problem.padding

    def forward(x: Any, w: Any) -> Any:
        return lax.conv_general_dilated(x, w, window_strides=problem.stride, padding=((t, b), (l, r)),
                                        rhs_dilation=problem.dilation, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                        feature_group_count=problem.groups)

    x4, w4, y4 = (problem.n, problem.c, problem.h, problem.w), (problem.k, problem.cg, problem.r, problem.s), \
        problem.out_shape4

    def conv(a: Any, b: Any, bias: Any) -> Any:
        if problem.direction == "input":  # what jax.grad runs for dx: the transpose of the forward in x
            return jax.linear_transpose(lambda x: forward(x, b), jax.ShapeDtypeStruct(x4, b.dtype))(a)[0]
        if problem.direction == "weight":
            return jax.linear_transpose(lambda w: forward(a, w), jax.ShapeDtypeStruct(w4, a.dtype))(b)[0]
        y = forward(a, b)
        return y if bias is None else y + bias[None, :, None, None]

    f = jax.jit(conv)
    shape4 = {"forward": (x4, w4), "input": (y4, w4), "weight": (x4, y4)}[problem.direction]
    with jax_dtype_scope(jax, problem.dtype):
        placed = [(jax.device_put(x.reshape(shape4[0]), device), jax.device_put(w.reshape(shape4[1]), device),
                   None if bias is None else jax.device_put(bias, device)) for x, w, bias in inputs]
    counter = iter(range(1 << 62))

    def run() -> Any:
        with jax_dtype_scope(jax, problem.dtype):
            return f(*placed[next(counter) % len(placed)]).block_until_ready()

    return run


def jax_dtype_scope(jax: Any, dtype: str) -> Any:
    """A context in which JAX keeps ``dtype``: float64 needs ``jax_enable_x64``, switched on for the block only,
    so the caller's own setting is never changed."""
    if dtype != "float64":
        return contextlib.nullcontext()
    context = getattr(jax, "enable_x64", None)
    if context is None:  # pragma: no cover - older jax
        from jax.experimental import enable_x64 as context
    return context(True)


# ---- the CUDA probe ---------------------------------------------------------------------------

def cuda_available() -> bool:
    """Whether CuPy is importable and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False
