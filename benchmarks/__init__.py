"""Benchmarks of gpuconv against the engines users would pick instead (``python -m benchmarks``).

:mod:`.contenders` says who competes and how each is called, :mod:`.timing` how they are timed,
:mod:`.roof` the GEMM rate every result is compared with, :mod:`.machine` what it all ran on,
:mod:`.run` measures, :mod:`.report` and :mod:`.plots` write it down, :mod:`.cli` is the command line.
"""

from .run import Config, benchmark

__all__ = ["Config", "benchmark"]
