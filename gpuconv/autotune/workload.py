"""Tune a shape set: skip what the cache already decided, tune the rest one shape at a time, store each decision.

Each decision is stored as soon as its shape is done, so an interrupted run keeps everything decided
before the interruption, and a second run over the same shapes is all cache hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from .. import cache as _cache
from .. import plan as _plan
from ..shapes import Shape
from ..strategy import Plan
from .result import Trial, TuneResult
from .search import tune
from .target import Target, current_device


@dataclass
class Outcome:
    """What happened to one shape.

    Attributes:
        status: ``"cached"`` (decided earlier, nothing run), ``"tuned"`` (decided now and stored),
            ``"failed"`` (no candidate matched the reference; nothing stored) or ``"interrupted"``
            (stopped mid-search; the best so far is shown but not stored).
        plan: the decision (None when failed).
        metrics: :meth:`TuneResult.metrics` for this run, or the stored one for a cache hit.
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
        target: where candidates run (:func:`gpuconv.autotune.target.make_target`).
        store: the cache read for hits and written with each decision.
        trials, timeout, seed, storage: passed to :func:`~gpuconv.autotune.search.tune` (timeout per shape).
        force: re-tune shapes the cache already has.
        compare_jax: time ``jax.lax`` too, for the report.
        should_stop: polled between trials and shapes (set by the CLI's SIGINT handler).
        on_start, on_trial: progress callbacks.
    """
    device = current_device(target.backend)
    for shape in shapes:
        if should_stop():
            return
        problem = shape.problem
        if not force:
            plan = _plan.lookup(problem, target.backend, device, store)
            if plan is not None:
                record = _plan.record(problem, target.backend, device, store)
                metrics = record.get("metrics") if isinstance(record, dict) else None
                yield Outcome(shape, "cached", plan, metrics if isinstance(metrics, dict) else {})
                continue
        if on_start is not None:
            on_start(shape)
        result = tune(problem, target, trials=trials, timeout=timeout, seed=seed, storage=storage,
                      study_name=f"gpuconv-{_plan.cache_key(problem, target.backend, device)}",
                      compare_jax=compare_jax, on_trial=on_trial, should_stop=should_stop)
        metrics = result.metrics()
        if result.interrupted:
            yield Outcome(shape, "interrupted", result.best, metrics, result.trials_run, result)
            return
        if result.best is None:
            yield Outcome(shape, "failed", None, metrics, result.trials_run, result)
            continue
        _plan.store_decision(problem, target.backend, result.best, metrics, device, store)
        yield Outcome(shape, "tuned", result.best, metrics, result.trials_run, result)
