"""``python -m gpuconv.demo``: convolve a ResNet-50 layer on the CPU with every strategy, check it, time it.

The default layer is res3's 3x3 convolution (128 -> 128 channels, 28x28, batch 1, float32). Each CPU strategy
(and each layout variant) is checked against the ``jax.lax`` reference, then timed next to ``jax.lax``
and, when installed, PyTorch, all in this process. ``--shapes resnet50`` does the same for every layer of a
shipped shape set and prints the geometric-mean speed-ups.

Timing: round-robin over the contenders, so a change in machine load hits all of them alike; medians of
``--repeat`` calls; a short pause whenever the next call uses another library's thread pool, because pools
that busy-wait after their work (OpenBLAS, OpenMP) would otherwise steal the next library's cores, followed
by two untimed calls, because the first calls after a pause are slow (parked threads, cold caches).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import shapes as _shapes
from .measure import conv_kwargs, jax_dtype_scope, mismatch, random_inputs
from .problem import ConvProblem, make_problem
from .strategy import Plan

RES3 = make_problem("conv2d", (1, 128, 28, 28), (128, 128, 3, 3), "float32", False, padding=1)
SETTLE_S = 0.1
AFTER_PAUSE_CALLS = 2


@dataclass(frozen=True)
class Contender:
    """One way to compute the problem: a label, a thread pool name and a zero-argument call."""

    label: str
    pool: str
    call: Callable[[], Any]


def _torch_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def contenders(problem: ConvProblem, x: np.ndarray, w: np.ndarray, *, peers: bool = True,
               skip: tuple[str, ...] = ()) -> list[Contender]:
    """gpuconv's ``auto`` choice (tuned or heuristic), every applicable CPU strategy variant not in ``skip``, and
    installed peers."""
    from . import conv1d, conv2d, cpu
    from . import plan as _plan

    fn = conv1d if problem.ndim == 1 else conv2d
    kw = conv_kwargs(problem)
    auto = _plan.choose(fn.__name__, problem, "cpu", cpu, "auto")
    out = [Contender(f"gpuconv auto ({_label(auto)}, {auto.source})", "numpy", lambda: fn(x, w, **kw))]
    for name, strategy in cpu.STRATEGIES.items():
        if name in skip or not strategy.supports(problem):
            continue
        for params in strategy.variants(problem):
            plan = Plan(name, params, "forced")
            out.append(Contender(_label(plan), "numpy",
                                 lambda plan=plan: cpu.execute(problem, plan, x, w, None)))
    if not peers:
        return out
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        pass
    else:
        t, b, l, r = problem.padding
        f = jax.jit(lambda a, c: jax.lax.conv_general_dilated(
            a, c, problem.stride, ((t, b), (l, r)), rhs_dilation=problem.dilation,
            dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=problem.groups,
            precision=jax.lax.Precision.HIGHEST))
        with jax_dtype_scope(jax, problem.dtype):
            x4 = jnp.asarray(x.reshape(problem.n, problem.c, problem.h, problem.w))
            w4 = jnp.asarray(w.reshape(problem.k, problem.cg, problem.r, problem.s))

        def run_jax() -> Any:
            with jax_dtype_scope(jax, problem.dtype):
                return f(x4, w4).block_until_ready()

        out.append(Contender("jax.lax", "xla", run_jax))
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(_torch_threads())
        tf = torch.nn.functional.conv1d if problem.ndim == 1 else torch.nn.functional.conv2d
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        pad = problem.padding[2] if problem.ndim == 1 else (problem.padding[0], problem.padding[2])
        symmetric = problem.padding[0] == problem.padding[1] and problem.padding[2] == problem.padding[3]
        if symmetric:
            tkw = dict(stride=kw["stride"], padding=pad, dilation=kw["dilation"], groups=problem.groups)
            out.append(Contender(f"torch (threads={torch.get_num_threads()})", "torch", lambda: tf(tx, tw, **tkw)))
    return out


def _label(plan: Plan) -> str:
    return plan.strategy + "".join(f" {k}={v}" for k, v in sorted(plan.params.items()))


def time_round_robin(cands: list[Contender], repeat: int, *, warmup: int = 2, budget_s: float = 1.0,
                     settle_s: float | None = None, stat: str = "median") -> dict[str, float]:
    """Seconds per call of each contender (median or min of its calls), timed round-robin with ``perf_counter``.

    A contender whose calls are slow gets fewer rounds (at least 3) so that it spends about ``budget_s``.
    The minimum estimates the time on an otherwise idle machine when other jobs share the cores.
    """
    settle_s = SETTLE_S if settle_s is None else settle_s
    samples: dict[str, list[float]] = {c.label: [] for c in cands}
    rounds: dict[str, int] = {}
    for c in cands:
        t0 = time.perf_counter()
        for _ in range(warmup):
            c.call()
        per_call = (time.perf_counter() - t0) / max(warmup, 1)
        rounds[c.label] = max(3, min(repeat, int(budget_s / max(per_call, 1e-9))))
    last_pool = None
    for i in range(repeat):
        for c in cands:
            if i >= rounds[c.label]:
                continue
            if c.pool != last_pool:
                # Let the previous library's spinning threads park, then wake this library's threads with
                # untimed calls: the first two calls after a pause run up to 2x and 1.3x slower (parked
                # threads, cold caches), and a contender alone in its pool would always be timed that way.
                time.sleep(settle_s)
                for _ in range(AFTER_PAUSE_CALLS):
                    c.call()
                last_pool = c.pool
            t0 = time.perf_counter()
            c.call()
            samples[c.label].append(time.perf_counter() - t0)
    reduce = {"median": np.median, "min": np.min}[stat]
    return {label: float(reduce(s)) for label, s in samples.items()}


def check(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Largest error of every gpuconv contender against the jax.lax reference, relative to the output scale.

    Raises:
        AssertionError: a strategy misses the reference by more than the tolerance of the arithmetic
            (:func:`gpuconv.measure.mismatch`, the tuner's own check).
    """
    from . import reference

    expected = reference.run_problem(problem, x, w)
    scale = float(np.abs(expected).max())
    errors = {}
    for c in contenders(problem, x, w, peers=False):
        out = np.asarray(c.call())
        bad = mismatch(out, expected, problem)
        if bad is not None:
            raise AssertionError(f"demo: {c.label} differs from the reference: {bad}")
        errors[c.label] = float(np.abs(out.astype(np.float64) - expected).max()) / scale
    return errors


