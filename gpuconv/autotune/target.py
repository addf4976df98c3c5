"""Where candidates run: a backend as the tuner sees it (strategy table, timer, transfers, failure kinds)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..measure import Timer, cuda_available
from ..problem import ConvProblem
from .load import LoadProbe, no_load, system_load
from .timing import SampledCpuTimer, SampledCudaTimer, TimingLock, nothing_held


def _identity(a: Any) -> Any:
    return a


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Target:
    """A backend as the tuner sees it.

    Attributes:
        backend: the cache's backend name, ``"cpu"`` or ``"cuda"``.
        module: anything with ``STRATEGIES`` (or ``TABLES[direction]``), ``heuristic(problem)`` and
            ``execute(problem, plan, x, w, bias)`` (a backend module, or a fake table in tests).
        timer: ``timer(run, plan)`` -> the seconds of every timed run (:class:`~.timing.Samples`), or one
            number (counted as one sample).
        to_device: host array -> the backend's array.
        to_host: the backend's array -> NumPy (synchronizing).
        failures: ``(exception type, status)`` pairs tried in order; anything else is ``"error"``.
        release: frees cached device memory after an out-of-memory failure.
        load: the load probe (:func:`~.load.system_load` for a real target; a hand-built one sees no load).
        lock: the machine-wide timing lock (:class:`~.timing.TimingLock`; a hand-built one locks nothing).
    """

    backend: str
    module: Any
    timer: Timer
    to_device: Callable[[np.ndarray], Any] = _identity
    to_host: Callable[[Any], np.ndarray] = np.asarray
    failures: tuple[tuple[type[BaseException], str], ...] = ()
    release: Callable[[], None] = _nothing
    load: LoadProbe = no_load
    lock: Callable[[], AbstractContextManager[Any]] = nothing_held

    def table(self, problem: ConvProblem) -> Mapping[str, Any]:
        """The strategy table for ``problem``'s direction (``TABLES[direction]`` where the backend has them)."""
        tables = getattr(self.module, "TABLES", None)
        if isinstance(tables, Mapping):
            return tables[getattr(problem, "direction", "forward")]
        return self.module.STRATEGIES

    def classify(self, e: BaseException) -> str:
        for kind, status in self.failures:
            if isinstance(e, kind):
                return status
        return "oom" if isinstance(e, MemoryError) else "error"


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"cuda"`` where a device is present, else ``"cpu"``; other names are checked.

    Raises:
        ValueError: an unknown name, or ``"cuda"`` without a usable device.
    """
    if backend == "auto":
        return "cuda" if cuda_available() else "cpu"
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"backend must be one of ['auto', 'cpu', 'cuda'], got {backend!r}")
    if backend == "cuda" and not cuda_available():
        raise ValueError("backend 'cuda' needs CuPy and a CUDA device, and none is usable here")
    return backend


def make_target(backend: str, *, timer: Timer | None = None, lock: TimingLock | None = None) -> Target:
    """The :class:`Target` for ``"cpu"`` or ``"cuda"`` (the current CUDA device): its real timer (every sample
    kept), the system's load probe and the device's machine-wide timing lock, unless given."""
    from ..backends import get_backend

    module = get_backend(backend)
    if backend == "cpu":
        return Target("cpu", module, timer or SampledCpuTimer(), load=system_load, lock=lock or TimingLock("cpu"))
    import cupy

    failures: list[tuple[type[BaseException], str]] = [(cupy.cuda.memory.OutOfMemoryError, "oom")]
    from ..cuda.compile import KernelError

    failures.append((KernelError, "compile"))
    from cupy_backends.cuda.api.driver import CUDADriverError
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    failures += [(CUDARuntimeError, "launch"), (CUDADriverError, "launch")]
    device = cupy.cuda.Device()
    try:  # the bus id names the same device whatever CUDA_VISIBLE_DEVICES numbers it
        name = f"cuda-{device.pci_bus_id}"
    except Exception:  # pragma: no cover - drivers without it
        name = f"cuda{device.id}"
    return Target("cuda", module, timer or SampledCudaTimer(), cupy.asarray, cupy.asnumpy, tuple(failures),
                  cupy.get_default_memory_pool().free_all_blocks, system_load, lock or TimingLock(name))


def current_device(backend: str) -> int:
    """The device a tuning run measures on: the current CUDA device, or 0 on the CPU."""
    if backend != "cuda":
        return 0
    import cupy

    return int(cupy.cuda.runtime.getDevice())
