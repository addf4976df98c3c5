"""Measure: check every contender against the reference once, time the correct ones interleaved, derive figures.

The result is one plain dict (written as JSON by :mod:`benchmarks.report`): the settings and the command,
the machine, the roofs, the workload (the batch sizes, dtypes and directions its layers have), per shape its
direction and each contender's status, timings and figures, the scaling sweep, and the summary per direction
(geometric-mean speedup of each gpuconv contender over each peer).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from gpuconv import shapes as shapes_mod
from gpuconv.problem import DIRECTIONS, ConvProblem, make_problem
from gpuconv.reference import run_problem

from . import contenders as contenders_mod
from . import machine, roof
from .contenders import Contender, Lineup
from .timing import TIMERS, Entry, interleaved, plan_repeats, summarize

#: 2: ``dtype`` None means "as in the shapes file"; ``workload``; a ``direction`` per shape; summary per direction.
SCHEMA = 2


@dataclass
class Config:
    """What to measure and how; the command line fills it in (see ``python -m benchmarks --help``)."""

    shapes: str = "resnet50"
    backend: str = "auto"
    batch: int | None = None
    dtype: str | None = None          # None: each layer's own dtype, as the shapes file states it
    directions: list[str] | None = None  # None: each layer's own direction (forward unless the file says)
    out: Path | None = None
    repeat: int = 15
    warmup: int = 2
    budget_s: float = 5.0
    settle_s: float | None = None
    contenders: list[str] | None = None
    skip: list[str] | None = None
    quick: bool = False
    scaling: bool = True
    scaling_sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128, 256, 512])
    scaling_channels: int = 16
    naive_max: int = 64
    progress: bool = True
    plots: bool = True
    wait_idle_s: float = 0.0
    command: str = ""

    def resolved_backend(self) -> str:
        """``auto`` becomes ``cuda`` when CuPy sees a device, else ``cpu``."""
        if self.backend == "auto":
            return "cuda" if machine.has_cuda_device() else "cpu"
        if self.backend == "cuda" and not machine.has_cuda_device():
            raise ValueError("--backend cuda: CuPy sees no usable CUDA device (no driver, no device, or CuPy "
                             "built for another CUDA); use --backend cpu")
        return self.backend

    def settle(self, backend: str) -> float:
        """Pause between contenders of different thread pools: 0.15 s on the CPU (see ``interleaved``), 0 on a GPU."""
        if self.settle_s is not None:
            return self.settle_s
        return 0.15 if backend == "cpu" else 0.0

    def quickened(self) -> Config:
        """The same run, cut down to seconds: few repetitions, a small roof and a short scaling sweep."""
        if not self.quick:
            return self
        return dataclasses.replace(self, repeat=min(self.repeat, 3), warmup=1, budget_s=min(self.budget_s, 1.0),
                                   scaling_sizes=[s for s in self.scaling_sizes if s <= 32] or [8],
                                   naive_max=min(self.naive_max, 16),
                                   settle_s=0.0 if self.settle_s is None else self.settle_s)


# ---- correctness --------------------------------------------------------------------------

def tolerance(problem: ConvProblem) -> tuple[float, float]:
    """``(rtol, atol)`` for inputs in [-1, 1): rounding of a sum as long as each result element's
    (``problem.sum_length``: the forward's dot product, or a gradient's sum), with headroom.

    float16 results may be accumulated in float16 by a peer, so they get a bound relative to the
    typical output size (``sqrt(sum_length)``) rather than ulps.
    """
    n = problem.sum_length + 1
    if problem.dtype == "float16":
        return 2.0**-8, 2.0**-7 * math.sqrt(n)
    eps = float(np.finfo(np.float64 if problem.dtype == "float64" else np.float32).eps)
    return 16 * eps, 16 * eps * n


def check(actual: np.ndarray, expected: np.ndarray, problem: ConvProblem) -> tuple[bool, str, float]:
    """Whether ``actual`` matches the reference: ``(ok, why not, max abs error)``."""
    if actual.shape != expected.shape:
        return False, f"shape {actual.shape} != reference {expected.shape}", math.inf
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if not np.isfinite(a).all():
        return False, "non-finite values", math.inf
    rtol, atol = tolerance(problem)
    err = np.abs(a - e)
    max_err = float(err.max()) if err.size else 0.0
    bad = int(np.count_nonzero(err > atol + rtol * np.abs(e)))
    if bad:
        return False, f"{bad} of {err.size} values off (max abs error {max_err:.3g}, atol {atol:.3g})", max_err
    return True, "", max_err


# ---- one problem, every contender -----------------------------------------------------------

def random_inputs(problem: ConvProblem, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The direction's two operands (``x, w``; ``dy, w``; ``x, dy``) in the problem's dtype, uniform in [-1, 1)."""
    rng = np.random.default_rng(seed)
    draw = lambda shape: rng.uniform(-1, 1, shape).astype(problem.dtype)  # noqa: E731
    a, b = problem.operand_shapes
    return draw(a), draw(b)


