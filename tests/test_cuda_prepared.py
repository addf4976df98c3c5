"""Prepared CUDA launches on the CPU emulation: the first call of a problem records its launches, later calls
replay them with new pointers (and give the right result on new inputs), and nothing data-independent runs
twice: no strategy ``run``, no source rendering or compile lookup, no planning.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from emu import EmuExecutor
from helpers import Case, assert_matches, gradient_case, gradient_problem_of, random_inputs

import gpuconv.cuda as cuda
from gpuconv import plan as plan_module
from gpuconv.cuda import im2col, prepared
from gpuconv.problem import ConvProblem
from gpuconv.reference import run_problem
from gpuconv.strategy import Plan

# One case per launch-only strategy (a bias in some, none in others), and the gradient kernels.
FORWARD = [
    ("pointwise", Case((2, 8, 6, 6), (16, 8, 1, 1), bias=False)),
    ("im2col", Case((1, 4, 9, 7), (5, 4, 3, 3), padding=1)),
    ("direct", Case((2, 6, 9, 9), (6, 1, 3, 3), groups=6, padding=1)),
    ("im2col", Case((1, 3, 11, 12), (4, 3, 3, 2), stride=(2, 3), padding=(1, 2))),
    ("direct", Case((2, 3, 40), (5, 3, 4))),  # conv1d: 3-d operands reshaped to 4-d
]
GRADIENT_CASE = Case((2, 3, 9, 9), (4, 3, 3, 3), stride=2, padding=1, bias=False)


def _counting(strategy: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[int]]:
    """``strategy`` with a ``run`` that counts its calls (and is still known as launch-only if it was)."""
    calls: list[int] = []

    def run(*args: Any) -> None:
        calls.append(1)
        strategy.run(*args)

    if strategy.run in prepared.LAUNCH_ONLY:
        monkeypatch.setattr(prepared, "LAUNCH_ONLY", prepared.LAUNCH_ONLY | {run})
    return dataclasses.replace(strategy, run=run), calls


def _inputs(ex: EmuExecutor, case: Case, dtype: str, seed: int) -> tuple[Any, Any, Any, np.ndarray]:
    x, w, b = random_inputs(case, dtype, seed)
    ref = run_problem(case.problem(dtype), x, w, b)
    return ex.to_device(x), ex.to_device(w), None if b is None else ex.to_device(b), ref


@pytest.mark.parametrize("name,case", FORWARD, ids=str)
def test_second_call_replays(name: str, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = case.problem("float32")
    ex = EmuExecutor()
    strategy, runs = _counting(cuda.STRATEGIES[name], monkeypatch)
    params = dict(cuda.heuristic(problem).params) if cuda.heuristic(problem).strategy == name \
        else dict(strategy.defaults)
    run = prepared.PreparedRun(ex, problem, strategy, params)
    for seed in range(3):  # new arrays each call: replayed pointers must follow them
        x, w, b, ref = _inputs(ex, case, "float32", seed)
        assert_matches(run(x, w, b), ref, problem)
        if seed == 0:
            built, launches = ex.functions, len(ex.launches)
    assert runs == [1], "the strategy's run (planning its launches) ran again on a repeated call"
    assert ex.functions == built, "a repeated call rendered or compiled a kernel again"
    assert len(ex.launches) == 3 * launches
    assert run.recordings[(0, case.bias)] is not None


def test_tensor_core_launches_replay_with_their_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three stages of a 128 x 128 tile: 60 KiB of dynamic shared memory, recorded with the function and replayed.
    case = Case((1, 40, 6, 6), (8, 40, 3, 3), padding=1)
    problem = case.problem("float16")
    params = {"BM": 128, "BN": 128, "BK": 32, "WM": 2, "WN": 4, "STAGES": 3}
    strategy, runs = _counting(cuda.STRATEGIES["tc_implicit_gemm"], monkeypatch)
    assert strategy.valid(params, problem)
    ex = EmuExecutor()
    run = prepared.PreparedRun(ex, problem, strategy, params)
    for seed in range(2):
        x, w, b, ref = _inputs(ex, case, "float16", seed)
        assert_matches(run(x, w, b), ref, problem)
    assert runs == [1]
    assert [launch.shared for launch in ex.launches] == [0, 0, 3 * 256 * 80] * 2


def test_chunked_launches_replay_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    # A workspace of a few images' columns: the launches read x and write y at non-zero offsets.
    case = Case((5, 3, 7, 7), (4, 3, 3, 3), padding=1)
    problem = case.problem("float32")
    monkeypatch.setattr(im2col, "WORKSPACE_BYTES", 2 * problem.reduction * problem.p * problem.q * 4)
    assert im2col.images_per_chunk(problem) == 2
    ex = EmuExecutor()
    run = prepared.PreparedRun(ex, problem, cuda.STRATEGIES["im2col"], dict(im2col.STRATEGY.defaults))
    for seed in range(2):
        x, w, b, ref = _inputs(ex, case, "float32", seed)
        assert_matches(run(x, w, b), ref, problem)
    rec = run.recordings[(0, True)]
    assert rec is not None and len(rec.launches) == 6  # three chunks of im2col + GEMM
    assert any(not whole for launch in rec.launches for *_, whole in launch.slots)


def test_bias_and_no_bias_are_recorded_apart() -> None:
    case = Case((1, 4, 9, 7), (5, 4, 3, 3), padding=1)
    problem = case.problem("float32")
    ex = EmuExecutor()
    run = prepared.PreparedRun(ex, problem, cuda.STRATEGIES["im2col"], dict(im2col.STRATEGY.defaults))
    x, w, b, ref = _inputs(ex, case, "float32", 0)
    x0, w0, _, ref0 = _inputs(ex, dataclasses.replace(case, bias=False), "float32", 1)
    for _ in range(2):
        assert_matches(run(x, w, b), ref, problem)
        assert_matches(run(x0, w0, None), ref0, dataclasses.replace(case, bias=False).problem("float32"))
    assert set(run.recordings) == {(0, True), (0, False)}


@pytest.mark.parametrize("direction,name", [("input", "implicit_gemm"), ("weight", "implicit_gemm"),
                                            ("input", "col2im"), ("input", "rewrite")])
def test_gradients(direction: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gradient kernels replay too; col2im (which copies w into its workspace with CuPy) and rewrite run
    their ``run`` on every call instead, and stay right."""
    problem = gradient_problem_of(GRADIENT_CASE, "float32", direction)
    strategy, runs = _counting(cuda.TABLES[direction][name], monkeypatch)
    ex = EmuExecutor()
    run = prepared.PreparedRun(ex, problem, strategy, dict(cuda.TABLES[direction][name].defaults))
    for seed in range(2):
        a, b, want = gradient_case(GRADIENT_CASE, "float32", direction, seed)
        assert_matches(run(ex.to_device(a), ex.to_device(b), None), want, problem)
    replayed = cuda.TABLES[direction][name].run in prepared.LAUNCH_ONLY
    assert runs == ([1] if replayed else [1, 1])
    assert (run.recordings.get((0, False)) is not None) == replayed


