"""Choose how to run a problem: a forced strategy, a tuned decision from the cache, or the backend's heuristic.

This module owns the meaning of the tuning cache: the key of a decision (the problem, the backend, and what
the backend says about itself in ``fingerprint(device)``) and the validation of what is read back against the
backend's strategy table. :mod:`gpuconv.cache` only stores records under the keys it is given.

A cache miss is only a miss here: tooling that wants to act on it (the autotuner's first-call tuning)
installs a hook with :func:`set_miss_hook`; this module imports no tooling.

Choices are memoized per problem, backend, device and strategy; ``generation`` changes whenever a memoized
choice may have gone stale (a decision stored, a hook installed, the cache re-read), and callers that keep
their own memo (:mod:`gpuconv.conv`) compare it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from types import ModuleType
from typing import Any, Callable, Mapping

from . import cache as _cache
from .backends import get_backend
from .problem import ConvProblem
from .strategy import Plan

#: Bumped on every change of what a key means or a record holds; part of every key.
KEY_SCHEMA = 2

MissHook = Callable[[ConvProblem, str, int], "Plan | None"]

generation = 0
_miss_hook: MissHook | None = None
_CHOSEN: dict[tuple[Any, ...], Plan] = {}


def _bump() -> None:
    global generation
    generation += 1
    _CHOSEN.clear()


def set_miss_hook(hook: MissHook | None) -> None:
    """Install ``hook(problem, backend, device) -> Plan | None``, called when ``"auto"`` finds no tuned decision.

    A plan it returns is used (after validation); None falls back to the heuristic. One hook at a time;
    None removes it. Memoized choices are forgotten, so the next call of every problem asks again.
    """
    global _miss_hook
    _miss_hook = hook
    _bump()


def forget() -> None:
    """Forget memoized choices and re-read the cache on the next lookup (to see other processes' decisions)."""
    _cache.default().reload()
    _bump()


def choose(fn: str, problem: ConvProblem, backend_name: str, backend: ModuleType, strategy: str,
           device: int = 0) -> Plan:
    """The plan for ``problem`` on ``backend``.

    Args:
        fn: public function name, for error messages.
        problem: the validated problem.
        backend_name: ``"cpu"`` or ``"cuda"``.
        backend: the backend module (``STRATEGIES``, ``heuristic``, ``fingerprint``).
        strategy: ``"auto"`` or a name from ``backend.TABLES[problem.direction]``.
        device: the device the arrays are on (the CUDA device index; 0 on the CPU).

    Raises:
        ValueError: unknown strategy name, or a forced strategy that cannot compute this problem.
    """
    memo = (problem, backend_name, device, strategy, os.environ.get(_cache.ENV_DIR))
    found = _CHOSEN.get(memo)
    if found is not None:
        return found
    # Planned on the arrays' device, whatever device is current: the heuristic reads the device's size and a
    # first-call tuning hook measures on it.
    on_device = getattr(backend, "device_context", None)
    with on_device(device) if on_device is not None else contextlib.nullcontext():
        chosen = _choose(fn, problem, backend_name, backend, strategy, device)
    _CHOSEN[memo] = chosen
    return chosen


def _choose(fn: str, problem: ConvProblem, backend_name: str, backend: ModuleType, strategy: str,
            device: int) -> Plan:
    table = backend.TABLES[problem.direction]
    if not isinstance(strategy, str):
        raise TypeError(f"{fn}: strategy must be a string, got {type(strategy).__name__}")
    if strategy == "auto":
        tuned = lookup(problem, backend_name, device)
        if tuned is None and _miss_hook is not None:
            tuned = _miss_hook(problem, backend_name, device)
            if tuned is not None:
                tuned = validate_plan(tuned, problem, table, backend_name)
        return tuned if tuned is not None else backend.heuristic(problem)
    if strategy not in table:
        what = "" if problem.direction == "forward" else f" for the {problem.direction} gradient"
        raise ValueError(f"{fn}: strategy must be one of {['auto', *sorted(table)]} on the {backend_name} backend"
                         f"{what}, got {strategy!r}")
    forced = table[strategy]
    if not forced.supports(problem):
        raise ValueError(f"{fn}: strategy {strategy!r} cannot compute this problem: it requires {forced.requires}; "
                         f"x.shape={problem.x_shape}, w.shape={problem.w_shape}")
    return Plan(strategy, dict(forced.defaults), "forced")


# ---- the key of a decision, and what a record must hold -------------------------------------

def fingerprint(backend_name: str, device: int = 0) -> Mapping[str, str]:
    """What the backend says identifies this machine and its own code (``backend.fingerprint(device)``)."""
    return get_backend(backend_name).fingerprint(device)


def cache_file(backend_name: str, device: int = 0) -> str:
    """The name of the file that holds ``backend_name``'s decisions for this device (``cpu-intel-xeon``)."""
    fp = fingerprint(backend_name, device)
    return f"{backend_name}-{fp['device']}" + (f"-sm{fp['cc']}" if "cc" in fp else "")


def cache_key(problem: ConvProblem, backend_name: str, device: int = 0) -> str:
    """The key of ``problem``'s decision: a hash of the key schema, backend, fingerprint and problem."""
    blob = json.dumps({"schema": KEY_SCHEMA, "backend": backend_name, "fingerprint": dict(fingerprint(backend_name,
                                                                                                    device)),
                       "problem": problem.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_plan(plan: Plan, problem: ConvProblem, table: Mapping[str, Any], backend_name: str) -> Plan:
    """``plan`` as a tuned plan if it is a valid point of its strategy's space for ``problem``.

    Raises:
        ValueError: an unknown strategy, one that cannot compute ``problem``, or parameters outside its space.
    """
    name, params = plan.strategy, plan.params
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown strategy {name!r}; the {backend_name} backend has {sorted(table)}")
    chosen = table[name]
    if not chosen.supports(problem):
        raise ValueError(f"strategy {name!r} cannot compute this problem (it requires {chosen.requires})")
    if not isinstance(params, Mapping) or not all(isinstance(k, str) and _is_int(v) for k, v in params.items()):
        raise ValueError(f"params must map names to ints, got {params!r}")
    try:
        ok = chosen.valid(params, problem)
    except Exception as e:  # a constraint that trips over a value it never expected
        raise ValueError(f"params {params!r} break a constraint of {name!r}: {e}") from None
    if not ok:
        raise ValueError(f"params {params!r} are outside the space of {name!r} ({dict(chosen.space)}) "
                         "or break its constraints")
    return Plan(name, dict(params), "tuned")


def validate_record(record: Any, problem: ConvProblem, backend_name: str, device: int = 0) -> Plan:
    """Turn a stored record into a plan, checking every field (the record came from disk).

    Raises:
        ValueError: a record that is not an object, belongs to another problem or machine, or names a
            strategy or parameters the backend would not run.
    """
    if not isinstance(record, dict):
        raise ValueError(f"entry is a {type(record).__name__}, not an object")
    if record.get("problem") != problem.to_dict():
        raise ValueError("entry belongs to another problem")
    if record.get("fingerprint") != dict(fingerprint(backend_name, device)):
        raise ValueError("entry belongs to another machine or code version")
    params = record.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"params must map names to ints, got {params!r}")
    return validate_plan(Plan(record.get("strategy"), params), problem,  # type: ignore[arg-type]
                         get_backend(backend_name).TABLES[problem.direction], backend_name)


def _current(fp: Mapping[str, str]) -> Callable[[Any], bool]:
    """Whether a stored record can still match: records of an older code version never will, and are pruned."""
    return lambda record: isinstance(record, dict) and isinstance(record.get("fingerprint"), dict) and \
        record["fingerprint"].get("source") == fp.get("source")


# ---- reading and writing decisions ------------------------------------------------------------

def lookup(problem: ConvProblem, backend_name: str, device: int = 0,
           store: _cache.TuningCache | None = None) -> Plan | None:
    """The tuned plan for ``problem`` on this machine, or None; a bad record warns once and is ignored."""
    store = store or _cache.default()
    file = cache_file(backend_name, device)
    record = store.load(file, cache_key(problem, backend_name, device))
    if record is None:
        return None
    try:
        return validate_record(record, problem, backend_name, device)
    except ValueError as e:
        store.warn(file, repr(record)[:200], f"gpuconv: ignoring the tuned entry for {problem.x_shape} x "
                   f"{problem.w_shape} ({problem.dtype}) in {store.path(file)}: {e}")
        return None


def record(problem: ConvProblem, backend_name: str, device: int = 0,
           store: _cache.TuningCache | None = None) -> Any:
    """The raw stored record (strategy, params, metrics) for ``problem``, unvalidated, or None."""
    store = store or _cache.default()
    return store.load(cache_file(backend_name, device), cache_key(problem, backend_name, device))


def store_decision(problem: ConvProblem, backend_name: str, plan: Plan, metrics: Mapping[str, Any] | None = None,
                   device: int = 0, store: _cache.TuningCache | None = None) -> None:
    """Store ``plan`` as the decision for ``problem`` (validated first); memoized choices are forgotten.

    Records of older code versions in the same file are pruned as it is rewritten.

    Raises:
        ValueError: the plan is not a valid point of its strategy's space for this problem.
        OSError, filelock.Timeout: the directory cannot be written or locked.
    """
    store = store or _cache.default()
    validate_plan(plan, problem, get_backend(backend_name).TABLES[problem.direction], backend_name)
    fp = dict(fingerprint(backend_name, device))
    entry = {"problem": problem.to_dict(), "backend": backend_name, "fingerprint": fp,
             "strategy": plan.strategy, "params": {k: int(v) for k, v in plan.params.items()},
             "metrics": dict(metrics or {}), "stored_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    store.save(cache_file(backend_name, device), cache_key(problem, backend_name, device), entry, keep=_current(fp))
    _bump()