def measure_problem(problem: ConvProblem, lineup: Sequence[Contender], cfg: Config, settle_s: float = 0.0,
                    step: Callable[[str], None] = lambda s: None) -> dict[str, dict[str, Any]]:
    """Check then time each contender on ``problem``; returns contender name -> record.

    A record has ``status``: ``ok`` (with ``stats`` in seconds and ``samples``), ``unsupported``,
    ``failed`` (wrong result; not timed) or ``error`` (raised; not timed), and ``error`` text otherwise.
    """
    x, w = random_inputs(problem)
    expected = run_problem(problem, x, w)
    records: dict[str, dict[str, Any]] = {}
    entries: dict[str, Entry] = {}
    for c in lineup:
        step(f"check {c.name}")
        if not c.supports(problem):
            records[c.name] = {"status": "unsupported"}
            continue
        try:
            thunk = c.setup(problem, x, w)
            t0 = time.perf_counter()
            out = thunk()
            first = time.perf_counter() - t0
            ok, why, max_err = check(np.asarray(c.to_host(out)).reshape(problem.result_shape), expected, problem)
        except Exception as e:  # a contender that raises is reported, never fatal
            records[c.name] = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
            continue
        if not ok:
            records[c.name] = {"status": "failed", "error": why, "max_abs_err": max_err}
            continue
        records[c.name] = {"status": "ok", "max_abs_err": max_err}
        repeat, warmup = plan_repeats(first, cfg.repeat, cfg.warmup, cfg.budget_s)
        entries[c.name] = Entry(thunk, TIMERS[c.timer], repeat, c.pool, warmup)
    samples = interleaved(entries, settle_s=settle_s,
                          on_step=lambda name, i: step(f"time {name} #{i + 1}"))
    for name, s in samples.items():
        stats = summarize(s)
        records[name].update(stats=stats.to_dict(), samples=s, gflops=problem.flops / stats.median / 1e9)
    return records


def add_figures(records: dict[str, dict[str, Any]], lineup: Sequence[Contender], roof_gflops: float) -> str | None:
    """Per record: fraction of the roof and speedup over the best peer (best peer's time / this time).

    Returns the name of the best peer (fastest non-gpuconv contender that passed), or None.
    """
    family = {c.name: c.family for c in lineup}
    ok = {n: r for n, r in records.items() if r["status"] == "ok"}
    peers = {n: r["stats"]["median"] for n, r in ok.items() if family.get(n) != "gpuconv"}
    best = min(peers, key=peers.get) if peers else None
    for r in ok.values():
        r["roof_fraction"] = r["gflops"] / roof_gflops if roof_gflops else None
        r["speedup_vs_best_peer"] = peers[best] / r["stats"]["median"] if best else None
    return best


def summary(shape_rows: list[dict[str, Any]], lineup: Sequence[Contender]) -> dict[str, Any]:
    """Per direction (in :data:`DIRECTIONS` order, those the shapes have): for each gpuconv contender and each
    other contender, the geometric-mean speedup over that direction's shapes both ran, the count-weighted
    total-time speedup (the network as a whole), and on how many shapes it won."""
    present = {row["direction"] for row in shape_rows}
    return {d: _summary([row for row in shape_rows if row["direction"] == d], lineup)
            for d in DIRECTIONS if d in present}


def _summary(shape_rows: list[dict[str, Any]], lineup: Sequence[Contender]) -> dict[str, Any]:
    gpu = [c.name for c in lineup if c.family == "gpuconv"]
    others = [c.name for c in lineup if c.family != "gpuconv"]
    out: dict[str, Any] = {}
    for g in gpu:
        per: dict[str, Any] = {}
        for p in others:
            ratios, tg, tp, wins = [], 0.0, 0.0, 0
            for row in shape_rows:
                rg, rp = row["results"].get(g, {}), row["results"].get(p, {})
                if rg.get("status") == rp.get("status") == "ok":
                    a, b = rg["stats"]["median"], rp["stats"]["median"]
                    ratios.append(b / a)
                    tg += row["count"] * a
                    tp += row["count"] * b
                    wins += b > a
            if ratios:
                per[p] = {"geomean_speedup": float(np.exp(np.mean(np.log(ratios)))),
                          "total_time_speedup": tp / tg, "shapes": len(ratios), "wins": wins}
        out[g] = per
    return out


# ---- the whole run ------------------------------------------------------------------------

def shapes_name(spec: str) -> str:
    """The shapes set's name for file names: the stem of a path, or the shipped name."""
    return Path(spec).stem


def scaling_problems(cfg: Config, dtype: str = "float32") -> list[ConvProblem]:
    """A fixed 3x3, stride 1, 'same' forward convolution, C = K = ``scaling_channels``, batch 1, growing H = W, in
    ``cfg.dtype`` when given, else ``dtype``."""
    c = cfg.scaling_channels
    return [make_problem("conv2d", (1, c, s, s), (c, c, 3, 3), cfg.dtype or dtype, False, padding=1)
            for s in cfg.scaling_sizes]