def test_operands_that_share_memory_are_not_recorded() -> None:
    case = Case((4, 4, 4, 4), (4, 4, 4, 4), bias=False)  # x and w of one shape: conv2d(x, x)
    problem = case.problem("float32")
    ex = EmuExecutor()
    run = prepared.PreparedRun(ex, problem, cuda.STRATEGIES["direct"], dict(cuda.STRATEGIES["direct"].defaults))
    x, _, _ = random_inputs(case, "float32", 0)
    xd = ex.to_device(x)
    assert_matches(run(xd, xd, None), run_problem(problem, x, x, None), problem)
    assert run.recordings == {}  # the next call records again


class _TwoDevices(EmuExecutor):
    """The emulation with arrays tagged by a device id, and the device made current recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.device_of: dict[int, int] = {}
        self.entered: list[int] = []

    def device_id(self, a: np.ndarray) -> int:  # type: ignore[override]
        return self.device_of.get(id(a), 0)

    def on_device(self, device: int) -> Any:  # type: ignore[override]
        self.entered.append(device)
        return super().on_device(device)


def test_recorded_per_device_of_x() -> None:
    case = Case((1, 4, 9, 7), (5, 4, 3, 3), padding=1)
    problem = case.problem("float32")
    ex = _TwoDevices()
    run = prepared.PreparedRun(ex, problem, cuda.STRATEGIES["im2col"], dict(im2col.STRATEGY.defaults))
    x, w, b, ref = _inputs(ex, case, "float32", 0)
    assert_matches(run(x, w, b), ref, problem)
    ex.device_of[id(x)] = 1
    assert_matches(run(x, w, b), ref, problem)
    assert ex.entered == [0, 1] and set(run.recordings) == {(0, True), (1, True)}
    assert ex.functions == 4  # compiled once per device: im2col and the GEMM


def test_bias_less_launches_get_a_dummy_never_the_output() -> None:
    """Without a bias the GEMM's and the direct kernel's bias pointer is the executor's dummy, and no launch
    gets the output's memory twice."""
    ex = EmuExecutor()
    seen: list[tuple[str, list[Any], Any]] = []
    launch = ex.launch

    def spy(kernel: str, func: str, params: Any, dtype: str, grid: Any, block: Any, args: Any) -> None:
        seen.append((kernel, list(args), out))
        launch(kernel, func, params, dtype, grid, block, args)

    ex.launch = spy  # type: ignore[method-assign]
    for name, case in FORWARD[:3]:
        case = dataclasses.replace(case, bias=False)
        problem = case.problem("float32")
        x, w, _, ref = _inputs(ex, case, "float32", 0)
        out = ex.empty(problem.out_shape4, "float32")
        cuda.STRATEGIES[name].run(ex, problem, dict(cuda.STRATEGIES[name].defaults), x, w, None, out)
        assert_matches(out.reshape(problem.out_shape), ref, problem)
    dummy = ex.dummy("float32")
    for kernel, args, out in seen:
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        assert sum(np.shares_memory(a, out) for a in arrays) <= 1, f"{kernel}: the output is passed twice"
        if kernel in ("gemm", "direct"):
            assert any(a is dummy for a in arrays), f"{kernel}: no dummy bias pointer"


