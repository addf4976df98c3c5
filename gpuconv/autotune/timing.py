"""Timers: a callable ``timer(run, plan) -> seconds`` that the tuner is given, so tests can pass a fake one.

``run`` launches one convolution (rotating among a few copies of the inputs, so caches do not flatter a
candidate); ``plan`` says what is being timed. Real timers ignore ``plan``; a fake timer for tests scores
by it. Both real timers exclude warm-up runs and return a median.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..problem import ConvProblem
from ..strategy import Plan


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


def default_timer(backend: str) -> Timer:
    """The real timer for ``"cpu"`` (wall clock) or ``"cuda"`` (CUDA events)."""
    return CudaEventTimer() if backend == "cuda" else CpuTimer()


def jax_runner(problem: ConvProblem, backend: str, inputs: list[tuple[Any, Any, Any]]) -> Callable[[], Any] | None:
    """A ``run`` callable for ``jax.lax.conv_general_dilated`` on the same device kind, or None without one.

    ``inputs`` are host (NumPy) copies ``(x, w, bias)``; they are placed on the device once and rotated
    like the candidates' inputs. JAX runs at its default precision and in the problem's dtype: it is the
    peer being compared against, not the oracle.
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

    def conv(x: Any, w: Any, bias: Any) -> Any:
        y = lax.conv_general_dilated(x, w, window_strides=problem.stride, padding=((t, b), (l, r)),
                                     rhs_dilation=problem.dilation, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     feature_group_count=problem.groups)
        return y if bias is None else y + bias[None, :, None, None]

    f = jax.jit(conv)
    shape4 = (problem.n, problem.c, problem.h, problem.w), (problem.k, problem.cg, problem.r, problem.s)
    placed = [(jax.device_put(x.reshape(shape4[0]), device), jax.device_put(w.reshape(shape4[1]), device),
               None if bias is None else jax.device_put(bias, device)) for x, w, bias in inputs]
    counter = iter(range(1 << 62))

    def run() -> Any:
        return f(*placed[next(counter) % len(placed)]).block_until_ready()

    return run
