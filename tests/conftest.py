"""Test configuration: GPU-only tests skip through one marker when no CUDA device is present."""

from __future__ import annotations

import os
import sys

import pytest

from gpuconv.measure import cuda_available

sys.path.insert(0, os.path.dirname(__file__))


HAS_GPU = cuda_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_GPU:
        return
    if os.environ.get("GPUCONV_REQUIRE_GPU", "") == "1" and any("gpu" in item.keywords for item in items):
        # On a GPU machine a broken CuPy or driver must fail the run, not skip every GPU test quietly.
        raise pytest.UsageError("GPUCONV_REQUIRE_GPU=1, but CuPy sees no usable CUDA device")
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
