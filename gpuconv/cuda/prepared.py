"""Prepared launches: a CUDA plan's launches worked out on the first call of a problem, replayed on later calls.

Everything a launch needs apart from the data depends only on (problem, plan, device): the compiled function,
the grid and block, the workspace sizes and the argument list, in which only the array pointers change from
call to call. The first call on a device runs the strategy through a recorder that executes each launch and
writes down its function handle, geometry and arguments, every array argument as (buffer, byte offset) into
the call's operands, output or workspaces. Later calls allocate the output and workspaces, fill the pointers
into the recorded argument tuples and launch: no planning, source rendering, parameter checks or compile
lookups.

Only strategies whose ``run`` does nothing but allocate workspace and launch can be replayed
(:data:`LAUNCH_ONLY`); others (``rewrite``, which rearranges operands with CuPy, ``col2im``, which copies the
weight into its workspace) run their ``run`` on every call. The recorder also refuses a recording when the
strategy touched ``ex.xp``, launched nothing, passed an array it cannot place, or when operands overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..problem import ConvProblem
from ..strategy import CudaRun, Strategy
from . import dgrad, direct, im2col, implicit_gemm, pointwise, tc_implicit_gemm, wgrad
from .executor import check_launch

#: The ``run`` functions that only allocate workspace through ``ex.empty`` and launch through ``ex.launch``.
LAUNCH_ONLY: frozenset[Callable[..., None]] = frozenset(
    m.run for m in (im2col, pointwise, direct, implicit_gemm, tc_implicit_gemm, dgrad, wgrad))

#: What each direction reads and writes: ``(a, b, result)``, named as in :func:`operand_shapes`.
OPERANDS = {"forward": ("x", "w", "y"), "input": ("y", "w", "x"), "weight": ("x", "y", "w")}


def operand_shapes(problem: ConvProblem) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The 4-d shapes of a direction's two operands and its result, as a strategy's ``run`` takes them."""
    shapes = {"x": (problem.n, problem.c, problem.h, problem.w), "w": (problem.k, problem.cg, problem.r, problem.s),
              "y": problem.out_shape4}
    a, b, r = OPERANDS[problem.direction]
    return shapes[a], shapes[b], shapes[r]


# (argument index, buffer index, byte offset, dtype, shape, whether the buffer itself can be passed)
_Slot = tuple[int, int, int, Any, tuple[int, ...], bool]


@dataclass(frozen=True)
class _Launch:
    kernel: str
    func: str
    params: tuple[tuple[str, int], ...]
    dtype: str
    call: Callable[[Any, Any, tuple[Any, ...]], None]
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    template: tuple[Any, ...]  # packed arguments; the array slots are filled per call
    slots: tuple[_Slot, ...]


@dataclass(frozen=True)
class Recording:
    """One problem's launches on one device, for calls with or without a bias."""

    workspaces: tuple[tuple[tuple[int, ...], Any], ...]  # (shape, dtype) of each ``ex.empty``, in order
    launches: tuple[_Launch, ...]

    def replay(self, ex: Any, buffers: list[Any]) -> None:
        for ws_shape, ws_dtype in self.workspaces:
            buffers.append(ex.empty(ws_shape, ws_dtype))
        pointer = ex.pointer
        for launch in self.launches:
            args = list(launch.template)
            for i, j, offset, dtype, shape, whole in launch.slots:
                args[i] = buffers[j] if whole else pointer(buffers[j], offset, dtype, shape)
            launch.call(launch.grid, launch.block, tuple(args))


