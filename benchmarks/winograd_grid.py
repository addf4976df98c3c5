"""Where Winograd pays on this machine: time grids of 3x3 and 5x5 stride-1 layers and fit the heuristic's rules.

``python -m benchmarks.winograd_grid --out gpuconv/cpu/winograd_rules.json`` times, per layer of the grid
(channels x image size x batch), the GEMM path the heuristic takes without Winograd (im2col or direct),
F(2x2) and F(4x4) at every chunk size, through prepared runners (the filter transform memoized, as in
inference with fixed weights), in interleaved rounds in one process (one BLAS pool), and keeps the
median. It then fits, for F(4x4) and for F(2x2), the smallest number of tiles (and of input channels per
group) from which the strategy is taken, choosing the thresholds that minimize the geometric mean of
chosen time / best time over the grid, and F(4x4)'s chunk size with the same criterion. A second grid of 5x5
layers does the same for F(2x2, 5x5) against the GEMM path (``rules["f25"]``). The grids, every time, the
machine, the load average and the rules go to the JSON file that :mod:`gpuconv.cpu.winograd` reads, as the
profile of this processor: it replaces one timed on the same processor (vendor, family and model number) and
leaves the others, so one file holds the fits of every machine it was run on, and the heuristic takes the one
for the processor it runs on (:func:`gpuconv.cpu.winograd.select_profile`). ``--refit`` refits every stored
profile from its grid.
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
NEVER = 10**9  # a threshold no layer reaches


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
    """Per tile size, the number of tiles from which it is taken at each channel count of the grid, and F(4x4)'s
    chunk, minimizing the geometric mean of chosen / best time over ``rows``.

    One threshold on tiles for every channel count (as the rules first were) cannot follow the grid: on a 2-core
    AMD EPYC F(4x4) wins from 49 tiles at 256-512 channels but loses at 32 channels with 1,024, and the best single
    pair of thresholds gave up the wide layers to keep the narrow ones. So each channel count of the grid gets its
    own thresholds, with the one order that keeps the rule plausible between grid points: the thresholds do not
    grow with the channels (more channels amortize the transforms over more work per tile). Found by dynamic
    programming over the channel counts, in increasing order; a rule is ``{"f4": [[channels, min_tiles], ...],
    "f2": [...], "chunk"}``, and a layer takes the entry of the largest listed channel count at most its own.
    """
    chunks = winograd.SPACE["chunk"]
    best_chunk = min(chunks, key=lambda ch: float(np.mean([np.log(f4_time(r, ch)) for r in rows])))
    t4s = sorted({r["tiles4"] for r in rows}) + [NEVER]
    t2s = sorted({r["tiles2"] for r in rows}) + [NEVER]
    cs = sorted({r["c"] for r in rows})
    states = list(itertools.product(t4s, t2s))

    def cost(c: int, a: int, b: int) -> float:
        rule = {"chunk": best_chunk, "f4": [[c, a]], "f2": [[c, b]]}
        return sum(np.log(choose(rule, r, f4_time) / min(r["median_s"].values())) for r in rows if r["c"] == c)

    # best[s]: the least summed log-ratio of the channel counts so far with the current one's thresholds s, and
    # the thresholds that got there; a state may follow one whose thresholds are both at least its own.
    best: dict[tuple[int, int], tuple[float, list[tuple[int, int]]]] = {s: (0.0, []) for s in states}
    for c in cs:
        step = {}
        for a, b in states:
            prev = min((v for (pa, pb), v in best.items() if pa >= a and pb >= b), key=lambda v: v[0])
            step[(a, b)] = (prev[0] + cost(c, a, b), [*prev[1], (a, b)])
        best = step
    _, path = min(best.values(), key=lambda v: v[0])
    rule: dict[str, Any] = {"chunk": best_chunk, "f4": [[c, a] for c, (a, _) in zip(cs, path)],
                            "f2": [[c, b] for c, (_, b) in zip(cs, path)]}
    rule["geomean_chosen_over_best"] = score_rule(rule, rows)
    rule["geomean_gemm_over_best"] = float(np.exp(np.mean([np.log(r["median_s"]["gemm"] / min(r["median_s"].values()))
                                                            for r in rows])))
    return rule


def f4_time(r: dict[str, Any], chunk: int) -> float:
    """A grid row's F(4x4) time at ``chunk``."""
    return r["median_s"][f"f4_c{chunk}"]


def score_rule(rule: dict[str, Any], rows: list[dict[str, Any]]) -> float:
    """The geometric mean over ``rows`` of the time ``rule`` chooses over the best time."""
    return float(np.exp(np.mean([np.log(choose(rule, r, f4_time) / min(r["median_s"].values())) for r in rows])))


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
    if r["tiles4"] >= winograd.min_tiles(rule["f4"], r["c"]):
        return f4_time(r, rule["chunk"])
    if r["tiles2"] >= winograd.min_tiles(rule["f2"], r["c"]):
        return r["median_s"]["f2"]
    return r["median_s"]["gemm"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.winograd_grid", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpuconv/cpu/winograd_rules.json")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed rounds per layer")
    parser.add_argument("--refit", action="store_true", help="refit the rules of --out from its stored grid")
    args = parser.parse_args(argv)
    profiles = load_profiles(args.out)
    if args.refit:
        for profile in profiles:
            profile["rules"] = rules(profile)
    else:
        from benchmarks import machine
        load_start = os.getloadavg()
        grids = {"grid": [time_layer(p, args.rounds, args.budget) for p in _progress(grid())],
                 "grid5": [time_layer(p, args.rounds, args.budget) for p in _progress(grid5())]}
        profile = {"machine": {"cpu": machine.cpu_info(), "blas": machine.numpy_blas(),
                               "cores": machine.cores()},
                   "load_start": load_start, "load_end": os.getloadavg(),
                   "command": "python -m benchmarks.winograd_grid", **grids}
        profile["rules"] = rules(profile)
        profiles = add_profile(profiles, profile)
        print(json.dumps(profile["rules"]))
    tmp = f"{args.out}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"schema": winograd.RULES_SCHEMA, "profiles": profiles}, f, indent=1)
    os.replace(tmp, args.out)
    return 0


def rules(profile: dict[str, Any]) -> dict[str, Any]:
    """The rules fitted to a profile's 3x3 and 5x5 grids."""
    return {**fit(profile["grid"]), "f25": fit5(profile["grid5"])}


def load_profiles(path: str) -> list[dict[str, Any]]:
    """The profiles stored at ``path``; none where there is no file yet."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    if data.get("schema") != winograd.RULES_SCHEMA:
        raise SystemExit(f"{path}: schema {data.get('schema')!r}, this tool writes {winograd.RULES_SCHEMA}")
    return list(data["profiles"])


def add_profile(profiles: list[dict[str, Any]], profile: dict[str, Any]) -> list[dict[str, Any]]:
    """``profiles`` with ``profile`` in place of the one timed on the same processor, else appended (the first
    stays first: it is the rules of processors no profile was timed on)."""
    cpu = profile["machine"]["cpu"]
    for i, old in enumerate(profiles):
        if winograd.same_processor(old["machine"]["cpu"], cpu):
            return [*profiles[:i], profile, *profiles[i + 1:]]
    return [*profiles, profile]


def _progress(problems: list[ConvProblem]) -> Iterator[ConvProblem]:
    for i, p in enumerate(problems):
        print(f"[{i + 1}/{len(problems)}] n={p.n} {p.c}->{p.k} {p.h}x{p.w} {p.r}x{p.s}", flush=True)
        yield p


if __name__ == "__main__":
    raise SystemExit(main())
