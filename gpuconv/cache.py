"""The on-disk store of tuned decisions (filled in by the autotuner)."""

from __future__ import annotations

from .problem import ConvProblem
from .strategy import Plan


def lookup(problem: ConvProblem, backend: str) -> Plan | None:
    """The tuned plan for ``problem`` on ``backend`` on this machine, or None."""
    return None
