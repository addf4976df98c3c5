"""An :class:`gpuconv.cuda.executor.Executor` that runs the real kernel sources on the CPU.

Arrays are NumPy arrays allocated like device memory: 256-byte aligned (as CuPy's pool), filled with 0xFF bytes
(NaN in every float type) and surrounded by red zones that are checked after every launch, so an out-of-bounds
write is reported at the launch that made it and an out-of-bounds read shows up as NaN.
"""

from __future__ import annotations

import contextlib
import ctypes
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from gpuconv.cuda.compile import KernelError
from gpuconv.cuda.executor import check_launch
from gpuconv.cuda.source import render

from .build import BuildError, build

ALIGN = 256
REDZONE = 256
POISON = 0xFF


@dataclass(frozen=True)
class LaunchRecord:
    kernel: str
    func: str
    params: dict[str, int]
    dtype: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared: int = 0  # bytes of dynamic shared memory


class EmuExecutor:
    """Emulated device.

    Args:
        seed: 0 runs the threads of each block in index order between barriers; any other value shuffles that
            order in every phase (deterministically per seed), which exposes missing barriers from both sides.
    """

    xp = np

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.launches: list[LaunchRecord] = []
        self.functions = 0  # kernels rendered and built through :meth:`function` (the prepared path's compiles)
        self._buffers: list[tuple[weakref.ref[np.ndarray], int, int]] = []
        self._dummies: dict[str, np.ndarray] = {}

    # ---- memory ------------------------------------------------------------------------------------------
    def empty(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        base = np.full(nbytes + 2 * REDZONE + ALIGN, POISON, np.uint8)
        off = REDZONE + (-(base.ctypes.data + REDZONE)) % ALIGN
        self._buffers.append((weakref.ref(base), off, nbytes))
        return base[off:off + nbytes].view(dtype).reshape(shape)

    def to_device(self, a: np.ndarray) -> np.ndarray:
        """A copy of ``a`` in emulated device memory."""
        out = self.empty(a.shape, a.dtype)
        out[...] = a
        return out

    def dummy(self, dtype: str) -> np.ndarray:
        """16 bytes of ``dtype``, poisoned like every allocation, shared by the launches of this executor."""
        if dtype not in self._dummies:
            self._dummies[dtype] = self.empty((16 // np.dtype(dtype).itemsize,), dtype)
        return self._dummies[dtype]

    def _check_redzones(self, where: str) -> None:
        live = []
        for ref, off, nbytes in self._buffers:
            base = ref()
            if base is None:
                continue
            live.append((ref, off, nbytes))
            for lo, hi in ((0, off), (off + nbytes, base.size)):
                bad = np.flatnonzero(base[lo:hi] != POISON)
                if bad.size:
                    first = lo + int(bad[0]) - off
                    raise KernelError(f"{where}: wrote outside an array of {nbytes} bytes (first at byte offset "
                                      f"{first} from its start)")
        self._buffers = live

    # ---- launches ----------------------------------------------------------------------------------------
    def launch(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, grid: Sequence[int],
               block: Sequence[int], args: Sequence[Any], shared: int = 0) -> None:
        check_launch(kernel, func, grid, block, args, shared)
        dynamic = f", {shared} bytes of dynamic shared memory" if shared else ""
        where = (f"{kernel}.{func} (params {dict(params)}, dtype {dtype}, grid {tuple(grid)}, block {tuple(block)}"
                 f"{dynamic})")
        self.run_source(render(kernel, params, dtype), func, grid, block, args, where=where, shared=shared)
        self.launches.append(LaunchRecord(kernel, func, dict(params), dtype, tuple(grid), tuple(block), shared))

    # ---- what gpuconv.cuda.prepared replays through (as CupyExecutor offers it) -----------------------------
    def function(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, shared: int = 0) -> Any:
        """``func`` rendered and built once, as ``call(grid, block, args)`` with ``shared`` bytes of dynamic shared
        memory; counted in :attr:`functions`."""
        self.functions += 1
        source = render(kernel, params, dtype)
        record = dict(params)

        def call(grid: Sequence[int], block: Sequence[int], args: Sequence[Any]) -> None:
            where = f"{kernel}.{func} (params {record}, dtype {dtype}, grid {tuple(grid)}, block {tuple(block)})"
            self.run_source(source, func, grid, block, args, where=where, shared=shared)
            self.launches.append(LaunchRecord(kernel, func, record, dtype, tuple(grid), tuple(block), shared))

        return call

    @staticmethod
    def pack(a: Any) -> Any:
        return a

    @staticmethod
    def address(a: np.ndarray) -> int:
        return int(a.ctypes.data)

    @staticmethod
    def pointer(base: np.ndarray, offset: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return base.reshape(-1).view(np.uint8)[offset:offset + nbytes].view(dtype).reshape(shape)

    @staticmethod
    def device_id(a: np.ndarray) -> int:
        return 0

    @staticmethod
    def on_device(device: int) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def run_source(self, source: str, func: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any],
                   where: str = "", shared: int = 0) -> None:
        """Launch ``func`` from CUDA source text with ``shared`` bytes of dynamic shared memory (used directly by
        the tests of the emulation itself)."""
        where = where or f"{func} (grid {tuple(grid)}, block {tuple(block)})"
        try:
            lib = build(source)
        except BuildError as e:
            raise KernelError(f"failed to compile {where} for the CPU emulation:\n{e}") from e
        try:
            entry = getattr(lib, f"emu_launch_{func}")
            sig_fn = getattr(lib, f"emu_signature_{func}")
        except AttributeError:
            raise KernelError(f"{where}: the source has no extern \"C\" __global__ function {func!r}") from None
        sig_fn.restype = ctypes.c_char_p
        codes = [c for c in sig_fn().decode().split(",") if c]
        if len(codes) != len(args):
            raise KernelError(f"{where}: {func} takes {len(codes)} arguments ({', '.join(codes)}), got {len(args)}")
        storage: list[Any] = []
        for i, (code, a) in enumerate(zip(codes, args)):
            is_int = isinstance(a, (int, np.integer)) and not isinstance(a, bool)
            if code == "i":
                if not is_int:
                    raise KernelError(f"{where}: argument {i} must be an int, got {type(a).__name__}")
                storage.append(ctypes.c_int(int(a)))
            elif code.startswith("p:"):
                if not isinstance(a, np.ndarray):
                    raise KernelError(f"{where}: argument {i} must be an array ({code}), got {type(a).__name__}")
                want = code[2:]
                if want != "other" and a.dtype.name != want:
                    raise KernelError(f"{where}: argument {i} must be a {want} array, got {a.dtype.name}")
                storage.append(ctypes.c_void_p(a.ctypes.data))
            else:
                raise KernelError(f"{where}: parameter {i} has a type kernels may not take ({code}); "
                                  "use pointers and int")
        argv = (ctypes.c_void_p * max(1, len(storage)))(*[ctypes.addressof(s) for s in storage])
        g = (ctypes.c_uint * 3)(*[int(v) for v in grid])
        b = (ctypes.c_uint * 3)(*[int(v) for v in block])
        err = ctypes.create_string_buffer(4096)
        entry.restype = ctypes.c_int
        entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_ulonglong,
                          ctypes.c_char_p, ctypes.c_int]
        rc = entry(g, b, int(shared), argv, self.seed, err, len(err))
        if rc != 0:
            raise KernelError(f"{where}: {err.value.decode(errors='replace')}")
        self._check_redzones(where)
