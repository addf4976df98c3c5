"""Timers for each kind of contender, interleaved repetitions, and robust statistics.

Every contender is timed in the same process, round-robin: repetition ``i`` runs each contender once
before repetition ``i + 1`` starts, so slow drifts of the machine (another job starting, clocks changing)
hit every contender alike instead of whichever happened to run last. The order within a round is drawn
afresh each round (seeded), grouped by thread pool, so that no contender always follows the same neighbour.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np

Thunk = Callable[[], Any]
Timer = Callable[[Thunk], float]


def wall_timer(thunk: Thunk) -> float:
    """Seconds of wall time for one call; the thunk must return only once its result is ready."""
    t0 = time.perf_counter()
    thunk()
    return time.perf_counter() - t0


def cupy_event_timer(thunk: Thunk) -> float:
    """Seconds between two CUDA events recorded around the call on CuPy's current stream."""
    import cupy

    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    thunk()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


def torch_event_timer(thunk: Thunk) -> float:
    """Seconds between two ``torch.cuda.Event``s recorded around the call on PyTorch's current stream."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    thunk()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


TIMERS: dict[str, Timer] = {"wall": wall_timer, "cupy-events": cupy_event_timer, "torch-events": torch_event_timer}


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings, in seconds."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples: list[float]) -> Stats:
    """Median, quartiles and range of ``samples`` (at least one)."""
    a = np.asarray(samples, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Stats(float(med), float(q1), float(q3), float(a.min()), float(a.max()), int(a.size))


@dataclass(frozen=True)
class Entry:
    """One contender to time: the call, its timer, how many timed repetitions it may have at most, the thread
    pool it runs on (entries of one pool follow each other without a pause; see :func:`interleaved`) and how
    many untimed calls warm it up (caches, allocators, lazy compiles)."""

    thunk: Thunk
    timer: Timer
    repeat: int
    pool: str = ""
    warmup: int = 1


def interleaved(entries: Mapping[str, Entry], *, settle_s: float = 0.0,
                on_step: Callable[[str, int], None] | None = None) -> dict[str, list[float]]:
    """Time every entry round-robin (pools in random order, entries of a pool together in random order).

    Returns each entry's samples (seconds), keyed like ``entries``.

    Args:
        entries: name -> what to run; an entry with a smaller ``repeat`` drops out of later rounds.
        settle_s: pause before a call whose ``pool`` differs from the previous call's, followed by one
            untimed call. CPU thread pools busy-wait after their work (OpenBLAS for about 2**28 cycles,
            ~0.1 s), and on a machine with few cores those spinning threads steal the next library's cores;
            the pause lets them park, and the untimed call wakes the next pool up, so that every timed call
            finds its own pool hot and the others asleep, as in a program that uses one library.
        on_step: called with ``(name, round)`` before each timed call (a progress display).
    """
    samples: dict[str, list[float]] = {name: [] for name in entries}
    last = [None]

    def settle(entry: Entry) -> None:
        if settle_s > 0 and last[0] is not None and last[0] != entry.pool:
            time.sleep(settle_s)
            entry.thunk()
        last[0] = entry.pool

    for entry in entries.values():
        settle(entry)
        for _ in range(entry.warmup):
            entry.thunk()
    pools: dict[str, list[str]] = {}
    for name, entry in entries.items():
        pools.setdefault(entry.pool, []).append(name)
    rng = random.Random(0)
    rounds = max((e.repeat for e in entries.values()), default=0)
    for i in range(rounds):
        order = list(pools)
        rng.shuffle(order)
        for pool in order:
            names = [n for n in pools[pool] if i < entries[n].repeat]
            rng.shuffle(names)
            for name in names:
                entry = entries[name]
                if on_step is not None:
                    on_step(name, i)
                settle(entry)
                samples[name].append(entry.timer(entry.thunk))
    return samples


def plan_repeats(seconds_per_call: float, repeat: int, warmup: int, budget_s: float) -> tuple[int, int]:
    """``(timed repetitions, warm-up calls)`` that fit about ``budget_s`` for a call of ``seconds_per_call``.

    At least 3 timed calls, at most ``repeat``; a call longer than the whole budget is timed once, unwarmed
    (its first call, the correctness check, already warmed it).
    """
    if seconds_per_call > budget_s:
        return 1, 0
    if seconds_per_call <= 0:
        return repeat, warmup
    return max(min(repeat, 3), min(repeat, int(budget_s / seconds_per_call))), warmup
