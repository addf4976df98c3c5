"""Tune one problem: search strategy x parameters with Optuna, check every candidate, time the survivors.

The search space is data: the backend's ``STRATEGIES`` table, each strategy's ``space`` (name -> value
list) and ``constraints``. Optuna only samples from it (a categorical ``"strategy"``, then one categorical
per parameter of that strategy, named ``"<strategy>.<param>"``). The heuristic's plan is enqueued as
trial 0, so the result is never worse than the default. When the whole space has at most ``trials``
points it is enumerated exhaustively instead of sampled.

Every candidate first runs once on fresh random inputs and is compared with the reference
(:func:`gpuconv.reference.run_problem`, computed once per problem). A candidate that breaks a constraint,
fails to compile or launch, runs out of memory, exceeds the time limit or mismatches scores infinity and is
recorded with its reason; it can never be chosen and never stops the study.
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..problem import ConvProblem
from ..strategy import Plan
from .check import mismatch
from .timing import CpuTimer, CudaEventTimer, Timer, jax_runner

#: Why a candidate can fail, in the order they are checked.
FAILURES = ("invalid", "compile", "launch", "oom", "timeout", "mismatch", "error")

Reference = Callable[[ConvProblem, np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the autotuner needs Optuna: pip install 'gpuconv[tune]'") from e
    return optuna


# ---- where candidates run ------------------------------------------------------------------

def _identity(a: Any) -> Any:
    return a


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Target:
    """A backend as the tuner sees it.

    Attributes:
        backend: the cache's backend name, ``"cpu"`` or ``"cuda"``.
        module: anything with ``STRATEGIES``, ``heuristic(problem)`` and ``execute(problem, plan, x, w, bias)``
            (a backend module, or a fake table in tests).
        timer: ``timer(run, plan) -> seconds``.
        to_device: host array -> the backend's array.
        to_host: the backend's array -> NumPy (synchronizing).
        failures: ``(exception type, status)`` pairs tried in order; anything else is ``"error"``.
        release: frees cached device memory after an out-of-memory failure.
    """

    backend: str
    module: Any
    timer: Timer
    to_device: Callable[[np.ndarray], Any] = _identity
    to_host: Callable[[Any], np.ndarray] = np.asarray
    failures: tuple[tuple[type[BaseException], str], ...] = ()
    release: Callable[[], None] = _nothing

    def classify(self, e: BaseException) -> str:
        for kind, status in self.failures:
            if isinstance(e, kind):
                return status
        return "oom" if isinstance(e, MemoryError) else "error"


def cuda_available() -> bool:
    """Whether CuPy is importable and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"cuda"`` where a device is present, else ``"cpu"``; other names are checked.

    Raises:
        ValueError: an unknown name, or ``"cuda"`` without a usable device.
    """
    if backend == "auto":
        return "cuda" if cuda_available() else "cpu"
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"backend must be one of ['auto', 'cpu', 'cuda'], got {backend!r}")
    if backend == "cuda" and not cuda_available():
        raise ValueError("backend 'cuda' needs CuPy and a CUDA device, and none is usable here")
    return backend


def make_target(backend: str, *, timer: Timer | None = None) -> Target:
    """The :class:`Target` for ``"cpu"`` or ``"cuda"`` (the current CUDA device), with its real timer by default."""
    from ..backends import get_backend

    module = get_backend(backend)
    if backend == "cpu":
        return Target("cpu", module, timer or CpuTimer())
    import cupy

    failures: list[tuple[type[BaseException], str]] = [(cupy.cuda.memory.OutOfMemoryError, "oom")]
    try:
        from ..cuda.compile import KernelError

        failures.append((KernelError, "compile"))
    except ImportError:  # pragma: no cover - the CUDA package is incomplete
        pass
    from cupy_backends.cuda.api.driver import CUDADriverError
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    failures += [(CUDARuntimeError, "launch"), (CUDADriverError, "launch")]
    return Target("cuda", module, timer or CudaEventTimer(), cupy.asarray, cupy.asnumpy, tuple(failures),
                  cupy.get_default_memory_pool().free_all_blocks)


# ---- what a tuning run produces ------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """One evaluated candidate. ``time_s`` is ``inf`` unless ``status == "ok"``."""

    number: int
    plan: Plan
    time_s: float
    status: str
    reason: str = ""


@dataclass
class TuneResult:
    """The outcome of :func:`tune` for one problem.

    Attributes:
        best: the fastest candidate that matched the reference, or None if none did; ``best_time_s`` is
            its lowest median over the search and the confirmation rounds.
        heuristic: the backend's default plan (trial 0); ``heuristic_time_s`` (timed like ``best``) is
            ``inf`` if it failed.
        trials: every finished trial of the study (all processes sharing its storage), by number.
        search: ``"exhaustive"`` (every valid point enumerated) or ``"tpe"`` (sampled).
        space_size: the number of valid points (exhaustive) or the size of the unconstrained product (tpe).
        jax_time_s: ``jax.lax`` on the same device with the same timer, when asked for and available.
        interrupted: the search was stopped before its budget; ``best`` is the best found so far.
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


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return None
    return a / b


