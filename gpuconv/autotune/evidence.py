"""Decide between finalists only when the timings separate them: interleaved rounds and a rank-based interval.

The finalists (the search's fastest few and the *incumbent*: the heuristic's choice, or the stored decision
being verified) are timed in rounds; in each round every finalist is timed once, in an order that rotates,
so a slowdown of the machine lands on all of them rather than on whichever ran at that moment. Two
finalists are compared through their per-round time ratios: pairing by round cancels what a round shares
(drift, a busy minute). Each call counts by its fastest run, since other work on the machine only ever adds
time to a run; the median of the ratios gets the sign test's distribution-free confidence
interval (order statistics), which an outlier round moves by one position, not by its size.

After ``min_rounds``, a finalist whose interval against the leader lies wholly beyond ``margin`` is dropped,
and so is one whose interval against the incumbent shows it cannot be faster by ``margin`` (it could never
replace it); the race ends when one finalist is left, when all that are left agree within ``margin``, or after
``max_rounds``. The leader replaces the incumbent only if it is faster beyond ``margin`` with the interval's
confidence; otherwise the incumbent stays and the evidence says why. So a decision is never slower than the
incumbent beyond the measured noise.
"""

from __future__ import annotations

import math
import statistics
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..strategy import Plan
from .load import Load

#: The confidence of the interval a decision needs.
CONFIDENCE = 0.95
#: A challenger must be faster than the incumbent by more than this fraction (beyond the noise) to replace it.
MARGIN = 0.02


def _rank(n: int, confidence: float) -> int:
    """The largest ``k`` with ``P(B <= k - 1) <= (1 - confidence) / 2`` for ``B ~ Binomial(n, 1/2)``; 0 if none."""
    tail, acc, k = (1 - confidence) / 2, 0.0, 0
    while k < n:
        acc += math.comb(n, k) / 2.0 ** n
        if acc > tail:
            break
        k += 1
    return k


