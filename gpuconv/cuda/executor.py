"""Where a strategy's launches go: the CUDA device through CuPy, or (in the tests) the CPU emulation.

A strategy's ``run`` sees only this protocol, so the launch geometry and the workspace handling are the same
code on the GPU and in the emulated tests.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from .compile import KernelError
from .occupancy import LIMITS
from .source import INT32_MAX

Dim3 = tuple[int, int, int]

#: CUDA's limits on launch geometry (all compute capabilities gpuconv supports).
MAX_THREADS = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (INT32_MAX, 65535, 65535)
#: The most dynamic shared memory a block may ask for on any device gpuconv supports (sm_90's opt-in limit, 227
#: KiB); a device's own, smaller limit is enforced by the driver when the function is prepared.
MAX_DYNAMIC_SHARED = max(lim.smem_block for lim in LIMITS.values())
#: Dynamic shared memory a launch may use without opting the function in (``cudaFuncSetAttribute``).
PORTABLE_SHARED = 48 * 1024


class Executor(Protocol):
    """What ``Strategy.run`` may use on the CUDA backend."""

    xp: Any  # the array module: numpy or cupy

    def empty(self, shape: Sequence[int], dtype: Any) -> Any:
        """An uninitialized C-contiguous array on the device."""

    def launch(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, grid: Dim3, block: Dim3,
               args: Sequence[Any], shared: int = 0) -> None:
        """Run ``func`` from ``kernels/<kernel>.cu`` built with ``params`` and ``dtype`` on ``grid`` x ``block``,
        with ``shared`` bytes of dynamic shared memory per block."""

    def dummy(self, dtype: str) -> Any:
        """A small device array of ``dtype`` for a pointer argument the kernel does not read (a missing bias):
        never an alias of an operand or the output, so ``__restrict__`` promises hold."""


def check_launch(kernel: str, func: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any],
                 shared: int = 0) -> None:
    """Reject geometry and dynamic shared memory CUDA would refuse and scalars that do not fit an ``int`` parameter,
    naming the launch.

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
    if not isinstance(shared, (int, np.integer)) or isinstance(shared, bool) or not 0 <= shared <= MAX_DYNAMIC_SHARED:
        raise KernelError(f"{where}: dynamic shared memory must be 0..{MAX_DYNAMIC_SHARED} bytes, got {shared!r}")
    for i, a in enumerate(args):
        if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            if not -INT32_MAX - 1 <= int(a) <= INT32_MAX:
                raise KernelError(f"{where}: argument {i} = {int(a)} does not fit a 32-bit int")
        elif not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise KernelError(f"{where}: argument {i} must be an array or an int, got {type(a).__name__}")
        elif not a.flags.c_contiguous:
            raise KernelError(f"{where}: array argument {i} of shape {a.shape} is not C-contiguous")


#: Bytes of :meth:`Executor.dummy`: one 16-byte vector, so a kernel's vector-load alignment checks pass on it too.
DUMMY_BYTES = 16

Function = Callable[[Dim3, Dim3, tuple[Any, ...]], None]


#: One launch as :class:`RecordingExecutor` keeps it: ``(kernel, func, sorted params, dtype)``.
Launch = tuple[str, str, tuple[tuple[str, int], ...], str]


class RecordingExecutor:
    """Runs nothing: records each launch's binary and function, checking its geometry as the runtime does (how the
    compile tests and ``benchmarks.ptxas_sweep`` learn what a plan would build, without a GPU)."""

    xp = np

    def __init__(self) -> None:
        self.launches: list[Launch] = []

    def empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        return np.empty(tuple(shape), dtype)

    def dummy(self, dtype: str) -> np.ndarray:
        return np.empty(4, dtype)

    def launch(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, grid: Sequence[int],
               block: Sequence[int], args: Sequence[Any], shared: int = 0) -> None:
        check_launch(kernel, func, grid, block, args, shared)
        self.launches.append((kernel, func, tuple(sorted(params.items())), dtype))


class CupyExecutor:
    """Launches on the current CuPy device and stream; compiled modules are memoized per device.

    Beside the :class:`Executor` protocol it offers what :mod:`.prepared` needs to replay a plan's launches:
    ``function`` (a compiled kernel as ``call(grid, block, packed_args)``), ``pack`` (an argument as the launch
    takes it), ``address``/``pointer`` (an array argument as an offset into a buffer) and ``device_id``/``on_device``.
    """

    def __init__(self) -> None:
        import cupy

        self.xp = cupy
        self._dummies: dict[tuple[int, str], Any] = {}

    def empty(self, shape: Sequence[int], dtype: Any) -> Any:
        return self.xp.empty(tuple(shape), dtype)

    def dummy(self, dtype: str) -> Any:
        key = (int(self.xp.cuda.runtime.getDevice()), dtype)
        found = self._dummies.get(key)
        if found is None:
            found = self._dummies[key] = self.xp.zeros(DUMMY_BYTES // np.dtype(dtype).itemsize, dtype)
        return found

    def function(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, shared: int = 0) -> Function:
        """``func`` of ``kernels/<kernel>.cu`` compiled for the current device, as ``call(grid, block, args)``
        with packed ``args`` and ``shared`` bytes of dynamic shared memory per block; a launch failure raises
        :class:`KernelError` naming the launch.

        Raises:
            KernelError: the device cannot give a block ``shared`` bytes (past its opt-in limit).
        """
        from .compile import get_function

        fn = get_function(kernel, func, params, dtype)
        if shared > PORTABLE_SHARED:
            # Past 48 KiB a function must opt in, per device; the driver refuses more than the device has.
            try:
                if fn.max_dynamic_shared_size_bytes < shared:
                    fn.max_dynamic_shared_size_bytes = shared
            except Exception as e:
                raise KernelError(f"{kernel}.{func} with params {dict(params)}, dtype {dtype}: this device cannot give "
                                  f"a block {shared} bytes of dynamic shared memory: {e}") from e

        def call(grid: Dim3, block: Dim3, args: tuple[Any, ...]) -> None:
            try:
                fn(grid, block, args, shared_mem=shared)
            except Exception as e:  # a launch failure (too many resources, ...) keeps the library usable
                raise KernelError(f"{kernel}.{func}: launch with params {dict(params)}, dtype {dtype}, grid {grid},"
                                  f" block {block}, {shared} bytes of dynamic shared memory failed: {e}") from e

        return call

    @staticmethod
    def pack(a: Any) -> Any:
        # CuPy passes a Python int as a 64-bit value; the kernels take int.
        return np.int32(a) if isinstance(a, (int, np.integer)) else a

    @staticmethod
    def address(a: Any) -> int:
        return int(a.data.ptr)

    @staticmethod
    def pointer(base: Any, offset: int, dtype: Any, shape: tuple[int, ...]) -> Any:
        """The argument for an array ``offset`` bytes into ``base``: a pointer passes as a 64-bit value."""
        return np.uint64(base.data.ptr + offset)

    @staticmethod
    def device_id(a: Any) -> int:
        return int(a.device.id)

    def on_device(self, device: int) -> Any:
        # A fresh context per call: a Device object keeps its own stack of previous devices, not per thread.
        return self.xp.cuda.Device(device)

    def launch(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, grid: Dim3, block: Dim3,
               args: Sequence[Any], shared: int = 0) -> None:
        check_launch(kernel, func, grid, block, args, shared)
        call = self.function(kernel, func, params, dtype, int(shared))
        call(tuple(int(g) for g in grid), tuple(int(b) for b in block),  # type: ignore[arg-type]
             tuple(self.pack(a) for a in args))
