"""ptxas over every point of every CUDA tuning space: registers, spills and shared memory, stored as data.

``nice -n 19 python -m benchmarks.ptxas_sweep`` enumerates each CUDA strategy's valid variants
(``Strategy.variants``, the autotuner's enumeration) for every direction and every dtype (and precision) it
serves, on probe problems large enough that no problem-dependent constraint (split counts, channels per block)
removes a point; it runs each variant's ``run`` on a recording executor to learn which (kernel, parameters,
dtype) binaries the runtime would build and which functions it launches; it compiles each binary once per
architecture with NVRTC (:func:`gpuconv.cuda.ptxas.resources`, the runtime's source and options) on a process
pool, and writes :data:`gpuconv.cuda.occupancy.REPORT_PATH`: schema version, toolkit versions, options, each
kernel file's hash (:func:`gpuconv.cuda.source.kernel_hash`), the number of variants per space, and per binary
the resources of every function. ``tests/test_cuda_spills.py`` checks the file against the current spaces.

Figures of the file being replaced are reused, per architecture, for binaries whose kernel hash, options and
toolkit are unchanged (a kernel edit recompiles that kernel's binaries only); ``--fresh`` recompiles
everything. ``--check`` compares instead of writing (exit 1 on a missing point, a stale hash or a spill);
``--arch`` chooses the architectures (default: the stored report's, sm_90 and sm_80, the real architectures of
CI's compute_90 and compute_80); ``--jobs`` sets the pool size (default: every core; run it niced on a shared
machine). Every binary of the spaces compiled afresh: 1,795 in 568 s on a 2-core Intel Xeon for sm_90, 0.63 s
each; 1,718 for sm_90 and sm_80 in 349 s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from gpuconv.cuda import TABLES
from gpuconv.cuda.compile import EFFECTIVE_OPTIONS
from gpuconv.cuda.executor import RecordingExecutor
from gpuconv.cuda.occupancy import REPORT_PATH, REPORT_SCHEMA
from gpuconv.cuda.ptxas import resources
from gpuconv.cuda.source import kernel_hash
from gpuconv.problem import DTYPES, PRECISIONS, ConvProblem, make_problem

#: Probe problems per direction: the first ones a strategy supports in a dtype give its variants (their union
#: over the probes it supports). 256 channels per group and 32 x 32 images keep every split count and channel
#: block of the spaces valid; the 1x1 probe is for ``pointwise``, the depthwise one for strategies limited to it.
PROBES: dict[str, tuple[dict[str, Any], ...]] = {
    "forward": (dict(x=(2, 256, 32, 32), w=(256, 256, 3, 3), padding=1),
                dict(x=(2, 256, 32, 32), w=(256, 256, 1, 1)),
                dict(x=(2, 256, 32, 32), w=(256, 1, 3, 3), padding=1, groups=256)),
    "input": (dict(x=(2, 256, 32, 32), w=(256, 256, 3, 3), padding=1, stride=2),),
    "weight": (dict(x=(2, 256, 32, 32), w=(256, 256, 3, 3), padding=1, stride=2),),
}
#: Strategies whose kernels are other strategies' (``rewrite`` runs the forward kernels).
DERIVED = {"rewrite"}

Binary = tuple[str, tuple[tuple[str, int], ...], str]  # kernel, params, dtype




def probes(direction: str, name: str, dtype: str) -> list[ConvProblem]:
    """The probe problems (at every precision) that the strategy supports in ``dtype``."""
    out = []
    for spec in PROBES[direction]:
        for precision in PRECISIONS:
            s = dict(spec)
            problem = make_problem("conv2d", s.pop("x"), s.pop("w"), dtype, direction == "forward",
                                   precision=precision, direction=direction, **s)
            if TABLES[direction][name].supports(problem):
                out.append(problem)
    return out


def _operands(pr: ConvProblem) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    x, w, y = (pr.n, pr.c, pr.h, pr.w), (pr.k, pr.cg, pr.r, pr.s), pr.out_shape4
    return {"forward": (x, w, y), "input": (y, w, x), "weight": (x, y, w)}[pr.direction]


def launches(direction: str, name: str, params: Mapping[str, int], problem: ConvProblem) -> list[tuple[Any, ...]]:
    """(kernel, func, params, dtype) of every launch the variant makes on ``problem``."""
    a, b, out = _operands(problem)
    ex = RecordingExecutor()
    bias = np.ones(problem.k, problem.dtype) if direction == "forward" else None
    TABLES[direction][name].run(ex, problem, dict(params), np.ones(a, problem.dtype), np.ones(b, problem.dtype),
                                bias, np.empty(out, problem.dtype))
    return ex.launches


def spaces() -> Iterable[tuple[str, str, str]]:
    """(direction, strategy, dtype) of every dedicated CUDA strategy and dtype it serves."""
    for direction in sorted(TABLES):
        for name in sorted(TABLES[direction]):
            if name in DERIVED:
                continue
            for dtype in DTYPES:
                if probes(direction, name, dtype):
                    yield direction, name, dtype


def enumerate_points() -> tuple[dict[Binary, set[str]], dict[str, int]]:
    """Every binary of every space with the functions launched from it, and the variant count of each space
    (keyed ``direction/strategy/dtype``)."""
    binaries: dict[Binary, set[str]] = {}
    counts: dict[str, int] = {}
    for direction, name, dtype in spaces():
        seen: dict[tuple[tuple[str, int], ...], ConvProblem] = {}
        for problem in probes(direction, name, dtype):
            for v in TABLES[direction][name].variants(problem):
                seen.setdefault(tuple(sorted(v.items())), problem)
        counts[f"{direction}/{name}/{dtype}"] = len(seen)
        for v, problem in seen.items():
            for kernel, func, kparams, kdtype in launches(direction, name, dict(v), problem):
                binaries.setdefault((kernel, kparams, kdtype), set()).add(func)
    return binaries, counts


def _compile(job: tuple[Binary, tuple[str, ...]]) -> tuple[Binary, dict[str, dict[str, dict[str, int]]], float]:
    (kernel, params, dtype), archs = job
    t0 = time.perf_counter()
    out = {arch: {f: r.as_dict() for f, r in sorted(resources(kernel, dict(params), dtype, arch).items())}
           for arch in archs}
    return (kernel, params, dtype), out, time.perf_counter() - t0


def toolkit() -> dict[str, str]:
    """The compiler versions the figures come from."""
    import cupy
    from cupy_backends.cuda.libs import nvrtc

    return {"nvrtc": ".".join(map(str, nvrtc.getVersion())), "cupy": cupy.__version__}


def reusable(previous: Mapping[str, Any] | None) -> dict[Binary, dict[str, Any]]:
    """The figures of ``previous`` (a stored report) that still hold, per binary and architecture: same schema,
    options and toolkit, and the binary's kernel source unchanged."""
    if previous is None:
        return {}
    now = {"schema": REPORT_SCHEMA, "options": list(EFFECTIVE_OPTIONS), "toolkit": toolkit()}
    if any(previous.get(k) != v for k, v in now.items()):
        return {}
    same = {k for k, h in previous["kernels"].items() if h == kernel_hash(k)}
    return {(p["kernel"], tuple(sorted(p["params"].items())), p["dtype"]): {a: p[a] for a in previous["archs"]}
            for p in previous["points"] if p["kernel"] in same}


