"""Where Winograd pays on this machine: time grids of 3x3 and 5x5 stride-1 layers and fit the heuristic's rules.

``python -m benchmarks.winograd_grid --out gpuconv/cpu/winograd_rules.json`` times, per layer of the grid
(channels x image size x batch), the GEMM path the heuristic takes without Winograd (im2col or direct),
F(2x2) and F(4x4) at every chunk size, through prepared runners (the filter transform memoized, as in
inference with fixed weights), in interleaved rounds in one process (one BLAS pool), and keeps the
median. It then fits, for F(4x4) and for F(2x2), the smallest number of tiles (and of input channels per
group) from which the strategy is taken, choosing the thresholds that minimize the geometric mean of
chosen time / best time over the grid, and F(4x4)'s chunk size with the same criterion. A second grid of 5x5
layers does the same for F(2x2, 5x5) against the GEMM path (``rules["f25"]``). The grids, every time, the
machine, the load average and the rules go to the JSON file that :mod:`gpuconv.cpu.winograd` reads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from gpuconv import cpu
from gpuconv.cpu import winograd, winograd_gemm
from gpuconv.problem import ConvProblem, make_problem
from gpuconv.strategy import Plan

CHANNELS = (16, 32, 64, 128, 256, 512)
SIZES = (7, 14, 28, 56, 112)
BATCHES = (1, 8)
MAX_FLOPS = 8e9  # per layer: keeps the grid to a few minutes on two cores


def grid() -> list[ConvProblem]:
    out = []
    for c, hw, n in itertools.product(CHANNELS, SIZES, BATCHES):
        for k in (c, 2 * c):
            p = make_problem("conv2d", (n, c, hw, hw), (k, c, 3, 3), "float32", False, padding=1)
            if p.flops <= MAX_FLOPS and not (k == 2 * c and (c > 128 or hw < 14)):
                out.append(p)
    return out


CHANNELS5 = (8, 16, 32, 48, 64, 128, 256)
SIZES5 = (14, 28, 56, 112)
MAX_FLOPS5 = 4e9


def grid5() -> list[ConvProblem]:
    """5x5 layers (padding 2) at batch 1 and 8, K = C and K = 2C, at most :data:`MAX_FLOPS5` each."""
    out = []
    for c, hw, n in itertools.product(CHANNELS5, SIZES5, BATCHES):
        for k in (c, 2 * c):
            p = make_problem("conv2d", (n, c, hw, hw), (k, c, 5, 5), "float32", False, padding=2)
            if p.flops <= MAX_FLOPS5 and not (k == 2 * c and c > 64):
                out.append(p)
    return out


def gemm_plan(problem: ConvProblem) -> Plan:
    """The heuristic's plan with Winograd left out: what a 3x3 layer runs otherwise."""
    for name, applies, params in cpu._RULES:
        if name != "winograd" and cpu.STRATEGIES[name].supports(problem) and applies(problem):
            return Plan(name, params(problem), "heuristic")
    raise AssertionError("im2col applies to every problem")


def contenders(problem: ConvProblem) -> dict[str, Plan]:
    if problem.r == 5:
        return {"gemm": gemm_plan(problem), **{f"f25_c{chunk}": Plan("winograd", {"tile": 2, "chunk": chunk})
                                               for chunk in winograd.SPACE["chunk"]}}
    plans = {"gemm": gemm_plan(problem), "f2": Plan("winograd", {"tile": 2, "chunk": winograd.SPACE["chunk"][0]})}
    for chunk in winograd.SPACE["chunk"]:
        plans[f"f4_c{chunk}"] = Plan("winograd", {"tile": 4, "chunk": chunk})
    return plans


