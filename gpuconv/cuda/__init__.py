"""The CUDA backend: CuPy arrays in, kernels from ``kernels/*.cu`` compiled with NVRTC, launched on the current stream.

A strategy here is a module with a :class:`~gpuconv.strategy.Strategy` whose ``run`` has the signature
``run(ex, problem, params, x, w, bias, y) -> None``: ``ex`` is an :class:`~gpuconv.cuda.executor.Executor`,
``x (N, C, H, W)`` and ``w (K, C/groups, R, S)`` are C-contiguous in the problem dtype, ``bias (K,)`` or None,
and ``y (N, K, P, Q)`` is preallocated and must be filled completely. Workspace comes from ``ex.empty``.
The same ``run`` executes on the CPU emulation in the tests.
"""

from __future__ import annotations

from typing import Any, Callable

import cupy  # (the backend's dependency: gpuconv.backends turns its absence into an install hint)

from ..problem import ConvProblem
from ..strategy import CudaRun, Plan, Strategy
from . import col2im, dgrad, direct, im2col, implicit_gemm, pointwise, rewrite, tc_implicit_gemm, wgrad
from .executor import CupyExecutor, Executor
from .fingerprint import fingerprint as fingerprint
from .prepared import OPERANDS as _OPERANDS
from .prepared import PreparedRun

STRATEGIES: dict[str, Strategy[CudaRun]] = {
    s.name: s
    for s in (
        im2col.STRATEGY,
        pointwise.STRATEGY,
        direct.STRATEGY,
        implicit_gemm.STRATEGY,
        tc_implicit_gemm.STRATEGY,
    )
}

# The heuristic: the first rule whose condition holds and whose strategy supports the problem wins.
_RULES: list[tuple[str, Callable[[ConvProblem], bool]]] = [
    # float16, bfloat16, and float32 at precision "tf32": tensor cores, except where a per-group GEMM would be mostly
    # channel padding (depthwise and thin groups, as for the direct rule below).
    ("tc_implicit_gemm", lambda p: not (p.is_depthwise or (p.groups > 1 and p.kg <= 8 and p.cg <= 8))),
    ("pointwise", lambda p: p.is_pointwise),
    # Depthwise and thin groups: a per-group GEMM would be mostly empty tiles.
    ("direct", lambda p: p.is_depthwise or (p.groups > 1 and p.kg <= 8 and p.cg <= 8)),
    # Few output channels per group: writing and re-reading the im2col columns costs about as much as the
    # GEMM itself (bytes * flop rate / (Kg * bandwidth) ~ 50 / Kg on H100), so gather them on the fly.
    ("implicit_gemm", lambda p: p.kg <= 128),
    ("im2col", lambda p: True),
    ("implicit_gemm", lambda p: True),  # where im2col's workspace indices do not fit
    ("tc_implicit_gemm", lambda p: True),  # bfloat16 runs on nothing else (depthwise and thin groups too)
]

# Problem-specific parameters for the heuristic; strategies not listed use their defaults.
_HEURISTIC_PARAMS: dict[str, Callable[[ConvProblem], dict[str, int]]] = {
    "im2col": im2col.heuristic_params,
    "pointwise": pointwise.heuristic_params,
    "direct": direct.heuristic_params,
    "implicit_gemm": implicit_gemm.heuristic_params,
    "tc_implicit_gemm": tc_implicit_gemm.heuristic_params,
}


def heuristic(problem: ConvProblem) -> Plan:
    """The strategy and parameters used when nothing is tuned for this problem.

    Raises:
        ValueError: no strategy can compute the problem (sizes beyond every kernel's index range).
    """
    table = TABLES[problem.direction]
    for name, applies in _DIRECTION_RULES[problem.direction]:
        strategy = table.get(name)
        if strategy is not None and applies(problem) and strategy.supports(problem):
            pick = _DIRECTION_HEURISTIC_PARAMS[problem.direction].get(name)
            params = pick(problem) if pick is not None else dict(strategy.defaults)
            if not strategy.valid(params, problem):
                params = dict(strategy.defaults)
            return Plan(name, params, "heuristic")
    what = "" if problem.direction == "forward" else f" the {problem.direction} gradient of"
    raise ValueError(f"no CUDA strategy can compute{what} x.shape={problem.x_shape}, w.shape={problem.w_shape}: "
                     + "; ".join(f"{s.name} requires {s.requires}" for s in table.values()))


def _run_forward(ex: Executor, problem: ConvProblem, plan: Plan, x: Any, w: Any) -> Any:
    # 4-d whatever the problem's ndim: the rewrites index the output as (N, K, P, Q)
    return _launch(ex, problem, STRATEGIES[plan.strategy], dict(plan.params), x, w, None).reshape(problem.out_shape4)


_INPUT_REWRITE, _WEIGHT_REWRITE = rewrite.make_strategies(_run_forward, heuristic)

