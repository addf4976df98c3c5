"""The on-disk store of tuned decisions: which strategy and parameters won for a problem on this machine.

One JSON file per backend and device (``cpu-amd-epyc.json``, ``cuda-nvidia-h100-sm90.json``) in
``GPUCONV_CACHE_DIR``, else ``platformdirs.user_cache_dir("gpuconv")``. Each entry is keyed by a hash of
everything that can change the answer: the problem (shape, stride, padding, dilation, groups, dtype), the
backend, the machine (device name and compute capability, CUDA runtime and CuPy versions; or the CPU
model, NumPy version and BLAS build), a hash of the kernel sources and :data:`SCHEMA_VERSION`. A change in
any of them is a miss, never a stale hit.

Files are plain JSON, never pickles. Writes go to a temporary file in the same directory and
``os.replace`` it, under a file lock, after re-reading and merging what other processes wrote meanwhile.
A truncated, corrupt, foreign or old-schema file is reported once with ``warnings.warn``, renamed aside
and the library goes on without it. Every value read is validated against the strategy's declared space
(:meth:`gpuconv.strategy.Strategy.valid`) before it is used. This module does not import Optuna.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from .problem import ConvProblem
from .strategy import Plan

SCHEMA_VERSION = 1
FORMAT = "gpuconv-tuning-cache"
ENV_DIR = "GPUCONV_CACHE_DIR"
LOCK_TIMEOUT_S = 60.0

_PACKAGE = Path(__file__).resolve().parent


# ---- where, and for which machine ---------------------------------------------------------

def default_dir() -> Path:
    """``$GPUCONV_CACHE_DIR`` if set, else the platform's user cache directory for gpuconv."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("gpuconv"))


def _hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.relative_to(_PACKAGE.parent).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown-cpu"


def _blas() -> dict[str, str]:
    """The BLAS NumPy was built with and, where threadpoolctl is installed, the core type and threads it uses."""
    import numpy as np

    out = {"blas": "unknown"}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[call-arg,index]
        out["blas"] = f"{blas.get('name', '?')} {blas.get('version', '?')}"
    except Exception:  # older NumPy without mode="dicts": the name is still in the key via the version
        pass
    try:
        import threadpoolctl

        for info in threadpoolctl.threadpool_info():
            if info.get("user_api") == "blas":
                out["blas_core"] = str(info.get("architecture"))
                out["blas_threads"] = str(info.get("num_threads"))
                break
    except Exception:  # threadpoolctl is optional
        pass
    return out


@functools.lru_cache(maxsize=None)
def machine(backend: str, device: int = 0) -> Mapping[str, str]:
    """What identifies the machine in a cache key; computed once per backend and device.

    Args:
        backend: ``"cpu"`` or ``"cuda"``.
        device: CUDA device index (ignored on the CPU).

    Returns:
        A flat dict of strings, including ``"device"`` (a readable name) and ``"source"`` (kernel source hash).
    """
    if backend == "cpu":
        import numpy as np

        return {"device": _cpu_model(), "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                     else os.cpu_count()),
                "numpy": np.__version__, **_blas(), "source": _hash_files(list((_PACKAGE / "cpu").glob("*.py")))}
    if backend == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(device)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        # The kernel sources decide the binaries; the launch code beside them decides grids and layouts.
        launch = _hash_files(list((_PACKAGE / "cuda").glob("*.py")))
        try:
            from .cuda.source import source_hash

            source = f"{str(source_hash())[:16]}+{launch}"
        except ImportError:  # no kernel-source module: the launch code is all there is to hash
            source = launch
        return {"device": name, "cc": str(cupy.cuda.Device(device).compute_capability),
                "cuda_runtime": str(cupy.cuda.runtime.runtimeGetVersion()), "cupy": cupy.__version__,
                "source": source}
    raise ValueError(f"cache: backend must be 'cpu' or 'cuda', got {backend!r}")


def current_device(backend: str) -> int:
    """The device a lookup or store refers to: the current CUDA device, or 0 on the CPU."""
    if backend != "cuda":
        return 0
    import cupy

    return int(cupy.cuda.runtime.getDevice())


