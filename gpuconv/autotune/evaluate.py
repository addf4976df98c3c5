"""Check and time candidates for one problem: every outcome is a ``(seconds, status, reason)`` triple.

Every candidate first runs once on fresh random inputs and is compared with the reference (computed once
per problem). A candidate that breaks a constraint, fails to compile or launch, runs out of memory, exceeds
the time limit or mismatches scores infinity with its reason; it can never be chosen.

The check runs outside the machine-wide timing lock (it may compile); each timer call runs inside it, inside
a load window, and every call's samples and load are kept (:attr:`Evaluator.measured`).
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
from .evidence import Measurement, plan_id
from .load import Load
from .target import Target
from .timing import as_samples

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
        self.table = target.table(problem)
        self.seen: dict[Any, tuple[float, str, str]] = {}
        self.measured: dict[Any, list[Measurement]] = {}

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
        """Time a candidate that already passed the check: ``(median seconds, status, reason)``."""
        m = self.measure(plan)
        return m.seconds, m.status, m.reason

    def measure(self, plan: Plan) -> Measurement:
        """One timer call under the timing lock and a load window; kept in :attr:`measured`."""
        execute = self.target.module.execute
        counter = itertools.count()

        def run() -> Any:
            return execute(self.problem, plan, *self.inputs[next(counter) % len(self.inputs)])

        with self.target.lock():
            window = self.target.load()
            try:
                raw = self.target.timer(run, plan)
                error = None
            except Exception as e:
                raw, error = None, e
            load = window()
        if error is not None:
            m = Measurement((), load, *self._failure(error)[1:])
        else:
            m = self._judge(as_samples(raw), load)
        self.measured.setdefault(plan_id(plan), []).append(m)
        return m

    def _judge(self, samples: tuple[float, ...], load: Load) -> Measurement:
        if not samples or not all(math.isfinite(t) and t > 0 for t in samples):
            bad = next((t for t in samples if not (math.isfinite(t) and t > 0)), None)
            return Measurement((), load, "error", f"the timer returned {bad!r}")
        m = Measurement(samples, load)
        if m.seconds > self.limit:
            return Measurement((), load, "timeout", f"median {m.seconds:.3g} s, over the {self.limit:.3g} s limit")
        return m

    def load(self) -> Load:
        """The load over every timer call so far."""
        total = Load()
        for ms in self.measured.values():
            for m in ms:
                total = total + m.load
        return total

    def _failure(self, e: Exception) -> tuple[float, str, str]:
        status = self.target.classify(e)
        if status == "oom":
            self.target.release()
        text = str(e).strip().splitlines()
        return math.inf, status, f"{type(e).__name__}: {text[0] if text else ''}"[:300]
