"""``python -m gpuconv.autotune``: tune a shape set on this machine and remember the decisions.

``--verify`` re-times stored decisions against their alternatives instead of tuning, and replaces those that
no longer win. Timings run under a machine-wide lock, so concurrent tuners wait for each other's timings.

Exit status: 0 when every shape is decided (provisional decisions included), 1 when some shape had no correct
candidate, 2 for bad arguments or input (the message names the entry and field), 130 when interrupted (Ctrl-C
stops after the current trial; everything decided before is already saved).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Sequence

from .. import cache as _cache
from .. import plan as _plan
from .. import shapes as _shapes
from ..problem import DIRECTIONS, DTYPES
from . import report
from .storage import make_storage
from .target import current_device, make_target, resolve_backend
from .timing import TimingLock
from .workload import stored_shapes, tune_shapes, verify_shapes

PROG = "python -m gpuconv.autotune"


def _directions(text: str | None) -> tuple[str, ...] | None:
    """``--directions``: None (each entry's own), ``all``, or a comma-separated list of :data:`DIRECTIONS`."""
    if text is None:
        return None
    if text.strip() == "all":
        return DIRECTIONS
    chosen = tuple(d.strip() for d in text.split(",") if d.strip())
    bad = [d for d in chosen if d not in DIRECTIONS]
    if bad or not chosen:
        raise ValueError(f"--directions must be 'all' or a comma-separated list of {', '.join(DIRECTIONS)}, "
                         f"got {text!r}")
    return chosen


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return v


def parser() -> argparse.ArgumentParser:
    """The argument parser (also the ``--help`` text)."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Tune gpuconv's strategy and kernel parameters for a set of convolution shapes on "
        "this machine, checking every candidate against jax.lax, and store the winners where conv2d(strategy='auto') "
        "finds them.",
        epilog="A second run over the same shapes is all cache hits (zero trials) unless --force; decisions "
        "taken under heavy load are provisional and re-timed by the next run. Ctrl-C stops after the current "
        "trial and keeps what was decided (exit 130).")
    p.add_argument("--shapes", default=None, help="a shapes JSON file, or a shipped set name "
                   "(audio1d, mobilenet_v2, resnet50, unet, vgg16); required unless --verify")
    p.add_argument("--verify", action="store_true", help="re-time stored decisions (of --shapes, else all of this "
                   "machine's) against their alternatives and replace those that no longer win; run it when the "
                   "machine is quiet")
    p.add_argument("--allow-noisy", action="store_true", help="store decisions taken under heavy load as final "
                   "(default: provisional, re-timed by the next run or --verify)")
    p.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to tune: auto = cuda if a CUDA device is usable, else cpu (default: auto)")
    p.add_argument("--trials", type=_positive_int, default=32, help="trials per shape; spaces with at most this "
                   "many valid points are enumerated exhaustively (default: 32)")
    p.add_argument("--timeout", type=_positive_float, default=None, help="seconds per shape (checked between trials)")
    p.add_argument("--storage", default=None, help="Optuna storage shared by several tuning processes: a URL "
                   "(sqlite:///tune.db, postgresql://...) or a journal file path")
    p.add_argument("--cache-dir", default=None, help="where decisions are stored (default: $GPUCONV_CACHE_DIR, "
                   "else the user cache directory)")
    p.add_argument("--device", type=int, default=None, help="CUDA device index (cuda backend only)")
    p.add_argument("--batch", type=_positive_int, default=None, help="override every shape's batch size N")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="override every shape's dtype")
    p.add_argument("--directions", default=None, metavar="LIST",
                   help="tune these directions of every shape instead of each entry's own: a comma-separated list "
                        "of forward, input, weight, or 'all' (the three convolutions of a training step)")
    p.add_argument("--report", metavar="FILE", default=None, help="write a markdown report to FILE")
    p.add_argument("--json", metavar="FILE", nargs="?", const="-", default=None,
                   help="write machine-readable results to FILE, or to stdout without FILE")
    p.add_argument("--force", action="store_true", help="re-tune shapes that are already in the cache")
    p.add_argument("--seed", type=int, default=0, help="seed for the inputs and the sampler (default: 0)")
    p.add_argument("--no-jax", action="store_true", help="do not time jax.lax for the comparison column")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class _StopOnSigint:
    """The first Ctrl-C asks the tuner to stop after the current trial; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{PROG}: interrupted; stopping after the current trial (Ctrl-C again to abort now)",
              file=sys.stderr, flush=True)