def key(problem: ConvProblem, backend: str, device: int = 0) -> str:
    """The cache key of ``problem`` on ``backend`` on this machine: a hash of problem, machine and schema."""
    blob = json.dumps({"schema": SCHEMA_VERSION, "backend": backend, "machine": dict(machine(backend, device)),
                       "problem": problem.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "device"


# ---- reading and validating -----------------------------------------------------------------

def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str, str]:
    """``(entries, "", "")`` for a valid file, else ``(None, reason, tag)``."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, absurd nesting
        return None, f"corrupt or truncated ({e})", "corrupt"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None, f"not a gpuconv tuning cache (no \"format\": \"{FORMAT}\")", "foreign"
    if data.get("schema") != SCHEMA_VERSION:
        return None, f"schema {data.get('schema')!r}, this gpuconv reads schema {SCHEMA_VERSION}", "old-schema"
    if not isinstance(data.get("entries"), dict):
        return None, "malformed (\"entries\" is not an object)", "corrupt"
    return data["entries"], "", ""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(record: Any, problem: ConvProblem, backend: str, device: int = 0) -> Plan:
    """Turn a stored record into a plan, checking every field against the backend's strategy table.

    Raises:
        ValueError: the record names an unknown strategy, one that cannot compute ``problem``, parameters
            outside its declared space or of the wrong type, or belongs to another problem or machine.
    """
    from .backends import get_backend

    if not isinstance(record, dict):
        raise ValueError(f"entry is a {type(record).__name__}, not an object")
    if record.get("problem") != problem.to_dict():
        raise ValueError("entry belongs to another problem")
    if record.get("machine") != dict(machine(backend, device)):
        raise ValueError("entry belongs to another machine or kernel version")
    table = get_backend(backend).STRATEGIES
    name, params = record.get("strategy"), record.get("params")
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown strategy {name!r}; the {backend} backend has {sorted(table)}")
    chosen = table[name]
    if not chosen.supports(problem):
        raise ValueError(f"strategy {name!r} cannot compute this problem (it requires {chosen.requires})")
    if not isinstance(params, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in params.items()):
        raise ValueError(f"params must map names to ints, got {params!r}")
    try:
        ok = chosen.valid(params, problem)
    except Exception as e:  # a constraint that trips over a value it never expected
        raise ValueError(f"params {params!r} break a constraint of {name!r}: {e}") from None
    if not ok:
        raise ValueError(f"params {params!r} are outside the space of {name!r} ({dict(chosen.space)}) "
                         "or break its constraints")
    return Plan(name, dict(params), "tuned")


class TuningCache:
    """The tuned decisions in one directory, loaded once per process and merged on every write.

    Args:
        directory: where the JSON files live; default :func:`default_dir` at construction time.

    Example:
        >>> from gpuconv.problem import make_problem
        >>> p = make_problem("conv2d", (1, 3, 8, 8), (4, 3, 3, 3), "float32", False)
        >>> TuningCache().lookup(p, "cpu") is None   # nothing tuned yet
        True
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_dir()
        self._files: dict[Path, dict[str, Any]] = {}
        self._plans: dict[tuple[str, int, ConvProblem], Plan | None] = {}
        self._warned: set[tuple[str, str]] = set()

    # -- paths
    def path(self, backend: str, device: int | None = None) -> Path:
        """The file holding ``backend``'s decisions for ``device`` (the current CUDA device by default)."""
        dev = current_device(backend) if device is None else device
        m = machine(backend, dev)
        suffix = f"-sm{m['cc']}" if "cc" in m else ""
        return self.directory / f"{backend}-{_slug(m['device'])}{suffix}.json"

    # -- reading
    def lookup(self, problem: ConvProblem, backend: str) -> Plan | None:
        """The tuned plan for ``problem`` on ``backend`` (current device), or None; memoized in-process."""
        device = current_device(backend)
        memo = (backend, device, problem)
        if memo in self._plans:
            return self._plans[memo]
        found = self.record(problem, backend, device)
        plan = None
        if found is not None:
            try:
                plan = validate(found, problem, backend, device)
            except ValueError as e:
                self._warn(str(self.path(backend, device)), key(problem, backend, device),
                           f"gpuconv: ignoring the tuned entry for {problem.x_shape} x {problem.w_shape} "
                           f"({problem.dtype}) in {self.path(backend, device)}: {e}")
        self._plans[memo] = plan
        return plan

    def record(self, problem: ConvProblem, backend: str, device: int | None = None) -> Any:
        """The raw stored record (strategy, params, metrics) for ``problem``, unvalidated, or None."""
        dev = current_device(backend) if device is None else device
        path = self.path(backend, dev)
        if path not in self._files:
            self._files[path] = self._load(path)
        return self._files[path].get(key(problem, backend, dev))

    def reload(self) -> None:
        """Forget what was read, so the next lookup re-reads the files (to see other processes' writes)."""
        self._files.clear()
        self._plans.clear()

    def _load(self, path: Path) -> dict[str, Any]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            self._warn(str(path), "read", f"gpuconv: cannot read the tuning cache {path} ({e}); continuing without it")
            return {}
        entries, _, _ = _parse(raw)
        if entries is not None:
            return entries
        try:
            with self._lock(path):  # re-read under the lock: a writer may have replaced it meanwhile
                return self._load_locked(path)
        except Exception as e:  # no lock (read-only directory, timeout): leave the file, ignore it here
            self._warn(str(path), "lock", f"gpuconv: the tuning cache {path} is unreadable and could not be "
                                          f"set aside ({e}); continuing without it")
            return {}

    def _load_locked(self, path: Path) -> dict[str, Any]:
        """Read ``path`` while holding its lock; set an invalid file aside and start empty."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        entries, reason, tag = _parse(raw)
        if entries is not None:
            return entries
        aside = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            os.replace(path, aside)
            where = f"moved it to {aside.name}"
        except OSError as e:
            where = f"could not move it aside ({e})"
        self._warn(str(path), tag, f"gpuconv: the tuning cache {path} is {reason}; {where} and continuing without it")
        return {}

    # -- writing
    def store(self, problem: ConvProblem, backend: str, plan: Plan, metrics: Mapping[str, Any] | None = None,
              device: int | None = None) -> None:
        """Record ``plan`` as the decision for ``problem``; atomic, merged with concurrent writers.

        Args:
            problem: the tuned problem.
            backend: ``"cpu"`` or ``"cuda"``.
            plan: the winner; its strategy and params must be valid for ``problem`` (checked).
            metrics: JSON-serializable extras (times, speedups, trial counts) kept for reports.
            device: CUDA device index (the current one by default).

        Raises:
            ValueError: the plan is not a valid point of its strategy's space for this problem.
            OSError, filelock.Timeout: the directory cannot be written or locked.
        """
        dev = current_device(backend) if device is None else device
        record = {"problem": problem.to_dict(), "backend": backend, "machine": dict(machine(backend, dev)),
                  "strategy": plan.strategy, "params": {k: int(v) for k, v in plan.params.items()},
                  "metrics": dict(metrics or {}), "stored_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        validated = validate(record, problem, backend, dev)
        path = self.path(backend, dev)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(path):
            entries = self._load_locked(path)
            entries[key(problem, backend, dev)] = record
            _write_atomic(path, {"format": FORMAT, "schema": SCHEMA_VERSION, "entries": entries})
        self._files[path] = entries
        self._plans = {m: p for m, p in self._plans.items() if p is not None}  # misses may be hits now
        self._plans[(backend, dev, problem)] = validated

    # -- helpers
    @staticmethod
    def _lock(path: Path) -> Any:
        from filelock import FileLock

        return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)

    def _warn(self, where: str, what: str, message: str) -> None:
        if (where, what) not in self._warned:
            self._warned.add((where, what))
            warnings.warn(message, RuntimeWarning, stacklevel=3)


def _write_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``: readers see old or new."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---- the process-wide default ---------------------------------------------------------------

_DEFAULTS: dict[str | None, TuningCache] = {}


def default() -> TuningCache:
    """The cache of :func:`default_dir` (one instance per directory, so its in-process memo is shared)."""
    env = os.environ.get(ENV_DIR) or None  # keyed by the raw setting: this runs on every conv2d call
    found = _DEFAULTS.get(env)
    if found is None:
        found = _DEFAULTS[env] = TuningCache(default_dir())
    return found


def lookup(problem: ConvProblem, backend: str) -> Plan | None:
    """The tuned plan for ``problem`` on ``backend`` on this machine, or None (see :meth:`TuningCache.lookup`)."""
    return default().lookup(problem, backend)


def store(problem: ConvProblem, backend: str, plan: Plan, metrics: Mapping[str, Any] | None = None) -> None:
    """Store a decision in the default cache (see :meth:`TuningCache.store`)."""
    default().store(problem, backend, plan, metrics)
