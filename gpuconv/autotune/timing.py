"""The tuner's timers, which keep every sample, and the machine-wide lock that timings run under.

:class:`~gpuconv.measure.CpuTimer` and :class:`~gpuconv.measure.CudaEventTimer` return a median; the tuner
needs the spread too, so its timers return every timed run (:class:`Samples`). A timer that returns a single
number (a fake one in the tests, or ``measure``'s) still works: the tuner counts it as one sample.

On a GPU the clocks ramp up under load: :func:`settle` warms a candidate up until the medians of two
consecutive batches agree, and says whether they did.

Only one tuner on a machine times at a time (:class:`TimingLock`): two tuners timing together measure each
other. Checking, compiling and writing the cache happen outside the lock.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..strategy import Plan

LOG = logging.getLogger("gpuconv.autotune")
LOCK_DIR_ENV = "GPUCONV_LOCK_DIR"


class Samples(tuple):  # type: ignore[type-arg]
    """Seconds of each timed run, in order; ``warmup`` runs were discarded, ``stable`` says whether the
    warm-up reached agreeing timings (None where the timer does not check)."""

    warmup: int
    stable: bool | None

    def __new__(cls, times: Sequence[float], warmup: int = 0, stable: bool | None = None) -> Samples:
        s = super().__new__(cls, (float(t) for t in times))
        s.warmup, s.stable = warmup, stable
        return s


def as_samples(value: Any) -> Samples:
    """What a timer returned, as :class:`Samples` (a single number is one sample)."""
    if isinstance(value, Samples):
        return value
    if isinstance(value, (list, tuple)):
        return Samples(value)
    return Samples([float(value)])


def settle(batch: Callable[[], float], *, agree: float = 0.03, least: int = 2, most: int = 20) -> tuple[int, bool]:
    """Call ``batch()`` (the median seconds of a few runs) until two consecutive results agree within ``agree``.

    Returns:
        ``(batches run, whether they agreed)``; at most ``most`` batches.
    """
    previous = batch()
    for n in range(2, most + 1):
        current = batch()
        if n >= least and abs(current - previous) <= agree * min(current, previous):
            return n, True
        previous = current
    return most, False


@dataclass(frozen=True)
class SampledCpuTimer:
    """Every wall time (``time.perf_counter``) of up to ``repeat`` runs after ``warmup``, within ``budget_s``.

    At least ``least`` timed runs happen however slow the candidate is; more only while the budget lasts.
    """

    warmup: int = 1
    repeat: int = 25
    budget_s: float = 0.5
    least: int = 3

    def __call__(self, run: Callable[[], Any], plan: Plan) -> Samples:
        for _ in range(self.warmup):
            run()
        times: list[float] = []
        deadline = time.perf_counter() + self.budget_s
        while len(times) < self.repeat and (len(times) < self.least or time.perf_counter() < deadline):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return Samples(times, self.warmup)


@dataclass(frozen=True)
class SampledCudaTimer:
    """CUDA-event intervals of up to ``repeat`` runs on the current stream, after warming up until the clocks
    are stable (:func:`settle` over batches of ``batch`` runs), within ``budget_s``."""

    batch: int = 5
    repeat: int = 50
    budget_s: float = 1.0
    agree: float = 0.03

    def __call__(self, run: Callable[[], Any], plan: Plan) -> Samples:
        import cupy

        start, end = cupy.cuda.Event(), cupy.cuda.Event()

        def once() -> float:
            start.record()
            run()
            end.record()
            end.synchronize()
            return float(cupy.cuda.get_elapsed_time(start, end)) / 1e3

        run()
        cupy.cuda.get_current_stream().synchronize()
        warm, stable = settle(lambda: statistics.median(once() for _ in range(self.batch)), agree=self.agree)
        times: list[float] = []
        deadline = time.perf_counter() + self.budget_s
        while len(times) < self.repeat and (len(times) < 3 or time.perf_counter() < deadline):
            times.append(once())
        return Samples(times, warm * self.batch + 1, stable)


def nothing_held() -> Any:
    """A lock that locks nothing (the default of a hand-built target, and the fake timers' tests)."""
    return _NoLock()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


@dataclass
class TimingLock:
    """A machine-wide lock, one per device, held while a candidate is timed; re-entrant within a process.

    The lock file is ``gpuconv-timing-<device>.lock`` in ``$GPUCONV_LOCK_DIR``, else the system's temporary
    directory (shared by every user of the machine, so it is created world-writable). Waits are logged and
    counted; ``held`` keeps the wall-clock intervals (``time.time()``) during which this process held it.

    Args:
        device: names the lock (``cpu``, ``cuda0-nvidia-h100``...).
        directory: where the lock file lives (default: see above).
        on_wait: called once per wait with the lock's path, before waiting.
    """

    device: str
    directory: str | os.PathLike[str] | None = None
    on_wait: Callable[[Path], None] | None = None
    acquired: int = 0
    waits: int = 0
    waited_s: float = 0.0
    held: list[tuple[float, float]] = field(default_factory=list)
    _depth: int = 0
    _lock: Any = None
    _guard: Any = field(default_factory=threading.RLock)

    #: Intervals kept for the report (the counts stay complete).
    MAX_HELD = 10000

    @property
    def path(self) -> Path:
        from ..cache import slug

        base = Path(self.directory or os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir())
        return base / f"gpuconv-timing-{slug(self.device)}.lock"

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._guard:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            if self._lock is None:
                from filelock import FileLock

                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock = FileLock(str(self.path), mode=0o666)
            from filelock import Timeout

            t0 = time.perf_counter()
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                self.waits += 1
                if self.on_wait is not None:
                    self.on_wait(self.path)
                LOG.info("waiting for the timing lock %s (another tuner is timing on this machine)", self.path)
                self._lock.acquire()
                waited = time.perf_counter() - t0
                self.waited_s += waited
                LOG.info("timing lock %s acquired after %.3f s", self.path, waited)
            self.acquired += 1
            self._depth = 1
            start = time.time()
            try:
                yield
            finally:
                self._depth = 0
                if len(self.held) < self.MAX_HELD:
                    self.held.append((start, time.time()))
                self._lock.release()

    def stats(self) -> dict[str, Any]:
        """Counts for the JSON output: acquisitions, waits, seconds waited, the lock file."""
        return {"path": str(self.path), "acquired": self.acquired, "waits": self.waits,
                "waited_s": round(self.waited_s, 4)}
