"""Tune one problem: search strategy x parameters with Optuna, check every candidate, time the survivors.

The search space is data: the backend's table of the problem's direction (``TABLES[direction]``), each
strategy's ``space`` (name -> value list) and ``constraints``. Optuna only samples from it (a categorical
``"strategy"``, then one categorical per parameter of that strategy, named ``"<strategy>.<param>"``). The
heuristic's plan is enqueued as trial 0. When the whole space has at most ``trials`` points it is enumerated
exhaustively instead of sampled.

The search only nominates finalists: a trial timed during a load spike (other work took clearly more of the
machine than during the rest of the search) is timed again first, and the fastest few with the heuristic's
choice then race in interleaved rounds (:mod:`.evidence`). The heuristic's choice is replaced only by a
finalist that beats it beyond the measured noise, so the decision is never slower than the default beyond
the noise. A decision taken under heavy load is *provisional* unless ``allow_noisy``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import time
from typing import Any, Callable

from .. import reference as _reference
from ..measure import jax_runner
from ..problem import ConvProblem
from ..strategy import Plan
from .evaluate import Evaluator, Reference
from .evidence import CONFIDENCE, MARGIN, Evidence, Measurement, plan_id, race
from .load import LOADED, Load
from .result import Trial, TuneResult, product, trial_params
from .storage import optuna_module, quiet_optuna
from .target import Target, make_target
from .timing import as_samples


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


def checked(evaluate: Evaluator) -> Callable[[Plan], Measurement]:
    """``measure(plan)`` for a race: one timer call of a plan that passed the check, else its failure."""

    def measure(plan: Plan) -> Measurement:
        seconds, status, reason = evaluate(plan)  # memoized; checks (and times once) a plan not seen yet
        if status != "ok":
            return Measurement((), Load(), status, reason)
        return evaluate.measure(plan)

    return measure


def _retime_spikes(records: list[Trial], evaluate: Evaluator) -> None:
    """Time again each trial whose search timing ran while other work took clearly more of the machine than
    it did during the rest of the search (a spike), so that a spike cannot keep a candidate out of the final."""
    first = {pid: ms[0] for pid, ms in evaluate.measured.items() if ms}
    if not first:
        return
    background = statistics.median(m.load.contention for m in first.values())
    for r in records:
        m = first.get(plan_id(r.plan))
        if r.status == "ok" and m is not None and m.load.contention >= background + LOADED:
            evaluate.measure(r.plan)


def _finalists(records: list[Trial], evaluate: Evaluator, n: int) -> list[Plan]:
    """The ``n`` fastest distinct correct plans, each ranked by its fastest timing (noise only adds time)."""
    fastest: dict[Any, tuple[float, int, Plan]] = {}
    for r in records:
        if r.status != "ok" or not math.isfinite(r.time_s):
            continue
        pid = plan_id(r.plan)
        seconds = min([r.time_s, *(m.fastest for m in evaluate.measured.get(pid, ()))])
        if pid not in fastest or (seconds, r.number) < fastest[pid][:2]:
            fastest[pid] = (seconds, r.number, r.plan)
    return [p for _, _, p in sorted(fastest.values(), key=lambda v: v[:2])[:n]]


def _with_samples(r: Trial, evaluate: Evaluator) -> Trial:
    ms = evaluate.measured.get(plan_id(r.plan))
    if not ms:
        return r
    return dataclasses.replace(r, samples=tuple(ms[0].samples), contention=round(ms[0].load.contention, 4))


def tune(problem: ConvProblem, target: Target | str = "cpu", *, trials: int = 32, timeout: float | None = None,
         seed: int = 0, storage: Any = None, study_name: str | None = None, candidate_timeout: float = 30.0,
         reference: Reference | None = None, compare_jax: bool = False, copies: int = 3, finalists_n: int = 3,
         min_rounds: int = 6, max_rounds: int = 15, confidence: float = CONFIDENCE, margin: float = MARGIN,
         allow_noisy: bool = False, on_trial: Callable[[Trial, float, int], None] | None = None,
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
        finalists_n: how many of the search's fastest candidates race the heuristic's choice.
        min_rounds, max_rounds: the least and most interleaved rounds of the race (:func:`.evidence.race`).
        confidence, margin: a finalist replaces the heuristic's choice only if it is faster by more than
            ``margin`` with this confidence.
        allow_noisy: store a decision taken under heavy load as final instead of provisional.
        on_trial: called after each trial with ``(trial, best seconds so far, trials finished)``.
        should_stop: polled after each trial; True ends the search early (``interrupted``).

    Returns:
        A :class:`TuneResult`; ``best`` is None only if no candidate, the heuristic included, was correct;
        ``evidence`` holds the race, ``provisional`` says whether the load was too heavy to trust it.

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
    table = target.table(problem)
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
    records = sorted((_with_samples(r, evaluate) for r in records), key=lambda r: r.number)
    search_load = evaluate.load()
    evidence: Evidence | None = None
    if stopped[0]:  # interrupted: the best so far, not stored
        finalists = _finalists(records, evaluate, 1)
        winner = finalists[0] if finalists else None
        best_time = min((r.time_s for r in records if winner and plan_id(r.plan) == plan_id(winner)), default=math.inf)
        h_time = min((r.time_s for r in records if plan_id(r.plan) == plan_id(heuristic)), default=math.inf)
    else:
        _retime_spikes(records, evaluate)
        evidence = race(_finalists(records, evaluate, finalists_n), heuristic, checked(evaluate), target.lock,
                        min_rounds=min_rounds, max_rounds=max_rounds, confidence=confidence, margin=margin)
        winner = None if evidence.chosen is None else Plan(evidence.chosen.strategy, dict(evidence.chosen.params),
                                                           "tuned")
        chosen, inc = evidence.contender(winner), evidence.contender(heuristic)
        best_time = chosen.median if chosen is not None else math.inf
        h_time = inc.median if inc is not None else math.inf
    jax_time = None
    if compare_jax and not stopped[0]:
        run = jax_runner(problem, target.backend, evaluate.host)
        if run is not None:
            with target.lock():
                jax_time = statistics.median(as_samples(target.timer(run, Plan("jax.lax", {}, "reference"))))
    result = TuneResult(problem, target.backend, winner, best_time, heuristic, h_time, records,
                        "exhaustive" if exhaustive else "tpe", space_size, time.perf_counter() - started, jax_time,
                        stopped[0], done[0], evidence, search_load)
    result.provisional = winner is not None and not allow_noisy and result.load_level == "heavy"
    return result
