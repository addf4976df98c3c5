"""The NVRTC options kernels run with: CuPy forces ``-ftz=true``, so float32 subnormals are flushed to zero on the
GPU (the CPU emulation keeps them). These tests pin that: if CuPy stops adding the flag, or gpuconv starts
passing fast-math, the README's CUDA notes and the tolerances are out of date."""

from __future__ import annotations

import inspect
import re

import pytest

from gpuconv.cuda import compile as cuda_compile
from gpuconv.cuda.gemm import DEFAULTS


def test_effective_options() -> None:
    assert cuda_compile.EFFECTIVE_OPTIONS == ("-std=c++17", "-ftz=true")
    assert not any("fast" in o or "prec" in o or "fmad" in o for o in cuda_compile.EFFECTIVE_OPTIONS)


def test_cupy_still_forces_ftz() -> None:
    compiler = pytest.importorskip("cupy.cuda.compiler")
    source = inspect.getsource(compiler._compile_with_cache_cuda)
    assert re.search(r"options \+= \('-ftz=true',\)", source), "CuPy no longer adds -ftz=true to RawModule compiles"


def test_ptx_flushes_float32_only() -> None:
    """float32 arithmetic is emitted with ``.ftz`` (a subnormal operand or result is zero); float64 is exact IEEE,
    and no instruction is approximate (``.approx``: fast-math division or square root)."""
    f32 = cuda_compile.compile_ptx("gemm", DEFAULTS, "float32", "compute_80")
    f64 = cuda_compile.compile_ptx("gemm", DEFAULTS, "float64", "compute_80")
    assert re.search(r"\bfma\.rn\.ftz\.f32\b", f32)
    assert not re.search(r"\bfma\.rn\.f32\b", f32)
    assert re.search(r"\bfma\.rn\.f64\b", f64) and ".ftz.f64" not in f64
    assert ".approx" not in f32 and ".approx" not in f64