def test_prepare_returns_a_prepared_run_and_the_call_memo_plans_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``gpuconv.cuda.prepare`` and ``gpuconv.plan.choose``: a repeated call neither plans nor records."""
    case = Case((1, 16, 14, 14), (32, 16, 3, 3), padding=1)
    problem = case.problem("float32")
    planned: list[ConvProblem] = []
    real = plan_module._choose

    def counting_choose(fn: str, problem: ConvProblem, *args: Any) -> Plan:
        planned.append(problem)
        return real(fn, problem, *args)

    monkeypatch.setattr(plan_module, "_choose", counting_choose)
    monkeypatch.setattr(plan_module, "lookup", lambda *a, **k: None)  # no fingerprint of a device to read
    monkeypatch.setattr(cuda, "device_context", lambda device: EmuExecutor.on_device(device))
    ex = EmuExecutor()
    run = cuda.prepare(problem, plan_module.choose("conv2d", problem, "cuda", cuda, "auto", device=0), executor=ex)
    for seed in range(2):
        assert plan_module.choose("conv2d", problem, "cuda", cuda, "auto", device=0) is not None
        x, w, b, ref = _inputs(ex, case, "float32", seed)
        assert_matches(run(x, w, b), ref, problem)
    assert planned == [problem]
    assert isinstance(run, prepared.PreparedRun) and ex.functions == len({(r.kernel, r.func) for r in ex.launches})


def test_planning_runs_on_the_arrays_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The heuristic reads the multiprocessor count of the current device: choose makes x's device current."""
    problem = Case((1, 16, 14, 14), (32, 16, 3, 3), padding=1).problem("float32")
    current = [0]
    entered: list[int] = []

    class Ctx:
        def __init__(self, device: int) -> None:
            self.device = device

        def __enter__(self) -> None:
            entered.append(self.device)
            self.saved, current[0] = current[0], self.device

        def __exit__(self, *exc: object) -> None:
            current[0] = self.saved

    seen: list[int] = []
    real = cuda.heuristic
    monkeypatch.setattr(cuda, "device_context", Ctx)
    monkeypatch.setattr(cuda, "heuristic", lambda p: (seen.append(current[0]), real(p))[1])
    monkeypatch.setattr(plan_module, "lookup", lambda *a, **k: None)
    plan_module.choose("conv2d", problem, "cuda", cuda, "auto", device=1)
    assert entered == [1] and seen == [1] and current == [0]
