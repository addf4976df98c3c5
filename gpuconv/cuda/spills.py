"""Tiles that ptxas spills registers at although the spaces' rules (threads, accumulators, staged words, shared
memory) admit them, as data, and the constraint that removes them from the spaces.

``python -m benchmarks.ptxas_sweep`` (NVRTC 13.5, sm_90, the runtime's options) found 107 spilling binaries among
the 1,795 of the spaces on 2026-12-03, and 3 among the 152 bfloat16 ones of ``tc_implicit_gemm`` (the float16 tiles
that spill). The direct kernel's follow a rule (``direct._registers_ok``); these do not: ptxas spills 4-300 bytes at
64-255 registers where neighbours with more accumulators or more staged words do not (dgrad's 64 x 32 tile of 4 x 4
spills 8-12 bytes at 96 registers in float16 and float32, not in float64; gemm's 2 x 8 thread tiles spill at the
64-register cap of two resident 512- or 1024-thread blocks in float32 only), so the measured points are listed.
``--arch sm_80`` (CI builds for compute_80 and compute_90) found 191 more binaries spilling 4-128 bytes on sm_80
that do not on sm_90: 153 of the direct kernel (no rule on its tunables separates them from their neighbours, so
they are listed here too), 8 of gemm (among them the float32 128 x 128 x 8 tile of 8 x 8, the former default), 9 of
implicit_gemm, 13 of tc_implicit_gemm, 5 of dgrad and 3 of wgrad. The tc_implicit_gemm, dgrad and wgrad entries were
measured again, over every point of their spaces, after their main loops were rewritten (reduction counters,
per-chunk offsets; contiguous fragments for the gradients; the tensor-core loop unrolled twice), for both
architectures: 21 binaries spilling 4-48 bytes (4 tensor-core ones, all on sm_80, where 27 tile-dtype pairs had been
listed; 11 of dgrad and 6 of wgrad). The tc_implicit_gemm entries were measured once more when its pipeline moved
to dynamic shared memory (three and four stages of the large tiles, and TF32 128 x 128 x 32, joined the space):
22 of its 1,044 binaries (522 tile-dtype pairs, two architectures) spill 4-16 bytes. A tile listed for either
architecture leaves the space.
``tests/test_cuda_spills.py`` checks that no point left in any space spills on either, so a kernel change that makes
a new point spill fails there and the sweep names it.
"""

from __future__ import annotations

from typing import Callable

from ..problem import ConvProblem
from ..strategy import Params

#: The tile parameters, in order, that identify a binary of each kernel in :data:`SPILLING`.
NAMES: dict[str, tuple[str, ...]] = {
    "gemm": ("BM", "BN", "BK", "TM", "TN"),
    "implicit_gemm": ("BM", "BN", "BK", "TM", "TN"),
    "dgrad": ("BM", "BN", "BK", "TM", "TN"),
    "wgrad": ("BM", "BN", "BK", "TM", "TN"),
    "tc_implicit_gemm": ("BM", "BN", "BK", "WM", "WN", "STAGES"),
    "direct": ("BQ", "BP", "QPT", "KPT", "CB", "HALO", "SX"),
}

