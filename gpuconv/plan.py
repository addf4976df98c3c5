"""Choose how to run a problem: a forced strategy, a tuned decision from the cache, or the backend's heuristic."""

from __future__ import annotations

import os
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
        if tuned is None and autotune_enabled():
            tuned = _tune_now(problem, backend_name)
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


_AUTOTUNE: bool | None = None


def set_autotune(enabled: bool | None) -> None:
    """Tune each new problem on its first ``strategy="auto"`` call and remember the decision on disk.

    Like ``torch.backends.cudnn.benchmark``, but the result is stored in the tuning cache, so later
    processes start from it. Overrides the ``GPUCONV_AUTOTUNE`` environment variable; None defers to it again.

    Args:
        enabled: True to tune on first call, False to never tune, None to follow ``GPUCONV_AUTOTUNE=1``.

    Example:
        >>> import gpuconv
        >>> gpuconv.set_autotune(False)
    """
    global _AUTOTUNE
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_autotune: enabled must be True, False or None, got {enabled!r}")
    _AUTOTUNE = enabled


def autotune_enabled() -> bool:
    """Whether a cache miss is tuned on the spot (:func:`set_autotune`, else ``GPUCONV_AUTOTUNE``)."""
    if _AUTOTUNE is not None:
        return _AUTOTUNE
    return os.environ.get("GPUCONV_AUTOTUNE", "").strip().lower() in ("1", "true", "yes", "on")


def _tune_now(problem: ConvProblem, backend_name: str) -> Plan | None:
    """Tune a cache miss now (needs the ``tune`` and ``jax`` extras; warns and returns None without them)."""
    from .autotune.tuner import tune_on_first_call

    return tune_on_first_call(problem, backend_name)
