"""Re-time a stored decision against its alternatives and keep it only if it still wins.

``python -m gpuconv.autotune --verify`` runs this for every stored decision (or those of ``--shapes``), and
a tuning run does it for each *provisional* decision (one taken under heavy load) instead of trusting it.
The alternatives are the finalists recorded with the decision, the heuristic's choice and each other strategy
that supports the problem at its default parameters; every one is checked against the reference before it
is timed. They race the stored decision (:func:`.evidence.race`) with the stored decision as the incumbent:
it is replaced only by a plan that beats it beyond the noise. Under heavy load nothing is replaced.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

from .. import reference as _reference
from ..problem import ConvProblem
from ..strategy import Plan
from .evaluate import Evaluator, Reference
from .evidence import CONFIDENCE, MARGIN, Evidence, plan_id, race
from .search import checked
from .target import Target


@dataclass
class Verification:
    """The outcome of re-timing one stored decision.

    Attributes:
        status: ``"verified"`` (still the decision), ``"replaced"`` (another plan beat it beyond the noise),
            ``"unverified"`` (timed under heavy load: left as it was) or ``"failed"`` (nothing could be timed).
        plan: the decision from now on (the stored one unless replaced).
    """

    problem: ConvProblem
    stored: Plan
    plan: Plan
    status: str
    evidence: Evidence
    heuristic: Plan
    elapsed_s: float

    def metrics(self, before: Mapping[str, Any] | None) -> dict[str, Any]:
        """The stored metrics updated with this re-timing's evidence (kept, for the record, from the search)."""
        ev = self.evidence
        chosen, heur = ev.contender(self.plan), ev.contender(self.heuristic)
        time_s = chosen.median if chosen is not None else math.inf
        h_time = heur.median if heur is not None else math.inf
        out = dict(before or {})
        out.update({
            "time_s": _finite(time_s),
            "gflops": _finite(self.problem.flops / 1e9 / time_s) if math.isfinite(time_s) else None,
            "heuristic": {"strategy": self.heuristic.strategy, "params": dict(self.heuristic.params),
                          "time_s": _finite(h_time)},
            "speedup_vs_heuristic": _finite(h_time / time_s) if math.isfinite(h_time * time_s) else None,
            "provisional": self.status == "unverified" and bool(out.get("provisional")),
            "load": {**ev.load.to_dict(), "search": None},
            "evidence": ev.to_dict(),
            "verified": {"status": self.status, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "previous": {"strategy": self.stored.strategy, "params": dict(self.stored.params)}},
        })
        return out


def alternatives(problem: ConvProblem, target: Target, stored: Plan, metrics: Mapping[str, Any] | None) -> list[Plan]:
    """What the stored decision is re-timed against (see the module docstring), the stored plan first."""
    table = target.table(problem)
    plans = [stored, target.module.heuristic(problem)]
    evidence = (metrics or {}).get("evidence")
    for f in (evidence.get("finalists") or []) if isinstance(evidence, Mapping) else []:
        if isinstance(f, Mapping) and isinstance(f.get("strategy"), str) and isinstance(f.get("params"), Mapping):
            plans.append(Plan(f["strategy"], dict(f["params"]), "tuned"))
    plans += [Plan(name, dict(s.defaults), "tuned") for name, s in sorted(table.items()) if s.supports(problem)]
    seen: set[Any] = set()
    out = []
    for p in plans:
        s = table.get(p.strategy)
        if s is None or not s.supports(problem) or plan_id(p) in seen:
            continue
        try:
            if not s.valid(p.params, problem):
                continue
        except Exception:  # a recorded finalist from another code version: not an alternative
            continue
        seen.add(plan_id(p))
        out.append(Plan(p.strategy, dict(p.params), "tuned"))
    return out


def verify(problem: ConvProblem, target: Target, stored: Plan, metrics: Mapping[str, Any] | None = None, *,
           reference: Reference | None = None, seed: int = 0, copies: int = 3, candidate_timeout: float = 30.0,
           min_rounds: int = 6, max_rounds: int = 15, confidence: float = CONFIDENCE, margin: float = MARGIN,
           allow_noisy: bool = False) -> Verification:
    """Race ``stored`` against its :func:`alternatives` on this machine now.

    Args:
        problem, target: what to run and where.
        stored: the stored decision (the incumbent).
        metrics: the stored record's metrics (its evidence names the finalists of the search).
        allow_noisy: replace a decision even when the re-timing ran under heavy load.

    Returns:
        A :class:`Verification`; store ``plan`` with ``metrics(...)`` unless its status is ``"unverified"``.
    """
    started = time.perf_counter()
    evaluate = Evaluator(problem, target, reference or _reference.run_problem, seed, copies, candidate_timeout)
    heuristic = target.module.heuristic(problem)
    ev = race(alternatives(problem, target, stored, metrics), stored, checked(evaluate), target.lock,
              min_rounds=min_rounds, max_rounds=max_rounds, confidence=confidence, margin=margin)
    if ev.chosen is None:
        status, plan = "failed", stored
    elif ev.load.level == "heavy" and not allow_noisy:
        status, plan = "unverified", stored
    elif plan_id(ev.chosen) == plan_id(stored):
        status, plan = "verified", stored
    else:
        status, plan = "replaced", ev.chosen
    return Verification(problem, stored, Plan(plan.strategy, dict(plan.params), "tuned"), status, ev, heuristic,
                        time.perf_counter() - started)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None
