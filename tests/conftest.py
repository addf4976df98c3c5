"""Test configuration: GPU-only tests skip through one marker when no CUDA device is present."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def _has_cuda_device() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, or no device
        return False


HAS_GPU = _has_cuda_device()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees an empty tuning cache of its own unless it sets GPUCONV_CACHE_DIR itself."""
    from gpuconv import plan

    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("GPUCONV_AUTOTUNE", raising=False)
    plan.forget()  # what this process memoized came from another test's cache
