"""The roof each result is compared with: the GEMM rate of the BLAS the backend uses, measured in the same run.

On the CPU that is NumPy's BLAS (a large square ``np.matmul``); on a GPU, cuBLAS through ``cupy.matmul``
in float32 (CuPy does not use TF32 unless ``CUPY_TF32=1``) and in float16. A convolution is a GEMM with
a gather in front, so the GEMM rate is the ceiling a GEMM-based strategy can approach.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .timing import cupy_event_timer, summarize, wall_timer


def _rate(size: int, seconds: float) -> float:
    return 2.0 * size**3 / seconds / 1e9


def _measure(thunk: Any, timer: Any, size: int, repeat: int) -> dict[str, Any]:
    thunk()  # warm-up: thread pools, kernel selection, allocation
    stats = summarize([timer(thunk) for _ in range(repeat)])
    return {"size": size, "repeat": repeat, "gflops": _rate(size, stats.median), "best_gflops": _rate(size, stats.min),
            "median_s": stats.median}


def cpu_gemm(dtype: str = "float32", size: int = 2048, repeat: int = 5) -> dict[str, Any]:
    """GFLOP/s of ``np.matmul`` on two ``size x size`` matrices of ``dtype`` (median and best of ``repeat``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty_like(a)
    return _measure(lambda: np.matmul(a, b, out=out), wall_timer, size, repeat)


def gpu_gemm(dtype: str = "float32", size: int = 8192, repeat: int = 10) -> dict[str, Any]:
    """GFLOP/s of ``cupy.matmul`` (cuBLAS) on ``size x size`` matrices, timed by CUDA events."""
    import cupy

    a = cupy.random.standard_normal((size, size), dtype=np.float32).astype(dtype)
    b = cupy.random.standard_normal((size, size), dtype=np.float32).astype(dtype)
    out = cupy.empty_like(a)
    return _measure(lambda: cupy.matmul(a, b, out=out), cupy_event_timer, size, repeat)


def measure(backend: str, quick: bool = False) -> dict[str, dict[str, Any]]:
    """The roofs for ``backend``, keyed by the dtype whose problems they bound.

    On the CPU float16 problems are computed in float32, so they share the sgemm roof.
    """
    if backend == "cuda":
        size = 2048 if quick else 8192
        fp32, fp16 = gpu_gemm("float32", size), gpu_gemm("float16", size)
        fp32["what"], fp16["what"] = "cuBLAS sgemm (cupy.matmul float32)", "cuBLAS hgemm (cupy.matmul float16)"
        return {"float32": fp32, "float16": fp16, "float64": {**gpu_gemm("float64", size // 2),
                                                               "what": "cuBLAS dgemm (cupy.matmul float64)"}}
    size = 512 if quick else 2048
    sgemm = {**cpu_gemm("float32", size), "what": "BLAS sgemm (np.matmul float32)"}
    dgemm = {**cpu_gemm("float64", size), "what": "BLAS dgemm (np.matmul float64)"}
    return {"float32": sgemm, "float16": sgemm, "float64": dgemm}


def combine(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dtype, the better of two measurements of the same roof, with both kept under ``runs``."""
    out = {}
    for dtype, a in before.items():
        b = after[dtype]
        best = a if a["best_gflops"] >= b["best_gflops"] else b
        out[dtype] = {**best, "runs": [{k: v for k, v in r.items() if k != "runs"} for r in (a, b)]}
    return out
