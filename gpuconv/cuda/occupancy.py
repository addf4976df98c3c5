"""Blocks per SM and wave efficiency from ptxas' figures, which ``python -m benchmarks.ptxas_sweep`` stores.

A variant's resident blocks per multiprocessor follow from its threads, registers and static shared memory
and from the device's limits (the CUDA occupancy calculator's rules, ``cuda_occupancy.h``: registers are
allocated per warp in units of 256 from four sub-partitions of the register file, shared memory in units of
128 bytes plus 1 KB reserved per block). The heuristics size tiles and split-K by the wave efficiency this
gives instead of assuming an SM count or a block count per SM.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

#: The sweep's output: per binary and architecture, what ptxas allotted each function.
REPORT_PATH = Path(__file__).resolve().parent / "ptxas_report.json"
#: Bumped on every change of the report's format.
REPORT_SCHEMA = 1


@dataclass(frozen=True)
class Limits:
    """Per-multiprocessor limits of one compute capability (CUDA C++ Programming Guide, "Technical
    Specifications per Compute Capability"; shared memory at the largest carveout)."""

    threads: int
    blocks: int
    smem: int  # bytes of shared memory per SM
    smem_block: int  # bytes one block may use
    registers: int = 65536
    registers_thread: int = 255
    register_unit: int = 256  # registers are allocated per warp in multiples of this
    sub_partitions: int = 4  # the register file is split among the warp schedulers
    smem_unit: int = 128
    smem_reserved: int = 1024  # per block, from compute capability 8.0 on


#: Compute capability -> limits.
LIMITS: dict[tuple[int, int], Limits] = {
    (8, 0): Limits(threads=2048, blocks=32, smem=164 * 1024, smem_block=163 * 1024),
    (8, 6): Limits(threads=1536, blocks=16, smem=100 * 1024, smem_block=99 * 1024),
    (8, 7): Limits(threads=2048, blocks=16, smem=164 * 1024, smem_block=163 * 1024),
    (8, 9): Limits(threads=1536, blocks=24, smem=100 * 1024, smem_block=99 * 1024),
    (9, 0): Limits(threads=2048, blocks=32, smem=228 * 1024, smem_block=227 * 1024),
}


def limits(cc: tuple[int, int]) -> Limits:
    """The limits of compute capability ``cc``; a newer one than the table knows gets the newest entry.

    Raises:
        ValueError: ``cc`` is older than every entry (the kernels need sm_80).
    """
    known = [k for k in LIMITS if k <= tuple(cc)]
    if not known:
        raise ValueError(f"compute capability must be at least 8.0, got {cc[0]}.{cc[1]}")
    return LIMITS[max(known)]


@dataclass(frozen=True)
class Device:
    """What the heuristics need of a GPU: its multiprocessors and compute capability."""

    sm_count: int
    cc: tuple[int, int]

    @property
    def arch(self) -> str:
        return f"sm_{self.cc[0]}{self.cc[1]}"


#: Where no device can be asked (compile-only and emulated runs): an H100/H200 SXM.
DEFAULT_DEVICE = Device(sm_count=132, cc=(9, 0))


@functools.cache
def _device(index: int) -> Device:
    import cupy

    attrs = cupy.cuda.Device(index).attributes
    return Device(int(attrs["MultiProcessorCount"]),
                  (int(attrs["ComputeCapabilityMajor"]), int(attrs["ComputeCapabilityMinor"])))


def current_device() -> Device:
    """The current CUDA device (asked once per device), or :data:`DEFAULT_DEVICE` where there is none."""
    try:
        import cupy

        index = cupy.cuda.Device().id
    except Exception:  # no CuPy, driver or device
        return DEFAULT_DEVICE
    try:
        return _device(index)
    except Exception:
        return DEFAULT_DEVICE


def blocks_per_sm(lim: Limits, threads: int, registers: int, smem: int) -> int:
    """Resident blocks per SM of a kernel with ``threads`` per block, ``registers`` per thread and ``smem``
    bytes of shared memory per block; 0 where one block does not fit.

    Example:
        >>> blocks_per_sm(LIMITS[9, 0], threads=256, registers=128, smem=16384)
        2
    """
    if threads < 1 or registers < 0 or smem < 0:
        raise ValueError(f"threads must be positive and registers, smem non-negative, got {threads}, {registers}, "
                         f"{smem}")
    warps = -(-threads // 32)
    if threads > 1024 or registers > lim.registers_thread or smem > lim.smem_block:
        return 0
    by_threads = lim.threads // (warps * 32)
    per_warp = -(-max(registers, 1) * 32 // lim.register_unit) * lim.register_unit
    by_registers = (lim.registers // lim.sub_partitions // per_warp) * lim.sub_partitions // warps
    per_block = -(-(smem + lim.smem_reserved) // lim.smem_unit) * lim.smem_unit
    by_smem = lim.smem // per_block if smem else lim.blocks
    return min(lim.blocks, by_threads, by_registers, by_smem)


def wave_efficiency(blocks: int, sm_count: int, per_sm: int) -> float:
    """The share of the launched waves' block slots that hold a block: ``blocks / (waves * slots)``, with
    ``sm_count * per_sm`` slots per wave and ``waves = ceil(blocks / slots)``."""
    if blocks < 1 or sm_count < 1 or per_sm < 1:
        raise ValueError(f"blocks, sm_count and per_sm must be positive, got {blocks}, {sm_count}, {per_sm}")
    slots = sm_count * per_sm
    return blocks / (-(-blocks // slots) * slots)


@functools.cache
def _report(path: Path = REPORT_PATH) -> dict[str, Any]:
    """The stored report indexed by (kernel, sorted params, dtype); empty where the file is missing or foreign."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"archs": [], "points": {}}
    if data.get("schema") != REPORT_SCHEMA:
        return {"archs": [], "points": {}}
    points = {(p["kernel"], tuple(sorted(p["params"].items())), p["dtype"]): p for p in data["points"]}
    return {"archs": data["archs"], "points": points}


def resources(kernel: str, func: str, params: Mapping[str, int], dtype: str, arch: str = "sm_90"
              ) -> Mapping[str, int] | None:
    """ptxas' figures (``registers``, ``spill_stores``, ``spill_loads``, ``smem``, ``stack``) for one function of
    a stored binary: for ``arch`` where the sweep compiled it, else for the nearest stored architecture;
    None for a binary the report does not hold."""
    report = _report()
    point = report["points"].get((kernel, tuple(sorted(params.items())), dtype))
    if point is None or not report["archs"]:
        return None
    want = int(arch.removeprefix("sm_"))
    stored = min(report["archs"], key=lambda a: (abs(int(a.removeprefix("sm_")) - want), a))
    return point[stored].get(func)


def variant_blocks_per_sm(device: Device, kernel: str, func: str, params: Mapping[str, int], dtype: str,
                          threads: int, smem: int, dynamic_smem: int = 0) -> int:
    """Blocks per SM of a stored variant on ``device`` launched with ``dynamic_smem`` bytes of dynamic shared
    memory (ptxas reports only the static bytes); where the report lacks the variant, as if it used the most
    registers a thread may have (the constraint's own bound), with ``smem`` bytes of static shared memory."""
    lim = limits(device.cc)
    found = resources(kernel, func, params, dtype, device.arch)
    if found is None:
        registers = min(lim.registers_thread, lim.registers // threads)
        return max(1, blocks_per_sm(lim, threads, registers, smem + dynamic_smem))
    return max(1, blocks_per_sm(lim, threads, found["registers"], found["smem"] + dynamic_smem))


def best_split(tiles: int, splits: Sequence[int], sm_count: int, per_sm: int, tolerance: float = 0.02
               ) -> tuple[int, float]:
    """(split, wave efficiency) for ``tiles`` output tiles whose reduction may be cut into any of ``splits``
    ranges: the highest efficiency, and of those within ``tolerance`` of it the smallest split (each range adds a
    round trip of partial sums).

    With the tile fixed, a split divides each block's work, so the run time goes as ``ceil(tiles * split / slots)
    / split``, that is as ``1 / wave_efficiency``: the best efficiency is the fastest split.

    Raises:
        ValueError: no split to choose from.
    """
    if not splits:
        raise ValueError("splits must not be empty")
    if tiles < 1:  # an empty problem: nothing to spread
        return min(splits), 0.0
    eff = {s: wave_efficiency(tiles * s, sm_count, per_sm) for s in sorted(set(splits))}
    top = max(eff.values())
    split = min(s for s, e in eff.items() if e >= top - tolerance)
    return split, eff[split]