#: The gradients' strategies, ``run(ex, problem, params, a, b, None, out)`` with ``(a, b, out)`` being
#: ``(dy, w, dx)`` or ``(x, dy, dw)``.
INPUT_STRATEGIES: dict[str, Strategy[CudaRun]] = {s.name: s for s in (dgrad.STRATEGY, col2im.STRATEGY,
                                                                       _INPUT_REWRITE)}
WEIGHT_STRATEGIES: dict[str, Strategy[CudaRun]] = {s.name: s for s in (wgrad.STRATEGY, _WEIGHT_REWRITE)}

#: Every direction's strategies.
TABLES: dict[str, dict[str, Strategy[CudaRun]]] = {"forward": STRATEGIES, "input": INPUT_STRATEGIES,
                                                   "weight": WEIGHT_STRATEGIES}

_DIRECTION_RULES: dict[str, list[tuple[str, Callable[[ConvProblem], bool]]]] = {
    "forward": _RULES,
    # As the forward: the implicit GEMM where the column workspace would cost about as much as the GEMM
    # (few input channels per group: M = C/groups here), the explicit GEMM + fold otherwise.
    "input": [("implicit_gemm", lambda p: p.cg <= 128), ("col2im", lambda p: True),
              ("implicit_gemm", lambda p: True), ("rewrite", lambda p: True)],
    "weight": [("implicit_gemm", lambda p: True), ("rewrite", lambda p: True)],
}

_DIRECTION_HEURISTIC_PARAMS: dict[str, dict[str, Callable[[ConvProblem], dict[str, int]]]] = {
    "forward": _HEURISTIC_PARAMS,
    "input": {"implicit_gemm": dgrad.heuristic_params, "col2im": col2im.heuristic_params},
    "weight": {"implicit_gemm": wgrad.heuristic_params},
}


def prepare(problem: ConvProblem, plan: Plan, executor: Executor | None = None) -> Callable[[Any, Any, Any], Any]:
    """A runner ``run(x, w, bias) -> y`` for ``plan`` on CuPy arrays of ``problem``'s shapes and dtype, on their
    device and the current stream. Its launches are recorded on the first call per device and replayed after
    (:mod:`.prepared`). ``executor`` defaults to CuPy's (the tests pass the CPU emulation).

    Raises:
        ValueError: ``plan.params`` is not a valid point of the strategy's space for this problem.
    """
    strategy = TABLES[problem.direction][plan.strategy]
    if not strategy.valid(dict(plan.params), problem):
        raise ValueError(f"parameters {dict(plan.params)} are not valid for the CUDA strategy {plan.strategy!r} on "
                         f"this problem (space {dict(strategy.space)})")
    return PreparedRun(executor if executor is not None else CupyExecutor(), problem, strategy, dict(plan.params))


def device_context(device: int) -> Any:
    """Make ``device`` current for planning (the heuristic reads its multiprocessor count; tuning runs on it)."""
    return cupy.cuda.Device(device)


def execute(problem: ConvProblem, plan: Plan, x: Any, w: Any, bias: Any) -> Any:
    """Run ``plan`` on CuPy arrays (on their device, on the current stream); returns ``problem.out_shape``.

    Raises:
        ValueError: ``plan.params`` is not a valid point of the strategy's space for this problem.
        KernelError: a kernel failed to compile or launch (the library stays usable).
    """
    with x.device:
        return run_plan(CupyExecutor(), problem, plan, x, w, bias)


def run_plan(ex: Executor, problem: ConvProblem, plan: Plan, x: Any, w: Any, bias: Any) -> Any:
    """:func:`execute` on any executor (the tests pass the CPU emulation): contiguous 4-d inputs, output
    allocated by ``ex``, reshaped to ``problem.out_shape``; an empty batch launches nothing."""
    strategy = TABLES[problem.direction][plan.strategy]
    params = dict(plan.params)
    if not strategy.valid(params, problem):
        raise ValueError(f"parameters {params} are not valid for the CUDA strategy {plan.strategy!r} on this problem"
                         f" (space {dict(strategy.space)})")
    return _launch(ex, problem, strategy, params, x, w, bias)


def _launch(ex: Executor, problem: ConvProblem, strategy: Strategy[CudaRun], params: dict[str, int], x: Any, w: Any,
            bias: Any) -> Any:
    xp = ex.xp
    if problem.n == 0:  # no image: the output and dx are empty, dw is zero
        return xp.zeros(problem.result_shape, problem.dtype)
    shapes = {"x": (problem.n, problem.c, problem.h, problem.w), "w": (problem.k, problem.cg, problem.r, problem.s),
              "y": problem.out_shape4}
    a_name, b_name, r_name = _OPERANDS[problem.direction]
    a4 = xp.ascontiguousarray(x.reshape(shapes[a_name]))
    b4 = xp.ascontiguousarray(w.reshape(shapes[b_name]))
    b = None if bias is None else xp.ascontiguousarray(bias)
    out = ex.empty(shapes[r_name], problem.dtype)
    strategy.run(ex, problem, params, a4, b4, b, out)
    return out.reshape(problem.result_shape)
