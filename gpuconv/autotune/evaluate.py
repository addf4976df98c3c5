"""Check and time candidates for one problem: every outcome is a ``(seconds, status, reason)`` triple.

Every candidate first runs once on fresh random inputs and is compared with the reference (computed once
per problem). A candidate that breaks a constraint, fails to compile or launch, runs out of memory, exceeds
the time limit or mismatches scores infinity with its reason; it can never be chosen.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable

import numpy as np

from ..measure import copies_for, mismatch, random_inputs
from ..problem import ConvProblem
from ..strategy import Plan
from .result import Trial, plan_id
from .target import Target

Reference = Callable[[ConvProblem, np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


class Evaluator:
    """Checks and times candidates for one problem; every outcome is a ``(seconds, status, reason)`` triple."""

    def __init__(self, problem: ConvProblem, target: Target, reference: Reference, seed: int, copies: int,
                 candidate_timeout: float) -> None:
        self.problem, self.target, self.limit = problem, target, candidate_timeout
        rng = np.random.default_rng(seed)
        self.host = [random_inputs(problem, rng) for _ in range(copies_for(problem, copies))]
        x, w, b = self.host[0]
        self.expected = np.asarray(reference(problem, x, w, b))
        self.inputs = [tuple(None if a is None else target.to_device(a) for a in triple) for triple in self.host]
        self.table = target.module.TABLES[problem.direction]
        self.seen: dict[Any, tuple[float, str, str]] = {}

    def __call__(self, plan: Plan) -> tuple[float, str, str]:
        pid = plan_id(plan)
        if pid not in self.seen:
            self.seen[pid] = self._evaluate(plan)
        return self.seen[pid]

    def _evaluate(self, plan: Plan) -> tuple[float, str, str]:
        strategy = self.table.get(plan.strategy)
        if strategy is None or not strategy.supports(self.problem):
            return math.inf, "invalid", f"strategy {plan.strategy!r} cannot compute this problem"
        try:
            if not strategy.valid(plan.params, self.problem):
                return math.inf, "invalid", "outside the declared space or breaks a constraint"
        except Exception as e:
            return math.inf, "invalid", f"a constraint raised {type(e).__name__}: {e}"
        execute = self.target.module.execute
        try:
            t0 = time.perf_counter()
            out = self.target.to_host(execute(self.problem, plan, *self.inputs[0]))
            took = time.perf_counter() - t0
        except Exception as e:
            return self._failure(e)
        bad = mismatch(out, self.expected, self.problem)
        if bad is not None:
            return math.inf, "mismatch", bad
        if took > self.limit:
            return math.inf, "timeout", f"one run took {took:.3g} s, over the {self.limit:.3g} s limit"
        return self.time(plan)

    def time(self, plan: Plan) -> tuple[float, str, str]:
        """Time a candidate that already passed the check."""
        execute = self.target.module.execute
        counter = itertools.count()

        def run() -> Any:
            return execute(self.problem, plan, *self.inputs[next(counter) % len(self.inputs)])

        try:
            seconds = float(self.target.timer(run, plan))
        except Exception as e:
            return self._failure(e)
        if not math.isfinite(seconds) or seconds <= 0:
            return math.inf, "error", f"the timer returned {seconds!r}"
        if seconds > self.limit:
            return math.inf, "timeout", f"median {seconds:.3g} s, over the {self.limit:.3g} s limit"
        return seconds, "ok", ""

    def confirm(self, finalists: list[Trial], rounds: int) -> dict[Any, float]:
        """Re-time the finalists in interleaved rounds; each keeps the lowest of its medians.

        Interleaving spreads a transient slowdown (another process, a clock change) over all finalists
        instead of pinning it on whichever was timed at the wrong moment. A finalist measured by another
        process sharing the study is checked here first.
        """
        best: dict[Any, float] = {}
        for t in finalists:
            seconds, status, _ = self(t.plan)
            if status == "ok":
                best[plan_id(t.plan)] = min(t.time_s, seconds)
        for _ in range(rounds):
            for t in finalists:
                pid = plan_id(t.plan)
                if pid in best:
                    seconds, status, _ = self.time(t.plan)
                    best[pid] = min(best[pid], seconds) if status == "ok" else math.inf
        return best

    def _failure(self, e: Exception) -> tuple[float, str, str]:
        status = self.target.classify(e)
        if status == "oom":
            self.target.release()
        text = str(e).strip().splitlines()
        return math.inf, status, f"{type(e).__name__}: {text[0] if text else ''}"[:300]