def workload(problems: Iterable[ConvProblem]) -> dict[str, list]:
    """The batch sizes, dtypes and directions ``problems`` have, each sorted (directions in DIRECTIONS order)."""
    problems = list(problems)
    return {"batches": sorted({p.n for p in problems}),
            "dtypes": sorted({p.dtype for p in problems}),
            "directions": [d for d in DIRECTIONS if any(p.direction == d for p in problems)]}


def wait_for_idle(max_s: float, threshold: float = 0.3, poll_s: float = 10.0) -> bool:
    """Wait up to ``max_s`` seconds for the 1-minute load average to fall below ``threshold`` x usable cores.

    Multi-threaded BLAS and OpenMP pools slow down many times over when other work shares the cores, so a
    run on a busy machine says more about the neighbours than about the contenders. Returns whether it is idle.
    """
    limit = threshold * machine.cores()
    deadline = time.monotonic() + max_s
    while os.getloadavg()[0] >= limit:
        if time.monotonic() >= deadline:
            if max_s > 0:
                print(f"warning: still busy after {max_s:.0f} s (load {os.getloadavg()[0]:.2f} on "
                      f"{machine.cores()} cores); timing anyway", file=sys.stderr)
            return False
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    return True


def benchmark(cfg: Config, extra: Iterable[Contender] = ()) -> dict[str, Any]:
    """Run the whole benchmark described by ``cfg``; ``extra`` contenders join the lineup (tests use this).

    Returns:
        The result dict (see the module docstring); nothing is written here.
    """
    cfg = cfg.quickened()
    wait_for_idle(cfg.wait_idle_s)
    load_start = os.getloadavg()
    backend = cfg.resolved_backend()
    loaded = shapes_mod.load(cfg.shapes, batch=cfg.batch, dtype=cfg.dtype, directions=cfg.directions)
    work = workload(s.problem for s in loaded)
    base = contenders_mod.lineup(backend, tuple(work["directions"])).select(cfg.contenders, cfg.skip)
    lineup = Lineup(base.contenders + list(extra), base.missing, base.notes)
    first_roofs = roof.measure(backend, quick=cfg.quick)
    settle = cfg.settle(backend)
    sweep_dtype = work["dtypes"][0] if len(work["dtypes"]) == 1 else "float32"
    scaling = scaling_problems(cfg, sweep_dtype) if cfg.scaling else []

    bar = _Progress(cfg.progress, len(loaded) + len(scaling))
    rows = []
    for shape in loaded:
        p = shape.problem
        bar.problem(shape.name)
        strategy, source = contenders_mod.auto_plan(p, backend)
        rows.append({"name": shape.name, "direction": p.direction, "count": shape.count,
                     "load_1min": os.getloadavg()[0], "problem": p.to_dict(), "flops": p.flops,
                     "auto": {"strategy": strategy, "source": source},
                     "results": measure_problem(p, lineup.contenders, cfg, settle, bar.step)})
        bar.advance()
    sweep = []
    naive = contenders_mod.naive_loops()
    for p in scaling:
        bar.problem(f"scaling H=W={p.h}")
        with_naive = lineup.contenders + ([naive] if p.h <= cfg.naive_max else [])
        sweep.append({"size": p.h, "problem": p.to_dict(), "flops": p.flops,
                      "results": measure_problem(p, with_naive, cfg, settle, bar.step)})
        bar.advance()
    bar.close()

    # The roof is measured before and after, and the better of the two kept: a GEMM that shared the machine
    # with other work would otherwise understate it. Each layer is held against the roof of its own dtype.
    roofs = roof.combine(first_roofs, roof.measure(backend, quick=cfg.quick))
    everyone = lineup.contenders + [naive]
    for row in rows:
        row["best_peer"] = add_figures(row["results"], everyone, roofs[row["problem"]["dtype"]]["best_gflops"])
    for point in sweep:
        add_figures(point["results"], everyone, roofs[point["problem"]["dtype"]]["best_gflops"])

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    settings.update(backend=backend, settle_s=settle, shapes_path=str(shapes_mod.resolve(cfg.shapes)))
    return {
        "schema": SCHEMA,
        "command": cfg.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "machine": machine.machine_info(backend),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "contenders": [{"name": c.name, "label": c.label, "family": c.family, "timer": c.timer, "note": c.note}
                       for c in lineup.contenders],
        "missing": lineup.missing,
        "roof": roofs,
        "workload": work,
        "shapes": rows,
        "summary": summary(rows, lineup.contenders),
        "scaling": {"template": f"forward, N=1, C=K={cfg.scaling_channels}, 3x3, stride 1, padding 1, H=W=size"
                                + (f", {scaling[0].dtype}" if scaling else ""),
                    "naive_max": cfg.naive_max, "points": sweep},
    }


class _Progress:
    """A tqdm bar over problems whose postfix names the contender being checked or timed (redrawn <= 5 times/s)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        self.last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="problem", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def problem(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(name)

    def step(self, text: str) -> None:
        if self.bar is not None:
            now = time.monotonic()
            self.bar.set_postfix_str(text, refresh=now - self.last > 0.2)
            self.last = now if now - self.last > 0.2 else self.last

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