def median_interval(d: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(low, median, high)``: a distribution-free ``confidence`` interval for the median of ``d``.

    The bounds are the order statistics ``d_(k)`` and ``d_(n+1-k)`` of the sign test: each value counts only
    by which side of the median it falls, so a wild value (a round hit by another process) moves the
    interval by one position whatever its size, and no symmetry is assumed. With too few values for the
    confidence asked (fewer than 6 at 95%) the interval is unbounded.

    Example:
        >>> median_interval([0.1, 0.2, 0.15, 0.12, 0.18, 0.11])[0] > 0
        True
    """
    n = len(d)
    if n == 0:
        return -math.inf, math.nan, math.inf
    ordered = sorted(d)
    k = _rank(n, confidence)
    if k == 0:
        return -math.inf, statistics.median(ordered), math.inf
    return ordered[k - 1], statistics.median(ordered), ordered[n - k]


def plan_id(plan: Plan) -> tuple[str, tuple[tuple[str, int], ...]]:
    """What identifies a candidate: its strategy and parameters (not where the plan came from)."""
    return plan.strategy, tuple(sorted((k, int(v)) for k, v in plan.params.items()))


def spread(values: Sequence[float]) -> float | None:
    """The interquartile range over the median: 0.1 means the middle half lies within 10% of the median."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return None
    q1, _, q3 = statistics.quantiles(finite, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(finite)


@dataclass(frozen=True)
class Measurement:
    """One timer call: the samples (seconds per run), the machine's load meanwhile, and the outcome."""

    samples: tuple[float, ...]
    load: Load
    status: str = "ok"
    reason: str = ""

    @property
    def seconds(self) -> float:
        """The median run."""
        return statistics.median(self.samples) if self.status == "ok" and self.samples else math.inf

    @property
    def fastest(self) -> float:
        """The fastest run: what a call counts for in a race (other work only ever adds time to a run)."""
        return min(self.samples) if self.status == "ok" and self.samples else math.inf


@dataclass
class Contender:
    """A finalist in the race: its plan, the roles it plays and what was measured of it."""

    plan: Plan
    roles: set[str] = field(default_factory=set)
    rounds: dict[int, float] = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""
    dropped_after: int | None = None
    unstable: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.rounds.values()) if self.rounds and self.status == "ok" else math.inf

    def summary(self) -> dict[str, Any]:
        return {"strategy": self.plan.strategy, "params": dict(self.plan.params), "roles": sorted(self.roles),
                "median_s": _finite(self.median), "spread": _round(spread(list(self.rounds.values()))),
                "run_spread": _round(spread(self.samples)), "rounds": len(self.rounds), "samples": len(self.samples),
                "round_medians_s": [self.rounds[r] for r in sorted(self.rounds)], "status": self.status,
                **({"reason": self.reason} if self.reason else {}),
                **({"dropped_after": self.dropped_after} if self.dropped_after is not None else {}),
                **({"unstable_warmups": self.unstable} if self.unstable else {})}


def compare(a: Contender, b: Contender, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(low, estimate, high)`` of the time ratio ``a / b`` over the rounds both were timed in."""
    common = sorted(set(a.rounds) & set(b.rounds))
    d = [math.log(a.rounds[r] / b.rounds[r]) for r in common]
    lo, est, hi = median_interval(d, confidence)
    return math.exp(lo), math.exp(est) if math.isfinite(est) else math.nan, math.exp(hi)


@dataclass
class Evidence:
    """What a decision rests on; :meth:`to_dict` is what the cache, ``--report`` and ``--json`` keep.

    Attributes:
        chosen: the decision (None when no finalist could be timed).
        verdict: ``"separated"`` (the winner beats the incumbent beyond the noise), ``"incumbent"`` (the incumbent
            was the fastest), ``"indistinguishable"`` (a faster-looking finalist did not separate from the
            incumbent, which was kept), ``"incumbent-failed"`` or ``"none"``.
        ratio: ``(low, estimate, high)`` of the leader's (the fastest finalist's) time over the incumbent's; None
            when the incumbent could not be timed.
        load: the machine's load over every timed call of the race.
    """

    contenders: list[Contender]
    incumbent: Plan
    chosen: Plan | None
    verdict: str
    reason: str
    rounds: int
    ratio: tuple[float, float, float] | None
    load: Load
    confidence: float = CONFIDENCE
    margin: float = MARGIN

    def contender(self, plan: Plan | None) -> Contender | None:
        pid = None if plan is None else plan_id(plan)
        return next((c for c in self.contenders if plan_id(c.plan) == pid), None)

    @property
    def runner_up(self) -> Contender | None:
        chosen = None if self.chosen is None else plan_id(self.chosen)
        rest = [c for c in self.contenders if plan_id(c.plan) != chosen and math.isfinite(c.median)]
        return min(rest, key=lambda c: c.median, default=None)

    def to_dict(self) -> dict[str, Any]:
        winner, heuristic, runner = self.contender(self.chosen), self.contender(self.incumbent), self.runner_up
        ratio = None if self.ratio is None else [_round(v, 5) for v in self.ratio]
        return {"verdict": self.verdict, "reason": self.reason, "rounds": self.rounds,
                "confidence": self.confidence, "margin": self.margin, "leader_vs_incumbent": ratio,
                "winner": winner.summary() if winner else None,
                "runner_up": runner.summary() if runner else None,
                "incumbent": heuristic.summary() if heuristic else None,
                "finalists": [c.summary() for c in self.contenders], "load": self.load.to_dict()}


def race(plans: Sequence[Plan], incumbent: Plan, measure: Callable[[Plan], Measurement],
         lock: Callable[[], AbstractContextManager[Any]], *, min_rounds: int = 6, max_rounds: int = 15,
         confidence: float = CONFIDENCE, margin: float = MARGIN) -> Evidence:
    """Time ``plans`` (the incumbent among them) in interleaved rounds and decide (see the module docstring).

    Args:
        plans: the finalists; duplicates are merged.
        incumbent: the plan kept unless another is faster beyond the noise.
        measure: times one plan once (a timer call) and says how loaded the machine was.
        lock: the machine-wide timing lock; each round runs under it.
        min_rounds, max_rounds: the least and most rounds (with one finalist, a few rounds for its spread).
    """
    contenders: dict[Any, Contender] = {}
    for p in [incumbent, *plans]:
        c = contenders.setdefault(plan_id(p), Contender(p))
        c.roles.add("incumbent" if plan_id(p) == plan_id(incumbent) else "finalist")
    if len(contenders) == 1:
        min_rounds = max_rounds = min(min_rounds, 3)
    alive = list(contenders.values())
    load = Load()
    rounds = 0
    threshold = math.log1p(margin)
    for r in range(max(1, max_rounds)):
        shift = r % len(alive)
        order = alive[shift:] + alive[:shift]
        with lock():
            for c in order if r % 2 == 0 else reversed(order):
                m = measure(c.plan)
                load = load + m.load
                if m.status != "ok":
                    c.status, c.reason = m.status, m.reason
                    continue
                c.rounds[r] = m.fastest
                c.samples.extend(m.samples)
                c.unstable += getattr(m.samples, "stable", None) is False
        rounds = r + 1
        alive = [c for c in alive if c.status == "ok"]
        if len(alive) <= 1:
            break
        if rounds < min_rounds:
            continue
        leader = min(alive, key=lambda c: c.median)
        inc = contenders[plan_id(incumbent)]
        settled = True
        for c in [c for c in alive if c is not leader]:
            lo, _, hi = (math.log(v) for v in _safe(compare(leader, c, confidence)))
            futile = c is not inc and inc in alive and math.log(_safe(compare(c, inc, confidence))[0]) > -threshold
            if hi < -threshold or futile:
                c.dropped_after = rounds
                alive.remove(c)
            elif not (-threshold < lo and hi < threshold):
                settled = False
        if len(alive) <= 1 or settled:
            break
    return _verdict(list(contenders.values()), incumbent, rounds, load, confidence, margin)


def _verdict(contenders: list[Contender], incumbent: Plan, rounds: int, load: Load, confidence: float,
             margin: float) -> Evidence:
    timed = [c for c in contenders if math.isfinite(c.median)]
    inc = next(c for c in contenders if plan_id(c.plan) == plan_id(incumbent))
    if not timed:
        return Evidence(contenders, incumbent, None, "none", "no finalist could be timed", rounds, None, load,
                        confidence, margin)
    leader = min(timed, key=lambda c: c.median)
    if not math.isfinite(inc.median):
        return Evidence(contenders, incumbent, leader.plan, "incumbent-failed",
                        f"the incumbent could not be timed ({inc.status}: {inc.reason})", rounds, None, load,
                        confidence, margin)
    if leader is inc:
        return Evidence(contenders, incumbent, inc.plan, "incumbent", "the incumbent was the fastest finalist",
                        rounds, (1.0, 1.0, 1.0), load, confidence, margin)
    ratio = compare(leader, inc, confidence)
    pct = f"{confidence:.0%}"
    if ratio[2] < 1 / (1 + margin):
        return Evidence(contenders, incumbent, leader.plan, "separated",
                        f"{ratio[1]:.3f}x the incumbent's time, {pct} interval {ratio[0]:.3f}-{ratio[2]:.3f} "
                        f"over {len(set(leader.rounds) & set(inc.rounds))} rounds", rounds, ratio, load,
                        confidence, margin)
    return Evidence(contenders, incumbent, inc.plan, "indistinguishable",
                    f"{leader.plan.strategy} looked {ratio[1]:.3f}x the incumbent's time, but its {pct} interval "
                    f"{ratio[0]:.3f}-{ratio[2]:.3f} does not exclude a gain under {margin:.0%}; kept the incumbent",
                    rounds, ratio, load, confidence, margin)


def _safe(ratio: tuple[float, float, float]) -> tuple[float, float, float]:
    lo, est, hi = ratio
    return max(lo, 1e-300), est, hi if math.isfinite(hi) else 1e300


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, digits)