def sweep(archs: Sequence[str], jobs: int, previous: Mapping[str, Any] | None = None,
          log: Any = sys.stderr) -> dict[str, Any]:
    """The report of every point (see the module docstring), reusing what still holds of ``previous``."""
    binaries, counts = enumerate_points()
    order = sorted(binaries)
    old = reusable(previous)
    found: dict[Binary, dict[str, Any]] = {b: {a: old[b][a] for a in archs if a in old.get(b, {})} for b in order}
    todo = [(b, tuple(a for a in archs if a not in found[b])) for b in order]
    todo = [job for job in todo if job[1]]
    compiles = sum(len(a) for _, a in todo)
    print(f"{len(order)} binaries ({sum(counts.values())} variants in {len(counts)} spaces) for {list(archs)}: "
          f"{len(order) * len(archs) - compiles} figures reused, {compiles} compiles on {jobs} processes", file=log)
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        for i, (key, res, _) in enumerate(pool.map(_compile, todo, chunksize=4)):
            found[key].update(res)
            if (i + 1) % 50 == 0 or i + 1 == len(todo):
                print(f"  {i + 1}/{len(todo)} in {time.perf_counter() - t0:.0f} s", file=log)
    points = []
    for key in order:
        kernel, params, dtype = key
        points.append({"kernel": kernel, "params": dict(params), "dtype": dtype,
                       "launched": sorted(binaries[key]), **found[key]})
    return {"schema": REPORT_SCHEMA, "toolkit": toolkit(), "options": list(EFFECTIVE_OPTIONS), "archs": list(archs),
            "kernels": {k: kernel_hash(k) for k in sorted({b[0] for b in order})}, "spaces": counts,
            "points": points}


def dumps(report: Mapping[str, Any]) -> str:
    """JSON with one point per line (diffs of a re-sweep show the points that changed)."""
    head = {k: v for k, v in report.items() if k != "points"}
    body = ",\n".join("  " + json.dumps(p, sort_keys=True) for p in report["points"])
    text = json.dumps(head, indent=1, sort_keys=True)
    return text[:-2] + ',\n "points": [\n' + body + "\n ]\n}\n"


def spilling(report: Mapping[str, Any]) -> list[str]:
    """A line per (binary, architecture, launched function) that spills."""
    out = []
    for p in report["points"]:
        for arch in report["archs"]:
            for func in p["launched"]:
                r = p[arch][func]
                if r["spill_stores"] or r["spill_loads"]:
                    out.append(f"{p['kernel']}.{func} {p['params']} {p['dtype']} {arch}: {r['registers']} registers, "
                               f"{r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ptxas_sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append",
                    help="real architecture (repeatable; default: those of --out, else sm_90)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes (default: every core)")
    ap.add_argument("--out", type=Path, default=REPORT_PATH, help=f"where to write (default {REPORT_PATH})")
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    ap.add_argument("--fresh", action="store_true", help="recompile every binary instead of reusing --out's figures")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be positive, got {args.jobs}")
    previous = None
    if args.out.is_file():
        try:
            previous = json.loads(args.out.read_text())
        except ValueError:
            print(f"{args.out} is not JSON; compiling every binary", file=sys.stderr)
    archs = args.arch or (previous or {}).get("archs") or ["sm_90"]
    t0 = time.perf_counter()
    report = sweep(archs, args.jobs, None if args.fresh or args.check else previous)
    spills = spilling(report)
    print(f"{len(report['points'])} binaries in {time.perf_counter() - t0:.0f} s; {len(spills)} spilling",
          file=sys.stderr)
    for line in spills:
        print("  " + line, file=sys.stderr)
    if args.check:
        stored = previous or {}
        same = {k: stored.get(k) == report[k] for k in ("kernels", "spaces", "points")}
        print(f"{args.out}: " + ", ".join(f"{k} {'match' if v else 'DIFFER'}" for k, v in same.items()),
              file=sys.stderr)
        return 0 if all(same.values()) and not spills else 1
    args.out.write_text(dumps(report))
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if spills else 0


if __name__ == "__main__":
    sys.exit(main())
