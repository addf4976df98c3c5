"""Tune a shape set: skip what the cache already decided, tune the rest one shape at a time, store each decision.

Each decision is stored as soon as its shape is done, so an interrupted run keeps everything decided
before the interruption, and a second run over the same shapes is all cache hits. A decision taken under
heavy load is stored *provisional*: ``auto`` uses it, and the next run re-times it against its alternatives
(:mod:`.verify`) instead of counting it as a hit. :func:`verify_shapes` re-times stored decisions on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from .. import cache as _cache
from .. import plan as _plan
from ..problem import ConvProblem
from ..shapes import Shape
from ..strategy import Plan
from .result import Trial, TuneResult
from .search import tune
from .target import Target, current_device
from .verify import Verification, verify

#: Every status an :class:`Outcome` can have.
STATUSES = ("cached", "tuned", "provisional", "verified", "replaced", "unverified", "missing", "failed",
            "interrupted")


@dataclass
class Outcome:
    """What happened to one shape.

    Attributes:
        status: ``"cached"`` (decided earlier, nothing run), ``"tuned"`` (decided now and stored),
            ``"provisional"`` (decided now under heavy load; stored, used, re-timed by the next run),
            ``"verified"`` / ``"replaced"`` (a stored decision re-timed: kept, or replaced by a faster plan),
            ``"unverified"`` (re-timed under heavy load; left as it was), ``"missing"`` (``--verify`` found no
            stored decision), ``"failed"`` (no candidate matched the reference; nothing stored) or
            ``"interrupted"`` (stopped mid-search; the best so far is shown but not stored).
        plan: the decision (None when failed or missing).
        metrics: :meth:`TuneResult.metrics` for this run, or the stored one for a cache hit.
        trials_run: trials run by this process for this shape (0 for a cache hit or a re-timing).
    """

    shape: Shape
    status: str
    plan: Plan | None
    metrics: dict[str, Any] = field(default_factory=dict)
    trials_run: int = 0
    result: TuneResult | Verification | None = None


def _stored(problem: ConvProblem, target: Target, device: int,
            store: _cache.TuningCache) -> tuple[Plan | None, dict[str, Any]]:
    plan = _plan.lookup(problem, target.backend, device, store)
    if plan is None:
        return None, {}
    record = _plan.record(problem, target.backend, device, store)
    metrics = record.get("metrics") if isinstance(record, dict) else None
    return plan, metrics if isinstance(metrics, dict) else {}


def _retime(shape: Shape, target: Target, store: _cache.TuningCache, device: int, plan: Plan,
            metrics: Mapping[str, Any], seed: int, allow_noisy: bool) -> Outcome:
    problem = shape.problem
    v = verify(problem, target, plan, metrics, seed=seed, allow_noisy=allow_noisy)
    updated = v.metrics(metrics)
    if v.status in ("verified", "replaced"):
        _plan.store_decision(problem, target.backend, v.plan, updated, device, store)
        return Outcome(shape, v.status, v.plan, updated, 0, v)
    return Outcome(shape, v.status, plan, updated, 0, v)


def tune_shapes(shapes: Sequence[Shape], target: Target, store: _cache.TuningCache, *, trials: int = 32,
                timeout: float | None = None, seed: int = 0, storage: Any = None, force: bool = False,
                compare_jax: bool = True, allow_noisy: bool = False, should_stop: Callable[[], bool] = lambda: False,
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
        allow_noisy: store decisions taken under heavy load as final (and replace provisional ones even then).
        should_stop: polled between trials and shapes (set by the CLI's SIGINT handler).
        on_start, on_trial: progress callbacks.
    """
    device = current_device(target.backend)
    for shape in shapes:
        if should_stop():
            return
        problem = shape.problem
        if not force:
            plan, metrics = _stored(problem, target, device, store)
            if plan is not None and not metrics.get("provisional"):
                yield Outcome(shape, "cached", plan, metrics)
                continue
            if plan is not None:  # decided under heavy load earlier: re-time it rather than trust it
                if on_start is not None:
                    on_start(shape)
                yield _retime(shape, target, store, device, plan, metrics, seed, allow_noisy)
                continue
        if on_start is not None:
            on_start(shape)
        result = tune(problem, target, trials=trials, timeout=timeout, seed=seed, storage=storage,
                      study_name=f"gpuconv-{_plan.cache_key(problem, target.backend, device)}",
                      compare_jax=compare_jax, allow_noisy=allow_noisy, on_trial=on_trial, should_stop=should_stop)
        metrics = result.metrics()
        if result.interrupted:
            yield Outcome(shape, "interrupted", result.best, metrics, result.trials_run, result)
            return
        if result.best is None:
            yield Outcome(shape, "failed", None, metrics, result.trials_run, result)
            continue
        _plan.store_decision(problem, target.backend, result.best, metrics, device, store)
        yield Outcome(shape, "provisional" if result.provisional else "tuned", result.best, metrics,
                      result.trials_run, result)


def stored_shapes(target: Target, store: _cache.TuningCache) -> list[Shape]:
    """A shape for every decision stored for this machine (``--verify`` without ``--shapes``)."""
    device = current_device(target.backend)
    out = []
    for record in store.entries(_plan.cache_file(target.backend, device)).values():
        d = record.get("problem") if isinstance(record, dict) else None
        if not isinstance(d, dict):
            continue
        try:
            problem = ConvProblem(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
        except TypeError:  # fields of another version of the problem: plan.lookup would not serve it anyway
            continue
        if problem.to_dict() == d and _plan.lookup(problem, target.backend, device, store) is not None:
            shape = "x".join(map(str, problem.x_shape)) + "*" + "x".join(map(str, problem.w_shape))
            direction = getattr(problem, "direction", "forward")
            out.append(Shape(shape if direction == "forward" else f"{shape}:{direction}", problem))
    return sorted(out, key=lambda s: s.name)


def verify_shapes(shapes: Sequence[Shape], target: Target, store: _cache.TuningCache, *, seed: int = 0,
                  allow_noisy: bool = False, should_stop: Callable[[], bool] = lambda: False,
                  on_start: Callable[[Shape], None] | None = None) -> Iterator[Outcome]:
    """Re-time each shape's stored decision against its alternatives; store the winner (see :mod:`.verify`).

    Yields ``"verified"``, ``"replaced"``, ``"unverified"`` (heavy load; unchanged), ``"failed"`` or
    ``"missing"`` (no stored decision) per shape.
    """
    device = current_device(target.backend)
    for shape in shapes:
        if should_stop():
            return
        plan, metrics = _stored(shape.problem, target, device, store)
        if plan is None:
            yield Outcome(shape, "missing", None)
            continue
        if on_start is not None:
            on_start(shape)
        yield _retime(shape, target, store, device, plan, metrics, seed, allow_noisy)
