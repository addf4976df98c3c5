"""Where a strategy's launches go: the CUDA device through CuPy, or (in the tests) the CPU emulation.

A strategy's ``run`` sees only this protocol, so the launch geometry and the workspace handling are the same
code on the GPU and in the emulated tests.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from .compile import KernelError
from .source import INT32_MAX

Dim3 = tuple[int, int, int]

#: CUDA's limits on launch geometry (all compute capabilities gpuconv supports).
MAX_THREADS = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (INT32_MAX, 65535, 65535)


class Executor(Protocol):
    """What ``Strategy.run`` may use on the CUDA backend."""

    xp: Any  # the array module: numpy or cupy

    def empty(self, shape: Sequence[int], dtype: Any) -> Any:
        """An uninitialized C-contiguous array on the device."""

    def launch(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, grid: Dim3, block: Dim3,
               args: Sequence[Any]) -> None:
        """Run ``func`` from ``kernels/<kernel>.cu`` built with ``params`` and ``dtype`` on ``grid`` x ``block``."""


def check_launch(kernel: str, func: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any]) -> None:
    """Reject geometry CUDA would refuse and scalars that do not fit an ``int`` parameter, naming the launch.

    Raises:
        KernelError: the message names the kernel, the function and the offending value.
    """
    where = f"{kernel}.{func}"
    for name, dims, limits in (("grid", grid, MAX_GRID), ("block", block, MAX_BLOCK)):
        if len(dims) != 3 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
            raise KernelError(f"{where}: {name} must be 3 ints, got {tuple(dims)!r}")
        if any(not 1 <= d <= lim for d, lim in zip(dims, limits)):
            raise KernelError(f"{where}: {name} {tuple(dims)} is outside CUDA's limits 1..{limits}")
    threads = int(block[0]) * int(block[1]) * int(block[2])
    if threads > MAX_THREADS:
        raise KernelError(f"{where}: block {tuple(block)} has {threads} threads, more than {MAX_THREADS}")
    for i, a in enumerate(args):
        if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            if not -INT32_MAX - 1 <= int(a) <= INT32_MAX:
                raise KernelError(f"{where}: argument {i} = {int(a)} does not fit a 32-bit int")
        elif not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise KernelError(f"{where}: argument {i} must be an array or an int, got {type(a).__name__}")
        elif not a.flags.c_contiguous:
            raise KernelError(f"{where}: array argument {i} of shape {a.shape} is not C-contiguous")


class CupyExecutor:
    """Launches on the current CuPy device and stream; compiled modules are memoized per device."""

    def __init__(self) -> None:
        import cupy

        self.xp = cupy

    def empty(self, shape: Sequence[int], dtype: Any) -> Any:
        return self.xp.empty(tuple(shape), dtype)

    def launch(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, grid: Dim3, block: Dim3,
               args: Sequence[Any]) -> None:
        from .compile import get_function

        check_launch(kernel, func, grid, block, args)
        fn = get_function(kernel, func, params, dtype)
        cargs = tuple(np.int32(a) if isinstance(a, (int, np.integer)) else a for a in args)
        try:
            fn(tuple(int(g) for g in grid), tuple(int(b) for b in block), cargs)
        except Exception as e:  # a launch failure (too many resources, ...) keeps the library usable
            raise KernelError(f"{kernel}.{func}: launch with params {dict(params)}, dtype {dtype}, grid {tuple(grid)},"
                              f" block {tuple(block)} failed: {e}") from e
