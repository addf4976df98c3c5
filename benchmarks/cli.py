"""``python -m benchmarks``: parse the command line, run under the requested OpenBLAS core type(s), write files."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from gpuconv import shapes
from gpuconv.problem import DIRECTIONS

from . import machine
from .report import coretype_markdown, fmt_summary, markdown, stem, workload_stem, write_json
from .run import Config, benchmark, workload

RESULTS = Path(__file__).resolve().parent / "results"
_DEFAULT = "default"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time gpuconv (auto and every strategy) against jax.lax, PyTorch and a NumPy baseline on a "
                    "named shape set; write a markdown table, a JSON with every number, and PNG plots.")
    p.add_argument("--shapes", default="resnet50", help="shipped set name or path to a shapes JSON (resnet50)")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = cuda when CuPy sees a device, else cpu")
    p.add_argument("--batch", type=int, help="override every layer's batch size (default: as in the file)")
    p.add_argument("--dtype", choices=("float16", "float32", "float64"),
                   help="override every layer's dtype (default: as in the file, float32 where it states none)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--direction", choices=DIRECTIONS,
                       help="time this direction of every layer: forward (y), input (dx) or weight (dw) "
                            "(default: as in the file, forward where it states none)")
    which.add_argument("--directions", metavar="LIST",
                       help="'all' (forward, input and weight of every layer, in one result) or a comma-separated "
                            "list of directions")
    p.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<machine>/)")
    p.add_argument("--repeat", type=int, default=15, help="timed repetitions per contender and layer (15)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per contender before timing (2)")
    p.add_argument("--budget", type=float, default=5.0,
                   help="seconds of timed calls per contender and layer; slow ones get fewer repetitions (5)")
    p.add_argument("--settle", type=float,
                   help="seconds of pause when timing passes from one library's thread pool to another's "
                        "(default 0.15 on the CPU, 0 on a GPU and with --quick)")
    p.add_argument("--contenders", help="comma-separated names or patterns, e.g. 'gpuconv:*,torch' (all)")
    p.add_argument("--skip", help="comma-separated names or patterns to leave out, e.g. 'gpuconv:fft'")
    p.add_argument("--quick", action="store_true", help="a few repetitions and a short sweep: a smoke run")
    p.add_argument("--no-scaling", action="store_true", help="skip the time-against-input-size sweep")
    p.add_argument("--scaling-sizes", help="comma-separated H=W sizes of the sweep (8,16,...,512)")
    p.add_argument("--scaling-channels", type=int, default=16, help="C = K of the sweep's 3x3 convolution (16)")
    p.add_argument("--naive-max", type=int, default=64, help="largest H=W the naive loops run at (64)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before timing, wait up to SECONDS for the 1-minute load average to fall below 0.3 x cores")
    p.add_argument("--no-plots", action="store_true", help="write no PNG files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--openblas-coretype", metavar="NAME",
                   help="run with OPENBLAS_CORETYPE=NAME (e.g. SKYLAKEX, HASWELL), in a fresh process: "
                        "OpenBLAS reads it only when NumPy loads")
    p.add_argument("--compare-coretypes", nargs="?", const=f"{_DEFAULT},SKYLAKEX", metavar="LIST",
                   help="run once per core type (comma-separated; 'default' = OpenBLAS's own choice) and write a "
                        f"comparison; with no LIST: {_DEFAULT},SKYLAKEX")
    return p


def directions_from(args: argparse.Namespace) -> list[str] | None:
    """The directions ``--direction``/``--directions`` ask for; None (each layer's own) when neither is given.

    Raises:
        ValueError: a ``--directions`` entry that is not a direction.
    """
    if args.direction:
        return [args.direction]
    if not args.directions:
        return None
    if args.directions.strip() == "all":
        return list(DIRECTIONS)
    wanted = [d.strip() for d in args.directions.split(",") if d.strip()]
    bad = [d for d in wanted if d not in DIRECTIONS]
    if bad or not wanted:
        raise ValueError(f"--directions: must be 'all' or a list of {', '.join(DIRECTIONS)}, got {args.directions!r}")
    return [d for d in DIRECTIONS if d in wanted]


def config_from(args: argparse.Namespace, command: str) -> Config:
    """The :class:`Config` the parsed arguments describe.

    Raises:
        ValueError: a bad ``--directions`` list.
    """
    cfg = Config(shapes=args.shapes, backend=args.backend, batch=args.batch, dtype=args.dtype,
                 directions=directions_from(args), out=args.out,
                 repeat=args.repeat, warmup=args.warmup, budget_s=args.budget, settle_s=args.settle,
                 quick=args.quick, scaling=not args.no_scaling, scaling_channels=args.scaling_channels,
                 naive_max=args.naive_max,
                 progress=not args.no_progress, plots=not args.no_plots, wait_idle_s=args.wait_idle,
                 command=command)
    if args.contenders:
        cfg.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if args.skip:
        cfg.skip = [c.strip() for c in args.skip.split(",") if c.strip()]
    if args.scaling_sizes:
        cfg.scaling_sizes = [int(s) for s in args.scaling_sizes.split(",")]
    return cfg


def _command(argv: Sequence[str]) -> str:
    env = os.environ.get("OPENBLAS_CORETYPE")
    return (f"OPENBLAS_CORETYPE={env} " if env else "") + "python -m benchmarks " + shlex.join(argv)


def _without(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` minus ``flag`` and its value (``--flag V``, ``--flag=V`` or a bare ``--flag``)."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == flag:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            skip = nxt is not None and not nxt.startswith("--")
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def _child(argv: list[str], coretype: str | None) -> int:
    """Run the benchmark in a fresh interpreter with ``OPENBLAS_CORETYPE`` set (None: unset)."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    cwd = Path(__file__).resolve().parent.parent  # so that ``-m benchmarks`` resolves to this package
    return subprocess.run([sys.executable, "-m", "benchmarks", *argv], env=env, cwd=cwd, check=False).returncode


def write(result: dict, out: Path, plots: bool) -> list[Path]:
    """Write the JSON, the plots and the markdown page of ``result`` into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    name = stem(result)
    pngs: list[str] = []
    if plots:
        try:
            from . import plots as plots_mod

            pngs = plots_mod.write_all(result, out, name)
        except ImportError as e:
            result["settings"]["plots_skipped"] = f"matplotlib is not installed ({e}): pip install 'gpuconv[bench]'"
    result["plots"] = pngs
    write_json(out / f"{name}.json", result)
    (out / f"{name}.md").write_text(markdown(result, pngs))
    return [out / f"{name}.json", out / f"{name}.md", *(out / p for p in pngs)]


def compare_coretypes(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the benchmark once per requested core type, each in its own process, and write a comparison page."""
    base = _without(_without(argv, "--compare-coretypes"), "--openblas-coretype")
    out = (args.out or RESULTS / machine.slug("cpu")).resolve()
    base = _without(base, "--out") + ["--out", str(out)]
    loaded = shapes.load(args.shapes, batch=args.batch, dtype=args.dtype, directions=directions_from(args))
    work = workload(s.problem for s in loaded)
    results: dict[str, dict | str] = {}
    status = 0
    for coretype in [c.strip() for c in args.compare_coretypes.split(",") if c.strip()]:
        forced = None if coretype.lower() == _DEFAULT else coretype
        if forced:
            ok, detail = machine.probe_coretype(forced)
            if not ok:
                print(f"skipping {coretype}: {detail}", file=sys.stderr)
                results[coretype] = f"not run: {detail}"
                continue
        code = _child(base, forced)
        if code != 0:
            results[coretype] = f"not run: the benchmark exited with {code}"
            status = 1
            continue
        results[coretype] = json.loads((out / f"{workload_stem(args.shapes, work, forced)}.json").read_text())
    page = out / f"{workload_stem(args.shapes, work, None)}_coretypes.md"
    out.mkdir(parents=True, exist_ok=True)
    page.write_text(coretype_markdown(results))
    print(f"wrote {page}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.compare_coretypes:
        try:
            return compare_coretypes(args, argv)
        except ValueError as e:  # a bad shapes file or --directions list
            print(f"error: {e}", file=sys.stderr)
            return 2
    want = args.openblas_coretype
    if want and os.environ.get("OPENBLAS_CORETYPE", "").upper() != want.upper():
        ok, detail = machine.probe_coretype(want)
        if not ok:
            print(f"error: {detail}", file=sys.stderr)
            return 2
        return _child(argv, want)
    try:
        cfg = config_from(args, _command(argv))
        result = benchmark(cfg)
    except ValueError as e:  # a bad shapes file, contender pattern or backend: say so, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    chosen = result["machine"].get("blas", {}).get("architecture", "")
    if want and chosen.upper() != want.upper():
        print(f"warning: OPENBLAS_CORETYPE={want} but OpenBLAS reports core type {chosen}", file=sys.stderr)
    out = cfg.out or RESULTS / result["machine"]["slug"]
    paths = write(result, out, cfg.plots)
    print(fmt_summary(result))
    for p in paths:
        print(f"wrote {p}")
    return 0
