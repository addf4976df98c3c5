"""The gradients as forward convolutions on the GPU (:mod:`gpuconv.adjoint`), run by the forward kernels.

``rewrite`` exists in both gradient tables: it rearranges the operands with CuPy (for the input gradient at
stride above 1, ``dy`` spread with zeros onto the input grid), runs the forward problem with the plan the
CUDA heuristic gives it, and copies the result into the preallocated gradient. It works for every problem
the forward kernels can compute; dedicated gradient kernels avoid its copies.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import adjoint
from ..problem import ConvProblem
from ..strategy import Params, Plan, Strategy
from .executor import Executor

#: ``run_forward(ex, problem, plan, x, w) -> y``, given by the backend (which owns the forward tables).
ForwardRunner = Callable[[Executor, ConvProblem, Plan, Any, Any], Any]


def make_strategies(run_forward: ForwardRunner,
                    heuristic: Callable[[ConvProblem], Plan]) -> tuple[Strategy[Any], Strategy[Any]]:
    """The input- and weight-gradient ``rewrite`` strategies over the backend's forward runner and heuristic."""

    def run_input(ex: Executor, problem: ConvProblem, params: Params, dy: Any, w: Any, bias: Any, dx: Any) -> None:
        rw = adjoint.input_gradient(problem)
        if rw is None:  # every tap reads padding only: nothing flows back
            dx[...] = 0
            return
        x, wt = rw.operands(ex.xp, dy, w)
        dx[...] = rw.result(ex.xp, run_forward(ex, rw.forward, heuristic(rw.forward), x, wt))

    def run_weight(ex: Executor, problem: ConvProblem, params: Params, x: Any, dy: Any, bias: Any, dw: Any) -> None:
        rw = adjoint.weight_gradient(problem)
        xt, dyt = rw.operands(ex.xp, x, dy)
        dw[...] = rw.result(ex.xp, run_forward(ex, rw.forward, heuristic(rw.forward), xt, dyt))

    def supports_input(problem: ConvProblem) -> bool:
        rw = adjoint.input_gradient(problem)
        return rw is None or _computable(rw.forward)

    def supports_weight(problem: ConvProblem) -> bool:
        return _computable(adjoint.weight_gradient(problem).forward)

    def _computable(forward: ConvProblem) -> bool:
        try:
            heuristic(forward)
        except ValueError:
            return False
        return True

    requires = "a forward convolution the CUDA kernels can compute once rewritten"
    return (Strategy("rewrite", run_input, supports_input, requires),
            Strategy("rewrite", run_weight, supports_weight, requires))
