"""What identifies this CUDA backend in a tuning-cache key: the device, the toolkit, CuPy, and this code."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping

from .._data import hash_files
from .source import source_hash

_HERE = Path(__file__).resolve().parent


@functools.cache
def fingerprint(device: int = 0) -> Mapping[str, str]:
    """The CUDA backend's part of a cache key for ``device``, computed once per process and device.

    The kernel sources decide the binaries; the launch code beside them decides grids and layouts: both
    are hashed.
    """
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"device": name, "cc": f"{props['major']}{props['minor']}",
            "cuda_runtime": str(cupy.cuda.runtime.runtimeGetVersion()), "cupy": cupy.__version__,
            "source": f"{source_hash()[:16]}+{hash_files(list(_HERE.glob('*.py')))}"}
