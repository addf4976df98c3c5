"""The tuner's logic with a fake strategy table and a fake timer; the real CPU backend through the cache."""

from __future__ import annotations

import dataclasses
import math
import types
import warnings
from typing import Any

import numpy as np
import pytest

import gpuconv
from gpuconv import cache, plan
from gpuconv.autotune import CpuTimer, Target, first_call, make_storage, mismatch, search, tune, tune_shapes
from gpuconv.autotune import target as target_mod
from gpuconv.autotune.load import no_load
from gpuconv.problem import make_problem
from gpuconv.shapes import Shape
from gpuconv.strategy import Plan, Strategy


@pytest.fixture(autouse=True)
def _own_timing_lock(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real targets take the machine-wide timing lock; here, one of each test's own."""
    monkeypatch.setenv("GPUCONV_LOCK_DIR", str(tmp_path / "locks"))


PROBLEM = make_problem("conv2d", (1, 3, 6, 6), (4, 3, 3, 3), "float32", True, padding=1)


def _conv(problem: Any, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """An independent NumPy convolution (groups == 1) for the fake strategies."""
    x4 = x.reshape(problem.n, problem.c, problem.h, problem.w).astype(np.float64)
    t, b, l, r = problem.padding
    xp = np.pad(x4, ((0, 0), (0, 0), (t, b), (l, r)))
    (dh, dw), (sh, sw) = problem.dilation, problem.stride
    win = np.lib.stride_tricks.sliding_window_view(xp, (dh * (problem.r - 1) + 1, dw * (problem.s - 1) + 1),
                                                   axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    y = np.einsum("ncpqrs,kcrs->nkpq", win[:, :, :problem.p, :problem.q], w.astype(np.float64))
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y.astype(problem.dtype).reshape(problem.out_shape)


def _good(problem: Any, params: Any, x: Any, w: Any, bias: Any) -> np.ndarray:
    return _conv(problem, x, w, bias)


def _wrong(problem: Any, params: Any, x: Any, w: Any, bias: Any) -> np.ndarray:
    return _conv(problem, x, w, bias) + np.float32(0.5)


def _raises(problem: Any, params: Any, x: Any, w: Any, bias: Any) -> np.ndarray:
    raise RuntimeError("launch failed: too many resources requested")


def _oom(problem: Any, params: Any, x: Any, w: Any, bias: Any) -> np.ndarray:
    raise MemoryError("out of memory allocating 1 TiB")


def _small_tile(params: Any, problem: Any) -> bool:
    return params["TILE"] * params["UNROLL"] <= 8


TABLE = {s.name: s for s in (
    Strategy("good", _good, space={"TILE": [1, 2, 4, 8], "UNROLL": [1, 2]}, constraints=(_small_tile,),
             defaults={"TILE": 1, "UNROLL": 1}),
    Strategy("wrong", _wrong),
    Strategy("raises", _raises),
    Strategy("oom", _oom),
    Strategy("slow", _good),
    Strategy("unsupported", _good, supports=lambda p: False, requires="never"),
)}


def _execute(problem: Any, chosen: Plan, x: Any, w: Any, bias: Any) -> np.ndarray:
    return TABLE[chosen.strategy].run(problem, dict(chosen.params), x, w, bias)


FAKE = types.SimpleNamespace(STRATEGIES=TABLE, heuristic=lambda p: Plan("good", {"TILE": 1, "UNROLL": 1}),
                             execute=_execute)


def _cost(chosen: Plan) -> float:
    """Fake seconds: the failing strategies claim to be the fastest; among valid ``good`` points TILE=8 wins."""
    if chosen.strategy == "good":
        return 1e-3 / (chosen.params["TILE"] + 0.5 * chosen.params["UNROLL"])
    return {"wrong": 1e-6, "raises": 1e-6, "oom": 1e-6, "slow": 1e-2, "unsupported": 1e-7}[chosen.strategy]


class FakeTimer:
    """Runs the candidate once (so it must work) and returns its fake cost; remembers what it timed."""

    def __init__(self) -> None:
        self.timed: list[Plan] = []

    def __call__(self, run: Any, chosen: Plan) -> float:
        run()
        self.timed.append(chosen)
        return _cost(chosen)


def _target(timer: Any = None) -> Target:
    return Target("cpu", FAKE, timer or FakeTimer())


def test_exhaustive_search_picks_the_fastest_correct_candidate() -> None:
    timer = FakeTimer()
    result = tune(PROBLEM, _target(timer), trials=16)
    assert result.search == "exhaustive"
    assert result.space_size == 11  # 7 valid points of "good" + 4 parameterless strategies; "unsupported" excluded
    assert len(result.trials) == 11
    assert result.trials[0].number == 0 and result.trials[0].plan.strategy == "good"
    assert dict(result.trials[0].plan.params) == {"TILE": 1, "UNROLL": 1}  # the heuristic is trial 0
    assert result.best == Plan("good", {"TILE": 8, "UNROLL": 1}, "tuned")
    assert result.best_time_s == pytest.approx(_cost(result.best))
    assert result.heuristic_time_s == pytest.approx(1e-3 / 1.5)
    assert result.speedup == pytest.approx(8.5 / 1.5)
    status = {t.plan.strategy: t.status for t in result.trials if t.plan.strategy != "good"}
    assert status == {"wrong": "mismatch", "raises": "error", "oom": "oom", "slow": "ok"}
    reasons = {t.plan.strategy: t.reason for t in result.failed}
    assert "differ from the reference" in reasons["wrong"]
    assert "too many resources" in reasons["raises"]
    assert all(t.time_s == math.inf for t in result.failed)
    timed = {p.strategy for p in timer.timed}
    assert timed == {"good", "slow"}  # failed candidates are never timed
    assert not any(p.strategy == "good" and p.params == {"TILE": 8, "UNROLL": 2} for p in timer.timed)


def test_sampled_search_stays_in_the_space_and_never_ends_worse_than_the_heuristic() -> None:
    runs = [tune(PROBLEM, _target(), trials=8, seed=3) for _ in range(2)]
    result = runs[0]
    assert result.search == "tpe"
    assert len(result.trials) == 8
    assert result.trials[0].plan == Plan("good", {"TILE": 1, "UNROLL": 1}, "tuned")
    for t in result.trials:
        strategy = TABLE[t.plan.strategy]
        assert set(t.plan.params) == set(strategy.space)
        assert all(v in strategy.space[k] for k, v in t.plan.params.items())
        if not strategy.valid(t.plan.params, PROBLEM):
            assert (t.status, t.time_s) == ("invalid", math.inf)
    assert result.best is not None and result.best.strategy in ("good", "slow")
    assert result.best_time_s <= result.heuristic_time_s
    assert result.best_time_s == min(t.time_s for t in result.trials)
    assert [t.plan for t in runs[0].trials] == [t.plan for t in runs[1].trials]  # seeded


def test_finalists_are_timed_again_so_one_slow_measurement_does_not_decide() -> None:
    class Contended(FakeTimer):
        """The first measurement of each candidate is inflated 100x, as when another process hogs the CPU."""

        def __call__(self, run: Any, chosen: Plan) -> float:
            first = chosen not in self.timed
            return super().__call__(run, chosen) * (100 if first else 1)

    timer = Contended()
    result = tune(PROBLEM, _target(timer), trials=16)
    assert result.heuristic_time_s == pytest.approx(1e-3 / 1.5)  # re-timed, not the inflated 1e-1 / 1.5
    assert result.best == Plan("good", {"TILE": 8, "UNROLL": 1}, "tuned")
    assert result.best_time_s == pytest.approx(1e-3 / 8.5)
    assert result.speedup == pytest.approx(8.5 / 1.5)
    assert result.evidence is not None and result.evidence.verdict == "separated"
    assert result.evidence.rounds >= 6  # decided from the interleaved rounds, not the inflated search timings


def test_a_failing_heuristic_is_never_chosen() -> None:
    fake = types.SimpleNamespace(STRATEGIES=TABLE, heuristic=lambda p: Plan("wrong", {}), execute=_execute)
    result = tune(PROBLEM, Target("cpu", fake, FakeTimer()), trials=16)
    assert result.trials[0].plan.strategy == "wrong" and result.trials[0].status == "mismatch"
    assert result.heuristic_time_s == math.inf and result.speedup is None
    assert result.best is not None and result.best.strategy == "good"


def test_no_correct_candidate_means_no_decision() -> None:
    table = {n: TABLE[n] for n in ("wrong", "raises")}
    fake = types.SimpleNamespace(STRATEGIES=table, heuristic=lambda p: Plan("wrong", {}), execute=_execute)
    result = tune(PROBLEM, Target("cpu", fake, FakeTimer()), trials=4)
    assert result.best is None and result.best_time_s == math.inf
    assert sorted(t.status for t in result.trials) == ["error", "mismatch"]


def test_timer_failures_and_time_limit_are_recorded() -> None:
    class Flaky:
        def __call__(self, run: Any, chosen: Plan) -> float:
            if chosen.strategy == "slow":
                return 100.0  # over the candidate time limit
            if chosen.params.get("TILE") == 2:
                raise KeyError("launch out of resources")
            return _cost(chosen)

    target = Target("cpu", FAKE, Flaky(), failures=((KeyError, "launch"),))
    result = tune(PROBLEM, target, trials=16, candidate_timeout=10.0)
    by_plan = {(t.plan.strategy, t.plan.params.get("TILE")): t for t in result.trials}
    assert by_plan[("slow", None)].status == "timeout"
    assert by_plan[("good", 2)].status == "launch" and "KeyError" in by_plan[("good", 2)].reason
    assert result.best == Plan("good", {"TILE": 8, "UNROLL": 1}, "tuned")


def test_should_stop_ends_after_the_current_trial() -> None:
    polls: list[int] = []
    result = tune(PROBLEM, _target(), trials=16, should_stop=lambda: polls.append(1) or len(polls) > 1)
    assert result.interrupted
    assert result.trials_run == 1 and len(result.trials) == 1
    assert result.best is not None  # the heuristic, measured before the stop
    stopped_early = tune(PROBLEM, _target(), trials=16, should_stop=lambda: True)
    assert stopped_early.interrupted and stopped_early.trials_run == 0 and stopped_early.best is None


def test_shared_journal_storage_resumes_the_study(tmp_path: Any) -> None:
    storage = make_storage(str(tmp_path / "journal.log"))
    first = tune(PROBLEM, _target(), trials=6, storage=storage, study_name="shared")
    assert first.trials_run == 6
    again = tune(PROBLEM, _target(), trials=6, storage=make_storage(str(tmp_path / "journal.log")),
                 study_name="shared")
    assert again.trials_run == 0  # the budget was already spent by the first worker
    assert again.best == first.best and len(again.trials) == 6
    with pytest.raises(ValueError, match="does not exist"):
        make_storage(str(tmp_path / "missing" / "journal.log"))


def test_cpu_timer_excludes_warmup_and_returns_a_median() -> None:
    calls = []
    seconds = CpuTimer(warmup=2, repeat=5, budget_s=10.0)(lambda: calls.append(1), Plan("x"))
    assert len(calls) == 7 and 0 < seconds < 1


def test_mismatch_names_what_differs() -> None:
    ref = np.ones((1, 4, 6, 6), np.float32)
    assert mismatch(ref.copy(), ref, PROBLEM) is None
    assert "shape" in mismatch(ref[:, :3], ref, PROBLEM)
    assert "dtype" in mismatch(ref.astype(np.float64), ref, PROBLEM)
    bumped = ref.copy()
    bumped[0, 1, 2, 3] += 1e-2
    assert "worst at (0, 1, 2, 3)" in mismatch(bumped, ref, PROBLEM)
    nan = ref.copy()
    nan[0, 0, 0, 0] = np.nan
    assert "NaN" in mismatch(nan, ref, PROBLEM)


# ---- the real CPU backend, through the cache -------------------------------------------------

def _alt_strategy(calls: list[Any]) -> Strategy:
    """A second CPU strategy with a tunable, computing through im2col; records its calls."""
    from gpuconv import cpu

    im2col = cpu.STRATEGIES["im2col"]

    def run(problem: Any, x: Any, w: Any, **params: Any) -> Any:
        calls.append(params)
        return im2col.run(problem, x, w, **dict(im2col.defaults))

    return Strategy("alt", run, space={"block": [1, 2, 3]}, constraints=(lambda p, q: p["block"] != 3,),
                    defaults={"block": 1})


def test_tune_shapes_stores_the_winner_and_conv2d_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconv import cpu

    calls: list[Any] = []
    monkeypatch.setitem(cpu.STRATEGIES, "alt", _alt_strategy(calls))

    def timer(run: Any, chosen: Plan) -> float:
        run()
        return 1e-4 if chosen.strategy == "alt" and chosen.params["block"] == 2 else 1e-3

    problem = make_problem("conv2d", (1, 3, 7, 7), (4, 3, 3, 3), "float32", False, padding=1)
    shapes = [Shape("a", problem), Shape("a_again", problem)]
    target = dataclasses.replace(target_mod.make_target("cpu", timer=timer), load=no_load)  # fake times: no load
    outcomes = list(tune_shapes(shapes, target, cache.default(), trials=64, compare_jax=False))
    assert [o.status for o in outcomes] == ["tuned", "cached"]
    assert outcomes[0].plan == Plan("alt", {"block": 2}, "tuned")
    assert outcomes[1].trials_run == 0 and outcomes[1].metrics["search"] == "exhaustive"

    chosen = plan.choose("conv2d", problem, "cpu", cpu, "auto")
    assert chosen == Plan("alt", {"block": 2}, "tuned")
    rng = np.random.default_rng(0)
    x, w = rng.uniform(-1, 1, (1, 3, 7, 7)).astype(np.float32), rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    calls.clear()
    y = gpuconv.conv2d(x, w, padding=1)
    assert calls == [{"block": 2}]
    assert mismatch(y, gpuconv.reference.conv2d(x, w, padding=1), problem) is None


@pytest.fixture
def _autotune_reset() -> Any:
    yield
    gpuconv.set_autotune(None)
    first_call._FIRST_CALL.attempted.clear()


@pytest.mark.parametrize("switch", ["api", "env"])
def test_first_call_tunes_and_remembers(switch: str, monkeypatch: pytest.MonkeyPatch, _autotune_reset: Any) -> None:
    if switch == "api":
        gpuconv.set_autotune(True)
    else:
        monkeypatch.setenv("GPUCONV_AUTOTUNE", "1")
    tuned: list[Any] = []
    real = search.tune
    monkeypatch.setattr(search, "tune", lambda *a, **k: tuned.append(a[0]) or real(*a, **k))
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    gpuconv.conv2d(x, w)
    gpuconv.conv2d(x, w)
    assert len(tuned) == 1  # the second call finds the decision
    problem = make_problem("conv2d", x.shape, w.shape, "float32", False)
    plan.forget()
    assert plan.lookup(problem, "cpu") is not None and plan.lookup(problem, "cpu").source == "tuned"
    assert cache.default().path(plan.cache_file("cpu")).is_file()


def test_autotune_off_never_tunes(monkeypatch: pytest.MonkeyPatch, _autotune_reset: Any) -> None:
    monkeypatch.setenv("GPUCONV_AUTOTUNE", "1")
    gpuconv.set_autotune(False)
    monkeypatch.setattr(search, "tune", lambda *a, **k: pytest.fail("tuned although autotune is off"))
    gpuconv.conv2d(np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="enabled must be"):
        gpuconv.set_autotune("yes")  # type: ignore[arg-type]


def test_first_call_failure_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch, _autotune_reset: Any) -> None:
    gpuconv.set_autotune(True)

    def broken(*a: Any, **k: Any) -> Any:
        raise ImportError("no optuna here")

    monkeypatch.setattr(search, "tune", broken)
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    with pytest.warns(RuntimeWarning, match="using the heuristic"):
        y = gpuconv.conv2d(x, w)
    assert y.shape == (1, 3, 3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpuconv.conv2d(x, w)  # tried once per problem and process
