"""Test configuration: GPU-only tests skip through one marker when no CUDA device is present."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from gpuconv.measure import cuda_available

sys.path.insert(0, os.path.dirname(__file__))


HAS_GPU = cuda_available()


REQUIRE_GPU = os.environ.get("GPUCONV_REQUIRE_GPU", "") == "1"


def _why_no_gpu() -> str:
    try:
        import cupy

        return f"CuPy {cupy.__version__} sees {cupy.cuda.runtime.getDeviceCount()} CUDA devices"
    except Exception as e:  # the reason is the point
        return f"{type(e).__name__}: {e}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_GPU:
        return
    if REQUIRE_GPU:
        # On a GPU machine a broken CuPy or driver must fail the run, not skip every GPU test quietly (even a
        # module that skipped itself at import, which leaves no GPU item to look at).
        raise pytest.UsageError(f"GPUCONV_REQUIRE_GPU=1, but there is no usable CUDA device: {_why_no_gpu()}")
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under ``GPUCONV_REQUIRE_GPU=1`` a GPU test that skips (torch without CUDA, no JAX GPU, too little memory)
    fails instead: on the GPU machine every one of them is expected to run."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_GPU and report.skipped and "gpu" in item.keywords and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under GPUCONV_REQUIRE_GPU=1: {reason}"