def _error(message: str, status: int = 2) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    if args.shapes is None and not args.verify:
        return _error("--shapes is required (or --verify, to re-time every stored decision)")
    try:
        backend = resolve_backend(args.backend)
        if args.device is not None:
            if backend != "cuda":
                return _error("--device applies to the cuda backend only")
            import cupy

            if not 0 <= args.device < cupy.cuda.runtime.getDeviceCount():
                return _error(f"--device {args.device} does not exist "
                              f"({cupy.cuda.runtime.getDeviceCount()} CUDA devices)")
            cupy.cuda.Device(args.device).use()
        shape_set = None if args.shapes is None else _shapes.load(args.shapes, batch=args.batch, dtype=args.dtype,
                                                                   directions=_directions(args.directions))
        storage = make_storage(args.storage)
    except Exception as e:  # bad shapes, backend or storage, or a missing package: say what, no traceback
        return _error(str(e))
    store = _cache.TuningCache(args.cache_dir)
    waited: list[Path] = []

    def on_wait(path: Path) -> None:
        if not waited:  # once per run; every wait is counted in the JSON and logged
            print(f"{PROG}: waiting for the timing lock {path}: another tuner is timing on this machine",
                  file=sys.stderr, flush=True)
        waited.append(path)

    target = make_target(backend)
    lock = target.lock
    assert isinstance(lock, TimingLock)
    lock.on_wait = on_wait
    device = current_device(backend)
    cache_path = store.path(_plan.cache_file(backend, device))
    if shape_set is None:
        shape_set = stored_shapes(target, store)
    info: dict[str, Any] = {"backend": backend, "machine": dict(_plan.fingerprint(backend, device)),
                            "shapes": str(args.shapes) if args.shapes else "stored decisions",
                            "mode": "verify" if args.verify else "tune", "trials": args.trials,
                            "timeout_s": args.timeout, "seed": args.seed, "cache_file": str(cache_path),
                            "storage": args.storage, "allow_noisy": args.allow_noisy}

    stop = _StopOnSigint()
    previous = signal.signal(signal.SIGINT, stop)
    started = time.perf_counter()
    try:
        outcomes, aborted = _run(args, shape_set, target, store, storage, stop)
    except ImportError as e:  # JAX (the reference) or Optuna missing
        return _error(str(e))
    except OSError as e:  # the cache directory cannot be written or locked (filelock.Timeout is an OSError)
        return _error(f"cannot write the tuning cache in {store.directory}: {e}", 1)
    finally:
        signal.signal(signal.SIGINT, previous)
    elapsed = time.perf_counter() - started
    info["timing_lock"] = {**lock.stats(), "held": [[round(a, 6), round(b, 6)] for a, b in lock.held]}
    return _finish(args, outcomes, info, len(shape_set), elapsed, stop.requested or aborted, cache_path)


