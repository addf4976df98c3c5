"""Tune a problem on its first ``strategy="auto"`` call: the switch, and the hook it installs in :mod:`gpuconv.plan`.

``set_autotune(True)`` or ``GPUCONV_AUTOTUNE=1`` asks for it. The hook is installed when this module is
imported (``import gpuconv`` does) and reads the switch only on a cache miss, which happens once per problem
and process; the runtime never imports the tuner. The tuner's rules hold here too, with a smaller budget:
timings under the machine-wide lock, the heuristic's choice kept unless beaten beyond the noise, and a
decision taken under heavy load stored as provisional (used; re-timed by the next ``python -m gpuconv.autotune``).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field

from .. import plan as _plan
from ..problem import ConvProblem
from ..strategy import Plan
from . import search
from .target import make_target
from .timing import SampledCpuTimer, SampledCudaTimer

ENV = "GPUCONV_AUTOTUNE"
_AUTOTUNE: bool | None = None


def set_autotune(enabled: bool | None) -> None:
    """Tune each new problem on its first ``strategy="auto"`` call and remember the decision on disk.

    Like ``torch.backends.cudnn.benchmark``, but the result is stored in the tuning cache, so later
    processes start from it. Overrides the ``GPUCONV_AUTOTUNE`` environment variable; None defers to it again.

    Args:
        enabled: True to tune on first call, False to never tune, None to follow ``GPUCONV_AUTOTUNE=1``.

    Raises:
        TypeError: ``enabled`` is not True, False or None.

    Example:
        >>> import gpuconv
        >>> gpuconv.set_autotune(False)
    """
    global _AUTOTUNE
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_autotune: enabled must be True, False or None, got {enabled!r}")
    _AUTOTUNE = enabled
    _plan.set_miss_hook(tune_on_first_call)  # forgets memoized choices: they were made under the old setting


def autotune_enabled() -> bool:
    """Whether a cache miss is tuned on the spot (:func:`set_autotune`, else ``GPUCONV_AUTOTUNE``)."""
    if _AUTOTUNE is not None:
        return _AUTOTUNE
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class _FirstCall:
    attempted: set[tuple[str, ConvProblem]] = field(default_factory=set)


_FIRST_CALL = _FirstCall()
FIRST_CALL_TRIALS = 12
#: The race on a first call: the two fastest candidates and the heuristic's choice, at most this many rounds.
FIRST_CALL_ROUNDS = 10


def tune_on_first_call(problem: ConvProblem, backend: str, device: int = 0) -> Plan | None:
    """Tune ``problem`` now with a small budget and store the decision (``GPUCONV_AUTOTUNE=1``).

    Tried once per problem and process: a failure (no Optuna or JAX, an unwritable cache) warns and
    returns None, and the caller falls back to the heuristic.
    """
    if not autotune_enabled() or (backend, problem) in _FIRST_CALL.attempted:
        return None
    _FIRST_CALL.attempted.add((backend, problem))
    try:
        target = make_target(backend, timer=SampledCpuTimer(repeat=10, budget_s=0.2) if backend == "cpu"
                             else SampledCudaTimer(repeat=20, budget_s=0.3))
        print(f"gpuconv: tuning {problem.x_shape} x {problem.w_shape} ({problem.dtype}) on {backend} on its first "
              "call (set_autotune(False) or GPUCONV_AUTOTUNE=0 turns this off)", file=sys.stderr, flush=True)
        result = search.tune(problem, target, trials=FIRST_CALL_TRIALS, timeout=60.0, finalists_n=2,
                             max_rounds=FIRST_CALL_ROUNDS)
        if result.best is None:
            return None
        _plan.store_decision(problem, backend, result.best, result.metrics(), device=device)
        return result.best
    except Exception as e:
        warnings.warn(f"gpuconv: autotuning {problem.x_shape} x {problem.w_shape} ({problem.dtype}) on {backend} "
                      f"failed ({type(e).__name__}: {e}); using the heuristic", RuntimeWarning, stacklevel=2)
        return None


_plan.set_miss_hook(tune_on_first_call)