class _Recorder:
    """The executor a strategy runs on while its launches are recorded: each launch runs on ``ex`` at once."""

    def __init__(self, ex: Any, buffers: list[Any]) -> None:
        self._ex = ex
        self._buffers = buffers  # a, b, bias (or None), result; workspaces are appended as they are allocated
        self._dummies: list[Any] = []
        self.workspaces: list[tuple[tuple[int, ...], Any]] = []
        self.launches: list[_Launch] = []
        # Operands that share memory (the same array passed twice) cannot be told apart by address.
        self.overlapped = _overlap(ex, [b for b in buffers if b is not None])
        self.replayable = not self.overlapped
        self._functions: dict[tuple[Any, ...], Any] = {}

    @property
    def xp(self) -> Any:
        self.replayable = False  # array work outside the launches would not be replayed
        return self._ex.xp

    def empty(self, shape: Any, dtype: Any) -> Any:
        a = self._ex.empty(shape, dtype)
        self.workspaces.append((tuple(int(s) for s in shape), dtype))
        self._buffers.append(a)
        return a

    def dummy(self, dtype: str) -> Any:
        d = self._ex.dummy(dtype)
        self._dummies.append(d)
        return d

    def launch(self, kernel: str, func: str, params: Mapping[str, int], dtype: str, grid: Any, block: Any,
               args: Any, shared: int = 0) -> None:
        check_launch(kernel, func, grid, block, args, shared)
        key = (kernel, func, tuple(sorted(params.items())), dtype, shared)
        call = self._functions.get(key)
        if call is None:
            call = self._functions[key] = self._ex.function(kernel, func, params, dtype, int(shared))
        ex = self._ex
        packed, slots = [ex.pack(a) for a in args], []
        for i, a in enumerate(args):
            if isinstance(a, (int, np.integer)) or any(a is d for d in self._dummies):
                continue
            slot = self._place(i, a)
            if slot is None:
                self.replayable = False
            else:
                slots.append(slot)
        g, b = tuple(int(v) for v in grid), tuple(int(v) for v in block)
        call(g, b, tuple(packed))
        # the template holds no array of this call (they would stay alive with the recording)
        template = tuple(None if any(s[0] == i for s in slots) else v for i, v in enumerate(packed))
        self.launches.append(_Launch(kernel, func, key[2], dtype, call, g, b, template,  # type: ignore[arg-type]
                                     tuple(slots)))

    def _place(self, i: int, a: Any) -> _Slot | None:
        """Where argument ``i`` lies in the call's buffers, or None."""
        nbytes = int(a.nbytes)
        if nbytes == 0:
            return None
        p = self._ex.address(a)
        for j, buf in enumerate(self._buffers):
            if buf is None or buf.nbytes == 0:
                continue
            start = self._ex.address(buf)
            if start <= p and p + nbytes <= start + buf.nbytes:
                off = p - start
                return (i, j, off, a.dtype, tuple(a.shape), off == 0 and a.dtype == buf.dtype)
        return None

    def recording(self) -> Recording | None:
        if not self.replayable or not self.launches:
            return None
        return Recording(tuple(self.workspaces), tuple(self.launches))


def _overlap(ex: Any, arrays: list[Any]) -> bool:
    spans = sorted((ex.address(a), ex.address(a) + int(a.nbytes)) for a in arrays if a.nbytes)
    return any(lo < prev_hi for (_, prev_hi), (lo, _) in zip(spans, spans[1:]))


_MISSING = object()


class PreparedRun:
    """``run(a, b, bias) -> result`` for one problem and plan: the direction's operands (``x, w`` for the forward)
    of the problem's shapes and dtype on one device, any strides. Recorded per (device, bias or none).

    Attributes:
        recordings: ``(device, has_bias) -> Recording``, or None where the strategy's ``run`` runs every call.
    """

    def __init__(self, ex: Any, problem: ConvProblem, strategy: Strategy[CudaRun], params: dict[str, int]) -> None:
        self.ex, self.problem, self.strategy, self.params = ex, problem, strategy, params
        self.shapes = operand_shapes(problem)
        self.result_shape = problem.result_shape
        self.reshape_result = tuple(self.result_shape) != tuple(self.shapes[2])
        self.replayable = strategy.run in LAUNCH_ONLY
        self.recordings: dict[tuple[int, bool], Recording | None] = {}

    def __call__(self, a: Any, b: Any, bias: Any = None) -> Any:
        ex, problem = self.ex, self.problem
        dev = ex.device_id(a)
        with ex.on_device(dev):
            if problem.n == 0:  # no image: the output and dx are empty, dw is zero
                return ex.xp.zeros(self.result_shape, problem.dtype)
            sa, sb, sr = self.shapes
            if a.shape != sa:
                a = a.reshape(sa)
            if not a.flags.c_contiguous:
                a = ex.xp.ascontiguousarray(a)
            if b.shape != sb:
                b = b.reshape(sb)
            if not b.flags.c_contiguous:
                b = ex.xp.ascontiguousarray(b)
            if bias is not None and not bias.flags.c_contiguous:
                bias = ex.xp.ascontiguousarray(bias)
            out = ex.empty(sr, problem.dtype)
            key = (dev, bias is not None)
            rec = self.recordings.get(key, _MISSING)
            if rec is None or not self.replayable:
                self.strategy.run(ex, problem, self.params, a, b, bias, out)
            elif rec is _MISSING:
                recorder = _Recorder(ex, [a, b, bias, out])
                self.strategy.run(recorder, problem, self.params, a, b, bias, out)
                if not recorder.overlapped:  # else the next call records again
                    self.recordings[key] = recorder.recording()
            else:
                rec.replay(ex, [a, b, bias, out])  # type: ignore[union-attr]
        return out.reshape(self.result_shape) if self.reshape_result else out