def _run(args: argparse.Namespace, shape_set: list[Any], target: Any, store: _cache.TuningCache, storage: Any,
         stop: _StopOnSigint) -> tuple[list[Any], bool]:
    outcomes: list[Any] = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the tune extra
        tqdm = None
    bar = None if tqdm is None or args.quiet else tqdm(total=len(shape_set), file=sys.stderr, unit="shape",
                                                       dynamic_ncols=True)

    def on_start(shape: Any) -> None:
        if bar is not None:
            bar.set_description(shape.name)
            bar.set_postfix_str("reference...")

    def on_trial(trial: Any, best: float, done: int) -> None:
        if bar is not None:
            shown = report.fmt_time(best if best != float("inf") else None)
            bar.set_postfix_str(f"trial {done}/{args.trials} best {shown}")

    if args.verify:
        outcomes_of = verify_shapes(shape_set, target, store, seed=args.seed, allow_noisy=args.allow_noisy,
                                    should_stop=lambda: stop.requested, on_start=on_start)
    else:
        outcomes_of = tune_shapes(shape_set, target, store, trials=args.trials, timeout=args.timeout, seed=args.seed,
                                  storage=storage, force=args.force, compare_jax=not args.no_jax,
                                  allow_noisy=args.allow_noisy, should_stop=lambda: stop.requested,
                                  on_start=on_start, on_trial=on_trial)
    try:
        for outcome in outcomes_of:
            outcomes.append(outcome)
            if bar is not None:
                bar.set_description(outcome.shape.name)
                bar.set_postfix_str(outcome.status)
                bar.update(1)
    except KeyboardInterrupt:  # a second Ctrl-C: every stored decision is already on disk (atomic writes)
        return outcomes, True
    finally:
        if bar is not None:
            bar.close()
    return outcomes, False


def _finish(args: argparse.Namespace, outcomes: list[Any], info: dict[str, Any], total: int, elapsed: float,
            interrupted: bool, cache_path: Path) -> int:
    human = sys.stderr if args.json == "-" else sys.stdout
    if outcomes:
        print(report.table(outcomes), file=human)
    s = report.summary(outcomes, total, elapsed)
    if args.report:
        Path(args.report).write_text(report.markdown(outcomes, info, total, elapsed), encoding="utf-8")
    if args.json == "-":
        print(report.document(outcomes, info, total, elapsed))
    elif args.json:
        Path(args.json).write_text(report.document(outcomes, info, total, elapsed) + "\n", encoding="utf-8")
    if args.verify:
        print(f"{s['verified']} verified, {s['replaced']} replaced, {s['unverified']} not re-timed (heavy load), "
              f"{s['missing']} without a stored decision, {s['failed']} failed, in {elapsed:.1f} s; decisions in "
              f"{cache_path}", file=human)
        if not total:
            print(f"{PROG}: no stored decisions for this machine in {cache_path}", file=sys.stderr)
    elif s["all_cache_hits"]:
        print(f"all {total} shapes were cache hits (0 trials run); decisions in {cache_path}", file=human)
    else:
        retimed = f", {s['verified'] + s['replaced']} provisional re-timed" if s['verified'] + s['replaced'] else ""
        print(f"{s['tuned']} tuned, {s['provisional']} provisional, {s['cached']} cache hits{retimed}, "
              f"{s['failed']} failed, {s['trials_run']} trials in {elapsed:.1f} s; decisions in {cache_path}",
              file=human)
    lock = info.get("timing_lock") or {}
    if lock.get("waits"):
        print(f"{PROG}: waited {lock['waits']} time(s), {lock['waited_s']:.1f} s in all, for the timing lock while "
              "another tuner was timing", file=sys.stderr)
    if s["provisional"]:
        names = ", ".join(o.shape.name for o in outcomes if o.status == "provisional")
        shapes = f" --shapes {args.shapes}" if args.shapes else ""
        print(f"{PROG}: {s['provisional']} decision(s) were taken under heavy load ({names}): stored as "
              f"provisional, used by 'auto' and re-timed by the next run; run '{PROG} --verify{shapes}' when the "
              "machine is quiet, or pass --allow-noisy to store them as final", file=sys.stderr)
    if s["unverified"]:
        print(f"{PROG}: {s['unverified']} stored decision(s) were not re-timed: the machine is under heavy load; "
              "nothing was replaced. Run again when it is quiet, or pass --allow-noisy", file=sys.stderr)
    if interrupted:
        saved = s["tuned"] + s["provisional"]
        decided = saved + s["cached"] + s["verified"] + s["replaced"] + s["unverified"]
        print(f"{PROG}: interrupted: {saved} newly decided shape(s) saved, {total - decided} "
              "not decided; run again to continue", file=sys.stderr)
        return 130
    if s["failed"]:
        names = ", ".join(o.shape.name for o in outcomes if o.status == "failed")
        print(f"{PROG}: no candidate matched the reference for: {names}", file=sys.stderr)
        return 1
    return 0