def _plan_id(plan: Plan) -> tuple[str, tuple[tuple[str, int], ...]]:
    return plan.strategy, tuple(sorted((k, int(v)) for k, v in plan.params.items()))


def _trial_params(plan: Plan) -> dict[str, Any]:
    """The Optuna parameters that encode ``plan``."""
    return {"strategy": plan.strategy, **{f"{plan.strategy}.{k}": v for k, v in plan.params.items()}}


def _product(space: Mapping[str, Any]) -> int:
    return math.prod(len(v) for v in space.values())


# ---- the search ----------------------------------------------------------------------------

@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence Optuna's per-trial INFO lines for the duration of a study, then restore the caller's level."""
    optuna = _optuna()
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def make_storage(spec: str | None) -> Any:
    """An Optuna storage for ``--storage``: None (in memory), a URL (``sqlite:///t.db``, ``postgresql://...``),
    or a file path for a journal (``JournalStorage(JournalFileBackend(path))``), shareable across processes.

    Raises:
        ValueError: a journal path whose directory does not exist.
    """
    if spec is None:
        return None
    if "://" in spec:
        return _optuna().storages.RDBStorage(spec)
    from pathlib import Path

    parent = Path(spec).resolve().parent
    if not parent.is_dir():
        raise ValueError(f"storage: the directory of the journal file {spec!r} does not exist")
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(spec)))


def random_inputs(problem: ConvProblem, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """x, w (and bias if the problem has one) uniform in [-1, 1), in the problem's dtype, on the host."""
    draw = lambda shape: rng.uniform(-1, 1, shape).astype(problem.dtype)  # noqa: E731
    return draw(problem.x_shape), draw(problem.w_shape), (draw((problem.k,)) if problem.has_bias else None)


def _copies(problem: ConvProblem, wanted: int) -> int:
    """How many input copies to rotate: ``wanted``, fewer when one copy is already large."""
    size = np.dtype(problem.dtype).itemsize * (math.prod(problem.x_shape) + math.prod(problem.w_shape))
    return max(1, min(wanted, (1 << 30) // max(size, 1)))


class _Evaluator:
    """Checks and times candidates for one problem; every outcome is a ``(seconds, status, reason)`` triple."""

    def __init__(self, problem: ConvProblem, target: Target, reference: Reference, seed: int, copies: int,
                 candidate_timeout: float) -> None:
        self.problem, self.target, self.limit = problem, target, candidate_timeout
        rng = np.random.default_rng(seed)
        self.host = [random_inputs(problem, rng) for _ in range(_copies(problem, copies))]
        x, w, b = self.host[0]
        self.expected = np.asarray(reference(problem, x, w, b))
        self.inputs = [tuple(None if a is None else target.to_device(a) for a in triple) for triple in self.host]
        self.table = target.module.STRATEGIES
        self.seen: dict[Any, tuple[float, str, str]] = {}

    def __call__(self, plan: Plan) -> tuple[float, str, str]:
        pid = _plan_id(plan)
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
                best[_plan_id(t.plan)] = min(t.time_s, seconds)
        for _ in range(rounds):
            for t in finalists:
                pid = _plan_id(t.plan)
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


def _decide(records: list[Trial], heuristic: Plan, evaluate: _Evaluator, confirm: int,
            finalists_n: int) -> tuple[Plan | None, float, float]:
    """``(winner, its seconds, the heuristic's seconds)`` from the finished trials, after confirmation rounds.

    Ties go to the earlier trial, so the heuristic (trial 0) wins a tie.
    """
    fastest: dict[Any, Trial] = {}
    for r in sorted((r for r in records if r.status == "ok" and math.isfinite(r.time_s)),
                    key=lambda r: (r.time_s, r.number)):
        fastest.setdefault(_plan_id(r.plan), r)
    finalists = list(fastest.values())[:finalists_n]
    finalists += [r for pid, r in fastest.items() if pid == _plan_id(heuristic) and r not in finalists]
    times = {pid: r.time_s for pid, r in fastest.items()}
    if confirm and len(finalists) > 1:
        times.update(evaluate.confirm(finalists, confirm))
    ranked = sorted((r for r in fastest.values() if math.isfinite(times[_plan_id(r.plan)])),
                    key=lambda r: (times[_plan_id(r.plan)], r.number))
    if not ranked:
        return None, math.inf, times.get(_plan_id(heuristic), math.inf)
    return ranked[0].plan, times[_plan_id(ranked[0].plan)], times.get(_plan_id(heuristic), math.inf)


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
    optuna = _optuna()
    if isinstance(target, str):
        target = make_target(target)
    if reference is None:
        from ..reference import run_problem as reference
    if trials < 1:
        raise ValueError(f"tune: trials must be positive, got {trials}")
    started = time.perf_counter()
    table = target.module.STRATEGIES
    names = sorted(n for n, s in table.items() if s.supports(problem))
    if not names:
        raise ValueError(f"tune: no {target.backend} strategy supports this problem")
    heuristic = target.module.heuristic(problem)
    # Enumerate while the space is small; stop counting once it is bigger than the budget.
    points = list(itertools.islice((Plan(n, p, "tuned") for n in names for p in table[n].variants(problem)),
                                   trials + 1))
    exhaustive = len(points) <= trials
    space_size = len(points) if exhaustive else sum(_product(table[n].space) for n in names)
    evaluate = _Evaluator(problem, target, reference, seed, copies, candidate_timeout)
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

    with _quiet_optuna():
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, trials // 3)))
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, direction="minimize",
                                    load_if_exists=True)
        queue = [heuristic, *(p for p in points if _plan_id(p) != _plan_id(heuristic))] if exhaustive else [heuristic]
        for plan in queue:
            if plan.strategy in names:
                study.enqueue_trial(_trial_params(plan), skip_if_exists=True)
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


@dataclass
class _FirstCall:
    attempted: set[tuple[str, ConvProblem]] = field(default_factory=set)


_FIRST_CALL = _FirstCall()
FIRST_CALL_TRIALS = 12


def tune_on_first_call(problem: ConvProblem, backend: str) -> Plan | None:
    """Tune ``problem`` now with a small budget and store the decision (``GPUCONV_AUTOTUNE=1``).

    Tried once per problem and process: a failure (no Optuna or JAX, an unwritable cache) warns and
    returns None, and the caller falls back to the heuristic.
    """
    import warnings

    from .. import cache

    if (backend, problem) in _FIRST_CALL.attempted:
        return None
    _FIRST_CALL.attempted.add((backend, problem))
    try:
        target = make_target(backend, timer=CpuTimer(repeat=10, budget_s=0.2) if backend == "cpu"
                             else CudaEventTimer(repeat=20, budget_s=0.3))
        result = tune(problem, target, trials=FIRST_CALL_TRIALS, timeout=60.0)
        if result.best is None:
            return None
        from .workload import metrics_of

        cache.default().store(problem, backend, result.best, metrics_of(result))
        return result.best
    except Exception as e:
        warnings.warn(f"gpuconv: autotuning {problem.x_shape} x {problem.w_shape} ({problem.dtype}) on {backend} "
                      f"failed ({type(e).__name__}: {e}); using the heuristic", RuntimeWarning, stacklevel=2)
        return None
