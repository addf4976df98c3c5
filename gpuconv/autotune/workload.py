"""Tune a shape set: skip what the cache already decided, tune the rest one shape at a time, store each decision.

Each decision is stored as soon as its shape is done, so an interrupted run keeps everything decided
before the interruption, and a second run over the same shapes is all cache hits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from .. import cache as _cache
from ..shapes import Shape
from ..strategy import Plan
from .tuner import Target, Trial, TuneResult, tune

#: Failed candidates kept per entry in the cache and the JSON output (the count is always complete).
MAX_FAILURES_KEPT = 20


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def metrics_of(result: TuneResult) -> dict[str, Any]:
    """The JSON-safe summary of a tuning run kept with its cache entry (``inf`` becomes null)."""
    failed = result.failed
    by_status: dict[str, int] = {}
    for t in failed:
        by_status[t.status] = by_status.get(t.status, 0) + 1
    return {
        "time_s": _finite(result.best_time_s),
        "gflops": result.gflops,
        "heuristic": {"strategy": result.heuristic.strategy, "params": dict(result.heuristic.params),
                      "time_s": _finite(result.heuristic_time_s)},
        "speedup_vs_heuristic": result.speedup,
        "jax_time_s": _finite(result.jax_time_s),
        "speedup_vs_jax": None if result.jax_time_s is None else
        (result.jax_time_s / result.best_time_s if math.isfinite(result.best_time_s) else None),
        "search": result.search,
        "space_size": result.space_size,
        "trials": len(result.trials),
        "failed": by_status,
        "failures": [{"strategy": t.plan.strategy, "params": dict(t.plan.params), "status": t.status,
                      "reason": t.reason} for t in failed[:MAX_FAILURES_KEPT]],
        "elapsed_s": result.elapsed_s,
    }


@dataclass
class Outcome:
    """What happened to one shape.

    Attributes:
        status: ``"cached"`` (decided earlier, nothing run), ``"tuned"`` (decided now and stored),
            ``"failed"`` (no candidate matched the reference; nothing stored) or ``"interrupted"``
            (stopped mid-search; the best so far is shown but not stored).
        plan: the decision (None when failed).
        metrics: :func:`metrics_of` for this run, or the stored one for a cache hit.
        trials_run: trials run by this process for this shape (0 for a cache hit).
    """

    shape: Shape
    status: str
    plan: Plan | None
    metrics: dict[str, Any] = field(default_factory=dict)
    trials_run: int = 0
    result: TuneResult | None = None


def tune_shapes(shapes: Sequence[Shape], target: Target, store: _cache.TuningCache, *, trials: int = 32,
                timeout: float | None = None, seed: int = 0, storage: Any = None, force: bool = False,
                compare_jax: bool = True, should_stop: Callable[[], bool] = lambda: False,
                on_start: Callable[[Shape], None] | None = None,
                on_trial: Callable[[Trial, float, int], None] | None = None) -> Iterator[Outcome]:
    """Yield an :class:`Outcome` per shape, in order, until done or ``should_stop()`` turns true.

    Args:
        shapes: from :func:`gpuconv.shapes.load`.
        target: where candidates run (:func:`gpuconv.autotune.tuner.make_target`).
        store: the cache read for hits and written with each decision.
        trials, timeout, seed, storage: passed to :func:`~gpuconv.autotune.tuner.tune` (timeout per shape).
        force: re-tune shapes the cache already has.
        compare_jax: time ``jax.lax`` too, for the report.
        should_stop: polled between trials and shapes (set by the CLI's SIGINT handler).
        on_start, on_trial: progress callbacks.
    """
    device = _cache.current_device(target.backend)
    for shape in shapes:
        if should_stop():
            return
        problem = shape.problem
        if not force:
            plan = store.lookup(problem, target.backend)
            if plan is not None:
                record = store.record(problem, target.backend, device)
                metrics = record.get("metrics") if isinstance(record, dict) else None
                yield Outcome(shape, "cached", plan, metrics if isinstance(metrics, dict) else {})
                continue
        if on_start is not None:
            on_start(shape)
        result = tune(problem, target, trials=trials, timeout=timeout, seed=seed, storage=storage,
                      study_name=f"gpuconv-{_cache.key(problem, target.backend, device)}",
                      compare_jax=compare_jax, on_trial=on_trial, should_stop=should_stop)
        metrics = metrics_of(result)
        if result.interrupted:
            yield Outcome(shape, "interrupted", result.best, metrics, result.trials_run, result)
            return
        if result.best is None:
            yield Outcome(shape, "failed", None, metrics, result.trials_run, result)
            continue
        store.store(problem, target.backend, result.best, metrics, device=device)
        yield Outcome(shape, "tuned", result.best, metrics, result.trials_run, result)
