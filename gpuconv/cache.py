"""The on-disk store of tuned decisions: JSON records under keys it is given, in files it is named.

It knows no backend and no strategy: :mod:`gpuconv.plan` decides what a key covers (the problem and what each
backend says about itself) and validates every record it reads back. Here a file is a name (``cpu-intel-xeon``
becomes ``cpu-intel-xeon.json`` in ``GPUCONV_CACHE_DIR``, else ``platformdirs.user_cache_dir("gpuconv")``)
holding ``{"format", "schema", "entries": {key: record}}``.

Files are plain JSON, never pickles. Writes go to a temporary file in the same directory and
``os.replace`` it, under a file lock, after re-reading and merging what other processes wrote meanwhile.
A truncated, corrupt, foreign or old-schema file is reported once with ``warnings.warn``, renamed aside
and the library goes on without it. This module imports neither Optuna nor any backend.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

SCHEMA_VERSION = 2
FORMAT = "gpuconv-tuning-cache"
ENV_DIR = "GPUCONV_CACHE_DIR"
LOCK_TIMEOUT_S = 60.0


def default_dir() -> Path:
    """``$GPUCONV_CACHE_DIR`` if set, else the platform's user cache directory for gpuconv."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("gpuconv"))


def slug(text: str) -> str:
    """``text`` as a safe file-name stem: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or "device"


# ---- reading ----------------------------------------------------------------------------------

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


class TuningCache:
    """The records in one directory, each file loaded once per process and merged on every write.

    Args:
        directory: where the JSON files live; default :func:`default_dir` at construction time.

    Example:
        >>> import tempfile
        >>> store = TuningCache(tempfile.mkdtemp())
        >>> store.save("cpu-example", "k1", {"strategy": "im2col"})
        >>> store.load("cpu-example", "k1")
        {'strategy': 'im2col'}
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_dir()
        self._files: dict[Path, dict[str, Any]] = {}
        self._warned: set[tuple[str, str]] = set()

    def path(self, file: str) -> Path:
        """Where the records named ``file`` live."""
        return self.directory / f"{slug(file)}.json"

    def load(self, file: str, key: str) -> Any:
        """The record stored under ``key`` in ``file``, as parsed JSON (unvalidated), or None."""
        path = self.path(file)
        entries = self._files.get(path)
        if entries is None:
            entries = self._files[path] = self._load(path)
        return entries.get(key)

    def entries(self, file: str) -> dict[str, Any]:
        """Every record of ``file`` (a copy)."""
        self.load(file, "")
        return dict(self._files[self.path(file)])

    def reload(self) -> None:
        """Forget what was read, so the next load re-reads the files (to see other processes' writes)."""
        self._files.clear()

    def save(self, file: str, key: str, record: Any, keep: Callable[[Any], bool] | None = None) -> None:
        """Store ``record`` (JSON-serializable) under ``key``; atomic, merged with concurrent writers.

        Args:
            keep: where given, other records of the file for which it is false are dropped (pruned) in the rewrite.

        Raises:
            OSError, filelock.Timeout: the directory cannot be written or locked.
        """
        path = self.path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(path):
            entries = self._load_locked(path)
            if keep is not None:
                entries = {k: v for k, v in entries.items() if keep(v)}
            entries[key] = record
            _write_atomic(path, {"format": FORMAT, "schema": SCHEMA_VERSION, "entries": entries})
        self._files[path] = entries

    def warn(self, file: str, what: str, message: str) -> None:
        """Warn once per file and ``what`` (a bad record is reported once, not on every call)."""
        if (file, what) not in self._warned:
            self._warned.add((file, what))
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _load(self, path: Path) -> dict[str, Any]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            self.warn(str(path), "read", f"gpuconv: cannot read the tuning cache {path} ({e}); continuing without it")
            return {}
        entries, _, _ = _parse(raw)
        if entries is not None:
            return entries
        try:
            with self._lock(path):  # re-read under the lock: a writer may have replaced it meanwhile
                return self._load_locked(path)
        except Exception as e:  # no lock (read-only directory, timeout): leave the file, ignore it here
            self.warn(str(path), "lock", f"gpuconv: the tuning cache {path} is unreadable and could not be "
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
        self.warn(str(path), tag, f"gpuconv: the tuning cache {path} is {reason}; {where} and continuing without it")
        return {}

    @staticmethod
    def _lock(path: Path) -> Any:
        from filelock import FileLock

        return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)


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
    """The cache of :func:`default_dir` (one instance per directory, so what it has read is shared)."""
    env = os.environ.get(ENV_DIR) or None
    found = _DEFAULTS.get(env)
    if found is None:
        found = _DEFAULTS[env] = TuningCache(default_dir())
    return found
