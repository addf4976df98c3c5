"""Tune one problem: search strategy x parameters with Optuna, check every candidate, time the survivors.

The search space is data: the backend's table of the problem's direction (``TABLES[direction]``), each
strategy's ``space`` (name -> value list) and ``constraints``. Optuna only samples from it (a categorical
``"strategy"``, then one categorical per parameter of that strategy, named ``"<strategy>.<param>"``). The
heuristic's plan is enqueued as trial 0, so the result is never worse than the default. When the whole space
has at most ``trials`` points it is enumerated exhaustively instead of sampled.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable

from .. import reference as _reference
from ..measure import jax_runner
from ..problem import ConvProblem
from ..strategy import Plan
from .evaluate import Evaluator, Reference
from .result import Trial, TuneResult, plan_id, product, trial_params
from .storage import optuna_module, quiet_optuna
from .target import Target, make_target


def _to_trial(ft: Any, states: Any) -> Trial | None:
    if ft.state not in states or "strategy" not in ft.params:
        return None
    name = ft.params["strategy"]
    params = {k.split(".", 1)[1]: int(v) for k, v in ft.params.items() if k.startswith(name + ".")}
    value = ft.value if ft.value is not None else math.inf
    status = ft.user_attrs.get("status", "ok" if math.isfinite(value) else "error")
    if ft.state.name != "COMPLETE":
        status, value = "error", math.inf
    return Trial(ft.number, Plan(name, params, "tuned"), value if status == "ok" else math.inf, status,
                 str(ft.user_attrs.get("reason", "")))


def _decide(records: list[Trial], heuristic: Plan, evaluate: Evaluator, confirm: int,
            finalists_n: int) -> tuple[Plan | None, float, float]:
    """``(winner, its seconds, the heuristic's seconds)`` from the finished trials, after confirmation rounds.

    Ties go to the earlier trial, so the heuristic (trial 0) wins a tie.
    """
    fastest: dict[Any, Trial] = {}
    for r in sorted((r for r in records if r.status == "ok" and math.isfinite(r.time_s)),
                    key=lambda r: (r.time_s, r.number)):
        fastest.setdefault(plan_id(r.plan), r)
    finalists = list(fastest.values())[:finalists_n]
    finalists += [r for pid, r in fastest.items() if pid == plan_id(heuristic) and r not in finalists]
    times = {pid: r.time_s for pid, r in fastest.items()}
    if confirm and len(finalists) > 1:
        times.update(evaluate.confirm(finalists, confirm))
    ranked = sorted((r for r in fastest.values() if math.isfinite(times[plan_id(r.plan)])),
                    key=lambda r: (times[plan_id(r.plan)], r.number))
    if not ranked:
        return None, math.inf, times.get(plan_id(heuristic), math.inf)
    return ranked[0].plan, times[plan_id(ranked[0].plan)], times.get(plan_id(heuristic), math.inf)


def tune(problem: ConvProblem, target: Target | str = "cpu", *, trials: int = 32, timeout: float | None = None,
         seed: int = 0, storage: Any = None, study_name: str | None = None, candidate_timeout: float = 30.0,
         reference: Reference | None = None, compare_jax: bool = False, copies: int = 3, confirm: int = 2,
         finalists_n: int = 2,
         on_trial: Callable[[Trial, float, int], None] | None = None,
         should_stop: Callable[[], bool] | None = None) -> TuneResult:
    """Find the fastest correct strategy and parameters for ``problem``.

    Args:
        problem: the problem to tune.
        target: a :class:`Target` or a backend name (``"cpu"``/``"cuda"``) for its real one.
        trials: the trial budget; a space with at most this many valid points is enumerated instead.
        timeout: stop sampling after this many seconds (checked between trials).
        seed: seeds the input data and the TPE sampler.
        storage: an Optuna storage (see :func:`make_storage`) shared with other processes, or None.
        study_name: the study's name in ``storage`` (derive it from the cache key, so workers meet).
        candidate_timeout: a candidate whose single run or median exceeds this many seconds fails.
        reference: the oracle, ``reference(problem, x, w, bias)``; default :func:`gpuconv.reference.run_problem`.
        compare_jax: also time ``jax.lax`` with the same timer (``jax_time_s``; None where unavailable).
        copies: input copies rotated between timed runs.
        confirm: rounds in which the ``finalists_n`` fastest candidates and the heuristic are timed again,
            interleaved, before the winner is picked (0: pick from the search's own timings).
        on_trial: called after each trial with ``(trial, best seconds so far, trials finished)``.
        should_stop: polled after each trial; True ends the search early (``interrupted``).

    Returns:
        A :class:`TuneResult`; ``best`` is None only if no candidate, the heuristic included, was correct.

    Example:
        >>> from gpuconv.problem import make_problem
        >>> p = make_problem("conv2d", (1, 4, 8, 8), (4, 4, 3, 3), "float32", False, padding=1)
        >>> tune(p, "cpu", trials=4).best is not None  # doctest: +SKIP
        True
    """
    optuna = optuna_module()
    if isinstance(target, str):
        target = make_target(target)
    if reference is None:
        reference = _reference.run_problem
    if trials < 1:
        raise ValueError(f"tune: trials must be positive, got {trials}")
    started = time.perf_counter()
    table = target.module.TABLES[problem.direction]
    names = sorted(n for n, s in table.items() if s.supports(problem))
    if not names:
        raise ValueError(f"tune: no {target.backend} strategy supports this problem")
    heuristic = target.module.heuristic(problem)
    # Enumerate while the space is small; stop counting once it is bigger than the budget.
    points = list(itertools.islice((Plan(n, p, "tuned") for n in names for p in table[n].variants(problem)),
                                   trials + 1))
    exhaustive = len(points) <= trials
    space_size = len(points) if exhaustive else sum(product(table[n].space) for n in names)
    evaluate = Evaluator(problem, target, reference, seed, copies, candidate_timeout)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)

    def objective(trial: Any) -> float:
        name = trial.suggest_categorical("strategy", names)
        space = table[name].space
        params = {p: trial.suggest_categorical(f"{name}.{p}", list(space[p])) for p in sorted(space)}
        seconds, status, reason = evaluate(Plan(name, params, "tuned"))
        trial.set_user_attr("status", status)
        if reason:
            trial.set_user_attr("reason", reason)
        return seconds

    best = [math.inf]
    stopped = [False]
    done = [0]

    def after(study: Any, ft: Any) -> None:
        done[0] += 1
        rec = _to_trial(ft, finished)
        if rec is not None:
            best[0] = min(best[0], rec.time_s)
            if on_trial is not None:
                on_trial(rec, best[0], done[0])
        if should_stop is not None and should_stop():
            stopped[0] = True
            study.stop()

    with quiet_optuna():
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, trials // 3)))
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, direction="minimize",
                                    load_if_exists=True)
        queue = [heuristic, *(p for p in points if plan_id(p) != plan_id(heuristic))] if exhaustive else [heuristic]
        for plan in queue:
            if plan.strategy in names:
                study.enqueue_trial(trial_params(plan), skip_if_exists=True)
        budget = len(points) if exhaustive else trials
        already = len(study.get_trials(deepcopy=False, states=finished))
        if already < budget and not (should_stop is not None and should_stop()):
            study.optimize(objective, n_trials=budget - already, timeout=timeout,
                           callbacks=[after, optuna.study.MaxTrialsCallback(budget, states=finished)])
        elif already < budget:
            stopped[0] = True
        records = [r for r in (_to_trial(ft, finished) for ft in study.get_trials(deepcopy=False)) if r is not None]
    winner, best_time, h_time = _decide(records, heuristic, evaluate, 0 if stopped[0] else confirm, finalists_n)
    jax_time = None
    if compare_jax and not stopped[0]:
        run = jax_runner(problem, target.backend, evaluate.host)
        if run is not None:
            jax_time = float(target.timer(run, Plan("jax.lax", {}, "reference")))
    return TuneResult(problem, target.backend, winner, best_time, heuristic, h_time,
                      sorted(records, key=lambda r: r.number), "exhaustive" if exhaustive else "tpe", space_size,
                      time.perf_counter() - started, jax_time, stopped[0], done[0])