def time_layer(problem: ConvProblem, rounds: int, budget_s: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (problem.n, problem.c, problem.h, problem.w)).astype(np.float32)
    w = rng.uniform(-1, 1, (problem.k, problem.cg, problem.r, problem.s)).astype(np.float32)
    plans = contenders(problem)
    runs: dict[str, Callable[[], Any]] = {}
    for name, plan in plans.items():
        run = cpu.prepare(problem, plan)
        runs[name] = lambda run=run: run(x, w, None)
        runs[name]()
        runs[name]()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    start = time.perf_counter()
    for i in range(rounds):
        for name in np.random.default_rng(i).permutation(list(runs)):
            t0 = time.perf_counter()
            runs[name]()
            samples[name].append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return {"n": problem.n, "c": problem.c, "k": problem.k, "hw": problem.h, "r": problem.r,
            "tiles2": problem.n * winograd_gemm.tiles(problem, 2)[0] * winograd_gemm.tiles(problem, 2)[1],
            "tiles4": problem.n * winograd_gemm.tiles(problem, 4)[0] * winograd_gemm.tiles(problem, 4)[1],
            "gemm_plan": plans["gemm"].strategy, "load1": os.getloadavg()[0],
            "median_s": {name: float(np.median(s)) for name, s in samples.items()}}


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Thresholds ``min_tiles`` (and ``min_channels``) per tile size, and F(4x4)'s chunk, minimizing the
    geometric mean of chosen / best time over ``rows``."""
    chunks = winograd.SPACE["chunk"]

    def f4_time(r: dict[str, Any], chunk: int) -> float:
        return r["median_s"][f"f4_c{chunk}"]

    def score(rule: dict[str, Any]) -> float:
        logs = []
        for r in rows:
            best = min(r["median_s"].values())
            logs.append(np.log(choose(rule, r, f4_time) / best))
        return float(np.exp(np.mean(logs)))

    best_chunk = min(chunks, key=lambda ch: float(np.mean([np.log(f4_time(r, ch)) for r in rows])))
    t4s = sorted({r["tiles4"] for r in rows}) + [10**9]
    t2s = sorted({r["tiles2"] for r in rows}) + [10**9]
    cs = sorted({r["c"] for r in rows})
    candidates = ({"chunk": best_chunk, "f4": {"min_tiles": a, "min_channels": b},
                   "f2": {"min_tiles": c, "min_channels": d}} for a, b, c, d in itertools.product(t4s, cs, t2s, cs))
    rule = min(candidates, key=score)
    rule["geomean_chosen_over_best"] = score(rule)
    rule["geomean_gemm_over_best"] = float(np.exp(np.mean([np.log(r["median_s"]["gemm"] / min(r["median_s"].values()))
                                                            for r in rows])))
    return rule


def fit5(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """F(2x2, 5x5)'s ``min_tiles``, ``min_channels`` and chunk, minimizing the geometric mean of chosen / best time."""
    def score(rule: dict[str, Any]) -> float:
        return float(np.exp(np.mean([np.log(choose5(rule, r) / min(r["median_s"].values())) for r in rows])))

    candidates = ({"chunk": chunk, "min_tiles": t, "min_channels": c}
                  for chunk, t, c in itertools.product(winograd.SPACE["chunk"],
                                                       sorted({r["tiles2"] for r in rows}) + [10**9],
                                                       sorted({r["c"] for r in rows})))
    rule = min(candidates, key=score)
    rule["geomean_chosen_over_best"] = score(rule)
    rule["geomean_gemm_over_best"] = float(np.exp(np.mean([np.log(r["median_s"]["gemm"] / min(r["median_s"].values()))
                                                            for r in rows])))
    return rule


def choose5(rule: dict[str, Any], r: dict[str, Any]) -> float:
    if r["tiles2"] >= rule["min_tiles"] and r["c"] >= rule["min_channels"]:
        return r["median_s"][f"f25_c{rule['chunk']}"]
    return r["median_s"]["gemm"]


def choose(rule: dict[str, Any], r: dict[str, Any], f4_time: Callable[[dict[str, Any], int], float]) -> float:
    if r["tiles4"] >= rule["f4"]["min_tiles"] and r["c"] >= rule["f4"]["min_channels"]:
        return f4_time(r, rule["chunk"])
    if r["tiles2"] >= rule["f2"]["min_tiles"] and r["c"] >= rule["f2"]["min_channels"]:
        return r["median_s"]["f2"]
    return r["median_s"]["gemm"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.winograd_grid", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpuconv/cpu/winograd_rules.json")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed rounds per layer")
    parser.add_argument("--refit", action="store_true", help="refit the rules of --out from its stored grid")
    args = parser.parse_args(argv)
    if args.refit:
        with open(args.out) as f:
            data = json.load(f)
    else:
        from benchmarks import machine
        load_start = os.getloadavg()
        grids = {"grid": [time_layer(p, args.rounds, args.budget) for p in _progress(grid())],
                 "grid5": [time_layer(p, args.rounds, args.budget) for p in _progress(grid5())]}
        data = {"machine": {"cpu": machine.cpu_info(), "blas": machine.numpy_blas(), "cores": machine.cores()},
                "load_start": load_start, "load_end": os.getloadavg(),
                "command": "python -m benchmarks.winograd_grid", **grids}
    data["rules"] = {**fit(data["grid"]), "f25": fit5(data["grid5"])}
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1)
    print(json.dumps(data["rules"]))
    return 0


def _progress(problems: list[ConvProblem]) -> Iterator[ConvProblem]:
    for i, p in enumerate(problems):
        print(f"[{i + 1}/{len(problems)}] n={p.n} {p.c}->{p.k} {p.h}x{p.w} {p.r}x{p.s}", flush=True)
        yield p


if __name__ == "__main__":
    raise SystemExit(main())
