"""What a tuning run produces: each evaluated candidate, the outcome for one problem, its JSON summary."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..problem import ConvProblem
from ..strategy import Plan
from .evidence import Evidence
from .load import LEVELS, Load

#: Failed candidates kept per entry in the cache and the JSON output (the count is always complete).
MAX_FAILURES_KEPT = 20


@dataclass(frozen=True)
class Trial:
    """One evaluated candidate. ``time_s`` is ``inf`` unless ``status == "ok"``; ``samples`` are the seconds of
    each timed run of its search measurement (empty for a trial another process measured), ``contention`` the
    fraction of the machine other work took meanwhile (None where unknown)."""

    number: int
    plan: Plan
    time_s: float
    status: str
    reason: str = ""
    samples: tuple[float, ...] = ()
    contention: float | None = None


@dataclass
class TuneResult:
    """The outcome of :func:`tune` for one problem.

    Attributes:
        best: the decision: the fastest correct candidate if the timings separate it from the heuristic's
            choice, else that choice; None if no candidate was correct. ``best_time_s`` is its median over
            the decision's rounds.
        heuristic: the backend's default plan (trial 0); ``heuristic_time_s`` (timed like ``best``) is
            ``inf`` if it failed.
        trials: every finished trial of the study (all processes sharing its storage), by number.
        search: ``"exhaustive"`` (every valid point enumerated) or ``"tpe"`` (sampled).
        space_size: the number of valid points (exhaustive) or the size of the unconstrained product (tpe).
        jax_time_s: ``jax.lax`` on the same device with the same timer, when asked for and available.
        interrupted: the search was stopped before its budget; ``best`` is the best found so far.
        evidence: the interleaved rounds the decision rests on (None when interrupted or nothing was correct).
        search_load: the machine's load over the search's timings.
        provisional: the decision was taken under heavy load: used, but re-validated by the next run of the
            tuner (``--verify``) instead of being trusted as final.
    """

    problem: ConvProblem
    backend: str
    best: Plan | None
    best_time_s: float
    heuristic: Plan
    heuristic_time_s: float
    trials: list[Trial]
    search: str
    space_size: int
    elapsed_s: float
    jax_time_s: float | None = None
    interrupted: bool = False
    trials_run: int = 0
    evidence: Evidence | None = None
    search_load: Load = Load()
    provisional: bool = False

    @property
    def load(self) -> Load:
        """The load over every timing of this run (the search and the decision's rounds)."""
        return self.search_load + (self.evidence.load if self.evidence is not None else Load())

    @property
    def load_level(self) -> str:
        """The worse of the search's and the decision's load levels."""
        levels = [self.search_load.level] + ([self.evidence.load.level] if self.evidence is not None else [])
        return max(levels, key=LEVELS.index)

    @property
    def failed(self) -> list[Trial]:
        """Trials that could not be chosen, with their reasons."""
        return [t for t in self.trials if t.status != "ok"]

    @property
    def speedup(self) -> float | None:
        """Heuristic time over best time (``>= 1`` unless timings are noisy), or None when undefined."""
        return _ratio(self.heuristic_time_s, self.best_time_s)

    @property
    def gflops(self) -> float | None:
        return _ratio(self.problem.flops / 1e9, self.best_time_s)

    def metrics(self) -> dict[str, Any]:
        """The JSON-safe summary kept with the cache entry (``inf`` becomes null)."""
        by_status: dict[str, int] = {}
        for t in self.failed:
            by_status[t.status] = by_status.get(t.status, 0) + 1
        return {
            "time_s": _finite(self.best_time_s),
            "gflops": self.gflops,
            "heuristic": {"strategy": self.heuristic.strategy, "params": dict(self.heuristic.params),
                          "time_s": _finite(self.heuristic_time_s)},
            "speedup_vs_heuristic": self.speedup,
            "jax_time_s": _finite(self.jax_time_s),
            "speedup_vs_jax": _ratio(self.jax_time_s, self.best_time_s),
            "search": self.search,
            "space_size": self.space_size,
            "trials": len(self.trials),
            "failed": by_status,
            "failures": [{"strategy": t.plan.strategy, "params": dict(t.plan.params), "status": t.status,
                          "reason": t.reason} for t in self.failed[:MAX_FAILURES_KEPT]],
            "elapsed_s": self.elapsed_s,
            "provisional": self.provisional,
            "load": {**self.load.to_dict(), "level": self.load_level, "search": self.search_load.to_dict()},
            "evidence": self.evidence.to_dict() if self.evidence is not None else None,
        }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return None
    return a / b


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def trial_params(plan: Plan) -> dict[str, Any]:
    """The Optuna parameters that encode ``plan``."""
    return {"strategy": plan.strategy, **{f"{plan.strategy}.{k}": v for k, v in plan.params.items()}}


def product(space: Mapping[str, Any]) -> int:
    return math.prod(len(v) for v in space.values())
