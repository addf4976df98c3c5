"""What identifies this CPU backend in a tuning-cache key: the processor, the BLAS NumPy calls, and this code.

Everything is read the same way whatever optional packages are installed: the BLAS core type and thread
count come from the OpenBLAS library NumPy has loaded (through ``ctypes``, the way threadpoolctl finds it),
never from threadpoolctl itself, so installing or removing an optional package cannot move a key.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path
from typing import Any, Mapping

from .._data import hash_files

_HERE = Path(__file__).resolve().parent


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


@functools.cache
def cpu_identity() -> dict[str, str | int | None]:
    """``vendor`` (``vendor_id``), ``family`` and ``model_number`` (``cpu family``, ``model``) of the processor, from
    ``/proc/cpuinfo`` on Linux; None where a field is not there."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass

    def number(key: str) -> int | None:
        return int(fields[key]) if fields.get(key, "").isdigit() else None

    return {"vendor": fields.get("vendor_id"), "family": number("cpu family"), "model_number": number("model")}


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _openblas() -> Any:
    """NumPy's loaded OpenBLAS as a ``ctypes`` library, or None (another BLAS, or not Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _call(lib: Any, names: tuple[str, ...], restype: Any) -> Any:
    for prefix in ("scipy_", ""):
        for suffix in ("64_", ""):
            for name in names:
                fn = getattr(lib, f"{prefix}{name}{suffix}", None)
                if fn is not None:
                    fn.restype, fn.argtypes = restype, []
                    return fn()
    return None


def blas() -> dict[str, str]:
    """The BLAS NumPy was built with, and for OpenBLAS its kernel family (core type) and thread count."""
    import numpy as np

    out = {"blas": "unknown", "blas_core": "unknown", "blas_threads": "unknown"}
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[call-arg,index]
        out["blas"] = f"{info.get('name', '?')} {info.get('version', '?')}"
    except Exception:  # an older NumPy without mode="dicts"
        pass
    lib = _openblas()
    if lib is not None:
        core = _call(lib, ("openblas_get_corename",), ctypes.c_char_p)
        threads = _call(lib, ("openblas_get_num_threads",), ctypes.c_int)
        if core:
            out["blas_core"] = core.decode(errors="replace")
        if threads:
            out["blas_threads"] = str(threads)
    return out


@functools.cache
def fingerprint(device: int = 0) -> Mapping[str, str]:
    """The CPU backend's part of a cache key, computed once per process.

    The BLAS thread count is the one the process had at its first lookup; a decision is for that count.
    """
    import numpy as np

    return {"device": cpu_model(), "cores": str(cores()), "numpy": np.__version__, **blas(),
            "source": hash_files(list(_HERE.glob("*.py")))}
