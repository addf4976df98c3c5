"""What every strategy declares, on every backend: its entry point, which problems it handles, its tunables.

A backend module (``gpuconv.cpu``, ``gpuconv.cuda``) exposes ``STRATEGIES: dict[str, Strategy]``, a
``heuristic(problem) -> Plan``, ``prepare(problem, plan) -> run(x, w, bias)`` (the hot path),
``execute(problem, plan, x, w, bias)`` (prepare and run once) and ``fingerprint(device)`` (what identifies the
machine and the backend's code in a tuning-cache key). The autotuner searches exactly
``space`` filtered by ``constraints``; the runtime uses ``defaults`` when no tuned value is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Protocol, Sequence, TypeVar

from .problem import ConvProblem

Params = Mapping[str, int]


class CpuRun(Protocol):
    """A CPU strategy: ``x (N, C, H, W)`` and ``w (K, C/groups, R, S)`` in the compute dtype, any strides, to
    ``(N, K, P, Q)`` in that dtype without bias (possibly a view); ``params`` are its tunables."""

    def __call__(self, problem: ConvProblem, x: Any, w: Any, **params: int) -> Any: ...


class CudaRun(Protocol):
    """A CUDA strategy: fills the preallocated ``y (N, K, P, Q)`` from C-contiguous ``x``, ``w`` and ``bias`` (or
    None), launching through the executor ``ex`` (CuPy, or the CPU emulation in the tests)."""

    def __call__(self, ex: Any, problem: ConvProblem, params: Params, x: Any, w: Any, bias: Any, y: Any) -> None: ...


RunT = TypeVar("RunT", CpuRun, CudaRun)


def _always(problem: ConvProblem) -> bool:
    return True


@dataclass(frozen=True)
class Strategy(Generic[RunT]):
    """One algorithm on one backend.

    Attributes:
        name: the ``strategy=`` name users pass.
        run: the entry point, with the backend's signature (:class:`CpuRun` or :class:`CudaRun`).
        supports: whether this strategy can compute a problem at all (a 1x1 fast path cannot do 3x3).
        requires: the condition in words, for the error when a user forces an unsupported strategy.
        space: tunable name -> candidate values (compile-time macros on CUDA); empty when nothing is tunable.
        constraints: predicates ``(params, problem) -> bool`` a candidate must satisfy (shared memory, threads).
        defaults: the parameters used without tuning; must be a point of ``space`` satisfying ``constraints``.
        prepare: optionally, ``prepare(problem, **params)`` returning a runner of the problem's arrays with
            what depends only on the problem worked out once (the CPU backend's hot path uses it).
    """

    name: str
    run: RunT
    supports: Callable[[ConvProblem], bool] = _always
    requires: str = ""
    space: Mapping[str, Sequence[int]] = field(default_factory=dict)
    constraints: Sequence[Callable[[Params, ConvProblem | None], bool]] = ()
    defaults: Mapping[str, int] = field(default_factory=dict)
    prepare: Callable[..., Callable[..., Any]] | None = None

    def valid(self, params: Params, problem: ConvProblem | None = None) -> bool:
        """Whether ``params`` is a point of the space that satisfies every constraint."""
        if set(params) != set(self.space):
            return False
        if any(params[k] not in self.space[k] for k in self.space):
            return False
        return all(c(params, problem) for c in self.constraints)

    def variants(self, problem: ConvProblem | None = None) -> Iterator[dict[str, int]]:
        """Every valid point of the space (a single empty dict when nothing is tunable), in a fixed order."""
        import itertools

        names = sorted(self.space)
        for values in itertools.product(*(self.space[n] for n in names)):
            params = dict(zip(names, values))
            if self.valid(params, problem):
                yield params


@dataclass(frozen=True)
class Plan:
    """A strategy plus its parameters for one problem; ``source`` says where the choice came from."""

    strategy: str
    params: Mapping[str, int] = field(default_factory=dict)
    source: str = "heuristic"  # "heuristic" | "forced" | "tuned"