def _inputs(problem: ConvProblem, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x, w, _ = random_inputs(problem, np.random.default_rng(seed))
    return x, w


def demo_one(problem: ConvProblem, repeat: int, stat: str = "median") -> None:
    """Check and time one problem; print a table."""
    x, w = _inputs(problem)
    print(f"x {problem.x_shape}, w {problem.w_shape}, stride {problem.stride}, padding {problem.padding}, "
          f"{problem.dtype}, {problem.flops / 1e9:.3f} GFLOP")
    try:
        errors = check(problem, x, w)
    except ImportError:
        errors = {}
        print("(jax is not installed: results are not checked against the reference)")
    times = time_round_robin(contenders(problem, x, w), repeat, stat=stat)
    width = max(map(len, times))
    print(f"{'':{width}}  {stat + ' ms':>9}  {'GFLOP/s':>7}  {'max rel err':>11}")
    for label, t in times.items():
        err = f"{errors[label]:.1e}" if label in errors else ""
        print(f"{label:{width}}  {t * 1e3:9.3f}  {problem.flops / t / 1e9:7.1f}  {err:>11}")


def demo_set(spec: str, repeat: int, batch: int | None, stat: str = "median") -> None:
    """Time every layer of a shape set; print per-layer ratios and geometric means against the peers."""
    layers = _shapes.load(spec, batch=batch)
    rows: list[tuple[str, dict[str, float]]] = []
    for shape in layers:
        x, w = _inputs(shape.problem)
        # FFT takes seconds on the small kernels of most networks; it is timed where kernels are large.
        skip = () if shape.problem.r * shape.problem.s >= 25 else ("fft",)
        cands = contenders(shape.problem, x, w, skip=skip)
        times = time_round_robin(cands, repeat, stat=stat)
        ours = {k: v for k, v in times.items() if not _is_peer(k)}
        times["gpuconv best"] = min(ours.values())
        rows.append((shape.name, times))
        ratios = "  ".join(f"{p.split()[0]}/auto={t / times[auto]:.2f}" for p, t in times.items() if _is_peer(p)
                           for auto in [next(k for k in times if k.startswith("gpuconv auto"))])
        print(f"{shape.name:24s} " + "  ".join(f"{k}={v * 1e3:.3f}" for k, v in times.items()) + "  | " + ratios,
              flush=True)
    peers = sorted({k for _, t in rows for k in t if _is_peer(k)})
    # Strategy variants apply to some layers only; the geometric mean of each is over the layers it covers.
    labels = sorted({_short(k) for _, t in rows for k in t if not _is_peer(k)})
    print(f"\nspeed-up of gpuconv over each peer, geometric mean over the layers each strategy applies to "
          f"({len(rows)} layers, {stat} of {repeat} calls):")
    print(f"{'':32}" + "".join(f"{p:>26}" for p in peers) + "  layers")
    for label in labels:
        cells, n = [], 0
        for peer in peers:
            ratios = [t[peer] / v for _, t in rows for k, v in t.items() if _short(k) == label and peer in t]
            n = len(ratios)
            cells.append(f"{np.exp(np.mean(np.log(ratios))):26.3f}" if ratios else f"{'':26}")
        print(f"{label:32}" + "".join(cells) + f"  {n:6d}")


def _is_peer(label: str) -> bool:
    return label.startswith(("jax", "torch"))


def _short(label: str) -> str:
    return "gpuconv auto" if label.startswith("gpuconv auto") else label


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see ``python -m gpuconv.demo --help``."""
    ap = argparse.ArgumentParser(prog="python -m gpuconv.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", help="time every layer of a shape set (e.g. resnet50) instead of res3's 3x3")
    ap.add_argument("--batch", type=int, help="override the batch size of every layer of --shapes")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per contender (20; 11 with --shapes)")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic of the timed calls (min: estimate for a machine shared with other jobs)")
    args = ap.parse_args(argv)
    import numpy

    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"numpy {numpy.__version__}, {os.cpu_count()} CPUs{load}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')!r}")
    if args.shapes:
        demo_set(args.shapes, args.repeat or 11, args.batch, args.stat)
    else:
        demo_one(RES3, args.repeat or 20, args.stat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
