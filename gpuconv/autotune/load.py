"""How busy the machine is while the tuner measures: other processes' CPU time, steal, the load average.

A probe opens a window and, when the window is closed, says what happened in it (a :class:`Load`). On Linux
the figures come from ``/proc/stat`` (every process's busy CPU time and the hypervisor's steal) minus this
process's own CPU time (``os.times``), so "others" is what the rest of the machine took while a candidate was
being timed. Elsewhere only the load average is known (``os.getloadavg``), less this process's share. Windows
add up, so the load of a whole decision is the sum of the windows its timings ran in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

#: Above this fraction of the machine taken by other work (or stolen), a timing is "loaded".
LOADED = 0.15
#: Above this fraction, a decision is taken under heavy load and is not stored as final.
HEAVY = 0.5
LEVELS = ("quiet", "loaded", "heavy")


@dataclass(frozen=True)
class Load:
    """What other work did to the machine during one or more windows.

    Attributes:
        wall_s: the windows' total wall time.
        others_s: CPU seconds that other processes used in them (all cores together).
        steal_s: CPU seconds the hypervisor gave to other guests.
        cores: the cores those seconds are shared by.
        loadavg: the highest 1-minute load average seen at the end of a window (None where unknown).
        source: ``"proc"`` (``/proc/stat``), ``"loadavg"`` (estimated from the load average) or ``"none"``.
    """

    wall_s: float = 0.0
    others_s: float = 0.0
    steal_s: float = 0.0
    cores: int = 1
    loadavg: float | None = None
    source: str = "none"

    @classmethod
    def fraction(cls, others: float, steal: float = 0.0, cores: int = 2, wall_s: float = 1.0) -> Load:
        """A window in which other work took ``others`` (and steal ``steal``) of the machine."""
        return cls(wall_s, others * wall_s * cores, steal * wall_s * cores, cores, None, "given")

    @property
    def others(self) -> float:
        """Fraction of the machine's CPU time other processes used (0 = idle, 1 = every core busy)."""
        return self.others_s / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0

    @property
    def steal(self) -> float:
        return self.steal_s / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0

    @property
    def contention(self) -> float:
        """Fraction of the machine not available to the tuner: other processes plus steal, at most 1."""
        return min(1.0, self.others + self.steal)

    @property
    def level(self) -> str:
        """``"quiet"``, ``"loaded"`` (above :data:`LOADED`) or ``"heavy"`` (above :data:`HEAVY`)."""
        c = self.contention
        return "heavy" if c >= HEAVY else "loaded" if c >= LOADED else "quiet"

    def __add__(self, other: Load) -> Load:
        if not self.wall_s:
            return other
        if not other.wall_s:
            return self
        avg = [v for v in (self.loadavg, other.loadavg) if v is not None]
        return Load(self.wall_s + other.wall_s, self.others_s + other.others_s, self.steal_s + other.steal_s,
                    max(self.cores, other.cores), max(avg) if avg else None,
                    self.source if self.source == other.source else "mixed")

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "others": round(self.others, 4), "steal": round(self.steal, 4),
                "contention": round(self.contention, 4), "loadavg": self.loadavg, "cores": self.cores,
                "measured_s": round(self.wall_s, 4), "source": self.source}


class LoadProbe(Protocol):
    """``probe()`` opens a window; calling what it returns closes it and gives the :class:`Load` meanwhile."""

    def __call__(self) -> Callable[[], Load]: ...


def no_load() -> Callable[[], Load]:
    """A probe that sees nothing (the default of a :class:`~gpuconv.autotune.target.Target` built by hand)."""
    return lambda: Load()


def _proc_stat() -> tuple[float, float, int] | None:
    """``(busy CPU seconds, steal seconds, cores)`` of the whole machine since boot, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    head = lines[0].split() if lines else []
    if not head or head[0] != "cpu" or len(head) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in head[1:8])
    steal = int(head[8]) if len(head) > 8 else 0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit()) or (os.cpu_count() or 1)
    return (user + nice + system + irq + softirq) / tick, steal / tick, cores


def _loadavg() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def system_load() -> Callable[[], Load]:
    """The machine's real probe (see the module docstring)."""
    wall0, own0, stat0 = time.perf_counter(), _own_cpu_s(), _proc_stat()

    def close() -> Load:
        wall = time.perf_counter() - wall0
        own = _own_cpu_s() - own0
        avg = _loadavg()
        stat1 = _proc_stat() if stat0 is not None else None
        if stat0 is not None and stat1 is not None:
            cores = stat1[2]
            busy = stat1[0] - stat0[0]
            # /proc/stat counts in clock ticks (10 ms): a short window reads 0 or a tick too many; the sum of
            # many windows is what decisions use, and that is accurate.
            return Load(wall, max(0.0, busy - own), max(0.0, stat1[1] - stat0[1]), cores, avg, "proc")
        cores = os.cpu_count() or 1
        if avg is None:
            return Load(wall, 0.0, 0.0, cores, None, "none")
        mine = own / wall if wall > 0 else 0.0
        return Load(wall, max(0.0, avg - mine) * wall, 0.0, cores, avg, "loadavg")

    return close
