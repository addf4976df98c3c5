"""Choose how to run a problem: a forced strategy, a tuned decision from the cache, or the backend's heuristic."""

from __future__ import annotations

from types import ModuleType

from .problem import ConvProblem
from .strategy import Plan


def choose(fn: str, problem: ConvProblem, backend_name: str, backend: ModuleType, strategy: str) -> Plan:
    """The plan for ``problem`` on ``backend``.

    Args:
        fn: public function name, for error messages.
        problem: the validated problem.
        backend_name: ``"cpu"`` or ``"cuda"``.
        backend: the backend module (``STRATEGIES``, ``heuristic``).
        strategy: ``"auto"`` or a name from ``backend.STRATEGIES``.

    Raises:
        ValueError: unknown strategy name, or a forced strategy that cannot compute this problem.
    """
    table = backend.STRATEGIES
    if not isinstance(strategy, str):
        raise TypeError(f"{fn}: strategy must be a string, got {type(strategy).__name__}")
    if strategy == "auto":
        tuned = _tuned(problem, backend_name)
        if tuned is not None and tuned.strategy in table and table[tuned.strategy].supports(problem):
            return tuned
        return backend.heuristic(problem)
    if strategy not in table:
        raise ValueError(f"{fn}: strategy must be one of {['auto', *sorted(table)]} on the {backend_name} backend, "
                         f"got {strategy!r}")
    chosen = table[strategy]
    if not chosen.supports(problem):
        raise ValueError(f"{fn}: strategy {strategy!r} cannot compute this problem: it requires {chosen.requires}; "
                         f"x.shape={problem.x_shape}, w.shape={problem.w_shape}")
    return Plan(strategy, dict(chosen.defaults), "forced")


def _tuned(problem: ConvProblem, backend_name: str) -> Plan | None:
    """The autotuner's stored decision for this problem on this machine, or None."""
    from . import cache

    return cache.lookup(problem, backend_name)