#: architecture -> kernel -> dtype -> tiles (values of :data:`NAMES`) at which some launched function spills.
SPILLING: dict[str, dict[str, dict[str, frozenset[tuple[int, ...]]]]] = {
    "sm_90": {
        "tc_implicit_gemm": {
            "bfloat16": frozenset({(32, 128, 16, 1, 2, 2), (32, 128, 16, 2, 1, 3), (32, 128, 16, 2, 1, 4),
                                   (32, 128, 32, 2, 2, 3), (64, 64, 32, 2, 2, 4), (128, 128, 32, 4, 2, 3)}),
            "float16": frozenset({(32, 128, 16, 1, 2, 2), (32, 128, 16, 2, 1, 3), (32, 128, 16, 2, 1, 4),
                                  (32, 128, 32, 2, 2, 3), (64, 64, 32, 2, 2, 4), (128, 128, 32, 4, 2, 3)}),
            "float32": frozenset({(64, 64, 32, 1, 4, 2), (64, 64, 32, 1, 4, 3), (64, 64, 32, 4, 1, 4)}),
        },
        "dgrad": {
            "float16": frozenset({(64, 32, 8, 4, 4), (128, 32, 8, 4, 4)}),
            "float32": frozenset({(64, 32, 8, 4, 4), (128, 32, 8, 4, 4)}),
            "float64": frozenset({(128, 128, 8, 4, 8)}),
        },
        "wgrad": {
            "float16": frozenset({(32, 32, 8, 4, 4), (32, 64, 8, 4, 4), (32, 128, 8, 4, 8), (64, 128, 8, 8, 8)}),
            "float32": frozenset({(32, 128, 8, 4, 8)}),
        },
        "gemm": {
            "float32": frozenset({(32, 128, 32, 8, 8), (64, 128, 8, 2, 8), (128, 32, 32, 8, 8), (128, 64, 8, 2, 8),
                                  (128, 128, 8, 2, 8), (128, 128, 16, 2, 8)}),
            "float64": frozenset({(64, 64, 16, 8, 8), (64, 128, 8, 4, 8), (128, 64, 8, 4, 8)}),
        },
        "implicit_gemm": {
            "float16": frozenset({(64, 64, 32, 8, 4), (128, 64, 16, 4, 8)}),
            "float32": frozenset({(32, 128, 8, 8, 4), (64, 32, 32, 4, 4), (64, 128, 32, 8, 4)}),
            "float64": frozenset({(32, 128, 8, 4, 4)}),
        },
    },
    "sm_80": {
        "tc_implicit_gemm": {
            "bfloat16": frozenset({(32, 128, 16, 2, 1, 3), (32, 128, 32, 1, 4, 3), (128, 64, 32, 4, 2, 2)}),
            "float16": frozenset({(32, 128, 16, 2, 1, 3), (32, 128, 32, 1, 4, 3), (128, 64, 32, 4, 2, 2)}),
            "float32": frozenset({(64, 64, 16, 4, 1, 4)}),
        },
        "dgrad": {
            "float16": frozenset({(64, 32, 8, 4, 4), (64, 32, 8, 4, 8), (128, 32, 8, 4, 4)}),
            "float32": frozenset({(64, 32, 8, 4, 4), (64, 32, 8, 4, 8), (128, 32, 8, 4, 4)}),
        },
        "wgrad": {
            "float16": frozenset({(32, 64, 8, 4, 4)}),
        },
        "direct": {
            "float16": frozenset({(8, 4, 2, 2, 1, 2, 1), (8, 4, 2, 2, 1, 2, 2), (8, 4, 2, 2, 1, 6, 1),
                                  (8, 4, 2, 2, 1, 6, 2), (8, 8, 1, 2, 1, 2, 1), (8, 8, 1, 2, 1, 2, 2),
                                  (8, 8, 1, 2, 1, 6, 1), (8, 8, 1, 2, 1, 6, 2), (8, 8, 1, 4, 1, 2, 1),
                                  (8, 8, 1, 4, 1, 2, 2), (8, 8, 1, 4, 1, 6, 1), (8, 8, 1, 4, 1, 6, 2),
                                  (8, 8, 2, 2, 1, 2, 1), (8, 8, 2, 2, 1, 2, 2), (8, 8, 2, 2, 1, 6, 1),
                                  (8, 8, 2, 2, 1, 6, 2), (32, 2, 1, 2, 1, 2, 1), (32, 2, 1, 2, 1, 2, 2),
                                  (32, 2, 1, 2, 1, 6, 1), (32, 2, 1, 2, 1, 6, 2), (32, 2, 1, 4, 1, 2, 1),
                                  (32, 2, 1, 4, 1, 2, 2), (32, 2, 1, 4, 1, 6, 1), (32, 2, 1, 4, 1, 6, 2),
                                  (32, 2, 2, 2, 1, 2, 1), (32, 2, 2, 2, 1, 2, 2), (32, 2, 2, 2, 1, 6, 1),
                                  (32, 2, 2, 2, 1, 6, 2), (32, 4, 1, 2, 1, 2, 1), (32, 4, 1, 2, 1, 2, 2),
                                  (32, 4, 1, 2, 1, 6, 1), (32, 4, 1, 2, 1, 6, 2), (32, 4, 1, 4, 1, 2, 1),
                                  (32, 4, 1, 4, 1, 2, 2), (32, 4, 1, 4, 1, 6, 1), (32, 4, 1, 4, 1, 6, 2),
                                  (32, 4, 2, 2, 1, 2, 1), (32, 4, 2, 2, 1, 2, 2), (32, 4, 2, 2, 1, 6, 1),
                                  (32, 4, 2, 2, 1, 6, 2), (32, 8, 1, 2, 1, 2, 1), (32, 8, 1, 2, 1, 2, 2),
                                  (32, 8, 1, 2, 1, 6, 1), (32, 8, 1, 2, 1, 6, 2)}),
            "float32": frozenset({(8, 4, 2, 2, 1, 2, 1), (8, 4, 2, 2, 1, 2, 2), (8, 4, 2, 2, 1, 6, 1),
                                  (8, 4, 2, 2, 1, 6, 2), (8, 8, 1, 2, 1, 2, 1), (8, 8, 1, 2, 1, 2, 2),
                                  (8, 8, 1, 2, 1, 6, 1), (8, 8, 1, 2, 1, 6, 2), (8, 8, 1, 4, 1, 2, 1),
                                  (8, 8, 1, 4, 1, 2, 2), (8, 8, 1, 4, 1, 6, 1), (8, 8, 1, 4, 1, 6, 2),
                                  (8, 8, 2, 2, 1, 2, 1), (8, 8, 2, 2, 1, 2, 2), (8, 8, 2, 2, 1, 6, 1),
                                  (8, 8, 2, 2, 1, 6, 2), (32, 2, 1, 2, 1, 2, 1), (32, 2, 1, 2, 1, 2, 2),
                                  (32, 2, 1, 2, 1, 6, 1), (32, 2, 1, 2, 1, 6, 2), (32, 2, 1, 4, 1, 2, 1),
                                  (32, 2, 1, 4, 1, 2, 2), (32, 2, 1, 4, 1, 6, 1), (32, 2, 1, 4, 1, 6, 2),
                                  (32, 2, 2, 2, 1, 2, 1), (32, 2, 2, 2, 1, 2, 2), (32, 2, 2, 2, 1, 6, 1),
                                  (32, 2, 2, 2, 1, 6, 2), (32, 4, 1, 2, 1, 2, 1), (32, 4, 1, 2, 1, 2, 2),
                                  (32, 4, 1, 2, 1, 6, 1), (32, 4, 1, 2, 1, 6, 2), (32, 4, 1, 4, 1, 2, 1),
                                  (32, 4, 1, 4, 1, 2, 2), (32, 4, 1, 4, 1, 6, 1), (32, 4, 1, 4, 1, 6, 2),
                                  (32, 4, 2, 2, 1, 2, 1), (32, 4, 2, 2, 1, 2, 2), (32, 4, 2, 2, 1, 6, 1),
                                  (32, 4, 2, 2, 1, 6, 2), (32, 8, 1, 2, 1, 2, 1), (32, 8, 1, 2, 1, 2, 2),
                                  (32, 8, 1, 2, 1, 6, 1), (32, 8, 1, 2, 1, 6, 2)}),
            "float64": frozenset({(8, 4, 1, 1, 1, 2, 1), (8, 4, 1, 1, 1, 2, 2), (8, 4, 1, 1, 1, 6, 1),
                                  (8, 4, 1, 1, 1, 6, 2), (8, 4, 1, 4, 1, 2, 1), (8, 4, 1, 4, 1, 2, 2),
                                  (8, 4, 1, 4, 1, 6, 1), (8, 4, 1, 4, 1, 6, 2), (8, 4, 2, 1, 1, 2, 1),
                                  (8, 4, 2, 1, 1, 2, 2), (8, 4, 2, 1, 1, 6, 1), (8, 4, 2, 1, 1, 6, 2),
                                  (8, 4, 4, 1, 1, 2, 1), (8, 4, 4, 1, 1, 2, 2), (8, 4, 4, 1, 1, 6, 1),
                                  (8, 4, 4, 1, 4, 2, 1), (8, 8, 1, 2, 1, 2, 1), (8, 8, 1, 2, 1, 2, 2),
                                  (8, 8, 1, 2, 1, 6, 1), (8, 8, 1, 2, 1, 6, 2), (8, 8, 1, 4, 1, 2, 1),
                                  (8, 8, 1, 4, 1, 2, 2), (8, 8, 1, 4, 1, 6, 1), (8, 8, 1, 4, 1, 6, 2),
                                  (8, 8, 2, 1, 1, 2, 1), (8, 8, 2, 1, 1, 2, 2), (8, 8, 2, 1, 1, 6, 1),
                                  (8, 8, 2, 1, 1, 6, 2), (8, 8, 2, 1, 4, 2, 1), (32, 2, 1, 2, 1, 2, 1),
                                  (32, 2, 1, 2, 1, 2, 2), (32, 2, 1, 2, 1, 6, 1), (32, 2, 1, 2, 1, 6, 2),
                                  (32, 2, 1, 4, 1, 2, 1), (32, 2, 1, 4, 1, 2, 2), (32, 2, 1, 4, 1, 6, 1),
                                  (32, 2, 1, 4, 1, 6, 2), (32, 2, 2, 1, 1, 2, 1), (32, 2, 2, 1, 1, 2, 2),
                                  (32, 2, 2, 1, 1, 6, 1), (32, 2, 2, 1, 1, 6, 2), (32, 4, 1, 2, 1, 2, 1),
                                  (32, 4, 1, 2, 1, 2, 2), (32, 4, 1, 2, 1, 6, 1), (32, 4, 1, 2, 1, 6, 2),
                                  (32, 4, 1, 4, 1, 2, 1), (32, 4, 1, 4, 1, 2, 2), (32, 4, 1, 4, 1, 6, 1),
                                  (32, 4, 1, 4, 1, 6, 2), (32, 4, 2, 1, 1, 2, 1), (32, 4, 2, 1, 1, 2, 2),
                                  (32, 4, 2, 1, 1, 6, 1), (32, 4, 2, 1, 1, 6, 2), (32, 4, 2, 1, 4, 2, 1),
                                  (32, 8, 1, 1, 1, 2, 1), (32, 8, 1, 1, 1, 2, 2), (32, 8, 1, 1, 1, 6, 1),
                                  (32, 8, 1, 1, 1, 6, 2), (32, 8, 1, 4, 1, 2, 1), (32, 8, 1, 4, 1, 2, 2),
                                  (32, 8, 1, 4, 1, 6, 1), (32, 8, 1, 4, 1, 6, 2), (32, 8, 2, 2, 1, 2, 1),
                                  (32, 8, 2, 2, 1, 2, 2), (32, 8, 2, 2, 1, 6, 1)}),
        },
        "gemm": {
            "float16": frozenset({(32, 128, 32, 8, 8), (64, 128, 16, 4, 4), (128, 64, 16, 4, 4), (128, 128, 16, 8, 8)}),
            "float32": frozenset({(64, 64, 32, 8, 8), (128, 128, 8, 8, 8)}),
            "float64": frozenset({(32, 128, 8, 8, 8), (128, 32, 8, 8, 8)}),
        },
        "implicit_gemm": {
            "float16": frozenset({(64, 32, 16, 4, 4), (64, 32, 32, 4, 4)}),
            "float32": frozenset({(32, 64, 8, 8, 4), (32, 64, 32, 4, 4), (64, 64, 8, 4, 4), (64, 64, 16, 4, 4),
                                  (64, 128, 32, 4, 8), (128, 32, 16, 4, 4)}),
            "float64": frozenset({(128, 128, 8, 8, 8)}),
        },
    },
}


def spills(kernel: str, params: Params, dtype: str) -> bool:
    """Whether the sweep found ``kernel`` spilling at the tile of ``params`` in ``dtype`` on any architecture."""
    tile = tuple(params[n] for n in NAMES[kernel])
    return any(tile in arch.get(kernel, {}).get(dtype, frozenset()) for arch in SPILLING.values())


def _dtypes(kernel: str) -> tuple[str, ...]:
    """The dtypes in which some tile of ``kernel`` spills on some architecture."""
    return tuple(sorted({d for arch in SPILLING.values() for d in arch.get(kernel, {})}))


def spill_free(kernel: str) -> Callable[[Params, ConvProblem | None], bool]:
    """A constraint: the tile does not spill in the problem's dtype or, without a problem, in any dtype."""

    def ok(params: Params, problem: ConvProblem | None) -> bool:
        dtypes = (problem.dtype,) if problem is not None else _dtypes(kernel)
        return not any(spills(kernel, params, d) for d in dtypes)

    ok.__name__ = ok.__qualname__ = f"{kernel}_spill_free"
    return ok
